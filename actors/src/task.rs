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
//! // An async task: awaits instead of blocking a thread (`-P async` runs thousands at once).
//! registry.task_async("tasks.wait", &["seconds"], |ctx, (s,): (f64,)| async move {
//!     ctx.sleep(std::time::Duration::from_secs_f64(s)).await?;
//!     Ok(s)
//! });
//! assert!(registry.contains("tasks.add"));
//! assert!(registry.get("tasks.wait").is_some_and(|t| t.is_async()));
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

// Defined with the settings it takes its defaults from; its path here stays.
pub use crate::settings::TaskOptions;

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

/// What a running task asks its worker to do while it runs (sent from the child process to
/// the worker, which carries it out).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub enum TaskSignal {
    /// Store this state and meta as the task's result (`self.update_state`).
    UpdateState {
        /// A state name, e.g. `PROGRESS`.
        state: String,
        /// Its meta (JSON text).
        meta_json: String,
    },
    /// Send a task (`app.send_task` from inside a task): `parent_id` and `root_id` are
    /// this task's.
    SendTask {
        /// The signature as Celery's dict (JSON text), `options.task_id` set.
        signature_json: String,
    },
}

/// Where a task's [`TaskSignal`]s go (in a child process: the pipe to the worker).
pub type SignalSink = Arc<dyn Fn(TaskSignal) -> Result<(), String> + Send + Sync>;

/// What a running task can see about itself.
#[derive(Clone)]
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
    /// Woken when the soft limit passes, for tasks that await it.
    soft_wake: Arc<tokio::sync::Notify>,
    signals: Option<SignalSink>,
}

