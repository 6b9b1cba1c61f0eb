//! The in-process strategy of the [`Pool`](super::Pool): the `async`, `threads` and `solo`
//! pools run tasks inside the worker process, on a Tokio runtime of their own (never the one
//! the consumer, remote control and events run on, so a task that blocks its thread cannot
//! freeze them). The pool keeps its reserved queue, rate limits and bookkeeping; this module
//! only starts jobs, enforces their limits and says how they ended.
//!
//! Where a job runs ([`placement`]): under `async`, an async task is a future on the
//! runtime's workers, and a sync task runs on its blocking threads; under `threads` and
//! `solo`, every task has a thread of its own (an async one is driven there to its end).
//!
//! A future can be cancelled (hard time limit, `revoke --terminate`): it is dropped at its
//! next `.await`. A thread cannot be: its task is reported (`TimeLimitExceeded`, REVOKED) at
//! once, as with prefork, and the thread finishes in the background with its result
//! discarded, its slot held until then so the pool never runs more than its concurrency.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{AbortHandle, abortable};
use nix::sys::signal::Signal;
use ractor::ActorRef;
use serde_json::Value;
use tracing::{error, info, warn};

use super::message::{PoolMessage, RunMsg, TimerMsg};
use super::workers::Running;
use crate::abort::AbortOnDrop;
use crate::process::Limits;
use crate::protocol::ExceptionInfo;
use crate::settings::PoolKind;
use crate::task::{Args, SignalSink, TaskContext, TaskError, Tasks};
use crate::work::{Reserved, TaskOutcome};

/// Stack of each task thread: as a process's main thread gets.
const TASK_STACK: usize = 8 << 20;

/// Where a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A future among the runtime's tasks (cancellable at any `.await`).
    Future,
    /// A thread of its own (an async task is driven to its end there, still cancellable at
    /// an `.await`; a sync one cannot be stopped).
    Thread,
}

/// Where a task of this kind runs in pool `kind` (never called for prefork).
pub fn placement(kind: PoolKind, is_async: bool) -> Placement {
    match (kind, is_async) {
        (PoolKind::Async, true) => Placement::Future,
        _ => Placement::Thread,
    }
}

/// Why a running job is stopped early.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// Its hard time limit (seconds) passed.
    HardLimit(f64),
    /// Revoked with `terminate` (the signal asked for).
    Terminate(i32),
}

/// The runtime tasks run on; shut down without waiting when the pool goes (a cold shutdown
/// must not wait for a thread that never returns).
struct TaskRuntime(Option<tokio::runtime::Runtime>);

impl Drop for TaskRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

type Timer = AbortOnDrop<Result<(), ractor::MessagingErr<PoolMessage>>>;

struct Job {
    running: Running,
    ctx: TaskContext,
    /// Cancels the task's future; None for a sync task on a thread.
    abort: Option<AbortHandle>,
    _timers: Vec<Timer>,
    /// Reported already (stopped on a thread that runs on): it only holds its slot now.
    reported: bool,
}

/// The jobs running in the worker process.
pub struct InProcess {
    kind: PoolKind,
    _runtime: TaskRuntime,
    handle: tokio::runtime::Handle,
    registry: Arc<Tasks>,
    hostname: String,
    jobs: HashMap<u64, Job>,
    next: u64,
    pid: u32,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess")
            .field("kind", &self.kind)
            .field("jobs", &self.jobs.len())
            .finish()
    }
}

