//! Time-limit benchmark: how late the hard kill lands after the limit, and how long until a
//! replacement child runs the next task (targets: both ≤ 20 ms median).
//!
//! The queue is preloaded with N `tasks.spin(30)` under `--time-limit 0.2 -c 1` and
//! `track_started`. Per task, from the client's side: kill lateness = (FAILURE arrival −
//! STARTED arrival) − 0.2 s; replacement = next STARTED arrival − FAILURE arrival (the next
//! task can only start once the replacement child is up).
//! Run: `cargo bench --profile dev --bench limits` (BENCH_KILLS=30).
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub, dead_code)] // a benchmark

#[path = "support.rs"]
mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use support::{env_or, median_p90, publish, setup, start_worker, teardown};

const LIMIT: f64 = 0.2;

fn main() {
    support::run(bench());
}

async fn bench() {
    let n: usize = env_or("BENCH_KILLS", 30);
    let (_conn, ch, queue, reply, mut results) = setup("limits").await;
    for _ in 0..n {
        publish(&ch, &queue, &reply, "tasks.spin", vec![json!(30)]).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let worker = start_worker(
        dir.path(),
        &queue,
        "[task]\ntrack_started = true\n",
        &["-c", "1", "--time-limit", &LIMIT.to_string()],
    );

    let (mut started, mut late, mut replace) = (None::<Instant>, Vec::new(), Vec::new());
    let mut last_failure = None::<Instant>;
    let mut failures = 0;
    while failures < n {
        let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(60), results.next()).await
        else {
            break;
        };
        let now = Instant::now();
        let body: Value = serde_json::from_slice(&d.data).unwrap();
        match body["status"].as_str() {
            Some("STARTED") => {
                if let Some(f) = last_failure.take() {
                    replace.push((now - f).as_secs_f64() * 1e3);
                }
                started = Some(now);
            }
            Some("FAILURE") => {
                assert_eq!(body["result"]["exc_type"], "TimeLimitExceeded", "{body}");
                if let Some(s) = started.take() {
                    late.push(((now - s).as_secs_f64() - LIMIT) * 1e3);
                }
                last_failure = Some(now);
                failures += 1;
            }
            _ => {}
        }
    }
    teardown(worker, &ch, &queue).await;
    let (late_med, late_p90) = median_p90(&mut late);
    let (rep_med, rep_p90) = median_p90(&mut replace);
    println!("celeryd hard time limit ({LIMIT}s), {failures} kills, -c 1");
    println!(
        "  kill lands after the limit : median {late_med:.1} ms, p90 {late_p90:.1} ms (target ≤ 20 ms median)"
    );
    println!(
        "  replacement runs next task : median {rep_med:.1} ms, p90 {rep_p90:.1} ms (target ≤ 20 ms median)"
    );
}
