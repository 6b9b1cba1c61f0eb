//! The pool: the reserved queue and dispatch over the [`ChildProcess`] actors, one task per
//! child at a time. Supervises the children one-for-one: a child that stops is replaced (with
//! backoff when children keep dying at start-up).
//!
//! Receives work from the consumer and the scheduler ([`PoolMessage::Reserve`]); reports starts
//! and outcomes to the consumer, which acks and publishes results.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde_json::Value;
use time::OffsetDateTime;
use tracing::{debug, error, info, warn};

use crate::child::{
    ChildCommand, ChildMessage, ChildProcess, HARD_LIMIT_REASON, Limits, Recycling,
};
use crate::consumer::{ConsumerMessage, DeliveryRef, StartedInfo};
use crate::protocol::{ExceptionInfo, TaskRequest};
use crate::task::TaskOptions;

/// A request waiting for (or running in) a child, with the delivery it came from.
#[derive(Debug)]
pub struct Reserved {
    /// The decoded request (shared with the pool's record of what each child runs).
    pub request: Arc<TaskRequest>,
    /// The delivery to ack or reject.
    pub delivery: DeliveryRef,
    /// Held by the scheduler before (the consumer counted it in its prefetch bump).
    pub was_scheduled: bool,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutcome {
    /// Returned a value.
    Success(Value),
    /// Raised.
    Failure {
        /// The exception.
        exc: ExceptionInfo,
        /// Traceback text.
        traceback: Option<String>,
    },
    /// The child process died while running it (how it exited).
    WorkerLost(String),
    /// Killed at its hard time limit (seconds).
    TimeLimitExceeded(f64),
    /// Not run: revoked, with the reason (`expired`, `revoked`).
    Revoked(String),
}

/// The pool actor's configuration.
#[derive(Debug)]
pub struct Pool {
    command: ChildCommand,
    concurrency: usize,
    hostname: String,
    recycling: Recycling,
    default_limits: TaskOptions,
}

/// What the pool is built from.
#[derive(Debug, Clone)]
pub struct PoolArgs {
    /// How to start a child process.
    pub command: ChildCommand,
    /// Number of child processes.
    pub concurrency: usize,
    /// The node name (for the children and STARTED results).
    pub hostname: String,
    /// When children are replaced.
    pub recycling: Recycling,
    /// `[task]` time limits, used where neither the message nor the task sets one.
    pub default_limits: TaskOptions,
}

impl Pool {
    /// A pool built from `args`.
    pub fn new(args: PoolArgs) -> Self {
        Pool {
            command: args.command,
            concurrency: args.concurrency,
            hostname: args.hostname,
            recycling: args.recycling,
            default_limits: args.default_limits,
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
    /// Where starts and outcomes go (sent by the supervisor once the consumer runs).
    SetConsumer(ActorRef<ConsumerMessage>),
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
    /// Start a replacement child (sent to itself, after a backoff when needed).
    SpawnChild,
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
}

#[derive(Debug)]
struct Running {
    request: Arc<TaskRequest>,
    delivery: crate::consumer::DeliveryRef,
    was_scheduled: bool,
    since: Instant,
}

/// The pool's state.
#[derive(Debug)]
pub struct PoolState {
    slots: HashMap<ActorId, Slot>,
    reserved: VecDeque<Box<Reserved>>,
    consumer: Option<ActorRef<ConsumerMessage>>,
    draining: bool,
    idle_waiters: Vec<RpcReplyPort<()>>,
    pending_spawns: usize,
    recent_failures: VecDeque<Instant>,
    /// Per-task limits: registration values, changed at runtime by `SetTimeLimit`.
    task_limits: HashMap<String, TaskOptions>,
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
            slots: HashMap::new(),
            reserved: VecDeque::new(),
            consumer: None,
            draining: false,
            idle_waiters: Vec::new(),
            pending_spawns: 0,
            recent_failures: VecDeque::new(),
        };
        for _ in 0..self.concurrency {
            self.spawn_child(&myself, &mut state).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PoolMessage::Reserve(r) => {
                state.reserved.push_back(r);
                state.dispatch(&self.hostname, self.default_limits);
            }
            PoolMessage::SetConsumer(c) => state.consumer = Some(c),
            PoolMessage::ChildReady { child, pid } => {
                if let Some(slot) = state.slots.get_mut(&child) {
                    slot.pid = Some(pid);
                }
                state.dispatch(&self.hostname, self.default_limits);
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
                if let Some(c) = &state.consumer {
                    let _ = c.cast(ConsumerMessage::TaskFinished {
                        reserved,
                        outcome,
                        runtime,
                    });
                }
                if let Some(why) = recycle {
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
                        && let Err(e) = self.spawn_child(&myself, state).await
                    {
                        self.start_failed(&myself, state, &e.to_string());
                    }
                }
                state.dispatch(&self.hostname, self.default_limits);
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
                        *limits = TaskOptions {
                            time_limit: hard,
                            soft_time_limit: soft,
                        };
                        true
                    }
                    None => false,
                };
                let _ = reply.send(known);
            }
            PoolMessage::SpawnChild => {
                state.pending_spawns = state.pending_spawns.saturating_sub(1);
                if !state.draining
                    && let Err(e) = self.spawn_child(&myself, state).await
                {
                    self.start_failed(&myself, state, &e.to_string());
                }
            }
            PoolMessage::Forget { generation } => {
                state
                    .reserved
                    .retain(|r| r.delivery.generation > generation);
            }
            PoolMessage::Drain { reply } => {
                state.draining = true;
                let _ = reply.send(state.reserved.drain(..).collect());
            }
            PoolMessage::WaitIdle { reply } => {
                state.idle_waiters.push(reply);
                state.wake_idle_waiters();
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason),
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            _ => return Ok(()),
        };
        let Some(slot) = state.slots.remove(&cell.get_id()) else {
            // A recycled child (already replaced) or one from before a restart.
            debug!(actor = %cell.get_id(), "Supervision event from a child no longer in the pool.");
            return Ok(());
        };
        let reason = reason.unwrap_or_default();
        if let (Some(run), Some(consumer)) = (slot.running, &state.consumer) {
            let reserved = Box::new(Reserved {
                request: run.request,
                delivery: run.delivery,
                was_scheduled: run.was_scheduled,
            });
            let outcome = match reason.strip_prefix(HARD_LIMIT_REASON) {
                Some(secs) => TaskOutcome::TimeLimitExceeded(secs.parse().unwrap_or_default()),
                None => TaskOutcome::WorkerLost(reason.clone()),
            };
            let runtime = run.since.elapsed();
            let _ = consumer.cast(ConsumerMessage::TaskFinished {
                reserved,
                outcome,
                runtime,
            });
        }
        if state.draining {
            state.wake_idle_waiters();
            return Ok(());
        }
        match slot.pid {
            None => self.start_failed(
                &myself,
                state,
                &format!("died before it was ready ({reason})"),
            ),
            Some(pid) if reason.starts_with(HARD_LIMIT_REASON) => {
                info!(
                    child_pid = pid,
                    "Child process killed at the hard time limit; replacing it."
                );
                self.schedule_spawn(&myself, state);
            }
            Some(pid) => {
                warn!(child_pid = pid, reason = %reason, "Child process gone; starting a replacement.");
                self.schedule_spawn(&myself, state);
            }
        }
        Ok(())
    }
}

