//! The control actor's AMQP plumbing: its own connection, the pidbox queue (declared, bound
//! to the [`PIDBOX_EXCHANGE`] fanout and consumed), the reply channel and exchanges, replies
//! published with the request's ticket, and reconnection with backoff.

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use ractor::{ActorProcessingErr, ActorRef};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::request::ControlRequest;
use super::{Control, ControlMessage, ControlState, PIDBOX_EXCHANGE};
use crate::child::AbortOnDrop;
use crate::error::BrokerError;

/// The pidbox connection, its channel, and the task that forwards its requests to the actor.
pub(super) type Link = (Connection, Channel, AbortOnDrop);

/// The channel replies are published on.
pub(super) type ReplyChannel = Channel;

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
            Err(e) if e.to_string().contains("RESOURCE_LOCKED") => {
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
            let delay = crate::consumer::connect_backoff(attempt + 1);
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
        let (conn, ch) = crate::consumer::amqp::connect(&self.settings.broker, &name, None).await?;
        let plain = ExchangeDeclareOptions::default();
        ch.exchange_declare(
            PIDBOX_EXCHANGE.into(),
            ExchangeKind::Fanout,
            plain,
            FieldTable::default(),
        )
        .await?;
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongInt(300_000));
        args.insert("x-expires".into(), AMQPValue::LongInt(10_000));
        let queue = self.queue_name();
        let qopts = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        ch.queue_declare(queue.as_str().into(), qopts, args).await?;
        ch.queue_bind(
            queue.as_str().into(),
            PIDBOX_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let copts = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let mut stream = ch
            .basic_consume(
                queue.as_str().into(),
                "pidbox".into(),
                copts,
                FieldTable::default(),
            )
            .await?;
        state.generation += 1;
        state.reply_exchanges.clear();
        state.reply_channel = None;
        let generation = state.generation;
        let me = myself.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(d)) = stream.next().await {
                let clock = d.properties.headers().as_ref().and_then(|h| {
                    crate::protocol::amqp_value::table_to_json(h)
                        .get("clock")
                        .and_then(Value::as_u64)
                });
                let msg = ControlMessage::RequestReceived {
                    generation,
                    clock,
                    body: d.data,
                };
                if me.cast(msg).is_err() {
                    return;
                }
            }
            let _ = me.cast(ControlMessage::StreamEnded { generation });
        });
        info!("Remote control listening on {queue}.");
        state.link = Some((conn, ch, AbortOnDrop(task)));
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
async fn reply_channel(state: &mut ControlState) -> Option<Channel> {
    if let Some(ch) = &state.reply_channel
        && ch.status().connected()
    {
        return Some(ch.clone());
    }
    let conn = &state.link.as_ref()?.0;
    let ch = conn.create_channel().await.ok()?;
    state.reply_exchanges.clear();
    state.reply_channel = Some(ch.clone());
    Some(ch)
}

async fn publish_reply(
    state: &mut ControlState,
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    req: &ControlRequest,
    nodename: &str,
    value: Value,
) -> Result<(), lapin::Error> {
    // `amq.*` names are the broker's own: never declared (the broker refuses it).
    if !state.reply_exchanges.contains(exchange) && !exchange.starts_with("amq.") {
        ch.exchange_declare(
            exchange.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
        state.reply_exchanges.insert(exchange.to_owned());
    }
    let clock = state.peers.clock.forward();
    let mut headers = FieldTable::default();
    if let Some(t) = &req.ticket {
        headers.insert(
            "ticket".into(),
            AMQPValue::LongString(LongString::from(t.as_bytes().to_vec())),
        );
    }
    headers.insert(
        "clock".into(),
        crate::protocol::amqp_value::json_to_value(&json!(clock)),
    );
    let body = serde_json::to_vec(&json!({ nodename: value })).unwrap_or_default();
    let props = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding(ShortString::from("utf-8"))
        .with_delivery_mode(1)
        .with_headers(headers);
    ch.basic_publish(
        exchange.into(),
        routing_key.into(),
        BasicPublishOptions::default(),
        &body,
        props,
    )
    .await?;
    Ok(())
}
