//! One actor per OS child process. The child is this same executable started in a hidden
//! child mode; it runs one task at a time, receiving [`ipc::ToChild`] frames on stdin and
//! answering with [`ipc::FromChild`] frames on stdout.
//!
//! Supervised by [`Pool`](crate::pool::Pool), which hands it work and replaces it when it
//! stops. When the OS process exits, the actor reports the running task (if any) as lost and
//! stops with reason `child_exited`; the process is killed if the actor goes away first
//! (`kill_on_drop`), and the child also has a parent-death signal, so no child outlives the
//! worker.

pub mod ipc;
pub mod python;
pub mod runner;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::process::{Child, ChildStdin, Command};
use tracing::{debug, error, warn};

use self::ipc::{FromChild, Job, JobOutcome, ToChild};
use crate::error::ChildError;
use crate::pool::{PoolMessage, Reserved, TaskOutcome};
use crate::protocol::ExceptionInfo;

/// How to start a child process: the program and its arguments.
#[derive(Debug, Clone)]
pub struct ChildCommand {
    /// The executable (normally the worker binary itself).
    pub program: PathBuf,
    /// Arguments that put it in child mode.
    pub args: Vec<String>,
}

/// The stop reason of a child killed at its hard time limit: this prefix, then the limit in
/// seconds. The pool turns it into a `TimeLimitExceeded` failure of the running task.
pub const HARD_LIMIT_REASON: &str = "hard_time_limit:";

/// When to replace a child process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Recycling {
    /// After this many tasks (0 = never).
    pub max_tasks: u64,
    /// When resident memory exceeds this many KiB after a task (0 = never).
    pub max_memory_kib: u64,
}

impl Recycling {
    /// Why a child that has run `done` tasks and uses `rss_kib` should be replaced, if it should.
    pub fn reason(&self, done: u64, rss_kib: u64) -> Option<String> {
        if self.max_tasks > 0 && done >= self.max_tasks {
            return Some(format!("{done} tasks (max_tasks_per_child)"));
        }
        if self.max_memory_kib > 0 && rss_kib > self.max_memory_kib {
            return Some(format!(
                "{rss_kib} KiB resident > {} KiB (max_memory_per_child)",
                self.max_memory_kib
            ));
        }
        None
    }
}

/// The (soft, hard) time limits in force for one task, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Soft limit: SIGUSR1 to the child.
    pub soft: Option<f64>,
    /// Hard limit: the child's process group is killed.
    pub hard: Option<f64>,
}

/// The actor; holds its immutable configuration.
#[derive(Debug)]
pub struct ChildProcess {
    command: ChildCommand,
    hostname: String,
    pool: ActorRef<PoolMessage>,
    recycling: Recycling,
}

impl ChildProcess {
    /// A child actor that will start `command` and report to `pool`.
    pub fn new(
        command: ChildCommand,
        hostname: String,
        pool: ActorRef<PoolMessage>,
        recycling: Recycling,
    ) -> Self {
        ChildProcess {
            command,
            hostname,
            pool,
            recycling,
        }
    }
}

/// Messages to a child actor.
#[derive(Debug)]
pub enum ChildMessage {
    /// Run this task under these limits (the pool only sends one when the child is idle).
    Run(Box<Reserved>, Limits),
    /// The soft limit of job `seq` passed (sent by the actor's own timer).
    SoftLimitReached {
        /// Which job the timer was for.
        seq: u64,
        /// The limit, for the log line.
        seconds: f64,
    },
    /// The hard limit of job `seq` passed (sent by the actor's own timer).
    HardLimitReached {
        /// Which job the timer was for.
        seq: u64,
        /// The limit, for the log line and the failure.
        seconds: f64,
    },
    /// The running task was revoked with `terminate`: send the child this signal.
    Terminate(nix::sys::signal::Signal),
    /// A frame arrived from the process (sent by the actor's own reader task).
    FrameReceived(FromChild),
    /// The process closed its pipe: it exited or is about to.
    PipeClosed,
}

type Timer = AbortOnDrop<Result<(), ractor::MessagingErr<ChildMessage>>>;

/// State: the OS process and the task it runs.
#[derive(Debug)]
pub struct ChildState {
    process: Child,
    stdin: ChildStdin,
    _reader: AbortOnDrop,
    pid: u32,
    current: Option<(Box<Reserved>, Instant)>,
    /// Sequence number of the current job, so a late timer cannot hit the next one.
    seq: u64,
    /// Soft and hard limit timers of the current job.
    timers: Vec<Timer>,
    tasks_done: u64,
}

