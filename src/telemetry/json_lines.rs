//! The JSON log format: one object per line, `ts`, `level`, `msg`, then the record's and the
//! logger's key-values. A slog drain that builds each line in a per-thread buffer and hands
//! it to its sink whole (one lock per line, no outer mutex around the serializer); it costs
//! a fraction of slog-json's generic serde path on every access-log line.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;

use slog::{KV, Key, OwnedKVList, Record};

/// Where finished lines go; each call gets one complete line, newline included.
pub trait LineSink: Send + Sync + 'static {
    fn write_line(&self, line: &[u8]);
}

pub struct JsonLines<S> {
    sink: S,
}

impl<S: LineSink> JsonLines<S> {
    pub fn new(sink: S) -> Self {
        Self { sink }
    }
}

thread_local! {
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

impl<S: LineSink> slog::Drain for JsonLines<S> {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        // A line logged while serializing a value of another line (re-entrant) gets its own
        // buffer instead of the busy thread-local one.
        let written = LINE.try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => self.write(&mut line, record, values),
            Err(_) => self.write(&mut Vec::with_capacity(512), record, values),
        });
        if written.is_err() {
            self.write(&mut Vec::with_capacity(512), record, values);
        }
        Ok(())
    }
}

impl<S: LineSink> JsonLines<S> {
    fn write(&self, line: &mut Vec<u8>, record: &Record<'_>, values: &OwnedKVList) {
        line.clear();
        line.extend_from_slice(b"{\"ts\":\"");
        crate::timestamp::write_now(line);
        line.extend_from_slice(b"\",\"level\":\"");
        line.extend_from_slice(level_name(record.level()).as_bytes());
        line.extend_from_slice(b"\",\"msg\":");
        let mut ser = Fields { line };
        ser.string_arguments(record.msg());
        // Serializing into a Vec cannot fail; a value's own error just ends its fields.
        let _ = record.kv().serialize(record, &mut ser);
        let _ = values.serialize(record, &mut ser);
        line.extend_from_slice(b"}\n");
        self.sink.write_line(line);
    }
}

fn level_name(level: slog::Level) -> &'static str {
    match level {
        slog::Level::Critical => "critical",
        slog::Level::Error => "error",
        slog::Level::Warning => "warn",
        slog::Level::Info => "info",
        slog::Level::Debug => "debug",
        slog::Level::Trace => "trace",
    }
}

/// Appends `,"key":value` pairs to the line.
struct Fields<'a> {
    line: &'a mut Vec<u8>,
}

impl Fields<'_> {
    fn key(&mut self, key: Key) {
        self.line.push(b',');
        escape_str(self.line, key);
        self.line.push(b':');
    }

    fn string_arguments(&mut self, args: &fmt::Arguments<'_>) {
        match args.as_str() {
            Some(text) => escape_str(self.line, text),
            None => {
                self.line.push(b'"');
                let _ = EscapeInto(self.line).write_fmt(*args);
                self.line.push(b'"');
            }
        }
    }

    fn number(&mut self, key: Key, value: impl itoa::Integer) -> slog::Result {
        self.key(key);
        self.line
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        Ok(())
    }
}

impl slog::Serializer for Fields<'_> {
    fn emit_arguments(&mut self, key: Key, val: &fmt::Arguments<'_>) -> slog::Result {
        self.key(key);
        self.string_arguments(val);
        Ok(())
    }

    fn emit_str(&mut self, key: Key, val: &str) -> slog::Result {
        self.key(key);
        escape_str(self.line, val);
        Ok(())
    }

    fn emit_char(&mut self, key: Key, val: char) -> slog::Result {
        self.emit_str(key, val.encode_utf8(&mut [0; 4]))
    }

    fn emit_bool(&mut self, key: Key, val: bool) -> slog::Result {
        self.key(key);
        self.line
            .extend_from_slice(if val { b"true" } else { b"false" });
        Ok(())
    }

    fn emit_none(&mut self, key: Key) -> slog::Result {
        self.key(key);
        self.line.extend_from_slice(b"null");
        Ok(())
    }

    fn emit_unit(&mut self, key: Key) -> slog::Result {
        self.emit_none(key)
    }

    fn emit_usize(&mut self, key: Key, val: usize) -> slog::Result {
        self.number(key, val)
    }
    fn emit_isize(&mut self, key: Key, val: isize) -> slog::Result {
        self.number(key, val)
    }
    fn emit_u8(&mut self, key: Key, val: u8) -> slog::Result {
        self.number(key, val)
    }
    fn emit_i8(&mut self, key: Key, val: i8) -> slog::Result {
        self.number(key, val)
    }
    fn emit_u16(&mut self, key: Key, val: u16) -> slog::Result {
        self.number(key, val)
    }
    fn emit_i16(&mut self, key: Key, val: i16) -> slog::Result {
        self.number(key, val)
    }
    fn emit_u32(&mut self, key: Key, val: u32) -> slog::Result {
        self.number(key, val)
    }
    fn emit_i32(&mut self, key: Key, val: i32) -> slog::Result {
        self.number(key, val)
    }
    fn emit_u64(&mut self, key: Key, val: u64) -> slog::Result {
        self.number(key, val)
    }
    fn emit_i64(&mut self, key: Key, val: i64) -> slog::Result {
        self.number(key, val)
    }
    fn emit_u128(&mut self, key: Key, val: u128) -> slog::Result {
        self.number(key, val)
    }
    fn emit_i128(&mut self, key: Key, val: i128) -> slog::Result {
        self.number(key, val)
    }

    fn emit_f32(&mut self, key: Key, val: f32) -> slog::Result {
        self.emit_f64(key, f64::from(val))
    }

    /// JSON has no NaN or infinity: those are `null`.
    fn emit_f64(&mut self, key: Key, val: f64) -> slog::Result {
        if val.is_finite() {
            self.key(key);
            self.line
                .extend_from_slice(ryu::Buffer::new().format_finite(val).as_bytes());
            Ok(())
        } else {
            self.emit_none(key)
        }
    }
}

