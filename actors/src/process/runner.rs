//! The child side: the loop a child process runs. It reads jobs from stdin, runs the
//! registered task and writes the outcome. Frames go to a private copy of the original
//! stdout; fd 1 is pointed at stderr so that a task's prints cannot corrupt the frames.

use std::io::{BufReader, BufWriter};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::{Map, Value};

use super::ipc::{FromChild, Job, JobOutcome, ToChild, read_frame_blocking, write_frame_blocking};
use crate::error::ChildError;
use crate::task::{Args, TaskContext, TaskError, Tasks};

/// Runs the child loop until stdin closes. Returns the process exit code.
pub fn run_child(registry: &Tasks) -> i32 {
    match child_loop(registry) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("celeryd child {}: {e}", std::process::id());
            1
        }
    }
}

fn child_loop(registry: &Tasks) -> Result<(), ChildError> {
    // Die with the parent, whatever way it goes (kill -9 included).
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if nix::unistd::getppid() == nix::unistd::Pid::from_raw(1) {
        return Err(ChildError::Exited);
    }
    let ipc_out = nix::unistd::dup(std::io::stdout()).map_err(std::io::Error::from)?;
    nix::unistd::dup2_stdout(std::io::stderr()).map_err(std::io::Error::from)?;
    // Shared with the running task's context, whose signals go out between its frames.
    let out = Arc::new(std::sync::Mutex::new(BufWriter::new(std::fs::File::from(
        ipc_out,
    ))));
    let sink_out = out.clone();
    let sink: crate::task::SignalSink = Arc::new(move |signal| {
        let mut w = sink_out
            .lock()
            .map_err(|_| "the pipe to the worker is broken".to_owned())?;
        write_frame_blocking(&mut *w, &FromChild::Signal(signal)).map_err(|e| e.to_string())
    });
    let write = |frame: &FromChild| -> Result<(), ChildError> {
        let mut w = out
            .lock()
            .map_err(|_| ChildError::Frame("the pipe to the worker is broken".into()))?;
        write_frame_blocking(&mut *w, frame)
    };
    let mut input = BufReader::new(std::io::stdin().lock());
    let mut env = JobEnv::new(Some(sink));
    env.watch_signal = true;
    let mut memory = ResidentMemory::default();
    // The parent signals the soft time limit with SIGUSR1; the task sees it through its context.
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, env.soft_limit.clone())?;

    write(&FromChild::Ready {
        pid: std::process::id(),
    })?;
    while let Some(msg) = read_frame_blocking::<ToChild>(&mut input)? {
        match msg {
            ToChild::Run(job) => {
                env.soft_limit
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                let measure = job.measure_memory;
                let outcome = run_job(registry, job, &mut env);
                let rss_kib = if measure { memory.kib() } else { 0 };
                write(&FromChild::Done { outcome, rss_kib })?;
            }
        }
    }
    Ok(())
}

/// What a child process keeps from one job to the next.
pub struct JobEnv {
    /// Raised (by SIGUSR1 in a child) when the soft limit of the running job passes.
    pub soft_limit: Arc<AtomicBool>,
    /// Woken with it, for async tasks that await the soft limit.
    soft_wake: Arc<tokio::sync::Notify>,
    /// Where the task's [`TaskContext::update_state`] and [`TaskContext::send_task`] go.
    signals: Option<crate::task::SignalSink>,
    /// Drives async tasks; built at the first one.
    runtime: Option<tokio::runtime::Runtime>,
    /// Wake async tasks on SIGUSR1 (a child process: the parent signals the soft limit so).
    watch_signal: bool,
}

impl std::fmt::Debug for JobEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobEnv")
            .field("runtime", &self.runtime.is_some())
            .finish()
    }
}

impl JobEnv {
    /// A fresh environment; with `signals`, a task's signals reach the worker.
    pub fn new(signals: Option<crate::task::SignalSink>) -> Self {
        JobEnv {
            soft_limit: Arc::default(),
            soft_wake: Arc::default(),
            signals,
            runtime: None,
            watch_signal: false,
        }
    }

