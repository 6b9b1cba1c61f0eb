//! Publish lateness of the periodic task scheduler: a `worker -B` runs BENCH_ENTRIES entries
//! `every = 0.1` into a queue this benchmark consumes, for BENCH_SECONDS. Each message's
//! lateness is its arrival (wall clock) minus the time its run was due. The due times are
//! exact: an `every` entry stays on its grid, and `beat_schedule` (celeryd's control command)
//! gives each entry's last due time and run count, so run k of n was due at
//! `last - (n - 1 - k) × 0.1`. Arrival includes the broker's transit, so this is an upper
//! bound of the publish lateness.
//!
//! Run: `cargo bench --profile dev --bench beat`. Env: BENCH_SECONDS (default 60),
//! BENCH_ENTRIES (default 5), BENCH_EVERY (default 0.1). Target: median ≤ 5 ms.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub, dead_code)] // a benchmark

#[path = "support.rs"]
mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;

use support::{amqp_url, env_or};

fn wall() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn main() {
    let seconds: f64 = env_or("BENCH_SECONDS", 60.0);
    let entries: usize = env_or("BENCH_ENTRIES", 5);
    let every: f64 = env_or("BENCH_EVERY", 0.1);
    let queue = format!("bench-beat-{}", uuid::Uuid::new_v4().simple());
    let lock = format!("bench-beat-lock-{}", uuid::Uuid::new_v4().simple());
    let dir = tempfile::tempdir().unwrap();
    let mut config = format!("[beat]\nlock = \"{lock}\"\n");
    for i in 0..entries {
        config.push_str(&format!(
            "[beat.schedule.e{i}]\ntask = \"tasks.noop\"\nevery = {every}\n\
             options = {{ queue = \"{queue}\" }}\n"
        ));
    }
    let node_queue = format!("{queue}-unused");
    let db = dir.path().join("schedule");
    let arrivals: BTreeMap<String, Vec<f64>> = support::run(async {
        let conn = lapin::Connection::connect(&amqp_url(), Default::default())
            .await
            .expect("broker");
        let ch = conn.create_channel().await.unwrap();
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(queue.as_str().into(), durable, FieldTable::default())
            .await
            .unwrap();
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let mut c = ch
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                no_ack,
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut worker = support::start_worker(
            dir.path(),
            &node_queue,
            &config,
            &[
                "-B",
                "-c",
                "1",
                "--without-mingle",
                "-s",
                db.to_str().unwrap(),
            ],
        );
        let mut seen: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let end = Instant::now() + Duration::from_secs_f64(seconds + 3.0);
        while Instant::now() < end {
            let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(1), c.next()).await
            else {
                continue;
            };
            let at = wall();
            let name = d
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("periodic_task_name").cloned());
            if let Some(AMQPValue::LongString(n)) = name {
                seen.entry(n.to_string()).or_default().push(at);
            }
        }
        let reply = ctl_schedule(&worker);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(worker.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = worker.wait();
        support::delete_queue(&ch, &queue).await;
        support::delete_queue(&ch, &node_queue).await;
        let _ = conn.close(200, "bye".into()).await;
        // Due times from the scheduler's own record of each entry.
        let mut late = BTreeMap::new();
        for e in reply["entries"].as_array().unwrap() {
            let name = e["name"].as_str().unwrap().to_owned();
            let n = e["total_run_count"].as_u64().unwrap() as usize;
            let last: jiff::Timestamp = e["last_run_at"].as_str().unwrap().parse().unwrap();
            let last = last.as_microsecond() as f64 / 1e6;
            let times = seen.remove(&name).unwrap_or_default();
            let lateness: Vec<f64> = times
                .iter()
                .take(n)
                .enumerate()
                .map(|(k, at)| at - (last - (n - 1 - k) as f64 * every))
                .collect();
            late.insert(name, lateness);
        }
        late
    });
    let mut all: Vec<f64> = arrivals.values().flatten().copied().collect();
    all.sort_by(f64::total_cmp);
    let q = |p: f64| all[((all.len() as f64 - 1.0) * p).round() as usize] * 1e3;
    println!(
        "\nbeat: {entries} entries every {every} s (all due together), about {seconds} s, {} \
         runs\n",
        all.len()
    );
    println!("| publish lateness (arrival − due) | ms |");
    println!("|---|---|");
    for (label, p) in [("min", 0.0), ("median", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        println!("| {label} | {:.2} |", q(p));
    }
    println!(
        "| max | {:.2} |",
        all.last().copied().unwrap_or_default() * 1e3
    );
    println!(
        "\nmedian {:.2} ms (target ≤ 5 ms), p99 {:.2} ms",
        q(0.5),
        q(0.99)
    );
}

/// The worker's `beat_schedule` reply, through `worker ctl`.
fn ctl_schedule(worker: &std::process::Child) -> Value {
    let _ = worker;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.toml");
    std::fs::write(&path, format!("[broker]\nurl = \"{}\"\n", amqp_url())).unwrap();
    let node = format!("bench@{}", celeryd_actors::hostname::this_host());
    let out = Command::new(env!("CARGO_BIN_EXE_worker"))
        .arg("--config")
        .arg(&path)
        .args(["ctl", "inspect", "beat_schedule", "--json", "-d", &node])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    v[&node].clone()
}
