//! Events as Celery's own receiver (`app.events.Receiver`, what `celery events` and Flower
//! use) sees them: worker-online/heartbeat/offline always; task events after `enable_events`
//! until `disable_events`; `heartbeat` on command.

use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::block_on;
use crate::kit::{
    Worker, call_task, celery_cli, celery_client_command, delete_queue, eventually, unique_queue,
};

/// Events captured by a Python receiver running in the background.
pub(crate) struct Capture {
    child: std::process::Child,
    events: Arc<Mutex<Vec<Value>>>,
}

impl Capture {
    fn start(seconds: u32) -> Capture {
        Capture::start_on(&crate::kit::python_amqp_url(), seconds)
    }

    /// A receiver on the broker at `url` (a Redis one, say).
    pub(crate) fn start_on(url: &str, seconds: u32) -> Capture {
        let mut child = celery_client_command(&["events", "--seconds", &seconds.to_string()])
            .env("AMQP_URL", url)
            .spawn()
            .expect("start the event receiver");
        let stdout = child.stdout.take().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let ready = Arc::new(Mutex::new(false));
        let (sink, flag) = (events.clone(), ready.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "READY" {
                    *flag.lock().unwrap() = true;
                } else if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        eventually(Duration::from_secs(30), "the receiver to consume", || {
            *ready.lock().unwrap()
        });
        Capture { child, events }
    }

    fn of(&self, node: &str, kind: &str) -> Vec<Value> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter(|e| e["hostname"] == node && e["type"] == kind)
            .cloned()
            .collect()
    }

