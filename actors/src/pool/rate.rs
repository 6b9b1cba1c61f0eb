//! Rate limits: a token bucket and the per-task queues held back by them. Pure; times are
//! passed in. Celery's rate strings are parsed in [`crate::settings::rate`] (re-exported here).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

pub use crate::settings::rate::{MIN_RATE, format_rate, parse_rate};

/// A token bucket holding at most one token (Celery's rate limits allow no bursts), refilled
/// at `rate` tokens per second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket (the first task runs at once).
    pub fn new(rate: f64, now: Instant) -> Self {
        TokenBucket {
            rate,
            tokens: 1.0,
            last: now,
        }
    }

    /// The refill rate, tokens per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(1.0);
        self.last = now;
    }

    /// Takes a token if one is there.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until a token is there.
    pub fn wait_time(&mut self, now: Instant) -> Duration {
        self.refill(now);
        let missing = (1.0 - self.tokens).max(0.0);
        // `rate` is at least MIN_RATE when parsed, but a bucket may be built from anything:
        // never a panic, at worst a wait of a year.
        Duration::try_from_secs_f64(missing / self.rate)
            .unwrap_or(Duration::MAX)
            .min(Duration::from_secs(31_536_000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_spaces_tasks_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, t0);
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0));
        assert_eq!(b.wait_time(t0), Duration::from_millis(500));
        assert!(!b.try_take(t0 + Duration::from_millis(400)));
        assert!(b.try_take(t0 + Duration::from_millis(500)));
        // No burst after a long idle time: capacity is one token.
        let later = t0 + Duration::from_secs(60);
        assert!(b.try_take(later));
        assert!(!b.try_take(later));
        // A bucket with an absurd rate waits a year at most, without panicking.
        let mut tiny = TokenBucket::new(1e-300, t0);
        assert!(tiny.try_take(t0));
        assert_eq!(tiny.wait_time(t0), Duration::from_secs(31_536_000));
    }
}

/// Requests held back by per-task rate limits: one bucket and one FIFO queue per limited task.
/// Requests of tasks without a limit pass straight through. Generic so it is tested without
/// actors.
#[derive(Debug)]
pub struct RateQueues<T> {
    buckets: HashMap<String, TokenBucket>,
    waiting: HashMap<String, VecDeque<T>>,
}

impl<T> Default for RateQueues<T> {
    fn default() -> Self {
        RateQueues {
            buckets: HashMap::new(),
            waiting: HashMap::new(),
        }
    }
}

impl<T> RateQueues<T> {
    /// Queues with the given limits (task name -> tasks per second).
    pub fn new(rates: &HashMap<String, f64>, now: Instant) -> Self {
        let buckets = rates
            .iter()
            .map(|(task, rate)| (task.clone(), TokenBucket::new(*rate, now)))
            .collect();
        RateQueues {
            buckets,
            waiting: HashMap::new(),
        }
    }

    /// Whether no task has a limit.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Sets (or, with `None`, removes) a task's limit; returns what waited on a removed limit.
    pub fn set_rate(&mut self, task: &str, rate: Option<f64>, now: Instant) -> Vec<T> {
        match rate {
            Some(r) => {
                self.buckets
                    .insert(task.to_owned(), TokenBucket::new(r, now));
                Vec::new()
            }
            None => {
                self.buckets.remove(task);
                self.waiting.remove(task).map(Vec::from).unwrap_or_default()
            }
        }
    }

    /// The current limit of `task`, tasks per second.
    pub fn rate(&self, task: &str) -> Option<f64> {
        self.buckets.get(task).map(TokenBucket::rate)
    }

    /// Lets `item` of `task` through now (`Some`), or keeps it until a token is there (`None`).
    /// Items of one task keep their order.
    pub fn admit(&mut self, task: &str, item: T, now: Instant) -> Option<T> {
        let Some(bucket) = self.buckets.get_mut(task) else {
            return Some(item);
        };
        let queue = self.waiting.entry(task.to_owned()).or_default();
        if queue.is_empty() && bucket.try_take(now) {
            return Some(item);
        }
        queue.push_back(item);
        None
    }

    /// A held item whose task has a token now, if any.
    pub fn pop_ready(&mut self, now: Instant) -> Option<T> {
        for (task, queue) in &mut self.waiting {
            if queue.is_empty() {
                continue;
            }
            if let Some(bucket) = self.buckets.get_mut(task)
                && bucket.try_take(now)
            {
                return queue.pop_front();
            }
        }
        None
    }

    /// How long until some held item can go, if any is held.
    pub fn next_wait(&mut self, now: Instant) -> Option<Duration> {
        let mut next: Option<Duration> = None;
        for (task, queue) in &self.waiting {
            if queue.is_empty() {
                continue;
            }
            if let Some(bucket) = self.buckets.get_mut(task) {
                let w = bucket.wait_time(now);
                next = Some(next.map_or(w, |n| n.min(w)));
            }
        }
        next
    }

    /// The held items, in no particular order across tasks.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.waiting.values().flat_map(|q| q.iter())
    }

    /// Number of held items.
    pub fn held(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum()
    }

    /// Removes and returns every held item.
    pub fn drain(&mut self) -> Vec<T> {
        self.waiting
            .values_mut()
            .flat_map(|q| q.drain(..))
            .collect()
    }

    /// Removes and returns the held items for which `take` is true.
    pub fn remove_where(&mut self, mut take: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut out = Vec::new();
        for q in self.waiting.values_mut() {
            let (taken, kept): (Vec<T>, Vec<T>) = q.drain(..).partition(|x| take(x));
            out.extend(taken);
            q.extend(kept);
        }
        out
    }

    /// Keeps only the held items for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for q in self.waiting.values_mut() {
            q.retain(&mut keep);
        }
    }
}

#[cfg(test)]
mod queue_tests {
    use super::*;

    #[test]
    fn holds_only_limited_tasks_and_keeps_order() {
        let t0 = Instant::now();
        let rates = HashMap::from([("slow".to_owned(), 2.0)]);
        let mut q = RateQueues::new(&rates, t0);
        assert_eq!(q.admit("fast", 1, t0), Some(1));
        assert_eq!(q.admit("slow", 2, t0), Some(2), "first token is there");
        assert_eq!(q.admit("slow", 3, t0), None);
        assert_eq!(q.admit("slow", 4, t0), None);
        assert_eq!(q.admit("fast", 5, t0), Some(5), "others keep flowing");
        assert_eq!(q.held(), 2);
        assert_eq!(q.pop_ready(t0), None);
        assert_eq!(q.next_wait(t0), Some(Duration::from_millis(500)));
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(q.pop_ready(t1), Some(3));
        assert_eq!(q.pop_ready(t1), None);
        assert_eq!(q.admit("slow", 6, t1), None, "queued behind 4");
        assert_eq!(
            q.set_rate("slow", None, t1),
            vec![4, 6],
            "removing the limit releases them"
        );
        assert_eq!(q.admit("slow", 7, t1), Some(7));
        assert_eq!(q.held(), 0);
    }
}
