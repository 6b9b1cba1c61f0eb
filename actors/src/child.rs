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
pub mod runner;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::process::{Child, ChildStdin, Command};
use tracing::{debug, warn};

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

/// The actor; holds its immutable configuration.
#[derive(Debug)]
pub struct ChildProcess {
    command: ChildCommand,
    hostname: String,
    pool: ActorRef<PoolMessage>,
}

impl ChildProcess {
    /// A child actor that will start `command` and report to `pool`.
    pub fn new(command: ChildCommand, hostname: String, pool: ActorRef<PoolMessage>) -> Self {
        ChildProcess {
            command,
            hostname,
            pool,
        }
    }
}

/// Messages to a child actor.
#[derive(Debug)]
pub enum ChildMessage {
    /// Run this task (the pool only sends one when the child is idle).
    Run(Box<Reserved>),
    /// A frame arrived from the process (sent by the actor's own reader task).
    FrameReceived(FromChild),
    /// The process closed its pipe: it exited or is about to.
    PipeClosed,
}

/// State: the OS process and the task it runs.
#[derive(Debug)]
pub struct ChildState {
    process: Child,
    stdin: ChildStdin,
    _reader: AbortOnDrop,
    pid: u32,
    current: Option<(Box<Reserved>, Instant)>,
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
        let mut stdout = process.stdout.take().ok_or(ChildError::Exited)?;
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
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ChildMessage::Run(reserved) => self.run(&myself, state, reserved).await,
            ChildMessage::FrameReceived(frame) => self.on_frame(&myself, state, frame),
            ChildMessage::PipeClosed => self.on_exit(&myself, state).await,
        }
        Ok(())
    }
}

impl ChildProcess {
    async fn run(&self, myself: &ActorRef<ChildMessage>, state: &mut ChildState, r: Box<Reserved>) {
        let job = Job {
            task_id: r.request.id.clone(),
            name: r.request.task.clone(),
            args_json: serde_json::to_string(&r.request.args).unwrap_or_else(|_| "[]".into()),
            kwargs_json: serde_json::to_string(&r.request.kwargs).unwrap_or_else(|_| "{}".into()),
            retries: r.request.retries,
            hostname: self.hostname.clone(),
        };
        state.current = Some((r, Instant::now()));
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
            FromChild::Done(outcome) => {
                let Some((reserved, started)) = state.current.take() else {
                    warn!(
                        child_pid = state.pid,
                        "Child reported a result without a task."
                    );
                    return;
                };
                let _ = self.pool.cast(PoolMessage::JobFinished {
                    child: myself.get_id(),
                    reserved,
                    outcome: outcome_of(outcome),
                    runtime: started.elapsed(),
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
        } => TaskOutcome::Failure {
            exc: ExceptionInfo::new(
                &exc_type,
                &exc_module,
                serde_json::from_str(&args_json).unwrap_or_default(),
            ),
            traceback: Some(traceback).filter(|t| !t.is_empty()),
        },
    }
}
