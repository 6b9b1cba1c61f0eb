//! One connection to the broker as the engine holds it: the connection, the channel its
//! consumers and acks run on, and further channels opened on it. Newtypes over lapin's, so
//! that what holds a link names no lapin type.

use lapin::BasicProperties;
use lapin::options::{BasicCancelOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::TaskQueue;
use super::consume::consume;
use crate::abort::AbortOnDrop;
use crate::broker::StreamEvent;
use crate::broker::outbox::{Outbox, PendingResult};
use crate::broker::{self, BrokerError};
use crate::protocol::encode::TaskMessage;
use crate::settings::BrokerSettings;

/// A connection and its consuming channel.
#[derive(Debug)]
pub struct Link {
    pub(super) connection: lapin::Connection,
    pub(super) channel: Channel,
    /// What the worker publishes on its own account ([`own`](super::own)).
    pub(super) own: super::own::Own,
}

/// A channel on a [`Link`]'s connection.
#[derive(Debug, Clone)]
pub struct Channel(pub(super) lapin::Channel);

impl Link {
    /// Connects ([`connect`](super::connect()): failover list, heartbeat, the node's name as
    /// the connection's) and opens the consuming channel.
    pub async fn open(
        settings: &BrokerSettings,
        name: &str,
        frame_max: Option<u32>,
    ) -> Result<Link, BrokerError> {
        let (connection, channel) = super::connect(settings, name, frame_max).await?;
        Ok(Link {
            connection,
            channel: Channel(channel),
            own: Default::default(),
        })
    }

    /// Connects like [`Link::open`], with the main channel in confirm mode.
    pub async fn open_confirmed(
        settings: &BrokerSettings,
        name: &str,
    ) -> Result<Link, BrokerError> {
        let link = Link::open(settings, name, None).await?;
        link.channel
            .0
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(link)
    }

    /// The consuming channel.
    pub fn main(&self) -> &Channel {
        &self.channel
    }

    /// Whether the consuming channel is still open.
    pub fn is_open(&self) -> bool {
        self.channel.is_open()
    }

    /// A new channel.
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        Ok(Channel(self.connection.create_channel().await?))
    }

    /// A new channel in confirm mode: each publish on it resolves once the broker confirmed.
    pub async fn confirm_channel(&self) -> Result<Channel, BrokerError> {
        let ch = self.connection.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Channel(ch))
    }

    /// Declares a task queue on the consuming channel ([`super::declare_task_queue`]).
    pub async fn declare_task_queue(&self, queue: &TaskQueue) -> Result<(), BrokerError> {
        super::declare_task_queue(&self.channel.0, queue).await
    }

    /// Declares a task queue on a channel of its own, so that a refusal closes nothing else.
    pub async fn declare_on_own_channel(&self, queue: &TaskQueue) -> Result<(), BrokerError> {
        super::declare_on_own_channel(&self.connection, queue).await
    }

    /// Sets the prefetch limit of the consuming channel (`global`: channel-wide).
    pub async fn set_prefetch(&self, count: u16, global: bool) -> Result<(), BrokerError> {
        super::set_prefetch(&self.channel.0, count, global).await
    }

    /// Consumes `queue` under `tag`, passing what arrives to `sink`.
    pub async fn consume<F>(
        &self,
        queue: &str,
        tag: &str,
        sink: F,
    ) -> Result<AbortOnDrop, BrokerError>
    where
        F: Fn(StreamEvent) -> bool + Send + 'static,
    {
        consume(&self.channel.0, queue, tag, sink).await
    }

    /// Cancels the consumer `tag` (what it was delivered stays unacked and ackable).
    pub async fn cancel(&self, tag: &str) -> Result<(), BrokerError> {
        self.channel
            .0
            .basic_cancel(tag.into(), BasicCancelOptions::default())
            .await?;
        Ok(())
    }

    /// Acks without waiting (`multiple`: every outstanding tag up to `tag`).
    pub fn ack(&self, tag: u64, multiple: bool) {
        super::outbox::ack(&self.channel.0, tag, multiple);
    }

    /// Rejects without waiting (`requeue`: hand it back).
    pub fn reject(&self, tag: u64, requeue: bool) {
        super::outbox::reject(&self.channel.0, tag, requeue);
    }

    /// Hands a result to the outbox on the consuming channel; returns it if it was refused.
    pub fn publish_result(
        &self,
        outbox: &mut Outbox,
        result: PendingResult,
    ) -> Option<PendingResult> {
        super::outbox::publish(outbox, &self.channel.0, result)
    }

    /// Declares the durable topic exchange `exchange` (Celery's `celeryev`).
    pub async fn declare_topic(&self, exchange: &str) -> Result<(), BrokerError> {
        super::declare::declare_durable_topic(&self.channel.0, exchange).await?;
        Ok(())
    }

    /// Publishes an event body (JSON, transient, a `hostname` header as Celery sends it) to
    /// `exchange` with `routing_key`, without a confirm.
    pub async fn publish_event(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        hostname: &str,
    ) -> Result<(), BrokerError> {
        let mut headers = FieldTable::default();
        headers.insert(
            "hostname".into(),
            AMQPValue::LongString(LongString::from(hostname.as_bytes().to_vec())),
        );
        publish_transient_json(&self.channel.0, exchange, routing_key, body, headers).await
    }

    /// Closes the channel and the connection.
    pub async fn close(self, reason: &str) {
        let _ = self.channel.0.close(200, reason.into()).await;
        let _ = self.connection.close(200, reason.into()).await;
    }
}

