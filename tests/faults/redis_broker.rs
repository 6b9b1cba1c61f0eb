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
