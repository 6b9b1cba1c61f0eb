//! celeryd on a Redis broker (kombu's redis transport, `redis-transport.md`), driven by the
//! real Python Celery 5.7 client, its `celery` CLI and a real Python Celery worker on the
//! same Redis. Each test has a Redis database of its own (1, 2, 10–15): `unacked` is per
//! database.

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::kit::{
    PyWorker, Worker, celery_cli_on, celery_client_on, eventually, proj_client, unique_queue,
    worker_ctl_with_broker,
};

fn redis_url(db: u8) -> String {
    format!("redis://127.0.0.1:6379/{db}")
}

/// `redis-cli -n db args…`, its output trimmed.
fn redis_cli(db: u8, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-n", &db.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn count(db: u8, args: &[&str]) -> i64 {
    redis_cli(db, args).parse().unwrap_or(-1)
}

fn states(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn rust_tasks_on_redis_with_results_priorities_and_nothing_left_unacked() {
    let db = 10;
    let url = redis_url(db);
    let queue = unique_queue("rq");
    let w = Worker::builder(&queue).broker(&url).concurrency(2).start();
    let one = celery_client_on(
        &url,
        &["call", "tasks.add", "--args", "[2, 3]", "--queue", &queue],
    );
    assert_eq!(one["state"], "SUCCESS", "{one}");
    assert_eq!(one["result"], 5);
    let many = celery_client_on(
        &url,
        &[
            "call",
            "tasks.add",
            "--args",
            "[1, 1]",
            "--queue",
            &queue,
            "--count",
            "200",
        ],
    );
    assert!(states(&many).iter().all(|s| s == "SUCCESS"), "{many}");
    // What a Python worker would see: the binding kombu writes, nothing held.
    let member = format!("{queue}\x06\x16\x06\x16{queue}");
    assert_eq!(
        count(
            db,
            &["sismember", &format!("_kombu.binding.{queue}"), &member]
        ),
        1
    );
    eventually(Duration::from_secs(5), "every ack to land", || {
        count(db, &["zcard", "unacked_index"]) == 0 && count(db, &["hlen", "unacked"]) == 0
    });
    // Hostile items: rejected with a log line each, the worker consumes on.
    for item in [
        "not json",
        r#"{"body": "e30=", "headers": {}}"#,
        r#"{"body": "%%%", "content-type": "application/json", "headers": {"task": "tasks.add", "id": "x"}, "properties": {"delivery_tag": "hostile-1", "body_encoding": "base64"}}"#,
    ] {
        redis_cli(db, &["lpush", &queue, item]);
    }
    // An `unacked` record that is not [message, exchange, routing_key], long expired: the
    // restore scan removes it with a log line.
    redis_cli(db, &["hset", "unacked", "hostile-2", "not a list"]);
    redis_cli(db, &["zadd", "unacked_index", "1", "hostile-2"]);
    let after = celery_client_on(
        &url,
        &["call", "tasks.add", "--args", "[4, 4]", "--queue", &queue],
    );
    assert_eq!(after["result"], 8, "{after}");
    w.wait_for_log("not a message", Duration::from_secs(5));
    w.wait_for_log(
        "is not [message, exchange, routing_key]",
        Duration::from_secs(25),
    );
    eventually(
        Duration::from_secs(5),
        "the hostile records to be removed",
        || count(db, &["hlen", "unacked"]) == 0,
    );
    assert_eq!(count(db, &["llen", &queue]), 0, "nothing left in the queue");
}

#[test]
fn remote_control_and_inspect_over_the_redis_pidbox() {
    let db = 11;
    let url = redis_url(db);
    let queue = unique_queue("rctl");
    let w = Worker::builder(&queue).broker(&url).start();
    let node = w.nodename();
    let ping = celery_cli_on(&url, &["inspect", "ping", "--json", "-d", &node]);
    let text = String::from_utf8_lossy(&ping.stdout);
    assert!(ping.status.success(), "{text}{ping:?}");
    let v: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v[&node]["ok"], "pong", "{v}");
    let queues = celery_cli_on(&url, &["inspect", "active_queues", "--json", "-d", &node]);
    let v: Value = serde_json::from_slice(&queues.stdout).unwrap();
    assert_eq!(v[&node][0]["name"], queue.as_str(), "{v}");
    let stats = celery_cli_on(&url, &["inspect", "stats", "--json", "-d", &node]);
    let v: Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(v[&node]["broker"]["transport"], "redis", "{v}");
    // celeryd's own ctl, on the same Redis.
    let (code, out, err) = worker_ctl_with_broker(&url, &["ping", "-d", &node]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("pong"), "{out}");
    // A control command with an effect: the rate limit is applied.
    let (code, out, err) =
        worker_ctl_with_broker(&url, &["rate_limit", "tasks.add", "10/m", "-d", &node]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("new rate limit set successfully"), "{out}");
    // The reply lists and their bindings are gone after the replies were read.
    assert_eq!(redis_cli(db, &["keys", "*.reply.celery.pidbox"]), "");
}

