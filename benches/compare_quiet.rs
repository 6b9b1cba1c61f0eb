//! Part of `compare`: the drain **without results** against rusty-celery (the `celery` crate,
//! 0.5), whose worker runs tasks as tokio tasks in one process and publishes no results.
//! Subjects, interleaved per round: rusty-celery (`benches/rusty`, built here in a target
//! folder of its own the first time: never part of the project's build), celeryd `-P async
//! -c 2`, celeryd prefork `-c 2` and (with `celery` in BENCH_SUBJECTS) Python Celery's
//! prefork `-c 2`, each at the same prefetch (BENCH_PREFETCH, default 8:
//! `-c 2` × multiplier 4, celeryd's and Celery's default). N preloaded no-op messages
//! (`tasks.noop`; `tasks.async_noop`, an async fn as rusty-celery's, for the async pool; no
//! `reply_to`, `ignore_result`), declared as Celery declares the queue; the drain is
//! timed from the first message taken to an empty queue (the broker's count, polled every
//! 2 ms), with the CPU per task of each subject's process tree and of the broker.
//! BENCH_WORKER_CONFIG adds TOML to the celeryd subjects' configuration, after `[broker]
//! url` (`\n` for newlines; `qos = "global"` to measure channel-wide QoS).
//! `base-async` and `base-celeryd` run the same two celeryd subjects from BENCH_BASELINE_BIN
//! (a build of an earlier commit), interleaved with this build's: before/after figures.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use time::OffsetDateTime;

use super::support::{
    amqp_url, broker_processes, cpu_seconds, delete_queue, env_or, process_tree,
    start_worker_program,
};
use celeryd_actors::broker::amqp::{TaskQueue, declare_task_queue, publish_task};
use celeryd_actors::protocol::encode::{TaskCall, TaskMessage};

/// A subject of the quiet drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiet {
    Rusty,
    Async,
    Prefork,
    /// Python Celery 5.7's prefork worker.
    Celery,
    /// `Async` from BENCH_BASELINE_BIN.
    BaseAsync,
    /// `Prefork` from BENCH_BASELINE_BIN.
    BasePrefork,
}

/// Every subject, in the order they run in a round.
pub const ALL: [Quiet; 6] = [
    Quiet::Rusty,
    Quiet::Async,
    Quiet::BaseAsync,
    Quiet::Prefork,
    Quiet::BasePrefork,
    Quiet::Celery,
];

impl Quiet {
    pub fn name(self) -> &'static str {
        match self {
            Quiet::Rusty => "rusty-celery 0.5 (tokio tasks, one process)",
            Quiet::Async => "celeryd -P async -c 2",
            Quiet::Prefork => "celeryd prefork -c 2",
            Quiet::Celery => "Python Celery 5.7 prefork -c 2",
            Quiet::BaseAsync => "baseline -P async -c 2",
            Quiet::BasePrefork => "baseline prefork -c 2",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Quiet::Rusty => "rusty",
            Quiet::Async => "async",
            Quiet::Prefork => "celeryd",
            Quiet::Celery => "celery",
            Quiet::BaseAsync => "base-async",
            Quiet::BasePrefork => "base-celeryd",
        }
    }

    /// The worker binary of a celeryd subject.
    fn program(self) -> PathBuf {
        match self {
            Quiet::BaseAsync | Quiet::BasePrefork => std::env::var_os("BENCH_BASELINE_BIN")
                .map(PathBuf::from)
                .expect("BENCH_BASELINE_BIN for the baseline subjects"),
            _ => PathBuf::from(env!("CARGO_BIN_EXE_worker")),
        }
    }
}

/// Builds the rusty-celery worker (once; cargo makes later builds no-ops) and returns its
/// binary, or why not.
pub fn rusty_bin() -> Result<PathBuf, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("BENCH_RUSTY_TARGET").map_or_else(
        || {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/celeryd-rusty-target")
        },
        PathBuf::from,
    );
    eprintln!("building the rusty-celery peer in {} …", target.display());
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(root.join("benches/rusty/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building benches/rusty failed ({status})"));
    }
    Ok(target.join("release/rusty-peer"))
}

