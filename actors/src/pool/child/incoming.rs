//! What a [`ChildProcess`](super::ChildProcess) hears from its process: either kind of
//! child's frames (a Rust child's [`FromChild`], a Python child's [`python`] frames) read into
//! one [`Incoming`]. Pure.

use crate::error::ChildError;
use crate::process::ipc::{FromChild, JobOutcome};
use crate::process::python;
use crate::protocol::ExceptionInfo;
use crate::task::TaskSignal;
use crate::work::TaskOutcome;

/// A frame from either kind of child, read into what the actor acts on.
#[derive(Debug)]
pub enum Incoming {
    /// The child is up (its pid).
    Ready(u32),
    /// The running task asks for something.
    Signal(TaskSignal),
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

/// Reads a Rust child's frame.
pub(super) fn incoming_of(frame: FromChild) -> Incoming {
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
pub(super) fn python_incoming(payload: &[u8]) -> Result<Incoming, ChildError> {
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
