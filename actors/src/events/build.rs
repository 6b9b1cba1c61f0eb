//! Event bodies (`celery-protocol.md` §5): the fields of each event type, and the common fields
//! the dispatcher adds. Pure.

use serde_json::{Map, Value, json};

use crate::protocol::TaskRequest;
use crate::protocol::time::format_iso;

/// What `sw_ident` says: Flower shows it beside the worker.
pub const SW_IDENT: &str = "celeryd";

/// An event: its type and its own fields (the common ones are added when it is sent).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `task-received`, `worker-heartbeat`, …
    pub kind: &'static str,
    /// Its fields.
    pub fields: Map<String, Value>,
}

impl Event {
    fn new(kind: &'static str, fields: Value) -> Self {
        let Value::Object(fields) = fields else {
            unreachable!("event fields are built as objects")
        };
        Event { kind, fields }
    }

    /// Whether it belongs to the `task` group (sent only with task events enabled).
    pub fn is_task_event(&self) -> bool {
        self.kind.starts_with("task-")
    }

    /// The routing key: the type with `-` as `.` (`task.succeeded`).
    pub fn routing_key(&self) -> String {
        self.kind.replace('-', ".")
    }
}

/// `task-received`: args and kwargs as repr strings, eta/expires as ISO or null.
pub fn task_received(req: &TaskRequest) -> Event {
    Event::new(
        "task-received",
        json!({
            "uuid": req.id,
            "name": req.display_name(),
            "args": req.argsrepr,
            "kwargs": req.kwargsrepr,
            "root_id": req.root_id,
            "parent_id": req.parent_id,
            "retries": req.retries,
            "eta": req.eta.map(format_iso),
            "expires": req.expires.map(format_iso),
        }),
    )
}

/// A task event Celery sent in the Python helper (its `type` and fields, `uuid` among
/// them), when it is one a worker sends; None for anything else.
pub fn from_python(v: &Value) -> Option<Event> {
    let kind = match v.get("type")?.as_str()? {
        "task-failed" => "task-failed",
        "task-revoked" => "task-revoked",
        "task-retried" => "task-retried",
        "task-rejected" => "task-rejected",
        "task-succeeded" => "task-succeeded",
        "task-started" => "task-started",
        _ => return None,
    };
    let mut fields = v.as_object()?.clone();
    fields.remove("type");
    Some(Event { kind, fields })
}

/// `task-started`.
pub fn task_started(id: &str) -> Event {
    Event::new("task-started", json!({ "uuid": id }))
}

/// `task-succeeded`: the result's repr (at most 1024 characters) and the runtime.
pub fn task_succeeded(id: &str, result_repr: &str, runtime: f64) -> Event {
    Event::new(
        "task-succeeded",
        json!({ "uuid": id, "result": result_repr, "runtime": runtime }),
    )
}

/// `task-failed`: the exception's repr and the traceback text.
pub fn task_failed(id: &str, exception: &str, traceback: &str) -> Event {
    Event::new(
        "task-failed",
        json!({ "uuid": id, "exception": exception, "traceback": traceback }),
    )
}

/// `task-failed` for a task name this worker does not know: only the uuid and
/// `NotRegistered('name')`, as Celery sends it.
pub fn task_unregistered(id: &str, name: &str) -> Event {
    Event::new(
        "task-failed",
        json!({ "uuid": id, "exception": format!("NotRegistered({})", crate::protocol::repr::py_repr(&json!(name))) }),
    )
}

/// `task-retried`: the exception that caused the retry.
pub fn task_retried(id: &str, exception: &str, traceback: &str) -> Event {
    Event::new(
        "task-retried",
        json!({ "uuid": id, "exception": exception, "traceback": traceback }),
    )
}

/// `task-revoked`: `terminated` with the signal number, or `expired`.
pub fn task_revoked(id: &str, terminated: bool, signum: Option<i32>, expired: bool) -> Event {
    Event::new(
        "task-revoked",
        json!({ "uuid": id, "terminated": terminated, "signum": signum, "expired": expired }),
    )
}

