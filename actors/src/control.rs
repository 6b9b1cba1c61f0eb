//! Remote control: consumes this node's pidbox queue (`<nodename>.celery.pidbox`, bound to the
//! `celery.pidbox` fanout exchange) and answers Celery's control commands. Each command is
//! routed as an actor message to the actor that owns the state (`revoke` -> RevokeRegistry,
//! `rate_limit`/`time_limit` -> Pool, `shutdown` -> Supervisor); replies go to the request's
//! `reply_to` with its `ticket`. Malformed requests are logged and ignored, never a crash.
//!
//! Supervised by [`Supervisor`](crate::supervisor::Supervisor), started last. Owns its own AMQP
//! connection (the pidbox queue is exclusive to it); a lost connection is re-established with
//! backoff. A node name already in use on the broker (the exclusive queue is locked) stops the
//! worker at start-up.
//!
//! A request is parsed once into a `Command` (`command.rs`: names and arguments, pure); its
//! effects are in one file per family (`inspect.rs`, `revoke.rs`, `limits.rs`, `queues.rs`,
//! `pool.rs`, `worker.rs`); the AMQP plumbing is all in `pidbox.rs`. The application's own
//! commands ([`custom`]) come before the built-ins.

mod command;
pub mod custom;
pub mod info;
mod inspect;
mod limits;
mod pidbox;
mod pool;
#[cfg(test)]
mod proptests;
mod queues;
pub mod request;
mod revoke;
mod worker;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::{Map, Value, json};
use tracing::{debug, warn};

use self::command::Command;
use self::custom::{ControlCommands, ControlHandle};
use self::info::TaskAttrs;
use self::request::{ControlRequest, ok};
use crate::consumer::ConsumerMessage;
use crate::pool::PoolMessage;
use crate::revoke::RevokeMessage;
use crate::settings::Settings;

/// The fanout exchange control requests are published to.
pub use crate::protocol::pidbox::PIDBOX_EXCHANGE;

/// The control actor's configuration.
#[derive(Debug)]
pub struct Control {
    settings: Arc<Settings>,
    nodename: String,
    registered: BTreeMap<String, TaskAttrs>,
    commands: ControlCommands,
    started: std::time::Instant,
    python: Option<PythonInfo>,
}

/// With Python tasks: what `inspect conf` and `inspect report` answer, from the app (the
/// helper's `ready` frame).
#[derive(Debug, Clone, Default)]
pub struct PythonInfo {
    /// `app.conf.table()` as Celery's `conf` command gives it (the settings the app changed).
    pub conf: Map<String, Value>,
    /// The same with Celery's defaults (`conf with_defaults=True`).
    pub conf_defaults: Map<String, Value>,
    /// `app.bugreport()`.
    pub report: String,
}

impl Control {
    /// A control actor for node `nodename`, whose worker runs the `registered` tasks (with the
    /// attributes `inspect registered` shows) and answers the application's `commands` too.
    pub fn new(
        settings: Arc<Settings>,
        nodename: String,
        registered: BTreeMap<String, TaskAttrs>,
        commands: ControlCommands,
    ) -> Self {
        Control {
            settings,
            nodename,
            registered,
            commands,
            started: std::time::Instant::now(),
            python: None,
        }
    }

    /// Answers `conf` and `report` for a Python app.
    pub fn with_python(mut self, info: PythonInfo) -> Self {
        self.python = Some(info);
        self
    }
}

/// The actors control commands are routed to.
#[derive(Debug, Clone)]
pub struct ControlPeers {
    /// For `shutdown`.
    pub supervisor: ractor::DerivedActorRef<crate::shutdown::ShutdownMode>,
    /// For `revoke`, `terminate`, `revoked`.
    pub revoke: ActorRef<RevokeMessage>,
    /// For `rate_limit`, `time_limit`, `active`, `reserved`, `stats`.
    pub pool: ActorRef<PoolMessage>,
    /// For `scheduled`.
    pub scheduler: ActorRef<crate::scheduler::SchedulerMessage>,
    /// For `heartbeat`.
    pub events: ActorRef<crate::events::EventsMessage>,
    /// For `enable_events`, `disable_events`.
    pub task_events: crate::events::TaskEvents,
    /// The worker's Lamport clock.
    pub clock: crate::clock::Clock,
    /// With Python tasks: the helper, which marks remote-revoked tasks REVOKED in the app's
    /// result backend, as Celery's worker does.
    pub helper: Option<ActorRef<crate::helper::HelperMessage>>,
    /// With `-B`: the periodic task scheduler (`beat_schedule`, `stats.beat`).
    pub beat: Option<ActorRef<crate::beat::BeatMessage>>,
}

/// Messages to the control actor.
#[derive(Debug)]
pub enum ControlMessage {
    /// (Re)connect; sent to itself.
    Connect {
        /// Attempts so far.
        attempt: u32,
    },
    /// A request arrived (sent by its own stream task).
    RequestReceived {
        /// Connection generation.
        generation: u64,
        /// Application headers (clock, expires).
        clock: Option<u64>,
        /// The body.
        body: Vec<u8>,
    },
    /// The consumer, for `add_consumer`, `cancel_consumer` and `active_queues` (sent by the
    /// supervisor once it runs).
    SetConsumer(ActorRef<ConsumerMessage>),
    /// The request stream ended.
    StreamEnded {
        /// Connection generation.
        generation: u64,
    },
}

