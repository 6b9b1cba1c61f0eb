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

pub mod request;

use std::collections::HashSet;
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

use self::request::{ControlRequest, error, ok, py_set, task_ids};
use crate::child::AbortOnDrop;
use crate::error::BrokerError;
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
}

impl Control {
    /// A control actor for node `nodename`.
    pub fn new(settings: Arc<Settings>, nodename: String) -> Self {
        Control { settings, nodename }
    }
}

/// The actors control commands are routed to.
#[derive(Debug, Clone)]
pub struct ControlPeers {
    /// For `shutdown`.
    pub supervisor: ActorRef<SupervisorMessage>,
    /// For `revoke`, `terminate`, `revoked`.
    pub revoke: ActorRef<RevokeMessage>,
    /// For `rate_limit`, `time_limit`.
    pub pool: ActorRef<PoolMessage>,
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
    /// The request stream ended.
    StreamEnded {
        /// Connection generation.
        generation: u64,
    },
}

/// The control actor's state.
pub struct ControlState {
    peers: ControlPeers,
    link: Option<(Connection, Channel, AbortOnDrop)>,
    generation: u64,
    clock: u64,
    reply_exchanges: HashSet<String>,
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
            link: None,
            generation: 0,
            clock: 0,
            reply_exchanges: HashSet::new(),
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
                    let delay = crate::consumer::connect_backoff(attempt + 1);
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
        let (conn, ch) = crate::consumer::amqp::connect(&self.settings.broker, &name).await?;
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
        state.clock = state.clock.max(clock.unwrap_or(0)) + 1;
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
        if let (Some((exchange, key)), Some(ch)) =
            (&req.reply_to, state.link.as_ref().map(|l| l.1.clone()))
            && let Err(e) =
                publish_reply(state, &ch, exchange, key, &req, &self.nodename, reply).await
        {
            warn!(error = %e, "Cannot send a control reply.");
        }
    }

    /// Runs one command; `None` means "no reply" (`shutdown`).
    async fn dispatch(&self, state: &mut ControlState, req: &ControlRequest) -> Option<Value> {
        let args = &req.arguments;
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
            "revoke" => {
                let terminate = args
                    .get("terminate")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                revoke(peers, task_ids(args), terminate, args.get("signal")).await
            }
            "terminate" => revoke(peers, task_ids(args), true, args.get("signal")).await,
            "revoked" | "dump_revoked" => {
                let ids =
                    ractor::call!(peers.revoke, RevokeMessage::GetRevoked).unwrap_or_default();
                json!(ids)
            }
            "rate_limit" => rate_limit(peers, args).await,
            "time_limit" => time_limit(peers, args).await,
            "clock" => json!({ "clock": state.clock }),
            other => error(format!("KeyError('{other}')")),
        };
        Some(reply)
    }
}

async fn revoke(
    peers: &ControlPeers,
    ids: Vec<String>,
    terminate: bool,
    signal: Option<&Value>,
) -> Value {
    let signal = match (terminate, signal) {
        (false, _) => None,
        (true, None | Some(Value::Null)) => Some(nix::sys::signal::Signal::SIGTERM),
        (true, Some(Value::Number(n))) => match parse_signal(&n.to_string()) {
            Ok(s) => Some(s),
            Err(e) => return error(e),
        },
        (true, Some(Value::String(s))) => match parse_signal(s) {
            Ok(s) => Some(s),
            Err(e) => return error(e),
        },
        (true, Some(other)) => return error(format!("bad signal {other}")),
    };
    let active = if signal.is_some() {
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
    if stored.is_err() {
        return error("revoke registry unavailable");
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

async fn rate_limit(peers: &ControlPeers, args: &Map<String, Value>) -> Value {
    let Some(task) = args.get("task_name").and_then(Value::as_str) else {
        return error("unknown task");
    };
    let text = match args.get("rate_limit") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
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

async fn time_limit(peers: &ControlPeers, args: &Map<String, Value>) -> Value {
    let Some(task) = args.get("task_name").and_then(Value::as_str) else {
        return error("unknown task");
    };
    let limit = |k: &str| args.get(k).and_then(Value::as_f64).filter(|v| *v > 0.0);
    let (soft, hard, task) = (limit("soft"), limit("hard"), task.to_owned());
    let known = ractor::call!(peers.pool, |reply| PoolMessage::SetTimeLimit {
        task,
        soft,
        hard,
        reply
    })
    .unwrap_or(false);
    if known {
        ok("time limits set successfully")
    } else {
        error("unknown task")
    }
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
    if !state.reply_exchanges.contains(exchange) {
        ch.exchange_declare(
            exchange.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
        state.reply_exchanges.insert(exchange.to_owned());
    }
    state.clock += 1;
    let mut headers = FieldTable::default();
    if let Some(t) = &req.ticket {
        headers.insert(
            "ticket".into(),
            AMQPValue::LongString(LongString::from(t.as_bytes().to_vec())),
        );
    }
    headers.insert(
        "clock".into(),
        crate::protocol::amqp_value::json_to_value(&json!(state.clock)),
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
