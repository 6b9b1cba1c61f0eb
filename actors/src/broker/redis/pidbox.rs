//! Celery's pidbox and other fanout exchanges on Redis (`redis-transport.md` §1.6): requests
//! are PUBLISHed on `/{db}.celery.pidbox` and each worker PSUBSCRIBEs to it; replies go
//! through the direct exchange `reply.celery.pidbox` to the client's list
//! `<oid>.reply.celery.pidbox`, found in the exchange's binding set.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use tracing::debug;

use super::link::{Link, Shared};
use super::{RedisError, connect, envelope};
use crate::abort::AbortOnDrop;
use crate::broker::PidboxRequest;
use crate::protocol::pidbox::{
    PIDBOX_EXCHANGE, REPLY_EXCHANGE, hand_replies, request_expires, with_reply,
};

/// A handle for what a Redis link does besides consuming (replies, requests, locks):
/// Redis has no channels, so it is the link's connection, with what it holds.
#[derive(Debug, Clone)]
pub struct Channel {
    pub(super) shared: Arc<Shared>,
    /// A lock held as long as the handle (beat's election).
    pub(super) _held: Option<Arc<AbortOnDrop>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A handle on this link's connection.
    pub fn channel(&self) -> Channel {
        Channel {
            shared: self.shared.clone(),
            _held: None,
        }
    }

    /// Subscribes to the channel of fanout `exchange` (all its routing keys): each message's
    /// body goes to `sink` until it returns false; `ended` is called when the subscription
    /// ends (the connection was lost).
    pub async fn subscribe_fanout<F, E>(
        &self,
        exchange: &str,
        sink: F,
        ended: E,
    ) -> Result<AbortOnDrop, RedisError>
    where
        F: Fn(envelope::Message) -> bool + Send + 'static,
        E: FnOnce() + Send + 'static,
    {
        let shared = &self.shared;
        let mut pubsub = shared.client.get_async_pubsub().await?;
        let base = shared.keys.fanout_channel(exchange, "", false);
        pubsub.psubscribe(&base).await?;
        if shared.options.fanout_patterns {
            pubsub.psubscribe(format!("{base}/*")).await?;
        }
        Ok(AbortOnDrop(tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(msg) = messages.next().await {
                match envelope::parse(msg.get_payload_bytes()) {
                    Ok(m) => {
                        if !sink(m) {
                            return;
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, "Ignored a fanout message that is not an envelope.")
                    }
                }
            }
            ended();
        })))
    }

    /// Serves this node's pidbox: each request PUBLISHed on `celery.pidbox` goes to `sink`
    /// until it returns false; `ended` is called when the subscription ends.
    pub async fn serve_pidbox<F, E>(&self, sink: F, ended: E) -> Result<AbortOnDrop, RedisError>
    where
        F: Fn(PidboxRequest) -> bool + Send + 'static,
        E: FnOnce() + Send + 'static,
    {
        self.subscribe_fanout(
            PIDBOX_EXCHANGE,
            move |m| {
                let clock = m.headers.get("clock").and_then(Value::as_u64);
                sink(PidboxRequest {
                    clock,
                    body: m.body,
                })
            },
            ended,
        )
        .await
    }
}

impl Channel {
    /// Publishes a control reply to `exchange`/`routing_key` (the client's list, through
    /// the binding set), with the request's `ticket` and this node's `clock`. A reply with
    /// no list bound is dropped, as kombu drops it.
    pub async fn publish_reply(
        &self,
        _declared: &mut HashSet<String>,
        exchange: &str,
        routing_key: &str,
        ticket: Option<&str>,
        clock: u64,
        body: &[u8],
    ) -> Result<(), RedisError> {
        let mut headers = Map::new();
        headers.insert("clock".into(), json!(clock));
        if let Some(t) = ticket {
            headers.insert("ticket".into(), json!(t));
        }
        let shared = &self.shared;
        let mut conn = shared.conn.clone();
        let lists = shared.targets(&mut conn, exchange, routing_key, 0).await?;
        if lists.is_empty() {
            debug!(
                exchange,
                routing_key, "No list bound for a control reply; dropped."
            );
            return Ok(());
        }
        let item = envelope::build(body, headers, exchange, routing_key, 0, Map::new());
        let mut pipe = redis::pipe();
        for l in &lists {
            pipe.cmd("LPUSH").arg(l).arg(&item).ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Sends a remote-control request and, when `reply`, hands each `(node, value)` to
    /// `on_reply` as it arrives, until `limit` replies or `timeout` without one.
    pub async fn pidbox_request(
        &self,
        body: Map<String, Value>,
        reply: bool,
        timeout: Duration,
        limit: Option<usize>,
        on_reply: &mut impl FnMut(&str, &Value),
    ) -> Result<(), RedisError> {
        let shared = &self.shared;
        let keys = &shared.keys;
        let mut conn = shared.conn.clone();
        let oid = uuid::Uuid::new_v4().to_string();
        let ticket = uuid::Uuid::new_v4().to_string();
        let queue = format!("{oid}.reply.celery.pidbox");
        let member = keys.binding_member(&oid, "", &queue);
        let mut body = body;
        if reply {
            redis::cmd("SADD")
                .arg(keys.bindings(REPLY_EXCHANGE))
                .arg(&member)
                .query_async::<()>(&mut conn)
                .await?;
            body = with_reply(body, &ticket, &oid);
        }
        let payload = serde_json::to_vec(&body).unwrap_or_default();
        let expires = request_expires(reply, timeout);
        let mut headers = Map::new();
        headers.insert("clock".into(), json!(1));
        headers.insert("expires".into(), json!(expires));
        let channel = keys.fanout_channel(PIDBOX_EXCHANGE, "", false);
        let item = envelope::build(&payload, headers, PIDBOX_EXCHANGE, "", 0, Map::new());
        redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(item)
            .query_async::<()>(&mut conn)
            .await?;
        if !reply {
            return Ok(());
        }
        let list = keys.queue_key(&queue, 0);
        let mut waiting = connect::connection(&shared.client, &shared.options, true).await?;
        let mut got = 0;
        let collected = async {
            while limit.is_none_or(|l| got < l) {
                let popped: Option<(String, Vec<u8>)> = redis::cmd("BRPOP")
                    .arg(&list)
                    .arg(timeout.as_secs_f64())
                    .query_async(&mut waiting)
                    .await?;
                let Some((_, item)) = popped else {
                    break;
                };
                let Ok(m) = envelope::parse(&item) else {
                    continue;
                };
                let theirs = m.headers.get("ticket").and_then(Value::as_str);
                if theirs.is_some_and(|t| t != ticket) {
                    continue;
                }
                got += hand_replies(&m.body, on_reply);
            }
            Ok::<(), RedisError>(())
        };
        let done = collected.await;
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(&list).ignore();
        pipe.cmd("SREM")
            .arg(keys.bindings(REPLY_EXCHANGE))
            .arg(&member)
            .ignore();
        let _ = pipe.query_async::<()>(&mut conn).await;
        done
    }
}
