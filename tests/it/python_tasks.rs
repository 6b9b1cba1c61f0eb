//! `worker -A proj`: a Python Celery app's own tasks (`tests/python/proj.py`), run in Python
//! children through Celery's tracer, driven by Celery's own client API
//! (`tests/python/proj_client.py`: canvases included), with the rpc://, redis:// and
//! PostgreSQL result backends. The worker never writes these results itself: the children
//! and the helper (Celery's code) do.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::block_on;
use crate::support::{Worker, delete_queue, python, repo, unique_queue};

const REDIS: &str = "redis://127.0.0.1:6379/3";
const POSTGRES: &str = "db+postgresql+psycopg2://postgres@127.0.0.1:5432/test";

fn python_amqp_url() -> String {
    crate::support::amqp_url()
        .replace("/%2f", "//")
        .replace("/%2F", "//")
}

/// Runs one scenario of the client against `queue`; returns what it saw.
fn scenario(queue: &str, backend: &str, name: &str) -> Value {
    let out = Command::new(python())
        .current_dir(repo().join("tests/python"))
        .args(["proj_client.py", name, "--queue", queue, "--timeout", "40"])
        .env("AMQP_URL", python_amqp_url())
        .env("RESULT_BACKEND", backend)
        .output()
        .expect("run the client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scenario {name} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("scenario {name} printed no JSON ({e}): {stdout}"))
}

fn exc(v: &Value) -> (&str, &str) {
    (
        v["exc"].as_str().unwrap_or("<no exception>"),
        v["module"].as_str().unwrap_or_default(),
    )
}

#[test]
fn python_tasks_with_rpc_results() {
    let q = unique_queue("it-py");
    let w = Worker::start_python(&q, "rpc://", "", &["-c", "2"]);
    w.wait_for_log("Python app proj: Celery 5.7.0", Duration::from_secs(1));

    let b = scenario(&q, "rpc://", "basic");
    assert_eq!(b["add"], 5);
    assert_eq!(exc(&b["boom"]), ("Boom", "proj"), "{b}");
    assert_eq!(b["whoami"]["hostname"], w.nodename());
    assert_eq!(b["whoami"]["delivery_info"]["routing_key"], q.as_str());
    assert_eq!(b["whoami"]["retries"], 0);
    let signals = b["signals"].as_array().unwrap();
    assert!(signals.contains(&json!("worker_init")), "{signals:?}");
    assert!(
        signals.contains(&json!("worker_process_init")),
        "{signals:?}"
    );
    assert_ne!(
        b["whoami"]["pid"].as_u64().unwrap_or_default(),
        u64::from(w.pid()),
        "the task ran in a child"
    );

    let r = scenario(&q, "rpc://", "retry");
    assert_eq!(
        (r["retry_once"].clone(), r["autoretry"].clone()),
        (json!(1), json!("retried 2 times"))
    );

    // rpc:// returns a group's results to the client, not a chain's or a link's (Celery's
    // own worker neither: it sends those tasks itself); the redis test has them.
    let g = scenario(&q, "rpc://", "group");
    assert_eq!(g["group"], json!([0, 2, 4]));

    let l = scenario(&q, "rpc://", "limits");
    assert_eq!(
        exc(&l["hard"]),
        ("TimeLimitExceeded", "billiard.exceptions"),
        "{l}"
    );
    assert_eq!(l["soft"], "soft limit caught");
    assert_eq!(l["after"], 2, "a fresh child took the killed one's place");
    assert!(
        w.log()
            .contains("Hard time limit (1s) exceeded for proj.hard")
    );

    let lost = scenario(&q, "rpc://", "lost");
    assert_eq!(
        exc(&lost["die"]),
        ("WorkerLostError", "billiard.exceptions"),
        "{lost}"
    );
    assert_eq!(
        lost["die_once"], "redelivered",
        "acks_late + reject_on_worker_lost requeues"
    );

    let rej = scenario(&q, "rpc://", "reject");
    assert_eq!(exc(&rej["reject"]).0, "Reject", "{rej}");
    assert_eq!(rej["ignore_state"], "PENDING");
    assert_eq!(rej["after"], 4);

    let rv = scenario(&q, "rpc://", "revoke");
    assert_eq!(rv["eta"], "REVOKED", "{rv}");
    assert_eq!(rv["expired"], "REVOKED", "{rv}");
    assert_eq!(rv["terminated"], "REVOKED", "{rv}");
    assert_eq!(rv["after"], 6);

    let e = scenario(&q, "rpc://", "eta");
    assert_eq!(e["eta"], 8);
    assert!(e["waited"].as_f64().unwrap() >= 1.4, "{e}");

    let u = scenario(&q, "rpc://", "unregistered");
    assert_eq!(exc(&u["unregistered"]).0, "NotRegistered", "{u}");
    assert!(!w.log().contains("panicked"), "the worker never panicked");
    drop(w);
    block_on(delete_queue(&q));
}

#[test]
fn python_tasks_with_redis_results_chords_and_states() {
    let q = unique_queue("it-pyr");
    let w = Worker::start_python(&q, REDIS, "", &["-c", "2"]);
    let c = scenario(&q, REDIS, "canvas");
    assert_eq!(c["chain"], 6);
    assert_eq!(c["link"], 12);
    assert_eq!(c["group"], json!([0, 2, 4]));
    assert_eq!(exc(&c["link_error_failed"]), ("Boom", "proj"));
    let errback = c["link_error"].as_str().unwrap_or_default();
    assert!(errback.starts_with("errback for "), "{c}");
    let c = scenario(&q, REDIS, "chord");
    assert_eq!(c["chord"], 12, "{c}");
    let s = scenario(&q, REDIS, "states");
    assert_eq!(s["progress_state"], "PROGRESS", "{s}");
    assert_eq!(s["progress_meta"], json!({"done": 1}));
    assert_eq!(s["progress"], "finished");
    assert_eq!(s["spawned"], 3);
    let l = scenario(&q, REDIS, "limits");
    assert_eq!(
        exc(&l["hard"]),
        ("TimeLimitExceeded", "billiard.exceptions"),
        "{l}"
    );
    let rv = scenario(&q, REDIS, "revoke");
    assert_eq!(rv["terminated"], "REVOKED", "{rv}");
    drop(w);
    block_on(delete_queue(&q));
}

#[test]
fn python_chords_with_a_database_backend() {
    let q = unique_queue("it-pydb");
    let w = Worker::start_python(&q, POSTGRES, "", &["-c", "2"]);
    let c = scenario(&q, POSTGRES, "chord");
    assert_eq!(c["chord"], 12, "chord_unlock polls the database: {c}");
    drop(w);
    block_on(delete_queue(&q));
}
