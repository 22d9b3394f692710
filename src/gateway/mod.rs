//! The gateway role: the single entry point, a streaming reverse proxy to users (`platform gateway`).
//! A request passes the stages in `proxy.rs`'s order, one file each: `route`, `request_filter`,
//! `upstream`, `response_filter`, `body`.

mod auth;
mod body;
pub mod headers;
pub mod limit;
mod proxy;
mod readiness;
mod request_filter;
mod response_filter;
pub mod route;
pub mod startup;
mod upstream;

pub use startup::{SERVICE, build};
