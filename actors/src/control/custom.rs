//! Application-defined control commands: the equivalent of Celery's `Panel.register`.
//!
//! An application registers a named async handler; the control actor runs it when a request
//! with that method arrives, passing the request's arguments and a [`ControlHandle`] through
//! which it asks the worker's actors for state. The handler's JSON value is the reply (wrap it
//! with [`ok`](super::request::ok) or [`error`](super::request::error) for Celery's CLI to show
//! `OK` or `ERROR`). A command registered under a built-in's name replaces the built-in, as
//! `Panel.register` does.
//!
//! An application registers them on its [`Registry`] ([`Registry::control_command`]), which is
//! defined here rather than with the tasks it also holds: the handlers reach the actors, so they
//! sit above them, while the tasks ([`Tasks`]) sit below (see [`crate::task`]).
//!
//! ```
//! use celeryd_actors::control::custom::ControlCommands;
//! use serde_json::json;
//!
//! let mut commands = ControlCommands::new();
//! commands.register("queue_depths", |handle, _args| async move {
//!     let tasks = handle.pool_tasks().await;
//!     json!({"ok": {"active": tasks.active.len(), "reserved": tasks.reserved.len()}})
//! });
//! assert!(commands.contains("queue_depths"));
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::ControlPeers;
use crate::pool::{ControlMsg, PoolTasks};
use crate::protocol::TaskRequest;
use crate::revoke::RevokeMessage;
use crate::scheduler::SchedulerMessage;
use crate::task::Tasks;

/// What a handler returns: its reply, later.
pub type ControlFuture = Pin<Box<dyn Future<Output = Value> + Send>>;

/// A handler: the worker's handle and the request's arguments in, the reply out.
pub type ControlFn = dyn Fn(ControlHandle, Map<String, Value>) -> ControlFuture + Send + Sync;

/// The application's control commands, by name.
#[derive(Clone, Default)]
pub struct ControlCommands {
    commands: BTreeMap<String, Arc<ControlFn>>,
}

impl std::fmt::Debug for ControlCommands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.commands.keys()).finish()
    }
}

impl ControlCommands {
    /// No commands.
    pub fn new() -> Self {
        ControlCommands::default()
    }

    /// Registers `handler` under `name` (replacing an earlier one of that name).
    pub fn register<F, Fut>(&mut self, name: &str, handler: F) -> &mut Self
    where
        F: Fn(ControlHandle, Map<String, Value>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Value> + Send + 'static,
    {
        let f: Arc<ControlFn> = Arc::new(move |h, a| Box::pin(handler(h, a)));
        self.commands.insert(name.to_owned(), f);
        self
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.commands.contains_key(name)
    }

    /// The handler for `name`.
    pub fn get(&self, name: &str) -> Option<Arc<ControlFn>> {
        self.commands.get(name).cloned()
    }

    /// Registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.commands.keys().map(String::as_str)
    }
}

/// What an application registers: its tasks and its own control commands. Built once by the
/// binary and handed to the worker (`celeryd::main_with`), which gives the pool and the child
/// processes the [`Tasks`] and the control actor the [`ControlCommands`].
///
/// It dereferences to its [`Tasks`], so the task methods ([`Tasks::task`],
/// [`Tasks::task_async`], [`Tasks::get`]…) are called on it directly.
///
/// ```
/// use celeryd_actors::Registry;
/// use serde_json::json;
///
/// let mut registry = Registry::new();
/// registry.task("tasks.add", &["x", "y"], |_ctx, (x, y): (i64, i64)| Ok(x + y));
/// registry.control_command("queue_depths", |handle, _args| async move {
///     let tasks = handle.pool_tasks().await;
///     json!({"ok": {"active": tasks.active.len(), "reserved": tasks.reserved.len()}})
/// });
/// assert!(registry.contains("tasks.add"));
/// assert!(registry.control_commands().contains("queue_depths"));
/// let (tasks, commands) = registry.into_parts();
/// assert_eq!(tasks.names().collect::<Vec<_>>(), ["tasks.add"]);
/// assert_eq!(commands.names().collect::<Vec<_>>(), ["queue_depths"]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Registry {
    tasks: Tasks,
    commands: ControlCommands,
}

impl Registry {
    /// No tasks and no commands.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers an application remote-control command (Celery's `Panel.register`): `handler`
    /// gets a [`ControlHandle`] and the request's arguments and returns the JSON reply. See
    /// [`ControlCommands::register`].
    pub fn control_command<F, Fut>(&mut self, name: &str, handler: F) -> &mut Self
    where
        F: Fn(ControlHandle, Map<String, Value>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Value> + Send + 'static,
    {
        self.commands.register(name, handler);
        self
    }

    /// The application's control commands.
    pub fn control_commands(&self) -> &ControlCommands {
        &self.commands
    }

    /// The tasks and the control commands, apart: each goes to the actors that use it.
    pub fn into_parts(self) -> (Tasks, ControlCommands) {
        (self.tasks, self.commands)
    }
}

impl Deref for Registry {
    type Target = Tasks;

    fn deref(&self) -> &Tasks {
        &self.tasks
    }
}

impl DerefMut for Registry {
    fn deref_mut(&mut self) -> &mut Tasks {
        &mut self.tasks
    }
}

/// A handler's view of the worker: its name and questions to the actors that own the state.
/// Every question is an actor call; a stopped actor answers with an empty value.
#[derive(Debug, Clone)]
pub struct ControlHandle {
    pub(super) nodename: String,
    pub(super) peers: ControlPeers,
}

impl ControlHandle {
    /// This worker's node name.
    pub fn nodename(&self) -> &str {
        &self.nodename
    }

    /// What the pool runs and holds (active, reserved, processes, totals).
    pub async fn pool_tasks(&self) -> PoolTasks {
        ractor::call!(self.peers.pool, |reply| ControlMsg::GetTasks { reply }
            .into())
        .unwrap_or_default()
    }

    /// The ETA tasks the scheduler holds.
    pub async fn scheduled(&self) -> Vec<Arc<TaskRequest>> {
        ractor::call!(self.peers.scheduler, SchedulerMessage::GetScheduled).unwrap_or_default()
    }

    /// The revoked task ids.
    pub async fn revoked(&self) -> Vec<String> {
        ractor::call!(self.peers.revoke, RevokeMessage::GetRevoked).unwrap_or_default()
    }
}
