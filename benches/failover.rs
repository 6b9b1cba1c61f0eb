//! Failover time across a 3-node RabbitMQ cluster of its own (scripts/rabbitmq-cluster.sh:
//! 127.0.0.1:5681..5683; the node on 5672 is not touched). The worker consumes a quorum
//! queue with the three nodes as its failover list while tasks arrive through another node
//! every few milliseconds; the node the worker is connected to is stopped, and two figures
//! are taken per round:
//! - **reconnect**: from the worker's "Connection to the broker lost" to its "Connected to
//!   the broker again." (both from its log; logged once its queues are declared and consumed
//!   on the new node), and
//! - **first task**: from the lost connection to the first task it completes after it
//!   (consuming again, end to end, including the quorum queue's leader election when its
//!   leader was on the stopped node).
//!
//! The stopped node is started again before the next round (about 20 s).
//! Target: reconnect median ≤ 1 s.
//! Run: `cargo bench --profile dev --bench failover` (BENCH_ROUNDS=3).
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub, dead_code)] // a benchmark

#[path = "support.rs"]
mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lapin::{Connection, ConnectionProperties};
use time::OffsetDateTime;

use celeryd_actors::broker::amqp::publish_task;
use celeryd_actors::protocol::encode::{TaskCall, TaskMessage};
use support::{env_or, median_p90};

fn main() {
    support::run(bench());
}

fn script(args: &[&str]) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbitmq-cluster.sh");
    let ok = Command::new(path).args(args).status().unwrap().success();
    assert!(ok, "rabbitmq-cluster.sh {args:?}");
}

fn url(node: usize) -> String {
    format!("amqp://guest:guest@127.0.0.1:568{node}/%2f")
}

/// Seconds since midnight of a Celery-format log line.
fn log_time(line: &str) -> Option<f64> {
    let (hms, ms) = line.get(12..24)?.split_once(',')?;
    let mut p = hms.split(':').map(|x| x.parse::<f64>().ok());
    Some(p.next()?? * 3600.0 + p.next()?? * 60.0 + p.next()?? + ms.parse::<f64>().ok()? / 1000.0)
}

/// The node (1..3) of the last "Connected to broker j of 3." line, and how many there are.
fn connected(log: &str) -> (usize, usize) {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Connected to broker "))
        .collect();
    let node = lines
        .last()
        .and_then(|l| l.split("Connected to broker ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (node, lines.len())
}

async fn bench() {
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    script(&["start"]);
    let dir = tempfile::tempdir().unwrap();
    let queue = format!(
        "bench-failover-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let urls: Vec<String> = (1..=3).map(url).collect();
    let config = format!(
        "[broker]\nurl = \"{}\"\n[task]\nacks_late = true\n[[task.queues]]\nname = \"{queue}\"\n\
         queue_arguments = {{ \"x-queue-type\" = \"quorum\" }}\n",
        urls.join(";")
    );
    std::fs::write(dir.path().join("w.toml"), config).unwrap();
    let log_path = dir.path().join("worker.log");
    let mut worker = Command::new(env!("CARGO_BIN_EXE_worker"))
        .arg("--config")
        .arg(dir.path().join("w.toml"))
        .args([
            "-Q",
            &queue,
            "-l",
            "info",
            "-n",
            "bench-failover@%h",
            "-c",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("start worker");
    let read = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !read().contains("Consuming from queue.") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut reconnect, mut first_task) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (node, seen) = connected(&read());
        assert!(node > 0, "not connected: {}", read());
        // Tasks keep arriving through another node, every 5 ms.
        let via = node % 3 + 1;
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = {
            let (stop, queue, url) = (stop.clone(), queue.clone(), url(via));
            tokio::spawn(async move {
                let conn = Connection::connect(&url, ConnectionProperties::default())
                    .await
                    .unwrap();
                let ch = conn.create_channel().await.unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let call = TaskCall {
                        name: "tasks.noop".into(),
                        origin: "bench@localhost".into(),
                        ..Default::default()
                    };
                    let msg = TaskMessage::new(&call, OffsetDateTime::now_utc());
                    if publish_task(&ch, &queue, &msg).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let _ = conn.close(200, "bye".into()).await;
            })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = read().len();
        script(&["stop-node", &node.to_string()]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while (connected(&read()).1 == seen
            || !read()[before..].contains("Connected to the broker again."))
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        let _ = publisher.await;
        let log = read();
        let after = &log[before..];
        let lost = after
            .lines()
            .find(|l| l.contains("Connection to the broker lost"))
            .and_then(log_time);
        let back = after
            .lines()
            .find(|l| l.contains("Connected to the broker again."))
            .and_then(log_time);
        let done = after
            .lines()
            .skip_while(|l| !l.contains("Connection to the broker lost"))
            .find(|l| l.contains("tasks.noop[") && l.contains("succeeded"))
            .and_then(log_time);
        let (Some(lost), Some(back)) = (lost, back) else {
            eprintln!("round {round}: no failover seen in the log:\n{log}");
            break;
        };
        let (now_on, _) = connected(&log);
        reconnect.push(back - lost);
        if let Some(done) = done {
            first_task.push(done - lost);
        }
        println!(
            "round {round}: node {node} stopped → on node {now_on}: reconnect {:.3} s, first task {}",
            back - lost,
            done.map(|d| format!("{:.3} s", d - lost))
                .unwrap_or_else(|| "none".into())
        );
        script(&["start-node", &node.to_string()]);
    }
    let pid = nix::unistd::Pid::from_raw(worker.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = worker.wait();
    script(&["stop"]);
    let range = |v: &[f64]| {
        let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = v.iter().cloned().fold(0.0, f64::max);
        (lo, hi)
    };
    let (lo, hi) = range(&reconnect);
    let (m, _) = median_p90(&mut reconnect);
    println!(
        "failover (node stopped → consuming on another): reconnect median {m:.3} s (range \
         {lo:.3}–{hi:.3}, {} rounds; target ≤ 1 s)",
        reconnect.len()
    );
    if !first_task.is_empty() {
        let (lo, hi) = range(&first_task);
        let (m, _) = median_p90(&mut first_task);
        println!("first task completed after the loss: median {m:.3} s (range {lo:.3}–{hi:.3})");
    }
}
