//! Revoking by stamped headers (`revoke_by_stamped_headers`). Pure.
//!
//! A Celery 5.3+ client can stamp a task: the message headers then carry `stamped_headers`
//! (the stamp names) and `stamps` (name -> value or list of values). Revoking by stamp stores
//! name -> values; a request is revoked when, for the first of its stamp names that has
//! revoked values, one of its values is among them (Celery's rule, which looks no further than
//! that first name). Like Celery, stamp revokes live in memory only (the statedb keeps ids).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::protocol::TaskRequest;
use crate::protocol::repr::py_repr;

/// Revoked stamp values, by stamp name.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RevokedStamps {
    map: BTreeMap<String, Vec<Value>>,
}

impl RevokedStamps {
    /// Nothing revoked.
    pub fn new() -> Self {
        RevokedStamps::default()
    }

    /// Adds revoked values (a value or a list of values per name); a value revoked already is
    /// not added twice.
    pub fn add(&mut self, headers: &[(String, Value)]) {
        for (name, values) in headers {
            let held = self.map.entry(name.clone()).or_default();
            for v in as_list(values) {
                if !held.contains(&v) {
                    held.push(v);
                }
            }
        }
    }

    /// How many values `headers` would add (an upper bound: repeats are counted).
    pub fn count_new(headers: &[(String, Value)]) -> usize {
        headers.iter().map(|(_, v)| as_list(v).len()).sum()
    }

    /// How many revoked values are held, over every name.
    pub fn value_count(&self) -> usize {
        self.map.values().map(Vec::len).sum()
    }

    /// Whether nothing is revoked by stamp.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// How many stamp names have revoked values.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The stamp that revokes a request with these stamps, if any: `(name, value)`.
    pub fn matches(&self, stamps: &[(String, Value)]) -> Option<(String, Value)> {
        let (name, stamped) = stamps.iter().find(|(n, _)| self.map.contains_key(n))?;
        let revoked = &self.map[name];
        as_list(stamped)
            .into_iter()
            .find(|v| revoked.contains(v))
            .map(|v| (name.clone(), v))
    }
}

/// A value as a list: lists as they are, anything else as a list of one.
fn as_list(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    }
}

/// A request's stamps, `(name, value)` in `stamped_headers` order (empty when unstamped).
pub fn request_stamps(req: &TaskRequest) -> Vec<(String, Value)> {
    let Some(Value::Array(names)) = req.headers.get("stamped_headers") else {
        return Vec::new();
    };
    let stamps = req.headers.get("stamps").and_then(Value::as_object);
    names
        .iter()
        .filter_map(Value::as_str)
        .map(|n| {
            let v = stamps
                .and_then(|s| s.get(n))
                .cloned()
                .unwrap_or(Value::Null);
            (n.to_owned(), v)
        })
        .collect()
}

/// The command's `headers` argument: an object `{name: value or [values]}`, or a list of
/// `"name=value"` strings (the CLI form). Order is kept for the reply's repr.
pub fn parse_headers(arg: Option<&Value>) -> Result<Vec<(String, Value)>, String> {
    match arg {
        Some(Value::Object(m)) => Ok(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                let s = item
                    .as_str()
                    .ok_or_else(|| format!("header {item} is not a \"name=value\" string"))?;
                let (k, v) = s
                    .split_once('=')
                    .ok_or_else(|| format!("header {s:?} is not name=value"))?;
                Ok((k.to_owned(), Value::String(v.to_owned())))
            })
            .collect(),
        Some(Value::String(s)) => {
            parse_headers(Some(&Value::Array(vec![Value::String(s.clone())])))
        }
        _ => Err("headers must be an object or a list of name=value".to_owned()),
    }
}

/// Python's repr of the headers dict, as in Celery's replies: `{'k': 'v'}`.
pub fn headers_repr(headers: &[(String, Value)]) -> String {
    let map: serde_json::Map<String, Value> = headers.iter().cloned().collect();
    py_repr(&Value::Object(map))
}

/// Python's repr of Celery's `defaultdict(set)` of terminated stamps:
/// `defaultdict(<class 'set'>, {'k': {'v'}})`.
pub fn terminated_repr(terminated: &BTreeMap<String, Vec<Value>>) -> String {
    let items: Vec<String> = terminated
        .iter()
        .map(|(k, vs)| {
            let set: Vec<String> = vs.iter().map(py_repr).collect();
            format!("'{k}': {{{}}}", set.join(", "))
        })
        .collect();
    format!("defaultdict(<class 'set'>, {{{}}})", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stamps(v: Value) -> Vec<(String, Value)> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    #[test]
    fn a_revoked_value_matches_single_and_list_stamps() {
        let mut r = RevokedStamps::new();
        assert!(r.is_empty());
        r.add(&stamps(json!({"mtask_id": ["a", "b"]})));
        r.add(&stamps(json!({"mtask_id": "c", "other": 5})));
        assert_eq!(
            r.matches(&stamps(json!({"mtask_id": "c"}))),
            Some(("mtask_id".into(), json!("c")))
        );
        assert_eq!(
            r.matches(&stamps(json!({"mtask_id": ["x", "b"]}))),
            Some(("mtask_id".into(), json!("b")))
        );
        assert_eq!(r.matches(&stamps(json!({"mtask_id": "z"}))), None);
        assert_eq!(r.matches(&stamps(json!({"unrelated": "a"}))), None);
        assert_eq!(r.matches(&[]), None);
    }

    #[test]
    fn only_the_first_revoked_stamp_name_is_looked_at() {
        let mut r = RevokedStamps::new();
        r.add(&[("k1".into(), json!("no")), ("k2".into(), json!("yes"))]);
        let req = vec![("k1".into(), json!("x")), ("k2".into(), json!("yes"))];
        assert_eq!(r.matches(&req), None);
    }

    #[test]
    fn headers_come_as_an_object_or_name_value_strings() {
        let h = parse_headers(Some(&json!({"k": ["a", "b"]}))).unwrap();
        assert_eq!(headers_repr(&h), "{'k': ['a', 'b']}");
        let h = parse_headers(Some(&json!(["k=v", "n=1"]))).unwrap();
        assert_eq!(headers_repr(&h), "{'k': 'v', 'n': '1'}");
        assert!(parse_headers(Some(&json!(["nope"]))).is_err());
        assert!(parse_headers(None).is_err());
        let mut t = BTreeMap::new();
        t.insert("k".to_owned(), vec![json!("v")]);
        assert_eq!(
            terminated_repr(&t),
            "defaultdict(<class 'set'>, {'k': {'v'}})"
        );
    }

    #[test]
    fn request_stamps_follow_stamped_headers() {
        use crate::protocol::{RawMessage, decode};
        let h = json!({"task": "t", "id": "1", "stamped_headers": ["s"], "stamps": {"s": "v"}});
        let raw = RawMessage {
            headers: h.as_object().cloned().unwrap(),
            body: b"[[],{},{}]",
            ..Default::default()
        };
        let req = decode(raw).unwrap();
        assert_eq!(request_stamps(&req), vec![("s".to_owned(), json!("v"))]);
    }
}
