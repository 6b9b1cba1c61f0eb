//! `worker -A proj`: a Python Celery app's own tasks (`tests/python/proj.py`), run in Python
//! children through Celery's tracer, driven by Celery's own client API
//! (`tests/python/proj_client.py`: canvases included), with the rpc://, redis:// and
//! PostgreSQL result backends. The worker never writes these results itself: the children
//! and the helper (Celery's code) do.

use std::time::Duration;

use serde_json::{Value, json};

use crate::block_on;
use crate::kit::{
    Worker, celery_control, celery_inspect, delete_queue, eventually, python, python_amqp_url,
    repo, unique_queue, worker_command,
};

const REDIS: &str = "redis://127.0.0.1:6379/3";
const POSTGRES: &str = "db+postgresql+psycopg2://postgres@127.0.0.1:5432/test";

/// Runs one scenario of the client against `queue`; returns what it saw.
fn scenario(queue: &str, backend: &str, name: &str) -> Value {
    scenario_with(queue, backend, name, &[])
}

/// Sends task `name` with `args` (JSON) without waiting; returns its id.
fn send(queue: &str, name: &str, args: &str) -> String {
    let sent = scenario_with(queue, REDIS, "send", &["--task", name, "--args", args]);
    sent["id"].as_str().unwrap_or_default().to_owned()
}

/// Sends task `name` with `args` (JSON) and waits for its outcome (redis results).
fn call(queue: &str, name: &str, args: &str) -> Value {
    let id = send(queue, name, args);
    scenario_with(queue, REDIS, "wait", &["--id", &id])
}

/// [`scenario`] with more arguments.
fn scenario_with(queue: &str, backend: &str, name: &str, extra: &[&str]) -> Value {
    let mut args = vec![name, "--queue", queue, "--timeout", "40"];
    args.extend_from_slice(extra);
    crate::kit::proj_client(&args, &[("RESULT_BACKEND", backend)])
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
    let w = Worker::builder(&q)
        .proj("rpc://", "")
        .concurrency(2)
        .start();
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

    let rr = scenario(&q, "rpc://", "revoke_reserved");
    assert_eq!(rr["reserved"], "REVOKED", "{rr}");
    assert_eq!(rr["busy"], json!([2, 2]));

    let e = scenario(&q, "rpc://", "eta");
    assert_eq!(e["eta"], 8);
    assert!(e["waited"].as_f64().unwrap() >= 1.4, "{e}");

    let p = scenario_with(&q, "rpc://", "pickle", &["--timeout", "3"]);
    assert_eq!(
        p["exc"], "TimeoutError",
        "not run: the app accepts JSON only: {p}"
    );
    w.wait_for_log("application/x-python-serialize", Duration::from_secs(5));

    let u = scenario(&q, "rpc://", "unregistered");
    assert_eq!(exc(&u["unregistered"]).0, "NotRegistered", "{u}");
    assert!(!w.log().contains("panicked"), "the worker never panicked");
    drop(w);
    block_on(delete_queue(&q));
}

#[test]
fn python_tasks_with_redis_results_chords_and_states() {
    let q = unique_queue("it-pyr");
    let w = Worker::builder(&q).proj(REDIS, "").concurrency(2).start();
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
    let elsewhere = scenario_with(&q, REDIS, "revoke_elsewhere", &["--node", &w.nodename()]);
    assert_eq!(elsewhere["replies"], 1, "{elsewhere}");
    assert_eq!(
        elsewhere["pending"], "REVOKED",
        "as Celery's _revoke: {elsewhere}"
    );
    assert_eq!(
        elsewhere["started"], "STARTED",
        "left to the worker running it"
    );
    drop(w);
    block_on(delete_queue(&q));
}

#[test]
fn python_chords_with_a_database_backend() {
    let q = unique_queue("it-pydb");
    let w = Worker::builder(&q)
        .proj(POSTGRES, "")
        .concurrency(2)
        .start();
    let c = scenario(&q, POSTGRES, "chord");
    assert_eq!(c["chord"], 12, "chord_unlock polls the database: {c}");
    drop(w);
    block_on(delete_queue(&q));
}

