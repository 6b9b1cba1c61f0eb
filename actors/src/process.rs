//! The OS processes the worker starts, shared by the pool's children and the Python helper:
//! how one is started ([`ChildCommand`], [`start`]) and what its starter gets back, a [`Link`]
//! (the [`Process`], and the frame pipe both ways). A process is spawned as a fresh program (a
//! Rust child, or a Python child when there is no fork server), or forked by the Python
//! [`ForkServer`].
//!
//! On the pipe, a Rust child speaks [`ipc`] (bincode) frames and runs the [`runner`] loop; a
//! Python child speaks the [`python`] frames. [`Limits`] and [`Recycling`] are what the pool
//! applies to each child. No actor lives here: the pool's
//! [`ChildProcess`](crate::pool::child::ChildProcess) and the
//! [`PythonHelper`](crate::helper::PythonHelper) drive these processes.

pub mod forkserver;
pub mod ipc;
pub mod python;
pub mod runner;

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tracing::warn;

use self::forkserver::ForkServer;
use self::python::Hello;
use crate::error::ChildError;

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

/// `signal 9 (SIGKILL)` or `exitcode 1`, as billiard words it in `WorkerLostError`.
pub fn describe_exit(status: ExitStatus) -> String {
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

/// Resident memory of process `pid` in KiB (from /proc), 0 if unknown.
pub fn resident_kib(pid: u32) -> u64 {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as u64);
    std::fs::read(format!("/proc/{pid}/statm"))
        .map(|t| runner::statm_resident_kib(&t, page))
        .unwrap_or(0)
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
