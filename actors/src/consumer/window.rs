//! The prefetch window: how many unacked deliveries the broker may hand the worker. Pure:
//! the consumer changes it where things happen and applies it to the broker once per burst
//! ([`Window::to_apply`]).
//!
//! The count is Celery's `worker_prefetch_multiplier × concurrency` (the *base*, which
//! follows `pool_grow`/`pool_shrink`/`autoscale`), raised by one for each request the worker
//! holds without running it (an ETA task waiting, a task waiting for a rate-limit token), so
//! that held requests never fill the window and stop other tasks. 0 means unlimited.

/// The prefetch window and how it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    base: u16,
    held: u16,
    /// A channel-wide limit (`broker.qos`), until the broker refuses it for a quorum queue.
    global: bool,
    /// Changed since it was last applied.
    dirty: bool,
    /// An apply is on its way (queued behind the messages in the mailbox).
    queued: bool,
}

impl Window {
    /// A window of `base` (0: unlimited), channel-wide when `global`.
    pub fn new(base: u16, global: bool) -> Self {
        Window {
            base,
            held: 0,
            global,
            dirty: false,
            queued: false,
        }
    }

    /// The count to give the broker: the base and one per held request (0: unlimited).
    pub fn count(&self) -> u16 {
        match self.base {
            0 => 0,
            n => n.saturating_add(self.held),
        }
    }

    /// The base without held requests.
    pub fn base(&self) -> u16 {
        self.base
    }

    /// Requests held now.
    pub fn held(&self) -> u16 {
        self.held
    }

    /// Whether the limit is channel-wide.
    pub fn is_global(&self) -> bool {
        self.global
    }

    /// The broker refused channel-wide QoS (a quorum queue): per consumer from now on.
    pub fn refuse_global(&mut self) {
        self.global = false;
    }

    /// The pool's size changed: the base follows.
    pub fn set_base(&mut self, base: u16) {
        self.base = base;
        self.dirty = true;
    }

    /// One more request is held without running.
    pub fn hold(&mut self) {
        self.held = self.held.saturating_add(1);
        self.dirty = true;
    }

    /// A held request started or went.
    pub fn release(&mut self) {
        self.held = self.held.saturating_sub(1);
        self.dirty = true;
    }

    /// The connection went, and with it every held request (the broker has them back).
    pub fn connection_lost(&mut self) {
        self.held = 0;
    }

    /// Whether an apply should be queued now (changed, and none is on its way); marks it
    /// queued.
    pub fn queue_apply(&mut self) -> bool {
        let queue = self.dirty && !self.queued;
        if queue {
            self.queued = true;
        }
        queue
    }

    /// The queued apply arrived: the count to send, if it changed since the last.
    pub fn to_apply(&mut self) -> Option<u16> {
        self.queued = false;
        std::mem::take(&mut self.dirty).then(|| self.count())
    }

    /// With per-consumer QoS a new count holds only for consumers started after it: whether
    /// the consumers started with `current` must be replaced for the count `wanted`.
    pub fn reconsume(&self, current: u16, wanted: u16) -> bool {
        !self.global && reconsume_for(current, wanted, self.base)
    }
}

/// Whether per-consumer QoS needs its consumers replaced to move from `current` (the limit
/// they were started with) to `wanted`: when more is wanted (0 = unlimited), or when the held
/// tasks are gone and the consumers still take more than the base.
pub fn reconsume_for(current: u16, wanted: u16, base: u16) -> bool {
    match (current, wanted) {
        (0, _) => wanted != 0 && wanted == base,
        (_, 0) => true,
        _ => wanted > current || (wanted == base && current > base),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_consumer_qos_replaces_consumers_only_to_raise_or_to_return_to_the_base() {
        assert!(reconsume_for(8, 9, 8), "more is wanted");
        assert!(
            !reconsume_for(12, 10, 8),
            "less, but tasks still held: keep"
        );
        assert!(reconsume_for(12, 8, 8), "back to the base");
        assert!(!reconsume_for(8, 8, 8));
        assert!(reconsume_for(8, 0, 8), "unlimited");
        assert!(!reconsume_for(0, 0, 0));
    }

    #[test]
    fn held_requests_widen_the_window_and_release_it() {
        let mut w = Window::new(8, false);
        assert_eq!(w.count(), 8);
        w.hold();
        w.hold();
        assert_eq!((w.count(), w.held(), w.base()), (10, 2, 8));
        w.release();
        assert_eq!(w.count(), 9);
        w.release();
        w.release(); // never below the base
        assert_eq!(w.count(), 8);
        w.hold();
        w.connection_lost();
        assert_eq!(w.count(), 8);
    }

    #[test]
    fn unlimited_stays_unlimited() {
        let mut w = Window::new(0, true);
        w.hold();
        assert_eq!(w.count(), 0);
    }

    #[test]
    fn a_burst_of_changes_is_applied_once() {
        let mut w = Window::new(4, false);
        assert!(!w.queue_apply(), "nothing changed");
        w.hold();
        assert!(w.queue_apply(), "the first change queues an apply");
        w.hold();
        w.set_base(6);
        assert!(!w.queue_apply(), "one is on its way already");
        assert_eq!(w.to_apply(), Some(8), "the count as it is when it arrives");
        assert_eq!(w.to_apply(), None, "nothing new since");
        assert!(!w.queue_apply());
    }

    #[test]
    fn channel_wide_qos_never_replaces_consumers() {
        let mut w = Window::new(8, true);
        assert!(!w.reconsume(8, 9));
        w.refuse_global();
        assert!(!w.is_global());
        assert!(w.reconsume(8, 9));
    }
}
