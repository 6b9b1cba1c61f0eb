//! Reply bodies of the inspect commands, built from what the actors report. Pure.

use serde_json::{Value, json};

use crate::protocol::TaskRequest;
use crate::protocol::repr::py_repr;
use crate::protocol::time::format_iso;
use crate::settings::TaskSettings;
use crate::settings::queues::TaskQueue;

/// Completes `stats.pool` (built for prefork) for the pool `kind`, with `active` tasks
/// running: each in-process pool names its implementation and adds what Celery's
/// counterpart reports (eventlet/gevent's free and running "threads", the thread pool's
/// threads, solo's fixed size and `put-guarded-by-semaphore`).
pub fn pool_kind_stats(
    pool: &mut serde_json::Map<String, Value>,
    kind: crate::settings::PoolKind,
    active: usize,
) {
    use crate::settings::PoolKind;
    let max = pool
        .get("max-concurrency")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    let implementation = match kind {
        PoolKind::Prefork => return,
        PoolKind::Async => {
            pool.insert(
                "free-threads".into(),
                json!(max.saturating_sub(active as u64)),
            );
            pool.insert("running-threads".into(), json!(active));
            "celeryd.pool:AsyncPool"
        }
        PoolKind::Threads => {
            pool.insert("threads".into(), json!(active));
            "celeryd.pool:ThreadPool"
        }
        PoolKind::Solo => {
            pool.insert("put-guarded-by-semaphore".into(), json!(true));
            "celeryd.pool:SoloPool"
        }
    };
    pool.insert("implementation".into(), json!(implementation));
}

/// What `registered` lists when no `taskinfoitems` are asked for (Celery's default).
pub const DEFAULT_TASK_INFO_ITEMS: &[&str] = &["exchange", "routing_key", "rate_limit"];

/// A task's attributes as `inspect registered` reports them (Celery's task attributes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskAttrs {
    /// The rate limit as written (`"10/m"`), if any.
    pub rate_limit: Option<String>,
    /// Hard time limit (seconds), if the task sets one.
    pub time_limit: Option<f64>,
    /// Soft time limit (seconds), if the task sets one.
    pub soft_time_limit: Option<f64>,
}

/// One `registered` entry: the name, then `[k=v …]` for each requested attribute that is not
/// None (Python's `str` of the value), or the bare name when none is.
pub fn registered_entry(
    name: &str,
    attrs: &TaskAttrs,
    items: &[String],
    task: &TaskSettings,
) -> String {
    let py_bool = |b: bool| if b { "True" } else { "False" }.to_owned();
    let py_float = |f: f64| py_repr(&json!(f));
    let fields: Vec<String> = items
        .iter()
        .filter_map(|item| {
            let value = match item.as_str() {
                "name" => Some(name.to_owned()),
                "rate_limit" => attrs.rate_limit.clone(),
                "time_limit" => attrs.time_limit.map(py_float),
                "soft_time_limit" => attrs.soft_time_limit.map(py_float),
                "acks_late" => Some(py_bool(task.acks_late)),
                "acks_on_failure_or_timeout" => Some(py_bool(task.acks_on_failure_or_timeout)),
                "reject_on_worker_lost" => Some(py_bool(task.reject_on_worker_lost)),
                "track_started" => Some(py_bool(task.track_started)),
                "ignore_result" => Some(py_bool(task.ignore_result)),
                "serializer" => Some("json".to_owned()),
                _ => None,
            }?;
            Some(format!("{item}={value}"))
        })
        .collect();
    if fields.is_empty() {
        name.to_owned()
    } else {
        format!("{name} [{}]", fields.join(" "))
    }
}

/// Celery's `TaskInfo` (`Request.info()`): what `active`, `reserved`, `scheduled` and
/// `query_task` list. With `safe`, args and kwargs are their repr strings.
pub fn task_info(
    req: &TaskRequest,
    hostname: &str,
    time_start: Option<f64>,
    acknowledged: bool,
    worker_pid: Option<u32>,
    safe: bool,
) -> Value {
    let (args, kwargs) = if safe {
        (json!(req.argsrepr), json!(req.kwargsrepr))
    } else {
        (json!(req.args), json!(req.kwargs))
    };
    json!({
        "id": req.id,
        "name": req.display_name(),
        "args": args,
        "kwargs": kwargs,
        "type": req.task,
        "hostname": hostname,
        "time_start": time_start,
        "acknowledged": acknowledged,
        "delivery_info": {
            "exchange": req.delivery_info.exchange,
            "routing_key": req.delivery_info.routing_key,
            "priority": req.delivery_info.priority,
            "redelivered": req.delivery_info.redelivered,
        },
        "worker_pid": worker_pid,
    })
}

