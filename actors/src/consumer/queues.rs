//! The queues consumed: `add_consumer`, and the prefetch window applied to the consumers
//! (replaced under per-consumer QoS when the window must grow or shrink back).

use ractor::ActorRef;
use tracing::{error, info, warn};

use super::link::{consume_with_tag, start_consumer};
use super::{Consumer, ConsumerMessage, ConsumerState};
use crate::broker::ErrorKind;
use crate::broker::consumer_tag;
use crate::settings::queues::TaskQueue;

impl Consumer {
    pub(super) async fn add_queue(
        &self,
        myself: &ActorRef<ConsumerMessage>,
        state: &mut ConsumerState,
        queue: TaskQueue,
    ) -> Result<(), String> {
        if state.queues.iter().any(|q| q.name == queue.name) {
            info!(queue = %queue.name, "Already consuming from queue.");
            return Ok(());
        }
        let Some(link) = &mut state.link else {
            return Err("not connected to the broker now; try again once it is".to_owned());
        };
        link.broker
            .declare_on_own_channel(&queue)
            .await
            .map_err(|e| {
                warn!(queue = %queue.name, error = %e, "The broker refused the added queue.");
                e.to_string()
            })?;
        state.queues.push(queue.clone());
        link.broker.queues_changed();
        if !state.consuming {
            return Ok(());
        }
        let started = start_consumer(
            &link.broker,
            myself,
            &self.hostname,
            state.generation,
            &queue,
        );
        match started.await {
            Ok(c) => {
                link.consumers.insert(queue.name.clone(), c);
                Ok(())
            }
            Err(e) if state.window.is_global() && e.kind() == ErrorKind::GlobalQosRefused => {
                // The broker closed the connection over channel-wide QoS on a quorum queue:
                // the reconnect consumes every queue, this one too, with per-consumer QoS.
                warn!(queue = %queue.name, error = %e, "The broker refuses channel-wide QoS for \
                    a quorum queue; using per-consumer QoS from now on (set [broker] qos = \
                    \"per-consumer\" to say so).");
                state.window.refuse_global();
                Ok(())
            }
            Err(e) => {
                error!(queue = %queue.name, error = %e, "Cannot consume from the added queue.");
                state.queues.retain(|q| q.name != queue.name);
                Err(e.to_string())
            }
        }
    }

    /// Sends the prefetch `count` for the held ETA tasks. Changes are only marked in the
    /// [`Window`](super::window::Window) where they happen and applied by
    /// [`ConsumerMessage::ApplyPrefetch`],
    /// queued behind the deliveries already in the mailbox, so a burst of held ETA tasks costs
    /// one `basic.qos` round trip rather than one each.
    ///
    /// With per-consumer QoS a new limit only holds for consumers started after it, so when
    /// held ETA tasks need a higher one (or all of them are gone) each queue's consumer is
    /// replaced: `basic.cancel` (what was delivered stays unacked and is still processed:
    /// the old stream drains), then `basic.consume` under a new tag.
    pub(super) async fn apply_prefetch(
        &self,
        myself: &ActorRef<ConsumerMessage>,
        state: &mut ConsumerState,
        count: u16,
    ) {
        let Some(link) = &mut state.link else {
            return;
        };
        if let Err(e) = link
            .broker
            .set_prefetch(count, state.window.is_global())
            .await
        {
            warn!(error = %e, "Cannot change the prefetch count.");
            return;
        }
        if !state.consuming || !state.window.reconsume(link.consumer_prefetch, count) {
            return;
        }
        link.consumer_prefetch = count;
        state.restarts += 1;
        link.retired.retain(|t| !t.0.is_finished());
        for q in &state.queues {
            let Some((old, _)) = link.consumers.get(&q.name) else {
                continue;
            };
            if let Err(e) = link.broker.cancel(old).await {
                warn!(queue = %q.name, error = %e, "Cannot replace the consumer for a new prefetch count.");
                continue;
            }
            let tag = consumer_tag(
                &self.hostname,
                state.generation,
                &format!("{}~{}", q.name, state.restarts),
            );
            match consume_with_tag(&link.broker, myself, state.generation, q, tag).await {
                // The old entry's stream task keeps running until its stream drains.
                Ok((tag, task)) => {
                    if let Some((_, old_task)) = link.consumers.insert(q.name.clone(), (tag, task))
                    {
                        link.retired.push(old_task);
                    }
                }
                Err(e) => {
                    warn!(queue = %q.name, error = %e, "Cannot consume again for a new prefetch count.")
                }
            }
        }
    }
}
