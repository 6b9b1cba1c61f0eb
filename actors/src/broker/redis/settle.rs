//! Settling fetched messages as kombu does, so a Python worker on the same Redis sees the
//! same records: an ack (or a reject without requeue) removes the `unacked` record and its
//! index entry; a requeue puts the message back (marked redelivered) at the end of its
//! queue; a restore puts it at the front. Also the two timers: lease renewal for what the
//! worker holds, and the restore of other workers' expired messages (`restore_visible`).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use super::keys::route;
use super::link::{Held, Shared};
use super::{RedisError, envelope, scripts};

/// At most this many tags per command.
const CHUNK: usize = 500;

static RESTORE: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::RESTORE));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::RENEW));
static UNLOCK: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::UNLOCK));

/// What the settler is asked to do.
#[derive(Debug)]
pub(super) enum Settle {
    /// Remove the records of these tags (acked, or rejected without requeue).
    Ack(Vec<String>),
    /// Put the message back at the end of its queue.
    Requeue(Held),
    /// Put the message back at the front of its queue.
    Restore(Held),
}

/// Seconds since the epoch, as kombu scores its index.
pub(super) fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Takes what arrives together and settles it in as few round trips as it allows; ends
/// when the link is closed, after the last.
pub(super) async fn settler(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Settle>) {
    while let Some(first) = rx.recv().await {
        let mut acks = Vec::new();
        let mut requeues = Vec::new();
        let mut restores = Vec::new();
        let mut next = Some(first);
        while let Some(s) = next {
            match s {
                Settle::Ack(tags) => acks.extend(tags),
                Settle::Requeue(h) => requeues.push(h),
                Settle::Restore(h) => restores.push(h),
            }
            next = rx.try_recv().ok();
        }
        if !acks.is_empty()
            && let Err(e) = remove(&shared, &acks).await
        {
            warn!(error = %e, count = acks.len(),
                "Cannot ack on Redis now; the messages return after the visibility timeout.");
        }
        for (h, back) in requeues
            .into_iter()
            .map(|h| (h, true))
            .chain(restores.into_iter().map(|h| (h, false)))
        {
            if let Err(e) = restore(&shared, &h, back).await {
                warn!(error = %e, "Cannot put a message back now; it returns after the visibility timeout.");
            }
        }
    }
}

/// Removes the records of `tags` (`ZREM` the index, `HDEL` the hash).
pub(super) async fn remove(shared: &Shared, tags: &[String]) -> Result<(), RedisError> {
    let mut conn = shared.conn.clone();
    let mut pipe = redis::pipe();
    for chunk in tags.chunks(CHUNK) {
        pipe.cmd("ZREM")
            .arg(&shared.keys.unacked_index)
            .arg(chunk)
            .ignore();
        pipe.cmd("HDEL")
            .arg(&shared.keys.unacked)
            .arg(chunk)
            .ignore();
    }
    pipe.query_async::<()>(&mut conn).await?;
    Ok(())
}

/// Puts the message recorded under `held.tag` back on its queue's lists, marked
/// redelivered: at the end (`back`: a requeue) or the front (a restore). Routed as kombu
/// routes it (the anonymous exchange: the queue named by the routing key; else the
/// exchange's binding set), to `held.queue` when that finds none. Returns whether it was
/// restored (not when another worker did first, or it was acked meanwhile).
pub(super) async fn restore(shared: &Shared, held: &Held, back: bool) -> Result<bool, RedisError> {
    let mut conn = shared.conn.clone();
    let keys = &shared.keys;
    let record: Option<Vec<u8>> = redis::cmd("HGET")
        .arg(&keys.unacked)
        .arg(&held.tag)
        .query_async(&mut conn)
        .await?;
    let Some(record) = record else {
        return Ok(false);
    };
    let parsed = serde_json::from_slice::<Value>(&record).ok();
    let parts = parsed
        .as_ref()
        .and_then(Value::as_array)
        .filter(|a| a.len() == 3);
    let Some([payload, exchange, routing_key]) = parts.map(|a| [&a[0], &a[1], &a[2]]) else {
        error!(tag = %held.tag, "An unacked record is not [message, exchange, routing_key]; removed.");
        remove(shared, std::slice::from_ref(&held.tag)).await?;
        return Ok(false);
    };
    let exchange = exchange.as_str().unwrap_or("");
    let routing_key = routing_key.as_str().unwrap_or("");
    let members: Vec<String> = if exchange.is_empty() {
        Vec::new()
    } else {
        redis::cmd("SMEMBERS")
            .arg(keys.bindings(exchange))
            .query_async(&mut conn)
            .await?
    };
    let mut queues = route(keys, exchange, routing_key, &members);
    queues.retain(|q| !q.is_empty());
    if queues.is_empty() && !held.queue.is_empty() {
        queues.push(held.queue.clone());
    }
    if queues.is_empty() {
        error!(tag = %held.tag, exchange, routing_key,
            "No queue to restore a message to (nothing bound); left in unacked.");
        return Ok(false);
    }
    let priority = payload["properties"]["priority"]
        .as_u64()
        .map_or(0, |p| p.min(9) as u8);
    let message = serde_json::to_vec(payload).unwrap_or_default();
    let again = envelope::redelivered(&message)
        .unwrap_or_else(|| String::from_utf8_lossy(&message).into_owned());
    let mut script = RESTORE.key(&keys.unacked);
    script.key(&keys.unacked_index);
    for q in &queues {
        script.key(keys.queue_key(q, priority));
    }
    script
        .arg(&held.tag)
        .arg(&record)
        .arg(again)
        .arg(if back { "1" } else { "0" });
    let done: i64 = script.invoke_async(&mut conn).await?;
    Ok(done == 1)
}

