//! Bad messages are rejected (not requeued) and logged; the worker keeps going.

use lapin::BasicProperties;
use lapin::types::FieldTable;
use serde_json::json;

use crate::block_on;
use crate::kit::{
    Worker, amqp_text, call_task, connect, delete_queue, publish_raw, queue_depth, task_headers,
    unique_queue,
};

async fn publish(queue: &str, headers: FieldTable, content_type: &str, body: &[u8]) {
    let conn = connect().await;
    let ch = conn.create_channel().await.unwrap();
    let props = BasicProperties::default()
        .with_content_type(content_type.into())
        .with_delivery_mode(2);
    publish_raw(&ch, "", queue, Some(headers), props, body).await;
    conn.close(200, "bye".into()).await.unwrap();
}

#[test]
fn malformed_messages_are_rejected_and_the_next_valid_one_succeeds() {
    let queue = unique_queue("malformed");
    let worker = Worker::builder(&queue).concurrency(1).start();
    block_on(async {
        publish(
            &queue,
            task_headers("tasks.add", "bad-json"),
            "application/json",
            b"{not json",
        )
        .await;
        publish(
            &queue,
            task_headers("tasks.add", "bad-shape"),
            "application/json",
            br#"{"a": 1}"#,
        )
        .await;
        publish(
            &queue,
            task_headers("tasks.add", "pickle"),
            "application/x-python-serialize",
            b"\x80\x04.",
        )
        .await;
        publish(
            &queue,
            FieldTable::default(),
            "application/json",
            br#"[1, 2]"#,
        )
        .await;
        let mut bad_eta = task_headers("tasks.add", "bad-eta");
        bad_eta.insert("eta".into(), amqp_text("next tuesday"));
        publish(&queue, bad_eta, "application/json", br#"[[1, 2], {}, {}]"#).await;
        publish(
            &queue,
            task_headers("tasks.add", "bad-utf8"),
            "application/json",
            b"[[\"\xff\"], {}, {}]",
        )
        .await;
    });
    let r = call_task(&queue, "tasks.add", "[2, 3]", &[]);
    assert_eq!(r["result"], json!(5), "{r}");
    let log = worker.log();
    assert!(
        log.matches("Received invalid task message").count() >= 5,
        "{log}"
    );
    assert!(
        log.contains("Received and deleted unknown message"),
        "{log}"
    );
    assert!(
        log.contains("pickle") || log.contains("python-serialize"),
        "{log}"
    );
    // Rejected without requeue: nothing is left in the queue, nothing loops.
    let depth = block_on(async { queue_depth(&connect().await, &queue).await });
    assert_eq!(depth, 0);
    drop(worker);
    block_on(delete_queue(&queue));
}
