//! One delivery: decoded (a Rust task's straight from the client's header table), decided
//! (unknown, revoked, expired, ETA) and handed on; far ETAs moved into the broker.
use std::sync::Arc;

use serde_json::json;
use time::OffsetDateTime;
use tracing::{error, info, warn};

use super::decide::{Decision, decide};
use super::finish::Settle;
use super::{Consumer, ConsumerState};
use crate::broker::{self, Delivery};
use crate::events::build as event;
use crate::process::python::ReportKind;
use crate::protocol::{ExceptionInfo, ResultState, decode_keeping_body};
use crate::revoke::RevokeMessage;
use crate::scheduler::SchedulerMessage;
use crate::work::{DeliveryRef, Reserved, RevokeReason};

impl Consumer {
    pub(super) async fn on_delivery(&self, state: &mut ConsumerState, d: Delivery) {
        let delivery = DeliveryRef {
            tag: d.tag,
            generation: state.generation,
        };
        if let Some(link) = &mut state.link {
            link.acks.delivered(d.tag);
        }
        let max = self.settings.worker.max_message_size;
        let Delivery { tag, info, message } = d;
        let decoded = match &state.peers.python {
            // Rust tasks: read from the client's header table, only what the request keeps
            // converted to JSON.
            None => message.decode_rust(info, max),
            Some(py) => {
                let raw = match message.raw(info) {
                    Ok(raw) => raw,
                    Err(e) => {
                        error!(
                            delivery_tag = tag,
                            "Received invalid task message: {e}. Rejected."
                        );
                        state.settle(delivery, Settle::Reject);
                        return;
                    }
                };
                decode_keeping_body(raw, max, &py.accept).map(|(mut r, body)| {
                    let properties = message.properties();
                    let m = crate::protocol::python::python_message(&r, body, properties);
                    r.python = Some(Box::new(m));
                    r
                })
            }
        };
        let request = match decoded {
            Ok(r) => r,
            Err(e) => {
                if e == crate::error::ProtocolError::UnknownMessage {
                    warn!(
                        delivery_tag = tag,
                        "Received and deleted unknown message. Wrong destination?!? ({e})"
                    );
                } else {
                    error!(
                        delivery_tag = tag,
                        "Received invalid task message: {e}. Rejected."
                    );
                }
                state.peers.metrics.malformed();
                state.settle(delivery, Settle::Reject);
                return;
            }
        };
        let registered = self.registered.contains(&request.task);
        // Rare awaits are boxed: this future is made for every delivery, and its size (what
        // the actor runtime moves around per message) is its largest state's.
        let revoked = registered && Box::pin(state.is_revoked(&request)).await;
        let now = OffsetDateTime::now_utc();
        let decision = decide(&request, registered, revoked, now);
        let mut reserved = Box::new(Reserved {
            request: Arc::new(request),
            delivery,
            was_scheduled: false,
            holds_prefetch: false,
            received: std::time::Instant::now(),
        });
        match decision {
            Decision::NotRegistered => {
                let name = &reserved.request.task;
                error!(task_id = %reserved.request.id,
                    "Received unregistered task of type '{name}'. The message has been rejected.");
                state.event(|| event::task_unregistered(&reserved.request.id, name));
                state.peers.metrics.unregistered();
                if let Some(py) = state.peers.python.clone() {
                    let kind = ReportKind::NotRegistered;
                    Box::pin(self.report(state, &py, &reserved, kind, Settle::Reject)).await;
                    return;
                }
                let exc =
                    ExceptionInfo::new("NotRegistered", "celery.exceptions", vec![json!(name)]);
                let st = ResultState::Failure {
                    exc,
                    traceback: None,
                };
                let ignore = self.registered_ignore(&reserved.request.task);
                Box::pin(state.publish_state(&reserved, &st, ignore, true)).await;
                state.settle(delivery, Settle::Reject);
            }
            Decision::Revoke(reason) => {
                info!(task_id = %reserved.request.id, "Discarding revoked task: {}[{}] ({reason}).",
                    reserved.request.display_name(), reserved.request.id);
                if let Some(py) = state.peers.python.clone() {
                    let kind = match reason {
                        RevokeReason::Expired => ReportKind::Expired,
                        RevokeReason::Revoked => ReportKind::Revoked,
                    };
                    Box::pin(self.report(state, &py, &reserved, kind, Settle::Ack)).await;
                    return;
                }
                state.event(|| {
                    event::task_revoked(&reserved.request.id, false, None, reason.expired())
                });
                let st = ResultState::Revoked(reason.as_str().to_owned());
                let ignore = self.registered_ignore(&reserved.request.task);
                Box::pin(state.publish_state(&reserved, &st, ignore, false)).await;
                state.settle(delivery, Settle::Ack);
            }
            Decision::Schedule(eta) => {
                state.peers.metrics.task(&reserved.request.task, "received");
                state.event(|| event::task_received(&reserved.request));
                info!(task_id = %reserved.request.id, "Task {}[{}] received (eta {})",
                    reserved.request.display_name(), reserved.request.id,
                    crate::protocol::time::format_iso(eta));
                if let Some(seconds) =
                    broker_delay(eta, now, self.settings.worker.eta_hold_max.as_secs_f64())
                    && let Some(ladder) = Box::pin(self.delay_in_broker(
                        state,
                        &message,
                        &reserved.request.delivery_info,
                        seconds,
                    ))
                    .await
                {
                    info!(task_id = %reserved.request.id, exchange = %ladder,
                        "Task {}[{}] waits in the broker for {seconds}s (beyond eta_hold_max).",
                        reserved.request.display_name(), reserved.request.id);
                    state.settle(delivery, Settle::Ack);
                    return;
                }
                state.window.hold();
                reserved.holds_prefetch = true;
                let _ = state
                    .peers
                    .scheduler
                    .cast(SchedulerMessage::Schedule(reserved));
            }
            Decision::Execute => {
                state.peers.metrics.task(&reserved.request.task, "received");
                state.event(|| event::task_received(&reserved.request));
                info!(task_id = %reserved.request.id, "Task {}[{}] received",
                    reserved.request.display_name(), reserved.request.id);
                state.to_pool.push(reserved);
            }
        }
    }

