//! Celery's native delayed delivery (Celery 5.5+, `rabbitmq-compat.md` §1.1): the topology a
//! Celery worker declares when any of its queues is a quorum queue, so that Python clients,
//! which publish countdowns of quorum queues to `celery_delayed_27`, find it (else their
//! publish 404s or the message is lost), and the bindings that route a delayed message from
//! `celery_delayed_delivery` back through each non-direct queue's exchange.
//!
//! The names and arguments are Celery's own, to the letter: a Celery worker on the same vhost
//! declares the same entities, and any difference would be a 406 for one of the two.

use serde_json::{Map, Value};

use super::TaskQueue;

/// Levels: delays up to 2^28 − 1 s.
pub const LEVELS: u32 = 28;

/// The exchange a delayed message leaves the ladder by.
pub const DELIVERY: &str = "celery_delayed_delivery";

/// The exchange (and queue) of level `k`.
pub fn level(k: u32) -> String {
    format!("celery_delayed_{k}")
}

/// `p(k, bit)`: (27 − k) copies of `*.` then `<bit>.#`: at level `k`, matches a key whose
/// digit for 2^k is `bit`.
pub fn pattern(k: u32, bit: u8) -> String {
    let mut p = "*.".repeat((LEVELS - 1 - k) as usize);
    p.push_str(&format!("{bit}.#"));
    p
}

/// The arguments of level `k`'s queue, of type `queue_type` (`quorum` or `classic`).
pub fn queue_arguments(k: u32, queue_type: &str) -> Map<String, Value> {
    let mut a = Map::new();
    a.insert("x-queue-type".into(), Value::from(queue_type));
    a.insert("x-overflow".into(), Value::from("reject-publish"));
    a.insert("x-message-ttl".into(), Value::from((1i64 << k) * 1000));
    let next = if k == 0 {
        DELIVERY.to_owned()
    } else {
        level(k - 1)
    };
    a.insert("x-dead-letter-exchange".into(), Value::from(next));
    if queue_type == "quorum" {
        a.insert(
            "x-dead-letter-strategy".into(),
            Value::from("at-least-once"),
        );
    }
    a
}

/// The key a destination is bound with: the binding key when it starts with `#`, else
/// `#.<key>` (any delay digits, then the key).
pub fn destination_key(binding_key: &str) -> String {
    if binding_key.starts_with('#') {
        binding_key.to_owned()
    } else {
        format!("#.{binding_key}")
    }
}

/// For each non-direct binding of `queue` (direct exchanges get no broker-side delay in
/// Celery either): (exchange, key) to bind `celery_delayed_delivery → exchange` and
/// `queue ← exchange` with.
pub fn destination_bindings(queue: &TaskQueue) -> Vec<(String, String)> {
    queue
        .all_bindings()
        .filter(|b| !b.exchange.is_empty() && b.exchange_type != "direct")
        .map(|b| (b.exchange, destination_key(&b.routing_key)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topology_is_celerys_to_the_letter() {
        assert_eq!(level(27), "celery_delayed_27");
        assert_eq!(pattern(27, 1), "1.#");
        assert_eq!(pattern(0, 0), format!("{}0.#", "*.".repeat(27)));
        let q0 = queue_arguments(0, "quorum");
        assert_eq!(q0["x-dead-letter-exchange"], DELIVERY);
        assert_eq!(q0["x-message-ttl"], 1000);
        assert_eq!(q0["x-dead-letter-strategy"], "at-least-once");
        assert_eq!(q0["x-overflow"], "reject-publish");
        let q27 = queue_arguments(27, "classic");
        assert_eq!(q27["x-message-ttl"], 134_217_728_000i64);
        assert_eq!(q27["x-dead-letter-exchange"], "celery_delayed_26");
        assert!(!q27.contains_key("x-dead-letter-strategy"));
        assert_eq!(q27["x-queue-type"], "classic");
    }

    #[test]
    fn only_non_direct_bindings_are_routed_back_through_their_exchange() {
        let mut q = TaskQueue::plain("jobs");
        assert!(destination_bindings(&q).is_empty(), "direct: nothing");
        q.exchange = "bus".into();
        q.exchange_type = "topic".into();
        q.routing_key = "jobs.*".into();
        q.bindings.push(super::super::Binding {
            exchange: "all".into(),
            exchange_type: "fanout".into(),
            routing_key: "#".into(),
        });
        assert_eq!(
            destination_bindings(&q),
            [
                ("bus".to_owned(), "#.jobs.*".to_owned()),
                ("all".to_owned(), "#".to_owned())
            ]
        );
    }
}
