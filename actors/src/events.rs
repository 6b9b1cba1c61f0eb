//! The event dispatcher: publishes Celery events to the `celeryev` topic exchange
//! (`celery-protocol.md` §5) so `celery events`, Flower and other monitors follow the worker.
//!
//! Worker events (`worker-online`, `worker-heartbeat` every `heartbeat_interval` seconds,
//! `worker-offline`) are always sent; task events only while the `task` group is enabled
//! (`-E`/`worker.send_events`, or the `enable_events` control command; `disable_events` turns
//! it off). The consumer reads the shared [`TaskEvents`] switch before it builds a task event,
//! so a worker without task events pays nothing for them.
//!
//! Supervised by [`Supervisor`](crate::supervisor::Supervisor). Owns its own AMQP connection,
//! re-established with backoff; events produced while it is down are dropped (monitors treat
//! a worker whose heartbeats stop as offline, as with Celery).

pub mod build;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{debug, info, warn};

use self::build::Event;
use crate::broker::{self, BrokerError};
use crate::clock::Clock;
use crate::pool::{ControlMsg, PoolMessage};
use crate::settings::Settings;

/// The exchange events are published to.
pub const EVENT_EXCHANGE: &str = "celeryev";

/// The switch for the `task` event group, shared by the dispatcher and the consumer.
#[derive(Debug, Clone, Default)]
pub struct TaskEvents(Arc<AtomicBool>);

impl TaskEvents {
    /// A switch, on or off.
    pub fn new(enabled: bool) -> Self {
        TaskEvents(Arc::new(AtomicBool::new(enabled)))
    }

    /// Whether task events are sent now.
    pub fn enabled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Turns them on or off; returns whether that changed anything.
    pub fn set(&self, on: bool) -> bool {
        self.0.swap(on, Ordering::SeqCst) != on
    }
}

/// The dispatcher's configuration.
#[derive(Debug)]
pub struct Events {
    settings: Arc<Settings>,
    nodename: String,
    clock: Clock,
    task_events: TaskEvents,
}

impl Events {
    /// A dispatcher for node `nodename`.
    pub fn new(
        settings: Arc<Settings>,
        nodename: String,
        clock: Clock,
        task_events: TaskEvents,
    ) -> Self {
        Events {
            settings,
            nodename,
            clock,
            task_events,
        }
    }
}

/// Messages to the dispatcher.
#[derive(Debug)]
pub enum EventsMessage {
    /// (Re)connect; sent to itself.
    Connect {
        /// Attempts so far.
        attempt: u32,
    },
    /// Publish this event (task events are dropped while the task group is off).
    Send(Event),
    /// Send a `worker-heartbeat` now (its timer, and the `heartbeat` control command).
    Heartbeat,
    /// Send `worker-offline` and close (warm shutdown); answered when done.
    Offline(RpcReplyPort<()>),
}

/// The dispatcher's state.
pub struct EventsState {
    pool: ActorRef<PoolMessage>,
    link: Option<broker::Link>,
    online_sent: bool,
    closed: bool,
}

impl std::fmt::Debug for EventsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsState")
            .field("connected", &self.link.is_some())
            .finish()
    }
}

impl Actor for Events {
    type Msg = EventsMessage;
    type State = EventsState;
    type Arguments = ActorRef<PoolMessage>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        pool: ActorRef<PoolMessage>,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.cast(EventsMessage::Connect { attempt: 0 })?;
        if self.settings.worker.heartbeat {
            let every = self.settings.worker.heartbeat_interval.duration();
            myself.send_interval(every, || EventsMessage::Heartbeat);
        }
        Ok(EventsState {
            pool,
            link: None,
            online_sent: false,
            closed: false,
        })
    }

    /// Publishing problems are logged and the connection re-made; nothing stops the actor.
    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EventsMessage::Connect { attempt } => {
                if state.link.is_some() || state.closed {
                    return Ok(());
                }
                match self.open().await {
                    Ok(link) => {
                        state.link = Some(link);
                        if !state.online_sent {
                            state.online_sent = true;
                            self.send_worker(state, "worker-online").await;
                        }
                    }
                    Err(e) => {
                        let delay = crate::broker::backoff(attempt + 1);
                        warn!(error = %e, "Cannot connect the event dispatcher; retrying.");
                        myself.send_after(delay, move || EventsMessage::Connect {
                            attempt: attempt + 1,
                        });
                    }
                }
            }
            EventsMessage::Send(event) => {
                if !event.is_task_event() || self.task_events.enabled() {
                    self.publish(&myself, state, &event).await;
                }
            }
            EventsMessage::Heartbeat => {
                if state.link.is_some() {
                    self.send_worker(state, "worker-heartbeat").await;
                }
            }
            EventsMessage::Offline(reply) => {
                if state.link.is_some() {
                    self.send_worker(state, "worker-offline").await;
                }
                state.closed = true;
                if let Some(link) = state.link.take() {
                    link.close("worker shutdown").await;
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}

impl Events {
    async fn open(&self) -> Result<broker::Link, BrokerError> {
        let name = format!("{} (events)", self.nodename);
        let link = broker::Link::open(&self.settings.broker, &name, None).await?;
        link.declare_topic(EVENT_EXCHANGE).await?;
        info!(
            "Events of group {{worker}} enabled{}.",
            if self.task_events.enabled() {
                ", and {task}"
            } else {
                ""
            }
        );
        Ok(link)
    }

    async fn send_worker(&self, state: &mut EventsState, kind: &'static str) {
        let tasks = ractor::call!(state.pool, |reply| ControlMsg::GetTasks { reply }.into())
            .unwrap_or_default();
        let processed = tasks.total.values().sum();
        let freq = self.settings.worker.heartbeat_interval.as_secs_f64();
        let event = build::worker(kind, freq, tasks.active.len(), processed);
        if let Some(link) = &state.link
            && let Err(e) = self.publish_on(link, &event).await
        {
            debug!(error = %e, "Cannot send {kind}.");
        }
    }

    async fn publish(
        &self,
        myself: &ActorRef<EventsMessage>,
        state: &mut EventsState,
        event: &Event,
    ) {
        let Some(link) = &state.link else {
            return;
        };
        if let Err(e) = self.publish_on(link, event).await {
            warn!(error = %e, "Event dispatcher lost its connection; reconnecting.");
            state.link = None;
            let _ = myself.cast(EventsMessage::Connect { attempt: 0 });
        }
    }

    async fn publish_on(&self, link: &broker::Link, event: &Event) -> Result<(), BrokerError> {
        let clock = self.clock.forward();
        let now = crate::protocol::time::epoch_f64(time::OffsetDateTime::now_utc());
        let body = build::body(event, &self.nodename, std::process::id(), clock, now);
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let key = event.routing_key();
        link.publish_event(EVENT_EXCHANGE, &key, &bytes, &self.nodename)
            .await
    }
}