    /// Moves a far-future ETA message into the broker to wait there (then the caller acks
    /// the original); the exchange it went to, or `None` (logged) when the task is held.
    pub(super) async fn delay_in_broker(
        &self,
        state: &mut ConsumerState,
        d: &broker::Message,
        info: &crate::protocol::DeliveryInfo,
        seconds: u64,
    ) -> Option<String> {
        let link = state.link.as_mut()?;
        link.broker.delay(d, info, &state.queues, seconds).await
    }
}

/// Whole seconds to leave an ETA message waiting in the broker: when the ETA is further off
/// than `hold_max` seconds (0 = always hold in the worker). The message comes back up to a
/// second early and is then held for the rest.
pub(super) fn broker_delay(eta: OffsetDateTime, now: OffsetDateTime, hold_max: f64) -> Option<u64> {
    let wait = (eta - now).as_seconds_f64();
    (hold_max > 0.0 && wait > hold_max).then(|| wait.floor() as u64)
}

impl ConsumerState {
    pub(super) async fn is_revoked(&self, request: &crate::protocol::TaskRequest) -> bool {
        if self.peers.revoked.is_zero() {
            return false;
        }
        let id = request.id.clone();
        let stamps = crate::revoke::stamps::request_stamps(request);
        let ask = |reply| RevokeMessage::IsRevoked { id, stamps, reply };
        ractor::call_t!(self.peers.revoke, ask, 5000).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_etas_wait_in_the_broker() {
        let now = OffsetDateTime::now_utc();
        let later = |s: f64| now + time::Duration::seconds_f64(s);
        assert_eq!(broker_delay(later(5.0), now, 600.0), None);
        assert_eq!(broker_delay(later(3600.5), now, 600.0), Some(3600));
        assert_eq!(
            broker_delay(later(3600.0), now, 0.0),
            None,
            "0 = always hold"
        );
    }
}
