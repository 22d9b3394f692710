//! The auth role: OAuth 2.0 client_credentials tokens signed with rotating ES256 keys, their
//! JWKS and discovery document (`platform auth`), people's accounts (register, login,
//! rotating refresh tokens), and its one-shot tasks.

pub mod accounts;
pub mod clients;
pub(crate) mod error;
pub mod keys;
pub(crate) mod routes;
pub mod secrets;
pub mod startup;
pub mod tasks;
pub mod token;

pub use routes::JWKS_MAX_AGE;
pub use startup::{SERVICE, build};
