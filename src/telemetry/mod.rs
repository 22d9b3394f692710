//! Logs and metrics: the process-wide telemetry every role shares.

pub mod logging;
pub mod metrics;
