//! `[beat]`: the periodic task scheduler's section and its entries (`[beat.schedule.<name>]`),
//! with their validation.

use serde::{Deserialize, Serialize};

use crate::crontab::Crontab;
use crate::error::ConfigError;

/// `[beat]` section: the periodic task scheduler, run inside the worker with `-B` (`[worker]
/// beat`) or alone with `worker beat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BeatSettings {
    /// `-s/--schedule`: the RocksDB directory that keeps each entry's last run, so that a
    /// restart neither runs an entry twice nor skips it (`%n`, `%h`… expanded). Default
    /// `celeryd-beat-schedule` (in the working directory, as Celery's `celerybeat-schedule`).
    pub schedule_db: String,
    /// Celery's `timezone`: the time zone crontab entries are read in (an IANA name).
    /// Default `UTC`.
    pub timezone: String,
    /// The exclusive queue whose owner is the one scheduler that publishes: several `-B`
    /// workers may run, and the others stand by until its connection goes. Schedulers of
    /// different schedules on one vhost need different names. Default `celeryd.beat`.
    pub lock: String,
    /// Seconds between a standing-by scheduler's attempts to take the lock. Default 1.
    pub lock_retry: super::Seconds,
    /// The entries, `[beat.schedule.<name>]` (Celery's `beat_schedule`). With `-A` the app's
    /// `beat_schedule` entries are added (these win on the same name).
    pub schedule: std::collections::BTreeMap<String, BeatEntry>,
}

impl Default for BeatSettings {
    fn default() -> Self {
        BeatSettings {
            schedule_db: "celeryd-beat-schedule".to_owned(),
            timezone: "UTC".to_owned(),
            lock: "celeryd.beat".to_owned(),
            lock_retry: super::Seconds::whole(1),
            schedule: std::collections::BTreeMap::new(),
        }
    }
}

/// Named entries (the app's `beat_schedule`, say), in order.
pub type BeatEntries = Vec<(String, BeatEntry)>;

/// One periodic task, `[beat.schedule.<name>]`: what to send and when.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BeatEntry {
    /// The task's registered name.
    pub task: String,
    /// Run every this many seconds (Celery's `timedelta` or number schedule).
    pub every: Option<f64>,
    /// Or on this crontab: `"minute hour day_of_month month_of_year day_of_week"`.
    pub crontab: Option<String>,
    /// Positional arguments.
    pub args: Vec<serde_json::Value>,
    /// Keyword arguments.
    pub kwargs: serde_json::Map<String, serde_json::Value>,
    /// How to send it.
    pub options: BeatOptions,
}

/// An entry's `options`: where its message goes and what it carries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BeatOptions {
    /// The queue (through the default exchange). Default: `task.default_queue`.
    pub queue: Option<String>,
    /// The exchange (with `routing_key`).
    pub exchange: Option<String>,
    /// The routing key.
    pub routing_key: Option<String>,
    /// Message priority, 0–255.
    pub priority: Option<u8>,
    /// Seconds after sending when the task expires (not run if not started by then).
    pub expires: Option<f64>,
}

impl BeatSettings {
    /// The time zone crontab entries are read in.
    pub fn time_zone(&self) -> Result<jiff::tz::TimeZone, ConfigError> {
        let name = self.timezone.trim();
        if name.eq_ignore_ascii_case("utc") {
            return Ok(jiff::tz::TimeZone::UTC);
        }
        jiff::tz::TimeZone::get(name).map_err(|e| {
            ConfigError::invalid(
                "beat.timezone",
                format!("{name:?} is not a time zone name (e.g. UTC, Europe/Berlin): {e}"),
            )
        })
    }

    /// Checks the section and every entry; the error names the entry and its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.time_zone()?;
        if self.schedule_db.trim().is_empty() {
            return Err(ConfigError::invalid("beat.schedule_db", "must be a path"));
        }
        if self.lock.is_empty() || self.lock.len() > 200 || self.lock.starts_with("amq.") {
            return Err(ConfigError::invalid(
                "beat.lock",
                "must be a queue name of 1 to 200 bytes, not starting with amq.",
            ));
        }
        if !(0.1..=3600.0).contains(&self.lock_retry.as_secs_f64()) {
            return Err(ConfigError::invalid(
                "beat.lock_retry",
                "must be from 0.1 to 3600 seconds",
            ));
        }
        for (name, entry) in &self.schedule {
            entry.validate(&format!("beat.schedule.{name}"))?;
        }
        Ok(())
    }
}

impl BeatEntry {
    /// Checks the entry; `key` is where it was written (`beat.schedule.<name>`, or the app's
    /// `beat_schedule[<name>]`), named in the error with the field.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let field = |f: &str| format!("{key}.{f}");
        if self.task.trim().is_empty() {
            return Err(ConfigError::invalid(
                field("task"),
                "the task's name is missing",
            ));
        }
        match (self.every, &self.crontab) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    field("every"),
                    "give `every` or `crontab`, not both",
                ));
            }
            (None, None) => {
                return Err(ConfigError::invalid(
                    field("every"),
                    "the entry has no schedule: give `every = <seconds>` or \
                     `crontab = \"m h dom mon dow\"`",
                ));
            }
            (Some(every), None) => {
                if !(every.is_finite() && every > 0.0 && every <= 31_536_000.0) {
                    return Err(ConfigError::invalid(
                        field("every"),
                        format!("{every} is not a number of seconds above 0 (at most a year)"),
                    ));
                }
            }
            (None, Some(cron)) => {
                Crontab::parse(cron).map_err(|why| ConfigError::invalid(field("crontab"), why))?;
            }
        }
        if let Some(e) = self.options.expires
            && !(e.is_finite() && (0.0..=31_536_000.0).contains(&e))
        {
            return Err(ConfigError::invalid(
                field("options.expires"),
                format!("{e} is not a number of seconds from 0 to a year"),
            ));
        }
        if self.options.exchange.is_some() != self.options.routing_key.is_some() {
            return Err(ConfigError::invalid(
                field("options.exchange"),
                "give `exchange` and `routing_key` together (or `queue`)",
            ));
        }
        for (f, v) in [
            ("options.queue", &self.options.queue),
            ("options.exchange", &self.options.exchange),
            ("options.routing_key", &self.options.routing_key),
        ] {
            if v.as_ref().is_some_and(|v| v.len() > 255) {
                return Err(ConfigError::invalid(field(f), "longer than 255 bytes"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    #[test]
    fn beat_entries_and_section_are_checked() {
        let mut s = Settings::default();
        let key = |s: &Settings| match s.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        let mut e = BeatEntry {
            task: "t".into(),
            every: Some(1.0),
            ..Default::default()
        };
        s.beat.schedule.insert("x".into(), e.clone());
        assert!(s.validate().is_ok());
        e.options.exchange = Some("ex".into());
        s.beat.schedule.insert("x".into(), e.clone());
        assert_eq!(key(&s), "beat.schedule.x.options.exchange");
        e.options.exchange = None;
        e.every = None;
        e.crontab = Some("* * * *".into());
        s.beat.schedule.insert("x".into(), e);
        assert_eq!(key(&s), "beat.schedule.x.crontab");
        s.beat.schedule.clear();
        s.beat.timezone = "Europe/Berlin".into();
        assert!(s.validate().is_ok());
        s.beat.timezone = "Nowhere/Special".into();
        assert_eq!(key(&s), "beat.timezone");
        s.beat.timezone = "UTC".into();
        s.beat.lock = "amq.x".into();
        assert_eq!(key(&s), "beat.lock");
    }
}
