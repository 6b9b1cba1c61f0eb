//! Consuming a queue: `basic.consume` under a tag of ours, and the task that passes what
//! arrives to its owner in batches.

use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;

use super::message::delivery_of;
use crate::abort::AbortOnDrop;
use crate::broker::{BrokerError, StreamEvent};

/// At most this many deliveries that arrived together are passed on as one batch.
pub const DELIVERY_BATCH: usize = 64;

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
