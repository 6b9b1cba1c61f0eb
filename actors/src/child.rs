//! One actor per OS child process, which runs one task at a time. Two kinds of child, one
//! lifecycle: a Rust child is this same executable started in a hidden child mode, speaking
//! [`ipc::ToChild`]/[`ipc::FromChild`] (bincode) on its stdin and stdout; a Python child is
//! the embedded script ([`python::CHILD_SCRIPT`]) run by an interpreter, speaking the
//! [`python`] frames (a JSON header and the task body as it was delivered), and running the
//! app's own tasks through Celery's tracer, which writes their results itself.
//!
//! A hard time limit sends TERM to the child's process group, then KILL 0.1 s later, as
//! billiard does (a Python child's `finally` blocks and `task_postrun` run in between).
//!
//! Supervised by [`Pool`](crate::pool::Pool), which hands it work and replaces it when it
//! stops. When the OS process exits, the actor reports the running task (if any) as lost and
//! stops with reason `child_exited`; the process is killed if the actor goes away first
//! (`kill_on_drop`), and the child also has a parent-death signal, so no child outlives the
//! worker.

pub mod forkserver;
pub mod ipc;
pub mod process;
pub mod python;
pub mod runner;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{debug, error, warn};

use self::forkserver::ForkServer;
use self::process::{Process, Writer};

use self::ipc::{FromChild, Job, JobOutcome, ToChild};
pub use crate::abort::AbortOnDrop;
use crate::error::ChildError;
use crate::pool::PoolMessage;
use crate::protocol::ExceptionInfo;
use crate::work::{Reserved, TaskOutcome};

/// How to start a child process: the program, its arguments and the frames it speaks.
#[derive(Debug, Clone)]
pub struct ChildCommand {
    /// The executable (the worker binary itself, or a Python interpreter).
    pub program: PathBuf,
    /// Arguments that put it in child mode.
    pub args: Vec<String>,
    /// The wire codec.
    pub codec: Codec,
    /// Environment variables set for it (over the worker's own).
    pub env: Vec<(String, String)>,
    /// A Python child is forked by this fork server (which loaded the app once) rather than
    /// started as a fresh interpreter; the program and arguments are the fallback.
    pub fork: Option<Arc<ForkServer>>,
}

/// What a child process speaks on its pipes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Codec {
    /// A Rust child (`worker child`): bincode [`ipc`] frames; the parent writes results.
    #[default]
    Rust,
    /// A Python child (`celeryd_child.py`): [`python`] frames; Celery's tracer in the child
    /// writes results, the parent never does.
    Python,
}

/// The grace between TERM and KILL at a hard time limit (billiard's).
pub const HARD_KILL_GRACE: Duration = Duration::from_millis(100);

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
    /// TERM went to the process group at the hard limit of job `seq`: now KILL.
    KillNow {
        /// Which job the limit was for.
        seq: u64,
        /// The limit, for the failure.
        seconds: f64,
    },
    /// A frame arrived from the process (sent by the actor's own reader task).
    FrameReceived(Incoming),
    /// The process closed its pipe: it exited or is about to.
    PipeClosed,
}

/// A frame from either kind of child, read into what the actor acts on.
#[derive(Debug)]
pub enum Incoming {
    /// The child is up (its pid).
    Ready(u32),
    /// The running task asks for something.
    Signal(crate::task::TaskSignal),
    /// The current job ended.
    Done {
        /// How (for a Python child: what Celery's tracer did; it stored the result).
        outcome: TaskOutcome,
        /// Resident memory afterwards in KiB, when the child measured it (0 otherwise).
        rss_kib: u64,
    },
    /// A Python child stops before the current job could end normally (SystemExit or
    /// KeyboardInterrupt in the task): the exit that follows reports it lost.
    Exiting,
    /// A Python child could not load the app: the traceback.
    Failed(String),
}

type Timer = AbortOnDrop<Result<(), ractor::MessagingErr<ChildMessage>>>;

/// State: the OS process and the task it runs.
#[derive(Debug)]
pub struct ChildState {
    process: Process,
    stdin: Writer,
    _reader: AbortOnDrop,
    pid: u32,
    current: Option<(Box<Reserved>, Instant)>,
    /// Sequence number of the current job, so a late timer cannot hit the next one.
    seq: u64,
    /// Soft and hard limit timers of the current job.
    timers: Vec<Timer>,
    tasks_done: u64,
    /// The hard limit (seconds) passed and TERM was sent: the child is being killed, so
    /// whatever it still says is ignored.
    killing: Option<f64>,
}

