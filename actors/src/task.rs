//! The Rust task API: [`Tasks`], the table of named tasks, the [`TaskContext`] a running task
//! sees, the [`Args`] it is called with, and [`TaskError`], the error a task returns (reported
//! to clients as a Python exception).
//!
//! An application builds a [`Registry`](crate::Registry): its tasks and its own remote-control
//! commands. It dereferences to its [`Tasks`], so the registration methods here are called on
//! it directly:
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
//!
//! # Why the registry is two types
//!
//! The tasks are what the pool and the child processes run, so this module sits below every
//! actor. A control command's handler gets a
//! [`ControlHandle`](crate::control::custom::ControlHandle) that asks the pool, scheduler and
//! revoke actors for their state, so the commands belong to the control layer, above those
//! actors. A registry holding both would make this module name the control actor, and the
//! pool and the child processes depend through it on what is built above them.
//!
//! So this module has [`Tasks`], and the application's [`Registry`](crate::Registry) is
//! defined with the control commands, in [`crate::control::custom`]: a [`Tasks`] and the
//! [`ControlCommands`](crate::control::custom::ControlCommands), dereferencing to the tasks.
//! An application's code reads as with one type (`registry.task(…)`,
//! `registry.control_command(…)`), with no trait to import and nothing type-erased (which an
//! extension trait would have needed, to keep the commands in a type that cannot name them),
//! and the worker hands the pool only the tasks
//! ([`Registry::into_parts`](crate::Registry::into_parts)).
//!
//! # Files
//! - `error.rs`: [`TaskError`] and the `?` conversions from common errors.
//! - `context.rs`: [`TaskContext`] and the [`TaskSignal`]s it sends its worker.
//! - `args.rs`: [`Args`] and their binding to parameters, as Python binds them.
//! - `registry.rs`: [`Tasks`] and [`RegisteredTask`].

mod args;
mod context;
mod error;
mod registry;

pub use args::Args;
pub use context::{SignalSink, TaskContext, TaskSignal};
pub use error::TaskError;
pub use registry::{AsyncTaskFn, RegisteredTask, TaskFn, Tasks};
// Defined with the settings it takes its defaults from; its path here stays.
pub use crate::settings::TaskOptions;
