//! Queues as Celery declares them: `[[task.queues]]` entries (exchange types, binding keys,
//! queue arguments), quorum queues with per-consumer QoS, and a queue that exists with other
//! arguments refused at start with what to change (exit 78). Against the real broker, the
//! real worker binary and Celery's own client.

use std::process::Command;
use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

use crate::block_on;
use crate::kit::{
    Worker, celery_inspect, connect, delete_queue, python, python_amqp_url, repo, unique_queue,
    worker_command,
};

const REDIS: &str = "redis://127.0.0.1:6379/5";

/// Declares, as another client would, a durable quorum queue bound to a durable topic
/// exchange.
fn declare_quorum_on_topic(queue: &str, exchange: &str, key: &str) {
    block_on(async {
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(queue.into(), opts, args).await.unwrap();
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let _ = conn.close(200, "bye".into()).await;
    });
}

fn delete_exchange(exchange: &str) {
    block_on(async {
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        let _ = ch
            .exchange_delete(exchange.into(), Default::default())
            .await;
        let _ = conn.close(200, "bye".into()).await;
    });
}

/// Runs the worker on `queue` with `config` until it stops (30 s at most); returns its exit
/// code and what it logged.
fn refused(queue: &str, config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.toml");
    std::fs::write(
        &path,
        format!("[broker]\nurl = \"{}\"\n{config}", crate::kit::amqp_url()),
    )
    .unwrap();
    let mut child = worker_command()
        .arg("--config")
        .arg(&path)
        .args(["-Q", queue, "-c", "1", "-l", "info"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    (status.code(), log)
}

#[test]
fn a_quorum_queue_on_a_topic_exchange_is_consumed_as_declared_and_a_mismatch_says_what_to_change() {
    let q = unique_queue("quorum");
    let ex = format!("{q}-bus");
    declare_quorum_on_topic(&q, &ex, "work.#");

    // Declared as a plain queue (what -Q alone means): the broker's 406, explained.
    let (code, log) = refused(&q, "");
    assert_eq!(
        code,
        Some(78),
        "a configuration error, not an unreachable broker: {log}"
    );
    assert!(
        log.contains("exists on the broker with x-queue-type = 'quorum'")
            && log.contains(r#"queue_arguments = { "x-queue-type" = "quorum" }"#),
        "{log}"
    );
    // The right arguments but a direct exchange: the exchange's type, explained.
    let entry = |kind: &str| {
        format!(
            "[[task.queues]]\nname = \"{q}\"\nexchange = \"{ex}\"\nexchange_type = \"{kind}\"\n\
             routing_key = \"work.#\"\nqueue_arguments = {{ \"x-queue-type\" = \"quorum\" }}\n"
        )
    };
    let (code, log) = refused(&q, &entry("direct"));
    assert_eq!(code, Some(78), "{log}");
    assert!(
        log.contains("with type = 'topic'") && log.contains(r#"exchange_type = "topic""#),
        "{log}"
    );

    // As declared: consumed, with per-consumer QoS (RabbitMQ closes the channel on global QoS
    // with a quorum queue), and `active_queues` shows the declaration.
    let w = Worker::builder(&q)
        .config(&entry("topic"))
        .concurrency(2)
        .start();
    // Published by Celery's client to the topic exchange: routed by the binding key.
    let r = crate::kit::celery_client(&[
        "call",
        "tasks.add",
        "--args",
        "[2, 2]",
        "--exchange",
        &ex,
        "--routing-key",
        "work.add",
    ]);
    assert_eq!(r["result"], json!(4), "{r}");
    let queues = celery_inspect(&w.nodename(), &["active_queues"]);
    let mine = &queues[0];
    assert_eq!(mine["name"], q.as_str(), "{queues}");
    assert_eq!(mine["exchange"]["type"], "topic", "{queues}");
    assert_eq!(mine["routing_key"], "work.#", "{queues}");
    assert_eq!(
        mine["queue_arguments"]["x-queue-type"], "quorum",
        "{queues}"
    );
    assert!(!w.log().contains("NOT_IMPLEMENTED"), "{}", w.log());
    drop(w);
    block_on(delete_queue(&q));
    delete_exchange(&ex);
}

/// Runs the test app's client with `PROJ_QUEUES` set (so it routes as the app declares).
fn proj_client(queues: &str, args: &[&str]) -> Value {
    let confirm = r#"{"broker_transport_options": {"confirm_publish": true}}"#;
    let env = [
        ("RESULT_BACKEND", REDIS),
        ("PROJ_QUEUES", queues),
        ("PROJ_CONF", confirm),
    ];
    crate::kit::proj_client(args, &env)
}

#[test]
fn an_apps_task_queues_are_declared_as_celery_declares_them() {
    let q = unique_queue("pyquorum");
    let ex = format!("{q}-bus");
    let queues = json!([{"name": q, "exchange": ex, "type": "topic", "routing_key": "jobs.#",
                         "arguments": {"x-queue-type": "quorum"}}])
    .to_string();
    // Nothing exists yet: celeryd declares the queue from the app's task_queues.
    let w = Worker::builder(&q)
        .proj(REDIS, "")
        .concurrency(2)
        .envs(&[("PROJ_QUEUES", queues.clone())])
        .start();
    let sent = proj_client(
        &queues,
        &[
            "send", "--queue", &q, "--task", "proj.add", "--args", "[20, 22]",
        ],
    );
    let id = sent["id"].as_str().unwrap().to_owned();
    let done = proj_client(
        &queues,
        &["wait", "--queue", &q, "--id", &id, "--timeout", "30"],
    );
    assert_eq!(done["result"], 42, "{done}");
    // A countdown of a quorum queue on a topic exchange: Celery's client sends it through
    // Celery's native delayed delivery (celery_delayed_27 …), which only the worker declares.
    let started = std::time::Instant::now();
    let sent = proj_client(
        &queues,
        &[
            "send",
            "--queue",
            &q,
            "--task",
            "proj.add",
            "--args",
            "[1, 2]",
            "--countdown",
            "3",
        ],
    );
    let id = sent["id"].as_str().unwrap().to_owned();
    let done = proj_client(
        &queues,
        &["wait", "--queue", &q, "--id", &id, "--timeout", "30"],
    );
    assert_eq!(done["result"], 3, "{done}");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        w.log().contains(&format!("Task proj.add[{id}] received")),
        "run by celeryd"
    );
    // A retry with a countdown, twice: Celery's tracer in the child sends it through the
    // ladder again (the second time from a message that came out of it).
    let started = std::time::Instant::now();
    let sent = proj_client(
        &queues,
        &[
            "send",
            "--queue",
            &q,
            "--task",
            "proj.retry_later",
            "--args",
            "[2, 2]",
        ],
    );
    let id = sent["id"].as_str().unwrap().to_owned();
    let done = proj_client(
        &queues,
        &["wait", "--queue", &q, "--id", &id, "--timeout", "30"],
    );
    assert_eq!(done["result"], 2, "{done}");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let active = celery_inspect(&w.nodename(), &["active_queues"]);
    assert_eq!(active[0]["exchange"]["name"], ex.as_str(), "{active}");
    assert_eq!(active[0]["exchange"]["type"], "topic", "{active}");
    assert_eq!(
        active[0]["queue_arguments"]["x-queue-type"], "quorum",
        "{active}"
    );
    let out = worker_command()
        .args(["--print-config", "-A", "proj", "--workdir"])
        .arg(repo().join("tests/python"))
        .args(["--python", python().to_str().unwrap()])
        .env("AMQP_URL", python_amqp_url())
        .env("PROJ_QUEUES", &queues)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("[[task.queues]]") && printed.contains("task_queues"),
        "--print-config shows the app's queues and where they came from: {printed}"
    );
    drop(w);
    block_on(delete_queue(&q));
    delete_exchange(&ex);
}

#[test]
fn a_quorum_queue_added_to_a_worker_with_channel_wide_qos_is_consumed_per_consumer() {
    let classic = unique_queue("classic");
    let other = unique_queue("classic2");
    let q = unique_queue("addquorum");
    let ex = format!("{q}-bus");
    declare_quorum_on_topic(&q, &ex, "work.#");
    // Two classic queues consumed, none quorum: `qos = "auto"` is channel-wide.
    let w = Worker::builder(&format!("{classic},{other}"))
        .concurrency(1)
        .start();
    let args = json!({"queue": q, "exchange": ex, "exchange_type": "topic",
                      "routing_key": "work.#", "queue_arguments": {"x-queue-type": "quorum"}});
    let replies = crate::kit::celery_client(&[
        "broadcast",
        "add_consumer",
        "--arguments",
        &args.to_string(),
        "--destination",
        &w.nodename(),
    ]);
    assert!(replies.to_string().contains("add consumer"), "{replies}");
    w.wait_for_log(
        "using per-consumer QoS from now on",
        Duration::from_secs(10),
    );
    let r = crate::kit::celery_client(&[
        "call",
        "tasks.add",
        "--args",
        "[3, 4]",
        "--exchange",
        &ex,
        "--routing-key",
        "work.add",
    ]);
    assert_eq!(
        r["result"],
        json!(7),
        "the added quorum queue is consumed: {r}"
    );
    let r = crate::kit::call_task(&classic, "tasks.add", "[1, 1]", &[]);
    assert_eq!(r["result"], json!(2), "and the configured one still: {r}");
    drop(w);
    block_on(delete_queue(&q));
    block_on(delete_queue(&classic));
    block_on(delete_queue(&other));
    delete_exchange(&ex);
}

#[test]
fn a_consumer_the_broker_cancels_is_consumed_again() {
    let q = unique_queue("cancelled");
    let other = unique_queue("running");
    let both = format!("{q},{other}");
    let w = Worker::builder(&both)
        .config("[task]\nacks_late = true\n")
        .concurrency(2)
        .start();
    let r = crate::kit::call_task(&q, "tasks.add", "[1, 2]", &[]);
    assert_eq!(r["result"], json!(3), "{r}");
    // An acks_late task of the other queue is running when the broker cancels the first
    // queue's consumer: it must settle on the same channel (a reconnect would hand it back
    // and run it twice).
    let running = crate::kit::spawn_task(&other, "tasks.sleep", "[3]", &[]);
    w.wait_for_log("Task tasks.sleep[", Duration::from_secs(10));
    // Deleting a queue (only the queue: its exchange stays) makes RabbitMQ send its
    // consumers basic.cancel (as a quorum queue's consumer timeout or a lost leader does on
    // 4.x).
    block_on(async {
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        ch.queue_delete(q.as_str().into(), Default::default())
            .await
            .unwrap();
        let _ = conn.close(200, "bye".into()).await;
    });
    w.wait_for_log("consumer cancelled by the broker", Duration::from_secs(10));
    crate::kit::eventually(Duration::from_secs(20), "consuming again", || {
        w.log().matches("Consuming from queue.").count() >= 3
    });
    let r = crate::kit::call_task(&q, "tasks.add", "[2, 3]", &[]);
    assert_eq!(r["result"], json!(5), "declared and consumed again: {r}");
    let out = running.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    std::thread::sleep(Duration::from_secs(1));
    let log = w.log();
    let runs = log
        .lines()
        .filter(|l| l.contains("Task tasks.sleep[") && l.contains("succeeded"))
        .count();
    assert_eq!(runs, 1, "the running task settled once: {log}");
    assert!(!log.contains("Connection to the broker lost"), "{log}");
    drop(w);
    block_on(delete_queue(&q));
    block_on(delete_queue(&other));
}

#[test]
fn worker_direct_consumes_the_nodes_own_queue() {
    let q = unique_queue("direct");
    let w = Worker::builder(&q)
        .config("[worker]\ndirect = true\n")
        .concurrency(1)
        .start();
    let node = w.nodename();
    let queues = celery_inspect(&node, &["active_queues"]);
    let names = queues.to_string();
    assert!(names.contains(&format!("{node}.dq2")), "{queues}");
    // Sent to this worker alone, as `apply_async(exchange="C.dq2", routing_key=node)`.
    let r = crate::kit::celery_client(&[
        "call",
        "tasks.add",
        "--args",
        "[5, 6]",
        "--exchange",
        "C.dq2",
        "--routing-key",
        &node,
    ]);
    assert_eq!(r["result"], json!(11), "{r}");
    drop(w);
    block_on(delete_queue(&q));
    block_on(delete_queue(&format!("{node}.dq2")));
}

#[test]
fn held_eta_tasks_on_a_quorum_queue_do_not_starve_immediate_ones() {
    let q = unique_queue("quorum-eta");
    let ex = format!("{q}-bus");
    declare_quorum_on_topic(&q, &ex, "work.#");
    let entry = format!(
        "[[task.queues]]\nname = \"{q}\"\nexchange = \"{ex}\"\nexchange_type = \"topic\"\n\
         routing_key = \"work.#\"\nqueue_arguments = {{ \"x-queue-type\" = \"quorum\" }}\n"
    );
    // Per-consumer QoS (a quorum queue): the prefetch count cannot be raised on a running
    // consumer, so the worker replaces its consumer as held ETA tasks need more.
    let w = Worker::builder(&q).config(&entry).concurrency(1).start();
    let sent = crate::kit::celery_client(&[
        "call",
        "tasks.noop",
        "--exchange",
        &ex,
        "--routing-key",
        "work.later",
        "--countdown",
        "300",
        "--count",
        "1000",
        "--no-wait",
    ]);
    assert!(sent["id"].is_string(), "{sent}");
    let started = std::time::Instant::now();
    let r = crate::kit::celery_client(&[
        "call",
        "tasks.add",
        "--args",
        "[1, 1]",
        "--exchange",
        &ex,
        "--routing-key",
        "work.now",
        "--timeout",
        "60",
    ]);
    assert_eq!(r["result"], json!(2), "{r}");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(60), "{waited:?}");
    let scheduled = celery_inspect(&w.nodename(), &["scheduled"]);
    assert_eq!(
        scheduled.as_array().map(Vec::len),
        Some(1000),
        "all 1,000 held, none run early"
    );
    drop(w);
    block_on(delete_queue(&q));
    delete_exchange(&ex);
}

#[test]
fn rust_tasks_retries_and_far_etas_of_a_quorum_queue_go_through_celerys_ladder() {
    let q = unique_queue("rustladder");
    let ex = format!("{q}-bus");
    let config = format!(
        "[worker]\neta_hold_max = 1.0\n\
         [[task.queues]]\nname = \"{q}\"\nexchange = \"{ex}\"\nexchange_type = \"topic\"\n\
         routing_key = \"jobs.*\"\nqueue_arguments = {{ \"x-queue-type\" = \"quorum\" }}\n"
    );
    let w = Worker::builder(&q).config(&config).concurrency(2).start();
    w.wait_for_log(
        "native delayed delivery is declared",
        Duration::from_secs(30),
    );
    // Two retries 2 s apart, the second from a message that came out of the ladder: each goes
    // to the queue's exchange and key through celery_delayed_27, never back to the ladder's
    // last exchange with the old digits.
    let started = std::time::Instant::now();
    let r = crate::kit::celery_client(&[
        "call",
        "tasks.retry_in",
        "--args",
        "[2, 2]",
        "--exchange",
        &ex,
        "--routing-key",
        "jobs.retry",
    ]);
    assert_eq!(r["result"], json!(2), "{r}");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let log = w.log();
    let retries: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("retry: Retry in 2s"))
        .collect();
    assert_eq!(retries.len(), 2, "{log}");
    for line in &retries {
        assert!(
            line.contains("exchange=celery_delayed_27")
                && line.contains(&format!("{}1.0.jobs.retry", "0.".repeat(26))),
            "{line}"
        );
    }
    // A far ETA from a client that does not know the queue is quorum (so it sent the eta
    // as is): moved by the worker into Celery's ladder, run on time.
    let started = std::time::Instant::now();
    let r = crate::kit::celery_client(&[
        "call",
        "tasks.add",
        "--args",
        "[40, 2]",
        "--exchange",
        &ex,
        "--routing-key",
        "jobs.add",
        "--countdown",
        "4",
    ]);
    assert_eq!(r["result"], json!(42), "{r}");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let log = w.log();
    assert!(
        log.lines()
            .any(|l| l.contains("waits in the broker") && l.contains("exchange=celery_delayed_27")),
        "{log}"
    );
    drop(w);
    block_on(delete_queue(&q));
    delete_exchange(&ex);
}

