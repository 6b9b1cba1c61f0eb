//! The Python child (`python/celeryd_child.py`, embedded in the binary) on its own, driven
//! over its pipe as the parent will drive it: it loads a real Celery app (`tests/python/
//! proj.py`), announces its tasks, runs real task messages through Celery's own tracer, and
//! Celery's rpc:// backend (in the child) writes the results a client waits for.

use std::io::Write;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use celeryd_actors::broker::amqp::result_consumer;
use celeryd_actors::process::python::{
    Hello, Properties, Ready, ReportKind, Reported, encode_frame, parse_done, parse_hello,
    parse_reported, read_frame_blocking, report_header, run_header, write_script,
};
use celeryd_actors::protocol::DeliveryInfo;
use celeryd_actors::protocol::encode::{TaskCall, TaskMessage};

use crate::block_on;
use crate::kit::{amqp_url, connect, python, repo};

struct PyChild {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    _dir: tempfile::TempDir,
}

impl PyChild {
    fn start(app: &str, node: &str) -> (PyChild, Hello) {
        let dir = tempfile::tempdir().unwrap();
        let script = write_script(dir.path()).unwrap();
        let mut child = Command::new(python())
            .arg(&script)
            .args(["--app", app, "--hostname", node, "--loglevel", "INFO"])
            .current_dir(repo().join("tests/python"))
            .env("AMQP_URL", amqp_url().replace("/%2f", "//"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the Python child");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (header, _) = read_frame_blocking(&mut stdout)
            .unwrap()
            .expect("a first frame");
        let hello = parse_hello(&header).unwrap();
        let c = PyChild {
            child,
            stdin,
            stdout,
            _dir: dir,
        };
        (c, hello)
    }

    /// Sends `msg` as the broker would deliver it on `queue`; returns the `done` frame.
    fn run(
        &mut self,
        seq: u64,
        msg: &TaskMessage,
        queue: &str,
    ) -> celeryd_actors::process::python::Done {
        let (header, _) = self.exchange(&frame_header(seq, msg, queue, None), &msg.body);
        parse_done(&header).unwrap()
    }

    /// Asks the Python side to write the result of `msg` for `kind`; returns its decision.
    fn report(&mut self, seq: u64, msg: &TaskMessage, kind: ReportKind) -> Reported {
        let (header, _) = self.exchange(&frame_header(seq, msg, "q", Some(kind)), &msg.body);
        parse_reported(&header).unwrap()
    }

    fn exchange(&mut self, header: &Value, body: &[u8]) -> (Value, Vec<u8>) {
        let frame = encode_frame(header, body).unwrap();
        self.stdin.write_all(&frame).unwrap();
        self.stdin.flush().unwrap();
        read_frame_blocking(&mut self.stdout)
            .unwrap()
            .expect("an answer")
    }

    fn exit(mut self) -> i32 {
        let frame = encode_frame(&json!({"op": "exit"}), b"").unwrap();
        self.stdin.write_all(&frame).unwrap();
        drop(self.stdin);
        self.child.wait().unwrap().code().unwrap_or(-1)
    }
}

/// The header of a `run` frame for `msg` as delivered on `queue` (a `report` frame's, with
/// `kind`); the body goes with it unchanged.
fn frame_header(seq: u64, msg: &TaskMessage, queue: &str, kind: Option<ReportKind>) -> Value {
    let props = Properties {
        content_type: Some("application/json".into()),
        content_encoding: Some("utf-8".into()),
        correlation_id: Some(msg.id.clone()),
        reply_to: Some(msg.reply_to.clone()),
        priority: Some(0),
        delivery_mode: Some(2),
        ..Properties::default()
    };
    let info = DeliveryInfo {
        exchange: String::new(),
        routing_key: queue.to_owned(),
        priority: 0,
        redelivered: false,
        queue: queue.to_owned(),
    };
    let task = msg.headers["task"].as_str().unwrap();
    match kind {
        None => run_header(seq, task, &msg.id, &msg.headers, &props, &info),
        Some(k) => report_header(seq, task, &msg.id, &msg.headers, &props, &info, &k),
    }
}

fn message(name: &str, args: Vec<Value>, reply_to: &str) -> TaskMessage {
    let call = TaskCall {
        name: name.into(),
        args,
        kwargs: Map::new(),
        reply_to: Some(reply_to.into()),
        origin: "it@localhost".into(),
        ..Default::default()
    };
    TaskMessage::new(&call, OffsetDateTime::now_utc())
}

#[test]
fn the_python_child_runs_a_celery_apps_tasks_through_celerys_tracer() {
    let node = format!(
        "celery@pychild-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let (mut child, hello) = PyChild::start("proj", &node);
    let Hello::Ready(ready) = hello else {
        panic!("the app did not load: {hello:?}")
    };
    let Ready { tasks, conf, .. } = *ready;
    assert_eq!(tasks["proj.slow"].acks_late, Some(true));
    assert_eq!(tasks["proj.slow"].time_limit, Some(30.0));
    assert_eq!(tasks["proj.slow"].soft_time_limit, Some(5.0));
    assert!(tasks.contains_key("proj.add") && tasks.contains_key("celery.chord_unlock"));
    let broker = conf["broker_url"].as_str().unwrap();
    // Unmasked: the worker connects with it (the pipe is private; it masks what it prints).
    assert!(broker.starts_with("amqp://guest:guest@"), "{broker}");

    let reply_to = format!("pychild-results-{}", uuid::Uuid::new_v4().simple());
    let results = block_on(async {
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        let mut consumer = result_consumer(&ch, &reply_to).await.unwrap();
        let add = message("proj.add", vec![json!(2), json!(3)], &reply_to);
        let boom = message("proj.boom", vec![json!("kaput")], &reply_to);
        let whoami = message("proj.whoami", vec![], &reply_to);
        let done = child.run(1, &add, "q");
        assert_eq!((done.seq, done.state.as_str()), (1, "SUCCESS"), "{done:?}");
        assert_eq!(done.retstr.as_deref(), Some("5"));
        let done = child.run(2, &boom, "q");
        assert_eq!(done.state, "FAILURE", "{done:?}");
        assert_eq!(done.exc_type.as_deref(), Some("Boom"));
        let done = child.run(3, &whoami, "celery-q");
        assert_eq!(done.state, "SUCCESS", "{done:?}");
        let mut bodies = Map::new();
        while bodies.len() < 3 {
            let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
                .await
                .expect("the results the child's backend wrote")
                .unwrap()
                .unwrap();
            let body: Value = serde_json::from_slice(&d.data).unwrap();
            let cid = d.properties.correlation_id().as_ref().unwrap().to_string();
            assert_eq!(body["task_id"], json!(cid));
            bodies.insert(cid, body);
        }
        let _ = conn.close(200, "bye".into()).await;
        (bodies, add.id, boom.id, whoami.id)
    });
    let (bodies, add, boom, whoami) = results;
    assert_eq!(bodies[&add]["status"], "SUCCESS");
    assert_eq!(bodies[&add]["result"], 5);
    assert_eq!(bodies[&boom]["status"], "FAILURE");
    assert_eq!(bodies[&boom]["result"]["exc_type"], "Boom");
    assert_eq!(bodies[&boom]["result"]["exc_module"], "proj");
    let me = &bodies[&whoami]["result"];
    assert_eq!(
        me["hostname"],
        json!(node),
        "request.hostname is the node name"
    );
    assert_eq!(me["id"], json!(whoami));
    assert_eq!(me["delivery_info"]["routing_key"], "celery-q");
    assert_eq!(child.exit(), 0);
}

#[test]
fn an_app_that_cannot_be_imported_is_reported_with_its_traceback() {
    let (child, hello) = PyChild::start("no_such_module_here", "celery@pychild-bad");
    let Hello::Failed(traceback) = hello else {
        panic!("expected a failure: {hello:?}")
    };
    assert!(traceback.contains("no_such_module_here"), "{traceback}");
    let mut child = child;
    let status = child.child.wait().unwrap();
    assert_eq!(status.code(), Some(78));
}

#[test]
fn the_python_side_writes_the_results_celerys_mainprocess_would() {
    let node = format!(
        "celery@pyreport-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let (mut child, hello) = PyChild::start("proj", &node);
    assert!(matches!(hello, Hello::Ready(_)), "{hello:?}");
    let reply_to = format!("pyreport-results-{}", uuid::Uuid::new_v4().simple());
    let bodies = block_on(async {
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        let mut consumer = result_consumer(&ch, &reply_to).await.unwrap();
        let lost = message("proj.add", vec![json!(1), json!(1)], &reply_to);
        let late = message("proj.slow", vec![json!(60)], &reply_to);
        let revoked = message("proj.add", vec![json!(1), json!(2)], &reply_to);
        let unknown = message("proj.nope", vec![], &reply_to);
        let r = child.report(
            1,
            &lost,
            ReportKind::WorkerLost("signal 9 (SIGKILL)".into()),
        );
        assert_eq!(r.error, None, "{r:?}");
        // proj.slow is acks_late (and acks_on_failure_or_timeout): Celery acks it.
        let r = child.report(2, &late, ReportKind::TimeLimit(30.0));
        assert_eq!(
            (r.error.as_deref(), r.ack.as_deref()),
            (None, Some("ack")),
            "{r:?}"
        );
        let r = child.report(3, &revoked, ReportKind::Revoked);
        assert_eq!(r.ack.as_deref(), Some("ack"), "{r:?}");
        assert_eq!(r.events[0]["type"], "task-revoked", "{r:?}");
        let r = child.report(4, &unknown, ReportKind::NotRegistered);
        assert_eq!(r.ack.as_deref(), Some("reject"), "{r:?}");
        let mut bodies = Map::new();
        while bodies.len() < 4 {
            let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
                .await
                .expect("the results the Python side wrote")
                .unwrap()
                .unwrap();
            let body: Value = serde_json::from_slice(&d.data).unwrap();
            bodies.insert(body["task_id"].as_str().unwrap().to_owned(), body);
        }
        let _ = conn.close(200, "bye".into()).await;
        vec![
            bodies[&lost.id].clone(),
            bodies[&late.id].clone(),
            bodies[&revoked.id].clone(),
            bodies[&unknown.id].clone(),
        ]
    });
    assert_eq!(
        bodies[0]["result"]["exc_type"], "WorkerLostError",
        "{}",
        bodies[0]
    );
    assert_eq!(
        bodies[1]["result"]["exc_type"], "TimeLimitExceeded",
        "{}",
        bodies[1]
    );
    assert_eq!(bodies[2]["status"], "REVOKED", "{}", bodies[2]);
    assert_eq!(
        bodies[3]["result"]["exc_type"], "NotRegistered",
        "{}",
        bodies[3]
    );
    assert_eq!(child.exit(), 0);
}

/// The parent process of `pid` (from /proc).
fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn the_fork_server_loads_the_app_once_and_forks_children_that_run_its_tasks() {
    use celeryd_actors::process::forkserver::ForkServer;
    use celeryd_actors::process::{self, ChildCommand, Codec, Process, ipc};
    use tokio::io::AsyncWriteExt;

    let dir = tempfile::tempdir().unwrap();
    let script = write_script(dir.path()).unwrap();
    let node = format!(
        "celery@forks-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let workdir = repo().join("tests/python").display().to_string();
    let command = ChildCommand {
        program: python(),
        args: [
            &script.display().to_string(),
            "--app",
            "proj",
            "--hostname",
            &node,
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(["--workdir".to_owned(), workdir])
        .collect(),
        codec: Codec::Python,
        env: vec![("AMQP_URL".into(), amqp_url().replace("/%2f", "//"))],
        fork: None,
    };
    block_on(async {
        let (server, hello) = ForkServer::start(&command, Duration::from_secs(60))
            .await
            .unwrap();
        let Hello::Ready(ready) = hello else {
            panic!("the app did not load: {hello:?}")
        };
        // The fork server says what the app is, as a fresh child does.
        assert_eq!(ready.pid, server.pid());
        assert_eq!(ready.tasks["proj.slow"].acks_late, Some(true));
        let mut command = command.clone();
        command.fork = Some(std::sync::Arc::new(server));
        let server_pid = command.fork.as_ref().unwrap().pid();

        let reply_to = format!("forks-results-{}", uuid::Uuid::new_v4().simple());
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        let mut consumer = result_consumer(&ch, &reply_to).await.unwrap();
        let mut pids = Vec::new();
        let mut links = Vec::new();
        for _ in 0..2 {
            let mut link = process::start(&command).await.unwrap();
            let pid = link.process.id().unwrap();
            assert!(matches!(link.process, Process::Forked { .. }));
            // Forked by the fork server, not started by us.
            assert_eq!(parent_of(pid), server_pid);
            let ready = ipc::read_payload(&mut link.reader).await.unwrap().unwrap();
            let (header, _) = celeryd_actors::process::python::decode_payload(&ready).unwrap();
            assert_eq!(header["op"], "ready", "{header}");
            assert_eq!(header["pid"], json!(pid));
            pids.push(pid);
            links.push(link);
        }
        for (i, link) in links.iter_mut().enumerate() {
            let add = message("proj.add", vec![json!(i), json!(40)], &reply_to);
            let frame = encode_frame(&frame_header(1, &add, "q", None), &add.body).unwrap();
            link.writer.write_all(&frame).await.unwrap();
            let payload = ipc::read_payload(&mut link.reader).await.unwrap().unwrap();
            let (header, _) = celeryd_actors::process::python::decode_payload(&payload).unwrap();
            let done = parse_done(&header).unwrap();
            assert_eq!(done.state, "SUCCESS", "{done:?}");
            assert_eq!(done.retstr, Some(format!("{}", i + 40)));
            let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
                .await
                .expect("the result the forked child's backend wrote")
                .unwrap()
                .unwrap();
            let body: Value = serde_json::from_slice(&d.data).unwrap();
            assert_eq!(body["result"], json!(i + 40));
        }
        // The fork server reaps its children and reports how they ended.
        let mut killed = links.remove(0);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pids[0] as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), killed.process.wait())
            .await
            .unwrap()
            .expect("an exit status");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
        let mut exiting = links.remove(0);
        let frame = encode_frame(&json!({"op": "exit"}), b"").unwrap();
        exiting.writer.write_all(&frame).await.unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), exiting.process.wait())
            .await
            .unwrap()
            .expect("an exit status");
        assert_eq!(status.code(), Some(0));
        // Without its fork server, a child starts as a fresh interpreter.
        let server = command.fork.take().unwrap();
        std::sync::Arc::try_unwrap(server).unwrap().stop().await;
        let gone = ForkServer::start(&command, Duration::from_secs(60))
            .await
            .unwrap()
            .0;
        let gone_pid = gone.pid();
        command.fork = Some(std::sync::Arc::new(gone));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(gone_pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let fresh = process::start(&command).await.unwrap();
        assert!(matches!(fresh.process, Process::Spawned(_)));
        let _ = conn.close(200, "bye".into()).await;
    });
}
