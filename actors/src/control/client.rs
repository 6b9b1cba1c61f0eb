//! The client side of Celery's pidbox (`celery inspect`/`control`, `app.control.broadcast`):
//! publish a request to the `celery.pidbox` fanout exchange and collect the nodes' replies
//! on a reply queue of its own. Used by `worker ctl` and by the worker's own mingle.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use serde_json::{Map, Value, json};

use super::PIDBOX_EXCHANGE;

/// The direct exchange replies come back on (`reply.celery.pidbox`).
pub const REPLY_EXCHANGE: &str = "reply.celery.pidbox";

/// `body` (method, arguments, destination, pattern, matcher) with the reply address Celery
/// puts in a request that wants replies: a `ticket` and `reply_to`.
pub fn with_reply(mut body: Map<String, Value>, ticket: &str, oid: &str) -> Map<String, Value> {
    body.insert("ticket".into(), json!(ticket));
    body.insert(
        "reply_to".into(),
        json!({"exchange": REPLY_EXCHANGE, "routing_key": oid}),
    );
    body
}

/// Publishes the request `body` and, when `reply`, hands each `(node, value)` to `on_reply`
/// as it arrives, until `limit` replies or `timeout` without one.
pub async fn request(
    ch: &Channel,
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
    let expires = if reply {
        crate::protocol::time::epoch_f64(time::OffsetDateTime::now_utc()) + timeout.as_secs_f64()
    } else {
        0.0
    };
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
            let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(&delivery.data) else {
                continue;
            };
            for (node, value) in &m {
                on_reply(node, value);
                got += 1;
            }
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

/// The revoked ids in a `hello` reply: Celery 5 sends its `LimitedSet`'s data (an object of
/// id → time) or a list; celeryd sends a list.
pub fn revoked_in_hello(reply: &Value) -> Vec<String> {
    match reply.get("revoked") {
        Some(Value::Array(ids)) => ids
            .iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s.clone()),
                // A LimitedSet pickled as pairs, [id, time].
                Value::Array(pair) => pair.first().and_then(Value::as_str).map(str::to_owned),
                _ => None,
            })
            .collect(),
        Some(Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_replies_of_celery_and_celeryd_give_their_revoked_ids() {
        assert_eq!(
            revoked_in_hello(&json!({"revoked": ["a", "b"]})),
            ["a", "b"]
        );
        let mut ids = revoked_in_hello(&json!({"revoked": {"x": 1.0, "y": 2.0}}));
        ids.sort();
        assert_eq!(ids, ["x", "y"]);
        assert_eq!(revoked_in_hello(&json!({"revoked": [["z", 1.0]]})), ["z"]);
        assert!(revoked_in_hello(&json!({"clock": 3})).is_empty());
        let b = with_reply(Map::new(), "t", "oid");
        assert_eq!(b["reply_to"]["routing_key"], "oid");
        assert_eq!(b["ticket"], "t");
    }
}
