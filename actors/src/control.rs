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

pub mod client;
pub mod custom;
pub mod info;
#[cfg(test)]
mod proptests;
pub mod request;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::{Map, Value, json};
use tracing::{debug, info, warn};

use self::custom::{ControlCommands, ControlHandle};
use self::info::TaskAttrs;
use self::request::{ControlRequest, error, int_arg, ok, py_set, seconds_arg, task_ids, truthy};
use crate::broker::BrokerError;
use crate::child::AbortOnDrop;
use crate::consumer::ConsumerMessage;
use crate::consumer::amqp::TaskQueue;
use crate::pool::PoolMessage;
use crate::revoke::{RevokeMessage, parse_signal};
use crate::settings::Settings;
use crate::shutdown::ShutdownMode;
use crate::supervisor::SupervisorMessage;

/// The fanout exchange control requests are published to.
pub const PIDBOX_EXCHANGE: &str = "celery.pidbox";

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
    pub supervisor: ActorRef<SupervisorMessage>,
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
    link: Option<(Connection, Channel, AbortOnDrop)>,
    generation: u64,
    reply_exchanges: HashSet<String>,
    /// Replies go out on their own channel: a request naming a reply exchange the broker
    /// refuses closes that channel, never the one the pidbox is consumed on. Re-opened on use.
    reply_channel: Option<Channel>,
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
        match self.open(&myself, &mut state).await {
            Ok(()) => {}
            Err(e) if e.to_string().contains("RESOURCE_LOCKED") => {
                return Err(format!(
                    "node name {} is already in use on this broker (another worker consumes its \
                     pidbox queue); pick another with -n",
                    self.nodename
                )
                .into());
            }
            Err(e) => {
                warn!(error = %e, "Remote control not connected yet; retrying.");
                myself.send_after(std::time::Duration::from_secs(1), || {
                    ControlMessage::Connect { attempt: 1 }
                });
            }
        }
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
            ControlMessage::Connect { attempt } => {
                if state.link.is_none()
                    && let Err(e) = self.open(&myself, state).await
                {
                    let delay = crate::broker::backoff(attempt + 1);
                    warn!(error = %e, "Cannot connect the remote-control channel; retrying.");
                    myself.send_after(delay, move || ControlMessage::Connect {
                        attempt: attempt + 1,
                    });
                }
            }
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
                if generation == state.generation && state.link.take().is_some() {
                    warn!("Remote-control connection lost; reconnecting.");
                    let _ = myself.cast(ControlMessage::Connect { attempt: 1 });
                }
            }
        }
        Ok(())
    }
}

impl Control {
    fn queue_name(&self) -> String {
        format!("{}.celery.pidbox", self.nodename)
    }

