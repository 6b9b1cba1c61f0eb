//! The Python child's side of the pipe (`python/celeryd_child.py`, embedded here): the frame
//! codec and the frames' shapes. Pure; the process is started and driven by its caller.
//!
//! A frame is the usual u32 little-endian length ([`super::ipc`]), then a payload of a u32
//! little-endian JSON length, a JSON header and a raw blob: the task body, passed through as
//! the broker delivered it (never decoded and encoded again).
//!
//! The [`ChildProcess`](crate::pool::child::ChildProcess) actor speaks it to Python pool
//! children, and the [`PythonHelper`](crate::helper::PythonHelper) to the helper process that
//! carries out the cases where Celery's MainProcess writes a result itself.

use std::collections::BTreeMap;
use std::io::Read;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::ipc::MAX_FRAME;
use crate::error::ChildError;
pub use crate::protocol::Properties;
use crate::protocol::{DeliveryInfo, TaskRequest};

/// The child script, as shipped inside the binary (written to a file and run by the
/// interpreter; see [`write_script`]).
pub const CHILD_SCRIPT: &str = include_str!("../../../python/celeryd_child.py");

/// Writes [`CHILD_SCRIPT`] into `dir` (created if missing) and returns its path. The file is
/// rewritten only when its content differs, so several workers can share `dir`.
pub fn write_script(dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("celeryd_child.py");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(CHILD_SCRIPT) {
        let tmp = dir.join(format!("celeryd_child.py.{}", std::process::id()));
        std::fs::write(&tmp, CHILD_SCRIPT)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(path)
}

/// Encodes one frame: length, JSON length, JSON `header`, `blob` (the header is written in
/// place, then the two lengths in front of it).
pub fn encode_frame(header: &impl Serialize, blob: &[u8]) -> Result<Vec<u8>, ChildError> {
    let mut out = Vec::with_capacity(1024 + blob.len());
    out.extend_from_slice(&[0; 8]);
    serde_json::to_writer(&mut out, header).map_err(|e| ChildError::Frame(e.to_string()))?;
    let too_large = || ChildError::Frame("frame too large".into());
    let json_len = u32::try_from(out.len() - 8).map_err(|_| too_large())?;
    out.extend_from_slice(blob);
    let payload = out.len() - 4;
    if payload > MAX_FRAME {
        return Err(too_large());
    }
    let payload_len = u32::try_from(payload).map_err(|_| too_large())?;
    out[..4].copy_from_slice(&payload_len.to_le_bytes());
    out[4..8].copy_from_slice(&json_len.to_le_bytes());
    Ok(out)
}

/// Splits a payload (the bytes after the length) into its JSON header and its blob.
pub fn decode_payload(payload: &[u8]) -> Result<(Value, &[u8]), ChildError> {
    let bad = |why: &str| ChildError::Frame(format!("bad Python frame: {why}"));
    let len_bytes: [u8; 4] = payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("shorter than its JSON length"))?;
    let json_len = u32::from_le_bytes(len_bytes) as usize;
    let json = payload
        .get(4..4 + json_len)
        .ok_or_else(|| bad("JSON length past the end"))?;
    let header = serde_json::from_slice(json).map_err(|e| bad(&e.to_string()))?;
    Ok((header, &payload[4 + json_len..]))
}

/// Reads one frame, blocking: `Ok(None)` at a clean end of the stream.
pub fn read_frame_blocking(r: &mut impl Read) -> Result<Option<(Value, Vec<u8>)>, ChildError> {
    let Some(payload) = super::ipc::read_payload_blocking(r)? else {
        return Ok(None);
    };
    let (header, blob) = decode_payload(&payload)?;
    Ok(Some((header, blob.to_vec())))
}

/// The header of a `run` or `report` frame, borrowed from the request (serialised as it
/// stands: nothing of the message is copied on the way to the child).
#[derive(Serialize)]
struct FrameHeader<'a> {
    op: &'static str,
    seq: u64,
    task: &'a str,
    id: &'a str,
    headers: &'a Map<String, Value>,
    properties: PropertiesOut<'a>,
    delivery_info: DeliveryOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<Value>,
}

