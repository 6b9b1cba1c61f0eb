//! The tests' own side of the broker: connecting, test queues, and raw deliveries.

use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

/// The broker the tests use (`AMQP_URL`, default: guest on loopback).
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Connects, retrying for a few seconds; fails with a message naming the URL.
pub async fn connect() -> Connection {
    let url = amqp_url();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Connection::connect(&url, ConnectionProperties::default()).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => {
                panic!(
                    "cannot reach RabbitMQ at {url} (set AMQP_URL; scripts/ensure-broker.sh starts it): {e}"
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A small runtime for the tests' own AMQP calls.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A queue name no other test uses.
pub fn unique_queue(prefix: &str) -> String {
    format!("it-{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Number of ready messages in `queue` (declared passively).
pub async fn queue_depth(conn: &Connection, queue: &str) -> u32 {
    let ch = conn.create_channel().await.unwrap();
    let opts = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare(queue.into(), opts, FieldTable::default())
        .await
        .unwrap();
    q.message_count()
}

/// Deletes a test queue and its exchange (best effort).
pub async fn delete_queue(queue: &str) {
    let conn = connect().await;
    let ch = conn.create_channel().await.unwrap();
    let _ = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = ch.exchange_delete(queue.into(), Default::default()).await;
    let _ = conn.close(200, "bye".into()).await;
}

/// Publishes one hand-built delivery exactly as given: `body` with `props` (and `headers`,
/// when given, as its headers table) to `exchange` with `routing_key` (`""` and the queue's
/// name for the default exchange). Waits for the broker's confirm when the channel is in
/// confirm mode (at once otherwise).
pub async fn publish_raw(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    headers: Option<FieldTable>,
    props: BasicProperties,
    body: &[u8],
) {
    let props = match headers {
        Some(h) => props.with_headers(h),
        None => props,
    };
    ch.basic_publish(
        exchange.into(),
        routing_key.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// A string header value (an AMQP long string).
pub fn amqp_text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// The two headers that make a delivery a task message (protocol 2): `task` and `id`.
pub fn task_headers(name: &str, id: &str) -> FieldTable {
    let mut h = FieldTable::default();
    h.insert("task".into(), amqp_text(name));
    h.insert("id".into(), amqp_text(id));
    h
}
