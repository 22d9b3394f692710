//! Structured logs: one JSON object per line (or coloured text), never dropping a line.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slog::{Drain, Level, Logger, o};

use super::json_lines::{JsonLines, LineSink};
use crate::config::LogFormat;

/// Keeps the asynchronous drain alive; dropping it writes out the last lines.
pub struct LogGuard {
    drain: Option<slog_async::AsyncGuard>,
    scope: Option<slog_scope::GlobalLoggerGuard>,
    stdout: BatchedStdout,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.scope.take();
        // Joins the log thread once it has written every queued record, then flushes them.
        self.drain.take();
        self.stdout.flush_now();
    }
}

/// How long a written log line may wait in the buffer before it reaches stdout.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Stdout behind a 64 KiB buffer, flushed every 100 ms (and when full, and at exit): one
/// write(2) per batch instead of one per line, which costs a busy proxy a third of its CPU.
#[derive(Clone)]
struct BatchedStdout(Arc<Mutex<std::io::BufWriter<std::io::Stdout>>>);

impl BatchedStdout {
    fn start() -> Self {
        let out = Self(Arc::new(Mutex::new(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        ))));
        let flusher = out.clone();
        // If the thread cannot start, lines still go out whenever the buffer fills or at exit.
        let _ = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    flusher.flush_now();
                }
            });
        out
    }

    fn flush_now(&self) {
        if let Ok(mut out) = self.0.lock() {
            let _ = out.flush();
        }
    }
}

impl LineSink for BatchedStdout {
    fn write_line(&self, line: &[u8]) {
        if let Ok(mut out) = self.0.lock() {
            // Only a full buffer reaches stdout here; nothing to do if stdout is gone.
            let _ = out.write_all(line);
        }
    }
}

/// The root logger of the process, writing to stdout, with `version` on every line (each role
/// adds `service`). Also routes the `log` crate (actix-web, awc, redis) into it, as `process`
/// (the role's name; `all` when both roles share the process).
pub fn init(process: &'static str, format: LogFormat, level: Level) -> (Logger, LogGuard) {
    let stdout = BatchedStdout::start();
    let (logger, guard) = match format {
        // Synchronous into a shared buffer: no thread hand-off per line, no line ever dropped.
        LogFormat::Json => {
            let drain = slog::Fuse(JsonLines::new(stdout.clone()));
            (
                Logger::root(drain.filter_level(level).fuse(), base_keys()),
                None,
            )
        }
        LogFormat::Pretty => {
            let decorator = slog_term::TermDecorator::new().stdout().build();
            let (drain, guard) = async_drain(slog_term::FullFormat::new(decorator).build().fuse());
            (
                Logger::root(drain.filter_level(level).fuse(), base_keys()),
                Some(guard),
            )
        }
    };
    let scope = slog_scope::set_global_logger(for_service(&logger, process));
    let std_level = match level {
        Level::Trace => log::Level::Trace,
        Level::Debug => log::Level::Debug,
        Level::Info => log::Level::Info,
        Level::Warning => log::Level::Warn,
        Level::Error | Level::Critical => log::Level::Error,
    };
    // Fails only if another `log` backend is installed already; then that one keeps working.
    if log::set_logger(&LogBridge).is_ok() {
        log::set_max_level(std_level.to_level_filter());
    }
    (
        logger,
        LogGuard {
            drain: guard,
            scope: Some(scope),
            stdout,
        },
    )
}

/// A synchronous JSON logger writing into `buffer`: for tests that read what a role logs.
pub fn capture(buffer: LogBuffer) -> Logger {
    Logger::root(slog::Fuse(JsonLines::new(buffer)), base_keys())
}

fn base_keys() -> slog::OwnedKV<impl slog::SendSyncRefUnwindSafeKV> {
    o!("version" => env!("CARGO_PKG_VERSION"))
}

/// A role's logger: `service` on every line.
pub fn for_service(root: &Logger, service: &'static str) -> Logger {
    root.new(o!("service" => service))
}

