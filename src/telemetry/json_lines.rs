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

pub fn level_name(level: slog::Level) -> &'static str {
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
            if !write_thousandths(self.line, val) {
                self.line
                    .extend_from_slice(ryu::Buffer::new().format_finite(val).as_bytes());
            }
            Ok(())
        } else {
            self.emit_none(key)
        }
    }
}

/// Writes `val` if it is a whole number of thousandths (every access line's `duration_ms`),
/// exactly as ryu would (`12.0`, `0.5`, `1.234`) at a fraction of its cost; false otherwise.
fn write_thousandths(out: &mut Vec<u8>, val: f64) -> bool {
    // Below 2^53 / 1000 every thousandth is exact enough for the check below to be decisive.
    if val.is_sign_negative() || !(0.0..1e12).contains(&val) {
        return false;
    }
    let thousandths = (val * 1000.0).round();
    if thousandths / 1000.0 != val {
        return false;
    }
    let thousandths = thousandths as u64;
    let (whole, mut fraction) = (thousandths / 1000, thousandths % 1000);
    out.extend_from_slice(itoa::Buffer::new().format(whole).as_bytes());
    out.push(b'.');
    if fraction == 0 {
        out.push(b'0');
        return true;
    }
    let mut digits = 3;
    while fraction % 10 == 0 {
        fraction /= 10;
        digits -= 1;
    }
    let text = [
        b'0' + (fraction / 100 % 10) as u8,
        b'0' + (fraction / 10 % 10) as u8,
        b'0' + (fraction % 10) as u8,
    ];
    out.extend_from_slice(&text[3 - digits..]);
    true
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

/// The index of the first byte of `bytes` that `NEEDS_ESCAPE`. Skips 8 clean bytes at a time
/// (SWAR: a word has a byte below 0x20, or equal to `"`, `\\` or DEL); access-log values are
/// mostly clean, so this is most of the cost of a line.
fn first_needing_escape(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Non-zero exactly when some byte of `word` is below `n` (n <= 0x80).
    let any_below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS != 0;
    let any_equal = |word: u64, b: u8| any_below(word ^ (ONES * u64::from(b)), 1);
    let mut clean = 0;
    for chunk in bytes.chunks_exact(8) {
        let Ok(word) = <[u8; 8]>::try_from(chunk).map(u64::from_le_bytes) else {
            break;
        };
        if any_below(word, 0x20)
            || any_equal(word, b'"')
            || any_equal(word, b'\\')
            || any_equal(word, 0x7f)
        {
            break;
        }
        clean += 8;
    }
    bytes[clean..]
        .iter()
        .position(|&b| NEEDS_ESCAPE[usize::from(b)])
        .map(|offset| clean + offset)
}

fn escape_into(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let mut start = 0;
    while let Some(offset) = first_needing_escape(&bytes[start..]) {
        let i = start + offset;
        out.extend_from_slice(&bytes[start..i]);
        match bytes[i] {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            other => {
                let _ = write!(out, "\\u{other:04x}");
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
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

    fn one_line(log: impl FnOnce(&slog::Logger)) -> serde_json::Value {
        let lines = Lines::default();
        let logger = slog::Logger::root(
            slog::Fuse(JsonLines::new(lines.clone())),
            slog::o!("version" => "1.2.3"),
        );
        log(&logger);
        let text = String::from_utf8(lines.0.lock().map(|b| b.clone()).unwrap_or_default())
            .expect("UTF-8");
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        serde_json::from_str(text.trim_end()).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    #[test]
    fn thousandths_are_written_as_ryu_writes_them() {
        let mut values: Vec<f64> = (0..200_000u32).map(|k| f64::from(k) / 1000.0).collect();
        values.extend([
            1e9 + 0.001,
            123_456_789.125,
            999_999_999_999.999,
            0.1 + 0.2,
            1e-4,
            2.5e-7,
        ]);
        values.extend([1e12, 3.0e15, f64::MAX, -1.5, -0.0]);
        let mut fast_paths = 0;
        for value in values {
            let mut fast = Vec::new();
            let expected = ryu::Buffer::new().format_finite(value).to_owned();
            if write_thousandths(&mut fast, value) {
                fast_paths += 1;
                assert_eq!(String::from_utf8_lossy(&fast), expected, "{value:e}");
            }
        }
        assert!(
            fast_paths >= 200_000,
            "only {fast_paths} values took the fast path"
        );
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
    fn the_word_scan_finds_the_same_byte_as_a_byte_scan() {
        let slow = |bytes: &[u8]| bytes.iter().position(|&b| NEEDS_ESCAPE[usize::from(b)]);
        let clean = b"abcdefghijklmnopqrstuvwxyz/ABC-0123".to_vec();
        assert_eq!(first_needing_escape(&clean), None);
        for b in 0..=255u8 {
            for at in 0..clean.len() {
                let mut text = clean.clone();
                text[at] = b;
                assert_eq!(
                    first_needing_escape(&text),
                    slow(&text),
                    "byte {b:#04x} at {at}"
                );
                // A second special byte later must not hide the first one.
                text[clean.len() - 1] = b'"';
                assert_eq!(first_needing_escape(&text), slow(&text));
            }
        }
    }

    #[test]
    fn a_static_message_with_quotes_is_escaped() {
        let line = one_line(|log| slog::info!(log, "say \"hi\""));
        assert_eq!(line["msg"], "say \"hi\"");
        assert_eq!(line["level"], "info");
    }
}
