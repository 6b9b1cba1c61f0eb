//! A Python app's own configuration (`app.conf`) as a settings layer, as `celery worker`
//! honours it: the worker settings the app changed from Celery's defaults, mapped onto
//! celeryd's keys. Layers: defaults < app.conf < the TOML file < environment < flags.
//!
//! Settings the Python children honour themselves (result backend, serializers, routes,
//! logging formats…) need no mapping. A worker setting celeryd does not honour is named in
//! one warning at start ([`AppLayer::unhonoured`]); one it cannot work with (a broker that
//! is not RabbitMQ) stops the start with the reason.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// What the app's configuration contributes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppLayer {
    /// celeryd settings, as a TOML table of sections.
    pub table: toml::Table,
    /// `section.key` -> the Celery setting it came from (for `--print-config`).
    pub origins: BTreeMap<String, String>,
    /// Worker settings the app set that celeryd does not honour (with why, when known).
    pub unhonoured: Vec<String>,
}

/// How a Celery setting's value becomes a celeryd one.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Bool,
    Count,
    Seconds,
    Text,
}

/// Celery setting -> (section, key, kind).
const MAPPED: &[(&str, &str, &str, Kind)] = &[
    ("broker_heartbeat", "broker", "heartbeat", Kind::Count),
    (
        "broker_connection_retry_on_startup",
        "broker",
        "connection_retry_on_startup",
        Kind::Bool,
    ),
    (
        "broker_connection_max_retries",
        "broker",
        "connection_max_retries",
        Kind::Count,
    ),
    (
        "broker_native_delayed_delivery_queue_type",
        "broker",
        "native_delayed_delivery_queue_type",
        Kind::Text,
    ),
    ("worker_concurrency", "worker", "concurrency", Kind::Count),
    ("timezone", "beat", "timezone", Kind::Text),
    (
        "worker_prefetch_multiplier",
        "worker",
        "prefetch_multiplier",
        Kind::Count,
    ),
    (
        "worker_max_tasks_per_child",
        "worker",
        "max_tasks_per_child",
        Kind::Count,
    ),
    (
        "worker_max_memory_per_child",
        "worker",
        "max_memory_per_child",
        Kind::Count,
    ),
    (
        "worker_disable_rate_limits",
        "worker",
        "disable_rate_limits",
        Kind::Bool,
    ),
    ("worker_state_db", "worker", "statedb", Kind::Text),
    ("worker_direct", "worker", "direct", Kind::Bool),
    (
        "worker_send_task_events",
        "worker",
        "send_events",
        Kind::Bool,
    ),
    (
        "worker_pool_restarts",
        "worker",
        "pool_restarts",
        Kind::Bool,
    ),
    ("task_acks_late", "task", "acks_late", Kind::Bool),
    ("task_track_started", "task", "track_started", Kind::Bool),
    ("task_ignore_result", "task", "ignore_result", Kind::Bool),
    (
        "task_acks_on_failure_or_timeout",
        "task",
        "acks_on_failure_or_timeout",
        Kind::Bool,
    ),
    (
        "task_reject_on_worker_lost",
        "task",
        "reject_on_worker_lost",
        Kind::Bool,
    ),
    ("task_time_limit", "task", "time_limit", Kind::Seconds),
    (
        "task_soft_time_limit",
        "task",
        "soft_time_limit",
        Kind::Seconds,
    ),
    (
        "task_default_rate_limit",
        "task",
        "default_rate_limit",
        Kind::Text,
    ),
    ("task_default_queue", "task", "default_queue", Kind::Text),
    (
        "task_default_queue_type",
        "task",
        "default_queue_type",
        Kind::Text,
    ),
    (
        "task_default_exchange",
        "task",
        "default_exchange",
        Kind::Text,
    ),
    (
        "task_default_exchange_type",
        "task",
        "default_exchange_type",
        Kind::Text,
    ),
    (
        "task_default_routing_key",
        "task",
        "default_routing_key",
        Kind::Text,
    ),
    (
        "task_create_missing_queues",
        "task",
        "create_missing_queues",
        Kind::Bool,
    ),
    (
        "task_create_missing_queue_type",
        "task",
        "create_missing_queue_type",
        Kind::Text,
    ),
    (
        "task_create_missing_queue_exchange_type",
        "task",
        "create_missing_queue_exchange_type",
        Kind::Text,
    ),
    (
        "task_queue_max_priority",
        "task",
        "queue_max_priority",
        Kind::Count,
    ),
];