/// slog-async's default drops records beyond 128 queued ones; we block instead.
fn async_drain<D>(drain: D) -> (slog::Fuse<slog_async::Async>, slog_async::AsyncGuard)
where
    D: Drain<Ok = (), Err = slog::Never> + Send + 'static,
{
    let (drain, guard) = slog_async::Async::new(drain)
        .chan_size(16_384)
        .overflow_strategy(slog_async::OverflowStrategy::Block)
        .thread_name("log".into())
        .build_with_guard();
    (drain.fuse(), guard)
}

/// An in-memory, shareable log sink.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    pub fn contents(&self) -> String {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl LineSink for LogBuffer {
    fn write_line(&self, line: &[u8]) {
        if let Ok(mut inner) = self.0.lock() {
            inner.extend_from_slice(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn captured_lines_are_json_with_the_base_fields() {
        let buffer = LogBuffer::default();
        let log = for_service(&capture(buffer.clone()), "users");
        slog::info!(log, "hello"; "request_id" => "abc");
        let line: serde_json::Value =
            serde_json::from_str(buffer.contents().trim()).expect("one JSON line");
        assert_eq!(line["msg"], "hello");
        assert_eq!(line["level"], "info");
        assert_eq!(line["service"], "users");
        assert_eq!(line["request_id"], "abc");
        assert!(line["ts"].as_str().is_some_and(|ts| ts.ends_with('Z')));
    }
}

/// The `log` crate's records (actix-web, awc, redis) into the scope's slog logger, as
/// `slog-stdlog` does, at their own level except for what a client's bytes cause.
struct LogBridge;

impl log::Log for LogBridge {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let level = bridged_level(record);
        let location = slog::RecordLocation {
            file: record.file_static().unwrap_or("<unknown>"),
            line: record.line().unwrap_or_default(),
            column: 0,
            function: "",
            module: record.module_path_static().unwrap_or("<unknown>"),
        };
        let statics = slog::RecordStatic {
            location: &location,
            level,
            tag: record.target(),
        };
        slog_scope::with_logger(|logger| {
            logger.log(&slog::Record::new(&statics, record.args(), slog::b!()))
        });
    }

    fn flush(&self) {}
}

/// actix-http logs at error level every connection that ends on a malformed request (a NUL in
/// a header, a bad chunk size): the client's fault, already answered 400, that any client could
/// otherwise write as error lines at will. Those go to debug; everything else keeps its level.
fn bridged_level(record: &log::Record) -> Level {
    let from_dispatcher = record.target().starts_with("actix_http::h1");
    let client_fault = record
        .args()
        .as_str()
        .map_or_else(|| record.args().to_string(), str::to_owned)
        .starts_with("stream error: request parse error");
    match record.level() {
        _ if from_dispatcher && client_fault => Level::Debug,
        log::Level::Error => Level::Error,
        log::Level::Warn => Level::Warning,
        log::Level::Info => Level::Info,
        log::Level::Debug => Level::Debug,
        log::Level::Trace => Level::Trace,
    }
}

#[cfg(test)]
mod bridge_tests {
    use super::*;

    fn level_of(target: &str, level: log::Level, message: std::fmt::Arguments) -> Level {
        bridged_level(
            &log::Record::builder()
                .target(target)
                .level(level)
                .args(message)
                .build(),
        )
    }

    #[test]
    fn a_clients_malformed_request_is_not_an_error_line() {
        let err = "request parse error: invalid Header provided";
        assert_eq!(
            level_of(
                "actix_http::h1::dispatcher",
                log::Level::Error,
                format_args!("stream error: {err}")
            ),
            Level::Debug
        );
    }

    #[test]
    fn other_records_keep_their_level() {
        assert_eq!(
            level_of(
                "actix_http::h1::dispatcher",
                log::Level::Error,
                format_args!("stream error: {}", "connection reset")
            ),
            Level::Error
        );
        assert_eq!(
            level_of("redis::aio", log::Level::Warn, format_args!("x")),
            Level::Warning
        );
        assert_eq!(
            level_of(
                "other",
                log::Level::Error,
                format_args!("stream error: request parse error")
            ),
            Level::Error
        );
    }
}
