//! Broker-side delay for far-future ETAs, so no message is held unacked past RabbitMQ's
//! `consumer_timeout` (30 min by default): a binary ladder of fixed-TTL queues.
//!
//! Level `k` (0..LEVELS) is a topic exchange `celeryd.delayed.k` and a durable queue of the
//! same name whose messages expire after 2^k s and are dead-lettered to level `k-1` (level 0
//! to the `celeryd.delayed.deliver` exchange). A message delayed by `d` seconds carries the
//! routing key `b(LEVELS-1). … .b0.<queue>` (the bits of `d`): at level `k` a 1 bit routes it
//! into the level's queue (it waits 2^k s), a 0 bit straight on to level `k-1`. The deliver
//! exchange routes it by the trailing queue name back to the task queue, where the worker
//! receives it again shortly before its ETA. Every queue of a level has one fixed TTL, so
//! RabbitMQ's expire-at-the-head behaviour keeps the order right.
//!
//! The queue name is one word of the key, escaped ([`escape_word`]): a topic pattern has no
//! escape of its own, so a queue called `#` or `a.*` would otherwise bind as a wildcard and
//! receive every delayed message of every queue.

/// Number of levels: delays up to 2^28 − 1 s (8.5 years), as Celery's native delayed delivery.
pub const LEVELS: u32 = 28;

/// The exchange (and queue) of level `k`.
pub fn level_name(k: u32) -> String {
    format!("celeryd.delayed.{k}")
}

/// The exchange that routes delayed messages back to their queue.
pub const DELIVER_EXCHANGE: &str = "celeryd.delayed.deliver";

/// The routing key for a delay of `seconds` towards `queue`.
///
/// ```
/// use celeryd_actors::broker::amqp::delay::routing_key;
/// let key = routing_key(5, "celery");
/// assert!(key.ends_with(".1.0.1.celery"));
/// assert_eq!(key.split('.').count(), 29);
/// ```
pub fn routing_key(seconds: u64, queue: &str) -> String {
    let seconds = seconds.min((1 << LEVELS) - 1);
    let word = escape_word(queue);
    let mut key = String::with_capacity(2 * LEVELS as usize + word.len());
    for k in (0..LEVELS).rev() {
        key.push(if seconds & (1 << k) != 0 { '1' } else { '0' });
        key.push('.');
    }
    key.push_str(&word);
    key
}

/// The longest routing key AMQP carries; a queue whose escaped name makes the key longer is
/// not delayed in the broker (its far-ETA tasks are held in the worker instead).
pub const MAX_KEY: usize = 255;

/// A queue name as one literal topic word: `%`, `.`, `*` and `#` percent-escaped, the rest
/// unchanged (so `celery` stays `celery`, and bindings made before escaping still match).
///
/// ```
/// use celeryd_actors::broker::amqp::delay::escape_word;
/// assert_eq!(escape_word("celery"), "celery");
/// assert_eq!(escape_word("#"), "%23");
/// assert_eq!(escape_word("a.*"), "a%2E%2A");
/// ```
pub fn escape_word(queue: &str) -> String {
    let mut out = String::with_capacity(queue.len());
    for c in queue.chars() {
        match c {
            '%' => out.push_str("%25"),
            '.' => out.push_str("%2E"),
            '*' => out.push_str("%2A"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

/// The binding pattern at level `k` that matches bit `k` set to `bit`.
pub fn bit_pattern(k: u32, bit: bool) -> String {
    let mut p = String::new();
    for _ in 0..(LEVELS - 1 - k) {
        p.push_str("*.");
    }
    p.push(if bit { '1' } else { '0' });
    p.push_str(".#");
    p
}

/// The pattern binding `queue` to the deliver exchange.
pub fn deliver_pattern(queue: &str) -> String {
    let mut p = "*.".repeat(LEVELS as usize);
    p.push_str(&escape_word(queue));
    p
}

/// The pattern earlier versions bound `queue` with (the name unescaped), when it differs from
/// [`deliver_pattern`] and is a wildcard: such a binding matches other queues' messages, so
/// it is removed.
pub fn legacy_wildcard_pattern(queue: &str) -> Option<String> {
    (queue.contains('*') || queue.contains('#')).then(|| {
        let mut p = "*.".repeat(LEVELS as usize);
        p.push_str(queue);
        p
    })
}

/// Whether the broker could route `queue`'s delayed messages back to it: a topic routing key
/// is at most [`MAX_KEY`] bytes.
pub fn can_delay(queue: &str) -> bool {
    routing_key(0, queue).len() <= MAX_KEY
}

/// Where level `k` dead-letters to.
pub fn next_exchange(k: u32) -> String {
    if k == 0 {
        DELIVER_EXCHANGE.to_owned()
    } else {
        level_name(k - 1)
    }
}

/// Walks a routing key through the ladder as the broker would; returns the total wait in
/// seconds (for tests and for checking the topology's logic).
pub fn simulate(key: &str) -> u64 {
    let bits: Vec<&str> = key.split('.').take(LEVELS as usize).collect();
    (0..LEVELS)
        .rev()
        .filter(|k| bits[(LEVELS - 1 - k) as usize] == "1")
        .map(|k| 1u64 << k)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_encode_the_delay() {
        for d in [0u64, 1, 2, 3, 600, 3599, 86_400, (1 << 28) - 1] {
            assert_eq!(simulate(&routing_key(d, "q.x")), d, "{d}");
        }
        assert_eq!(
            simulate(&routing_key(u64::MAX, "q")),
            (1 << 28) - 1,
            "capped"
        );
        assert!(routing_key(1, "my.queue").ends_with(".0.1.my%2Equeue"));
        assert_eq!(
            routing_key(7, "#").split('.').count(),
            29,
            "one word, whatever the name"
        );
    }

    #[test]
    fn patterns_pick_one_bit() {
        assert_eq!(bit_pattern(LEVELS - 1, true), "1.#");
        assert_eq!(
            bit_pattern(0, false).matches("*.").count() as u32,
            LEVELS - 1
        );
        assert!(deliver_pattern("celery").ends_with("*.celery"));
        assert_eq!(next_exchange(0), DELIVER_EXCHANGE);
        assert!(!deliver_pattern("#").contains('#'));
        assert!(!deliver_pattern("a.*.b").ends_with("*.b"));
        assert_eq!(legacy_wildcard_pattern("celery"), None);
        assert!(legacy_wildcard_pattern("#").is_some());
        assert!(can_delay("celery"));
        assert!(!can_delay(&"q".repeat(255)));
        assert_eq!(next_exchange(3), "celeryd.delayed.2");
    }
}
