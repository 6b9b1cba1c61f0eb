use serde_json::json;

use super::*;

fn raw<'a>(headers: Value, body: &'a [u8]) -> RawMessage<'a> {
    RawMessage {
        content_type: Some("application/json"),
        content_encoding: Some("utf-8"),
        headers: headers.as_object().cloned().unwrap_or_default(),
        correlation_id: Some("cid"),
        reply_to: Some("reply-q"),
        body,
        delivery_info: DeliveryInfo::default(),
    }
}

/// A protocol 2 header set as Celery 5.7 sends it.
pub(crate) fn v2_headers() -> Value {
    json!({"lang":"py","task":"tasks.add","id":"tid","shadow":null,"eta":null,"expires":null,
           "group":null,"group_index":null,"retries":0,"timelimit":[null,null],"root_id":"tid",
           "parent_id":null,"argsrepr":"(2, 3)","kwargsrepr":"{}","origin":"gen1@h",
           "ignore_result":null,"replaced_task_nesting":0,"stamped_headers":null,"stamps":{}})
}

#[test]
fn decodes_v2() {
    let body = br#"[[2,3],{},{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]"#;
    let req = decode(raw(v2_headers(), body)).unwrap();
    assert_eq!(req.id, "tid");
    assert_eq!(req.task, "tasks.add");
    assert_eq!(req.args, vec![json!(2), json!(3)]);
    assert!(req.kwargs.is_empty());
    assert_eq!(req.correlation_id, "cid");
    assert_eq!(req.result_queue(), Some("reply-q"));
    assert_eq!(req.timelimit, (None, None));
    assert_eq!(req.display_name(), "tasks.add");
}

#[test]
fn decodes_v1() {
    let body = br#"{"task":"x.add","id":"i1","args":[1,2],"kwargs":{},"retries":1,
        "eta":"2026-11-23T23:17:21.850145+00:00","expires":null,"utc":true,"callbacks":null,
        "errbacks":null,"timelimit":[null,null],"taskset":"g1","chord":null}"#;
    let req = decode(raw(json!({}), body)).unwrap();
    assert_eq!(req.task, "x.add");
    assert_eq!(req.retries, 1);
    assert_eq!(req.group.as_deref(), Some("g1"));
    assert!(req.eta.is_some());
    assert_eq!(req.argsrepr, "(1, 2)");
}

#[test]
fn timelimit_is_hard_then_soft() {
    let mut h = v2_headers();
    h["timelimit"] = json!([30, 20.5]);
    let req = decode(raw(h, br#"[[],{},{}]"#)).unwrap();
    assert_eq!(req.timelimit, (Some(30.0), Some(20.5)));
}

#[test]
fn rejects_what_is_not_a_task() {
    let cases: Vec<(Value, &[u8], &str)> = vec![
        (v2_headers(), b"{not json", "json"),
        (v2_headers(), br#"{"a":1}"#, "shape"),
        (v2_headers(), br#"[1,{},{}]"#, "args"),
        (v2_headers(), br#"[[],[],{}]"#, "kwargs"),
        (json!({}), br#"[[],{},{}]"#, "unknown"),
        (json!({"task":"t"}), br#"[[],{},{}]"#, "missing id"),
    ];
    for (h, body, what) in cases {
        assert!(decode(raw(h, body)).is_err(), "{what} should be rejected");
    }
    let mut h = v2_headers();
    h["eta"] = json!("next tuesday");
    assert!(matches!(
        decode(raw(h, br#"[[],{},{}]"#)),
        Err(ProtocolError::Invalid { field: "eta", .. })
    ));
    let mut r = raw(v2_headers(), br#"[[],{},{}]"#);
    r.content_type = Some("application/x-python-serialize");
    assert!(matches!(decode(r), Err(ProtocolError::ContentType(_))));
    let bad_utf8: &[u8] = b"[[\"\xff\xfe\"],{},{}]";
    assert!(matches!(
        decode(raw(v2_headers(), bad_utf8)),
        Err(ProtocolError::Json(_))
    ));
}

#[test]
fn decompresses_zlib_bodies() {
    use std::io::Write;
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(br#"[[4,5],{},{}]"#).unwrap();
    let body = enc.finish().unwrap();
    let mut h = v2_headers();
    h["compression"] = json!("application/x-gzip");
    let req = decode(raw(h, &body)).unwrap();
    assert_eq!(req.args, vec![json!(4), json!(5)]);
    let mut h = v2_headers();
    h["compression"] = json!("application/x-brotli");
    assert!(matches!(
        decode(raw(h, &body)),
        Err(ProtocolError::Compression(_))
    ));
}

/// Every message captured from Python Celery 5.7 under `tests/fixtures/` decodes, and the
/// decoded fields agree with the headers it was sent with.
#[test]
fn decodes_captured_python_messages() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("tests/fixtures exists") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with('v') || !name.ends_with(".json") {
            continue;
        }
        let fixture: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let body: Vec<u8> = match (&fixture["body"], &fixture["body_base64"]) {
            (Value::String(s), _) => s.as_bytes().to_vec(),
            (_, Value::String(b64)) => base64_decode(b64),
            _ => panic!("{name}: no body"),
        };
        let props = &fixture["properties"];
        let headers = fixture["headers"].as_object().cloned().unwrap_or_default();
        let r = RawMessage {
            content_type: props["content_type"].as_str(),
            content_encoding: props["content_encoding"].as_str(),
            headers: headers.clone(),
            correlation_id: props["correlation_id"].as_str(),
            reply_to: props["reply_to"].as_str(),
            body: &body,
            delivery_info: DeliveryInfo::default(),
        };
        let req = decode(r).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!req.id.is_empty(), "{name}");
        assert!(req.task.starts_with("tasks."), "{name}: {}", req.task);
        if let Some(id) = headers.get("id") {
            assert_eq!(json!(req.id), *id, "{name}");
        }
        assert_eq!(
            req.correlation_id,
            props["correlation_id"].as_str().unwrap(),
            "{name}"
        );
        seen += 1;
    }
    assert!(
        seen >= 5,
        "expected captured fixtures in {}, found {seen}",
        dir.display()
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64 digit") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn an_id_longer_than_an_amqp_short_string_is_invalid() {
    let mut h = v2_headers();
    h["id"] = json!("i".repeat(256));
    let err = decode(raw(h, br#"[[], {}, {}]"#)).unwrap_err();
    assert!(err.to_string().contains("longer than 255 bytes"), "{err}");
}
