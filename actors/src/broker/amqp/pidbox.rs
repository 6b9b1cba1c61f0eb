//! Celery's pidbox over AMQP. The client side (`celery inspect`/`control`,
//! `app.control.broadcast`): publish a request to the `celery.pidbox` fanout exchange and
//! collect the nodes' replies on a reply queue of its own (`worker ctl`, the worker's own
//! mingle). The node side: the node's pidbox queue consumed, replies published with the
//! request's ticket.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, ExchangeKind};
use serde_json::{Map, Value};

use super::{Channel, Link, value};
use crate::abort::AbortOnDrop;
use crate::broker::BrokerError;
use crate::protocol::pidbox::{
    PIDBOX_EXCHANGE, REPLY_EXCHANGE, hand_replies, request_expires, with_reply,
};

/// Publishes the request `body` and, when `reply`, hands each `(node, value)` to `on_reply`
/// as it arrives, until `limit` replies or `timeout` without one.
pub async fn request(
    ch: &lapin::Channel,
    body: Map<String, Value>,
    reply: bool,
    timeout: Duration,
    limit: Option<usize>,
    on_reply: &mut impl FnMut(&str, &Value),
) -> Result<(), lapin::Error> {
    let plain = ExchangeDeclareOptions::default();
    let none = FieldTable::default;
    ch.exchange_declare(PIDBOX_EXCHANGE.into(), ExchangeKind::Fanout, plain, none())
        .await?;
    let oid = uuid::Uuid::new_v4().to_string();
    let ticket = uuid::Uuid::new_v4().to_string();
    let mut stream = None;
    let mut body = body;
    if reply {
        ch.exchange_declare(REPLY_EXCHANGE.into(), ExchangeKind::Direct, plain, none())
            .await?;
        let queue = format!("{oid}.reply.celery.pidbox");
        let mut qargs = FieldTable::default();
        qargs.insert("x-expires".into(), AMQPValue::LongInt(10_000));
        qargs.insert("x-message-ttl".into(), AMQPValue::LongInt(300_000));
        let qopts = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        ch.queue_declare(queue.as_str().into(), qopts, qargs)
            .await?;
        ch.queue_bind(
            queue.as_str().into(),
            REPLY_EXCHANGE.into(),
            oid.as_str().into(),
            QueueBindOptions::default(),
            none(),
        )
        .await?;
        let copts = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        stream = Some(
            ch.basic_consume(queue.as_str().into(), "".into(), copts, none())
                .await?,
        );
        body = with_reply(body, &ticket, &oid);
    }
    let payload = serde_json::to_vec(&body).unwrap_or_default();
    let expires = request_expires(reply, timeout);
    let mut headers = FieldTable::default();
    headers.insert("clock".into(), AMQPValue::LongLongInt(1));
    headers.insert("expires".into(), AMQPValue::Double(expires));
    let props = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding(ShortString::from("utf-8"))
        .with_delivery_mode(2)
        .with_headers(headers);
    ch.basic_publish(
        PIDBOX_EXCHANGE.into(),
        "".into(),
        BasicPublishOptions::default(),
        &payload,
        props,
    )
    .await?
    .await?;
    let mut got = 0;
    if let Some(stream) = stream.as_mut() {
        while limit.is_none_or(|l| got < l) {
            let Ok(Some(Ok(delivery))) = tokio::time::timeout(timeout, stream.next()).await else {
                break;
            };
            if !ticket_matches(&delivery, &ticket) {
                continue;
            }
            got += hand_replies(&delivery.data, on_reply);
        }
    }
    Ok(())
}

/// Whether a reply carries this request's ticket (a reply without one is taken).
fn ticket_matches(delivery: &lapin::message::Delivery, ticket: &str) -> bool {
    let Some(headers) = delivery.properties.headers() else {
        return true;
    };
    match headers.inner().get("ticket") {
        Some(AMQPValue::LongString(s)) => s.as_bytes() == ticket.as_bytes(),
        Some(AMQPValue::ShortString(s)) => s.as_str() == ticket,
        _ => true,
    }
}

/// One request from the node's pidbox queue: its `clock` header and its body.
#[derive(Debug)]
pub struct PidboxRequest {
    /// The sender's logical clock, if it sent one.
    pub clock: Option<u64>,
    /// The request body (JSON).
    pub body: Vec<u8>,
}

impl Link {
    /// Serves `queue`, this node's pidbox queue: the `celery.pidbox` fanout exchange and the
    /// queue declared as Celery's worker declares them (exclusive, auto-deleted, 300 s message
    /// TTL, 10 s expiry), bound and consumed without acks. Each request goes to `sink` until
    /// it returns false; `ended` is called when the stream ends. Held by another connection
    /// (the node name is in use): an error of kind `ResourceLocked`.
    pub async fn serve_pidbox<F, E>(
        &self,
        queue: &str,
        sink: F,
        ended: E,
    ) -> Result<AbortOnDrop, BrokerError>
    where
        F: Fn(PidboxRequest) -> bool + Send + 'static,
        E: FnOnce() + Send + 'static,
    {
        let ch = &self.channel.0;
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
        let qopts = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        ch.queue_declare(queue.into(), qopts, args).await?;
        ch.queue_bind(
            queue.into(),
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
            .basic_consume(queue.into(), "pidbox".into(), copts, FieldTable::default())
            .await?;
        Ok(AbortOnDrop(tokio::spawn(async move {
            while let Some(Ok(d)) = stream.next().await {
                let clock = d
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| value::table_to_json(h).get("clock").and_then(Value::as_u64));
                if !sink(PidboxRequest {
                    clock,
                    body: d.data,
                }) {
                    return;
                }
            }
            ended();
        })))
    }
}

impl Channel {
    /// [`request`] on this channel.
    pub async fn pidbox_request(
        &self,
        body: Map<String, Value>,
        reply: bool,
        timeout: Duration,
        limit: Option<usize>,
        on_reply: &mut impl FnMut(&str, &Value),
    ) -> Result<(), BrokerError> {
        Ok(request(&self.0, body, reply, timeout, limit, on_reply).await?)
    }

    /// Publishes a control reply `body` to `exchange` with `routing_key`, carrying the
    /// request's `ticket` and this node's `clock`; `declared` names the reply exchanges
    /// declared on this channel so far (a direct exchange is declared once; `amq.*` names
    /// are the broker's own and never declared).
    pub async fn publish_reply(
        &self,
        declared: &mut std::collections::HashSet<String>,
        exchange: &str,
        routing_key: &str,
        ticket: Option<&str>,
        clock: u64,
        body: &[u8],
    ) -> Result<(), BrokerError> {
        let ch = &self.0;
        if !declared.contains(exchange) && !exchange.starts_with("amq.") {
            ch.exchange_declare(
                exchange.into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;
            declared.insert(exchange.to_owned());
        }
        let mut headers = FieldTable::default();
        if let Some(t) = ticket {
            headers.insert(
                "ticket".into(),
                AMQPValue::LongString(LongString::from(t.as_bytes().to_vec())),
            );
        }
        headers.insert(
            "clock".into(),
            value::json_to_value(&serde_json::json!(clock)),
        );
        super::link::publish_transient_json(ch, exchange, routing_key, body, headers).await
    }
}
