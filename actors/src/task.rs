//! The Rust task API: a [`Registry`] of named tasks, the [`TaskContext`] a running task sees,
//! and [`TaskError`], the error a task returns (reported to clients as a Python exception).
//!
//! ```
//! use celeryd_actors::{Registry, TaskError};
//! let mut registry = Registry::new();
//! registry.task("tasks.add", &["x", "y"], |_ctx, (x, y): (i64, i64)| Ok(x + y));
//! registry.task("tasks.fail", &["message"], |_ctx, (m,): (String,)| -> Result<(), TaskError> {
//!     Err(TaskError::new("ValueError", m))
//! });
//! assert!(registry.contains("tasks.add"));
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

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
    /// Set by [`TaskContext::retry`]: send the task again after this many seconds.
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

/// What a running task can see about itself.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// Task id.
    pub id: String,
    /// Registered task name.
    pub name: String,
    /// How many times it was retried before.
    pub retries: u32,
    /// The worker's node name.
    pub hostname: String,
    soft_limit: Arc<AtomicBool>,
}

impl TaskContext {
    /// A context; `soft_limit` is raised by the child process when the parent signals that
    /// the soft time limit passed.
    pub fn new(
        id: String,
        name: String,
        retries: u32,
        hostname: String,
        soft_limit: Arc<AtomicBool>,
    ) -> Self {
        TaskContext {
            id,
            name,
            retries,
            hostname,
            soft_limit,
        }
    }

    /// Whether the soft time limit has passed.
    pub fn soft_time_limit_exceeded(&self) -> bool {
        self.soft_limit.load(Ordering::Relaxed)
    }

    /// Celery's `self.retry(exc=…, countdown=…, max_retries=…)`; return what it gives from the
    /// task (`return Err(ctx.retry(e, 5.0, 3))`). While fewer than `max_retries` retries were
    /// made, the worker sends the task again (same id, `retries + 1`, due `countdown` seconds
    /// from now), reports RETRY with `exc` and sends `task-retried`. After that it is `exc`
    /// itself and the task fails with it, as Celery re-raises the exception it was given.
    pub fn retry(&self, exc: TaskError, countdown: f64, max_retries: u32) -> TaskError {
        if self.retries >= max_retries {
            return exc;
        }
        let countdown = if countdown.is_finite() {
            countdown.max(0.0)
        } else {
            0.0
        };
        TaskError {
            retry_in: Some(countdown),
            ..exc
        }
    }

    /// `Err(SoftTimeLimitExceeded)` once the soft time limit has passed; call it in loops and
    /// propagate with `?`, or catch it to clean up.
    pub fn check_soft_time_limit(&self) -> Result<(), TaskError> {
        if self.soft_time_limit_exceeded() {
            Err(TaskError::soft_time_limit_exceeded())
        } else {
            Ok(())
        }
    }
}

/// The arguments a task is called with.
#[derive(Debug, Clone, Default)]
pub struct Args {
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
}

impl Args {
    /// Binds positional and keyword arguments to the named parameters, as Python would,
    /// and deserializes them as a tuple `A`.
    pub fn bind<A: DeserializeOwned>(&self, task: &str, params: &[&str]) -> Result<A, TaskError> {
        if self.args.len() > params.len() {
            return Err(TaskError::type_error(format!(
                "{task}() takes {} positional arguments but {} were given",
                params.len(),
                self.args.len()
            )));
        }
        if let Some(k) = self.kwargs.keys().find(|k| !params.contains(&k.as_str())) {
            return Err(TaskError::type_error(format!(
                "{task}() got an unexpected keyword argument '{k}'"
            )));
        }
        let mut values = Vec::with_capacity(params.len());
        for (i, p) in params.iter().enumerate() {
            match (self.args.get(i), self.kwargs.get(*p)) {
                (Some(_), Some(_)) => {
                    return Err(TaskError::type_error(format!(
                        "{task}() got multiple values for argument '{p}'"
                    )));
                }
                (Some(v), None) | (None, Some(v)) => values.push(v.clone()),
                (None, None) => {
                    return Err(TaskError::type_error(format!(
                        "{task}() missing required argument: '{p}'"
                    )));
                }
            }
        }
        let packed = if values.is_empty() {
            Value::Null
        } else {
            Value::Array(values)
        };
        serde_json::from_value(packed)
            .map_err(|e| TaskError::type_error(format!("{task}(): bad argument: {e}")))
    }
}