impl Drop for ChildState {
    /// The child leads its own process group: kill the whole group, so that processes the
    /// task started do not outlive it (`kill_on_drop` only reaches the child itself).
    fn drop(&mut self) {
        self.process.kill_group(Some(self.pid));
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
        let link = process::start(&self.command).await?;
        let process = link.process;
        let pid = process.id().unwrap_or_default();
        let stdin = link.writer;
        // Buffered: a frame's length and payload then usually take one read, not two.
        let mut stdout = tokio::io::BufReader::new(link.reader);
        let codec = self.command.codec;
        let reader = tokio::spawn(async move {
            loop {
                let frame = match codec {
                    Codec::Rust => ipc::read_frame::<FromChild>(&mut stdout)
                        .await
                        .map(|f| f.map(incoming_of)),
                    Codec::Python => ipc::read_payload(&mut stdout)
                        .await
                        .and_then(|p| p.map(|p| python_incoming(&p)).transpose()),
                };
                match frame {
                    Ok(Some(frame)) => {
                        if myself.cast(ChildMessage::FrameReceived(frame)).is_err() {
                            break;
                        }
                    }
                    Ok(None) => {
                        let _ = myself.cast(ChildMessage::PipeClosed);
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "Unreadable frame from a child process; replacing it.");
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
            killing: None,
        })
    }

    /// A Python child that is idle is asked to exit (its `worker_process_shutdown` runs) and
    /// given a second to do so; whatever is left is killed with its group (`Drop`).
    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if self.command.codec == Codec::Python && state.current.is_none() {
            if let Ok(frame) = python::encode_frame(&serde_json::json!({"op": "exit"}), b"") {
                let _ = ipc::write_all(&mut state.stdin, &frame).await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), state.process.wait()).await;
        }
        Ok(())
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
            ChildMessage::KillNow { seq, seconds } => {
                if seq == state.seq {
                    state.kill_now(&myself, seconds);
                }
            }
            ChildMessage::FrameReceived(frame) => self.on_frame(&myself, state, frame),
            ChildMessage::PipeClosed => Box::pin(self.on_exit(&myself, state)).await,
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
        state.seq += 1;
        let seq = state.seq;
        let frame = match self.command.codec {
            Codec::Rust => ipc::encode_frame(&ToChild::Run(Job {
                task_id: r.request.id.clone(),
                name: r.request.task.clone(),
                args_json: serde_json::to_string(&r.request.args).unwrap_or_else(|_| "[]".into()),
                kwargs_json: serde_json::to_string(&r.request.kwargs)
                    .unwrap_or_else(|_| "{}".into()),
                retries: r.request.retries,
                hostname: self.hostname.clone(),
                measure_memory: self.recycling.max_memory_kib > 0,
            })),
            Codec::Python => python::run_frame(seq, &r.request),
        };
        state.current = Some((r, Instant::now()));
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
        let written = match frame {
            Ok(frame) => ipc::write_all(&mut state.stdin, &frame).await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            warn!(child_pid = state.pid, error = %e, "Cannot hand a task to the child process.");
            // The reader will see the pipe close; make sure the child goes.
            state.process.start_kill();
            let _ = myself.cast(ChildMessage::PipeClosed);
        }
    }

