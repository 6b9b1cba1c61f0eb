//! The pool: the reserved queue, rate limits and dispatch. How a task runs is the pool's
//! strategy ([`PoolKind`], kept in `workers`): `prefork` hands it to one of the
//! [`ChildProcess`](child::ChildProcess) actors, one task per child at a time, and supervises
//! the children one-for-one ([`prefork`]); `async`, `threads` and `solo` run it inside the
//! worker process ([`inproc`]), up to the pool's size at once. Everything else (reserved
//! queue, rate limits, ETA releases, revokes, `inspect active`, grow/shrink, autoscale, warm
//! shutdown) is the same code for every kind.
//!
//! Its messages ([`PoolMessage`]) come in groups, one per protocol: work from the consumer and
//! the scheduler ([`WorkMsg`]), remote control's changes and questions ([`ControlMsg`],
//! handled in `commands`), the supervisor's wiring and shutdown ([`LifecycleMsg`]), what the
//! children and in-process jobs report ([`RunMsg`]) and the pool's own timers
//! ([`TimerMsg`]). Starts and outcomes go to the consumer ([`report`]), which acks and
//! publishes results.

pub mod autoscale;
pub mod child;
mod commands;
pub mod inproc;
mod limits;
mod message;
pub mod prefork;
mod queue;
pub mod rate;
pub mod report;
mod workers;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use time::OffsetDateTime;
use tracing::debug;

use self::autoscale::Autoscaler;
use self::inproc::{InProcess, Stop};
pub use self::limits::{effective_limits, effective_rates};
pub use self::message::{
    ControlMsg, LifecycleMsg, PoolMessage, PoolTasks, RunMsg, TimerMsg, WorkMsg,
};
use self::prefork::Prefork;
use self::queue::Queue;
use self::report::{PoolReport, ToConsumer};
use self::workers::{Running, Workers};
use crate::abort::AbortOnDrop;
use crate::metrics::Metrics;
use crate::process::{ChildCommand, Recycling};
use crate::settings::PoolKind;
use crate::task::{TaskOptions, Tasks};
use crate::work::{Reserved, RevokeReason, StartedInfo, TaskOutcome};

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
    metrics: Arc<Metrics>,
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
    pub metrics: Arc<Metrics>,
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

/// The pool's state.
#[derive(Debug)]
pub struct PoolState {
    /// Where tasks run: the child actors, or the jobs in the worker process.
    workers: Workers,
    /// What waits for a child (or a slot), or for a rate-limit token.
    queue: Queue,
    /// Starts and outcomes for the consumer, sent together when a message is handled.
    consumer: ToConsumer,
    draining: bool,
    idle_waiters: Vec<RpcReplyPort<()>>,
    /// Per-task limits: registration values, changed at runtime by `SetTimeLimit`.
    task_limits: HashMap<String, TaskOptions>,
    /// Tasks started, by (display) name: `stats.total`.
    total: HashMap<String, u64>,
    /// How many children (or tasks at once) the pool keeps (changed by grow/shrink).
    target: usize,
    /// Fires when the next held request may have a token.
    rate_timer: Option<AbortOnDrop<Result<(), ractor::MessagingErr<PoolMessage>>>>,
    /// With `--autoscale`.
    autoscaler: Option<Autoscaler>,
    metrics: Arc<Metrics>,
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
        let mut consumer = ToConsumer::default();
        let workers = if self.kind.in_process() {
            let jobs = InProcess::new(
                self.kind,
                self.max_size.max(self.concurrency),
                self.async_threads,
                self.registry.clone(),
                self.hostname.clone(),
            )
            .map_err(|e| format!("cannot start the {} pool's runtime: {e}", self.kind.name()))?;
            Workers::InProcess(jobs)
        } else {
            let mut children = Prefork::new(
                myself.clone(),
                self.command.clone(),
                self.hostname.clone(),
                self.recycling,
                self.metrics.clone(),
            );
            for _ in 0..self.concurrency {
                children.spawn(&mut consumer).await?;
            }
            Workers::Prefork(children)
        };
        if self.autoscale.is_some() {
            myself.send_interval(Duration::from_secs(1), || TimerMsg::AutoscaleTick.into());
        }
        Ok(PoolState {
            workers,
            queue: Queue::new(&self.rates, Instant::now()),
            consumer,
            draining: false,
            idle_waiters: Vec::new(),
            task_limits,
            total: HashMap::new(),
            target: self.concurrency,
            rate_timer: None,
            autoscaler: self.autoscale,
            metrics: self.metrics.clone(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PoolMessage::Work(msg) => self.on_work(&myself, state, msg).await,
            PoolMessage::Control(msg) => Box::pin(self.on_control(&myself, state, msg)).await,
            PoolMessage::Lifecycle(msg) => state.on_lifecycle(msg),
            PoolMessage::Run(msg) => Box::pin(self.on_run(&myself, state, msg)).await,
            PoolMessage::Timer(msg) => Box::pin(self.on_timer(&myself, state, msg)).await,
        }
        state.consumer.flush();
        Ok(())
    }

    /// A child actor stopped: its task is reported and a replacement scheduled
    /// (`Prefork::stopped`).
    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Workers::Prefork(children) = &mut state.workers
            && children.stopped(event, &mut state.consumer, state.draining)
            && state.draining
        {
            state.wake_idle_waiters();
        }
        state.consumer.flush();
        Ok(())
    }
}

