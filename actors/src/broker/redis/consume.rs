//! Declaring and consuming queues on Redis. A queue is its lists (nothing to create); a
//! binding to a named exchange is a member of the exchange's binding set, as kombu's
//! `queue_bind` writes it, so that publishers that route through the exchange (and the
//! restore of a message sent through it) find the queue. Consuming adds the queue to the
//! fetcher's set; the handle returned stops it when dropped.

use std::sync::Arc;

use super::keys::topic_regex;
use super::link::Link;
use super::{RedisError, fetch};
use crate::abort::AbortOnDrop;
use crate::broker::StreamEvent;
use crate::settings::queues::TaskQueue;

impl Link {
    /// Records `queue`'s bindings (its own and its extra ones) in the binding sets.
    pub async fn declare_task_queue(&self, queue: &TaskQueue) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        let own = (&queue.exchange, &queue.exchange_type, &queue.routing_key);
        let extra = queue
            .bindings
            .iter()
            .map(|b| (&b.exchange, &b.exchange_type, &b.routing_key));
        for (exchange, kind, key) in std::iter::once(own).chain(extra) {
            if exchange.is_empty() {
                continue; // the anonymous exchange routes by queue name
            }
            let pattern = match kind.as_str() {
                "direct" => String::new(),
                "topic" => topic_regex(key),
                other => {
                    return Err(RedisError::Unsupported(format!(
                        "queue {:?} is bound to the {other} exchange {exchange:?}: on a Redis \
                         broker celeryd consumes queues through direct and topic exchanges \
                         (bind it to a direct or topic exchange, or use RabbitMQ)",
                        queue.name
                    )));
                }
            };
            let member = self.keys().binding_member(key, &pattern, &queue.name);
            pipe.cmd("SADD")
                .arg(self.keys().bindings(exchange))
                .arg(&member)
                .ignore();
            pipe.cmd("SADD")
                .arg(self.keys().permanent_bindings(exchange))
                .arg(&member)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn()).await?;
        Ok(())
    }

    /// Consumes `queue` under `tag`: its deliveries go to `sink` until it returns false or
    /// the handle is dropped.
    pub fn consume<F>(&self, queue: &str, tag: &str, sink: F) -> AbortOnDrop
    where
        F: Fn(StreamEvent) -> bool + Send + Sync + 'static,
    {
        {
            let mut state = self.shared.state();
            if !state.queues.iter().any(|q| q == queue) {
                state.queues.push(queue.to_owned());
            }
            state
                .sinks
                .insert(queue.to_owned(), (tag.to_owned(), Arc::new(sink)));
        }
        {
            let mut fetcher = super::link::lock(&self.fetcher);
            if fetcher.as_ref().is_none_or(|f| f.0.is_finished()) {
                *fetcher = Some(AbortOnDrop(tokio::spawn(fetch::fetcher(
                    self.shared.clone(),
                ))));
            }
        }
        self.start_timers();
        self.shared.wake.notify_one();
        // Dropping the handle drops the guard, which takes the queue out of the set.
        let guard = QueueGuard {
            link: Arc::downgrade(&self.shared),
            queue: queue.to_owned(),
            tag: tag.to_owned(),
        };
        AbortOnDrop(tokio::spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        }))
    }

    /// Stops consuming the queue consumed under `tag` (what it delivered stays held).
    pub fn cancel(&self, tag: &str) {
        let mut state = self.shared.state();
        let queue = state
            .sinks
            .iter()
            .find(|(_, (t, _))| t == tag)
            .map(|(q, _)| q.clone());
        if let Some(q) = queue {
            state.sinks.remove(&q);
            state.queues.retain(|x| *x != q);
        }
    }
}

/// Takes a queue out of the fetcher's set when its consumer's handle is dropped (unless a
/// newer consumer of the queue took its place).
struct QueueGuard {
    link: std::sync::Weak<super::link::Shared>,
    queue: String,
    tag: String,
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        let Some(shared) = self.link.upgrade() else {
            return;
        };
        let mut state = shared.state();
        if state
            .sinks
            .get(&self.queue)
            .is_some_and(|(t, _)| *t == self.tag)
        {
            state.sinks.remove(&self.queue);
            state.queues.retain(|q| *q != self.queue);
        }
    }
}
