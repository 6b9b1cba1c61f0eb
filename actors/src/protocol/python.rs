//! What a Python child is handed of a task message: the body as Celery's tracer takes it
//! (decompressed, never decoded and encoded again) and the message properties. Pure.
//!
//! Celery converts protocol 1 messages (and v2 headers with a v1 body) to protocol 2 in
//! MainProcess before a child sees them; [`python_message`] does the same here, so the child
//! only ever gets protocol 2.

use serde_json::{Map, Value, json};

use super::TaskRequest;
use super::time::format_iso;

/// The message properties the child puts into the request dict (`request.properties`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    /// `content_type`.
    pub content_type: Option<String>,
    /// `content_encoding`.
    pub content_encoding: Option<String>,
    /// `correlation_id`.
    pub correlation_id: Option<String>,
    /// `reply_to`.
    pub reply_to: Option<String>,
    /// `priority`.
    pub priority: Option<u8>,
    /// `delivery_mode`.
    pub delivery_mode: Option<u8>,
    /// The other basic properties the message has (`app_id`, `message_id`, `user_id`,
    /// `type`, `expiration`, `timestamp`), by their AMQP names.
    pub extra: Map<String, Value>,
}

/// A task message as the Python child gets it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PythonMessage {
    /// The protocol 2 body `[args, kwargs, embed]`, as delivered (decompressed).
    pub body: Vec<u8>,
    /// The message properties.
    pub properties: Properties,
    /// Protocol 2 headers built from a protocol 1 (or hybrid) message; None when the
    /// request's own headers are protocol 2 already.
    pub headers: Option<Map<String, Value>>,
}

impl PythonMessage {
    /// The protocol 2 headers to hand over: the converted ones, else the request's own.
    pub fn headers<'a>(&'a self, request: &'a TaskRequest) -> &'a Map<String, Value> {
        self.headers.as_ref().unwrap_or(&request.headers)
    }
}

