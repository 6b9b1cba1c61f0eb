//! kill -9 of the worker, a broker restart, and children killed at random, all under load.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use lapin::{Channel, Connection};
use time::OffsetDateTime;

use celeryd_actors::broker::amqp::{TaskQueue, declare_task_queue, publish_task};
use celeryd_actors::protocol::encode::{TaskCall, TaskMessage};

use crate::kit::{Worker, alive, connect, delete_queue, eventually, queue_depth, unique_queue};
use crate::{block_on, serial};

const ACKS_LATE: &str = "[task]\nacks_late = true\n";

/// Publishes `n` persistent `name` tasks (no results wanted) to `queue`; returns their ids.
async fn publish(
    ch: &Channel,
    queue: &str,
    name: &str,
    args: serde_json::Value,
    n: usize,
) -> Vec<String> {
    declare_task_queue(ch, &TaskQueue::plain(queue))
        .await
        .unwrap();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let call = TaskCall {
            name: name.into(),
            args: args.as_array().cloned().unwrap_or_default(),
            origin: "faults@localhost".into(),
            ..Default::default()
        };
        let msg = TaskMessage::new(&call, OffsetDateTime::now_utc());
        publish_task(ch, queue, &msg).await.unwrap();
        ids.push(msg.id);
    }
    ids
}

async fn channel() -> (Connection, Channel) {
    let conn = connect().await;
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

/// How many times each task id was logged as succeeded in `log`.
fn successes(log: &str, name: &str, into: &mut HashMap<String, usize>) {
    let prefix = format!("Task {name}[");
    for line in log.lines() {
        let Some(rest) = line.split(&prefix).nth(1) else {
            continue;
        };
        if let Some((id, tail)) = rest.split_once(']')
            && tail.starts_with(" succeeded")
        {
            *into.entry(id.to_owned()).or_default() += 1;
        }
    }
}

fn counted(logs: &[String], current: &Worker, name: &str) -> HashMap<String, usize> {
    let mut done = HashMap::new();
    for l in logs {
        successes(l, name, &mut done);
    }
    successes(&current.log(), name, &mut done);
    done
}

#[test]
fn kill_9_five_times_during_acks_late_tasks_loses_none() {
    let _serial = serial();
    const N: usize = 10_000;
    let queue = unique_queue("kill9");
    let ids = block_on(async {
        let (conn, ch) = channel().await;
        let ids = publish(&ch, &queue, "tasks.noop", serde_json::json!([]), N).await;
        conn.close(200, "bye".into()).await.unwrap();
        ids
    });
    let mut logs = Vec::new();
    let mut worker = Worker::builder(&queue)
        .config(ACKS_LATE)
        .concurrency(2)
        .start();
    for kill in 1..=5 {
        let target = kill * N / 6;
        eventually(Duration::from_secs(120), "progress before the kill", || {
            counted(&logs, &worker, "tasks.noop").len() >= target
        });
        let children = worker.children();
        worker.signal(nix::sys::signal::Signal::SIGKILL);
        worker.wait_exit(Duration::from_secs(10));
        eventually(
            Duration::from_secs(10),
            "children gone with the worker",
            || children.iter().all(|p| !alive(*p)),
        );
        logs.push(worker.log());
        worker = Worker::builder(&queue)
            .config(ACKS_LATE)
            .concurrency(2)
            .start();
    }
    eventually(Duration::from_secs(180), "every task done", || {
        counted(&logs, &worker, "tasks.noop").len() >= N
    });
    let done = counted(&logs, &worker, "tasks.noop");
    let runs: usize = done.values().sum();
    let duplicates = runs - done.len();
    eprintln!(
        "kill -9 ×5 during {N} acks_late tasks: {} done, {duplicates} run twice",
        done.len()
    );
    assert!(
        ids.iter().all(|id| done.contains_key(id)),
        "a task was lost"
    );
    // Only what was in flight (at most the prefetch count, 8 at -c 2) can run again.
    assert!(duplicates <= 5 * 8, "{duplicates} duplicates");
    block_on(async {
        let conn = connect().await;
        assert_eq!(queue_depth(&conn, &queue).await, 0);
    });
    drop(worker);
    block_on(delete_queue(&queue));
}

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl").args(args).status().unwrap();
    assert!(status.success(), "rabbitmqctl {args:?}");
}

