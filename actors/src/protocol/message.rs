//! Decoding task messages (protocol v2, v1 and the v2-header/v1-body hybrid).

use std::io::Read;

use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::repr::{args_repr, py_repr, truncate};
use super::time::parse_iso;
use crate::error::ProtocolError;

/// Where a delivery came from (reported by `inspect active` and friends).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeliveryInfo {
    /// The exchange it was published to (`""` for Celery's direct queues).
    pub exchange: String,
    /// Its routing key (the queue name for Celery's direct queues).
    pub routing_key: String,
    /// The message priority (0 when unset).
    pub priority: u8,
    /// Whether the broker delivered it before.
    pub redelivered: bool,
    /// The queue it was consumed from (`""` where unknown).
    pub queue: String,
}

/// The parts of a delivery that decoding needs, already taken out of the AMQP frame.
#[derive(Debug, Clone, Default)]
pub struct RawMessage<'a> {
    /// `content_type` property.
    pub content_type: Option<&'a str>,
    /// `content_encoding` property.
    pub content_encoding: Option<&'a str>,
    /// Application headers as JSON.
    pub headers: Map<String, Value>,
    /// `correlation_id` property.
    pub correlation_id: Option<&'a str>,
    /// `reply_to` property.
    pub reply_to: Option<&'a str>,
    /// The body.
    pub body: &'a [u8],
    /// Delivery metadata.
    pub delivery_info: DeliveryInfo,
}

/// A decoded task request: everything the worker needs to run a task and report on it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRequest {
    /// Task id (header `id`).
    pub id: String,
    /// Registered task name (header `task`).
    pub task: String,
    /// Display name (`shadow` header), if any.
    pub shadow: Option<String>,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// The embed object (`callbacks`, `errbacks`, `chain`, `chord`), kept as sent.
    pub embed: Value,
    /// Do not run before this time.
    pub eta: Option<OffsetDateTime>,
    /// Discard (REVOKED `expired`) if not started by then.
    pub expires: Option<OffsetDateTime>,
    /// Retry count.
    pub retries: u32,
    /// `timelimit` header: (hard, soft) seconds.
    pub timelimit: (Option<f64>, Option<f64>),
    /// Root of the workflow.
    pub root_id: Option<String>,
    /// The task that sent this one.
    pub parent_id: Option<String>,
    /// Group id.
    pub group: Option<String>,
    /// Position in the group.
    pub group_index: Option<i64>,
    /// repr of the args (for logs and events).
    pub argsrepr: String,
    /// repr of the kwargs.
    pub kwargsrepr: String,
    /// Sender node.
    pub origin: Option<String>,
    /// `ignore_result` header (None = use the task default).
    pub ignore_result: Option<bool>,
    /// Where results go (`reply_to` property); None or empty = nowhere.
    pub reply_to: Option<String>,
    /// `correlation_id` property (falls back to the id).
    pub correlation_id: String,
    /// Delivery metadata.
    pub delivery_info: DeliveryInfo,
    /// The application headers. As received for Python tasks (the child is handed them);
    /// for Rust tasks ([`decode_with_limit`]) only those the fields above do not carry
    /// (stamps, custom headers…), see [`compact`]: a held request then costs a third of the
    /// memory.
    pub headers: Map<String, Value>,
    /// With Python tasks: what the Python child is handed (the body as delivered, the
    /// properties). None for Rust tasks, which need only the decoded fields.
    pub python: Option<Box<super::python::PythonMessage>>,
}

impl TaskRequest {
    /// The name used in logs, events and `stats.total`: the shadow name or the task name.
    pub fn display_name(&self) -> &str {
        self.shadow
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or(&self.task)
    }

    /// The queue the results go to, if any.
    pub fn result_queue(&self) -> Option<&str> {
        self.reply_to.as_deref().filter(|r| !r.is_empty())
    }
}

/// The default limit on a message body, after decompression: 64 MiB (`worker.max_message_size`).
/// Half of RabbitMQ 3.x's own `max_message_size`, four times RabbitMQ 4's: a compressed body
/// may inflate to more than the broker takes uncompressed, but not without bound (a 1 MB zlib
/// body can inflate to gigabytes).
pub const DEFAULT_MAX_BODY: usize = 64 << 20;

