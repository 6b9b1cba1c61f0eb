//! The in-process pools (`-P async`, `threads`, `solo`) through the real binary, the real
//! Python client and the real `celery` CLI: thousands of async tasks at once, limits,
//! terminate, panics, warm shutdown, a task that blocks its thread, and what each pool
//! refuses.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::block_on;
use crate::kit::{
    Worker, call_task, celery_cli, celery_client_command, celery_control, celery_inspect,
    delete_queue, eventually, parse_client_output, spawn_task, unique_queue, worker_command,
};

fn id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `worker …` with `flags` against an unreachable broker: its exit code and stderr (a
/// refusal comes before any connection).
fn refused(flags: &[&str]) -> (Option<i32>, String) {
    let out = worker_command()
        .args(["-b", "amqp://guest:guest@127.0.0.1:1//"])
        .args(flags)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every result of a `--count` call is SUCCESS.
fn all_succeeded(results: &Value) {
    let all = results.as_array().expect("a list of results");
    assert!(all.iter().all(|x| x["state"] == "SUCCESS"), "{results}");
}

fn stats_pool(worker: &Worker) -> Value {
    celery_inspect(&worker.nodename(), &["stats"])["pool"].clone()
}

#[test]
fn async_pool_runs_two_thousand_sleeps_a_thousand_at_a_time() {
    let queue = unique_queue("async2k");
    let worker = Worker::builder(&queue)
        .pool("async")
        .concurrency(1000)
        .start();
    assert!(worker.children().is_empty(), "no child process");
    let pool = stats_pool(&worker);
    assert_eq!(pool["implementation"], "celeryd.pool:AsyncPool", "{pool}");
    assert_eq!(pool["max-concurrency"], 1000, "{pool}");
    assert_eq!(pool["processes"], json!([worker.pid()]), "{pool}");
    let r = call_task(
        &queue,
        "tasks.async_sleep",
        "[0.2]",
        &["--count", "2000", "--timeout", "120"],
    );
    let results = r.as_array().unwrap();
    assert_eq!(results.len(), 2000);
    let ok = results
        .iter()
        .filter(|x| x["state"] == "SUCCESS" && x["result"] == json!(0.2))
        .count();
    assert_eq!(ok, 2000, "every task succeeded");
    let stats = celery_inspect(&worker.nodename(), &["stats"]);
    assert_eq!(stats["total"]["tasks.async_sleep"], 2000, "{stats}");
    // More than one ran at a time: the worker logged a received task while others ran,
    // which `inspect active` sees too when asked during a burst.
    let burst = spawn_task(&queue, "tasks.async_sleep", "[2]", &["--count", "50"]);
    eventually(Duration::from_secs(20), "50 tasks active at once", || {
        celery_inspect(&worker.nodename(), &["active"])
            .as_array()
            .is_some_and(|a| a.len() == 50)
    });
    let active = celery_inspect(&worker.nodename(), &["active"]);
    assert!(
        active
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["worker_pid"] == json!(worker.pid())),
        "in-process tasks run in the worker: {active}"
    );
    let r = parse_client_output(&burst.wait_with_output().unwrap());
    all_succeeded(&r);
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn async_limits_terminate_and_a_panic_beside_healthy_tasks() {
    let queue = unique_queue("asynclim");
    let worker = Worker::builder(&queue)
        .pool("async")
        .concurrency(50)
        .args(&["--soft-time-limit", "0.5", "--time-limit", "5"])
        .start();
    // Soft: the awaited sleep ends with SoftTimeLimitExceeded.
    let r = call_task(&queue, "tasks.async_sleep", "[30]", &[]);
    assert_eq!(r["exc_type"], "SoftTimeLimitExceeded", "{r}");
    assert!(
        worker
            .log()
            .contains("Soft time limit (0.5s) exceeded for tasks.async_sleep[")
    );
    // Hard, from the message: the future is cancelled, the worker goes on.
    let started = std::time::Instant::now();
    let r = call_task(
        &queue,
        "tasks.async_sleep",
        "[30]",
        &["--time-limit", "0.8", "--soft-time-limit", "20"],
    );
    assert_eq!(r["exc_type"], "TimeLimitExceeded", "{r}");
    assert_eq!(r["exc_args"], json!([0.8]), "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "cancelled, not waited for"
    );
    assert!(
        worker
            .log()
            .contains("Hard time limit (0.8s) exceeded for tasks.async_sleep[")
    );
    // Terminate: cancelled, REVOKED terminated.
    let task = id();
    let client = spawn_task(
        &queue,
        "tasks.async_sleep",
        "[4]",
        &["--task-id", &task, "--soft-time-limit", "20"],
    );
    eventually(Duration::from_secs(20), "the task to run", || {
        celery_inspect(&worker.nodename(), &["active"])
            .as_array()
            .is_some_and(|a| a.iter().any(|t| t["id"] == json!(task)))
    });
    let text = celery_control(&worker.nodename(), &["terminate", "KILL", &task]);
    assert!(text.contains(&format!("terminate: {task}")), "{text}");
    let r = parse_client_output(&client.wait_with_output().unwrap());
    assert_eq!(r["state"], "REVOKED", "{r}");
    assert_eq!(r["exc_args"], json!(["terminated"]), "{r}");
    // A panic fails that task only. (The healthy tasks get a soft limit of their own: with
    // RUST_BACKTRACE set, the panicking thread prints a symbolized backtrace first, which
    // holds the async runtime for a few hundred milliseconds on this machine.)
    let healthy = spawn_task(
        &queue,
        "tasks.async_sleep",
        "[0.3]",
        &["--count", "20", "--soft-time-limit", "20"],
    );
    let r = call_task(&queue, "tasks.async_panic", "[\"kaboom\"]", &[]);
    assert_eq!(r["state"], "FAILURE", "{r}");
    assert_eq!(r["exc_type"], "RuntimeError", "{r}");
    assert!(
        r["exc_message"]
            .as_str()
            .unwrap_or_default()
            .contains("kaboom"),
        "{r}"
    );
    let r = parse_client_output(&healthy.wait_with_output().unwrap());
    all_succeeded(&r);
    // Sync tasks run too (on the pool's threads), and the worker is the same process.
    let r = call_task(&queue, "tasks.add", "[2, 3]", &[]);
    assert_eq!(r["result"], json!(5), "{r}");
    assert!(worker.children().is_empty());
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn a_blocking_async_task_freezes_neither_the_consumer_nor_remote_control() {
    let queue = unique_queue("asyncblock");
    let worker = Worker::builder(&queue)
        .pool("async")
        .concurrency(20)
        .start();
    // More blocked tasks than the runtime has threads: every async worker thread is stuck.
    let blockers = spawn_task(&queue, "tasks.async_block", "[6]", &["--count", "8"]);
    eventually(Duration::from_secs(20), "the blockers to start", || {
        worker.log().matches("Task tasks.async_block[").count() >= 8
    });
    // Remote control answers, and a sync task (a thread of its own) is consumed and done,
    // while the blockers still run.
    let ping = celery_inspect(&worker.nodename(), &["ping"]);
    assert_eq!(ping, json!({"ok": "pong"}), "{ping}");
    let r = call_task(&queue, "tasks.add", "[1, 2]", &[]);
    assert_eq!(r["result"], json!(3), "{r}");
    let active = celery_inspect(&worker.nodename(), &["active"]);
    assert!(
        active
            .as_array()
            .is_some_and(|a| a.iter().any(|t| t["name"] == "tasks.async_block")),
        "the blockers were still running: {active}"
    );
    let r = parse_client_output(&blockers.wait_with_output().unwrap());
    all_succeeded(&r);
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn warm_shutdown_waits_for_in_flight_async_tasks() {
    let queue = unique_queue("asyncwarm");
    let mut worker = Worker::builder(&queue)
        .pool("async")
        .concurrency(100)
        .start();
    let client = celery_client_command(&[
        "call",
        "tasks.async_sleep",
        "--args",
        "[2]",
        "--queue",
        &queue,
        "--count",
        "30",
    ])
    .spawn()
    .unwrap();
    eventually(Duration::from_secs(20), "30 tasks running", || {
        worker.log().matches("Task tasks.async_sleep[").count() >= 30
    });
    worker.signal(Signal::SIGTERM);
    let status = worker.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "warm shutdown exits 0, got {status}");
    let r = parse_client_output(&client.wait_with_output().unwrap());
    let ok = r
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["state"] == "SUCCESS")
        .count();
    assert_eq!(ok, 30, "all finished during the warm shutdown: {r}");
    block_on(delete_queue(&queue));
}

#[test]
fn async_pool_grows_shrinks_autoscales_and_keeps_rate_limits_eta_and_revokes() {
    let queue = unique_queue("asyncops");
    let config = "[task.rate_limits]\n\"tasks.async_sleep\" = \"5/s\"\n";
    let worker = Worker::builder(&queue)
        .config(config)
        .pool("async")
        .concurrency(10)
        .start();
    let node = worker.nodename();
    celery_control(&node, &["pool_grow", "15"]);
    assert_eq!(stats_pool(&worker)["max-concurrency"], 25);
    celery_control(&node, &["pool_shrink", "20"]);
    assert_eq!(stats_pool(&worker)["max-concurrency"], 5);
    // Rate limit: 10 tasks at 5/s, the last no earlier than 9/5 s after the first.
    let started = std::time::Instant::now();
    let r = call_task(&queue, "tasks.async_sleep", "[0]", &["--count", "10"]);
    all_succeeded(&r);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1800),
        "rate limit not applied: {elapsed:?}"
    );
    // ETA: held by the scheduler, then run in the pool.
    let r = call_task(&queue, "tasks.add", "[1, 1]", &["--countdown", "1"]);
    assert_eq!(r["result"], json!(2), "{r}");
    // A revoked id is not run.
    let revoked = id();
    let out = celery_cli(&["control", "revoke", &revoked, "-d", &node]);
    assert!(out.status.success(), "{out:?}");
    let r = call_task(&queue, "tasks.async_sleep", "[0]", &["--task-id", &revoked]);
    assert_eq!(r["state"], "REVOKED", "{r}");
    drop(worker);

    let worker = Worker::builder(&queue)
        .pool("async")
        .args(&["--autoscale", "40,2"])
        .start();
    let node = worker.nodename();
    let burst = spawn_task(&queue, "tasks.async_sleep", "[3]", &["--count", "30"]);
    eventually(Duration::from_secs(20), "the pool to scale up", || {
        let s = celery_inspect(&node, &["stats"]);
        s["autoscaler"]["current"].as_u64().unwrap_or(0) >= 30
    });
    let r = parse_client_output(&burst.wait_with_output().unwrap());
    all_succeeded(&r);
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn threads_and_solo_run_tasks_in_the_worker_with_soft_limits_only() {
    let queue = unique_queue("threads");
    let worker = Worker::builder(&queue)
        .pool("threads")
        .concurrency(4)
        .args(&["--soft-time-limit", "0.5"])
        .start();
    assert!(worker.children().is_empty());
    let pool = stats_pool(&worker);
    assert_eq!(pool["implementation"], "celeryd.pool:ThreadPool", "{pool}");
    assert_eq!(pool["max-concurrency"], 4, "{pool}");
    let r = call_task(&queue, "tasks.sleep", "[0.2]", &["--count", "8"]);
    assert!(
        r.as_array()
            .unwrap()
            .iter()
            .all(|x| x["result"] == json!(0.2)),
        "{r}"
    );
    let r = call_task(&queue, "tasks.sleep", "[30]", &[]);
    assert_eq!(r["exc_type"], "SoftTimeLimitExceeded", "{r}");
    let r = call_task(&queue, "tasks.async_sleep", "[0.1]", &[]);
    assert_eq!(r["result"], json!(0.1), "an async task on a thread: {r}");
    // A hard limit from the message still reports TimeLimitExceeded on time; the thread
    // cannot be stopped and finishes in the background (said in the log).
    let r = call_task(&queue, "tasks.spin", "[2]", &["--time-limit", "0.5"]);
    assert_eq!(r["exc_type"], "TimeLimitExceeded", "{r}");
    assert!(
        worker.log().contains("cannot be stopped"),
        "{}",
        worker.log()
    );
    // The time_limit command refuses a hard limit.
    let out = celery_cli(&[
        "control",
        "time_limit",
        "tasks.sleep",
        "1",
        "2",
        "-d",
        &worker.nodename(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cannot be killed"), "{text}");
    drop(worker);

    let worker = Worker::builder(&queue).pool("solo").start();
    let pool = stats_pool(&worker);
    assert_eq!(pool["implementation"], "celeryd.pool:SoloPool", "{pool}");
    assert_eq!(pool["max-concurrency"], 1, "{pool}");
    let r = call_task(&queue, "tasks.add", "[2, 2]", &["--count", "3"]);
    assert!(
        r.as_array()
            .unwrap()
            .iter()
            .all(|x| x["result"] == json!(4)),
        "{r}"
    );
    let out = celery_cli(&["control", "pool_grow", "2", "-d", &worker.nodename()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("one task at a time"), "{text}");
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn what_a_pool_cannot_do_is_refused_naming_the_key() {
    for (flags, key, says) in [
        (
            &["-P", "threads", "--time-limit", "5"][..],
            "task.time_limit",
            "cannot be killed",
        ),
        (
            &["-P", "solo", "--time-limit", "5"][..],
            "task.time_limit",
            "soft",
        ),
        (
            &["-P", "solo", "-c", "4"][..],
            "worker.concurrency",
            "-P threads -c 4",
        ),
        (
            &["-P", "async", "--max-tasks-per-child", "10"][..],
            "worker.max_tasks_per_child",
            "no child",
        ),
        (
            &["-P", "async", "--max-memory-per-child", "100000"][..],
            "worker.max_memory_per_child",
            "no child",
        ),
        (
            &["-P", "async", "-c", "70000"][..],
            "worker.concurrency",
            "65535",
        ),
        (&["-P", "async", "-A", "proj"][..], "worker.pool", "prefork"),
    ] {
        let (code, err) = refused(flags);
        assert_eq!(code, Some(78), "{flags:?}: {err}");
        assert!(err.contains(key) && err.contains(says), "{flags:?}: {err}");
    }
    let (code, err) = refused(&["-P", "gevent"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("-P async"), "{err}");
}
