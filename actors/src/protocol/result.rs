//! rpc:// result bodies, as a Python `AsyncResult` expects them.

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::time::format_iso;

/// An exception in Celery's serialized form.
#[derive(Debug, Clone, PartialEq)]
pub struct ExceptionInfo {
    /// Class name, e.g. `ValueError`.
    pub exc_type: String,
    /// Module the client looks the class up in, e.g. `builtins`.
    pub exc_module: String,
    /// The exception's args.
    pub exc_message: Vec<Value>,
}

impl ExceptionInfo {
    /// An exception with the given type, module and args.
    pub fn new(exc_type: &str, exc_module: &str, exc_message: Vec<Value>) -> Self {
        ExceptionInfo {
            exc_type: exc_type.to_owned(),
            exc_module: exc_module.to_owned(),
            exc_message,
        }
    }

    /// Python-style repr, e.g. `ValueError('boom')`.
    pub fn repr(&self) -> String {
        let inner: Vec<String> = self.exc_message.iter().map(super::repr::py_repr).collect();
        format!("{}({})", self.exc_type, inner.join(", "))
    }

    /// As a result backend stores it: `exc_type`, `exc_message`, `exc_module`.
    pub fn to_json(&self) -> Value {
        json!({
            "exc_type": self.exc_type,
            "exc_message": self.exc_message,
            "exc_module": self.exc_module,
        })
    }
}

/// The state reported in a result.
#[derive(Debug, Clone, PartialEq)]
pub enum ResultState {
    /// A child started the task (`track_started`).
    Started {
        /// The child's pid.
        pid: u32,
        /// The worker's node name.
        hostname: String,
    },
    /// The task returned this value.
    Success(Value),
    /// The task failed.
    Failure {
        /// The exception.
        exc: ExceptionInfo,
        /// A traceback text, if any.
        traceback: Option<String>,
    },
    /// Revoked: reason is `revoked`, `expired` or `terminated`.
    Revoked(String),
    /// A state the task set itself (`update_state`), with its meta.
    Custom {
        /// The state name, e.g. `PROGRESS`.
        state: String,
        /// Its meta (the stored `result`).
        meta: Value,
    },
    /// To be retried; the exception that caused it.
    Retry {
        /// The exception.
        exc: ExceptionInfo,
        /// A traceback text, if any.
        traceback: Option<String>,
    },
}

impl ResultState {
    /// The Celery state name.
    pub fn name(&self) -> &str {
        match self {
            ResultState::Custom { state, .. } => state,
            ResultState::Started { .. } => "STARTED",
            ResultState::Success(_) => "SUCCESS",
            ResultState::Failure { .. } => "FAILURE",
            ResultState::Revoked(_) => "REVOKED",
            ResultState::Retry { .. } => "RETRY",
        }
    }

    /// Whether `AsyncResult.get()` returns on it.
    pub fn is_ready(&self) -> bool {
        !matches!(
            self,
            ResultState::Started { .. } | ResultState::Retry { .. } | ResultState::Custom { .. }
        )
    }
}

/// The JSON body of an rpc:// result, in the order Celery writes the keys. It borrows the
/// state's parts: a result is serialized straight into the message body.
#[derive(serde::Serialize)]
struct Body<'a> {
    status: &'a str,
    result: ResultValue<'a>,
    traceback: Option<&'a str>,
    children: [(); 0],
    date_done: Option<String>,
    task_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<&'a str>,
    #[serde(flatten)]
    extended: Option<&'a Extended<'a>>,
}

