//! Side by side, on the same broker in one run: a minimal AMQP echo consumer written here (the
//! ceiling for any worker on this broker), celeryd, and Python Celery 5.7's prefork worker
//! (installed into the test virtualenv by scripts/ensure-python.sh), all running no-op tasks
//! with rpc:// results.
//!
//! Run: `cargo bench --profile dev --bench compare`. Env: BENCH_TASKS (drain, default 10000),
//! BENCH_ROUNDTRIPS (latency, default 300), BENCH_SWEEP_TASKS (per point of the concurrency
//! sweep, default 4000; 0 skips the sweep), BENCH_PYTHON=0 to leave Python Celery out,
//! AMQP_URL. Prints a table with ratios and writes `benches/output/throughput.svg`.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub, dead_code)] // a benchmark

#[path = "support.rs"]
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use time::OffsetDateTime;

use celeryd_actors::consumer::amqp::publish_result;
use celeryd_actors::protocol::{ResultState, result_body};
use support::{amqp_url, delete_queue, env_or, publish, setup, start_worker};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    Ceiling,
    Celeryd,
    Celery,
}

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Subject::Ceiling => "AMQP echo consumer (ceiling)",
            Subject::Celeryd => "celeryd",
            Subject::Celery => "Python Celery 5.7 prefork",
        }
    }
}

/// A running subject: a process (celeryd, Celery) or the in-bench consumer task.
enum Running {
    Process(Child, tempfile::TempDir),
    Task(tokio::task::JoinHandle<()>, Connection),
}

impl Running {
    fn pid(&self) -> Option<u32> {
        match self {
            Running::Process(c, _) => Some(c.id()),
            Running::Task(..) => None,
        }
    }

    async fn stop(self) {
        match self {
            Running::Process(mut c, _dir) => {
                let pid = nix::unistd::Pid::from_raw(c.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(20);
                while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let _ = c.kill();
                let _ = c.wait();
            }
            Running::Task(task, conn) => {
                task.abort();
                let _ = conn.close(200, "bye".into()).await;
            }
        }
    }
}

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python")
}

fn celery_exe() -> Option<PathBuf> {
    if std::env::var("BENCH_PYTHON").as_deref() == Ok("0") {
        return None;
    }
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ensure-python.sh"))
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    let python = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()?
        .trim()
        .to_owned();
    Some(PathBuf::from(python).with_file_name("celery"))
}

