//! The worker's Lamport clock, shared by remote control and events (Celery's `app.clock`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A Lamport clock: `forward` for each message sent, `adjust` for each received.
#[derive(Debug, Clone, Default)]
pub struct Clock(Arc<AtomicU64>);

impl Clock {
    /// A clock at 0.
    pub fn new() -> Self {
        Clock::default()
    }

    /// Ticks for a message sent; returns the new value.
    pub fn forward(&self) -> u64 {
        self.adjust(0)
    }

    /// Takes in a received clock value: `max(own, other) + 1`; returns the new value. Received
    /// values come from outside: at `u64::MAX` the clock stays there instead of overflowing.
    pub fn adjust(&self, other: u64) -> u64 {
        let step = |c: u64| Some(c.max(other).saturating_add(1));
        let previous = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, step)
            .unwrap_or_default();
        previous.max(other).saturating_add(1)
    }

    /// The current value.
    pub fn value(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_and_adjusts_like_lamport() {
        let c = Clock::new();
        assert_eq!(c.forward(), 1);
        assert_eq!(c.adjust(10), 11);
        assert_eq!(c.adjust(3), 12);
        let shared = c.clone();
        assert_eq!(shared.forward(), 13);
        assert_eq!(c.value(), 13);
        // A hostile clock value saturates; it never overflows.
        assert_eq!(c.adjust(u64::MAX), u64::MAX);
        assert_eq!(c.forward(), u64::MAX);
    }
}
