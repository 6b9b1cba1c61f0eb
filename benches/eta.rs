//! ETA precision benchmark: how late a held ETA task starts after its ETA on an idle worker
//! (target: within 10 ms). N tasks with ETAs spread 50 ms apart, `track_started`; lateness =
//! arrival of the STARTED result − ETA (so it includes publishing the result).
//! Run: `cargo bench --profile dev --bench eta` (BENCH_ETAS=40).
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub, dead_code)] // a benchmark

#[path = "support.rs"]
mod support;

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use time::OffsetDateTime;

use celeryd_actors::broker::amqp::publish_task;
use celeryd_actors::protocol::encode::{TaskCall, TaskMessage};
use support::{env_or, median_p90, setup, start_worker, teardown};

fn main() {
    support::run(bench());
}

async fn bench() {
    let n: usize = env_or("BENCH_ETAS", 40);
    let (_conn, ch, queue, reply, mut results) = setup("eta").await;
    let dir = tempfile::tempdir().unwrap();
    let worker = start_worker(
        dir.path(),
        &queue,
        "[task]\ntrack_started = true\n",
        &["-c", "2"],
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = OffsetDateTime::now_utc() + time::Duration::seconds(1);
    let mut etas = HashMap::new();
    for i in 0..n {
        let eta = base + time::Duration::milliseconds(50 * i as i64);
        let call = TaskCall {
            name: "tasks.noop".into(),
            eta: Some(eta),
            reply_to: Some(reply.clone()),
            origin: "bench@localhost".into(),
            ..Default::default()
        };
        let msg = TaskMessage::new(&call, OffsetDateTime::now_utc());
        etas.insert(msg.id.clone(), eta);
        publish_task(&ch, &queue, &msg).await.unwrap();
    }
    let mut late = Vec::new();
    while late.len() < n {
        let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(30), results.next()).await
        else {
            break;
        };
        let now = OffsetDateTime::now_utc();
        let body: Value = serde_json::from_slice(&d.data).unwrap();
        if body["status"] == "STARTED" {
            let eta = etas[body["task_id"].as_str().unwrap()];
            late.push((now - eta).as_seconds_f64() * 1e3);
        }
    }
    teardown(worker, &ch, &queue).await;
    let early = late.iter().filter(|l| **l < 0.0).count();
    let (med, p90) = median_p90(&mut late);
    println!(
        "celeryd ETA precision: {} tasks, -c 2, idle worker",
        late.len()
    );
    println!(
        "  start after ETA: median {med:.1} ms, p90 {p90:.1} ms, started early: {early} (target ≤ 10 ms)"
    );
}
