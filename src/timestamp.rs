//! Timestamps as the seeds write them: RFC 3339 UTC with milliseconds and `Z`.

use std::fmt;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Now, as `2026-11-23T12:00:00.000Z`.
pub fn now() -> String {
    format(OffsetDateTime::now_utc())
}

pub fn format(at: OffsetDateTime) -> String {
    let mut out = String::with_capacity(24);
    let _ = write_to(at, &mut out);
    out
}

/// Appends now, formatted as [`now`], to `out` (no allocation, no formatting machinery:
/// every log line's `ts`).
pub fn write_now(out: &mut Vec<u8>) {
    let at = OffsetDateTime::now_utc();
    let mut digits = |value: u32, width: usize, then: u8| {
        let mut buf = [b'0'; 4];
        let mut v = value;
        for slot in buf[..width].iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&buf[..width]);
        if then != 0 {
            out.push(then);
        }
    };
    digits(at.year().clamp(0, 9999) as u32, 4, b'-');
    digits(u32::from(u8::from(at.month())), 2, b'-');
    digits(u32::from(at.day()), 2, b'T');
    digits(u32::from(at.hour()), 2, b':');
    digits(u32::from(at.minute()), 2, b':');
    digits(u32::from(at.second()), 2, b'.');
    digits(u32::from(at.millisecond()), 3, b'Z');
}

fn write_to(at: OffsetDateTime, out: &mut impl fmt::Write) -> fmt::Result {
    let at = at.to_offset(time::UtcOffset::UTC);
    write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp, if it is one.
pub fn parse_millis(text: &str) -> Option<i64> {
    let at = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn formats_with_milliseconds_and_z() {
        assert_eq!(
            format(datetime!(2026-11-23 12:00:00.0079 UTC)),
            "2026-11-23T12:00:00.007Z"
        );
        assert_eq!(
            format(datetime!(2026-11-23 13:00:00 +01:00)),
            "2026-11-23T12:00:00.000Z"
        );
    }

    #[test]
    fn write_now_has_the_format_of_now() {
        let mut out = Vec::new();
        write_now(&mut out);
        let text = String::from_utf8(out).expect("ASCII");
        assert_eq!(text.len(), "2026-11-23T12:00:00.000Z".len(), "{text}");
        let millis = parse_millis(&text).expect("RFC 3339");
        let again = parse_millis(&now()).expect("RFC 3339");
        assert!((again - millis).abs() < 1000, "{text}");
    }

    #[test]
    fn parses_what_it_formats_and_what_the_seeds_write() {
        assert_eq!(parse_millis("1970-01-01T00:00:01.500Z"), Some(1500));
        assert_eq!(
            parse_millis("2026-11-23T12:00:00.000Z"),
            Some(1_795_435_200_000)
        );
        assert_eq!(parse_millis("yesterday"), None);
    }
}