impl Pool {
    /// [`WorkMsg`]: requests to queue, or to drop.
    async fn on_work(&self, myself: &ActorRef<PoolMessage>, state: &mut PoolState, msg: WorkMsg) {
        match msg {
            WorkMsg::Reserve(r) => {
                state.queue.push(r);
                self.on_reserved(myself, state).await;
            }
            WorkMsg::ReserveAll(rs) => {
                state.queue.extend(rs);
                self.on_reserved(myself, state).await;
            }
            WorkMsg::Discard { reserved, reason } => {
                state.report(reserved, TaskOutcome::Revoked(reason));
            }
            WorkMsg::Forget { generation } => state.queue.forget(generation),
            WorkMsg::Revoked { ids, terminate } => state.revoke(&ids, terminate),
        }
    }

    /// New requests are queued: autoscaling may add a child for them; start what can start.
    async fn on_reserved(&self, myself: &ActorRef<PoolMessage>, state: &mut PoolState) {
        if state.autoscaler.is_some() && !state.workers.has_room(state.target) {
            Box::pin(self.autoscale(myself, state)).await;
        }
        state.dispatch(myself, self.default_limits);
    }

    /// [`RunMsg`]: what the children and the in-process jobs report.
    async fn on_run(&self, myself: &ActorRef<PoolMessage>, state: &mut PoolState, msg: RunMsg) {
        match msg {
            RunMsg::Signal { request, signal } => {
                state
                    .consumer
                    .tell(PoolReport::TaskSignal { request, signal });
            }
            RunMsg::ChildReady { child, pid } => {
                if let Workers::Prefork(children) = &mut state.workers {
                    children.ready(child, pid);
                }
                state.dispatch(myself, self.default_limits);
            }
            RunMsg::ChildFinished {
                child,
                reserved,
                outcome,
                runtime,
                recycle,
            } => {
                let Workers::Prefork(children) = &mut state.workers else {
                    return;
                };
                let Some((outcome, recycle)) = children.finished(child, outcome, recycle) else {
                    debug!(task_id = %reserved.request.id, "Result from a child already gone.");
                    return;
                };
                state.consumer.tell(PoolReport::TaskFinished {
                    reserved,
                    outcome,
                    runtime,
                });
                if let Some(why) = recycle {
                    let recycled =
                        children.recycle(child, &why, &mut state.consumer, state.draining);
                    Box::pin(recycled).await;
                }
                children.shrink(state.target);
                state.dispatch(myself, self.default_limits);
                state.wake_idle_waiters();
            }
            RunMsg::JobEnded {
                job,
                outcome,
                runtime,
            } => {
                let Workers::InProcess(jobs) = &mut state.workers else {
                    return;
                };
                let Some((running, reported)) = jobs.ended(job) else {
                    return;
                };
                if let (false, Some(outcome)) = (reported, outcome) {
                    state.consumer.tell(PoolReport::TaskFinished {
                        reserved: running.to_reserved(),
                        outcome,
                        runtime,
                    });
                }
                state.dispatch(myself, self.default_limits);
                state.wake_idle_waiters();
            }
        }
    }