    async fn open(
        &self,
        myself: &ActorRef<ControlMessage>,
        state: &mut ControlState,
    ) -> Result<(), BrokerError> {
        let name = format!("{} (pidbox)", self.nodename);
        let (conn, ch) = crate::broker::amqp::connect(&self.settings.broker, &name, None).await?;
        let plain = ExchangeDeclareOptions::default();
        ch.exchange_declare(
            PIDBOX_EXCHANGE.into(),
            ExchangeKind::Fanout,
            plain,
            FieldTable::default(),
        )
        .await?;
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongInt(300_000));
        args.insert("x-expires".into(), AMQPValue::LongInt(10_000));
        let queue = self.queue_name();
        let qopts = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        ch.queue_declare(queue.as_str().into(), qopts, args).await?;
        ch.queue_bind(
            queue.as_str().into(),
            PIDBOX_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let copts = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let mut stream = ch
            .basic_consume(
                queue.as_str().into(),
                "pidbox".into(),
                copts,
                FieldTable::default(),
            )
            .await?;
        state.generation += 1;
        state.reply_exchanges.clear();
        state.reply_channel = None;
        let generation = state.generation;
        let me = myself.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(d)) = stream.next().await {
                let clock = d.properties.headers().as_ref().and_then(|h| {
                    crate::protocol::amqp_value::table_to_json(h)
                        .get("clock")
                        .and_then(Value::as_u64)
                });
                let msg = ControlMessage::RequestReceived {
                    generation,
                    clock,
                    body: d.data,
                };
                if me.cast(msg).is_err() {
                    return;
                }
            }
            let _ = me.cast(ControlMessage::StreamEnded { generation });
        });
        info!("Remote control listening on {queue}.");
        state.link = Some((conn, ch, AbortOnDrop(task)));
        Ok(())
    }

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
        let Some((exchange, key)) = &req.reply_to else {
            return;
        };
        let Some(ch) = reply_channel(state).await else {
            warn!("Cannot send a control reply: no channel.");
            return;
        };
        if let Err(e) = publish_reply(state, &ch, exchange, key, &req, &self.nodename, reply).await
        {
            warn!(error = %e, exchange = %exchange, "Cannot send a control reply.");
            state.reply_channel = None;
            state.reply_exchanges.clear();
        }
    }

    /// Runs one command; `None` means "no reply" (`shutdown`).
    async fn dispatch(&self, state: &mut ControlState, req: &ControlRequest) -> Option<Value> {
        let args = &req.arguments;
        if let Some(handler) = self.commands.get(&req.method) {
            let handle = ControlHandle {
                nodename: self.nodename.clone(),
                peers: state.peers.clone(),
            };
            return Some(handler(handle, args.clone()).await);
        }
        let peers = &state.peers;
        let reply = match req.method.as_str() {
            "ping" => ok("pong"),
            "shutdown" => {
                info!("Shutdown requested by remote control.");
                let _ = peers
                    .supervisor
                    .cast(SupervisorMessage::Shutdown(ShutdownMode::Warm));
                return None;
            }
            "revoke" | "terminate" => {
                let terminate = req.method == "terminate" || truthy(args.get("terminate"));
                let ids = task_ids(args);
                let max = self.settings.worker.revokes_max;
                if ids.len() > max {
                    error(format!(
                        "ValueError('{} task ids in one request; the worker keeps at most {max} \
                         (worker.revokes_max): send fewer at a time')",
                        ids.len()
                    ))
                } else {
                    revoke(peers, ids, terminate, args.get("signal")).await
                }
            }
            "revoke_by_stamped_headers" => revoke_stamped(peers, args).await,
            "revoked" | "dump_revoked" => {
                let ids =
                    ractor::call!(peers.revoke, RevokeMessage::GetRevoked).unwrap_or_default();
                json!(ids)
            }
            "rate_limit" => {
                let reply = rate_limit(peers, args).await;
                if reply.get("ok").is_some()
                    && let Some(attrs) = task_name(args).and_then(|t| state.tasks.get_mut(t))
                {
                    attrs.rate_limit = rate_text(args).filter(|r| !r.is_empty());
                }
                reply
            }
            "time_limit"
                if self.settings.pool_kind().on_threads()
                    && args.get("hard").is_some_and(|h| !h.is_null()) =>
            {
                error(format!(
                    "NotImplementedError('the {} pool runs tasks on threads, which cannot be \
                     killed: a hard time limit cannot be enforced; set the soft one only')",
                    self.settings.pool_kind().name()
                ))
            }
            "time_limit" => match time_limit(peers, args).await {
                Ok((soft, hard)) => {
                    if let Some(attrs) = task_name(args).and_then(|t| state.tasks.get_mut(t)) {
                        attrs.time_limit = hard;
                        attrs.soft_time_limit = soft;
                    }
                    ok("time limits set successfully")
                }
                Err(e) => e,
            },
            "clock" => json!({ "clock": peers.clock.value() }),
            "enable_events" => {
                if peers.task_events.set(true) {
                    info!("Events of group {{task}} enabled by remote.");
                    ok("task events enabled")
                } else {
                    ok("task events already enabled")
                }
            }
            "disable_events" => {
                if peers.task_events.set(false) {
                    info!("Events of group {{task}} disabled by remote.");
                    ok("task events disabled")
                } else {
                    ok("task events already disabled")
                }
            }
            "heartbeat" => {
                debug!("Heartbeat requested by remote.");
                let _ = peers.events.cast(crate::events::EventsMessage::Heartbeat);
                Value::Null
            }
            "election" => Value::Null, // no gossip: nothing to elect, as Celery without gossip
            "registered" | "dump_tasks" => self.registered(&state.tasks, args),
            "active_queues" => {
                let queues = match &state.consumer {
                    Some(c) => ractor::call!(c, ConsumerMessage::GetQueues).unwrap_or_default(),
                    None => Vec::new(),
                };
                json!(queues.iter().map(info::queue_info).collect::<Vec<_>>())
            }
            "add_consumer" => add_consumer(state.consumer.as_ref(), args).await,
            "cancel_consumer" => match args.get("queue").and_then(Value::as_str) {
                None => missing_argument("cancel_consumer", "queue"),
                Some(queue) => {
                    if let Some(c) = &state.consumer {
                        let _ = c.cast(ConsumerMessage::CancelQueue(queue.to_owned()));
                    }
                    ok(format!("no longer consuming from {queue}"))
                }
            },
            "active" | "dump_active" => {
                let safe = truthy(args.get("safe"));
                let tasks = pool_tasks(peers).await;
                let acked = !self.settings.task.acks_late;
                json!(
                    tasks
                        .active
                        .iter()
                        .map(|(r, pid, t)| info::task_info(
                            r,
                            &self.nodename,
                            Some(*t),
                            acked,
                            Some(*pid),
                            safe
                        ))
                        .collect::<Vec<_>>()
                )
            }
            "reserved" | "dump_reserved" => {
                let tasks = pool_tasks(peers).await;
                json!(
                    tasks
                        .reserved
                        .iter()
                        .map(|r| info::task_info(r, &self.nodename, None, false, None, false))
                        .collect::<Vec<_>>()
                )
            }
            "scheduled" | "dump_schedule" => {
                let held = ractor::call!(
                    peers.scheduler,
                    crate::scheduler::SchedulerMessage::GetScheduled
                )
                .unwrap_or_default();
                json!(
                    held.iter()
                        .map(|r| info::scheduled_entry(r, &self.nodename))
                        .collect::<Vec<_>>()
                )
            }
            "query_task" => self.query_task(peers, args).await,
            "pool_grow" | "pool_shrink" | "autoscale"
                if self.settings.pool_kind() == crate::settings::PoolKind::Solo =>
            {
                error(format!(
                    "NotImplementedError('the solo pool runs one task at a time: {} is not \
                     possible (use -P threads or -P async)')",
                    req.method
                ))
            }
            "pool_grow" | "pool_shrink" => {
                let limit = self.settings.pool_size_limit();
                let n = match int_arg(args, "n", 1024) {
                    Ok(n) => n.unwrap_or(1),
                    Err(e) => return Some(e),
                };
                let grow = req.method == "pool_grow";
                if grow {
                    let now = pool_tasks(peers).await.target;
                    if now.saturating_add(n) > limit {
                        return Some(error(format!(
                            "ValueError('pool_grow by {n} would make {} processes; at most \
                             {limit} are allowed (worker.max_pool_size)')",
                            now.saturating_add(n)
                        )));
                    }
                }
                let done = if grow {
                    ractor::call!(peers.pool, |reply| PoolMessage::Grow { n, reply })
                } else {
                    ractor::call!(peers.pool, |reply| PoolMessage::Shrink { n, reply })
                };
                match (done.unwrap_or(false), grow) {
                    (true, true) => ok("pool will grow"),
                    (true, false) => ok("pool will shrink"),
                    (false, _) => error(format!(
                        "{} is not supported with autoscale. Adjust autoscale range instead.",
                        req.method
                    )),
                }
            }
            "pool_restart" => {
                if self.settings.worker.pool_restarts {
                    let n = ractor::call!(peers.pool, |reply| PoolMessage::Restart { reply });
                    info!(
                        children = n.unwrap_or(0),
                        "Pool restart requested by remote control."
                    );
                    ok("reload started")
                } else {
                    error("ValueError('Pool restarts not enabled')")
                }
            }
            "autoscale" => {
                let (max, min) = match (int_arg(args, "max", 1024), int_arg(args, "min", 1024)) {
                    (Ok(max), Ok(min)) => (max, min),
                    (Err(e), _) | (_, Err(e)) => return Some(e),
                };
                let limit = self.settings.pool_size_limit();
                if let Some(n) = max.into_iter().chain(min).find(|n| *n > limit) {
                    return Some(error(format!(
                        "ValueError('autoscale to {n} processes: at most {limit} are allowed \
                         (worker.max_pool_size)')"
                    )));
                }
                let bounds = ractor::call!(peers.pool, |reply| PoolMessage::Autoscale {
                    max,
                    min,
                    reply
                });
                match bounds.ok().flatten() {
                    Some((max, min)) => ok(format!("autoscale now max={max} min={min}")),
                    None => error("ValueError('Autoscale not enabled')"),
                }
            }
            "stats" => self.stats(peers, peers.clock.value()).await,
            // celeryd's own: the periodic task scheduler's entries and role (`-B`).
            "beat_schedule" => match beat_info(peers).await {
                Some(info) => info.to_json(),
                None => error(
                    "the periodic task scheduler does not run on this node (start the worker \
                     with -B, or run `worker beat`)",
                ),
            },
            "conf" | "dump_conf" => match &self.python {
                Some(py) => python_conf(py, &self.settings, truthy(args.get("with_defaults"))),
                None => conf(&self.settings),
            },
            "memsample" => json!(format!(
                "{:.1}MB",
                crate::child::runner::resident_kib() as f64 / 1024.0
            )),
            "report" if self.python.is_some() => {
                let report = self.python.as_ref().map(|p| p.report.as_str());
                ok(format!(
                    "{}\nworker -> celeryd:{} (Rust parent, Python children)",
                    report.unwrap_or_default().trim_end(),
                    env!("CARGO_PKG_VERSION")
                ))
            }
            "report" => ok(format!(
                "software -> celeryd:{} (Rust) celery-protocol:2\nnode -> {}\nbroker -> {}",
                env!("CARGO_PKG_VERSION"),
                self.nodename,
                self.settings.broker.safe_url()
            )),
            "hello" => {
                let from = args
                    .get("from_node")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if from == self.nodename {
                    Value::Null
                } else {
                    // A starting worker's mingle: its revoked ids are taken over too, as
                    // Celery's `hello` does.
                    let theirs = client::revoked_in_hello(&Value::Object(args.clone()));
                    if !theirs.is_empty() {
                        let _ = ractor::call!(peers.revoke, |reply| RevokeMessage::Revoke {
                            ids: theirs,
                            terminate: None,
                            reply: Some(reply),
                        });
                    }
                    let revoked =
                        ractor::call!(peers.revoke, RevokeMessage::GetRevoked).unwrap_or_default();
                    json!({ "revoked": revoked, "clock": peers.clock.forward() })
                }
            }
            other => error(format!("KeyError('{other}')")),
        };
        Some(reply)
    }

    /// `registered`: sorted task names, each with the requested attributes that are set
    /// (`taskinfoitems`, default exchange, routing_key, rate_limit), e.g.
    /// `"tasks.slow [rate_limit=10/m]"`.
    fn registered(&self, tasks: &BTreeMap<String, TaskAttrs>, args: &Map<String, Value>) -> Value {
        let mut items: Vec<String> = match args.get("taskinfoitems") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(s)) => s.split(',').map(|i| i.trim().to_owned()).collect(),
            _ => Vec::new(),
        };
        if items.is_empty() {
            items = info::DEFAULT_TASK_INFO_ITEMS
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
        }
        let builtins = truthy(args.get("builtins"));
        json!(
            tasks
                .iter()
                .filter(|(n, _)| builtins || !n.starts_with("celery."))
                .map(|(n, a)| info::registered_entry(n, a, &items, &self.settings.task))
                .collect::<Vec<_>>()
        )
    }
}

