//! Settings types, one section per concern. Keys reuse Celery's setting names minus the prefix
//! that the section supplies (`[broker] url` is `broker_url`, `[task] acks_late` is
//! `task_acks_late`). Loading (file, CLI) happens in the root crate; validation happens here.
//!
//! Each section has its own file (`broker`, `worker`, `task`, `result`, `python`, `beat`, and
//! `queues` for `task_queues`), its types re-exported here; this one holds [`Settings`], the
//! rules across sections ([`Settings::validate`]) and the values derived from several
//! ([`Derived`], computed once by [`Settings::validated`]). Closed sets of names are enums
//! (`pool`, `qos`, `failover_strategy`, queue types), `--autoscale` is an [`Autoscale`] and
//! durations are [`Seconds`], so that a wrong spelling is refused when the file is read,
//! naming the key, and no later code parses a setting again.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

mod beat;
mod broker;
mod python;
pub mod queues;
pub mod rate;
pub mod redis;
mod result;
mod seconds;
mod task;
mod worker;

pub use beat::{BeatEntries, BeatEntry, BeatOptions, BeatSettings};
pub use broker::{BrokerSettings, FailoverStrategy, Qos, amqp_scheme, mask_password, mask_urls};
pub use python::PythonSettings;
pub use queues::{BindingSpec, QueueSpec, QueueType};
pub use result::{BackendKind, ResultSettings};
pub use seconds::Seconds;
pub use task::{TaskOptions, TaskSettings};
pub use worker::{
    Autoscale, LOG_LEVELS, PoolKind, WorkerSettings, check_limit, metrics_socket, parse_autoscale,
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
    /// What validation derived from several sections ([`Settings::validated`]); `None` until
    /// then. Not a setting: never read nor written.
    #[serde(skip)]
    derived: Option<Arc<Derived>>,
}

/// The values that follow from several sections, computed once when the settings are
/// validated: every actor then reads the same answer, and none computes it again.
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    /// The queues to declare and consume ([`queues::resolve`]).
    pub task_queues: Vec<queues::TaskQueue>,
    /// Whether the prefetch limit is channel-wide (`broker.qos`, `broker.global_qos`).
    pub global_qos: bool,
}

impl Settings {
    /// These settings checked ([`Settings::validate`]), with what follows from them
    /// ([`Derived`]) kept: the form in which settings reach the actors.
    pub fn validated(mut self) -> Result<Settings, ConfigError> {
        let derived = self.validate()?;
        self.derived = Some(Arc::new(derived));
        Ok(self)
    }

    /// What validation derived. Settings reach the actors through [`Settings::validated`]
    /// (the loader, the test kit); one that did not is a programming error.
    pub fn derived(&self) -> &Derived {
        self.derived
            .as_deref()
            .expect("settings are used only once validated (Settings::validated)")
    }

    /// The queues to declare and consume ([`Derived::task_queues`]).
    pub fn task_queues(&self) -> &[queues::TaskQueue] {
        &self.derived().task_queues
    }

    /// Whether the prefetch limit is channel-wide ([`Derived::global_qos`]).
    pub fn global_qos(&self) -> bool {
        self.derived().global_qos
    }

    /// `broker.qos` (or the older `broker.global_qos`) resolved for `queues`: `auto` is
    /// per-consumer when any configured queue is a quorum queue or one queue is consumed
    /// (with `worker.direct`, the node's `<node>.dq2` counts), else global.
    fn resolve_qos(&self, queues: &[queues::TaskQueue]) -> Result<bool, ConfigError> {
        match (self.broker.qos.global(), self.broker.global_qos) {
            (Some(a), Some(b)) if a != b => Err(ConfigError::invalid(
                "broker.global_qos",
                format!(
                    "says {b} while broker.qos says {:?}: keep one of the two",
                    self.broker.qos
                ),
            )),
            (Some(a), _) | (None, Some(a)) => Ok(a),
            (None, None) => {
                let consumed = queues.len() + usize::from(self.worker.direct);
                Ok(!queues::any_quorum(&self.task, &self.worker) && consumed > 1)
            }
        }
    }

