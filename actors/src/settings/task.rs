//! `[task]`: acknowledgement, result and limit defaults of tasks and the queue declarations
//! (`task_queues`, `task_default_*`); and [`TaskOptions`], a task's own limits at registration.

use serde::{Deserialize, Serialize};

use super::queues::QueueSpec;
use super::rate::parse_rate;
use super::{Seconds, check_limit};
use crate::error::ConfigError;

/// `[task]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskSettings {
    /// `task_acks_late`: ack after the task finished instead of when it starts. Default false.
    pub acks_late: bool,
    /// `task_track_started`: publish a STARTED result when a child starts the task.
    /// Default false.
    pub track_started: bool,
    /// `task_ignore_result`: publish no results (unless the message asks). Default false.
    pub ignore_result: bool,
    /// `task_store_errors_even_if_ignored`: store failures of tasks whose result is ignored.
    /// Default false.
    pub store_errors_even_if_ignored: bool,
    /// `task_acks_on_failure_or_timeout`: with acks_late, ack failed and timed-out tasks
    /// (else requeue them). Default true.
    pub acks_on_failure_or_timeout: bool,
    /// `task_reject_on_worker_lost`: with acks_late, requeue a task whose child died.
    /// Default false.
    pub reject_on_worker_lost: bool,
    /// `task_time_limit`: hard time limit in seconds for every task (the task's own limit and
    /// the message's `timelimit` header take precedence). Unset by default.
    pub time_limit: Option<Seconds>,
    /// `task_soft_time_limit`: soft time limit in seconds. Unset by default.
    pub soft_time_limit: Option<Seconds>,
    /// `task_default_rate_limit`: rate limit for every task (`"10/s"`, `"200/m"`, `"100/h"`, a
    /// bare number = per second). Unset by default.
    pub default_rate_limit: Option<String>,
    /// Per-task rate limits, `"task.name" = "10/s"` (what Celery sets through
    /// `task_annotations`). They override the task's own and the default. Empty by default.
    pub rate_limits: std::collections::BTreeMap<String, String>,
    /// `task_queues`: `[[task.queues]]` entries (name, exchange, exchange_type, routing_key,
    /// queue_arguments, bindings). Empty by default: the default queue only.
    pub queues: Vec<QueueSpec>,
    /// `task_default_queue`: the queue consumed when no queue is declared or named. Default
    /// `celery`.
    pub default_queue: String,
    /// `task_default_queue_type`: `classic` (the default) or `quorum`, for the default queue.
    pub default_queue_type: super::queues::QueueType,
    /// `task_default_exchange`: the default queue's exchange, and that of entries without
    /// one. Unset (the default): the queue's name.
    pub default_exchange: Option<String>,
    /// `task_default_exchange_type`: of entries without one. Default `direct`.
    pub default_exchange_type: String,
    /// `task_default_routing_key`: the default queue's binding key, and that of entries
    /// without one. Unset (the default): the queue's name.
    pub default_routing_key: Option<String>,
    /// `task_create_missing_queues`: a `-Q` name with no entry is declared as a plain queue.
    /// Default true; false refuses it.
    pub create_missing_queues: bool,
    /// `task_create_missing_queue_type`: `classic` (the default) or `quorum`, for those.
    pub create_missing_queue_type: super::queues::QueueType,
    /// `task_create_missing_queue_exchange_type`: their exchange's type. Unset (the
    /// default): `direct`.
    pub create_missing_queue_exchange_type: Option<String>,
    /// `task_queue_max_priority`: `x-max-priority` for every queue that has none (as in
    /// Celery, quorum queues too, which refuse it). Unset by default.
    pub queue_max_priority: Option<u8>,
}

impl Default for TaskSettings {
    fn default() -> Self {
        TaskSettings {
            acks_late: false,
            track_started: false,
            ignore_result: false,
            store_errors_even_if_ignored: false,
            acks_on_failure_or_timeout: true,
            reject_on_worker_lost: false,
            time_limit: None,
            soft_time_limit: None,
            default_rate_limit: None,
            rate_limits: std::collections::BTreeMap::new(),
            queues: Vec::new(),
            default_queue: "celery".to_owned(),
            default_queue_type: super::queues::QueueType::Classic,
            default_exchange: None,
            default_exchange_type: "direct".to_owned(),
            default_routing_key: None,
            create_missing_queues: true,
            create_missing_queue_type: super::queues::QueueType::Classic,
            create_missing_queue_exchange_type: None,
            queue_max_priority: None,
        }
    }
}

impl TaskSettings {
    /// Checks `task.time_limit` and `task.soft_time_limit`.
    pub(super) fn validate_time_limits(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("task.time_limit", self.time_limit),
            ("task.soft_time_limit", self.soft_time_limit),
        ] {
            if let Some(v) = value {
                check_limit(v.as_secs_f64()).map_err(|reason| ConfigError::invalid(key, reason))?;
            }
        }
        Ok(())
    }

    /// Checks `task.default_rate_limit` and every `task.rate_limits` entry.
    pub(super) fn validate_rate_limits(&self) -> Result<(), ConfigError> {
        if let Some(r) = &self.default_rate_limit {
            parse_rate(r).map_err(|e| ConfigError::invalid("task.default_rate_limit", e))?;
        }
        for (task, r) in &self.rate_limits {
            parse_rate(r)
                .map_err(|e| ConfigError::invalid(format!("task.rate_limits.{task}"), e))?;
        }
        Ok(())
    }
}

/// Per-task defaults set at registration (the config's values apply where these are None).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TaskOptions {
    /// Hard time limit in seconds: the child is killed and the task fails with
    /// `TimeLimitExceeded`.
    pub time_limit: Option<f64>,
    /// Soft time limit in seconds: the task is told (see `TaskContext::check_soft_time_limit`
    /// in the task module).
    pub soft_time_limit: Option<f64>,
    /// Rate limit in tasks per second.
    pub rate_limit: Option<f64>,
    /// `ignore_result` at registration: store no result (a message's own `ignore_result`
    /// header wins). None: the `task_ignore_result` setting.
    pub ignore_result: Option<bool>,
}

#[cfg(test)]
mod tests {
    use crate::error::ConfigError;
    use crate::settings::{Seconds, Settings};

    #[test]
    fn time_limits_must_be_positive() {
        let mut s = Settings::default();
        s.task.time_limit = Some(Seconds::whole(0));
        assert!(
            matches!(s.validate(), Err(ConfigError::Invalid { key, .. }) if key == "task.time_limit")
        );
        let e = toml::from_str::<Settings>("[task]\nsoft_time_limit = -1\n").unwrap_err();
        assert!(e.to_string().contains("soft_time_limit"), "{e}");
        let mut s = Settings::default();
        s.task.time_limit = Some(Seconds::whole(2));
        s.task.soft_time_limit = Some(Seconds::whole(5));
        s.validate().unwrap();
    }

    #[test]
    fn rate_limits_are_checked() {
        let mut s = Settings::default();
        s.task.rate_limits.insert("tasks.add".into(), "10/x".into());
        assert!(matches!(s.validate(),
            Err(ConfigError::Invalid { key, .. }) if key == "task.rate_limits.tasks.add"));
        let mut s = Settings::default();
        s.task.default_rate_limit = Some("lots".into());
        assert!(matches!(s.validate(),
            Err(ConfigError::Invalid { key, .. }) if key == "task.default_rate_limit"));
    }
}
