//! The users role: user CRUD over Redis (`platform users`).

pub mod backup;
pub mod cursor;
mod error;
mod guards;
pub mod idempotency;
pub mod reconcile;
pub mod reindex;
pub mod routes;
pub mod startup;
pub mod store;

pub use startup::{SERVICE, build};