impl Control {
    async fn query_task(&self, peers: &ControlPeers, args: &Map<String, Value>) -> Value {
        // The CLI may nest the list (`ids=[[…]]`); take every string at any depth.
        fn strings(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::String(s) => out.push(s.clone()),
                Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
                _ => {}
            }
        }
        let mut ids = Vec::new();
        if let Some(v) = args.get("ids") {
            strings(v, &mut ids);
        }
        let tasks = pool_tasks(peers).await;
        let held = ractor::call!(
            peers.scheduler,
            crate::scheduler::SchedulerMessage::GetScheduled
        )
        .unwrap_or_default();
        let acked = !self.settings.task.acks_late;
        let node = &self.nodename;
        let mut out = Map::new();
        for (r, pid, t) in &tasks.active {
            if ids.contains(&r.id) {
                let i = info::task_info(r, node, Some(*t), acked, Some(*pid), false);
                out.insert(r.id.clone(), json!(["active", i]));
            }
        }
        for r in &tasks.reserved {
            if ids.contains(&r.id) {
                let i = info::task_info(r, node, None, false, None, false);
                out.insert(r.id.clone(), json!(["reserved", i]));
            }
        }
        for r in &held {
            if ids.contains(&r.id) {
                let i = info::task_info(r, node, None, false, None, false);
                out.insert(r.id.clone(), json!(["scheduled", i]));
            }
        }
        Value::Object(out)
    }

    async fn stats(&self, peers: &ControlPeers, clock: u64) -> Value {
        let tasks = pool_tasks(peers).await;
        let urls = self.settings.broker.urls();
        let url: Option<lapin::uri::AMQPUri> = urls.first().and_then(|u| u.parse().ok());
        let alternates: Vec<String> = urls
            .iter()
            .skip(1)
            .map(|u| crate::settings::mask_password(u))
            .collect();
        let strategy = self.settings.broker.failover_strategy.clone();
        let broker = url.map(|u| {
            json!({
                "hostname": u.authority.host, "userid": u.authority.userinfo.username,
                "virtual_host": u.vhost, "port": u.authority.port, "insist": false,
                "ssl": matches!(u.scheme, lapin::uri::AMQPScheme::AMQPS), "transport": "amqp",
                "connect_timeout": 4, "transport_options": {}, "login_method": "PLAIN",
                "uri_prefix": null, "heartbeat": f64::from(self.settings.broker.heartbeat),
                "failover_strategy": strategy, "alternates": alternates,
            })
        });
        let concurrency = tasks.target;
        let mtpc = self.settings.worker.max_tasks_per_child;
        let soft = self.settings.task.soft_time_limit.unwrap_or(0.0);
        let hard = self.settings.task.time_limit.unwrap_or(0.0);
        let mut pool = json!({
            "implementation": "celeryd.pool:ChildProcessPool",
            "max-concurrency": concurrency,
            "processes": tasks.processes,
            "max-tasks-per-child": if mtpc == 0 { json!("N/A") } else { json!(mtpc) },
            "put-guarded-by-semaphore": false,
            "timeouts": [soft, hard],
            "writes": "N/A",
        });
        if let Value::Object(p) = &mut pool {
            info::pool_kind_stats(p, self.settings.pool_kind(), tasks.active.len());
        }
        let mut stats = json!({
            "total": tasks.total,
            "pid": std::process::id(),
            "clock": clock.to_string(),
            "uptime": self.started.elapsed().as_secs(),
            "pool": pool,
            "broker": broker.unwrap_or_else(|| json!({})),
            "prefetch_count": self.settings.prefetch_for(match tasks.autoscaler {
                Some((max, ..)) => max,
                None => concurrency,
            }),
            "rusage": rusage(),
        });
        if let (Some(beat), Value::Object(m)) = (beat_info(peers).await, &mut stats) {
            m.insert(
                "beat".into(),
                json!({"role": beat.role, "lock": beat.lock, "entries": beat.entries.len()}),
            );
        }
        if let (Some((max, min, current, qty)), Value::Object(m)) = (tasks.autoscaler, &mut stats) {
            m.insert(
                "autoscaler".into(),
                json!({"max": max, "min": min, "current": current, "qty": qty}),
            );
        }
        stats
    }
}

