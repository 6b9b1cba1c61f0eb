//! A task's start and end as the pool reports them: the delivery settled (acked, rejected,
//! requeued) when Celery's rules say, results and events sent.
use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;
use tracing::{error, info};

use super::{Consumer, ConsumerMessage, ConsumerState};
use crate::events::build as event;
use crate::pool::WorkMsg;
use crate::protocol::repr::{py_repr, truncate};
use crate::protocol::{ExceptionInfo, ResultState};
use crate::work::{DeliveryRef, Reserved, StartedInfo, TaskOutcome};

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// `basic.ack`.
    Ack,
    /// `basic.reject`, not requeued (dead-lettered where the queue says so).
    Reject,
    /// Handed back to the broker (`basic.nack` with requeue).
    Requeue,
    /// Handed back unstarted at shutdown: as `Requeue` on AMQP; on Redis put back at the
    /// front of its queue (kombu's restore of what a closing worker held).
    GiveBack,
    /// Leave it: it was settled already (acked when the task started).
    Leave,
}

impl Consumer {
    pub(super) async fn on_started(&self, state: &mut ConsumerState, info: StartedInfo) {
        if info.holds_prefetch {
            state.window.release();
        }
        let req = &info.request;
        if !self.acks_late(state, &req.task) {
            state.settle(info.delivery, Settle::Ack);
        }
        state.event(|| event::task_started(&req.id));
        if state.peers.python.is_some() {
            return; // Celery's tracer in the child stores STARTED (track_started)
        }
        let keeps = state
            .results
            .keeps(req, self.registered_ignore(&req.task), false);
        if self.settings.task.track_started && keeps {
            let st = ResultState::Started {
                pid: info.pid,
                hostname: self.hostname.clone(),
            };
            state.store_result(req, &st).await;
        }
    }

    pub(super) async fn on_finished(
        &self,
        state: &mut ConsumerState,
        reserved: Reserved,
        outcome: TaskOutcome,
        runtime: Duration,
    ) {
        if let Some(py) = state.peers.python.clone() {
            return Box::pin(self.on_python_finished(state, py, reserved, outcome, runtime)).await;
        }
        let task = &self.settings.task;
        let req = &reserved.request;
        let (name, id) = (req.display_name(), &req.id);
        let secs = runtime.as_secs_f64();
        let ignore = self.registered_ignore(&req.task);
        let metrics = &state.peers.metrics;
        let counted = match &outcome {
            TaskOutcome::Success(_) => "succeeded",
            TaskOutcome::WorkerLost(_) if task.acks_late && task.reject_on_worker_lost => {
                "rejected"
            }
            TaskOutcome::Failure { .. }
            | TaskOutcome::TimeLimitExceeded(_)
            | TaskOutcome::WorkerLost(_) => "failed",
            TaskOutcome::Retry { .. } => "retried",
            TaskOutcome::Revoked(_) | TaskOutcome::Terminated(_) => "revoked",
            TaskOutcome::Python(_) => "failed",
        };
        metrics.task(&req.task, counted);
        if !matches!(outcome, TaskOutcome::Revoked(_)) {
            // Terminated tasks ran: their run time counts.
            metrics.runtime(&req.task, secs);
        }
        match outcome {
            TaskOutcome::Success(value) => {
                // The repr is only built for the log line and the event, when they are on.
                let events = state.peers.task_events.enabled();
                if events || tracing::enabled!(tracing::Level::INFO) {
                    let repr = truncate(py_repr(&value), 1024);
                    info!(task_id = %id, runtime = secs, "Task {name}[{id}] succeeded in {secs:.6}s: {repr}");
                    state.event(|| event::task_succeeded(id, &repr, secs));
                }
                // What is not done for every task is boxed: this future is made for each
                // finished task, and the actor runtime moves it whole.
                let st = ResultState::Success(value);
                if state.results.keeps(&reserved.request, ignore, false) {
                    Box::pin(state.store_result(&reserved.request, &st)).await;
                }
                if let (false, ResultState::Success(value)) =
                    (reserved.request.embed.is_null(), &st)
                {
                    Box::pin(state.after_success(&reserved.request, value)).await;
                }
                if task.acks_late {
                    state.settle(reserved.delivery, Settle::Ack);
                }
            }
            other => Box::pin(self.finished_otherwise(state, reserved, other, ignore, secs)).await,
        }
    }

