//! One message or one control command never stops, stalls or exhausts the worker: a case per
//! defect found by an adversarial pass (issue 13). Each test checks that the worker stays up,
//! that other work goes on, and that nothing runs twice or leaks.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::{Value, json};
use time::OffsetDateTime;

use celeryd_actors::broker::amqp::publish_task;
use celeryd_actors::protocol::encode::{TaskCall, TaskMessage};

use crate::support::{
    Worker, alive, amqp_url, call_task, connect, delete_queue, eventually, spawn_task,
    unique_queue, worker_ctl,
};
use crate::{block_on, serial};

/// Sends one control request to `node` exactly as given (no client-side checks) and returns
/// the node's reply. Replies come back through `amq.direct`, which the worker never declares.
fn control_call(node: &str, method: &str, arguments: Value) -> Value {
    block_on(async {
        use futures_util::StreamExt;
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        let key = format!("hardening-{}", uuid::Uuid::new_v4().simple());
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
async fn publish_control(ch: &lapin::Channel, body: &Value) {
    ch.basic_publish(
        "celery.pidbox".into(),
        "".into(),
        BasicPublishOptions::default(),
        body.to_string().as_bytes(),
        BasicProperties::default().with_content_type("application/json".into()),
    )
    .await
    .unwrap();
}

fn error_text(reply: &Value) -> &str {
    reply["error"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error reply, got {reply}"))
}

/// The worker answers a ping and runs a task: it is up and not stalled.
fn assert_healthy(worker: &Worker, queue: &str) {
    let node = worker.nodename();
    let (code, out, err) = worker_ctl(&["ping", "-d", &node, "-t", "10"]);
    assert_eq!(code, 0, "ping: {out}{err}");
    let r = call_task(queue, "tasks.add", "[20, 22]", &[]);
    assert_eq!(r["result"], json!(42), "{r}");
}

fn publish_raw(queue: &str, headers: FieldTable, body: &[u8]) {
    block_on(async {
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_headers(headers)
                .with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        let _ = conn.close(200, "bye".into()).await;
    });
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn task_headers(name: &str, id: &str) -> FieldTable {
    let mut h = FieldTable::default();
    h.insert("task".into(), text(name));
    h.insert("id".into(), text(id));
    h
}

/// Runs `check` against a worker started on a fresh queue (`prefix` names it; `config` and
/// `flags` as for [`Worker::start`]), under the suite's lock; the queue is deleted after.
fn with_worker(prefix: &str, config: &str, flags: &[&str], check: impl FnOnce(&Worker, &str)) {
    let _serial = serial();
    let queue = unique_queue(prefix);
    let worker = Worker::start(&queue, config, flags);
    check(&worker, &queue);
    drop(worker);
    block_on(delete_queue(&queue));
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
fn a_tiny_rate_limit_is_refused_remotely_and_in_the_config() {
    let _serial = serial();
    let queue = unique_queue("tinyrate");
    let worker = Worker::start(&queue, "", &["-c", "1"]);
    let node = worker.nodename();
    for rate in ["1e-300/s", "1e-12", "1e400/s", "-1/m"] {
        let reply = control_call(
            &node,
            "rate_limit",
            json!({"task_name": "tasks.add", "rate_limit": rate}),
        );
        assert!(
            error_text(&reply).contains("Invalid rate limit"),
            "{rate}: {reply}"
        );
    }
    // The task still runs, at once: the limit was never set.
    assert_healthy(&worker, &queue);
    assert!(alive(worker.pid() as i32));
    drop(worker);
    // The same value in the config refuses the start, naming the key, instead of a crash loop.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_worker"))
        .args(["--print-config"])
        .env("CELERYD_TASK_DEFAULT_RATE_LIMIT", "1e-300/s")
        .env("CELERYD_BROKER_URL", amqp_url())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("task.default_rate_limit"), "{err}");
    block_on(delete_queue(&queue));
}

#[test]
fn a_header_frame_larger_than_frame_max_is_received_once() {
    with_worker("bigheader", "", &["-c", "1"], |worker, queue| {
        // 40 kB of headers: more than the worker's frame_max (16384), less than the broker's.
        let id = uuid::Uuid::new_v4().to_string();
        let mut h = task_headers("tasks.add", &id);
        h.insert("x-padding".into(), text(&"p".repeat(40_000)));
        publish_raw(queue, h, br#"[[1, 2], {}, {}]"#);
        let after = spawn_task(queue, "tasks.add", "[3, 4]", &[]);
        worker.wait_for_log(
            &format!("Task tasks.add[{id}] succeeded"),
            Duration::from_secs(60),
        );
        let r = crate::support::parse_client_output(&after.wait_with_output().unwrap());
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
    });
}

#[test]
fn a_zlib_bomb_is_rejected_without_inflating_it() {
    with_worker("zbomb", "", &["-c", "1"], |worker, queue| {
        // 1 GiB of spaces, about 1 MB compressed.
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..1024 {
            std::io::Write::write_all(&mut enc, &chunk).unwrap();
        }
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 2 << 20, "{} bytes", bomb.len());
        let mut h = task_headers("tasks.add", "bomb-1");
        h.insert("compression".into(), text("application/x-gzip"));
        publish_raw(queue, h, &bomb);
        assert_healthy(worker, queue);
        worker.wait_for_log("larger than 67108864 bytes", Duration::from_secs(30));
        let peak = peak_rss_kib(worker.pid());
        eprintln!("zlib bomb: peak resident memory of the worker {peak} KiB");
        assert!(
            peak < 512 * 1024,
            "peak resident memory {peak} KiB: the body was inflated past the limit"
        );
    });
}

#[test]
fn add_consumer_of_a_refused_queue_is_an_error_reply_and_disturbs_nothing() {
    let _serial = serial();
    let queue = unique_queue("addrefused");
    let clash = unique_queue("clash");
    // A queue that exists with other arguments than the worker would declare.
    block_on(async {
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongInt(10));
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(clash.as_str().into(), opts, args)
            .await
            .unwrap();
        let _ = conn.close(200, "bye".into()).await;
    });
    let worker = Worker::start(&queue, "[task]\nacks_late = true\n", &["-c", "1"]);
    let node = worker.nodename();
    let running = spawn_task(&queue, "tasks.sleep", "[3]", &[]);
    worker.wait_for_log("Task tasks.sleep[", Duration::from_secs(30));
    let reply = control_call(&node, "add_consumer", json!({"queue": "amq.celeryd-test"}));
    assert!(error_text(&reply).contains("ACCESS_REFUSED"), "{reply}");
    let reply = control_call(&node, "add_consumer", json!({"queue": clash}));
    assert!(
        error_text(&reply).contains("exists on the broker with x-max-length = "),
        "the 406 named with the argument and its value: {reply}"
    );
    let r = crate::support::parse_client_output(&running.wait_with_output().unwrap());
    assert_eq!(r["result"], json!(3.0), "{r}");
    let log = worker.log();
    assert!(
        !log.contains("Connection to the broker lost"),
        "the consumer's connection was not reset"
    );
    assert_eq!(
        log.matches("Task tasks.sleep[").count(),
        2,
        "received once, succeeded once: nothing ran twice"
    );
    // Neither queue is consumed; the worker's own is.
    let (_, out, _) = worker_ctl(&["active_queues", "--json", "-d", &node]);
    let queues: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(queues[&node].as_array().unwrap().len(), 1, "{queues}");
    assert_healthy(&worker, &queue);
    drop(worker);
    block_on(delete_queue(&queue));
    block_on(delete_queue(&clash));
}

#[test]
fn rate_limited_tasks_waiting_for_a_token_do_not_block_other_tasks() {
    with_worker(
        "ratewindow",
        "[worker]\nprefetch_multiplier = 2\n[task.rate_limits]\n\"tasks.noop\" = \"1/m\"\n",
        &["-c", "1"],
        |worker, queue| {
            // Prefetch 2 (-c 1 × 2): eight tasks waiting for a token would fill it four times over.
            let limited = spawn_task(queue, "tasks.noop", "[]", &["--count", "8", "--no-wait"]);
            assert!(limited.wait_with_output().unwrap().status.success());
            worker.wait_for_log("Task tasks.noop[", Duration::from_secs(30));
            // Other tasks still flow: each is delivered and runs while the seven wait.
            let r = call_task(queue, "tasks.add", "[1, 2]", &["--count", "5"]);
            let results: Vec<&Value> = r.as_array().unwrap().iter().map(|x| &x["result"]).collect();
            assert_eq!(results, vec![&json!(3); 5], "{r}");
            let log = worker.log();
            let noops_done = log
                .lines()
                .filter(|l| l.contains("Task tasks.noop[") && l.contains("succeeded"))
                .count();
            assert!(
                noops_done < 8,
                "the adds ran while rate-limited tasks still waited ({noops_done} of 8 done)"
            );
            let (_, out, _) = worker_ctl(&["reserved", "--json", "-d", &worker.nodename()]);
            let reserved: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(
                reserved[worker.nodename()].as_array().map(Vec::len),
                Some(8 - noops_done),
                "the rest still wait, reserved: {reserved}"
            );
        },
    );
}

#[test]
fn an_unparsable_broker_url_is_never_echoed_with_its_password() {
    let _serial = serial();
    for url in [
        "amqp://guest:s3cr3t-pw@127.0.0.1:99999//",
        "amqp:/guest:s3cr3t-pw@127.0.0.1",
        "amqp://guest:s3cr3t@pw@127.0.0.1:notaport//",
        "amqp://a:s3cr3t-pw@h1;amqp://b:s3cr3t-pw2@h2:notaport//",
        "amqp://a:s3cr3t-pw@h1;redis://b:s3cr3t-pw2@h2",
        "redis://guest:s3cr3t-pw@127.0.0.1",
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_worker"))
            .args(["--print-config"])
            .env("CELERYD_BROKER_URL", url)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{url}: {err}");
        assert!(err.contains("broker.url"), "{url}: {err}");
        assert!(!err.contains("s3cr3t"), "{url} leaked: {err}");
    }
    // A good failover list is printed with every password masked.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_worker"))
        .args(["--print-config"])
        .env(
            "CELERYD_BROKER_URL",
            "amqp://a:s3cr3t-pw@h1//;amqp://b:s3cr3t-pw2@h2//",
        )
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{printed}");
    assert!(
        printed.contains("h1//;amqp://b:") && !printed.contains("s3cr3t"),
        "{printed}"
    );
    // A TOML error quotes the line: the password is masked there too.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[broker]\nurl = amqp://guest:s3cr3t-pw@h//\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_worker"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(!err.contains("s3cr3t"), "leaked: {err}");
}

/// Pids of `ppid`'s zombie children.
fn zombies_of(ppid: i32) -> Vec<i32> {
    crate::support::processes_of(ppid)
        .into_iter()
        .filter(|(_, state)| state == "Z")
        .map(|(pid, _)| pid)
        .collect()
}

#[test]
fn sighup_leaves_no_zombie_children() {
    with_worker("hupzombie", "", &["-c", "3"], |worker, queue| {
        let pid = worker.pid() as i32;
        eventually(Duration::from_secs(20), "three children", || {
            worker.children().len() == 3
        });
        for round in 1..=2 {
            let before = worker.children();
            worker.signal(nix::sys::signal::Signal::SIGHUP);
            eventually(Duration::from_secs(30), "a new pool after SIGHUP", || {
                let now = worker.children();
                now.len() == 3 && now.iter().all(|c| !before.contains(c))
            });
            assert!(
                zombies_of(pid).is_empty(),
                "round {round}: zombies {:?}",
                zombies_of(pid)
            );
        }
        // The last image may still be connecting its pidbox (once, here, a run needed more
        // than 10 s after two quick restarts; see the session note): ask until it answers.
        let node = worker.nodename();
        eventually(
            Duration::from_secs(60),
            "a ping reply after the restarts",
            || worker_ctl(&["ping", "-d", &node, "-t", "2"]).0 == 0,
        );
        assert_healthy(worker, queue);
    });
}

#[test]
fn a_far_eta_task_runs_once_beside_a_wildcard_queue_name() {
    let _serial = serial();
    let queue = unique_queue("etawild");
    // A queue whose name, unescaped, is a topic pattern matching the first queue's keys.
    let wild = format!("{queue}.#");
    let worker = Worker::start(
        &format!("{queue},{wild}"),
        "[worker]\neta_hold_max = 1.0\n",
        &["-c", "1"],
    );
    let r = call_task(&queue, "tasks.add", "[5, 6]", &["--countdown", "4"]);
    assert_eq!(r["result"], json!(11), "{r}");
    std::thread::sleep(Duration::from_secs(3));
    let log = worker.log();
    assert!(
        log.contains("waits in the broker"),
        "went through the ladder"
    );
    let runs = log
        .lines()
        .filter(|l| l.contains("Task tasks.add[") && l.contains("succeeded"))
        .count();
    assert_eq!(runs, 1, "ran once, not once per queue:\n{log}");
    drop(worker);
    block_on(delete_queue(&queue));
    block_on(delete_queue(&wild));
}

/// A small tmpfs, unmounted when dropped.
struct TinyDisk(tempfile::TempDir);

impl TinyDisk {
    fn mount(size: &str) -> TinyDisk {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs (the fault suite runs as root)");
        TinyDisk(dir)
    }

    fn path(&self) -> &std::path::Path {
        self.0.path()
    }

    /// Fills what is left of the disk.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path().join("filler")).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.path().join("filler")).unwrap();
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn a_revoke_on_a_full_disk_is_an_error_reply_and_still_in_force() {
    let _serial = serial();
    let queue = unique_queue("fulldisk");
    let disk = TinyDisk::mount("16m");
    let statedb = disk.path().join("state");
    let statedb = statedb.to_str().unwrap().to_owned();
    let worker = Worker::start(&queue, "", &["-c", "1", "--statedb", &statedb]);
    let node = worker.nodename();
    disk.fill();
    let reply = control_call(&node, "revoke", json!({"task_id": "full-1"}));
    assert!(error_text(&reply).contains("in memory only"), "{reply}");
    // Still up, and the revoke is in force: the task is discarded.
    assert_healthy(&worker, &queue);
    let call = TaskCall {
        name: "tasks.add".into(),
        args: vec![json!(1), json!(1)],
        id: Some("full-1".into()),
        origin: "faults@localhost".into(),
        ..Default::default()
    };
    block_on(async {
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        let msg = TaskMessage::new(&call, OffsetDateTime::now_utc());
        publish_task(&ch, &queue, &msg).await.unwrap();
        let _ = conn.close(200, "bye".into()).await;
    });
    worker.wait_for_log(
        "Discarding revoked task: tasks.add[full-1]",
        Duration::from_secs(30),
    );
    // Space again: the next revoke is written, the earlier one with it.
    disk.free();
    let reply = control_call(&node, "revoke", json!({"task_id": "full-2"}));
    assert!(reply["ok"].is_string(), "{reply}");
    drop(worker);
    let worker = Worker::start(&queue, "", &["-c", "1", "--statedb", &statedb]);
    let (_, out, _) = worker_ctl(&["revoked", "--json", "-d", &worker.nodename()]);
    let ids: Value = serde_json::from_str(&out).unwrap();
    let ids = ids[worker.nodename()].as_array().unwrap().clone();
    assert!(
        ids.contains(&json!("full-1")) && ids.contains(&json!("full-2")),
        "{ids:?}"
    );
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn bad_numbers_and_sizes_in_control_commands_are_error_replies() {
    with_worker("badargs", "", &["-c", "1"], |worker, queue| {
        let node = worker.nodename();
        let reply = control_call(
            &node,
            "time_limit",
            json!({"task_name": "tasks.sleep", "soft": 1, "hard": 10}),
        );
        assert_eq!(
            reply["ok"],
            json!("time limits set successfully"),
            "{reply}"
        );
        for (soft, hard) in [
            (json!("abc"), json!(10)),
            (json!(1), json!(-1)),
            (json!(1), json!("1e400")),
            (json!([1]), json!(10)),
        ] {
            let reply = control_call(
                &node,
                "time_limit",
                json!({"task_name": "tasks.sleep", "soft": soft, "hard": hard}),
            );
            assert!(error_text(&reply).contains("number of seconds"), "{reply}");
        }
        // The limit set first is still in force.
        let r = call_task(queue, "tasks.sleep", "[3]", &[]);
        assert_eq!(r["state"], json!("FAILURE"), "{r}");
        assert_eq!(r["exc_type"], json!("SoftTimeLimitExceeded"), "{r}");
        // One request cannot make a thousand children, nor revoke a million ids.
        let reply = control_call(&node, "pool_grow", json!({"n": 1000}));
        assert!(error_text(&reply).contains("max_pool_size"), "{reply}");
        let ids: Vec<String> = (0..60_000).map(|i| format!("id-{i}")).collect();
        let reply = control_call(&node, "revoke", json!({"task_id": ids}));
        assert!(error_text(&reply).contains("revokes_max"), "{reply}");
        assert_eq!(worker.children().len(), 1);
        assert_healthy(worker, queue);
    });
}

#[test]
fn deeply_nested_headers_are_rejected_and_nothing_else_stops() {
    with_worker("nested", "", &["-c", "1"], |worker, queue| {
        // 25,000 arrays inside one another (125 kB of header): parsing that once took the AMQP
        // client's thread past its stack, and the whole worker with it, on every redelivery.
        for depth in [40, 2_000, 25_000] {
            let out = std::process::Command::new(crate::support::python())
                .arg(crate::support::repo().join("tests/python/deep_headers.py"))
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
    });
}

/// A vhost of this test's own (created, and deleted when dropped), for a test that deletes
/// broker objects other workers share.
struct OwnVhost(String);

impl OwnVhost {
    fn new(name: &str) -> OwnVhost {
        let ctl = |args: &[&str]| {
            std::process::Command::new("rabbitmqctl")
                .args(args)
                .output()
                .expect("run rabbitmqctl")
        };
        let _ = ctl(&["delete_vhost", name]);
        assert!(
            ctl(&["add_vhost", name]).status.success(),
            "add_vhost {name}"
        );
        let perms = ctl(&["set_permissions", "-p", name, "guest", ".*", ".*", ".*"]);
        assert!(perms.status.success(), "set_permissions on {name}");
        OwnVhost(name.to_owned())
    }

    fn url(&self) -> String {
        let base = amqp_url();
        let root = base.rsplit_once('/').map_or(base.as_str(), |(r, _)| r);
        format!("{root}/{}", self.0)
    }
}

impl Drop for OwnVhost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.0])
            .output();
    }
}

#[test]
fn a_refused_delay_publish_holds_the_task_and_keeps_the_connection() {
    let _serial = serial();
    let vhost = OwnVhost::new("celeryd-faults-side");
    let url = vhost.url();
    let queue = unique_queue("sidech");
    let toml = format!("[broker]\nurl = \"{url}\"\n[worker]\neta_hold_max = 1.0\n");
    let worker = Worker::start_with_toml(&queue, &toml, &["-c", "1"]);
    let publish_eta = |id: &str| {
        let call = TaskCall {
            name: "tasks.add".into(),
            args: vec![json!(2), json!(2)],
            id: Some(id.into()),
            eta: Some(OffsetDateTime::now_utc() + time::Duration::seconds(3)),
            origin: "faults@localhost".into(),
            ..Default::default()
        };
        block_on(async {
            let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
                .await
                .unwrap();
            let ch = conn.create_channel().await.unwrap();
            let msg = TaskMessage::new(&call, OffsetDateTime::now_utc());
            publish_task(&ch, &queue, &msg).await.unwrap();
            let _ = conn.close(200, "bye".into()).await;
        });
    };
    publish_eta("side-1");
    worker.wait_for_log(
        "Task tasks.add[side-1] waits in the broker",
        Duration::from_secs(20),
    );
    // An operator (or a policy) removes the ladder's entry exchange under the running worker.
    block_on(async {
        let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.exchange_delete("celeryd.delayed.27".into(), Default::default())
            .await
            .unwrap();
        let _ = conn.close(200, "bye".into()).await;
    });
    publish_eta("side-2");
    worker.wait_for_log("holding it instead", Duration::from_secs(20));
    for id in ["side-1", "side-2"] {
        worker.wait_for_log(
            &format!("Task tasks.add[{id}] succeeded"),
            Duration::from_secs(30),
        );
    }
    let log = worker.log();
    assert!(
        !log.contains("Connection to the broker lost"),
        "the refusal closed only the side channel"
    );
    assert_eq!(log.matches("Task tasks.add[side-2] succeeded").count(), 1);
    drop(worker);
}

#[test]
fn names_longer_than_amqp_short_strings_never_break_a_connection() {
    let _serial = serial();
    let queue = unique_queue("longnames");
    let worker = Worker::start(&queue, "", &["-c", "1"]);
    let node = worker.nodename();
    // A 250-byte queue name is valid; the consumer tag built from it must still fit.
    let long_queue = format!("{queue}-{}", "q".repeat(250 - queue.len() - 1));
    let reply = control_call(&node, "add_consumer", json!({"queue": long_queue}));
    assert!(reply["ok"].is_string(), "{reply}");
    let r = call_task(&long_queue, "tasks.add", "[1, 1]", &[]);
    assert_eq!(r["result"], json!(2), "{r}");
    // A task id too long to be a result's correlation id is rejected, once.
    publish_raw(
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
