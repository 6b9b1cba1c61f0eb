//! The Redis result backend going away under load: results of tasks that finish while Redis
//! is down are kept by the worker and stored once it is back; the worker keeps running and
//! says so in its log. Uses a private `redis-server` on its own port (never the shared one).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::kit::{
    Worker, delete_queue, eventually, free_port, python, python_amqp_url, repo, unique_queue,
};
use crate::{block_on, serial};

/// A private `redis-server` on its own port (never the shared one), with nothing on disk
/// unless started with [`Redis::start_in`] and an append-only file.
pub(super) struct Redis {
    child: Child,
    port: u16,
    _dir: Option<tempfile::TempDir>,
}

impl Redis {
    fn start(port: u16) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Redis::start_in(port, dir.path(), false);
        r._dir = Some(dir);
        r
    }

    /// Starts it on `port` with its files in `dir`; `persist`: an append-only file synced at
    /// every write, so what it held survives a restart.
    pub(super) fn start_in(port: u16, dir: &std::path::Path, persist: bool) -> Redis {
        let aof = if persist { "yes" } else { "no" };
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", aof, "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        eventually(Duration::from_secs(10), "redis-server to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Redis {
            child,
            port,
            _dir: None,
        }
    }

    /// Stops it as a restart would (SIGTERM: it writes what it holds and exits).
    pub(super) fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }

    pub(super) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(url: &str, queue: &str, args: &[&str]) -> Value {
    let out = Command::new(python())
        .arg(repo().join("tests/python/canvas_client.py"))
        .args(args)
        .env("AMQP_URL", python_amqp_url())
        .env("RESULT_BACKEND", url)
        .env("QUEUE", queue)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.lines().last().unwrap_or_default()).unwrap()
}

#[test]
fn results_made_while_redis_is_down_are_stored_when_it_is_back() {
    let _guard = serial();
    let port = free_port();
    let redis = Redis::start(port);
    let url = redis.url();
    let queue = unique_queue("redis-down");
    let config = format!("[result]\nbackend = \"{url}\"\n");
    let worker = Worker::builder(&queue)
        .config(&config)
        .concurrency(2)
        .start();
    let before = client(&url, &queue, &["send", "20"]);
    let ids = before["ids"].to_string();
    let got = client(&url, &queue, &["collect", &ids, "20"]);
    assert_eq!(got["results"].as_array().unwrap().len(), 20, "{got}");
    // Redis goes away; tasks keep being run.
    drop(redis);
    let during = client(&url, &queue, &["send", "30"]);
    worker.wait_for_log("The result backend is unreachable", Duration::from_secs(30));
    eventually(Duration::from_secs(30), "the 30 tasks run", || {
        worker.log().matches("succeeded in").count() >= 50
    });
    std::thread::sleep(Duration::from_secs(2));
    let redis = Redis::start(port);
    worker.wait_for_log(
        "The result backend is reachable again",
        Duration::from_secs(30),
    );
    let ids = during["ids"].to_string();
    let got = client(&redis.url(), &queue, &["collect", &ids, "20"]);
    let results = got["results"].as_array().unwrap();
    let want: Vec<Value> = (0..30).map(|i| Value::from(i + 1)).collect();
    assert_eq!(
        results, &want,
        "every result of the outage stored, in order"
    );
    // Still serving.
    let after = client(&redis.url(), &queue, &["send", "3"]);
    let got = client(
        &redis.url(),
        &queue,
        &["collect", &after["ids"].to_string(), "20"],
    );
    assert_eq!(got["results"].as_array().unwrap().len(), 3);
    drop(worker);
    block_on(delete_queue(&queue));
}
