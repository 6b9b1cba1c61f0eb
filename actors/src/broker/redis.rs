//! Redis as the broker, wire-compatible with kombu's redis transport (`redis-transport.md`):
//! the same keys, envelope, fetch order, `unacked` records and fanout channels, so Python
//! clients, Python workers, `celery inspect` and Flower share a Redis with celeryd.
//!
//! Where it does better than kombu, compatibly: a fetch and its `unacked` record are one
//! atomic step ([`scripts::FETCH`]); the leases of held messages are renewed, so no
//! worker's restore hands out a message this worker still holds (an ETA task waiting, an
//! acks_late task running); a clean shutdown puts every held message back at once.

mod beat;
mod connect;
mod consume;
pub mod envelope;
mod error;
mod fetch;
pub mod keys;
mod link;
mod pidbox;
mod publish;
pub mod scripts;
mod settle;

pub use self::envelope::{EnvelopeError, Message};
pub use self::error::RedisError;
pub use self::link::Link;
pub use self::pidbox::Channel;

/// Where a retry of a task delivered as `info` goes: where it was sent (Redis has no delay
/// ladder to strip), or the queue it came from.
pub fn retry_route(info: &crate::protocol::DeliveryInfo) -> (String, String) {
    if info.exchange.is_empty() && info.routing_key.is_empty() {
        (String::new(), info.queue.clone())
    } else {
        (info.exchange.clone(), info.routing_key.clone())
    }
}

/// The `broker` section of `inspect stats`, as Celery's worker reports a Redis connection
/// (password left out).
pub fn stats(
    url: &crate::settings::redis::RedisUrl,
    options: &crate::settings::redis::RedisOptions,
) -> serde_json::Value {
    use crate::settings::redis::Endpoint;
    let (hostname, port) = match &url.endpoint {
        Endpoint::Tcp { host, port } => (serde_json::json!(host), serde_json::json!(port)),
        Endpoint::Unix(path) => (serde_json::json!(path), serde_json::Value::Null),
        Endpoint::Sentinel(nodes) => (
            serde_json::json!(nodes.first().map(|n| n.0.clone())),
            serde_json::json!(nodes.first().map(|n| n.1)),
        ),
    };
    serde_json::json!({
        "hostname": hostname, "userid": url.username, "virtual_host": url.db.to_string(),
        "port": port, "insist": false, "ssl": url.tls,
        "transport": if matches!(url.endpoint, Endpoint::Sentinel(_)) { "sentinel" } else { "redis" },
        "connect_timeout": 4, "login_method": null, "uri_prefix": null, "heartbeat": 0.0,
        "failover_strategy": "round-robin", "alternates": [],
        "transport_options": {"visibility_timeout": options.visibility_timeout},
    })
}
