//! What Celery's tracer does with a request's embed once the task is done, for Rust tasks:
//! the next chain step, the `link` callbacks after a success, the `link_error` errbacks and
//! the rest of a failing chain after a failure. Pure: it turns a request, its outcome and the
//! signatures of the embed into the task messages to publish ([`Outgoing`]); the consumer
//! publishes them and stores what has to be stored.
//!
//! A signature is Celery's dict: `{"task", "args", "kwargs", "options", "subtask_type",
//! "immutable"}`. Simple signatures and groups of them are carried out; a chord or chain
//! signature *inside* a callback (rare: clients upgrade those before sending) is reported
//! as [`CanvasError::Unsupported`], which the consumer logs with the task id.

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::TaskRequest;
use super::encode::{TaskCall, TaskMessage};
use super::result::ExceptionInfo;
use super::time::{after, parse_iso};

/// A message to publish: where, and what.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Exchange (empty: the default exchange).
    pub exchange: String,
    /// Routing key (the queue's name through the default exchange).
    pub routing_key: String,
    /// The task message.
    pub message: TaskMessage,
}

/// What cannot be carried out, with why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanvasError {
    /// Not a signature: no task name, or not an object.
    #[error("not a task signature: {0}")]
    NotASignature(String),
    /// A kind of signature celeryd does not apply from inside a worker.
    #[error("a {0} signature in the embed is not carried out by celeryd's Rust tasks")]
    Unsupported(String),
}

/// The parts of a request's embed, each a list of signatures (`chain` in Celery's order: the
/// next step last).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Embed {
    /// `link`.
    pub callbacks: Vec<Value>,
    /// `link_error`.
    pub errbacks: Vec<Value>,
    /// The chain's remaining steps, the next one last.
    pub chain: Vec<Value>,
    /// The chord body when the task is part of a chord header.
    pub chord: Option<Value>,
}

impl Embed {
    /// Reads the embed of `req` (missing or `null` parts are empty).
    pub fn of(req: &TaskRequest) -> Embed {
        let list = |key: &str| match req.embed.get(key) {
            Some(Value::Array(items)) => items.clone(),
            Some(Value::Object(o)) => vec![Value::Object(o.clone())],
            _ => Vec::new(),
        };
        Embed {
            callbacks: list("callbacks"),
            errbacks: list("errbacks"),
            chain: list("chain"),
            chord: req.embed.get("chord").filter(|c| c.is_object()).cloned(),
        }
    }

    /// Whether nothing is to be done after the task.
    pub fn is_empty(&self) -> bool {
        self.callbacks.is_empty()
            && self.errbacks.is_empty()
            && self.chain.is_empty()
            && self.chord.is_none()
    }
}

/// Who sends: the task that just finished.
#[derive(Debug, Clone)]
pub struct Sender<'a> {
    /// The finished task's id (the new messages' `parent_id`).
    pub task_id: &'a str,
    /// The workflow's root (`root_id`, else the task itself).
    pub root_id: &'a str,
    /// The node name (`origin`).
    pub hostname: &'a str,
    /// The finished task's message priority, used where a signature sets none.
    pub priority: Option<u8>,
    /// Where a signature without a queue goes (`task_default_queue`).
    pub default_queue: &'a str,
}

impl<'a> Sender<'a> {
    /// The sender for request `req` on node `hostname`.
    pub fn of(req: &'a TaskRequest, hostname: &'a str, default_queue: &'a str) -> Self {
        Sender {
            task_id: &req.id,
            root_id: req.root_id.as_deref().unwrap_or(&req.id),
            hostname,
            priority: Some(req.delivery_info.priority).filter(|p| *p > 0),
            default_queue,
        }
    }
}

/// After a success with `value`: the next chain step (with the rest of the chain), then each
/// callback, each with `value` prepended to its args unless it is immutable.
pub fn after_success(
    embed: &Embed,
    value: &Value,
    from: &Sender<'_>,
    now: OffsetDateTime,
) -> Vec<Result<Outgoing, CanvasError>> {
    let mut out = Vec::new();
    if let Some((next, rest)) = embed.chain.split_last() {
        out.extend(apply(next, Some(value), from, Some(rest.to_vec()), now));
    }
    for cb in &embed.callbacks {
        out.extend(apply(cb, Some(value), from, None, now));
    }
    out
}