#[test]
fn a_priority_queue_delivers_the_highest_priority_first() {
    let q = unique_queue("priority");
    // Declared as `[task] queue_max_priority = 10` declares it (Celery's x-max-priority),
    // then filled before any worker consumes: 20 tasks at priority 0, then one at 9.
    let high = block_on(async {
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        let mut args = FieldTable::default();
        args.insert("x-max-priority".into(), AMQPValue::LongLongInt(10));
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(q.as_str().into(), opts, args)
            .await
            .unwrap();
        let mut high = String::new();
        for i in 0..21 {
            let call = celeryd_actors::protocol::encode::TaskCall {
                name: "tasks.noop".into(),
                priority: if i == 20 { 9 } else { 0 },
                origin: "it@localhost".into(),
                ..Default::default()
            };
            let msg = celeryd_actors::protocol::encode::TaskMessage::new(
                &call,
                time::OffsetDateTime::now_utc(),
            );
            celeryd_actors::broker::amqp::publish_task(&ch, &q, &msg)
                .await
                .unwrap();
            if i == 20 {
                high = msg.id;
            }
        }
        let _ = conn.close(200, "bye".into()).await;
        high
    });
    // One task at a time, one prefetched: the order of the runs is the broker's.
    let w = Worker::builder(&q)
        .config("[task]\nqueue_max_priority = 10\n[worker]\nprefetch_multiplier = 1\n")
        .concurrency(1)
        .start();
    crate::kit::eventually(Duration::from_secs(30), "all 21 done", || {
        w.log()
            .lines()
            .filter(|l| l.contains("Task tasks.noop[") && l.contains("succeeded"))
            .count()
            >= 21
    });
    let log = w.log();
    let first = log
        .lines()
        .find(|l| l.contains("Task tasks.noop[") && l.contains("succeeded"))
        .unwrap_or_default();
    assert!(
        first.contains(&high),
        "the priority 9 task ran first: {log}"
    );
    let info = celery_inspect(&w.nodename(), &["active_queues"]);
    assert_eq!(info[0]["max_priority"], 10, "{info}");
    drop(w);
    block_on(delete_queue(&q));
}

