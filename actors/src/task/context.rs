//! [`TaskContext`], what a running task sees of itself and asks of its worker, and the
//! [`TaskSignal`]s those requests travel as.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use super::TaskError;

/// What a running task asks its worker to do while it runs (sent from the child process to
/// the worker, which carries it out).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub enum TaskSignal {
    /// Store this state and meta as the task's result (`self.update_state`).
    UpdateState {
        /// A state name, e.g. `PROGRESS`.
        state: String,
        /// Its meta (JSON text).
        meta_json: String,
    },
    /// Send a task (`app.send_task` from inside a task): `parent_id` and `root_id` are
    /// this task's.
    SendTask {
        /// The signature as Celery's dict (JSON text), `options.task_id` set.
        signature_json: String,
    },
}

/// Where a task's [`TaskSignal`]s go (in a child process: the pipe to the worker).
pub type SignalSink = Arc<dyn Fn(TaskSignal) -> Result<(), String> + Send + Sync>;

/// What a running task can see about itself.
#[derive(Clone)]
pub struct TaskContext {
    /// Task id.
    pub id: String,
    /// Registered task name.
    pub name: String,
    /// How many times it was retried before.
    pub retries: u32,
    /// The worker's node name.
    pub hostname: String,
    soft_limit: Arc<AtomicBool>,
    /// Woken when the soft limit passes, for tasks that await it.
    soft_wake: Arc<tokio::sync::Notify>,
    signals: Option<SignalSink>,
}

impl std::fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskContext")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("retries", &self.retries)
            .field("hostname", &self.hostname)
            .finish()
    }
}

impl TaskContext {
    /// A context; `soft_limit` is raised by the child process when the parent signals that
    /// the soft time limit passed.
    pub fn new(
        id: String,
        name: String,
        retries: u32,
        hostname: String,
        soft_limit: Arc<AtomicBool>,
    ) -> Self {
        TaskContext {
            id,
            name,
            retries,
            hostname,
            soft_limit,
            soft_wake: Arc::default(),
            signals: None,
        }
    }

    /// With `wake` notified (as well as the flag raised) when the soft limit passes; a child
    /// process shares one between its tasks, as it shares the flag.
    pub fn with_soft_limit_wake(mut self, wake: Arc<tokio::sync::Notify>) -> Self {
        self.soft_wake = wake;
        self
    }

    /// Marks the soft time limit as passed and wakes the task if it awaits it (the worker
    /// calls this; a task has no reason to).
    pub fn raise_soft_limit(&self) {
        self.soft_limit.store(true, Ordering::Relaxed);
        self.soft_wake.notify_waiters();
    }

    /// Completes once the soft time limit has passed (never, if the task has none): an async
    /// task can `select!` on it to clean up, as a Python task catches
    /// `SoftTimeLimitExceeded`.
    pub async fn soft_time_limit_reached(&self) {
        loop {
            let notified = self.soft_wake.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the flag is read, so a raise in between is not missed.
            notified.as_mut().enable();
            if self.soft_time_limit_exceeded() {
                return;
            }
            notified.await;
        }
    }

    /// Sleeps for `duration` without holding a thread, or fails with `SoftTimeLimitExceeded`
    /// as soon as the soft time limit passes (propagate it with `?`).
    pub async fn sleep(&self, duration: Duration) -> Result<(), TaskError> {
        tokio::select! {
            () = tokio::time::sleep(duration) => Ok(()),
            () = self.soft_time_limit_reached() => Err(TaskError::soft_time_limit_exceeded()),
        }
    }

    /// With `sink` taking what the task asks of its worker ([`TaskContext::update_state`],
    /// [`TaskContext::send_task`]).
    pub fn with_signals(mut self, sink: SignalSink) -> Self {
        self.signals = Some(sink);
        self
    }

