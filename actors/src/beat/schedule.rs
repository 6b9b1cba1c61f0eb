//! The schedule's logic (pure): when an entry is due, what its last run becomes when it runs,
//! and the message it sends, as Celery's beat sends it.
//!
//! Times are seconds since the epoch (f64), as the schedule database keeps them.
//!
//! - A new entry counts as last run now (Celery's `default_now`): an `every` entry first runs
//!   one interval after the scheduler starts, a crontab entry at its next match.
//! - An `every` entry stays on its grid: after a run due at `d` the next is due at
//!   `d + every`, so lateness does not add up (Celery's beat counts from the moment it sent,
//!   and drifts by its lateness each time). Behind by more than an interval (the scheduler
//!   was down), it runs once and counts from then: a missed run runs once, as Celery's.
//! - A crontab entry is due at its first match after its last run; when it runs, its last run
//!   is now (Celery's), so runs missed while down are run once.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::crontab::Crontab;
use crate::protocol::encode::{TaskCall, TaskMessage};
use crate::settings::{BeatEntry, BeatOptions};

/// When an entry runs.
#[derive(Debug, Clone, PartialEq)]
pub enum When {
    /// Every this many seconds.
    Every(f64),
    /// On a crontab, in the scheduler's time zone.
    Crontab(Crontab),
}

impl std::fmt::Display for When {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            When::Every(s) => write!(f, "every {s}s"),
            When::Crontab(c) => write!(f, "{c}"),
        }
    }
}

/// One entry, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its name (the key of `[beat.schedule.<name>]` / `beat_schedule`).
    pub name: String,
    /// The task to send.
    pub task: String,
    /// When.
    pub when: When,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Routing, priority, expiry.
    pub options: BeatOptions,
}

impl Entry {
    /// The entry a (validated) setting describes.
    pub fn of(name: &str, e: &BeatEntry) -> Result<Entry, String> {
        let when = match (e.every, &e.crontab) {
            (Some(s), None) => When::Every(s),
            (None, Some(c)) => When::Crontab(Crontab::parse(c)?),
            _ => return Err(format!("{name}: give `every` or `crontab`")),
        };
        Ok(Entry {
            name: name.to_owned(),
            task: e.task.clone(),
            when,
            args: e.args.clone(),
            kwargs: e.kwargs.clone(),
            options: e.options.clone(),
        })
    }

    /// When it is due, having last run at `last_run_at`; None if a crontab never matches again.
    pub fn due_after(&self, last_run_at: f64, tz: &TimeZone) -> Option<f64> {
        match &self.when {
            When::Every(s) => Some(last_run_at + s),
            When::Crontab(c) => {
                let last = Timestamp::from_microsecond((last_run_at * 1e6) as i64).ok()?;
                let next = c.next_after(last, tz)?;
                Some(next.as_microsecond() as f64 / 1e6)
            }
        }
    }

    /// Its last run once it runs at `now`, having been due at `due`.
    pub fn ran(&self, due: f64, now: f64) -> f64 {
        match self.when {
            When::Every(s) if now - due < s => due,
            _ => now,
        }
    }

    /// The message that sends it at `now`, from `origin`, as Celery's beat sends it
    /// (`app.send_task` with the entry's options and the `celery_beat_task` header), plus
    /// `periodic_task_name` (the entry, as django-celery-beat names it): where to publish
    /// (exchange, routing key) and what. Results are wanted (a result backend stores them);
    /// nobody waits on a reply queue.
    pub fn message(
        &self,
        now: OffsetDateTime,
        origin: &str,
        default_queue: &str,
    ) -> (String, String, TaskMessage) {
        let o = &self.options;
        let call = TaskCall {
            name: self.task.clone(),
            args: self.args.clone(),
            kwargs: self.kwargs.clone(),
            eta: None,
            expires: o.expires.and_then(|s| crate::protocol::time::after(now, s)),
            reply_to: None,
            id: None,
            origin: origin.to_owned(),
            priority: o.priority.unwrap_or(0),
        };
        let mut msg = TaskMessage::new(&call, now);
        msg.headers.insert("ignore_result".into(), json!(false));
        msg.headers.insert("celery_beat_task".into(), json!(true));
        msg.headers
            .insert("periodic_task_name".into(), json!(self.name));
        let (exchange, key) = match (&o.exchange, &o.routing_key, &o.queue) {
            (Some(e), Some(k), _) => (e.clone(), k.clone()),
            (_, _, Some(q)) => (String::new(), q.clone()),
            _ => (String::new(), default_queue.to_owned()),
        };
        (exchange, key, msg)
    }
}

