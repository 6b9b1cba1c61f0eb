//! Shared by the benchmarks: broker set-up, publishing task messages, starting the worker.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lapin::options::QueueDeleteOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use time::OffsetDateTime;

use celeryd_actors::broker::amqp::{TaskQueue, declare_task_queue, publish_task, result_consumer};
use celeryd_actors::protocol::encode::{TaskCall, TaskMessage};

/// Runs a benchmark's async body on a small runtime.
pub fn run<F: std::future::Future>(body: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
        .block_on(body)
}

/// `key` from the environment, parsed, or `default`.
pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The broker URL (`AMQP_URL`).
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A connection, a channel, a task queue declared as Celery does, and a consumer of an
/// exclusive reply queue (returned with its name).
pub async fn setup(prefix: &str) -> (Connection, Channel, String, String, lapin::Consumer) {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("broker");
    let ch = conn.create_channel().await.unwrap();
    let queue = format!("bench-{prefix}-{}", uuid::Uuid::new_v4().simple());
    let reply = format!("bench-reply-{}", uuid::Uuid::new_v4().simple());
    declare_task_queue(&ch, &TaskQueue::plain(&queue))
        .await
        .unwrap();
    let results = result_consumer(&ch, &reply).await.unwrap();
    (conn, ch, queue, reply, results)
}

/// Publishes one task message as a Python client would, results to `reply`.
pub async fn publish(
    ch: &Channel,
    queue: &str,
    reply: &str,
    name: &str,
    args: Vec<serde_json::Value>,
) {
    let call = TaskCall {
        name: name.into(),
        args,
        reply_to: Some(reply.to_owned()),
        origin: "bench@localhost".into(),
        ..Default::default()
    };
    let msg = TaskMessage::new(&call, OffsetDateTime::now_utc());
    publish_task(ch, queue, &msg).await.unwrap();
}

/// Starts the worker binary on `queue` with extra TOML config and flags.
pub fn start_worker(dir: &Path, queue: &str, config: &str, flags: &[&str]) -> Child {
    start_worker_program(
        Path::new(env!("CARGO_BIN_EXE_worker")),
        dir,
        queue,
        config,
        flags,
    )
}

/// Starts `program` (a worker binary: this build's or another) on `queue` with extra TOML
/// config and flags.
pub fn start_worker_program(
    program: &Path,
    dir: &Path,
    queue: &str,
    config: &str,
    flags: &[&str],
) -> Child {
    start_worker_on(program, &amqp_url(), dir, queue, config, flags)
}

/// Starts `program` on the broker at `broker` (a Redis one, say), on `queue`, with extra
/// TOML config and flags.
pub fn start_worker_on(
    program: &Path,
    broker: &str,
    dir: &Path,
    queue: &str,
    config: &str,
    flags: &[&str],
) -> Child {
    let path = dir.join("w.toml");
    std::fs::write(&path, format!("[broker]\nurl = \"{broker}\"\n{config}\n")).unwrap();
    let mut cmd = wrapped(program);
    cmd.arg("--config")
        .arg(&path)
        .args(["-Q", queue, "-l", "warning", "-n", "bench@%h"])
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start worker")
}