    fn signal(&self, signal: TaskSignal) -> Result<(), TaskError> {
        let sink = self
            .signals
            .as_ref()
            .ok_or_else(|| TaskError::new("RuntimeError", "the task does not run in a worker"))?;
        sink(signal).map_err(|e| TaskError::new("RuntimeError", e))
    }

    /// Celery's `self.update_state(state=…, meta=…)`: the result backend stores `state` with
    /// `meta` as the task's result until it ends (a client's `AsyncResult.state` / `.info`
    /// show it). With `rpc://` the client's reply queue gets it.
    pub fn update_state(&self, state: &str, meta: Value) -> Result<(), TaskError> {
        self.signal(TaskSignal::UpdateState {
            state: state.to_owned(),
            meta_json: meta.to_string(),
        })
    }

    /// Sends task `name` with `args` and `kwargs` (`app.send_task` from a task): `options`
    /// are Celery's (`queue`, `exchange`, `routing_key`, `countdown`, `eta`, `expires`,
    /// `priority`, `task_id`, `link`, `link_error`…). Its `parent_id` is this task and its
    /// `root_id` this task's root. Returns the new task's id.
    pub fn send_task(
        &self,
        name: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        options: Value,
    ) -> Result<String, TaskError> {
        let mut options = match options {
            Value::Object(o) => o,
            Value::Null => Map::new(),
            other => {
                return Err(TaskError::type_error(format!(
                    "send_task options must be an object, not {other}"
                )));
            }
        };
        let id = options
            .get("task_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        options.insert("task_id".into(), Value::String(id.clone()));
        let signature = serde_json::json!({
            "task": name, "args": args, "kwargs": kwargs, "options": options,
            "subtask_type": null, "immutable": true,
        });
        self.signal(TaskSignal::SendTask {
            signature_json: signature.to_string(),
        })?;
        Ok(id)
    }

    /// Whether the soft time limit has passed.
    pub fn soft_time_limit_exceeded(&self) -> bool {
        self.soft_limit.load(Ordering::Relaxed)
    }

    /// Celery's `self.retry(exc=…, countdown=…, max_retries=…)`; return what it gives from the
    /// task (`return Err(ctx.retry(e, 5.0, 3))`). While fewer than `max_retries` retries were
    /// made, the worker sends the task again (same id, `retries + 1`, due `countdown` seconds
    /// from now), reports RETRY with `exc` and sends `task-retried`. After that it is `exc`
    /// itself and the task fails with it, as Celery re-raises the exception it was given.
    pub fn retry(&self, exc: TaskError, countdown: f64, max_retries: u32) -> TaskError {
        if self.retries >= max_retries {
            return exc;
        }
        let countdown = if countdown.is_finite() {
            countdown.max(0.0)
        } else {
            0.0
        };
        TaskError {
            retry_in: Some(countdown),
            ..exc
        }
    }

    /// `Err(SoftTimeLimitExceeded)` once the soft time limit has passed; call it in loops and
    /// propagate with `?`, or catch it to clean up.
    pub fn check_soft_time_limit(&self) -> Result<(), TaskError> {
        if self.soft_time_limit_exceeded() {
            Err(TaskError::soft_time_limit_exceeded())
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> TaskContext {
        TaskContext::new("id".into(), "t".into(), 0, "h".into(), Arc::default())
    }

    #[test]
    fn retry_asks_for_a_retry_until_max_retries() {
        let e = TaskError::new("ValueError", "x");
        assert_eq!(ctx().retry(e.clone(), 2.5, 3).retry_in, Some(2.5));
        assert_eq!(ctx().retry(e.clone(), -1.0, 3).retry_in, Some(0.0));
        let mut last = ctx();
        last.retries = 3;
        assert_eq!(
            last.retry(e.clone(), 2.5, 3),
            e,
            "out of retries: the error itself"
        );
    }

    #[test]
    fn the_soft_limit_has_not_passed_until_raised() {
        let c = ctx();
        assert!(c.check_soft_time_limit().is_ok());
    }
}
