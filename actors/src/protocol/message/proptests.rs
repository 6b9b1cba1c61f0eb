//! Property tests of the message decoder: whatever a delivery holds (any body, any headers,
//! any compression), decoding answers a request or an error, never a panic, and never holds
//! more than the body limit. Bounded: `PROPTEST_CASES` (default 256 per property).

use std::io::Write;

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;

/// Any JSON value, a few levels deep.
pub(crate) fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        // Values the decoder gives meaning to.
        Just(json!("2026-12-01T10:00:00+00:00")),
        Just(json!("9999-12-31T23:59:59")),
        Just(json!(1e300)),
        Just(json!(-1)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Headers: Celery's names (so the decoder's field checks run) with any values.
fn headers() -> impl Strategy<Value = Map<String, Value>> {
    let names = prop::sample::select(vec![
        "task",
        "id",
        "eta",
        "expires",
        "retries",
        "timelimit",
        "group_index",
        "shadow",
        "argsrepr",
        "kwargsrepr",
        "ignore_result",
        "compression",
        "root_id",
        "parent_id",
        "stamped_headers",
        "stamps",
        "other",
    ]);
    prop::collection::vec((names, json_value()), 0..10)
        .prop_map(|pairs| pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// A body: raw bytes, or a JSON value (often the protocol 2 shape), maybe zlib-compressed.
fn body() -> impl Strategy<Value = (Vec<u8>, bool)> {
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        (json_value(), json_value(), json_value())
            .prop_map(|(a, k, e)| json!([a, k, e]).to_string().into_bytes()),
    ];
    (bytes, any::<bool>())
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn raw<'a>(
    headers: Map<String, Value>,
    body: &'a [u8],
    content_type: Option<&'a str>,
) -> RawMessage<'a> {
    RawMessage {
        content_type,
        content_encoding: Some("utf-8"),
        headers,
        correlation_id: None,
        reply_to: Some("r"),
        body,
        delivery_info: DeliveryInfo::default(),
    }
}

proptest! {
    #[test]
    fn decoding_never_panics(
        mut headers in headers(),
        (data, compress) in body(),
        content_type in prop::option::of(prop::sample::select(vec![
            "application/json", "APPLICATION/JSON ", "application/x-yaml", "",
        ])),
    ) {
        let body = if compress {
            headers.insert("compression".into(), json!("application/x-gzip"));
            zlib(&data)
        } else {
            data
        };
        let _ = decode(raw(headers, &body, content_type));
    }

    #[test]
    fn a_valid_v2_message_decodes_with_any_extra_headers(
        extra in prop::collection::btree_map("x-[a-z]{1,8}", json_value(), 0..6),
        args in prop::collection::vec(json_value(), 0..4),
    ) {
        let mut h: Map<String, Value> = extra.into_iter().collect();
        h.insert("task".into(), json!("tasks.add"));
        h.insert("id".into(), json!("tid"));
        let body = json!([args, {}, {}]).to_string().into_bytes();
        let req = decode(raw(h, &body, Some("application/json"))).unwrap();
        // As JSON carries them (serde_json's float parsing may differ in the last digit).
        let sent: Value = serde_json::from_str(&Value::Array(args).to_string()).unwrap();
        prop_assert_eq!(Value::Array(req.args), sent);
    }

    #[test]
    fn decompression_stops_at_the_limit(size in 0usize..50_000, limit in 1024usize..40_000) {
        let mut h = Map::new();
        h.insert("task".into(), json!("t"));
        h.insert("id".into(), json!("i"));
        h.insert("compression".into(), json!("zlib"));
        let body = zlib(&vec![b' '; size]);
        match decode_with_limit(raw(h, &body, None), limit) {
            Err(ProtocolError::TooLarge { .. }) => prop_assert!(size > limit),
            _ => prop_assert!(size <= limit),
        }
    }
}

#[test]
fn a_zlib_bomb_is_refused_without_inflating_it() {
    // 64 MiB of zeros compress to about 64 KB; a limit of 1 MiB stops after 1 MiB + 1 byte.
    let bomb = zlib(&vec![0u8; 64 << 20]);
    let mut h = Map::new();
    h.insert("task".into(), json!("t"));
    h.insert("id".into(), json!("i"));
    h.insert("compression".into(), json!("application/x-gzip"));
    let err = decode_with_limit(raw(h, &bomb, None), 1 << 20).unwrap_err();
    assert!(
        matches!(err, ProtocolError::TooLarge { limit, .. } if limit == 1 << 20),
        "{err}"
    );
    assert!(err.to_string().contains("worker.max_message_size"), "{err}");
}
