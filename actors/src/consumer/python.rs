//! Python tasks in the consumer: what it does where Celery's MainProcess acts
//! (`python-child.md` §7, "Parent actions on done"). The parent never writes a Python task's
//! result: the child's tracer stores what the task did, and what MainProcess would store
//! itself (a hard limit, a lost child, `Reject`, revoked, expired, terminated, unregistered)
//! is written by Celery in the [`PythonHelper`](crate::helper::PythonHelper), which answers
//! how to settle the delivery and which events to send.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use tracing::{debug, error, info, warn};

use super::finish::Settle;
use super::{Consumer, ConsumerState};
use crate::events::build as event;
use crate::helper::{HelperMessage, REPORT_TIMEOUT};
use crate::process::python::{Done, PythonTask, ReportKind, Reported};
use crate::work::{Reserved, RevokeReason, TaskOutcome};

/// The Python side of a worker: the helper and the app's tasks as its `ready` frame
/// described them.
#[derive(Debug)]
pub struct PythonTasks {
    /// Where reports go.
    pub helper: ActorRef<HelperMessage>,
    /// The app's tasks, by name.
    pub tasks: HashMap<String, PythonTask>,
    /// The content types the app accepts (`accept_content` as MIME types; empty = JSON).
    pub accept: Vec<String>,
}

/// Celery's `accept_content` (serializer names or MIME types) as MIME types.
pub fn accept_mime_types(accept: &[String]) -> Vec<String> {
    accept
        .iter()
        .map(|a| match a.trim().to_ascii_lowercase().as_str() {
            "json" => "application/json".to_owned(),
            "pickle" => "application/x-python-serialize".to_owned(),
            "yaml" => "application/x-yaml".to_owned(),
            "msgpack" => "application/x-msgpack".to_owned(),
            other => other.to_owned(),
        })
        .collect()
}

/// Reads Celery's decision in a `reported` frame.
pub fn settle_of(decision: Option<&str>) -> Settle {
    match decision {
        Some("ack") => Settle::Ack,
        Some("reject") => Settle::Reject,
        Some("requeue") => Settle::Requeue,
        _ => Settle::Leave,
    }
}

/// What follows a `done` frame: settle the delivery now, or first have Celery record a
/// failure MainProcess records (then settle as it decides).
#[derive(Debug, Clone, PartialEq)]
pub enum AfterDone {
    /// Nothing left to write: settle.
    Settle(Settle),
    /// Celery writes this first.
    Report(ReportKind),
}

/// The parent's action on a `done` frame, as Celery's `Request.on_success`/`on_failure`
/// (with `return_ok`) decide it. `acks_late` and `acks_on_failure_or_timeout` are the task's
/// own (resolved by Celery from the app's configuration).
pub fn after_done(done: &Done, acks_late: bool, acks_on_failure_or_timeout: bool) -> AfterDone {
    let when_late = |s| if acks_late { s } else { Settle::Leave };
    if done.escaped == Some(true) {
        return AfterDone::Report(ReportKind::Internal(
            done.exc_repr.clone().unwrap_or_default(),
        ));
    }
    match done.state.as_str() {
        "SUCCESS" | "RETRY" => AfterDone::Settle(when_late(Settle::Ack)),
        "FAILURE" if acks_on_failure_or_timeout => AfterDone::Settle(when_late(Settle::Ack)),
        "FAILURE" => AfterDone::Settle(when_late(Settle::Reject)),
        "IGNORED" => AfterDone::Settle(Settle::Ack),
        "REJECTED" if done.requeue == Some(true) => AfterDone::Settle(Settle::Requeue),
        "REJECTED" => AfterDone::Report(ReportKind::Rejected(match &done.reason {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => done.exc_repr.clone().unwrap_or_default(),
        })),
        // An op the child did not know (a version mismatch): nothing was run or stored.
        _ => AfterDone::Report(ReportKind::Internal(format!(
            "the Python child answered {:?}",
            done.state
        ))),
    }
}