/// The function behind a task: context and arguments in, a JSON value or an error out.
pub type TaskFn = dyn Fn(&TaskContext, Args) -> Result<Value, TaskError> + Send + Sync;

/// Per-task defaults set at registration (the config's values apply where these are None).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TaskOptions {
    /// Hard time limit in seconds: the child is killed and the task fails with
    /// `TimeLimitExceeded`.
    pub time_limit: Option<f64>,
    /// Soft time limit in seconds: the task is told (see [`TaskContext::check_soft_time_limit`]).
    pub soft_time_limit: Option<f64>,
    /// Rate limit in tasks per second.
    pub rate_limit: Option<f64>,
    /// `ignore_result` at registration: store no result (a message's own `ignore_result`
    /// header wins). None: the `task_ignore_result` setting.
    pub ignore_result: Option<bool>,
}

/// A registered task.
#[derive(Clone)]
pub struct RegisteredTask {
    name: String,
    func: Arc<TaskFn>,
    options: TaskOptions,
}

impl std::fmt::Debug for RegisteredTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredTask")
            .field("name", &self.name)
            .finish()
    }
}

impl RegisteredTask {
    /// Sets this task's hard time limit (seconds).
    pub fn time_limit(&mut self, seconds: f64) -> &mut Self {
        self.options.time_limit = Some(seconds);
        self
    }

    /// Sets this task's soft time limit (seconds).
    pub fn soft_time_limit(&mut self, seconds: f64) -> &mut Self {
        self.options.soft_time_limit = Some(seconds);
        self
    }

    /// Sets this task's rate limit (`"10/s"`, `"200/m"`, `"100/h"`, a bare number = per
    /// second); an invalid string is an error naming it.
    pub fn rate_limit(&mut self, rate: &str) -> Result<&mut Self, String> {
        self.options.rate_limit = crate::pool::rate::parse_rate(rate)?;
        Ok(self)
    }

    /// Stores no result for this task (or does, against `task_ignore_result`), as
    /// `@app.task(ignore_result=True)`.
    pub fn ignore_result(&mut self, ignore: bool) -> &mut Self {
        self.options.ignore_result = Some(ignore);
        self
    }

    /// The options set at registration.
    pub fn options(&self) -> TaskOptions {
        self.options
    }

    /// Runs the task.
    pub fn call(&self, ctx: &TaskContext, args: Args) -> Result<Value, TaskError> {
        (self.func)(ctx, args)
    }
}