#[test]
fn a_direct_exchange_quorum_default_queue_is_declared_and_served_with_countdowns_held() {
    let q = unique_queue("dquorum");
    // `task_default_queue_type = "quorum"` on the default direct exchange: Celery's client
    // has no broker-side delay there (it warns and sends the eta as is), so the worker holds
    // the countdown; the queue is a quorum queue, consumed per consumer.
    let conf = json!({"task_default_queue": q, "task_default_queue_type": "quorum",
                      "broker_transport_options": {"confirm_publish": true}})
    .to_string();
    let w = Worker::builder(&q)
        .proj(REDIS, &conf)
        .concurrency(2)
        .start();
    let env = [("RESULT_BACKEND", REDIS), ("PROJ_CONF", conf.as_str())];
    let started = std::time::Instant::now();
    let sent = crate::kit::proj_client(
        &[
            "send",
            "--queue",
            &q,
            "--task",
            "proj.add",
            "--args",
            "[2, 3]",
            "--countdown",
            "2",
        ],
        &env,
    );
    let id = sent["id"].as_str().unwrap().to_owned();
    let done = crate::kit::proj_client(
        &["wait", "--queue", &q, "--id", &id, "--timeout", "30"],
        &env,
    );
    assert_eq!(done["result"], 5, "{done}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        w.log()
            .contains(&format!("Task proj.add[{id}] received (eta")),
        "held by the worker: {}",
        w.log()
    );
    let out = Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "type"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    let line = listed
        .lines()
        .find(|l| l.starts_with(&q))
        .unwrap_or_default();
    assert!(line.contains("quorum"), "{listed}");
    assert!(!w.log().contains("NOT_IMPLEMENTED"), "{}", w.log());
    drop(w);
    block_on(delete_queue(&q));
}