/// The control actor's state.
pub struct ControlState {
    peers: ControlPeers,
    consumer: Option<ActorRef<ConsumerMessage>>,
    /// Task attributes as `registered` shows them (changed by `rate_limit`/`time_limit`).
    tasks: BTreeMap<String, TaskAttrs>,
    link: Option<pidbox::Link>,
    generation: u64,
    reply_exchanges: HashSet<String>,
    /// Replies go out on their own channel: a request naming a reply exchange the broker
    /// refuses closes that channel, never the one the pidbox is consumed on. Re-opened on use.
    reply_channel: Option<pidbox::ReplyChannel>,
}

impl std::fmt::Debug for ControlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlState")
            .field("connected", &self.link.is_some())
            .finish()
    }
}

impl Actor for Control {
    type Msg = ControlMessage;
    type State = ControlState;
    type Arguments = ControlPeers;

    /// Connects and declares the pidbox queue before the worker reports ready: a node name
    /// already in use is a start-up error.
    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        peers: ControlPeers,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = ControlState {
            peers,
            consumer: None,
            tasks: self.registered.clone(),
            link: None,
            generation: 0,
            reply_exchanges: HashSet::new(),
            reply_channel: None,
        };
        self.connect_first(&myself, &mut state).await?;
        Ok(state)
    }

    /// Per-request problems are answered or logged here; nothing a client sends stops it.
    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ControlMessage::Connect { attempt } => self.reconnect(&myself, state, attempt).await,
            ControlMessage::RequestReceived {
                generation,
                clock,
                body,
            } => {
                if generation == state.generation {
                    self.on_request(state, clock, &body).await;
                }
            }
            ControlMessage::SetConsumer(c) => state.consumer = Some(c),
            ControlMessage::StreamEnded { generation } => {
                pidbox::stream_ended(&myself, state, generation)
            }
        }
        Ok(())
    }
}

impl Control {
    async fn on_request(&self, state: &mut ControlState, clock: Option<u64>, body: &[u8]) {
        state.peers.clock.adjust(clock.unwrap_or(0));
        let req = match request::decode(body) {
            Ok(r) => r,
            Err(e) => {
                warn!("Ignoring a malformed control message: {e}.");
                return;
            }
        };
        if !request::is_for(&req, &self.nodename) {
            return;
        }
        debug!(method = %req.method, "Control command.");
        let Some(reply) = self.dispatch(state, &req).await else {
            return;
        };
        self.send_reply(state, &req, reply).await;
    }

    /// Runs one command; `None` means "no reply" (`shutdown`). The application's commands
    /// come first: one registered under a built-in's name replaces it.
    async fn dispatch(&self, state: &mut ControlState, req: &ControlRequest) -> Option<Value> {
        let args = &req.arguments;
        if let Some(handler) = self.commands.get(&req.method) {
            let handle = ControlHandle {
                nodename: self.nodename.clone(),
                peers: state.peers.clone(),
            };
            return Some(handler(handle, args.clone()).await);
        }
        let command = match Command::parse(&req.method, args) {
            Ok(c) => c,
            Err(reply) => return Some(reply),
        };
        let peers = &state.peers;
        let consumer = state.consumer.as_ref();
        let reply = match command {
            Command::Ping => ok("pong"),
            Command::Shutdown => {
                worker::shutdown(peers);
                return None;
            }
            Command::Revoke { ids, signal } => self.revoke(peers, ids, signal).await,
            Command::RevokeStamped {
                headers,
                signal,
                terminate,
            } => revoke::revoke_stamped(peers, headers, signal, terminate).await,
            Command::Revoked => inspect::revoked(peers).await,
            Command::RateLimit { task, text, rate } => {
                limits::rate_limit(peers, &mut state.tasks, task, text, rate).await
            }
            Command::TimeLimit { hard_given, limits } => {
                self.time_limit(peers, &mut state.tasks, hard_given, limits)
                    .await
            }
            Command::Clock => json!({ "clock": peers.clock.value() }),
            Command::EnableEvents => worker::enable_events(peers),
            Command::DisableEvents => worker::disable_events(peers),
            Command::Heartbeat => worker::heartbeat(peers),
            Command::Election => Value::Null, // no gossip: nothing to elect, as Celery without gossip
            Command::Registered { items, builtins } => {
                self.registered(&state.tasks, &items, builtins)
            }
            Command::ActiveQueues => queues::active_queues(consumer).await,
            Command::AddConsumer(spec) => queues::add_consumer(consumer, spec).await,
            Command::CancelConsumer { queue } => queues::cancel_consumer(consumer, &queue),
            Command::Active { safe } => self.active(peers, safe).await,
            Command::Reserved => self.reserved(peers).await,
            Command::Scheduled => self.scheduled(peers).await,
            Command::QueryTask { ids } => self.query_task(peers, &ids).await,
            Command::PoolGrow { n } => self.resize(peers, true, n).await,
            Command::PoolShrink { n } => self.resize(peers, false, n).await,
            Command::PoolRestart => self.pool_restart(peers).await,
            Command::Autoscale { bounds } => self.autoscale(peers, bounds).await,
            Command::Stats => self.stats(peers, peers.clock.value()).await,
            Command::BeatSchedule => inspect::beat_schedule(peers).await,
            Command::Conf { with_defaults } => self.conf(with_defaults),
            Command::Memsample => inspect::memsample(),
            Command::Report => self.report(),
            Command::Hello { from, revoked } => self.hello(peers, &from, revoked).await,
        };
        Some(reply)
    }
}
