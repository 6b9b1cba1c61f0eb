//! A link to the broker as the engine's actors hold it, whichever transport carries it: one
//! variant per transport folder, each method handing the call to it. The consumer, remote
//! control, events, beat and mingle name only these types; a second transport is a new
//! folder and one more arm in each method here.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::{Map, Value};

use super::outbox::{Outbox, PendingResult};
use super::{BrokerError, Message, StreamEvent, amqp, redis};
use crate::abort::AbortOnDrop;
use crate::protocol::DeliveryInfo;
use crate::protocol::encode::TaskMessage;
use crate::settings::BrokerSettings;
use crate::settings::queues::TaskQueue;

pub use super::amqp::pidbox::PidboxRequest;

/// A connection to the broker and the channel (or session) its consumers and acks run on.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per connection: its size does not matter"
)]
pub enum Link {
    /// AMQP 0-9-1 (RabbitMQ).
    Amqp(amqp::Link),
    /// Redis, as kombu's redis transport.
    Redis(redis::Link),
}

/// A further channel on a [`Link`]'s connection.
#[derive(Debug, Clone)]
pub enum Channel {
    /// An AMQP channel.
    Amqp(amqp::Channel),
    /// A Redis link's connection.
    Redis(redis::Channel),
}

/// A task publish handed to the broker whose confirm is still to come.
#[derive(Debug)]
pub enum Confirm {
    /// An AMQP publisher confirm.
    Amqp(amqp::Confirm),
    /// Settled already (Redis answers each push).
    Done(bool),
}

/// A declaration to run in the background ([`Link::native_delayed_declarer`]).
pub type Declaring = Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send>>;

impl Link {
    /// Connects (`frame_max`: a raised frame size after a frame that did not fit) under the
    /// connection name `name`.
    pub async fn open(
        settings: &BrokerSettings,
        name: &str,
        frame_max: Option<u32>,
    ) -> Result<Link, BrokerError> {
        if let Some(redis) = settings.redis() {
            let (url, options) = redis.map_err(|e| BrokerError::Url(e.to_string()))?;
            return Ok(Link::Redis(redis::Link::open(&url, &options, name).await?));
        }
        Ok(Link::Amqp(
            amqp::Link::open(settings, name, frame_max).await?,
        ))
    }

    /// Connects like [`Link::open`], with task publishes on the main channel confirmed.
    pub async fn open_confirmed(
        settings: &BrokerSettings,
        name: &str,
    ) -> Result<Link, BrokerError> {
        if settings.is_redis() {
            return Link::open(settings, name, None).await;
        }
        Ok(Link::Amqp(
            amqp::Link::open_confirmed(settings, name).await?,
        ))
    }

    /// Whether the consuming channel is still open.
    pub fn is_open(&self) -> bool {
        match self {
            Link::Amqp(l) => l.is_open(),
            Link::Redis(l) => l.is_open(),
        }
    }

    /// Whether the connection is still up (a closed channel alone does not count).
    pub fn is_connected(&self) -> bool {
        match self {
            Link::Amqp(l) => l.is_connected(),
            Link::Redis(l) => l.is_open(),
        }
    }

    /// Calls `lost` once with the error when the connection fails.
    pub fn watch<F>(&self, lost: F) -> AbortOnDrop
    where
        F: FnOnce(String) + Send + 'static,
    {
        match self {
            Link::Amqp(l) => l.watch(lost),
            Link::Redis(l) => l.watch(lost),
        }
    }