#[derive(Serialize)]
struct PropertiesOut<'a> {
    content_type: &'a Option<String>,
    content_encoding: &'a Option<String>,
    correlation_id: &'a Option<String>,
    reply_to: &'a Option<String>,
    priority: &'a Option<u8>,
    delivery_mode: &'a Option<u8>,
    #[serde(flatten)]
    extra: &'a Map<String, Value>,
}

#[derive(Serialize)]
struct DeliveryOut<'a> {
    exchange: &'a str,
    routing_key: &'a str,
    redelivered: bool,
}

impl<'a> FrameHeader<'a> {
    fn new(
        seq: u64,
        task: &'a str,
        id: &'a str,
        headers: &'a Map<String, Value>,
        p: &'a Properties,
        info: &'a DeliveryInfo,
        kind: Option<&ReportKind>,
    ) -> Self {
        FrameHeader {
            op: if kind.is_some() { "report" } else { "run" },
            seq,
            task,
            id,
            headers,
            properties: PropertiesOut {
                content_type: &p.content_type,
                content_encoding: &p.content_encoding,
                correlation_id: &p.correlation_id,
                reply_to: &p.reply_to,
                priority: &p.priority,
                delivery_mode: &p.delivery_mode,
                extra: &p.extra,
            },
            delivery_info: DeliveryOut {
                exchange: &info.exchange,
                routing_key: &info.routing_key,
                redelivered: info.redelivered,
            },
            kind: kind.map(ReportKind::to_json),
        }
    }
}

/// The header of a `run` frame (the body goes as the blob): what the child needs to build
/// the request dict as Celery's MainProcess does.
pub fn run_header(
    seq: u64,
    task: &str,
    id: &str,
    headers: &Map<String, Value>,
    properties: &Properties,
    delivery_info: &DeliveryInfo,
) -> Value {
    let h = FrameHeader::new(seq, task, id, headers, properties, delivery_info, None);
    serde_json::to_value(h).unwrap_or_default()
}

/// The whole `run` frame for a request (its Python message is required).
pub fn run_frame(seq: u64, req: &TaskRequest) -> Result<Vec<u8>, ChildError> {
    frame_for(seq, req, None)
}

/// The whole `report` frame for a request.
pub fn report_frame(seq: u64, req: &TaskRequest, kind: &ReportKind) -> Result<Vec<u8>, ChildError> {
    frame_for(seq, req, Some(kind))
}

fn frame_for(
    seq: u64,
    req: &TaskRequest,
    kind: Option<&ReportKind>,
) -> Result<Vec<u8>, ChildError> {
    let m = python_part(req)?;
    let (headers, props, info) = (m.headers(req), &m.properties, &req.delivery_info);
    let header = FrameHeader::new(seq, &req.task, &req.id, headers, props, info, kind);
    encode_frame(&header, &m.body)
}

fn python_part(req: &TaskRequest) -> Result<&crate::protocol::PythonMessage, ChildError> {
    req.python.as_deref().ok_or_else(|| {
        ChildError::Frame(format!(
            "task {} [{}] has no Python message to hand over",
            req.task, req.id
        ))
    })
}

/// Why the parent asks the Python side to write a result (the cases where Celery's
/// MainProcess does it itself).
#[derive(Debug, Clone, PartialEq)]
pub enum ReportKind {
    /// The hard time limit passed (seconds).
    TimeLimit(f64),
    /// The child died mid-task: `signal 9 (SIGKILL)`, `exitcode 1`.
    WorkerLost(String),
    /// The task raised `Reject(requeue=False)` out of the tracer.
    Rejected(String),
    /// Revoked before it ran.
    Revoked,
    /// Expired before it ran.
    Expired,
    /// Revoked with terminate while it ran (the signal number).
    Terminated(i32),
    /// No such task in the app.
    NotRegistered,
    /// An exception escaped Celery's tracer (nothing was stored): its repr.
    Internal(String),
}

