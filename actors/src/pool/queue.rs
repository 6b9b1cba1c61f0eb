//! What waits in the [`Pool`](super::Pool): reserved requests in arrival order, and those
//! held back for a rate-limit token ([`RateQueues`]). Both are still reserved (unacked); a
//! request held for a token counts in the prefetch window, so the pool asks the consumer to
//! widen it ([`PoolReport::HoldPrefetch`]) while it waits.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::rate::RateQueues;
use super::report::{PoolReport, ToConsumer};
use crate::protocol::TaskRequest;
use crate::work::Reserved;

/// The requests that have not started.
#[derive(Debug)]
pub(super) struct Queue {
    reserved: VecDeque<Box<Reserved>>,
    rates: RateQueues<Box<Reserved>>,
}

impl Queue {
    /// An empty queue under these rate limits (task name -> tasks per second).
    pub(super) fn new(rates: &HashMap<String, f64>, now: Instant) -> Self {
        Queue {
            reserved: VecDeque::new(),
            rates: RateQueues::new(rates, now),
        }
    }

    /// Queues `r` last.
    pub(super) fn push(&mut self, r: Box<Reserved>) {
        self.reserved.push_back(r);
    }

    /// Queues these last, in order.
    pub(super) fn extend(&mut self, rs: impl IntoIterator<Item = Box<Reserved>>) {
        self.reserved.extend(rs);
    }

    /// Puts `r` back first (it could not start after all).
    pub(super) fn push_front(&mut self, r: Box<Reserved>) {
        self.reserved.push_front(r);
    }

    /// Requests waiting, for a child or for a token.
    pub(super) fn len(&self) -> usize {
        self.reserved.len() + self.rates.held()
    }

    /// Requests waiting for a rate-limit token.
    pub(super) fn held_for_tokens(&self) -> usize {
        self.rates.held()
    }

    /// How long until the next held request may have its token.
    pub(super) fn next_wait(&mut self, now: Instant) -> Option<Duration> {
        self.rates.next_wait(now)
    }

    /// The waiting requests, reserved ones first.
    pub(super) fn requests(&self) -> impl Iterator<Item = &Arc<TaskRequest>> {
        self.reserved
            .iter()
            .chain(self.rates.iter())
            .map(|r| &r.request)
    }

    /// The next request to run: one whose rate-limit token has come, else the next reserved
    /// one that its rate limit (if any) lets through now. A request its limit holds back is
    /// marked `holds_prefetch`, and the consumer told to widen the window for it.
    pub(super) fn next(
        &mut self,
        now: Instant,
        consumer: &mut ToConsumer,
    ) -> Option<Box<Reserved>> {
        if let Some(r) = self.rates.pop_ready(now) {
            return Some(r);
        }
        while let Some(mut r) = self.reserved.pop_front() {
            if self.rates.is_empty() {
                return Some(r);
            }
            let task = r.request.task.clone();
            let bump = !r.holds_prefetch;
            r.holds_prefetch = true;
            match self.rates.admit(&task, r, now) {
                Some(mut r) => {
                    r.holds_prefetch = !bump;
                    return Some(r);
                }
                None if bump => consumer.tell(PoolReport::HoldPrefetch),
                None => {}
            }
        }
        None
    }

    /// Sets (or removes) `task`'s rate limit; what waited on a removed limit goes first.
    pub(super) fn set_rate(&mut self, task: &str, rate: Option<f64>, now: Instant) {
        let released = self.rates.set_rate(task, rate, now);
        for r in released.into_iter().rev() {
            self.reserved.push_front(r);
        }
    }

    /// Drops the requests of connection generations up to `generation` (lost: the broker
    /// delivers them again).
    pub(super) fn forget(&mut self, generation: u64) {
        self.reserved.retain(|r| r.delivery.generation > generation);
        self.rates.retain(|r| r.delivery.generation > generation);
    }

    /// Takes out the requests with these ids.
    pub(super) fn remove_ids(
        &mut self,
        ids: &HashSet<String>,
    ) -> impl Iterator<Item = Box<Reserved>> + use<> {
        let mut dropped = Vec::new();
        let mut kept = VecDeque::with_capacity(self.reserved.len());
        for r in self.reserved.drain(..) {
            if ids.contains(&r.request.id) {
                dropped.push(r)
            } else {
                kept.push_back(r)
            }
        }
        self.reserved = kept;
        dropped.extend(self.rates.remove_where(|r| ids.contains(&r.request.id)));
        dropped.into_iter()
    }

    /// Takes out everything, reserved ones first.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = Box<Reserved>> {
        let held = self.rates.drain();
        self.reserved.drain(..).chain(held)
    }
}
