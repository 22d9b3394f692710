//! HTTP pieces every role shares: error body, request ids, health, the observing middleware,
//! load shedding.

pub mod body;
pub mod client;
pub mod error;
pub mod observe;
pub mod ops;
pub mod peer;
pub mod request_id;
pub mod shed;
