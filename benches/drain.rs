//! Drain benchmark: preload N `tasks.noop` messages (results on, rpc://), start the real
//! `worker` binary, and measure how fast it empties the queue.
//!
//! Run: `cargo bench --bench drain` (env: BENCH_TASKS=20000, BENCH_CONCURRENCY=2,
//! AMQP_URL). Prints tasks/s from the first to the last result, and start -> first result.

#![allow(clippy::unwrap_used)] // a benchmark: any failure should stop it loudly

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use time::OffsetDateTime;

use celeryd_actors::consumer::amqp::declare_task_queue;
use celeryd_actors::protocol::amqp_value::json_to_table;
use celeryd_actors::protocol::encode::{TaskCall, TaskMessage};

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench());
}

async fn bench() {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let n: usize = env_or("BENCH_TASKS", 20_000);
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 2);
    let queue = format!("bench-drain-{}", uuid::Uuid::new_v4().simple());
    let reply = format!("bench-reply-{}", uuid::Uuid::new_v4().simple());

    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("broker");
    let ch = conn.create_channel().await.unwrap();
    declare_task_queue(&ch, &queue).await.unwrap();
    let ropts = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    ch.queue_declare(reply.as_str().into(), ropts, FieldTable::default())
        .await
        .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();

    let t = Instant::now();
    let mut confirms = Vec::with_capacity(n);
    for _ in 0..n {
        let call = TaskCall {
            name: "tasks.noop".into(),
            reply_to: Some(reply.clone()),
            origin: "bench@localhost".into(),
            ..Default::default()
        };
        let msg = TaskMessage::new(&call, OffsetDateTime::now_utc());
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_correlation_id(msg.id.as_str().into())
            .with_reply_to(msg.reply_to.as_str().into())
            .with_delivery_mode(2)
            .with_headers(json_to_table(&msg.headers));
        let c = ch
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &msg.body,
                props,
            )
            .await
            .unwrap();
        confirms.push(c);
    }
    for c in confirms {
        c.await.unwrap();
    }
    println!(
        "preloaded {n} tasks.noop messages in {:.2}s",
        t.elapsed().as_secs_f64()
    );

    let consume = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut results = ch
        .basic_consume(
            reply.as_str().into(),
            "bench".into(),
            consume,
            FieldTable::default(),
        )
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("w.toml");
    std::fs::write(&config, format!("[broker]\nurl = \"{url}\"\n")).unwrap();
    let started = Instant::now();
    let mut worker = Command::new(env!("CARGO_BIN_EXE_worker"))
        .arg("--config")
        .arg(&config)
        .args([
            "-Q",
            &queue,
            "-c",
            &concurrency.to_string(),
            "-l",
            "warning",
            "-n",
            "bench@%h",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("start worker");

    let mut first = None;
    let mut got = 0;
    let deadline = Duration::from_secs(600);
    while got < n {
        match tokio::time::timeout(deadline, results.next()).await {
            Ok(Some(Ok(_))) => {
                got += 1;
                if first.is_none() {
                    first = Some(Instant::now());
                }
            }
            _ => break,
        }
    }
    let end = Instant::now();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = worker.wait();
    let _ = ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = ch
        .exchange_delete(queue.as_str().into(), Default::default())
        .await;

    let first = first.expect("no result arrived");
    let span = (end - first).as_secs_f64();
    println!("celeryd drain: {got}/{n} results, -c {concurrency}");
    println!(
        "  start -> first result : {:.1} ms",
        (first - started).as_secs_f64() * 1e3
    );
    println!("  first -> last result  : {span:.2} s");
    println!(
        "  throughput            : {:.0} tasks/s",
        (got.saturating_sub(1)) as f64 / span.max(1e-9)
    );
    println!(
        "  start -> last result  : {:.2} s ({:.0} tasks/s overall)",
        (end - started).as_secs_f64(),
        got as f64 / (end - started).as_secs_f64()
    );
}