/// Worker settings the Python children honour themselves (logging is set up in each child
/// by Celery's own `app.log.setup`), or that only matter to Celery's own worker classes when
/// left at their defaults.
const HONOURED_IN_CHILD: &[&str] = &[
    "worker_hijack_root_logger",
    "worker_log_color",
    "worker_log_format",
    "worker_task_log_format",
    "worker_redirect_stdouts",
    "worker_redirect_stdouts_level",
];

/// Prefixes of the settings that belong to the worker (the rest configure the app as a
/// client, the result backend, beat…, which the Python side uses as it is).
const WORKER_PREFIXES: &[&str] = &["worker_", "broker_"];

/// Task settings that the worker, not the client, acts on and celeryd does not honour yet.
const WORKER_TASK_SETTINGS: &[&str] = &[
    "task_default_delivery_mode",
    "task_default_priority",
    "task_remote_tracebacks",
];

/// Builds the layer from the `conf` of the helper's `ready` frame (the settings the app
/// changed, with `broker_url` resolved and `task_queues` spelt out).
pub fn layer(conf: &Map<String, Value>) -> Result<AppLayer, String> {
    let mut out = AppLayer::default();
    for (celery, section, key, kind) in MAPPED {
        let Some(v) = conf.get(*celery).filter(|v| !v.is_null()) else {
            continue;
        };
        let value = convert(v, *kind).map_err(|why| format!("app.conf {celery} = {v}: {why}"))?;
        out.set(section, key, value, celery);
    }
    let mut redis = false;
    if let Some(url) = conf.get("broker_url").and_then(Value::as_str) {
        redis = celeryd_actors::settings::redis::is_redis_url(url);
        let url = if redis {
            url.to_owned()
        } else {
            amqp_url(url)?
        };
        out.set("broker", "url", toml::Value::String(url), "broker_url");
    }
    if redis
        && let Some(Value::Object(options)) = conf.get("broker_transport_options")
        && !options.is_empty()
        && let Some(table) = json_to_toml(&Value::Object(options.clone()))
    {
        out.set(
            "broker",
            "transport_options",
            table,
            "broker_transport_options",
        );
    }
    if let Some(Value::Array(qs)) = conf.get("task_queues")
        && !qs.is_empty()
    {
        let queues = queue_tables(qs, &mut out.unhonoured);
        out.set("task", "queues", queues, "task_queues");
    }
    if redis && let Some(Value::Bool(on)) = conf.get("worker_disable_prefetch") {
        out.set(
            "worker",
            "disable_prefetch",
            toml::Value::Boolean(*on),
            "worker_disable_prefetch",
        );
    }
    let mapped: Vec<&str> = MAPPED.iter().map(|m| m.0).collect();
    for key in conf.keys() {
        let worker_setting = WORKER_PREFIXES.iter().any(|p| key.starts_with(p))
            || WORKER_TASK_SETTINGS.contains(&key.as_str());
        let known = mapped.contains(&key.as_str())
            || HONOURED_IN_CHILD.contains(&key.as_str())
            || key == "broker_url"
            || (redis
                && ["broker_transport_options", "worker_disable_prefetch"].contains(&key.as_str()));
        if worker_setting && !known {
            out.unhonoured.push(key.clone());
        }
    }
    Ok(out)
}

