//! A Redis broker that restarts under load (a private `redis-server` on its own port, its data
//! kept in an append-only file, as a production Redis keeps it): the worker reconnects,
//! resubscribes its pidbox, consumes again, and every task sent before the restarts runs. The
//! results go to the shared Redis (a database of their own), which stays up.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::redis_backend::Redis;
use crate::kit::{Worker, celery_cli_on, eventually, free_port, python, repo, unique_queue};
use crate::serial;

const RESULTS: &str = "redis://127.0.0.1:6379/9";

fn send(broker: &str, queue: &str, n: usize) -> Vec<String> {
    let out = Command::new(python())
        .arg(repo().join("tests/python/celery_client.py"))
        .args(["call", "tasks.sleep", "--args", "[0.02]", "--queue", queue])
        .args(["--count", &n.to_string(), "--no-wait"])
        .env("AMQP_URL", broker)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(text.lines().last().unwrap_or_default()).unwrap();
    v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect()
}

fn succeeded(ids: &[String]) -> usize {
    ids.iter()
        .filter(|id| {
            let out = Command::new("redis-cli")
                .args(["-n", "9", "get", &format!("celery-task-meta-{id}")])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains("\"SUCCESS\"")
        })
        .count()
}

#[test]
fn redis_restarted_five_times_under_load_loses_nothing_and_consuming_resumes() {
    let _guard = serial();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start_in(port, dir.path(), true);
    let url = redis.url();
    let queue = unique_queue("redis-restart");
    let worker = Worker::builder(&queue)
        .broker(&url)
        .config(&format!("[result]\nbackend = \"{RESULTS}\"\n"))
        .concurrency(2)
        .start();
    let ids = send(&url, &queue, 400);
    let mut back = Vec::new();
    for round in 1..=5 {
        std::thread::sleep(Duration::from_millis(700));
        redis.stop();
        std::thread::sleep(Duration::from_millis(300));
        redis = Redis::start_in(port, dir.path(), true);
        let returned = Instant::now();
        eventually(Duration::from_secs(30), "the worker to reconnect", || {
            worker
                .log()
                .matches("Connected to the broker again")
                .count()
                >= round
        });
        back.push(returned.elapsed());
    }
    eprintln!("consuming again after each return: {back:?}");
    eventually(
        Duration::from_secs(90),
        "every task sent before the restarts to run",
        || succeeded(&ids) == ids.len(),
    );
    // Remote control answers again (its pidbox subscription was renewed).
    let node = worker.nodename();
    let ping = celery_cli_on(&url, &["inspect", "ping", "--json", "-d", &node]);
    assert!(
        String::from_utf8_lossy(&ping.stdout).contains("pong"),
        "{ping:?}\n{}",
        worker.log()
    );
    drop(redis);
}

#[test]
fn kill_9_at_random_points_of_a_drain_loses_no_task() {
    let _guard = serial();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start_in(port, dir.path(), false);
    let url = redis.url();
    let queue = unique_queue("redis-kill");
    // `proj.mark` (acks_late) counts each run in Redis from inside the task: a task that ran
    // is counted even when the worker is killed before anything else of it is written.
    // Every held message is restored once the visibility timeout (2 s) has passed since its
    // last lease; a task killed while it runs is run again (acks_late).
    let options =
        "[broker.transport_options]\nvisibility_timeout = 2\nunacked_restore_interval = 1\n";
    let n = 10_000;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let client = Command::new(python())
        .current_dir(repo().join("tests/python"))
        .arg("proj_client.py")
        .args([
            "mark",
            "--queue",
            &queue,
            "--run",
            &run,
            "--count",
            &n.to_string(),
        ])
        .args(["--timeout", "300"])
        .env("AMQP_URL", &url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let mut kills = Vec::new();
    for _ in 0..5 {
        let mut w = Worker::builder(&queue)
            .broker(&url)
            .proj("rpc://", "")
            .config(options)
            .concurrency(2)
            .start();
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let after = Duration::from_millis(300 + (seed >> 33) % 1700);
        std::thread::sleep(after);
        w.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = w.wait_exit(Duration::from_secs(10));
        kills.push(after);
    }
    eprintln!("killed after {kills:?}");
    let last = Worker::builder(&queue)
        .broker(&url)
        .proj("rpc://", "")
        .config(options)
        .concurrency(2)
        .start();
    let out = client.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(text.lines().last().unwrap_or_default()).unwrap();
    eprintln!("{n} acks_late tasks, 5 kill -9: {seen}");
    assert_eq!(
        seen["distinct"],
        n,
        "every task ran: {seen}\n{}",
        last.log()
    );
    assert!(seen["runs"].as_u64().unwrap() >= n as u64, "{seen}");
    drop(redis);
}
