//! [`TaskError`]: the error a task returns, reported to clients as a Python exception, and the
//! conversions that let `?` turn common Rust errors into the exception a client expects.

use serde_json::Value;

/// Python's built-in exception names: a [`TaskError`] of one of these types is reported in
/// module `builtins`, so the Python client raises the real class.
const PY_BUILTIN_EXCEPTIONS: &[&str] = &[
    "ArithmeticError",
    "AssertionError",
    "AttributeError",
    "BufferError",
    "EOFError",
    "Exception",
    "FileExistsError",
    "FileNotFoundError",
    "FloatingPointError",
    "IndexError",
    "KeyError",
    "LookupError",
    "MemoryError",
    "NotImplementedError",
    "OSError",
    "OverflowError",
    "PermissionError",
    "RecursionError",
    "RuntimeError",
    "TimeoutError",
    "TypeError",
    "UnicodeError",
    "ValueError",
    "ZeroDivisionError",
    "ConnectionError",
];

/// An error returned by a task: an exception type name, a module, and its args.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskError {
    /// Exception class name, e.g. `ValueError`.
    pub exc_type: String,
    /// Module the client resolves the class in: `builtins` for Python's own exceptions,
    /// else `celeryd.tasks` (the client then builds a class of that name).
    pub exc_module: String,
    /// The exception args (usually one message string).
    pub args: Vec<Value>,
    /// Set by [`TaskContext::retry`](super::TaskContext::retry): send the task again after this
    /// many seconds.
    pub retry_in: Option<f64>,
}

impl TaskError {
    /// An error of type `exc_type` with one message argument.
    pub fn new(exc_type: impl Into<String>, message: impl Into<String>) -> Self {
        let exc_type = exc_type.into();
        let exc_module = if PY_BUILTIN_EXCEPTIONS.contains(&exc_type.as_str()) {
            "builtins"
        } else {
            "celeryd.tasks"
        };
        TaskError {
            exc_type,
            exc_module: exc_module.to_owned(),
            args: vec![Value::String(message.into())],
            retry_in: None,
        }
    }

    /// Overrides the module the client resolves the exception class in.
    pub fn with_module(mut self, module: impl Into<String>) -> Self {
        self.exc_module = module.into();
        self
    }

    /// Replaces the exception args.
    pub fn with_args(mut self, args: Vec<Value>) -> Self {
        self.args = args;
        self
    }

    /// `SoftTimeLimitExceeded()`, as billiard raises it.
    pub fn soft_time_limit_exceeded() -> Self {
        TaskError {
            exc_type: "SoftTimeLimitExceeded".into(),
            exc_module: "billiard.exceptions".into(),
            args: Vec::new(),
            retry_in: None,
        }
    }

    /// `TypeError` for call-signature mismatches.
    pub fn type_error(message: impl Into<String>) -> Self {
        TaskError::new("TypeError", message)
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let args: Vec<String> = self
            .args
            .iter()
            .map(crate::protocol::repr::py_repr)
            .collect();
        write!(f, "{}({})", self.exc_type, args.join(", "))
    }
}

/// `?` on common errors in a task: each becomes the Python exception a client expects.
impl From<std::io::Error> for TaskError {
    /// `OSError` (Python's I/O errors), with the OS error number when there is one.
    fn from(e: std::io::Error) -> Self {
        let mut err = TaskError::new("OSError", e.to_string());
        if let Some(code) = e.raw_os_error() {
            err.args = vec![Value::from(code), Value::String(e.to_string())];
        }
        err
    }
}

impl From<serde_json::Error> for TaskError {
    /// `ValueError` (what Python's `json` raises is a subclass of it).
    fn from(e: serde_json::Error) -> Self {
        TaskError::new("ValueError", e.to_string())
    }
}

impl From<std::num::ParseIntError> for TaskError {
    /// `ValueError`, as `int('x')`.
    fn from(e: std::num::ParseIntError) -> Self {
        TaskError::new("ValueError", e.to_string())
    }
}

impl From<std::num::ParseFloatError> for TaskError {
    /// `ValueError`, as `float('x')`.
    fn from(e: std::num::ParseFloatError) -> Self {
        TaskError::new("ValueError", e.to_string())
    }
}

impl From<std::str::Utf8Error> for TaskError {
    /// `ValueError` (Python's `UnicodeDecodeError` is one).
    fn from(e: std::str::Utf8Error) -> Self {
        TaskError::new("ValueError", e.to_string())
    }
}

impl From<std::string::FromUtf8Error> for TaskError {
    /// `ValueError` (Python's `UnicodeDecodeError` is one).
    fn from(e: std::string::FromUtf8Error) -> Self {
        TaskError::new("ValueError", e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn question_mark_turns_common_errors_into_python_exceptions() {
        fn read() -> Result<String, TaskError> {
            Ok(std::fs::read_to_string("/no/such/file")?)
        }
        let e = read().unwrap_err();
        assert_eq!(
            (e.exc_type.as_str(), e.exc_module.as_str()),
            ("OSError", "builtins")
        );
        assert_eq!(e.args[0], json!(2), "errno first, as Python's");
        fn parse() -> Result<i64, TaskError> {
            Ok("x".parse::<i64>()?)
        }
        assert_eq!(parse().unwrap_err().exc_type, "ValueError");
        fn decode() -> Result<Value, TaskError> {
            Ok(serde_json::from_str("{")?)
        }
        assert_eq!(decode().unwrap_err().exc_type, "ValueError");
    }

    #[test]
    fn errors_pick_the_module() {
        assert_eq!(TaskError::new("ValueError", "x").exc_module, "builtins");
        assert_eq!(TaskError::new("MyError", "x").exc_module, "celeryd.tasks");
        assert_eq!(
            TaskError::new("ValueError", "boom").to_string(),
            "ValueError('boom')"
        );
    }
}
