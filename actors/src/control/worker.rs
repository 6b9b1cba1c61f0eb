//! The worker's own commands: `shutdown`, the task events switches (`enable_events`,
//! `disable_events`), `heartbeat`, and `hello`, a starting worker's mingle.

use serde_json::{Value, json};
use tracing::{debug, info};

use super::request::ok;
use super::{Control, ControlPeers};
use crate::revoke::RevokeMessage;
use crate::shutdown::ShutdownMode;

/// `shutdown`: a warm shutdown, by the supervisor (never replied to).
pub(super) fn shutdown(peers: &ControlPeers) {
    info!("Shutdown requested by remote control.");
    let _ = peers.supervisor.send_message(ShutdownMode::Warm);
}

/// `enable_events`: the events of group `task` are sent from now on.
pub(super) fn enable_events(peers: &ControlPeers) -> Value {
    if peers.task_events.set(true) {
        info!("Events of group {{task}} enabled by remote.");
        ok("task events enabled")
    } else {
        ok("task events already enabled")
    }
}

/// `disable_events`: the events of group `task` are no longer sent.
pub(super) fn disable_events(peers: &ControlPeers) -> Value {
    if peers.task_events.set(false) {
        info!("Events of group {{task}} disabled by remote.");
        ok("task events disabled")
    } else {
        ok("task events already disabled")
    }
}

/// `heartbeat`: a `worker-heartbeat` event now.
pub(super) fn heartbeat(peers: &ControlPeers) -> Value {
    debug!("Heartbeat requested by remote.");
    let _ = peers.events.cast(crate::events::EventsMessage::Heartbeat);
    Value::Null
}

impl Control {
    /// `hello` from node `from`, which sends the ids it has revoked (`theirs`): `null` to itself;
    /// to another worker the revoked ids and the clock.
    pub(super) async fn hello(
        &self,
        peers: &ControlPeers,
        from: &str,
        theirs: Vec<String>,
    ) -> Value {
        if from == self.nodename {
            Value::Null
        } else {
            // A starting worker's mingle: its revoked ids are taken over too, as
            // Celery's `hello` does.
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
}