    pub(crate) fn for_task(&self, id: &str) -> Vec<String> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter(|e| e["uuid"] == id)
            .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    pub(crate) fn wait_for(&self, node: &str, kind: &str, what: &str) -> Value {
        eventually(Duration::from_secs(15), what, || {
            !self.of(node, kind).is_empty()
        });
        self.of(node, kind).remove(0)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn control(node: &str, cmd: &str) -> String {
    let out = celery_cli(&["control", cmd, "-d", node]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn worker_and_task_events_reach_celerys_receiver() {
    let capture = Capture::start(60);
    let queue = unique_queue("events");
    let mut worker = Worker::builder(&queue)
        .concurrency(1)
        .args(&["--heartbeat-interval", "30"])
        .start();
    let node = worker.nodename();
    let online = capture.wait_for(&node, "worker-online", "worker-online");
    for key in [
        "freq",
        "active",
        "processed",
        "loadavg",
        "sw_ident",
        "sw_ver",
        "sw_sys",
    ] {
        assert!(online.get(key).is_some(), "{key} missing: {online}");
    }
    assert_eq!(online["freq"], json!(30.0));
    assert_eq!(online["pid"], json!(worker.pid()));
    // No -E: no task events.
    let r = call_task(&queue, "tasks.add", "[1, 2]", &[]);
    let quiet = r["id"].as_str().unwrap().to_owned();
    // enable_events: task events flow, with every field the receiver's state machine reads.
    assert!(control(&node, "enable_events").contains("task events enabled"));
    assert!(control(&node, "enable_events").contains("task events already enabled"));
    let r = call_task(&queue, "tasks.add", "[2, 3]", &[]);
    let id = r["id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(10), "task-succeeded", || {
        capture.for_task(&id).contains(&"task-succeeded".to_owned())
    });
    assert_eq!(
        capture.for_task(&id),
        vec!["task-received", "task-started", "task-succeeded"]
    );
    let events = capture.events.lock().unwrap().clone();
    for e in events.iter().filter(|e| e["uuid"] == id.as_str()) {
        for key in ["hostname", "timestamp", "utcoffset", "pid", "clock", "uuid"] {
            assert!(e.get(key).is_some(), "{key} missing: {e}");
        }
    }
    let done = events
        .iter()
        .find(|e| e["uuid"] == id.as_str() && e["type"] == "task-succeeded")
        .unwrap();
    assert_eq!(done["result"], "5");
    assert!(done["runtime"].as_f64().unwrap() >= 0.0);
    let received = events.iter().find(|e| e["uuid"] == id.as_str()).unwrap();
    assert_eq!(
        received["args"], "[2, 3]",
        "the client's argsrepr: {received}"
    );
    let r = call_task(&queue, "tasks.fail", "[\"boom\"]", &[]);
    let failed = r["id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(10), "task-failed", || {
        capture
            .for_task(&failed)
            .contains(&"task-failed".to_owned())
    });
    let r = call_task(&queue, "tasks.flaky", "[1]", &[]);
    let flaky = r["id"].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(10),
        "the retried task to succeed",
        || {
            capture
                .for_task(&flaky)
                .contains(&"task-succeeded".to_owned())
        },
    );
    assert_eq!(
        capture.for_task(&flaky),
        vec![
            "task-received",
            "task-started",
            "task-retried",
            "task-received",
            "task-started",
            "task-succeeded"
        ]
    );
    // A terminated task: task-revoked with the signal number.
    let before = capture.of(&node, "task-started").len();
    let sleeper = crate::kit::spawn_task(&queue, "tasks.sleep", "[30]", &[]);
    eventually(
        Duration::from_secs(10),
        "the sleeper's task-started",
        || capture.of(&node, "task-started").len() > before,
    );
    let started = capture.of(&node, "task-started");
    let sleeping = started.last().unwrap()["uuid"].as_str().unwrap().to_owned();
    let out = celery_cli(&["control", "terminate", "SIGKILL", &sleeping, "-d", &node]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("terminate:"),
        "{out:?}"
    );
    eventually(Duration::from_secs(10), "task-revoked", || {
        capture
            .for_task(&sleeping)
            .contains(&"task-revoked".to_owned())
    });
    let revoked = capture.of(&node, "task-revoked").pop().unwrap();
    assert_eq!(
        (
            &revoked["terminated"],
            &revoked["signum"],
            &revoked["expired"]
        ),
        (&json!(true), &json!(9), &json!(false)),
        "{revoked}"
    );
    let _ = sleeper.wait_with_output();
    // disable_events: task events stop, worker events go on.
    assert!(control(&node, "disable_events").contains("task events disabled"));
    let r = call_task(&queue, "tasks.add", "[4, 4]", &[]);
    let after = r["id"].as_str().unwrap().to_owned();
    // heartbeat on command (the interval is 30 s; other tests' receivers also ask every worker
    // for one when they connect, so this counts up rather than expecting none before).
    let before = capture.of(&node, "worker-heartbeat").len();
    control(&node, "heartbeat");
    eventually(
        Duration::from_secs(10),
        "worker-heartbeat on command",
        || capture.of(&node, "worker-heartbeat").len() > before,
    );
    assert!(
        capture.for_task(&quiet).is_empty(),
        "task events before enable_events"
    );
    assert!(
        capture.for_task(&after).is_empty(),
        "task events after disable_events"
    );
    // Warm shutdown: worker-offline.
    worker.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(worker.wait_exit(Duration::from_secs(20)).success());
    capture.wait_for(&node, "worker-offline", "worker-offline");
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn celery_events_dump_prints_celeryd_events() {
    let celery = crate::kit::python().with_file_name("celery");
    let url = crate::kit::amqp_url()
        .replace("/%2f", "//")
        .replace("/%2F", "//");
    let mut dump = std::process::Command::new(celery)
        .args(["-b", &url, "events", "--dump"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start celery events --dump");
    let stdout = dump.stdout.take().unwrap();
    let lines = Arc::new(Mutex::new(String::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    // `celery events` declares its queue when it starts; give it the time to, then start.
    std::thread::sleep(Duration::from_secs(3));
    let queue = unique_queue("dump");
    let worker = Worker::builder(&queue).concurrency(1).args(&["-E"]).start();
    let node = worker.nodename();
    let r = call_task(&queue, "tasks.add", "[20, 22]", &[]);
    let id = r["id"].as_str().unwrap().to_owned();
    let text = || lines.lock().unwrap().clone();
    eventually(
        Duration::from_secs(20),
        "task succeeded in the dump",
        || text().contains(&format!("task succeeded: tasks.add({id})")),
    );
    let out = text();
    assert!(out.contains(&format!("{node} [")), "{out}");
    assert!(
        out.contains(&format!(
            "task received: tasks.add({id}) args=[20, 22] kwargs={{}}"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("task started: tasks.add({id})")),
        "{out}"
    );
    assert!(out.contains("result=42"), "{out}");
    let _ = dump.kill();
    let _ = dump.wait();
    drop(worker);
    block_on(delete_queue(&queue));
}
