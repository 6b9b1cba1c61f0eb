//! AMQP field tables <-> JSON. Reading accepts every field type; writing uses only the types
//! every py-amqp version reads the same way (`S t d I l V F A`).

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Map, Number, Value};

use crate::protocol::message::HeaderTable;
pub use crate::protocol::message::MAX_HEADER_DEPTH;

/// A Rust task's request is read from lapin's table in place
/// ([`decode_table`](crate::protocol::message::decode_table)).
impl HeaderTable for FieldTable {
    type Value = AMQPValue;

    fn get(&self, key: &str) -> Option<&AMQPValue> {
        self.inner().get(key)
    }

    fn entries(&self) -> impl Iterator<Item = (&str, &AMQPValue)> {
        self.inner().iter().map(|(k, v)| (k.as_str(), v))
    }

    fn value_json(value: &AMQPValue, too_deep: &mut bool) -> Value {
        value_checked(value, too_deep)
    }

    fn value_text(value: &AMQPValue) -> Option<String> {
        match value {
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            _ => None,
        }
    }

    fn to_json(&self) -> Result<Map<String, Value>, String> {
        headers_to_json(self)
    }
}

/// Converts an AMQP field table (message headers) to a JSON object; values nested deeper than
/// [`MAX_HEADER_DEPTH`] become `null`.
pub fn table_to_json(table: &FieldTable) -> Map<String, Value> {
    table_at(table, 0, &mut false)
}

/// Like [`table_to_json`], but an error when anything nests deeper than [`MAX_HEADER_DEPTH`]
/// (the consumer rejects such a message). One pass: the conversion notes when it stopped.
pub fn headers_to_json(table: &FieldTable) -> Result<Map<String, Value>, String> {
    let mut too_deep = false;
    let map = table_at(table, 0, &mut too_deep);
    if too_deep {
        return Err(format!(
            "headers nest deeper than {MAX_HEADER_DEPTH} levels"
        ));
    }
    Ok(map)
}

fn table_at(table: &FieldTable, depth: usize, too_deep: &mut bool) -> Map<String, Value> {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), value_at(v, depth + 1, too_deep)))
        .collect()
}

/// Converts one AMQP value to JSON; byte strings are decoded as UTF-8 (lossy).
pub fn value_to_json(value: &AMQPValue) -> Value {
    value_at(value, 0, &mut false)
}

/// [`value_to_json`] for a header's value: sets `too_deep` when it nests deeper than
/// [`MAX_HEADER_DEPTH`] (below a header table, as [`headers_to_json`] counts).
pub fn value_checked(value: &AMQPValue, too_deep: &mut bool) -> Value {
    value_at(value, 1, too_deep)
}

fn value_at(value: &AMQPValue, depth: usize, too_deep: &mut bool) -> Value {
    if depth > MAX_HEADER_DEPTH {
        *too_deep = true;
        return Value::Null;
    }
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Float(f) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        AMQPValue::Double(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AMQPValue::DecimalValue(d) => {
            let v = f64::from(d.value) / 10f64.powi(i32::from(d.scale));
            Number::from_f64(v).map_or(Value::Null, Value::Number)
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into()),
        AMQPValue::FieldArray(a) => Value::Array(
            a.as_slice()
                .iter()
                .map(|v| value_at(v, depth + 1, too_deep))
                .collect(),
        ),
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(t) => Value::Object(table_at(t, depth, too_deep)),
        AMQPValue::ByteArray(b) => Value::String(String::from_utf8_lossy(b.as_slice()).into()),
        AMQPValue::Void => Value::Null,
    }
}

/// Converts a JSON object to an AMQP field table (for headers we publish).
pub fn json_to_table(map: &Map<String, Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in map {
        table.insert(ShortString::from(k.clone()), json_to_value(v));
    }
    table
}

