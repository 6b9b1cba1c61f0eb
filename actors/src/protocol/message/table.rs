//! Decoding straight from a broker client's header table ([`HeaderTable`]): a Rust task's
//! request converts to JSON only the headers it keeps.

use serde_json::{Map, Value};

use super::{
    DeliveryInfo, HeaderFields, RawMessage, Rest, TaskRequest, check_content_type, compact_embed,
    decode_with_limit, decompress, invalid, kept_header, typed_index, v2_request,
};
use crate::error::ProtocolError;

/// How deeply tables and arrays may nest in message headers (Celery's own headers nest two
/// levels). Deeper headers are refused: converting them would only recurse for nothing.
pub const MAX_HEADER_DEPTH: usize = 32;

/// A message's header table as a broker client parsed it (an AMQP field table), read in
/// place: [`decode_table`] converts to JSON only the headers a request keeps.
pub trait HeaderTable {
    /// One header's value.
    type Value;
    /// The value of `key`.
    fn get(&self, key: &str) -> Option<&Self::Value>;
    /// Every header, in the table's order.
    fn entries(&self) -> impl Iterator<Item = (&str, &Self::Value)>;
    /// A header's value as JSON; sets `too_deep` when it nests deeper than
    /// [`MAX_HEADER_DEPTH`].
    fn value_json(value: &Self::Value, too_deep: &mut bool) -> Value;
    /// A string value as an owned string; None for any other type.
    fn value_text(value: &Self::Value) -> Option<String>;
    /// The whole table as JSON, or why not (nested too deeply).
    fn to_json(&self) -> Result<Map<String, Value>, String>;
}

/// The typed headers of a header table, found in one pass over it.
struct Typed<'a, T: HeaderTable>([Option<&'a T::Value>; 15]);

impl<T: HeaderTable> Typed<'_, T> {
    fn get(&self, key: &str) -> Option<&T::Value> {
        self.0[typed_index(key)?]
    }
}

impl<T: HeaderTable> HeaderFields for Typed<'_, T> {
    fn json(&self, key: &str) -> Option<Value> {
        self.get(key).map(|v| T::value_json(v, &mut false))
    }

    fn text(&self, key: &str) -> Option<String> {
        T::value_text(self.get(key)?)
    }
}

/// A delivery whose headers are a broker client's [`HeaderTable`], for [`decode_table`].
#[derive(Debug, Clone)]
pub struct TableMessage<'a, T> {
    /// `content_type` property.
    pub content_type: Option<&'a str>,
    /// `content_encoding` property.
    pub content_encoding: Option<&'a str>,
    /// The application headers, as the client parsed them.
    pub headers: Option<&'a T>,
    /// `correlation_id` property.
    pub correlation_id: Option<&'a str>,
    /// `reply_to` property.
    pub reply_to: Option<&'a str>,
    /// The body.
    pub body: &'a [u8],
    /// Delivery metadata.
    pub delivery_info: DeliveryInfo,
}

/// Decodes a delivery for a Rust task: the same request as [`decode_with_limit`] gives (then
/// [`compact`](super::compact)), read straight from the client's header table, so that only the headers the
/// request keeps become JSON (a protocol 2 message's typed headers are not converted, stored
/// and dropped again). Protocol 1 and hybrid messages take the JSON way.
pub fn decode_table<T: HeaderTable>(
    m: TableMessage<'_, T>,
    max_body: usize,
) -> Result<TaskRequest, ProtocolError> {
    let table = m
        .headers
        .filter(|t| t.get("task").is_some_and(|v| T::value_text(v).is_some()));
    let json_way = |m: TableMessage<'_, T>| {
        let headers = match m.headers {
            Some(t) => t.to_json().map_err(|e| invalid("headers", e))?,
            None => Map::new(),
        };
        let raw = RawMessage {
            content_type: m.content_type,
            content_encoding: m.content_encoding,
            headers,
            correlation_id: m.correlation_id,
            reply_to: m.reply_to,
            body: m.body,
            delivery_info: m.delivery_info,
        };
        decode_with_limit(raw, max_body)
    };
    let Some(table) = table else {
        return json_way(m);
    };
    check_content_type(m.content_type)?;
    if m.body.len() > max_body {
        return Err(ProtocolError::TooLarge {
            limit: max_body,
            what: "body",
        });
    }
    let compression = table
        .get("compression")
        .map(|v| T::value_json(v, &mut false));
    let bytes = decompress(compression.as_ref(), m.body, max_body)?;
    let body: Value =
        serde_json::from_slice(&bytes).map_err(|e| ProtocolError::Json(e.to_string()))?;
    if !body.is_array() {
        return json_way(m); // a hybrid: a v1-style body under v2 headers
    }
    // One pass: the typed headers noted where they are, the others converted to JSON.
    let mut typed: Typed<'_, T> = Typed([None; 15]);
    let mut extras = Map::new();
    for (key, v) in table.entries() {
        if let Some(i) = typed_index(key) {
            typed.0[i] = Some(v);
            continue;
        }
        let mut too_deep = false;
        let value = T::value_json(v, &mut too_deep);
        if too_deep {
            return Err(invalid(
                "headers",
                format!("headers nest deeper than {MAX_HEADER_DEPTH} levels"),
            ));
        }
        if kept_header(key, &value) {
            extras.insert(key.to_owned(), value);
        }
    }
    let task = typed.text("task").unwrap_or_default();
    let rest = Rest {
        correlation_id: m.correlation_id,
        reply_to: m.reply_to,
        delivery_info: m.delivery_info,
    };
    let mut req = v2_request(&typed, rest, task, body)?;
    req.headers = extras;
    Ok(compact_embed(req))
}