/// Builds what the child is handed from a decoded request and its (decompressed) body. A
/// protocol 2 message passes through as it came; any other is converted to protocol 2 from
/// the decoded fields (its body encoded once, as JSON). The `compression` header goes in both
/// cases: the body handed over is already decompressed.
pub fn python_message(req: &TaskRequest, body: Vec<u8>, properties: Properties) -> PythonMessage {
    let json = properties
        .content_type
        .as_deref()
        .is_none_or(|ct| ct.trim().eq_ignore_ascii_case("application/json"));
    // A body that is not JSON (pickle…) was accepted only with protocol 2 headers.
    let v2_body = !json
        || body
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'[');
    let v2 = v2_body && matches!(req.headers.get("task"), Some(Value::String(_)));
    if v2 {
        let headers = req.headers.contains_key("compression").then(|| {
            let mut h = req.headers.clone();
            h.remove("compression");
            h
        });
        return PythonMessage {
            body,
            properties,
            headers,
        };
    }
    let mut headers = req.headers.clone();
    headers.remove("compression");
    let (hard, soft) = req.timelimit;
    let fields = json!({
        "lang": "py",
        "task": req.task,
        "id": req.id,
        "shadow": req.shadow,
        "eta": req.eta.map(format_iso),
        "expires": req.expires.map(format_iso),
        "group": req.group,
        "group_index": req.group_index,
        "retries": req.retries,
        "timelimit": [hard, soft],
        "root_id": req.root_id,
        "parent_id": req.parent_id,
        "argsrepr": req.argsrepr,
        "kwargsrepr": req.kwargsrepr,
        "origin": req.origin,
        "ignore_result": req.ignore_result.unwrap_or(false),
    });
    if let Value::Object(fields) = fields {
        headers.extend(fields);
    }
    let body = serde_json::to_vec(&json!([req.args, req.kwargs, req.embed_or_default()]))
        .unwrap_or_else(|_| b"[[], {}, {}]".to_vec());
    PythonMessage {
        body,
        properties: Properties {
            content_type: Some("application/json".to_owned()),
            content_encoding: Some("utf-8".to_owned()),
            ..properties
        },
        headers: Some(headers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{RawMessage, decode_keeping_body};

    fn decoded(headers: Value, body: &[u8]) -> (TaskRequest, Vec<u8>) {
        let raw = RawMessage {
            headers: headers.as_object().cloned().unwrap_or_default(),
            body,
            ..Default::default()
        };
        decode_keeping_body(raw, 1 << 20, &[]).unwrap()
    }

    #[test]
    fn protocol_2_passes_through_untouched() {
        let body = br#"[[2, 3], {}, {"callbacks": null, "chain": null}]"#;
        let (req, kept) = decoded(json!({"task": "proj.add", "id": "1"}), body);
        assert_eq!(kept, body.to_vec());
        let m = python_message(&req, kept, Properties::default());
        assert_eq!(m.body, body.to_vec());
        assert!(m.headers.is_none());
        assert_eq!(m.headers(&req)["task"], "proj.add");
    }

    #[test]
    fn compressed_bodies_are_handed_over_decompressed_without_the_header() {
        use std::io::Write;
        let body = br#"[[1], {}, {}]"#;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(body).unwrap();
        let zipped = z.finish().unwrap();
        let h = json!({"task": "t", "id": "1", "compression": "application/x-gzip"});
        let (req, kept) = decoded(h, &zipped);
        let m = python_message(&req, kept, Properties::default());
        assert_eq!(m.body, body.to_vec());
        assert!(!m.headers(&req).contains_key("compression"));
    }

    #[test]
    fn accepted_bodies_that_are_not_json_pass_through_and_others_are_refused() {
        let accept = [
            "application/json".to_owned(),
            "application/x-python-serialize".to_owned(),
        ];
        let pickled = b"\x80\x04\x95opaque";
        let h = json!({"task": "proj.add", "id": "1", "argsrepr": "(2, 3)"});
        let raw = |ct: &'static str, body: &'static [u8]| RawMessage {
            content_type: Some(ct),
            headers: h.as_object().cloned().unwrap(),
            body,
            ..Default::default()
        };
        let (req, kept) = decode_keeping_body(
            raw("application/x-python-serialize", pickled),
            1 << 20,
            &accept,
        )
        .unwrap();
        assert_eq!(
            (req.task.as_str(), req.argsrepr.as_str()),
            ("proj.add", "(2, 3)")
        );
        let props = Properties {
            content_type: Some("application/x-python-serialize".into()),
            ..Properties::default()
        };
        let m = python_message(&req, kept, props);
        assert_eq!(m.body, pickled.to_vec());
        assert!(m.headers.is_none(), "passed through as protocol 2");
        let refused = decode_keeping_body(raw("application/x-yaml", b"x: 1"), 1 << 20, &accept);
        assert!(matches!(
            refused,
            Err(crate::error::ProtocolError::ContentType(_))
        ));
        let json_only = ["application/x-python-serialize".to_owned()];
        let refused = decode_keeping_body(
            raw("application/json", b"[[], {}, {}]"),
            1 << 20,
            &json_only,
        );
        assert!(
            refused.is_err(),
            "JSON refused when the app does not accept it"
        );
    }

    #[test]
    fn protocol_1_is_converted_to_protocol_2() {
        let body = br#"{"task": "proj.add", "id": "9", "args": [1, 2], "kwargs": {"x": 1},
            "retries": 2, "callbacks": [{"task": "cb"}]}"#;
        let (req, kept) = decoded(json!({}), body);
        let m = python_message(&req, kept, Properties::default());
        let h = m.headers(&req);
        assert_eq!(
            (h["task"].as_str(), h["id"].as_str()),
            (Some("proj.add"), Some("9"))
        );
        assert_eq!(h["retries"], 2);
        let b: Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(b[0], json!([1, 2]));
        assert_eq!(b[1], json!({"x": 1}));
        assert_eq!(b[2]["callbacks"], json!([{"task": "cb"}]));
        assert_eq!(
            m.properties.content_type.as_deref(),
            Some("application/json")
        );
    }
}