/// Runs the worker binary to completion (a start that fails, `--print-config`) with `-A proj`
/// and the test venv; returns (exit code, stdout, stderr).
fn run_worker(args: &[&str], conf: &str) -> (i32, String, String) {
    let workdir = repo().join("tests/python");
    let out = worker_command()
        .args(["--workdir", workdir.to_str().unwrap()])
        .args(args)
        .env("AMQP_URL", python_amqp_url())
        .env("PROJ_CONF", conf)
        .output()
        .expect("run the worker");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn python_start_failures_stop_with_exit_78_and_the_reason() {
    let py = python().display().to_string();
    let (code, _, err) = run_worker(&["-A", "nosuchproj", "--python", &py], "");
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("ModuleNotFoundError") && err.contains("nosuchproj"),
        "the Python traceback is shown: {err}"
    );
    let (code, _, err) = run_worker(&["-A", "proj", "--python", "/nonexistent/python3"], "");
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("/nonexistent/python3"), "{err}");
    let sqs = r#"{"broker_url": "sqs://:secret@127.0.0.1:6379/0"}"#;
    let (code, _, err) = run_worker(&["-A", "proj", "--python", &py], sqs);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("RabbitMQ") && !err.contains("secret"), "{err}");
    let bad = r#"{"worker_concurrency": "many"}"#;
    let (code, _, err) = run_worker(&["-A", "proj", "--python", &py], bad);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("worker_concurrency"),
        "the setting is named: {err}"
    );
}

#[test]
fn print_config_marks_the_apps_values_and_names_what_is_not_honoured() {
    let py = python().display().to_string();
    let conf = r#"{"worker_concurrency": 3, "worker_prefetch_multiplier": 2,
        "task_acks_late": true, "worker_cancel_long_running_tasks_on_connection_loss": true}"#;
    let args = ["--print-config", "-A", "proj", "--python", &py];
    let (code, out, err) = run_worker(&[&args[..], &["--prefetch-multiplier", "5"]].concat(), conf);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("concurrency = 3 # from app.conf worker_concurrency"),
        "{out}"
    );
    assert!(
        out.contains("acks_late = true # from app.conf task_acks_late"),
        "{out}"
    );
    assert!(
        out.contains("prefetch_multiplier = 5\n"),
        "the flag wins, unmarked: {out}"
    );
    assert!(
        out.contains("# app.conf settings celeryd does not honour: worker_cancel_long_running"),
        "{out}"
    );
}

