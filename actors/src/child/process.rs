//! A child's OS process, however it was started: spawned as a fresh program (a Rust child,
//! or a Python child when there is no fork server), or forked by the Python
//! [`ForkServer`](super::forkserver::ForkServer). Either way the caller gets a [`Link`]: the
//! pid, the frame pipe both ways, and a handle that waits for the exit status and kills.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tracing::warn;

use std::time::Duration;

use super::python::{self, Hello};
use super::{ChildCommand, ipc};
use crate::error::ChildError;

/// What a child's frames are read from (a pipe, or a socket from the fork server).
pub trait FrameRead: AsyncRead + Send + Unpin + std::fmt::Debug {}
impl<T: AsyncRead + Send + Unpin + std::fmt::Debug> FrameRead for T {}
/// What a child's frames are written to.
pub trait FrameWrite: AsyncWrite + Send + Unpin + std::fmt::Debug {}
impl<T: AsyncWrite + Send + Unpin + std::fmt::Debug> FrameWrite for T {}

/// The reading end of a child's frame pipe.
pub type Reader = Box<dyn FrameRead>;
/// The writing end of a child's frame pipe.
pub type Writer = Box<dyn FrameWrite>;

/// A started child: its process and its frame pipe.
#[derive(Debug)]
pub struct Link {
    /// The process.
    pub process: Process,
    /// Frames from the child.
    pub reader: Reader,
    /// Frames to the child.
    pub writer: Writer,
}

/// The OS process behind a [`Link`].
#[derive(Debug)]
pub enum Process {
    /// Our own child (`tokio::process`), killed when dropped.
    Spawned(Child),
    /// A child of the fork server, which reports its exit status.
    Forked {
        /// Its pid.
        pid: u32,
        /// Receives the raw wait status from the fork server.
        exit: Option<oneshot::Receiver<i32>>,
        /// The status once received.
        status: Option<ExitStatus>,
    },
}

impl Process {
    /// The pid (None once a spawned child has been reaped).
    pub fn id(&self) -> Option<u32> {
        match self {
            Process::Spawned(c) => c.id(),
            Process::Forked { pid, .. } => Some(*pid),
        }
    }

    /// Waits for the exit status (None: unknown, as when the fork server went first).
    pub async fn wait(&mut self) -> Option<ExitStatus> {
        match self {
            Process::Spawned(c) => c.wait().await.ok(),
            Process::Forked { exit, status, .. } => {
                if status.is_none()
                    && let Some(rx) = exit.take()
                {
                    *status = rx.await.ok().map(ExitStatus::from_raw);
                }
                *status
            }
        }
    }

    /// Sends KILL to process group `pgid` (the child's own: what its task started goes with
    /// it, even after the child was reaped), then to the child itself (a forked child may not
    /// lead its group yet).
    pub fn kill_group(&mut self, pgid: Option<u32>) {
        if let Some(pgid) = pgid.filter(|&p| p > 0) {
            let pgid = nix::unistd::Pid::from_raw(pgid as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
        self.start_kill();
    }

    /// Sends KILL (to the process only).
    pub fn start_kill(&mut self) {
        match self {
            Process::Spawned(c) => {
                let _ = c.start_kill();
            }
            Process::Forked { pid, status, .. } => {
                if status.is_none() {
                    let pid = nix::unistd::Pid::from_raw(*pid as i32);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
    }
}

/// Reads a Python process's first frame, its [`Hello`]; `Ok(None)` when it exited first
/// (the caller adds the exit status with [`exited_before_loading`]). `who` names it in the
/// error when it takes longer than `timeout`.
pub async fn read_hello(
    reader: &mut (impl AsyncRead + Unpin),
    timeout: Duration,
    who: &str,
) -> Result<Option<Hello>, ChildError> {
    let first = tokio::time::timeout(timeout, ipc::read_payload(reader))
        .await
        .map_err(|_| {
            ChildError::Frame(format!(
                "{who} did not load the app within {}s",
                timeout.as_secs()
            ))
        })??;
    let Some(payload) = first else {
        return Ok(None);
    };
    let (header, _) = python::decode_payload(&payload)?;
    python::parse_hello(&header).map(Some)
}

/// The error for a Python process that exited (with `status`, if known) before its hello.
pub fn exited_before_loading(status: Option<ExitStatus>) -> ChildError {
    ChildError::Frame(format!(
        "the Python process exited before loading the app ({})",
        status.map_or("unknown".to_owned(), |s| s.to_string())
    ))
}

/// Starts a child for `command`: forked by its fork server when it has one (a fresh process
/// is spawned instead, with a warning, when the fork server cannot fork), else spawned.
pub async fn start(command: &ChildCommand) -> Result<Link, ChildError> {
    if let Some(server) = &command.fork {
        match server.fork().await {
            Ok(link) => return Ok(link),
            Err(e) => warn!(
                error = %e,
                "The Python fork server cannot fork a child; starting a fresh interpreter."
            ),
        }
    }
    let mut child = spawn(command)?;
    let writer = child.stdin.take().ok_or(ChildError::Exited)?;
    let reader = child.stdout.take().ok_or(ChildError::Exited)?;
    Ok(Link {
        process: Process::Spawned(child),
        reader: Box::new(reader),
        writer: Box::new(writer),
    })
}

/// Starts `command` with piped stdin and stdout, in a process group of its own (a
/// terminal's ^C reaches only the parent, and a hard kill can take the child's own children
/// with it), killed if its handle is dropped.
pub(crate) fn spawn(command: &ChildCommand) -> Result<Child, ChildError> {
    spawn_with(command, Stdio::piped(), Stdio::piped())
}

/// [`spawn`] with the given stdin and stdout.
pub(crate) fn spawn_with(
    command: &ChildCommand,
    stdin: Stdio,
    stdout: Stdio,
) -> Result<Child, ChildError> {
    Command::new(&command.program)
        .args(&command.args)
        .envs(command.env.iter().map(|(k, v)| (k, v)))
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .map_err(|e| ChildError::Spawn(command.program.display().to_string(), e))
}
