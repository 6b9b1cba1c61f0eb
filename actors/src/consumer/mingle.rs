//! Mingle, as Celery's worker does before it consumes: the other nodes' revoked ids and
//! clocks.
use std::time::Duration;

use serde_json::json;
use tracing::{debug, info, warn};

use super::{Consumer, ConsumerState};
use crate::broker;
use crate::revoke::RevokeMessage;

impl Consumer {
    /// Mingle, as Celery's worker does before it consumes: asks the other workers (`hello`,
    /// with this node's revoked ids) for theirs and their clocks, and takes them over, so a
    /// revoke sent while this worker was down still applies. One second for replies; no
    /// reply is "all alone", a failure is logged and the start goes on.
    pub(super) async fn mingle(&self, link: &broker::Link, state: &ConsumerState) {
        use crate::protocol::pidbox::revoked_in_hello;
        info!("mingle: searching for neighbors");
        let ours = ractor::call!(state.peers.revoke, RevokeMessage::GetRevoked).unwrap_or_default();
        let mut body = serde_json::Map::new();
        body.insert("method".into(), json!("hello"));
        body.insert(
            "arguments".into(),
            json!({"from_node": self.hostname, "revoked": ours}),
        );
        for key in ["destination", "pattern", "matcher"] {
            body.insert(key.into(), serde_json::Value::Null);
        }
        let mut replies = Vec::new();
        let asked = async {
            let ch = link.channel().await?;
            let timeout = Duration::from_secs(1);
            let done = ch
                .pidbox_request(body, true, timeout, None, &mut |node, value| {
                    if node != self.hostname && value.is_object() {
                        replies.push((node.to_owned(), value.clone()));
                    }
                })
                .await;
            ch.close("mingled").await;
            done
        };
        if let Err(e) = asked.await {
            warn!(error = %e, "mingle: cannot ask the other workers; starting without them.");
            return;
        }
        if replies.is_empty() {
            info!("mingle: all alone");
            return;
        }
        let mut ids = Vec::new();
        for (node, reply) in &replies {
            let theirs = revoked_in_hello(reply);
            debug!(node = %node, revoked = theirs.len(), "mingle: sync with {node}");
            ids.extend(theirs);
            if let Some(clock) = reply.get("clock").and_then(serde_json::Value::as_u64) {
                state.peers.clock.adjust(clock);
            }
        }
        ids.sort();
        ids.dedup();
        let count = ids.len();
        if count > 0 {
            let stored = ractor::call!(state.peers.revoke, |reply| RevokeMessage::Revoke {
                ids,
                terminate: None,
                reply: Some(reply),
            });
            if !matches!(stored, Ok(Ok(()))) {
                warn!(
                    "mingle: the revoked ids from the other workers are in force but could not be stored."
                );
            }
        }
        info!(revoked = count, "mingle: sync with {} nodes", replies.len());
    }
}
