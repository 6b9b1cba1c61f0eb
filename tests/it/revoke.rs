//! Revokes through the real `celery control` CLI: a revoked task is skipped wherever it is
//! (not yet received, reserved, held for its ETA), `terminate` kills a running one, and with a
//! statedb revokes survive kill -9.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;

use crate::block_on;
use crate::kit::{
    Worker, alive, call_task, celery_cli, delete_queue, eventually, parse_client_output,
    spawn_task, unique_queue,
};

fn control(worker: &Worker, args: &[&str]) -> String {
    let node = worker.nodename();
    let mut a = vec!["control"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-d", &node]);
    let out = celery_cli(&a);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "celery {a:?} failed: {text}");
    text
}

fn id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[test]
fn revoked_tasks_are_skipped_wherever_they_wait() {
    let queue = unique_queue("revoke");
    let worker = Worker::builder(&queue).concurrency(1).start();
    // Not yet received.
    let early = id();
    let text = control(&worker, &["revoke", &early]);
    assert!(
        text.contains(&format!("tasks {{'{early}'}} flagged as revoked")),
        "{text}"
    );
    let r = call_task(&queue, "tasks.add", "[1, 1]", &["--task-id", &early]);
    assert_eq!(r["state"], "REVOKED", "{r}");
    // Reserved behind a running task.
    let busy = spawn_task(&queue, "tasks.sleep", "[5]", &[]);
    worker.wait_for_log("Task tasks.sleep[", Duration::from_secs(20));
    let reserved = id();
    let waiting = spawn_task(&queue, "tasks.add", "[1, 1]", &["--task-id", &reserved]);
    worker.wait_for_log(
        &format!("Task tasks.add[{reserved}] received"),
        Duration::from_secs(20),
    );
    control(&worker, &["revoke", &reserved]);
    let r = parse_client_output(&waiting.wait_with_output().unwrap());
    assert_eq!(r["state"], "REVOKED", "{r}");
    let r = parse_client_output(&busy.wait_with_output().unwrap());
    assert_eq!(
        r["state"], "SUCCESS",
        "a revoke without terminate leaves running tasks alone: {r}"
    );
    // Held for its ETA.
    let held = id();
    let eta = spawn_task(
        &queue,
        "tasks.add",
        "[1, 1]",
        &["--countdown", "30", "--task-id", &held],
    );
    worker.wait_for_log(
        &format!("Task tasks.add[{held}] received (eta"),
        Duration::from_secs(20),
    );
    control(&worker, &["revoke", &held]);
    let r = parse_client_output(&eta.wait_with_output().unwrap());
    assert_eq!(r["state"], "REVOKED", "{r}");
    let out = celery_cli(&["inspect", "revoked", "-d", &worker.nodename()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&early) && text.contains(&reserved) && text.contains(&held),
        "{text}"
    );
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn terminate_kills_the_running_task_and_the_pool_refills() {
    let queue = unique_queue("terminate");
    let worker = Worker::builder(&queue).concurrency(1).start();
    let task = id();
    let client = spawn_task(&queue, "tasks.sleep", "[30]", &["--task-id", &task]);
    worker.wait_for_log(
        &format!("Task tasks.sleep[{task}] received"),
        Duration::from_secs(20),
    );
    let before = worker.children();
    std::thread::sleep(Duration::from_millis(200));
    let text = control(&worker, &["terminate", "KILL", &task]);
    assert!(text.contains(&format!("terminate: {task}")), "{text}");
    let r = parse_client_output(&client.wait_with_output().unwrap());
    assert_eq!(r["state"], "REVOKED", "{r}");
    assert_eq!(r["exc_args"], json!(["terminated"]), "{r}");
    eventually(Duration::from_secs(5), "the killed child replaced", || {
        before.iter().all(|p| !alive(*p)) && worker.children().len() == 1
    });
    let r = call_task(&queue, "tasks.add", "[2, 3]", &[]);
    assert_eq!(r["result"], json!(5), "{r}");
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn revokes_survive_kill_9_with_a_statedb() {
    let dir = tempfile::tempdir().unwrap();
    let statedb = dir.path().join("state");
    let queue = unique_queue("statedb");
    // Without mingle: the running workers' revoked ids would be stored too.
    let flags = [
        "-c",
        "1",
        "--without-mingle",
        "--statedb",
        statedb.to_str().unwrap(),
    ];
    let worker = Worker::builder(&queue).args(&flags).start();
    let revoked = id();
    control(&worker, &["revoke", &revoked]);
    worker.signal(Signal::SIGKILL);
    drop(worker);
    let again = Worker::builder(&queue).args(&flags).start();
    assert!(
        again
            .log()
            .contains("Loaded 1 revoked task ids from the statedb."),
        "{}",
        again.log()
    );
    let r = call_task(&queue, "tasks.add", "[1, 1]", &["--task-id", &revoked]);
    assert_eq!(r["state"], "REVOKED", "{r}");
    drop(again);
    block_on(delete_queue(&queue));
}
