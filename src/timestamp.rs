//! Timestamps as the seeds write them: RFC 3339 UTC with milliseconds and `Z`.

use std::cell::Cell;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

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
/// every log line's `ts`). The date and time up to the second are formatted once per second
/// per thread; a line within the same second only adds its milliseconds.
pub fn write_now(out: &mut Vec<u8>) {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let (second, millis) = (since_epoch.as_secs(), since_epoch.subsec_millis());
    thread_local! {
        /// The last second formatted on this thread, as `YYYY-MM-DDTHH:MM:SS.`.
        static SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
    }
    let prefix = SECOND.with(|cached| {
        let (at, prefix) = cached.get();
        if at == second {
            return prefix;
        }
        let prefix = second_prefix(second);
        cached.set((second, prefix));
        prefix
    });
    out.extend_from_slice(&prefix);
    out.extend_from_slice(&digits::<3>(millis));
    out.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS.` of a Unix second (years past 9999 are written as 9999).
fn second_prefix(second: u64) -> [u8; 20] {
    let at = i64::try_from(second)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut text = [0u8; 20];
    text[..4].copy_from_slice(&digits::<4>(at.year().clamp(0, 9999) as u32));
    text[4] = b'-';
    text[5..7].copy_from_slice(&digits::<2>(u32::from(u8::from(at.month()))));
    text[7] = b'-';
    text[8..10].copy_from_slice(&digits::<2>(u32::from(at.day())));
    text[10] = b'T';
    text[11..13].copy_from_slice(&digits::<2>(u32::from(at.hour())));
    text[13] = b':';
    text[14..16].copy_from_slice(&digits::<2>(u32::from(at.minute())));
    text[16] = b':';
    text[17..19].copy_from_slice(&digits::<2>(u32::from(at.second())));
    text[19] = b'.';
    text
}

/// The last `N` decimal digits of `value`, zero-padded.
fn digits<const N: usize>(mut value: u32) -> [u8; N] {
    let mut text = [b'0'; N];
    for slot in text.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
    text
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
    fn the_cached_second_is_what_format_writes() {
        for at in [
            datetime!(1970-01-01 00:00:00 UTC),
            datetime!(2026-11-23 12:34:56.789 UTC),
            datetime!(2024-02-29 23:59:59.999 UTC),
        ] {
            let second = u64::try_from(at.unix_timestamp()).expect("after 1970");
            let mut line = second_prefix(second).to_vec();
            line.extend_from_slice(&digits::<3>(u32::from(at.millisecond())));
            line.push(b'Z');
            assert_eq!(String::from_utf8_lossy(&line), format(at));
        }
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
