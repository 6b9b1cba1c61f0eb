//! Property tests of everything a control request feeds from outside: the request decoder,
//! the destination matchers, and each argument parser. Whatever arrives, the answer is a value
//! in range or an error reply, never a panic. Bounded: `PROPTEST_CASES` (default 256).

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::request::{
    MAX_SECONDS, decode, glob_match, int_arg, is_for, seconds_arg, task_ids, truthy,
};
use crate::pool::rate::{MIN_RATE, TokenBucket, parse_rate};
use crate::protocol::message::proptests::json_value;
use crate::revoke::parse_signal;
use crate::revoke::stamps::parse_headers;
use crate::settings::{mask_password, mask_urls, parse_autoscale};

/// Arguments as a client might send them: numbers, numeric and other strings, anything.
fn arg() -> impl Strategy<Value = Value> {
    prop_oneof![
        json_value(),
        any::<f64>().prop_map(|f| json!(f.to_string())),
        any::<i64>().prop_map(|n| json!(n.to_string())),
        Just(json!("1e-300")),
        Just(json!("-0")),
        Just(json!("NaN")),
        Just(json!("inf")),
        Just(json!(" 12 ")),
    ]
}

fn args_with(key: &'static str) -> impl Strategy<Value = Map<String, Value>> {
    arg().prop_map(move |v| {
        let mut m = Map::new();
        m.insert(key.to_owned(), v);
        m
    })
}

proptest! {
    #[test]
    fn request_decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn json_requests_decode_or_say_why(
        method in prop::option::of(".{0,10}"),
        arguments in json_value(),
        destination in json_value(),
        pattern in prop::option::of(".{0,12}"),
        matcher in prop::option::of(prop::sample::select(vec!["glob", "pcre", "other"])),
        node in ".{0,12}",
    ) {
        let body = json!({"method": method, "arguments": arguments, "destination": destination,
                          "pattern": pattern, "matcher": matcher, "ticket": "t"});
        if let Ok(req) = decode(body.to_string().as_bytes()) {
            let _ = is_for(&req, &node);
            let _ = task_ids(&req.arguments);
            let _ = truthy(req.arguments.get("terminate"));
        }
    }

    #[test]
    fn glob_matching_never_panics(pattern in "[a-z*?@.]{0,12}", text in "[a-z@.]{0,12}") {
        let _ = glob_match(&pattern, &text);
        prop_assert!(glob_match("*", &text));
    }

    #[test]
    fn seconds_are_in_range_or_an_error(args in args_with("soft")) {
        match seconds_arg(&args, "soft") {
            Ok(Some(v)) => prop_assert!(v.is_finite() && v > 0.0 && v <= MAX_SECONDS),
            Ok(None) => {}
            Err(reply) => prop_assert!(reply["error"].as_str().is_some_and(|e| e.contains("soft"))),
        }
    }

    #[test]
    fn whole_numbers_are_in_range_or_an_error(args in args_with("n"), max in 0usize..2048) {
        match int_arg(&args, "n", max) {
            Ok(Some(n)) => prop_assert!(n <= max),
            Ok(None) => {}
            Err(reply) => prop_assert!(reply["error"].as_str().is_some_and(|e| e.contains("n must"))),
        }
    }

    #[test]
    fn rates_are_usable_or_an_error(ops in any::<f64>(), unit in "[smhd]?", raw in ".{0,10}") {
        for text in [format!("{ops}/{unit}"), raw] {
            if let Ok(Some(rate)) = parse_rate(&text) {
                prop_assert!(rate.is_finite() && rate >= MIN_RATE, "{text} -> {rate}");
                let t0 = std::time::Instant::now();
                let mut bucket = TokenBucket::new(rate, t0);
                bucket.try_take(t0);
                let wait = bucket.wait_time(t0);
                prop_assert!(wait <= std::time::Duration::from_secs(31_536_000));
            }
        }
    }

    #[test]
    fn other_argument_parsers_never_panic(v in arg(), text in ".{0,16}") {
        let _ = parse_headers(Some(&v));
        let _ = parse_signal(&text);
        if let Ok((max, min)) = parse_autoscale(&text, 1024) {
            prop_assert!(min <= max && max <= 1024);
        }
    }

    #[test]
    fn passwords_never_survive_masking(
        user in "[a-z]{1,6}",
        secret in "[A-Za-z0-9!$&()+,=@:/]{1,12}",
        host in "[a-z]{1,6}(:[0-9]{1,6})?",
        scheme in prop::sample::select(vec!["amqp://", "amqps://", "amqp:/", "amqp:", ""]),
        second in any::<bool>(),
    ) {
        // A marker no other part contains, so finding it means the password leaked.
        let secret = format!("ZQ{secret}");
        let one = format!("{scheme}{user}:{secret}@{host}/vh");
        let url = if second { format!("amqp://a:b@h;{one}") } else { one };
        let masked = mask_password(&url);
        prop_assert!(!masked.contains("ZQ"), "{url} -> {masked}");
        if scheme.contains(":/") {
            let text = mask_urls(&format!("cannot parse {url:?}: bad"));
            prop_assert!(!text.contains("ZQ"), "{url} -> {text}");
        }
    }
}
