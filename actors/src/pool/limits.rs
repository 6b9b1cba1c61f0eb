//! Which limits apply: the time limits of one task ([`effective_limits`]) and the rate limits
//! a worker starts with ([`effective_rates`]). Pure.

use std::collections::HashMap;

use super::rate;
use crate::process::Limits;
use crate::settings::Settings;
use crate::task::TaskOptions;

/// The limits a task runs under: the message's `timelimit` header first, then the task's own
/// limits (from registration, changed at runtime by `time_limit`), then the `[task]` defaults.
/// A soft limit at or above the hard one could never fire first, so it is dropped.
pub fn effective_limits(
    header: (Option<f64>, Option<f64>),
    task: TaskOptions,
    defaults: TaskOptions,
) -> Limits {
    let (header_hard, header_soft) = header;
    let hard = header_hard
        .or(task.time_limit)
        .or(defaults.time_limit)
        .filter(|h| *h > 0.0);
    let soft = header_soft
        .or(task.soft_time_limit)
        .or(defaults.soft_time_limit)
        .filter(|s| *s > 0.0)
        .filter(|s| hard.is_none_or(|h| *s < h));
    Limits { soft, hard }
}

/// The rate limits a worker starts with: per task, the config's `[task.rate_limits]` entry,
/// else the task's own (registration), else `[task] default_rate_limit`; none at all with
/// `disable_rate_limits`. Values were validated with the settings.
pub fn effective_rates(
    settings: &Settings,
    tasks: &HashMap<String, TaskOptions>,
) -> HashMap<String, f64> {
    if settings.worker.disable_rate_limits {
        return HashMap::new();
    }
    let parse = |s: &str| rate::parse_rate(s).ok().flatten();
    let default = settings.task.default_rate_limit.as_deref().and_then(parse);
    tasks
        .iter()
        .filter_map(|(name, opts)| {
            let configured = settings.task.rate_limits.get(name).map(|s| parse(s));
            let rate = match configured {
                Some(explicit) => explicit,
                None => opts.rate_limit.or(default),
            };
            rate.map(|r| (name.clone(), r))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_come_from_header_then_task_then_defaults() {
        let none = TaskOptions::default();
        let task = TaskOptions {
            time_limit: Some(10.0),
            soft_time_limit: Some(5.0),
            ..Default::default()
        };
        let defaults = TaskOptions {
            time_limit: Some(60.0),
            soft_time_limit: Some(50.0),
            ..Default::default()
        };
        let l = |s, h| Limits { soft: s, hard: h };
        assert_eq!(effective_limits((None, None), none, none), l(None, None));
        assert_eq!(
            effective_limits((None, None), none, defaults),
            l(Some(50.0), Some(60.0))
        );
        assert_eq!(
            effective_limits((None, None), task, defaults),
            l(Some(5.0), Some(10.0))
        );
        // Header order is [hard, soft]; each falls back on its own.
        assert_eq!(
            effective_limits((Some(3.0), None), task, defaults),
            l(None, Some(3.0))
        );
        assert_eq!(
            effective_limits((None, Some(1.0)), task, defaults),
            l(Some(1.0), Some(10.0))
        );
        // Soft without hard, and hard without soft.
        let soft_only = TaskOptions {
            time_limit: None,
            soft_time_limit: Some(2.0),
            ..Default::default()
        };
        assert_eq!(
            effective_limits((None, None), soft_only, none),
            l(Some(2.0), None)
        );
        let hard_only = TaskOptions {
            time_limit: Some(2.0),
            soft_time_limit: None,
            ..Default::default()
        };
        assert_eq!(
            effective_limits((None, None), hard_only, none),
            l(None, Some(2.0))
        );
        // soft >= hard: the hard limit still applies, the soft one is dropped.
        let inverted = TaskOptions {
            time_limit: Some(2.0),
            soft_time_limit: Some(9.0),
            ..Default::default()
        };
        assert_eq!(
            effective_limits((None, None), inverted, none),
            l(None, Some(2.0))
        );
    }

    #[test]
    fn rates_come_from_config_then_task_then_default() {
        let mut s = Settings::default();
        let opts = |r: Option<f64>| TaskOptions {
            rate_limit: r,
            ..Default::default()
        };
        let tasks = HashMap::from([
            ("a".to_owned(), opts(Some(1.0))),
            ("b".to_owned(), opts(None)),
            ("c".to_owned(), opts(Some(3.0))),
        ]);
        assert_eq!(
            effective_rates(&s, &tasks),
            HashMap::from([("a".into(), 1.0), ("c".into(), 3.0)])
        );
        s.task.default_rate_limit = Some("120/m".into());
        s.task.rate_limits.insert("c".into(), "0".into());
        let r = effective_rates(&s, &tasks);
        assert_eq!(
            r,
            HashMap::from([("a".into(), 1.0), ("b".into(), 2.0)]),
            "0 in config removes it"
        );
        s.worker.disable_rate_limits = true;
        assert!(effective_rates(&s, &tasks).is_empty());
    }
}