async fn beat_info(peers: &ControlPeers) -> Option<crate::beat::BeatInfo> {
    let beat = peers.beat.as_ref()?;
    ractor::call!(beat, |reply| crate::beat::BeatMessage::GetSchedule {
        reply
    })
    .ok()
}

async fn pool_tasks(peers: &ControlPeers) -> crate::pool::PoolTasks {
    ractor::call!(peers.pool, |reply| PoolMessage::GetTasks { reply }).unwrap_or_default()
}

/// `getrusage(RUSAGE_SELF)` as Celery's `stats.rusage` dict.
fn rusage() -> Value {
    use nix::sys::resource::{UsageWho, getrusage};
    let Ok(u) = getrusage(UsageWho::RUSAGE_SELF) else {
        return json!({});
    };
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    json!({
        "utime": secs(u.user_time()), "stime": secs(u.system_time()), "maxrss": u.max_rss(),
        "ixrss": u.shared_integral(), "idrss": u.unshared_data_integral(),
        "isrss": u.unshared_stack_integral(), "minflt": u.minor_page_faults(),
        "majflt": u.major_page_faults(), "nswap": u.full_swaps(), "inblock": u.block_reads(),
        "oublock": u.block_writes(), "msgsnd": u.ipc_sends(), "msgrcv": u.ipc_receives(),
        "nsignals": u.signals(), "nvcsw": u.voluntary_context_switches(),
        "nivcsw": u.involuntary_context_switches(),
    })
}