#[test]
fn python_worker_inspect_recycling_rate_limits_malformed_and_warm_shutdown() {
    let q = unique_queue("it-pyops");
    let accept = r#"{"accept_content": ["json", "pickle"]}"#;
    let flags = ["-c", "2", "--max-tasks-per-child", "1"];
    let mut w = Worker::builder(&q).proj(REDIS, accept).args(&flags).start();
    let p = scenario(&q, REDIS, "pickle");
    assert_eq!(
        p["result"], 42,
        "a pickled message runs when the app accepts pickle: {p}"
    );
    let out = crate::kit::celery_cli(&["inspect", "registered", "--json", "-d", &w.nodename()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("proj.add") && text.contains("proj.whoami"),
        "{text}"
    );

    let pids = scenario(&q, REDIS, "pids");
    let mut p: Vec<u64> = pids["pids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    p.dedup();
    assert_eq!(
        p.len(),
        3,
        "one task per child (max_tasks_per_child=1): {pids}"
    );

    let rated = scenario(&q, REDIS, "rated");
    let times: Vec<f64> = rated["times"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    assert!(
        times[3] - times[0] >= 1.0,
        "4 tasks at 2/s take over a second: {times:?}"
    );

    block_on(async {
        let conn = crate::kit::connect().await;
        let ch = conn.create_channel().await.unwrap();
        let props = lapin::BasicProperties::default().with_content_type("application/json".into());
        crate::kit::publish_raw(&ch, "", &q, None, props, b"{not json").await;
    });
    w.wait_for_log("Received invalid task message", Duration::from_secs(10));
    assert_eq!(scenario(&q, REDIS, "group")["group"], json!([0, 2, 4]));

    let id = send(&q, "proj.sleep", "[2]");
    w.wait_for_log(
        &format!("Task proj.sleep[{id}] received"),
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(500));
    w.signal(nix::sys::signal::Signal::SIGTERM);
    let done = scenario_with(&q, REDIS, "wait", &["--id", &id, "--timeout", "20"]);
    assert_eq!(
        done["result"], 2,
        "the running task finished during the warm shutdown"
    );
    assert!(w.wait_exit(Duration::from_secs(30)).success());
    block_on(delete_queue(&q));
}

#[test]
fn an_acks_late_python_task_survives_kill_9_of_its_worker() {
    let q = unique_queue("it-pykill");
    let mut w = Worker::builder(&q).proj(REDIS, "").concurrency(1).start();
    let id = send(&q, "proj.slow", "[2]");
    w.wait_for_log(
        &format!("Task proj.slow[{id}] received"),
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(500));
    w.signal(nix::sys::signal::Signal::SIGKILL);
    w.wait_exit(Duration::from_secs(10));
    let w2 = Worker::builder(&q).proj(REDIS, "").concurrency(1).start();
    let done = scenario_with(&q, REDIS, "wait", &["--id", &id, "--timeout", "30"]);
    assert_eq!(
        done["result"], 2,
        "redelivered to the next worker and run there"
    );
    assert!(w2.log().contains(&format!("Task proj.slow[{id}] received")));
    drop(w2);
    block_on(delete_queue(&q));
}

/// The pids of the worker's ready pool children, as `inspect stats` lists them.
fn pool_pids(node: &str) -> Vec<u64> {
    let stats = celery_inspect(node, &["stats"]);
    let mut pids: Vec<u64> = stats["pool"]["processes"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// Waits until the pool has `n` ready children; returns their pids.
fn pool_of(node: &str, n: usize, what: &str) -> Vec<u64> {
    let mut pids = Vec::new();
    eventually(Duration::from_secs(20), what, || {
        pids = pool_pids(node);
        pids.len() == n
    });
    pids
}

#[test]
fn python_pool_grows_shrinks_restarts_autoscales_and_recycles_above_max_memory() {
    let q = unique_queue("it-pypool");
    let conf = r#"{"worker_pool_restarts": true}"#;
    let flags = ["-c", "1", "--max-memory-per-child", "196608"];
    let w = Worker::builder(&q).proj(REDIS, conf).args(&flags).start();
    let node = w.nodename();
    let first = pool_of(&node, 1, "one Python child");
    let out = celery_control(&node, &["pool_grow", "1"]);
    assert!(out.contains("pool will grow"), "{out}");
    let grown = pool_of(&node, 2, "two Python children after pool_grow");
    assert!(grown.contains(&first[0]), "{grown:?} keeps {first:?}");
    assert_eq!(call(&q, "proj.add", "[2, 2]")["result"], 4);
    let out = celery_control(&node, &["pool_shrink", "1"]);
    assert!(out.contains("pool will shrink"), "{out}");
    let before = pool_of(&node, 1, "one Python child after pool_shrink");

    let out = celery_control(&node, &["pool_restart"]);
    assert!(out.contains("reload started"), "{out}");
    let mut after = Vec::new();
    eventually(Duration::from_secs(20), "a new Python child", || {
        after = pool_pids(&node);
        after.len() == 1 && after != before
    });

    // Recycling reads the child's resident size after each task (as Celery's
    // max_memory_per_child does): 16 MiB more stays under 192 MiB, 256 MiB more does not.
    let done = call(&q, "proj.hog", "[16]");
    assert_eq!(done["result"], 16, "{done}");
    assert_eq!(pool_pids(&node), after, "no recycling under the limit");
    assert!(!w.log().contains("max_memory_per_child"), "under the limit");
    let done = call(&q, "proj.hog", "[256]");
    assert_eq!(done["result"], 256, "the task itself completes: {done}");
    w.wait_for_log("(max_memory_per_child)", Duration::from_secs(10));
    eventually(
        Duration::from_secs(20),
        "a fresh child after recycling",
        || {
            let now = pool_pids(&node);
            now.len() == 1 && now != after
        },
    );
    assert_eq!(call(&q, "proj.add", "[2, 2]")["result"], 4);
    drop(w);

    let w = Worker::builder(&q)
        .proj(REDIS, "")
        .args(&["--autoscale", "3,1"])
        .start();
    let node = w.nodename();
    pool_of(&node, 1, "autoscale starts at min");
    let ids: Vec<String> = (0..3).map(|_| send(&q, "proj.sleep", "[3]")).collect();
    pool_of(&node, 3, "three Python children under load");
    for id in &ids {
        let done = scenario_with(&q, REDIS, "wait", &["--id", id]);
        assert_eq!(done["result"], 3, "{done}");
    }
    let out = celery_control(&node, &["autoscale", "2", "2"]);
    assert!(out.contains("autoscale now max=2 min=2"), "{out}");
    pool_of(&node, 2, "min raised to 2");
    drop(w);
    block_on(delete_queue(&q));
}
