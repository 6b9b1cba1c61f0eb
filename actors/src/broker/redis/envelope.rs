//! The JSON envelope kombu's redis transport LPUSHes and PUBLISHes (`redis-transport.md`
//! §1.2): `body` (base64 by `properties.body_encoding`), `content-type`,
//! `content-encoding`, `headers`, and `properties` with `delivery_info`, `priority` and the
//! publisher's `delivery_tag` (a uuid4 string). Read into a [`Message`]; written for task
//! messages, results, control replies and events. Pure.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

use crate::error::ProtocolError;
use crate::protocol::encode::TaskMessage;
use crate::protocol::{DeliveryInfo, Properties, RawMessage, TaskRequest, decode_with_limit};

/// A message as fetched from a Redis list.
#[derive(Debug, Clone)]
pub struct Message {
    /// The publisher's delivery tag: the field of the `unacked` hash that records it.
    pub delivery_tag: String,
    /// The body, decoded from its `body_encoding`.
    pub body: Vec<u8>,
    /// `content-type`.
    pub content_type: Option<String>,
    /// `content-encoding`.
    pub content_encoding: Option<String>,
    /// The application headers.
    pub headers: Map<String, Value>,
    /// The properties as sent.
    pub properties: Map<String, Value>,
    /// The exchange and routing key it was published with.
    pub exchange: String,
    /// See `exchange`.
    pub routing_key: String,
    /// The priority property (0..=9; 0 when unset).
    pub priority: u8,
    /// Whether it was restored after an earlier fetch.
    pub redelivered: bool,
}

/// Why an item cannot be read as a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not a JSON object.
    #[error("not a JSON object: {0}")]
    NotJson(String),
    /// A part kombu always writes is missing or of the wrong type.
    #[error("the envelope has no {0}")]
    Missing(&'static str),
    /// The body is not valid for its `body_encoding`.
    #[error("the body is not {encoding}: {why}")]
    Body {
        /// The encoding it claims.
        encoding: String,
        /// The decoder's words.
        why: String,
    },
}

/// Reads an item fetched from a queue's list.
pub fn parse(item: &[u8]) -> Result<Message, EnvelopeError> {
    let v: Value =
        serde_json::from_slice(item).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
    from_value(v)
}

