//! Control commands that change what a celeryd worker does, driven by the real `celery` CLI
//! and Python client: add_consumer / cancel_consumer, autoscale, pool_restart,
//! revoke_by_stamped_headers, and `registered` with task attributes; an add_consumer the
//! broker refuses is an error reply that disturbs nothing.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

use crate::block_on;
use crate::kit::{
    Worker, assert_healthy, call_task, connect, control_call, delete_queue, error_text, eventually,
    parse_client_output, queue_depth, spawn_task, unique_queue, worker_ctl,
};

use crate::kit::{celery_control as control, celery_inspect as inspect_json};

fn queue_names(node: &str) -> Vec<String> {
    inspect_json(node, &["active_queues"])
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn add_and_cancel_consumer() {
    let (first, second) = (unique_queue("q1"), unique_queue("q2"));
    let worker = Worker::builder(&first).concurrency(1).start();
    let node = worker.nodename();
    let out = control(&node, &["add_consumer", &second]);
    assert!(out.contains(&format!("add consumer {second}")), "{out}");
    eventually(Duration::from_secs(10), "the added queue consumed", || {
        queue_names(&node).contains(&second)
    });
    let r = call_task(&second, "tasks.add", "[20, 22]", &[]);
    assert_eq!(r["result"], json!(42), "{r}");
    let out = control(&node, &["cancel_consumer", &second]);
    assert!(
        out.contains(&format!("no longer consuming from {second}")),
        "{out}"
    );
    eventually(Duration::from_secs(10), "the queue dropped", || {
        !queue_names(&node).contains(&second)
    });
    // Sent there now, a task waits in the broker; the first queue still works.
    call_task(&second, "tasks.noop", "[]", &["--no-wait"]);
    let r = call_task(&first, "tasks.add", "[1, 1]", &[]);
    assert_eq!(r["result"], json!(2), "{r}");
    block_on(async {
        let conn = connect().await;
        assert_eq!(queue_depth(&conn, &second).await, 1);
    });
    // The worker survives a bad exchange type (an error reply, nothing else changes).
    let out = control(&node, &["add_consumer", "x", "x", "nonsense"]);
    assert!(
        out.contains("ERROR") && out.contains("exchange type"),
        "{out}"
    );
    drop(worker);
    block_on(delete_queue(&first));
    block_on(delete_queue(&second));
}

#[test]
fn autoscale_follows_the_load_and_the_command() {
    let queue = unique_queue("autoscale");
    let worker = Worker::builder(&queue)
        .config("[worker]\nautoscale_keepalive = 1.0\n")
        .args(&["--autoscale", "3,1"])
        .start();
    let node = worker.nodename();
    assert_eq!(worker.children().len(), 1);
    let stats = inspect_json(&node, &["stats"]);
    assert_eq!(stats["autoscaler"]["max"], 3, "{stats}");
    assert_eq!(stats["prefetch_count"], 12, "prefetch follows max: {stats}");
    let sleepers: Vec<_> = (0..3)
        .map(|_| spawn_task(&queue, "tasks.sleep", "[3]", &[]))
        .collect();
    eventually(Duration::from_secs(15), "3 children under load", || {
        worker.children().len() == 3
    });
    for s in sleepers {
        let r = parse_client_output(&s.wait_with_output().unwrap());
        assert_eq!(r["state"], "SUCCESS", "{r}");
    }
    eventually(
        Duration::from_secs(20),
        "back to min after keepalive",
        || worker.children().len() == 1,
    );
    let out = control(&node, &["pool_grow", "1"]);
    assert!(out.contains("not supported with autoscale"), "{out}");
    let out = control(&node, &["autoscale", "2", "2"]);
    assert!(out.contains("autoscale now max=2 min=2"), "{out}");
    eventually(Duration::from_secs(15), "min raised to 2", || {
        worker.children().len() == 2
    });
    let r = call_task(&queue, "tasks.add", "[1, 2]", &[]);
    assert_eq!(r["result"], json!(3));
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn pool_restart_replaces_every_child_when_enabled() {
    let queue = unique_queue("restart");
    let worker = Worker::builder(&queue).concurrency(2).start();
    let node = worker.nodename();
    let out = control(&node, &["pool_restart"]);
    assert!(out.contains("Pool restarts not enabled"), "{out}");
    drop(worker);
    let worker = Worker::builder(&queue)
        .config("[worker]\npool_restarts = true\n")
        .concurrency(2)
        .start();
    let node = worker.nodename();
    let before = worker.children();
    assert_eq!(before.len(), 2);
    let busy = spawn_task(&queue, "tasks.sleep", "[2]", &[]);
    worker.wait_for_log("Task tasks.sleep[", Duration::from_secs(20));
    let out = control(&node, &["pool_restart"]);
    assert!(out.contains("reload started"), "{out}");
    let r = parse_client_output(&busy.wait_with_output().unwrap());
    assert_eq!(
        r["state"], "SUCCESS",
        "the running task finished first: {r}"
    );
    eventually(Duration::from_secs(15), "two new children", || {
        let now = worker.children();
        now.len() == 2 && now.iter().all(|p| !before.contains(p))
    });
    let r = call_task(&queue, "tasks.add", "[5, 5]", &[]);
    assert_eq!(r["result"], json!(10));
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn revoke_by_stamped_headers_discards_and_terminates() {
    let queue = unique_queue("stamps");
    let worker = Worker::builder(&queue).concurrency(1).start();
    let node = worker.nodename();
    let stamp = format!("batch={}", uuid::Uuid::new_v4().simple());
    let value = stamp.split_once('=').unwrap().1.to_owned();
    // Held ETA task with the stamp, and an unstamped one beside it.
    let held = spawn_task(
        &queue,
        "tasks.add",
        "[1, 1]",
        &["--countdown", "30", "--stamp", &stamp],
    );
    let free = spawn_task(&queue, "tasks.add", "[2, 2]", &["--countdown", "2"]);
    eventually(Duration::from_secs(10), "two ETA tasks held", || {
        inspect_json(&node, &["scheduled"])
            .as_array()
            .is_some_and(|a| a.len() == 2)
    });
    let out = control(&node, &["revoke_by_stamped_headers", &stamp]);
    assert!(
        out.contains(&format!(
            "headers {{'batch': '{value}'}} flagged as revoked, but not terminated"
        )),
        "{out}"
    );
    let r = parse_client_output(&held.wait_with_output().unwrap());
    assert_eq!(r["state"], "REVOKED", "{r}");
    let r = parse_client_output(&free.wait_with_output().unwrap());
    assert_eq!(r["result"], json!(4), "{r}");
    // A new task with the stamp is discarded on arrival.
    let r = call_task(&queue, "tasks.add", "[3, 3]", &["--stamp", &stamp]);
    assert_eq!(r["state"], "REVOKED", "{r}");
    // terminate: a running stamped task is signalled.
    let other = format!("job={}", uuid::Uuid::new_v4().simple());
    let other_value = other.split_once('=').unwrap().1.to_owned();
    let running = spawn_task(&queue, "tasks.sleep", "[30]", &["--stamp", &other]);
    worker.wait_for_log("Task tasks.sleep[", Duration::from_secs(20));
    let headers = json!({"job": other_value}).to_string();
    let v = crate::kit::celery_client(&[
        "broadcast",
        "revoke_by_stamped_headers",
        "--arguments",
        &json!({"headers": serde_json::from_str::<Value>(&headers).unwrap(), "terminate": true, "signal": "SIGKILL"}).to_string(),
        "--destination",
        &node,
    ]);
    assert_eq!(
        v[0][&node]["ok"],
        format!("headers defaultdict(<class 'set'>, {{'job': {{'{other_value}'}}}}) revoked"),
        "{v}"
    );
    let r = parse_client_output(&running.wait_with_output().unwrap());
    assert_eq!(r["state"], "REVOKED", "{r}");
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn registered_lists_requested_attributes() {
    let queue = unique_queue("registered");
    let config = "[task.rate_limits]\n\"tasks.noop\" = \"100/m\"\n";
    let worker = Worker::builder(&queue)
        .config(config)
        .concurrency(1)
        .start();
    let node = worker.nodename();
    let names = inspect_json(&node, &["registered"]);
    let names: Vec<&str> = names
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        names.contains(&"tasks.noop [rate_limit=100/m]"),
        "{names:?}"
    );
    assert!(names.contains(&"tasks.add"), "{names:?}");
    let out = control(&node, &["time_limit", "tasks.add", "5", "10"]);
    assert!(out.contains("time limits set successfully"), "{out}");
    let v = inspect_json(
        &node,
        &["registered", "time_limit", "soft_time_limit", "acks_late"],
    );
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|t| t == "tasks.add [time_limit=10.0 soft_time_limit=5.0 acks_late=False]"),
        "{v}"
    );
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn add_consumer_of_a_refused_queue_is_an_error_reply_and_disturbs_nothing() {
    let queue = unique_queue("addrefused");
    let clash = unique_queue("clash");
    // A queue that exists with other arguments than the worker would declare.
    block_on(async {
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongInt(10));
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(clash.as_str().into(), opts, args)
            .await
            .unwrap();
        let _ = conn.close(200, "bye".into()).await;
    });
    let worker = Worker::builder(&queue)
        .config("[task]\nacks_late = true\n")
        .concurrency(1)
        .start();
    let node = worker.nodename();
    let running = spawn_task(&queue, "tasks.sleep", "[3]", &[]);
    worker.wait_for_log("Task tasks.sleep[", Duration::from_secs(30));
    let reply = control_call(&node, "add_consumer", json!({"queue": "amq.celeryd-test"}));
    assert!(error_text(&reply).contains("ACCESS_REFUSED"), "{reply}");
    let reply = control_call(&node, "add_consumer", json!({"queue": clash}));
    assert!(
        error_text(&reply).contains("exists on the broker with x-max-length = "),
        "the 406 named with the argument and its value: {reply}"
    );
    let r = crate::kit::parse_client_output(&running.wait_with_output().unwrap());
    assert_eq!(r["result"], json!(3.0), "{r}");
    let log = worker.log();
    assert!(
        !log.contains("Connection to the broker lost"),
        "the consumer's connection was not reset"
    );
    assert_eq!(
        log.matches("Task tasks.sleep[").count(),
        2,
        "received once, succeeded once: nothing ran twice"
    );
    // Neither queue is consumed; the worker's own is.
    let (_, out, _) = worker_ctl(&["active_queues", "--json", "-d", &node]);
    let queues: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(queues[&node].as_array().unwrap().len(), 1, "{queues}");
    assert_healthy(&worker, &queue);
    drop(worker);
    block_on(delete_queue(&queue));
    block_on(delete_queue(&clash));
}
