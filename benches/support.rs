//! Shared by the benchmarks: broker set-up, publishing task messages, starting the worker.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use lapin::options::QueueDeleteOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use time::OffsetDateTime;

use celeryd_actors::consumer::amqp::{
    TaskQueue, declare_task_queue, publish_task, result_consumer,
};
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
    let path = dir.join("w.toml");
    std::fs::write(
        &path,
        format!("[broker]\nurl = \"{}\"\n{config}\n", amqp_url()),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_worker"))
        .arg("--config")
        .arg(&path)
        .args(["-Q", queue, "-l", "warning", "-n", "bench@%h"])
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start worker")
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
