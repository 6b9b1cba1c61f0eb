//! Revoked task ids: Celery's expiry (ids older than `revoke_expires` are dropped) and cap
//! (`revokes_max`), kept in memory and, with `--statedb`, in RocksDB so they survive restarts
//! and kill -9. Without a statedb they live in memory only, as in Celery.
//!
//! Supervised by [`Supervisor`](crate::supervisor::Supervisor). The consumer asks it about every
//! delivery; a revoke is passed on to the [`Pool`](crate::pool::Pool) (reserved requests are
//! dropped, running ones terminated on request) and the
//! [`Scheduler`](crate::scheduler::Scheduler) (held ETA requests are dropped).

pub mod stamps;
pub mod store;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use self::stamps::RevokedStamps;
use self::store::RevokeStore;
use crate::error::StoreError;
use crate::pool::{PoolMessage, WorkMsg};
use crate::scheduler::SchedulerMessage;

/// Celery keeps revoked ids for 3 hours (`CELERY_WORKER_REVOKE_EXPIRES`).
pub const DEFAULT_EXPIRES: Duration = Duration::from_secs(10_800);
/// Celery keeps at most 50,000 revoked ids (`CELERY_WORKER_REVOKES_MAX`).
pub const DEFAULT_MAX: usize = 50_000;

/// Milliseconds since the epoch (revocation times are wall-clock so they can be persisted).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Revoked ids with their time of revocation; O(1) lookup, oldest dropped first.
#[derive(Debug)]
pub struct RevokedSet {
    ids: HashMap<String, u64>,
    order: VecDeque<(u64, String)>,
    max: usize,
    expires_ms: u64,
}

impl RevokedSet {
    /// An empty set keeping at most `max` ids for `expires` each.
    pub fn new(max: usize, expires: Duration) -> Self {
        RevokedSet {
            ids: HashMap::new(),
            order: VecDeque::new(),
            max,
            expires_ms: expires.as_millis() as u64,
        }
    }

    /// Adds an id revoked at `at` (ms); returns the ids dropped to make room or expired.
    pub fn add(&mut self, id: String, at: u64) -> Vec<String> {
        let mut dropped = self.purge(at);
        // Revoked again (a repeated revoke, or a neighbour's at mingle): the new time counts,
        // and the entry under the old one is skipped from then on.
        if self.ids.insert(id.clone(), at) != Some(at) {
            self.order.push_back((at, id));
        }
        while self.ids.len() > self.max {
            dropped.extend(self.pop_oldest());
        }
        dropped
    }

    /// Whether `id` is revoked (and not expired) at `now` (ms).
    pub fn contains(&self, id: &str, now: u64) -> bool {
        self.ids
            .get(id)
            .is_some_and(|t| now.saturating_sub(*t) < self.expires_ms)
    }

    /// Drops expired ids; returns them.
    pub fn purge(&mut self, now: u64) -> Vec<String> {
        let mut dropped = Vec::new();
        while self
            .order
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) >= self.expires_ms)
        {
            dropped.extend(self.pop_oldest());
        }
        dropped
    }

    /// The ids, oldest first.
    pub fn ids(&self) -> Vec<String> {
        self.order
            .iter()
            .filter(|(t, id)| self.ids.get(id) == Some(t))
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// Number of ids held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn pop_oldest(&mut self) -> Option<String> {
        let (t, id) = self.order.pop_front()?;
        if self.ids.get(&id) == Some(&t) {
            self.ids.remove(&id);
            return Some(id);
        }
        None
    }
}

/// Builds the in-memory set from stored records (oldest first), dropping what has expired or
/// is over the cap; returns the set and the ids to delete from the store.
pub fn restore(
    mut records: Vec<(String, u64)>,
    max: usize,
    expires: Duration,
    now: u64,
) -> (RevokedSet, Vec<String>) {
    records.sort_by_key(|(_, at)| *at);
    let mut set = RevokedSet::new(max, expires);
    let mut stale = Vec::new();
    for (id, at) in records {
        stale.extend(set.add(id, at));
    }
    stale.extend(set.purge(now));
    (set, stale)
}

/// Parses a signal given as `SIGTERM`, `TERM` or a number (as `revoke --signal` takes it).
///
/// ```
/// use celeryd_actors::revoke::parse_signal;
/// use nix::sys::signal::Signal;
/// assert_eq!(parse_signal("KILL"), Ok(Signal::SIGKILL));
/// assert_eq!(parse_signal("SIGTERM"), Ok(Signal::SIGTERM));
/// assert_eq!(parse_signal("9"), Ok(Signal::SIGKILL));
/// assert!(parse_signal("SIGNOPE").is_err());
/// ```
pub fn parse_signal(text: &str) -> Result<Signal, String> {
    let t = text.trim().to_ascii_uppercase();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("unknown signal number {n}"));
    }
    let name = if t.starts_with("SIG") {
        t
    } else {
        format!("SIG{t}")
    };
    name.parse::<Signal>()
        .map_err(|_| format!("unknown signal {text:?}"))
}

