//! [`Tasks`], the table of named tasks a worker can run, and [`RegisteredTask`], one of them
//! with the options set at its registration.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Args, TaskContext, TaskError, TaskOptions};

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

    /// Whether it was registered with [`Tasks::task_async`] (or
    /// [`Tasks::register_async`]).
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

/// The named tasks a worker can run: what the pool and the child processes need of an
/// application's [`Registry`](crate::Registry), which holds one and dereferences to it (so
/// `registry.task(…)` registers here). Built once by the binary and shared by the parent (to
/// know what is registered) and the child processes (to run it).
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tasks: BTreeMap<String, RegisteredTask>,
}

impl Tasks {
    /// No tasks.
    pub fn new() -> Self {
        Tasks::default()
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
    /// it. See [`Tasks::task_async`].
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

    /// Registers a typed async task, bound as [`Tasks::task`] binds: `func` gets the
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

    /// Every task's registration options, by name.
    pub fn options(&self) -> HashMap<String, TaskOptions> {
        self.tasks
            .iter()
            .map(|(k, t)| (k.clone(), t.options))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ctx() -> TaskContext {
        TaskContext::new("id".into(), "t".into(), 0, "h".into(), Arc::default())
    }

    #[test]
    fn typed_tasks_run() {
        let mut r = Tasks::new();
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
}
