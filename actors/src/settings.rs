//! Settings types, one section per concern. Keys reuse Celery's setting names minus the prefix
//! that the section supplies (`[broker] url` is `broker_url`, `[task] acks_late` is
//! `task_acks_late`). Loading (file, CLI) happens in the root crate; validation happens here.
//!
//! Each section has its own file (`broker`, `worker`, `task`, `result`, `python`, `beat`, and
//! `queues` for `task_queues`), its types re-exported here; this one holds [`Settings`], the
//! rules across sections ([`Settings::validate`]) and the values derived from several.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

mod beat;
mod broker;
mod python;
pub mod queues;
pub mod rate;
mod result;
mod task;
mod worker;

pub use beat::{BeatEntries, BeatEntry, BeatOptions, BeatSettings};
pub use broker::{BrokerSettings, amqp_scheme, mask_password, mask_urls};
pub use python::PythonSettings;
pub use queues::{BindingSpec, QueueSpec};
pub use result::{BackendKind, ResultSettings};
pub use task::{TaskOptions, TaskSettings};
pub use worker::{
    LOG_LEVELS, PoolKind, WorkerSettings, check_limit, metrics_socket, parse_autoscale,
};

/// Every setting of a worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `[broker]`: where the messages come from.
    pub broker: BrokerSettings,
    /// `[worker]`: node name, pool size, queues, prefetch, logging.
    pub worker: WorkerSettings,
    /// `[task]`: acknowledgement and result behaviour of tasks.
    pub task: TaskSettings,
    /// `[python]`: run a Python Celery app's own tasks (`-A`).
    pub python: PythonSettings,
    /// `[result]`: where Rust tasks' results go.
    pub result: ResultSettings,
    /// `[beat]`: the periodic task scheduler (`-B`, `worker beat`) and its entries.
    pub beat: BeatSettings,
}

impl Settings {
    /// The queues to declare and consume ([`queues::resolve`]).
    pub fn task_queues(&self) -> Result<Vec<queues::TaskQueue>, ConfigError> {
        queues::resolve(&self.task, &self.worker)
    }

    /// How many queues the worker consumes at start: the configured ones not excluded, and
    /// with `worker.direct` its own `<node>.dq2`.
    pub fn consumed_queues(&self) -> usize {
        self.task_queues().map_or(0, |q| q.len()) + usize::from(self.worker.direct)
    }

    /// Whether the prefetch limit is channel-wide (`broker.qos`, `broker.global_qos`).
    pub fn global_qos(&self) -> Result<bool, ConfigError> {
        let by_qos = match self.broker.qos.as_str() {
            "auto" => None,
            "global" => Some(true),
            "per-consumer" => Some(false),
            other => {
                return Err(ConfigError::invalid(
                    "broker.qos",
                    format!("{other:?} is not one of auto, global, per-consumer"),
                ));
            }
        };
        match (by_qos, self.broker.global_qos) {
            (Some(a), Some(b)) if a != b => Err(ConfigError::invalid(
                "broker.global_qos",
                format!(
                    "says {b} while broker.qos says {:?}: keep one of the two",
                    self.broker.qos
                ),
            )),
            (Some(a), _) | (None, Some(a)) => Ok(a),
            (None, None) => {
                Ok(!queues::any_quorum(&self.task, &self.worker) && self.consumed_queues() > 1)
            }
        }
    }