    /// A new channel on the connection.
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        match self {
            Link::Amqp(l) => Ok(Channel::Amqp(l.channel().await?)),
            Link::Redis(l) => Ok(Channel::Redis(l.channel())),
        }
    }

    /// Declares a task queue (its exchange and bindings) on the consuming channel.
    pub async fn declare_task_queue(&self, queue: &TaskQueue) -> Result<(), BrokerError> {
        match self {
            Link::Amqp(l) => l.declare_task_queue(queue).await,
            Link::Redis(l) => Ok(l.declare_task_queue(queue).await?),
        }
    }

    /// Declares a task queue so that a refusal closes nothing else.
    pub async fn declare_on_own_channel(&self, queue: &TaskQueue) -> Result<(), BrokerError> {
        match self {
            Link::Amqp(l) => l.declare_on_own_channel(queue).await,
            Link::Redis(l) => Ok(l.declare_task_queue(queue).await?),
        }
    }

    /// Sets the prefetch limit (`global`: for the whole channel, not per consumer).
    pub async fn set_prefetch(&self, count: u16, global: bool) -> Result<(), BrokerError> {
        match self {
            Link::Amqp(l) => l.set_prefetch(count, global).await,
            Link::Redis(l) => {
                l.set_prefetch(count);
                Ok(())
            }
        }
    }

    /// Consumes `queue` under `tag`, passing what arrives to `sink`.
    pub async fn consume<F>(
        &self,
        queue: &str,
        tag: &str,
        sink: F,
    ) -> Result<AbortOnDrop, BrokerError>
    where
        F: Fn(StreamEvent) -> bool + Send + Sync + 'static,
    {
        match self {
            Link::Amqp(l) => l.consume(queue, tag, sink).await,
            Link::Redis(l) => Ok(l.consume(queue, tag, sink)),
        }
    }

    /// Stops the consumer `tag` (what it was delivered stays unacked and ackable).
    pub async fn cancel(&self, tag: &str) -> Result<(), BrokerError> {
        match self {
            Link::Amqp(l) => l.cancel(tag).await,
            Link::Redis(l) => {
                l.cancel(tag);
                Ok(())
            }
        }
    }

    /// Acks without waiting (`multiple`: every outstanding tag up to `tag`).
    pub fn ack(&self, tag: u64, multiple: bool) {
        match self {
            Link::Amqp(l) => l.ack(tag, multiple),
            Link::Redis(l) => l.ack(tag, multiple),
        }
    }

    /// Rejects without waiting (`requeue`: hand it back).
    pub fn reject(&self, tag: u64, requeue: bool) {
        match self {
            Link::Amqp(l) => l.reject(tag, requeue),
            Link::Redis(l) => l.reject(tag, requeue),
        }
    }

    /// Hands back an unstarted message at shutdown: requeued (AMQP), or put back at the
    /// front of its queue (Redis, as kombu restores what a closing worker held).
    pub fn give_back(&self, tag: u64) {
        match self {
            Link::Amqp(l) => l.reject(tag, true),
            Link::Redis(l) => l.give_back(tag),
        }
    }

    /// Hands an rpc:// result to the outbox; returns it if it was refused.
    pub fn publish_result(
        &self,
        outbox: &mut Outbox,
        result: PendingResult,
    ) -> Option<PendingResult> {
        match self {
            Link::Amqp(l) => l.publish_result(outbox, result),
            Link::Redis(l) => l.publish_result(outbox, result),
        }
    }

    /// Publishes an rpc:// result and waits until the broker has it.
    pub async fn send_result(
        &self,
        queue: &str,
        correlation_id: &str,
        body: &[u8],
    ) -> Result<(), BrokerError> {
        match self {
            Link::Amqp(l) => l.main().publish_result(queue, correlation_id, body).await,
            Link::Redis(l) => Ok(l.send_result(queue, correlation_id, body).await?),
        }
    }

    /// Where a retry of a task delivered as `info` is published (exchange, routing key).
    pub fn retry_route(
        &self,
        info: &DeliveryInfo,
        queue: Option<&TaskQueue>,
        countdown: f64,
    ) -> (String, String) {
        match self {
            Link::Amqp(l) => l.retry_route(info, queue, countdown),
            Link::Redis(_) => redis::retry_route(info),
        }
    }

    /// Publishes a task message on the worker's own account (a retry, a canvas step) and
    /// waits until the broker has it.
    pub async fn publish_own(
        &mut self,
        exchange: &str,
        routing_key: &str,
        message: &TaskMessage,
    ) -> Result<(), BrokerError> {
        match self {
            Link::Amqp(l) => l.publish_own(exchange, routing_key, message).await,
            Link::Redis(l) => Ok(l.publish_task_to(exchange, routing_key, message).await?),
        }
    }

    /// Leaves a far-future ETA message waiting in the broker for `seconds`; the exchange it
    /// went to, or `None` (logged) when the task is to be held by the worker instead.
    pub async fn delay(
        &mut self,
        message: &Message,
        info: &DeliveryInfo,
        queues: &[TaskQueue],
        seconds: u64,
    ) -> Option<String> {
        match self {
            Link::Amqp(l) => l.delay(message, info, queues, seconds).await,
            // Redis has no delayed delivery: the worker holds the task, its lease renewed.
            Link::Redis(_) => None,
        }
    }

    /// The consumed queues changed (what was declared for them is declared again).
    pub fn queues_changed(&mut self) {
        match self {
            Link::Amqp(l) => l.queues_changed(),
            Link::Redis(_) => {}
        }
    }

    /// Declaring Celery's native delayed delivery for `queues`, to run in the background;
    /// `None` where the transport has no such topology.
    pub async fn native_delayed_declarer(
        &self,
        queue_type: &'static str,
        queues: Vec<TaskQueue>,
    ) -> Result<Option<Declaring>, BrokerError> {
        match self {
            Link::Amqp(l) => Ok(Some(Box::pin(
                l.native_delayed_declarer(queue_type, queues).await?,
            ))),
            Link::Redis(_) => Ok(None),
        }
    }

    /// Records whether the native delayed delivery is declared on this connection.
    pub fn set_native_declared(&mut self, declared: bool) {
        match self {
            Link::Amqp(l) => l.set_native_declared(declared),
            Link::Redis(_) => {}
        }
    }

    /// Declares the durable topic exchange `exchange` (Celery's `celeryev`).
    pub async fn declare_topic(&self, exchange: &str) -> Result<(), BrokerError> {
        match self {
            Link::Amqp(l) => l.declare_topic(exchange).await,
            // A fanout exchange on Redis is a pub/sub channel: nothing to declare.
            Link::Redis(_) => Ok(()),
        }
    }

    /// Publishes an event body (JSON, transient, a `hostname` header) to `exchange` with
    /// `routing_key`.
    pub async fn publish_event(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        hostname: &str,
    ) -> Result<(), BrokerError> {
        match self {
            Link::Amqp(l) => l.publish_event(exchange, routing_key, body, hostname).await,
            Link::Redis(l) => Ok(l
                .publish_event(exchange, routing_key, body, hostname)
                .await?),
        }
    }

    /// Serves this node's pidbox `queue`: each request goes to `sink` until it returns
    /// false; `ended` is called when the stream ends. The node name in use elsewhere: an
    /// error of kind `ResourceLocked`.
    pub async fn serve_pidbox<F, E>(
        &self,
        queue: &str,
        sink: F,
        ended: E,
    ) -> Result<AbortOnDrop, BrokerError>
    where
        F: Fn(PidboxRequest) -> bool + Send + 'static,
        E: FnOnce() + Send + 'static,
    {
        match self {
            Link::Amqp(l) => l.serve_pidbox(queue, sink, ended).await,
            Link::Redis(l) => Ok(l.serve_pidbox(sink, ended).await?),
        }
    }

    /// Subscribes to the fanout exchange `exchange`: each body goes to `sink` until it
    /// returns false; `ended` is called when the subscription ends.
    pub async fn subscribe_fanout<F, E>(
        &self,
        exchange: &str,
        tag: &str,
        sink: F,
        ended: E,
    ) -> Result<AbortOnDrop, BrokerError>
    where
        F: Fn(Vec<u8>) -> bool + Send + 'static,
        E: FnOnce() + Send + 'static,
    {
        match self {
            Link::Amqp(l) => l.subscribe_fanout(exchange, tag, sink, ended).await,
            Link::Redis(l) => Ok(l
                .subscribe_fanout(exchange, move |m| sink(m.body), ended)
                .await?),
        }
    }

    /// Publishes a JSON body to the fanout `exchange`, transient, without a confirm.
    pub async fn publish_fanout(&self, exchange: &str, body: &[u8]) -> Result<(), BrokerError> {
        match self {
            Link::Amqp(l) => l.publish_fanout(exchange, body).await,
            Link::Redis(l) => Ok(l
                .publish_fanout_json(exchange, "", body, Map::new())
                .await?),
        }
    }

    /// Takes the lock `name`, held as long as the returned channel; held by another
    /// connection: an error of kind `ResourceLocked`.
    pub async fn hold_exclusive(&self, name: &str) -> Result<Channel, BrokerError> {
        match self {
            Link::Amqp(l) => Ok(Channel::Amqp(l.hold_exclusive(name).await?)),
            Link::Redis(l) => Ok(Channel::Redis(l.hold_lock(name).await?)),
        }
    }

    /// Hands a task message to the broker (a link opened confirmed); the confirm comes later.
    pub async fn send_task(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &TaskMessage,
    ) -> Result<Confirm, BrokerError> {
        match self {
            Link::Amqp(l) => Ok(Confirm::Amqp(
                l.send_task(exchange, routing_key, message).await?,
            )),
            Link::Redis(l) => {
                l.publish_task_to(exchange, routing_key, message).await?;
                Ok(Confirm::Done(true))
            }
        }
    }

    /// Publishes a task message as a Python client does (to the queue by name).
    pub async fn publish_task(
        &self,
        queue: &str,
        message: &TaskMessage,
    ) -> Result<(), BrokerError> {
        match self {
            Link::Amqp(l) => l.publish_task(queue, message).await,
            Link::Redis(l) => Ok(l.publish_task_to("", queue, message).await?),
        }
    }

    /// Receives the rpc:// results sent to the reply queue `name` (declared here): each body
    /// goes to `sink` until it returns false.
    pub async fn consume_results<F>(&self, name: &str, sink: F) -> Result<AbortOnDrop, BrokerError>
    where
        F: Fn(Vec<u8>) -> bool + Send + 'static,
    {
        match self {
            Link::Amqp(l) => l.consume_results(name, sink).await,
            Link::Redis(l) => Ok(l.consume_results(name, sink).await?),
        }
    }

    /// Closes the channel and the connection.
    pub async fn close(self, reason: &str) {
        match self {
            Link::Amqp(l) => l.close(reason).await,
            Link::Redis(l) => l.close(reason).await,
        }
    }

    /// Closes the connection with `code` (320 when this side gives it up to reconnect).
    pub async fn close_connection(&self, code: u16, reason: &str) {
        match self {
            Link::Amqp(l) => l.close_connection(code, reason).await,
            Link::Redis(_) => {}
        }
    }
}

