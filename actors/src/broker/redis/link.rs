//! One link to a Redis broker: a command connection, the fetcher that fills the worker's
//! window from the queues' lists ([`super::fetch`]), the settler that acks and requeues
//! ([`super::settle`]), and the timers that renew the leases of held messages and restore
//! other workers' expired ones.
//!
//! Delivery tags: the consumer counts deliveries with `u64` tags, as on AMQP; each maps to
//! the message's own delivery tag (kombu's uuid string), the field of the `unacked` record.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::Client;
use redis::aio::MultiplexedConnection;
use tokio::sync::{Notify, mpsc};
use tracing::{info, warn};

use super::keys::Keys;
use super::settle::{Settle, settler};
use super::{RedisError, connect};
use crate::abort::AbortOnDrop;
use crate::broker::StreamEvent;
use crate::settings::redis::{RedisOptions, RedisUrl};

/// What a consumed queue's deliveries go to.
pub(super) type Sink = Arc<dyn Fn(StreamEvent) -> bool + Send + Sync>;

/// A message the worker holds: fetched, recorded in `unacked`, not settled.
#[derive(Debug, Clone)]
pub(super) struct Held {
    /// kombu's delivery tag.
    pub(super) tag: String,
    /// The queue it was fetched from (where a requeue goes when its route is gone).
    pub(super) queue: String,
}

/// What the link's tasks share.
pub(super) struct Shared {
    pub(super) options: RedisOptions,
    pub(super) keys: Keys,
    pub(super) client: Client,
    pub(super) conn: MultiplexedConnection,
    pub(super) state: Mutex<State>,
    /// Woken when the window gets room or the queues change.
    pub(super) wake: Notify,
}

/// The link's bookkeeping.
#[derive(Default)]
pub(super) struct State {
    /// The consumed queues, in the order the next fetch takes them.
    pub(super) queues: Vec<String>,
    /// Queue -> (consumer tag, sink).
    pub(super) sinks: HashMap<String, (String, Sink)>,
    /// The prefetch limit (0: none).
    pub(super) limit: usize,
    /// Held messages by the consumer's tag.
    pub(super) held: BTreeMap<u64, Held>,
    /// The consumer's next tag.
    pub(super) next_tag: u64,
}

impl Shared {
    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection to a Redis broker and what consumes over it.
pub struct Link {
    pub(super) shared: Arc<Shared>,
    pub(super) settle: mpsc::UnboundedSender<Settle>,
    settler: Option<tokio::task::JoinHandle<()>>,
    pub(super) fetcher: Mutex<Option<AbortOnDrop>>,
    timers: Mutex<Vec<AbortOnDrop>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("redis::Link")
            .field("keys", &self.shared.keys)
            .finish_non_exhaustive()
    }
}

/// The guarded value, also after a panic elsewhere.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Messages a lost link held, restored by the next link (as RabbitMQ requeues what a closed
/// connection did not ack).
static ORPHANS: Mutex<Vec<Held>> = Mutex::new(Vec::new());

