//! The fetcher: fills the worker's window from the consumed queues' lists, one atomic
//! script call per batch ([`scripts::FETCH`]: pop and record together), only while the
//! window has room (prefetch enforced by the worker, as kombu's `can_consume`). When every
//! list is empty it waits without taking anything: `BLMOVE key key RIGHT RIGHT` puts the
//! element it pops straight back where it was, so it only says that data is there; the next
//! fetch takes it. Up to [`MAX_WAITERS`] lists are watched that way at once, each on a
//! connection of its own; the others are looked at every `polling_interval`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures_util::future::select_all;
use redis::Script;
use redis::aio::MultiplexedConnection;
use tracing::{debug, error, warn};

use super::keys::rotate;
use super::link::{Held, Shared, Sink};
use super::settle::now;
use super::{RedisError, connect, envelope, scripts};
use crate::broker::{Delivery, Message, StreamEvent};
use crate::protocol::DeliveryInfo;

/// Lists watched for new data at once.
pub(super) const MAX_WAITERS: usize = 8;
/// The most fetched in one call.
const BATCH: usize = 64;

static FETCH: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::FETCH));

/// Runs until the link is dropped or the connection fails (then the first queue's sink is
/// told, and the consumer reconnects).
pub(super) async fn fetcher(shared: Arc<Shared>) {
    let mut waiters: Vec<MultiplexedConnection> = Vec::new();
    let mut conn = shared.conn.clone();
    loop {
        let (queues, room) = {
            let state = shared.state();
            let held = state.held.len();
            let room = match state.limit {
                0 => BATCH,
                limit => limit.saturating_sub(held).min(BATCH),
            };
            (state.queues.clone(), room)
        };
        if queues.is_empty() || room == 0 {
            shared.wake.notified().await;
            continue;
        }
        let keys = shared.keys.fetch_order(&queues);
        let fetched = fetch(&shared, &mut conn, &keys, queues.len(), room).await;
        match fetched {
            Ok(items) if items.is_empty() => {
                if let Err(e) = wait_for_data(&shared, &mut waiters, &keys).await {
                    if e.is_connection_error() {
                        end(&shared, e);
                        return;
                    }
                    debug!(error = %e, "Waiting for messages failed; polling instead.");
                    tokio::time::sleep(poll_interval(&shared)).await;
                }
            }
            Ok(items) => deliver(&shared, items),
            Err(e) if e.is_connection_error() => {
                end(&shared, e);
                return;
            }
            Err(e) => {
                if e.is_out_of_memory() {
                    error!(error = %e, "Redis is out of memory (maxmemory under noeviction): \
                        cannot fetch; the worker keeps its tasks and tries again.");
                } else {
                    error!(error = %e, "Cannot fetch messages from Redis; trying again.");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn poll_interval(shared: &Shared) -> Duration {
    Duration::from_secs_f64(shared.options.polling_interval)
}

/// (list key, item, recorded in `unacked`).
type Fetched = Vec<(String, Vec<u8>, bool)>;

async fn fetch(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
    keys: &[String],
    per_step: usize,
    room: usize,
) -> Result<Fetched, RedisError> {
    let mut call = FETCH.key(&shared.keys.unacked);
    call.key(&shared.keys.unacked_index);
    for k in keys {
        call.key(k);
    }
    call.arg(now()).arg(room).arg(per_step);
    let flat: Vec<redis::Value> = call.invoke_async(conn).await?;
    let mut out = Vec::with_capacity(flat.len() / 3);
    let mut it = flat.into_iter();
    while let (Some(k), Some(item), Some(rec)) = (it.next(), it.next(), it.next()) {
        let key: String = redis::from_redis_value(k)?;
        let item: Vec<u8> = redis::from_redis_value(item)?;
        let recorded: i64 = redis::from_redis_value(rec)?;
        out.push((key, item, recorded == 1));
    }
    Ok(out)
}

/// Hands what was fetched to the queues' sinks, in order, one batch per queue.
fn deliver(shared: &Arc<Shared>, items: Fetched) {
    let mut batches: Vec<(Sink, Vec<Delivery>)> = Vec::new();
    let mut stray = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut state = shared.state();
    let mut last = None;
    for (key, item, recorded) in items {
        let queue = shared.keys.queue_of(&key).to_owned();
        let parsed = envelope::parse(&item);
        let tag = state.next_tag + 1;
        state.next_tag = tag;
        let mut info = DeliveryInfo {
            queue: queue.clone(),
            ..DeliveryInfo::default()
        };
        match &parsed {
            Ok(m) => {
                info.exchange = m.exchange.clone();
                info.routing_key = m.routing_key.clone();
                info.priority = m.priority;
                info.redelivered = m.redelivered;
                if recorded {
                    state.held.insert(
                        tag,
                        Held {
                            tag: m.delivery_tag.clone(),
                            queue: queue.clone(),
                        },
                    );
                }
            }
            Err(e) => {
                warn!(queue = %queue, error = %e, bytes = item.len(),
                    "Fetched an item that is not a message; it is rejected.");
                if recorded {
                    // Recorded by its tag but unreadable otherwise: rejected like any
                    // invalid message (the record is removed when the consumer rejects it).
                    if let Some(tag_text) = recorded_tag(&item) {
                        state.held.insert(
                            tag,
                            Held {
                                tag: tag_text,
                                queue: queue.clone(),
                            },
                        );
                    }
                }
            }
        }
        let Some((_, sink)) = state.sinks.get(&queue) else {
            // A queue cancelled while the fetch ran: back to the front of its list.
            stray.extend(state.held.remove(&tag));
            continue;
        };
        let i = *index.entry(queue.clone()).or_insert_with(|| {
            batches.push((sink.clone(), Vec::new()));
            batches.len() - 1
        });
        batches[i].1.push(Delivery {
            tag,
            info,
            message: Message::Redis(Box::new(parsed)),
        });
        last = Some(queue);
    }
    let order = shared.options.queue_order_strategy;
    rotate(order, &mut state.queues, last.as_deref());
    drop(state);
    for (sink, deliveries) in batches {
        sink(StreamEvent::Deliveries(deliveries));
    }
    for h in stray {
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = super::settle::restore(&shared, &h, false).await {
                warn!(error = %e, "Cannot restore a message fetched for a cancelled queue; it returns after the visibility timeout.");
            }
        });
    }
}

/// The delivery tag of an item the fetch script recorded (it read the same field).
fn recorded_tag(item: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(item).ok()?;
    v["properties"]["delivery_tag"].as_str().map(str::to_owned)
}

/// Waits until one of the first lists has data (or `polling_interval` passes).
async fn wait_for_data(
    shared: &Shared,
    waiters: &mut Vec<MultiplexedConnection>,
    keys: &[String],
) -> Result<(), RedisError> {
    let watched = keys.len().min(MAX_WAITERS);
    while waiters.len() < watched {
        waiters.push(connect::connection(&shared.client, &shared.options, true).await?);
    }
    let timeout = shared.options.polling_interval;
    let waits = keys.iter().zip(waiters.iter_mut()).map(|(key, conn)| {
        Box::pin(async move {
            redis::cmd("BLMOVE")
                .arg(key)
                .arg(key)
                .arg("RIGHT")
                .arg("RIGHT")
                .arg(timeout)
                .query_async::<Option<Vec<u8>>>(conn)
                .await
        })
    });
    let (first, _, _) = select_all(waits).await;
    first.map(|_| ()).map_err(RedisError::from)
}

/// The connection failed: the first queue's sink is told (the consumer reconnects).
fn end(shared: &Shared, e: RedisError) {
    let state = shared.state();
    let first = state.queues.first().and_then(|q| state.sinks.get(q));
    if let Some((_, sink)) = first {
        sink(StreamEvent::Ended(Some(e.to_string())));
    }
}