/// One `scheduled` entry: `{"eta", "priority": 6, "request": TaskInfo}` (6 is Celery's timer
/// priority, always the same).
pub fn scheduled_entry(req: &TaskRequest, hostname: &str) -> Value {
    json!({
        "eta": req.eta.map(format_iso),
        "priority": 6,
        "request": task_info(req, hostname, None, false, None, false),
    })
}

/// One `active_queues` entry (kombu's `Queue.as_dict(recurse=True)`) for a queue declared the
/// Celery way: durable, bound to a durable exchange.
pub fn queue_info(q: &TaskQueue) -> Value {
    let arguments = if q.arguments.is_empty() {
        Value::Null
    } else {
        Value::Object(q.arguments.clone())
    };
    let bindings: Vec<Value> = q
        .bindings
        .iter()
        .map(|b| {
            json!({"exchange": {"name": b.exchange, "type": b.exchange_type}, "routing_key": b.routing_key,
                "arguments": null})
        })
        .collect();
    let max_priority = q
        .arguments
        .get("x-max-priority")
        .cloned()
        .unwrap_or(Value::Null);
    json!({
        "name": q.name,
        "exchange": {"name": q.exchange, "type": q.exchange_type, "arguments": null,
            "durable": true, "passive": false, "auto_delete": false, "delivery_mode": null,
            "no_declare": false},
        "routing_key": q.routing_key, "queue_arguments": arguments, "binding_arguments": null,
        "consumer_arguments": null, "durable": true, "exclusive": false, "auto_delete": false,
        "no_ack": false, "alias": null, "bindings": bindings, "no_declare": null, "expires": null,
        "message_ttl": null, "max_length": null, "max_length_bytes": null,
        "max_priority": max_priority,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{RawMessage, decode};

    #[test]
    fn registered_shows_the_attributes_that_are_set() {
        let items = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let task = TaskSettings::default();
        let plain = TaskAttrs::default();
        let defaults = items(DEFAULT_TASK_INFO_ITEMS);
        assert_eq!(registered_entry("t.a", &plain, &defaults, &task), "t.a");
        let slow = TaskAttrs {
            rate_limit: Some("10/m".into()),
            time_limit: Some(30.0),
            soft_time_limit: None,
        };
        assert_eq!(
            registered_entry("t.s", &slow, &defaults, &task),
            "t.s [rate_limit=10/m]"
        );
        assert_eq!(
            registered_entry(
                "t.s",
                &slow,
                &items(&["time_limit", "soft_time_limit", "acks_late"]),
                &task
            ),
            "t.s [time_limit=30.0 acks_late=False]"
        );
    }

    #[test]
    fn task_info_has_celery_keys() {
        let h = json!({"task": "tasks.add", "id": "t1", "shadow": "s.add", "argsrepr": "(1, 2)"});
        let raw = RawMessage {
            headers: h.as_object().cloned().unwrap(),
            body: b"[[1,2],{},{}]",
            ..Default::default()
        };
        let req = decode(raw).unwrap();
        let v = task_info(&req, "celery@h", Some(1.5), true, Some(7), false);
        assert_eq!(v["name"], "s.add");
        assert_eq!(v["type"], "tasks.add");
        assert_eq!(v["args"], json!([1, 2]));
        assert_eq!(v["worker_pid"], 7);
        let v = task_info(&req, "celery@h", None, false, None, true);
        assert_eq!(v["args"], "(1, 2)");
        assert_eq!(v["time_start"], Value::Null);
        assert_eq!(
            queue_info(&TaskQueue::plain("celery"))["exchange"]["type"],
            "direct"
        );
        assert_eq!(scheduled_entry(&req, "h")["priority"], 6);
    }
}