/// `program` run under BENCH_WORKER_WRAPPER when it is set: another program with its own
/// arguments, e.g. `valgrind --tool=callgrind` to count the worker's instructions.
pub fn wrapped(program: &Path) -> Command {
    let wrapper = std::env::var("BENCH_WORKER_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    match words.next() {
        Some(w) => {
            let mut c = Command::new(w);
            c.args(words).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// The broker URL as Celery spells the default vhost (`//`).
pub fn celery_amqp_url() -> String {
    amqp_url().replace("/%2f", "//").replace("/%2F", "//")
}

/// Starts Python Celery's prefork worker (`celery` beside `python`) on the stock task names of
/// `tests/python/celeryd_app.py`, on `queue`, with `concurrency` children, without gossip,
/// mingle or heartbeat, and `env` besides `AMQP_URL`.
pub fn start_celery_worker(
    python: &Path,
    queue: &str,
    concurrency: usize,
    env: &[(&str, &str)],
) -> Child {
    start_celery_pool(python, "celeryd_app", "prefork", queue, concurrency, env)
}

/// Starts Python Celery's worker for `app` (a module of `tests/python`) with pool `pool`
/// (`-P`) on `queue`, with `concurrency`, without gossip, mingle or heartbeat, and `env`
/// besides `AMQP_URL`.
pub fn start_celery_pool(
    python: &Path,
    app: &str,
    pool: &str,
    queue: &str,
    concurrency: usize,
    env: &[(&str, &str)],
) -> Child {
    let node = format!(
        "bench-py-{}@%h",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let c = concurrency.to_string();
    Command::new(python.with_file_name("celery"))
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python"))
        .args(["-A", app, "worker", "-P", pool, "-c", &c, "-Q", queue])
        .args(["-n", &node, "-l", "warning"])
        .args([
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ])
        .env("AMQP_URL", celery_amqp_url())
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start celery worker")
}

/// The test virtualenv's python (`scripts/ensure-python.sh` makes it if needed).
pub fn python() -> std::path::PathBuf {
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ensure-python.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/ensure-python.sh");
    assert!(out.status.success(), "scripts/ensure-python.sh failed");
    std::path::PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("a python path")
            .trim(),
    )
}

/// PSS (shared pages split between the processes that map them) of `pid` and every
/// descendant, in KiB.
pub fn tree_pss_kib(pid: u32) -> u64 {
    process_tree(pid)
        .iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).unwrap_or_default();
            text.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// Warm-stops the worker and deletes the queue.
pub async fn teardown(mut worker: Child, ch: &Channel, queue: &str) {
    let pid = nix::unistd::Pid::from_raw(worker.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = worker.wait();
    delete_queue(ch, queue).await;
}

/// Deletes a benchmark queue and its exchange (best effort).
pub async fn delete_queue(ch: &Channel, queue: &str) {
    let _ = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = ch.exchange_delete(queue.into(), Default::default()).await;
}

/// Median and 90th percentile of `v` (sorted in place).
pub fn median_p90(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.9))
}

/// Every process id under /proc with its parent's id.
fn process_parents() -> Vec<(u32, u32)> {
    let mut out = Vec::new();
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
            out.push((p, pp));
        }
    }
    out
}

/// `pid` and all its descendants.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let all = process_parents();
    let (mut tree, mut todo) = (Vec::new(), vec![pid]);
    while let Some(p) = todo.pop() {
        tree.push(p);
        todo.extend(all.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
    }
    tree
}

/// The RabbitMQ node's processes (the Erlang VM and its helpers), found by name.
pub fn broker_processes() -> Vec<u32> {
    process_parents()
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            matches!(comm.trim(), "beam.smp" | "erl_child_setup" | "epmd")
        })
        .collect()
}

/// CPU time (user + system) used so far by these processes, in seconds, with what their
/// reaped children used.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let ticks: u64 = pids
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            // Fields after the command: state is index 0, utime 11, stime 12, cutime 13,
            // cstime 14.
            let f: Vec<&str> = rest.split_whitespace().collect();
            let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            Some(n(11) + n(12) + n(13) + n(14))
        })
        .sum();
    ticks as f64 / hz
}

/// `redis-cli -n db args…` on the local Redis, its output trimmed.
pub fn redis_cli(db: u32, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-n", &db.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The local redis-server processes (their CPU time is Redis's share).
pub fn redis_pids() -> Vec<u32> {
    let out = Command::new("pgrep").arg("redis-server").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Waits until Redis database `db` holds `n` keys (one result each) while `child` runs:
/// when the first and the last were stored. Panics after `limit` or if `child` exits.
pub async fn wait_for_results(
    child: &mut Child,
    db: u32,
    n: usize,
    what: &str,
    limit: Duration,
) -> (Instant, Instant) {
    let deadline = Instant::now() + limit;
    let count = || redis_cli(db, &["DBSIZE"]).parse::<usize>().unwrap_or(0);
    let mut first = None;
    loop {
        let c = count();
        if c > 0 {
            first.get_or_insert_with(Instant::now);
        }
        if c >= n {
            return (first.unwrap(), Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {c} of {n} results after {limit:?}"
        );
        assert!(child.try_wait().unwrap().is_none(), "{what} exited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