/// What `result_extended` adds to a stored result: the request's name, args, kwargs, the
/// worker that ran it, its retries and the routing key it came with.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Extended<'a> {
    /// Task name.
    pub name: &'a str,
    /// Positional arguments.
    pub args: &'a [Value],
    /// Keyword arguments.
    pub kwargs: &'a serde_json::Map<String, Value>,
    /// The node that ran it.
    pub worker: &'a str,
    /// Retries so far.
    pub retries: u32,
    /// The routing key it arrived with.
    pub queue: Option<&'a str>,
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum ResultValue<'a> {
    Value(&'a Value),
    Started { pid: u32, hostname: &'a str },
    Exception(Value),
}

/// Builds the JSON body of an rpc:// result message.
pub fn result_body(
    task_id: &str,
    state: &ResultState,
    parent_id: Option<&str>,
    group_id: Option<&str>,
    now: OffsetDateTime,
) -> Vec<u8> {
    stored_result(task_id, state, parent_id, group_id, now, None)
}

/// [`result_body`] with, when `extended` is given, the request's fields `result_extended`
/// stores (what a result backend keeps).
pub fn stored_result(
    task_id: &str,
    state: &ResultState,
    parent_id: Option<&str>,
    group_id: Option<&str>,
    now: OffsetDateTime,
    extended: Option<&Extended<'_>>,
) -> Vec<u8> {
    let (result, traceback) = match state {
        ResultState::Started { pid, hostname } => (
            ResultValue::Started {
                pid: *pid,
                hostname,
            },
            None,
        ),
        ResultState::Success(v) | ResultState::Custom { meta: v, .. } => {
            (ResultValue::Value(v), None)
        }
        ResultState::Failure { exc, traceback } | ResultState::Retry { exc, traceback } => {
            (ResultValue::Exception(exc.to_json()), traceback.as_deref())
        }
        ResultState::Revoked(reason) => (
            ResultValue::Exception(
                ExceptionInfo::new("TaskRevokedError", "celery.exceptions", vec![json!(reason)])
                    .to_json(),
            ),
            None,
        ),
    };
    let body = Body {
        status: state.name(),
        result,
        traceback,
        children: [],
        date_done: state.is_ready().then(|| format_iso(now)),
        task_id,
        parent_id,
        group_id,
        extended,
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_results_carry_the_request() {
        let now = OffsetDateTime::now_utc();
        let args = [json!(1), json!(2)];
        let kwargs = serde_json::Map::new();
        let ext = Extended {
            name: "tasks.add",
            args: &args,
            kwargs: &kwargs,
            worker: "w@h",
            retries: 0,
            queue: Some("celery"),
        };
        let st = ResultState::Success(json!(3));
        let v: Value =
            serde_json::from_slice(&stored_result("t", &st, None, None, now, Some(&ext))).unwrap();
        assert_eq!(v["name"], "tasks.add");
        assert_eq!(v["args"], json!([1, 2]));
        assert_eq!(v["worker"], "w@h");
        assert_eq!(v["queue"], "celery");
        assert_eq!(v["result"], 3);
        let plain = parse(&result_body("t", &st, None, None, now));
        assert!(plain.get("name").is_none(), "{plain}");
    }

    fn parse(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn success_body_has_task_id_and_date() {
        let now = super::super::time::parse_iso("2026-11-23T23:17:59.494388+00:00").unwrap();
        let b = parse(&result_body(
            "tid-1",
            &ResultState::Success(json!(5)),
            None,
            None,
            now,
        ));
        assert_eq!(
            b,
            json!({"status":"SUCCESS","result":5,"traceback":null,"children":[],
                   "date_done":"2026-11-23T23:17:59.494388+00:00","task_id":"tid-1"})
        );
        // Keys in the order Celery's backend writes them.
        let text = result_body("t", &ResultState::Success(json!(5)), Some("p"), None, now);
        assert_eq!(
            String::from_utf8(text).unwrap(),
            r#"{"status":"SUCCESS","result":5,"traceback":null,"children":[],"date_done":"2026-11-23T23:17:59.494388+00:00","task_id":"t","parent_id":"p"}"#
        );
    }

    #[test]
    fn failure_and_revoked_shapes() {
        let now = OffsetDateTime::now_utc();
        let exc = ExceptionInfo::new("ValueError", "builtins", vec![json!("bad value"), json!(3)]);
        assert_eq!(exc.repr(), "ValueError('bad value', 3)");
        let st = ResultState::Failure {
            exc,
            traceback: Some("tb".into()),
        };
        let b = parse(&result_body("t", &st, Some("p"), Some("g"), now));
        assert_eq!(b["status"], "FAILURE");
        assert_eq!(
            b["result"],
            json!({"exc_type":"ValueError","exc_message":["bad value",3],"exc_module":"builtins"})
        );
        assert_eq!(b["parent_id"], "p");
        assert_eq!(b["group_id"], "g");
        let b = parse(&result_body(
            "t",
            &ResultState::Revoked("expired".into()),
            None,
            None,
            now,
        ));
        assert_eq!(b["result"]["exc_type"], "TaskRevokedError");
        assert_eq!(b["result"]["exc_message"], json!(["expired"]));
        let st = ResultState::Started {
            pid: 7,
            hostname: "celery@h".into(),
        };
        let b = parse(&result_body("t", &st, None, None, now));
        assert_eq!(b["date_done"], Value::Null);
        assert_eq!(b["result"], json!({"pid": 7, "hostname": "celery@h"}));
    }
}