    /// [`Consumer::on_finished`] of a task that did not succeed.
    pub(super) async fn finished_otherwise(
        &self,
        state: &mut ConsumerState,
        reserved: Reserved,
        outcome: TaskOutcome,
        ignore: Option<bool>,
        secs: f64,
    ) {
        let task = &self.settings.task;
        let req = &reserved.request;
        let (name, id) = (req.display_name(), &req.id);
        match outcome {
            TaskOutcome::Success(_) => unreachable!("on_finished handles it"),
            TaskOutcome::Failure { exc, traceback } => {
                error!(task_id = %id, runtime = secs, "Task {name}[{id}] raised unexpected: {}", exc.repr());
                self.fail(state, &reserved, exc, traceback, false).await;
            }
            TaskOutcome::Retry {
                exc,
                traceback,
                countdown,
            } => {
                let now = OffsetDateTime::now_utc();
                let again = crate::protocol::encode::retry_message(req, countdown, now);
                // Where it was sent, never back into a ladder; through Celery's ladder where a
                // Python client's countdown would go.
                let info = &req.delivery_info;
                let q = state.queues.iter().find(|q| q.name == info.queue);
                let (exchange, key) = match &state.link {
                    Some(link) => link.broker.retry_route(info, q, countdown),
                    None => (String::new(), info.queue.to_string()), // not connected: fails below
                };
                let sent = state.publish_on_side(&exchange, &key, &again).await;
                let tb = traceback.clone().unwrap_or_default();
                match sent {
                    Ok(()) => {
                        info!(task_id = %id, exchange = %exchange, routing_key = %key,
                            "Task {name}[{id}] retry: Retry in {countdown}s: {}", exc.repr());
                        state.event(|| event::task_retried(id, &exc.repr(), &tb));
                        let st = ResultState::Retry { exc, traceback };
                        state.publish_state(&reserved, &st, ignore, false).await;
                        state.settle(reserved.delivery, Settle::Ack);
                    }
                    Err(e) => {
                        error!(task_id = %id, error = %e,
                            "Task {name}[{id}] could not be sent for retry; it fails: {}", exc.repr());
                        self.fail(state, &reserved, exc, traceback, false).await;
                    }
                }
            }
            TaskOutcome::WorkerLost(how) => {
                if task.acks_late && task.reject_on_worker_lost {
                    error!(task_id = %id, "Task {name}[{id}] lost its child process ({how}); requeued.");
                    state.event(|| event::task_rejected(id, true));
                    state.settle(reserved.delivery, Settle::Requeue);
                    return;
                }
                let msg = format!("Worker exited prematurely: {how}.");
                error!(task_id = %id, "Task handler raised error: WorkerLostError('{msg}') for {name}[{id}]");
                let exc =
                    ExceptionInfo::new("WorkerLostError", "billiard.exceptions", vec![json!(msg)]);
                self.fail(state, &reserved, exc, None, true).await;
            }
            TaskOutcome::TimeLimitExceeded(seconds) => {
                let exc = ExceptionInfo::new(
                    "TimeLimitExceeded",
                    "billiard.exceptions",
                    vec![json!(seconds)],
                );
                error!(task_id = %id, "Task {name}[{id}] raised unexpected: {}", exc.repr());
                self.fail(state, &reserved, exc, None, false).await;
            }
            TaskOutcome::Python(done) => {
                // Only a Python child says this, and only a worker with the helper has them.
                error!(task_id = %id, state = %done.state, "A Python outcome without Python tasks; acked.");
                state.settle(reserved.delivery, Settle::Ack);
            }
            TaskOutcome::Revoked(_) | TaskOutcome::Terminated(_) => {
                let (reason, signum) = match outcome {
                    TaskOutcome::Terminated(signum) => ("terminated", Some(signum)),
                    TaskOutcome::Revoked(reason) => (reason.as_str(), None),
                    _ => unreachable!("matched above"),
                };
                info!(task_id = %id, "Discarding revoked task: {name}[{id}] ({reason}).");
                state.event(|| {
                    event::task_revoked(id, signum.is_some(), signum, reason == "expired")
                });
                // Only a request that never started still holds its bump (a terminated one
                // released it when it started).
                if reserved.holds_prefetch && signum.is_none() {
                    state.window.release();
                }
                state.after_revoked(&reserved.request, reason);
                state
                    .publish_state(
                        &reserved,
                        &ResultState::Revoked(reason.to_owned()),
                        ignore,
                        false,
                    )
                    .await;
                state.settle(reserved.delivery, Settle::Ack);
            }
        }
    }

