//! The gateway role: the single entry point, a streaming reverse proxy to users (`platform gateway`).

pub mod forward;
pub mod headers;
pub mod readiness;
pub mod startup;

pub use startup::{Application, SERVICE};
