//! Crontab schedules as Celery's `crontab` reads and runs them (pure).
//!
//! Five fields, `minute hour day_of_month month_of_year day_of_week`, in the order of
//! `crontab.from_string` and of cron(5). Each is Celery's `crontab_parser` grammar: `*`, a
//! number, a range `a-b` (wrapping past the end when `b < a`), a step `*/n` or `a-b/n`, and
//! comma lists of those; months and weekdays may be named (`jan`, `mon`, `monday`: the first
//! three letters count). Weekdays run from 0 (Sunday) to 6. As in Celery, a time matches
//! when **every** field matches (day of month *and* day of week, not cron's either-or), and
//! the next run after `t` is the first matching minute after `t`'s minute.
//!
//! ```
//! use celeryd_actors::crontab::Crontab;
//! let every_quarter = Crontab::parse("*/15 9-17 * * mon-fri").unwrap();
//! let tz = jiff::tz::TimeZone::UTC;
//! // Friday 2026-12-04 17:50 UTC -> Monday 09:00.
//! let last = "2026-12-04T17:50:00Z".parse::<jiff::Timestamp>().unwrap();
//! let next = every_quarter.next_after(last, &tz).unwrap();
//! assert_eq!(next.to_string(), "2026-12-07T09:00:00Z");
//! assert!(Crontab::parse("0 0 30 2 *").is_err()); // February has no 30th
//! ```

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// How far ahead a next run is looked for: a rare combination (the 29th of February on a
/// Monday) comes round within 28 years; past this the expression never matches.
const SEARCH_DAYS: i32 = 400 * 366;

/// A parsed crontab expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crontab {
    /// Minutes 0–59, a bit each.
    minute: u64,
    /// Hours 0–23.
    hour: u32,
    /// Days of the month 1–31 (bit n = day n).
    day_of_month: u32,
    /// Months 1–12 (bit n = month n).
    month_of_year: u16,
    /// Weekdays, bit 0 = Sunday.
    day_of_week: u8,
    /// As written.
    text: String,
}

/// One field's bounds: `min..min + size`.
#[derive(Debug, Clone, Copy)]
struct Field {
    name: &'static str,
    size: u32,
    min: u32,
}

const MINUTE: Field = Field {
    name: "minute",
    size: 60,
    min: 0,
};
const HOUR: Field = Field {
    name: "hour",
    size: 24,
    min: 0,
};
const DAY_OF_MONTH: Field = Field {
    name: "day_of_month",
    size: 31,
    min: 1,
};
const MONTH_OF_YEAR: Field = Field {
    name: "month_of_year",
    size: 12,
    min: 1,
};
const DAY_OF_WEEK: Field = Field {
    name: "day_of_week",
    size: 7,
    min: 0,
};

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
/// The most days each month can have (February: 29), as Celery checks a day against a month.
const DAYS_IN_MONTH: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

impl Crontab {
    /// Parses `"minute hour day_of_month month_of_year day_of_week"`; the error names the
    /// field and the problem.
    pub fn parse(text: &str) -> Result<Crontab, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [m, h, dom, moy, dow] = fields[..] else {
            return Err(format!(
                "{text:?} has {} fields; a crontab has five: minute hour day_of_month \
                 month_of_year day_of_week",
                fields.len()
            ));
        };
        let cron = Crontab {
            minute: parse_field(m, MINUTE)?,
            hour: parse_field(h, HOUR)? as u32,
            day_of_month: parse_field(dom, DAY_OF_MONTH)? as u32,
            month_of_year: parse_field(moy, MONTH_OF_YEAR)? as u16,
            day_of_week: parse_field(dow, DAY_OF_WEEK)? as u8,
            text: fields.join(" "),
        };
        let possible = (1..=12u32).any(|month| {
            cron.month_of_year & (1 << month) != 0
                && (1..=DAYS_IN_MONTH[month as usize - 1])
                    .any(|d| cron.day_of_month & (1 << d) != 0)
        });
        if !possible {
            return Err(format!(
                "day_of_month {dom:?} never occurs in month_of_year {moy:?}"
            ));
        }
        Ok(cron)
    }

    /// The expression as written (fields separated by one space).
    pub fn text(&self) -> &str {
        &self.text
    }

    fn date_matches(&self, d: Date) -> bool {
        let dow = d.weekday().to_sunday_zero_offset();
        self.month_of_year & (1 << d.month()) != 0
            && self.day_of_month & (1 << d.day()) != 0
            && self.day_of_week & (1 << dow) != 0
    }

    /// The first matching (hour, minute) at or after `from` on a matching day.
    fn first_time(&self, from: (i8, i8)) -> Option<(i8, i8)> {
        for hour in from.0..24 {
            if self.hour & (1 << hour) == 0 {
                continue;
            }
            let first_minute = if hour == from.0 { from.1 } else { 0 };
            if let Some(minute) = (first_minute..60).find(|m| self.minute & (1 << m) != 0) {
                return Some((hour, minute));
            }
        }
        None
    }

    /// The first matching civil minute strictly after `after`'s minute.
    pub fn next_civil(&self, after: DateTime) -> Option<DateTime> {
        let start = after
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let mut day = start.date();
        for i in 0..SEARCH_DAYS {
            if self.date_matches(day) {
                let from = if i == 0 {
                    (start.hour(), start.minute())
                } else {
                    (0, 0)
                };
                if let Some((hour, minute)) = self.first_time(from) {
                    let time = Time::new(hour, minute, 0, 0).ok()?;
                    return Some(day.to_datetime(time));
                }
            }
            day = day.tomorrow().ok()?;
        }
        None
    }

    /// When it runs next after `last` (the time it last ran), read in time zone `tz`. A wall
    /// time that a daylight-saving change skips runs at the same offset after the change; one
    /// that happens twice runs the first time. None if it never matches again.
    pub fn next_after(&self, last: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let mut civil = tz.to_datetime(last);
        loop {
            let next = self.next_civil(civil)?;
            let at = tz.to_ambiguous_timestamp(next).compatible().ok()?;
            if at > last {
                return Some(at);
            }
            civil = next;
        }
    }
}

