//! Publishing: results (rpc://), task messages (retries, canvas, beat, `worker call`),
//! delivered messages sent on into the delay ladder; the client side of rpc:// results.

use lapin::BasicProperties;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};

use super::{Message, value};
use crate::broker::BrokerError;

/// Publishes a JSON message (a result) to the default exchange, routed to `queue`.
pub async fn publish_result(
    channel: &lapin::Channel,
    queue: &str,
    correlation_id: &str,
    body: &[u8],
) -> Result<(), BrokerError> {
    let props = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding(ShortString::from("utf-8"))
        .with_correlation_id(ShortString::from(correlation_id))
        .with_delivery_mode(1)
        .with_priority(0);
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await?;
    Ok(())
}

/// Publishes a task message the way a Python client does: to the default exchange with the
/// queue name as routing key, persistent, JSON, with the message's headers and properties.
pub async fn publish_task(
    channel: &lapin::Channel,
    queue: &str,
    msg: &crate::protocol::encode::TaskMessage,
) -> Result<(), BrokerError> {
    publish_task_to(channel, "", queue, msg).await
}

/// Publishes a task message to `exchange` with `routing_key` (a retry goes where the original
/// was sent), and waits for the broker's confirm when the channel is in confirm mode.
pub async fn publish_task_to(
    channel: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    msg: &crate::protocol::encode::TaskMessage,
) -> Result<(), BrokerError> {
    let confirm = send_task_to(channel, exchange, routing_key, msg)
        .await?
        .await?;
    if confirm.is_nack() {
        return Err(BrokerError::Nacked);
    }
    Ok(())
}

/// Hands a task message to the broker without waiting for its confirm: the returned future
/// resolves to it (several publishes can then wait together).
pub async fn send_task_to(
    channel: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    msg: &crate::protocol::encode::TaskMessage,
) -> Result<lapin::PublisherConfirm, BrokerError> {
    let mut props = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding(ShortString::from("utf-8"))
        .with_correlation_id(ShortString::from(msg.id.as_str()))
        .with_reply_to(ShortString::from(msg.reply_to.as_str()))
        .with_delivery_mode(2)
        .with_priority(msg.priority)
        .with_headers(value::json_to_table(&msg.headers));
    if let Some(exp) = &msg.expiration {
        props = props.with_expiration(ShortString::from(exp.as_str()));
    }
    Ok(channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            &msg.body,
            props,
        )
        .await?)
}

/// Declares an exclusive, auto-deleted result queue `name` and consumes it without acks (the
/// client side of rpc:// results).
pub async fn result_consumer(
    channel: &lapin::Channel,
    name: &str,
) -> Result<lapin::Consumer, BrokerError> {
    let opts = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    channel
        .queue_declare(name.into(), opts, FieldTable::default())
        .await?;
    let consume = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    Ok(channel
        .basic_consume(
            name.into(),
            "results".into(),
            consume,
            FieldTable::default(),
        )
        .await?)
}

/// Re-publishes a delivery into a delay ladder, to `exchange` with `routing_key` (the delay's
/// digits and the destination; on a confirm-mode channel, returns once the broker has it),
/// unchanged but for its `expiration` property (a per-message TTL would cut the wait short;
/// the `expires` header still applies when it comes back).
pub async fn publish_delayed(
    channel: &lapin::Channel,
    delivery: &Message,
    exchange: &str,
    routing_key: &str,
) -> Result<(), BrokerError> {
    let mut props = delivery.properties.clone();
    props = props.with_delivery_mode(2);
    let props = strip_expiration(props);
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            &delivery.body,
            props,
        )
        .await?
        .await?;
    if confirm.is_nack() {
        return Err(BrokerError::Nacked);
    }
    Ok(())
}

/// The properties a message goes into the delay ladder with: no `expiration` (the ladder's
/// queues set the TTL) and no dead-lettering headers.
fn strip_expiration(p: BasicProperties) -> BasicProperties {
    let mut out = BasicProperties::default();
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = p.headers() {
        // Into the ladder without the dead-lettering history of an earlier trip (it grows
        // with every level and is no part of the task).
        let mut headers = FieldTable::default();
        for (k, value) in v.inner() {
            if !crate::protocol::encode::is_dead_letter_header(k.as_str()) {
                headers.insert(k.clone(), value.clone());
            }
        }
        out = out.with_headers(headers);
    }
    if let Some(v) = p.delivery_mode() {
        out = out.with_delivery_mode(*v);
    }
    if let Some(v) = p.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    out
}
