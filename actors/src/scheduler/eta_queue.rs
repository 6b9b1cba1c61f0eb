//! A queue of items ordered by ETA (earliest first, FIFO among equal ETAs). Pure.
//!
//! ```
//! use celeryd_actors::scheduler::eta_queue::EtaQueue;
//! use time::macros::datetime;
//! let mut q = EtaQueue::new();
//! q.push(datetime!(2030-01-01 0:00:02 UTC), "b");
//! q.push(datetime!(2030-01-01 0:00:01 UTC), "a");
//! assert_eq!(q.pop_due(datetime!(2030-01-01 0:00:01 UTC)), vec!["a"]);
//! assert_eq!(q.len(), 1);
//! ```

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use time::OffsetDateTime;

#[derive(Debug)]
struct Entry<T> {
    eta: OffsetDateTime,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.eta, self.seq) == (other.eta, other.seq)
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.eta, self.seq).cmp(&(other.eta, other.seq))
    }
}

/// Items held until their ETA.
#[derive(Debug)]
pub struct EtaQueue<T> {
    heap: BinaryHeap<Reverse<Entry<T>>>,
    seq: u64,
}

impl<T> Default for EtaQueue<T> {
    fn default() -> Self {
        EtaQueue {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<T> EtaQueue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Holds `item` until `eta`.
    pub fn push(&mut self, eta: OffsetDateTime, item: T) {
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            eta,
            seq: self.seq,
            item,
        }));
    }

    /// The earliest ETA held.
    pub fn next_eta(&self) -> Option<OffsetDateTime> {
        self.heap.peek().map(|e| e.0.eta)
    }

    /// Removes and returns every item due at `now`, earliest first.
    pub fn pop_due(&mut self, now: OffsetDateTime) -> Vec<T> {
        let mut due = Vec::new();
        while self.heap.peek().is_some_and(|e| e.0.eta <= now) {
            if let Some(Reverse(e)) = self.heap.pop() {
                due.push(e.item);
            }
        }
        due
    }

    /// Removes and returns everything, earliest first.
    pub fn drain(&mut self) -> Vec<T> {
        let mut all = Vec::with_capacity(self.heap.len());
        while let Some(Reverse(e)) = self.heap.pop() {
            all.push(e.item);
        }
        all
    }

    /// Keeps only the items for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.heap.retain(|e| keep(&e.0.item));
    }

    /// Removes and returns the items for which `take` is true.
    pub fn remove_where(&mut self, mut take: impl FnMut(&T) -> bool) -> Vec<T> {
        let entries = std::mem::take(&mut self.heap).into_vec();
        let (taken, kept): (Vec<_>, Vec<_>) = entries.into_iter().partition(|e| take(&e.0.item));
        self.heap = kept.into();
        taken.into_iter().map(|e| e.0.item).collect()
    }

    /// The held items, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.heap.iter().map(|e| &e.0.item)
    }

    /// Number of items held.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    #[test]
    fn orders_by_eta_then_arrival() {
        let t0 = OffsetDateTime::now_utc();
        let mut q = EtaQueue::new();
        q.push(t0 + Duration::seconds(5), 3);
        q.push(t0 + Duration::seconds(1), 1);
        q.push(t0 + Duration::seconds(1), 2);
        assert_eq!(q.next_eta(), Some(t0 + Duration::seconds(1)));
        assert_eq!(q.pop_due(t0), Vec::<i32>::new());
        assert_eq!(q.pop_due(t0 + Duration::seconds(2)), vec![1, 2]);
        q.retain(|x| *x != 3);
        assert!(q.is_empty());
    }
}