impl Drop for ChildState {
    /// The child leads its own process group: kill the whole group, so that processes the
    /// task started do not outlive it (`kill_on_drop` only reaches the child itself).
    fn drop(&mut self) {
        if self.pid > 0 {
            let pgid = nix::unistd::Pid::from_raw(self.pid as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Aborts a spawned task when dropped, so that a stopped actor leaves no task behind.
#[derive(Debug)]
pub struct AbortOnDrop<T = ()>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Actor for ChildProcess {
    type Msg = ChildMessage;
    type State = ChildState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut process = Command::new(&self.command.program)
            .args(&self.command.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            // Own process group: a terminal's ^C reaches only the parent, and a hard kill
            // can take the child's own children with it.
            .process_group(0)
            .spawn()
            .map_err(ChildError::Spawn)?;
        let pid = process.id().unwrap_or_default();
        let stdin = process.stdin.take().ok_or(ChildError::Exited)?;
        // Buffered: a frame's length and payload then usually take one read, not two.
        let mut stdout =
            tokio::io::BufReader::new(process.stdout.take().ok_or(ChildError::Exited)?);
        let reader = tokio::spawn(async move {
            loop {
                match ipc::read_frame::<FromChild>(&mut stdout).await {
                    Ok(Some(frame)) => {
                        if myself.cast(ChildMessage::FrameReceived(frame)).is_err() {
                            break;
                        }
                    }
                    Ok(None) | Err(_) => {
                        let _ = myself.cast(ChildMessage::PipeClosed);
                        break;
                    }
                }
            }
        });
        Ok(ChildState {
            process,
            stdin,
            _reader: AbortOnDrop(reader),
            pid,
            current: None,
            seq: 0,
            timers: Vec::new(),
            tasks_done: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ChildMessage::Run(reserved, limits) => {
                self.run(&myself, state, reserved, limits).await;
            }
            ChildMessage::SoftLimitReached { seq, seconds } => state.soft_limit(seq, seconds),
            ChildMessage::Terminate(signal) => {
                if state.current.is_some() {
                    let pid = nix::unistd::Pid::from_raw(state.pid as i32);
                    let _ = nix::sys::signal::kill(pid, signal);
                }
            }
            ChildMessage::HardLimitReached { seq, seconds } => {
                state.hard_limit(&myself, seq, seconds);
            }
            ChildMessage::FrameReceived(frame) => self.on_frame(&myself, state, frame),
            ChildMessage::PipeClosed => self.on_exit(&myself, state).await,
        }
        Ok(())
    }
}

impl ChildProcess {
    async fn run(
        &self,
        myself: &ActorRef<ChildMessage>,
        state: &mut ChildState,
        r: Box<Reserved>,
        limits: Limits,
    ) {
        let job = Job {
            task_id: r.request.id.clone(),
            name: r.request.task.clone(),
            args_json: serde_json::to_string(&r.request.args).unwrap_or_else(|_| "[]".into()),
            kwargs_json: serde_json::to_string(&r.request.kwargs).unwrap_or_else(|_| "{}".into()),
            retries: r.request.retries,
            hostname: self.hostname.clone(),
            measure_memory: self.recycling.max_memory_kib > 0,
        };
        state.current = Some((r, Instant::now()));
        state.seq += 1;
        let seq = state.seq;
        if let Some(seconds) = limits.soft {
            let t = myself.send_after(secs(seconds), move || ChildMessage::SoftLimitReached {
                seq,
                seconds,
            });
            state.timers.push(AbortOnDrop(t));
        }
        if let Some(seconds) = limits.hard {
            let t = myself.send_after(secs(seconds), move || ChildMessage::HardLimitReached {
                seq,
                seconds,
            });
            state.timers.push(AbortOnDrop(t));
        }
        if let Err(e) = ipc::write_frame(&mut state.stdin, &ToChild::Run(job)).await {
            warn!(child_pid = state.pid, error = %e, "Cannot hand a task to the child process.");
            // The reader will see the pipe close; make sure the child goes.
            let _ = state.process.start_kill();
            let _ = myself.cast(ChildMessage::PipeClosed);
        }
    }

    fn on_frame(&self, myself: &ActorRef<ChildMessage>, state: &mut ChildState, frame: FromChild) {
        match frame {
            FromChild::Ready { pid } => {
                debug!(child_pid = pid, "Child process ready.");
                state.pid = pid;
                let _ = self.pool.cast(PoolMessage::ChildReady {
                    child: myself.get_id(),
                    pid,
                });
            }
            FromChild::Done { outcome, rss_kib } => {
                state.timers.clear();
                let Some((reserved, started)) = state.current.take() else {
                    warn!(
                        child_pid = state.pid,
                        "Child reported a result without a task."
                    );
                    return;
                };
                state.tasks_done += 1;
                let recycle = self.recycling.reason(state.tasks_done, rss_kib);
                let _ = self.pool.cast(PoolMessage::JobFinished {
                    child: myself.get_id(),
                    reserved,
                    outcome: outcome_of(outcome),
                    runtime: started.elapsed(),
                    recycle,
                });
            }
        }
    }

    async fn on_exit(&self, myself: &ActorRef<ChildMessage>, state: &mut ChildState) {
        let status = tokio::time::timeout(Duration::from_secs(2), state.process.wait()).await;
        let how = match status {
            Ok(Ok(s)) => describe_exit(s),
            _ => {
                let _ = state.process.start_kill();
                "unknown".to_owned()
            }
        };
        // The pool reports the running task (if any) as lost when it sees this actor stop;
        // the stop reason is the exit description it quotes.
        debug!(child_pid = state.pid, exit = %how, busy = state.current.is_some(), "Child process exited.");
        myself.stop(Some(how));
    }
}

impl ChildState {
    fn soft_limit(&mut self, seq: u64, seconds: f64) {
        let Some((r, _)) = self.current.as_ref().filter(|_| seq == self.seq) else {
            return;
        };
        warn!(
            "Soft time limit ({seconds}s) exceeded for {}[{}]",
            r.request.display_name(),
            r.request.id
        );
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1);
    }

    /// Kills the child's whole process group and stops the actor with a reason the pool turns
    /// into `TimeLimitExceeded` for the running task.
    fn hard_limit(&mut self, myself: &ActorRef<ChildMessage>, seq: u64, seconds: f64) {
        let Some((r, _)) = self.current.as_ref().filter(|_| seq == self.seq) else {
            return;
        };
        error!(
            "Hard time limit ({seconds}s) exceeded for {}[{}]",
            r.request.display_name(),
            r.request.id
        );
        let pgid = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.process.start_kill();
        myself.stop(Some(format!("{HARD_LIMIT_REASON}{seconds}")));
    }
}

fn secs(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)
}

/// `signal 9 (SIGKILL)` or `exitcode 1`, as billiard words it in `WorkerLostError`.
fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exitcode {code}"),
        (None, Some(sig)) => {
            let name = nix::sys::signal::Signal::try_from(sig)
                .map(|s| s.as_str())
                .unwrap_or("?");
            format!("signal {sig} ({name})")
        }
        _ => "unknown".to_owned(),
    }
}

fn outcome_of(outcome: JobOutcome) -> TaskOutcome {
    match outcome {
        JobOutcome::Success { result_json } => {
            TaskOutcome::Success(serde_json::from_str(&result_json).unwrap_or_default())
        }
        JobOutcome::Failure {
            exc_type,
            exc_module,
            args_json,
            traceback,
            retry_in,
        } => {
            let exc = ExceptionInfo::new(
                &exc_type,
                &exc_module,
                serde_json::from_str(&args_json).unwrap_or_default(),
            );
            let traceback = Some(traceback).filter(|t| !t.is_empty());
            match retry_in {
                Some(countdown) => TaskOutcome::Retry {
                    exc,
                    traceback,
                    countdown,
                },
                None => TaskOutcome::Failure { exc, traceback },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycling_reasons() {
        let r = Recycling {
            max_tasks: 3,
            max_memory_kib: 1000,
        };
        assert_eq!(r.reason(2, 10), None);
        assert!(r.reason(3, 10).unwrap().contains("max_tasks_per_child"));
        assert!(r.reason(1, 2000).unwrap().contains("max_memory_per_child"));
        assert_eq!(Recycling::default().reason(1_000_000, 1 << 40), None);
    }
}
