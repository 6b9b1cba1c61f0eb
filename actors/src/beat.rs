//! The periodic task scheduler (Celery's beat): runs inside the worker with `-B`, supervised
//! by the [`Supervisor`](crate::supervisor::Supervisor), or alone with `worker beat`.
//!
//! Sends each entry of `[beat.schedule]` (and, with `-A`, of the app's `beat_schedule`) when
//! it is due, as Celery's beat sends it ([`schedule::Entry::message`]), on a connection of its
//! own in confirm mode. Each run is written to the schedule database ([`store`]) *before* its
//! message goes out, so a crash can skip a run but never send one twice.
//!
//! **One publisher per broker.** Several schedulers may run (every `-B` worker of a fleet);
//! the one that owns the exclusive queue `[beat] lock` publishes, and the others stand by,
//! trying to take it every `lock_retry` seconds. RabbitMQ deletes an exclusive queue when its
//! connection closes, so when the publisher dies (kill -9 included) another takes over within
//! a retry. Lock and messages share one connection: a scheduler that lost its connection has
//! lost the lock too, and cannot publish. Schedulers keep each other's last runs through the
//! fanout exchange `<lock>.state`: the publisher announces each run there before sending it
//! (and its whole state when a scheduler joins), so one that takes over counts from the
//! runs already sent.
//!
//! Answers [`BeatMessage::GetSchedule`] (the `beat_schedule` control command, `inspect
//! stats`).

pub mod schedule;
pub mod store;

// Pure, and read by the settings' validation too: its own module now; its path here stays.
pub use crate::crontab;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tracing::{debug, error, info, warn};

use self::schedule::{Entry, epoch, iso};
use self::store::{Record, ScheduleStore};
use crate::abort::AbortOnDrop;
use crate::broker::{self, BrokerError, ErrorKind};
use crate::settings::{BeatEntry, Settings};

/// The scheduler's configuration.
#[derive(Debug)]
pub struct Beat {
    settings: Arc<Settings>,
    nodename: String,
    /// Entries from the Python app's `beat_schedule` (`-A`), under the configured ones.
    app_entries: crate::settings::BeatEntries,
}

impl Beat {
    /// A scheduler for node `nodename`, with the app's entries (checked) besides the
    /// configured ones.
    pub fn new(
        settings: Arc<Settings>,
        nodename: String,
        app_entries: crate::settings::BeatEntries,
    ) -> Self {
        Beat {
            settings,
            nodename,
            app_entries,
        }
    }
}

/// Messages to the scheduler.
#[derive(Debug)]
pub enum BeatMessage {
    /// (Re)connect to the broker and try to take the lock (sent to itself).
    Connect {
        /// Attempts so far.
        attempt: u32,
    },
    /// Try to take the lock again (standing by; its own timer).
    TryLock,
    /// The earliest entry may be due: send what is (its own timer).
    Tick,
    /// The connection is gone (its watcher): the lock with it.
    ConnectionLost(String),
    /// Another scheduler announced runs, or asks for them (the state exchange's consumer).
    StateReceived(Vec<u8>),
    /// The schedule and this scheduler's role.
    GetSchedule {
        /// Receives it.
        reply: RpcReplyPort<BeatInfo>,
    },
}

/// Whether this scheduler publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not connected to the broker yet (or again).
    Connecting,
    /// Another scheduler holds the lock.
    Standby,
    /// Holds the lock and publishes.
    Active,
}

impl Role {
    /// As the replies spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Connecting => "connecting",
            Role::Standby => "standby",
            Role::Active => "active",
        }
    }
}

/// One entry as `beat_schedule` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntryInfo {
    /// The entry's name.
    pub name: String,
    /// The task it sends.
    pub task: String,
    /// `every 10s` or `crontab(m h dom mon dow)`.
    pub schedule: String,
    /// When it last ran (what its next run counts from), ISO-8601 UTC.
    pub last_run_at: String,
    /// When it runs next, ISO-8601 UTC (none if a crontab never matches again).
    pub next_run_at: Option<String>,
    /// How many times it ran.
    pub total_run_count: u64,
    /// Arguments, as sent.
    pub args: Vec<Value>,
    /// Keyword arguments, as sent.
    pub kwargs: serde_json::Map<String, Value>,
}

/// The scheduler as `beat_schedule` and `stats` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BeatInfo {
    /// `active`, `standby` or `connecting`.
    pub role: &'static str,
    /// The lock's queue name.
    pub lock: String,
    /// The time zone of crontab entries.
    pub timezone: String,
    /// The schedule database.
    pub schedule_db: String,
    /// The entries, by name.
    pub entries: Vec<EntryInfo>,
}

/// An entry and where it stands.
#[derive(Debug)]
struct Slot {
    entry: Entry,
    record: Record,
    /// When it is due next (None: never again).
    due: Option<f64>,
}

