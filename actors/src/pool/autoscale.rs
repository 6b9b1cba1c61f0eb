//! The autoscaler's rule (`--autoscale max,min`). Pure: the pool feeds it counts and clocks.
//!
//! Celery's rule: `qty` is the number of requests the worker holds (running or waiting for a
//! child). With fewer children than `min(qty, max)` it grows at once; with more than
//! `max(qty, min)` it shrinks, but only once `keepalive` has passed since the last growth, so a
//! bursty queue does not make children come and go.

use std::time::{Duration, Instant};

/// What the autoscaler should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Add this many children.
    Up(usize),
    /// Remove this many children.
    Down(usize),
    /// Keep the pool as it is.
    Hold,
}

/// The autoscaler's bounds and memory of its last growth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Autoscaler {
    /// Most children.
    pub max: usize,
    /// Fewest children.
    pub min: usize,
    /// How long after growing it waits before it may shrink.
    pub keepalive: Duration,
    /// When it last grew the pool.
    pub last_scale_up: Option<Instant>,
}

impl Autoscaler {
    /// An autoscaler between `min` and `max` children.
    pub fn new(max: usize, min: usize, keepalive: Duration) -> Self {
        Autoscaler {
            max,
            min,
            keepalive,
            last_scale_up: None,
        }
    }

    /// The decision for `processes` children while `qty` requests are held.
    pub fn decide(&self, processes: usize, qty: usize, now: Instant) -> Scale {
        let wanted = qty.min(self.max).max(self.min);
        if wanted > processes {
            return Scale::Up(wanted - processes);
        }
        let target = qty.max(self.min).min(self.max);
        if target < processes {
            let cooled = self
                .last_scale_up
                .is_some_and(|t| now.saturating_duration_since(t) > self.keepalive);
            if cooled {
                return Scale::Down(processes - target);
            }
            // Above max (lowered by `autoscale`) it comes down to max without waiting.
            if processes > self.max {
                return Scale::Down(processes - self.max);
            }
        }
        Scale::Hold
    }

    /// Records a growth made at `now`.
    pub fn grew(&mut self, now: Instant) {
        self.last_scale_up = Some(now);
    }

    /// The `autoscale` control command: new bounds (either may be left as is). Returns the
    /// bounds now in force, `(max, min)`. A min above the max raises the max with it.
    pub fn update(&mut self, max: Option<usize>, min: Option<usize>) -> (usize, usize) {
        if let Some(max) = max {
            self.max = max.max(1);
        }
        if let Some(min) = min {
            self.min = min;
        }
        if self.min > self.max {
            self.max = self.min;
        }
        (self.max, self.min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaler() -> Autoscaler {
        Autoscaler::new(10, 2, Duration::from_secs(30))
    }

    #[test]
    fn grows_to_the_load_but_not_past_max() {
        let now = Instant::now();
        assert_eq!(scaler().decide(2, 5, now), Scale::Up(3));
        assert_eq!(scaler().decide(2, 50, now), Scale::Up(8));
        assert_eq!(scaler().decide(10, 50, now), Scale::Hold);
        assert_eq!(scaler().decide(2, 2, now), Scale::Hold);
    }

    #[test]
    fn shrinks_to_the_load_or_min_only_after_keepalive() {
        let start = Instant::now();
        let mut s = scaler();
        s.grew(start);
        assert_eq!(s.decide(8, 0, start + Duration::from_secs(5)), Scale::Hold);
        assert_eq!(
            s.decide(8, 0, start + Duration::from_secs(31)),
            Scale::Down(6)
        );
        assert_eq!(
            s.decide(8, 5, start + Duration::from_secs(31)),
            Scale::Down(3)
        );
        // Never grown: nothing to cool down from, so it stays (as Celery does).
        assert_eq!(scaler().decide(8, 0, start), Scale::Hold);
    }

    #[test]
    fn a_lowered_max_shrinks_at_once() {
        let now = Instant::now();
        let mut s = scaler();
        assert_eq!(s.update(Some(4), None), (4, 2));
        assert_eq!(s.decide(8, 8, now), Scale::Down(4));
        assert_eq!(s.decide(5, 0, now), Scale::Down(1));
        assert_eq!(s.update(None, Some(6)), (6, 6));
        assert_eq!(s.decide(4, 0, now), Scale::Up(2));
    }
}