impl Channel {
    /// Whether it is still open.
    pub fn is_open(&self) -> bool {
        self.0.status().connected()
    }

    /// Publishes a task message to `exchange` with `routing_key`.
    pub async fn publish_task_to(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &TaskMessage,
    ) -> Result<(), BrokerError> {
        super::publish_task_to(&self.0, exchange, routing_key, message).await
    }

    /// Sends a delivered message on again, as it came, into the delay ladder.
    pub async fn publish_delayed(
        &self,
        message: &broker::Message,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        let broker::Message::Amqp(message) = message else {
            return Err(BrokerError::Unsupported(
                "only a message delivered over AMQP enters the AMQP delay ladder".into(),
            ));
        };
        super::publish_delayed(&self.0, message, exchange, routing_key).await
    }

    /// Publishes a result body to `queue` (rpc://) and waits for the broker.
    pub async fn publish_result(
        &self,
        queue: &str,
        correlation_id: &str,
        body: &[u8],
    ) -> Result<(), BrokerError> {
        super::publish_result(&self.0, queue, correlation_id, body).await
    }

    /// Declares celeryd's delay ladder for `queues`.
    pub async fn declare_delay_topology(&self, queues: &[String]) -> Result<(), BrokerError> {
        super::declare_delay_topology(&self.0, queues).await
    }

    /// Declares Celery's native delayed delivery for `queues`.
    pub async fn declare_native_delayed_delivery(
        &self,
        queue_type: &str,
        queues: &[TaskQueue],
    ) -> Result<(), BrokerError> {
        super::declare_native_delayed_delivery(&self.0, queue_type, queues).await
    }

    /// Closes it.
    pub async fn close(&self, reason: &str) {
        let _ = self.0.close(200, reason.into()).await;
    }
}

/// Publishes a JSON `body` with `headers`, transient (delivery mode 1) and without a confirm:
/// what events and control replies are.
pub(super) async fn publish_transient_json(
    ch: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    headers: FieldTable,
) -> Result<(), BrokerError> {
    let props = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding(ShortString::from("utf-8"))
        .with_delivery_mode(1)
        .with_headers(headers);
    ch.basic_publish(
        exchange.into(),
        routing_key.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await?;
    Ok(())
}

impl Link {
    /// Publishes a task message as a Python client does (default exchange, the queue's name
    /// as routing key) on the main channel.
    pub async fn publish_task(
        &self,
        queue: &str,
        message: &TaskMessage,
    ) -> Result<(), BrokerError> {
        super::publish_task(&self.channel.0, queue, message).await
    }

    /// Declares the exclusive result queue `name` and passes each body that arrives on it
    /// to `sink` until it returns false (the client side of rpc:// results).
    pub async fn consume_results<F>(&self, name: &str, sink: F) -> Result<AbortOnDrop, BrokerError>
    where
        F: Fn(Vec<u8>) -> bool + Send + 'static,
    {
        use futures_util::StreamExt;
        let mut stream = super::result_consumer(&self.channel.0, name).await?;
        Ok(AbortOnDrop(tokio::spawn(async move {
            while let Some(Ok(d)) = stream.next().await {
                if !sink(d.data) {
                    return;
                }
            }
        })))
    }
}
