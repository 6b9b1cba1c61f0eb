//! The Python side: the pinned Celery's client helpers, its `celery` command-line tool, and a
//! real Python Celery worker.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::{amqp_url, capture_log, eventually, expand_host, node_name, repo};

/// The Python interpreter of the virtualenv with the pinned Celery client.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("CELERYD_PYTHON") {
        return PathBuf::from(p);
    }
    let out = Command::new(repo().join("scripts/ensure-python.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/ensure-python.sh");
    assert!(out.status.success(), "scripts/ensure-python.sh failed");
    let text = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(text.lines().last().expect("python path").trim())
}

/// kombu spells the default vhost `//`.
pub fn python_amqp_url() -> String {
    amqp_url().replace("/%2f", "//").replace("/%2F", "//")
}

/// Runs the Python Celery client helper (`tests/python/celery_client.py`) and parses the JSON
/// line it prints.
pub fn celery_client(args: &[&str]) -> Value {
    let out = celery_client_command(args)
        .output()
        .expect("run the Python client");
    parse_client_output(&out)
}

/// Calls task `name` with `args` (JSON) on `queue` through the Python client and waits for the
/// outcome; `extra` are more `call` options (`--countdown 1`, `--count 5`, `--no-wait`…).
pub fn call_task(queue: &str, name: &str, args: &str, extra: &[&str]) -> Value {
    celery_client(&call_args(queue, name, args, extra))
}

/// Like [`call_task`], in the background: wait with [`parse_client_output`].
pub fn spawn_task(queue: &str, name: &str, args: &str, extra: &[&str]) -> Child {
    celery_client_command(&call_args(queue, name, args, extra))
        .spawn()
        .expect("run the Python client")
}

fn call_args<'a>(queue: &'a str, name: &'a str, args: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["call", name, "--args", args, "--queue", queue];
    a.extend_from_slice(extra);
    a
}

/// The command for the Python client helper, for tests that run it in the background.
pub fn celery_client_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(repo().join("tests/python/celery_client.py"))
        .args(args)
        .env("AMQP_URL", python_amqp_url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The Python client helper against the broker at `url` (a Redis one, say).
#[allow(dead_code, reason = "used by the it binary only")]
pub fn celery_client_on(url: &str, args: &[&str]) -> Value {
    let out = celery_client_command(args)
        .env("AMQP_URL", url)
        .output()
        .expect("run the Python client");
    parse_client_output(&out)
}

/// The real `celery` command-line tool against the broker at `url`.
#[allow(dead_code, reason = "used by the it binary only")]
pub fn celery_cli_on(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(python().with_file_name("celery"))
        .arg("-b")
        .arg(url)
        .args(args)
        .output()
        .expect("run celery")
}

/// Parses the helper's output, failing with its stderr when it did not succeed.
pub fn parse_client_output(out: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("bad client output {line:?}: {e}\n{stderr}"))
}

/// Runs the real `celery` command-line tool (`celery -b <broker> <args…>`) from the venv.
#[allow(dead_code, reason = "used by the it binary only")]
pub fn celery_cli(args: &[&str]) -> std::process::Output {
    let celery = python().with_file_name("celery");
    Command::new(celery)
        .arg("-b")
        .arg(python_amqp_url())
        .args(args)
        .output()
        .expect("run celery")
}

/// `celery control <args…> -d node` (the real CLI); its stdout, asserted successful.
#[allow(dead_code, reason = "used by the it binary only")]
pub fn celery_control(node: &str, args: &[&str]) -> String {
    let mut a = vec!["control"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-d", node]);
    let out = celery_cli(&a);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "celery {a:?}: {text}{out:?}");
    text
}

/// `celery inspect <args…> --json -d node` (the real CLI); the node's reply.
#[allow(dead_code, reason = "used by the it binary only")]
pub fn celery_inspect(node: &str, args: &[&str]) -> Value {
    let mut a = vec!["inspect"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--json", "-d", node]);
    let out = celery_cli(&a);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "celery {a:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    v[node].clone()
}

/// Runs the test app's client (`tests/python/proj_client.py <args…>`, Celery's own client API)
/// with `env` besides `AMQP_URL`; returns its last line as JSON, asserted successful.
#[allow(dead_code, reason = "used by the it binary only")]
pub fn proj_client(args: &[&str], env: &[(&str, &str)]) -> Value {
    let out = Command::new(python())
        .current_dir(repo().join("tests/python"))
        .arg("proj_client.py")
        .args(args)
        .env("AMQP_URL", python_amqp_url())
        .envs(env.iter().copied())
        .output()
        .expect("run the client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "proj_client {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("proj_client {args:?} printed no JSON ({e}): {stdout}"))
}

/// A real Python Celery worker (`tests/python/pyworker.py`, solo pool) with its log captured.
#[allow(dead_code, reason = "used by the it binary only")]
pub struct PyWorker {
    child: Child,
    log: Arc<Mutex<String>>,
    /// Its node name, e.g. `py-1a2b3c4d@host`.
    pub nodename: String,
}

#[allow(dead_code, reason = "used by the it binary only")]
impl PyWorker {
    /// Starts it on `queue` and waits until it is ready.
    pub fn start(queue: &str) -> PyWorker {
        Self::start_app("pyworker", queue, &["-P", "solo"], &[])
    }

    /// Starts `celery -A app worker` on `queue` with `flags` (pool, concurrency…) and `env`
    /// besides `AMQP_URL`, from tests/python, and waits until it is ready.
    pub fn start_app(app: &str, queue: &str, flags: &[&str], env: &[(&str, String)]) -> PyWorker {
        let nodename = expand_host(&node_name("py"));
        let celery = python().with_file_name("celery");
        let mut child = Command::new(celery)
            .current_dir(repo().join("tests/python"))
            .args(["-A", app, "worker", "-l", "info"])
            .args(flags)
            .args(["-n", &nodename, "-Q", queue])
            .args(["--without-mingle", "--without-gossip"])
            .env("AMQP_URL", python_amqp_url())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the Python worker");
        let log = capture_log(child.stderr.take().unwrap(), "pyworker");
        let w = PyWorker {
            child,
            log,
            nodename,
        };
        let log = w.log.clone();
        eventually(
            Duration::from_secs(60),
            "the Python worker to be ready",
            || log.lock().unwrap().contains(" ready."),
        );
        w
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for PyWorker {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT);
        let _ = self.child.wait();
    }
}
