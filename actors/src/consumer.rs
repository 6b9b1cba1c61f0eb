//! Consumes Celery task messages from AMQP and routes each delivery; acks, rejects and
//! publishes rpc:// results.
//!
//! Supervised by [`Supervisor`](crate::supervisor::Supervisor). Talks to the
//! [`Pool`](crate::pool::Pool) (work to run), the [`Scheduler`](crate::scheduler::Scheduler)
//! (ETA tasks) and the [`RevokeRegistry`](crate::revoke::RevokeRegistry). Owns the broker
//! connection; backpressure comes from `basic_qos` prefetch, not from the mailbox (ractor
//! mailboxes are unbounded, so the broker must bound what is in flight).
//!
//! Connecting happens in the mailbox, not in `pre_start`, so the worker answers signals while
//! the broker is unreachable: a failed attempt schedules the next one with backoff. A lost
//! connection bumps a *generation*: acks for deliveries of an older generation are skipped
//! (the broker has already requeued them), and the pool and scheduler forget those requests.

pub mod acks;
pub mod decide;
mod delivery;
mod finish;
mod link;
mod mingle;
pub mod python;
mod queues;
pub mod results;
mod rpc;
pub mod window;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use self::finish::Settle;
use self::link::Link;
use self::python::PythonTasks;
use self::window::Window;
use crate::backend::ChordReady;
use crate::broker::Delivery;
use crate::broker::outbox::{Outbox, PendingResult};
use crate::events::build as event;
use crate::events::{EventsMessage, TaskEvents};
use crate::pool::PoolMessage;
use crate::pool::report::{PoolReport, PoolReports};
use crate::revoke::RevokeMessage;
use crate::scheduler::SchedulerMessage;
use crate::settings::Settings;
use crate::settings::queues::TaskQueue;
use crate::work::Reserved;

/// The peers the consumer hands work to.
#[derive(Debug, Clone)]
pub struct ConsumerPeers {
    /// The pool.
    pub pool: ActorRef<PoolMessage>,
    /// The ETA scheduler.
    pub scheduler: ActorRef<SchedulerMessage>,
    /// The revoked-id registry.
    pub revoke: ActorRef<RevokeMessage>,
    /// Whether the registry holds any revoke (no need to ask it when not).
    pub revoked: crate::revoke::RevokedCount,
    /// The event dispatcher.
    pub events: ActorRef<EventsMessage>,
    /// Whether task events are sent now.
    pub task_events: TaskEvents,
    /// Counters for the metrics endpoint.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// With Python tasks (`-A`): the helper and the app's tasks. The consumer then writes
    /// no result itself.
    pub python: Option<Arc<PythonTasks>>,
    /// The node's logical clock (mingle adjusts it to the other nodes').
    pub clock: crate::clock::Clock,
    /// The Redis result backend, when results go there.
    pub backend: Option<ActorRef<crate::backend::BackendMessage>>,
}

/// The consumer actor's configuration.
#[derive(Debug)]
pub struct Consumer {
    settings: Arc<Settings>,
    hostname: String,
    registered: HashSet<String>,
    /// `ignore_result` set at registration, by task name.
    ignoring: HashMap<String, bool>,
    /// `broker.qos` resolved: a channel-wide prefetch limit.
    global_qos: bool,
}

impl Consumer {
    /// The queues the configuration names ([`Settings::task_queues`], validated at start), and
    /// with `worker.direct` this node's own `<node>.dq2` on `C.dq2`.
    fn configured_queues(&self) -> Vec<TaskQueue> {
        let mut queues = self.settings.task_queues().to_vec();
        if self.settings.worker.direct {
            queues.push(TaskQueue {
                name: format!("{}.dq2", self.hostname),
                exchange: "C.dq2".to_owned(),
                exchange_type: "direct".to_owned(),
                routing_key: self.hostname.clone(),
                bindings: Vec::new(),
                arguments: serde_json::Map::new(),
            });
        }
        queues
    }

