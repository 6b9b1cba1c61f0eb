//! ISO-8601 times as Python's `isoformat()` writes them, and epoch helpers.

use time::format_description::well_known::{Iso8601, Rfc3339};
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

/// Parses an `isoformat()` string; a naive time (no offset) is taken as UTC.
pub fn parse_iso(s: &str) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    if let Ok(t) = OffsetDateTime::parse(s, &Iso8601::DEFAULT) {
        return Ok(t);
    }
    match PrimitiveDateTime::parse(s, &Iso8601::DEFAULT) {
        Ok(t) => Ok(t.assume_utc()),
        Err(e) => Err(format!("{s:?} is not an ISO-8601 time: {e}")),
    }
}

/// `seconds` after `now`, or `None` when that is no time at all (not finite, or past the
/// calendar's end): countdowns come from outside and must never overflow into a panic.
///
/// ```
/// use celeryd_actors::protocol::time::after;
/// let now = time::OffsetDateTime::UNIX_EPOCH;
/// assert_eq!(after(now, 1.5), Some(now + time::Duration::milliseconds(1500)));
/// assert_eq!(after(now, 1e300), None);
/// assert_eq!(after(now, f64::NAN), None);
/// ```
pub fn after(now: OffsetDateTime, seconds: f64) -> Option<OffsetDateTime> {
    now.checked_add(time::Duration::checked_seconds_f64(seconds)?)
}

/// Formats like Python's `datetime.isoformat()` for an aware UTC time:
/// `2026-11-23T23:17:21.850145+00:00` (no fraction when it is zero).
pub fn format_iso(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    let micros = t.microsecond();
    let base = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    if micros == 0 {
        format!("{base}+00:00")
    } else {
        format!("{base}.{micros:06}+00:00")
    }
}

/// Seconds since the epoch as a float, as Python's `time.time()`.
pub fn epoch_f64(t: OffsetDateTime) -> f64 {
    t.unix_timestamp_nanos() as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_python_forms() {
        let a = parse_iso("2026-11-23T23:17:21.850145+00:00").unwrap();
        assert_eq!(a.microsecond(), 850145);
        let b = parse_iso("2026-11-23T23:17:21").unwrap();
        assert_eq!(b.offset(), UtcOffset::UTC);
        let c = parse_iso("2026-11-24T01:17:21.850145+02:00").unwrap();
        assert_eq!(a, c);
        let d = parse_iso("2026-11-23T23:17:21.850145").unwrap();
        assert_eq!(a, d);
        assert!(parse_iso("tomorrow").is_err());
        assert!(parse_iso("").is_err());
    }

    #[test]
    fn formats_like_isoformat() {
        let a = parse_iso("2026-11-23T23:17:21.850145+00:00").unwrap();
        assert_eq!(format_iso(a), "2026-11-23T23:17:21.850145+00:00");
        let b = parse_iso("2026-11-23T23:17:21+00:00").unwrap();
        assert_eq!(format_iso(b), "2026-11-23T23:17:21+00:00");
    }
}
