//! The pool: the reserved queue, rate limits and dispatch. How a task runs is the pool's
//! strategy ([`PoolKind`]): `prefork` hands it to one of the [`ChildProcess`] actors, one task
//! per child at a time, and supervises the children one-for-one (a child that stops is
//! replaced, with backoff when children keep dying at start-up); `async`, `threads` and `solo`
//! run it inside the worker process ([`inproc`]), up to the pool's size at once. Everything
//! else (reserved queue, rate limits, ETA releases, revokes, `inspect active`, grow/shrink,
//! autoscale, warm shutdown) is the same code for every kind.
//!
//! Receives work from the consumer and the scheduler ([`PoolMessage::Reserve`]); reports starts
//! and outcomes to the consumer, which acks and publishes results.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use time::OffsetDateTime;
use tracing::{debug, error, info, warn};

pub mod autoscale;
pub mod inproc;
pub mod rate;
pub mod report;

use self::autoscale::{Autoscaler, Scale};
use self::inproc::{InProcess, Stop};
use self::rate::RateQueues;
use self::report::{PoolReport, PoolReports, ToConsumer};
use crate::child::{
    AbortOnDrop, ChildCommand, ChildMessage, ChildProcess, HARD_LIMIT_REASON, Limits, Recycling,
};
use crate::protocol::TaskRequest;
use crate::settings::PoolKind;
use crate::task::{TaskOptions, Tasks};
use crate::work::{DeliveryRef, Reserved, RevokeReason, StartedInfo, TaskOutcome};

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