/// Moves the lease of every held message to now, every `every`, so that no worker's
/// `restore_visible` takes a message this worker holds (reserved, waiting for its ETA,
/// running with acks_late) for a lost one.
pub(super) async fn renew_leases(shared: Arc<Shared>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let tags: Vec<String> = shared
            .state()
            .held
            .values()
            .map(|h| h.tag.clone())
            .collect();
        let mut conn = shared.conn.clone();
        for chunk in tags.chunks(CHUNK) {
            let mut call = RENEW.key(&shared.keys.unacked_index);
            call.arg(now());
            for t in chunk {
                call.arg(t);
            }
            if let Err(e) = call.invoke_async::<i64>(&mut conn).await {
                warn!(error = %e, "Cannot renew the leases of held messages now; trying again.");
                break;
            }
        }
    }
}

/// Every `every`, restores the messages whose lease ran out (`visibility_timeout` after
/// their fetch or last renewal): their worker is gone. One worker at a time, under
/// `unacked_mutex`, as kombu's restore; at most `unacked_restore_limit` per scan.
pub(super) async fn restore_visible(shared: Arc<Shared>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = restore_expired(&shared).await {
            debug!(error = %e, "Cannot restore expired messages now.");
        }
    }
}

async fn restore_expired(shared: &Shared) -> Result<(), RedisError> {
    let mut conn = shared.conn.clone();
    let keys = &shared.keys;
    let o = &shared.options;
    let token = uuid::Uuid::new_v4().to_string();
    let taken: Option<String> = redis::cmd("SET")
        .arg(&keys.unacked_mutex)
        .arg(&token)
        .arg("NX")
        .arg("PX")
        .arg((o.unacked_mutex_expire * 1000.0) as u64)
        .query_async(&mut conn)
        .await?;
    if taken.is_none() {
        return Ok(()); // another worker is restoring
    }
    let ceiling = now() - o.visibility_timeout;
    let mut cmd = redis::cmd("ZRANGEBYSCORE");
    cmd.arg(&keys.unacked_index).arg("-inf").arg(ceiling);
    if let Some(limit) = o.unacked_restore_limit {
        cmd.arg("LIMIT").arg(0).arg(limit);
    }
    let expired: Result<Vec<String>, _> = cmd.query_async(&mut conn).await;
    let ours: std::collections::HashSet<String> = shared
        .state()
        .held
        .values()
        .map(|h| h.tag.clone())
        .collect();
    let mut restored = 0;
    if let Ok(expired) = &expired {
        for tag in expired.iter().filter(|t| !ours.contains(*t)) {
            let held = Held {
                tag: tag.clone(),
                queue: String::new(),
            };
            match restore(shared, &held, false).await {
                Ok(true) => restored += 1,
                Ok(false) => {}
                Err(e) => warn!(error = %e, "Cannot restore an expired message."),
            }
        }
    }
    let _: Result<i64, _> = UNLOCK
        .key(&keys.unacked_mutex)
        .arg(&token)
        .invoke_async(&mut conn)
        .await;
    if restored > 0 {
        warn!(
            restored,
            "Restored {restored} message(s) whose worker did not ack them within the visibility timeout."
        );
    }
    expired.map(|_| ()).map_err(RedisError::from)
}
