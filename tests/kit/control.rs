//! Remote control as a client sends it, byte for byte: requests no client would check first,
//! and the health check that follows a hostile one.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};

use super::{Worker, block_on, call_task, connect, publish_raw, worker_ctl};

/// Sends one control request to `node` exactly as given (no client-side checks) and returns
/// the node's reply. Replies come back through `amq.direct`, which the worker never declares.
pub fn control_call(node: &str, method: &str, arguments: Value) -> Value {
    block_on(async {
        use futures_util::StreamExt;
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        let key = format!("control-reply-{}", uuid::Uuid::new_v4().simple());
        let opts = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        ch.queue_declare(key.as_str().into(), opts, FieldTable::default())
            .await
            .unwrap();
        ch.queue_bind(
            key.as_str().into(),
            "amq.direct".into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let mut replies = ch
            .basic_consume(
                key.as_str().into(),
                "r".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let body = json!({"method": method, "arguments": arguments, "destination": [node],
                          "ticket": key, "reply_to": {"exchange": "amq.direct", "routing_key": key}});
        publish_control(&ch, &body).await;
        let reply = tokio::time::timeout(Duration::from_secs(15), replies.next())
            .await
            .unwrap_or_else(|_| panic!("no reply from {node} to {method}"))
            .unwrap()
            .unwrap();
        let _ = conn.close(200, "bye".into()).await;
        let v: Value = serde_json::from_slice(&reply.data).unwrap();
        v[node].clone()
    })
}

/// Publishes a control request body to the pidbox exchange, as a client does.
pub async fn publish_control(ch: &lapin::Channel, body: &Value) {
    publish_raw(
        ch,
        "celery.pidbox",
        "",
        None,
        BasicProperties::default().with_content_type("application/json".into()),
        body.to_string().as_bytes(),
    )
    .await;
}

/// The `error` of a control reply, failing when the reply is not an error.
pub fn error_text(reply: &Value) -> &str {
    reply["error"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error reply, got {reply}"))
}

/// The worker answers a ping and runs a task: it is up and not stalled.
pub fn assert_healthy(worker: &Worker, queue: &str) {
    let node = worker.nodename();
    let (code, out, err) = worker_ctl(&["ping", "-d", &node, "-t", "10"]);
    assert_eq!(code, 0, "ping: {out}{err}");
    let r = call_task(queue, "tasks.add", "[20, 22]", &[]);
    assert_eq!(r["result"], json!(42), "{r}");
}
