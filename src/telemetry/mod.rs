//! Logs and metrics: the process-wide telemetry every role shares.

mod json_lines;
pub mod logging;
pub mod metrics;