/// The connection, its publishing channel, and what is tied to it.
struct Link {
    /// The connection; its main channel publishes, in confirm mode.
    broker: broker::Link,
    /// Holds the exclusive lock queue while active.
    lock: Option<broker::Channel>,
    _watchers: Vec<AbortOnDrop>,
}

/// The scheduler's state.
pub struct BeatState {
    slots: BTreeMap<String, Slot>,
    tz: jiff::tz::TimeZone,
    store: ScheduleStore,
    link: Option<Link>,
    role: Role,
    timer: Option<AbortOnDrop<Result<(), ractor::MessagingErr<BeatMessage>>>>,
    origin: String,
}

impl std::fmt::Debug for BeatState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BeatState")
            .field("role", &self.role)
            .field("entries", &self.slots.len())
            .finish()
    }
}

/// A message on the state exchange.
#[derive(Debug, Serialize, Deserialize)]
struct StateMessage {
    /// The scheduler that sent it.
    from: String,
    /// `runs` (these entries ran) or `hello` (a scheduler joined: send your runs).
    kind: String,
    #[serde(default)]
    entries: BTreeMap<String, Record>,
}

impl Actor for Beat {
    type Msg = BeatMessage;
    type State = BeatState;
    type Arguments = ();

    /// Opens the schedule database and builds the schedule; an unusable database stops the
    /// start with the reason.
    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        let beat = &self.settings.beat;
        let tz = beat.time_zone()?;
        let path = PathBuf::from(&beat.schedule_db);
        let store = ScheduleStore::open(&path)?;
        let stored: BTreeMap<String, Record> = store.load()?.into_iter().collect();
        let now = epoch(OffsetDateTime::now_utc());
        let mut defs: BTreeMap<String, BeatEntry> = self.app_entries.iter().cloned().collect();
        defs.extend(beat.schedule.clone());
        let mut slots = BTreeMap::new();
        for (name, def) in &defs {
            let entry = Entry::of(name, def)?;
            let record = stored.get(name).copied().unwrap_or(Record {
                last_run_at: now,
                total_run_count: 0,
            });
            let due = entry.due_after(record.last_run_at, &tz);
            slots.insert(name.clone(), Slot { entry, record, due });
        }
        for name in stored.keys().filter(|n| !defs.contains_key(*n)) {
            store.remove(name)?;
        }
        info!(
            "beat: Starting... {} entries, schedule {}, lock {:?}.",
            slots.len(),
            path.display(),
            beat.lock
        );
        myself.cast(BeatMessage::Connect { attempt: 0 })?;
        Ok(BeatState {
            slots,
            tz,
            store,
            link: None,
            role: Role::Connecting,
            timer: None,
            origin: format!("gen{}@{}", std::process::id(), crate::hostname::this_host()),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(link) = state.link.take() {
            link.broker.close_connection(200, "beat stopped").await;
        }
        Ok(())
    }

    /// Broker trouble is logged and the connection made again; only a schedule database
    /// that cannot be written stops the scheduler (it could no longer keep its promise).
    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BeatMessage::Connect { attempt } => self.connect(&myself, state, attempt).await,
            BeatMessage::TryLock => self.try_lock(&myself, state).await,
            BeatMessage::Tick => self.tick(&myself, state).await?,
            BeatMessage::ConnectionLost(why) => {
                // A refused lock closes a channel, and lapin reports that as an error too:
                // only a connection that is gone counts.
                let gone = state
                    .link
                    .as_ref()
                    .is_some_and(|l| !l.broker.is_connected());
                if gone {
                    warn!(reason = %why, "beat: Lost the broker connection (and the lock); reconnecting.");
                    state.lost(&myself);
                }
            }
            BeatMessage::StateReceived(bytes) => self.on_state(state, &bytes).await?,
            BeatMessage::GetSchedule { reply } => {
                let _ = reply.send(state.info(&self.settings));
            }
        }
        Ok(())
    }
}

impl Beat {
    async fn connect(&self, myself: &ActorRef<BeatMessage>, state: &mut BeatState, attempt: u32) {
        if state.link.is_some() {
            return;
        }
        match self.open(myself).await {
            Ok(link) => {
                state.link = Some(link);
                self.announce(state, "hello", BTreeMap::new()).await;
                self.try_lock(myself, state).await;
            }
            Err(e) => {
                let delay = crate::broker::backoff(attempt + 1);
                warn!(error = %e, "beat: Cannot connect to the broker; retrying in {} s.", delay.as_secs_f64());
                myself.send_after(delay, move || BeatMessage::Connect {
                    attempt: attempt + 1,
                });
            }
        }
    }

