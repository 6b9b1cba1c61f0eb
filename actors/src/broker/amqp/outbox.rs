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

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use tracing::warn;

use super as amqp;

/// At most this many publishes wait to be reported written; past it, the oldest is awaited.
pub const MAX_IN_FLIGHT: usize = 4096;

/// A result to publish: the reply queue, the correlation id and the JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingResult {
    /// The client's reply queue.
    pub queue: String,
    /// The result's correlation id.
    pub correlation_id: String,
    /// The JSON body.
    pub body: Vec<u8>,
}

/// A publish lapin holds: resolves to the result again if it could not be written.
type InFlight = Pin<Box<dyn Future<Output = Option<PendingResult>> + Send>>;

/// Publishes handed to lapin and not yet reported written, oldest first.
///
/// The queue sits in a `Mutex` only so that the consumer's state is `Sync` (lapin's futures are
/// `Send` but not `Sync`); it is reached through `&mut self` and `Mutex::get_mut`, never locked.
#[derive(Default)]
pub struct Outbox {
    in_flight: Mutex<VecDeque<InFlight>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field(
                "in_flight",
                &self.in_flight.try_lock().map(|q| q.len()).ok(),
            )
            .finish()
    }
}

/// Polls `fut` once without a waker that does anything.
fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

impl Outbox {
    fn queue(&mut self) -> &mut VecDeque<InFlight> {
        self.in_flight
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
    }

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
    pub fn publish(&mut self, channel: &Channel, result: PendingResult) -> Option<PendingResult> {
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
        self.push(send)
    }

    /// Polls a new send once (queueing its frames) and keeps it if lapin is not done with it.
    fn push(&mut self, mut send: InFlight) -> Option<PendingResult> {
        match poll_once(send.as_mut()) {
            Poll::Ready(failed) => failed,
            Poll::Pending => {
                self.queue().push_back(send);
                None
            }
        }
    }

    /// Drops the publishes lapin has written, oldest first, up to the first it has not, and
    /// returns those that failed (to send again). Registers no waker: nothing is woken later.
    pub fn reap(&mut self) -> Vec<PendingResult> {
        let mut failed = Vec::new();
        let queue = self.queue();
        while let Some(front) = queue.front_mut() {
            match poll_once(front.as_mut()) {
                Poll::Ready(outcome) => {
                    failed.extend(outcome);
                    queue.pop_front();
                }
                Poll::Pending => break,
            }
        }
        failed
    }

    /// Whether so many publishes wait that the caller should [`Outbox::settle`] them.
    pub fn is_full(&mut self) -> bool {
        self.len() >= MAX_IN_FLIGHT
    }

    /// Waits until lapin is done with every publish (they are written, or failed with the
    /// connection) and returns those that failed, oldest first.
    pub async fn settle(&mut self) -> Vec<PendingResult> {
        let mut failed = Vec::new();
        while let Some(send) = self.queue().pop_front() {
            failed.extend(send.await);
        }
        failed
    }

    /// Publishes waiting to be reported written.
    pub fn len(&mut self) -> usize {
        self.queue().len()
    }

    /// Whether none wait.
    pub fn is_empty(&mut self) -> bool {
        self.queue().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(n: u8) -> PendingResult {
        PendingResult {
            queue: "q".into(),
            correlation_id: n.to_string(),
            body: vec![n],
        }
    }

    /// A send that is pending until `gate` opens, then fails (returns its result) or not.
    fn gated(gate: &std::sync::Arc<std::sync::atomic::AtomicBool>, fail: Option<u8>) -> InFlight {
        let gate = gate.clone();
        Box::pin(std::future::poll_fn(move |_| {
            if gate.load(std::sync::atomic::Ordering::SeqCst) {
                Poll::Ready(fail.map(result))
            } else {
                Poll::Pending
            }
        }))
    }

    #[test]
    fn finished_sends_are_not_kept_and_failures_come_back() {
        let mut out = Outbox::default();
        assert_eq!(out.push(Box::pin(async { None })), None);
        assert_eq!(
            out.push(Box::pin(async { Some(result(1)) })),
            Some(result(1))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn reap_stops_at_the_first_unfinished_send_and_keeps_order() {
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let later = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut out = Outbox::default();
        out.push(gated(&open, Some(1)));
        out.push(gated(&later, Some(2)));
        out.push(gated(&open, None));
        assert_eq!(out.len(), 3);
        assert!(out.reap().is_empty(), "nothing finished yet");
        open.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(out.reap(), vec![result(1)]);
        assert_eq!(out.len(), 2, "the second blocks the third, which finished");
        later.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(out.reap(), vec![result(2)]);
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn settle_waits_for_every_send() {
        let gate = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut out = Outbox::default();
        out.push(gated(&gate, Some(7)));
        // poll_fn registers no waker: open the gate before settle polls it again.
        gate.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(out.settle().await, vec![result(7)]);
        assert!(out.is_empty());
    }
}
