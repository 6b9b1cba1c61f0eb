//! The Python fork server: one Python process that loads the app once, as Celery's
//! MainProcess does before it starts its pool (task modules imported, `celeryd_init` and
//! `worker_init` fired), and then forks the pool's children and the helper. A forked child
//! shares the app's pages with it (copy on write; the fork server freezes them for the
//! garbage collector first), so a pool costs a fraction of the memory of fresh interpreters,
//! and a child is ready in milliseconds instead of the app's import time.
//!
//! Its control socket carries the same frames as a child's pipe ([`super::python`]): the
//! worker sends `{"op": "fork", "seq"}` with one end of a fresh socket pair attached
//! (SCM_RIGHTS), which becomes the child's frame pipe; the fork server answers `forked`
//! (with the pid) or `fork_failed`, and reports every child's end as `exited` with the raw
//! wait status, which the child's [`Process`] receives (the children are the fork server's,
//! not the worker's, so only it can reap them).
//!
//! When the fork server is gone (killed, crashed), [`ForkServer::fork`] fails and the child
//! is started as a fresh interpreter instead ([`super::start`]).

use std::collections::HashMap;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::process::Child;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::{
    ChildCommand, Link, Process, exited_before_loading, ipc, python, read_hello, spawn_with,
};
use crate::abort::AbortOnDrop;
use crate::error::ChildError;

/// How long a fork may take to be answered.
const FORK_TIMEOUT: Duration = Duration::from_secs(10);

/// The running fork server.
pub struct ForkServer {
    process: Mutex<Child>,
    pid: u32,
    control: tokio::sync::Mutex<OwnedWriteHalf>,
    routes: Arc<Mutex<Routes>>,
    seq: AtomicU64,
    _reader: AbortOnDrop,
}

impl std::fmt::Debug for ForkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkServer")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// Where the fork server's answers go.
#[derive(Debug, Default)]
struct Routes {
    /// Fork requests waiting for `forked` / `fork_failed`, by seq.
    replies: HashMap<u64, oneshot::Sender<Result<u32, String>>>,
    /// Children waiting for their exit status, by pid.
    exits: HashMap<u32, oneshot::Sender<i32>>,
    /// Exit statuses that came before anyone waited for them.
    early: HashMap<u32, i32>,
    /// The control socket closed: the fork server is gone.
    closed: bool,
}

impl Drop for ForkServer {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// What one frame from the fork server means.
#[derive(Debug, PartialEq)]
enum Answer {
    Forked(u64, Result<u32, String>),
    Exited(u32, i32),
}

/// Reads a fork server frame's header (pure).
fn answer(header: &Value) -> Result<Answer, ChildError> {
    let num = |k: &str| header.get(k).and_then(Value::as_u64);
    let bad = || ChildError::Frame(format!("unexpected frame from the fork server: {header}"));
    match header.get("op").and_then(Value::as_str) {
        Some("forked") => {
            let pid = num("pid")
                .and_then(|p| u32::try_from(p).ok())
                .ok_or_else(bad)?;
            Ok(Answer::Forked(num("seq").ok_or_else(bad)?, Ok(pid)))
        }
        Some("fork_failed") => {
            let why = header.get("error").and_then(Value::as_str).unwrap_or("?");
            Ok(Answer::Forked(
                num("seq").ok_or_else(bad)?,
                Err(why.to_owned()),
            ))
        }
        Some("exited") => {
            let pid = num("pid")
                .and_then(|p| u32::try_from(p).ok())
                .ok_or_else(bad)?;
            let status = header
                .get("status")
                .and_then(Value::as_i64)
                .and_then(|s| i32::try_from(s).ok())
                .ok_or_else(bad)?;
            Ok(Answer::Exited(pid, status))
        }
        _ => Err(bad()),
    }
}

impl Routes {
    fn route(&mut self, answer: Answer) {
        match answer {
            Answer::Forked(seq, result) => {
                if let Some(tx) = self.replies.remove(&seq) {
                    let _ = tx.send(result);
                }
            }
            Answer::Exited(pid, status) => match self.exits.remove(&pid) {
                Some(tx) => {
                    let _ = tx.send(status);
                }
                None => {
                    self.early.insert(pid, status);
                }
            },
        }
    }

    /// The receiver of `pid`'s exit status.
    fn exit_of(&mut self, pid: u32) -> oneshot::Receiver<i32> {
        let (tx, rx) = oneshot::channel();
        match self.early.remove(&pid) {
            Some(status) => {
                let _ = tx.send(status);
            }
            None => {
                self.exits.insert(pid, tx);
            }
        }
        rx
    }
}

impl ForkServer {
    /// Starts `command` (the child script, to which `--fork-server` is added) and reads its
    /// first frame: the app loaded ([`python::Hello::Ready`], with its tasks and
    /// configuration) or not ([`python::Hello::Failed`], with the traceback).
    pub async fn start(
        command: &ChildCommand,
        timeout: Duration,
    ) -> Result<(ForkServer, python::Hello), ChildError> {
        let (ours, theirs) = StdUnixStream::pair()?;
        let theirs_out = theirs.try_clone()?;
        let mut command = command.clone();
        command.fork = None;
        command.args.push("--fork-server".to_owned());
        let process = spawn_with(
            &command,
            OwnedFd::from(theirs).into(),
            OwnedFd::from(theirs_out).into(),
        )?;
        drop(command);
        let pid = process.id().unwrap_or_default();
        ours.set_nonblocking(true)?;
        let (read, write) = UnixStream::from_std(ours)?.into_split();
        let mut read = BufReader::new(read);
        let mut process = process;
        let Some(hello) = read_hello(&mut read, timeout, "the Python fork server").await? else {
            return Err(exited_before_loading(process.wait().await.ok()));
        };
        let routes = Arc::new(Mutex::new(Routes::default()));
        let reader = tokio::spawn(read_answers(read, routes.clone(), pid));
        let server = ForkServer {
            process: Mutex::new(process),
            pid,
            control: tokio::sync::Mutex::new(write),
            routes,
            seq: AtomicU64::new(0),
            _reader: AbortOnDrop(reader),
        };
        Ok((server, hello))
    }

