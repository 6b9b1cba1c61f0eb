//! The broker seam: what the consumer, remote control, events, beat and the result path need
//! from a broker, in terms that name no client library. A transport is a folder below this
//! one ([`amqp`] today); the rest of the engine sees [`Delivery`], [`BrokerError`] and
//! [`backoff`], and calls the transport's operations.
//!
//! A [`Delivery`] is transport-neutral: where it came from ([`DeliveryInfo`]), the broker's
//! tag to settle it by, and the [`Message`] as the transport received it, which decodes
//! itself into a Celery request (a Rust task's straight from the client's header table) and
//! can be sent on again as it came (the delay ladder).

pub mod amqp;
mod error;
mod link;
pub mod outbox;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

pub use self::error::{BrokerError, ErrorKind};
pub use self::link::{Channel, Confirm, Declaring, Link, PidboxRequest};
use crate::error::ProtocolError;
use crate::protocol::{DeliveryInfo, Properties, RawMessage, TaskRequest};
use crate::settings::BrokerSettings;
use crate::settings::queues::TaskQueue;

/// How long to wait before connection attempt `attempt` (1-based) after a failure: 1, then
/// 2 s from then on, so a broker that returns is consumed from again within 2 s (a Redis or
/// RabbitMQ restart), at the cost of one attempt every 2 s while it is away. Shared by every
/// link to the broker.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(1))
}

/// The `broker` section of `inspect stats`, as Celery's worker reports its connection.
pub fn stats(settings: &BrokerSettings) -> Option<serde_json::Value> {
    match settings.redis() {
        Some(redis) => redis
            .ok()
            .map(|(url, options)| redis::stats(&url, &options)),
        None => amqp::stats(settings),
    }
}

/// What kind of failure the text a consumed stream ended with describes.
pub fn kind_of_text(why: &str) -> ErrorKind {
    amqp::kind_of_text(why)
}

/// The frame size to connect with after a frame did not fit the configured one.
pub const FRAME_MAX_RAISED: u32 = amqp::FRAME_MAX_RAISED;

/// Once Celery's native delayed delivery is declared on the first broker URL, declares it on
/// the failover list's others too, in the background.
pub fn declare_native_on_alternates(
    settings: &BrokerSettings,
    hostname: &str,
    queue_type: &'static str,
    queues: Vec<TaskQueue>,
) {
    amqp::declare_native_on_alternates(settings, hostname, queue_type, queues)
}

/// What a consumed queue's forwarding task reports to its owner.
#[derive(Debug)]
pub enum StreamEvent {
    /// Deliveries that arrived together (lapin parsed them from one read), in order.
    Deliveries(Vec<Delivery>),
    /// The stream ended: cancelled (None), or the connection was lost (its error).
    Ended(Option<String>),
}

/// The consumer tag for `queue`: `node-generation-queue`, unique on the channel. A tag is an
/// AMQP short string: past 255 bytes, the generation, a hash of the queue name and as much of
/// the node name as fits.
pub fn consumer_tag(hostname: &str, generation: u64, queue: &str) -> String {
    let tag = format!("{hostname}-{generation}-{queue}");
    if tag.len() <= 255 {
        return tag;
    }
    let hashed = uuid::Uuid::new_v3(&uuid::Uuid::NAMESPACE_OID, queue.as_bytes()).simple();
    let mut tag = format!("{generation}-{hashed}-");
    for c in hostname.chars() {
        if tag.len() + c.len_utf8() > 255 {
            break;
        }
        tag.push(c);
    }
    tag
}

/// `--purge`: deletes every waiting message of `queues`; returns (queue, messages deleted).
pub async fn purge(
    settings: &BrokerSettings,
    nodename: &str,
    queues: &[String],
) -> Result<Vec<(String, u32)>, BrokerError> {
    match settings.redis() {
        Some(redis) => {
            let (url, options) = redis.map_err(|e| BrokerError::Url(e.to_string()))?;
            let link = redis::Link::open(&url, &options, nodename).await?;
            let purged = link.purge(queues).await;
            link.close("purged").await;
            Ok(purged?)
        }
        None => amqp::purge(settings, nodename, queues).await,
    }
}

/// One message delivered to the worker.
#[derive(Debug)]
pub struct Delivery {
    /// The broker's tag for it on this connection: acks, rejects and requeues name it.
    pub tag: u64,
    /// Where it came from.
    pub info: DeliveryInfo,
    /// The message as the transport received it.
    pub message: Message,
}

/// A delivered message as its transport holds it.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "AMQP deliveries, the hot path, stay unboxed (no allocation each); the Redis one is boxed"
)]
pub enum Message {
    /// From AMQP (lapin's delivery).
    Amqp(amqp::Message),
    /// From a Redis list: the envelope read, or why it could not be.
    Redis(Box<Result<redis::Message, redis::EnvelopeError>>),
}

impl Message {
    /// The request for a Rust task: headers read in place, only the kept ones converted.
    pub fn decode_rust(
        &self,
        info: DeliveryInfo,
        max: usize,
    ) -> Result<TaskRequest, ProtocolError> {
        match self {
            Message::Amqp(m) => m.decode_rust(info, max),
            Message::Redis(m) => match m.as_ref() {
                Ok(m) => m.decode_rust(info, max),
                Err(e) => Err(ProtocolError::Envelope(e.to_string())),
            },
        }
    }

    /// The message's parts as JSON-headed [`RawMessage`] (Python tasks), or why the headers
    /// cannot be read.
    pub fn raw(&self, info: DeliveryInfo) -> Result<RawMessage<'_>, String> {
        match self {
            Message::Amqp(m) => m.raw(info),
            Message::Redis(m) => match m.as_ref() {
                Ok(m) => Ok(m.raw(info)),
                Err(e) => Err(format!("cannot read the broker's envelope: {e}")),
            },
        }
    }

    /// Its properties as Celery's Python `Request` sees them.
    pub fn properties(&self) -> Properties {
        match self {
            Message::Amqp(m) => m.properties(),
            Message::Redis(m) => match m.as_ref() {
                Ok(m) => m.properties(),
                Err(_) => Properties::default(),
            },
        }
    }
}

/// The queue name a stream of deliveries belongs to, shared by its deliveries.
pub type QueueName = Arc<str>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let secs: Vec<u64> = (1..=5).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 2, 2, 2]);
        assert_eq!(backoff(0), Duration::from_secs(1));
    }

    #[test]
    fn consumer_tags_fit_an_amqp_short_string() {
        assert_eq!(consumer_tag("w@h", 2, "celery"), "w@h-2-celery");
        let long = consumer_tag(&"n".repeat(200), 7, &"q".repeat(255));
        assert!(long.len() <= 255 && long.starts_with("7-"), "{long}");
        assert_ne!(long, consumer_tag(&"n".repeat(200), 7, &"r".repeat(255)));
    }
}
