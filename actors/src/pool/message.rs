//! What the [`Pool`](super::Pool) is sent: one enum per protocol, and [`PoolMessage`] with
//! one variant per group. Senders build a group's message and convert it
//! (`pool.cast(WorkMsg::Reserve(r).into())`); the pool hands each group to its own handler.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use ractor::{ActorId, DerivedActorRef, RpcReplyPort};

use super::report::PoolReports;
use crate::protocol::TaskRequest;
use crate::task::TaskSignal;
use crate::work::{Reserved, RevokeReason, TaskOutcome};

/// Messages to the pool, one variant per protocol:
///
/// | group            | sent by                                                       |
/// |------------------|---------------------------------------------------------------|
/// | [`WorkMsg`]      | the consumer, the scheduler, the revoke registry and `revoke` |
/// | [`ControlMsg`]   | remote control (`GetTasks` also the supervisor and events)    |
/// | [`LifecycleMsg`] | the supervisor: wiring at start, drain at shutdown            |
/// | [`RunMsg`]       | where tasks run: the child actors, the in-process jobs        |
/// | [`TimerMsg`]     | the pool's own timers                                         |
///
/// Each group converts into it (`WorkMsg::Reserve(r).into()`).
#[derive(Debug)]
pub enum PoolMessage {
    /// Requests to run, or to drop.
    Work(WorkMsg),
    /// Resizing, limits and questions.
    Control(ControlMsg),
    /// Start-up wiring and shutdown.
    Lifecycle(LifecycleMsg),
    /// From where the tasks run.
    Run(RunMsg),
    /// The pool's own timers.
    Timer(TimerMsg),
}

/// Requests to run or to drop: from the consumer and the scheduler (which release them to the
/// pool), and from the revoke registry and `revoke`.
#[derive(Debug)]
pub enum WorkMsg {
    /// Queue this request for the next idle child.
    Reserve(Box<Reserved>),
    /// Queue these requests, in order (deliveries that arrived together).
    ReserveAll(Vec<Box<Reserved>>),
    /// Report this request as not run (REVOKED with `reason`) (from the scheduler).
    Discard {
        /// The request.
        reserved: Box<Reserved>,
        /// Why.
        reason: RevokeReason,
    },
    /// The connection of this generation was lost: drop the unstarted requests that came on
    /// it (the broker has requeued them and will deliver them again).
    Forget {
        /// The lost connection generation.
        generation: u64,
    },
    /// These ids were revoked: drop them from the reserved queue; with a signal, terminate
    /// them where they run.
    Revoked {
        /// The revoked ids.
        ids: Arc<HashSet<String>>,
        /// Signal for running tasks (`terminate`), if any.
        terminate: Option<Signal>,
    },
}

/// Remote control's changes and questions (`GetTasks` also from the supervisor, for its
/// shutdown log, and from the events dispatcher, for heartbeats).
#[derive(Debug)]
pub enum ControlMsg {
    /// `pool_grow`: add `n` child processes. Answers false (and does nothing) when
    /// autoscaling.
    Grow {
        /// How many.
        n: usize,
        /// Whether it was done.
        reply: RpcReplyPort<bool>,
    },
    /// `pool_shrink`: remove `n` child processes (idle ones at once, busy ones when their
    /// task ends); at least one stays. Answers false (and does nothing) when autoscaling.
    Shrink {
        /// How many.
        n: usize,
        /// Whether it was done.
        reply: RpcReplyPort<bool>,
    },
    /// `autoscale`: new bounds. Answers the bounds in force `(max, min)`, or None when the
    /// worker does not autoscale.
    Autoscale {
        /// New maximum, if given.
        max: Option<usize>,
        /// New minimum, if given.
        min: Option<usize>,
        /// The bounds now.
        reply: RpcReplyPort<Option<(usize, usize)>>,
    },
    /// `pool_restart`: replace every child process, idle ones now and busy ones when their
    /// task ends. Answers how many are being replaced.
    Restart {
        /// The number of children that will be replaced.
        reply: RpcReplyPort<usize>,
    },
    /// Change a task's time limits for tasks started from now on (`time_limit` command).
    SetTimeLimit {
        /// The task name.
        task: String,
        /// New soft limit (None = none).
        soft: Option<f64>,
        /// New hard limit (None = none).
        hard: Option<f64>,
        /// false when the task is not registered.
        reply: RpcReplyPort<bool>,
    },
    /// Change a task's rate limit (`rate_limit` command); `None` removes it.
    SetRateLimit {
        /// The task name.
        task: String,
        /// Tasks per second, or None for no limit.
        rate: Option<f64>,
        /// false when the task is not registered.
        reply: RpcReplyPort<bool>,
    },
    /// The ids of the tasks running now.
    GetActiveIds {
        /// Receives them.
        reply: RpcReplyPort<Vec<String>>,
    },
    /// What runs now and what waits.
    GetTasks {
        /// Receives them.
        reply: RpcReplyPort<PoolTasks>,
    },
}

