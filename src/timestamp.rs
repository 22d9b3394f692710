//! Timestamps as the seeds write them: RFC 3339 UTC with milliseconds and `Z`.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Now, as `2026-11-23T12:00:00.000Z`.
pub fn now() -> String {
    format(OffsetDateTime::now_utc())
}

pub fn format(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
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
    fn parses_what_it_formats_and_what_the_seeds_write() {
        assert_eq!(parse_millis("1970-01-01T00:00:01.500Z"), Some(1500));
        assert_eq!(
            parse_millis("2026-11-23T12:00:00.000Z"),
            Some(1_795_435_200_000)
        );
        assert_eq!(parse_millis("yesterday"), None);
    }
}