    /// A consumer for `settings`, knowing which task names are registered.
    pub fn new(settings: Arc<Settings>, hostname: String, registered: HashSet<String>) -> Self {
        let global_qos = settings.global_qos();
        Consumer {
            settings,
            hostname,
            registered,
            ignoring: HashMap::new(),
            global_qos,
        }
    }

    /// With the tasks whose registration sets `ignore_result`.
    pub fn ignoring(mut self, ignoring: HashMap<String, bool>) -> Self {
        self.ignoring = ignoring;
        self
    }

    fn registered_ignore(&self, task: &str) -> Option<bool> {
        self.ignoring.get(task).copied()
    }
}

/// Messages to the consumer. Neither batch (deliveries, pool reports) can hold another.
#[derive(Debug)]
pub enum ConsumerMessage {
    /// What the pool tells the consumer, in order (gathered while it handled one message).
    Pool(Vec<PoolReport>),
    /// A chord's header is complete and this worker publishes its body (from the result
    /// backend).
    ChordReady(Box<ChordReady>),
    /// Try to (re)connect; sent to itself.
    Connect {
        /// Attempts made so far.
        attempt: u32,
    },
    /// Deliveries that arrived together, in order (sent by the actor's own stream task).
    Deliveries {
        /// Connection generation.
        generation: u64,
        /// The deliveries.
        deliveries: Vec<Delivery>,
    },
    /// The delivery stream ended (cancelled, or the connection was lost).
    StreamEnded {
        /// Connection generation.
        generation: u64,
        /// The queue it consumed.
        queue: Arc<str>,
        /// Its consumer tag.
        tag: Arc<str>,
        /// The error, when the connection was lost.
        error: Option<String>,
    },
    /// Celery's native delayed delivery was declared on connection `generation` (sent by the
    /// task that declares it), or could not be.
    NativeDeclared {
        /// Connection generation.
        generation: u64,
        /// Why not, if it failed.
        error: Option<String>,
    },
    /// Apply the pending prefetch change (sent to itself).
    ApplyPrefetch,
    /// Send the acks that are ready (sent to itself behind the messages already queued, so
    /// that a burst's acks go out together).
    FlushAcks,
    /// `add_consumer`: start consuming this queue too (declared first, on a channel of its
    /// own, so a refusal closes nothing else). Nothing happens when it is consumed already.
    AddQueue {
        /// The queue and its binding.
        queue: TaskQueue,
        /// `Err` with the broker's reason when it refused the queue.
        reply: RpcReplyPort<Result<(), String>>,
    },
    /// `cancel_consumer`: stop consuming this queue (what was delivered still runs).
    CancelQueue(String),
    /// The queues consumed now (`active_queues`).
    GetQueues(RpcReplyPort<Vec<TaskQueue>>),
    /// Warm shutdown, step 1: cancel the consumers so no new deliveries arrive.
    StopConsuming {
        /// Answered when cancelled.
        reply: RpcReplyPort<()>,
    },
    /// Warm shutdown: hand these unstarted deliveries back to the broker.
    Requeue {
        /// The requests to requeue.
        reserved: Vec<Box<Reserved>>,
        /// Answered when done.
        reply: RpcReplyPort<()>,
    },
    /// Warm shutdown, last step: close the channel and the connection.
    Close {
        /// Answered when closed.
        reply: RpcReplyPort<()>,
    },
}

/// The pool reaches the consumer through a derived ref of its own report type.
impl From<PoolReports> for ConsumerMessage {
    fn from(PoolReports(reports): PoolReports) -> Self {
        ConsumerMessage::Pool(reports)
    }
}

/// The result backend tells the consumer that a chord's body is due.
impl From<Box<ChordReady>> for ConsumerMessage {
    fn from(ready: Box<ChordReady>) -> Self {
        ConsumerMessage::ChordReady(ready)
    }
}

impl TryFrom<ConsumerMessage> for Box<ChordReady> {
    type Error = ConsumerMessage;