/// The app's `beat_schedule` (as the Python side spelt it out: `every` seconds or a
/// `crontab`) as scheduler entries, checked as `[beat.schedule]` entries are, with a warning
/// for each entry celeryd cannot schedule (a `solar` schedule, say), which is left out. An
/// entry that is wrong (no task, an option celeryd does not send) is an error naming the entry
/// and field.
pub fn beat_entries(
    conf: &Map<String, Value>,
) -> Result<(celeryd_actors::settings::BeatEntries, Vec<String>), String> {
    use celeryd_actors::settings::{BeatEntry, BeatOptions};
    let Some(Value::Object(schedule)) = conf.get("beat_schedule") else {
        return Ok((Vec::new(), Vec::new()));
    };
    let (mut entries, mut warnings) = (Vec::new(), Vec::new());
    for (name, e) in schedule {
        let key = format!("app.conf beat_schedule[{name:?}]");
        if let Some(what) = e.get("unsupported").and_then(Value::as_str) {
            warnings.push(format!(
                "{key}: its schedule ({what}) is not one celeryd's scheduler runs (a number, \
                 timedelta or crontab); the entry is left out. Keep `celery beat` for it, or \
                 write it as [beat.schedule.{name}] with `every` or `crontab`."
            ));
            continue;
        }
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        let mut options = BeatOptions::default();
        if let Some(Value::Object(o)) = e.get("options") {
            for (k, v) in o {
                let bad = || format!("{key}.options.{k}: {v} is not what celeryd sends");
                match k.as_str() {
                    "queue" => options.queue = Some(text(Some(v)).ok_or_else(bad)?),
                    "exchange" => options.exchange = Some(text(Some(v)).ok_or_else(bad)?),
                    "routing_key" => options.routing_key = Some(text(Some(v)).ok_or_else(bad)?),
                    "priority" => {
                        options.priority = Some(
                            v.as_u64()
                                .and_then(|p| u8::try_from(p).ok())
                                .ok_or_else(bad)?,
                        )
                    }
                    "expires" => options.expires = Some(v.as_f64().ok_or_else(bad)?),
                    other => {
                        return Err(format!(
                            "{key}.options: {other:?} is not an option celeryd's scheduler \
                             sends (queue, exchange, routing_key, priority, expires in \
                             seconds); take it out of the entry, or keep `celery beat` for it"
                        ));
                    }
                }
            }
        }
        let entry = BeatEntry {
            task: text(e.get("task")).unwrap_or_default(),
            every: e.get("every").and_then(Value::as_f64),
            crontab: text(e.get("crontab")),
            args: e
                .get("args")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            kwargs: e
                .get("kwargs")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            options,
        };
        entry.validate(&key).map_err(|e| e.to_string())?;
        entries.push((name.clone(), entry));
    }
    Ok((entries, warnings))
}

impl AppLayer {
    fn set(&mut self, section: &str, key: &str, value: toml::Value, celery: &str) {
        let entry = self
            .table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let Some(t) = entry.as_table_mut() {
            t.insert(key.to_owned(), value);
        }
        self.origins
            .insert(format!("{section}.{key}"), celery.to_owned());
    }
}

fn convert(v: &Value, kind: Kind) -> Result<toml::Value, &'static str> {
    let number = || match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    match kind {
        Kind::Bool => match v {
            Value::Bool(b) => Ok(toml::Value::Boolean(*b)),
            Value::Number(n) => Ok(toml::Value::Boolean(n.as_f64() != Some(0.0))),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" | "on" => Ok(toml::Value::Boolean(true)),
                "false" | "no" | "0" | "off" | "" => Ok(toml::Value::Boolean(false)),
                _ => Err("not a boolean"),
            },
            _ => Err("not a boolean"),
        },
        Kind::Count => match number() {
            Some(f) if f.is_finite() && f >= 0.0 && f <= u32::MAX as f64 => {
                Ok(toml::Value::Integer(f.round() as i64))
            }
            _ => Err("not a whole number from 0"),
        },
        Kind::Seconds => match number() {
            Some(f) if f.is_finite() && f >= 0.0 => Ok(toml::Value::Float(f)),
            _ => Err("not a number of seconds"),
        },
        Kind::Text => match v {
            Value::String(s) => Ok(toml::Value::String(s.clone())),
            Value::Number(n) => Ok(toml::Value::String(n.to_string())),
            _ => Err("not a string"),
        },
    }
}

