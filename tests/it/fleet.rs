//! A mixed fleet: a Python Celery 5.7 worker and celeryd consuming one quorum queue of the
//! same app, as during a gradual switch. Real broker, real Redis, both real workers.

use serde_json::{Value, json};

use crate::block_on;
use crate::kit::{
    PyWorker, Worker, celery_cli, celery_inspect, delete_queue, proj_client, unique_queue,
};

const REDIS: &str = "redis://127.0.0.1:6379/5";

/// `celery inspect <what> --json` to every node: the replies by node name.
fn inspect_all(what: &str) -> Value {
    let out = celery_cli(&["inspect", what, "--json", "--timeout", "3"]);
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn a_python_worker_and_celeryd_share_a_quorum_queue_each_task_once() {
    let q = unique_queue("fleet");
    let queues = json!([{"name": q, "exchange": q, "type": "direct", "routing_key": q,
                         "arguments": {"x-queue-type": "quorum"}}])
    .to_string();
    let env = [("PROJ_QUEUES", queues.clone())];
    // Both declare the queue and Celery's native delayed delivery with the same arguments
    // (any difference would be a 406 for the second), and both consume per-consumer.
    let py = PyWorker::start_app("proj", &q, &["-P", "prefork", "-c", "2"], &env);
    let w = Worker::builder(&q)
        .proj(REDIS, "")
        .concurrency(2)
        .envs(&env)
        .start();

    let ping = inspect_all("ping");
    for node in [&py.nodename, &w.nodename()] {
        assert_eq!(ping[node.as_str()]["ok"], "pong", "{node} in {ping}");
    }

    let run = uuid::Uuid::new_v4().simple().to_string();
    let n = 10_000;
    let seen = proj_client(
        &[
            "mark",
            "--queue",
            &q,
            "--run",
            &run,
            "--count",
            &n.to_string(),
            "--timeout",
            "240",
        ],
        &[("PROJ_QUEUES", queues.as_str())],
    );
    eprintln!("mixed fleet, {n} acks_late tasks on one quorum queue: {seen}");
    assert_eq!(seen["distinct"], n, "every task ran: {seen}");
    assert_eq!(seen["runs"], n, "none ran twice: {seen}");
    let by = &seen["by"];
    for node in [&py.nodename, &w.nodename()] {
        assert!(
            by[node.as_str()].as_u64().unwrap_or(0) > 0,
            "{node} took a share: {seen}"
        );
    }

    // A revoke broadcast once reaches both.
    let id = uuid::Uuid::new_v4().to_string();
    let out = celery_cli(&["control", "revoke", &id]);
    assert!(out.status.success(), "{out:?}");
    for node in [&py.nodename, &w.nodename()] {
        let revoked = celery_inspect(node, &["revoked"]);
        assert!(
            revoked
                .as_array()
                .is_some_and(|ids| ids.iter().any(|v| v == id.as_str())),
            "{node}: {revoked}"
        );
    }
    assert!(!py.log().contains("PRECONDITION_FAILED"), "{}", py.log());
    assert!(!w.log().contains("PRECONDITION_FAILED"), "{}", w.log());
    drop(w);
    drop(py);
    block_on(delete_queue(&q));
}