/// The pool actor's configuration.
#[derive(Debug)]
pub struct Pool {
    kind: PoolKind,
    registry: Arc<Tasks>,
    max_size: usize,
    async_threads: usize,
    command: ChildCommand,
    concurrency: usize,
    hostname: String,
    recycling: Recycling,
    default_limits: TaskOptions,
    rates: HashMap<String, f64>,
    autoscale: Option<Autoscaler>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// What the pool is built from.
#[derive(Debug, Clone)]
pub struct PoolArgs {
    /// How tasks run.
    pub kind: PoolKind,
    /// The tasks, for the in-process pools (prefork children have their own copy).
    pub registry: Arc<Tasks>,
    /// The most tasks the pool may ever run at once (`pool_grow`/`autoscale` bound).
    pub max_size: usize,
    /// Worker threads of the async pool's runtime (`[worker] async_threads`).
    pub async_threads: usize,
    /// How to start a child process.
    pub command: ChildCommand,
    /// Number of child processes (tasks at once, for the in-process pools).
    pub concurrency: usize,
    /// The node name (for the children and STARTED results).
    pub hostname: String,
    /// When children are replaced.
    pub recycling: Recycling,
    /// `[task]` time limits, used where neither the message nor the task sets one.
    pub default_limits: TaskOptions,
    /// Rate limits in force at start (task -> tasks per second); see [`effective_rates`].
    pub rates: HashMap<String, f64>,
    /// `--autoscale` (max, min) and the keepalive before shrinking; `concurrency` is then the
    /// starting size (min).
    pub autoscale: Option<((usize, usize), Duration)>,
    /// Where child recycling, kills and deaths, and queue waits are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The rate limits a worker starts with: per task, the config's `[task.rate_limits]` entry,
/// else the task's own (registration), else `[task] default_rate_limit`; none at all with
/// `disable_rate_limits`. Values were validated with the settings.
pub fn effective_rates(
    settings: &crate::settings::Settings,
    tasks: &HashMap<String, TaskOptions>,
) -> HashMap<String, f64> {
    if settings.worker.disable_rate_limits {
        return HashMap::new();
    }
    let parse = |s: &str| rate::parse_rate(s).ok().flatten();
    let default = settings.task.default_rate_limit.as_deref().and_then(parse);
    tasks
        .iter()
        .filter_map(|(name, opts)| {
            let configured = settings.task.rate_limits.get(name).map(|s| parse(s));
            let rate = match configured {
                Some(explicit) => explicit,
                None => opts.rate_limit.or(default),
            };
            rate.map(|r| (name.clone(), r))
        })
        .collect()
}

impl Pool {
    /// A pool built from `args`.
    pub fn new(args: PoolArgs) -> Self {
        Pool {
            kind: args.kind,
            registry: args.registry,
            max_size: args.max_size,
            async_threads: args.async_threads,
            command: args.command,
            concurrency: args.concurrency,
            hostname: args.hostname,
            recycling: args.recycling,
            default_limits: args.default_limits,
            rates: args.rates,
            autoscale: args
                .autoscale
                .map(|((max, min), keepalive)| Autoscaler::new(max, min, keepalive)),
            metrics: args.metrics,
        }
    }
}

/// The limits a task runs under: the message's `timelimit` header first, then the task's own
/// limits (from registration, changed at runtime by `time_limit`), then the `[task]` defaults.
/// A soft limit at or above the hard one could never fire first, so it is dropped.
pub fn effective_limits(
    header: (Option<f64>, Option<f64>),
    task: TaskOptions,
    defaults: TaskOptions,
) -> Limits {
    let (header_hard, header_soft) = header;
    let hard = header_hard
        .or(task.time_limit)
        .or(defaults.time_limit)
        .filter(|h| *h > 0.0);
    let soft = header_soft
        .or(task.soft_time_limit)
        .or(defaults.soft_time_limit)
        .filter(|s| *s > 0.0)
        .filter(|s| hard.is_none_or(|h| *s < h));
    Limits { soft, hard }
}

/// Messages to the pool.
#[derive(Debug)]
pub enum PoolMessage {
    /// Queue this request for the next idle child.
    Reserve(Box<Reserved>),
    /// Queue these requests, in order (deliveries that arrived together).
    ReserveAll(Vec<Box<Reserved>>),
    /// Where starts and outcomes go (sent by the supervisor once the consumer runs).
    SetConsumer(ractor::DerivedActorRef<PoolReports>),
    /// A running task asks for something (from its child actor): passed to the consumer.
    TaskSignal {
        /// The task.
        request: std::sync::Arc<crate::protocol::TaskRequest>,
        /// What it asks.
        signal: crate::task::TaskSignal,
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
    /// A time limit of an in-process job passed (the pool's own timer).
    JobLimit {
        /// The job.
        job: u64,
        /// The hard limit (else the soft one).
        hard: bool,
        /// The limit, for the log and the failure.
        seconds: f64,
    },
    /// A child process is up (sent by the child actor).
    ChildReady {
        /// The child actor.
        child: ActorId,
        /// Its OS pid.
        pid: u32,
    },
    /// A child finished (or lost) a task.
    JobFinished {
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
    /// A rate-limited task may have a token now (sent by the pool's own timer).
    RateLimitReady,
    /// The ids of the tasks running now.
    GetActiveIds {
        /// Receives them.
        reply: RpcReplyPort<Vec<String>>,
    },
    /// What runs now (request, child pid, start time in epoch seconds) and what waits.
    GetTasks {
        /// Receives (active, reserved).
        reply: RpcReplyPort<PoolTasks>,
    },
    /// These ids were revoked (from the revoke registry): drop them from the reserved queue;
    /// with a signal, terminate them where they run.
    Revoked {
        /// The revoked ids.
        ids: Arc<std::collections::HashSet<String>>,
        /// Signal for running tasks (`terminate`), if any.
        terminate: Option<nix::sys::signal::Signal>,
    },
    /// Report this request as not run (REVOKED with `reason`) (from the scheduler).
    Discard {
        /// The request.
        reserved: Box<Reserved>,
        /// Why.
        reason: RevokeReason,
    },
    /// Start a replacement child (sent to itself, after a backoff when needed).
    SpawnChild,
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
    /// Apply the autoscaler's rule (its own timer, once a second).
    AutoscaleTick,
    /// `pool_restart`: replace every child process, idle ones now and busy ones when their
    /// task ends. Answers how many are being replaced.
    Restart {
        /// The number of children that will be replaced.
        reply: RpcReplyPort<usize>,
    },
    /// The connection of this generation was lost: drop the unstarted requests that came on
    /// it (the broker has requeued them and will deliver them again).
    Forget {
        /// The lost connection generation.
        generation: u64,
    },
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

#[derive(Debug)]
struct Slot {
    actor: ActorRef<ChildMessage>,
    pid: Option<u32>,
    busy: bool,
    /// What the child runs, so that a child that dies (even with the task still in its
    /// mailbox) has its task reported lost rather than dropped.
    running: Option<Running>,
    /// Its task was revoked with `terminate`: however it ends, it is REVOKED `terminated`.
    terminating: Option<i32>,
    /// `pool_restart` asked for it to be replaced once its task ends.
    retire: bool,
}

#[derive(Debug)]
struct Running {
    request: Arc<TaskRequest>,
    delivery: DeliveryRef,
    was_scheduled: bool,
    received: Instant,
    since: Instant,
    started_at: f64,
}

impl Running {
    /// The request again, to report how it ended.
    fn to_reserved(&self) -> Box<Reserved> {
        Box::new(Reserved {
            request: self.request.clone(),
            delivery: self.delivery,
            was_scheduled: self.was_scheduled,
            holds_prefetch: false, // released when it started
            received: self.received,
        })
    }
}

/// The pool's state.
#[derive(Debug)]
pub struct PoolState {
    /// Prefork: the child actors.
    slots: HashMap<ActorId, Slot>,
    /// The in-process pools: the jobs running in the worker process.
    inproc: Option<InProcess>,
    reserved: VecDeque<Box<Reserved>>,
    /// Starts and outcomes for the consumer, sent together when a message is handled.
    consumer: ToConsumer,
    draining: bool,
    idle_waiters: Vec<RpcReplyPort<()>>,
    recent_failures: VecDeque<Instant>,
    /// Per-task limits: registration values, changed at runtime by `SetTimeLimit`.
    task_limits: HashMap<String, TaskOptions>,
    /// Requests waiting for a rate-limit token (still reserved: unacked).
    rates: RateQueues<Box<Reserved>>,
    /// Tasks started, by (display) name: `stats.total`.
    total: HashMap<String, u64>,
    /// How many children the pool keeps (changed by grow/shrink).
    target: usize,
    /// Fires when the next held request may have a token.
    rate_timer: Option<AbortOnDrop<Result<(), ractor::MessagingErr<PoolMessage>>>>,
    /// With `--autoscale`.
    autoscaler: Option<Autoscaler>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Actor for Pool {
    type Msg = PoolMessage;
    type State = PoolState;
    type Arguments = HashMap<String, TaskOptions>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        task_limits: HashMap<String, TaskOptions>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = PoolState {
            task_limits,
            rates: RateQueues::new(&self.rates, Instant::now()),
            total: HashMap::new(),
            target: self.concurrency,
            rate_timer: None,
            autoscaler: self.autoscale,
            metrics: self.metrics.clone(),
            slots: HashMap::new(),
            inproc: None,
            reserved: VecDeque::new(),
            consumer: ToConsumer::default(),
            draining: false,
            idle_waiters: Vec::new(),
            recent_failures: VecDeque::new(),
        };
        if self.kind.in_process() {
            let jobs = InProcess::new(
                self.kind,
                self.max_size.max(self.concurrency),
                self.async_threads,
                self.registry.clone(),
                self.hostname.clone(),
            )
            .map_err(|e| format!("cannot start the {} pool's runtime: {e}", self.kind.name()))?;
            state.inproc = Some(jobs);
        } else {
            for _ in 0..self.concurrency {
                self.spawn_child(&myself, &mut state).await?;
            }
        }
        if state.autoscaler.is_some() {
            myself.send_interval(Duration::from_secs(1), || PoolMessage::AutoscaleTick);
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let handled = self.handle_msg(myself, msg, state).await;
        state.consumer.flush();
        handled
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.on_child_event(&myself, event, state);
        state.consumer.flush();
        Ok(())
    }
}

impl Pool {
    /// [`Actor::handle_supervisor_evt`]: a child actor that stopped has its task reported
    /// (lost, killed at its limit, or terminated) and a replacement scheduled.
    fn on_child_event(
        &self,
        myself: &ActorRef<PoolMessage>,
        event: SupervisionEvent,
        state: &mut PoolState,
    ) {
        let (cell, reason) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason),
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            _ => return,
        };
        let Some(slot) = state.slots.remove(&cell.get_id()) else {
            // A recycled child (already replaced) or one from before a restart.
            debug!(actor = %cell.get_id(), "Supervision event from a child no longer in the pool.");
            return;
        };
        let reason = reason.unwrap_or_default();
        if let Some(run) = slot.running {
            let reserved = Box::new(Reserved {
                request: run.request,
                delivery: run.delivery,
                was_scheduled: run.was_scheduled,
                holds_prefetch: false, // released when it started
                received: run.received,
            });
            let outcome = match reason.strip_prefix(HARD_LIMIT_REASON) {
                _ if slot.terminating.is_some() => {
                    TaskOutcome::Terminated(slot.terminating.unwrap_or_default())
                }
                Some(secs) => TaskOutcome::TimeLimitExceeded(secs.parse().unwrap_or_default()),
                None => TaskOutcome::WorkerLost(reason.clone()),
            };
            let runtime = run.since.elapsed();
            state.consumer.tell(PoolReport::TaskFinished {
                reserved,
                outcome,
                runtime,
            });
        }
        if state.draining {
            state.wake_idle_waiters();
            return;
        }
        match slot.pid {
            None => self.start_failed(
                myself,
                state,
                &format!("died before it was ready ({reason})"),
            ),
            Some(pid) if reason.starts_with(HARD_LIMIT_REASON) => {
                state.metrics.killed();
                info!(
                    child_pid = pid,
                    "Child process killed at the hard time limit; replacing it."
                );
                self.schedule_spawn(myself, state);
            }
            Some(pid) => {
                state.metrics.lost();
                warn!(child_pid = pid, reason = %reason, "Child process gone; starting a replacement.");
                self.schedule_spawn(myself, state);
            }
        }
    }

    /// [`Actor::handle`], before what it told the consumer is flushed.
    async fn handle_msg(
        &self,
        myself: ActorRef<PoolMessage>,
        msg: PoolMessage,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PoolMessage::Reserve(r) => {
                state.reserved.push_back(r);
                self.on_reserved(&myself, state).await;
            }
            PoolMessage::ReserveAll(rs) => {
                state.reserved.extend(rs);
                self.on_reserved(&myself, state).await;
            }
            PoolMessage::SetConsumer(c) => state.consumer.set(c),
            PoolMessage::TaskSignal { request, signal } => {
                state
                    .consumer
                    .tell(PoolReport::TaskSignal { request, signal });
            }
            PoolMessage::JobEnded {
                job,
                outcome,
                runtime,
            } => {
                let Some((running, reported)) = state.inproc.as_mut().and_then(|j| j.ended(job))
                else {
                    return Ok(());
                };
                if let (false, Some(outcome)) = (reported, outcome) {
                    state.consumer.tell(PoolReport::TaskFinished {
                        reserved: running.to_reserved(),
                        outcome,
                        runtime,
                    });
                }
                state.dispatch(&myself, self.default_limits);
                state.wake_idle_waiters();
            }
            PoolMessage::JobLimit { job, hard, seconds } => {
                let Some(jobs) = state.inproc.as_mut() else {
                    return Ok(());
                };
                if !hard {
                    jobs.soft_limit(job, seconds);
                } else if let Some((reserved, outcome)) = jobs.stop(job, Stop::HardLimit(seconds)) {
                    state.metrics.killed();
                    state.report(reserved, outcome);
                }
            }
            PoolMessage::ChildReady { child, pid } => {
                if let Some(slot) = state.slots.get_mut(&child) {
                    slot.pid = Some(pid);
                }
                state.dispatch(&myself, self.default_limits);
            }
            PoolMessage::JobFinished {
                child,
                reserved,
                outcome,
                runtime,
                recycle,
            } => {
                let Some(slot) = state.slots.get_mut(&child) else {
                    // Already reported lost by the supervision event (which ractor delivers
                    // ahead of ordinary messages): do not report it twice.
                    debug!(task_id = %reserved.request.id, "Result from a child already gone.");
                    return Ok(());
                };
                slot.busy = false;
                slot.running = None;
                let recycle = recycle.or_else(|| slot.retire.then(|| "pool_restart".to_owned()));
                let outcome = match slot.terminating.take() {
                    Some(signum) => TaskOutcome::Terminated(signum),
                    None => outcome,
                };
                state.consumer.tell(PoolReport::TaskFinished {
                    reserved,
                    outcome,
                    runtime,
                });
                if let Some(why) = recycle {
                    state.metrics.recycled();
                    // Take it out of the pool before it stops, so its supervision event is not
                    // mistaken for a death; the replacement starts right away.
                    if let Some(old) = state.slots.remove(&child) {
                        info!(
                            "Replacing child process {} after {why}.",
                            old.pid.unwrap_or_default()
                        );
                        old.actor.stop(Some("recycled".into()));
                    }
                    if !state.draining
                        && let Err(e) = Box::pin(self.spawn_child(&myself, state)).await
                    {
                        self.start_failed(&myself, state, &e.to_string());
                    }
                }
                state.shrink();
                state.dispatch(&myself, self.default_limits);
                state.wake_idle_waiters();
            }
            PoolMessage::SetTimeLimit {
                task,
                soft,
                hard,
                reply,
            } => {
                let known = match state.task_limits.get_mut(&task) {
                    Some(limits) => {
                        limits.time_limit = hard;
                        limits.soft_time_limit = soft;
                        true
                    }
                    None => false,
                };
                let _ = reply.send(known);
            }
            PoolMessage::SpawnChild => {
                if !state.draining
                    && state.inproc.is_none()
                    && state.slots.len() < state.target
                    && let Err(e) = Box::pin(self.spawn_child(&myself, state)).await
                {
                    self.start_failed(&myself, state, &e.to_string());
                }
            }
            PoolMessage::Grow { n, reply } => {
                if state.autoscaler.is_some() {
                    let _ = reply.send(false);
                    return Ok(());
                }
                let _ = reply.send(true);
                let target = state.target.saturating_add(n).min(self.max_size.max(1));
                Box::pin(self.resize(&myself, state, target)).await;
                state.prefetch_follows(state.target);
            }
            PoolMessage::Shrink { n, reply } => {
                if state.autoscaler.is_some() {
                    let _ = reply.send(false);
                    return Ok(());
                }
                let _ = reply.send(true);
                let target = state.target.saturating_sub(n).max(1);
                Box::pin(self.resize(&myself, state, target)).await;
                state.prefetch_follows(state.target);
            }
            PoolMessage::Autoscale { max, min, reply } => {
                let Some(scaler) = state.autoscaler.as_mut() else {
                    let _ = reply.send(None);
                    return Ok(());
                };
                let old_max = scaler.max;
                let bounds = scaler.update(max, min);
                info!("Autoscale now max={} min={}.", bounds.0, bounds.1);
                let _ = reply.send(Some(bounds));
                if bounds.0 != old_max {
                    state.prefetch_follows(bounds.0);
                }
                Box::pin(self.autoscale(&myself, state)).await;
                state.dispatch(&myself, self.default_limits);
            }
            PoolMessage::AutoscaleTick => {
                Box::pin(self.autoscale(&myself, state)).await;
                state.dispatch(&myself, self.default_limits);
            }
            PoolMessage::Restart { reply } if state.inproc.is_some() => {
                // Refused by the settings (worker.pool_restarts): there is no process.
                let _ = reply.send(0);
            }
            PoolMessage::Restart { reply } => {
                let _ = reply.send(state.slots.len());
                info!(
                    "Pool restart: replacing {} child processes.",
                    state.slots.len()
                );
                let idle: Vec<ActorId> = state
                    .slots
                    .iter()
                    .filter(|(_, s)| !s.busy)
                    .map(|(id, _)| *id)
                    .collect();
                for slot in state.slots.values_mut() {
                    slot.retire = slot.busy;
                }
                for id in idle {
                    if let Some(old) = state.slots.remove(&id) {
                        old.actor.stop(Some("pool_restart".into()));
                    }
                }
                Box::pin(self.resize(&myself, state, state.target)).await;
            }
            PoolMessage::Forget { generation } => {
                state
                    .reserved
                    .retain(|r| r.delivery.generation > generation);
                state.rates.retain(|r| r.delivery.generation > generation);
            }
            PoolMessage::Drain { reply } => {
                state.draining = true;
                state.rate_timer = None;
                let mut unstarted: Vec<_> = state.reserved.drain(..).collect();
                unstarted.extend(state.rates.drain());
                let _ = reply.send(unstarted);
            }
            PoolMessage::SetRateLimit { task, rate, reply } => {
                let known = state.task_limits.contains_key(&task);
                if known {
                    let released = state.rates.set_rate(&task, rate, Instant::now());
                    for r in released.into_iter().rev() {
                        state.reserved.push_front(r);
                    }
                    state.dispatch(&myself, self.default_limits);
                }
                let _ = reply.send(known);
            }
            PoolMessage::Revoked { ids, terminate } => {
                state.revoke(&ids, terminate);
            }
            PoolMessage::Discard { reserved, reason } => {
                state.report(reserved, TaskOutcome::Revoked(reason));
            }
            PoolMessage::GetTasks { reply } => {
                let _ = reply.send(state.tasks());
            }
            PoolMessage::GetActiveIds { reply } => {
                let ids = state.running().map(|(r, _)| r.request.id.clone()).collect();
                let _ = reply.send(ids);
            }
            PoolMessage::RateLimitReady => {
                state.rate_timer = None;
                state.dispatch(&myself, self.default_limits);
            }
            PoolMessage::WaitIdle { reply } => {
                state.idle_waiters.push(reply);
                state.wake_idle_waiters();
            }
        }
        Ok(())
    }

    /// Sets the number of children to keep and starts or stops children to match (busy ones
    /// stop when their task ends).
    async fn resize(&self, myself: &ActorRef<PoolMessage>, state: &mut PoolState, target: usize) {
        state.target = target;
        if state.inproc.is_some() {
            // Only how many may run at once changes; running jobs finish as they are.
            state.dispatch(myself, self.default_limits);
            return;
        }
        while state.slots.len() < state.target && !state.draining {
            if let Err(e) = self.spawn_child(myself, state).await {
                self.start_failed(myself, state, &e.to_string());
                break;
            }
        }
        state.shrink();
    }

    /// Applies the autoscaler's rule to the current load.
    async fn autoscale(&self, myself: &ActorRef<PoolMessage>, state: &mut PoolState) {
        let Some(scaler) = state.autoscaler else {
            return;
        };
        if state.draining {
            return;
        }
        let now = Instant::now();
        match scaler.decide(state.target, state.held(), now) {
            Scale::Up(n) => {
                info!("Scaling up {n} processes.");
                if let Some(s) = state.autoscaler.as_mut() {
                    s.grew(now);
                }
                self.resize(myself, state, state.target + n).await;
            }
            Scale::Down(n) => {
                info!("Scaling down {n} processes.");
                self.resize(myself, state, state.target - n).await;
            }
            Scale::Hold => {}
        }
    }

    /// New requests are queued: autoscaling may add a child for them; start what can start.
    async fn on_reserved(&self, myself: &ActorRef<PoolMessage>, state: &mut PoolState) {
        if state.autoscaler.is_some() && !state.has_room() {
            Box::pin(self.autoscale(myself, state)).await;
        }
        state.dispatch(myself, self.default_limits);
    }

    async fn spawn_child(
        &self,
        myself: &ActorRef<PoolMessage>,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        // What was told the consumer goes before the wait for the child to start.
        state.consumer.flush();
        let child = ChildProcess::new(
            self.command.clone(),
            self.hostname.clone(),
            myself.clone(),
            self.recycling,
        );
        let (actor, _handle) = Actor::spawn_linked(None, child, (), myself.get_cell()).await?;
        state.slots.insert(
            actor.get_id(),
            Slot {
                actor,
                pid: None,
                busy: false,
                running: None,
                terminating: None,
                retire: false,
            },
        );
        Ok(())
    }

    /// A child could not be started, or died before it was ready: counted for the backoff and
    /// reported loudly, then another start is scheduled.
    fn start_failed(&self, myself: &ActorRef<PoolMessage>, state: &mut PoolState, why: &str) {
        state.recent_failures.push_back(Instant::now());
        let delay = restart_backoff(state.recent_failures.len());
        error!(
            "Child process failed to start: {why}; next attempt in {} ms.",
            delay.as_millis()
        );
        self.schedule_spawn(myself, state);
    }

    /// Starts a replacement now, or after a backoff when children keep failing at start-up
    /// (never a hot loop).
    fn schedule_spawn(&self, myself: &ActorRef<PoolMessage>, state: &mut PoolState) {
        let now = Instant::now();
        while state
            .recent_failures
            .front()
            .is_some_and(|t| now - *t > Duration::from_secs(60))
        {
            state.recent_failures.pop_front();
        }
        let delay = restart_backoff(state.recent_failures.len());
        myself.send_after(delay, || PoolMessage::SpawnChild);
    }
}

/// A task started: counted in `stats.total` by name, and its wait in the queue (unless the
/// scheduler held it) in the metrics.
fn count_start(
    total: &mut HashMap<String, u64>,
    metrics: &crate::metrics::Metrics,
    running: &Running,
) {
    if !running.was_scheduled {
        let waited = running.since.saturating_duration_since(running.received);
        metrics.queue_wait(waited.as_secs_f64());
    }
    let name = running.request.display_name();
    match total.get_mut(name) {
        Some(n) => *n += 1,
        None => {
            total.insert(name.to_owned(), 1);
        }
    }
}

/// Delay before starting a replacement, given recent start-up failures: none for the first,
/// then doubling from 100 ms up to 30 s.
pub fn restart_backoff(recent_failures: usize) -> Duration {
    match recent_failures {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(100u64.saturating_mul(1 << (n - 2).min(9)))
            .min(Duration::from_secs(30)),
    }
}

impl PoolState {
    /// Tasks holding a child, a thread or a slot of the in-process pool.
    fn active(&self) -> usize {
        match &self.inproc {
            Some(jobs) => jobs.len(),
            None => self.slots.values().filter(|s| s.busy).count(),
        }
    }

