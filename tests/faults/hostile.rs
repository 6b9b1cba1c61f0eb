//! Hostile input: a flood of malformed task messages among valid ones, and malformed or
//! hostile control messages. The worker stays up, rejects each bad message once, and keeps
//! its secrets.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::FieldTable;
use serde_json::json;
use time::OffsetDateTime;

use celeryd_actors::broker::amqp::publish_task;
use celeryd_actors::protocol::encode::{TaskCall, TaskMessage};

use crate::kit::{
    Worker, amqp_text, connect, delete_queue, eventually, publish_raw, queue_depth, task_headers,
    unique_queue, worker_ctl,
};
use crate::{block_on, serial};

/// Bad message number `i`: (content type, headers, body).
fn bad_message(i: usize) -> (&'static str, FieldTable, Vec<u8>) {
    let mut h = task_headers("tasks.add", &format!("bad-{i}"));
    match i % 7 {
        0 => ("application/json", h, b"{not json".to_vec()),
        1 => ("application/json", h, br#"{"a": 1}"#.to_vec()),
        2 => (
            "application/json",
            FieldTable::default(),
            br#"[[1, 2], {}, {}]"#.to_vec(),
        ),
        3 => {
            h.insert("eta".into(), amqp_text("yesterday at noon"));
            ("application/json", h, br#"[[1, 2], {}, {}]"#.to_vec())
        }
        4 => (
            "application/x-python-serialize",
            h,
            b"\x80\x04\x95cos\nsystem\n".to_vec(),
        ),
        5 => ("application/json", h, vec![b'x'; 256 * 1024]),
        _ => (
            "application/json",
            h,
            vec![0xff, 0xfe, b'[', 0xc3, 0x28, b']'],
        ),
    }
}

#[test]
fn a_thousand_malformed_messages_among_valid_ones() {
    let _serial = serial();
    let queue = unique_queue("flood");
    let worker = Worker::builder(&queue).concurrency(2).start();
    let valid = block_on(async {
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        let mut valid = Vec::new();
        for i in 0..1000 {
            let (ct, headers, body) = bad_message(i);
            let props = BasicProperties::default()
                .with_content_type(ct.into())
                .with_delivery_mode(2);
            publish_raw(&ch, "", &queue, Some(headers), props, &body).await;
            let call = TaskCall {
                name: "tasks.add".into(),
                args: vec![json!(i), json!(1)],
                origin: "faults@localhost".into(),
                ..Default::default()
            };
            let msg = TaskMessage::new(&call, OffsetDateTime::now_utc());
            publish_task(&ch, &queue, &msg).await.unwrap();
            valid.push(msg.id);
        }
        conn.close(200, "bye".into()).await.unwrap();
        valid
    });
    eventually(Duration::from_secs(120), "every valid task done", || {
        let log = worker.log();
        valid
            .iter()
            .all(|id| log.contains(&format!("Task tasks.add[{id}] succeeded")))
    });
    let log = worker.log();
    let rejected = log.matches("Received invalid task message").count()
        + log.matches("Received and deleted unknown message").count();
    assert_eq!(rejected, 1000, "each bad message rejected exactly once");
    block_on(async {
        let conn = connect().await;
        assert_eq!(
            queue_depth(&conn, &queue).await,
            0,
            "nothing left, nothing redelivered"
        );
    });
    assert!(
        !log.contains("guest:guest"),
        "the broker password never appears in the log"
    );
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn hostile_control_messages_get_errors_or_are_ignored() {
    let _serial = serial();
    let queue = unique_queue("hostile");
    let worker = Worker::builder(&queue).concurrency(1).start();
    let node = worker.nodename();
    let reply_to = json!({"exchange": "reply.celery.pidbox", "routing_key": "nobody"});
    let request = |method: &str, arguments: serde_json::Value| {
        json!({"method": method, "arguments": arguments, "destination": [node],
               "ticket": "t", "reply_to": reply_to})
        .to_string()
        .into_bytes()
    };
    let mut bodies: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        b"[1, 2, 3]".to_vec(),
        br#"{"arguments": {}}"#.to_vec(),
        vec![0xff; 64],
        json!({"method": "ping", "arguments": [1], "destination": [node]})
            .to_string()
            .into_bytes(),
        request(
            "rate_limit",
            json!({"task_name": 5, "rate_limit": {"x": 1}}),
        ),
        request(
            "rate_limit",
            json!({"task_name": "tasks.add", "rate_limit": "fast"}),
        ),
        request(
            "revoke",
            json!({"task_id": {"not": "a list"}, "terminate": "yes", "signal": "SIGNOPE"}),
        ),
        request("terminate", json!({"task_id": "x", "signal": 99999})),
        request("pool_grow", json!({"n": "many"})),
        request("pool_shrink", json!({"n": -5})),
        request("autoscale", json!({"max": "x", "min": []})),
        request(
            "time_limit",
            json!({"task_name": "tasks.add", "soft": "soon", "hard": null}),
        ),
        request("add_consumer", json!({"queue": "x".repeat(300)})),
        request("add_consumer", json!({"queue": ""})),
        request(
            "add_consumer",
            json!({"queue": "q", "exchange_type": "bogus"}),
        ),
        request("query_task", json!({"ids": {"deep": [[["x"]]]}})),
        request("registered", json!({"taskinfoitems": 7})),
        request("revoke_by_stamped_headers", json!({"headers": 12})),
        request("no_such_command", json!({})),
        request("ping", json!({"x": "y".repeat(1 << 20)})),
        json!({"method": "ping", "arguments": {}, "destination": [node], "ticket": "t",
               "reply_to": {"exchange": "amq.nope", "routing_key": "r"}})
        .to_string()
        .into_bytes(),
        json!({"method": "ping", "arguments": {}, "destination": [node], "ticket": "t",
               "reply_to": {"exchange": "amq.direct", "routing_key": "r"}})
        .to_string()
        .into_bytes(),
    ];
    bodies.push(request("ping", json!({})));
    block_on(async {
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        for body in &bodies {
            let props = BasicProperties::default().with_content_type("application/json".into());
            publish_raw(&ch, "celery.pidbox", "", None, props, body).await;
        }
        conn.close(200, "bye".into()).await.unwrap();
    });
    std::thread::sleep(Duration::from_secs(2));
    // Still answering, still running tasks, nothing added from the bad requests.
    let (code, out, err) = worker_ctl(&["ping", "-d", &node, "-t", "5"]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = worker_ctl(&["active_queues", "--json", "-d", &node]);
    let queues: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(queues[&node].as_array().unwrap().len(), 1, "{queues}");
    let r = crate::kit::call_task(&queue, "tasks.add", "[1, 1]", &[]);
    assert_eq!(r["result"], json!(2), "{r}");
    assert_eq!(
        worker.children().len(),
        1,
        "pool_grow/pool_shrink nonsense ignored"
    );
    let log = worker.log();
    assert!(
        log.contains("Ignoring a malformed control message"),
        "logged"
    );
    drop(worker);
    block_on(delete_queue(&queue));
}
