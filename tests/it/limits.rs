//! Time limits, recycling and losing a child, through the real binary and the Python client.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;

use crate::block_on;
use crate::kit::{
    Worker, alive, call_task, delete_queue, eventually, parse_client_output, spawn_task,
    unique_queue,
};

#[test]
fn hard_limit_kills_the_child_and_a_replacement_takes_over() {
    let queue = unique_queue("hard");
    let worker = Worker::builder(&queue)
        .concurrency(1)
        .args(&["--time-limit", "1"])
        .start();
    let before = worker.children();
    let r = call_task(&queue, "tasks.spin", "[30]", &[]);
    assert_eq!(r["state"], "FAILURE", "{r}");
    assert_eq!(r["exc_type"], "TimeLimitExceeded", "{r}");
    assert_eq!(r["exc_module"], "billiard.exceptions", "{r}");
    assert!(
        worker
            .log()
            .contains("Hard time limit (1s) exceeded for tasks.spin["),
        "{}",
        worker.log()
    );
    eventually(
        Duration::from_secs(5),
        "the killed child to be gone",
        || before.iter().all(|p| !alive(*p)),
    );
    // The replacement runs the next task normally.
    let r = call_task(&queue, "tasks.add", "[2, 3]", &[]);
    assert_eq!(r["result"], json!(5), "{r}");
    let after = worker.children();
    assert_eq!(after.len(), 1);
    assert_ne!(after, before, "a new child process");
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn soft_limit_is_observed_by_the_task_and_the_child_survives() {
    let queue = unique_queue("soft");
    let worker = Worker::builder(&queue)
        .concurrency(1)
        .args(&["--soft-time-limit", "0.5"])
        .start();
    let before = worker.children();
    let r = call_task(&queue, "tasks.sleep", "[30]", &[]);
    assert_eq!(r["state"], "FAILURE", "{r}");
    assert_eq!(r["exc_type"], "SoftTimeLimitExceeded", "{r}");
    assert!(
        worker
            .log()
            .contains("Soft time limit (0.5s) exceeded for tasks.sleep[")
    );
    // Cleaned up and returned: the same child runs the next task.
    let r = call_task(&queue, "tasks.add", "[1, 1]", &[]);
    assert_eq!(r["result"], json!(2), "{r}");
    assert_eq!(worker.children(), before, "the child was not killed");
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn spin_ignores_the_soft_limit_and_dies_at_the_hard_one_from_message_headers() {
    let queue = unique_queue("both");
    // No limits configured: they come from the message (`timelimit` header, [hard, soft]).
    let worker = Worker::builder(&queue).concurrency(1).start();
    let r = call_task(
        &queue,
        "tasks.spin",
        "[30]",
        &["--time-limit", "1.5", "--soft-time-limit", "0.3"],
    );
    assert_eq!(r["exc_type"], "TimeLimitExceeded", "{r}");
    assert_eq!(r["exc_args"], json!([1.5]), "{r}");
    let log = worker.log();
    assert!(
        log.contains("Soft time limit (0.3s) exceeded for tasks.spin["),
        "{log}"
    );
    assert!(
        log.contains("Hard time limit (1.5s) exceeded for tasks.spin["),
        "{log}"
    );
    // A soft limit alone (no hard one) still reaches the task.
    let r = call_task(&queue, "tasks.sleep", "[30]", &["--soft-time-limit", "0.3"]);
    assert_eq!(r["exc_type"], "SoftTimeLimitExceeded", "{r}");
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn children_are_recycled_after_max_tasks_without_losing_work() {
    let queue = unique_queue("recycle");
    let worker = Worker::builder(&queue)
        .concurrency(1)
        .args(&["--max-tasks-per-child", "3"])
        .start();
    let first = worker.children();
    let r = call_task(&queue, "tasks.add", "[1, 2]", &["--count", "10"]);
    let results = r.as_array().unwrap();
    assert!(results.iter().all(|x| x["result"] == 3), "{r}");
    assert_eq!(
        worker
            .log()
            .matches("after 3 tasks (max_tasks_per_child)")
            .count(),
        3,
        "{}",
        worker.log()
    );
    eventually(
        Duration::from_secs(5),
        "the first child to be replaced",
        || first.iter().all(|p| !alive(*p)) && worker.children().len() == 1,
    );
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn children_are_recycled_above_max_memory() {
    let queue = unique_queue("memory");
    let worker = Worker::builder(&queue)
        .concurrency(1)
        .args(&["--max-memory-per-child", "65536"])
        .start();
    let r = call_task(&queue, "tasks.hog", "[8]", &[]);
    assert_eq!(r["result"], json!(8), "{r}");
    assert!(
        !worker.log().contains("max_memory_per_child"),
        "8 MiB stays under 64 MiB"
    );
    let r = call_task(&queue, "tasks.hog", "[128]", &[]);
    assert_eq!(r["result"], json!(128), "the task itself completes: {r}");
    worker.wait_for_log("(max_memory_per_child)", Duration::from_secs(5));
    let r = call_task(&queue, "tasks.add", "[2, 2]", &[]);
    assert_eq!(r["result"], json!(4), "{r}");
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn child_killed_from_outside_gives_worker_lost_and_pool_refills() {
    let queue = unique_queue("lost");
    let worker = Worker::builder(&queue).concurrency(2).start();
    let client = spawn_task(&queue, "tasks.sleep", "[30]", &[]);
    worker.wait_for_log("Task tasks.sleep[", Duration::from_secs(20));
    // Find the busy child: kill both children's candidates one at a time would change the
    // test; the sleeping one is the one whose task started, so kill every child and expect
    // exactly one lost task.
    std::thread::sleep(Duration::from_millis(200));
    for pid in worker.children() {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    }
    let r = parse_client_output(&client.wait_with_output().unwrap());
    assert_eq!(r["exc_type"], "WorkerLostError", "{r}");
    assert!(
        r["exc_message"]
            .as_str()
            .unwrap()
            .contains("signal 9 (SIGKILL)"),
        "{r}"
    );
    eventually(Duration::from_secs(10), "pool back to 2 children", || {
        worker.children().len() == 2
    });
    let r = call_task(&queue, "tasks.add", "[5, 5]", &[]);
    assert_eq!(r["result"], json!(10), "{r}");
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn children_that_cannot_start_are_retried_with_backoff_not_in_a_loop() {
    // A deploy replaced the binary under a running worker: new children cannot start until
    // the file is back.
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("worker");
    std::fs::copy(env!("CARGO_BIN_EXE_worker"), &exe).unwrap();
    let queue = unique_queue("nostart");
    let worker = Worker::builder(&queue).exe(&exe).concurrency(1).start();
    std::fs::remove_file(&exe).unwrap();
    for pid in worker.children() {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    }
    worker.wait_for_log("Child process failed to start", Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(2));
    let attempts = worker
        .log()
        .matches("Child process failed to start")
        .count();
    assert!(
        (2..=12).contains(&attempts),
        "backoff, not a hot loop: {attempts} attempts in ~2 s"
    );
    std::fs::copy(env!("CARGO_BIN_EXE_worker"), &exe).unwrap();
    eventually(Duration::from_secs(15), "the pool to recover", || {
        worker.children().len() == 1
    });
    let r = call_task(&queue, "tasks.add", "[20, 22]", &[]);
    assert_eq!(r["result"], json!(42), "{r}");
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn time_limit_changed_at_runtime_by_the_celery_cli() {
    let queue = unique_queue("tl-cli");
    let worker = Worker::builder(&queue).concurrency(1).start();
    let node = worker.nodename();
    let out = crate::kit::celery_cli(&[
        "control",
        "time_limit",
        "tasks.spin",
        "0.2",
        "0.5",
        "-d",
        &node,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("time limits set successfully"), "{text}");
    let r = call_task(&queue, "tasks.spin", "[30]", &[]);
    assert_eq!(r["exc_type"], "TimeLimitExceeded", "{r}");
    assert_eq!(r["exc_args"], json!([0.5]), "{r}");
    assert!(
        worker
            .log()
            .contains("Soft time limit (0.2s) exceeded for tasks.spin[")
    );
    drop(worker);
    block_on(delete_queue(&queue));
}