impl std::fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskContext")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("retries", &self.retries)
            .field("hostname", &self.hostname)
            .finish()
    }
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
            soft_wake: Arc::default(),
            signals: None,
        }
    }

    /// With `wake` notified (as well as the flag raised) when the soft limit passes; a child
    /// process shares one between its tasks, as it shares the flag.
    pub fn with_soft_limit_wake(mut self, wake: Arc<tokio::sync::Notify>) -> Self {
        self.soft_wake = wake;
        self
    }

    /// Marks the soft time limit as passed and wakes the task if it awaits it (the worker
    /// calls this; a task has no reason to).
    pub fn raise_soft_limit(&self) {
        self.soft_limit.store(true, Ordering::Relaxed);
        self.soft_wake.notify_waiters();
    }

    /// Completes once the soft time limit has passed (never, if the task has none): an async
    /// task can `select!` on it to clean up, as a Python task catches
    /// `SoftTimeLimitExceeded`.
    pub async fn soft_time_limit_reached(&self) {
        loop {
            let notified = self.soft_wake.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the flag is read, so a raise in between is not missed.
            notified.as_mut().enable();
            if self.soft_time_limit_exceeded() {
                return;
            }
            notified.await;
        }
    }

    /// Sleeps for `duration` without holding a thread, or fails with `SoftTimeLimitExceeded`
    /// as soon as the soft time limit passes (propagate it with `?`).
    pub async fn sleep(&self, duration: Duration) -> Result<(), TaskError> {
        tokio::select! {
            () = tokio::time::sleep(duration) => Ok(()),
            () = self.soft_time_limit_reached() => Err(TaskError::soft_time_limit_exceeded()),
        }
    }

    /// With `sink` taking what the task asks of its worker ([`TaskContext::update_state`],
    /// [`TaskContext::send_task`]).
    pub fn with_signals(mut self, sink: SignalSink) -> Self {
        self.signals = Some(sink);
        self
    }

    fn signal(&self, signal: TaskSignal) -> Result<(), TaskError> {
        let sink = self
            .signals
            .as_ref()
            .ok_or_else(|| TaskError::new("RuntimeError", "the task does not run in a worker"))?;
        sink(signal).map_err(|e| TaskError::new("RuntimeError", e))
    }

    /// Celery's `self.update_state(state=…, meta=…)`: the result backend stores `state` with
    /// `meta` as the task's result until it ends (a client's `AsyncResult.state` / `.info`
    /// show it). With `rpc://` the client's reply queue gets it.
    pub fn update_state(&self, state: &str, meta: Value) -> Result<(), TaskError> {
        self.signal(TaskSignal::UpdateState {
            state: state.to_owned(),
            meta_json: meta.to_string(),
        })
    }

    /// Sends task `name` with `args` and `kwargs` (`app.send_task` from a task): `options`
    /// are Celery's (`queue`, `exchange`, `routing_key`, `countdown`, `eta`, `expires`,
    /// `priority`, `task_id`, `link`, `link_error`…). Its `parent_id` is this task and its
    /// `root_id` this task's root. Returns the new task's id.
    pub fn send_task(
        &self,
        name: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        options: Value,
    ) -> Result<String, TaskError> {
        let mut options = match options {
            Value::Object(o) => o,
            Value::Null => Map::new(),
            other => {
                return Err(TaskError::type_error(format!(
                    "send_task options must be an object, not {other}"
                )));
            }
        };
        let id = options
            .get("task_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        options.insert("task_id".into(), Value::String(id.clone()));
        let signature = serde_json::json!({
            "task": name, "args": args, "kwargs": kwargs, "options": options,
            "subtask_type": null, "immutable": true,
        });
        self.signal(TaskSignal::SendTask {
            signature_json: signature.to_string(),
        })?;
        Ok(id)
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
        let params: Vec<(&str, Option<Value>)> = params.iter().map(|p| param(p)).collect();
        if let Some(k) = self
            .kwargs
            .keys()
            .find(|k| !params.iter().any(|(n, _)| n == &k.as_str()))
        {
            return Err(TaskError::type_error(format!(
                "{task}() got an unexpected keyword argument '{k}'"
            )));
        }
        let mut values = Vec::with_capacity(params.len());
        for (i, (p, default)) in params.iter().enumerate() {
            match (self.args.get(i), self.kwargs.get(*p)) {
                (Some(_), Some(_)) => {
                    return Err(TaskError::type_error(format!(
                        "{task}() got multiple values for argument '{p}'"
                    )));
                }
                (Some(v), None) | (None, Some(v)) => values.push(v.clone()),
                (None, None) => match default {
                    Some(v) => values.push(v.clone()),
                    None => {
                        return Err(TaskError::type_error(format!(
                            "{task}() missing required argument: '{p}'"
                        )));
                    }
                },
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

/// A parameter as registered: `name` (required), `name?` (optional: `null`, for an
/// `Option<T>`, when not given) or `name=<JSON>` (this default when not given; text that is
/// not JSON is a string default).
fn param(spec: &str) -> (&str, Option<Value>) {
    if let Some((name, default)) = spec.split_once('=') {
        let value = serde_json::from_str(default.trim())
            .unwrap_or_else(|_| Value::String(default.to_owned()));
        return (name.trim(), Some(value));
    }
    match spec.strip_suffix('?') {
        Some(name) => (name.trim(), Some(Value::Null)),
        None => (spec.trim(), None),
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

/// The function behind a task: context and arguments in, a JSON value or an error out.
pub type TaskFn = dyn Fn(&TaskContext, Args) -> Result<Value, TaskError> + Send + Sync;

/// The function behind an async task: context and arguments in, a future of the value or
/// error out.
pub type AsyncTaskFn =
    dyn Fn(TaskContext, Args) -> BoxFuture<'static, Result<Value, TaskError>> + Send + Sync;

/// What a registered task runs.
#[derive(Clone)]
enum Body {
    /// A function that runs to completion on the thread that calls it.
    Sync(Arc<TaskFn>),
    /// A function that returns a future.
    Async(Arc<AsyncTaskFn>),
}

/// A registered task.
#[derive(Clone)]
pub struct RegisteredTask {
    name: String,
    body: Body,
    options: TaskOptions,
}

impl std::fmt::Debug for RegisteredTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredTask")
            .field("name", &self.name)
            .field("async", &self.is_async())
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
        self.options.rate_limit = crate::settings::rate::parse_rate(rate)?;
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

    /// Whether it was registered with [`Registry::task_async`] (or
    /// [`Registry::register_async`]).
    pub fn is_async(&self) -> bool {
        matches!(self.body, Body::Async(_))
    }

    /// Runs the task on this thread, to the end. An async task is driven by a runtime of its
    /// own on this thread: call this from synchronous code only (a child process, a test),
    /// never from inside an async task.
    pub fn call(&self, ctx: &TaskContext, args: Args) -> Result<Value, TaskError> {
        match &self.body {
            Body::Sync(f) => f(ctx, args),
            Body::Async(f) => match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(f(ctx.clone(), args)),
                Err(e) => Err(TaskError::new(
                    "RuntimeError",
                    format!("cannot start a runtime for the task: {e}"),
                )),
            },
        }
    }

    /// The task as a future. An async task's future awaits; a sync task runs to the end
    /// inside the future's first poll (so it holds that thread meanwhile).
    pub fn call_async(
        &self,
        ctx: TaskContext,
        args: Args,
    ) -> BoxFuture<'static, Result<Value, TaskError>> {
        match &self.body {
            Body::Async(f) => f(ctx, args),
            Body::Sync(f) => {
                let f = f.clone();
                async move { f(&ctx, args) }.boxed()
            }
        }
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
        self.insert(name, Body::Sync(Arc::new(func)))
    }

    /// Registers an async task taking the raw [`Args`]: `func` returns the future that runs
    /// it. See [`Registry::task_async`].
    pub fn register_async<F, Fut>(&mut self, name: &str, func: F) -> &mut RegisteredTask
    where
        F: Fn(TaskContext, Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, TaskError>> + Send + 'static,
    {
        self.insert(
            name,
            Body::Async(Arc::new(move |ctx, args| func(ctx, args).boxed())),
        )
    }

    fn insert(&mut self, name: &str, body: Body) -> &mut RegisteredTask {
        let task = RegisteredTask {
            name: name.to_owned(),
            body,
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

    /// Registers a typed async task, bound as [`Registry::task`] binds: `func` gets the
    /// context (owned, so the future can keep it) and the arguments, and returns a future.
    /// Under `-P async` thousands run at once on a runtime of their own; the soft limit is
    /// awaitable ([`TaskContext::soft_time_limit_reached`], [`TaskContext::sleep`]) and the
    /// hard limit and `revoke --terminate` cancel the future. The other pools run it too (a
    /// prefork child or a thread drives it to the end).
    pub fn task_async<A, R, F, Fut>(
        &mut self,
        name: &str,
        params: &[&str],
        func: F,
    ) -> &mut RegisteredTask
    where
        A: DeserializeOwned,
        R: Serialize,
        F: Fn(TaskContext, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
    {
        let params: Vec<String> = params.iter().map(|p| (*p).to_owned()).collect();
        let task_name = name.to_owned();
        let func = Arc::new(func);
        self.register_async(name, move |ctx, args| {
            let names: Vec<&str> = params.iter().map(String::as_str).collect();
            // Bound now, so the future does not borrow the parameter names.
            let call = args
                .bind::<A>(&task_name, &names)
                .map(|bound| func(ctx, bound));
            async move {
                let out = call?.await?;
                serde_json::to_value(out).map_err(|e| {
                    TaskError::new("EncodeError", format!("cannot encode result: {e}"))
                })
            }
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
    fn optional_and_default_parameters() {
        let a = Args {
            args: vec![json!(2)],
            ..Default::default()
        };
        let (x, y, name): (i64, Option<i64>, String) =
            a.bind("f", &["x", "y?", "name=\"anon\""]).unwrap();
        assert_eq!((x, y, name.as_str()), (2, None, "anon"));
        let a = Args {
            args: vec![json!(2), json!(5)],
            kwargs: json!({"name": "bo"}).as_object().cloned().unwrap(),
        };
        let (x, y, name): (i64, Option<i64>, String) =
            a.bind("f", &["x", "y?", "name=anon"]).unwrap();
        assert_eq!((x, y, name.as_str()), (2, Some(5), "bo"));
        let a = Args {
            kwargs: json!({"z": 1}).as_object().cloned().unwrap(),
            ..Default::default()
        };
        let e = a.bind::<(Option<i64>,)>("f", &["y=3"]).unwrap_err();
        assert!(
            e.to_string().contains("unexpected keyword argument 'z'"),
            "{e}"
        );
    }

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
