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
pub mod python;
pub mod results;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::json;
use time::OffsetDateTime;
use tracing::{debug, error, info, warn};

use self::decide::{Decision, decide};
use self::python::{PythonTasks, Settle};
use crate::abort::AbortOnDrop;
use crate::backend::ChordReady;
use crate::broker::amqp::delay;
use crate::broker::amqp::outbox::{Outbox, PendingResult};
use crate::broker::amqp::route::{self, Route};
use crate::broker::amqp::{self, Channel, StreamEvent, TaskQueue, consumer_tag};
use crate::broker::{self, BrokerError, Delivery, ErrorKind};
use crate::events::build as event;
use crate::events::{EventsMessage, TaskEvents};
use crate::pool::report::{PoolReport, PoolReports};
use crate::pool::{PoolMessage, WorkMsg};
use crate::process::python::ReportKind;
use crate::protocol::repr::{py_repr, truncate};
use crate::protocol::{ExceptionInfo, ResultState, decode_keeping_body};
use crate::revoke::RevokeMessage;
use crate::scheduler::SchedulerMessage;
use crate::settings::Settings;
use crate::settings::queues;
use crate::work::{DeliveryRef, Reserved, RevokeReason, StartedInfo, TaskOutcome};

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
        let mut queues = self.settings.task_queues().unwrap_or_default();
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
        // Validated at start (an invalid value stopped it there).
        let global_qos = settings.global_qos().unwrap_or(true);
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