/// Decodes a delivery into a task request, or says why it is not one, with the default body
/// limit ([`DEFAULT_MAX_BODY`]). Takes the message by value: its headers move into the request.
pub fn decode(raw: RawMessage<'_>) -> Result<TaskRequest, ProtocolError> {
    decode_with_limit(raw, DEFAULT_MAX_BODY)
}

/// [`decode`] with a limit on the body's size in bytes, after decompression: a larger body is
/// [`ProtocolError::TooLarge`] (decompression stops as soon as it passes the limit).
pub fn decode_with_limit(
    raw: RawMessage<'_>,
    max_body: usize,
) -> Result<TaskRequest, ProtocolError> {
    decode_inner(raw, max_body, false).map(|(r, _)| compact(r))
}

/// Which of the 15 headers a protocol 2 request keeps in its own fields `key` is, if one (a
/// `match`, not a search: this runs for every header of every message).
fn typed_index(key: &str) -> Option<usize> {
    Some(match key {
        "id" => 0,
        "task" => 1,
        "shadow" => 2,
        "eta" => 3,
        "expires" => 4,
        "group" => 5,
        "group_index" => 6,
        "retries" => 7,
        "timelimit" => 8,
        "root_id" => 9,
        "parent_id" => 10,
        "argsrepr" => 11,
        "kwargsrepr" => 12,
        "origin" => 13,
        "ignore_result" => 14,
        _ => return None,
    })
}

/// Drops from `req.headers` what its fields already hold, and the headers a client sends
/// with their default values (`lang: "py"`, `replaced_task_nesting: 0`,
/// `stamped_headers: null`, `stamps: {}`), and an embed with nothing in it becomes null: the
/// memory of a held request is mostly these maps (a serde_json map node is ~700 bytes), and a
/// worker holds its prefetch count of them. Messages built again from the request (retries)
/// put the fields back ([`crate::protocol::encode::retry_message`]).
///
/// ```
/// use celeryd_actors::protocol::message::compact;
/// # use celeryd_actors::protocol::{RawMessage, DeliveryInfo, decode};
/// # let mut h = serde_json::Map::new();
/// # for (k, v) in [("task", "t"), ("id", "1"), ("lang", "py"), ("custom", "kept")] { h.insert(k.into(), v.into()); }
/// # let body = br#"[[1], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#;
/// # let raw = RawMessage { content_type: None, content_encoding: None, headers: h, correlation_id: None, reply_to: None, body, delivery_info: DeliveryInfo::default() };
/// let req = compact(decode(raw).unwrap());
/// assert_eq!(req.headers.keys().collect::<Vec<_>>(), ["custom"]);
/// assert!(req.embed.is_null());
/// ```
pub fn compact(mut req: TaskRequest) -> TaskRequest {
    // Collected into a new map: one emptied by `retain` keeps its node allocated.
    let headers = std::mem::take(&mut req.headers);
    req.headers = headers
        .into_iter()
        .filter(|(k, v)| kept_header(k, v))
        .collect();
    compact_embed(req)
}

/// Whether a Rust request keeps header `key` (with `value`) in its `headers`: not when a
/// field holds it, nor when it has a client's default value.
fn kept_header(key: &str, value: &Value) -> bool {
    let default = match key {
        "lang" => value == "py",
        "replaced_task_nesting" => value == 0,
        "stamped_headers" => value.is_null(),
        "stamps" => value.as_object().is_some_and(Map::is_empty),
        _ => false,
    };
    !default && typed_index(key).is_none()
}

/// An embed with nothing in it becomes null.
fn compact_embed(mut req: TaskRequest) -> TaskRequest {
    let empty_embed = match &req.embed {
        Value::Object(m) => m.values().all(Value::is_null),
        _ => false,
    };
    if empty_embed {
        req.embed = Value::Null;
    }
    req
}

impl TaskRequest {
    /// The embed as a body carries it: `{callbacks, errbacks, chain, chord}` all null when
    /// the request has none.
    pub fn embed_or_default(&self) -> Value {
        match &self.embed {
            Value::Null => serde_json::json!({
                "callbacks": null, "errbacks": null, "chain": null, "chord": null,
            }),
            other => other.clone(),
        }
    }
}