    /// The running tasks, each with the pid it runs in.
    fn running(&self) -> Box<dyn Iterator<Item = (&Running, u32)> + '_> {
        match &self.inproc {
            Some(jobs) => Box::new(jobs.running().map(|r| (r, jobs.pid()))),
            None => Box::new(
                self.slots
                    .values()
                    .filter_map(|s| s.running.as_ref().map(|r| (r, s.pid.unwrap_or_default()))),
            ),
        }
    }

    /// Whether a task could start now: an idle child, or a free slot of the in-process pool.
    fn has_room(&self) -> bool {
        match &self.inproc {
            Some(jobs) => jobs.len() < self.target,
            None => self.idle_slot().is_some(),
        }
    }

    /// Tells the consumer how a task ended.
    fn report(&mut self, reserved: Box<Reserved>, outcome: TaskOutcome) {
        self.consumer.tell(PoolReport::TaskFinished {
            reserved,
            outcome,
            runtime: Duration::ZERO,
        });
    }

    /// Requests held: running, waiting for a child, or waiting for a rate-limit token (the
    /// autoscaler's load).
    fn held(&self) -> usize {
        self.active() + self.reserved.len() + self.rates.held()
    }

    /// Tells the consumer the prefetch count now follows `processes` children.
    fn prefetch_follows(&mut self, processes: usize) {
        self.consumer.tell(PoolReport::SetConcurrency(processes));
    }