    /// [`TimerMsg`]: the pool's own timers.
    async fn on_timer(&self, myself: &ActorRef<PoolMessage>, state: &mut PoolState, msg: TimerMsg) {
        match msg {
            TimerMsg::RateLimitReady => {
                state.rate_timer = None;
                state.dispatch(myself, self.default_limits);
            }
            TimerMsg::AutoscaleTick => {
                Box::pin(self.autoscale(myself, state)).await;
                state.dispatch(myself, self.default_limits);
            }
            TimerMsg::SpawnChild => {
                if let Workers::Prefork(children) = &mut state.workers
                    && !state.draining
                {
                    Box::pin(children.respawn(state.target, &mut state.consumer)).await;
                }
            }
            TimerMsg::JobLimit { job, hard, seconds } => {
                let Workers::InProcess(jobs) = &mut state.workers else {
                    return;
                };
                if !hard {
                    jobs.soft_limit(job, seconds);
                } else if let Some((reserved, outcome)) = jobs.stop(job, Stop::HardLimit(seconds)) {
                    state.metrics.killed();
                    state.report(reserved, outcome);
                }
            }
        }
    }
}

/// A task started: counted in `stats.total` by name, and its wait in the queue (unless the
/// scheduler held it) in the metrics.
fn count_start(
    total: &mut HashMap<String, u64>,
    metrics: &Metrics,
    name: &str,
    waited: Option<Duration>,
) {
    if let Some(waited) = waited {
        metrics.queue_wait(waited.as_secs_f64());
    }
    match total.get_mut(name) {
        Some(n) => *n += 1,
        None => {
            total.insert(name.to_owned(), 1);
        }
    }
}

impl PoolState {
    /// [`LifecycleMsg`]: the supervisor's wiring and shutdown steps.
    fn on_lifecycle(&mut self, msg: LifecycleMsg) {
        match msg {
            LifecycleMsg::SetConsumer(c) => self.consumer.set(c),
            LifecycleMsg::Drain { reply } => {
                self.draining = true;
                self.rate_timer = None;
                let _ = reply.send(self.queue.drain().collect());
            }
            LifecycleMsg::WaitIdle { reply } => {
                self.idle_waiters.push(reply);
                self.wake_idle_waiters();
            }
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
        self.workers.active() + self.queue.len()
    }

    fn wake_idle_waiters(&mut self) {
        if self.workers.active() == 0 {
            for w in self.idle_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    /// Drops revoked requests that have not started (reported REVOKED `revoked`); with a
    /// signal, terminates the revoked ones that run (reported REVOKED `terminated`).
    fn revoke(&mut self, ids: &HashSet<String>, terminate: Option<Signal>) {
        for reserved in self.queue.remove_ids(ids) {
            self.report(reserved, TaskOutcome::Revoked(RevokeReason::Revoked));
        }
        let Some(signal) = terminate else { return };
        for (reserved, outcome) in self.workers.terminate(ids, signal) {
            self.report(reserved, outcome);
        }
    }

    /// Starts queued requests while there is room.
    fn dispatch(&mut self, myself: &ActorRef<PoolMessage>, defaults: TaskOptions) {
        if self.draining || !self.consumer.is_set() {
            return;
        }
        let now = Instant::now();
        while self.workers.has_room(self.target) {
            let Some(reserved) = self.queue.next(now, &mut self.consumer) else {
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
            let running = Running::of(&reserved);
            let waited = (!running.was_scheduled)
                .then(|| running.since.saturating_duration_since(running.received));
            let info = StartedInfo::of(&reserved, 0);
            match self.workers.start(myself, reserved, running, limits) {
                Ok(pid) => {
                    count_start(
                        &mut self.total,
                        &self.metrics,
                        info.request.display_name(),
                        waited,
                    );
                    let info = StartedInfo { pid, ..info };
                    self.consumer.tell(PoolReport::TaskStarted(Box::new(info)));
                }
                Err(Some(back)) => self.queue.push_front(back),
                Err(None) => {}
            }
        }
        self.arm_rate_timer(myself, now);
    }

    /// Keeps one timer for the earliest moment a held request may get its token. Not while
    /// every child is busy: a finishing task dispatches again anyway, and a timer then would
    /// only spin.
    fn arm_rate_timer(&mut self, myself: &ActorRef<PoolMessage>, now: Instant) {
        if self.queue.held_for_tokens() == 0 || !self.workers.has_room(self.target) {
            self.rate_timer = None;
            return;
        }
        if self.rate_timer.is_none()
            && let Some(wait) = self.queue.next_wait(now)
        {
            let timer = myself.send_after(wait, || TimerMsg::RateLimitReady.into());
            self.rate_timer = Some(AbortOnDrop(timer));
        }
    }
}
