//! The Prometheus endpoint (`--metrics-addr`), scraped over HTTP while the worker runs tasks.

use std::time::Duration;

use crate::block_on;
use crate::kit::{
    Worker, call_task, connect, delete_queue, eventually, free_port, http, publish_raw,
    task_headers, unique_queue,
};

/// Publishes `body` as a JSON task message for `tasks.add` to `queue`.
async fn publish_bad(queue: &str, body: &[u8]) {
    let conn = connect().await;
    let ch = conn.create_channel().await.unwrap();
    let headers = task_headers("tasks.add", "metrics-bad");
    let props = lapin::BasicProperties::default().with_content_type("application/json".into());
    publish_raw(&ch, "", queue, Some(headers), props, body).await;
    conn.close(200, "bye".into()).await.unwrap();
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[test]
fn metrics_endpoint_counts_tasks_children_and_pool() {
    let queue = unique_queue("metrics");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let worker = Worker::builder(&queue)
        .concurrency(1)
        .args(&["--metrics-addr", &addr])
        .start();
    call_task(&queue, "tasks.add", "[1, 2]", &[]);
    call_task(&queue, "tasks.add", "[3, 4]", &[]);
    call_task(&queue, "tasks.fail", "[\"x\"]", &[]);
    call_task(&queue, "tasks.flaky", "[1]", &[]);
    let r = call_task(&queue, "tasks.spin", "[10]", &["--time-limit", "0.3"]);
    assert_eq!(r["exc_type"], "TimeLimitExceeded", "{r}");
    let scrape = || {
        let (status, body) = http("GET", port, "/metrics");
        assert_eq!(status, 200, "{body}");
        body
    };
    eventually(Duration::from_secs(10), "the replacement child", || {
        value(&scrape(), "celeryd_pool_processes") == 1.0
    });
    let text = scrape();
    let total = |task: &str, state: &str| {
        value(
            &text,
            &format!("celeryd_tasks_total{{task=\"{task}\",state=\"{state}\"}}"),
        )
    };
    assert_eq!(total("tasks.add", "received"), 2.0);
    assert_eq!(total("tasks.add", "succeeded"), 2.0);
    assert_eq!(total("tasks.fail", "failed"), 1.0);
    assert_eq!(total("tasks.flaky", "retried"), 1.0);
    assert_eq!(total("tasks.flaky", "succeeded"), 1.0);
    assert_eq!(total("tasks.spin", "failed"), 1.0);
    assert_eq!(
        value(
            &text,
            "celeryd_task_runtime_seconds_count{task=\"tasks.add\"}"
        ),
        2.0
    );
    assert!(
        value(&text, "celeryd_task_queue_wait_seconds_count") >= 5.0,
        "{text}"
    );
    assert_eq!(value(&text, "celeryd_children_killed_total"), 1.0);
    assert_eq!(value(&text, "celeryd_pool_busy"), 0.0);
    assert!(text.contains("# TYPE celeryd_task_runtime_seconds histogram"));
    assert_eq!(value(&text, "celeryd_broker_connected"), 1.0);
    assert!(text.contains(&format!(
        "celeryd_build_info{{version=\"{}\"",
        env!("CARGO_PKG_VERSION")
    )));
    assert_eq!(value(&text, "celeryd_messages_unregistered_total"), 0.0);
    assert_eq!(value(&text, "celeryd_messages_malformed_total"), 0.0);
    let r = call_task(&queue, "tasks.no_such_task", "[]", &[]);
    assert_eq!(r["exc_type"], "NotRegistered", "{r}");
    block_on(publish_bad(&queue, b"{not json"));
    eventually(
        Duration::from_secs(10),
        "the malformed message counted",
        || value(&scrape(), "celeryd_messages_malformed_total") == 1.0,
    );
    assert_eq!(value(&scrape(), "celeryd_messages_unregistered_total"), 1.0);
    let (status, _) = http("GET", port, "/other");
    assert_eq!(status, 404);
    drop(worker);
    block_on(delete_queue(&queue));
}