/// `text` as a JSON string literal, quotes included.
fn escape_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    escape_into(out, text);
    out.push(b'"');
}

/// Bytes that cannot appear raw in a JSON string: controls, DEL, `"` and `\\`.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table[0x7f] = true;
    table
};

fn escape_into(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    // Clean bytes are copied in runs, up to each byte that needs escaping.
    let mut clean_from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !NEEDS_ESCAPE[usize::from(b)] {
            continue;
        }
        out.extend_from_slice(&bytes[clean_from..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            other => {
                let _ = write!(out, "\\u{other:04x}");
            }
        }
        clean_from = i + 1;
    }
    out.extend_from_slice(&bytes[clean_from..]);
}

/// fmt::Write that escapes what is written into a JSON string body.
struct EscapeInto<'a>(&'a mut Vec<u8>);

impl fmt::Write for EscapeInto<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl LineSink for Lines {
        fn write_line(&self, line: &[u8]) {
            if let Ok(mut out) = self.0.lock() {
                out.extend_from_slice(line);
            }
        }
    }

    /// The one line `log` writes, as text.
    fn raw_line(log: impl FnOnce(&slog::Logger)) -> String {
        let lines = Lines::default();
        let logger = slog::Logger::root(
            slog::Fuse(JsonLines::new(lines.clone())),
            slog::o!("version" => "1.2.3"),
        );
        log(&logger);
        let text = String::from_utf8(lines.0.lock().map(|b| b.clone()).unwrap_or_default())
            .expect("UTF-8");
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.ends_with("}\n"), "{text}");
        text
    }

    fn one_line(log: impl FnOnce(&slog::Logger)) -> serde_json::Value {
        let text = raw_line(log);
        serde_json::from_str(text.trim_end()).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    #[test]
    fn a_line_is_one_json_object_with_every_kind_of_value() {
        let line = one_line(|log| {
            slog::warn!(log, "hello {}", "world";
                "text" => "quote \" backslash \\ newline \n tab \t bell \u{7} é ✓",
                "n" => 42u16, "neg" => -7i64, "big" => u64::MAX, "ratio" => 0.25f64,
                "nan" => f64::NAN, "flag" => true, "none" => Option::<u8>::None,
                "args" => format_args!("{}-{}", 1, "a\"b"));
        });
        assert_eq!(line["msg"], "hello world");
        assert_eq!(line["level"], "warn");
        assert_eq!(line["version"], "1.2.3");
        assert_eq!(
            line["text"],
            "quote \" backslash \\ newline \n tab \t bell \u{7} é ✓"
        );
        assert_eq!(line["n"], 42);
        assert_eq!(line["neg"], -7);
        assert_eq!(line["big"], u64::MAX);
        assert_eq!(line["ratio"], 0.25);
        assert!(line["nan"].is_null());
        assert_eq!(line["flag"], true);
        assert!(line["none"].is_null());
        assert_eq!(line["args"], "1-a\"b");
        let ts = line["ts"].as_str().expect("ts");
        assert!(crate::timestamp::parse_millis(ts).is_some(), "{ts}");
    }

    #[test]
    fn floats_keep_a_point_and_strings_escape_only_what_json_needs() {
        let text = raw_line(|log| {
            slog::info!(log, "request";
                "duration_ms" => 12.0f64, "fast" => 0.001f64, "odd" => 1.25f32, "huge" => 1e300,
                "status" => 200u16, "raw" => "a\"b\\c\nd\re\tf\u{1}g\u{7f}h é");
        });
        assert!(text.starts_with(r#"{"ts":""#), "{text}");
        for field in [
            r#"Z","level":"info","msg":"request","#,
            r#""duration_ms":12.0"#,
            r#""fast":0.001"#,
            r#""odd":1.25"#,
            r#""huge":1e300"#,
            r#""status":200"#,
            r#""raw":"a\"b\\c\nd\re\tf\u0001g\u007fh é""#,
        ] {
            assert!(text.contains(field), "{field} not in {text}");
        }
    }

    #[test]
    fn a_static_message_with_quotes_is_escaped() {
        let line = one_line(|log| slog::info!(log, "say \"hi\""));
        assert_eq!(line["msg"], "say \"hi\"");
        assert_eq!(line["level"], "info");
    }
}
