//! Side by side, on the same broker in one run: a minimal AMQP echo consumer written here (the
//! ceiling for any worker on this broker), celeryd, and Python Celery 5.7's prefork worker
//! (installed into the test virtualenv by scripts/ensure-python.sh), all running no-op tasks
//! with rpc:// results.
//!
//! Each subject is its own process (the echo consumer is this benchmark re-executed in echo
//! mode), so the CPU time of each can be read from /proc: per task, the subject's whole
//! process tree, the broker (RabbitMQ's Erlang VM) and the benchmark's own publisher/result
//! reader. The machine is shared and noisy, so the subjects are measured in interleaved rounds
//! (ceiling, celeryd, Celery, ceiling, …) and the medians are reported; the celeryd/ceiling
//! ratio is also taken per round (the two drains of a round run back to back).
//!
//! Python tasks: `celeryd -A celeryd_app` (the same Python app's no-op `tasks.noop`, run in
//! Python children through Celery's tracer) against Celery's prefork worker on that app.
//!
//! Run: `cargo bench --profile dev --bench compare`. Env: BENCH_TASKS (drain, default 10000),
//! BENCH_ROUNDS (default 3), BENCH_ROUNDTRIPS (latency, default 300), BENCH_SWEEP_TASKS (per
//! point of the concurrency sweep, default 4000; 0 skips the sweep), BENCH_PYTHON=0 to leave
//! Python Celery out, BENCH_BASELINE_BIN=path to run another worker binary (a build of an
//! earlier commit, say) beside this one for before/after figures, BENCH_SUBJECTS=a comma list
//! of `ceiling,celeryd,baseline,python,celery` to run only those, AMQP_URL. Prints tables with
//! ratios and writes `benches/output/throughput.svg`.
//!
//! Against rusty-celery: `BENCH_SUBJECTS=rusty,async,celeryd` runs the drain without results
//! instead (`compare_quiet.rs`: BENCH_QUIET_TASKS, default 20000; BENCH_PREFETCH, default 8;
//! BENCH_RUSTY_TARGET, where the rusty-celery peer is built; `base-async`, `base-celeryd`:
//! the same from BENCH_BASELINE_BIN); BENCH_QUIET=1 runs it without rusty-celery too (e.g.
//! `BENCH_SUBJECTS=celeryd`). BENCH_WORKER_WRAPPER runs celeryd under
//! a profiler (`valgrind --tool=callgrind`).
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub, dead_code)] // a benchmark

#[path = "support.rs"]
mod support;

#[path = "compare_quiet.rs"]
mod quiet;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use time::OffsetDateTime;

use celeryd_actors::broker::amqp::publish_result;
use celeryd_actors::protocol::{ResultState, result_body};
use support::{
    amqp_url, broker_processes, cpu_seconds, delete_queue, env_or, process_tree, publish, setup,
    start_worker, start_worker_program, tree_pss_kib,
};

/// Set (to the queue name) when this benchmark runs as the echo consumer.
const ECHO_QUEUE: &str = "COMPARE_ECHO_QUEUE";
/// The echo consumer's prefetch count.
const ECHO_PREFETCH: &str = "COMPARE_ECHO_PREFETCH";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    Ceiling,
    Celeryd,
    /// Another worker binary (`BENCH_BASELINE_BIN`).
    Baseline,
    /// celeryd running the Python app's tasks (`-A celeryd_app`).
    CeleryPy,
    Celery,
}

fn baseline_bin() -> Option<PathBuf> {
    std::env::var_os("BENCH_BASELINE_BIN").map(PathBuf::from)
}

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Subject::Ceiling => "AMQP echo consumer (ceiling)",
            Subject::Celeryd => "celeryd",
            Subject::Baseline => "celeryd (BENCH_BASELINE_BIN)",
            Subject::CeleryPy => "celeryd -A (Python tasks)",
            Subject::Celery => "Python Celery 5.7 prefork",
        }
    }

    /// Its name in `BENCH_SUBJECTS`.
    fn key(self) -> &'static str {
        match self {
            Subject::Ceiling => "ceiling",
            Subject::Celeryd => "celeryd",
            Subject::Baseline => "baseline",
            Subject::CeleryPy => "python",
            Subject::Celery => "celery",
        }
    }
}

