//! A delivery as lapin gives it, behind the transport-neutral [`Delivery`].

use lapin::BasicProperties;
use serde_json::{Map, Value};

use crate::broker::{self, Delivery};
use crate::error::ProtocolError;
use crate::protocol::message::{TableMessage, decode_table};
use crate::protocol::{DeliveryInfo, Properties, RawMessage, TaskRequest};

/// The message of an AMQP delivery: its properties and body, as received.
#[derive(Debug)]
pub struct Message {
    pub(super) properties: BasicProperties,
    pub(super) body: Vec<u8>,
}

/// A delivery from `queue` as the engine handles it.
pub fn delivery_of(d: lapin::message::Delivery, queue: &str) -> Delivery {
    let info = DeliveryInfo {
        exchange: d.exchange.to_string(),
        routing_key: d.routing_key.to_string(),
        priority: d.properties.priority().unwrap_or(0),
        redelivered: d.redelivered,
        queue: queue.to_owned(),
    };
    Delivery {
        tag: d.delivery_tag,
        info,
        message: broker::Message::Amqp(Message {
            properties: d.properties,
            body: d.data,
        }),
    }
}

fn text(v: &Option<lapin::types::ShortString>) -> Option<&str> {
    v.as_ref().map(|s| s.as_str())
}

impl Message {
    /// The request for a Rust task, read from lapin's header table in place.
    pub fn decode_rust(
        &self,
        info: DeliveryInfo,
        max: usize,
    ) -> Result<TaskRequest, ProtocolError> {
        let p = &self.properties;
        decode_table(
            TableMessage {
                content_type: text(p.content_type()),
                content_encoding: text(p.content_encoding()),
                headers: p.headers().as_ref(),
                correlation_id: text(p.correlation_id()),
                reply_to: text(p.reply_to()),
                body: &self.body,
                delivery_info: info,
            },
            max,
        )
    }

    /// The parts with the headers as JSON, or why they cannot be read.
    pub fn raw(&self, info: DeliveryInfo) -> Result<RawMessage<'_>, String> {
        let p = &self.properties;
        let headers = match p.headers().as_ref() {
            None => Map::new(),
            Some(t) => super::value::headers_to_json(t)?,
        };
        Ok(RawMessage {
            content_type: text(p.content_type()),
            content_encoding: text(p.content_encoding()),
            headers,
            correlation_id: text(p.correlation_id()),
            reply_to: text(p.reply_to()),
            body: &self.body,
            delivery_info: info,
        })
    }

    /// The properties as Celery's Python `Request` sees them.
    pub fn properties(&self) -> Properties {
        let p = &self.properties;
        let owned = |v: &Option<lapin::types::ShortString>| text(v).map(str::to_owned);
        Properties {
            content_type: owned(p.content_type()),
            content_encoding: owned(p.content_encoding()),
            correlation_id: owned(p.correlation_id()),
            reply_to: owned(p.reply_to()),
            priority: *p.priority(),
            delivery_mode: *p.delivery_mode(),
            extra: extra_properties(p),
        }
    }
}

/// The basic properties Celery's request dict carries besides the ones the worker reads
/// (`app_id`, `message_id`, `user_id`, `type`, `expiration`, `timestamp`), when present.
pub fn extra_properties(p: &BasicProperties) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in [
        ("app_id", text(p.app_id())),
        ("message_id", text(p.message_id())),
        ("user_id", text(p.user_id())),
        ("type", text(p.kind())),
        ("expiration", text(p.expiration())),
    ] {
        if let Some(v) = value {
            out.insert(key.to_owned(), Value::String(v.to_owned()));
        }
    }
    if let Some(t) = p.timestamp() {
        out.insert("timestamp".to_owned(), Value::from(*t));
    }
    out
}