    fn wake_idle_waiters(&mut self) {
        if self.active() == 0 {
            for w in self.idle_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    /// Drops revoked requests that have not started (reported REVOKED `revoked`); with a
    /// signal, terminates the revoked ones that run (reported REVOKED `terminated`).
    fn revoke(
        &mut self,
        ids: &std::collections::HashSet<String>,
        terminate: Option<nix::sys::signal::Signal>,
    ) {
        let mut dropped = Vec::new();
        let mut kept = VecDeque::with_capacity(self.reserved.len());
        for r in self.reserved.drain(..) {
            if ids.contains(&r.request.id) {
                dropped.push(r)
            } else {
                kept.push_back(r)
            }
        }
        self.reserved = kept;
        dropped.extend(self.rates.remove_where(|r| ids.contains(&r.request.id)));
        for reserved in dropped {
            self.report(reserved, TaskOutcome::Revoked(RevokeReason::Revoked));
        }
        let Some(signal) = terminate else { return };
        if let Some(jobs) = self.inproc.as_mut() {
            let mut stopped = Vec::new();
            for job in jobs.jobs_of(ids) {
                if let Some(done) = jobs.stop(job, Stop::Terminate(signal as i32)) {
                    info!(
                        "Terminating {}[{}] (signal {signal}): its future is cancelled.",
                        done.0.request.display_name(),
                        done.0.request.id
                    );
                    stopped.push(done);
                }
            }
            for (reserved, outcome) in stopped {
                self.report(reserved, outcome);
            }
            return;
        }
        for slot in self.slots.values_mut() {
            let Some(run) = &slot.running else { continue };
            if ids.contains(&run.request.id) {
                info!(
                    "Terminating {}[{}] (signal {signal}).",
                    run.request.display_name(),
                    run.request.id
                );
                slot.terminating = Some(signal as i32);
                let _ = slot.actor.cast(ChildMessage::Terminate(signal));
            }
        }
    }

    /// Stops idle children while there are more than the target (busy ones are stopped by
    /// [`PoolState::shrink`] again when their task ends).
    fn shrink(&mut self) {
        while self.slots.len() > self.target {
            let Some(id) = self.slots.iter().find(|(_, s)| !s.busy).map(|(id, _)| *id) else {
                return;
            };
            if let Some(slot) = self.slots.remove(&id) {
                info!(
                    "Pool shrinks: stopping child process {}.",
                    slot.pid.unwrap_or_default()
                );
                slot.actor.stop(Some("pool_shrink".into()));
            }
        }
    }

    fn tasks(&self) -> PoolTasks {
        let processes = match &self.inproc {
            Some(jobs) => vec![jobs.pid()],
            None => self.slots.values().filter_map(|s| s.pid).collect(),
        };
        let size = match &self.inproc {
            Some(_) => self.target,
            None => self.slots.len(),
        };
        PoolTasks {
            active: self
                .running()
                .map(|(r, pid)| (r.request.clone(), pid, r.started_at))
                .collect(),
            reserved: self
                .reserved
                .iter()
                .map(|r| r.request.clone())
                .chain(self.rates.iter().map(|r| r.request.clone()))
                .collect(),
            processes,
            total: self.total.clone(),
            target: self.target,
            autoscaler: self.autoscaler.map(|a| (a.max, a.min, size, self.held())),
        }
    }

    /// An idle child that is ready for work.
    fn idle_slot(&self) -> Option<ActorId> {
        self.slots
            .iter()
            .find(|(_, s)| !s.busy && s.pid.is_some())
            .map(|(id, _)| *id)
    }

    /// The next request to run: one whose rate-limit token has come, else the next reserved
    /// one that its rate limit (if any) lets through now.
    fn next_request(&mut self, now: Instant) -> Option<Box<Reserved>> {
        if let Some(r) = self.rates.pop_ready(now) {
            return Some(r);
        }
        while let Some(mut r) = self.reserved.pop_front() {
            if self.rates.is_empty() {
                return Some(r);
            }
            let task = r.request.task.clone();
            let bump = !r.holds_prefetch;
            r.holds_prefetch = true;
            match self.rates.admit(&task, r, now) {
                Some(mut r) => {
                    r.holds_prefetch = !bump;
                    return Some(r);
                }
                None if bump => self.consumer.tell(PoolReport::HoldPrefetch),
                None => {}
            }
        }
        None
    }

    fn dispatch(&mut self, myself: &ActorRef<PoolMessage>, defaults: TaskOptions) {
        if self.draining {
            return;
        }
        if !self.consumer.is_set() {
            return;
        }
        let now = Instant::now();
        while self.has_room() {
            let Some(reserved) = self.next_request(now) else {
                break;
            };
            if reserved
                .request
                .expires
                .is_some_and(|e| e <= OffsetDateTime::now_utc())
            {
                self.report(reserved, TaskOutcome::Revoked(RevokeReason::Expired));
                continue;
            }
            let task_limits = self
                .task_limits
                .get(&reserved.request.task)
                .copied()
                .unwrap_or_default();
            let limits = effective_limits(reserved.request.timelimit, task_limits, defaults);
            let running = Running {
                request: reserved.request.clone(),
                delivery: reserved.delivery,
                was_scheduled: reserved.was_scheduled,
                received: reserved.received,
                since: Instant::now(),
                started_at: crate::protocol::time::epoch_f64(OffsetDateTime::now_utc()),
            };
            if let Some(jobs) = self.inproc.as_mut() {
                let info = StartedInfo::of(&reserved, jobs.pid());
                count_start(&mut self.total, &self.metrics, &running);
                jobs.start(myself, running, limits);
                self.consumer.tell(PoolReport::TaskStarted(Box::new(info)));
                continue;
            }
            let Some(slot) = self.idle_slot().and_then(|id| self.slots.get_mut(&id)) else {
                break;
            };
            let pid = slot.pid.unwrap_or_default();
            let info = StartedInfo::of(&reserved, pid);
            slot.busy = true;
            match slot.actor.cast(ChildMessage::Run(reserved, limits)) {
                Ok(()) => {
                    count_start(&mut self.total, &self.metrics, &running);
                    slot.running = Some(running);
                    self.consumer.tell(PoolReport::TaskStarted(Box::new(info)));
                }
                Err(ractor::MessagingErr::SendErr(ChildMessage::Run(back, _))) => {
                    // The child actor is gone (its supervision event will replace it and
                    // clear the slot, which stays busy meanwhile): queue the request again.
                    info!(task_id = %info.request.id, "Child went away; task goes back to the queue.");
                    self.reserved.push_front(back);
                }
                Err(_) => {}
            }
        }
        self.arm_rate_timer(myself, now);
    }

    /// Keeps one timer for the earliest moment a held request may get its token. Not while
    /// every child is busy: a finishing task dispatches again anyway, and a timer then would
    /// only spin.
    fn arm_rate_timer(&mut self, myself: &ActorRef<PoolMessage>, now: Instant) {
        if self.rates.held() == 0 || !self.has_room() {
            self.rate_timer = None;
            return;
        }
        if self.rate_timer.is_none()
            && let Some(wait) = self.rates.next_wait(now)
        {
            let timer = myself.send_after(wait, || PoolMessage::RateLimitReady);
            self.rate_timer = Some(AbortOnDrop(timer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_come_from_header_then_task_then_defaults() {
        let none = TaskOptions::default();
        let task = TaskOptions {
            time_limit: Some(10.0),
            soft_time_limit: Some(5.0),
            ..Default::default()
        };
        let defaults = TaskOptions {
            time_limit: Some(60.0),
            soft_time_limit: Some(50.0),
            ..Default::default()
        };
        let l = |s, h| Limits { soft: s, hard: h };
        assert_eq!(effective_limits((None, None), none, none), l(None, None));
        assert_eq!(
            effective_limits((None, None), none, defaults),
            l(Some(50.0), Some(60.0))
        );
        assert_eq!(
            effective_limits((None, None), task, defaults),
            l(Some(5.0), Some(10.0))
        );
        // Header order is [hard, soft]; each falls back on its own.
        assert_eq!(
            effective_limits((Some(3.0), None), task, defaults),
            l(None, Some(3.0))
        );
        assert_eq!(
            effective_limits((None, Some(1.0)), task, defaults),
            l(Some(1.0), Some(10.0))
        );
        // Soft without hard, and hard without soft.
        let soft_only = TaskOptions {
            time_limit: None,
            soft_time_limit: Some(2.0),
            ..Default::default()
        };
        assert_eq!(
            effective_limits((None, None), soft_only, none),
            l(Some(2.0), None)
        );
        let hard_only = TaskOptions {
            time_limit: Some(2.0),
            soft_time_limit: None,
            ..Default::default()
        };
        assert_eq!(
            effective_limits((None, None), hard_only, none),
            l(None, Some(2.0))
        );
        // soft >= hard: the hard limit still applies, the soft one is dropped.
        let inverted = TaskOptions {
            time_limit: Some(2.0),
            soft_time_limit: Some(9.0),
            ..Default::default()
        };
        assert_eq!(
            effective_limits((None, None), inverted, none),
            l(None, Some(2.0))
        );
    }

    #[test]
    fn rates_come_from_config_then_task_then_default() {
        let mut s = crate::settings::Settings::default();
        let opts = |r: Option<f64>| TaskOptions {
            rate_limit: r,
            ..Default::default()
        };
        let tasks = HashMap::from([
            ("a".to_owned(), opts(Some(1.0))),
            ("b".to_owned(), opts(None)),
            ("c".to_owned(), opts(Some(3.0))),
        ]);
        assert_eq!(
            effective_rates(&s, &tasks),
            HashMap::from([("a".into(), 1.0), ("c".into(), 3.0)])
        );
        s.task.default_rate_limit = Some("120/m".into());
        s.task.rate_limits.insert("c".into(), "0".into());
        let r = effective_rates(&s, &tasks);
        assert_eq!(
            r,
            HashMap::from([("a".into(), 1.0), ("b".into(), 2.0)]),
            "0 in config removes it"
        );
        s.worker.disable_rate_limits = true;
        assert!(effective_rates(&s, &tasks).is_empty());
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(restart_backoff(0), Duration::ZERO);
        assert_eq!(restart_backoff(1), Duration::ZERO);
        assert_eq!(restart_backoff(2), Duration::from_millis(100));
        assert_eq!(restart_backoff(3), Duration::from_millis(200));
        assert_eq!(restart_backoff(50), Duration::from_secs(30));
    }
}
