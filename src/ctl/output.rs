//! How `worker ctl` prints replies: the same text as `celery inspect`/`celery control` without
//! colours, and JSON the way Python's `json.dumps` writes it. Pure.

use celeryd_actors::protocol::repr::py_repr;
use serde_json::Value;

/// The lines for one node's reply:
/// ```text
/// ->  celery@h1: OK
///         pong
/// ```
/// A dict with `ok` is OK and its value, with `error` ERROR and the message; a list is one
/// `* item` line each (or `- empty -`); another dict is sorted JSON indented by 4; a string
/// as is; anything else as Python's repr.
pub fn reply_block(node: &str, value: &Value, show_body: bool) -> String {
    let (status, body) = pretty(value);
    let mut out = format!("->  {node}: {status}");
    if show_body && !body.is_empty() {
        out.push('\n');
        out.push_str(&indent(&body, 4));
    }
    out
}

fn pretty(value: &Value) -> (&'static str, String) {
    match value {
        Value::Array(items) if items.is_empty() => ("OK", "- empty -".to_owned()),
        Value::Array(items) => {
            let lines: Vec<String> = items.iter().map(|i| format!("* {}", py_str(i))).collect();
            ("OK", lines.join("\n"))
        }
        Value::Object(m) if m.contains_key("ok") => ("OK", indent(&pretty(&m["ok"]).1, 4)),
        Value::Object(m) if m.contains_key("error") => ("ERROR", indent(&pretty(&m["error"]).1, 4)),
        Value::Object(_) => ("OK", python_json(value, Some(4), true)),
        Value::String(s) => ("OK", s.clone()),
        other => ("OK", py_repr(other)),
    }
}

/// Python's `str()` of a list item: strings bare, the rest as repr.
fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => py_repr(other),
    }
}

/// Celery's `text.indent`: every line prefixed with `n` spaces.
pub fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.split('\n')
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `"1 node online."` / `"2 nodes online."`.
pub fn online(n: usize) -> String {
    format!("{n} {} online.", if n == 1 { "node" } else { "nodes" })
}

/// JSON as Python's `json.dumps` writes it: `", "` and `": "` separators on one line, or
/// with `indent` one item per line; keys sorted when `sort_keys`; non-ASCII escaped.
pub fn python_json(value: &Value, indent: Option<usize>, sort_keys: bool) -> String {
    let mut out = String::new();
    write_json(value, indent, sort_keys, 0, &mut out);
    out
}

fn write_json(v: &Value, indent: Option<usize>, sort: bool, depth: usize, out: &mut String) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(item, indent, sort, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(m) if !m.is_empty() => {
            let mut keys: Vec<&String> = m.keys().collect();
            if sort {
                keys.sort();
            }
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_string(k, out);
                out.push_str(": ");
                write_json(&m[k], indent, sort, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        Value::String(s) => write_string(s, out),
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or_default();
            if f.fract() == 0.0 && f.abs() < 1e16 {
                out.push_str(&format!("{f:.1}"));
            } else {
                out.push_str(&f.to_string());
            }
        }
        other => out.push_str(&other.to_string()),
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn blocks_look_like_celery_inspect() {
        assert_eq!(
            reply_block("celery@h1", &json!({"ok": "pong"}), true),
            "->  celery@h1: OK\n        pong"
        );
        assert_eq!(reply_block("n", &json!({"ok": "pong"}), false), "->  n: OK");
        assert_eq!(
            reply_block("n", &json!({"error": "unknown task"}), true),
            "->  n: ERROR\n        unknown task"
        );
        assert_eq!(
            reply_block("n", &json!(["tasks.add", "tasks.noop"]), true),
            "->  n: OK\n    * tasks.add\n    * tasks.noop"
        );
        assert_eq!(
            reply_block("n", &json!([]), true),
            "->  n: OK\n    - empty -"
        );
        assert_eq!(
            reply_block("n", &json!({"clock": 5}), true),
            "->  n: OK\n    {\n        \"clock\": 5\n    }"
        );
        assert_eq!(reply_block("n", &json!(null), true), "->  n: OK\n    None");
        assert_eq!(
            reply_block("n", &json!([{"a": 1}]), true),
            "->  n: OK\n    * {'a': 1}"
        );
    }

    #[test]
    fn json_is_written_as_python_writes_it() {
        let v = json!({"b": [1, 2.0, "é"], "a": {"x": null, "y": true}});
        assert_eq!(
            python_json(&v, None, false),
            r#"{"a": {"x": null, "y": true}, "b": [1, 2.0, "\u00e9"]}"#
        );
        assert_eq!(
            python_json(&json!({"k": [1], "e": {}}), Some(4), true),
            "{\n    \"e\": {},\n    \"k\": [\n        1\n    ]\n}"
        );
        assert_eq!(online(1), "1 node online.");
        assert_eq!(online(3), "3 nodes online.");
    }
}