/// The metric a Python outcome counts as.
fn counted(outcome: &TaskOutcome) -> &'static str {
    match outcome {
        TaskOutcome::Python(d) => match d.state.as_str() {
            "SUCCESS" => "succeeded",
            "RETRY" => "retried",
            "IGNORED" | "REJECTED" => "rejected",
            _ => "failed",
        },
        TaskOutcome::Revoked(_) | TaskOutcome::Terminated(_) => "revoked",
        _ => "failed",
    }
}

impl Consumer {
    /// Whether the task acks after it ran: its own `acks_late` for a Python task (Celery
    /// resolved it from the app's configuration), else `[task] acks_late`.
    pub(super) fn acks_late(&self, state: &ConsumerState, task: &str) -> bool {
        let default = self.settings.task.acks_late;
        match &state.peers.python {
            Some(py) => py
                .tasks
                .get(task)
                .and_then(|t| t.acks_late)
                .unwrap_or(default),
            None => default,
        }
    }

    /// Has Celery (in the helper) record `kind` for this request, then sends the events it
    /// sent and settles the delivery as it decided, or as `fallback` says when it could not
    /// decide (the error is logged by the helper).
    pub(super) async fn report(
        &self,
        state: &mut ConsumerState,
        py: &Arc<PythonTasks>,
        reserved: &Reserved,
        kind: ReportKind,
        fallback: Settle,
    ) {
        let request = reserved.request.clone();
        let ask = |reply| HelperMessage::Report {
            request,
            kind,
            reply,
        };
        let timeout = 2 * REPORT_TIMEOUT + crate::helper::START_TIMEOUT;
        let reported =
            ractor::call_t!(py.helper, ask, timeout.as_millis() as u64).unwrap_or_else(|e| {
                Reported {
                    error: Some(format!("the helper did not answer: {e}")),
                    ..Reported::default()
                }
            });
        for e in reported.events.iter().filter_map(event::from_python) {
            state.event(|| e);
        }
        let settle = match (&reported.error, settle_of(reported.ack.as_deref())) {
            (Some(_), Settle::Leave) => fallback,
            (_, s) => s,
        };
        state.settle(reserved.delivery, settle);
    }

