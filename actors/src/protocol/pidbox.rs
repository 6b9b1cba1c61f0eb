//! Celery's pidbox (remote control) as it is on the wire, whatever the transport: the
//! exchange names, the reply address a request carries, what a `hello` reply holds.

use serde_json::{Map, Value, json};

/// The fanout exchange every node's pidbox queue is bound to (`celery.pidbox`).
pub const PIDBOX_EXCHANGE: &str = "celery.pidbox";

/// The direct exchange replies come back on (`reply.celery.pidbox`).
pub const REPLY_EXCHANGE: &str = "reply.celery.pidbox";

/// Hands each `(node, value)` of a reply body (`{node: value, …}`) to `on_reply`; how many
/// there were (0 for a body that is not such an object).
pub fn hand_replies(body: &[u8], on_reply: &mut impl FnMut(&str, &Value)) -> usize {
    let Ok(Value::Object(replies)) = serde_json::from_slice::<Value>(body) else {
        return 0;
    };
    for (node, value) in &replies {
        on_reply(node, value);
    }
    replies.len()
}

/// The `expires` header of a request: when its replies stop being awaited (epoch seconds),
/// or 0 for a request that wants none.
pub fn request_expires(reply: bool, timeout: std::time::Duration) -> f64 {
    if reply {
        crate::protocol::time::epoch_f64(time::OffsetDateTime::now_utc()) + timeout.as_secs_f64()
    } else {
        0.0
    }
}

/// `body` (method, arguments, destination, pattern, matcher) with the reply address Celery
/// puts in a request that wants replies: a `ticket` and `reply_to`.
pub fn with_reply(mut body: Map<String, Value>, ticket: &str, oid: &str) -> Map<String, Value> {
    body.insert("ticket".into(), json!(ticket));
    body.insert(
        "reply_to".into(),
        json!({"exchange": REPLY_EXCHANGE, "routing_key": oid}),
    );
    body
}

/// The revoked ids in a `hello` reply: Celery 5 sends its `LimitedSet`'s data (an object of
/// id → time) or a list; celeryd sends a list.
pub fn revoked_in_hello(reply: &Value) -> Vec<String> {
    match reply.get("revoked") {
        Some(Value::Array(ids)) => ids
            .iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s.clone()),
                // A LimitedSet pickled as pairs, [id, time].
                Value::Array(pair) => pair.first().and_then(Value::as_str).map(str::to_owned),
                _ => None,
            })
            .collect(),
        Some(Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_replies_of_celery_and_celeryd_give_their_revoked_ids() {
        assert_eq!(
            revoked_in_hello(&json!({"revoked": ["a", "b"]})),
            ["a", "b"]
        );
        let mut ids = revoked_in_hello(&json!({"revoked": {"x": 1.0, "y": 2.0}}));
        ids.sort();
        assert_eq!(ids, ["x", "y"]);
        assert_eq!(revoked_in_hello(&json!({"revoked": [["z", 1.0]]})), ["z"]);
        assert!(revoked_in_hello(&json!({"clock": 3})).is_empty());
        let b = with_reply(Map::new(), "t", "oid");
        assert_eq!(b["reply_to"]["routing_key"], "oid");
        assert_eq!(b["ticket"], "t");
    }
}