/// The app's broker URL as celeryd connects to it: kombu's AMQP transports (`amqp`,
/// `pyamqp`, `librabbitmq`) are one; any other transport is refused with the reason.
pub fn amqp_url(url: &str) -> Result<String, String> {
    if url.contains(';') {
        // A failover list: each URL as one.
        let parts: Result<Vec<String>, String> = url
            .split(';')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(amqp_url)
            .collect();
        return parts.map(|p| p.join(";"));
    }
    let masked = celeryd_actors::settings::mask_password(url);
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("app.conf broker_url {masked:?} is not a URL"));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "amqp" | "pyamqp" | "librabbitmq" => Ok(format!("amqp://{rest}")),
        "amqps" | "pyamqps" => Ok(format!("amqps://{rest}")),
        other => Err(format!(
            "app.conf broker_url {masked:?}: celeryd consumes from RabbitMQ (amqp://) or Redis \
             (redis://, rediss://, sentinel://), not through kombu's {other:?} transport; point \
             broker_url (or [broker] url, CELERYD_BROKER_URL) at one of those, or keep `celery \
             worker` for this app"
        )),
    }
}

/// The app's `task_queues` (as the Python side spelt them out, Celery's defaults filled in)
/// as `[[task.queues]]` entries. What celeryd does not declare as given (a queue that is not
/// durable, auto-deleted or exclusive; binding arguments) is named in `unhonoured`.
fn queue_tables(queues: &[Value], unhonoured: &mut Vec<String>) -> toml::Value {
    let text = |v: &Value, k: &str| -> Option<toml::Value> {
        v.get(k)
            .and_then(Value::as_str)
            .map(|s| toml::Value::String(s.to_owned()))
    };
    let mut out = Vec::new();
    for q in queues {
        let Some(name) = q.get("name").and_then(Value::as_str) else {
            continue;
        };
        let mut t = toml::Table::new();
        t.insert("name".into(), toml::Value::String(name.to_owned()));
        for key in ["exchange", "exchange_type", "routing_key"] {
            if let Some(v) = text(q, key) {
                t.insert(key.into(), v);
            }
        }
        if let Some(Value::Object(args)) = q.get("queue_arguments")
            && !args.is_empty()
        {
            let table = args
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), json_to_toml(v)?)))
                .collect();
            t.insert("queue_arguments".into(), toml::Value::Table(table));
        }
        if let Some(Value::Array(bindings)) = q.get("bindings")
            && !bindings.is_empty()
        {
            let mut list = Vec::new();
            for b in bindings {
                let mut bt = toml::Table::new();
                for key in ["exchange", "exchange_type", "routing_key"] {
                    if let Some(v) = text(b, key) {
                        bt.insert(key.into(), v);
                    }
                }
                if b.get("arguments")
                    .is_some_and(|a| a.as_object().is_some_and(|o| !o.is_empty()))
                {
                    unhonoured.push(format!(
                        "task_queues[{name}] binding arguments (bound without them)"
                    ));
                }
                list.push(toml::Value::Table(bt));
            }
            t.insert("bindings".into(), toml::Value::Array(list));
        }
        let flag = |k: &str| q.get(k).and_then(Value::as_bool);
        if flag("durable") == Some(false)
            || flag("auto_delete") == Some(true)
            || flag("exclusive") == Some(true)
        {
            unhonoured.push(format!(
                "task_queues[{name}] durable={:?} auto_delete={:?} exclusive={:?} (declared \
                 durable, not auto-delete, not exclusive)",
                flag("durable"),
                flag("auto_delete"),
                flag("exclusive")
            ));
        }
        out.push(toml::Value::Table(t));
    }
    toml::Value::Array(out)
}

/// A JSON value as TOML (which has no null: `None` for it).
fn json_to_toml(v: &Value) -> Option<toml::Value> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(a) => toml::Value::Array(a.iter().filter_map(json_to_toml).collect()),
        Value::Object(o) => toml::Value::Table(
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), json_to_toml(v)?)))
                .collect(),
        ),
    })
}