    /// A connection with a publishing channel in confirm mode, the state exchange consumed,
    /// and a watcher that reports the connection's loss.
    async fn open(&self, myself: &ActorRef<BeatMessage>) -> Result<Link, BrokerError> {
        let name = format!("{} (beat)", self.nodename);
        let broker = broker::Link::open_confirmed(&self.settings.broker, &name).await?;
        let exchange = state_exchange(&self.settings.beat.lock);
        let (to, end) = (myself.clone(), myself.clone());
        let consumer = broker
            .subscribe_fanout(
                &exchange,
                "beat-state",
                move |body| to.cast(BeatMessage::StateReceived(body)).is_ok(),
                move || {
                    let _ = end.cast(BeatMessage::ConnectionLost(
                        "the state consumer ended".into(),
                    ));
                },
            )
            .await?;
        let to = myself.clone();
        let watcher = broker.watch(move |e| {
            let _ = to.cast(BeatMessage::ConnectionLost(e));
        });
        Ok(Link {
            broker,
            lock: None,
            _watchers: vec![consumer, watcher],
        })
    }

    /// Declares the lock queue, exclusive to this connection: taken, this scheduler is the
    /// publisher; held by another connection (`RESOURCE_LOCKED`), it stands by and tries
    /// again later.
    async fn try_lock(&self, myself: &ActorRef<BeatMessage>, state: &mut BeatState) {
        let Some(link) = &mut state.link else {
            return;
        };
        if link.lock.is_some() {
            return;
        }
        let lock = &self.settings.beat.lock;
        let taken = link.broker.hold_exclusive(lock).await;
        match taken {
            Ok(ch) => {
                link.lock = Some(ch);
                let took_over = if state.role == Role::Standby {
                    " (took over from the scheduler that held it)"
                } else {
                    ""
                };
                state.role = Role::Active;
                info!(
                    "beat: Holding the lock {lock:?}{took_over}: this scheduler sends the periodic tasks."
                );
                state.reschedule_all();
                state.arm(myself);
            }
            Err(e) if e.kind() == ErrorKind::ResourceLocked => {
                if state.role != Role::Standby {
                    info!("beat: Standing by: another scheduler holds the lock {lock:?}.");
                }
                state.role = Role::Standby;
                let retry = self.settings.beat.lock_retry.duration();
                myself.send_after(retry, || BeatMessage::TryLock);
            }
            Err(e) => {
                warn!(error = %e, "beat: Cannot take the lock {lock:?}; reconnecting.");
                state.lost(myself);
            }
        }
    }

    /// Sends what is due, records each run first, and sets the timer for the next.
    async fn tick(
        &self,
        myself: &ActorRef<BeatMessage>,
        state: &mut BeatState,
    ) -> Result<(), ActorProcessingErr> {
        state.timer = None;
        if state.role != Role::Active {
            return Ok(());
        }
        let now_t = OffsetDateTime::now_utc();
        let now = epoch(now_t);
        let due: Vec<String> = state
            .slots
            .iter()
            .filter(|(_, s)| s.due.is_some_and(|d| d <= now))
            .map(|(n, _)| n.clone())
            .collect();
        let mut runs = BTreeMap::new();
        let mut sends = Vec::new();
        for name in due {
            let Some(slot) = state.slots.get_mut(&name) else {
                continue;
            };
            let due_at = slot.due.unwrap_or(now);
            slot.record = Record {
                last_run_at: slot.entry.ran(due_at, now),
                total_run_count: slot.record.total_run_count + 1,
            };
            slot.due = slot.entry.due_after(slot.record.last_run_at, &state.tz);
            // Written before it is sent: a crash now skips this run, never repeats it.
            state.store.put(&name, slot.record)?;
            runs.insert(name.clone(), slot.record);
            let (exchange, key, message) =
                slot.entry
                    .message(now_t, &state.origin, &self.settings.task.default_queue);
            sends.push((name, slot.entry.task.clone(), exchange, key, message));
        }
        if sends.is_empty() {
            state.arm(myself);
            return Ok(());
        }
        self.announce(state, "runs", runs).await;
        // All handed to the broker first, then their confirms awaited together: entries due
        // at the same moment are not sent one round trip apart.
        let mut confirms = Vec::with_capacity(sends.len());
        for (name, task, exchange, key, message) in &sends {
            let Some(link) = &state.link else {
                return Ok(());
            };
            info!(task_id = %message.id, "Scheduler: Sending due task {name} ({task})");
            match link.broker.send_task(exchange, key, message).await {
                Ok(confirm) => confirms.push((name, task, confirm)),
                Err(e) => {
                    error!(error = %e, "beat: Cannot send {name} ({task}); this run is skipped. Reconnecting.");
                    state.lost(myself);
                    return Ok(());
                }
            }
        }
        for (name, task, confirm) in confirms {
            match confirm.wait().await {
                Ok(true) => {}
                Ok(false) => {
                    error!("beat: The broker refused {name} ({task}) (nack); this run is skipped.")
                }
                Err(e) => {
                    error!(error = %e, "beat: No confirm for {name} ({task}); reconnecting.");
                    state.lost(myself);
                    return Ok(());
                }
            }
        }
        state.arm(myself);
        Ok(())
    }