/// Seconds since the epoch of `t`.
pub fn epoch(t: OffsetDateTime) -> f64 {
    crate::protocol::time::epoch_f64(t)
}

/// `t` (seconds since the epoch) as an ISO-8601 UTC string, for replies and logs.
pub fn iso(t: f64) -> String {
    Timestamp::from_microsecond((t * 1e6) as i64)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(every: Option<f64>, crontab: Option<&str>) -> Entry {
        let e = BeatEntry {
            task: "tasks.add".into(),
            every,
            crontab: crontab.map(str::to_owned),
            args: vec![json!(1), json!(2)],
            ..Default::default()
        };
        Entry::of("adder", &e).unwrap()
    }

    #[test]
    fn every_stays_on_its_grid_and_runs_a_missed_run_once() {
        let e = entry(Some(10.0), None);
        let tz = TimeZone::UTC;
        assert_eq!(e.due_after(100.0, &tz), Some(110.0));
        // Sent 3 ms late: the next is still due at 120.
        assert_eq!(e.ran(110.0, 110.003), 110.0);
        // Down for a minute: runs once at 175, then every 10 s from there.
        assert_eq!(e.ran(120.0, 175.0), 175.0);
        assert_eq!(e.due_after(175.0, &tz), Some(185.0));
    }

    #[test]
    fn crontab_runs_at_its_next_match_and_counts_from_when_it_ran() {
        let e = entry(None, Some("*/5 * * * *"));
        let tz = TimeZone::UTC;
        // 1970-01-01 00:01:00 -> 00:05:00.
        assert_eq!(e.due_after(60.0, &tz), Some(300.0));
        assert_eq!(e.ran(300.0, 300.002), 300.002);
        assert_eq!(e.due_after(300.002, &tz), Some(600.0));
        // Missed several (down from 00:05 to 00:17): due at once, then 00:20.
        assert_eq!(e.due_after(300.0, &tz), Some(600.0));
        assert_eq!(e.ran(600.0, 1020.0), 1020.0);
        assert_eq!(e.due_after(1020.0, &tz), Some(1200.0));
    }

    #[test]
    fn the_message_is_what_celerys_beat_sends() {
        let mut e = entry(Some(1.0), None);
        let now = OffsetDateTime::now_utc();
        let (x, k, m) = e.message(now, "gen1@h", "celery");
        assert_eq!((x.as_str(), k.as_str()), ("", "celery"));
        assert_eq!(m.headers["task"], "tasks.add");
        assert_eq!(m.headers["celery_beat_task"], true);
        assert_eq!(m.headers["periodic_task_name"], "adder");
        assert_eq!(m.headers["ignore_result"], false);
        assert_eq!(m.headers["root_id"], json!(m.id));
        assert!(m.reply_to.is_empty());
        let body: Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(body[0], json!([1, 2]));
        e.options = BeatOptions {
            queue: Some("q".into()),
            priority: Some(7),
            expires: Some(30.0),
            ..Default::default()
        };
        let (x, k, m) = e.message(now, "gen1@h", "celery");
        assert_eq!((x.as_str(), k.as_str(), m.priority), ("", "q", 7));
        assert!(m.headers["expires"].is_string() && m.expiration.is_some());
        e.options.exchange = Some("x".into());
        e.options.routing_key = Some("rk".into());
        let (x, k, _) = e.message(now, "gen1@h", "celery");
        assert_eq!((x.as_str(), k.as_str()), ("x", "rk"));
    }
}
