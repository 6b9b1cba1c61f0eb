//! Building protocol v2 task messages the way a Python client (`celery call`) does.

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::repr::{args_repr, py_repr, truncate};
use super::time::format_iso;

/// A task message ready to publish: properties, application headers and body.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMessage {
    /// Task id (also the correlation id).
    pub id: String,
    /// Application headers.
    pub headers: Map<String, Value>,
    /// JSON body `[args, kwargs, embed]`.
    pub body: Vec<u8>,
    /// `reply_to` property: the client's result queue (empty when not waiting).
    pub reply_to: String,
    /// `expiration` property in ms, when `expires` is set.
    pub expiration: Option<String>,
    /// `priority` property.
    pub priority: u8,
}

/// What to send.
#[derive(Debug, Clone, Default)]
pub struct TaskCall {
    /// Registered task name.
    pub name: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Absolute ETA (countdown already added).
    pub eta: Option<OffsetDateTime>,
    /// Absolute expiry.
    pub expires: Option<OffsetDateTime>,
    /// Result queue, if results are wanted.
    pub reply_to: Option<String>,
    /// Task id; a new uuid4 when None.
    pub id: Option<String>,
    /// Sender node, e.g. `gen123@host`.
    pub origin: String,
    /// Message priority.
    pub priority: u8,
}

impl TaskMessage {
    /// Builds the message for `call`, at time `now` (used for the `expiration` property).
    pub fn new(call: &TaskCall, now: OffsetDateTime) -> TaskMessage {
        let id = call
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let iso = |t: Option<OffsetDateTime>| t.map_or(Value::Null, |t| json!(format_iso(t)));
        let mut h = Map::new();
        h.insert("lang".into(), json!("py"));
        h.insert("task".into(), json!(call.name));
        h.insert("id".into(), json!(id));
        h.insert("shadow".into(), Value::Null);
        h.insert("eta".into(), iso(call.eta));
        h.insert("expires".into(), iso(call.expires));
        h.insert("group".into(), Value::Null);
        h.insert("group_index".into(), Value::Null);
        h.insert("retries".into(), json!(0));
        h.insert("timelimit".into(), json!([null, null]));
        h.insert("root_id".into(), json!(id));
        h.insert("parent_id".into(), Value::Null);
        h.insert(
            "argsrepr".into(),
            json!(truncate(args_repr(&call.args), 1024)),
        );
        h.insert(
            "kwargsrepr".into(),
            json!(truncate(py_repr(&Value::Object(call.kwargs.clone())), 1024)),
        );
        h.insert("origin".into(), json!(call.origin));
        h.insert("ignore_result".into(), json!(call.reply_to.is_none()));
        h.insert("replaced_task_nesting".into(), json!(0));
        h.insert("stamped_headers".into(), Value::Null);
        h.insert("stamps".into(), json!({}));
        let embed = json!({"callbacks": null, "errbacks": null, "chain": null, "chord": null});
        let body = serde_json::to_vec(&json!([call.args, call.kwargs, embed])).unwrap_or_default();
        let expiration = call.expires.map(|e| {
            let ms = (e - now).whole_milliseconds().max(0);
            ms.to_string()
        });
        TaskMessage {
            id,
            headers: h,
            body,
            reply_to: call.reply_to.clone().unwrap_or_default(),
            expiration,
            priority: call.priority,
        }
    }
}

/// The message a retry sends (Celery's `Task.retry`): the same task id, name and arguments,
/// `retries + 1` and an `eta` `countdown` seconds from `now`. The request's other headers
/// (root and parent ids, group, time limits, stamps, origin…) and its embed (callbacks, chain)
/// are kept.
pub fn retry_message(req: &super::TaskRequest, countdown: f64, now: OffsetDateTime) -> TaskMessage {
    let call = TaskCall {
        name: req.task.clone(),
        args: req.args.clone(),
        kwargs: req.kwargs.clone(),
        // A countdown past the calendar's end (or NaN) retries at once rather than panicking.
        eta: Some(super::time::after(now, countdown.max(0.0)).unwrap_or(now)),
        expires: req.expires,
        reply_to: req.reply_to.clone(),
        id: Some(req.id.clone()),
        origin: req.origin.clone().unwrap_or_default(),
        priority: req.delivery_info.priority,
    };
    let mut msg = TaskMessage::new(&call, now);
    for (k, v) in &req.headers {
        if !matches!(k.as_str(), "id" | "task" | "eta" | "retries" | "expires")
            && !is_dead_letter_header(k)
        {
            msg.headers.insert(k.clone(), v.clone());
        }
    }
    // The fields a Rust request keeps out of its headers (`message::compact`).
    let (hard, soft) = req.timelimit;
    let h = &mut msg.headers;
    h.insert("retries".into(), json!(req.retries.saturating_add(1)));
    h.insert("shadow".into(), json!(req.shadow));
    h.insert("group".into(), json!(req.group));
    h.insert("group_index".into(), json!(req.group_index));
    h.insert("timelimit".into(), json!([hard, soft]));
    h.insert("root_id".into(), json!(req.root_id));
    h.insert("parent_id".into(), json!(req.parent_id));
    h.insert("argsrepr".into(), json!(req.argsrepr));
    h.insert("kwargsrepr".into(), json!(req.kwargsrepr));
    if let Some(ignore) = req.ignore_result {
        h.insert("ignore_result".into(), json!(ignore));
    }
    msg.body = serde_json::to_vec(&json!([req.args, req.kwargs, req.embed_or_default()]))
        .unwrap_or_default();
    msg
}