/// The settings under Celery's names, the broker password masked (`inspect conf`).
/// `conf` for a Python app: Celery's table of the app's configuration, with the worker
/// settings celeryd runs with laid over it (they may come from the config file or flags).
fn python_conf(py: &PythonInfo, s: &Settings, with_defaults: bool) -> Value {
    let mut table = if with_defaults {
        py.conf_defaults.clone()
    } else {
        py.conf.clone()
    };
    if let Value::Object(ours) = conf(s) {
        for (k, v) in ours {
            if k != "result_backend" && k != "deprecated_settings" {
                table.insert(k, v);
            }
        }
    }
    Value::Object(table)
}

fn conf(s: &Settings) -> Value {
    json!({
        "broker_url": s.broker.safe_url(),
        "broker_heartbeat": s.broker.heartbeat,
        "result_backend": "rpc://",
        "worker_concurrency": s.effective_concurrency(),
        "worker_prefetch_multiplier": s.worker.prefetch_multiplier,
        "worker_max_tasks_per_child": s.worker.max_tasks_per_child,
        "worker_max_memory_per_child": s.worker.max_memory_per_child,
        "worker_disable_rate_limits": s.worker.disable_rate_limits,
        "worker_state_db": s.worker.statedb,
        "task_acks_late": s.task.acks_late,
        "task_track_started": s.task.track_started,
        "task_ignore_result": s.task.ignore_result,
        "task_acks_on_failure_or_timeout": s.task.acks_on_failure_or_timeout,
        "task_reject_on_worker_lost": s.task.reject_on_worker_lost,
        "task_time_limit": s.task.time_limit,
        "task_soft_time_limit": s.task.soft_time_limit,
        "task_default_rate_limit": s.task.default_rate_limit,
        "deprecated_settings": null,
    })
}

