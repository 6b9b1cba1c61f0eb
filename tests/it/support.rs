//! Helpers for the integration tests: the real broker, the real `worker` binary, the real
//! Python Celery client.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;

/// The broker the tests use (`AMQP_URL`, default: guest on loopback).
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Connects, retrying for a few seconds; fails with a message naming the URL.
pub async fn connect() -> Connection {
    let url = amqp_url();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Connection::connect(&url, ConnectionProperties::default()).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => {
                panic!(
                    "cannot reach RabbitMQ at {url} (set AMQP_URL; scripts/ensure-broker.sh starts it): {e}"
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A small runtime for the tests' own AMQP calls.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A queue name no other test uses.
pub fn unique_queue(prefix: &str) -> String {
    format!("it-{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Number of ready messages in `queue` (declared passively).
pub async fn queue_depth(conn: &Connection, queue: &str) -> u32 {
    let ch = conn.create_channel().await.unwrap();
    let opts = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare(queue.into(), opts, FieldTable::default())
        .await
        .unwrap();
    q.message_count()
}

/// Deletes a test queue and its exchange (best effort).
pub async fn delete_queue(queue: &str) {
    let conn = connect().await;
    let ch = conn.create_channel().await.unwrap();
    let _ = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = ch.exchange_delete(queue.into(), Default::default()).await;
    let _ = conn.close(200, "bye".into()).await;
}

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

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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
pub fn spawn_task(queue: &str, name: &str, args: &str, extra: &[&str]) -> std::process::Child {
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
#[allow(dead_code)] // not every test binary that shares this file uses it
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
#[allow(dead_code)] // not every test binary that shares this file uses it
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
#[allow(dead_code)] // not every test binary that shares this file uses it
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

/// kombu spells the default vhost `//`.
pub fn python_amqp_url() -> String {
    amqp_url().replace("/%2f", "//").replace("/%2F", "//")
}

/// A running `worker` binary with its log captured.
pub struct Worker {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
    /// The node name's part before `@` (unique per worker).
    pub name: String,
}

impl Worker {
    /// Starts the worker on `queue` with extra config TOML (appended) and extra flags.
    pub fn start(queue: &str, extra_config: &str, flags: &[&str]) -> Worker {
        Self::start_exe(
            Path::new(env!("CARGO_BIN_EXE_worker")),
            queue,
            extra_config,
            flags,
        )
    }

    /// Starts the worker on `queue` with `toml` as the whole config file (its own `[broker]`).
    #[allow(dead_code)] // used by the fault suite (tests/faults), which shares this file
    pub fn start_with_toml(queue: &str, toml: &str, flags: &[&str]) -> Worker {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("worker.toml");
        std::fs::write(&config, toml).unwrap();
        let nodename = format!("it-{}@%h", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let exe = Path::new(env!("CARGO_BIN_EXE_worker"));
        Self::start_with_config(exe, &config, queue, &nodename, flags, dir)
    }

    /// Like [`Worker::start`], running the worker executable at `exe`.
    pub fn start_exe(exe: &Path, queue: &str, extra_config: &str, flags: &[&str]) -> Worker {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("worker.toml");
        let text = format!("[broker]\nurl = \"{}\"\n{extra_config}\n", amqp_url());
        std::fs::write(&config, text).unwrap();
        let nodename = format!("it-{}@%h", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        Self::start_with_config(exe, &config, queue, &nodename, flags, dir)
    }

    /// Starts `worker -A proj` (the test app, `tests/python/proj.py`) on `queue`, with
    /// `backend` as its result backend and `conf` (JSON) merged into its app.conf.
    #[allow(dead_code)] // not every test binary that shares this file uses it
    pub fn start_python(queue: &str, backend: &str, conf: &str, flags: &[&str]) -> Worker {
        Self::start_python_env(queue, backend, conf, flags, &[])
    }

    /// [`Worker::start_python`] with more environment for the app (`PROJ_QUEUES`, say).
    #[allow(dead_code)] // not every test binary that shares this file uses it
    pub fn start_python_env(
        queue: &str,
        backend: &str,
        conf: &str,
        flags: &[&str],
        more_env: &[(&str, String)],
    ) -> Worker {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("worker.toml");
        std::fs::write(&config, format!("[broker]\nurl = \"{}\"\n", amqp_url())).unwrap();
        let nodename = format!("it-{}@%h", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let workdir = repo().join("tests/python");
        let python = python().display().to_string();
        let mut all = vec!["-A", "proj", "--workdir", workdir.to_str().unwrap()];
        all.extend(["--python", python.as_str()]);
        all.extend(flags);
        let env = [
            ("AMQP_URL", python_amqp_url()),
            ("RESULT_BACKEND", backend.to_owned()),
            ("PROJ_CONF", conf.to_owned()),
        ];
        let env: Vec<(&str, String)> = env.into_iter().chain(more_env.iter().cloned()).collect();
        let exe = Path::new(env!("CARGO_BIN_EXE_worker"));
        Self::start_with_env(exe, &config, queue, &nodename, &all, dir, &env)
    }

    fn start_with_config(
        exe: &Path,
        config: &Path,
        queue: &str,
        nodename: &str,
        flags: &[&str],
        dir: tempfile::TempDir,
    ) -> Worker {
        Self::start_with_env(exe, config, queue, nodename, flags, dir, &[])
    }

    fn start_with_env(
        exe: &Path,
        config: &Path,
        queue: &str,
        nodename: &str,
        flags: &[&str],
        dir: tempfile::TempDir,
        env: &[(&str, String)],
    ) -> Worker {
        let mut child = Command::new(exe)
            .arg("--config")
            .arg(config)
            .args(["-Q", queue, "-n", nodename, "-l", "debug"])
            .args(flags)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the worker binary");
        let log = capture_log(child.stderr.take().unwrap(), "worker");
        let name = nodename.split('@').next().unwrap_or_default().to_owned();
        let w = Worker {
            child: Some(child),
            log,
            _dir: dir,
            name,
        };
        w.wait_for_log("Consuming from queue", Duration::from_secs(30));
        w
    }

    /// The expanded node name, e.g. `it-1a2b3c4d@host`.
    pub fn nodename(&self) -> String {
        format!("{}@{}", self.name, celeryd_actors::hostname::this_host())
    }

    /// The config file it was started with (rewritable, for SIGHUP tests).
    #[allow(dead_code)] // not every test binary that shares this file uses it
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("worker.toml")
    }

    /// The OS pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or_default()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let log = self.log.clone();
        eventually(
            timeout,
            &format!("worker log to contain {needle:?}"),
            || log.lock().unwrap().contains(needle),
        );
    }

    /// Sends a signal to the worker process.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
    }

    /// Waits for the worker to exit; returns its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pids of the worker's child processes (from /proc).
    pub fn children(&self) -> Vec<i32> {
        children_of(self.pid() as i32)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Collects a child's stderr lines (echoed with a `[tag]` prefix) into a shared string.
pub fn capture_log(stderr: std::process::ChildStderr, tag: &'static str) -> Arc<Mutex<String>> {
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{tag}] {line}");
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    log
}

/// Pids whose parent is `ppid` (zombies left out).
pub fn children_of(ppid: i32) -> Vec<i32> {
    processes_of(ppid)
        .into_iter()
        .filter(|(_, state)| state != "Z")
        .map(|(pid, _)| pid)
        .collect()
}

/// `(pid, state)` of every process whose parent is `ppid`, from /proc (`Z` is a zombie).
pub fn processes_of(ppid: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The field after the ")" that closes the command name: state, then ppid.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(ppid) {
            out.push((pid, fields[0].to_owned()));
        }
    }
    out
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Polls `check` until it holds, or fails naming `what`.
pub fn eventually(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Runs `worker ctl <args…>` against the test broker; returns (exit code, stdout, stderr).
pub fn worker_ctl(args: &[&str]) -> (i32, String, String) {
    worker_ctl_with_broker(&amqp_url(), args)
}

/// Like [`worker_ctl`], with the config's broker URL set to `url`.
pub fn worker_ctl_with_broker(url: &str, args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ctl.toml");
    std::fs::write(&config, format!("[broker]\nurl = \"{url}\"\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_worker"))
        .arg("--config")
        .arg(&config)
        .arg("ctl")
        .args(args)
        .output()
        .expect("run worker ctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A real Python Celery worker (`tests/python/pyworker.py`, solo pool) with its log captured.
pub struct PyWorker {
    child: Child,
    log: Arc<Mutex<String>>,
    /// Its node name, e.g. `py-1a2b3c4d@host`.
    pub nodename: String,
}

impl PyWorker {
    /// Starts it on `queue` and waits until it is ready.
    pub fn start(queue: &str) -> PyWorker {
        Self::start_app("pyworker", queue, &["-P", "solo"], &[])
    }

    /// Starts `celery -A app worker` on `queue` with `flags` (pool, concurrency…) and `env`
    /// besides `AMQP_URL`, from tests/python, and waits until it is ready.
    pub fn start_app(app: &str, queue: &str, flags: &[&str], env: &[(&str, String)]) -> PyWorker {
        let short = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let nodename = format!("py-{short}@{}", celeryd_actors::hostname::this_host());
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
    #[allow(dead_code)] // not every test binary that shares this file uses it
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

/// A plain HTTP/1.0 request to 127.0.0.1:`port` (the tests' only HTTP client); returns the
/// status code and the body.
pub fn http(method: &str, port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req =
        format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    (status, body.to_owned())
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