#[test]
fn python_tasks_with_a_redis_broker_app() {
    let db = 12;
    let url = redis_url(db);
    let queue = unique_queue("rpy");
    let w = Worker::builder(&queue)
        .broker(&url)
        .proj("rpc://", "{}")
        .start();
    let env = [("AMQP_URL", url.as_str()), ("RESULT_BACKEND", "rpc://")];
    let basic = proj_client(&["basic", "--queue", &queue, "--timeout", "40"], &env);
    assert_eq!(basic["add"], 5, "{basic}");
    assert_eq!(basic["boom"]["exc"], "Boom", "{basic}");
    assert_eq!(
        basic["whoami"]["hostname"],
        w.nodename().as_str(),
        "{basic}"
    );
    assert_eq!(
        basic["whoami"]["delivery_info"]["routing_key"],
        queue.as_str()
    );
    let retry = proj_client(&["retry", "--queue", &queue, "--timeout", "40"], &env);
    assert_eq!(retry["retry_once"], 1, "{retry}");
    assert_eq!(retry["autoretry"], "retried 2 times", "{retry}");
    eventually(Duration::from_secs(5), "every ack to land", || {
        count(db, &["hlen", "unacked"]) == 0
    });
}

#[test]
fn a_clean_shutdown_puts_held_tasks_back_at_once() {
    let db = 13;
    let url = redis_url(db);
    let queue = unique_queue("rterm");
    let mut w = Worker::builder(&queue).broker(&url).start();
    let sent = celery_client_on(
        &url,
        &[
            "call",
            "tasks.add",
            "--args",
            "[1, 2]",
            "--queue",
            &queue,
            "--countdown",
            "600",
            "--no-wait",
        ],
    );
    assert!(sent["id"].is_string(), "{sent}");
    eventually(Duration::from_secs(10), "the ETA task to be held", || {
        count(db, &["hlen", "unacked"]) == 1
    });
    w.signal(Signal::SIGTERM);
    assert!(w.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(count(db, &["hlen", "unacked"]), 0, "{}", w.log());
    assert_eq!(
        count(db, &["llen", &queue]),
        1,
        "back in its list: {}",
        w.log()
    );
    let item = redis_cli(db, &["lindex", &queue, "0"]);
    let v: Value = serde_json::from_str(&item).unwrap();
    assert_eq!(
        v["properties"]["delivery_info"]["redelivered"], true,
        "{item}"
    );
    assert_eq!(v["headers"]["id"], sent["id"], "{item}");
}

#[test]
fn a_killed_workers_held_task_is_restored_after_the_visibility_timeout_and_runs_once() {
    let db = 14;
    let url = redis_url(db);
    let queue = unique_queue("rkill");
    let options =
        "[broker.transport_options]\nvisibility_timeout = 2\nunacked_restore_interval = 1\n";
    let mut first = Worker::builder(&queue).broker(&url).config(options).start();
    let sent = celery_client_on(
        &url,
        &[
            "call",
            "tasks.add",
            "--args",
            "[20, 22]",
            "--queue",
            &queue,
            "--countdown",
            "4",
            "--no-wait",
        ],
    );
    let id = sent["id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(10), "the ETA task to be held", || {
        count(db, &["hlen", "unacked"]) == 1
    });
    first.signal(Signal::SIGKILL);
    let _ = first.wait_exit(Duration::from_secs(10));
    assert_eq!(
        count(db, &["hlen", "unacked"]),
        1,
        "a kill leaves it recorded"
    );
    let second = Worker::builder(&queue).broker(&url).config(options).start();
    second.wait_for_log(
        &format!("Task tasks.add[{id}] succeeded"),
        Duration::from_secs(30),
    );
    eventually(Duration::from_secs(5), "its ack", || {
        count(db, &["hlen", "unacked"]) == 0
    });
    // Held by the second worker well past the visibility timeout, it was never restored
    // again: its lease was renewed.
    std::thread::sleep(Duration::from_secs(3));
    let runs = second
        .log()
        .matches(&format!("Task tasks.add[{id}] received"))
        .count();
    assert_eq!(runs, 1, "{}", second.log());
}

