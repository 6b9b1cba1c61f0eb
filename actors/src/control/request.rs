//! Pidbox requests: decoding, the "is it for me?" rule, and reply shapes. Pure.

use serde_json::{Map, Value, json};

/// A decoded control request.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlRequest {
    /// Command name.
    pub method: String,
    /// Keyword arguments.
    pub arguments: Map<String, Value>,
    /// Exact node names it is for (empty = everyone).
    pub destination: Vec<String>,
    /// `glob` or `pcre` pattern with its matcher.
    pub pattern: Option<(String, String)>,
    /// Reply ticket (absent for casts).
    pub ticket: Option<String>,
    /// Reply exchange and routing key (absent for casts).
    pub reply_to: Option<(String, String)>,
}

/// Decodes a pidbox message body.
pub fn decode(body: &[u8]) -> Result<ControlRequest, String> {
    if body.len() > MAX_BODY {
        return Err(format!(
            "{} bytes is over the {MAX_BODY}-byte limit for control messages",
            body.len()
        ));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(m) = v else {
        return Err("not a JSON object".into());
    };
    let method = m
        .get("method")
        .and_then(Value::as_str)
        .ok_or("no method")?
        .to_owned();
    let arguments = match m.get("arguments") {
        Some(Value::Object(a)) => a.clone(),
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err("arguments must be an object".into()),
    };
    let destination = match m.get("destination") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    };
    let pattern = match (
        m.get("pattern").and_then(Value::as_str),
        m.get("matcher").and_then(Value::as_str),
    ) {
        (Some(p), Some(k)) => Some((p.to_owned(), k.to_owned())),
        _ => None,
    };
    let ticket = m.get("ticket").and_then(Value::as_str).map(str::to_owned);
    let reply_to = m.get("reply_to").and_then(Value::as_object).and_then(|r| {
        Some((
            r.get("exchange")?.as_str()?.to_owned(),
            r.get("routing_key")?.as_str()?.to_owned(),
        ))
    });
    if let Some((exchange, key)) = &reply_to
        && (exchange.len() > 255 || key.len() > 255)
    {
        // AMQP short strings: no reply could be sent there.
        return Err("reply_to names longer than 255 bytes".into());
    }
    Ok(ControlRequest {
        method,
        arguments,
        destination,
        pattern,
        ticket,
        reply_to,
    })
}

/// Whether `nodename` should handle the request (Celery's rules: an explicit destination list
/// wins; else a `glob` (fnmatch) or `pcre` (Python's `re.match`: anchored at the start only)
/// pattern; else everyone). An unknown matcher or a bad regex matches nothing.
pub fn is_for(req: &ControlRequest, nodename: &str) -> bool {
    if !req.destination.is_empty() {
        return req.destination.iter().any(|d| d == nodename);
    }
    match &req.pattern {
        Some((pattern, matcher)) if matcher == "glob" => glob_match(pattern, nodename),
        Some((pattern, matcher)) if matcher == "pcre" => {
            regex::Regex::new(&format!("^(?:{pattern})")).is_ok_and(|re| re.is_match(nodename))
        }
        Some(_) => false,
        None => true,
    }
}

/// fnmatch-style matching with `*`, `?` and literal characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// `{"ok": text}`.
pub fn ok(text: impl Into<String>) -> Value {
    json!({ "ok": text.into() })
}

/// `{"error": text}`.
pub fn error(text: impl Into<String>) -> Value {
    json!({ "error": text.into() })
}

/// Python's truth of an argument: clients send `true`, but also `1` (Flower's `strtobool`) or
/// a non-empty string; absent and null are false.
pub fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
    }
}

/// The task ids of a `revoke` (`task_id` may be one id or a list).
pub fn task_ids(args: &Map<String, Value>) -> Vec<String> {
    match args.get("task_id") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// The largest pidbox message body decoded (bytes). A `revoke` of the most ids a worker keeps
/// (50,000 by default) is about 2 MB; anything far larger is refused before it is parsed.
pub const MAX_BODY: usize = 8 << 20;

/// The longest time limit accepted, in seconds (a year), as for the configuration.
pub const MAX_SECONDS: f64 = 31_536_000.0;

/// A number of seconds (`time_limit`'s `soft` and `hard`): a number or a numeric string (the
/// CLI sends floats, Flower form fields); absent, null, `""` or 0 mean "no limit". Anything
/// else (negative, not a number, infinite, above a year) is an error reply naming the
/// argument, so a typo never silently removes a limit.
///
/// ```
/// use celeryd_actors::control::request::seconds_arg;
/// use serde_json::json;
/// let args = json!({"soft": "1.5", "hard": 0, "x": "abc", "y": -1}).as_object().unwrap().clone();
/// assert_eq!(seconds_arg(&args, "soft"), Ok(Some(1.5)));
/// assert_eq!(seconds_arg(&args, "hard"), Ok(None));
/// assert!(seconds_arg(&args, "x").is_err());
/// assert!(seconds_arg(&args, "y").is_err());
/// ```
pub fn seconds_arg(args: &Map<String, Value>, key: &str) -> Result<Option<f64>, Value> {
    let value = match args.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    };
    match value {
        Some(0.0) => Ok(None),
        Some(v) if v.is_finite() && v > 0.0 && v <= MAX_SECONDS => Ok(Some(v)),
        _ => Err(error(format!(
            "ValueError('{key} must be a number of seconds from 0 (no limit) to {MAX_SECONDS}, not {}')",
            shown(args.get(key))
        ))),
    }
}