    fn try_from(msg: ConsumerMessage) -> Result<Self, ConsumerMessage> {
        match msg {
            ConsumerMessage::ChordReady(ready) => Ok(ready),
            other => Err(other),
        }
    }
}

impl TryFrom<ConsumerMessage> for PoolReports {
    type Error = ConsumerMessage;

    fn try_from(msg: ConsumerMessage) -> Result<Self, ConsumerMessage> {
        match msg {
            ConsumerMessage::Pool(reports) => Ok(PoolReports(reports)),
            other => Err(other),
        }
    }
}

/// The consumer's state.
pub struct ConsumerState {
    peers: ConsumerPeers,
    /// Where results go (`[result]`).
    results: results::Results,
    /// The prefetch window.
    window: Window,
    /// Consumers replaced for a new prefetch count so far (their tags' suffix).
    restarts: u64,
    /// The queues to consume (the configured ones, changed by add/cancel_consumer).
    queues: Vec<TaskQueue>,
    link: Option<Link>,
    generation: u64,
    /// A [`ConsumerMessage::FlushAcks`] is on its way.
    acks_flush_queued: bool,
    /// This actor, for the messages it sends itself.
    myself: ActorRef<ConsumerMessage>,
    consuming: bool,
    closed: bool,
    /// "ready." was logged (the first connection consumes).
    ready: bool,
    /// Results handed to lapin and not yet reported written.
    outbox: Outbox,
    /// Results to publish once connected again, oldest first.
    pending_results: VecDeque<PendingResult>,
    /// Requests for the pool, sent together once the message (or batch) is handled.
    #[allow(
        clippy::vec_box,
        reason = "the pool queues them boxed: moved as they are, not boxed again"
    )]
    to_pool: Vec<Box<Reserved>>,
    /// The frame size asked for instead of the configured one, once a header frame did not
    /// fit ([`broker::FRAME_MAX_RAISED`](crate::broker::FRAME_MAX_RAISED)); kept for the rest of the process's life.
    frame_max: Option<u32>,
    /// Connections lost in a row within [`STABLE_CONNECTION`] of being made: the next
    /// reconnect waits [`broker::backoff`] of it, so a connection that keeps dying (a message
    /// that breaks it, a broker that closes it) is retried at most every 4 s, not in a loop.
    quick_drops: u32,
}

impl std::fmt::Debug for ConsumerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerState")
            .field("connected", &self.link.is_some())
            .field("generation", &self.generation)
            .field("unacked", &self.link.as_ref().map_or(0, |l| l.acks.len()))
            .field("window", &self.window)
            .finish()
    }
}

impl Actor for Consumer {
    type Msg = ConsumerMessage;
    type State = ConsumerState;
    type Arguments = ConsumerPeers;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        peers: ConsumerPeers,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.cast(ConsumerMessage::Connect { attempt: 0 })?;
        Ok(ConsumerState {
            results: results::Results::new(&self.settings, &self.hostname, peers.backend.clone()),
            peers,
            queues: self.configured_queues(),
            link: None,
            generation: 0,
            acks_flush_queued: false,
            myself: myself.clone(),
            consuming: true,
            closed: false,
            ready: false,
            window: Window::new(self.settings.prefetch_count(), self.global_qos),
            restarts: 0,
            outbox: Outbox::default(),
            pending_results: VecDeque::new(),
            to_pool: Vec::new(),
            frame_max: None,
            quick_drops: 0,
        })
    }

    /// Per-task problems are handled here (reject, FAILURE result, log); only a broker
    /// configuration clash or giving up on connecting returns an error.
    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConsumerMessage::Pool(reports) => {
                for report in reports {
                    self.on_report(state, report).await;
                }
            }
            ConsumerMessage::Deliveries {
                generation,
                deliveries,
            } => {
                // A lost connection's deliveries are the broker's again (it requeued them):
                // not run here, where they could not be acked.
                if generation == state.generation && state.link.is_some() {
                    for d in deliveries {
                        Box::pin(self.on_delivery(state, d)).await;
                    }
                }
            }
            msg => self.handle_one(&myself, msg, state).await?,
        }
        state.reserve_in_pool();
        state.reap_outbox();
        if state.window.queue_apply() {
            let _ = myself.cast(ConsumerMessage::ApplyPrefetch);
        }
        Ok(())
    }
}