async fn revoke(
    peers: &ControlPeers,
    ids: Vec<String>,
    terminate: bool,
    signal: Option<&Value>,
) -> Value {
    let signal = match signal_arg(terminate, signal) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let active = if signal.is_some() || peers.helper.is_some() {
        ractor::call!(peers.pool, |reply| PoolMessage::GetActiveIds { reply }).unwrap_or_default()
    } else {
        Vec::new()
    };
    // Replied to only once the revoke is stored (durable with a statedb).
    let revoked = ids.clone();
    let stored = ractor::call!(peers.revoke, |reply| RevokeMessage::Revoke {
        ids: revoked,
        terminate: signal,
        reply: Some(reply)
    });
    match stored {
        Err(_) => return error("revoke registry unavailable"),
        Ok(Err(reason)) => {
            // In force all the same (in memory): say so, and why it would not survive a restart.
            return error(format!(
                "tasks {} flagged as revoked in memory only ({reason}); they are written to the statedb with the next revoke that can be",
                py_set(&ids)
            ));
        }
        Ok(Ok(())) => {}
    }
    if let Some(helper) = &peers.helper {
        // As Celery's `_revoke`: what does not run here is REVOKED in the backend (unless it
        // has a result or another worker started it) before the reply.
        let idle: Vec<String> = ids
            .iter()
            .filter(|i| !active.contains(i))
            .cloned()
            .collect();
        if !idle.is_empty() {
            let ask = |reply| crate::helper::HelperMessage::MarkRevoked { ids: idle, reply };
            let timeout = crate::helper::REPORT_TIMEOUT.as_millis() as u64 * 2;
            if let Ok(r) = ractor::call_t!(helper, ask, timeout)
                && let Some(e) = r.error
            {
                tracing::warn!("Cannot mark revoked tasks in the result backend: {e}");
            }
        }
    }
    if signal.is_none() {
        return ok(format!("tasks {} flagged as revoked", py_set(&ids)));
    }
    let hit: Vec<String> = ids.into_iter().filter(|i| active.contains(i)).collect();
    if hit.is_empty() {
        ok("terminate: tasks unknown")
    } else {
        ok(format!("terminate: {}", hit.join(", ")))
    }
}

/// The `task_name` argument.
fn task_name(args: &Map<String, Value>) -> Option<&str> {
    args.get("task_name").and_then(Value::as_str)
}

/// The `rate_limit` argument as text (`None` when absent or null).
fn rate_text(args: &Map<String, Value>) -> Option<String> {
    match args.get("rate_limit") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    }
}

