//! The Python helper: one long-lived Python process per worker (the child script, never
//! handed a task, so no time limit ever kills it) that carries out the cases where Celery's
//! MainProcess writes a result itself: a hard time limit, a lost child, `Reject`, a revoked,
//! expired or terminated task, an unregistered name (`python-child.md` §3). It runs the
//! task's own `Request` methods, so chords, errbacks, chain failure propagation and user
//! hooks are Celery's, and answers with what Celery decided (ack, reject or requeue, and the
//! events), which the consumer carries out. The parent never writes a Python task's result.
//!
//! It is forked by the [`ForkServer`](crate::process::forkserver::ForkServer) like the pool's
//! children; without one (`--no-fork-server`) it is a fresh interpreter and the first
//! Python process of the worker, whose `ready` frame says which tasks the app has and what
//! its configuration is, before the rest of the tree is built ([`HelperProcess::start`]).
//!
//! Supervised by the [`Supervisor`](crate::supervisor::Supervisor). A helper process that
//! dies or stops answering is replaced at the next report (which is tried once more).

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::io::BufReader;
use tracing::{debug, error, warn};

use crate::error::ChildError;
use crate::process::python::{self, Hello, ReportKind, Reported};
use crate::process::{self, ChildCommand, Process, Reader, Writer, ipc};
use crate::protocol::TaskRequest;

/// How long a report may take (a user's `on_failure` hook or errback runs in it).
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the app may take to load in the helper (a large Django project takes seconds).
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A running helper process and its pipes.
#[derive(Debug)]
pub struct HelperProcess {
    process: Process,
    stdin: Writer,
    stdout: BufReader<Reader>,
    seq: u64,
}

impl Drop for HelperProcess {
    fn drop(&mut self) {
        let pid = self.process.id();
        self.process.kill_group(pid);
    }
}

impl HelperProcess {
    /// Starts the script (forked by the command's fork server, when it has one) and reads
    /// its first frame: the app loaded ([`Hello::Ready`]; a fresh interpreter's also has
    /// the app's tasks and configuration) or not ([`Hello::Failed`], with the traceback).
    pub async fn start(
        command: &ChildCommand,
        timeout: Duration,
    ) -> Result<(HelperProcess, Hello), ChildError> {
        let link = process::start(command).await?;
        let mut helper = HelperProcess {
            process: link.process,
            stdin: link.writer,
            stdout: BufReader::new(link.reader),
            seq: 0,
        };
        let who = "the Python process";
        match process::read_hello(&mut helper.stdout, timeout, who).await? {
            Some(hello) => Ok((helper, hello)),
            None => Err(process::exited_before_loading(helper.process.wait().await)),
        }
    }

    /// Sends one report and waits for Celery's decision.
    async fn report(
        &mut self,
        request: &TaskRequest,
        kind: &ReportKind,
    ) -> Result<Reported, ChildError> {
        self.seq += 1;
        let frame = python::report_frame(self.seq, request, kind)?;
        self.exchange(&frame).await
    }

    /// Has Celery mark these ids REVOKED where they have no result and no other worker
    /// started them (a remote revoke of tasks this worker does not run).
    async fn mark_revoked(&mut self, ids: &[String]) -> Result<Reported, ChildError> {
        self.seq += 1;
        let header = serde_json::json!({"op": "mark_revoked", "seq": self.seq, "ids": ids});
        let frame = python::encode_frame(&header, b"")?;
        self.exchange(&frame).await
    }

    /// Writes a frame and reads the `reported` answer to it.
    async fn exchange(&mut self, frame: &[u8]) -> Result<Reported, ChildError> {
        ipc::write_all(&mut self.stdin, frame).await?;
        let answer = tokio::time::timeout(REPORT_TIMEOUT, ipc::read_payload(&mut self.stdout))
            .await
            .map_err(|_| {
                ChildError::Frame(format!("no answer within {}s", REPORT_TIMEOUT.as_secs()))
            })??
            .ok_or(ChildError::Exited)?;
        let (header, _) = python::decode_payload(&answer)?;
        let reported = python::parse_reported(&header)?;
        if reported.seq != self.seq {
            return Err(ChildError::Frame(format!(
                "answer {} to report {}",
                reported.seq, self.seq
            )));
        }
        Ok(reported)
    }