/// A running subject: always a process of its own.
struct Running(Child, tempfile::TempDir);

impl Running {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// The next result, or a panic naming the subject if it exits meanwhile (a worker that
    /// cannot start, e.g. because its node name is taken, would otherwise leave the benchmark
    /// waiting) or nothing comes for `limit`.
    async fn next_result(
        &mut self,
        subject: Subject,
        results: &mut lapin::Consumer,
        limit: Duration,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.0.try_wait() {
                panic!(
                    "{} exited ({status}) before its results came",
                    subject.name()
                );
            }
            match tokio::time::timeout(Duration::from_secs(1), results.next()).await {
                Ok(Some(Ok(_))) => return,
                Ok(other) => panic!("{}: result stream ended: {other:?}", subject.name()),
                Err(_) if Instant::now() > deadline => {
                    panic!("{}: no result for {limit:?}", subject.name())
                }
                Err(_) => {}
            }
        }
    }

    async fn stop(self) {
        let Running(mut c, _dir) = self;
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python")
}

fn celery_exe() -> Option<PathBuf> {
    python_exe().map(|p| p.with_file_name("celery"))
}

/// The test virtualenv's Python (with the pinned Celery), unless `BENCH_PYTHON=0`.
fn python_exe() -> Option<PathBuf> {
    if std::env::var("BENCH_PYTHON").as_deref() == Ok("0") {
        return None;
    }
    Some(support::python())
}

fn start(subject: Subject, queue: &str, concurrency: usize) -> Running {
    let c = concurrency.to_string();
    let dir = tempfile::tempdir().unwrap();
    let child = match subject {
        // Without mingle, as the Celery subject below (mingle waits a second for other
        // workers' replies at start, in both).
        Subject::Celeryd => start_worker(dir.path(), queue, "", &["-c", &c, "--without-mingle"]),
        Subject::Baseline => start_worker_program(
            &baseline_bin().expect("BENCH_BASELINE_BIN"),
            dir.path(),
            queue,
            "",
            &["-c", &c],
        ),
        Subject::CeleryPy => {
            let python = python_exe().expect("python");
            let (python, workdir) = (python.display().to_string(), python_dir());
            let flags = [
                "-c",
                &c,
                "--without-mingle",
                "-A",
                "celeryd_app",
                "--python",
                &python,
                "--workdir",
            ];
            let mut flags: Vec<&str> = flags.to_vec();
            flags.push(workdir.to_str().unwrap());
            start_worker(dir.path(), queue, "", &flags)
        }
        Subject::Celery => {
            let python = python_exe().expect("python celery");
            support::start_celery_worker(&python, queue, concurrency, &[])
        }
        // The same prefetch as a worker with this concurrency (multiplier 4).
        Subject::Ceiling => Command::new(std::env::current_exe().unwrap())
            .env(ECHO_QUEUE, queue)
            .env(ECHO_PREFETCH, (concurrency * 4).to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the echo consumer"),
    };
    Running(child, dir)
}

/// The ceiling, run as its own process: consume, parse the body and headers, publish a
/// SUCCESS result, ack; one message at a time.
async fn echo_main(queue: String, prefetch: u16) {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "echo".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    while let Some(Ok(d)) = consumer.next().await {
        let _body: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_default();
        let id = d
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let reply = d
            .properties
            .reply_to()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let body = result_body(
            &id,
            &ResultState::Success(serde_json::Value::Null),
            None,
            None,
            OffsetDateTime::now_utc(),
        );
        let _ = publish_result(&ch, &reply, &id, &body).await;
        let _ = d.ack(BasicAckOptions::default()).await;
    }
}

/// CPU time per task, in microseconds, during a drain.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    /// The subject's process tree.
    subject: f64,
    /// The subject's main process alone (celeryd's Rust parent, Celery's MainProcess).
    main: f64,
    /// The broker.
    broker: f64,
    /// This benchmark (results consumer).
    bench: f64,
}

#[derive(Debug, Clone, Copy)]
struct Drain {
    start_to_first: f64,
    throughput: f64,
    cpu: Cpu,
}

