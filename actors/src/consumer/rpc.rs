//! rpc:// results: published through the outbox without waiting, kept in order, and sent
//! again after a reconnect when the connection took them down.

use super::ConsumerState;
use crate::broker::outbox::PendingResult;

impl ConsumerState {
    pub(super) async fn publish(&mut self, queue: String, correlation_id: String, body: Vec<u8>) {
        let result = PendingResult {
            queue,
            correlation_id,
            body,
        };
        if self.link.is_some() && !self.pending_results.is_empty() {
            // Older results that failed first (rare: the connection usually went with them).
            self.flush_pending_results().await;
        }
        let failed = match &self.link {
            Some(link) if self.pending_results.is_empty() => {
                if self.outbox.is_full() {
                    let failed = self.outbox.settle().await;
                    self.pending_results.extend(failed);
                }
                link.broker.publish_result(&mut self.outbox, result)
            }
            _ => {
                // Keep results in order: what lapin still holds goes first.
                self.absorb_outbox().await;
                Some(result)
            }
        };
        self.pending_results.extend(failed);
    }

    /// Moves the publishes lapin reports failed to `pending_results` (checked without
    /// waiting; called after every message the actor handles).
    pub(super) fn reap_outbox(&mut self) {
        let failed = self.outbox.reap();
        self.pending_results.extend(failed);
    }

    /// Waits until lapin is done with every publish it holds, keeping the failed ones to send
    /// again.
    pub(super) async fn absorb_outbox(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let failed = self.outbox.settle().await;
        self.pending_results.extend(failed);
    }

    pub(super) async fn flush_pending_results(&mut self) {
        self.absorb_outbox().await;
        while let Some(result) = self.pending_results.pop_front() {
            let Some(link) = &self.link else {
                self.pending_results.push_front(result);
                return;
            };
            let sent = link
                .broker
                .send_result(&result.queue, &result.correlation_id, &result.body)
                .await;
            if sent.is_err() {
                self.pending_results.push_front(result);
                return;
            }
        }
    }
}
