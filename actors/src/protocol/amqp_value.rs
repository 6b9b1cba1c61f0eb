//! AMQP field tables <-> JSON. Reading accepts every field type; writing uses only the types
//! every py-amqp version reads the same way (`S t d I l V F A`).

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Map, Number, Value};

/// How deeply tables and arrays may nest in message headers (Celery's own headers nest two
/// levels). Deeper headers are refused: converting them would only recurse for nothing.
pub const MAX_HEADER_DEPTH: usize = 32;

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
    use super::*;
    use serde_json::json;

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
}