fn start(subject: Quiet, queue: &str, prefetch: usize, rusty: &Path) -> (Child, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let multiplier = (prefetch / 2).max(1).to_string();
    // Extra TOML for the celeryd subjects; it follows `[broker] url`, so `qos = "global"` is
    // a broker key.
    let config = std::env::var("BENCH_WORKER_CONFIG")
        .unwrap_or_default()
        .replace("\\n", "\n");
    let child = match subject {
        Quiet::Rusty => super::support::wrapped(rusty)
            .env("AMQP_ADDR", amqp_url())
            .env("RUSTY_QUEUE", queue)
            .env("RUSTY_PREFETCH", prefetch.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rusty-celery"),
        Quiet::Async | Quiet::BaseAsync => start_worker_program(
            &subject.program(),
            dir.path(),
            queue,
            &config,
            &[
                "-P",
                "async",
                "-c",
                "2",
                "--prefetch-multiplier",
                &multiplier,
                "--without-mingle",
            ],
        ),
        Quiet::Prefork | Quiet::BasePrefork => start_worker_program(
            &subject.program(),
            dir.path(),
            queue,
            &config,
            &[
                "-c",
                "2",
                "--prefetch-multiplier",
                &multiplier,
                "--without-mingle",
            ],
        ),
        Quiet::Celery => super::support::start_celery_worker(
            &super::support::python(),
            queue,
            2,
            &[("CELERY_WORKER_PREFETCH_MULTIPLIER", multiplier.as_str())],
        ),
    };
    (child, dir)
}

/// One drain's figures.
#[derive(Debug, Clone, Copy)]
pub struct QuietDrain {
    pub throughput: f64,
    /// CPU per task of the subject's tree, µs.
    pub cpu: f64,
    /// Of which its main process.
    pub main: f64,
    /// The broker's, µs.
    pub broker: f64,
}

/// Preloads `n` no-op tasks without a reply queue, starts `subject` and times the drain.
pub async fn drain(subject: Quiet, n: usize, prefetch: usize, rusty: &Path) -> QuietDrain {
    let conn = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .expect("broker");
    let ch = conn.create_channel().await.unwrap();
    let queue = format!("bench-quiet-{}", uuid::Uuid::new_v4().simple());
    declare_task_queue(&ch, &TaskQueue::plain(&queue))
        .await
        .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // An async no-op for the async pool (as rusty-celery's is an async fn), else the no-op.
    let task = match subject {
        Quiet::Async | Quiet::BaseAsync => "tasks.async_noop",
        _ => "tasks.noop",
    };
    for _ in 0..n {
        let call = TaskCall {
            name: task.into(),
            origin: "bench@localhost".into(),
            ..Default::default()
        };
        publish_task(
            &ch,
            &queue,
            &TaskMessage::new(&call, OffsetDateTime::now_utc()),
        )
        .await
        .unwrap();
    }
    ch.wait_for_confirms().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let count = || async {
        ch.queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
            .map(|q| q.message_count() as usize)
            .unwrap_or(usize::MAX)
    };
    let broker = broker_processes();
    let broker0 = cpu_seconds(&broker);
    let (mut child, _dir) = start(subject, &queue, prefetch, rusty);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first = None;
    loop {
        let left = count().await;
        if left < n && first.is_none() {
            first = Some((Instant::now(), left));
        }
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {left} left after 600 s",
            subject.name()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "{} exited",
            subject.name()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let end = Instant::now();
    let pid = child.id();
    let cpu = cpu_seconds(&process_tree(pid));
    let main = cpu_seconds(&[pid]);
    let broker_cpu = cpu_seconds(&broker) - broker0;
    let p = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
    let stop = Instant::now() + Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < stop {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    delete_queue(&ch, &queue).await;
    let _ = conn.close(200, "bye".into()).await;
    let (t0, left0) = first.unwrap();
    let per = |s: f64| s * 1e6 / n as f64;
    QuietDrain {
        throughput: left0 as f64 / (end - t0).as_secs_f64().max(1e-9),
        cpu: per(cpu),
        main: per(main),
        broker: per(broker_cpu),
    }
}

/// The quiet drain for `subjects`, interleaved, with the per-round ratios to rusty-celery.
pub async fn run(subjects: &[Quiet], rounds: usize) {
    let n: usize = env_or("BENCH_QUIET_TASKS", 20_000);
    let prefetch: usize = env_or("BENCH_PREFETCH", 8);
    let rusty = match rusty_bin() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("rusty-celery left out: {e}");
            PathBuf::new()
        }
    };
    let subjects: Vec<Quiet> = subjects
        .iter()
        .copied()
        .filter(|s| *s != Quiet::Rusty || rusty.exists())
        .collect();
    let mut runs: Vec<Vec<QuietDrain>> = subjects.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        for (i, s) in subjects.iter().enumerate() {
            let d = drain(*s, n, prefetch, &rusty).await;
            eprintln!(
                "quiet round {round}/{rounds}: {}: {:.0} tasks/s, {:.1} µs CPU per task ({:.1} main), broker {:.1} µs",
                s.name(),
                d.throughput,
                d.cpu,
                d.main,
                d.broker
            );
            runs[i].push(d);
        }
    }
    let med = |v: Vec<f64>| super::median_range(v);
    println!(
        "\nno-op tasks without results, {n} preloaded, prefetch {prefetch}, {rounds} interleaved rounds (median, min–max)"
    );
    println!("| subject | drain | CPU per task: subject (main process) / broker |");
    println!("|---|---|---|");
    for (s, rs) in subjects.iter().zip(&runs) {
        let (t, lo, hi) = med(rs.iter().map(|d| d.throughput).collect());
        println!(
            "| {} | {t:.0} tasks/s ({lo:.0}–{hi:.0}) | {:.1} µs ({:.1}) / {:.1} µs |",
            s.name(),
            med(rs.iter().map(|d| d.cpu).collect()).0,
            med(rs.iter().map(|d| d.main).collect()).0,
            med(rs.iter().map(|d| d.broker).collect()).0,
        );
    }
    let Some(r) = subjects.iter().position(|s| *s == Quiet::Rusty) else {
        return;
    };
    for (i, s) in subjects.iter().enumerate() {
        if i == r {
            continue;
        }
        let drains: Vec<f64> = runs[i]
            .iter()
            .zip(&runs[r])
            .map(|(a, b)| a.throughput / b.throughput)
            .collect();
        let cpus: Vec<f64> = runs[i]
            .iter()
            .zip(&runs[r])
            .map(|(a, b)| a.cpu / b.cpu)
            .collect();
        let cells = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (target_drain, target_cpu) = match s {
            Quiet::Async => ("; target ≥ 1.10", "; target ≤ 1.00"),
            Quiet::Prefork => ("; target ≥ 0.95", "; target ≤ 1.20"),
            Quiet::BaseAsync | Quiet::BasePrefork => (" (baseline)", " (baseline)"),
            _ => ("", ""),
        };
        println!(
            "{} / rusty-celery: drain ×{:.2} (per round {}{target_drain}), CPU per task ×{:.2} (per round {}{target_cpu})",
            s.name(),
            med(drains.clone()).0,
            cells(&drains),
            med(cpus.clone()).0,
            cells(&cpus),
        );
    }
}