/// Preloads `n` no-op tasks, starts the subject, and times the results.
async fn drain(subject: Subject, n: usize, concurrency: usize) -> Drain {
    let (conn, ch, queue, reply, mut results) = setup("compare").await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for _ in 0..n {
        publish(&ch, &queue, &reply, "tasks.noop", Vec::new()).await;
    }
    ch.wait_for_confirms().await.unwrap();
    let broker = broker_processes();
    let me = [std::process::id()];
    let (broker_cpu0, bench_cpu0) = (cpu_seconds(&broker), cpu_seconds(&me));
    let started = Instant::now();
    let mut running = start(subject, &queue, concurrency);
    let (mut first, mut got) = (None, 0);
    while got < n {
        running
            .next_result(subject, &mut results, Duration::from_secs(300))
            .await;
        got += 1;
        first.get_or_insert_with(Instant::now);
    }
    let end = Instant::now();
    let per_task = |secs: f64| secs * 1e6 / n as f64;
    let cpu = Cpu {
        subject: per_task(cpu_seconds(&process_tree(running.pid()))),
        main: per_task(cpu_seconds(&[running.pid()])),
        broker: per_task(cpu_seconds(&broker) - broker_cpu0),
        bench: per_task(cpu_seconds(&me) - bench_cpu0),
    };
    running.stop().await;
    delete_queue(&ch, &queue).await;
    let _ = conn.close(200, "bye".into()).await;
    let first = first.expect("no result arrived");
    Drain {
        start_to_first: (first - started).as_secs_f64(),
        throughput: (got - 1) as f64 / (end - first).as_secs_f64().max(1e-9),
        cpu,
    }
}

#[derive(Debug, Clone, Copy)]
struct Idle {
    p50: f64,
    p99: f64,
    rss_mib: f64,
}

/// Sequential round trips (publish, wait for the result) against an idle subject, then the
/// proportional set size of its whole process tree.
async fn idle(subject: Subject, roundtrips: usize, concurrency: usize) -> Idle {
    let (conn, ch, queue, reply, mut results) = setup("latency").await;
    let mut running = start(subject, &queue, concurrency);
    // Warm up: the first result also means the subject is ready.
    for _ in 0..20 {
        publish(&ch, &queue, &reply, "tasks.noop", Vec::new()).await;
        running
            .next_result(subject, &mut results, Duration::from_secs(60))
            .await;
    }
    let mut times = Vec::with_capacity(roundtrips);
    for _ in 0..roundtrips {
        let t = Instant::now();
        publish(&ch, &queue, &reply, "tasks.noop", Vec::new()).await;
        results.next().await.unwrap().unwrap();
        times.push(t.elapsed().as_secs_f64());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_mib = tree_pss_kib(running.pid()) as f64 / 1024.0;
    running.stop().await;
    delete_queue(&ch, &queue).await;
    let _ = conn.close(200, "bye".into()).await;
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    Idle {
        p50: at(0.5),
        p99: at(0.99),
        rss_mib,
    }
}

/// Why the Python ratios are what they are on this machine. Both workers' drains are bound by
/// the CPU: per task, the subject's processes, the broker and this benchmark together cannot
/// take more than the machine's cores, so the ratio of the two totals is the most the drain
/// ratio can be here; and Celery's tracer alone (the part both workers' children run) shows
/// how little of a task's cost is left for a worker to save.
fn print_bounds(floors: &[TracerFloor], ours: &Rows, py: &Rows) {
    let warm = median_range(floors.iter().map(|f| f.warm_cpu_us).collect()).0;
    let idle = median_range(floors.iter().map(|f| f.idle_p50_us).collect()).0;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let total = |r: &Rows| {
        r.median(|d| d.cpu.subject).0 + r.median(|d| d.cpu.broker).0 + r.median(|d| d.cpu.bench).0
    };
    let (a, b) = (total(ours), total(py));
    let (ta, tb) = (
        ours.median(|d| d.throughput).0,
        py.median(|d| d.throughput).0,
    );
    println!(
        "Celery's tracer alone (no-op, rpc result, one process): {warm:.0} µs CPU per task back \
         to back, {idle:.0} µs wall per task when it sleeps between tasks (median of {} rounds)",
        floors.len()
    );
    println!(
        "  CPU bound on {cores:.0} cores: per task, subject + broker + benchmark = {a:.0} µs \
         (celeryd -A) vs {b:.0} µs (Celery) → at most {:.0} vs {:.0} tasks/s (reached {:.0} % \
         and {:.0} %); the drain ratio can be at most ×{:.2} here, and ×{:.2} with a main \
         process that cost nothing. ×1.8 would need celeryd's whole tree at ≤ {:.0} µs per \
         task (its children: {:.0}, main process: {:.0}).",
        cores * 1e6 / a,
        cores * 1e6 / b,
        100.0 * ta * a / (cores * 1e6),
        100.0 * tb * b / (cores * 1e6),
        b / a,
        b / (a - ours.median(|d| d.cpu.main).0),
        b / 1.8 - (a - ours.median(|d| d.cpu.subject).0),
        ours.median(|d| d.cpu.subject).0 - ours.median(|d| d.cpu.main).0,
        ours.median(|d| d.cpu.main).0,
    );
}

/// The median of `v`, and its smallest and largest values.
fn median_range(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    };
    (median, v[0], v[v.len() - 1])
}

