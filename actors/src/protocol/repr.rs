//! Python `repr()` of JSON values, for log lines, `argsrepr` and event fields.

use serde_json::Value;

/// Writes `value` as Python would print it (`None`, `True`, `'text'`, `[1, 2]`, `{'k': 1}`).
pub fn py_repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(value, &mut out);
    out
}

/// A Python tuple repr of positional arguments: `(2, 3)`, `(1,)`, `()`.
pub fn args_repr(args: &[Value]) -> String {
    let mut out = String::from("(");
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_repr(a, &mut out);
    }
    if args.len() == 1 {
        out.push(',');
    }
    out.push(')');
    out
}

/// Shortens a repr to at most `max` characters, as Celery's `saferepr` does with `...`.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.chars().count() > max {
        s = s.chars().take(max.saturating_sub(3)).collect();
        s.push_str("...");
    }
    s
}

fn write_repr(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                if f.fract() == 0.0 && f.abs() < 1e16 {
                    out.push_str(&format!("{f:.1}"));
                } else {
                    out.push_str(&f.to_string());
                }
            } else {
                out.push_str(&n.to_string());
            }
        }
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(v, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str(k, out);
                out.push_str(": ");
                write_repr(v, out);
            }
            out.push('}');
        }
    }
}

fn write_str(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reprs_like_python() {
        assert_eq!(py_repr(&json!(null)), "None");
        assert_eq!(
            py_repr(&json!([1, "a", true, 2.5, 3.0])),
            "[1, 'a', True, 2.5, 3.0]"
        );
        assert_eq!(py_repr(&json!({"z": 1})), "{'z': 1}");
        assert_eq!(py_repr(&json!("it's")), "\"it's\"");
        assert_eq!(py_repr(&json!("a\nb")), "'a\\nb'");
        assert_eq!(args_repr(&[json!(2), json!(3)]), "(2, 3)");
        assert_eq!(args_repr(&[json!(2)]), "(2,)");
        assert_eq!(args_repr(&[]), "()");
        assert_eq!(truncate("abcdef".into(), 5), "ab...");
    }
}
