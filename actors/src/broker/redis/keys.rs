//! The names kombu's redis transport gives things, so that Python clients and workers on the
//! same Redis see what celeryd writes (`redis-transport.md` §1.1): a queue's list per priority
//! step, the binding sets, the `unacked` hash and index, the fanout channels, every one under
//! `global_keyprefix`. Pure.

use crate::settings::redis::{QueueOrder, RedisOptions};

/// Key names for one Redis broker.
#[derive(Debug, Clone, PartialEq)]
pub struct Keys {
    prefix: String,
    sep: String,
    steps: Vec<u8>,
    fanout: String,
    /// The hash of fetched, unacked messages.
    pub unacked: String,
    /// The sorted set of their lease times.
    pub unacked_index: String,
    /// The lock taken while restoring expired messages.
    pub unacked_mutex: String,
}

impl Keys {
    /// The names under `options` for database `db`.
    pub fn new(options: &RedisOptions, db: i64) -> Keys {
        let prefix = options.global_keyprefix.clone();
        Keys {
            unacked: format!("{prefix}{}", options.unacked_key),
            unacked_index: format!("{prefix}{}", options.unacked_index_key),
            unacked_mutex: format!("{prefix}{}", options.unacked_mutex_key),
            fanout: format!("{prefix}{}", options.fanout_prefix_for(db)),
            sep: options.sep.clone(),
            steps: options.priority_steps.clone(),
            prefix,
        }
    }

    /// The priority step a message of `priority` (clamped to 0..=9) goes to: the greatest
    /// step not above it.
    pub fn step(&self, priority: u8) -> u8 {
        let p = priority.min(9);
        self.steps.iter().copied().rfind(|s| *s <= p).unwrap_or(0)
    }

    /// The list of `queue`'s messages of `priority`: the queue's own name for step 0, else
    /// the name, the separator and the step.
    pub fn queue_key(&self, queue: &str, priority: u8) -> String {
        match self.step(priority) {
            0 => format!("{}{queue}", self.prefix),
            s => format!("{}{queue}{}{s}", self.prefix, self.sep),
        }
    }

    /// The lists to fetch from, in kombu's order: step by step, and within a step the
    /// queues in `queues`' order (the caller rotates them).
    pub fn fetch_order(&self, queues: &[String]) -> Vec<String> {
        let mut keys = Vec::with_capacity(queues.len() * self.steps.len());
        for step in &self.steps {
            for q in queues {
                keys.push(self.queue_key(q, *step));
            }
        }
        keys
    }

    /// The queue a list belongs to (its key without the prefix and the step).
    pub fn queue_of<'k>(&self, key: &'k str) -> &'k str {
        let key = key.strip_prefix(self.prefix.as_str()).unwrap_or(key);
        match key.rsplit_once(self.sep.as_str()) {
            Some((queue, step)) if step.parse::<u8>().is_ok() => queue,
            _ => key,
        }
    }

    /// The binding set of `exchange` (`_kombu.binding.<exchange>`).
    pub fn bindings(&self, exchange: &str) -> String {
        format!("{}_kombu.binding.{exchange}", self.prefix)
    }

    /// The set kombu 5.7 keeps of the bindings that never expire (`_kombu.binding_permanent.<exchange>`).
    pub fn permanent_bindings(&self, exchange: &str) -> String {
        format!("{}_kombu.binding_permanent.{exchange}", self.prefix)
    }

    /// The member of a binding set that binds `queue` with `routing_key` and `pattern`
    /// (kombu's regex for a topic binding, empty otherwise).
    pub fn binding_member(&self, routing_key: &str, pattern: &str, queue: &str) -> String {
        let sep = &self.sep;
        format!("{routing_key}{sep}{pattern}{sep}{queue}")
    }

    /// A binding set's member read back: (routing key, pattern, queue).
    pub fn parse_binding<'m>(&self, member: &'m str) -> Option<(&'m str, &'m str, &'m str)> {
        let mut parts = member.splitn(3, self.sep.as_str());
        Some((parts.next()?, parts.next()?, parts.next()?))
    }

    /// The pub/sub channel of fanout `exchange`, narrowed by `routing_key` where kombu's
    /// `fanout_patterns` does (`/0.celeryev/task.succeeded`).
    pub fn fanout_channel(&self, exchange: &str, routing_key: &str, patterns: bool) -> String {
        if patterns && !routing_key.is_empty() {
            format!("{}{exchange}/{routing_key}", self.fanout)
        } else {
            format!("{}{exchange}", self.fanout)
        }
    }
}

/// kombu's regex for a topic binding pattern: words split on `.`, `*` one word (kombu's
/// `.*?[^\.]`), `#` any words, anchored.
pub fn topic_regex(pattern: &str) -> String {
    let words: Vec<String> = pattern
        .split('.')
        .map(|w| match w {
            "*" => r".*?[^\.]".to_owned(),
            "#" => ".*?".to_owned(),
            w => regex::escape(w),
        })
        .collect();
    format!("^{}$", words.join(r"\."))
}

