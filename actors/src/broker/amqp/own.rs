//! What the worker publishes on its own account over a [`Link`]: retries and canvas steps,
//! and far-ETA copies moved into a delay ladder. They go out on a side channel in confirm
//! mode, so the original delivery is acked only once the broker confirmed the copy, and a
//! broker refusal (a deleted exchange: 404) closes that channel only, never the one the
//! tasks are consumed and acked on. The channel is opened on first use and again after a
//! failure; what was declared on it (celeryd's delay ladder) is declared again with it.

use std::future::Future;

use tracing::warn;

use super::route::{self, Route};
use super::{Channel, Link, TaskQueue, delay};
use crate::broker::{self, BrokerError};
use crate::protocol::DeliveryInfo;
use crate::protocol::encode::TaskMessage;

impl Link {
    /// The side channel, opened in confirm mode when there is none or it was closed.
    async fn side_channel(&mut self) -> Result<Channel, BrokerError> {
        if let Some(ch) = &self.own.side
            && ch.is_open()
        {
            return Ok(ch.clone());
        }
        let ch = self.confirm_channel().await?;
        self.own.side = Some(ch.clone());
        self.own.delay_declared = false;
        Ok(ch)
    }

    /// A publish on the side channel failed: the channel is dropped (and with it what was
    /// declared on it), to be opened again for the next.
    fn side_failed(&mut self) {
        self.own.side = None;
        self.own.delay_declared = false;
    }

    /// The consumed queues changed: the delay ladder is declared again (with the new
    /// queue's bindings) before its next use.
    pub fn queues_changed(&mut self) {
        self.own.delay_declared = false;
    }

    /// Records whether Celery's native delayed delivery is declared on this connection:
    /// countdowns of queues on non-direct exchanges then go through it.
    pub fn set_native_declared(&mut self, declared: bool) {
        self.own.native_declared = declared;
    }

    /// Where a retry of a task delivered as `info` goes: where it was sent, never back into
    /// a ladder; through Celery's ladder where a Python client's countdown would go.
    pub fn retry_route(
        &self,
        info: &DeliveryInfo,
        queue: Option<&TaskQueue>,
        countdown: f64,
    ) -> (String, String) {
        let target = route::retry_target(info, queue);
        route::route(target, queue, countdown, self.own.native_declared).into_parts()
    }

    /// Publishes a task message (a retry, a canvas step) on the side channel and waits for
    /// the broker's confirm; a failure drops the channel.
    pub async fn publish_own(
        &mut self,
        exchange: &str,
        routing_key: &str,
        message: &TaskMessage,
    ) -> Result<(), BrokerError> {
        let ch = self.side_channel().await?;
        let sent = ch.publish_task_to(exchange, routing_key, message).await;
        if sent.is_err() {
            self.side_failed();
        }
        sent
    }

    /// Moves a far-future ETA message into a broker-side delay ladder (the caller then acks
    /// the original): Celery's, where its queue is reached through a non-direct exchange and
    /// the native topology is declared (as a Python client would have sent it), else
    /// celeryd's own, which routes by queue name. `None`, after logging, if that failed or
    /// the queue's name is too long for the ladder: the task is then held. Returns the
    /// exchange it went to.
    pub async fn delay(
        &mut self,
        message: &broker::Message,
        info: &DeliveryInfo,
        queues: &[TaskQueue],
        seconds: u64,
    ) -> Option<String> {
        let queue = info.queue.as_str();
        let q = queues.iter().find(|q| q.name == queue);
        let target = route::retry_target(info, q);
        let (exchange, key) =
            match route::route(target, q, seconds as f64, self.own.native_declared) {
                Route::Native {
                    exchange,
                    routing_key,
                } => (exchange, routing_key),
                Route::Now { .. } if !delay::can_delay(queue) => return None,
                Route::Now { .. } => (
                    delay::level_name(delay::LEVELS - 1),
                    delay::routing_key(seconds, queue),
                ),
            };
        let ch = match self.side_channel().await {
            Ok(ch) => ch,
            Err(e) => {
                warn!(error = %e, "Cannot open a channel to publish on; holding the ETA task.");
                return None;
            }
        };
        if !self.own.delay_declared && exchange.starts_with("celeryd.") {
            let names: Vec<String> = queues.iter().map(|q| q.name.clone()).collect();
            if let Err(e) = ch.declare_delay_topology(&names).await {
                warn!(error = %e, "Cannot declare the delay topology; holding ETA tasks instead.");
                self.side_failed();
                return None;
            }
            self.own.delay_declared = true;
        }
        match ch.publish_delayed(message, &exchange, &key).await {
            Ok(()) => Some(exchange),
            Err(e) => {
                warn!(error = %e, exchange = %exchange,
                    "Cannot move an ETA task to the broker; holding it instead.");
                self.side_failed();
                None
            }
        }
    }

    /// Declaring Celery's native delayed delivery for `queues` (what Celery's DelayedDelivery
    /// bootstep does), on a channel of its own, as a future to run in the background: 28
    /// quorum queues take seconds on a cluster, and consuming must not wait for them.
    pub async fn native_delayed_declarer(
        &self,
        queue_type: &'static str,
        queues: Vec<TaskQueue>,
    ) -> Result<impl Future<Output = Result<(), BrokerError>> + Send + 'static, BrokerError> {
        let channel = self.channel().await?;
        Ok(async move {
            channel
                .declare_native_delayed_delivery(queue_type, &queues)
                .await
        })
    }
}

/// The per-connection state of the worker's own publishes.
#[derive(Debug, Default)]
pub(super) struct Own {
    /// The side channel, when open.
    side: Option<Channel>,
    /// Whether celeryd's delay ladder was declared on it.
    delay_declared: bool,
    /// Whether Celery's native delayed delivery was declared (some configured queue is
    /// quorum).
    native_declared: bool,
}