/// [`decode_with_limit`], also returning the body as Celery's tracer takes it (decompressed,
/// not decoded again): what a Python child is handed. `accept` are the content types the
/// app accepts (Celery's `accept_content` as MIME types; empty = JSON only): another is
/// [`ProtocolError::ContentType`], as Celery refuses it. A body that is not JSON (pickle,
/// msgpack, yaml) is not decoded here: a protocol 2 message's headers carry everything the
/// parent needs, and Celery decodes the body in the child.
pub fn decode_keeping_body(
    raw: RawMessage<'_>,
    max_body: usize,
    accept: &[String],
) -> Result<(TaskRequest, Vec<u8>), ProtocolError> {
    if accept.is_empty() {
        return decode_inner(raw, max_body, true).map(|(r, b)| (r, b.unwrap_or_default()));
    }
    let ct = raw.content_type.unwrap_or("application/json").trim();
    if !accept.iter().any(|a| a.eq_ignore_ascii_case(ct)) {
        return Err(ProtocolError::ContentType(format!(
            "{ct:?} (the app's accept_content is {accept:?})"
        )));
    }
    if ct.eq_ignore_ascii_case("application/json") {
        return decode_inner(raw, max_body, true).map(|(r, b)| (r, b.unwrap_or_default()));
    }
    if raw.body.len() > max_body {
        return Err(ProtocolError::TooLarge {
            limit: max_body,
            what: "body",
        });
    }
    let bytes = decompress(raw.headers.get("compression"), raw.body, max_body)?.into_owned();
    let Some(Value::String(task)) = raw.headers.get("task") else {
        // Protocol 1 keeps the task name in the body, which only the child could read.
        return Err(ProtocolError::ContentType(format!(
            "{ct:?} in a protocol 1 message (no task header): only protocol 2 is read unless JSON"
        )));
    };
    let task = task.clone();
    let opaque = Value::Array(vec![Value::Array(Vec::new()), Value::Object(Map::new())]);
    from_v2(raw, task, opaque).map(|r| (r, bytes))
}

fn decode_inner(
    raw: RawMessage<'_>,
    max_body: usize,
    keep_body: bool,
) -> Result<(TaskRequest, Option<Vec<u8>>), ProtocolError> {
    check_content_type(raw.content_type)?;
    if raw.body.len() > max_body {
        return Err(ProtocolError::TooLarge {
            limit: max_body,
            what: "body",
        });
    }
    let bytes = decompress(raw.headers.get("compression"), raw.body, max_body)?;
    let body: Value =
        serde_json::from_slice(&bytes).map_err(|e| ProtocolError::Json(e.to_string()))?;
    let kept = keep_body.then(|| bytes.into_owned());
    decode_value(raw, body).map(|r| (r, kept))
}

fn decode_value(raw: RawMessage<'_>, body: Value) -> Result<TaskRequest, ProtocolError> {
    if let Some(Value::String(task)) = raw.headers.get("task") {
        let task = task.clone();
        match body {
            // Hybrid: a v2 header with a v1-style body; fields from the body, headers override.
            Value::Object(map) if map.contains_key("args") => {
                let mut fields = map;
                for (k, v) in &raw.headers {
                    fields.insert(k.clone(), v.clone());
                }
                from_v1_fields(raw, fields)
            }
            body => from_v2(raw, task, body),
        }
    } else {
        match body {
            Value::Object(map) if matches!(map.get("task"), Some(Value::String(_))) => {
                from_v1_fields(raw, map)
            }
            _ => Err(ProtocolError::UnknownMessage),
        }
    }
}

fn check_content_type(content_type: Option<&str>) -> Result<(), ProtocolError> {
    match content_type {
        Some("application/json") | None => Ok(()),
        Some(ct) if ct.trim().eq_ignore_ascii_case("application/json") => Ok(()),
        Some(other) => Err(ProtocolError::ContentType(format!(
            "{other:?} (only application/json is accepted)"
        ))),
    }
}