/// The named tasks a worker can run. Built once by the binary and shared by the parent (to
/// know what is registered) and the child processes (to run it).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    tasks: BTreeMap<String, RegisteredTask>,
    commands: crate::control::custom::ControlCommands,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers a task taking the raw [`Args`]; returns it, to set options such as
    /// [`RegisteredTask::time_limit`].
    pub fn register<F>(&mut self, name: &str, func: F) -> &mut RegisteredTask
    where
        F: Fn(&TaskContext, Args) -> Result<Value, TaskError> + Send + Sync + 'static,
    {
        let task = RegisteredTask {
            name: name.to_owned(),
            func: Arc::new(func),
            options: TaskOptions::default(),
        };
        let slot = self
            .tasks
            .entry(name.to_owned())
            .or_insert_with(|| task.clone());
        *slot = task;
        slot
    }

    /// Registers a typed task: arguments are bound to `params` by position or keyword and
    /// deserialized as the tuple `A`; the return value is serialized to JSON.
    pub fn task<A, R, F>(&mut self, name: &str, params: &[&str], func: F) -> &mut RegisteredTask
    where
        A: DeserializeOwned,
        R: Serialize,
        F: Fn(&TaskContext, A) -> Result<R, TaskError> + Send + Sync + 'static,
    {
        let params: Vec<String> = params.iter().map(|p| (*p).to_owned()).collect();
        let task_name = name.to_owned();
        self.register(name, move |ctx, args| {
            let names: Vec<&str> = params.iter().map(String::as_str).collect();
            let bound = args.bind::<A>(&task_name, &names)?;
            let out = func(ctx, bound)?;
            serde_json::to_value(out)
                .map_err(|e| TaskError::new("EncodeError", format!("cannot encode result: {e}")))
        })
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.tasks.contains_key(name)
    }

    /// The task called `name`.
    pub fn get(&self, name: &str) -> Option<&RegisteredTask> {
        self.tasks.get(name)
    }

    /// Registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tasks.keys().map(String::as_str)
    }

    /// Registers an application remote-control command (Celery's `Panel.register`): `handler`
    /// gets a [`ControlHandle`](crate::control::custom::ControlHandle) and the request's
    /// arguments and returns the JSON reply. See [`crate::control::custom`].
    pub fn control_command<F, Fut>(&mut self, name: &str, handler: F) -> &mut Self
    where
        F: Fn(crate::control::custom::ControlHandle, serde_json::Map<String, Value>) -> Fut
            + Send
            + Sync
            + 'static,
        Fut: std::future::Future<Output = Value> + Send + 'static,
    {
        self.commands.register(name, handler);
        self
    }

    /// The application's control commands.
    pub fn control_commands(&self) -> &crate::control::custom::ControlCommands {
        &self.commands
    }

    /// Every task's registration options, by name.
    pub fn options(&self) -> std::collections::HashMap<String, TaskOptions> {
        self.tasks
            .iter()
            .map(|(k, t)| (k.clone(), t.options))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> TaskContext {
        TaskContext::new("id".into(), "t".into(), 0, "h".into(), Arc::default())
    }

    #[test]
    fn retry_asks_for_a_retry_until_max_retries() {
        let e = TaskError::new("ValueError", "x");
        assert_eq!(ctx().retry(e.clone(), 2.5, 3).retry_in, Some(2.5));
        assert_eq!(ctx().retry(e.clone(), -1.0, 3).retry_in, Some(0.0));
        let mut last = ctx();
        last.retries = 3;
        assert_eq!(
            last.retry(e.clone(), 2.5, 3),
            e,
            "out of retries: the error itself"
        );
    }

    #[test]
    fn binds_like_python() {
        let a = Args {
            args: vec![json!(2)],
            kwargs: json!({"y": 3}).as_object().cloned().unwrap(),
        };
        let (x, y): (i64, i64) = a.bind("add", &["x", "y"]).unwrap();
        assert_eq!((x, y), (2, 3));
        let a = Args {
            args: vec![json!(2)],
            ..Default::default()
        };
        let e = a.bind::<(i64, i64)>("add", &["x", "y"]).unwrap_err();
        assert!(
            e.to_string().contains("missing required argument: 'y'"),
            "{e}"
        );
        let a = Args {
            args: vec![json!(1), json!(2), json!(3)],
            ..Default::default()
        };
        assert_eq!(
            a.bind::<(i64, i64)>("add", &["x", "y"])
                .unwrap_err()
                .exc_type,
            "TypeError"
        );
        let a = Args {
            args: vec![json!("x"), json!(2)],
            ..Default::default()
        };
        assert!(a.bind::<(i64, i64)>("add", &["x", "y"]).is_err());
        let a = Args::default();
        a.bind::<()>("noop", &[]).unwrap();
    }

    #[test]
    fn typed_tasks_run() {
        let mut r = Registry::new();
        r.task("tasks.add", &["x", "y"], |_c, (x, y): (i64, i64)| Ok(x + y));
        let out = r.get("tasks.add").unwrap().call(
            &ctx(),
            Args {
                args: vec![json!(2), json!(3)],
                ..Default::default()
            },
        );
        assert_eq!(out, Ok(json!(5)));
        assert_eq!(r.names().collect::<Vec<_>>(), vec!["tasks.add"]);
    }

    #[test]
    fn errors_pick_the_module() {
        assert_eq!(TaskError::new("ValueError", "x").exc_module, "builtins");
        assert_eq!(TaskError::new("MyError", "x").exc_module, "celeryd.tasks");
        assert_eq!(
            TaskError::new("ValueError", "boom").to_string(),
            "ValueError('boom')"
        );
        let c = ctx();
        assert!(c.check_soft_time_limit().is_ok());
    }
}