/// The supervisor's: where reports go, and the steps of a warm shutdown.
#[derive(Debug)]
pub enum LifecycleMsg {
    /// Where starts and outcomes go (sent once the consumer runs).
    SetConsumer(DerivedActorRef<PoolReports>),
    /// Warm shutdown: stop dispatching, hand back the requests that have not started.
    Drain {
        /// Receives the unstarted requests.
        reply: RpcReplyPort<Vec<Box<Reserved>>>,
    },
    /// Answer once no task is running.
    WaitIdle {
        /// Answered when the last running task finished.
        reply: RpcReplyPort<()>,
    },
}

/// From where tasks run: the [`ChildProcess`](super::child::ChildProcess) actors (prefork)
/// and the in-process jobs.
#[derive(Debug)]
pub enum RunMsg {
    /// A running task asks for something: passed to the consumer.
    Signal {
        /// The task.
        request: Arc<TaskRequest>,
        /// What it asks.
        signal: TaskSignal,
    },
    /// A child process is up.
    ChildReady {
        /// The child actor.
        child: ActorId,
        /// Its OS pid.
        pid: u32,
    },
    /// A child finished a task.
    ChildFinished {
        /// The child actor.
        child: ActorId,
        /// The request it ran.
        reserved: Box<Reserved>,
        /// How it ended.
        outcome: TaskOutcome,
        /// How long it ran.
        runtime: Duration,
        /// Set when the child should now be replaced (why).
        recycle: Option<String>,
    },
    /// An in-process job ended (sent by the job itself): how, unless it was cancelled.
    JobEnded {
        /// The job.
        job: u64,
        /// How the task ended; None when its future was cancelled.
        outcome: Option<TaskOutcome>,
        /// How long it ran.
        runtime: Duration,
    },
}

/// The pool's own timers.
#[derive(Debug)]
pub enum TimerMsg {
    /// A rate-limited task may have a token now.
    RateLimitReady,
    /// Apply the autoscaler's rule (once a second).
    AutoscaleTick,
    /// Start a replacement child (after a backoff when needed).
    SpawnChild,
    /// A time limit of an in-process job passed.
    JobLimit {
        /// The job.
        job: u64,
        /// The hard limit (else the soft one).
        hard: bool,
        /// The limit, for the log and the failure.
        seconds: f64,
    },
}

macro_rules! group {
    ($($variant:ident($group:ty)),* $(,)?) => {$(
        impl From<$group> for PoolMessage {
            fn from(msg: $group) -> Self {
                PoolMessage::$variant(msg)
            }
        }
    )*};
}

group!(
    Work(WorkMsg),
    Control(ControlMsg),
    Lifecycle(LifecycleMsg),
    Run(RunMsg),
    Timer(TimerMsg),
);

/// The pool's tasks, for `inspect active/reserved` and `stats`.
#[derive(Debug, Clone, Default)]
pub struct PoolTasks {
    /// Running: request, child pid, start time (epoch seconds).
    pub active: Vec<(Arc<TaskRequest>, u32, f64)>,
    /// Waiting for a child or a rate-limit token.
    pub reserved: Vec<Arc<TaskRequest>>,
    /// Child pids.
    pub processes: Vec<u32>,
    /// Tasks started, by name.
    pub total: HashMap<String, u64>,
    /// How many children the pool keeps now.
    pub target: usize,
    /// With `--autoscale`: (max, min, current children, requests held).
    pub autoscaler: Option<(usize, usize, usize, usize)>,
}