fn main() {
    if let Ok(queue) = std::env::var(ECHO_QUEUE) {
        let prefetch = env_or(ECHO_PREFETCH, 8);
        return support::run(echo_main(queue, prefetch));
    }
    support::run(bench());
}

/// Celery's tracer by itself (`tests/python/tracer_floor.py`): what any worker that runs it in
/// its children pays per task at the least.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
struct TracerFloor {
    /// CPU per task, back to back.
    warm_cpu_us: f64,
    /// One task's wall time in a process that sleeps between tasks.
    idle_p50_us: f64,
}

fn tracer_floor() -> Option<TracerFloor> {
    let out = Command::new(python_exe()?)
        .current_dir(python_dir())
        .arg("tracer_floor.py")
        .env("AMQP_URL", support::celery_amqp_url())
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    let line = String::from_utf8_lossy(&out.stdout);
    match serde_json::from_str(line.trim()) {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!("tracer_floor.py gave no figures ({e}): {line}");
            None
        }
    }
}

/// Everything measured of one subject, one entry per round.
struct Rows {
    subject: Subject,
    drains: Vec<Drain>,
    idles: Vec<Idle>,
}

impl Rows {
    fn median(&self, f: impl Fn(&Drain) -> f64) -> (f64, f64, f64) {
        median_range(self.drains.iter().map(f).collect())
    }

    fn idle_median(&self, f: impl Fn(&Idle) -> f64) -> f64 {
        median_range(self.idles.iter().map(f).collect()).0
    }
}