impl ReportKind {
    fn to_json(&self) -> Value {
        match self {
            ReportKind::TimeLimit(s) => json!({"name": "time_limit", "timeout": s}),
            ReportKind::WorkerLost(how) => json!({"name": "worker_lost", "how": how}),
            ReportKind::Rejected(reason) => json!({"name": "rejected", "reason": reason}),
            ReportKind::Revoked => json!({"name": "revoked"}),
            ReportKind::Expired => json!({"name": "expired"}),
            ReportKind::Terminated(signum) => json!({"name": "terminated", "signum": signum}),
            ReportKind::NotRegistered => json!({"name": "not_registered"}),
            ReportKind::Internal(reason) => json!({"name": "internal", "reason": reason}),
        }
    }
}

/// The header of a `report` frame: the same fields as [`run_header`] (the body goes as the
/// blob too) and what happened.
pub fn report_header(
    seq: u64,
    task: &str,
    id: &str,
    headers: &Map<String, Value>,
    properties: &Properties,
    delivery_info: &DeliveryInfo,
    kind: &ReportKind,
) -> Value {
    let h = FrameHeader::new(
        seq,
        task,
        id,
        headers,
        properties,
        delivery_info,
        Some(kind),
    );
    serde_json::to_value(h).unwrap_or_default()
}

/// What Celery decided in a report: how to settle the delivery, and the events to send.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Reported {
    /// The `seq` of the `report` frame.
    pub seq: u64,
    /// `ack`, `reject`, `requeue`, or none (leave the delivery as it is).
    pub ack: Option<String>,
    /// Task events Celery sent (`task-failed`, `task-revoked`…), each with its `type`.
    pub events: Vec<Value>,
    /// The report could not be carried out: why.
    pub error: Option<String>,
}

/// Reads a `reported` frame's header.
pub fn parse_reported(header: &Value) -> Result<Reported, ChildError> {
    if header.get("op").and_then(Value::as_str) != Some("reported") {
        return Err(ChildError::Frame(format!(
            "expected a reported frame: {header}"
        )));
    }
    serde_json::from_value(header.clone())
        .map_err(|e| ChildError::Frame(format!("bad reported frame: {e}")))
}

/// A task as the child's `ready` frame describes it (its resolved attributes).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct PythonTask {
    /// `Task.acks_late`.
    pub acks_late: Option<bool>,
    /// `Task.acks_on_failure_or_timeout`.
    pub acks_on_failure_or_timeout: Option<bool>,
    /// `Task.reject_on_worker_lost`.
    pub reject_on_worker_lost: Option<bool>,
    /// `Task.ignore_result`.
    pub ignore_result: Option<bool>,
    /// `Task.time_limit`, seconds.
    pub time_limit: Option<f64>,
    /// `Task.soft_time_limit`, seconds.
    pub soft_time_limit: Option<f64>,
    /// `Task.rate_limit` (Celery's rate string).
    pub rate_limit: Option<String>,
    /// `Task.track_started`.
    pub track_started: Option<bool>,
    /// `Task.max_retries`.
    pub max_retries: Option<i64>,
}

/// The child's first frame: it loaded the app.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Ready {
    /// The child's pid.
    pub pid: u32,
    /// The Celery version the child runs.
    pub celery_version: String,
    /// The node name the tasks see as `request.hostname`.
    pub hostname: String,
    /// Registered tasks by name.
    pub tasks: BTreeMap<String, PythonTask>,
    /// The settings the app changed from Celery's defaults (`broker_url` resolved, with its
    /// password: the worker connects with it; `task_queues` spelt out).
    pub conf: Map<String, Value>,
    /// What `inspect conf` (`conf`, `conf_defaults`) and `inspect report` (`report`) answer
    /// for this app, as Celery builds them.
    #[serde(default)]
    pub inspect: Map<String, Value>,
}

pub use crate::work::Done;

/// What the child said first: ready, or why the app could not be loaded.
#[derive(Debug, Clone, PartialEq)]
pub enum Hello {
    /// The app is loaded.
    Ready(Box<Ready>),
    /// It is not: the Python traceback.
    Failed(String),
}