impl std::fmt::Display for Crontab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Celery's `<crontab: m h dom mon dow (m/h/dM/MY/d)>` order, written cron's way.
        write!(f, "crontab({})", self.text)
    }
}

/// One field of an expression as a bit set (bit n = value n), with Celery's grammar and
/// bounds.
fn parse_field(spec: &str, field: Field) -> Result<u64, String> {
    let err = |why: String| format!("{} {spec:?}: {why}", field.name);
    let mut bits = 0u64;
    for part in spec.split(',') {
        if part.is_empty() {
            return Err(err("empty part".into()));
        }
        for value in parse_part(part, field).map_err(err)? {
            bits |= 1 << value;
        }
    }
    Ok(bits)
}

/// Celery's `crontab_parser._parse_part`: range with steps, range, star with steps, star,
/// else one number.
fn parse_part(part: &str, field: Field) -> Result<Vec<u32>, String> {
    let (head, step) = match part.split_once('/') {
        Some((head, step)) => (head, Some(step)),
        None => (part, None),
    };
    let values = match head.split_once('-') {
        Some((from, to)) if !from.is_empty() => expand_range(from, Some(to), field)?,
        _ if head == "*" => (field.min..field.min + field.size).collect(),
        _ => {
            if step.is_some() {
                return Err(format!("{part:?}: a step needs `*` or a range before it"));
            }
            expand_range(head, None, field)?
        }
    };
    match step {
        None => Ok(values),
        Some("") => Err("empty filter".into()),
        Some(step) => {
            let n: usize = step.parse().map_err(|_| format!("invalid step {step:?}"))?;
            if n == 0 {
                return Err("a step of 0".into());
            }
            Ok(values.into_iter().step_by(n).collect())
        }
    }
}

fn expand_range(from: &str, to: Option<&str>, field: Field) -> Result<Vec<u32>, String> {
    let a = number(from, field)?;
    let Some(to) = to else {
        return Ok(vec![a]);
    };
    let b = number(to, field)?;
    let end = field.min + field.size;
    Ok(if b < a {
        // Wraps past the end, as Celery's parser does: `22-2` hours is 22, 23, 0, 1, 2.
        (a..end).chain(field.min..=b).collect()
    } else {
        (a..=b).collect()
    })
}

