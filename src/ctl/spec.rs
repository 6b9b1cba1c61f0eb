//! The remote-control commands `worker ctl` knows, and turning command-line words into a
//! request's arguments. Pure: every argument error is found here, before anything is sent.
//!
//! Names, argument names and types follow Celery 5.7's control panel, so `worker ctl` drives
//! Python workers as well as celeryd.

use serde_json::{Map, Value, json};

/// Whether a command reads state (`inspect`: replies flattened to `{node: value}`, followed by
/// "N nodes online.") or changes it (`control`: the list of replies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Reads state.
    Inspect,
    /// Changes state.
    Control,
}

/// How a positional word is converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// As is.
    Str,
    /// A whole number.
    Int,
    /// A number.
    Float,
    /// `yes/no/true/false/on/off/1/0` (Python's `strtobool`).
    Bool,
}

/// One command.
#[derive(Debug, Clone, Copy)]
pub struct Command {
    /// Its name.
    pub name: &'static str,
    /// Inspect or control.
    pub kind: Kind,
    /// Positional arguments in order: name, type.
    pub args: &'static [(&'static str, Type)],
    /// How many of `args` must be given.
    pub required: usize,
    /// The name that takes every remaining word as a list, and whether at least one is needed.
    pub variadic: Option<(&'static str, bool)>,
    /// Usage shown in errors and `--help`.
    pub signature: &'static str,
    /// What it does.
    pub help: &'static str,
}

const fn cmd(
    name: &'static str,
    kind: Kind,
    args: &'static [(&'static str, Type)],
    required: usize,
    variadic: Option<(&'static str, bool)>,
    signature: &'static str,
    help: &'static str,
) -> Command {
    Command {
        name,
        kind,
        args,
        required,
        variadic,
        signature,
        help,
    }
}

use Kind::{Control, Inspect};
use Type::{Bool, Float, Int, Str};

