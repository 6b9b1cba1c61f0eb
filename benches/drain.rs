//! Drain benchmark: preload N `tasks.noop` messages (results on, rpc://), start the real
//! `worker` binary, and measure how fast it empties the queue.
//!
//! Run: `cargo bench --profile dev --bench drain` (env: BENCH_TASKS=20000,
//! BENCH_CONCURRENCY=2, AMQP_URL). Prints tasks/s from the first to the last result, and
//! start -> first result.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub, dead_code)] // a benchmark

#[path = "support.rs"]
mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::ConfirmSelectOptions;

use support::{env_or, publish, setup, start_worker, teardown};

fn main() {
    support::run(bench());
}

async fn bench() {
    let n: usize = env_or("BENCH_TASKS", 20_000);
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 2);
    let (_conn, ch, queue, reply, mut results) = setup("drain").await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let t = Instant::now();
    for _ in 0..n {
        publish(&ch, &queue, &reply, "tasks.noop", Vec::new()).await;
    }
    ch.wait_for_confirms().await.unwrap();
    println!(
        "preloaded {n} tasks.noop messages in {:.2}s",
        t.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let worker = start_worker(dir.path(), &queue, "", &["-c", &concurrency.to_string()]);
    let (mut first, mut got) = (None, 0);
    while got < n {
        match tokio::time::timeout(Duration::from_secs(600), results.next()).await {
            Ok(Some(Ok(_))) => {
                got += 1;
                first.get_or_insert_with(Instant::now);
            }
            _ => break,
        }
    }
    let end = Instant::now();
    teardown(worker, &ch, &queue).await;

    let first = first.expect("no result arrived");
    let span = (end - first).as_secs_f64();
    println!("celeryd drain: {got}/{n} results, -c {concurrency}");
    println!(
        "  start -> first result : {:.1} ms",
        (first - started).as_secs_f64() * 1e3
    );
    println!("  first -> last result  : {span:.2} s");
    println!(
        "  throughput            : {:.0} tasks/s",
        got.saturating_sub(1) as f64 / span.max(1e-9)
    );
    println!(
        "  start -> last result  : {:.2} s ({:.0} tasks/s overall)",
        (end - started).as_secs_f64(),
        got as f64 / (end - started).as_secs_f64()
    );
}
