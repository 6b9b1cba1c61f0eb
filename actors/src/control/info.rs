//! Reply bodies of the inspect commands, built from what the actors report. Pure.

use serde_json::{Value, json};

use crate::protocol::TaskRequest;
use crate::protocol::time::format_iso;

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

/// One `active_queues` entry for a queue declared the Celery way (direct exchange of the same
/// name, durable).
pub fn queue_info(name: &str) -> Value {
    json!({
        "name": name,
        "exchange": {"name": name, "type": "direct", "arguments": null, "durable": true,
            "passive": false, "auto_delete": false, "delivery_mode": null, "no_declare": false},
        "routing_key": name, "queue_arguments": null, "binding_arguments": null,
        "consumer_arguments": null, "durable": true, "exclusive": false, "auto_delete": false,
        "no_ack": false, "alias": null, "bindings": [], "no_declare": null, "expires": null,
        "message_ttl": null, "max_length": null, "max_length_bytes": null, "max_priority": null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{RawMessage, decode};

    #[test]
    fn task_info_has_celery_keys() {
        let h = json!({"task": "tasks.add", "id": "t1", "shadow": "s.add", "argsrepr": "(1, 2)"});
        let raw = RawMessage {
            headers: h.as_object().cloned().unwrap(),
            body: b"[[1,2],{},{}]",
            ..Default::default()
        };
        let req = decode(&raw).unwrap();
        let v = task_info(&req, "celery@h", Some(1.5), true, Some(7), false);
        assert_eq!(v["name"], "s.add");
        assert_eq!(v["type"], "tasks.add");
        assert_eq!(v["args"], json!([1, 2]));
        assert_eq!(v["worker_pid"], 7);
        let v = task_info(&req, "celery@h", None, false, None, true);
        assert_eq!(v["args"], "(1, 2)");
        assert_eq!(v["time_start"], Value::Null);
        assert_eq!(queue_info("celery")["exchange"]["type"], "direct");
        assert_eq!(scheduled_entry(&req, "h")["priority"], 6);
    }
}
