//! Warm shutdown lets running tasks finish; acks_late + kill -9 loses nothing.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;

use crate::block_on;
use crate::support::{
    Worker, alive, call_task, celery_client_command, delete_queue, eventually, parse_client_output,
    spawn_task, unique_queue,
};

#[test]
fn term_lets_the_running_task_finish_and_exits_zero() {
    let queue = unique_queue("warm");
    let mut worker = Worker::start(&queue, "", &["-c", "1"]);
    let client = celery_client_command(&[
        "call",
        "tasks.sleep",
        "--args",
        "[2]",
        "--kwargs",
        "{}",
        "--queue",
        &queue,
    ])
    .spawn()
    .unwrap();
    worker.wait_for_log("Task tasks.sleep[", Duration::from_secs(20));
    let children = worker.children();
    assert_eq!(children.len(), 1, "one child process with -c 1");
    worker.signal(Signal::SIGTERM);
    let status = worker.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "warm shutdown exits 0, got {status}");
    let r = parse_client_output(&client.wait_with_output().unwrap());
    assert_eq!(
        r["state"], "SUCCESS",
        "the task finished during warm shutdown: {r}"
    );
    assert_eq!(r["result"], json!(2.0));
    assert!(worker.log().contains("Warm shutdown"));
    eventually(Duration::from_secs(5), "children to be gone", || {
        children.iter().all(|p| !alive(*p))
    });
    block_on(delete_queue(&queue));
}

#[test]
fn acks_late_task_survives_kill_9_of_the_worker() {
    let queue = unique_queue("killed");
    let config = "[task]\nacks_late = true\n";
    let worker = Worker::start(&queue, config, &["-c", "1"]);
    let client = celery_client_command(&[
        "call",
        "tasks.sleep",
        "--args",
        "[1.5]",
        "--kwargs",
        "{}",
        "--queue",
        &queue,
        "--timeout",
        "60",
    ])
    .spawn()
    .unwrap();
    worker.wait_for_log("Task tasks.sleep[", Duration::from_secs(20));
    let children = worker.children();
    assert!(!children.is_empty());
    worker.signal(Signal::SIGKILL);
    // No orphans: the children die with the worker.
    eventually(
        Duration::from_secs(5),
        "children to die with the worker",
        || children.iter().all(|p| !alive(*p)),
    );
    drop(worker);
    let again = Worker::start(&queue, config, &["-c", "1"]);
    let r = parse_client_output(&client.wait_with_output().unwrap());
    assert_eq!(
        r["state"], "SUCCESS",
        "redelivered and completed after restart: {r}"
    );
    assert_eq!(r["result"], json!(1.5));
    assert!(again.log().contains("Task tasks.sleep["));
    drop(again);
    block_on(delete_queue(&queue));
}

#[test]
fn warm_shutdown_hands_prefetched_tasks_back_to_the_broker() {
    let queue = unique_queue("handback");
    let mut worker = Worker::start(&queue, "", &["-c", "1"]);
    call_task(&queue, "tasks.sleep", "[4]", &["--no-wait"]);
    crate::support::celery_client(&[
        "call",
        "tasks.noop",
        "--queue",
        &queue,
        "--count",
        "3",
        "--no-wait",
    ]);
    // All four are delivered (prefetch 4 with -c 1); one runs, three wait in the pool.
    eventually(Duration::from_secs(20), "four deliveries", || {
        worker.log().matches("] received").count() == 4
    });
    worker.signal(Signal::SIGTERM);
    let status = worker.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status}");
    assert!(
        worker
            .log()
            .contains("Returning unstarted tasks to the broker. (count=3)"),
        "{}",
        worker.log()
    );
    let depth = block_on(async {
        crate::support::queue_depth(&crate::support::connect().await, &queue).await
    });
    assert_eq!(depth, 3, "the three unstarted tasks are back in the queue");
    block_on(delete_queue(&queue));
}

#[test]
fn second_term_is_a_cold_shutdown() {
    let queue = unique_queue("cold");
    let mut worker = Worker::start(&queue, "", &["-c", "1"]);
    call_task(&queue, "tasks.sleep", "[30]", &["--no-wait"]);
    worker.wait_for_log("Task tasks.sleep[", Duration::from_secs(20));
    let children = worker.children();
    worker.signal(Signal::SIGTERM);
    worker.wait_for_log("Warm shutdown", Duration::from_secs(5));
    worker.signal(Signal::SIGTERM);
    let status = worker.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "cold shutdown exits 1 at once");
    assert!(worker.log().contains("Cold shutdown"));
    eventually(Duration::from_secs(5), "children killed", || {
        children.iter().all(|p| !alive(*p))
    });
    block_on(delete_queue(&queue));
}

#[test]
fn hup_restarts_in_place_repeatedly_without_losing_tasks() {
    let queue = unique_queue("hup");
    let worker = Worker::start(&queue, "", &["-c", "1"]);
    let pid = worker.pid() as i32;
    let client = spawn_task(&queue, "tasks.sleep", "[1]", &[]);
    worker.wait_for_log("Task tasks.sleep[", Duration::from_secs(20));
    worker.signal(Signal::SIGHUP);
    let r = parse_client_output(&client.wait_with_output().unwrap());
    assert_eq!(
        r["state"], "SUCCESS",
        "the running task finished across the restart: {r}"
    );
    for round in 2..=3 {
        eventually(
            Duration::from_secs(20),
            "the worker to be ready again",
            || worker.log().matches(" ready. (hostname=").count() == round,
        );
        assert!(alive(pid), "same process (re-exec keeps the pid)");
        let r = call_task(&queue, "tasks.add", "[2, 2]", &[]);
        assert_eq!(r["result"], json!(4), "round {round}: {r}");
        if round == 2 {
            worker.signal(Signal::SIGHUP);
        }
    }
    assert!(worker.log().contains("Restarting (SIGHUP)"));
    drop(worker);
    block_on(delete_queue(&queue));
}