async fn bench() {
    let n: usize = env_or("BENCH_TASKS", 10_000);
    let rounds: usize = env_or("BENCH_ROUNDS", 3).max(1);
    // With `rusty` among the subjects: the drain without results against rusty-celery only.
    if let Ok(only) = std::env::var("BENCH_SUBJECTS")
        && (only.split(',').any(|s| s.trim() == "rusty")
            || std::env::var("BENCH_QUIET").as_deref() == Ok("1"))
    {
        let subjects: Vec<quiet::Quiet> = quiet::ALL
            .into_iter()
            .filter(|q| only.split(',').any(|s| s.trim() == q.key()))
            .collect();
        return quiet::run(&subjects, rounds).await;
    }
    let roundtrips: usize = env_or("BENCH_ROUNDTRIPS", 300);
    let sweep: usize = env_or("BENCH_SWEEP_TASKS", 4_000);
    let mut subjects = vec![Subject::Ceiling, Subject::Celeryd];
    if baseline_bin().is_some() {
        subjects.push(Subject::Baseline);
    }
    if celery_exe().is_some() {
        subjects.push(Subject::CeleryPy);
        subjects.push(Subject::Celery);
    }
    if let Ok(only) = std::env::var("BENCH_SUBJECTS") {
        let only: Vec<&str> = only.split(',').map(str::trim).collect();
        subjects.retain(|s| only.contains(&s.key()));
    }
    let mut rows: Vec<Rows> = subjects
        .iter()
        .map(|&subject| Rows {
            subject,
            drains: Vec::new(),
            idles: Vec::new(),
        })
        .collect();
    let python = subjects.contains(&Subject::CeleryPy) && subjects.contains(&Subject::Celery);
    let mut floors = Vec::new();
    for round in 1..=rounds {
        for r in rows.iter_mut() {
            eprintln!("round {round}/{rounds}: {} …", r.subject.name());
            r.drains.push(drain(r.subject, n, 2).await);
            r.idles.push(idle(r.subject, roundtrips, 4).await);
        }
        if python {
            eprintln!("round {round}/{rounds}: Celery's tracer alone …");
            floors.extend(tracer_floor());
        }
    }
    println!(
        "\nno-op tasks with rpc:// results, same broker, {rounds} interleaved rounds (median, min–max)"
    );
    println!(
        "| subject | drain {n} (-c 2) | start → first result | round trip p50 | p99 | idle PSS, whole tree (-c 4) |"
    );
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        let (t, lo, hi) = r.median(|d| d.throughput);
        let (s, ..) = r.median(|d| d.start_to_first);
        let pss = if r.subject == Subject::Ceiling {
            "–".to_owned()
        } else {
            format!("{:.1} MiB", r.idle_median(|i| i.rss_mib))
        };
        println!(
            "| {} | {t:.0} tasks/s ({lo:.0}–{hi:.0}) | {:.1} ms | {:.2} ms | {:.2} ms | {pss} |",
            r.subject.name(),
            s * 1e3,
            r.idle_median(|i| i.p50) * 1e3,
            r.idle_median(|i| i.p99) * 1e3,
        );
    }
    println!("\nCPU time per task during the drain (µs, median)");
    println!(
        "| subject | subject's processes | of which its main process | broker | benchmark (publisher, results) |"
    );
    println!("|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.subject.name(),
            r.median(|d| d.cpu.subject).0,
            r.median(|d| d.cpu.main).0,
            r.median(|d| d.cpu.broker).0,
            r.median(|d| d.cpu.bench).0,
        );
    }
    let find = |s: Subject| rows.iter().find(|r| r.subject == s);
    if let (Some(ceil), Some(ours)) = (find(Subject::Ceiling), find(Subject::Celeryd)) {
        let per_round: Vec<f64> = ours
            .drains
            .iter()
            .zip(&ceil.drains)
            .map(|(o, c)| o.throughput / c.throughput)
            .collect();
        let cells: Vec<String> = per_round.iter().map(|r| format!("{r:.2}")).collect();
        let (ratio, ..) = median_range(per_round);
        println!(
            "\nceleryd/ceiling drain: {:.2} by medians, {ratio:.2} median of rounds ({}) (target ≥ 0.80)",
            ours.median(|d| d.throughput).0 / ceil.median(|d| d.throughput).0,
            cells.join(", ")
        );
        if let Some(py) = find(Subject::Celery) {
            println!(
                "celeryd/Celery: drain ×{:.1}, p50 ×{:.2}, start ×{:.2}, PSS ×{:.2}, CPU per task ×{:.2}",
                ours.median(|d| d.throughput).0 / py.median(|d| d.throughput).0,
                ours.idle_median(|i| i.p50) / py.idle_median(|i| i.p50),
                ours.median(|d| d.start_to_first).0 / py.median(|d| d.start_to_first).0,
                ours.idle_median(|i| i.rss_mib) / py.idle_median(|i| i.rss_mib),
                ours.median(|d| d.cpu.subject).0 / py.median(|d| d.cpu.subject).0,
            );
        }
        println!(
            "targets: p50 ≤ 0.5 ms ({:.2}), p99 ≤ 1 ms ({:.2}), start ≤ 50 ms ({:.1}), PSS ≤ 24 MB ({:.1} MiB)",
            ours.idle_median(|i| i.p50) * 1e3,
            ours.idle_median(|i| i.p99) * 1e3,
            ours.median(|d| d.start_to_first).0 * 1e3,
            ours.idle_median(|i| i.rss_mib)
        );
    }
    if let (Some(ours), Some(py)) = (find(Subject::CeleryPy), find(Subject::Celery)) {
        let per_round: Vec<String> = ours
            .drains
            .iter()
            .zip(&py.drains)
            .map(|(o, p)| format!("{:.2}", o.throughput / p.throughput))
            .collect();
        println!(
            "Python tasks, celeryd -A/Celery prefork (same app): drain ×{:.2} (target ≥ 1.8), \
             p50 ×{:.2} (≤ 0.6), p99 ×{:.2}, start ×{:.2} (≤ 1), PSS ×{:.2} (≤ 0.7), CPU per task ×{:.2}",
            ours.median(|d| d.throughput).0 / py.median(|d| d.throughput).0,
            ours.idle_median(|i| i.p50) / py.idle_median(|i| i.p50),
            ours.idle_median(|i| i.p99) / py.idle_median(|i| i.p99),
            ours.median(|d| d.start_to_first).0 / py.median(|d| d.start_to_first).0,
            ours.idle_median(|i| i.rss_mib) / py.idle_median(|i| i.rss_mib),
            ours.median(|d| d.cpu.subject).0 / py.median(|d| d.cpu.subject).0,
        );
        println!(
            "Python tasks, drain ratio per round: {}",
            per_round.join(", ")
        );
        if !floors.is_empty() {
            print_bounds(&floors, ours, py);
        }
    }
    if sweep == 0 {
        return;
    }
    let mut series: Vec<(Subject, Vec<(usize, f64)>)> = Vec::new();
    for &s in &subjects {
        let mut points = Vec::new();
        for c in 1..=8 {
            eprintln!("sweep: {} -c {c} …", s.name());
            points.push((c, drain(s, sweep, c).await.throughput));
        }
        series.push((s, points));
    }
    println!("\nthroughput (tasks/s) by concurrency, {sweep} tasks per point");
    for (s, points) in &series {
        let cells: Vec<String> = points.iter().map(|(c, t)| format!("{c}: {t:.0}")).collect();
        println!("  {:<28} {}", s.name(), cells.join("  "));
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/output");
    std::fs::create_dir_all(&out).unwrap();
    let path = out.join("throughput.svg");
    std::fs::write(&path, svg(&series, sweep)).unwrap();
    println!("wrote {}", path.display());
}

