//! The units of work the actors hand each other: a reserved request and the delivery it came
//! from, what a child reports when it starts one, and how a task ended. They sit at the bottom
//! of the tree so that the consumer, the pool, the children, the scheduler and the result path
//! share them without importing each other.

use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use serde_json::Value;

use crate::protocol::{ExceptionInfo, TaskRequest};

/// Identifies a delivery on a given connection generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeliveryRef {
    /// AMQP delivery tag.
    pub tag: u64,
    /// Connection generation it arrived on.
    pub generation: u64,
}

/// What the consumer needs when a child starts a task.
#[derive(Debug, Clone)]
pub struct StartedInfo {
    /// The delivery (acked now unless acks_late).
    pub delivery: DeliveryRef,
    /// The request (shared, not copied).
    pub request: Arc<TaskRequest>,
    /// The child's pid.
    pub pid: u32,
    /// Whether it was counted in the prefetch bump (held for an ETA or a rate-limit token):
    /// starting releases it.
    pub holds_prefetch: bool,
}

impl StartedInfo {
    /// Extracts the fields from a reserved request.
    pub fn of(r: &Reserved, pid: u32) -> Self {
        StartedInfo {
            delivery: r.delivery,
            request: r.request.clone(),
            pid,
            holds_prefetch: r.holds_prefetch,
        }
    }
}

/// A request waiting for (or running in) a child, with the delivery it came from.
#[derive(Debug)]
pub struct Reserved {
    /// The decoded request (shared with the pool's record of what each child runs).
    pub request: Arc<TaskRequest>,
    /// The delivery to ack or reject.
    pub delivery: DeliveryRef,
    /// Held by the scheduler before (its wait is not a queue wait).
    pub was_scheduled: bool,
    /// Counted in the consumer's prefetch bump (held for an ETA, or for a rate-limit token):
    /// released when it starts or is discarded, so held requests never fill the prefetch
    /// window.
    pub holds_prefetch: bool,
    /// When the consumer received it (for the queue-wait metric).
    pub received: Instant,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutcome {
    /// Returned a value.
    Success(Value),
    /// Raised.
    Failure {
        /// The exception.
        exc: ExceptionInfo,
        /// Traceback text.
        traceback: Option<String>,
    },
    /// The task asked to be retried (`TaskContext::retry`).
    Retry {
        /// The exception it gave.
        exc: ExceptionInfo,
        /// Traceback text.
        traceback: Option<String>,
        /// Seconds until the retry is due.
        countdown: f64,
    },
    /// The child process died while running it (how it exited).
    WorkerLost(String),
    /// Killed at its hard time limit (seconds).
    TimeLimitExceeded(f64),
    /// Not run: revoked, or expired.
    Revoked(RevokeReason),
    /// Revoked with `terminate` while it ran: the signal number it was sent.
    Terminated(i32),
    /// A Python task ran through Celery's tracer, which stored its result: how it ended, as
    /// the child says.
    Python(Box<Done>),
}

impl TaskOutcome {
    /// A task that returned an error: a retry when it asked for one (`retry_in` seconds),
    /// else a failure.
    pub fn of_error(exc: ExceptionInfo, traceback: Option<String>, retry_in: Option<f64>) -> Self {
        match retry_in {
            Some(countdown) => TaskOutcome::Retry {
                exc,
                traceback,
                countdown,
            },
            None => TaskOutcome::Failure { exc, traceback },
        }
    }
}

/// Why a request is not run although it was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    /// Its id is revoked.
    Revoked,
    /// Its `expires` passed before it started.
    Expired,
}

impl RevokeReason {
    /// The reason as Celery writes it (the REVOKED result's message, the log line).
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeReason::Revoked => "revoked",
            RevokeReason::Expired => "expired",
        }
    }

    /// Whether it expired (the `task-revoked` event's `expired` field).
    pub fn expired(self) -> bool {
        self == RevokeReason::Expired
    }
}

impl std::fmt::Display for RevokeReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a task run ended, as a Python child's `done` frame says (Celery's tracer already wrote
/// the result).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Done {
    /// The `seq` of the `run` frame.
    pub seq: u64,
    /// `SUCCESS`, `FAILURE`, `RETRY`, `IGNORED`, `REJECTED` or `EXIT`.
    pub state: String,
    /// The result's repr (for `task-succeeded`).
    pub retstr: Option<String>,
    /// Seconds the task ran.
    pub runtime: Option<f64>,
    /// The exception's class name.
    pub exc_type: Option<String>,
    /// The exception's module.
    pub exc_module: Option<String>,
    /// The exception's repr (for `task-failed`).
    pub exc_repr: Option<String>,
    /// The traceback text.
    pub traceback: Option<String>,
    /// `REJECTED`: requeue it.
    pub requeue: Option<bool>,
    /// `REJECTED`: the reason the task gave (`Reject(reason)`).
    pub reason: Option<Value>,
    /// Raised out of the tracer: nothing was stored.
    pub escaped: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_reasons_read_as_celery_writes_them() {
        assert_eq!(RevokeReason::Revoked.to_string(), "revoked");
        assert_eq!(RevokeReason::Expired.as_str(), "expired");
        assert!(RevokeReason::Expired.expired() && !RevokeReason::Revoked.expired());
    }
}