impl Link {
    /// Connects to the server `url` names (`name`: the connection's client name).
    pub async fn open(
        url: &RedisUrl,
        options: &RedisOptions,
        name: &str,
    ) -> Result<Link, RedisError> {
        let client = connect::client(url, options).await?;
        let mut conn = connect::connection(&client, options, false).await?;
        let client_name: String = name
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '_' })
            .collect();
        let _: Result<(), _> = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(&client_name)
            .query_async(&mut conn)
            .await;
        let shared = Arc::new(Shared {
            keys: Keys::new(options, url.db),
            options: options.clone(),
            client,
            conn,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let settler = tokio::spawn(settler(shared.clone(), rx));
        let link = Link {
            shared,
            settle: tx,
            settler: Some(settler),
            fetcher: Mutex::new(None),
            timers: Mutex::new(Vec::new()),
        };
        link.restore_orphans().await;
        Ok(link)
    }

    /// The command connection (cheap to clone: requests share it).
    pub(super) fn conn(&self) -> MultiplexedConnection {
        self.shared.conn.clone()
    }

    /// The key names.
    pub fn keys(&self) -> &Keys {
        &self.shared.keys
    }

    /// Whether the link still answers (the fetcher has not ended on an error).
    pub fn is_open(&self) -> bool {
        lock(&self.fetcher)
            .as_ref()
            .is_none_or(|f| !f.0.is_finished())
    }

    /// Sets the prefetch limit: fetches happen only while fewer messages are held.
    pub fn set_prefetch(&self, count: u16) {
        self.shared.state().limit = usize::from(count);
        self.shared.wake.notify_one();
    }

    /// Acks `tag` (`multiple`: every held tag up to it).
    pub fn ack(&self, tag: u64, multiple: bool) {
        let tags = self.take_held(tag, multiple);
        if !tags.is_empty() {
            let _ = self
                .settle
                .send(Settle::Ack(tags.into_iter().map(|h| h.tag).collect()));
            self.shared.wake.notify_one();
        }
    }

    /// Rejects `tag`: dropped (its record removed, as kombu does: Redis has no dead-letter
    /// queues), or with `requeue` put back at the end of its queue.
    pub fn reject(&self, tag: u64, requeue: bool) {
        for held in self.take_held(tag, false) {
            let _ = self.settle.send(if requeue {
                Settle::Requeue(held)
            } else {
                Settle::Ack(vec![held.tag])
            });
        }
        self.shared.wake.notify_one();
    }

    /// Puts `tag` back at the front of its queue (a worker closing: it is fetched next).
    pub fn give_back(&self, tag: u64) {
        for held in self.take_held(tag, false) {
            let _ = self.settle.send(Settle::Restore(held));
        }
        self.shared.wake.notify_one();
    }

    fn take_held(&self, tag: u64, multiple: bool) -> Vec<Held> {
        let mut state = self.shared.state();
        if multiple {
            let rest = state.held.split_off(&(tag + 1));
            let taken = std::mem::replace(&mut state.held, rest);
            taken.into_values().collect()
        } else {
            state.held.remove(&tag).into_iter().collect()
        }
    }

    /// Starts the timers that renew the leases of held messages and restore expired ones
    /// (started with the first consumer).
    pub(super) fn start_timers(&self) {
        let mut timers = lock(&self.timers);
        if !timers.is_empty() {
            return;
        }
        let o = &self.shared.options;
        let renew = Duration::from_secs_f64(o.renew_every());
        let restore = Duration::from_secs_f64(o.restore_every());
        timers.push(AbortOnDrop(tokio::spawn(super::settle::renew_leases(
            self.shared.clone(),
            renew,
        ))));
        timers.push(AbortOnDrop(tokio::spawn(super::settle::restore_visible(
            self.shared.clone(),
            restore,
        ))));
    }

    async fn restore_orphans(&self) {
        let orphans = std::mem::take(&mut *ORPHANS.lock().unwrap_or_else(PoisonError::into_inner));
        if orphans.is_empty() {
            return;
        }
        info!(
            count = orphans.len(),
            "Restoring {} message(s) the lost connection held.",
            orphans.len()
        );
        for held in orphans {
            if let Err(e) = super::settle::restore(&self.shared, &held, false).await {
                warn!(error = %e, "Cannot restore a message now; it returns after the visibility timeout.");
            }
        }
    }

    /// Closes the link: stops fetching, sends the acks still queued, and puts every held
    /// message back at the front of its queue (kombu's `restore_unacked_once`), so a clean
    /// shutdown leaves nothing waiting for the visibility timeout.
    pub async fn close(mut self, reason: &str) {
        *lock(&self.fetcher) = None;
        lock(&self.timers).clear();
        let (tx, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.settle, tx));
        if let Some(settler) = self.settler.take() {
            let _ = settler.await;
        }
        let held: Vec<Held> = std::mem::take(&mut self.shared.state().held)
            .into_values()
            .collect();
        if !held.is_empty() {
            warn!("Restoring {} unacknowledged message(s)", held.len());
        }
        let mut failed = 0;
        for h in &held {
            if super::settle::restore(&self.shared, h, false)
                .await
                .is_err()
            {
                failed += 1;
            }
        }
        if failed > 0 {
            warn!(
                failed,
                reason,
                "Some messages could not be restored now; they return after the visibility timeout."
            );
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Not closed (the connection was lost): what it held goes to the next link.
        let held = std::mem::take(&mut self.shared.state().held);
        if !held.is_empty() {
            ORPHANS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(held.into_values());
        }
    }
}