    /// Reports a failed task: `task-failed`, a FAILURE result, and with acks_late the delivery
    /// settled: acked when `ack_anyway` (a lost child), else as `acks_on_failure_or_timeout`
    /// says.
    pub(super) async fn fail(
        &self,
        state: &mut ConsumerState,
        reserved: &Reserved,
        exc: ExceptionInfo,
        traceback: Option<String>,
        ack_anyway: bool,
    ) {
        let task = &self.settings.task;
        let id = &reserved.request.id;
        state.event(|| {
            event::task_failed(id, &exc.repr(), traceback.as_deref().unwrap_or_default())
        });
        let ignore = self.registered_ignore(&reserved.request.task);
        state.after_failure(&reserved.request, &exc).await;
        let st = ResultState::Failure { exc, traceback };
        state.publish_state(reserved, &st, ignore, true).await;
        if task.acks_late {
            let settle = if ack_anyway || task.acks_on_failure_or_timeout {
                Settle::Ack
            } else {
                Settle::Requeue
            };
            state.settle(reserved.delivery, settle);
        }
    }
}

impl ConsumerState {
    /// Acks `d` with the others ready by the time the mailbox's messages so far are taken
    /// ([`ConsumerMessage::FlushAcks`]).
    fn ack(&mut self, d: DeliveryRef) {
        let Some(link) = &mut self.link else {
            return;
        };
        if d.generation != self.generation || !link.acks.ready(d.tag) {
            return;
        }
        if !self.acks_flush_queued {
            self.acks_flush_queued = true;
            let _ = self.myself.cast(ConsumerMessage::FlushAcks);
        }
    }

    /// Hands the pool the requests gathered while handling this message: deliveries that
    /// arrived together go in one [`WorkMsg::ReserveAll`].
    pub(super) fn reserve_in_pool(&mut self) {
        let msg = match self.to_pool.len() {
            0 => return,
            1 => self.to_pool.pop().map(|r| WorkMsg::Reserve(r).into()),
            _ => Some(WorkMsg::ReserveAll(std::mem::take(&mut self.to_pool)).into()),
        };
        if let Some(msg) = msg {
            let _ = self.peers.pool.cast(msg);
        }
    }

    /// Sends the acks that are ready, as few frames as they allow.
    pub(super) fn flush_acks(&mut self) {
        self.acks_flush_queued = false;
        if let Some(link) = &mut self.link {
            for (tag, multiple) in link.acks.take() {
                link.broker.ack(tag, multiple);
            }
        }
    }

    /// Hands `d` back to the broker with `how` (a reject, a requeue, a give-back), if it is
    /// of this connection and not settled yet.
    fn hand_back(&mut self, d: DeliveryRef, how: impl FnOnce(&crate::broker::Link, u64)) {
        let Some(link) = &mut self.link else {
            return;
        };
        if d.generation == self.generation && link.acks.settled(d.tag) {
            how(&link.broker, d.tag);
        }
    }

    /// Publishes a task message (a retry, a canvas step) on the side channel, in confirm mode;
    /// a failure drops the channel (opened again for the next).
    pub(super) async fn publish_on_side(
        &mut self,
        exchange: &str,
        routing_key: &str,
        message: &crate::protocol::encode::TaskMessage,
    ) -> Result<(), String> {
        let Some(link) = self.link.as_mut() else {
            return Err("not connected to the broker".to_owned());
        };
        link.broker
            .publish_own(exchange, routing_key, message)
            .await
            .map_err(|e| e.to_string())
    }

    /// Settles `d` as `how` says: the one way every outcome ends its delivery.
    pub(super) fn settle(&mut self, d: DeliveryRef, how: Settle) {
        match how {
            Settle::Ack => self.ack(d),
            Settle::Reject => self.hand_back(d, |l, tag| l.reject(tag, false)),
            Settle::Requeue => self.hand_back(d, |l, tag| l.reject(tag, true)),
            Settle::GiveBack => self.hand_back(d, |l, tag| l.give_back(tag)),
            Settle::Leave => {}
        }
    }
}