/// How many revoked ids and stamp revokes the registry holds, kept current by the registry
/// and read by the consumer: while it is zero (the usual case) no delivery can be revoked, and
/// the consumer skips the round trip to the registry. The registry raises it before it passes
/// a revoke on to the pool and the scheduler, so a delivery decided after that asks.
#[derive(Debug, Clone, Default)]
pub struct RevokedCount(Arc<AtomicUsize>);

impl RevokedCount {
    /// Whether the registry holds no revoke at all.
    pub fn is_zero(&self) -> bool {
        self.0.load(Ordering::Acquire) == 0
    }

    fn set(&self, n: usize) {
        self.0.store(n, Ordering::Release);
    }
}

/// The registry's configuration.
#[derive(Debug, Clone)]
pub struct RevokeRegistry {
    /// Where the statedb lives, if persistence is on.
    pub statedb: Option<PathBuf>,
    /// Cap on the number of ids.
    pub max: usize,
    /// How long an id stays revoked.
    pub expires: Duration,
    /// Published for the consumer's fast path.
    pub count: RevokedCount,
}

impl Default for RevokeRegistry {
    fn default() -> Self {
        RevokeRegistry {
            statedb: None,
            max: DEFAULT_MAX,
            expires: DEFAULT_EXPIRES,
            count: RevokedCount::default(),
        }
    }
}

/// Messages to the revoke registry.
#[derive(Debug)]
pub enum RevokeMessage {
    /// Revoke these ids; with a signal, terminate them if they are running.
    Revoke {
        /// Task ids.
        ids: Vec<String>,
        /// Signal for running tasks (`terminate`), if any.
        terminate: Option<Signal>,
        /// Answered once the ids are stored (durable, with a statedb); `Err` says the statedb
        /// could not be written (a full disk, say): the revoke is in force in memory all the
        /// same, and is written with the next revoke that can be.
        reply: Option<RpcReplyPort<Result<(), String>>>,
    },
    /// Whether a request is revoked: by its id, or by one of its stamps.
    IsRevoked {
        /// Task id.
        id: String,
        /// Its stamps (`stamped_headers`), usually none.
        stamps: Vec<(String, serde_json::Value)>,
        /// The answer.
        reply: RpcReplyPort<bool>,
    },
    /// `revoke_by_stamped_headers`: revoke every request stamped with one of these values
    /// (kept in memory, as Celery does). Answered once stored; `Err` when that would hold more
    /// values than the cap on revoked ids (`revokes_max`), and then nothing is added.
    RevokeStamps {
        /// Stamp name -> value or list of values.
        headers: Vec<(String, serde_json::Value)>,
        /// Answered once stored.
        reply: RpcReplyPort<Result<(), String>>,
    },
    /// All revoked ids.
    GetRevoked(RpcReplyPort<Vec<String>>),
}

/// The registry's state: the set and the store.
#[derive(Debug)]
pub struct RevokeState {
    set: RevokedSet,
    stamps: RevokedStamps,
    store: Option<Arc<RevokeStore>>,
    /// Revoked ids (with their time) the statedb failed to take, written with the next
    /// revoke; and ids dropped from the set that the statedb still holds.
    unsaved: Vec<(String, u64)>,
    undeleted: Vec<String>,
    /// The last write failed: reopen the database before the next one.
    reopen: bool,
    peers: RevokePeers,
}

/// Where revokes are passed on: running and reserved requests are the pool's, held ETA
/// requests the scheduler's.
#[derive(Debug, Clone)]
pub struct RevokePeers {
    /// The pool.
    pub pool: ActorRef<PoolMessage>,
    /// The scheduler.
    pub scheduler: ActorRef<SchedulerMessage>,
}

impl Actor for RevokeRegistry {
    type Msg = RevokeMessage;
    type State = RevokeState;
    type Arguments = RevokePeers;