/// A line chart of throughput against concurrency, one line per subject.
fn svg(series: &[(Subject, Vec<(usize, f64)>)], tasks: usize) -> String {
    let (w, h, left, bottom, top, right) = (720.0, 420.0, 70.0, 50.0, 40.0, 230.0);
    let max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, t)| *t))
        .fold(1.0_f64, f64::max);
    let step = [100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0]
        .into_iter()
        .find(|s| max / s <= 8.0)
        .unwrap_or(20000.0);
    let ymax = (max / step).ceil() * step;
    let x = |c: usize| left + (c as f64 - 1.0) / 7.0 * (w - left - right);
    let y = |t: f64| h - bottom - t / ymax * (h - bottom - top);
    let colours = ["#888888", "#d2691e", "#1f77b4"];
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"22\" font-size=\"14\">No-op tasks with results: throughput by concurrency ({tasks} tasks per point)</text>\n"
    );
    let mut t = 0.0;
    while t <= ymax + 0.5 {
        s.push_str(&format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{t:.0}</text>\n",
            w - right,
            left - 6.0,
            y(t) + 4.0,
            y = y(t)
        ));
        t += step;
    }
    for c in 1..=8 {
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{c}</text>\n",
            x(c),
            h - bottom + 18.0
        ));
    }
    s.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">concurrency (-c)</text>\n<text x=\"16\" y=\"{:.1}\" transform=\"rotate(-90 16 {:.1})\" text-anchor=\"middle\">tasks/s</text>\n",
        (left + w - right) / 2.0,
        h - 12.0,
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0
    ));
    for (i, (subject, points)) in series.iter().enumerate() {
        let colour = colours[i % colours.len()];
        let path: Vec<String> = points
            .iter()
            .map(|(c, t)| format!("{:.1},{:.1}", x(*c), y(*t)))
            .collect();
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\n",
            path.join(" ")
        ));
        let ly = top + 20.0 + i as f64 * 20.0;
        s.push_str(&format!(
            "<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{:.1}\">{}</text>\n",
            w - right + 10.0,
            w - right + 30.0,
            w - right + 36.0,
            ly + 4.0,
            subject.name()
        ));
    }
    s.push_str("</svg>\n");
    s
}