fn decompress<'a>(
    compression: Option<&Value>,
    body: &'a [u8],
    max_body: usize,
) -> Result<std::borrow::Cow<'a, [u8]>, ProtocolError> {
    let Some(compression) = compression else {
        return Ok(std::borrow::Cow::Borrowed(body));
    };
    let Value::String(name) = compression else {
        return Err(ProtocolError::Compression(compression.to_string()));
    };
    match name.as_str() {
        // kombu's `zlib` and `gzip` both produce zlib-wrapped deflate.
        "application/x-gzip" | "application/x-zlib" | "zlib" | "gzip" => {
            let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(max_body));
            // One byte past the limit tells "too large" from "exactly the limit".
            let limit = u64::try_from(max_body)
                .unwrap_or(u64::MAX)
                .saturating_add(1);
            flate2::read::ZlibDecoder::new(body)
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| ProtocolError::Decompress(e.to_string()))?;
            if out.len() > max_body {
                return Err(ProtocolError::TooLarge {
                    limit: max_body,
                    what: "decompressed body",
                });
            }
            Ok(std::borrow::Cow::Owned(out))
        }
        other => Err(ProtocolError::Compression(other.to_owned())),
    }
}

fn from_v2(raw: RawMessage<'_>, task: String, body: Value) -> Result<TaskRequest, ProtocolError> {
    let headers = raw.headers;
    let rest = Rest {
        correlation_id: raw.correlation_id,
        reply_to: raw.reply_to,
        delivery_info: raw.delivery_info,
    };
    v2_request(&headers, rest, task, body).map(|mut r| {
        r.headers = headers;
        r
    })
}

/// The properties a request keeps besides its headers and body.
struct Rest<'a> {
    correlation_id: Option<&'a str>,
    reply_to: Option<&'a str>,
    delivery_info: DeliveryInfo,
}