/// A whole-number argument from 0 to `max`, given as a number or as digits (the CLI sends
/// strings); absent or null is `Ok(None)`, anything else an error reply naming it.
///
/// ```
/// use celeryd_actors::control::request::int_arg;
/// use serde_json::json;
/// let args = json!({"n": "3", "m": -1, "k": 2000}).as_object().unwrap().clone();
/// assert_eq!(int_arg(&args, "n", 1024), Ok(Some(3)));
/// assert_eq!(int_arg(&args, "absent", 1024), Ok(None));
/// assert!(int_arg(&args, "m", 1024).is_err());
/// assert!(int_arg(&args, "k", 1024).is_err());
/// ```
pub fn int_arg(args: &Map<String, Value>, key: &str, max: usize) -> Result<Option<usize>, Value> {
    let n = match args.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
        Some(Value::String(s)) => s.trim().parse().ok(),
        Some(_) => None,
    };
    match n.filter(|n| *n <= max) {
        Some(n) => Ok(Some(n)),
        None => Err(error(format!(
            "ValueError('{key} must be a whole number from 0 to {max}, not {}')",
            shown(args.get(key))
        ))),
    }
}

/// An argument as shown inside an error reply: JSON, at most 64 characters, with no quote
/// that would end the Python-style string around it.
fn shown(v: Option<&Value>) -> String {
    let text = v
        .map(Value::to_string)
        .unwrap_or_default()
        .replace('\'', "\"");
    match text.char_indices().nth(64) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// Python's repr of a set of strings, as Celery's revoke reply embeds it.
pub fn py_set(ids: &[String]) -> String {
    let items: Vec<String> = ids.iter().map(|i| format!("'{i}'")).collect();
    format!("{{{}}}", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_names_longer_than_a_short_string_are_refused() {
        let long = "e".repeat(256);
        let body = json!({"method": "ping", "reply_to": {"exchange": long, "routing_key": "k"}});
        assert!(decode(body.to_string().as_bytes()).is_err());
        let body = json!({"method": "ping", "reply_to": {"exchange": "e", "routing_key": "k"}});
        assert!(decode(body.to_string().as_bytes()).is_ok());
    }

    #[test]
    fn decodes_a_celery_request() {
        let body = br#"{"method":"ping","arguments":{},"destination":["celery@h1"],"pattern":null,
            "matcher":null,"ticket":"t-1","reply_to":{"exchange":"reply.celery.pidbox","routing_key":"oid"}}"#;
        let r = decode(body).unwrap();
        assert_eq!(r.method, "ping");
        assert_eq!(r.ticket.as_deref(), Some("t-1"));
        assert_eq!(
            r.reply_to,
            Some(("reply.celery.pidbox".into(), "oid".into()))
        );
        assert!(is_for(&r, "celery@h1") && !is_for(&r, "celery@h2"));
        let cast =
            decode(br#"{"method":"revoke","arguments":{"task_id":"abc"},"destination":null}"#)
                .unwrap();
        assert!(cast.ticket.is_none() && cast.reply_to.is_none() && is_for(&cast, "any"));
        assert_eq!(task_ids(&cast.arguments), vec!["abc".to_owned()]);
        for bad in [
            &b"nope"[..],
            b"[1]",
            br#"{"arguments":{}}"#,
            br#"{"method":"x","arguments":[1]}"#,
        ] {
            assert!(decode(bad).is_err());
        }
    }

    #[test]
    fn glob_patterns() {
        assert!(glob_match("celery@*", "celery@host"));
        assert!(glob_match("w?@h", "w1@h"));
        assert!(!glob_match("w?@h", "w12@h"));
        assert!(glob_match("*", ""));
        let r = ControlRequest {
            method: "ping".into(),
            arguments: Map::new(),
            destination: vec![],
            pattern: Some(("w*".into(), "glob".into())),
            ticket: None,
            reply_to: None,
        };
        assert!(is_for(&r, "w1@h") && !is_for(&r, "celery@h"));
        let pcre = |p: &str| ControlRequest {
            pattern: Some((p.into(), "pcre".into())),
            ..r.clone()
        };
        assert!(is_for(&pcre(r"w\d+@"), "w12@h"));
        assert!(
            !is_for(&pcre(r"\d+@"), "w12@h"),
            "anchored at the start, like re.match"
        );
        assert!(is_for(&pcre("celery|w1"), "w1@h"));
        assert!(!is_for(&pcre("("), "w1@h"), "a bad regex matches nothing");
        assert_eq!(py_set(&["a".into(), "b".into()]), "{'a', 'b'}");
        assert!(truthy(Some(&json!(true))) && truthy(Some(&json!(1))) && truthy(Some(&json!("x"))));
        assert!(!truthy(None) && !truthy(Some(&json!(0))) && !truthy(Some(&json!(null))));
    }
}