impl Pool {
    async fn spawn_child(
        &self,
        myself: &ActorRef<PoolMessage>,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
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
        state.pending_spawns += 1;
        myself.send_after(delay, || PoolMessage::SpawnChild);
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
    fn active(&self) -> usize {
        self.slots.values().filter(|s| s.busy).count()
    }

    fn wake_idle_waiters(&mut self) {
        if self.active() == 0 {
            for w in self.idle_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    fn dispatch(&mut self, hostname: &str, defaults: TaskOptions) {
        if self.draining {
            return;
        }
        let Some(consumer) = self.consumer.clone() else {
            return;
        };
        while !self.reserved.is_empty() {
            let Some(slot) = self.slots.values_mut().find(|s| !s.busy && s.pid.is_some()) else {
                return;
            };
            let Some(reserved) = self.reserved.pop_front() else {
                return;
            };
            let now = OffsetDateTime::now_utc();
            if reserved.request.expires.is_some_and(|e| e <= now) {
                let _ = consumer.cast(ConsumerMessage::TaskFinished {
                    reserved,
                    outcome: TaskOutcome::Revoked("expired".into()),
                    runtime: Duration::ZERO,
                });
                continue;
            }
            let pid = slot.pid.unwrap_or_default();
            let info = StartedInfo::of(&reserved, pid, hostname);
            slot.busy = true;
            let running = Running {
                request: reserved.request.clone(),
                delivery: reserved.delivery,
                was_scheduled: reserved.was_scheduled,
                since: Instant::now(),
            };
            let task_limits = self
                .task_limits
                .get(&reserved.request.task)
                .copied()
                .unwrap_or_default();
            let limits = effective_limits(reserved.request.timelimit, task_limits, defaults);
            match slot.actor.cast(ChildMessage::Run(reserved, limits)) {
                Ok(()) => {
                    slot.running = Some(running);
                    let _ = consumer.cast(ConsumerMessage::TaskStarted(Box::new(info)));
                }
                Err(ractor::MessagingErr::SendErr(ChildMessage::Run(back, _))) => {
                    // The child actor is gone (its supervision event will replace it and
                    // clear the slot, which stays busy meanwhile): queue the request again.
                    info!(task_id = %info.task_id, "Child went away; task goes back to the queue.");
                    self.reserved.push_front(back);
                }
                Err(_) => {}
            }
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
        };
        let defaults = TaskOptions {
            time_limit: Some(60.0),
            soft_time_limit: Some(50.0),
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
        };
        assert_eq!(
            effective_limits((None, None), soft_only, none),
            l(Some(2.0), None)
        );
        let hard_only = TaskOptions {
            time_limit: Some(2.0),
            soft_time_limit: None,
        };
        assert_eq!(
            effective_limits((None, None), hard_only, none),
            l(None, Some(2.0))
        );
        // soft >= hard: the hard limit still applies, the soft one is dropped.
        let inverted = TaskOptions {
            time_limit: Some(2.0),
            soft_time_limit: Some(9.0),
        };
        assert_eq!(
            effective_limits((None, None), inverted, none),
            l(None, Some(2.0))
        );
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
