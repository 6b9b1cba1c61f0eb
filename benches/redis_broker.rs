//! Drain on a Redis broker: N preloaded `tasks.noop` messages (kombu's envelope, LPUSHed as a
//! Python client does; results wanted, no reply queue) on a Redis database of their own, each
//! subject storing every result in Redis (another database, flushed before each run); the
//! figure is results stored per second, from the first stored to the last, as Redis counts
//! them. Subjects, interleaved in each round, each `-c 2` with prefetch 8 (multiplier 4):
//! celeryd prefork and `-P async` (Rust tasks), and Python Celery 5.7's prefork worker
//! (`tests/python/celeryd_app.py`, whose `tasks.noop` returns None as celeryd's) on the same
//! Redis broker. Also CPU per task of each subject's process tree and of Redis.
//!
//! Run: `cargo bench --profile dev --bench redis_broker`. Env: BENCH_TASKS (default 20000),
//! BENCH_ROUNDS (default 3), BENCH_BROKER_DB (default 6), BENCH_REDIS_DB (results, default 9).
//! Targets (issue 32): celeryd ≥ 3× Celery's drain, CPU per task (worker + Redis) ≤ 0.3×.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub, dead_code)] // a benchmark

#[path = "support.rs"]
mod support;

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use time::OffsetDateTime;

use celeryd_actors::broker::Link;
use celeryd_actors::protocol::encode::{TaskCall, TaskMessage};
use celeryd_actors::settings::BrokerSettings;
use support::{cpu_seconds, env_or, process_tree, redis_cli, redis_pids};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Subject {
    Celeryd,
    CelerydAsync,
    Celery,
}

impl Subject {
    fn label(self) -> &'static str {
        match self {
            Subject::Celeryd => "celeryd prefork (Rust tasks)",
            Subject::CelerydAsync => "celeryd -P async (Rust tasks)",
            Subject::Celery => "Python Celery 5.7 prefork",
        }
    }
}

fn start(
    subject: Subject,
    broker: &str,
    queue: &str,
    dir: &Path,
    results: &str,
    python: &Path,
) -> Child {
    let config = format!("[result]\nbackend = \"{results}\"\n");
    let program = Path::new(env!("CARGO_BIN_EXE_worker"));
    let flags: &[&str] = match subject {
        Subject::Celeryd => &["-c", "2", "--without-mingle"],
        Subject::CelerydAsync => &["-c", "2", "-P", "async", "--without-mingle"],
        Subject::Celery => {
            return support::start_celery_worker(
                python,
                queue,
                2,
                &[("RESULT_BACKEND", results), ("AMQP_URL", broker)],
            );
        }
    };
    support::start_worker_on(program, broker, dir, queue, &config, flags)
}

struct Run {
    throughput: f64,
    cpu_us: f64,
    redis_us: f64,
}

async fn drain(subject: Subject, n: usize, broker_db: u32, db: u32, python: &Path) -> Run {
    let broker = format!("redis://127.0.0.1:6379/{broker_db}");
    let results = format!("redis://127.0.0.1:6379/{db}");
    redis_cli(db, &["FLUSHDB"]);
    redis_cli(broker_db, &["FLUSHDB"]);
    let queue = format!(
        "bench-redis-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let settings = BrokerSettings {
        url: broker.clone(),
        ..BrokerSettings::default()
    };
    let link = Link::open(&settings, "bench publisher", None)
        .await
        .unwrap();
    for _ in 0..n {
        let call = TaskCall {
            name: "tasks.noop".into(),
            origin: "bench@localhost".into(),
            ..Default::default()
        };
        let mut msg = TaskMessage::new(&call, OffsetDateTime::now_utc());
        msg.headers.insert("ignore_result".into(), false.into());
        link.publish_task(&queue, &msg).await.unwrap();
    }
    link.close("published").await;
    let dir = tempfile::tempdir().unwrap();
    let redis = redis_pids();
    let redis0 = cpu_seconds(&redis);
    let mut child = start(subject, &broker, &queue, dir.path(), &results, python);
    let what = format!("{subject:?}");
    let (first, end) =
        support::wait_for_results(&mut child, db, n, &what, Duration::from_secs(900)).await;
    let tree = process_tree(child.id());
    let cpu = cpu_seconds(&tree);
    let redis_cpu = cpu_seconds(&redis) - redis0;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
    redis_cli(broker_db, &["FLUSHDB"]);
    Run {
        throughput: (n - 1) as f64 / (end - first).as_secs_f64().max(1e-9),
        cpu_us: cpu * 1e6 / n as f64,
        redis_us: redis_cpu * 1e6 / n as f64,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn range(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, 0f64), |(a, b), x| (a.min(*x), b.max(*x)))
}

fn main() {
    let n: usize = env_or("BENCH_TASKS", 20_000);
    let rounds: usize = env_or("BENCH_ROUNDS", 3).max(1);
    let broker_db: u32 = env_or("BENCH_BROKER_DB", 6);
    let db: u32 = env_or("BENCH_REDIS_DB", 9);
    let python = support::python();
    let subjects = [Subject::Celeryd, Subject::CelerydAsync, Subject::Celery];
    let mut runs: Vec<Vec<Run>> = subjects.iter().map(|_| Vec::new()).collect();
    support::run(async {
        for round in 1..=rounds {
            for (i, s) in subjects.iter().enumerate() {
                let r = drain(*s, n, broker_db, db, &python).await;
                eprintln!(
                    "round {round}: {s:?} {:.0} results/s, {:.0} µs CPU per task (Redis {:.0} µs)",
                    r.throughput, r.cpu_us, r.redis_us
                );
                runs[i].push(r);
            }
        }
    });
    println!(
        "\nredis_broker: {n} no-op tasks on a Redis broker, results in Redis, -c 2, prefetch 8, \
         {rounds} interleaved rounds (median, min–max)\n"
    );
    println!("| subject | results stored/s | CPU per task: subject / Redis |");
    println!("|---|---|---|");
    for (s, rs) in subjects.iter().zip(&runs) {
        let t: Vec<f64> = rs.iter().map(|r| r.throughput).collect();
        let (lo, hi) = range(&t);
        println!(
            "| {} | {:.0} ({lo:.0}–{hi:.0}) | {:.0} / {:.0} µs |",
            s.label(),
            median(t.clone()),
            median(rs.iter().map(|r| r.cpu_us).collect()),
            median(rs.iter().map(|r| r.redis_us).collect()),
        );
    }
    let celery = runs.len() - 1;
    let med = |i: usize, f: &dyn Fn(&Run) -> f64| median(runs[i].iter().map(f).collect());
    for i in 0..celery {
        let per_round: Vec<String> = runs[i]
            .iter()
            .zip(&runs[celery])
            .map(|(a, b)| format!("{:.2}", a.throughput / b.throughput))
            .collect();
        let total = |r: &Run| r.cpu_us + r.redis_us;
        println!(
            "\n{} / Celery: drain ×{:.2} by medians (per round {}; target ≥ 3); CPU per task \
             (worker + Redis) ×{:.2} (target ≤ 0.3)",
            subjects[i].label(),
            med(i, &|r| r.throughput) / med(celery, &|r| r.throughput),
            per_round.join(", "),
            med(i, &total) / med(celery, &total),
        );
    }
}