    fn on_frame(&self, myself: &ActorRef<ChildMessage>, state: &mut ChildState, frame: Incoming) {
        if state.killing.is_some() {
            return; // past its hard limit: only its exit counts now
        }
        match frame {
            Incoming::Ready(pid) => {
                debug!(child_pid = pid, "Child process ready.");
                state.pid = pid;
                let _ = self.pool.cast(PoolMessage::ChildReady {
                    child: myself.get_id(),
                    pid,
                });
            }
            Incoming::Signal(signal) => match &state.current {
                Some((reserved, _)) => {
                    let _ = self.pool.cast(PoolMessage::TaskSignal {
                        request: reserved.request.clone(),
                        signal,
                    });
                }
                None => warn!(
                    child_pid = state.pid,
                    "A task signal without a task; ignored."
                ),
            },
            Incoming::Failed(traceback) => {
                error!(
                    child_pid = state.pid,
                    "The Python child cannot load the app:\n{traceback}"
                );
            }
            Incoming::Exiting => {
                debug!(
                    child_pid = state.pid,
                    "Child process exits during its task."
                );
            }
            Incoming::Done { outcome, rss_kib } => {
                state.timers.clear();
                let rss_kib = match self.command.codec {
                    Codec::Python if self.recycling.max_memory_kib > 0 => resident_kib(state.pid),
                    _ => rss_kib,
                };
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
                    outcome,
                    runtime: started.elapsed(),
                    recycle,
                });
            }
        }
    }

    async fn on_exit(&self, myself: &ActorRef<ChildMessage>, state: &mut ChildState) {
        let status = tokio::time::timeout(Duration::from_secs(2), state.process.wait()).await;
        let how = match status {
            Ok(Some(s)) => describe_exit(s),
            _ => {
                state.process.start_kill();
                "unknown".to_owned()
            }
        };
        // The pool reports the running task (if any) as lost when it sees this actor stop;
        // the stop reason is the exit description it quotes (or the hard limit it was
        // killed at).
        debug!(child_pid = state.pid, exit = %how, busy = state.current.is_some(), "Child process exited.");
        match state.killing {
            Some(seconds) => myself.stop(Some(format!("{HARD_LIMIT_REASON}{seconds}"))),
            None => myself.stop(Some(how)),
        }
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

    /// Sends TERM to the child's whole process group and KILL [`HARD_KILL_GRACE`] later;
    /// the actor then stops with a reason the pool turns into `TimeLimitExceeded` for the
    /// running task.
    fn hard_limit(&mut self, myself: &ActorRef<ChildMessage>, seq: u64, seconds: f64) {
        let Some((r, _)) = self.current.as_ref().filter(|_| seq == self.seq) else {
            return;
        };
        if self.killing.is_some() {
            return;
        }
        error!(
            "Hard time limit ({seconds}s) exceeded for {}[{}]",
            r.request.display_name(),
            r.request.id
        );
        self.killing = Some(seconds);
        let pgid = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM);
        let t = myself.send_after(HARD_KILL_GRACE, move || ChildMessage::KillNow {
            seq,
            seconds,
        });
        self.timers.push(AbortOnDrop(t));
    }

    /// The grace after TERM is over: KILL the group and stop.
    fn kill_now(&mut self, myself: &ActorRef<ChildMessage>, seconds: f64) {
        self.process.kill_group(Some(self.pid));
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

fn incoming_of(frame: FromChild) -> Incoming {
    match frame {
        FromChild::Ready { pid } => Incoming::Ready(pid),
        FromChild::Signal(signal) => Incoming::Signal(signal),
        FromChild::Done { outcome, rss_kib } => Incoming::Done {
            outcome: outcome_of(outcome),
            rss_kib,
        },
    }
}

/// Reads a Python child's frame: `ready`, `error`, or `done` (an unknown op is an error).
fn python_incoming(payload: &[u8]) -> Result<Incoming, ChildError> {
    let (header, _) = python::decode_payload(payload)?;
    match header.get("op").and_then(serde_json::Value::as_str) {
        Some("ready") | Some("error") => match python::parse_hello(&header)? {
            python::Hello::Ready(r) => Ok(Incoming::Ready(r.pid)),
            python::Hello::Failed(traceback) => Ok(Incoming::Failed(traceback)),
        },
        _ => {
            let done = python::parse_done(&header)?;
            Ok(match done.state.as_str() {
                "EXIT" => Incoming::Exiting,
                _ => Incoming::Done {
                    outcome: TaskOutcome::Python(Box::new(done)),
                    rss_kib: 0,
                },
            })
        }
    }
}

/// Resident memory of process `pid` in KiB (from /proc), 0 if unknown.
fn resident_kib(pid: u32) -> u64 {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as u64);
    std::fs::read(format!("/proc/{pid}/statm"))
        .map(|t| runner::statm_resident_kib(&t, page))
        .unwrap_or(0)
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
            TaskOutcome::of_error(exc, traceback, retry_in)
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

    fn payload(header: serde_json::Value) -> Vec<u8> {
        python::encode_frame(&header, b"").unwrap().split_off(4)
    }

    #[test]
    fn python_frames_become_what_the_actor_acts_on() {
        let ready = payload(serde_json::json!({"op": "ready", "pid": 7,
            "celery_version": "5.7.0", "hostname": "h", "tasks": {}, "conf": {}}));
        assert!(matches!(python_incoming(&ready), Ok(Incoming::Ready(7))));
        let failed = payload(serde_json::json!({"op": "error", "error": "Traceback"}));
        assert!(matches!(python_incoming(&failed), Ok(Incoming::Failed(t)) if t == "Traceback"));
        let done = payload(
            serde_json::json!({"op": "done", "seq": 1, "state": "SUCCESS",
            "retstr": "5", "runtime": 0.01}),
        );
        match python_incoming(&done) {
            Ok(Incoming::Done {
                outcome: TaskOutcome::Python(d),
                ..
            }) => assert_eq!(
                (d.state.as_str(), d.retstr.as_deref()),
                ("SUCCESS", Some("5"))
            ),
            other => panic!("{other:?}"),
        }
        let exit = payload(serde_json::json!({"op": "done", "seq": 1, "state": "EXIT"}));
        assert!(matches!(python_incoming(&exit), Ok(Incoming::Exiting)));
        assert!(python_incoming(&payload(serde_json::json!({"op": "what"}))).is_err());
        assert!(python_incoming(b"\x05\x00").is_err());
    }
}