impl InProcess {
    /// Starts the runtime of pool `kind`, allowing up to `max_jobs` at once.
    pub fn new(
        kind: PoolKind,
        max_jobs: usize,
        async_threads: usize,
        registry: Arc<Tasks>,
        hostname: String,
    ) -> std::io::Result<Self> {
        // Async tasks share `async_threads` workers (`[worker] async_threads`); threads and
        // solo need one worker only, to drive the timers and I/O of the async tasks their
        // threads run.
        let workers = match kind {
            PoolKind::Async => async_threads.max(1),
            _ => 1,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .max_blocking_threads(max_jobs.max(1))
            .thread_name("celeryd-task")
            .thread_stack_size(TASK_STACK)
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        Ok(InProcess {
            kind,
            _runtime: TaskRuntime(Some(rt)),
            handle,
            registry,
            hostname,
            jobs: HashMap::new(),
            next: 0,
            pid: std::process::id(),
        })
    }

    /// Jobs holding a slot (running, or stopped on a thread that has not returned yet).
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether no job holds a slot.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// The worker's pid: tasks run in it.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The jobs whose task still runs (not the ones already reported), for `inspect active`.
    pub(super) fn running(&self) -> impl Iterator<Item = &Running> {
        self.jobs
            .values()
            .filter(|j| !j.reported)
            .map(|j| &j.running)
    }

    /// Starts `running`'s task under `limits`; its end comes back as [`RunMsg::JobEnded`],
    /// its limits as [`TimerMsg::JobLimit`].
    pub(super) fn start(&mut self, pool: &ActorRef<PoolMessage>, running: Running, limits: Limits) {
        let job = self.next;
        self.next += 1;
        let request = running.request.clone();
        let sink_pool = pool.clone();
        let sink_request = request.clone();
        let sink: SignalSink = Arc::new(move |signal| {
            let signal = RunMsg::Signal {
                request: sink_request.clone(),
                signal,
            };
            sink_pool.cast(signal.into()).map_err(|e| e.to_string())
        });
        let ctx = TaskContext::new(
            request.id.clone(),
            request.task.clone(),
            request.retries,
            self.hostname.clone(),
            Arc::default(),
        )
        .with_signals(sink);
        let args = Args {
            args: request.args.clone(),
            kwargs: request.kwargs.clone(),
        };
        let started = Instant::now();
        let ended_pool = pool.clone();
        let name = request.task.clone();
        let ended = move |outcome: Option<TaskOutcome>| {
            let ended = RunMsg::JobEnded {
                job,
                outcome,
                runtime: started.elapsed(),
            };
            let _ = ended_pool.cast(ended.into());
        };
        let abort = match self.registry.get(&request.task).cloned() {
            None => {
                let e =
                    TaskError::new("NotRegistered", name.clone()).with_module("celery.exceptions");
                ended(Some(outcome_of(&name, Ok(Err(e)))));
                None
            }
            Some(task) => {
                let future = |args| AssertUnwindSafe(task.call_async(ctx.clone(), args));
                match placement(self.kind, task.is_async()) {
                    Placement::Future => {
                        let (call, abort) = abortable(future(args).catch_unwind());
                        self.handle.spawn(async move {
                            let out = call.await;
                            ended(out.ok().map(|r| outcome_of(&name, r)));
                        });
                        Some(abort)
                    }
                    Placement::Thread if task.is_async() => {
                        let (call, abort) = abortable(future(args).catch_unwind());
                        let handle = self.handle.clone();
                        self.handle.spawn_blocking(move || {
                            let out = handle.block_on(call);
                            ended(out.ok().map(|r| outcome_of(&name, r)));
                        });
                        Some(abort)
                    }
                    Placement::Thread => {
                        let sync_ctx = ctx.clone();
                        self.handle.spawn_blocking(move || {
                            let out = std::panic::catch_unwind(AssertUnwindSafe(|| {
                                task.call(&sync_ctx, args)
                            }));
                            ended(Some(outcome_of(&name, out)));
                        });
                        None
                    }
                }
            }
        };
        let mut timers = Vec::new();
        for (seconds, hard) in [(limits.soft, false), (limits.hard, true)] {
            if let Some(seconds) = seconds {
                let after = Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX);
                let t = pool.send_after(after, move || {
                    TimerMsg::JobLimit { job, hard, seconds }.into()
                });
                timers.push(AbortOnDrop(t));
            }
        }
        self.jobs.insert(
            job,
            Job {
                running,
                ctx,
                abort,
                _timers: timers,
                reported: false,
            },
        );
    }

    /// Job `job` ended: its record, and whether it was reported already (then `outcome` is
    /// only the late result of a thread that could not be stopped).
    pub(super) fn ended(&mut self, job: u64) -> Option<(Running, bool)> {
        self.jobs.remove(&job).map(|j| (j.running, j.reported))
    }

    /// The soft limit of `job` passed: the task is told (its flag, and a wake for an async
    /// task awaiting it).
    pub(super) fn soft_limit(&self, job: u64, seconds: f64) {
        let Some(j) = self.jobs.get(&job).filter(|j| !j.reported) else {
            return;
        };
        let r = &j.running.request;
        warn!(
            "Soft time limit ({seconds}s) exceeded for {}[{}]",
            r.display_name(),
            r.id
        );
        j.ctx.raise_soft_limit();
    }