    /// The runtime async tasks run on in this process: one thread (this one), built once.
    fn runtime(&mut self) -> Result<&tokio::runtime::Runtime, TaskError> {
        if self.runtime.is_none() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| TaskError::new("RuntimeError", format!("no runtime: {e}")))?;
            if self.watch_signal {
                // The flag is raised by its own handler; this wakes a task that awaits it.
                // The watcher runs whenever a task is driven, which is when it matters.
                let wake = self.soft_wake.clone();
                let usr1 = rt.block_on(async {
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                });
                if let Ok(mut usr1) = usr1 {
                    rt.spawn(async move {
                        while usr1.recv().await.is_some() {
                            wake.notify_waiters();
                        }
                    });
                }
            }
            self.runtime = Some(rt);
        }
        self.runtime
            .as_ref()
            .ok_or_else(|| TaskError::new("RuntimeError", "no runtime"))
    }
}

/// Runs one job and turns whatever happens (value, error, panic) into an outcome. An async
/// task is driven to its end on `env`'s runtime.
pub fn run_job(registry: &Tasks, job: Job, env: &mut JobEnv) -> JobOutcome {
    let Some(task) = registry.get(&job.name) else {
        return failure(
            &TaskError::new("NotRegistered", job.name.clone()).with_module("celery.exceptions"),
            String::new(),
        );
    };
    let args = match parse_args(&job) {
        Ok(a) => a,
        Err(e) => return failure(&e, String::new()),
    };
    let mut ctx = TaskContext::new(
        job.task_id,
        job.name,
        job.retries,
        job.hostname,
        env.soft_limit.clone(),
    )
    .with_soft_limit_wake(env.soft_wake.clone());
    if let Some(sink) = &env.signals {
        ctx = ctx.with_signals(sink.clone());
    }
    let result = if task.is_async() {
        match env.runtime() {
            Ok(rt) => {
                let fut = task.call_async(ctx.clone(), args);
                std::panic::catch_unwind(AssertUnwindSafe(|| rt.block_on(fut)))
            }
            Err(e) => Ok(Err(e)),
        }
    } else {
        std::panic::catch_unwind(AssertUnwindSafe(|| task.call(&ctx, args)))
    };
    match result {
        Ok(Ok(value)) => JobOutcome::Success {
            result_json: serde_json::to_string(&value).unwrap_or_else(|_| "null".into()),
        },
        Ok(Err(e)) => failure(&e, traceback_text(&ctx.name, &e)),
        Err(panic) => {
            let (e, tb) = panic_error(&ctx.name, panic.as_ref());
            failure(&e, tb)
        }
    }
}

/// The traceback text of a task that returned `e`.
pub fn traceback_text(name: &str, e: &TaskError) -> String {
    format!("Traceback (most recent call last):\n  celeryd task {name}\n{e}\n")
}

/// The error (`RuntimeError('task panicked: …')`) and traceback text of a task that panicked
/// with `payload`.
pub fn panic_error(name: &str, payload: &(dyn std::any::Any + Send)) -> (TaskError, String) {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "task panicked".to_owned());
    let e = TaskError::new("RuntimeError", format!("task panicked: {msg}"));
    (e, format!("task {name} panicked: {msg}\n"))
}

/// This process's resident memory in KiB (from /proc/self/statm), 0 if unknown.
pub fn resident_kib() -> u64 {
    ResidentMemory::default().kib()
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(4096)
}

/// The resident size in KiB from the text of `/proc/<pid>/statm` (its second field, in pages).
pub fn statm_resident_kib(statm: &[u8], page_size: u64) -> u64 {
    std::str::from_utf8(statm)
        .ok()
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|p| p.parse::<u64>().ok())
        .map_or(0, |pages| pages * page_size / 1024)
}

/// Reads this process's resident memory after every task, cheaply: /proc/self/statm is opened
/// once and read again in place (opening it costs more than reading it).
#[derive(Debug, Default)]
struct ResidentMemory {
    statm: Option<(std::fs::File, u64)>,
}

impl ResidentMemory {
    fn kib(&mut self) -> u64 {
        use std::os::unix::fs::FileExt;
        if self.statm.is_none() {
            self.statm = std::fs::File::open("/proc/self/statm")
                .ok()
                .map(|f| (f, page_size()));
        }
        let Some((file, page)) = &self.statm else {
            return 0;
        };
        let mut buf = [0u8; 128];
        match file.read_at(&mut buf, 0) {
            Ok(n) => statm_resident_kib(&buf[..n], *page),
            Err(_) => 0,
        }
    }
}

fn parse_args(job: &Job) -> Result<Args, TaskError> {
    let args: Vec<Value> = serde_json::from_str(&job.args_json)
        .map_err(|e| TaskError::type_error(format!("args must be a list: {e}")))?;
    let kwargs: Map<String, Value> = serde_json::from_str(&job.kwargs_json)
        .map_err(|e| TaskError::type_error(format!("kwargs must be a mapping: {e}")))?;
    Ok(Args { args, kwargs })
}

