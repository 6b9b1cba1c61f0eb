//! What beat's election needs from AMQP: a lock held as an exclusive queue (the broker gives
//! it to one connection at a time and frees it when that connection goes), a fanout exchange
//! on which the schedulers tell each other their runs, a watcher of the connection, and
//! task publishes whose confirms are awaited together.

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, ExchangeKind};

use super::{Channel, Link};
use crate::abort::AbortOnDrop;
use crate::broker::BrokerError;
use crate::protocol::encode::TaskMessage;

/// A publish handed to the broker, whose confirm is still to come.
#[derive(Debug)]
pub struct Confirm(lapin::PublisherConfirm);

impl Confirm {
    /// Waits for the broker: true when it took the message (ack), false when it refused it.
    pub async fn wait(self) -> Result<bool, BrokerError> {
        Ok(self.0.await?.is_ack())
    }
}

impl Link {
    /// Whether the connection is still up (a closed channel alone does not count).
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Calls `lost` once with the error when the connection fails.
    pub fn watch<F>(&self, lost: F) -> AbortOnDrop
    where
        F: FnOnce(String) + Send + 'static,
    {
        let mut events = self.connection.events_listener();
        AbortOnDrop(tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let lapin::Event::Error(e) = event {
                    lost(e.to_string());
                    return;
                }
            }
        }))
    }

    /// Subscribes to the durable fanout exchange `exchange` (declared here) through an
    /// exclusive, auto-deleted queue of this connection, without acks: each body goes to
    /// `sink` until it returns false; `ended` is called when the subscription ends.
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
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.channel
            .0
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        let ch = self.connection.create_channel().await?;
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let q = ch
            .queue_declare("".into(), exclusive, FieldTable::default())
            .await?;
        ch.queue_bind(
            q.name().as_str().into(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let mut bodies = ch
            .basic_consume(
                q.name().as_str().into(),
                tag.into(),
                no_ack,
                FieldTable::default(),
            )
            .await?;
        Ok(AbortOnDrop(tokio::spawn(async move {
            while let Some(Ok(d)) = bodies.next().await {
                if !sink(d.data) {
                    return;
                }
            }
            ended();
        })))
    }

    /// Takes the lock `queue`: declares it exclusive to this connection on a channel of its
    /// own, held as long as the returned channel. Held by another connection: an error of
    /// kind [`ResourceLocked`](crate::broker::ErrorKind::ResourceLocked).
    pub async fn hold_exclusive(&self, queue: &str) -> Result<Channel, BrokerError> {
        let ch = self.connection.create_channel().await?;
        let opts = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        ch.queue_declare(queue.into(), opts, FieldTable::default())
            .await?;
        Ok(Channel(ch))
    }

    /// Publishes a JSON body to the fanout `exchange`, transient, without a confirm.
    pub async fn publish_fanout(&self, exchange: &str, body: &[u8]) -> Result<(), BrokerError> {
        let props = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(1);
        self.channel
            .0
            .basic_publish(
                exchange.into(),
                "".into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await?;
        Ok(())
    }

    /// Hands a task message to the broker on the (confirm-mode) main channel; the confirm
    /// comes later.
    pub async fn send_task(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &TaskMessage,
    ) -> Result<Confirm, BrokerError> {
        let confirm = super::send_task_to(&self.channel.0, exchange, routing_key, message).await?;
        Ok(Confirm(confirm))
    }

    /// Closes the connection with `code` (320 when this side gives it up to reconnect).
    pub async fn close_connection(&self, code: u16, reason: &str) {
        let _ = self.connection.close(code, reason.into()).await;
    }
}