#[test]
fn broker_restart_mid_run_loses_nothing_with_acks_late() {
    let _serial = serial();
    const N: usize = 3_000;
    let queue = unique_queue("restart");
    let ids = block_on(async {
        let (conn, ch) = channel().await;
        let ids = publish(&ch, &queue, "tasks.sleep", serde_json::json!([0.002]), N).await;
        conn.close(200, "bye".into()).await.unwrap();
        ids
    });
    let worker = Worker::builder(&queue)
        .config(ACKS_LATE)
        .concurrency(2)
        .start();
    eventually(Duration::from_secs(60), "a third done", || {
        counted(&[], &worker, "tasks.sleep").len() >= N / 3
    });
    // The whole node: shut down, then started again as scripts/ensure-broker.sh starts it.
    let down = Instant::now();
    rabbitmqctl(&["shutdown"]);
    std::thread::sleep(Duration::from_secs(1));
    let started = Command::new(crate::kit::repo().join("scripts/ensure-broker.sh"))
        .status()
        .unwrap();
    assert!(started.success(), "RabbitMQ did not come back");
    let restarted = down.elapsed();
    worker.wait_for_log("Connected to the broker again", Duration::from_secs(30));
    eprintln!(
        "broker restart: the node was back {:.1} s after the shutdown began (start-up \
         complete); the worker's reconnection was logged by {:.1} s",
        restarted.as_secs_f64(),
        down.elapsed().as_secs_f64()
    );
    eventually(Duration::from_secs(120), "every task done", || {
        counted(&[], &worker, "tasks.sleep").len() >= N
    });
    let done = counted(&[], &worker, "tasks.sleep");
    assert!(
        ids.iter().all(|id| done.contains_key(id)),
        "a task was lost"
    );
    let duplicates = done.values().sum::<usize>() - done.len();
    eprintln!("broker restart during {N} acks_late tasks: none lost, {duplicates} run twice");
    // The worker still answers remote control (its pidbox came back too).
    let (code, out, err) = crate::kit::worker_ctl(&["ping", "-d", &worker.nodename()]);
    assert_eq!(code, 0, "{out}{err}");
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn children_killed_at_random_under_load_are_replaced_and_reported() {
    let _serial = serial();
    const N: usize = 1_000;
    let queue = unique_queue("childkill");
    let ids = block_on(async {
        let (conn, ch) = channel().await;
        let ids = publish(&ch, &queue, "tasks.sleep", serde_json::json!([0.05]), N).await;
        conn.close(200, "bye".into()).await.unwrap();
        ids
    });
    let worker = Worker::builder(&queue).concurrency(4).start();
    let mut seed = 0x2545_f491_u64;
    for _ in 0..100 {
        eventually(Duration::from_secs(10), "pool back to 4 children", || {
            worker.children().len() == 4
        });
        let children = worker.children();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let victim = children[(seed % children.len() as u64) as usize];
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim),
            nix::sys::signal::Signal::SIGKILL,
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    let lost_line = |log: &str, id: &str| log.contains(&format!(") for tasks.sleep[{id}]"));
    eventually(Duration::from_secs(120), "every task reported", || {
        let log = worker.log();
        let done = counted(&[], &worker, "tasks.sleep");
        ids.iter()
            .all(|id| done.contains_key(id) || lost_line(&log, id))
    });
    let log = worker.log();
    let lost = log
        .matches("Task handler raised error: WorkerLostError(")
        .count();
    eprintln!(
        "100 children killed under load: {lost} tasks reported WorkerLostError, the rest succeeded"
    );
    assert!((1..=100).contains(&lost), "{lost}");
    eventually(Duration::from_secs(10), "pool at full size", || {
        worker.children().len() == 4
    });
    drop(worker);
    block_on(delete_queue(&queue));
}