    /// A Python task ended (or will not run): log it, send its events, have Celery write
    /// what MainProcess writes, settle the delivery.
    pub(super) async fn on_python_finished(
        &self,
        state: &mut ConsumerState,
        py: Arc<PythonTasks>,
        reserved: Reserved,
        outcome: TaskOutcome,
        runtime: Duration,
    ) {
        let req = reserved.request.clone();
        let (name, id) = (req.display_name(), req.id.as_str());
        state.peers.metrics.task(&req.task, counted(&outcome));
        if !matches!(outcome, TaskOutcome::Revoked(_)) {
            state
                .peers
                .metrics
                .runtime(&req.task, runtime.as_secs_f64());
        }
        // Looked up, not copied: this runs once per task.
        let attrs = py.tasks.get(&req.task);
        let acks_late = self.acks_late(state, &req.task);
        let on_failure = attrs
            .and_then(|t| t.acks_on_failure_or_timeout)
            .unwrap_or(self.settings.task.acks_on_failure_or_timeout);
        let kind = match outcome {
            TaskOutcome::Python(done) => {
                let secs = done.runtime.unwrap_or(runtime.as_secs_f64());
                let exc = done.exc_repr.clone().unwrap_or_default();
                let tb = done.traceback.clone().unwrap_or_default();
                // Celery's tracer in the child logged the outcome already (as it does in a
                // prefork child); the parent only sends the events MainProcess sends.
                match done.state.as_str() {
                    "SUCCESS" => {
                        let ret = done.retstr.clone().unwrap_or_default();
                        debug!(task_id = %id, runtime = secs, "Task {name}[{id}] succeeded.");
                        state.event(|| event::task_succeeded(id, &ret, secs));
                    }
                    "RETRY" => {
                        debug!(task_id = %id, "Task {name}[{id}] retried.");
                        state.event(|| event::task_retried(id, &exc, &tb));
                    }
                    "FAILURE" if done.escaped != Some(true) => {
                        debug!(task_id = %id, runtime = secs, "Task {name}[{id}] failed: {exc}");
                        state.event(|| event::task_failed(id, &exc, &tb));
                    }
                    "IGNORED" => debug!(task_id = %id, "Task {name}[{id}] ignored."),
                    "REJECTED" => {
                        let requeue = done.requeue == Some(true);
                        debug!(task_id = %id, "Task {name}[{id}] rejected (requeue={requeue}).");
                        if requeue {
                            // Not requeued, Celery's own Request sends it in the report.
                            state.event(|| event::task_rejected(id, true));
                        }
                    }
                    _ => {
                        error!(task_id = %id, "Task {name}[{id}] failed in the Python child: {exc}\n{tb}");
                    }
                }
                match after_done(&done, acks_late, on_failure) {
                    AfterDone::Settle(s) => {
                        state.settle(reserved.delivery, s);
                        return;
                    }
                    AfterDone::Report(kind) => kind,
                }
            }
            // Celery's Request in the helper logs these failures, as MainProcess does.
            TaskOutcome::WorkerLost(how) => ReportKind::WorkerLost(how),
            TaskOutcome::TimeLimitExceeded(seconds) => ReportKind::TimeLimit(seconds),
            TaskOutcome::Terminated(signum) => {
                info!(task_id = %id, "Terminated task: {name}[{id}] (signal {signum}).");
                ReportKind::Terminated(signum)
            }
            TaskOutcome::Revoked(reason) => {
                info!(task_id = %id, "Discarding revoked task: {name}[{id}] ({reason}).");
                if reserved.holds_prefetch {
                    state.window.release();
                }
                match reason {
                    RevokeReason::Expired => ReportKind::Expired,
                    RevokeReason::Revoked => ReportKind::Revoked,
                }
            }
            other => {
                warn!(task_id = %id, "A Python task ended as a Rust one ({other:?}); acked.");
                state.settle(reserved.delivery, Settle::Ack);
                return;
            }
        };
        self.report(state, &py, &reserved, kind, Settle::Ack).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(state: &str) -> Done {
        Done {
            state: state.to_owned(),
            ..Done::default()
        }
    }

    #[test]
    fn done_frames_are_settled_as_celery_does() {
        use AfterDone::Settle as S;
        assert_eq!(after_done(&done("SUCCESS"), true, true), S(Settle::Ack));
        assert_eq!(after_done(&done("SUCCESS"), false, true), S(Settle::Leave));
        assert_eq!(after_done(&done("RETRY"), true, true), S(Settle::Ack));
        assert_eq!(after_done(&done("FAILURE"), true, true), S(Settle::Ack));
        assert_eq!(after_done(&done("FAILURE"), true, false), S(Settle::Reject));
        assert_eq!(after_done(&done("FAILURE"), false, false), S(Settle::Leave));
        assert_eq!(after_done(&done("IGNORED"), false, true), S(Settle::Ack));
        let requeue = Done {
            requeue: Some(true),
            ..done("REJECTED")
        };
        assert_eq!(after_done(&requeue, false, true), S(Settle::Requeue));
        let reject = Done {
            exc_repr: Some("Reject('no')".into()),
            reason: Some(serde_json::json!("no")),
            ..done("REJECTED")
        };
        assert_eq!(
            after_done(&reject, false, true),
            AfterDone::Report(ReportKind::Rejected("no".into()))
        );
        let escaped = Done {
            escaped: Some(true),
            exc_repr: Some("KeyError('x')".into()),
            ..done("FAILURE")
        };
        assert_eq!(
            after_done(&escaped, true, true),
            AfterDone::Report(ReportKind::Internal("KeyError('x')".into()))
        );
        assert!(matches!(
            after_done(&done("UNKNOWN_OP"), true, true),
            AfterDone::Report(ReportKind::Internal(_))
        ));
    }

    #[test]
    fn celery_decisions_are_read() {
        assert_eq!(settle_of(Some("ack")), Settle::Ack);
        assert_eq!(settle_of(Some("reject")), Settle::Reject);
        assert_eq!(settle_of(Some("requeue")), Settle::Requeue);
        assert_eq!(settle_of(None), Settle::Leave);
        assert_eq!(settle_of(Some("bogus")), Settle::Leave);
    }
}