impl Consumer {
    /// One report of the pool's.
    async fn on_report(&self, state: &mut ConsumerState, report: PoolReport) {
        match report {
            PoolReport::TaskSignal { request, signal } => {
                Box::pin(state.on_task_signal(&request, signal)).await
            }
            PoolReport::SetConcurrency(n) => {
                state.window.set_base(self.settings.prefetch_for(n));
            }
            PoolReport::HoldPrefetch => {
                state.window.hold();
            }
            PoolReport::TaskStarted(info) => Box::pin(self.on_started(state, *info)).await,
            PoolReport::TaskFinished {
                reserved,
                outcome,
                runtime,
            } => {
                Box::pin(self.on_finished(state, *reserved, outcome, runtime)).await;
            }
        }
    }

    /// One message of [`Actor::handle`] other than pool reports and deliveries.
    async fn handle_one(
        &self,
        myself: &ActorRef<ConsumerMessage>,
        msg: ConsumerMessage,
        state: &mut ConsumerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConsumerMessage::Pool(_) | ConsumerMessage::Deliveries { .. } => {
                unreachable!("handled by Actor::handle")
            }
            ConsumerMessage::Connect { attempt } => {
                Box::pin(self.connect(myself, state, attempt)).await?
            }
            ConsumerMessage::ChordReady(ready) => Box::pin(state.on_chord_ready(*ready)).await,
            ConsumerMessage::StreamEnded {
                generation,
                queue,
                tag,
                error,
            } => {
                Box::pin(self.on_stream_end(myself, state, generation, &queue, &tag, error)).await;
            }
            ConsumerMessage::NativeDeclared { generation, error } => {
                if generation == state.generation
                    && let Some(link) = &mut state.link
                {
                    link.broker.set_native_declared(error.is_none());
                    self.on_native_declared(error);
                }
            }
            ConsumerMessage::AddQueue { queue, reply } => {
                let added = Box::pin(self.add_queue(myself, state, queue)).await;
                let _ = reply.send(added);
            }
            ConsumerMessage::CancelQueue(name) => {
                state.queues.retain(|q| q.name != name);
                if let Some(link) = &mut state.link
                    && let Some((tag, _stream)) = link.consumers.remove(&name)
                {
                    info!(queue = %name, "No longer consuming from queue.");
                    if let Err(e) = link.broker.cancel(&tag).await {
                        warn!(queue = %name, error = %e, "Cannot cancel the consumer.");
                    }
                }
            }
            ConsumerMessage::GetQueues(reply) => {
                let _ = reply.send(state.queues.clone());
            }
            ConsumerMessage::FlushAcks => state.flush_acks(),
            ConsumerMessage::ApplyPrefetch => {
                if let Some(count) = state.window.to_apply() {
                    Box::pin(self.apply_prefetch(myself, state, count)).await;
                }
            }
            ConsumerMessage::StopConsuming { reply } => {
                Box::pin(state.stop_consuming()).await;
                let _ = reply.send(());
            }
            ConsumerMessage::Requeue { reserved, reply } => {
                state.flush_acks();
                for r in reserved {
                    state.settle(r.delivery, Settle::GiveBack);
                }
                let _ = reply.send(());
            }
            ConsumerMessage::Close { reply } => {
                Box::pin(state.close()).await;
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}
impl ConsumerState {
    /// Sends a task event, built only when task events are on.
    fn event(&self, build: impl FnOnce() -> event::Event) {
        if self.peers.task_events.enabled() {
            let _ = self.peers.events.cast(EventsMessage::Send(build()));
        }
    }
}