    /// Stops `job` for `why`: its future is cancelled, or (on a thread that cannot be
    /// stopped) it is left to finish with its result discarded. Returns what to report now.
    pub(super) fn stop(&mut self, job: u64, why: Stop) -> Option<(Box<Reserved>, TaskOutcome)> {
        let kind = self.kind;
        let j = self.jobs.get_mut(&job).filter(|j| !j.reported)?;
        j.reported = true;
        let r = &j.running.request;
        let (name, id) = (r.display_name().to_owned(), r.id.clone());
        let outcome = match why {
            Stop::HardLimit(seconds) => {
                error!("Hard time limit ({seconds}s) exceeded for {name}[{id}]");
                TaskOutcome::TimeLimitExceeded(seconds)
            }
            Stop::Terminate(signum) => TaskOutcome::Terminated(signum),
        };
        match &j.abort {
            Some(abort) => abort.abort(),
            None => warn!(
                "{name}[{id}] runs on a thread of the {} pool, which cannot be stopped: it is \
                 reported now and its thread finishes in the background (result discarded), \
                 holding its slot until then.",
                kind.name()
            ),
        }
        Some((j.running.to_reserved(), outcome))
    }

    /// `revoke --terminate`: stops the jobs running tasks with these ids; returns what to
    /// report now (REVOKED `terminated`).
    pub(super) fn terminate(
        &mut self,
        ids: &HashSet<String>,
        signal: Signal,
    ) -> Vec<(Box<Reserved>, TaskOutcome)> {
        let jobs: Vec<u64> = self
            .jobs
            .iter()
            .filter(|(_, j)| !j.reported && ids.contains(&j.running.request.id))
            .map(|(id, _)| *id)
            .collect();
        let mut stopped = Vec::new();
        for job in jobs {
            if let Some(done) = self.stop(job, Stop::Terminate(signal as i32)) {
                info!(
                    "Terminating {}[{}] (signal {signal}): its future is cancelled.",
                    done.0.request.display_name(),
                    done.0.request.id
                );
                stopped.push(done);
            }
        }
        stopped
    }
}

/// How a task that returned (or panicked) ended.
fn outcome_of(name: &str, result: std::thread::Result<Result<Value, TaskError>>) -> TaskOutcome {
    let (e, traceback) = match result {
        Ok(Ok(value)) => return TaskOutcome::Success(value),
        Ok(Err(e)) => {
            let tb = crate::process::runner::traceback_text(name, &e);
            (e, tb)
        }
        Err(panic) => crate::process::runner::panic_error(name, panic.as_ref()),
    };
    let exc = ExceptionInfo::new(&e.exc_type, &e.exc_module, e.args);
    TaskOutcome::of_error(exc, Some(traceback), e.retry_in)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn async_tasks_are_futures_only_in_the_async_pool() {
        assert_eq!(placement(PoolKind::Async, true), Placement::Future);
        assert_eq!(placement(PoolKind::Async, false), Placement::Thread);
        for kind in [PoolKind::Threads, PoolKind::Solo] {
            assert_eq!(placement(kind, true), Placement::Thread);
            assert_eq!(placement(kind, false), Placement::Thread);
        }
    }

    #[test]
    fn outcomes_of_values_errors_retries_and_panics() {
        assert_eq!(
            outcome_of("t", Ok(Ok(serde_json::json!(3)))),
            TaskOutcome::Success(serde_json::json!(3))
        );
        match outcome_of("t", Ok(Err(TaskError::new("ValueError", "boom")))) {
            TaskOutcome::Failure { exc, traceback } => {
                assert_eq!(exc.repr(), "ValueError('boom')");
                assert!(traceback.unwrap_or_default().contains("celeryd task t"));
            }
            other => panic!("{other:?}"),
        }
        let mut e = TaskError::new("ValueError", "again");
        e.retry_in = Some(2.0);
        assert!(matches!(
            outcome_of("t", Ok(Err(e))),
            TaskOutcome::Retry { countdown, .. } if countdown == 2.0
        ));
        let panic = std::panic::catch_unwind(|| -> Result<Value, TaskError> { panic!("oops") });
        match outcome_of("t", panic) {
            TaskOutcome::Failure { exc, .. } => {
                assert_eq!(exc.repr(), "RuntimeError('task panicked: oops')")
            }
            other => panic!("{other:?}"),
        }
    }
}