fn failure(e: &TaskError, traceback: String) -> JobOutcome {
    JobOutcome::Failure {
        exc_type: e.exc_type.clone(),
        exc_module: e.exc_module.clone(),
        args_json: serde_json::to_string(&e.args).unwrap_or_else(|_| "[]".into()),
        traceback,
        retry_in: e.retry_in,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, args: &str) -> Job {
        Job {
            task_id: "t".into(),
            name: name.into(),
            args_json: args.into(),
            kwargs_json: "{}".into(),
            retries: 0,
            hostname: "h".into(),
            measure_memory: false,
        }
    }

    #[test]
    fn reads_own_resident_memory() {
        let once = resident_kib();
        assert!(once > 0);
        let mut kept = ResidentMemory::default();
        let (first, again) = (kept.kib(), kept.kib());
        assert!(first > 0 && again > 0, "read twice through the kept file");
        // The same process, measured two ways, within a few MiB of each other.
        assert!(first.abs_diff(once) < 8 * 1024, "{first} vs {once}");
    }

    #[test]
    fn statm_second_field_is_resident_pages() {
        assert_eq!(statm_resident_kib(b"1000 250 100 1 0 300 0\n", 4096), 1000);
        assert_eq!(statm_resident_kib(b"garbage", 4096), 0);
        assert_eq!(statm_resident_kib(b"", 4096), 0);
    }

    #[test]
    fn runs_values_errors_and_panics() {
        let mut r = Tasks::new();
        r.task("add", &["x", "y"], |_c, (x, y): (i64, i64)| Ok(x + y));
        r.task("fail", &[], |_c, ()| -> Result<(), TaskError> {
            Err(TaskError::new("ValueError", "boom"))
        });
        r.task("panic", &[], |_c, ()| -> Result<(), TaskError> {
            panic!("oops")
        });
        let env = &mut JobEnv::new(None);
        assert_eq!(
            run_job(&r, job("add", "[2,3]"), env),
            JobOutcome::Success {
                result_json: "5".into()
            }
        );
        match run_job(&r, job("fail", "[]"), env) {
            JobOutcome::Failure {
                exc_type,
                exc_module,
                args_json,
                ..
            } => {
                assert_eq!(
                    (exc_type.as_str(), exc_module.as_str()),
                    ("ValueError", "builtins")
                );
                assert_eq!(args_json, r#"["boom"]"#);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(run_job(&r, job("panic", "[]"), env),
            JobOutcome::Failure { exc_type, .. } if exc_type == "RuntimeError"));
        assert!(matches!(run_job(&r, job("add", "[1]"), env),
            JobOutcome::Failure { exc_type, .. } if exc_type == "TypeError"));
        assert!(matches!(run_job(&r, job("nope", "[]"), env),
            JobOutcome::Failure { exc_type, .. } if exc_type == "NotRegistered"));
    }

    #[test]
    fn async_tasks_run_to_the_end_in_a_child_and_see_the_soft_limit() {
        let mut r = Tasks::new();
        r.task_async("wait", &["s"], |ctx, (s,): (f64,)| async move {
            ctx.sleep(std::time::Duration::from_secs_f64(s)).await?;
            Ok(s)
        });
        fn boom() -> Result<(), TaskError> {
            panic!("async oops")
        }
        r.task_async("boom", &[], |_ctx, ()| async move {
            tokio::task::yield_now().await;
            boom()
        });
        let env = &mut JobEnv::new(None);
        assert_eq!(
            run_job(&r, job("wait", "[0.01]"), env),
            JobOutcome::Success {
                result_json: "0.01".into()
            }
        );
        // The same runtime serves the next one.
        assert!(matches!(
            run_job(&r, job("wait", "[0]"), env),
            JobOutcome::Success { .. }
        ));
        match run_job(&r, job("boom", "[]"), env) {
            JobOutcome::Failure {
                exc_type,
                args_json,
                ..
            } => {
                assert_eq!(exc_type, "RuntimeError");
                assert!(args_json.contains("async oops"), "{args_json}");
            }
            other => panic!("{other:?}"),
        }
        // A soft limit raised before the sleep ends it at once.
        env.soft_limit
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let started = std::time::Instant::now();
        assert!(matches!(run_job(&r, job("wait", "[30]"), env),
            JobOutcome::Failure { exc_type, .. } if exc_type == "SoftTimeLimitExceeded"));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
