//! ETA / countdown / expires through the Python client; held ETA tasks are never lost and
//! never starve immediate work; a far ETA beside a queue whose name is a topic pattern runs
//! once.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;

use celeryd_actors::broker::amqp::publish_task;
use celeryd_actors::protocol::encode::{TaskCall, TaskMessage};

use crate::block_on;
use crate::kit::{
    Worker, alive, call_task, connect, delete_queue, eventually, parse_client_output, queue_depth,
    spawn_task, unique_queue,
};

#[test]
fn countdown_eta_and_expires_from_python() {
    let queue = unique_queue("eta");
    let worker = Worker::builder(&queue).concurrency(1).start();
    let t = Instant::now();
    let r = call_task(&queue, "tasks.add", "[1, 2]", &["--countdown", "1"]);
    assert_eq!(r["result"], json!(3), "{r}");
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "ran before its ETA: {:?}",
        t.elapsed()
    );
    assert!(worker.log().contains("received (eta "), "{}", worker.log());
    // Expired while held for its ETA: REVOKED, not run.
    let r = call_task(
        &queue,
        "tasks.add",
        "[1, 2]",
        &["--countdown", "1", "--expires", "0.5"],
    );
    assert_eq!(r["state"], "REVOKED", "{r}");
    assert_eq!(r["exc_type"], "TaskRevokedError", "{r}");
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn held_eta_task_survives_kill_9_and_warm_shutdown() {
    let queue = unique_queue("eta-kill");
    let worker = Worker::builder(&queue).concurrency(1).start();
    let client = spawn_task(
        &queue,
        "tasks.add",
        "[20, 22]",
        &["--countdown", "4", "--timeout", "60"],
    );
    worker.wait_for_log("received (eta ", Duration::from_secs(20));
    let children = worker.children();
    worker.signal(Signal::SIGKILL);
    eventually(Duration::from_secs(5), "children gone", || {
        children.iter().all(|p| !alive(*p))
    });
    drop(worker);
    // Warm shutdown of the next worker while it holds the task: handed back, not lost.
    let mut second = Worker::builder(&queue).concurrency(1).start();
    second.wait_for_log("received (eta ", Duration::from_secs(20));
    second.signal(Signal::SIGTERM);
    assert!(second.wait_exit(Duration::from_secs(20)).success());
    assert!(
        second
            .log()
            .contains("Returning unstarted tasks to the broker. (count=1)"),
        "{}",
        second.log()
    );
    let third = Worker::builder(&queue).concurrency(1).start();
    let r = parse_client_output(&client.wait_with_output().unwrap());
    assert_eq!(r["result"], json!(42), "the ETA task ran in the end: {r}");
    drop(third);
    block_on(delete_queue(&queue));
}

#[test]
fn held_eta_tasks_do_not_starve_immediate_ones() {
    let queue = unique_queue("eta-starve");
    let worker = Worker::builder(&queue)
        .config("[worker]\neta_hold_max = 0\n")
        .concurrency(2)
        .start();
    let held = 10_000;
    block_on(async {
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        let eta = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        for _ in 0..held {
            let call = TaskCall {
                name: "tasks.noop".into(),
                eta: Some(eta),
                origin: "test@localhost".into(),
                ..Default::default()
            };
            publish_task(
                &ch,
                &queue,
                &TaskMessage::new(&call, time::OffsetDateTime::now_utc()),
            )
            .await
            .unwrap();
        }
        conn.close(200, "bye".into()).await.unwrap();
    });
    let t = Instant::now();
    let r = call_task(
        &queue,
        "tasks.add",
        "[1, 1]",
        &["--count", "1000", "--timeout", "60"],
    );
    assert!(
        r.as_array().unwrap().iter().all(|x| x["result"] == 2),
        "{r}"
    );
    // A figure for the notes, not an assertion (the machine is shared and noisy).
    eprintln!(
        "1000 immediate tasks beside {held} held ETA tasks: {:?}",
        t.elapsed()
    );
    eventually(
        Duration::from_secs(30),
        "all ETA tasks held by the worker",
        || worker.log().matches("received (eta ").count() == held,
    );
    let depth = block_on(async { queue_depth(&connect().await, &queue).await });
    assert_eq!(
        depth, 0,
        "every ETA message delivered and held (unacked), none left behind"
    );
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn far_eta_waits_in_the_broker_not_in_the_worker() {
    let queue = unique_queue("eta-far");
    // Anything due in more than a second is moved to the broker's delay ladder.
    let worker = Worker::builder(&queue)
        .config("[worker]\neta_hold_max = 1\n")
        .concurrency(1)
        .start();
    let t = Instant::now();
    let client = spawn_task(&queue, "tasks.add", "[3, 4]", &["--countdown", "4"]);
    worker.wait_for_log("waits in the broker for ", Duration::from_secs(20));
    // Nothing held by the worker meanwhile: kill it; the message lives in the broker.
    let children = worker.children();
    worker.signal(Signal::SIGKILL);
    eventually(Duration::from_secs(5), "children gone", || {
        children.iter().all(|p| !alive(*p))
    });
    drop(worker);
    let again = Worker::builder(&queue)
        .config("[worker]\neta_hold_max = 1\n")
        .concurrency(1)
        .start();
    let r = parse_client_output(&client.wait_with_output().unwrap());
    assert_eq!(r["result"], json!(7), "{r}");
    assert!(
        t.elapsed() >= Duration::from_millis(3900),
        "not before its ETA: {:?}",
        t.elapsed()
    );
    assert!(
        again.log().contains("Task tasks.add["),
        "the restarted worker ran it"
    );
    drop(again);
    block_on(delete_queue(&queue));
}

#[test]
fn a_far_eta_task_runs_once_beside_a_wildcard_queue_name() {
    let queue = unique_queue("etawild");
    // A queue whose name, unescaped, is a topic pattern matching the first queue's keys.
    let wild = format!("{queue}.#");
    let worker = Worker::builder(&format!("{queue},{wild}"))
        .config("[worker]\neta_hold_max = 1.0\n")
        .concurrency(1)
        .start();
    let r = call_task(&queue, "tasks.add", "[5, 6]", &["--countdown", "4"]);
    assert_eq!(r["result"], json!(11), "{r}");
    std::thread::sleep(Duration::from_secs(3));
    let log = worker.log();
    assert!(
        log.contains("waits in the broker"),
        "went through the ladder"
    );
    let runs = log
        .lines()
        .filter(|l| l.contains("Task tasks.add[") && l.contains("succeeded"))
        .count();
    assert_eq!(runs, 1, "ran once, not once per queue:\n{log}");
    drop(worker);
    block_on(delete_queue(&queue));
    block_on(delete_queue(&wild));
}