/// Reads an envelope already parsed as JSON.
pub fn from_value(v: Value) -> Result<Message, EnvelopeError> {
    let Value::Object(mut env) = v else {
        return Err(EnvelopeError::NotJson("not an object".into()));
    };
    let Some(Value::Object(properties)) = env.remove("properties") else {
        return Err(EnvelopeError::Missing("properties"));
    };
    let delivery_tag = properties
        .get("delivery_tag")
        .and_then(Value::as_str)
        .ok_or(EnvelopeError::Missing("properties.delivery_tag"))?
        .to_owned();
    let headers = match env.remove("headers") {
        Some(Value::Object(h)) => h,
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err(EnvelopeError::Missing("headers object")),
    };
    let body = match env.remove("body") {
        Some(Value::String(s)) => s,
        None | Some(Value::Null) => String::new(),
        Some(_) => return Err(EnvelopeError::Missing("body string")),
    };
    let encoding = properties
        .get("body_encoding")
        .and_then(Value::as_str)
        .unwrap_or("");
    let body = match encoding {
        "base64" => B64
            .decode(body.as_bytes())
            .map_err(|e| EnvelopeError::Body {
                encoding: encoding.to_owned(),
                why: e.to_string(),
            })?,
        "" | "utf-8" | "utf8" => body.into_bytes(),
        other => {
            return Err(EnvelopeError::Body {
                encoding: other.to_owned(),
                why: "not an encoding kombu writes (base64 or none)".into(),
            });
        }
    };
    let text =
        |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
    let info = properties.get("delivery_info").and_then(Value::as_object);
    let exchange = info.and_then(|i| text(i, "exchange")).unwrap_or_default();
    let routing_key = info
        .and_then(|i| text(i, "routing_key"))
        .unwrap_or_default();
    let redelivered = info
        .and_then(|i| i.get("redelivered"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
        || headers.get("redelivered").and_then(Value::as_bool) == Some(true);
    let priority = properties
        .get("priority")
        .and_then(Value::as_u64)
        .map_or(0, |p| p.min(9) as u8);
    Ok(Message {
        delivery_tag,
        body,
        content_type: text(&env, "content-type"),
        content_encoding: text(&env, "content-encoding"),
        headers,
        properties,
        exchange,
        routing_key,
        priority,
        redelivered,
    })
}

impl Message {
    /// The parts as the decoder takes them.
    pub fn raw(&self, info: DeliveryInfo) -> RawMessage<'_> {
        RawMessage {
            content_type: self.content_type.as_deref(),
            content_encoding: self.content_encoding.as_deref(),
            headers: self.headers.clone(),
            correlation_id: self
                .properties
                .get("correlation_id")
                .and_then(Value::as_str),
            reply_to: self.properties.get("reply_to").and_then(Value::as_str),
            body: &self.body,
            delivery_info: info,
        }
    }

    /// The request for a Rust task.
    pub fn decode_rust(
        &self,
        info: DeliveryInfo,
        max: usize,
    ) -> Result<TaskRequest, ProtocolError> {
        decode_with_limit(self.raw(info), max)
    }

    /// The properties as Celery's Python `Request` sees them.
    pub fn properties(&self) -> Properties {
        let text = |k: &str| {
            self.properties
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let mut extra = Map::new();
        for key in [
            "app_id",
            "message_id",
            "user_id",
            "type",
            "expiration",
            "timestamp",
        ] {
            if let Some(v) = self.properties.get(key).filter(|v| !v.is_null()) {
                extra.insert(key.to_owned(), v.clone());
            }
        }
        Properties {
            content_type: self.content_type.clone(),
            content_encoding: self.content_encoding.clone(),
            correlation_id: text("correlation_id"),
            reply_to: text("reply_to"),
            priority: Some(self.priority),
            delivery_mode: self
                .properties
                .get("delivery_mode")
                .and_then(Value::as_u64)
                .map(|m| m.min(2) as u8),
            extra,
        }
    }
}

/// A fresh delivery tag, as kombu's publishers make them.
pub fn new_tag() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The envelope of a JSON message: `body` base64, `headers`, and `properties` with the
/// delivery info, priority and a new delivery tag (`extra` properties added as given).
pub fn build(
    body: &[u8],
    headers: Map<String, Value>,
    exchange: &str,
    routing_key: &str,
    priority: u8,
    extra: Map<String, Value>,
) -> String {
    let mut properties = Map::new();
    properties.insert("delivery_mode".into(), json!(2));
    properties.insert(
        "delivery_info".into(),
        json!({"exchange": exchange, "routing_key": routing_key}),
    );
    properties.insert("priority".into(), json!(priority.min(9)));
    properties.insert("body_encoding".into(), json!("base64"));
    properties.insert("delivery_tag".into(), json!(new_tag()));
    properties.extend(extra);
    json!({
        "body": B64.encode(body),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": properties,
    })
    .to_string()
}

/// The envelope of a task message, as Celery's `send_task` writes it.
pub fn task(message: &TaskMessage, exchange: &str, routing_key: &str) -> String {
    let mut extra = Map::new();
    extra.insert("correlation_id".into(), json!(message.id));
    if !message.reply_to.is_empty() {
        extra.insert("reply_to".into(), json!(message.reply_to));
    }
    if let Some(exp) = &message.expiration {
        extra.insert("expiration".into(), json!(exp));
    }
    build(
        &message.body,
        message.headers.clone(),
        exchange,
        routing_key,
        message.priority,
        extra,
    )
}

/// The envelope of an rpc:// result for the task `correlation_id`.
pub fn result(queue: &str, correlation_id: &str, body: &[u8]) -> String {
    let mut extra = Map::new();
    extra.insert("correlation_id".into(), json!(correlation_id));
    build(body, Map::new(), "", queue, 0, extra)
}

/// A message restored to its queue: marked redelivered in its headers and delivery info,
/// as kombu's restore marks it.
pub fn redelivered(item: &[u8]) -> Option<String> {
    let mut v: Value = serde_json::from_slice(item).ok()?;
    if let Some(h) = v.get_mut("headers").and_then(Value::as_object_mut) {
        h.insert("redelivered".into(), Value::Bool(true));
    }
    if let Some(i) = v
        .get_mut("properties")
        .and_then(|p| p.get_mut("delivery_info"))
        .and_then(Value::as_object_mut)
    {
        i.insert("redelivered".into(), Value::Bool(true));
    }
    Some(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An envelope in the shape kombu 5.7 writes for `add.delay(2, 2)` (`redis-transport.md` §1.2);
    /// the integration tests check the real one.
    const KOMBU: &str = r#"{"body": "W1syLCAyXSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjogbnVsbCwgImNob3JkIjogbnVsbH1d", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "tasks.add", "id": "5b9c2f3e-0f4e-4bb0-9a35-4d7a7e3b1e0a", "shadow": null, "eta": null, "expires": null, "group": null, "group_index": null, "retries": 0, "timelimit": [null, null], "root_id": "5b9c2f3e-0f4e-4bb0-9a35-4d7a7e3b1e0a", "parent_id": null, "argsrepr": "(2, 2)", "kwargsrepr": "{}", "origin": "gen1@h", "ignore_result": false, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}}, "properties": {"correlation_id": "5b9c2f3e-0f4e-4bb0-9a35-4d7a7e3b1e0a", "reply_to": "3c7e1f0a-2b6d-3f3a-9d6e-0e9a6a1c2b3d", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "0f2b4c1e-8d3a-4b5e-9f6a-7c8d9e0f1a2b"}}"#;

    #[test]
    fn reads_what_kombu_writes() {
        let m = parse(KOMBU.as_bytes()).unwrap();
        assert_eq!(m.delivery_tag, "0f2b4c1e-8d3a-4b5e-9f6a-7c8d9e0f1a2b");
        assert_eq!(
            (m.exchange.as_str(), m.routing_key.as_str()),
            ("", "celery")
        );
        assert!(m.body.starts_with(b"[[2, 2], {}"));
        let info = DeliveryInfo {
            routing_key: "celery".into(),
            queue: "celery".into(),
            ..Default::default()
        };
        let req = m.decode_rust(info, 1 << 20).unwrap();
        assert_eq!(req.task, "tasks.add");
        assert_eq!(req.args, vec![json!(2), json!(2)]);
        let p = m.properties();
        assert_eq!(
            p.reply_to.as_deref(),
            Some("3c7e1f0a-2b6d-3f3a-9d6e-0e9a6a1c2b3d")
        );
        assert_eq!(p.priority, Some(0));
    }

    #[test]
    fn what_is_written_reads_back() {
        let msg = TaskMessage {
            id: "t1".into(),
            headers: serde_json::from_value(json!({"task": "x", "id": "t1", "lang": "py"}))
                .unwrap(),
            body: br#"[[1], {}, {}]"#.to_vec(),
            reply_to: "r".into(),
            expiration: None,
            priority: 7,
        };
        let m = parse(task(&msg, "ex", "k").as_bytes()).unwrap();
        assert_eq!(m.body, msg.body);
        assert_eq!(
            (m.exchange.as_str(), m.routing_key.as_str(), m.priority),
            ("ex", "k", 7)
        );
        assert_eq!(m.properties["correlation_id"], "t1");
        assert_eq!(m.delivery_tag.len(), 36);
        let again = parse(
            redelivered(task(&msg, "ex", "k").as_bytes())
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        assert!(again.redelivered);
        let r = parse(result("q", "t1", b"{}").as_bytes()).unwrap();
        assert_eq!(
            (r.routing_key.as_str(), r.body.as_slice()),
            ("q", &b"{}"[..])
        );
    }

    #[test]
    fn hostile_items_are_refused_with_the_reason() {
        assert!(matches!(parse(b"not json"), Err(EnvelopeError::NotJson(_))));
        assert!(matches!(parse(b"[1]"), Err(EnvelopeError::NotJson(_))));
        assert_eq!(
            parse(br#"{"body": "e30="}"#).unwrap_err(),
            EnvelopeError::Missing("properties")
        );
        let bad =
            r#"{"body": "%%%", "properties": {"delivery_tag": "t", "body_encoding": "base64"}}"#;
        assert!(matches!(
            parse(bad.as_bytes()),
            Err(EnvelopeError::Body { .. })
        ));
        let no_tag = r#"{"body": "", "properties": {}}"#;
        assert_eq!(
            parse(no_tag.as_bytes()).unwrap_err(),
            EnvelopeError::Missing("properties.delivery_tag")
        );
    }
}
