//! Failover across a 3-node RabbitMQ cluster of the test's own (scripts/rabbitmq-cluster.sh:
//! nodes r1..r3@localhost on 127.0.0.1:5681..5683, started and stopped here; the node on
//! 5672 is never touched): the node the worker is connected to is stopped mid-run with
//! acks_late tasks on a quorum queue, and none is lost.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use time::OffsetDateTime;

use celeryd_actors::protocol::encode::{TaskCall, TaskMessage};

use crate::kit::{Worker, eventually, repo, unique_queue};
use crate::{block_on, serial};

/// The cluster for the length of a test; stopped and wiped when dropped.
pub struct Cluster;

impl Cluster {
    pub fn start() -> Cluster {
        cluster(&["start"]);
        Cluster
    }

    /// The failover list of all three nodes, node 1 first.
    pub fn urls() -> String {
        (1..=3)
            .map(|n| format!("amqp://guest:guest@127.0.0.1:568{n}/%2f"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        cluster(&["stop"]);
    }
}

pub fn cluster(args: &[&str]) {
    let status = Command::new(repo().join("scripts/rabbitmq-cluster.sh"))
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "rabbitmq-cluster.sh {args:?}");
}

/// Publishes `n` persistent `name` tasks to `queue` through node `node` (1..3); their ids.
pub async fn publish_via(node: u8, queue: &str, name: &str, n: usize) -> Vec<String> {
    let url = format!("amqp://guest:guest@127.0.0.1:568{node}/%2f");
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let call = TaskCall {
            name: name.into(),
            origin: "faults@localhost".into(),
            ..Default::default()
        };
        let msg = TaskMessage::new(&call, OffsetDateTime::now_utc());
        celeryd_actors::broker::amqp::publish_task(&ch, queue, &msg)
            .await
            .unwrap();
        ids.push(msg.id);
    }
    let _ = conn.close(200, "bye".into()).await;
    ids
}

/// The worker's config: the three nodes as a failover list, a quorum queue, acks_late.
pub fn config(queue: &str) -> String {
    format!(
        "[broker]\nurl = \"{}\"\n[task]\nacks_late = true\n\
         [[task.queues]]\nname = \"{queue}\"\nqueue_arguments = {{ \"x-queue-type\" = \"quorum\" }}\n",
        Cluster::urls()
    )
}

/// Seconds since midnight of a Celery-format log line (`[2026-12-02 22:30:01,123: …`).
pub fn log_time(line: &str) -> Option<f64> {
    let t = line.get(12..24)?; // "22:30:01,123"
    let (hms, ms) = t.split_once(',')?;
    let mut parts = hms.split(':').map(|p| p.parse::<f64>());
    let (h, m, s) = (
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next()?.ok()?,
    );
    Some(h * 3600.0 + m * 60.0 + s + ms.parse::<f64>().ok()? / 1000.0)
}

/// How many times each id was logged as succeeded.
fn successes(log: &str, name: &str) -> HashMap<String, usize> {
    let prefix = format!("Task {name}[");
    let mut done = HashMap::new();
    for line in log.lines() {
        if let Some((id, tail)) = line.split(&prefix).nth(1).and_then(|r| r.split_once(']'))
            && tail.starts_with(" succeeded")
        {
            *done.entry(id.to_owned()).or_insert(0) += 1;
        }
    }
    done
}

#[test]
fn the_workers_node_stopped_mid_run_it_fails_over_and_loses_nothing() {
    let _serial = serial();
    let _cluster = Cluster::start();
    let queue = unique_queue("cluster");
    let worker = Worker::builder(&queue)
        .config_file(&config(&queue))
        .concurrency(2)
        .start();
    // Round-robin from the first URL: on node 1.
    assert!(
        !worker.log().contains("trying the next one"),
        "{}",
        worker.log()
    );
    const N: usize = 3_000;
    // Published through node 2, which stays up: the publisher is not what fails over.
    let ids = block_on(publish_via(2, &queue, "tasks.noop", N));
    eventually(Duration::from_secs(60), "some done on node 1", || {
        successes(&worker.log(), "tasks.noop").len() >= N / 10
    });
    cluster(&["stop-node", "1"]);
    worker.wait_for_log("Connected to broker 2 of 3.", Duration::from_secs(30));
    eventually(Duration::from_secs(120), "every task done", || {
        successes(&worker.log(), "tasks.noop").len() >= N
    });
    let log = worker.log();
    let done = successes(&log, "tasks.noop");
    assert!(
        ids.iter().all(|id| done.contains_key(id)),
        "a task was lost"
    );
    let lost = log
        .lines()
        .find(|l| l.contains("Connection to the broker lost"));
    // Logged once the queues are declared and consumed again.
    let back = log
        .lines()
        .find(|l| l.contains("Connected to the broker again."));
    let gap = lost.and_then(log_time).zip(back.and_then(log_time));
    let duplicates = done.values().sum::<usize>() - done.len();
    eprintln!(
        "cluster failover: {N} acks_late tasks, none lost, {duplicates} run twice; \
         connection lost → consuming on node 2 in {:.3} s",
        gap.map(|(a, b)| b - a).unwrap_or(f64::NAN)
    );
    assert!(
        !log.contains("guest:guest@"),
        "no password in the log: {log}"
    );
    drop(worker);
}