/// RabbitMQ's dead-lettering headers (`x-death`, `x-first-death-*`, `x-last-death-*`): a
/// retry leaves them out, as Celery 5.6.3+ does, so the new message does not carry the old
/// one's history into a delay ladder or a dead-letter queue.
pub fn is_dead_letter_header(name: &str) -> bool {
    name == "x-death" || name.starts_with("x-first-death-") || name.starts_with("x-last-death-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{RawMessage, decode};

    #[test]
    fn a_retry_leaves_the_dead_letter_history_out() {
        let now = OffsetDateTime::now_utc();
        let first = TaskMessage::new(
            &TaskCall {
                name: "tasks.flaky".into(),
                ..Default::default()
            },
            now,
        );
        let mut headers = first.headers.clone();
        headers.insert(
            "x-death".into(),
            json!([{"count": 1, "queue": "celeryd.delayed.3"}]),
        );
        headers.insert("x-first-death-queue".into(), json!("celeryd.delayed.3"));
        headers.insert("x-last-death-reason".into(), json!("expired"));
        headers.insert("x-custom".into(), json!("kept"));
        let raw = RawMessage {
            content_type: Some("application/json"),
            content_encoding: Some("utf-8"),
            headers,
            correlation_id: Some(&first.id),
            body: &first.body,
            ..Default::default()
        };
        let again = retry_message(&decode(raw).unwrap(), 1.0, now);
        assert!(!again.headers.contains_key("x-death"));
        assert!(!again.headers.contains_key("x-first-death-queue"));
        assert!(!again.headers.contains_key("x-last-death-reason"));
        assert_eq!(again.headers["x-custom"], "kept");
    }

    #[test]
    fn a_retry_keeps_the_request_and_counts_up() {
        let now = OffsetDateTime::now_utc();
        let call = TaskCall {
            name: "tasks.flaky".into(),
            args: vec![json!(1)],
            reply_to: Some("rq".into()),
            origin: "gen1@h".into(),
            ..Default::default()
        };
        let first = TaskMessage::new(&call, now);
        let raw = RawMessage {
            content_type: Some("application/json"),
            content_encoding: Some("utf-8"),
            headers: first.headers.clone(),
            correlation_id: Some(&first.id),
            reply_to: Some("rq"),
            body: &first.body,
            ..Default::default()
        };
        let req = decode(raw.clone()).unwrap();
        let again = retry_message(&req, 5.0, now);
        assert_eq!(again.id, first.id);
        assert_eq!(again.headers["retries"], 1);
        assert_eq!(again.headers["root_id"], first.headers["root_id"]);
        assert_eq!(again.reply_to, "rq");
        let raw = RawMessage {
            headers: again.headers.clone(),
            body: &again.body,
            ..raw
        };
        let req2 = decode(raw.clone()).unwrap();
        assert_eq!(req2.retries, 1);
        assert_eq!(req2.args, vec![json!(1)]);
        // What the decoded request keeps in fields rather than headers comes back.
        let mut headers = first.headers.clone();
        for (k, v) in [
            ("group", json!("g1")),
            ("group_index", json!(2)),
            ("parent_id", json!("p1")),
            ("shadow", json!("nick")),
            ("timelimit", json!([10, 5])),
            ("stamped_headers", json!(["s"])),
            ("s", json!("v")),
        ] {
            headers.insert(k.into(), v);
        }
        let raw = RawMessage {
            headers,
            body: &first.body,
            ..raw
        };
        let req = decode(raw).unwrap();
        assert!(!req.headers.contains_key("group"), "kept in a field");
        let again = retry_message(&req, 1.0, now);
        let h = &again.headers;
        assert_eq!((&h["group"], &h["group_index"]), (&json!("g1"), &json!(2)));
        assert_eq!(
            (&h["parent_id"], &h["shadow"]),
            (&json!("p1"), &json!("nick"))
        );
        assert_eq!(h["timelimit"], json!([10.0, 5.0]));
        assert_eq!(h["root_id"], first.headers["root_id"]);
        assert_eq!(h["argsrepr"], first.headers["argsrepr"]);
        assert_eq!(
            (&h["stamped_headers"], &h["s"]),
            (&json!(["s"]), &json!("v"))
        );
        let body: Value = serde_json::from_slice(&again.body).unwrap();
        assert_eq!(
            body[2]["callbacks"],
            Value::Null,
            "an embed object, not null: {body}"
        );
        assert!(body[2].is_object());
        let due = req2.eta.unwrap() - (now + time::Duration::seconds(5));
        assert!(due.abs() < time::Duration::milliseconds(1), "{due}");
    }

    #[test]
    fn encoded_message_decodes_back() {
        let now = OffsetDateTime::now_utc();
        let call = TaskCall {
            name: "tasks.add".into(),
            args: vec![json!(2), json!(3)],
            kwargs: Map::new(),
            expires: Some(now + time::Duration::seconds(60)),
            reply_to: Some("rq".into()),
            origin: "gen1@h".into(),
            ..Default::default()
        };
        let msg = TaskMessage::new(&call, now);
        assert_eq!(msg.expiration.as_deref(), Some("60000"));
        let raw = RawMessage {
            content_type: Some("application/json"),
            headers: msg.headers.clone(),
            correlation_id: Some(&msg.id),
            reply_to: Some(&msg.reply_to),
            body: &msg.body,
            ..Default::default()
        };
        let req = decode(raw).unwrap();
        assert_eq!(req.task, "tasks.add");
        assert_eq!(req.args, vec![json!(2), json!(3)]);
        assert_eq!(req.argsrepr, "(2, 3)");
        assert_eq!(req.result_queue(), Some("rq"));
        assert_eq!(req.ignore_result, Some(false));
    }
}
