//! Flower (pinned, Python) against celeryd: the worker page's data (stats, queues, registered
//! tasks) from inspect, tasks moving through received → started → succeeded from events, and
//! Flower's control buttons, all through Flower's HTTP API.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::block_on;
use crate::kit::{
    Worker, call_task, delete_queue, eventually, free_port, http, python, python_amqp_url,
    spawn_task, unique_queue,
};

struct Flower {
    child: Child,
    port: u16,
}

impl Flower {
    /// Flower with an app that declares celeryd's task names: Flower's rate-limit and
    /// time-limit buttons refuse names its own app does not know.
    fn start() -> Flower {
        Self::start_with_app("celeryd_app")
    }

    /// Flower with the Python app `app` (in `tests/python`), as its users start it.
    fn start_with_app(app: &str) -> Flower {
        let port = free_port();
        let url = python_amqp_url();
        let child = Command::new(python().with_file_name("celery"))
            .current_dir(crate::kit::repo().join("tests/python"))
            .args(["-A", app, "-b", &url, "flower", "--address=127.0.0.1"])
            .arg(format!("--port={port}"))
            .args(["--inspect_timeout=3000", "--persistent=False"])
            .env("FLOWER_UNAUTHENTICATED_API", "true")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start flower");
        eventually(Duration::from_secs(60), "Flower to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Flower { child, port }
    }

    fn get(&self, path: &str) -> Value {
        let (status, body) = http("GET", self.port, path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    /// GET `path` as JSON, or None while Flower answers anything but 200 (it has not seen
    /// the task yet, say).
    fn try_get(&self, path: &str) -> Option<Value> {
        let (status, body) = http("GET", self.port, path);
        (status == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    fn post(&self, path: &str) -> (u16, String) {
        http("POST", self.port, path)
    }
}

impl Drop for Flower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn flower_shows_and_controls_a_celeryd_worker() {
    let flower = Flower::start();
    let queue = unique_queue("flower");
    let mut worker = Worker::builder(&queue).concurrency(1).start();
    let node = worker.nodename();
    // The worker page: stats, queues and registered tasks, gathered by Flower's inspect.
    let mut workers = Value::Null;
    eventually(Duration::from_secs(30), "Flower to list the worker", || {
        workers = flower.get("/api/workers?refresh=1");
        workers[&node]["stats"].is_object() && workers[&node]["active_queues"].is_array()
    });
    let w = &workers[&node];
    assert_eq!(w["stats"]["pool"]["max-concurrency"], 1, "{w}");
    assert_eq!(w["active_queues"][0]["name"], queue.as_str(), "{w}");
    assert!(
        w["registered"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "tasks.add"),
        "{w}"
    );
    // Flower turns task events on by itself (enable_events every few seconds): a task is
    // followed through its states.
    let mut id = String::new();
    eventually(Duration::from_secs(30), "a task SUCCESS in Flower", || {
        let r = call_task(&queue, "tasks.add", "[2, 3]", &[]);
        id = r["id"].as_str().unwrap().to_owned();
        std::thread::sleep(Duration::from_millis(500));
        flower
            .try_get(&format!("/api/task/info/{id}"))
            .is_some_and(|info| info["state"] == "SUCCESS")
    });
    let info = flower.get(&format!("/api/task/info/{id}"));
    assert_eq!(info["name"], "tasks.add", "{info}");
    assert_eq!(info["result"], "5", "{info}");
    assert_eq!(info["worker"], node.as_str(), "{info}");
    assert!(
        info["received"].is_f64() && info["started"].is_f64(),
        "{info}"
    );
    let tasks = flower.get("/api/tasks");
    assert_eq!(tasks[&id]["state"], "SUCCESS");
    // Control buttons.
    let ok = |path: &str| {
        let (status, body) = flower.post(path);
        assert_eq!(status, 200, "POST {path}: {body}");
        body
    };
    ok(&format!("/api/worker/pool/grow/{node}?n=1"));
    eventually(Duration::from_secs(10), "2 children", || {
        worker.children().len() == 2
    });
    ok(&format!("/api/worker/pool/shrink/{node}?n=1"));
    eventually(Duration::from_secs(10), "1 child", || {
        worker.children().len() == 1
    });
    let extra = unique_queue("flower-extra");
    ok(&format!(
        "/api/worker/queue/add-consumer/{node}?queue={extra}"
    ));
    let r = call_task(&extra, "tasks.add", "[1, 1]", &[]);
    assert_eq!(r["result"], json!(2));
    ok(&format!(
        "/api/worker/queue/cancel-consumer/{node}?queue={extra}"
    ));
    let body = ok(&format!(
        "/api/task/rate-limit/tasks.noop?workername={node}&ratelimit=10/m"
    ));
    assert!(body.contains("new rate limit set successfully"), "{body}");
    let body = ok(&format!(
        "/api/task/timeout/tasks.noop?workername={node}&hard=5&soft=2"
    ));
    assert!(body.contains("time limits set successfully"), "{body}");
    let (status, body) = flower.post(&format!("/api/worker/pool/autoscale/{node}?min=1&max=2"));
    assert_eq!(
        status, 403,
        "no autoscaler: Flower reports the worker's error: {body}"
    );
    assert!(body.contains("Autoscale not enabled"), "{body}");
    let scaling = Worker::builder(&queue)
        .args(&["--autoscale", "2,1"])
        .start();
    let scaling_node = scaling.nodename();
    eventually(
        Duration::from_secs(30),
        "Flower to list the autoscaling worker",
        || flower.get("/api/workers?refresh=1")[&scaling_node]["stats"]["autoscaler"].is_object(),
    );
    ok(&format!(
        "/api/worker/pool/autoscale/{scaling_node}?min=2&max=3"
    ));
    eventually(Duration::from_secs(10), "min raised to 2", || {
        scaling.children().len() == 2
    });
    drop(scaling);
    // The async pool's page: its implementation and size, a task followed to SUCCESS.
    let async_queue = unique_queue("flower-async");
    let asynchronous = Worker::builder(&async_queue)
        .pool("async")
        .concurrency(50)
        .args(&["-E"])
        .start();
    let async_node = asynchronous.nodename();
    let mut pool = Value::Null;
    eventually(
        Duration::from_secs(30),
        "Flower to list the async worker",
        || {
            pool = flower.get("/api/workers?refresh=1")[&async_node]["stats"]["pool"].clone();
            pool.is_object()
        },
    );
    assert_eq!(pool["implementation"], "celeryd.pool:AsyncPool", "{pool}");
    assert_eq!(pool["max-concurrency"], 50, "{pool}");
    assert_eq!(pool["processes"], json!([asynchronous.pid()]), "{pool}");
    let r = call_task(&async_queue, "tasks.async_sleep", "[0.1]", &[]);
    let async_id = r["id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(30), "the async task in Flower", || {
        flower
            .try_get(&format!("/api/task/info/{async_id}"))
            .is_some_and(|info| info["state"] == "SUCCESS" && info["worker"] == async_node.as_str())
    });
    drop(asynchronous);
    block_on(delete_queue(&async_queue));
    let running = spawn_task(&queue, "tasks.sleep", "[30]", &[]);
    worker.wait_for_log("Task tasks.sleep[", Duration::from_secs(20));
    let active = flower.get(&format!("/api/workers?refresh=1&workername={node}"));
    let sleeping = active[&node]["active"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(&format!("/api/task/revoke/{sleeping}?terminate=true"));
    let r = crate::kit::parse_client_output(&running.wait_with_output().unwrap());
    assert_eq!(r["state"], "REVOKED", "{r}");
    ok(&format!("/api/worker/shutdown/{node}"));
    assert!(worker.wait_exit(Duration::from_secs(20)).success());
    drop(worker);
    block_on(delete_queue(&queue));
    block_on(delete_queue(&extra));
}

/// The Python client of the test app, with redis results.
fn proj_client(args: &[&str]) -> Value {
    crate::kit::proj_client(args, &[("RESULT_BACKEND", PROJ_BACKEND)])
}

const PROJ_BACKEND: &str = "redis://127.0.0.1:6379/4";

#[test]
fn flower_shows_and_controls_a_worker_running_python_tasks() {
    let flower = Flower::start_with_app("proj");
    let queue = unique_queue("flower-py");
    let worker = Worker::builder(&queue)
        .proj(PROJ_BACKEND, "")
        .concurrency(1)
        .start();
    let node = worker.nodename();
    let mut workers = Value::Null;
    eventually(Duration::from_secs(30), "Flower to list the worker", || {
        workers = flower.get("/api/workers?refresh=1");
        workers[&node]["stats"].is_object() && workers[&node]["registered"].is_array()
    });
    let w = &workers[&node];
    assert_eq!(w["stats"]["pool"]["max-concurrency"], 1, "{w}");
    let registered: Vec<&str> = w["registered"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        registered.contains(&"proj.add") && registered.contains(&"proj.sleep"),
        "the app's own tasks: {registered:?}"
    );
    let send = |task: &str, args: &str| {
        proj_client(&["send", "--queue", &queue, "--task", task, "--args", args])["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // Flower turns task events on (enable_events); the Python task is followed to SUCCESS,
    // its result as the child's tracer stored it.
    let mut id = String::new();
    eventually(
        Duration::from_secs(30),
        "a Python task SUCCESS in Flower",
        || {
            id = send("proj.add", "[2, 2]");
            std::thread::sleep(Duration::from_millis(500));
            flower.get(&format!("/api/task/info/{id}"))["state"] == "SUCCESS"
        },
    );
    let info = flower.get(&format!("/api/task/info/{id}"));
    assert_eq!(info["name"], "proj.add", "{info}");
    assert_eq!(info["result"], "4", "{info}");
    assert_eq!(info["worker"], node.as_str(), "{info}");
    assert!(info["started"].is_f64(), "{info}");
    // Flower's rate-limit button for an app task, then its active list and revoke button.
    let (status, body) = flower.post(&format!(
        "/api/task/rate-limit/proj.add?workername={node}&ratelimit=100/m"
    ));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("new rate limit set successfully"), "{body}");
    let sleeping = send("proj.sleep", "[30]");
    worker.wait_for_log(
        &format!("Task proj.sleep[{sleeping}] received"),
        Duration::from_secs(20),
    );
    eventually(
        Duration::from_secs(10),
        "the task in Flower's active list",
        || {
            let active = flower.get(&format!("/api/workers?refresh=1&workername={node}"));
            active[&node]["active"][0]["id"] == sleeping.as_str()
        },
    );
    let (status, body) = flower.post(&format!("/api/task/revoke/{sleeping}?terminate=true"));
    assert_eq!(status, 200, "{body}");
    eventually(Duration::from_secs(20), "REVOKED in Flower", || {
        flower.get(&format!("/api/task/info/{sleeping}"))["state"] == "REVOKED"
    });
    drop(worker);
    block_on(delete_queue(&queue));
}