#[test]
fn a_python_workers_restores_never_hand_out_a_task_celeryd_holds() {
    let db = 15;
    let url = redis_url(db);
    let queue = unique_queue("rlease");
    // Both sides restore what is unacked for 2 s, scanning every second.
    let options =
        "[broker.transport_options]\nvisibility_timeout = 2\nunacked_restore_interval = 1\n";
    let py_options = r#"{"visibility_timeout": 2, "unacked_restore_interval": 1, "unacked_restore_throttle": 1}"#;
    let _py = PyWorker::start_app(
        "pyworker",
        &unique_queue("pyq"),
        &["-P", "solo"],
        &[
            ("AMQP_URL", url.clone()),
            ("PYWORKER_TRANSPORT_OPTIONS", py_options.to_owned()),
        ],
    );
    let w = Worker::builder(&queue)
        .broker(&url)
        .config(options)
        .config("[task]\nacks_late = true\n")
        .concurrency(2)
        .start();
    // Held 3× the visibility timeout: waiting for its countdown, and running (acks_late).
    let eta = celery_client_on(
        &url,
        &[
            "call",
            "tasks.add",
            "--args",
            "[1, 2]",
            "--queue",
            &queue,
            "--countdown",
            "6",
            "--timeout",
            "30",
        ],
    );
    assert_eq!(eta["result"], 3, "{eta}");
    let long = celery_client_on(
        &url,
        &[
            "call",
            "tasks.sleep",
            "--args",
            "[6]",
            "--queue",
            &queue,
            "--timeout",
            "30",
        ],
    );
    assert_eq!(long["state"], "SUCCESS", "{long}");
    let log = w.log();
    for id in [&eta["id"], &long["id"]] {
        let id = id.as_str().unwrap();
        let received = log.matches(&format!("[{id}] received")).count();
        assert_eq!(
            received, 1,
            "{id} ran once, not restored by the Python worker: {log}"
        );
    }
}

#[test]
fn events_reach_celerys_receiver_over_redis() {
    let db = 2;
    let url = redis_url(db);
    let capture = super::events::Capture::start_on(&url, 60);
    let queue = unique_queue("rev");
    let w = Worker::builder(&queue).broker(&url).args(&["-E"]).start();
    let node = w.nodename();
    capture.wait_for(&node, "worker-online", "worker-online over Redis");
    let done = celery_client_on(
        &url,
        &["call", "tasks.add", "--args", "[3, 4]", "--queue", &queue],
    );
    let id = done["id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(10), "the task's events", || {
        capture.for_task(&id).contains(&"task-succeeded".to_owned())
    });
    let kinds = capture.for_task(&id);
    for kind in ["task-received", "task-started", "task-succeeded"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing: {kinds:?}");
    }
}

#[test]
fn a_python_worker_and_celeryd_share_a_redis_queue_each_task_once() {
    let db = 1;
    let url = redis_url(db);
    let queue = unique_queue("rfleet");
    let env = [("AMQP_URL", url.clone())];
    let py = PyWorker::start_app("proj", &queue, &["-P", "prefork", "-c", "2"], &env);
    let w = Worker::builder(&queue)
        .broker(&url)
        .proj("redis://127.0.0.1:6379/5", "")
        .concurrency(2)
        .start();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let n = 10_000;
    let seen = proj_client(
        &[
            "mark",
            "--queue",
            &queue,
            "--run",
            &run,
            "--count",
            &n.to_string(),
            "--timeout",
            "300",
        ],
        &[("AMQP_URL", url.as_str())],
    );
    eprintln!("mixed fleet on Redis, {n} acks_late tasks on one queue: {seen}");
    assert_eq!(seen["distinct"], n, "every task ran: {seen}");
    assert_eq!(seen["runs"], n, "none ran twice: {seen}");
    for node in [&py.nodename, &w.nodename()] {
        assert!(
            seen["by"][node.as_str()].as_u64().unwrap_or(0) > 0,
            "{node} took a share: {seen}"
        );
    }
    eventually(Duration::from_secs(10), "every ack of both workers", || {
        count(db, &["hlen", "unacked"]) == 0
    });
}
