//! Consuming a queue: `basic.consume` under a tag of ours, and the task that passes what
//! arrives to its owner in batches.

use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;

use super::message::delivery_of;
use crate::abort::AbortOnDrop;
use crate::broker::{BrokerError, Delivery};

/// At most this many deliveries that arrived together are passed on as one batch.
pub const DELIVERY_BATCH: usize = 64;

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

/// Consumes `queue` with manual acks under `tag`, and passes its deliveries to `sink` until
/// the stream ends or `sink` returns false (its owner is gone). Dropping the handle stops it.
pub async fn consume<F>(
    channel: &lapin::Channel,
    queue: &str,
    tag: &str,
    sink: F,
) -> Result<AbortOnDrop, BrokerError>
where
    F: Fn(StreamEvent) -> bool + Send + 'static,
{
    let stream = channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(forward(stream, queue.into(), sink))
}

fn forward<F>(mut stream: lapin::Consumer, queue: Arc<str>, sink: F) -> AbortOnDrop
where
    F: Fn(StreamEvent) -> bool + Send + 'static,
{
    AbortOnDrop(tokio::spawn(async move {
        let mut next = stream.next().await;
        let error = loop {
            let mut batch = Vec::new();
            // `next` is what the stream gave; `None` inside `ready` means it has nothing yet.
            let mut ready = Some(next);
            let ended = loop {
                match ready {
                    None => break None,
                    Some(Some(Ok(d))) => batch.push(delivery_of(d, &queue)),
                    Some(Some(Err(e))) => break Some(Some(e.to_string())),
                    Some(None) => break Some(None),
                }
                if batch.len() >= DELIVERY_BATCH {
                    break None;
                }
                ready = stream.next().now_or_never();
            };
            if !batch.is_empty() && !sink(StreamEvent::Deliveries(batch)) {
                return;
            }
            if let Some(error) = ended {
                break error;
            }
            next = stream.next().await;
        };
        sink(StreamEvent::Ended(error));
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_tags_fit_an_amqp_short_string() {
        assert_eq!(consumer_tag("w@h", 2, "celery"), "w@h-2-celery");
        let long = consumer_tag(&"n".repeat(200), 7, &"q".repeat(255));
        assert!(long.len() <= 255 && long.starts_with("7-"), "{long}");
        assert_ne!(long, consumer_tag(&"n".repeat(200), 7, &"r".repeat(255)));
    }
}
