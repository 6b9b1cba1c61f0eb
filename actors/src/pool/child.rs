//! The [`ChildProcess`] actor: one per OS child process of the prefork pool, which runs one
//! task at a time. Two kinds of child, one lifecycle: a Rust child is this same executable
//! started in a hidden child mode, speaking [`ipc::ToChild`]/[`ipc::FromChild`] (bincode) on
//! its stdin and stdout; a Python child is the embedded script ([`python::CHILD_SCRIPT`]) run
//! by an interpreter, speaking the [`python`] frames (a JSON header and the task body as it
//! was delivered), and running the app's own tasks through Celery's tracer, which writes
//! their results itself. What either says is read into an [`Incoming`].
//!
//! A hard time limit sends TERM to the child's process group, then KILL [`HARD_KILL_GRACE`]
//! later, as billiard does (a Python child's `finally` blocks and `task_postrun` run in
//! between).
//!
//! Supervised by [`Pool`](super::Pool) (its [`prefork`](super::prefork) strategy), which hands
//! it work and replaces it when it stops. When the OS process exits, the actor stops with a
//! [`ChildStop`] as its reason, from which the pool reports the running task (if any) as lost
//! or killed at its limit; the process is killed if the actor goes away first
//! (`kill_on_drop`), and the child also has a parent-death signal, so no child outlives the
//! worker.

mod incoming;

use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{debug, error, warn};

pub use self::incoming::Incoming;
use self::incoming::{incoming_of, python_incoming};
use super::message::{PoolMessage, RunMsg};
use crate::abort::AbortOnDrop;
use crate::process::ipc::{self, FromChild, Job, ToChild};
use crate::process::{
    self, ChildCommand, Codec, HARD_KILL_GRACE, Limits, Process, Recycling, Writer, python,
};
use crate::work::Reserved;

/// Why a child actor stopped itself: its ractor stop reason (a string), typed at both ends.
/// The child builds it with [`ChildStop::reason`], the pool reads it with
/// [`ChildStop::parse`].
#[derive(Debug, Clone, PartialEq)]
pub enum ChildStop {
    /// Killed at its hard time limit (seconds): the running task failed with
    /// `TimeLimitExceeded`.
    HardLimit(f64),
    /// The OS process exited: how, as billiard words it (`exitcode 1`, `signal 9 (SIGKILL)`),
    /// for the `WorkerLostError` of the running task.
    Exited(String),
}

impl ChildStop {
    const HARD_LIMIT: &str = "hard_time_limit:";
    const EXITED: &str = "child_exited:";

    /// The stop reason to give ractor.
    pub fn reason(&self) -> String {
        match self {
            ChildStop::HardLimit(seconds) => format!("{}{seconds}", Self::HARD_LIMIT),
            ChildStop::Exited(how) => format!("{}{how}", Self::EXITED),
        }
    }

    /// What a stop reason says, when a child gave it (not, say, a panic's message).
    pub fn parse(reason: &str) -> Option<ChildStop> {
        if let Some(seconds) = reason.strip_prefix(Self::HARD_LIMIT) {
            return seconds.parse().ok().map(ChildStop::HardLimit);
        }
        reason
            .strip_prefix(Self::EXITED)
            .map(|how| ChildStop::Exited(how.to_owned()))
    }
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
                let _ = self.pool.cast(
                    RunMsg::ChildReady {
                        child: myself.get_id(),
                        pid,
                    }
                    .into(),
                );
            }
            Incoming::Signal(signal) => match &state.current {
                Some((reserved, _)) => {
                    let _ = self.pool.cast(
                        RunMsg::Signal {
                            request: reserved.request.clone(),
                            signal,
                        }
                        .into(),
                    );
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
                    Codec::Python if self.recycling.max_memory_kib > 0 => {
                        process::resident_kib(state.pid)
                    }
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
                let _ = self.pool.cast(
                    RunMsg::ChildFinished {
                        child: myself.get_id(),
                        reserved,
                        outcome,
                        runtime: started.elapsed(),
                        recycle,
                    }
                    .into(),
                );
            }
        }
    }

    async fn on_exit(&self, myself: &ActorRef<ChildMessage>, state: &mut ChildState) {
        let status = tokio::time::timeout(Duration::from_secs(2), state.process.wait()).await;
        let how = match status {
            Ok(Some(s)) => process::describe_exit(s),
            _ => {
                state.process.start_kill();
                "unknown".to_owned()
            }
        };
        // The pool reports the running task (if any) as lost when it sees this actor stop;
        // the stop reason says how the process exited (or the hard limit it was killed at).
        debug!(
            child_pid = state.pid,
            exit = %how,
            busy = state.current.is_some(),
            "Child process exited."
        );
        let stop = match state.killing {
            Some(seconds) => ChildStop::HardLimit(seconds),
            None => ChildStop::Exited(how),
        };
        myself.stop(Some(stop.reason()));
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
        myself.stop(Some(ChildStop::HardLimit(seconds).reason()));
    }
}

fn secs(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reasons_round_trip() {
        for stop in [
            ChildStop::HardLimit(1.5),
            ChildStop::HardLimit(30.0),
            ChildStop::Exited("exitcode 1".into()),
            ChildStop::Exited("signal 9 (SIGKILL)".into()),
        ] {
            assert_eq!(ChildStop::parse(&stop.reason()), Some(stop));
        }
        assert_eq!(ChildStop::parse("pool_shrink"), None);
        assert_eq!(ChildStop::parse("panicked at 'boom'"), None);
        assert_eq!(ChildStop::parse("hard_time_limit:x"), None);
    }
}
