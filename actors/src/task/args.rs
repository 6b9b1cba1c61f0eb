//! [`Args`], the arguments a task is called with, and how they are bound to its parameters as
//! Python binds them.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::TaskError;

/// The arguments a task is called with.
#[derive(Debug, Clone, Default)]
pub struct Args {
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
}

impl Args {
    /// Binds positional and keyword arguments to the named parameters, as Python would,
    /// and deserializes them as a tuple `A`.
    pub fn bind<A: DeserializeOwned>(&self, task: &str, params: &[&str]) -> Result<A, TaskError> {
        if self.args.len() > params.len() {
            return Err(TaskError::type_error(format!(
                "{task}() takes {} positional arguments but {} were given",
                params.len(),
                self.args.len()
            )));
        }
        let params: Vec<(&str, Option<Value>)> = params.iter().map(|p| param(p)).collect();
        if let Some(k) = self
            .kwargs
            .keys()
            .find(|k| !params.iter().any(|(n, _)| n == &k.as_str()))
        {
            return Err(TaskError::type_error(format!(
                "{task}() got an unexpected keyword argument '{k}'"
            )));
        }
        let mut values = Vec::with_capacity(params.len());
        for (i, (p, default)) in params.iter().enumerate() {
            match (self.args.get(i), self.kwargs.get(*p)) {
                (Some(_), Some(_)) => {
                    return Err(TaskError::type_error(format!(
                        "{task}() got multiple values for argument '{p}'"
                    )));
                }
                (Some(v), None) | (None, Some(v)) => values.push(v.clone()),
                (None, None) => match default {
                    Some(v) => values.push(v.clone()),
                    None => {
                        return Err(TaskError::type_error(format!(
                            "{task}() missing required argument: '{p}'"
                        )));
                    }
                },
            }
        }
        let packed = if values.is_empty() {
            Value::Null
        } else {
            Value::Array(values)
        };
        serde_json::from_value(packed)
            .map_err(|e| TaskError::type_error(format!("{task}(): bad argument: {e}")))
    }
}

/// A parameter as registered: `name` (required), `name?` (optional: `null`, for an
/// `Option<T>`, when not given) or `name=<JSON>` (this default when not given; text that is
/// not JSON is a string default).
fn param(spec: &str) -> (&str, Option<Value>) {
    if let Some((name, default)) = spec.split_once('=') {
        let value = serde_json::from_str(default.trim())
            .unwrap_or_else(|_| Value::String(default.to_owned()));
        return (name.trim(), Some(value));
    }
    match spec.strip_suffix('?') {
        Some(name) => (name.trim(), Some(Value::Null)),
        None => (spec.trim(), None),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn optional_and_default_parameters() {
        let a = Args {
            args: vec![json!(2)],
            ..Default::default()
        };
        let (x, y, name): (i64, Option<i64>, String) =
            a.bind("f", &["x", "y?", "name=\"anon\""]).unwrap();
        assert_eq!((x, y, name.as_str()), (2, None, "anon"));
        let a = Args {
            args: vec![json!(2), json!(5)],
            kwargs: json!({"name": "bo"}).as_object().cloned().unwrap(),
        };
        let (x, y, name): (i64, Option<i64>, String) =
            a.bind("f", &["x", "y?", "name=anon"]).unwrap();
        assert_eq!((x, y, name.as_str()), (2, Some(5), "bo"));
        let a = Args {
            kwargs: json!({"z": 1}).as_object().cloned().unwrap(),
            ..Default::default()
        };
        let e = a.bind::<(Option<i64>,)>("f", &["y=3"]).unwrap_err();
        assert!(
            e.to_string().contains("unexpected keyword argument 'z'"),
            "{e}"
        );
    }

    #[test]
    fn binds_like_python() {
        let a = Args {
            args: vec![json!(2)],
            kwargs: json!({"y": 3}).as_object().cloned().unwrap(),
        };
        let (x, y): (i64, i64) = a.bind("add", &["x", "y"]).unwrap();
        assert_eq!((x, y), (2, 3));
        let a = Args {
            args: vec![json!(2)],
            ..Default::default()
        };
        let e = a.bind::<(i64, i64)>("add", &["x", "y"]).unwrap_err();
        assert!(
            e.to_string().contains("missing required argument: 'y'"),
            "{e}"
        );
        let a = Args {
            args: vec![json!(1), json!(2), json!(3)],
            ..Default::default()
        };
        assert_eq!(
            a.bind::<(i64, i64)>("add", &["x", "y"])
                .unwrap_err()
                .exc_type,
            "TypeError"
        );
        let a = Args {
            args: vec![json!("x"), json!(2)],
            ..Default::default()
        };
        assert!(a.bind::<(i64, i64)>("add", &["x", "y"]).is_err());
        let a = Args::default();
        a.bind::<()>("noop", &[]).unwrap();
    }
}
