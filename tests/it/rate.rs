//! Rate limits: a limited task is spaced out while other tasks keep flowing.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::block_on;
use crate::support::{
    Worker, call_task, celery_client, delete_queue, parse_client_output, spawn_task, unique_queue,
};

#[test]
fn rate_limited_task_is_spaced_and_others_keep_flowing() {
    let queue = unique_queue("rate");
    let config = "[task.rate_limits]\n\"tasks.add\" = \"5/s\"\n";
    let worker = Worker::start(&queue, config, &["-c", "2"]);
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
    let worker = Worker::start(&queue, "", &["-c", "2"]);
    let node = worker.nodename();
    let out =
        crate::support::celery_cli(&["control", "rate_limit", "tasks.nope", "1/s", "-d", &node]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("unknown task"),
        "{out:?}"
    );
    let out =
        crate::support::celery_cli(&["control", "rate_limit", "tasks.add", "4/s", "-d", &node]);
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
    let out = crate::support::celery_cli(&["control", "rate_limit", "tasks.add", "0", "-d", &node]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rate limit disabled successfully"),
        "{out:?}"
    );
    drop(worker);
    block_on(delete_queue(&queue));
}
