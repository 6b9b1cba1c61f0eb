//! The revoke commands: `revoke` and `terminate` (by task id) and `revoke_by_stamped_headers`
//! (by stamp). Each stores the revoke in the [`RevokeRegistry`](crate::revoke) before it
//! replies, so the reply means it is in force.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use nix::sys::signal::Signal;
use serde_json::Value;

use super::command::Checked;
use super::inspect::pool_tasks;
use super::request::{error, ok, py_set};
use super::{Control, ControlPeers};
use crate::pool::{ControlMsg, WorkMsg};
use crate::revoke::RevokeMessage;

impl Control {
    /// `revoke`/`terminate`: at most `worker.revokes_max` ids in one request.
    pub(super) async fn revoke(
        &self,
        peers: &ControlPeers,
        ids: Vec<String>,
        signal: Checked<Option<Signal>>,
    ) -> Value {
        let max = self.settings.worker.revokes_max;
        if ids.len() > max {
            error(format!(
                "ValueError('{} task ids in one request; the worker keeps at most {max} \
                 (worker.revokes_max): send fewer at a time')",
                ids.len()
            ))
        } else {
            revoke(peers, ids, signal).await
        }
    }
}

async fn revoke(peers: &ControlPeers, ids: Vec<String>, signal: Checked<Option<Signal>>) -> Value {
    let signal = match signal {
        Ok(s) => s,
        Err(e) => return e,
    };
    let active = if signal.is_some() || peers.helper.is_some() {
        ractor::call!(peers.pool, |reply| ControlMsg::GetActiveIds { reply }
            .into())
        .unwrap_or_default()
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

/// `revoke_by_stamped_headers`: stores the stamps (so waiting and future requests carrying
/// them are discarded), drops the matching requests the pool and scheduler hold, and with
/// `terminate` signals the matching running ones.
pub(super) async fn revoke_stamped(
    peers: &ControlPeers,
    headers: Vec<(String, Value)>,
    signal: Signal,
    terminate: bool,
) -> Value {
    use crate::revoke::stamps::{RevokedStamps, headers_repr, request_stamps, terminated_repr};
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
    let waiting: HashSet<String> = tasks
        .reserved
        .iter()
        .chain(held.iter())
        .filter(|r| revoked.matches(&request_stamps(r)).is_some())
        .map(|r| r.id.clone())
        .collect();
    if !waiting.is_empty() {
        let ids = Arc::new(waiting);
        let revoked = WorkMsg::Revoked {
            ids: ids.clone(),
            terminate: None,
        };
        let _ = peers.pool.cast(revoked.into());
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
    let mut ids = HashSet::new();
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
    let revoked = WorkMsg::Revoked {
        ids: Arc::new(ids),
        terminate: Some(signal),
    };
    let _ = peers.pool.cast(revoked.into());
    ok(format!("headers {} revoked", terminated_repr(&terminated)))
}
