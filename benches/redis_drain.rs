//! Drain with the Redis result backend: N preloaded `tasks.noop` messages (results wanted,
//! no reply queue), each subject stores every result in Redis (database 9, flushed before
//! each run); the figure is results stored per second, from the first stored to the last, as
//! Redis counts them. Subjects, interleaved in each round: celeryd `-c 2` with `[result]
//! backend = redis://…` and Python Celery 5.7's prefork worker `-c 2` with the same
//! backend (`tests/python/celeryd_app.py`, whose `tasks.noop` returns None as celeryd's).
//! Also CPU per task of each subject's process tree and of Redis.
//!
//! Run: `cargo bench --profile dev --bench redis_drain`. Env: BENCH_TASKS (default 5000),
//! BENCH_ROUNDS (default 3), BENCH_REDIS_DB (default 9). Target: celeryd ≥ 3× Celery.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub, dead_code)] // a benchmark

#[path = "support.rs"]
mod support;

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use time::OffsetDateTime;

use celeryd_actors::broker::amqp::publish_task;
use celeryd_actors::protocol::encode::{TaskCall, TaskMessage};
use support::{cpu_seconds, env_or, process_tree, redis_cli, redis_pids, setup};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Subject {
    Celeryd,
    Celery,
}

fn start(subject: Subject, queue: &str, dir: &Path, url: &str, python: &Path) -> Child {
    match subject {
        Subject::Celeryd => support::start_worker(
            dir,
            queue,
            &format!("[result]\nbackend = \"{url}\"\n"),
            &["-c", "2", "--without-mingle"],
        ),
        Subject::Celery => {
            support::start_celery_worker(python, queue, 2, &[("RESULT_BACKEND", url)])
        }
    }
}

struct Run {
    throughput: f64,
    cpu_us: f64,
    redis_us: f64,
}

async fn drain(subject: Subject, n: usize, db: u32, python: &Path) -> Run {
    let url = format!("redis://127.0.0.1:6379/{db}");
    redis_cli(db, &["FLUSHDB"]);
    let (conn, ch, queue, _reply, _results) = setup("redis").await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for _ in 0..n {
        let call = TaskCall {
            name: "tasks.noop".into(),
            origin: "bench@localhost".into(),
            ..Default::default()
        };
        let mut msg = TaskMessage::new(&call, OffsetDateTime::now_utc());
        // No reply queue, and still a result: it goes to the backend.
        msg.headers.insert("ignore_result".into(), false.into());
        publish_task(&ch, &queue, &msg).await.unwrap();
    }
    ch.wait_for_confirms().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let redis = redis_pids();
    let redis0 = cpu_seconds(&redis);
    let mut child = start(subject, &queue, dir.path(), &url, python);
    let what = format!("{subject:?}");
    let (first, end) =
        support::wait_for_results(&mut child, db, n, &what, Duration::from_secs(600)).await;
    let tree = process_tree(child.id());
    let cpu = cpu_seconds(&tree);
    let redis_cpu = cpu_seconds(&redis) - redis0;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
    support::delete_queue(&ch, &queue).await;
    let _ = conn.close(200, "bye".into()).await;
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

fn main() {
    let n: usize = env_or("BENCH_TASKS", 5_000);
    let rounds: usize = env_or("BENCH_ROUNDS", 3).max(1);
    let db: u32 = env_or("BENCH_REDIS_DB", 9);
    let python = support::python();
    let subjects = [Subject::Celeryd, Subject::Celery];
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(), Vec::new()];
    support::run(async {
        for round in 1..=rounds {
            for (i, s) in subjects.iter().enumerate() {
                let r = drain(*s, n, db, &python).await;
                eprintln!(
                    "round {round}: {s:?} {:.0} results/s, {:.0} µs CPU per task (Redis {:.0} µs)",
                    r.throughput, r.cpu_us, r.redis_us
                );
                runs[i].push(r);
            }
        }
    });
    println!(
        "\nredis_drain: {n} no-op tasks, results in Redis, -c 2, {rounds} interleaved rounds (median, min–max)\n"
    );
    println!("| subject | results stored/s | CPU per task: subject / Redis |");
    println!("|---|---|---|");
    for (s, rs) in subjects.iter().zip(&runs) {
        let t: Vec<f64> = rs.iter().map(|r| r.throughput).collect();
        let (lo, hi) = t
            .iter()
            .fold((f64::MAX, 0f64), |(a, b), x| (a.min(*x), b.max(*x)));
        println!(
            "| {} | {:.0} ({:.0}–{:.0}) | {:.0} / {:.0} µs |",
            match s {
                Subject::Celeryd => "celeryd (Rust tasks)",
                Subject::Celery => "Python Celery 5.7 prefork",
            },
            median(t.clone()),
            lo,
            hi,
            median(rs.iter().map(|r| r.cpu_us).collect()),
            median(rs.iter().map(|r| r.redis_us).collect()),
        );
    }
    let per_round: Vec<String> = runs[0]
        .iter()
        .zip(&runs[1])
        .map(|(a, b)| format!("{:.2}", a.throughput / b.throughput))
        .collect();
    let med = |i: usize| median(runs[i].iter().map(|r| r.throughput).collect());
    println!(
        "\nceleryd / Celery drain: ×{:.2} by medians (per round {}; target ≥ 3)",
        med(0) / med(1),
        per_round.join(", ")
    );
}
