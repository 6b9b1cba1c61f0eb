//! The real `worker` binary: [`Worker::builder`] starts it (the one way the tests do), the
//! running [`Worker`] is its handle, and `worker ctl` runs against it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{
    amqp_url, block_on, capture_log, children_of, delete_queue, eventually, python,
    python_amqp_url, repo, unique_queue,
};

/// A node name no other test uses, as given to `-n`: `<prefix>-<8 hex digits>@%h` (the
/// program expands `%h`; [`expand_host`] does it for the tests' side).
pub fn node_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}@%h",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// `node` with `%h` replaced by this host's name, as the worker expands it.
pub fn expand_host(node: &str) -> String {
    node.replace("%h", &celeryd_actors::hostname::this_host())
}

/// The `worker` binary as a bare command, for runs that are the subject of a test themselves
/// (`--print-config`, a start that must fail, `-D`…); [`Worker::builder`] starts a worker
/// that serves.
pub fn worker_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_worker"))
}

/// How to start the real `worker` binary: from [`Worker::builder`], options, then
/// [`WorkerBuilder::start`]. By default: `--config` a file with a `[broker]` section for the
/// test broker, `-Q <queue> -n it-<uuid>@%h -l debug`, its log captured.
#[must_use = "a builder starts nothing until .start()"]
pub struct WorkerBuilder {
    exe: PathBuf,
    queue: String,
    broker_section: bool,
    broker: Option<String>,
    config: String,
    app: Vec<String>,
    concurrency: Option<u32>,
    pool: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl WorkerBuilder {
    /// Appends `toml` to the config file (after its `[broker]` section).
    pub fn config(mut self, toml: &str) -> Self {
        self.config.push_str(toml);
        self.config.push('\n');
        self
    }

    /// `toml` is the whole config file, with its own `[broker]`: replaces the default
    /// section and anything given to [`WorkerBuilder::config`] before.
    pub fn config_file(mut self, toml: &str) -> Self {
        self.broker_section = false;
        self.config = toml.to_owned();
        self
    }

    /// The broker at `url` (a Redis one, say) instead of the test RabbitMQ; with `-A`, the
    /// app's broker_url too.
    #[allow(dead_code, reason = "used by the it binary only")]
    pub fn broker(mut self, url: &str) -> Self {
        self.broker = Some(url.to_owned());
        self
    }

    /// `-c n`.
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = Some(n);
        self
    }

    /// `-P pool` (`prefork`, `async`, `threads`, `solo`).
    #[allow(dead_code, reason = "used by the it binary only")]
    pub fn pool(mut self, pool: &str) -> Self {
        self.pool = Some(pool.to_owned());
        self
    }

    /// More command-line flags, after the builder's own.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// More environment for the worker.
    #[allow(dead_code, reason = "used by the it binary only")]
    pub fn envs(mut self, env: &[(&str, String)]) -> Self {
        self.env
            .extend(env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        self
    }

    /// Runs the executable at `exe` instead of the `worker` binary cargo built (a copy, or an
    /// example built on the library).
    #[allow(dead_code, reason = "used by the it binary only")]
    pub fn exe(mut self, exe: impl AsRef<Path>) -> Self {
        self.exe = exe.as_ref().to_path_buf();
        self
    }

    /// `-A proj`: the test app (`tests/python/proj.py`, from tests/python, in the venv's
    /// Python) with `backend` as its result backend and `conf` (JSON) merged into its
    /// app.conf.
    #[allow(dead_code, reason = "used by the it binary only")]
    pub fn proj(mut self, backend: &str, conf: &str) -> Self {
        let workdir = repo().join("tests/python");
        self.app = vec![
            "-A".into(),
            "proj".into(),
            "--workdir".into(),
            workdir.to_str().unwrap().to_owned(),
            "--python".into(),
            python().display().to_string(),
        ];
        self.env.extend([
            ("AMQP_URL".to_owned(), python_amqp_url()),
            ("RESULT_BACKEND".to_owned(), backend.to_owned()),
            ("PROJ_CONF".to_owned(), conf.to_owned()),
        ]);
        self
    }

    /// Starts it and waits (30 s at most) until it logs that it consumes.
    pub fn start(self) -> Worker {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("worker.toml");
        let mut text = String::new();
        if self.broker_section {
            let url = self.broker.clone().unwrap_or_else(amqp_url);
            text = format!("[broker]\nurl = \"{url}\"\n");
        }
        let mut env = self.env.clone();
        if let Some(url) = &self.broker {
            env.push(("AMQP_URL".to_owned(), url.clone()));
        }
        text.push_str(&self.config);
        std::fs::write(&config, text).unwrap();
        let node = node_name("it");
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--config")
            .arg(&config)
            .args(["-Q", &self.queue, "-n", &node, "-l", "debug"])
            .args(&self.app);
        if let Some(n) = self.concurrency {
            cmd.args(["-c", &n.to_string()]);
        }
        if let Some(pool) = &self.pool {
            cmd.args(["-P", pool]);
        }
        let mut child = cmd
            .args(&self.args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the worker binary");
        let log = capture_log(child.stderr.take().unwrap(), "worker");
        let name = node.split('@').next().unwrap_or_default().to_owned();
        let w = Worker {
            child: Some(child),
            log,
            dir,
            node,
            name,
        };
        w.wait_for_log("Consuming from queue", Duration::from_secs(30));
        w
    }
}

/// A running `worker` binary with its log captured (started by [`Worker::builder`]); killed
/// when dropped if it is still running.
pub struct Worker {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    dir: tempfile::TempDir,
    /// The node name as given to `-n` (`it-1a2b3c4d@%h`).
    node: String,
    /// The node name's part before `@` (unique per worker).
    #[allow(dead_code, reason = "used by the it binary only")]
    pub name: String,
}

impl Worker {
    /// A worker to be started on `queue` (`-Q`: one name, or several with commas).
    pub fn builder(queue: &str) -> WorkerBuilder {
        WorkerBuilder {
            exe: PathBuf::from(env!("CARGO_BIN_EXE_worker")),
            queue: queue.to_owned(),
            broker_section: true,
            broker: None,
            config: String::new(),
            app: Vec::new(),
            concurrency: None,
            pool: None,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// The expanded node name, e.g. `it-1a2b3c4d@host`.
    pub fn nodename(&self) -> String {
        expand_host(&self.node)
    }

    /// The config file it was started with (rewritable, for SIGHUP tests).
    #[allow(dead_code, reason = "used by the it binary only")]
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("worker.toml")
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

/// Runs `check` against a worker started on a fresh queue (`prefix` names it; `configure`
/// sets the builder's options); the queue is deleted after.
pub fn with_worker(
    prefix: &str,
    configure: impl FnOnce(WorkerBuilder) -> WorkerBuilder,
    check: impl FnOnce(&Worker, &str),
) {
    let queue = unique_queue(prefix);
    let worker = configure(Worker::builder(&queue)).start();
    check(&worker, &queue);
    drop(worker);
    block_on(delete_queue(&queue));
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
    let out = worker_command()
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