/// Every command, sorted by name.
pub const COMMANDS: &[Command] = &[
    cmd(
        "active",
        Inspect,
        &[("safe", Bool)],
        0,
        None,
        "[safe=False]",
        "Tasks running now.",
    ),
    cmd(
        "active_queues",
        Inspect,
        &[],
        0,
        None,
        "",
        "Queues consumed.",
    ),
    cmd(
        "add_consumer",
        Control,
        &[
            ("queue", Str),
            ("exchange", Str),
            ("exchange_type", Str),
            ("routing_key", Str),
        ],
        1,
        None,
        "<queue> [exchange [type [routing_key]]]",
        "Start consuming from a queue.",
    ),
    cmd(
        "autoscale",
        Control,
        &[("max", Int), ("min", Int)],
        0,
        None,
        "[max [min]]",
        "Change the autoscale bounds.",
    ),
    cmd(
        "beat_schedule",
        Inspect,
        &[],
        0,
        None,
        "",
        "celeryd's own: the periodic task scheduler's role (active or standby) and entries (schedule, last and next run, runs), on nodes started with -B.",
    ),
    cmd(
        "cancel_consumer",
        Control,
        &[("queue", Str)],
        1,
        None,
        "<queue>",
        "Stop consuming from a queue.",
    ),
    cmd("clock", Inspect, &[], 0, None, "", "The logical clock."),
    cmd(
        "conf",
        Inspect,
        &[("with_defaults", Bool)],
        0,
        None,
        "[include_defaults=False]",
        "The configuration.",
    ),
    cmd(
        "disable_events",
        Control,
        &[],
        0,
        None,
        "",
        "Stop sending task events.",
    ),
    cmd(
        "election",
        Control,
        &[("id", Str), ("topic", Str), ("action", Str)],
        2,
        None,
        "<id> <topic> [action]",
        "Hold an election.",
    ),
    cmd(
        "enable_events",
        Control,
        &[],
        0,
        None,
        "",
        "Start sending task events.",
    ),
    cmd(
        "heartbeat",
        Control,
        &[],
        0,
        None,
        "",
        "Send a worker heartbeat event now.",
    ),
    cmd(
        "memdump",
        Inspect,
        &[("samples", Int)],
        0,
        None,
        "[n_samples=10]",
        "Memory samples (Python workers).",
    ),
    cmd("memsample", Inspect, &[], 0, None, "", "Resident memory."),
    cmd(
        "objgraph",
        Inspect,
        &[("type", Str), ("num", Int), ("max_depth", Int)],
        0,
        None,
        "[object_type=Request] [num=200 [max_depth=10]]",
        "Object graph (Python workers).",
    ),
    cmd("ping", Inspect, &[], 0, None, "", "Ping workers."),
    cmd(
        "pool_grow",
        Control,
        &[("n", Int)],
        0,
        None,
        "[N=1]",
        "Add child processes.",
    ),
    cmd(
        "pool_restart",
        Control,
        &[],
        0,
        None,
        "",
        "Replace every child process.",
    ),
    cmd(
        "pool_shrink",
        Control,
        &[("n", Int)],
        0,
        None,
        "[N=1]",
        "Remove child processes.",
    ),
    cmd(
        "query_task",
        Inspect,
        &[],
        0,
        Some(("ids", true)),
        "<id1 [id2 [... [idN]]]>",
        "Where these tasks are.",
    ),
    cmd(
        "rate_limit",
        Control,
        &[("task_name", Str), ("rate_limit", Str)],
        2,
        None,
        "<task_name> <rate_limit (e.g., 5/s | 5/m | 5/h)>",
        "Change a task's rate limit.",
    ),
    cmd(
        "registered",
        Inspect,
        &[],
        0,
        Some(("taskinfoitems", false)),
        "[attr1 [attr2 [... [attrN]]]]",
        "Registered tasks.",
    ),
    cmd(
        "report",
        Inspect,
        &[],
        0,
        None,
        "",
        "Software and node report.",
    ),
    cmd(
        "reserved",
        Inspect,
        &[],
        0,
        None,
        "",
        "Tasks received, waiting to run.",
    ),
    cmd(
        "revoke",
        Control,
        &[],
        0,
        Some(("task_id", true)),
        "<id1 [id2 [... [idN]]]>",
        "Revoke tasks.",
    ),
    cmd(
        "revoke_by_stamped_headers",
        Control,
        &[],
        0,
        Some(("headers", true)),
        "<key1=value1 [key2=value2 [... [keyN=valueN]]]>",
        "Revoke tasks by stamped header.",
    ),
    cmd("revoked", Inspect, &[], 0, None, "", "Revoked task ids."),
    cmd("scheduled", Inspect, &[], 0, None, "", "ETA tasks held."),
    cmd(
        "shutdown",
        Control,
        &[],
        0,
        None,
        "",
        "Warm shutdown (no reply).",
    ),
    cmd("stats", Inspect, &[], 0, None, "", "Statistics."),
    cmd(
        "terminate",
        Control,
        &[("signal", Str)],
        1,
        Some(("task_id", true)),
        "<signal> <id1 [id2 [... [idN]]]>",
        "Revoke and signal running tasks.",
    ),
    cmd(
        "time_limit",
        Control,
        &[("task_name", Str), ("soft", Float), ("hard", Float)],
        2,
        None,
        "<task_name> <soft_secs> [hard_secs]",
        "Change a task's time limits.",
    ),
];

/// The command called `name`.
pub fn find(name: &str) -> Option<&'static Command> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// Converts the words after the command name into its arguments, or says what is wrong.
pub fn compile(command: &Command, words: &[String]) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    let usage = || format!("usage: worker ctl {} {}", command.name, command.signature);
    let fixed = words.len().min(command.args.len());
    if command.variadic.is_none() && words.len() > command.args.len() {
        return Err(format!(
            "{} takes at most {} argument(s); {}",
            command.name,
            command.args.len(),
            usage()
        ));
    }
    if words.len() < command.required {
        let (missing, _) = command.args[words.len()];
        return Err(format!("missing <{missing}>; {}", usage()));
    }
    for ((name, ty), word) in command.args.iter().zip(&words[..fixed]) {
        let value = convert(word, *ty).map_err(|e| format!("{name}: {e}; {}", usage()))?;
        out.insert((*name).to_owned(), value);
    }
    if let Some((name, needed)) = command.variadic {
        let rest = &words[fixed..];
        if needed && rest.is_empty() {
            return Err(format!("missing <{name}>; {}", usage()));
        }
        if command.name == "revoke_by_stamped_headers"
            && let Some(bad) = rest.iter().find(|w| !w.contains('='))
        {
            return Err(format!("{bad:?} is not key=value; {}", usage()));
        }
        out.insert(name.to_owned(), json!(rest));
    }
    Ok(out)
}