    /// Opens and loads the statedb: an error here stops the worker at start-up, naming the
    /// path and the reason.
    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        peers: RevokePeers,
    ) -> Result<Self::State, ActorProcessingErr> {
        let Some(path) = self.statedb.clone() else {
            return Ok(RevokeState {
                set: RevokedSet::new(self.max, self.expires),
                stamps: RevokedStamps::new(),
                store: None,
                unsaved: Vec::new(),
                undeleted: Vec::new(),
                reopen: false,
                peers,
            });
        };
        let (max, expires) = (self.max, self.expires);
        let (store, set) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let store = RevokeStore::open(&path)?;
            let (set, stale) = restore(store.load()?, max, expires, now_ms());
            store.remove(&stale)?;
            Ok((store, set))
        })
        .await??;
        info!("Loaded {} revoked task ids from the statedb.", set.len());
        self.count.set(set.len());
        Ok(RevokeState {
            set,
            stamps: RevokedStamps::new(),
            store: Some(Arc::new(store)),
            unsaved: Vec::new(),
            undeleted: Vec::new(),
            reopen: false,
            peers,
        })
    }

    /// A statedb write error (a full disk) neither stops the registry nor loses the revoke: it
    /// is in force in memory, the requester is told it is not durable, and it is written with
    /// the next revoke that can be. Only a failing blocking task (a panic) is an error here.
    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = now_ms();
        match msg {
            RevokeMessage::Revoke {
                ids,
                terminate,
                reply,
            } => {
                let mut dropped = Vec::new();
                for id in &ids {
                    dropped.extend(state.set.add(id.clone(), now));
                }
                // Before anything is passed on (see RevokedCount).
                state.publish_count(&self.count);
                let stored = state
                    .persist(self.statedb.as_deref(), &ids, now, dropped)
                    .await?;
                let ids: Arc<HashSet<String>> = Arc::new(ids.into_iter().collect());
                let revoked = WorkMsg::Revoked {
                    ids: ids.clone(),
                    terminate,
                };
                let _ = state.peers.pool.cast(revoked.into());
                let _ = state.peers.scheduler.cast(SchedulerMessage::Revoked(ids));
                if let Some(reply) = reply {
                    let _ = reply.send(stored);
                }
            }
            RevokeMessage::IsRevoked { id, stamps, reply } => {
                let by_id = state.set.contains(&id, now);
                let by_stamp = || match state.stamps.matches(&stamps) {
                    Some((name, value)) => {
                        info!(task_id = %id, "Revoked by header: {{'{name}': {value}}}.");
                        true
                    }
                    None => false,
                };
                let _ = reply.send(by_id || (!stamps.is_empty() && by_stamp()));
            }
            RevokeMessage::RevokeStamps { headers, reply } => {
                let held = state.stamps.value_count();
                let new = RevokedStamps::count_new(&headers);
                if held.saturating_add(new) > self.max {
                    let _ = reply.send(Err(format!(
                        "{new} more stamp values would make {} revoked ones; the worker keeps at most {} (worker.revokes_max)",
                        held.saturating_add(new),
                        self.max
                    )));
                    return Ok(());
                }
                state.stamps.add(&headers);
                state.publish_count(&self.count);
                let _ = reply.send(Ok(()));
            }
            RevokeMessage::GetRevoked(reply) => {
                let dropped = state.set.purge(now);
                state.publish_count(&self.count);
                if let (Some(store), false) = (&state.store, dropped.is_empty()) {
                    let store = store.clone();
                    if let Err(e) =
                        tokio::task::spawn_blocking(move || store.remove(&dropped)).await?
                    {
                        warn!(error = %e, "Cannot drop expired ids from the statedb.");
                    }
                }
                let _ = reply.send(state.set.ids());
            }
        }
        Ok(())
    }
}

impl RevokeState {
    /// Writes newly revoked ids (and what failed to be written before) to the statedb, and
    /// deletes the dropped ones. A write error is logged and kept for the next call, which
    /// first reopens the database: RocksDB refuses every write after a failed one (a full disk)
    /// until it is opened again, and opening replays its log.
    async fn persist(
        &mut self,
        path: Option<&std::path::Path>,
        ids: &[String],
        now: u64,
        dropped: Vec<String>,
    ) -> Result<Result<(), String>, tokio::task::JoinError> {
        let Some(path) = path else {
            return Ok(Ok(()));
        };
        if self.reopen || self.store.is_none() {
            // The blocking tasks that used the store have finished: this is the last handle,
            // and dropping it closes the database before it is opened again.
            self.store = None;
            let path = path.to_owned();
            match tokio::task::spawn_blocking(move || RevokeStore::open(&path)).await? {
                Ok(store) => {
                    self.store = Some(Arc::new(store));
                    self.reopen = false;
                }
                Err(e) => {
                    let mut added = std::mem::take(&mut self.unsaved);
                    added.extend(ids.iter().map(|id| (id.clone(), now)));
                    self.unsaved = added;
                    self.undeleted.extend(dropped);
                    tracing::error!(error = %e, "Cannot reopen the statedb; revokes are kept in memory.");
                    return Ok(Err(format!("cannot reopen the statedb: {e}")));
                }
            }
        }
        let Some(store) = self.store.clone() else {
            return Ok(Ok(()));
        };
        let mut added = std::mem::take(&mut self.unsaved);
        added.extend(ids.iter().map(|id| (id.clone(), now)));
        let mut removed = std::mem::take(&mut self.undeleted);
        removed.extend(dropped);
        let (added, removed, written) = tokio::task::spawn_blocking(move || {
            let written = store.add_at(&added).and_then(|()| store.remove(&removed));
            (added, removed, written)
        })
        .await?;
        Ok(match written {
            Ok(()) => Ok(()),
            Err(e) => {
                self.reopen = true;
                tracing::error!(error = %e, ids = added.len(),
                    "Cannot write revoked ids to the statedb; they are revoked in memory and will be written with the next revoke.");
                // Only what is still revoked needs writing later (the set is capped).
                self.unsaved = added
                    .into_iter()
                    .filter(|(id, _)| self.set.contains(id, now))
                    .collect();
                self.undeleted = removed;
                Err(format!("cannot write the statedb: {e}"))
            }
        })
    }

    fn publish_count(&self, count: &RevokedCount) {
        count.set(self.set.len() + self.stamps.len());
    }
}

#[cfg(test)]
mod tests;