/// Whether per-consumer QoS needs its consumers replaced to move from `current` (the limit
/// they were started with) to `wanted`: when more is wanted (0 = unlimited), or when the held
/// tasks are gone and the consumers still take more than the base.
pub fn reconsume_for(current: u16, wanted: u16, base: u16) -> bool {
    match (current, wanted) {
        (0, _) => wanted != 0 && wanted == base,
        (_, 0) => true,
        _ => wanted > current || (wanted == base && current > base),
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

struct Link {
    broker: amqp::Link,
    /// Queue name -> (consumer tag, the task forwarding its deliveries).
    consumers: HashMap<String, (String, AbortOnDrop)>,
    /// Forwarding tasks of consumers replaced for a new prefetch count, left to drain what
    /// was delivered to them.
    retired: Vec<AbortOnDrop>,
}

/// The consumer's state.
pub struct ConsumerState {
    peers: ConsumerPeers,
    /// Where results go (`[result]`).
    results: results::Results,
    /// A channel-wide prefetch limit (`broker.qos`), until the broker refuses it for a
    /// quorum queue (540): then per consumer.
    global_qos: bool,
    /// The prefetch count the consumers were started with (per-consumer QoS).
    consumer_prefetch: u16,
    /// Consumers replaced for a new prefetch count so far (their tags' suffix).
    restarts: u64,
    /// The queues to consume (the configured ones, changed by add/cancel_consumer).
    queues: Vec<TaskQueue>,
    link: Option<Link>,
    generation: u64,
    /// Delivery tags of the current generation not yet acked or rejected.
    /// Deliveries of this connection not acked yet, and the acks waiting to go out together
    /// ([`ConsumerMessage::FlushAcks`]).
    acks: acks::Acks,
    /// A [`ConsumerMessage::FlushAcks`] is on its way.
    acks_flush_queued: bool,
    /// This actor, for the messages it sends itself.
    myself: ActorRef<ConsumerMessage>,
    consuming: bool,
    closed: bool,
    held: u16,
    /// The prefetch count without the held ETA tasks.
    base_prefetch: u16,
    /// "ready." was logged (the first connection consumes).
    ready: bool,
    /// Whether the delay ladder was declared on this connection.
    delay_declared: bool,
    /// Whether Celery's native delayed delivery was declared on this connection (some
    /// configured queue is quorum): countdowns of queues on non-direct exchanges go through it.
    native_declared: bool,
    /// The channel for what the worker publishes on its own account (far-ETA copies into the
    /// delay ladder, retries), in confirm mode: the original delivery is acked only once the
    /// broker confirmed the copy, and a broker refusal (a deleted exchange: 404) closes this
    /// channel only, never the one the tasks are consumed and acked on. Opened on first use.
    side: Option<Channel>,
    /// The prefetch count must be re-sent.
    prefetch_dirty: bool,
    /// An `ApplyPrefetch` is in the mailbox.
    prefetch_flush_queued: bool,
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
    /// fit ([`amqp::FRAME_MAX_RAISED`]); kept for the rest of the process's life.
    frame_max: Option<u32>,
    /// When the current connection was made.
    connected_at: Option<std::time::Instant>,
    /// Connections lost in a row within [`STABLE_CONNECTION`] of being made: the next
    /// reconnect waits [`broker::backoff`] of it, so a connection that keeps dying (a message
    /// that breaks it, a broker that closes it) is retried at most every 4 s, not in a loop.
    quick_drops: u32,
}

/// A connection that lived this long was not broken by what it received at once.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

impl std::fmt::Debug for ConsumerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerState")
            .field("connected", &self.link.is_some())
            .field("generation", &self.generation)
            .field("unacked", &self.acks.len())
            .field("held", &self.held)
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
            acks: acks::Acks::default(),
            acks_flush_queued: false,
            myself: myself.clone(),
            consuming: true,
            closed: false,
            held: 0,
            base_prefetch: self.settings.prefetch_count(),
            ready: false,
            delay_declared: false,
            native_declared: false,
            side: None,
            prefetch_dirty: false,
            prefetch_flush_queued: false,
            global_qos: self.global_qos,
            consumer_prefetch: 0,
            restarts: 0,
            outbox: Outbox::default(),
            pending_results: VecDeque::new(),
            to_pool: Vec::new(),
            frame_max: None,
            connected_at: None,
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
                for d in deliveries {
                    // A lost connection's deliveries are the broker's again.
                    if generation == state.generation {
                        Box::pin(self.on_delivery(state, d)).await;
                    }
                }
            }
            msg => self.handle_one(&myself, msg, state).await?,
        }
        state.reserve_in_pool();
        state.reap_outbox();
        if state.prefetch_dirty && !state.prefetch_flush_queued {
            state.prefetch_flush_queued = true;
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
                state.base_prefetch = self.settings.prefetch_for(n);
                state.prefetch_dirty = true;
            }
            PoolReport::HoldPrefetch => {
                state.held = state.held.saturating_add(1);
                state.prefetch_dirty = true;
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
                if generation == state.generation && state.link.is_some() {
                    state.native_declared = error.is_none();
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
                state.prefetch_flush_queued = false;
                if state.prefetch_dirty {
                    Box::pin(self.apply_prefetch(myself, state)).await;
                }
            }
            ConsumerMessage::StopConsuming { reply } => {
                Box::pin(state.stop_consuming()).await;
                let _ = reply.send(());
            }
            ConsumerMessage::Requeue { reserved, reply } => {
                state.flush_acks();
                for r in reserved {
                    state.reject(r.delivery, true);
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

impl Consumer {
    async fn connect(
        &self,
        myself: &ActorRef<ConsumerMessage>,
        state: &mut ConsumerState,
        attempt: u32,
    ) -> Result<(), BrokerError> {
        if state.closed || state.link.is_some() {
            return Ok(());
        }
        let broker = &self.settings.broker;
        match self.open_link(myself, state).await {
            Ok(link) => {
                state.peers.metrics.broker_connected(true);
                if attempt > 0 {
                    state.peers.metrics.reconnected();
                    info!(broker = %broker.safe_url(), "Connected to the broker again.");
                } else {
                    info!(broker = %broker.safe_url(), "Connected to the broker.");
                }
                if !state.ready {
                    // Consuming now: what Celery's "ready." means to operators and scripts.
                    state.ready = true;
                    info!(hostname = %self.hostname,
                        concurrency = self.settings.effective_concurrency(),
                        "{} ready.", self.hostname);
                }
                state.link = Some(link);
                state.connected_at = Some(std::time::Instant::now());
                state.flush_pending_results().await;
                Ok(())
            }
            Err(e @ BrokerError::Clash { .. }) => {
                error!(error = %e, "Queue declaration clashes with the broker's; cannot consume.");
                Err(e)
            }
            Err(e) if state.global_qos && e.kind() == ErrorKind::GlobalQosRefused => {
                // A quorum queue that `qos = "auto"` could not see (added by add_consumer) or
                // `qos = "global"` set by hand: the broker closed the connection (540).
                warn!(error = %e, "The broker refuses channel-wide QoS for a quorum queue; \
                    using per-consumer QoS from now on (set [broker] qos = \"per-consumer\" \
                    to say so).");
                state.global_qos = false;
                let _ = myself.cast(ConsumerMessage::Connect { attempt });
                Ok(())
            }
            Err(e) if !state.ready && e.kind() == ErrorKind::LoginRefused => {
                // A wrong user, password or vhost permission does not mend itself: stop at
                // once with the reason (exit 77) rather than retry it like a network blip.
                Err(BrokerError::Unreachable {
                    url: broker.safe_url(),
                    attempts: attempt + 1,
                    last: format!(
                        "ACCESS_REFUSED: the broker refused the login; check the user, the \
                         password and the vhost's permissions in broker.url ({e})"
                    ),
                })
            }
            Err(e) => {
                let attempts = attempt + 1;
                let limit = broker.connection_max_retries;
                let retry = state.generation > 0 || broker.connection_retry_on_startup;
                if !retry || (limit > 0 && attempts >= limit) {
                    return Err(BrokerError::Unreachable {
                        url: broker.safe_url(),
                        attempts,
                        last: e.to_string(),
                    });
                }
                let delay = broker::backoff(attempts);
                error!(broker = %broker.safe_url(), error = %e,
                    "Cannot connect to the broker; trying again in {:.1} seconds... ({attempts}/{})",
                    delay.as_secs_f64(),
                    if limit == 0 { "∞".to_owned() } else { limit.to_string() });
                myself.send_after(delay, move || ConsumerMessage::Connect {
                    attempt: attempts,
                });
                Ok(())
            }
        }
    }

    async fn open_link(
        &self,
        myself: &ActorRef<ConsumerMessage>,
        state: &mut ConsumerState,
    ) -> Result<Link, BrokerError> {
        let link = amqp::Link::open(&self.settings.broker, &self.hostname, state.frame_max).await?;
        let configured: Vec<String> = self
            .configured_queues()
            .into_iter()
            .map(|q| q.name)
            .collect();
        let mut refused = Vec::new();
        for q in &state.queues {
            if configured.contains(&q.name) {
                link.declare_task_queue(q).await?;
            } else if let Err(e) = link.declare_on_own_channel(q).await {
                // Added by `add_consumer` and refused now (deleted and declared otherwise
                // since): dropped, not a reason to stop consuming the others.
                error!(queue = %q.name, error = %e, "No longer consuming an added queue the broker now refuses.");
                refused.push(q.name.clone());
            }
        }
        state.queues.retain(|q| !refused.contains(&q.name));
        if self.settings.worker.mingle && !state.ready {
            self.mingle(&link, state).await;
        }
        state.generation += 1;
        state.acks.clear();
        state.delay_declared = false;
        state.native_declared = false;
        state.side = None;
        if queues::any_quorum(&self.settings.task, &self.settings.worker) {
            // As Celery's DelayedDelivery bootstep: Python clients send countdowns of quorum
            // queues through Celery's own ladder, which the worker declares. In the
            // background, on a channel of its own: 28 quorum queues take seconds on a
            // cluster, and consuming (after a failover too) must not wait for them.
            let channel = link.channel().await?;
            let queue_type = self
                .settings
                .broker
                .native_delayed_delivery_queue_type
                .clone();
            let all = self.settings.task_queues().unwrap_or_default();
            let (me, generation) = (myself.clone(), state.generation);
            tokio::spawn(async move {
                let done = channel
                    .declare_native_delayed_delivery(&queue_type, &all)
                    .await;
                let _ = me.cast(ConsumerMessage::NativeDeclared {
                    generation,
                    error: done.err().map(|e| e.to_string()),
                });
            });
        }
        let prefetch = Self::prefetch(state);
        link.set_prefetch(prefetch, state.global_qos).await?;
        let mut consumers = HashMap::new();
        if state.consuming {
            for q in &state.queues {
                let started = start_consumer(&link, myself, &self.hostname, state.generation, q);
                consumers.insert(q.name.clone(), started.await?);
            }
        }
        state.consumer_prefetch = prefetch;
        Ok(Link {
            broker: link,
            consumers,
            retired: Vec::new(),
        })
    }

    async fn add_queue(
        &self,
        myself: &ActorRef<ConsumerMessage>,
        state: &mut ConsumerState,
        queue: TaskQueue,
    ) -> Result<(), String> {
        if state.queues.iter().any(|q| q.name == queue.name) {
            info!(queue = %queue.name, "Already consuming from queue.");
            return Ok(());
        }
        let Some(link) = &mut state.link else {
            return Err("not connected to the broker now; try again once it is".to_owned());
        };
        link.broker
            .declare_on_own_channel(&queue)
            .await
            .map_err(|e| {
                warn!(queue = %queue.name, error = %e, "The broker refused the added queue.");
                e.to_string()
            })?;
        state.queues.push(queue.clone());
        state.delay_declared = false;
        if !state.consuming {
            return Ok(());
        }
        let started = start_consumer(
            &link.broker,
            myself,
            &self.hostname,
            state.generation,
            &queue,
        );
        match started.await {
            Ok(c) => {
                link.consumers.insert(queue.name.clone(), c);
                Ok(())
            }
            Err(e) if state.global_qos && e.kind() == ErrorKind::GlobalQosRefused => {
                // The broker closed the connection over channel-wide QoS on a quorum queue:
                // the reconnect consumes every queue, this one too, with per-consumer QoS.
                warn!(queue = %queue.name, error = %e, "The broker refuses channel-wide QoS for \
                    a quorum queue; using per-consumer QoS from now on (set [broker] qos = \
                    \"per-consumer\" to say so).");
                state.global_qos = false;
                Ok(())
            }
            Err(e) => {
                error!(queue = %queue.name, error = %e, "Cannot consume from the added queue.");
                state.queues.retain(|q| q.name != queue.name);
                Err(e.to_string())
            }
        }
    }

    fn prefetch(state: &ConsumerState) -> u16 {
        match state.base_prefetch {
            0 => 0,
            n => n.saturating_add(state.held),
        }
    }

    async fn on_stream_end(
        &self,
        myself: &ActorRef<ConsumerMessage>,
        state: &mut ConsumerState,
        generation: u64,
        queue: &str,
        tag: &str,
        error: Option<String>,
    ) {
        if generation != state.generation || state.closed {
            return;
        }
        // Ours: cancelled by cancel_consumer, or replaced by a consumer with a raised prefetch.
        let cancelled_here = !state.consuming
            || state.link.as_ref().is_some_and(|l| {
                l.consumers
                    .get(queue)
                    .is_none_or(|(t, _)| t.as_str() != tag)
            });
        if error.is_none() && cancelled_here {
            return; // our own basic.cancel
        }
        if error.is_none() && self.consume_again(myself, state, queue).await {
            return;
        }
        let why = error
            .as_deref()
            .unwrap_or("consumer cancelled by the broker");
        warn!(
            error = why,
            "Connection to the broker lost; reconnecting. Unacked messages return to the queue."
        );
        if state.frame_max.is_none() && amqp::kind_of_text(why) == ErrorKind::FrameTooLarge {
            warn!(
                frame_max = self.settings.broker.frame_max,
                "A message's header frame is larger than broker.frame_max; reconnecting with \
                 the broker's own frame size so that it can be received."
            );
            state.frame_max = Some(amqp::FRAME_MAX_RAISED);
        }
        let quick = state
            .connected_at
            .take()
            .is_some_and(|t| t.elapsed() < STABLE_CONNECTION);
        state.quick_drops = if quick { state.quick_drops + 1 } else { 0 };
        state.link = None;
        state.peers.metrics.broker_connected(false);
        state.acks.clear();
        state.reserve_in_pool(); // before Forget, which drops those of this generation
        let _ = state.peers.pool.cast(WorkMsg::Forget { generation }.into());
        let _ = state
            .peers
            .scheduler
            .cast(SchedulerMessage::Forget { generation });
        state.held = 0;
        if state.quick_drops >= 2 {
            let delay = broker::backoff(state.quick_drops - 1);
            warn!(
                "The connection was lost {} times in a row soon after it was made; next attempt in {:.0} s.",
                state.quick_drops,
                delay.as_secs_f64()
            );
            myself.send_after(delay, || ConsumerMessage::Connect { attempt: 1 });
        } else {
            let _ = myself.cast(ConsumerMessage::Connect { attempt: 1 });
        }
    }

    /// Mingle, as Celery's worker does before it consumes: asks the other workers (`hello`,
    /// with this node's revoked ids) for theirs and their clocks, and takes them over, so a
    /// revoke sent while this worker was down still applies. One second for replies; no
    /// reply is "all alone", a failure is logged and the start goes on.
    async fn mingle(&self, link: &amqp::Link, state: &ConsumerState) {
        use crate::protocol::pidbox::revoked_in_hello;
        info!("mingle: searching for neighbors");
        let ours = ractor::call!(state.peers.revoke, RevokeMessage::GetRevoked).unwrap_or_default();
        let mut body = serde_json::Map::new();
        body.insert("method".into(), json!("hello"));
        body.insert(
            "arguments".into(),
            json!({"from_node": self.hostname, "revoked": ours}),
        );
        for key in ["destination", "pattern", "matcher"] {
            body.insert(key.into(), serde_json::Value::Null);
        }
        let mut replies = Vec::new();
        let asked = async {
            let ch = link.channel().await?;
            let timeout = Duration::from_secs(1);
            let done = ch
                .pidbox_request(body, true, timeout, None, &mut |node, value| {
                    if node != self.hostname && value.is_object() {
                        replies.push((node.to_owned(), value.clone()));
                    }
                })
                .await;
            ch.close("mingled").await;
            done
        };
        if let Err(e) = asked.await {
            warn!(error = %e, "mingle: cannot ask the other workers; starting without them.");
            return;
        }
        if replies.is_empty() {
            info!("mingle: all alone");
            return;
        }
        let mut ids = Vec::new();
        for (node, reply) in &replies {
            let theirs = revoked_in_hello(reply);
            debug!(node = %node, revoked = theirs.len(), "mingle: sync with {node}");
            ids.extend(theirs);
            if let Some(clock) = reply.get("clock").and_then(serde_json::Value::as_u64) {
                state.peers.clock.adjust(clock);
            }
        }
        ids.sort();
        ids.dedup();
        let count = ids.len();
        if count > 0 {
            let stored = ractor::call!(state.peers.revoke, |reply| RevokeMessage::Revoke {
                ids,
                terminate: None,
                reply: Some(reply),
            });
            if !matches!(stored, Ok(Ok(()))) {
                warn!(
                    "mingle: the revoked ids from the other workers are in force but could not be stored."
                );
            }
        }
        info!(revoked = count, "mingle: sync with {} nodes", replies.len());
    }

    /// Logs the outcome of declaring Celery's native delayed delivery; once it worked, it
    /// is declared on the failover list's other URLs too. A failure is logged and the worker
    /// carries on, as Celery's does (its own ladder or the worker then holds the delays).
    fn on_native_declared(&self, error: Option<String>) {
        match error {
            None => {
                info!("Celery's native delayed delivery is declared (celery_delayed_0…27).");
                amqp::declare_native_on_alternates(
                    &self.settings.broker,
                    &self.hostname,
                    &self.settings.broker.native_delayed_delivery_queue_type,
                    self.settings.task_queues().unwrap_or_default(),
                )
            }
            Some(e) => error!(error = %e, "Cannot declare Celery's native delayed delivery; \
                countdowns of quorum queues sent by Python clients will not arrive."),
        }
    }

    /// After the broker cancelled one consumer (its queue deleted; on RabbitMQ 4.x also a
    /// quorum queue's consumer timeout or a lost leader) on a channel that is still open:
    /// declares the queue again (on a channel of its own, so a refusal closes nothing else)
    /// and consumes it under a new tag. What was delivered on the channel stays ackable, so
    /// the tasks running meanwhile settle as usual — a reconnect would hand them back and run
    /// them twice. False (the caller reconnects) if that could not be done.
    async fn consume_again(
        &self,
        myself: &ActorRef<ConsumerMessage>,
        state: &mut ConsumerState,
        queue: &str,
    ) -> bool {
        let Some(q) = state.queues.iter().find(|q| q.name == queue).cloned() else {
            return false;
        };
        let Some(link) = &mut state.link else {
            return false;
        };
        if !link.broker.is_open() {
            return false;
        }
        warn!(queue = %queue, "The broker cancelled the consumer (consumer cancelled by the \
            broker); declaring the queue and consuming it again.");
        if let Err(e) = link.broker.declare_on_own_channel(&q).await {
            warn!(queue = %queue, error = %e, "Cannot declare the queue again; reconnecting.");
            return false;
        }
        state.restarts += 1;
        let tag = consumer_tag(
            &self.hostname,
            state.generation,
            &format!("{queue}~{}", state.restarts),
        );
        match consume_with_tag(&link.broker, myself, state.generation, &q, tag).await {
            Ok(entry) => {
                if let Some((_, old)) = link.consumers.insert(q.name.clone(), entry) {
                    link.retired.push(old);
                }
                link.retired.retain(|t| !t.0.is_finished());
                true
            }
            Err(e) => {
                warn!(queue = %queue, error = %e, "Cannot consume the queue again; reconnecting.");
                false
            }
        }
    }

    async fn on_delivery(&self, state: &mut ConsumerState, d: Delivery) {
        let delivery = DeliveryRef {
            tag: d.tag,
            generation: state.generation,
        };
        state.acks.delivered(d.tag);
        let max = self.settings.worker.max_message_size;
        let Delivery { tag, info, message } = d;
        let decoded = match &state.peers.python {
            // Rust tasks: read from the client's header table, only what the request keeps
            // converted to JSON.
            None => message.decode_rust(info, max),
            Some(py) => {
                let raw = match message.raw(info) {
                    Ok(raw) => raw,
                    Err(e) => {
                        error!(
                            delivery_tag = tag,
                            "Received invalid task message: {e}. Rejected."
                        );
                        state.reject(delivery, false);
                        return;
                    }
                };
                decode_keeping_body(raw, max, &py.accept).map(|(mut r, body)| {
                    let properties = message.properties();
                    let m = crate::protocol::python::python_message(&r, body, properties);
                    r.python = Some(Box::new(m));
                    r
                })
            }
        };
        let request = match decoded {
            Ok(r) => r,
            Err(e) => {
                if e == crate::error::ProtocolError::UnknownMessage {
                    warn!(
                        delivery_tag = tag,
                        "Received and deleted unknown message. Wrong destination?!? ({e})"
                    );
                } else {
                    error!(
                        delivery_tag = tag,
                        "Received invalid task message: {e}. Rejected."
                    );
                }
                state.peers.metrics.malformed();
                state.reject(delivery, false);
                return;
            }
        };
        let registered = self.registered.contains(&request.task);
        // Rare awaits are boxed: this future is made for every delivery, and its size (what
        // the actor runtime moves around per message) is its largest state's.
        let revoked = registered && Box::pin(state.is_revoked(&request)).await;
        let now = OffsetDateTime::now_utc();
        let decision = decide(&request, registered, revoked, now);
        let mut reserved = Box::new(Reserved {
            request: Arc::new(request),
            delivery,
            was_scheduled: false,
            holds_prefetch: false,
            received: std::time::Instant::now(),
        });
        match decision {
            Decision::NotRegistered => {
                let name = &reserved.request.task;
                error!(task_id = %reserved.request.id,
                    "Received unregistered task of type '{name}'. The message has been rejected.");
                state.event(|| event::task_unregistered(&reserved.request.id, name));
                state.peers.metrics.unregistered();
                if let Some(py) = state.peers.python.clone() {
                    let kind = ReportKind::NotRegistered;
                    Box::pin(self.report(state, &py, &reserved, kind, Settle::Reject)).await;
                    return;
                }
                let exc =
                    ExceptionInfo::new("NotRegistered", "celery.exceptions", vec![json!(name)]);
                let st = ResultState::Failure {
                    exc,
                    traceback: None,
                };
                let ignore = self.registered_ignore(&reserved.request.task);
                Box::pin(state.publish_state(&reserved, &st, ignore, true)).await;
                state.reject(delivery, false);
            }
            Decision::Revoke(reason) => {
                info!(task_id = %reserved.request.id, "Discarding revoked task: {}[{}] ({reason}).",
                    reserved.request.display_name(), reserved.request.id);
                if let Some(py) = state.peers.python.clone() {
                    let kind = match reason {
                        RevokeReason::Expired => ReportKind::Expired,
                        RevokeReason::Revoked => ReportKind::Revoked,
                    };
                    Box::pin(self.report(state, &py, &reserved, kind, Settle::Ack)).await;
                    return;
                }
                state.event(|| {
                    event::task_revoked(&reserved.request.id, false, None, reason.expired())
                });
                let st = ResultState::Revoked(reason.as_str().to_owned());
                let ignore = self.registered_ignore(&reserved.request.task);
                Box::pin(state.publish_state(&reserved, &st, ignore, false)).await;
                state.ack(delivery);
            }
            Decision::Schedule(eta) => {
                state.peers.metrics.task(&reserved.request.task, "received");
                state.event(|| event::task_received(&reserved.request));
                info!(task_id = %reserved.request.id, "Task {}[{}] received (eta {})",
                    reserved.request.display_name(), reserved.request.id,
                    crate::protocol::time::format_iso(eta));
                if let Some(seconds) = broker_delay(eta, now, self.settings.worker.eta_hold_max)
                    && let Some(ladder) = Box::pin(self.delay_in_broker(
                        state,
                        &message,
                        &reserved.request.delivery_info,
                        seconds,
                    ))
                    .await
                {
                    info!(task_id = %reserved.request.id, exchange = %ladder,
                        "Task {}[{}] waits in the broker for {seconds}s (beyond eta_hold_max).",
                        reserved.request.display_name(), reserved.request.id);
                    state.ack(delivery);
                    return;
                }
                state.held = state.held.saturating_add(1);
                state.prefetch_dirty = true;
                reserved.holds_prefetch = true;
                let _ = state
                    .peers
                    .scheduler
                    .cast(SchedulerMessage::Schedule(reserved));
            }
            Decision::Execute => {
                state.peers.metrics.task(&reserved.request.task, "received");
                state.event(|| event::task_received(&reserved.request));
                info!(task_id = %reserved.request.id, "Task {}[{}] received",
                    reserved.request.display_name(), reserved.request.id);
                state.to_pool.push(reserved);
            }
        }
    }

    /// Moves a far-future ETA message into a broker-side delay ladder (then the caller acks
    /// the original): Celery's, where its queue is reached through a non-direct exchange and
    /// the native topology is declared (as a Python client would have sent it), else
    /// celeryd's own, which routes by queue name. Returns false, after logging, if that
    /// failed: the task is then held. Returns the exchange it went to.
    async fn delay_in_broker(
        &self,
        state: &mut ConsumerState,
        d: &broker::Message,
        info: &crate::protocol::DeliveryInfo,
        seconds: u64,
    ) -> Option<String> {
        let queue = info.queue.as_str();
        let q = state.queues.iter().find(|q| q.name == queue);
        let native = route::route(
            route::retry_target(info, q),
            q,
            seconds as f64,
            state.native_declared,
        );
        let (exchange, key) = match native {
            Route::Native {
                exchange,
                routing_key,
            } => (exchange, routing_key),
            Route::Now { .. } if !delay::can_delay(queue) => {
                return None; // its name makes the ladder's routing key too long: held instead
            }
            Route::Now { .. } => (
                delay::level_name(delay::LEVELS - 1),
                delay::routing_key(seconds, queue),
            ),
        };
        let ch = state.side_channel().await?;
        if !state.delay_declared && exchange.starts_with("celeryd.") {
            let names: Vec<String> = state.queues.iter().map(|q| q.name.clone()).collect();
            if let Err(e) = ch.declare_delay_topology(&names).await {
                warn!(error = %e, "Cannot declare the delay topology; holding ETA tasks instead.");
                state.side = None;
                return None;
            }
            state.delay_declared = true;
        }
        let sent = ch.publish_delayed(d, &exchange, &key).await;
        match sent {
            Ok(()) => Some(exchange),
            Err(e) => {
                warn!(error = %e, exchange = %exchange,
                    "Cannot move an ETA task to the broker; holding it instead.");
                state.side = None;
                state.delay_declared = false;
                None
            }
        }
    }

    /// Sends the prefetch count for the held ETA tasks. Changes are only marked
    /// (`prefetch_dirty`) where they happen and applied by [`ConsumerMessage::ApplyPrefetch`],
    /// queued behind the deliveries already in the mailbox, so a burst of held ETA tasks costs
    /// one `basic.qos` round trip rather than one each.
    ///
    /// With per-consumer QoS a new limit only holds for consumers started after it, so when
    /// held ETA tasks need a higher one (or all of them are gone) each queue's consumer is
    /// replaced: `basic.cancel` (what was delivered stays unacked and is still processed:
    /// the old stream drains), then `basic.consume` under a new tag.
    async fn apply_prefetch(&self, myself: &ActorRef<ConsumerMessage>, state: &mut ConsumerState) {
        state.prefetch_dirty = false;
        let count = Self::prefetch(state);
        let Some(link) = &mut state.link else {
            return;
        };
        if let Err(e) = link.broker.set_prefetch(count, state.global_qos).await {
            warn!(error = %e, "Cannot change the prefetch count.");
            return;
        }
        if state.global_qos
            || !state.consuming
            || !reconsume_for(state.consumer_prefetch, count, state.base_prefetch)
        {
            return;
        }
        state.consumer_prefetch = count;
        state.restarts += 1;
        link.retired.retain(|t| !t.0.is_finished());
        for q in &state.queues {
            let Some((old, _)) = link.consumers.get(&q.name) else {
                continue;
            };
            if let Err(e) = link.broker.cancel(old).await {
                warn!(queue = %q.name, error = %e, "Cannot replace the consumer for a new prefetch count.");
                continue;
            }
            let tag = consumer_tag(
                &self.hostname,
                state.generation,
                &format!("{}~{}", q.name, state.restarts),
            );
            match consume_with_tag(&link.broker, myself, state.generation, q, tag).await {
                // The old entry's stream task keeps running until its stream drains.
                Ok((tag, task)) => {
                    if let Some((_, old_task)) = link.consumers.insert(q.name.clone(), (tag, task))
                    {
                        link.retired.push(old_task);
                    }
                }
                Err(e) => {
                    warn!(queue = %q.name, error = %e, "Cannot consume again for a new prefetch count.")
                }
            }
        }
    }

    async fn on_started(&self, state: &mut ConsumerState, info: StartedInfo) {
        if info.holds_prefetch {
            state.held = state.held.saturating_sub(1);
            state.prefetch_dirty = true;
        }
        let req = &info.request;
        if !self.acks_late(state, &req.task) {
            state.ack(info.delivery);
        }
        state.event(|| event::task_started(&req.id));
        if state.peers.python.is_some() {
            return; // Celery's tracer in the child stores STARTED (track_started)
        }
        let keeps = state
            .results
            .keeps(req, self.registered_ignore(&req.task), false);
        if self.settings.task.track_started && keeps {
            let st = ResultState::Started {
                pid: info.pid,
                hostname: self.hostname.clone(),
            };
            state.store_result(req, &st).await;
        }
    }

    async fn on_finished(
        &self,
        state: &mut ConsumerState,
        reserved: Reserved,
        outcome: TaskOutcome,
        runtime: Duration,
    ) {
        if let Some(py) = state.peers.python.clone() {
            return Box::pin(self.on_python_finished(state, py, reserved, outcome, runtime)).await;
        }
        let task = &self.settings.task;
        let req = &reserved.request;
        let (name, id) = (req.display_name(), &req.id);
        let secs = runtime.as_secs_f64();
        let ignore = self.registered_ignore(&req.task);
        let metrics = &state.peers.metrics;
        let counted = match &outcome {
            TaskOutcome::Success(_) => "succeeded",
            TaskOutcome::WorkerLost(_) if task.acks_late && task.reject_on_worker_lost => {
                "rejected"
            }
            TaskOutcome::Failure { .. }
            | TaskOutcome::TimeLimitExceeded(_)
            | TaskOutcome::WorkerLost(_) => "failed",
            TaskOutcome::Retry { .. } => "retried",
            TaskOutcome::Revoked(_) | TaskOutcome::Terminated(_) => "revoked",
            TaskOutcome::Python(_) => "failed",
        };
        metrics.task(&req.task, counted);
        if !matches!(outcome, TaskOutcome::Revoked(_)) {
            // Terminated tasks ran: their run time counts.
            metrics.runtime(&req.task, secs);
        }
        match outcome {
            TaskOutcome::Success(value) => {
                // The repr is only built for the log line and the event, when they are on.
                let events = state.peers.task_events.enabled();
                if events || tracing::enabled!(tracing::Level::INFO) {
                    let repr = truncate(py_repr(&value), 1024);
                    info!(task_id = %id, runtime = secs, "Task {name}[{id}] succeeded in {secs:.6}s: {repr}");
                    state.event(|| event::task_succeeded(id, &repr, secs));
                }
                // What is not done for every task is boxed: this future is made for each
                // finished task, and the actor runtime moves it whole.
                let st = ResultState::Success(value);
                if state.results.keeps(&reserved.request, ignore, false) {
                    Box::pin(state.store_result(&reserved.request, &st)).await;
                }
                if let (false, ResultState::Success(value)) =
                    (reserved.request.embed.is_null(), &st)
                {
                    Box::pin(state.after_success(&reserved.request, value)).await;
                }
                if task.acks_late {
                    state.ack(reserved.delivery);
                }
            }
            other => Box::pin(self.finished_otherwise(state, reserved, other, ignore, secs)).await,
        }
    }

    /// [`Consumer::on_finished`] of a task that did not succeed.
    async fn finished_otherwise(
        &self,
        state: &mut ConsumerState,
        reserved: Reserved,
        outcome: TaskOutcome,
        ignore: Option<bool>,
        secs: f64,
    ) {
        let task = &self.settings.task;
        let req = &reserved.request;
        let (name, id) = (req.display_name(), &req.id);
        match outcome {
            TaskOutcome::Success(_) => unreachable!("on_finished handles it"),
            TaskOutcome::Failure { exc, traceback } => {
                error!(task_id = %id, runtime = secs, "Task {name}[{id}] raised unexpected: {}", exc.repr());
                self.fail(state, &reserved, exc, traceback, false).await;
            }
            TaskOutcome::Retry {
                exc,
                traceback,
                countdown,
            } => {
                let now = OffsetDateTime::now_utc();
                let again = crate::protocol::encode::retry_message(req, countdown, now);
                // Where it was sent, never back into a ladder; through Celery's ladder where a
                // Python client's countdown would go.
                let info = &req.delivery_info;
                let q = state.queues.iter().find(|q| q.name == info.queue);
                let target = route::retry_target(info, q);
                let (exchange, key) =
                    route::route(target, q, countdown, state.native_declared).into_parts();
                let sent = match state.side_channel().await {
                    Some(ch) => {
                        let sent = ch
                            .publish_task_to(&exchange, &key, &again)
                            .await
                            .map_err(|e| e.to_string());
                        if sent.is_err() {
                            state.side = None;
                        }
                        sent
                    }
                    None => Err("not connected to the broker".to_owned()),
                };
                let tb = traceback.clone().unwrap_or_default();
                match sent {
                    Ok(()) => {
                        info!(task_id = %id, exchange = %exchange, routing_key = %key,
                            "Task {name}[{id}] retry: Retry in {countdown}s: {}", exc.repr());
                        state.event(|| event::task_retried(id, &exc.repr(), &tb));
                        let st = ResultState::Retry { exc, traceback };
                        state.publish_state(&reserved, &st, ignore, false).await;
                        state.ack(reserved.delivery);
                    }
                    Err(e) => {
                        error!(task_id = %id, error = %e,
                            "Task {name}[{id}] could not be sent for retry; it fails: {}", exc.repr());
                        self.fail(state, &reserved, exc, traceback, false).await;
                    }
                }
            }
            TaskOutcome::WorkerLost(how) => {
                if task.acks_late && task.reject_on_worker_lost {
                    error!(task_id = %id, "Task {name}[{id}] lost its child process ({how}); requeued.");
                    state.event(|| event::task_rejected(id, true));
                    state.reject(reserved.delivery, true);
                    return;
                }
                let msg = format!("Worker exited prematurely: {how}.");
                error!(task_id = %id, "Task handler raised error: WorkerLostError('{msg}') for {name}[{id}]");
                let exc =
                    ExceptionInfo::new("WorkerLostError", "billiard.exceptions", vec![json!(msg)]);
                self.fail(state, &reserved, exc, None, true).await;
            }
            TaskOutcome::TimeLimitExceeded(seconds) => {
                let exc = ExceptionInfo::new(
                    "TimeLimitExceeded",
                    "billiard.exceptions",
                    vec![json!(seconds)],
                );
                error!(task_id = %id, "Task {name}[{id}] raised unexpected: {}", exc.repr());
                self.fail(state, &reserved, exc, None, false).await;
            }
            TaskOutcome::Python(done) => {
                // Only a Python child says this, and only a worker with the helper has them.
                error!(task_id = %id, state = %done.state, "A Python outcome without Python tasks; acked.");
                state.ack(reserved.delivery);
            }
            TaskOutcome::Revoked(_) | TaskOutcome::Terminated(_) => {
                let (reason, signum) = match outcome {
                    TaskOutcome::Terminated(signum) => ("terminated", Some(signum)),
                    TaskOutcome::Revoked(reason) => (reason.as_str(), None),
                    _ => unreachable!("matched above"),
                };
                info!(task_id = %id, "Discarding revoked task: {name}[{id}] ({reason}).");
                state.event(|| {
                    event::task_revoked(id, signum.is_some(), signum, reason == "expired")
                });
                // Only a request that never started still holds its bump (a terminated one
                // released it when it started).
                if reserved.holds_prefetch && signum.is_none() {
                    state.held = state.held.saturating_sub(1);
                    state.prefetch_dirty = true;
                }
                state.after_revoked(&reserved.request, reason);
                state
                    .publish_state(
                        &reserved,
                        &ResultState::Revoked(reason.to_owned()),
                        ignore,
                        false,
                    )
                    .await;
                state.ack(reserved.delivery);
            }
        }
    }
}

impl Consumer {
    /// Reports a failed task: `task-failed`, a FAILURE result, and with acks_late the delivery
    /// settled: acked when `ack_anyway` (a lost child), else as `acks_on_failure_or_timeout`
    /// says.
    async fn fail(
        &self,
        state: &mut ConsumerState,
        reserved: &Reserved,
        exc: ExceptionInfo,
        traceback: Option<String>,
        ack_anyway: bool,
    ) {
        let task = &self.settings.task;
        let id = &reserved.request.id;
        state.event(|| {
            event::task_failed(id, &exc.repr(), traceback.as_deref().unwrap_or_default())
        });
        let ignore = self.registered_ignore(&reserved.request.task);
        state.after_failure(&reserved.request, &exc).await;
        let st = ResultState::Failure { exc, traceback };
        state.publish_state(reserved, &st, ignore, true).await;
        if task.acks_late {
            let ack = ack_anyway || task.acks_on_failure_or_timeout;
            state.settle(reserved.delivery, ack);
        }
    }
}

/// Whole seconds to leave an ETA message waiting in the broker: when the ETA is further off
/// than `hold_max` seconds (0 = always hold in the worker). The message comes back up to a
/// second early and is then held for the rest.
pub fn broker_delay(eta: OffsetDateTime, now: OffsetDateTime, hold_max: f64) -> Option<u64> {
    let wait = (eta - now).as_seconds_f64();
    (hold_max > 0.0 && wait > hold_max).then(|| wait.floor() as u64)
}

/// Consumes `queue` and forwards its deliveries to the actor.
async fn start_consumer(
    link: &amqp::Link,
    myself: &ActorRef<ConsumerMessage>,
    hostname: &str,
    generation: u64,
    queue: &TaskQueue,
) -> Result<(String, AbortOnDrop), BrokerError> {
    let tag = consumer_tag(hostname, generation, &queue.name);
    consume_with_tag(link, myself, generation, queue, tag).await
}

/// [`start_consumer`] under a given consumer tag. Deliveries that arrived together go to
/// the actor as one [`ConsumerMessage::Deliveries`], so a burst released by one ack costs one
/// mailbox round instead of one each.
async fn consume_with_tag(
    link: &amqp::Link,
    myself: &ActorRef<ConsumerMessage>,
    generation: u64,
    queue: &TaskQueue,
    tag: String,
) -> Result<(String, AbortOnDrop), BrokerError> {
    let me = myself.clone();
    let name: Arc<str> = queue.name.as_str().into();
    let t: Arc<str> = tag.as_str().into();
    let sink = move |event| match event {
        StreamEvent::Deliveries(deliveries) => me
            .cast(ConsumerMessage::Deliveries {
                generation,
                deliveries,
            })
            .is_ok(),
        StreamEvent::Ended(error) => {
            let _ = me.cast(ConsumerMessage::StreamEnded {
                generation,
                queue: name.clone(),
                tag: t.clone(),
                error,
            });
            false
        }
    };
    let task = link.consume(&queue.name, &tag, sink).await?;
    info!(queue = %queue.name, "Consuming from queue.");
    Ok((tag, task))
}

impl ConsumerState {
    /// The side channel (see the `side` field), opened in confirm mode when there is none or
    /// it was closed; `None` when not connected or the broker refused it.
    pub(super) async fn side_channel(&mut self) -> Option<Channel> {
        if let Some(ch) = &self.side
            && ch.is_open()
        {
            return Some(ch.clone());
        }
        let link = self.link.as_ref()?;
        match link.broker.confirm_channel().await {
            Ok(ch) => {
                self.side = Some(ch.clone());
                self.delay_declared = false;
                Some(ch)
            }
            Err(e) => {
                warn!(error = %e, "Cannot open a channel to publish on.");
                None
            }
        }
    }

    /// Sends a task event, built only when task events are on.
    fn event(&self, build: impl FnOnce() -> event::Event) {
        if self.peers.task_events.enabled() {
            let _ = self.peers.events.cast(EventsMessage::Send(build()));
        }
    }

    async fn is_revoked(&self, request: &crate::protocol::TaskRequest) -> bool {
        if self.peers.revoked.is_zero() {
            return false;
        }
        let id = request.id.clone();
        let stamps = crate::revoke::stamps::request_stamps(request);
        let ask = |reply| RevokeMessage::IsRevoked { id, stamps, reply };
        ractor::call_t!(self.peers.revoke, ask, 5000).unwrap_or(false)
    }

    /// Acks `d` with the others ready by the time the mailbox's messages so far are taken
    /// ([`ConsumerMessage::FlushAcks`]).
    fn ack(&mut self, d: DeliveryRef) {
        if d.generation != self.generation || !self.acks.ready(d.tag) {
            return;
        }
        if !self.acks_flush_queued {
            self.acks_flush_queued = true;
            let _ = self.myself.cast(ConsumerMessage::FlushAcks);
        }
    }

    /// Hands the pool the requests gathered while handling this message: deliveries that
    /// arrived together go in one [`WorkMsg::ReserveAll`].
    fn reserve_in_pool(&mut self) {
        let msg = match self.to_pool.len() {
            0 => return,
            1 => self.to_pool.pop().map(|r| WorkMsg::Reserve(r).into()),
            _ => Some(WorkMsg::ReserveAll(std::mem::take(&mut self.to_pool)).into()),
        };
        if let Some(msg) = msg {
            let _ = self.peers.pool.cast(msg);
        }
    }

    /// Sends the acks that are ready, as few frames as they allow.
    fn flush_acks(&mut self) {
        self.acks_flush_queued = false;
        let frames = self.acks.take();
        if let Some(link) = &self.link {
            for (tag, multiple) in frames {
                link.broker.ack(tag, multiple);
            }
        }
    }

    fn reject(&mut self, d: DeliveryRef, requeue: bool) {
        if d.generation != self.generation || !self.acks.settled(d.tag) {
            return;
        }
        if let Some(link) = &self.link {
            link.broker.reject(d.tag, requeue);
        }
    }

    /// Ack, or requeue when `ack` is false.
    fn settle(&mut self, d: DeliveryRef, ack: bool) {
        if ack {
            self.ack(d)
        } else {
            self.reject(d, true)
        }
    }

    pub(super) async fn publish(&mut self, queue: String, correlation_id: String, body: Vec<u8>) {
        let result = PendingResult {
            queue,
            correlation_id,
            body,
        };
        if self.link.is_some() && !self.pending_results.is_empty() {
            // Older results that failed first (rare: the connection usually went with them).
            self.flush_pending_results().await;
        }
        let failed = match &self.link {
            Some(link) if self.pending_results.is_empty() => {
                if self.outbox.is_full() {
                    let failed = self.outbox.settle().await;
                    self.pending_results.extend(failed);
                }
                link.broker.publish_result(&mut self.outbox, result)
            }
            _ => {
                // Keep results in order: what lapin still holds goes first.
                self.absorb_outbox().await;
                Some(result)
            }
        };
        self.pending_results.extend(failed);
    }

    /// Moves the publishes lapin reports failed to `pending_results` (checked without
    /// waiting; called after every message the actor handles).
    fn reap_outbox(&mut self) {
        let failed = self.outbox.reap();
        self.pending_results.extend(failed);
    }

    /// Waits until lapin is done with every publish it holds, keeping the failed ones to send
    /// again.
    async fn absorb_outbox(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let failed = self.outbox.settle().await;
        self.pending_results.extend(failed);
    }

    async fn flush_pending_results(&mut self) {
        self.absorb_outbox().await;
        while let Some(result) = self.pending_results.pop_front() {
            let Some(link) = &self.link else {
                self.pending_results.push_front(result);
                return;
            };
            let sent = link
                .broker
                .main()
                .publish_result(&result.queue, &result.correlation_id, &result.body)
                .await;
            if sent.is_err() {
                self.pending_results.push_front(result);
                return;
            }
        }
    }

    async fn stop_consuming(&mut self) {
        self.consuming = false;
        if let Some(link) = &self.link {
            for (tag, _) in link.consumers.values() {
                if let Err(e) = link.broker.cancel(tag).await {
                    debug!(error = %e, "basic.cancel failed");
                }
            }
        }
    }

    async fn close(&mut self) {
        self.flush_acks();
        self.closed = true;
        self.absorb_outbox().await;
        if let Some(link) = self.link.take() {
            link.broker.close("worker shutdown").await;
        }
        if !self.pending_results.is_empty() {
            error!(
                count = self.pending_results.len(),
                "Results not published before shutdown."
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_etas_wait_in_the_broker() {
        let now = OffsetDateTime::now_utc();
        let later = |s: f64| now + time::Duration::seconds_f64(s);
        assert_eq!(broker_delay(later(5.0), now, 600.0), None);
        assert_eq!(broker_delay(later(3600.5), now, 600.0), Some(3600));
        assert_eq!(
            broker_delay(later(3600.0), now, 0.0),
            None,
            "0 = always hold"
        );
    }

    #[test]
    fn per_consumer_qos_replaces_consumers_only_to_raise_or_to_return_to_the_base() {
        assert!(reconsume_for(8, 9, 8), "more is wanted");
        assert!(
            !reconsume_for(12, 10, 8),
            "less, but tasks still held: keep"
        );
        assert!(reconsume_for(12, 8, 8), "back to the base");
        assert!(!reconsume_for(8, 8, 8));
        assert!(reconsume_for(8, 0, 8), "unlimited");
        assert!(!reconsume_for(0, 0, 0));
    }
}