/// `task-rejected`.
pub fn task_rejected(id: &str, requeue: bool) -> Event {
    Event::new("task-rejected", json!({ "uuid": id, "requeue": requeue }))
}

/// `worker-online`, `worker-heartbeat` or `worker-offline` with the worker's load.
pub fn worker(kind: &'static str, freq: f64, active: usize, processed: u64) -> Event {
    Event::new(
        kind,
        json!({
            "freq": freq,
            "active": active,
            "processed": processed,
            "loadavg": loadavg(),
            "sw_ident": SW_IDENT,
            "sw_ver": env!("CARGO_PKG_VERSION"),
            "sw_sys": "Linux",
        }),
    )
}

/// The body as sent: the event's fields plus `hostname`, `utcoffset`, `pid`, `clock`,
/// `timestamp` and `type`.
pub fn body(event: &Event, hostname: &str, pid: u32, clock: u64, timestamp: f64) -> Value {
    let mut m = event.fields.clone();
    m.insert("hostname".into(), json!(hostname));
    m.insert("utcoffset".into(), json!(utcoffset()));
    m.insert("pid".into(), json!(pid));
    m.insert("clock".into(), json!(clock));
    m.insert("timestamp".into(), json!(timestamp));
    m.insert("type".into(), json!(event.kind));
    Value::Object(m)
}

/// Hours west of UTC, as Python's `time.timezone / 3600` (0.0 on a UTC host).
pub fn utcoffset() -> f64 {
    let offset = time::UtcOffset::current_local_offset()
        .map(|o| o.whole_seconds())
        .unwrap_or(0);
    f64::from(-offset) / 3600.0
}

/// The 1, 5 and 15 minute load averages, rounded to 2 decimals (`[0.0, 0.0, 0.0]` if
/// unreadable).
pub fn loadavg() -> Vec<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    parse_loadavg(&text)
}

fn parse_loadavg(text: &str) -> Vec<f64> {
    let mut out: Vec<f64> = text
        .split_whitespace()
        .take(3)
        .filter_map(|w| w.parse::<f64>().ok())
        .map(|f| (f * 100.0).round() / 100.0)
        .collect();
    out.resize(3, 0.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{RawMessage, decode};

    #[test]
    fn task_events_carry_the_spec_fields() {
        let h = json!({"task": "tasks.add", "id": "t1", "argsrepr": "(2, 3)", "kwargsrepr": "{}",
                       "root_id": "t1", "retries": 0});
        let raw = RawMessage {
            headers: h.as_object().cloned().unwrap(),
            body: b"[[2,3],{},{}]",
            ..Default::default()
        };
        let e = task_received(&decode(raw).unwrap());
        assert_eq!(e.routing_key(), "task.received");
        assert!(e.is_task_event());
        let b = body(&e, "celery@h", 42, 7, 1.5);
        for key in [
            "uuid",
            "name",
            "args",
            "kwargs",
            "root_id",
            "parent_id",
            "retries",
            "eta",
            "expires",
            "hostname",
            "utcoffset",
            "pid",
            "clock",
            "timestamp",
            "type",
        ] {
            assert!(b.get(key).is_some(), "{key} missing from {b}");
        }
        assert_eq!(b["args"], "(2, 3)");
        assert_eq!(b["type"], "task-received");
        assert_eq!(b["clock"], 7);
        assert_eq!(
            task_revoked("t", true, Some(15), false).fields["signum"],
            15
        );
        assert_eq!(task_succeeded("t", "5", 0.1).fields["result"], "5");
    }

    #[test]
    fn worker_events_report_load() {
        let e = worker("worker-heartbeat", 2.0, 1, 10);
        assert!(!e.is_task_event());
        assert_eq!(e.routing_key(), "worker.heartbeat");
        assert_eq!(e.fields["loadavg"].as_array().unwrap().len(), 3);
        assert_eq!(e.fields["sw_ident"], SW_IDENT);
        assert_eq!(parse_loadavg("0.144 0.42 1.5 1/2 3"), vec![0.14, 0.42, 1.5]);
        assert_eq!(parse_loadavg(""), vec![0.0, 0.0, 0.0]);
    }
}