/// After a failure: each errback, sent as a task with the failed task's id prepended (what
/// Celery does with an errback it does not call in the worker itself).
pub fn errbacks(
    embed: &Embed,
    from: &Sender<'_>,
    now: OffsetDateTime,
) -> Vec<Result<Outgoing, CanvasError>> {
    let id = json!(from.task_id);
    embed
        .errbacks
        .iter()
        .flat_map(|eb| apply(eb, Some(&id), from, None, now))
        .collect()
}

/// The task ids of the chain steps after a failed one, with each step's `link_error`: Celery
/// marks every step that has an id FAILURE with the same exception.
pub fn failed_chain_ids(embed: &Embed) -> Vec<String> {
    embed
        .chain
        .iter()
        .rev()
        .filter_map(|step| step.get("options")?.get("task_id")?.as_str())
        .map(str::to_owned)
        .collect()
}

/// The messages signature `sig` sends when applied with `prepend` before its args (`None`
/// or an immutable signature: its args alone), `chain` (the remaining steps) in its embed.
/// A group sends each of its tasks; other kinds are [`CanvasError::Unsupported`].
pub fn apply(
    sig: &Value,
    prepend: Option<&Value>,
    from: &Sender<'_>,
    chain: Option<Vec<Value>>,
    now: OffsetDateTime,
) -> Vec<Result<Outgoing, CanvasError>> {
    match sig.get("subtask_type").and_then(Value::as_str) {
        None | Some("") => vec![simple(sig, prepend, from, chain, now)],
        Some("group") => {
            let tasks = sig
                .get("kwargs")
                .and_then(|k| k.get("tasks"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let group_id = sig
                .get("options")
                .and_then(|o| o.get("task_id"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            tasks
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let mut t = t.clone();
                    if let Some(o) = t.get_mut("options").and_then(Value::as_object_mut) {
                        o.insert("group_id".into(), json!(group_id));
                        o.insert("group_index".into(), json!(i));
                    }
                    simple(&t, prepend, from, None, now)
                })
                .collect()
        }
        Some(other) => vec![Err(CanvasError::Unsupported(other.to_owned()))],
    }
}

/// One task signature as a message.
pub fn simple(
    sig: &Value,
    prepend: Option<&Value>,
    from: &Sender<'_>,
    chain: Option<Vec<Value>>,
    now: OffsetDateTime,
) -> Result<Outgoing, CanvasError> {
    let short = || super::repr::truncate(sig.to_string(), 200);
    let name = sig
        .get("task")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| CanvasError::NotASignature(short()))?;
    let empty = Map::new();
    let opts = sig
        .get("options")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let immutable = sig.get("immutable").and_then(Value::as_bool) == Some(true);
    let mut args: Vec<Value> = match sig.get("args") {
        Some(Value::Array(a)) => a.clone(),
        None | Some(Value::Null) => Vec::new(),
        Some(_) => return Err(CanvasError::NotASignature(short())),
    };
    if let (Some(p), false) = (prepend, immutable) {
        args.insert(0, p.clone());
    }
    let kwargs = match sig.get("kwargs") {
        Some(Value::Object(k)) => k.clone(),
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err(CanvasError::NotASignature(short())),
    };
    let seconds = |key: &str| opts.get(key).and_then(Value::as_f64);
    let instant = |key: &str| -> Option<OffsetDateTime> {
        match opts.get(key)? {
            Value::String(s) => parse_iso(s).ok(),
            Value::Number(n) => after(now, n.as_f64()?),
            _ => None,
        }
    };
    let eta = instant("eta").or_else(|| after(now, seconds("countdown")?));
    let priority = opts
        .get("priority")
        .and_then(Value::as_u64)
        .map(|p| p.min(255) as u8)
        .or(from.priority);
    let call = TaskCall {
        name: name.to_owned(),
        args,
        kwargs,
        eta,
        expires: instant("expires"),
        reply_to: opts
            .get("reply_to")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
            .map(str::to_owned),
        id: opts
            .get("task_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        origin: from.hostname.to_owned(),
        priority: priority.unwrap_or(0),
    };
    let mut message = TaskMessage::new(&call, now);
    let h = &mut message.headers;
    h.insert("parent_id".into(), json!(from.task_id));
    h.insert("root_id".into(), json!(from.root_id));
    for (header, option) in [
        ("group", "group_id"),
        ("group_index", "group_index"),
        ("shadow", "shadow"),
    ] {
        if let Some(v) = opts.get(option).filter(|v| !v.is_null()) {
            h.insert(header.into(), v.clone());
        }
    }
    if opts.contains_key("time_limit") || opts.contains_key("soft_time_limit") {
        let limit = |k: &str| opts.get(k).cloned().unwrap_or(Value::Null);
        h.insert(
            "timelimit".into(),
            json!([limit("time_limit"), limit("soft_time_limit")]),
        );
    }
    // Results are wanted unless the signature says not: a Redis backend stores them without
    // a reply queue.
    let ignore = opts.get("ignore_result").and_then(Value::as_bool) == Some(true);
    h.insert("ignore_result".into(), json!(ignore));
    let as_list = |v: Option<&Value>| match v {
        Some(Value::Array(a)) if !a.is_empty() => Value::Array(a.clone()),
        Some(Value::Object(o)) => json!([o]),
        _ => Value::Null,
    };
    let embed = json!({
        "callbacks": as_list(opts.get("link")),
        "errbacks": as_list(opts.get("link_error")),
        "chain": chain.filter(|c| !c.is_empty()).map_or(Value::Null, Value::Array),
        "chord": opts.get("chord").cloned().unwrap_or(Value::Null),
    });
    message.body = serde_json::to_vec(&json!([call.args, call.kwargs, embed])).unwrap_or_default();
    let (exchange, routing_key) = route(opts, from.default_queue);
    Ok(Outgoing {
        exchange,
        routing_key,
        message,
    })
}

/// Where a signature's options send it: an explicit `exchange`/`routing_key`, else its
/// `queue` (a name, or kombu's queue dict) through the default exchange, else the default
/// queue.
fn route(opts: &Map<String, Value>, default_queue: &str) -> (String, String) {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let queue = match opts.get("queue") {
        Some(Value::String(q)) => Some(q.clone()),
        Some(Value::Object(q)) => text(q.get("name")),
        _ => None,
    };
    let exchange = match opts.get("exchange") {
        Some(Value::Object(e)) => text(e.get("name")),
        other => text(other),
    };
    match (exchange, text(opts.get("routing_key")), queue) {
        (Some(e), Some(k), _) if !e.is_empty() => (e, k),
        (_, _, Some(q)) => (String::new(), q),
        (_, Some(k), None) => (String::new(), k),
        _ => (String::new(), default_queue.to_owned()),
    }
}

/// A chord's failed header part, as Celery's `ChordError` names it: `Dependency <id> raised
/// <repr>`.
pub fn chord_error(task_id: &str, exc: &Value) -> ExceptionInfo {
    let repr = exception_from_json(exc).map_or_else(|| exc.to_string(), |e| e.repr());
    ExceptionInfo::new(
        "ChordError",
        "celery.exceptions",
        vec![json!(format!("Dependency {task_id} raised {repr}"))],
    )
}

/// An exception as a result backend stores it (`exc_type`, `exc_message`, `exc_module`).
pub fn exception_from_json(v: &Value) -> Option<ExceptionInfo> {
    let exc_type = v.get("exc_type")?.as_str()?;
    let module = v
        .get("exc_module")
        .and_then(Value::as_str)
        .unwrap_or("builtins");
    let args = match v.get("exc_message") {
        Some(Value::Array(a)) => a.clone(),
        Some(Value::Null) | None => Vec::new(),
        Some(other) => vec![other.clone()],
    };
    Some(ExceptionInfo::new(exc_type, module, args))
}

#[cfg(test)]
mod tests;
