//! Holds ETA / countdown tasks until they are due, then hands them to the pool. Their
//! deliveries stay unacked meanwhile (the consumer raised the prefetch count by one for each),
//! so a crash or shutdown gives them back to the broker.
//!
//! Supervised by [`Supervisor`](crate::supervisor::Supervisor); sends to the
//! [`Pool`](crate::pool::Pool). One timer task, re-armed for the earliest ETA, casts
//! [`SchedulerMessage::Due`] to itself.

pub mod eta_queue;

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use time::OffsetDateTime;

use self::eta_queue::EtaQueue;
use crate::abort::AbortOnDrop;
use crate::pool::{PoolMessage, WorkMsg};
use crate::work::Reserved;

/// The scheduler actor.
#[derive(Debug)]
pub struct Scheduler {
    pool: ActorRef<PoolMessage>,
}

impl Scheduler {
    /// A scheduler releasing into `pool`.
    pub fn new(pool: ActorRef<PoolMessage>) -> Self {
        Scheduler { pool }
    }
}

/// Messages to the scheduler.
#[derive(Debug)]
pub enum SchedulerMessage {
    /// Hold this request until its ETA.
    Schedule(Box<Reserved>),
    /// The timer fired (sent to itself).
    Due,
    /// The connection of this generation was lost: drop its requests (the broker requeued
    /// them).
    Forget {
        /// The lost generation.
        generation: u64,
    },
    /// These ids were revoked: drop the held requests among them (the pool reports them).
    Revoked(std::sync::Arc<std::collections::HashSet<String>>),
    /// The held requests, earliest ETA first (`inspect scheduled`).
    GetScheduled(RpcReplyPort<Vec<std::sync::Arc<crate::protocol::TaskRequest>>>),
    /// Warm shutdown: stop releasing and hand back everything held.
    Drain {
        /// Receives the held requests.
        reply: RpcReplyPort<Vec<Box<Reserved>>>,
    },
}

/// The scheduler's state: the held requests and the timer for the earliest.
#[derive(Debug, Default)]
pub struct SchedulerState {
    queue: EtaQueue<Box<Reserved>>,
    timer: Option<AbortOnDrop<Result<(), ractor::MessagingErr<SchedulerMessage>>>>,
    draining: bool,
}

impl Actor for Scheduler {
    type Msg = SchedulerMessage;
    type State = SchedulerState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SchedulerState::default())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SchedulerMessage::Schedule(mut r) => {
                let eta = r.request.eta.unwrap_or_else(OffsetDateTime::now_utc);
                r.was_scheduled = true;
                state.queue.push(eta, r);
            }
            SchedulerMessage::Due => {
                if !state.draining {
                    for r in state.queue.pop_due(OffsetDateTime::now_utc()) {
                        let _ = self.pool.cast(WorkMsg::Reserve(r).into());
                    }
                }
            }
            SchedulerMessage::Revoked(ids) => {
                for r in state.queue.remove_where(|r| ids.contains(&r.request.id)) {
                    let discard = WorkMsg::Discard {
                        reserved: r,
                        reason: crate::work::RevokeReason::Revoked,
                    };
                    let _ = self.pool.cast(discard.into());
                }
            }
            SchedulerMessage::GetScheduled(reply) => {
                let mut held: Vec<_> = state.queue.iter().map(|r| r.request.clone()).collect();
                held.sort_by_key(|r| r.eta);
                let _ = reply.send(held);
                return Ok(());
            }
            SchedulerMessage::Forget { generation } => {
                state.queue.retain(|r| r.delivery.generation > generation);
            }
            SchedulerMessage::Drain { reply } => {
                state.draining = true;
                state.timer = None;
                let _ = reply.send(state.queue.drain());
                return Ok(());
            }
        }
        state.rearm(&myself);
        Ok(())
    }
}

impl SchedulerState {
    fn rearm(&mut self, myself: &ActorRef<SchedulerMessage>) {
        self.timer = None;
        if self.draining {
            return;
        }
        if let Some(eta) = self.queue.next_eta() {
            let wait = (eta - OffsetDateTime::now_utc()).max(time::Duration::ZERO);
            let wait = Duration::try_from(wait).unwrap_or(Duration::ZERO);
            self.timer = Some(AbortOnDrop(
                myself.send_after(wait, || SchedulerMessage::Due),
            ));
        }
    }
}