    /// Checks every value and cross-field rule, and returns what follows from several
    /// sections; the error names the offending key. The checks run in this order, so that of
    /// several mistakes the same one is named first.
    pub fn validate(&self) -> Result<Derived, ConfigError> {
        self.broker.validate_connection()?;
        self.worker.validate_pool()?;
        let pool = self.worker.pool;
        self.check_pool(pool)?;
        self.worker.validate_async_threads()?;
        let task_queues = queues::resolve(&self.task, &self.worker)?;
        let global_qos = self.resolve_qos(&task_queues)?;
        // With -A the app's own result_backend is used, whatever it is.
        if self.python.app.is_none() {
            self.result.kind()?;
        }
        self.worker.validate_logging()?;
        self.task.validate_time_limits()?;
        self.worker.validate_limits(pool, self.max_concurrency())?;
        self.task.validate_rate_limits()?;
        self.worker.validate_hostname()?;
        self.beat.validate()?;
        if self.worker.disable_prefetch && !self.broker.is_redis() {
            return Err(ConfigError::invalid(
                "worker.disable_prefetch",
                "Celery supports it on Redis brokers only; on RabbitMQ use \
                 prefetch_multiplier = 1 (--prefetch-multiplier 1: a task then goes to an idle \
                 child only, as -O fair)",
            ));
        }
        Ok(Derived {
            task_queues,
            global_qos,
        })
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
            time_limit: self.task.time_limit.map(Seconds::as_secs_f64),
            soft_time_limit: self.task.soft_time_limit.map(Seconds::as_secs_f64),
            rate_limit: None,
            ignore_result: None,
        }
    }

    /// The number of child processes the pool starts with: the autoscale minimum, else
    /// `worker.concurrency`, or the number of CPUs when 0.
    pub fn effective_concurrency(&self) -> usize {
        if self.worker.pool == PoolKind::Solo {
            return 1;
        }
        if let Some(a) = self.worker.autoscale {
            return a.min;
        }
        match self.worker.concurrency {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        }
    }

    /// The most child processes the pool may have: the autoscale maximum, else the fixed size.
    pub fn max_concurrency(&self) -> usize {
        match self.worker.autoscale {
            Some(a) => a.max,
            None => self.effective_concurrency(),
        }
    }

    /// The most child processes (threads, tasks in flight) `pool_grow` and `autoscale` may
    /// reach: `worker.max_pool_size`, or when 0 four per CPU (an async pool: four times its
    /// own size), never less than the pool's own size.
    pub fn pool_size_limit(&self) -> usize {
        let pool = self.worker.pool;
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
        let multiplier = if self.worker.disable_prefetch {
            1
        } else {
            self.worker.prefetch_multiplier
        };
        let n = processes.max(1) * usize::from(multiplier);
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
        s.broker.url = "sqs://localhost".into();
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
        s.broker.qos = Qos::Global;
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
        s.worker.pool = PoolKind::Threads;
        s.task.time_limit = Some(Seconds::whole(5));
        assert_eq!(key(&s), "task.time_limit");
        s.task.time_limit = None;
        assert!(s.validate().is_ok());
        s.worker.pool = PoolKind::Async;
        s.worker.max_memory_per_child = 1000;
        assert_eq!(key(&s), "worker.max_memory_per_child");
        s.worker.max_memory_per_child = 0;
        s.worker.concurrency = 5000;
        assert!(s.validate().is_ok(), "thousands in flight");
        s.worker.pool = PoolKind::Solo;
        assert_eq!(key(&s), "worker.concurrency");
        s.worker.concurrency = 0;
        assert_eq!(s.effective_concurrency(), 1);
        s.worker.pool = PoolKind::Async;
        s.python.app = Some("proj".into());
        assert_eq!(key(&s), "worker.pool");
    }

    #[test]
    fn qos_is_per_consumer_for_one_queue_or_any_quorum_queue_unless_set() {
        let global = |s: &Settings| s.validate().unwrap().global_qos;
        let mut s = Settings::default();
        assert!(
            !global(&s),
            "one classic queue: per-consumer (the same window, less broker work)"
        );
        s.worker.direct = true;
        assert!(
            global(&s),
            "two classic queues (celery and the node's dq2): global, as Celery on 3.x"
        );
        s.worker.direct = false;
        s.task.queues = vec![spec("a"), spec("b")];
        assert!(global(&s), "two classic queues: global");
        s.worker.queues = vec!["b".into()];
        assert!(!global(&s), "one of them consumed (-Q b): per-consumer");
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
            !global(&s),
            "a quorum queue counts even when excluded, as in Celery"
        );
        s.broker.qos = Qos::Global;
        assert!(global(&s));
        s.broker.qos = Qos::Auto;
        s.broker.global_qos = Some(true);
        assert!(global(&s), "the older key still decides");
    }
}
