//! Publishing on Redis as kombu does: to the anonymous exchange, LPUSH onto the list of the
//! queue the routing key names (for the message's priority step); to a named exchange, onto
//! every queue its binding set routes the key to; to a fanout exchange, PUBLISH on its
//! channel. rpc:// results go to the client's reply queue through the anonymous exchange.

use redis::aio::MultiplexedConnection;
use serde_json::{Map, Value, json};

use super::keys::route;
use super::link::{Link, Shared};
use super::{RedisError, envelope};
use crate::broker::outbox::{Outbox, PendingResult};
use crate::protocol::encode::TaskMessage;

impl Link {
    /// Publishes a task message to `exchange` with `routing_key`; an error when no queue
    /// is bound there (kombu drops such a message silently; a retry must not vanish).
    pub async fn publish_task_to(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &TaskMessage,
    ) -> Result<(), RedisError> {
        let mut conn = self.conn();
        let lists = self
            .shared
            .targets(&mut conn, exchange, routing_key, message.priority)
            .await?;
        if lists.is_empty() {
            return Err(RedisError::NoRoute {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            });
        }
        let item = envelope::task(message, exchange, routing_key);
        let mut pipe = redis::pipe();
        for list in &lists {
            pipe.cmd("LPUSH").arg(list).arg(&item).ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Publishes an rpc:// result and waits until Redis has it.
    pub async fn send_result(
        &self,
        queue: &str,
        correlation_id: &str,
        body: &[u8],
    ) -> Result<(), RedisError> {
        let item = envelope::result(queue, correlation_id, body);
        redis::cmd("LPUSH")
            .arg(self.keys().queue_key(queue, 0))
            .arg(item)
            .query_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Hands an rpc:// result to the outbox without waiting; a failed one comes back from
    /// the outbox to be sent after reconnecting.
    pub fn publish_result(
        &self,
        outbox: &mut Outbox,
        result: PendingResult,
    ) -> Option<PendingResult> {
        let item = envelope::result(&result.queue, &result.correlation_id, &result.body);
        let key = self.keys().queue_key(&result.queue, 0);
        let mut conn = self.conn();
        let sending = tokio::spawn(async move {
            redis::cmd("LPUSH")
                .arg(key)
                .arg(item)
                .query_async::<()>(&mut conn)
                .await
        });
        outbox.push(Box::pin(async move {
            match sending.await {
                Ok(Ok(())) => None,
                _ => Some(result),
            }
        }))
    }

    /// PUBLISHes a JSON `body` on the channel of fanout `exchange` (narrowed by
    /// `routing_key` under `fanout_patterns`), with `headers`.
    pub async fn publish_fanout_json(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        headers: Map<String, Value>,
    ) -> Result<(), RedisError> {
        let channel =
            self.keys()
                .fanout_channel(exchange, routing_key, self.shared.options.fanout_patterns);
        let item = envelope::build(body, headers, exchange, routing_key, 0, Map::new());
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(item)
            .query_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    /// `--purge`: deletes every waiting message of `queues` (all their priority lists);
    /// returns (queue, messages deleted).
    pub async fn purge(&self, queues: &[String]) -> Result<Vec<(String, u32)>, RedisError> {
        let mut conn = self.conn();
        let mut out = Vec::new();
        for q in queues {
            let lists = self.keys().fetch_order(std::slice::from_ref(q));
            let mut pipe = redis::pipe();
            pipe.atomic();
            for l in &lists {
                pipe.cmd("LLEN").arg(l);
            }
            for l in &lists {
                pipe.cmd("DEL").arg(l).ignore();
            }
            let sizes: Vec<u32> = pipe.query_async(&mut conn).await?;
            out.push((q.clone(), sizes.iter().sum()));
        }
        Ok(out)
    }

    /// Publishes an event (Celery's `celeryev` is a fanout exchange on Redis).
    pub async fn publish_event(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        hostname: &str,
    ) -> Result<(), RedisError> {
        let mut headers = Map::new();
        headers.insert("hostname".into(), json!(hostname));
        self.publish_fanout_json(exchange, routing_key, body, headers)
            .await
    }
}

impl Shared {
    /// The lists a message to `exchange` with `routing_key` and `priority` goes to.
    pub(super) async fn targets(
        &self,
        conn: &mut MultiplexedConnection,
        exchange: &str,
        routing_key: &str,
        priority: u8,
    ) -> Result<Vec<String>, RedisError> {
        let members: Vec<String> = if exchange.is_empty() {
            Vec::new()
        } else {
            redis::cmd("SMEMBERS")
                .arg(self.keys.bindings(exchange))
                .query_async(conn)
                .await?
        };
        let queues = route(&self.keys, exchange, routing_key, &members);
        Ok(queues
            .iter()
            .filter(|q| !q.is_empty())
            .map(|q| self.keys.queue_key(q, priority))
            .collect())
    }
}