/// A number, or a month or weekday name (the first three letters), within the field.
fn number(text: &str, field: Field) -> Result<u32, String> {
    if text.starts_with('-') {
        return Err("negative numbers not supported".into());
    }
    let value = match text.parse::<u32>() {
        Ok(n) => n,
        Err(_) => {
            let abbreviation = text.get(..3).unwrap_or(text).to_ascii_lowercase();
            let position = |names: &[&str]| names.iter().position(|n| *n == abbreviation);
            match (position(&MONTHS), position(&WEEKDAYS)) {
                (Some(m), _) => m as u32 + 1,
                (None, Some(d)) => d as u32,
                (None, None) => return Err(format!("invalid literal {text:?}")),
            }
        }
    };
    let max = field.min + field.size - 1;
    if value > max {
        return Err(format!("invalid end range: {value} > {max}"));
    }
    if value < field.min {
        return Err(format!("invalid beginning range: {value} < {}", field.min));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(expr: &str, after: &str) -> String {
        Crontab::parse(expr)
            .unwrap()
            .next_after(at(after), &TimeZone::UTC)
            .unwrap()
            .to_string()
    }

    #[test]
    fn fields_expand_as_celerys_parser() {
        let c = Crontab::parse("*/15 0,8-17/2 * jan-mar/2 sat-mon").unwrap();
        assert_eq!(c.minute, (1 << 0) | (1 << 15) | (1 << 30) | (1 << 45));
        let hours: Vec<u32> = (0..24).filter(|h| c.hour & (1 << h) != 0).collect();
        assert_eq!(hours, [0, 8, 10, 12, 14, 16]);
        assert_eq!(c.month_of_year, (1 << 1) | (1 << 3));
        // sat-mon wraps: Saturday, Sunday, Monday.
        assert_eq!(c.day_of_week, (1 << 6) | 1 | (1 << 1));
        let c = Crontab::parse("0 22-2 * * monday").unwrap();
        let hours: Vec<u32> = (0..24).filter(|h| c.hour & (1 << h) != 0).collect();
        assert_eq!(hours, [0, 1, 2, 22, 23]);
        assert_eq!(c.day_of_week, 1 << 1);
    }

    #[test]
    fn bad_expressions_name_the_field() {
        for (expr, says) in [
            ("* * * *", "five"),
            ("60 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day_of_month"),
            ("* * * 13 *", "month_of_year"),
            ("* * * * 7", "day_of_week"),
            ("*/0 * * * *", "step of 0"),
            ("*/ * * * *", "empty filter"),
            ("1,,2 * * * *", "empty part"),
            ("-1 * * * *", "negative"),
            ("x * * * *", "invalid literal"),
            ("0 0 31 4,6 *", "never occurs"),
        ] {
            let e = Crontab::parse(expr).unwrap_err();
            assert!(e.contains(says), "{expr}: {e}");
        }
    }

    #[test]
    fn next_runs() {
        assert_eq!(
            next("* * * * *", "2026-01-01T10:05:30Z"),
            "2026-01-01T10:06:00Z"
        );
        // The same minute never runs twice.
        assert_eq!(
            next("5 * * * *", "2026-01-01T10:05:00Z"),
            "2026-01-01T11:05:00Z"
        );
        assert_eq!(
            next("0 0 * * *", "2026-12-31T23:59:59Z"),
            "2027-01-01T00:00:00Z"
        );
        // Day of month AND day of week: the 13th that is a Friday.
        assert_eq!(
            next("0 12 13 * fri", "2026-01-01T00:00:00Z"),
            "2026-02-13T12:00:00Z"
        );
        // The 29th of February.
        assert_eq!(
            next("0 0 29 2 *", "2026-03-01T00:00:00Z"),
            "2028-02-29T00:00:00Z"
        );
        assert_eq!(
            next("30 4 1,15 * *", "2026-06-15T04:30:00Z"),
            "2026-07-01T04:30:00Z"
        );
    }

    #[test]
    fn time_zones_and_daylight_saving() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let c = Crontab::parse("0 9 * * *").unwrap();
        // 09:00 in Berlin is 08:00 UTC in winter, 07:00 UTC in summer.
        let winter = c.next_after(at("2026-01-10T12:00:00Z"), &berlin).unwrap();
        assert_eq!(winter.to_string(), "2026-01-11T08:00:00Z");
        let summer = c.next_after(at("2026-07-10T12:00:00Z"), &berlin).unwrap();
        assert_eq!(summer.to_string(), "2026-07-11T07:00:00Z");
        // 02:30 does not exist on 2026-03-29 in Berlin: it runs at 03:30 (01:30 UTC).
        let gap = Crontab::parse("30 2 * * *").unwrap();
        let at_gap = gap.next_after(at("2026-03-28T12:00:00Z"), &berlin).unwrap();
        assert_eq!(at_gap.to_string(), "2026-03-29T01:30:00Z");
        // 02:30 happens twice on 2026-10-25: it runs once.
        let first = gap.next_after(at("2026-10-24T12:00:00Z"), &berlin).unwrap();
        let second = gap.next_after(first, &berlin).unwrap();
        assert_eq!(first.to_string(), "2026-10-25T00:30:00Z");
        assert_eq!(second.to_string(), "2026-10-26T01:30:00Z");
    }
}