impl Channel {
    /// Whether it is still open.
    pub fn is_open(&self) -> bool {
        match self {
            Channel::Amqp(c) => c.is_open(),
            Channel::Redis(_) => true,
        }
    }

    /// Sends a remote-control request (`body`) to the workers and passes each reply, by
    /// node name, to `on_reply` until `timeout` or `limit` replies.
    pub async fn pidbox_request(
        &self,
        body: Map<String, Value>,
        reply: bool,
        timeout: Duration,
        limit: Option<usize>,
        on_reply: &mut impl FnMut(&str, &Value),
    ) -> Result<(), BrokerError> {
        match self {
            Channel::Amqp(c) => {
                c.pidbox_request(body, reply, timeout, limit, on_reply)
                    .await
            }
            Channel::Redis(c) => Ok(c
                .pidbox_request(body, reply, timeout, limit, on_reply)
                .await?),
        }
    }

    /// Publishes a control reply `body` to `exchange` with `routing_key`, with the request's
    /// `ticket` and this node's `clock`; `declared` names the reply exchanges declared on
    /// this channel so far.
    pub async fn publish_reply(
        &self,
        declared: &mut HashSet<String>,
        exchange: &str,
        routing_key: &str,
        ticket: Option<&str>,
        clock: u64,
        body: &[u8],
    ) -> Result<(), BrokerError> {
        match self {
            Channel::Amqp(c) => {
                c.publish_reply(declared, exchange, routing_key, ticket, clock, body)
                    .await
            }
            Channel::Redis(c) => Ok(c
                .publish_reply(declared, exchange, routing_key, ticket, clock, body)
                .await?),
        }
    }

    /// Closes it.
    pub async fn close(&self, reason: &str) {
        match self {
            Channel::Amqp(c) => c.close(reason).await,
            Channel::Redis(_) => {}
        }
    }
}

impl Confirm {
    /// Waits for the broker: true when it took the message, false when it refused it.
    pub async fn wait(self) -> Result<bool, BrokerError> {
        match self {
            Confirm::Amqp(c) => c.wait().await,
            Confirm::Done(taken) => Ok(taken),
        }
    }
}
