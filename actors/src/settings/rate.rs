//! Celery's rate strings (`"10/s"`, `"200/m"`, `"100/h"`): parsed to tasks per second, and
//! written back. Pure; the token buckets that apply them are the pool's.

/// The slowest rate accepted: one task a year. Celery takes any positive float, but a rate
/// below this is a typo (`1e-300/s`) whose wait no timer can represent.
pub const MIN_RATE: f64 = 1.0 / 31_536_000.0;

/// Parses a Celery rate limit: `"10/s"`, `"200/m"`, `"100/h"`, or a bare number (per second).
/// Returns tasks per second; `None` for "no limit" (an empty string or zero, which Celery
/// reads as disabling the limit). A rate slower than one task a year ([`MIN_RATE`]) or one
/// that is not a finite number is an error.
///
/// ```
/// use celeryd_actors::settings::rate::parse_rate;
/// assert_eq!(parse_rate("10/s"), Ok(Some(10.0)));
/// assert_eq!(parse_rate("120/m"), Ok(Some(2.0)));
/// assert_eq!(parse_rate("0"), Ok(None));
/// assert!(parse_rate("fast").is_err());
/// ```
pub fn parse_rate(text: &str) -> Result<Option<f64>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let (ops, unit) = text.split_once('/').unwrap_or((text, "s"));
    let per = match unit.trim() {
        "s" | "" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "invalid rate limit {text:?}: unknown unit {other:?} (use s, m or h)"
            ));
        }
    };
    let ops: f64 = ops
        .trim()
        .parse()
        .map_err(|_| format!("invalid rate limit {text:?}: {ops:?} is not a number"))?;
    if !ops.is_finite() || ops < 0.0 {
        return Err(format!(
            "invalid rate limit {text:?}: must be a non-negative number"
        ));
    }
    let rate = ops / per;
    if rate > 0.0 && rate < MIN_RATE {
        return Err(format!(
            "invalid rate limit {text:?}: slower than one task a year (use 0 or \"\" for no limit)"
        ));
    }
    Ok(Some(rate).filter(|r| *r > 0.0))
}

/// A rate (tasks per second) written the way Celery's rate strings are: the smallest unit
/// that makes it a whole number (`0.5` -> `"30/m"`), else per second.
pub fn format_rate(per_second: f64) -> String {
    for (unit, factor) in [("s", 1.0), ("m", 60.0), ("h", 3600.0)] {
        let n = per_second * factor;
        if n >= 1.0 && (n - n.round()).abs() < 1e-6 {
            return format!("{}/{unit}", n.round() as u64);
        }
    }
    format!("{per_second}/s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_celery_rates() {
        assert_eq!(parse_rate("10/s"), Ok(Some(10.0)));
        assert_eq!(parse_rate("10"), Ok(Some(10.0)));
        assert_eq!(parse_rate(" 200/m "), Ok(Some(200.0 / 60.0)));
        assert_eq!(parse_rate("100/h"), Ok(Some(100.0 / 3600.0)));
        assert_eq!(parse_rate("1.5/s"), Ok(Some(1.5)));
        assert_eq!(parse_rate(""), Ok(None));
        assert_eq!(parse_rate("0/m"), Ok(None));
        for bad in [
            "ten/s", "10/d", "-1/s", "/s", "10/s/s", "NaN", "1e-300/s", "1e400/s", "inf",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(format_rate(10.0), "10/s");
        assert_eq!(format_rate(200.0 / 60.0), "200/m");
        assert_eq!(format_rate(100.0 / 3600.0), "100/h");
        assert_eq!(format_rate(1.5), "90/m");
    }
}