    /// Checks every value and cross-field rule; the error names the offending key. The checks
    /// run in this order, so that of several mistakes the same one is named first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.broker.validate_connection()?;
        let pool = self.worker.validate_pool()?;
        self.check_pool(pool)?;
        self.worker.validate_async_threads()?;
        self.task_queues()?;
        self.global_qos()?;
        // With -A the app's own result_backend is used, whatever it is.
        if self.python.app.is_none() {
            self.result.kind()?;
        }
        self.result.validate_expires()?;
        self.broker.validate_delayed_queue_type()?;
        self.worker.validate_logging()?;
        self.task.validate_time_limits()?;
        self.worker.validate_limits(pool, self.max_concurrency())?;
        self.task.validate_rate_limits()?;
        self.worker.validate_hostname()?;
        self.beat.validate()?;
        Ok(())
    }

    /// The pool named by `worker.pool` (prefork when it names none; `validate` refuses that).
    pub fn pool_kind(&self) -> PoolKind {
        PoolKind::parse(&self.worker.pool).unwrap_or_default()
    }

    /// What the pool cannot carry out is refused, naming the key: nothing configured is
    /// ignored.
    fn check_pool(&self, pool: PoolKind) -> Result<(), ConfigError> {
        if pool == PoolKind::Prefork {
            return Ok(());
        }
        let name = pool.name();
        if self.python.app.is_some() {
            return Err(ConfigError::invalid(
                "worker.pool",
                format!(
                    "{name}: Python tasks (-A) run in Python child processes, which only the \
                     prefork pool has; use -P prefork (the default)"
                ),
            ));
        }
        let no_child = |key: &str, what: &str| {
            ConfigError::invalid(
                key,
                format!(
                    "the {name} pool runs tasks inside the worker process: there is no child \
                     process to {what}. Leave it out, or use -P prefork"
                ),
            )
        };
        if self.worker.max_tasks_per_child > 0 {
            return Err(no_child(
                "worker.max_tasks_per_child",
                "replace after N tasks",
            ));
        }
        if self.worker.max_memory_per_child > 0 {
            return Err(no_child(
                "worker.max_memory_per_child",
                "replace when it grows",
            ));
        }
        if self.worker.pool_restarts {
            return Err(no_child("worker.pool_restarts", "restart"));
        }
        if pool.on_threads() && self.task.time_limit.is_some() {
            return Err(ConfigError::invalid(
                "task.time_limit",
                format!(
                    "the {name} pool runs tasks on threads, and a thread cannot be killed, so a \
                     hard time limit cannot be enforced. Use task.soft_time_limit \
                     (--soft-time-limit: the task sees it through its context), or -P prefork \
                     (the child is killed) or -P async (the future is cancelled)"
                ),
            ));
        }
        if pool == PoolKind::Solo && self.worker.concurrency > 1 {
            return Err(ConfigError::invalid(
                "worker.concurrency",
                format!(
                    "the solo pool runs one task at a time, not {}; use -P threads -c {} for \
                     that many at once",
                    self.worker.concurrency, self.worker.concurrency
                ),
            ));
        }
        if pool == PoolKind::Solo && self.worker.autoscale.is_some() {
            return Err(ConfigError::invalid(
                "worker.autoscale",
                "the solo pool runs one task at a time and cannot scale; use -P threads or \
                 -P async with --autoscale",
            ));
        }
        Ok(())
    }

    /// The default (soft, hard) limits from the `[task]` section.
    pub fn default_limits(&self) -> TaskOptions {
        TaskOptions {
            time_limit: self.task.time_limit,
            soft_time_limit: self.task.soft_time_limit,
            rate_limit: None,
            ignore_result: None,
        }
    }

    /// The number of child processes the pool starts with: the autoscale minimum, else
    /// `worker.concurrency`, or the number of CPUs when 0.
    pub fn effective_concurrency(&self) -> usize {
        if self.pool_kind() == PoolKind::Solo {
            return 1;
        }
        if let Some((_, min)) = self.autoscale() {
            return min;
        }
        match self.worker.concurrency {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        }
    }

    /// `(max, min)` when autoscaling.
    pub fn autoscale(&self) -> Option<(usize, usize)> {
        self.worker
            .autoscale
            .as_deref()
            .and_then(|a| parse_autoscale(a, self.pool_kind().max_concurrency()).ok())
    }

    /// The most child processes the pool may have: the autoscale maximum, else the fixed size.
    pub fn max_concurrency(&self) -> usize {
        match self.autoscale() {
            Some((max, _)) => max,
            None => self.effective_concurrency(),
        }
    }

    /// The most child processes (threads, tasks in flight) `pool_grow` and `autoscale` may
    /// reach: `worker.max_pool_size`, or when 0 four per CPU (an async pool: four times its
    /// own size), never less than the pool's own size.
    pub fn pool_size_limit(&self) -> usize {
        let pool = self.pool_kind();
        match self.worker.max_pool_size {
            0 => {
                let base = match pool {
                    PoolKind::Async => self.max_concurrency(),
                    _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
                };
                base.saturating_mul(4)
                    .max(self.max_concurrency())
                    .min(pool.max_concurrency())
            }
            n => n,
        }
    }

    /// The basic.qos prefetch count (0 = unlimited) for `processes` children, capped to what
    /// AMQP can carry.
    pub fn prefetch_for(&self, processes: usize) -> u16 {
        let n = processes.max(1) * usize::from(self.worker.prefetch_multiplier);
        u16::try_from(n).unwrap_or(u16::MAX)
    }

    /// The starting basic.qos prefetch count: [`Settings::max_concurrency`] × multiplier.
    pub fn prefetch_count(&self) -> u16 {
        self.prefetch_for(self.max_concurrency())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn spec(name: &str) -> QueueSpec {
        QueueSpec {
            name: name.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_valid() {
        Settings::default().validate().unwrap();
    }

    #[test]
    fn invalid_values_name_the_key() {
        let mut s = Settings::default();
        s.broker.url = "redis://localhost".into();
        assert!(
            matches!(s.validate(), Err(ConfigError::Invalid { key, .. }) if key == "broker.url")
        );
        let mut s = Settings::default();
        s.worker.loglevel = "loud".into();
        assert!(
            matches!(s.validate(), Err(ConfigError::Invalid { key, .. }) if key == "worker.loglevel")
        );
        let mut s = Settings::default();
        s.worker.queues = vec!["x".repeat(256)];
        assert!(
            matches!(s.validate(), Err(ConfigError::Invalid { key, .. }) if key == "worker.queues")
        );
        let mut s = Settings::default();
        s.broker.qos = "sometimes".into();
        assert!(
            matches!(s.validate(), Err(ConfigError::Invalid { key, .. }) if key == "broker.qos")
        );
        s.broker.qos = "global".into();
        s.broker.global_qos = Some(false);
        assert!(
            matches!(s.validate(), Err(ConfigError::Invalid { key, .. }) if key == "broker.global_qos")
        );
        let mut s = Settings::default();
        s.worker.hostname = "celery@%q".into();
        assert!(
            matches!(s.validate(), Err(ConfigError::Invalid { key, .. }) if key == "worker.hostname")
        );
    }

    #[test]
    fn prefetch_is_concurrency_times_multiplier() {
        let mut s = Settings::default();
        s.worker.concurrency = 3;
        s.worker.prefetch_multiplier = 4;
        assert_eq!(s.prefetch_count(), 12);
        s.worker.prefetch_multiplier = 0;
        assert_eq!(s.prefetch_count(), 0);
    }

    #[test]
    fn pools_refuse_what_they_cannot_do() {
        let mut s = Settings::default();
        let key = |s: &Settings| match s.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        s.worker.pool = "threads".into();
        s.task.time_limit = Some(5.0);
        assert_eq!(key(&s), "task.time_limit");
        s.task.time_limit = None;
        assert!(s.validate().is_ok());
        s.worker.pool = "async".into();
        s.worker.max_memory_per_child = 1000;
        assert_eq!(key(&s), "worker.max_memory_per_child");
        s.worker.max_memory_per_child = 0;
        s.worker.concurrency = 5000;
        assert!(s.validate().is_ok(), "thousands in flight");
        assert_eq!(s.pool_kind(), PoolKind::Async);
        s.worker.pool = "solo".into();
        assert_eq!(key(&s), "worker.concurrency");
        s.worker.concurrency = 0;
        assert_eq!(s.effective_concurrency(), 1);
        s.worker.pool = "gevent".into();
        assert_eq!(key(&s), "worker.pool");
        s.worker.pool = "async".into();
        s.python.app = Some("proj".into());
        assert_eq!(key(&s), "worker.pool");
    }

    #[test]
    fn qos_is_per_consumer_for_one_queue_or_any_quorum_queue_unless_set() {
        let mut s = Settings::default();
        assert!(
            !s.global_qos().unwrap(),
            "one classic queue: per-consumer (the same window, less broker work)"
        );
        s.worker.direct = true;
        assert!(
            s.global_qos().unwrap(),
            "two classic queues (celery and the node's dq2): global, as Celery on 3.x"
        );
        s.worker.direct = false;
        s.task.queues = vec![spec("a"), spec("b")];
        assert!(s.global_qos().unwrap(), "two classic queues: global");
        s.worker.queues = vec!["b".into()];
        assert!(
            !s.global_qos().unwrap(),
            "one of them consumed (-Q b): per-consumer"
        );
        s.worker.queues = Vec::new();
        s.task.queues = vec![
            spec("a"),
            QueueSpec {
                name: "q".into(),
                queue_arguments: [("x-queue-type".to_owned(), Value::from("quorum"))].into(),
                ..Default::default()
            },
        ];
        s.worker.exclude_queues = vec!["q".into()];
        assert!(
            !s.global_qos().unwrap(),
            "a quorum queue counts even when excluded, as in Celery"
        );
        s.broker.qos = "global".into();
        assert!(s.global_qos().unwrap());
        s.broker.qos = "auto".into();
        s.broker.global_qos = Some(true);
        assert!(s.global_qos().unwrap(), "the older key still decides");
    }
}
