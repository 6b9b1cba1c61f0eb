//! Acks gathered and sent together (pure): a delivery that may be acked waits until the
//! consumer has taken what is already in its mailbox, then the acks go out as few frames as
//! AMQP allows: one `basic.ack` with `multiple` for every ready tag below the first delivery
//! that is still held (an ETA task, a rate-limited one, one still running under `acks_late`),
//! single acks above it. The broker does one ack's work instead of one per message, and the
//! worker writes one frame.
//!
//! ```
//! use celeryd_actors::consumer::acks::Acks;
//! let mut acks = Acks::default();
//! for tag in 1..=5 {
//!     acks.delivered(tag);
//! }
//! acks.ready(1);
//! acks.ready(2);
//! acks.ready(4); // 3 is still held
//! assert_eq!(acks.take(), vec![(2, true), (4, false)]);
//! acks.ready(3);
//! acks.ready(5);
//! assert_eq!(acks.take(), vec![(5, true)]);
//! ```

use std::collections::BTreeSet;

/// Deliveries not acked yet, and those that may be.
#[derive(Debug, Default, Clone)]
pub struct Acks {
    /// Every delivery of this connection the broker still counts as unacked.
    unacked: BTreeSet<u64>,
    /// Those of them that may be acked now.
    ready: BTreeSet<u64>,
}

impl Acks {
    /// A delivery arrived.
    pub fn delivered(&mut self, tag: u64) {
        self.unacked.insert(tag);
    }

    /// `tag` may be acked; false if it is not an unacked delivery (settled already, or of a
    /// lost connection).
    pub fn ready(&mut self, tag: u64) -> bool {
        if !self.unacked.contains(&tag) {
            return false;
        }
        self.ready.insert(tag)
    }

    /// `tag` is settled another way (rejected, handed back) now; false if it was not unacked.
    pub fn settled(&mut self, tag: u64) -> bool {
        self.ready.remove(&tag);
        self.unacked.remove(&tag)
    }

    /// Whether acks wait to be sent.
    pub fn pending(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The ack frames for every ready delivery, as `(tag, multiple)`, in order; they are
    /// no longer unacked afterwards.
    pub fn take(&mut self) -> Vec<(u64, bool)> {
        let mut frames = Vec::new();
        if self.ready.is_empty() {
            return frames;
        }
        // The first unacked delivery that may not be acked bounds what `multiple` may cover.
        let held = self
            .unacked
            .iter()
            .zip(self.ready.iter().map(Some).chain(std::iter::repeat(None)))
            .find(|(u, r)| Some(*u) != *r)
            .map(|(u, _)| *u);
        let below: Vec<u64> = match held {
            Some(h) => self.ready.range(..h).copied().collect(),
            None => self.ready.iter().copied().collect(),
        };
        match below.len() {
            0 => {}
            1 => frames.push((below[0], false)),
            _ => frames.push((below[below.len() - 1], true)),
        }
        if let Some(h) = held {
            frames.extend(self.ready.range(h..).map(|t| (*t, false)));
        }
        for t in std::mem::take(&mut self.ready) {
            self.unacked.remove(&t);
        }
        frames
    }

    /// The connection is gone: its deliveries are the broker's again.
    pub fn clear(&mut self) {
        self.unacked.clear();
        self.ready.clear();
    }

    /// How many deliveries are unacked.
    pub fn len(&self) -> usize {
        self.unacked.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.unacked.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_prefixes_go_as_one_multiple_ack() {
        let mut a = Acks::default();
        for t in 1..=8 {
            a.delivered(t);
        }
        for t in [3, 1, 2] {
            assert!(a.ready(t));
        }
        assert_eq!(a.take(), vec![(3, true)]);
        assert!(!a.pending());
        // One alone is a plain ack.
        a.ready(4);
        assert_eq!(a.take(), vec![(4, false)]);
        // Behind a held delivery (6), each is acked alone; the prefix still goes together.
        a.ready(5);
        a.ready(7);
        a.ready(8);
        assert_eq!(a.take(), vec![(5, false), (7, false), (8, false)]);
        assert_eq!(a.len(), 1, "6 is still unacked");
        a.ready(6);
        assert_eq!(a.take(), vec![(6, false)]);
        assert!(a.is_empty());
    }

    #[test]
    fn settled_and_unknown_tags_are_not_acked() {
        let mut a = Acks::default();
        for t in 1..=4 {
            a.delivered(t);
        }
        assert!(a.settled(1), "rejected");
        assert!(!a.ready(1), "no longer unacked");
        assert!(!a.ready(9), "never delivered");
        a.ready(2);
        a.ready(3);
        assert_eq!(a.take(), vec![(3, true)], "2 and 3: 1 is gone, 4 is held");
        assert!(a.ready(4));
        assert!(!a.ready(4), "already ready");
        a.clear();
        assert!(a.take().is_empty() && a.is_empty());
    }

    #[test]
    fn a_ready_tag_below_every_held_one_never_acks_a_held_one() {
        // Property: a multiple ack never covers an unacked delivery that is not ready.
        let mut a = Acks::default();
        let held = [2u64, 5, 9];
        for t in 1..=12 {
            a.delivered(t);
        }
        for t in (1..=12).filter(|t| !held.contains(t)) {
            a.ready(t);
        }
        for (tag, multiple) in a.take() {
            if multiple {
                assert!(held.iter().all(|h| *h > tag), "{tag} covers a held one");
            } else {
                assert!(!held.contains(&tag));
            }
        }
        assert_eq!(a.len(), 3);
    }
}