/// A protocol 2 request from its header fields (read from `h`) and body; its `headers` are
/// left empty for the caller.
fn v2_request(
    h: &impl HeaderFields,
    rest: Rest<'_>,
    task: String,
    body: Value,
) -> Result<TaskRequest, ProtocolError> {
    let id = required_str(h, "id")?;
    let Value::Array(mut parts) = body else {
        return Err(invalid(
            "body",
            "a protocol 2 body is [args, kwargs, embed]",
        ));
    };
    if parts.len() != 3 && parts.len() != 2 {
        return Err(invalid(
            "body",
            "a protocol 2 body is [args, kwargs, embed]",
        ));
    }
    let embed = if parts.len() == 3 {
        parts.pop().unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let kwargs = match parts.pop() {
        Some(Value::Object(m)) => m,
        Some(Value::Null) => Map::new(),
        _ => return Err(invalid("kwargs", "must be a mapping")),
    };
    let args = match parts.pop() {
        Some(Value::Array(a)) => a,
        Some(Value::Null) => Vec::new(),
        _ => return Err(invalid("args", "must be a list")),
    };
    let argsrepr = opt_str(h, "argsrepr").unwrap_or_else(|| truncate(args_repr(&args), 1024));
    let kwargsrepr = opt_str(h, "kwargsrepr")
        .unwrap_or_else(|| truncate(py_repr(&Value::Object(kwargs.clone())), 1024));
    Ok(TaskRequest {
        correlation_id: rest
            .correlation_id
            .map_or_else(|| id.clone(), str::to_owned),
        root_id: opt_str(h, "root_id"),
        parent_id: opt_str(h, "parent_id"),
        group: opt_str(h, "group"),
        group_index: h.json("group_index").and_then(|v| v.as_i64()),
        shadow: opt_str(h, "shadow"),
        eta: opt_time(h, "eta")?,
        expires: opt_time(h, "expires")?,
        retries: opt_u32(h, "retries")?,
        timelimit: timelimit(h.json("timelimit").as_ref())?,
        origin: opt_str(h, "origin"),
        ignore_result: h.json("ignore_result").and_then(|v| v.as_bool()),
        reply_to: rest.reply_to.map(str::to_owned),
        id,
        task,
        args,
        kwargs,
        embed,
        argsrepr,
        kwargsrepr,
        delivery_info: rest.delivery_info,
        headers: Map::new(),
        python: None,
    })
}

fn from_v1_fields(
    raw: RawMessage<'_>,
    f: Map<String, Value>,
) -> Result<TaskRequest, ProtocolError> {
    let task = required_str(&f, "task")?;
    let id = required_str(&f, "id")?;
    let args = match f.get("args") {
        Some(Value::Array(a)) => a.clone(),
        None | Some(Value::Null) => Vec::new(),
        _ => return Err(invalid("args", "must be a list")),
    };
    let kwargs = match f.get("kwargs") {
        Some(Value::Object(m)) => m.clone(),
        None | Some(Value::Null) => Map::new(),
        _ => return Err(invalid("kwargs", "must be a mapping")),
    };
    let mut embed = Map::new();
    for key in ["callbacks", "errbacks", "chord"] {
        embed.insert(key.to_owned(), f.get(key).cloned().unwrap_or(Value::Null));
    }
    embed.insert("chain".to_owned(), Value::Null);
    Ok(TaskRequest {
        correlation_id: raw.correlation_id.map_or_else(|| id.clone(), str::to_owned),
        root_id: opt_str(&f, "root_id"),
        parent_id: opt_str(&f, "parent_id"),
        group: opt_str(&f, "group").or_else(|| opt_str(&f, "taskset")),
        group_index: f.get("group_index").and_then(Value::as_i64),
        shadow: opt_str(&f, "shadow"),
        eta: opt_time(&f, "eta")?,
        expires: opt_time(&f, "expires")?,
        retries: opt_u32(&f, "retries")?,
        timelimit: timelimit(f.get("timelimit"))?,
        origin: opt_str(&f, "origin"),
        ignore_result: f.get("ignore_result").and_then(Value::as_bool),
        reply_to: raw.reply_to.map(str::to_owned),
        delivery_info: raw.delivery_info,
        headers: raw.headers,
        python: None,
        argsrepr: truncate(args_repr(&args), 1024),
        kwargsrepr: truncate(py_repr(&Value::Object(kwargs.clone())), 1024),
        embed: Value::Object(embed),
        id,
        task,
        args,
        kwargs,
    })
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ProtocolError {
    ProtocolError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Where a request's header fields are read from: a JSON map (the headers as decoded, or a
/// protocol 1 body), or a broker client's header table, so that a Rust task's request converts
/// only the headers its fields do not hold ([`decode_table`]).
pub(crate) trait HeaderFields {
    /// The field as JSON.
    fn json(&self, key: &str) -> Option<Value>;
    /// A string field as an owned string; None if absent or not a string.
    fn text(&self, key: &str) -> Option<String>;
}

impl HeaderFields for Map<String, Value> {
    fn json(&self, key: &str) -> Option<Value> {
        self.get(key).cloned()
    }

    fn text(&self, key: &str) -> Option<String> {
        match self.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        }
    }
}

fn required_str(m: &impl HeaderFields, key: &'static str) -> Result<String, ProtocolError> {
    match m.text(key) {
        // The id goes back as the result's `correlation_id`, an AMQP short string.
        Some(s) if key == "id" && s.len() > 255 => Err(invalid(key, "longer than 255 bytes")),
        Some(s) if !s.is_empty() => Ok(s),
        _ => match m.json(key) {
            None | Some(Value::Null) => Err(ProtocolError::Missing(key)),
            Some(_) => Err(invalid(key, "must be a non-empty string")),
        },
    }
}

fn opt_str(m: &impl HeaderFields, key: &str) -> Option<String> {
    m.text(key)
}

fn opt_u32(m: &impl HeaderFields, key: &'static str) -> Result<u32, ProtocolError> {
    match m.json(key) {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| invalid(key, format!("{v} is not a non-negative integer"))),
    }
}

fn opt_time(
    m: &impl HeaderFields,
    key: &'static str,
) -> Result<Option<OffsetDateTime>, ProtocolError> {
    match m.json(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_iso(&s).map(Some).map_err(|e| invalid(key, e)),
        Some(other) => Err(invalid(key, format!("{other} is not an ISO-8601 string"))),
    }
}

fn timelimit(v: Option<&Value>) -> Result<(Option<f64>, Option<f64>), ProtocolError> {
    let limit = |v: Option<&Value>| -> Result<Option<f64>, ProtocolError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(n) => match n.as_f64() {
                Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f)),
                _ => Err(invalid(
                    "timelimit",
                    format!("{n} is not a number of seconds"),
                )),
            },
        }
    };
    match v {
        None | Some(Value::Null) => Ok((None, None)),
        Some(Value::Array(a)) if a.len() == 2 => Ok((limit(a.first())?, limit(a.get(1))?)),
        Some(other) => Err(invalid("timelimit", format!("{other} is not [hard, soft]"))),
    }
}

mod table;

pub use table::{HeaderTable, MAX_HEADER_DEPTH, TableMessage, decode_table};

#[cfg(test)]
pub(crate) mod proptests;
#[cfg(test)]
pub(crate) mod tests;
