//! Timestamps as the seeds write them: RFC 3339 UTC with milliseconds and `Z`.

use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use humantime::Rfc3339Timestamp;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Now, as `2026-11-23T12:00:00.000Z`.
pub fn now() -> String {
    millis(SystemTime::now()).to_string()
}

/// Appends now, formatted as [`now`], to `out` (every log line's `ts`).
pub fn write_now(out: &mut Vec<u8>) {
    write!(out, "{}", millis(SystemTime::now()))
        .expect("a clamped time always formats and a Vec takes every byte");
}

/// `at` to the millisecond (truncated). humantime panics before 1970 and fails from year
/// 10000 on; a clock set that far off still gets a timestamp of the same shape.
fn millis(at: SystemTime) -> Rfc3339Timestamp {
    const LAST: Duration = Duration::from_millis(253_402_300_799_999); // 9999-12-31T23:59:59.999Z
    humantime::format_rfc3339_millis(at.clamp(UNIX_EPOCH, UNIX_EPOCH + LAST))
}

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp, if it is one.
pub fn parse_millis(text: &str) -> Option<i64> {
    let at = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(millis_since_epoch: u64) -> String {
        millis(UNIX_EPOCH + Duration::from_millis(millis_since_epoch)).to_string()
    }

    #[test]
    fn formats_with_milliseconds_and_z() {
        assert_eq!(at(1_795_435_200_007), "2026-11-23T12:00:00.007Z");
        assert_eq!(at(1_795_435_200_000), "2026-11-23T12:00:00.000Z");
        assert_eq!(at(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        // Sub-millisecond digits are cut, not rounded.
        let late = UNIX_EPOCH + Duration::from_nanos(1_500_999_999);
        assert_eq!(millis(late).to_string(), "1970-01-01T00:00:01.500Z");
    }

    #[test]
    fn a_clock_outside_the_four_digit_years_still_gets_the_format() {
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(millis(before).to_string(), "1970-01-01T00:00:00.000Z");
        let after = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert_eq!(millis(after).to_string(), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn write_now_and_now_have_the_format_and_parse_back() {
        let mut out = b"ts=".to_vec();
        write_now(&mut out);
        let written = String::from_utf8(out).expect("ASCII");
        let written = written.strip_prefix("ts=").expect("appended");
        let returned = now();
        for text in [written, returned.as_str()] {
            assert_eq!(text.len(), "2026-11-23T12:00:00.000Z".len(), "{text}");
            assert!(text.ends_with('Z') && text.as_bytes()[19] == b'.', "{text}");
        }
        let (first, second) = (parse_millis(written), parse_millis(&returned));
        let (first, second) = (first.expect("RFC 3339"), second.expect("RFC 3339"));
        assert!((second - first).abs() < 1000, "{written} {returned}");
    }

    #[test]
    fn parses_what_it_formats_and_what_the_seeds_write() {
        for ms in [0, 1500, 1_709_251_199_999, 1_795_435_200_007] {
            assert_eq!(parse_millis(&at(ms)), i64::try_from(ms).ok());
        }
        assert_eq!(
            parse_millis("2026-11-23T13:00:00.000+01:00"),
            Some(1_795_435_200_000)
        );
        assert_eq!(parse_millis("yesterday"), None);
    }
}