/// Reads the child's first frame's header.
pub fn parse_hello(header: &Value) -> Result<Hello, ChildError> {
    match header.get("op").and_then(Value::as_str) {
        Some("ready") => serde_json::from_value(header.clone())
            .map(|r| Hello::Ready(Box::new(r)))
            .map_err(|e| ChildError::Frame(format!("bad ready frame: {e}"))),
        Some("error") => Ok(Hello::Failed(
            header
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("the Python child failed without a reason")
                .to_owned(),
        )),
        other => Err(ChildError::Frame(format!(
            "expected a ready frame, got {other:?}"
        ))),
    }
}

/// Reads a `done` frame's header.
pub fn parse_done(header: &Value) -> Result<Done, ChildError> {
    if header.get("op").and_then(Value::as_str) != Some("done") {
        return Err(ChildError::Frame(format!(
            "expected a done frame: {header}"
        )));
    }
    serde_json::from_value(header.clone())
        .map_err(|e| ChildError::Frame(format!("bad done frame: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_the_body_untouched() {
        let body = b"[[2, 3], {}, {\"chain\": null}]\xff";
        let frame = encode_frame(&json!({"op": "run", "seq": 7}), body).unwrap();
        let (header, blob) = read_frame_blocking(&mut &frame[..]).unwrap().unwrap();
        assert_eq!(header["seq"], 7);
        assert_eq!(blob, body);
        assert!(read_frame_blocking(&mut &b""[..]).unwrap().is_none());
    }

    #[test]
    fn bad_payloads_are_errors_not_panics() {
        for payload in [
            &b""[..],
            b"\x01\x00",
            b"\xff\xff\xff\x00{}",
            b"\x02\x00\x00\x00{x",
        ] {
            assert!(decode_payload(payload).is_err(), "{payload:?}");
        }
        let huge = u32::MAX.to_le_bytes();
        assert!(read_frame_blocking(&mut &huge[..]).is_err());
    }

    #[test]
    fn hello_and_done_frames_are_read() {
        let ready = json!({"op": "ready", "pid": 42, "celery_version": "5.7.0",
            "hostname": "celery@h", "conf": {}, "tasks": {"proj.add": {"acks_late": true,
            "time_limit": null, "rate_limit": "10/s", "Request": "celery.worker.request:Request"}}});
        let Hello::Ready(r) = parse_hello(&ready).unwrap() else {
            panic!("ready")
        };
        assert_eq!(r.tasks["proj.add"].acks_late, Some(true));
        assert_eq!(r.tasks["proj.add"].rate_limit.as_deref(), Some("10/s"));
        let failed = parse_hello(&json!({"op": "error", "error": "Traceback…"})).unwrap();
        assert_eq!(failed, Hello::Failed("Traceback…".into()));
        let done = parse_done(&json!({"op": "done", "seq": 3, "state": "FAILURE",
            "exc_type": "Boom", "runtime": null}))
        .unwrap();
        assert_eq!((done.seq, done.state.as_str()), (3, "FAILURE"));
        assert!(parse_done(&json!({"op": "ready"})).is_err());
        let rep = parse_reported(&json!({"op": "reported", "seq": 4, "ack": "ack",
            "events": [{"type": "task-revoked"}]}))
        .unwrap();
        assert_eq!(rep.ack.as_deref(), Some("ack"));
        let h = report_header(
            5,
            "t",
            "i",
            &Map::new(),
            &Properties::default(),
            &DeliveryInfo::default(),
            &ReportKind::TimeLimit(2.0),
        );
        assert_eq!(
            (h["op"].as_str(), h["kind"]["timeout"].as_f64()),
            (Some("report"), Some(2.0))
        );
    }

    #[test]
    fn the_embedded_script_is_the_repository_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_script(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), CHILD_SCRIPT);
        assert!(CHILD_SCRIPT.contains("fast_trace_task"));
        assert_eq!(
            write_script(dir.path()).unwrap(),
            path,
            "rewriting is idempotent"
        );
    }
}
