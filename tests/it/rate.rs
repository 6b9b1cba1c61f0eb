//! Rate limits: a limited task is spaced out while other tasks keep flowing, tasks waiting for
//! a token never fill the prefetch window, and a rate too small to honour is refused (by
//! remote control and in the config).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::block_on;
use crate::kit::{
    Worker, alive, amqp_url, assert_healthy, call_task, celery_client, control_call, delete_queue,
    error_text, parse_client_output, spawn_task, unique_queue, with_worker, worker_command,
    worker_ctl,
};

#[test]
fn rate_limited_task_is_spaced_and_others_keep_flowing() {
    let queue = unique_queue("rate");
    let config = "[task.rate_limits]\n\"tasks.add\" = \"5/s\"\n";
    let worker = Worker::builder(&queue)
        .config(config)
        .concurrency(2)
        .start();
    let started = Instant::now();
    let adds = spawn_task(&queue, "tasks.add", "[1, 1]", &["--count", "20"]);
    worker.wait_for_log("Task tasks.add[", Duration::from_secs(20));
    let noops = celery_client(&["call", "tasks.noop", "--queue", &queue, "--count", "3"]);
    assert!(
        noops
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["state"] == "SUCCESS"),
        "{noops}"
    );
    let adds = parse_client_output(&adds.wait_with_output().unwrap());
    let elapsed = started.elapsed();
    assert!(
        adds.as_array()
            .unwrap()
            .iter()
            .all(|r| r["result"] == json!(2)),
        "{adds}"
    );
    // 20 tasks at 5/s: the last can start no earlier than 19/5 s after the first.
    assert!(
        elapsed >= Duration::from_millis(3800),
        "rate limit not applied: {elapsed:?}"
    );
    // The unlimited tasks did not wait behind the limited ones.
    let log = worker.log();
    let last = |needle: &str| {
        log.lines()
            .collect::<Vec<_>>()
            .iter()
            .rposition(|l| l.contains(needle) && l.contains("succeeded"))
            .unwrap()
    };
    assert!(last("Task tasks.noop[") < last("Task tasks.add["), "{log}");
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn rate_limit_changed_at_runtime_by_the_celery_cli() {
    let queue = unique_queue("rate-cli");
    let worker = Worker::builder(&queue).concurrency(2).start();
    let node = worker.nodename();
    let out = crate::kit::celery_cli(&["control", "rate_limit", "tasks.nope", "1/s", "-d", &node]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("unknown task"),
        "{out:?}"
    );
    let out = crate::kit::celery_cli(&["control", "rate_limit", "tasks.add", "4/s", "-d", &node]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("new rate limit set successfully"), "{text}");
    let started = Instant::now();
    let r = call_task(&queue, "tasks.add", "[1, 2]", &["--count", "5"]);
    assert!(
        r.as_array().unwrap().iter().all(|x| x["result"] == 3),
        "{r}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "5 tasks at 4/s: {:?}",
        started.elapsed()
    );
    let out = crate::kit::celery_cli(&["control", "rate_limit", "tasks.add", "0", "-d", &node]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rate limit disabled successfully"),
        "{out:?}"
    );
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn a_tiny_rate_limit_is_refused_remotely_and_in_the_config() {
    let queue = unique_queue("tinyrate");
    let worker = Worker::builder(&queue).concurrency(1).start();
    let node = worker.nodename();
    for rate in ["1e-300/s", "1e-12", "1e400/s", "-1/m"] {
        let reply = control_call(
            &node,
            "rate_limit",
            json!({"task_name": "tasks.add", "rate_limit": rate}),
        );
        assert!(
            error_text(&reply).contains("Invalid rate limit"),
            "{rate}: {reply}"
        );
    }
    // The task still runs, at once: the limit was never set.
    assert_healthy(&worker, &queue);
    assert!(alive(worker.pid() as i32));
    drop(worker);
    // The same value in the config refuses the start, naming the key, instead of a crash loop.
    let out = worker_command()
        .args(["--print-config"])
        .env("CELERYD_TASK_DEFAULT_RATE_LIMIT", "1e-300/s")
        .env("CELERYD_BROKER_URL", amqp_url())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("task.default_rate_limit"), "{err}");
    block_on(delete_queue(&queue));
}

#[test]
fn rate_limited_tasks_waiting_for_a_token_do_not_block_other_tasks() {
    with_worker(
        "ratewindow",
        |w| {
            w.config(
                "[worker]\nprefetch_multiplier = 2\n[task.rate_limits]\n\"tasks.noop\" = \"1/m\"\n",
            )
            .concurrency(1)
        },
        |worker, queue| {
            // Prefetch 2 (-c 1 × 2): eight tasks waiting for a token would fill it four times over.
            let limited = spawn_task(queue, "tasks.noop", "[]", &["--count", "8", "--no-wait"]);
            assert!(limited.wait_with_output().unwrap().status.success());
            worker.wait_for_log("Task tasks.noop[", Duration::from_secs(30));
            // Other tasks still flow: each is delivered and runs while the seven wait.
            let r = call_task(queue, "tasks.add", "[1, 2]", &["--count", "5"]);
            let results: Vec<&Value> = r.as_array().unwrap().iter().map(|x| &x["result"]).collect();
            assert_eq!(results, vec![&json!(3); 5], "{r}");
            let log = worker.log();
            let noops_done = log
                .lines()
                .filter(|l| l.contains("Task tasks.noop[") && l.contains("succeeded"))
                .count();
            assert!(
                noops_done < 8,
                "the adds ran while rate-limited tasks still waited ({noops_done} of 8 done)"
            );
            let (_, out, _) = worker_ctl(&["reserved", "--json", "-d", &worker.nodename()]);
            let reserved: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(
                reserved[worker.nodename()].as_array().map(Vec::len),
                Some(8 - noops_done),
                "the rest still wait, reserved: {reserved}"
            );
        },
    );
}
