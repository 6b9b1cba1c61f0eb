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

use crate::child::{ChildCommand, ChildMessage, ChildProcess};
use crate::consumer::{ConsumerMessage, DeliveryRef, StartedInfo};
use crate::protocol::{ExceptionInfo, TaskRequest};

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
    /// Not run: revoked, with the reason (`expired`, `revoked`).
    Revoked(String),
}

/// The pool actor's configuration.
#[derive(Debug)]
pub struct Pool {
    command: ChildCommand,
    concurrency: usize,
    hostname: String,
}

impl Pool {
    /// A pool of `concurrency` children started with `command`.
    pub fn new(command: ChildCommand, concurrency: usize, hostname: String) -> Self {
        Pool {
            command,
            concurrency,
            hostname,
        }
    }
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
}

impl Actor for Pool {
    type Msg = PoolMessage;
    type State = PoolState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = PoolState {
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
                state.dispatch(&self.hostname);
            }
            PoolMessage::SetConsumer(c) => state.consumer = Some(c),
            PoolMessage::ChildReady { child, pid } => {
                if let Some(slot) = state.slots.get_mut(&child) {
                    slot.pid = Some(pid);
                }
                state.dispatch(&self.hostname);
            }
            PoolMessage::JobFinished {
                child,
                reserved,
                outcome,
                runtime,
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
                state.dispatch(&self.hostname);
                state.wake_idle_waiters();
            }
            PoolMessage::SpawnChild => {
                state.pending_spawns = state.pending_spawns.saturating_sub(1);
                if !state.draining
                    && let Err(e) = self.spawn_child(&myself, state).await
                {
                    error!(error = %e, "Cannot start a child process; retrying.");
                    self.schedule_spawn(&myself, state);
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
            warn!(actor = %cell.get_id(), "Supervision event from an unknown actor.");
            return Ok(());
        };
        let reason = reason.unwrap_or_default();
        if let (Some(run), Some(consumer)) = (slot.running, &state.consumer) {
            let reserved = Box::new(Reserved {
                request: run.request,
                delivery: run.delivery,
                was_scheduled: run.was_scheduled,
            });
            let outcome = TaskOutcome::WorkerLost(reason.clone());
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
        if slot.pid.is_none() {
            state.recent_failures.push_back(Instant::now());
        }
        warn!(child_pid = slot.pid.unwrap_or_default(), reason = %reason,
            "Child process gone; starting a replacement.");
        self.schedule_spawn(&myself, state);
        Ok(())
    }
}

impl Pool {
    async fn spawn_child(
        &self,
        myself: &ActorRef<PoolMessage>,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        let child = ChildProcess::new(self.command.clone(), self.hostname.clone(), myself.clone());
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
        if delay > Duration::from_secs(1) {
            error!(
                failures = state.recent_failures.len(),
                delay_ms = delay.as_millis() as u64,
                "Child processes keep dying at start-up; backing off."
            );
        }
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

    fn dispatch(&mut self, hostname: &str) {
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
            match slot.actor.cast(ChildMessage::Run(reserved)) {
                Ok(()) => {
                    slot.running = Some(running);
                    let _ = consumer.cast(ConsumerMessage::TaskStarted(Box::new(info)));
                }
                Err(ractor::MessagingErr::SendErr(ChildMessage::Run(back))) => {
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
    fn backoff_grows_and_caps() {
        assert_eq!(restart_backoff(0), Duration::ZERO);
        assert_eq!(restart_backoff(1), Duration::ZERO);
        assert_eq!(restart_backoff(2), Duration::from_millis(100));
        assert_eq!(restart_backoff(3), Duration::from_millis(200));
        assert_eq!(restart_backoff(50), Duration::from_secs(30));
    }
}
