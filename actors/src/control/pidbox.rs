//! The control actor's link to the broker: its own connection, the pidbox queue (declared, bound
//! to the [`PIDBOX_EXCHANGE`](super::PIDBOX_EXCHANGE) fanout and consumed, by
//! [`serve_pidbox`](crate::broker::Link::serve_pidbox)), the reply channel, replies
//! published with the request's ticket, and reconnection with backoff.

use ractor::{ActorProcessingErr, ActorRef};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::request::ControlRequest;
use super::{Control, ControlMessage, ControlState};
use crate::abort::AbortOnDrop;
use crate::broker::{self, BrokerError, ErrorKind, PidboxRequest};

/// The pidbox connection, and the task that forwards its requests to the actor.
pub(super) type Link = (broker::Link, AbortOnDrop);

/// The channel replies are published on.
pub(super) type ReplyChannel = broker::Channel;

impl Control {
    /// The first connection, before the worker reports ready: a node name already in use is
    /// a start-up error; any other failure is retried.
    pub(super) async fn connect_first(
        &self,
        myself: &ActorRef<ControlMessage>,
        state: &mut ControlState,
    ) -> Result<(), ActorProcessingErr> {
        match self.open(myself, state).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::ResourceLocked => {
                return Err(format!(
                    "node name {} is already in use on this broker (another worker consumes its \
                     pidbox queue); pick another with -n",
                    self.nodename
                )
                .into());
            }
            Err(e) => {
                warn!(error = %e, "Remote control not connected yet; retrying.");
                myself.send_after(std::time::Duration::from_secs(1), || {
                    ControlMessage::Connect { attempt: 1 }
                });
            }
        }
        Ok(())
    }

    /// [`ControlMessage::Connect`]: (re)connects unless connected, retried with backoff.
    pub(super) async fn reconnect(
        &self,
        myself: &ActorRef<ControlMessage>,
        state: &mut ControlState,
        attempt: u32,
    ) {
        if state.link.is_none()
            && let Err(e) = self.open(myself, state).await
        {
            let delay = crate::broker::backoff(attempt + 1);
            warn!(error = %e, "Cannot connect the remote-control channel; retrying.");
            myself.send_after(delay, move || ControlMessage::Connect {
                attempt: attempt + 1,
            });
        }
    }

    fn queue_name(&self) -> String {
        format!("{}.celery.pidbox", self.nodename)
    }

    async fn open(
        &self,
        myself: &ActorRef<ControlMessage>,
        state: &mut ControlState,
    ) -> Result<(), BrokerError> {
        let name = format!("{} (pidbox)", self.nodename);
        let link = broker::Link::open(&self.settings.broker, &name, None).await?;
        let queue = self.queue_name();
        state.generation += 1;
        state.reply_exchanges.clear();
        state.reply_channel = None;
        let generation = state.generation;
        let (me, end) = (myself.clone(), myself.clone());
        let task = link
            .serve_pidbox(
                &queue,
                move |PidboxRequest { clock, body }| {
                    let msg = ControlMessage::RequestReceived {
                        generation,
                        clock,
                        body,
                    };
                    me.cast(msg).is_ok()
                },
                move || {
                    let _ = end.cast(ControlMessage::StreamEnded { generation });
                },
            )
            .await?;
        info!("Remote control listening on {queue}.");
        state.link = Some((link, task));
        Ok(())
    }

    /// Sends `reply` to the request's `reply_to` (a cast has none); a failed publish drops the
    /// reply channel, re-opened for the next reply.
    pub(super) async fn send_reply(
        &self,
        state: &mut ControlState,
        req: &ControlRequest,
        reply: Value,
    ) {
        let Some((exchange, key)) = &req.reply_to else {
            return;
        };
        let Some(ch) = reply_channel(state).await else {
            warn!("Cannot send a control reply: no channel.");
            return;
        };
        if let Err(e) = publish_reply(state, &ch, exchange, key, req, &self.nodename, reply).await {
            warn!(error = %e, exchange = %exchange, "Cannot send a control reply.");
            state.reply_channel = None;
            state.reply_exchanges.clear();
        }
    }
}

/// [`ControlMessage::StreamEnded`]: the current connection's request stream ended, so the
/// connection is dropped and re-established.
pub(super) fn stream_ended(
    myself: &ActorRef<ControlMessage>,
    state: &mut ControlState,
    generation: u64,
) {
    if generation == state.generation && state.link.take().is_some() {
        warn!("Remote-control connection lost; reconnecting.");
        let _ = myself.cast(ControlMessage::Connect { attempt: 1 });
    }
}

/// The reply channel, opened on the pidbox connection when there is none (or it was closed).
async fn reply_channel(state: &mut ControlState) -> Option<ReplyChannel> {
    if let Some(ch) = &state.reply_channel
        && ch.is_open()
    {
        return Some(ch.clone());
    }
    let link = &state.link.as_ref()?.0;
    let ch = link.channel().await.ok()?;
    state.reply_exchanges.clear();
    state.reply_channel = Some(ch.clone());
    Some(ch)
}

async fn publish_reply(
    state: &mut ControlState,
    ch: &ReplyChannel,
    exchange: &str,
    routing_key: &str,
    req: &ControlRequest,
    nodename: &str,
    value: Value,
) -> Result<(), BrokerError> {
    let clock = state.peers.clock.forward();
    let body = serde_json::to_vec(&json!({ nodename: value })).unwrap_or_default();
    ch.publish_reply(
        &mut state.reply_exchanges,
        exchange,
        routing_key,
        req.ticket.as_deref(),
        clock,
        &body,
    )
    .await
}