/// One word as `ty`.
pub fn convert(word: &str, ty: Type) -> Result<Value, String> {
    match ty {
        Type::Str => Ok(json!(word)),
        Type::Int => word
            .parse::<i64>()
            .map(|n| json!(n))
            .map_err(|_| format!("{word:?} is not a whole number")),
        Type::Float => word
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(|f| json!(f))
            .ok_or_else(|| format!("{word:?} is not a number")),
        Type::Bool => match word.to_ascii_lowercase().as_str() {
            "y" | "yes" | "t" | "true" | "on" | "1" => Ok(json!(true)),
            "n" | "no" | "f" | "false" | "off" | "0" => Ok(json!(false)),
            _ => Err(format!("{word:?} is not a truth value")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| (*s).to_owned()).collect()
    }

    fn args(name: &str, w: &[&str]) -> Result<Value, String> {
        compile(find(name).unwrap(), &words(w)).map(Value::Object)
    }

    #[test]
    fn commands_are_sorted_and_unique() {
        let names: Vec<_> = COMMANDS.iter().map(|c| c.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
    }

    #[test]
    fn positional_words_become_typed_arguments() {
        assert_eq!(args("ping", &[]), Ok(json!({})));
        assert_eq!(
            args("rate_limit", &["tasks.add", "10/m"]),
            Ok(json!({"task_name": "tasks.add", "rate_limit": "10/m"}))
        );
        assert_eq!(
            args("time_limit", &["tasks.add", "1.5", "3"]),
            Ok(json!({"task_name": "tasks.add", "soft": 1.5, "hard": 3.0}))
        );
        assert_eq!(args("pool_grow", &["2"]), Ok(json!({"n": 2})));
        assert_eq!(
            args("revoke", &["a", "b"]),
            Ok(json!({"task_id": ["a", "b"]}))
        );
        assert_eq!(
            args("terminate", &["KILL", "a"]),
            Ok(json!({"signal": "KILL", "task_id": ["a"]}))
        );
        assert_eq!(args("registered", &[]), Ok(json!({"taskinfoitems": []})));
        assert_eq!(
            args("autoscale", &["10", "3"]),
            Ok(json!({"max": 10, "min": 3}))
        );
        assert_eq!(args("conf", &["yes"]), Ok(json!({"with_defaults": true})));
    }

    #[test]
    fn argument_errors_name_the_argument_and_the_usage() {
        let e = args("rate_limit", &["tasks.add"]).unwrap_err();
        assert!(e.contains("missing <rate_limit>") && e.contains("usage: worker ctl rate_limit"));
        assert!(
            args("pool_grow", &["two"])
                .unwrap_err()
                .contains("n: \"two\" is not a whole number")
        );
        assert!(
            args("time_limit", &["t", "soon"])
                .unwrap_err()
                .contains("soft")
        );
        assert!(
            args("revoke", &[])
                .unwrap_err()
                .contains("missing <task_id>")
        );
        assert!(
            args("terminate", &["KILL"])
                .unwrap_err()
                .contains("missing <task_id>")
        );
        assert!(args("ping", &["extra"]).unwrap_err().contains("at most 0"));
        assert!(
            args("revoke_by_stamped_headers", &["k"])
                .unwrap_err()
                .contains("key=value")
        );
        assert!(
            args("conf", &["maybe"])
                .unwrap_err()
                .contains("truth value")
        );
    }
}