    /// Tells the other schedulers about runs (`runs`), or asks for theirs (`hello`). Best
    /// effort: a scheduler that misses it counts from its own database.
    async fn announce(&self, state: &BeatState, kind: &str, entries: BTreeMap<String, Record>) {
        let Some(link) = &state.link else {
            return;
        };
        let msg = StateMessage {
            from: self.nodename.clone(),
            kind: kind.to_owned(),
            entries,
        };
        let Ok(body) = serde_json::to_vec(&msg) else {
            return;
        };
        let exchange = state_exchange(&self.settings.beat.lock);
        let sent = link.broker.publish_fanout(&exchange, &body).await;
        if let Err(e) = sent {
            debug!(error = %e, "beat: cannot announce");
        }
    }

    /// Another scheduler's runs are taken over (so this one counts from them if it takes
    /// over); a joining one is told this one's runs.
    async fn on_state(
        &self,
        state: &mut BeatState,
        bytes: &[u8],
    ) -> Result<(), ActorProcessingErr> {
        let Ok(msg) = serde_json::from_slice::<StateMessage>(bytes) else {
            warn!("beat: An unreadable message on the state exchange; ignored.");
            return Ok(());
        };
        if msg.from == self.nodename {
            return Ok(());
        }
        match msg.kind.as_str() {
            "hello" if state.role == Role::Active => {
                let all = state
                    .slots
                    .iter()
                    .map(|(n, s)| (n.clone(), s.record))
                    .collect();
                self.announce(state, "runs", all).await;
            }
            "runs" => {
                for (name, record) in msg.entries {
                    let Some(slot) = state.slots.get_mut(&name) else {
                        continue;
                    };
                    if record.last_run_at > slot.record.last_run_at {
                        slot.record = record;
                        slot.due = slot.entry.due_after(record.last_run_at, &state.tz);
                        state.store.put(&name, record)?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The fanout exchange the schedulers sharing `lock` keep each other's runs on.
pub fn state_exchange(lock: &str) -> String {
    format!("{lock}.state")
}

impl BeatState {
    /// The connection (and the lock) went: stand by, and connect again.
    fn lost(&mut self, myself: &ActorRef<BeatMessage>) {
        if let Some(link) = self.link.take() {
            // Closed, not just dropped: a connection that still works would keep the lock.
            tokio::spawn(async move {
                link.broker.close_connection(320, "beat reconnects").await;
            });
        }
        self.timer = None;
        self.role = Role::Connecting;
        let _ = myself.cast(BeatMessage::Connect { attempt: 0 });
    }

    /// Due times counted again from each entry's last run (on taking the lock).
    fn reschedule_all(&mut self) {
        for slot in self.slots.values_mut() {
            slot.due = slot.entry.due_after(slot.record.last_run_at, &self.tz);
        }
    }

    /// One timer for the earliest due entry.
    fn arm(&mut self, myself: &ActorRef<BeatMessage>) {
        let Some(next) = self.slots.values().filter_map(|s| s.due).reduce(f64::min) else {
            self.timer = None;
            return;
        };
        let now = epoch(OffsetDateTime::now_utc());
        let wait = Duration::try_from_secs_f64((next - now).max(0.0)).unwrap_or(Duration::MAX);
        // A timer never waits more than an hour: the clock may have been changed meanwhile.
        let wait = wait.min(Duration::from_secs(3600));
        self.timer = Some(AbortOnDrop(myself.send_after(wait, || BeatMessage::Tick)));
    }

    fn info(&self, settings: &Settings) -> BeatInfo {
        BeatInfo {
            role: self.role.name(),
            lock: settings.beat.lock.clone(),
            timezone: settings.beat.timezone.clone(),
            schedule_db: settings.beat.schedule_db.clone(),
            entries: self
                .slots
                .iter()
                .map(|(name, s)| EntryInfo {
                    name: name.clone(),
                    task: s.entry.task.clone(),
                    schedule: s.entry.when.to_string(),
                    last_run_at: iso(s.record.last_run_at),
                    next_run_at: s.due.map(iso),
                    total_run_count: s.record.total_run_count,
                    args: s.entry.args.clone(),
                    kwargs: s.entry.kwargs.clone(),
                })
                .collect(),
        }
    }
}

impl BeatInfo {
    /// As a control reply.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| json!({}))
    }
}