/// `--print-config` output with the values that came from the app marked.
pub fn annotate(rendered: &str, from_app: &BTreeMap<String, String>) -> String {
    let mut section = String::new();
    let mut out = String::new();
    for line in rendered.lines() {
        out.push_str(line);
        // An array of tables (`[[task.queues]]`): each entry is marked as a whole.
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            section = name.to_owned();
            if let Some(celery) = from_app.get(name) {
                out.push_str(&format!(" # from app.conf {celery}"));
            }
            out.push('\n');
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        }
        if let Some((key, _)) = line.split_once(" = ")
            && let Some(celery) = from_app.get(&format!("{section}.{}", key.trim()))
        {
            out.push_str(&format!(" # from app.conf {celery}"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn an_apps_beat_schedule_becomes_entries_and_what_cannot_run_is_named() {
        let c = conf(json!({"beat_schedule": {
            "a": {"task": "proj.add", "every": 10.0, "args": [1, 2], "kwargs": {},
                  "options": {"queue": "q", "priority": 3, "expires": 5}},
            "b": {"task": "proj.add", "crontab": "0 3 * * 1", "args": [], "kwargs": {"x": 1},
                  "options": {}},
            "c": {"task": "proj.add", "unsupported": "solar sunrise", "args": [],
                  "kwargs": {}, "options": {}},
        }}));
        let (entries, warnings) = beat_entries(&c).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].1.every, Some(10.0));
        assert_eq!(entries[0].1.options.queue.as_deref(), Some("q"));
        assert_eq!(entries[0].1.options.priority, Some(3));
        assert_eq!(entries[1].1.crontab.as_deref(), Some("0 3 * * 1"));
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("beat_schedule[\"c\"]") && warnings[0].contains("solar"));
        let bad = conf(json!({"beat_schedule": {"d": {"task": "t", "every": 1.0,
            "options": {"link": "x"}}}}));
        let e = beat_entries(&bad).unwrap_err();
        assert!(
            e.contains("beat_schedule[\"d\"].options") && e.contains("link"),
            "{e}"
        );
        let bad = conf(json!({"beat_schedule": {"e": {"task": "t", "crontab": "99 * * * *"}}}));
        let e = beat_entries(&bad).unwrap_err();
        assert!(e.contains("beat_schedule[\"e\"].crontab"), "{e}");
        assert_eq!(beat_entries(&conf(json!({}))).unwrap().0.len(), 0);
    }

    #[test]
    fn worker_settings_are_mapped_with_their_origin() {
        let l = layer(&conf(json!({
            "broker_url": "pyamqp://u:pw@rabbit:5672//",
            "worker_concurrency": 3,
            "worker_prefetch_multiplier": "2",
            "task_acks_late": true,
            "task_time_limit": 30,
            "task_default_rate_limit": "10/s",
            "task_default_queue": "jobs",
            "result_backend": "redis://",
        })))
        .unwrap();
        let t = &l.table;
        assert_eq!(
            t["broker"]["url"].as_str(),
            Some("amqp://u:pw@rabbit:5672//")
        );
        assert_eq!(t["worker"]["concurrency"].as_integer(), Some(3));
        assert_eq!(t["worker"]["prefetch_multiplier"].as_integer(), Some(2));
        assert_eq!(t["task"]["acks_late"].as_bool(), Some(true));
        assert_eq!(t["task"]["time_limit"].as_float(), Some(30.0));
        assert_eq!(t["task"]["default_queue"].as_str(), Some("jobs"));
        assert_eq!(l.origins["worker.concurrency"], "worker_concurrency");
        assert_eq!(l.origins["task.default_queue"], "task_default_queue");
        assert!(l.unhonoured.is_empty(), "{:?}", l.unhonoured);
    }

    #[test]
    fn unhonoured_worker_settings_are_named_and_others_are_not() {
        let l = layer(&conf(json!({
            "worker_cancel_long_running_tasks_on_connection_loss": true,
            "broker_pool_limit": 5,
            "worker_log_format": "%(message)s",
            "task_serializer": "json",
            "task_queue_max_priority": 10,
            "task_default_delivery_mode": "transient",
        })))
        .unwrap();
        assert_eq!(
            l.unhonoured,
            vec![
                "broker_pool_limit",
                "task_default_delivery_mode",
                "worker_cancel_long_running_tasks_on_connection_loss"
            ]
        );
        assert_eq!(l.table["task"]["queue_max_priority"].as_integer(), Some(10));
    }

    #[test]
    fn task_queues_become_queue_entries_with_their_exchanges_and_arguments() {
        let l = layer(&conf(json!({"task_queues": [
            {"name": "a", "exchange": "a", "exchange_type": "direct", "routing_key": "a",
             "queue_arguments": null, "bindings": [], "durable": true, "auto_delete": false,
             "exclusive": false},
            {"name": "b", "exchange": "media", "exchange_type": "topic", "routing_key": "b.#",
             "queue_arguments": {"x-queue-type": "quorum", "x-max-length": 5},
             "bindings": [], "durable": true},
            {"name": "c", "exchange": null, "exchange_type": null, "routing_key": "",
             "queue_arguments": {}, "durable": false,
             "bindings": [{"exchange": "x", "exchange_type": "fanout", "routing_key": "",
                           "arguments": {"k": 1}}]},
        ], "task_default_queue_type": "quorum"})))
        .unwrap();
        // The layer parses as settings and resolves to the queues Celery would declare.
        let mut table = l.table.clone();
        table.insert("broker".into(), toml::Value::Table(toml::Table::new()));
        let settings: celeryd_actors::settings::Settings =
            toml::from_str(&toml::to_string(&table).unwrap()).unwrap();
        let settings = settings.validated().unwrap();
        let qs = settings.task_queues();
        let names: Vec<_> = qs.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(qs[1].exchange_type, "topic");
        assert!(qs[1].is_quorum());
        assert_eq!(qs[1].arguments["x-max-length"], 5);
        assert_eq!(
            (qs[2].exchange.as_str(), qs[2].exchange_type.as_str()),
            ("x", "fanout")
        );
        assert_eq!(
            settings.task.default_queue_type,
            celeryd_actors::settings::QueueType::Quorum
        );
        assert!(!settings.global_qos(), "a quorum queue: per-consumer qos");
        assert_eq!(l.origins["task.queues"], "task_queues");
        assert_eq!(l.unhonoured.len(), 2, "{:?}", l.unhonoured);
        assert!(l.unhonoured[0].contains("binding arguments"));
        assert!(l.unhonoured[1].starts_with("task_queues[c] durable=Some(false)"));
    }

    #[test]
    fn bad_values_and_foreign_brokers_are_refused_with_the_reason() {
        let e = layer(&conf(json!({"worker_concurrency": "many"}))).unwrap_err();
        assert!(e.contains("worker_concurrency"), "{e}");
        let e = layer(&conf(json!({"broker_url": "sqs://:secret@h/0"}))).unwrap_err();
        assert!(e.contains("RabbitMQ") && !e.contains("secret"), "{e}");
        let l = layer(&conf(json!({"broker_url": "redis://:secret@h:6379/0",
            "broker_transport_options": {"visibility_timeout": 7200}})))
        .unwrap();
        assert_eq!(
            l.table["broker"]["url"].as_str(),
            Some("redis://:secret@h:6379/0")
        );
        assert_eq!(
            l.table["broker"]["transport_options"]["visibility_timeout"].as_integer(),
            Some(7200)
        );
        assert_eq!(amqp_url("amqps://h//").unwrap(), "amqps://h//");
    }

    #[test]
    fn printed_config_marks_what_came_from_the_app() {
        let mut from = BTreeMap::new();
        from.insert(
            "worker.concurrency".to_owned(),
            "worker_concurrency".to_owned(),
        );
        let text = annotate("[worker]\nconcurrency = 3\nhostname = \"x\"\n", &from);
        assert!(text.contains("concurrency = 3 # from app.conf worker_concurrency"));
        assert!(text.contains("hostname = \"x\"\n"));
    }
}
