//! Publishes handed to the transport and not yet reported written: the consumer hands a
//! result over without waiting and learns later, without being woken for it, whether it went
//! out ([`Outbox::reap`]). One that failed (the connection was lost first) is handed back to
//! be sent after reconnecting. How a transport queues its frames without waiting is its own
//! (AMQP: [`amqp::outbox`](super::amqp::outbox)).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

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

/// A publish the transport holds: resolves to the result again if it could not be written.
pub type InFlight = Pin<Box<dyn Future<Output = Option<PendingResult>> + Send>>;

/// Publishes handed to the transport and not yet reported written, oldest first.
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
pub(crate) fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

impl Outbox {
    fn queue(&mut self) -> &mut VecDeque<InFlight> {
        self.in_flight
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Polls a new send once (queueing its frames) and keeps it if the transport is not done with it.
    pub fn push(&mut self, mut send: InFlight) -> Option<PendingResult> {
        match poll_once(send.as_mut()) {
            Poll::Ready(failed) => failed,
            Poll::Pending => {
                self.queue().push_back(send);
                None
            }
        }
    }

    /// Drops the publishes the transport has written, oldest first, up to the first it has not, and
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

    /// Waits until the transport is done with every publish (they are written, or failed with the
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