/// Python's error for a handler called without a required argument.
fn missing_argument(command: &str, name: &str) -> Value {
    error(format!(
        "TypeError(\"{command}() missing 1 required positional argument: '{name}'\")"
    ))
}

/// `add_consumer`: the queue (and its exchange, type, routing key and `queue_arguments`,
/// defaulting to the queue's name, `direct` and none) is declared and consumed by the consumer actor; the reply waits
/// for it, so a queue the broker refuses (an `amq.*` name, an existing queue with other
/// arguments) is an error reply, and nothing else is disturbed.
async fn add_consumer(
    consumer: Option<&ActorRef<ConsumerMessage>>,
    args: &Map<String, Value>,
) -> Value {
    let Some(queue) = args.get("queue").and_then(Value::as_str) else {
        return missing_argument("add_consumer", "queue");
    };
    let text = |k: &str| {
        args.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let spec = TaskQueue {
        name: queue.to_owned(),
        exchange: text("exchange").unwrap_or(queue).to_owned(),
        exchange_type: text("exchange_type").unwrap_or("direct").to_owned(),
        routing_key: text("routing_key").unwrap_or(queue).to_owned(),
        bindings: Vec::new(),
        // kombu's `Queue(..., queue_arguments=…)`, passed through add_consumer's options.
        arguments: args
            .get("queue_arguments")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
    };
    if let Err(e) = spec.check() {
        return error(format!("ValueError('{}')", e.replace('\'', "\"")));
    }
    let Some(c) = consumer else {
        return error("consumer unavailable");
    };
    let added = ractor::call_t!(
        c,
        |reply| ConsumerMessage::AddQueue { queue: spec, reply },
        10_000
    );
    match added {
        Ok(Ok(())) => ok(format!("add consumer {queue}")),
        Ok(Err(reason)) => error(format!(
            "cannot consume from {queue}: {}",
            reason.replace('\'', "\"")
        )),
        Err(e) => error(format!("consumer unavailable: {e}")),
    }
}

/// `revoke_by_stamped_headers`: stores the stamps (so waiting and future requests carrying
/// them are discarded), drops the matching requests the pool and scheduler hold, and with
/// `terminate` signals the matching running ones.
async fn revoke_stamped(peers: &ControlPeers, args: &Map<String, Value>) -> Value {
    use crate::revoke::stamps::{
        RevokedStamps, headers_repr, parse_headers, request_stamps, terminated_repr,
    };
    let headers = match parse_headers(args.get("headers")) {
        Ok(h) => h,
        Err(e) => return error(format!("ValueError('{e}')")),
    };
    let signal = match signal_arg(true, args.get("signal")) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let terminate = truthy(args.get("terminate"));
    let stored = ractor::call!(peers.revoke, |reply| RevokeMessage::RevokeStamps {
        headers: headers.clone(),
        reply
    });
    match stored {
        Err(_) => return error("revoke registry unavailable"),
        Ok(Err(reason)) => return error(format!("ValueError('{reason}')")),
        Ok(Ok(())) => {}
    }
    let mut revoked = RevokedStamps::new();
    revoked.add(&headers);
    let tasks = pool_tasks(peers).await;
    let held = ractor::call!(
        peers.scheduler,
        crate::scheduler::SchedulerMessage::GetScheduled
    )
    .unwrap_or_default();
    let waiting: std::collections::HashSet<String> = tasks
        .reserved
        .iter()
        .chain(held.iter())
        .filter(|r| revoked.matches(&request_stamps(r)).is_some())
        .map(|r| r.id.clone())
        .collect();
    if !waiting.is_empty() {
        let ids = Arc::new(waiting);
        let _ = peers.pool.cast(PoolMessage::Revoked {
            ids: ids.clone(),
            terminate: None,
        });
        let _ = peers
            .scheduler
            .cast(crate::scheduler::SchedulerMessage::Revoked(ids));
    }
    let shown = headers_repr(&headers);
    if !terminate {
        return ok(format!(
            "headers {shown} flagged as revoked, but not terminated"
        ));
    }
    let mut terminated: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut ids = std::collections::HashSet::new();
    for (r, _, _) in &tasks.active {
        if let Some((name, value)) = revoked.matches(&request_stamps(r)) {
            let values = terminated.entry(name).or_default();
            if !values.contains(&value) {
                values.push(value);
            }
            ids.insert(r.id.clone());
        }
    }
    if ids.is_empty() {
        return ok(format!("headers {shown} were not terminated"));
    }
    let _ = peers.pool.cast(PoolMessage::Revoked {
        ids: Arc::new(ids),
        terminate: signal,
    });
    ok(format!("headers {} revoked", terminated_repr(&terminated)))
}

/// The signal of a `revoke`/`terminate` (SIGTERM by default), or the error reply.
fn signal_arg(
    terminate: bool,
    signal: Option<&Value>,
) -> Result<Option<nix::sys::signal::Signal>, Value> {
    match (terminate, signal) {
        (false, _) => Ok(None),
        (true, None | Some(Value::Null)) => Ok(Some(nix::sys::signal::Signal::SIGTERM)),
        (true, Some(Value::Number(n))) => parse_signal(&n.to_string()).map(Some).map_err(error),
        (true, Some(Value::String(s))) => parse_signal(s).map(Some).map_err(error),
        (true, Some(other)) => Err(error(format!("bad signal {other}"))),
    }
}

async fn rate_limit(peers: &ControlPeers, args: &Map<String, Value>) -> Value {
    let Some(task) = task_name(args) else {
        return error("unknown task");
    };
    let text = rate_text(args).unwrap_or_default();
    let rate = match crate::pool::rate::parse_rate(&text) {
        Ok(r) => r,
        Err(e) => return error(format!("Invalid rate limit string: ValueError({e:?})")),
    };
    let task = task.to_owned();
    let known = ractor::call!(peers.pool, |reply| PoolMessage::SetRateLimit {
        task,
        rate,
        reply
    })
    .unwrap_or(false);
    match (known, rate) {
        (false, _) => error("unknown task"),
        (true, Some(_)) => ok("new rate limit set successfully"),
        (true, None) => ok("rate limit disabled successfully"),
    }
}

/// `time_limit`: the (soft, hard) limits set, or the error reply (unknown task, or an
/// argument that is not a number of seconds).
async fn time_limit(
    peers: &ControlPeers,
    args: &Map<String, Value>,
) -> Result<(Option<f64>, Option<f64>), Value> {
    let Some(task) = task_name(args) else {
        return Err(error("unknown task"));
    };
    let (soft, hard) = (seconds_arg(args, "soft")?, seconds_arg(args, "hard")?);
    let task = task.to_owned();
    let known = ractor::call!(peers.pool, |reply| PoolMessage::SetTimeLimit {
        task,
        soft,
        hard,
        reply
    })
    .unwrap_or(false);
    if known {
        Ok((soft, hard))
    } else {
        Err(error("unknown task"))
    }
}

/// The reply channel, opened on the pidbox connection when there is none (or it was closed).
async fn reply_channel(state: &mut ControlState) -> Option<Channel> {
    if let Some(ch) = &state.reply_channel
        && ch.status().connected()
    {
        return Some(ch.clone());
    }
    let conn = &state.link.as_ref()?.0;
    let ch = conn.create_channel().await.ok()?;
    state.reply_exchanges.clear();
    state.reply_channel = Some(ch.clone());
    Some(ch)
}

async fn publish_reply(
    state: &mut ControlState,
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    req: &ControlRequest,
    nodename: &str,
    value: Value,
) -> Result<(), lapin::Error> {
    // `amq.*` names are the broker's own: never declared (the broker refuses it).
    if !state.reply_exchanges.contains(exchange) && !exchange.starts_with("amq.") {
        ch.exchange_declare(
            exchange.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
        state.reply_exchanges.insert(exchange.to_owned());
    }
    let clock = state.peers.clock.forward();
    let mut headers = FieldTable::default();
    if let Some(t) = &req.ticket {
        headers.insert(
            "ticket".into(),
            AMQPValue::LongString(LongString::from(t.as_bytes().to_vec())),
        );
    }
    headers.insert(
        "clock".into(),
        crate::protocol::amqp_value::json_to_value(&json!(clock)),
    );
    let body = serde_json::to_vec(&json!({ nodename: value })).unwrap_or_default();
    let props = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding(ShortString::from("utf-8"))
        .with_delivery_mode(1)
        .with_headers(headers);
    ch.basic_publish(
        exchange.into(),
        routing_key.into(),
        BasicPublishOptions::default(),
        &body,
        props,
    )
    .await?;
    Ok(())
}