    /// The fork server's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Forks a child: its frame pipe and its process (whose exit status the fork server
    /// reports). Fails when the fork server is gone or does not answer.
    pub async fn fork(&self) -> Result<Link, ChildError> {
        let (ours, theirs) = StdUnixStream::pair()?;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        {
            let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
            if routes.closed {
                return Err(ChildError::Exited);
            }
            routes.replies.insert(seq, tx);
        }
        let frame = python::encode_frame(&json!({"op": "fork", "seq": seq}), b"")?;
        let sent = self.send_with_fd(&frame, &theirs).await;
        drop(theirs);
        if let Err(e) = sent {
            self.forget(seq);
            return Err(e);
        }
        let pid = match tokio::time::timeout(FORK_TIMEOUT, rx).await {
            Ok(Ok(Ok(pid))) => pid,
            Ok(Ok(Err(why))) => return Err(ChildError::Frame(format!("fork failed: {why}"))),
            Ok(Err(_)) => return Err(ChildError::Exited),
            Err(_) => {
                self.forget(seq);
                return Err(ChildError::Frame("the fork server did not answer".into()));
            }
        };
        let exit = self
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .exit_of(pid);
        ours.set_nonblocking(true)?;
        let (read, write) = UnixStream::from_std(ours)?.into_split();
        debug!(child_pid = pid, "Forked a Python child.");
        Ok(Link {
            process: Process::Forked {
                pid,
                exit: Some(exit),
                status: None,
            },
            reader: Box::new(read),
            writer: Box::new(write),
        })
    }

    fn forget(&self, seq: u64) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.replies.remove(&seq);
    }

    /// Writes `frame` on the control socket with `fd` attached to its first byte.
    async fn send_with_fd(&self, frame: &[u8], fd: &StdUnixStream) -> Result<(), ChildError> {
        let mut control = self.control.lock().await;
        let raw = [fd.as_raw_fd()];
        let socket = control.as_ref().as_raw_fd();
        let sent = control
            .as_ref()
            .async_io(tokio::io::Interest::WRITABLE, || {
                sendmsg::<()>(
                    socket,
                    &[IoSlice::new(frame)],
                    &[ControlMessage::ScmRights(&raw)],
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(std::io::Error::from)
            })
            .await?;
        if sent < frame.len() {
            control.write_all(&frame[sent..]).await?;
        }
        Ok(())
    }

    /// Asks the fork server to stop (EOF on its socket) and waits a moment; it is killed
    /// with its group when dropped.
    pub async fn stop(self) {
        let _ = self.control.lock().await.shutdown().await;
        for _ in 0..100 {
            let done = self
                .process
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .try_wait()
                .map_or(true, |s| s.is_some());
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Routes the fork server's frames until its socket closes; then fails whatever waits.
async fn read_answers(
    mut read: BufReader<tokio::net::unix::OwnedReadHalf>,
    routes: Arc<Mutex<Routes>>,
    pid: u32,
) {
    loop {
        let decoded = match ipc::read_payload(&mut read).await {
            Ok(Some(payload)) => python::decode_payload(&payload).and_then(|(h, _)| answer(&h)),
            Ok(None) => break,
            Err(e) => Err(e),
        };
        match decoded {
            Ok(a) => routes.lock().unwrap_or_else(|e| e.into_inner()).route(a),
            Err(e) => warn!(fork_server_pid = pid, error = %e, "Ignoring a fork server frame."),
        }
    }
    warn!(
        fork_server_pid = pid,
        "The Python fork server is gone; new children start as fresh interpreters."
    );
    let mut routes = routes.lock().unwrap_or_else(|e| e.into_inner());
    routes.closed = true;
    routes.replies.clear();
    routes.exits.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_and_routed() {
        assert_eq!(
            answer(&json!({"op": "forked", "seq": 3, "pid": 41})).unwrap(),
            Answer::Forked(3, Ok(41))
        );
        assert_eq!(
            answer(&json!({"op": "fork_failed", "seq": 4, "error": "EAGAIN"})).unwrap(),
            Answer::Forked(4, Err("EAGAIN".into()))
        );
        assert_eq!(
            answer(&json!({"op": "exited", "pid": 41, "status": 9})).unwrap(),
            Answer::Exited(41, 9)
        );
        assert!(answer(&json!({"op": "forked", "seq": 3})).is_err());
        assert!(answer(&json!({"op": "ready"})).is_err());

        let mut routes = Routes::default();
        // An exit reported before anyone waits is kept for the waiter.
        routes.route(Answer::Exited(7, 256));
        let mut early = routes.exit_of(7);
        assert_eq!(early.try_recv().unwrap(), 256);
        let mut late = routes.exit_of(8);
        assert!(late.try_recv().is_err());
        routes.route(Answer::Exited(8, 9));
        assert_eq!(late.try_recv().unwrap(), 9);
        let (tx, mut rx) = oneshot::channel();
        routes.replies.insert(1, tx);
        routes.route(Answer::Forked(1, Ok(99)));
        assert_eq!(rx.try_recv().unwrap(), Ok(99));
        assert!(routes.replies.is_empty() && routes.exits.is_empty());
    }
}
