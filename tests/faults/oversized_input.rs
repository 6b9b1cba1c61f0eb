//! Input past a limit (a header frame above `frame_max`, a body that inflates past the size
//! limit, headers nested too deep, names and ids longer than AMQP short strings) is refused
//! once with a log line or an error reply, and nothing else stops: the worker stays up, other
//! work goes on, nothing runs twice or leaks. (One case per defect of an adversarial pass,
//! issue 13.)

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::FieldTable;
use serde_json::json;

use crate::kit::{
    Worker, alive, amqp_text, amqp_url, assert_healthy, block_on, call_task, connect, control_call,
    delete_queue, eventually, publish_control, publish_raw, spawn_task, task_headers, unique_queue,
    with_worker,
};
use crate::serial;

/// Publishes one task message to `queue` by hand: JSON `body`, `headers` as given, persistent.
fn publish_task_raw(queue: &str, headers: FieldTable, body: &[u8]) {
    block_on(async {
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        publish_raw(&ch, "", queue, Some(headers), props, body).await;
        let _ = conn.close(200, "bye".into()).await;
    });
}

/// The peak resident memory of a process, KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_header_frame_larger_than_frame_max_is_received_once() {
    let _serial = serial();
    with_worker(
        "bigheader",
        |w| w.concurrency(1),
        |worker, queue| {
            // 40 kB of headers: more than the worker's frame_max (16384), less than the broker's.
            let id = uuid::Uuid::new_v4().to_string();
            let mut h = task_headers("tasks.add", &id);
            h.insert("x-padding".into(), amqp_text(&"p".repeat(40_000)));
            publish_task_raw(queue, h, br#"[[1, 2], {}, {}]"#);
            let after = spawn_task(queue, "tasks.add", "[3, 4]", &[]);
            worker.wait_for_log(
                &format!("Task tasks.add[{id}] succeeded"),
                Duration::from_secs(60),
            );
            let r = crate::kit::parse_client_output(&after.wait_with_output().unwrap());
            assert_eq!(r["result"], json!(7), "the task behind it ran: {r}");
            let log = worker.log();
            assert!(
                log.contains("header frame is larger"),
                "explained in the log"
            );
            assert!(
                log.matches("Connection to the broker lost").count() <= 1,
                "one reconnect, not a loop"
            );
            assert_eq!(
                log.matches(&format!("Task tasks.add[{id}] succeeded"))
                    .count(),
                1
            );
            assert_healthy(worker, queue);
        },
    );
}

#[test]
fn a_zlib_bomb_is_rejected_without_inflating_it() {
    let _serial = serial();
    with_worker(
        "zbomb",
        |w| w.concurrency(1),
        |worker, queue| {
            // 1 GiB of spaces, about 1 MB compressed.
            let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
            let chunk = vec![b' '; 1 << 20];
            for _ in 0..1024 {
                std::io::Write::write_all(&mut enc, &chunk).unwrap();
            }
            let bomb = enc.finish().unwrap();
            assert!(bomb.len() < 2 << 20, "{} bytes", bomb.len());
            let mut h = task_headers("tasks.add", "bomb-1");
            h.insert("compression".into(), amqp_text("application/x-gzip"));
            publish_task_raw(queue, h, &bomb);
            assert_healthy(worker, queue);
            worker.wait_for_log("larger than 67108864 bytes", Duration::from_secs(30));
            let peak = peak_rss_kib(worker.pid());
            eprintln!("zlib bomb: peak resident memory of the worker {peak} KiB");
            assert!(
                peak < 512 * 1024,
                "peak resident memory {peak} KiB: the body was inflated past the limit"
            );
        },
    );
}

#[test]
fn deeply_nested_headers_are_rejected_and_nothing_else_stops() {
    let _serial = serial();
    with_worker(
        "nested",
        |w| w.concurrency(1),
        |worker, queue| {
            // 25,000 arrays inside one another (125 kB of header): parsing that once took the AMQP
            // client's thread past its stack, and the whole worker with it, on every redelivery.
            for depth in [40, 2_000, 25_000] {
                let out = std::process::Command::new(crate::kit::python())
                    .arg(crate::kit::repo().join("tests/python/deep_headers.py"))
                    .args([queue, &depth.to_string()])
                    .env("AMQP_URL", amqp_url())
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert_healthy(worker, queue);
            worker.wait_for_log(
                "headers nest deeper than 32 levels",
                Duration::from_secs(30),
            );
            eventually(
                Duration::from_secs(30),
                "each deep message rejected once",
                || worker.log().matches("headers nest deeper than").count() == 3,
            );
            assert!(alive(worker.pid() as i32));
        },
    );
}

#[test]
fn names_longer_than_amqp_short_strings_never_break_a_connection() {
    let _serial = serial();
    let queue = unique_queue("longnames");
    let worker = Worker::builder(&queue).concurrency(1).start();
    let node = worker.nodename();
    // A 250-byte queue name is valid; the consumer tag built from it must still fit.
    let long_queue = format!("{queue}-{}", "q".repeat(250 - queue.len() - 1));
    let reply = control_call(&node, "add_consumer", json!({"queue": long_queue}));
    assert!(reply["ok"].is_string(), "{reply}");
    let r = call_task(&long_queue, "tasks.add", "[1, 1]", &[]);
    assert_eq!(r["result"], json!(2), "{r}");
    // A task id too long to be a result's correlation id is rejected, once.
    publish_task_raw(
        &queue,
        task_headers("tasks.add", &"i".repeat(300)),
        b"[[1, 1], {}, {}]",
    );
    worker.wait_for_log("longer than 255 bytes", Duration::from_secs(20));
    // A reply exchange name too long for AMQP: the request is ignored, nothing else.
    block_on(async {
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        let body = json!({"method": "ping", "arguments": {}, "destination": [node], "ticket": "t",
                          "reply_to": {"exchange": "x".repeat(300), "routing_key": "r"}});
        publish_control(&ch, &body).await;
        let _ = conn.close(200, "bye".into()).await;
    });
    worker.wait_for_log("reply_to names longer than 255", Duration::from_secs(20));
    assert_healthy(&worker, &queue);
    let log = worker.log();
    assert!(
        !log.contains("Connection to the broker lost"),
        "no connection reset"
    );
    assert!(!log.contains("panicked"), "no panic");
    drop(worker);
    block_on(delete_queue(&queue));
    block_on(delete_queue(&long_queue));
}