/// The queues that a message to `exchange` with `routing_key` goes to, given the members of
/// the exchange's binding set: the queue named by the key for the anonymous exchange; where
/// the binding has a pattern, those whose pattern matches; else those bound with the same key.
pub fn route(keys: &Keys, exchange: &str, routing_key: &str, members: &[String]) -> Vec<String> {
    if exchange.is_empty() {
        return vec![routing_key.to_owned()];
    }
    let mut out: Vec<String> = Vec::new();
    for m in members {
        let Some((rk, pattern, queue)) = keys.parse_binding(m) else {
            continue;
        };
        let hit = if pattern.is_empty() {
            rk == routing_key
        } else {
            regex::Regex::new(pattern).is_ok_and(|r| r.is_match(routing_key))
        };
        if hit && !out.iter().any(|q| q == queue) {
            out.push(queue.to_owned());
        }
    }
    out
}

/// The queues in the order the next fetch asks for them, after a message came from `last`:
/// round-robin moves it to the end, `priority` keeps the configured order, `sorted` sorts.
pub fn rotate(order: QueueOrder, queues: &mut Vec<String>, last: Option<&str>) {
    match order {
        QueueOrder::RoundRobin => {
            if let Some(last) = last
                && let Some(i) = queues.iter().position(|q| q == last)
            {
                let q = queues.remove(i);
                queues.push(q);
            }
        }
        QueueOrder::Priority => {}
        QueueOrder::Sorted => queues.sort(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new(&RedisOptions::default(), 0)
    }

    #[test]
    fn priorities_map_to_kombus_lists() {
        let k = keys();
        let names: Vec<String> = [0, 2, 3, 5, 6, 8, 9, 200]
            .iter()
            .map(|p| k.queue_key("celery", *p))
            .collect();
        assert_eq!(
            names,
            [
                "celery",
                "celery",
                "celery\x06\x163",
                "celery\x06\x163",
                "celery\x06\x166",
                "celery\x06\x166",
                "celery\x06\x169",
                "celery\x06\x169"
            ]
        );
        assert_eq!(k.queue_of("celery\x06\x166"), "celery");
        assert_eq!(k.queue_of("celery"), "celery");
    }

    #[test]
    fn fetch_order_is_step_major() {
        let k = keys();
        let order = k.fetch_order(&["a".into(), "b".into()]);
        assert_eq!(order[..4], ["a", "b", "a\x06\x163", "b\x06\x163"]);
        assert_eq!(order.len(), 8);
    }

    #[test]
    fn the_prefix_goes_on_every_key_and_channel() {
        let o = RedisOptions {
            global_keyprefix: "p:".into(),
            ..RedisOptions::default()
        };
        let k = Keys::new(&o, 2);
        assert_eq!(k.queue_key("q", 9), "p:q\x06\x169");
        assert_eq!(k.queue_of("p:q\x06\x169"), "q");
        assert_eq!(k.unacked, "p:unacked");
        assert_eq!(k.bindings("ex"), "p:_kombu.binding.ex");
        assert_eq!(
            k.fanout_channel("celeryev", "task.succeeded", true),
            "p:/2.celeryev/task.succeeded"
        );
        assert_eq!(
            k.fanout_channel("celery.pidbox", "", true),
            "p:/2.celery.pidbox"
        );
    }

    #[test]
    fn bindings_route_as_kombu_does() {
        let k = keys();
        let members = vec![
            k.binding_member("jobs", "", "jobs"),
            k.binding_member("a.*", &topic_regex("a.*"), "topicq"),
            k.binding_member("#", &topic_regex("#"), "all"),
        ];
        assert_eq!(route(&k, "", "x", &members), ["x"]);
        assert_eq!(route(&k, "ex", "jobs", &members), ["jobs", "all"]);
        assert_eq!(route(&k, "ex", "a.b", &members), ["topicq", "all"]);
        assert!(route(&k, "ex", "nope", &members[..1]).is_empty());
        assert_eq!(k.parse_binding(&members[0]), Some(("jobs", "", "jobs")));
    }

    #[test]
    fn queues_take_turns() {
        let mut qs = vec!["a".to_owned(), "b".into(), "c".into()];
        rotate(QueueOrder::RoundRobin, &mut qs, Some("a"));
        assert_eq!(qs, ["b", "c", "a"]);
        rotate(QueueOrder::Priority, &mut qs, Some("b"));
        assert_eq!(qs, ["b", "c", "a"]);
        rotate(QueueOrder::Sorted, &mut qs, None);
        assert_eq!(qs, ["a", "b", "c"]);
    }
}
