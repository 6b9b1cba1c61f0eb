//! Hands acks, rejects and result publishes to lapin without waiting for its IO thread.
//!
//! lapin's `basic_ack`/`basic_publish` futures queue their frames on the first poll and then
//! wait until lapin's IO thread has written them. Awaiting that in the consumer actor costs two
//! thread hand-offs per operation (the IO thread is woken, then wakes the actor back) and keeps
//! the actor from the next delivery meanwhile. Here each operation is polled once, which queues
//! its frames in order, and is not awaited:
//!
//! - acks and rejects are then dropped (dropping lapin's promise does not cancel the frame; a
//!   lost connection makes the broker requeue what was not acked, which is what a failed ack
//!   would have led to anyway);
//! - a result publish is kept, with the result, until lapin reports it written, checked without
//!   registering a waker ([`Outbox::reap`]), so nothing is woken for it. One that failed (the
//!   connection was lost before lapin wrote it) is handed back to be sent after reconnecting,
//!   as an awaited publish that failed was before.

use std::task::Poll;

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use tracing::warn;

use super as amqp;
use crate::broker::outbox::{Outbox, PendingResult, poll_once};

/// Acks (`multiple`: every outstanding tag up to `tag`) without waiting.
pub fn ack(channel: &Channel, tag: u64, multiple: bool) {
    let send = channel.basic_ack(tag, BasicAckOptions { multiple });
    if let Poll::Ready(Err(e)) = poll_once(std::pin::pin!(send)) {
        warn!(delivery_tag = tag, error = %e, "Ack failed; the broker will redeliver.");
    }
}

/// Rejects without waiting: `basic.reject` (dead-lettered where the queue says so), or,
/// to hand a message back, `basic.nack` with requeue (`rabbitmq-compat.md` §6: on
/// RabbitMQ 4.x quorum queues a requeueing reject counts towards the delivery limit).
pub fn reject(channel: &Channel, tag: u64, requeue: bool) {
    let failed = |p: Poll<Result<(), lapin::Error>>| match p {
        Poll::Ready(Err(e)) => Some(e.to_string()),
        _ => None,
    };
    let error = if requeue {
        let options = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        failed(poll_once(std::pin::pin!(channel.basic_nack(tag, options))))
    } else {
        let options = BasicRejectOptions { requeue };
        failed(poll_once(std::pin::pin!(
            channel.basic_reject(tag, options)
        )))
    };
    if let Some(e) = error {
        warn!(delivery_tag = tag, requeue, error = %e, "Reject failed; the broker will redeliver.");
    }
}

/// Hands a result to lapin. Returns it at once if lapin refused it (not connected).
pub fn publish(
    outbox: &mut Outbox,
    channel: &Channel,
    result: PendingResult,
) -> Option<PendingResult> {
    let channel = channel.clone();
    let send = Box::pin(async move {
        let sent = amqp::publish_result(
            &channel,
            &result.queue,
            &result.correlation_id,
            &result.body,
        )
        .await;
        match sent {
            Ok(()) => None,
            Err(e) => {
                warn!(error = %e, "Cannot publish a result now; it will be sent after reconnecting.");
                Some(result)
            }
        }
    });
    outbox.push(send)
}
