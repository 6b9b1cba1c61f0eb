//! The exact messages Python Celery 5.7 publishes (captured in tests/fixtures/), replayed
//! byte for byte with raw AMQP: each one gets the result Celery semantics call for.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::BasicProperties;
use serde_json::{Value, json};

use celeryd_actors::broker::amqp::value::json_to_table;
use celeryd_actors::broker::amqp::{publish_task, result_consumer};

use crate::block_on;
use crate::kit::{Worker, connect, delete_queue, publish_raw, repo, unique_queue};

fn load(name: &str) -> Value {
    let path = repo().join("tests/fixtures").join(format!("{name}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn body_of(fixture: &Value) -> Vec<u8> {
    if let Some(b) = fixture["body"].as_str() {
        return b.as_bytes().to_vec();
    }
    let out = std::process::Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(fixture["body_base64"].as_str().unwrap().as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    out.stdout
}

#[test]
fn captured_python_messages_get_celery_results() {
    // name -> (expected status, expected result or exception type)
    let cases: Vec<(&str, &str, Value)> = vec![
        ("v2_add", "SUCCESS", json!(5)),
        ("v1_add", "SUCCESS", json!(5)),
        ("v2_gzip", "SUCCESS", json!(5)),
        ("v2_shadow", "SUCCESS", json!(5)),
        ("v2_eta_datetime", "SUCCESS", json!(5)),
        ("v2_group_member", "SUCCESS", json!(2)),
        ("v2_chain", "SUCCESS", json!(3)),
        (
            "v2_kwargs_unicode",
            "SUCCESS",
            json!([[], {"text": "héllo ✓", "n": {"a": [1, null]}}]),
        ),
        // expires was 60 s after the capture: long past, so REVOKED without running.
        ("v2_full_options", "REVOKED", json!("TaskRevokedError")),
    ];
    let queue = unique_queue("fixtures");
    let worker = Worker::builder(&queue).concurrency(2).start();
    let results = block_on(async {
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        let reply = unique_queue("fixture-replies");
        let mut stream = result_consumer(&ch, &reply).await.unwrap();
        let mut ids = HashMap::new();
        for (name, _, _) in &cases {
            let f = load(name);
            let p = &f["properties"];
            let id = p["correlation_id"].as_str().unwrap().to_owned();
            let mut props = BasicProperties::default()
                .with_content_type(p["content_type"].as_str().unwrap().into())
                .with_content_encoding(p["content_encoding"].as_str().unwrap().into())
                .with_correlation_id(id.as_str().into())
                .with_reply_to(reply.as_str().into())
                .with_delivery_mode(2);
            if let Some(prio) = p["priority"].as_u64() {
                props = props.with_priority(prio as u8);
            }
            let headers = json_to_table(f["headers"].as_object().unwrap());
            let body = body_of(&f);
            publish_raw(&ch, "", &queue, Some(headers), props, &body).await;
            ids.insert(id, *name);
        }
        let mut got: HashMap<&str, Value> = HashMap::new();
        while got.len() < cases.len() {
            let d = tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .unwrap_or_else(|_| panic!("results so far: {got:?}"))
                .unwrap()
                .unwrap();
            let body: Value = serde_json::from_slice(&d.data).unwrap();
            let name = ids[body["task_id"].as_str().unwrap()];
            let cid = d
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.to_string());
            assert_eq!(
                cid.as_deref(),
                body["task_id"].as_str(),
                "{name}: correlation_id"
            );
            got.insert(name, body);
        }
        got
    });
    for (name, status, expected) in &cases {
        let body = &results[name];
        assert_eq!(body["status"], *status, "{name}: {body}");
        if *status == "SUCCESS" {
            assert_eq!(body["result"], *expected, "{name}: {body}");
        } else {
            assert_eq!(body["result"]["exc_type"], *expected, "{name}: {body}");
        }
    }
    assert!(
        results["v2_group_member"]["group_id"].is_string(),
        "group id is passed on"
    );
    assert!(
        worker.log().contains("Task my.shadow["),
        "the shadow name is used in logs"
    );
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn track_started_publishes_started_then_success() {
    use celeryd_actors::protocol::encode::{TaskCall, TaskMessage};
    let queue = unique_queue("started");
    let worker = Worker::builder(&queue)
        .config("[task]\ntrack_started = true\n")
        .concurrency(1)
        .start();
    let states = block_on(async {
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        let reply = unique_queue("started-replies");
        let mut stream = result_consumer(&ch, &reply).await.unwrap();
        let call = TaskCall {
            name: "tasks.add".into(),
            args: vec![json!(1), json!(1)],
            reply_to: Some(reply.clone()),
            origin: "test@localhost".into(),
            ..Default::default()
        };
        let msg = TaskMessage::new(&call, time::OffsetDateTime::now_utc());
        publish_task(&ch, &queue, &msg).await.unwrap();
        let mut states = Vec::new();
        while states.len() < 2 {
            let d = tokio::time::timeout(Duration::from_secs(20), stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            states.push(serde_json::from_slice::<Value>(&d.data).unwrap());
        }
        states
    });
    assert_eq!(states[0]["status"], "STARTED", "{states:?}");
    assert!(states[0]["result"]["pid"].as_u64().unwrap() > 0);
    assert!(
        states[0]["result"]["hostname"]
            .as_str()
            .unwrap()
            .starts_with(&worker.name)
    );
    assert_eq!(states[0]["date_done"], Value::Null);
    assert_eq!(states[1]["status"], "SUCCESS");
    assert_eq!(states[1]["result"], json!(2));
    drop(worker);
    block_on(delete_queue(&queue));
}
