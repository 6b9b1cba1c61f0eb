//! Rust tasks in canvases, with the Redis result backend, driven by the real Python Celery
//! client (`tests/python/canvas_client.py`), and chords mixed with a real Python Celery
//! worker.

use std::process::Command;

use serde_json::{Value, json};

use crate::block_on;
use crate::kit::{PyWorker, Worker, delete_queue, python, python_amqp_url, repo, unique_queue};

/// The Redis database these tests keep results in: the other tests use 5 and below, Celery's
/// suite (../shared/celery-suite) 7, the redis_drain benchmark 9.
const REDIS: &str = "redis://127.0.0.1:6379/8";

fn client(queue: &str, py_queue: &str, args: &[&str]) -> Value {
    let out = Command::new(python())
        .arg(repo().join("tests/python/canvas_client.py"))
        .args(args)
        .env("AMQP_URL", python_amqp_url())
        .env("RESULT_BACKEND", REDIS)
        .env("QUEUE", queue)
        .env("PY_QUEUE", py_queue)
        .output()
        .expect("run the canvas client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "canvas_client {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn worker(queue: &str) -> Worker {
    let config = format!("[result]\nbackend = \"{REDIS}\"\nextended = true\n");
    Worker::builder(queue)
        .config(&config)
        .concurrency(2)
        .start()
}

#[test]
fn chains_links_errbacks_and_groups_of_rust_tasks() {
    let queue = unique_queue("canvas");
    let w = worker(&queue);
    let c = |args: &[&str]| client(&queue, &queue, args);
    let r = c(&["chain"]);
    assert_eq!(r["result"], 6, "{r}");
    assert_eq!(r["parent"], 3, "{r}");
    assert_eq!(
        r["parent_id"], r["first_id"],
        "the second step's parent: {r}"
    );
    let r = c(&["link"]);
    assert_eq!(
        (r["result"].clone(), r["callback"].clone()),
        (json!(4), json!(14)),
        "{r}"
    );
    let r = c(&["link_error"]);
    assert_eq!(r["state"], "FAILURE", "{r}");
    assert_eq!(r["exc_type"], "ValueError", "{r}");
    assert_eq!(
        r["errback"],
        json!([[r["id"].clone()], {}]),
        "called with the id: {r}"
    );
    let r = c(&["chain_failure"]);
    assert_eq!(r["first"]["state"], "FAILURE", "{r}");
    assert_eq!(
        r["last"]["state"], "FAILURE",
        "the rest of the chain fails too: {r}"
    );
    assert_eq!(r["last"]["exc_type"], "ValueError", "{r}");
    let r = c(&["group"]);
    assert_eq!(r["result"], json!([0, 2, 4, 6, 8]), "{r}");
    assert_eq!(r["restored"], json!([0, 2, 4, 6, 8]), "{r}");
    let r = c(&["states"]);
    assert_eq!(r["failure"]["exc_type"], "ValueError", "{r}");
    assert_eq!(r["retry"], "RETRY", "{r}");
    assert_eq!(r["revoked"]["state"], "REVOKED", "{r}");
    assert_eq!(r["time_limit"]["exc_type"], "TimeLimitExceeded", "{r}");
    assert_eq!(r["lost"]["exc_type"], "WorkerLostError", "{r}");
    assert_eq!(r["success"], 42, "{r}");
    assert_eq!(r["extended"]["name"], "tasks.add", "{r}");
    assert_eq!(r["extended"]["args"], json!([20, 22]), "{r}");
    assert_eq!(r["extended"]["worker"], w.nodename().as_str(), "{r}");
    let r = c(&["progress"]);
    assert_eq!(r["result"], 5, "{r}");
    let seen = r["seen"].as_array().unwrap();
    assert!(seen.len() >= 2, "PROGRESS seen while it ran: {r}");
    assert!(seen.iter().all(|m| m["total"] == 5), "{r}");
    let r = c(&["task_sends_task"]);
    assert_eq!(r["child"], 5, "{r}");
    assert_eq!(r["parent_id"], r["id"], "the sender is the parent: {r}");
    // A SUCCESS stored already is never overwritten by a later state of the same id.
    let id = uuid::Uuid::new_v4().to_string();
    c(&["preset_success", &id]);
    w.wait_for_log(
        &format!("Task tasks.fail[{id}] raised"),
        std::time::Duration::from_secs(20),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let r = c(&["meta", &id]);
    assert_eq!(
        (r["status"].clone(), r["result"].clone()),
        (json!("SUCCESS"), json!(1)),
        "{r}"
    );
    assert!(!w.log().contains("not carried out"), "{}", w.log());
    drop(w);
    block_on(delete_queue(&queue));
}

#[test]
fn chords_over_redis_mix_celeryd_and_a_python_worker() {
    let queue = unique_queue("chord-rs");
    let py_queue = unique_queue("chord-py");
    let w = worker(&queue);
    let py = PyWorker::start_app(
        "proj",
        &py_queue,
        &["-P", "solo"],
        &[("RESULT_BACKEND", REDIS.to_owned())],
    );
    let c = |args: &[&str]| client(&queue, &py_queue, args);
    // Header on celeryd, body on the Python worker.
    let r = c(&["chord_rust_head"]);
    assert_eq!(r["result"], 30, "0+2+4+6+8+10: {r}");
    // Header on the Python worker, body on celeryd.
    let r = c(&["chord_py_head"]);
    assert_eq!(r["result"], json!([[[0, 2, 4, 6]], {}]), "{r}");
    // A failing header part fails the body with Celery's ChordError.
    let r = c(&["chord_failure"]);
    assert_eq!(r["state"], "FAILURE", "{r}");
    assert_eq!(r["exc_type"], "ChordError", "{r}");
    assert!(
        r["exc"].as_str().unwrap().contains("ValueError('bad')"),
        "{r}"
    );
    drop((w, py));
    block_on(delete_queue(&queue));
    block_on(delete_queue(&py_queue));
}