async fn start(subject: Subject, queue: &str, concurrency: usize) -> Running {
    let c = concurrency.to_string();
    match subject {
        Subject::Celeryd => {
            let dir = tempfile::tempdir().unwrap();
            let child = start_worker(dir.path(), queue, "", &["-c", &c]);
            Running::Process(child, dir)
        }
        Subject::Celery => {
            let dir = tempfile::tempdir().unwrap();
            let url = amqp_url().replace("/%2f", "//").replace("/%2F", "//");
            let node = format!(
                "bench-py-{}@%h",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            );
            let child = Command::new(celery_exe().expect("python celery"))
                .current_dir(python_dir())
                .args([
                    "-A",
                    "celeryd_app",
                    "worker",
                    "-P",
                    "prefork",
                    "-c",
                    &c,
                    "-Q",
                    queue,
                ])
                .args(["-n", &node, "-l", "warning"])
                .args([
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ])
                .env("AMQP_URL", url)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start celery worker");
            Running::Process(child, dir)
        }
        Subject::Ceiling => {
            let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
                .await
                .unwrap();
            let ch = conn.create_channel().await.unwrap();
            ch.basic_qos((concurrency * 4) as u16, BasicQosOptions::default())
                .await
                .unwrap();
            let consumer = ch
                .basic_consume(
                    queue.into(),
                    "echo".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
            Running::Task(tokio::spawn(echo(ch, consumer)), conn)
        }
    }
}

/// The ceiling: consume, parse the body and headers, publish a SUCCESS result, ack.
async fn echo(ch: Channel, mut consumer: lapin::Consumer) {
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

struct Drain {
    start_to_first: f64,
    throughput: f64,
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
    let started = Instant::now();
    let running = start(subject, &queue, concurrency).await;
    let (mut first, mut got) = (None, 0);
    while got < n {
        match tokio::time::timeout(Duration::from_secs(300), results.next()).await {
            Ok(Some(Ok(_))) => {
                got += 1;
                first.get_or_insert_with(Instant::now);
            }
            _ => break,
        }
    }
    let end = Instant::now();
    running.stop().await;
    delete_queue(&ch, &queue).await;
    let _ = conn.close(200, "bye".into()).await;
    let first = first.expect("no result arrived");
    assert_eq!(got, n, "{} lost results", subject.name());
    Drain {
        start_to_first: (first - started).as_secs_f64(),
        throughput: (got - 1) as f64 / (end - first).as_secs_f64().max(1e-9),
    }
}

struct Idle {
    p50: f64,
    p99: f64,
    rss_mib: Option<f64>,
}

/// Sequential round trips (publish, wait for the result) against an idle subject, then the
/// proportional set size of its whole process tree.
async fn idle(subject: Subject, roundtrips: usize, concurrency: usize) -> Idle {
    let (conn, ch, queue, reply, mut results) = setup("latency").await;
    let running = start(subject, &queue, concurrency).await;
    // Warm up: the first result also means the subject is ready.
    for _ in 0..20 {
        publish(&ch, &queue, &reply, "tasks.noop", Vec::new()).await;
        results.next().await.unwrap().unwrap();
    }
    let mut times = Vec::with_capacity(roundtrips);
    for _ in 0..roundtrips {
        let t = Instant::now();
        publish(&ch, &queue, &reply, "tasks.noop", Vec::new()).await;
        results.next().await.unwrap().unwrap();
        times.push(t.elapsed().as_secs_f64());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_mib = running.pid().map(|p| tree_pss_kib(p) as f64 / 1024.0);
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

/// PSS (shared pages split between the processes that map them) of `pid` and every
/// descendant, in KiB.
fn tree_pss_kib(pid: u32) -> u64 {
    let mut parents: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if let Some(pp) = rest.split_whitespace().nth(1).and_then(|x| x.parse().ok()) {
            parents.entry(pp).or_default().push(p);
        }
    }
    let (mut total, mut todo) = (0, vec![pid]);
    while let Some(p) = todo.pop() {
        let text = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).unwrap_or_default();
        total += text
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
        todo.extend(parents.get(&p).cloned().unwrap_or_default());
    }
    total
}

fn main() {
    support::run(bench());
}

async fn bench() {
    let n: usize = env_or("BENCH_TASKS", 10_000);
    let roundtrips: usize = env_or("BENCH_ROUNDTRIPS", 300);
    let sweep: usize = env_or("BENCH_SWEEP_TASKS", 4_000);
    let mut subjects = vec![Subject::Ceiling, Subject::Celeryd];
    if celery_exe().is_some() {
        subjects.push(Subject::Celery);
    }
    let mut rows = Vec::new();
    for &s in &subjects {
        eprintln!("measuring {} …", s.name());
        let d = drain(s, n, 2).await;
        let i = idle(s, roundtrips, 4).await;
        rows.push((s, d, i));
    }
    println!("\nno-op tasks with rpc:// results, same broker, same run");
    println!(
        "| subject | drain {n} (-c 2) | start → first result | round trip p50 | p99 | idle PSS, whole tree (-c 4) |"
    );
    println!("|---|---|---|---|---|---|");
    for (s, d, i) in &rows {
        println!(
            "| {} | {:.0} tasks/s | {:.1} ms | {:.2} ms | {:.2} ms | {} |",
            s.name(),
            d.throughput,
            d.start_to_first * 1e3,
            i.p50 * 1e3,
            i.p99 * 1e3,
            i.rss_mib.map_or("–".to_owned(), |m| format!("{m:.1} MiB"))
        );
    }
    let find = |s: Subject| rows.iter().find(|(x, ..)| *x == s);
    if let (Some((_, ceil, _)), Some((_, ours, our_idle))) =
        (find(Subject::Ceiling), find(Subject::Celeryd))
    {
        println!(
            "\nceleryd/ceiling drain: {:.2} (target ≥ 0.80)",
            ours.throughput / ceil.throughput
        );
        if let Some((_, py, py_idle)) = find(Subject::Celery) {
            println!(
                "celeryd/Celery: drain ×{:.1}, p50 ×{:.2}, start ×{:.2}, PSS ×{:.2}",
                ours.throughput / py.throughput,
                our_idle.p50 / py_idle.p50,
                ours.start_to_first / py.start_to_first,
                our_idle.rss_mib.unwrap_or(0.0) / py_idle.rss_mib.unwrap_or(f64::NAN)
            );
        }
        println!(
            "targets: p50 ≤ 0.5 ms ({:.2}), p99 ≤ 1 ms ({:.2}), start ≤ 50 ms ({:.1}), PSS ≤ 24 MB ({:.1} MiB)",
            our_idle.p50 * 1e3,
            our_idle.p99 * 1e3,
            ours.start_to_first * 1e3,
            our_idle.rss_mib.unwrap_or(0.0)
        );
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