/// Converts one JSON value to AMQP, choosing types py-amqp reads unambiguously.
pub fn json_to_value(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => match i32::try_from(i) {
                Ok(small) => AMQPValue::LongInt(small),
                Err(_) => AMQPValue::LongLongInt(i),
            },
            (None, Some(f)) => AMQPValue::Double(f),
            (None, None) => AMQPValue::Void,
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        Value::Array(items) => {
            let mut arr = FieldArray::default();
            for v in items {
                arr.push(json_to_value(v));
            }
            AMQPValue::FieldArray(arr)
        }
        Value::Object(map) => AMQPValue::FieldTable(json_to_table(map)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::error::ProtocolError;
    use crate::protocol::message::tests::v2_headers;
    use crate::protocol::message::{
        DEFAULT_MAX_BODY, DeliveryInfo, RawMessage, TableMessage, compact, decode, decode_table,
    };

    #[test]
    fn headers_nested_too_deep_are_refused() {
        let nest = |depth: usize| {
            let mut v = AMQPValue::Void;
            for _ in 0..depth {
                v = AMQPValue::FieldArray(vec![v].into());
            }
            let mut t = FieldTable::default();
            t.insert("x".into(), v);
            t
        };
        assert!(headers_to_json(&nest(MAX_HEADER_DEPTH - 1)).is_ok());
        assert!(headers_to_json(&nest(MAX_HEADER_DEPTH + 1)).is_err());
        // table_to_json never recurses past the limit either: deeper values become null.
        let deep = table_to_json(&nest(10 * MAX_HEADER_DEPTH));
        let mut v = &deep["x"];
        let mut levels = 0;
        while let Value::Array(a) = v {
            v = &a[0];
            levels += 1;
        }
        assert!(levels <= MAX_HEADER_DEPTH, "{levels}");
    }

    #[test]
    fn round_trips_celery_headers() {
        let headers = json!({
            "lang": "py", "task": "tasks.add", "id": "abc", "shadow": null, "retries": 0,
            "timelimit": [30, 20.5], "ignore_result": false, "stamps": {}, "big": 5_000_000_000i64
        });
        let map = headers.as_object().unwrap();
        let table = json_to_table(map);
        assert_eq!(Value::Object(table_to_json(&table)), headers);
        assert!(matches!(
            table.inner().get("retries"),
            Some(AMQPValue::LongInt(0))
        ));
        assert!(matches!(
            table.inner().get("task"),
            Some(AMQPValue::LongString(_))
        ));
    }

    #[test]
    fn reads_every_integer_width() {
        assert_eq!(value_to_json(&AMQPValue::ShortInt(-3)), json!(-3));
        assert_eq!(value_to_json(&AMQPValue::LongUInt(7)), json!(7));
        assert_eq!(
            value_to_json(&AMQPValue::ShortString("x".into())),
            json!("x")
        );
        assert_eq!(value_to_json(&AMQPValue::Void), json!(null));
    }

    /// Every message Python Celery 5.7 was captured sending (`tests/fixtures`), and variants:
    /// decoding from lapin's table gives the very request the JSON way gives, compacted.
    #[test]
    fn the_amqp_table_way_decodes_as_the_json_way() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let fixture: Value =
                serde_json::from_slice(&std::fs::read(entry.path()).unwrap()).unwrap();
            let Some(body) = fixture["body"].as_str() else {
                continue; // a compressed body: covered below with a body of our own
            };
            let headers = fixture["headers"].as_object().cloned().unwrap_or_default();
            let p = &fixture["properties"];
            let mut variants = vec![headers.clone()];
            let mut extra = headers.clone();
            extra.insert("x-custom".into(), json!({"nested": [1, "two", null]}));
            extra.insert("stamped_headers".into(), json!(["s"]));
            extra.insert("s".into(), json!("v"));
            variants.push(extra);
            for headers in variants {
                let table = json_to_table(&headers);
                let ours = decode_table(
                    TableMessage {
                        content_type: p["content_type"].as_str(),
                        content_encoding: p["content_encoding"].as_str(),
                        headers: Some(&table),
                        correlation_id: p["correlation_id"].as_str(),
                        reply_to: p["reply_to"].as_str(),
                        body: body.as_bytes(),
                        delivery_info: DeliveryInfo::default(),
                    },
                    DEFAULT_MAX_BODY,
                );
                // The JSON way sees the headers as they come back from the table (AMQP has no
                // types for some JSON values, e.g. every number is an integer or a double).
                let through = table_to_json(&table);
                let raw = RawMessage {
                    content_type: p["content_type"].as_str(),
                    content_encoding: p["content_encoding"].as_str(),
                    headers: through,
                    correlation_id: p["correlation_id"].as_str(),
                    reply_to: p["reply_to"].as_str(),
                    body: body.as_bytes(),
                    delivery_info: DeliveryInfo::default(),
                };
                let theirs = decode(raw).map(compact);
                assert_eq!(ours, theirs, "{}", entry.path().display());
                seen += 1;
            }
        }
        assert!(seen >= 10, "only {seen} fixtures");
        // A v1 message (no task header) and a hybrid go the JSON way; bad input fails alike.
        let v1 = br#"{"task":"x.add","id":"i1","args":[1,2],"kwargs":{}}"#;
        let empty = FieldTable::default();
        let m = |headers, body: &'static [u8]| TableMessage {
            content_type: Some("application/json"),
            content_encoding: None,
            headers,
            correlation_id: None,
            reply_to: None,
            body,
            delivery_info: DeliveryInfo::default(),
        };
        assert_eq!(
            decode_table(m(Some(&empty), v1), DEFAULT_MAX_BODY)
                .unwrap()
                .task,
            "x.add"
        );
        let v2 = json_to_table(v2_headers().as_object().unwrap());
        let hybrid = br#"{"args":[7],"kwargs":{}}"#;
        assert_eq!(
            decode_table(m(Some(&v2), hybrid), DEFAULT_MAX_BODY)
                .unwrap()
                .args,
            vec![json!(7)]
        );
        assert!(decode_table(m(Some(&v2), b"[1"), DEFAULT_MAX_BODY).is_err());
        let mut no_id = v2_headers();
        no_id["id"] = Value::Null;
        let no_id = json_to_table(no_id.as_object().unwrap());
        assert_eq!(
            decode_table(m(Some(&no_id), br#"[[],{},{}]"#), DEFAULT_MAX_BODY),
            Err(ProtocolError::Missing("id"))
        );
    }
}