    /// Asks the process to stop (its `worker_process_shutdown` runs) and waits a moment.
    async fn stop(mut self) {
        if let Ok(frame) = python::encode_frame(&serde_json::json!({"op": "exit"}), b"") {
            let _ = ipc::write_all(&mut self.stdin, &frame).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.process.wait()).await;
    }
}

/// The actor: how to start a helper process when it needs a new one.
#[derive(Debug)]
pub struct PythonHelper {
    command: ChildCommand,
}

impl PythonHelper {
    /// A helper that starts `command` (the child script) when it has no process.
    pub fn new(command: ChildCommand) -> Self {
        PythonHelper { command }
    }
}

/// Messages to the helper.
#[derive(Debug)]
pub enum HelperMessage {
    /// Have Celery write what happened to this request; answers its decision (with
    /// `error` set when it could not be carried out).
    Report {
        /// The request (its Python message is what is handed over).
        request: Arc<TaskRequest>,
        /// What happened.
        kind: ReportKind,
        /// Receives Celery's decision.
        reply: RpcReplyPort<Reported>,
    },
    /// A remote revoke of tasks this worker does not run: Celery marks them REVOKED where
    /// they are still pending (`error` set when it could not).
    MarkRevoked {
        /// The ids.
        ids: Vec<String>,
        /// Answered when done.
        reply: RpcReplyPort<Reported>,
    },
}

/// The helper's state: its process, when it has one.
#[derive(Debug)]
pub struct HelperState {
    process: Option<HelperProcess>,
}

impl Actor for PythonHelper {
    type Msg = HelperMessage;
    type State = HelperState;
    type Arguments = Option<HelperProcess>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        process: Option<HelperProcess>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(HelperState { process })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(p) = state.process.take() {
            p.stop().await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HelperMessage::Report {
                request,
                kind,
                reply,
            } => {
                let answer = self.report(state, &request, &kind).await;
                let _ = reply.send(answer);
            }
            HelperMessage::MarkRevoked { ids, reply } => {
                let answer = self.mark_revoked(state, &ids).await;
                let _ = reply.send(answer);
            }
        }
        Ok(())
    }
}

impl PythonHelper {
    /// The helper process, started (and its app loaded) when there is none.
    async fn process<'a>(
        &self,
        state: &'a mut HelperState,
    ) -> Result<&'a mut HelperProcess, String> {
        if state.process.is_none() {
            match HelperProcess::start(&self.command, START_TIMEOUT).await {
                Ok((p, Hello::Ready(_))) => state.process = Some(p),
                Ok((_, Hello::Failed(tb))) => {
                    return Err(format!("the helper cannot load the app:\n{tb}"));
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        state
            .process
            .as_mut()
            .ok_or_else(|| "no helper process".to_owned())
    }

    /// Marks remote-revoked ids REVOKED through Celery (see [`HelperMessage::MarkRevoked`]).
    async fn mark_revoked(&self, state: &mut HelperState, ids: &[String]) -> Reported {
        let answer = match self.process(state).await {
            Ok(p) => p.mark_revoked(ids).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        answer.unwrap_or_else(|e| {
            warn!(error = %e, "The Python helper failed to mark revoked tasks.");
            state.process = None;
            failed(e)
        })
    }

    /// One report, tried on a fresh process once more when the first attempt fails.
    async fn report(
        &self,
        state: &mut HelperState,
        request: &TaskRequest,
        kind: &ReportKind,
    ) -> Reported {
        let mut last = String::new();
        for attempt in 0..2 {
            let answer = match self.process(state).await {
                Ok(p) => p.report(request, kind).await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match answer {
                Ok(r) => {
                    if let Some(e) = &r.error {
                        warn!(task_id = %request.id, "Celery could not carry out {kind:?} for {}[{}]: {e}",
                            request.task, request.id);
                    }
                    debug!(task_id = %request.id, ack = ?r.ack, "Reported {kind:?}.");
                    return r;
                }
                Err(e) => {
                    warn!(task_id = %request.id, attempt, error = %e,
                        "The Python helper failed a report; starting a new one.");
                    last = e;
                    state.process = None;
                }
            }
        }
        error!(task_id = %request.id, "Cannot have Celery record {kind:?} for {}[{}]: {last}",
            request.task, request.id);
        failed(last)
    }
}

fn failed(why: String) -> Reported {
    Reported {
        error: Some(why),
        ..Reported::default()
    }
}
