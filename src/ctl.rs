//! `worker ctl`: Celery's remote-control client (`celery inspect`, `celery control`,
//! `celery status` and `app.control.broadcast` in one command), for celeryd and Python Celery
//! workers alike.
//!
//! A request goes to the `celery.pidbox` fanout exchange with a ticket and a private reply
//! queue; replies are gathered as Celery gathers them: until `--limit` replies came (default:
//! one per `--destination` node, else no limit) or `--timeout` seconds pass without a new one.
//! Each reply is printed as it arrives, in `celery inspect`'s format, or all at the end with
//! `--json`. No reply at all exits 69 (EX_UNAVAILABLE), as `celery inspect` does; an argument
//! error exits 2 before anything is sent (click's and clap's usage-error status).

pub mod output;
pub mod spec;

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Map, Value, json};

use celeryd_actors::Settings;
use celeryd_actors::broker::Link;

use self::output::{online, python_json, reply_block};
use self::spec::Kind;
use crate::cli::CtlArgs;

/// The exchange replies come back on.
pub use celeryd_actors::protocol::pidbox::REPLY_EXCHANGE;

/// Exit status when no node replied (EX_UNAVAILABLE).
pub const EXIT_NO_REPLY: u8 = 69;
/// Exit status for a usage error.
pub const EXIT_USAGE: u8 = 2;

/// What to send, worked out from the command line before connecting.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The method.
    pub method: String,
    /// Its arguments.
    pub arguments: Map<String, Value>,
    /// How replies are shown.
    pub kind: Kind,
    /// Whether replies are wanted.
    pub reply: bool,
    /// Whether reply bodies are printed (`status` prints only the node lines).
    pub show_body: bool,
}

/// `worker ctl inspect <command> …` and `worker ctl control <command> …` (as `celery
/// inspect` / `celery control` spell them) are `worker ctl <command> …`.
pub fn normalized(args: &CtlArgs) -> CtlArgs {
    let mut out = args.clone();
    if matches!(args.command.as_str(), "inspect" | "control")
        && let Some((first, rest)) = args.args.split_first()
    {
        out.command = first.clone();
        out.args = rest.to_vec();
    }
    out
}

/// Works out the request from the command line; the error is a usage message.
pub fn plan(args: &CtlArgs) -> Result<Plan, String> {
    let name = args.command.as_str();
    let (method, mut arguments, kind) = match name {
        "broadcast" => {
            let Some(method) = args.args.first() else {
                return Err("usage: worker ctl broadcast <method> [--arguments JSON] \
                            [--no-reply]"
                    .into());
            };
            if args.args.len() > 1 {
                return Err(
                    "broadcast takes one method; pass its arguments as --arguments \
                            '{\"name\": value}'"
                        .into(),
                );
            }
            let arguments = match &args.arguments {
                None => Map::new(),
                Some(text) => match serde_json::from_str::<Value>(text) {
                    Ok(Value::Object(m)) => m,
                    Ok(_) => return Err("--arguments must be a JSON object".into()),
                    Err(e) => return Err(format!("--arguments is not JSON: {e}")),
                },
            };
            (method.clone(), arguments, Kind::Control)
        }
        "status" => ("ping".to_owned(), Map::new(), Kind::Inspect),
        _ => {
            let Some(command) = spec::find(name) else {
                let names: Vec<&str> = spec::COMMANDS.iter().map(|c| c.name).collect();
                return Err(format!(
                    "unknown command {name:?}; commands: status, broadcast, {}",
                    names.join(", ")
                ));
            };
            let arguments = spec::compile(command, &args.args)?;
            (name.to_owned(), arguments, command.kind)
        }
    };
    if args.terminate || args.signal.is_some() {
        if !matches!(method.as_str(), "revoke" | "revoke_by_stamped_headers") || name == "broadcast"
        {
            return Err(
                "--terminate and --signal go with revoke and revoke_by_stamped_headers".into(),
            );
        }
        arguments.insert("terminate".into(), json!(true));
        if let Some(s) = &args.signal {
            arguments.insert("signal".into(), json!(s));
        }
    }
    if args.arguments.is_some() && name != "broadcast" {
        return Err("--arguments goes with broadcast".into());
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err("--timeout must be a positive number of seconds".into());
    }
    if args.limit == Some(0) {
        return Err("--limit must be at least 1".into());
    }
    if let Some(m) = &args.matcher
        && !matches!(m.as_str(), "glob" | "pcre")
    {
        return Err("--matcher must be glob or pcre".into());
    }
    let reply = !(args.no_reply || method == "shutdown");
    Ok(Plan {
        method,
        arguments,
        kind,
        reply,
        show_body: name != "status",
    })
}

/// The request body Celery's `Mailbox` publishes.
pub fn request_body(plan: &Plan, args: &CtlArgs) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("method".into(), json!(plan.method));
    body.insert("arguments".into(), Value::Object(plan.arguments.clone()));
    let destination = (!args.destination.is_empty()).then(|| json!(args.destination));
    body.insert("destination".into(), json!(destination));
    let matcher = args
        .pattern
        .as_ref()
        .map(|_| args.matcher.clone().unwrap_or_else(|| "glob".into()));
    body.insert("pattern".into(), json!(args.pattern));
    body.insert("matcher".into(), json!(matcher));
    body
}

/// Runs `worker ctl`.
pub async fn run(settings: &Settings, args: &CtlArgs) -> ExitCode {
    let args = &normalized(args);
    let plan = match plan(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let limit = args
        .limit
        .or((!args.destination.is_empty()).then_some(args.destination.len()));
    let timeout = Duration::from_secs_f64(args.timeout);
    let mut replies: Vec<(String, Value)> = Vec::new();
    let printed = |node: &str, value: &Value| {
        if !args.json {
            println!("{}", reply_block(node, value, plan.show_body));
        }
    };
    let sent = broadcast(settings, &plan, args, timeout, limit, |node, value| {
        printed(node, value);
        replies.push((node.to_owned(), value.clone()));
    })
    .await;
    if let Err(e) = sent {
        eprintln!(
            "Error: Could not connect to the message broker at {}. Reason: {e}",
            settings.broker.safe_url()
        );
        return ExitCode::from(EXIT_NO_REPLY);
    }
    if !plan.reply {
        let to = if args.destination.is_empty() {
            "all nodes".to_owned()
        } else {
            args.destination.join(", ")
        };
        println!("-> {} sent to {to} (no reply requested).", plan.method);
        return ExitCode::SUCCESS;
    }
    if replies.is_empty() {
        eprintln!("Error: No nodes replied within time constraint");
        return ExitCode::from(EXIT_NO_REPLY);
    }
    match (args.json, plan.kind) {
        (true, Kind::Inspect) => {
            let merged: Map<String, Value> = replies.into_iter().collect();
            println!("{}", python_json(&Value::Object(merged), None, false));
        }
        (true, Kind::Control) => {
            let list: Vec<Value> = replies.into_iter().map(|(n, v)| json!({ n: v })).collect();
            println!("{}", python_json(&Value::Array(list), None, false));
        }
        (false, Kind::Inspect) => println!("\n{}", online(replies.len())),
        (false, Kind::Control) => {}
    }
    ExitCode::SUCCESS
}

/// Publishes the request and, when replies are wanted, hands each `(node, value)` to
/// `on_reply` as it arrives, until `limit` replies or `timeout` without one.
pub async fn broadcast(
    settings: &Settings,
    plan: &Plan,
    args: &CtlArgs,
    timeout: Duration,
    limit: Option<usize>,
    mut on_reply: impl FnMut(&str, &Value),
) -> Result<(), String> {
    let host = celeryd_actors::hostname::this_host();
    let name = format!("worker ctl@{host}");
    let link = Link::open(&settings.broker, &name, None)
        .await
        .map_err(|e| e.to_string())?;
    let body = request_body(plan, args);
    let result = match link.channel().await {
        Ok(ch) => {
            ch.pidbox_request(body, plan.reply, timeout, limit, &mut on_reply)
                .await
        }
        Err(e) => Err(e),
    };
    link.close("bye").await;
    result.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctl(command: &str, words: &[&str]) -> CtlArgs {
        CtlArgs {
            command: command.into(),
            args: words.iter().map(|s| (*s).to_owned()).collect(),
            destination: Vec::new(),
            timeout: 1.0,
            limit: None,
            json: false,
            pattern: None,
            matcher: None,
            arguments: None,
            no_reply: false,
            terminate: false,
            signal: None,
        }
    }

    #[test]
    fn celerys_inspect_and_control_spellings_are_the_same_commands() {
        let p = plan(&normalized(&ctl("inspect", &["active"]))).unwrap();
        assert_eq!((p.method.as_str(), p.kind), ("active", Kind::Inspect));
        let p = plan(&normalized(&ctl("control", &["revoke", "id1"]))).unwrap();
        assert_eq!(p.method, "revoke");
        assert!(
            p.arguments["task_id"].to_string().contains("id1"),
            "{:?}",
            p.arguments
        );
    }

    #[test]
    fn plans_commands_status_and_broadcast() {
        let p = plan(&ctl("ping", &[])).unwrap();
        assert_eq!(
            (p.method.as_str(), p.kind, p.reply),
            ("ping", Kind::Inspect, true)
        );
        let p = plan(&ctl("status", &[])).unwrap();
        assert_eq!(p.method, "ping");
        assert!(!p.show_body);
        let mut a = ctl("broadcast", &["task_counts"]);
        a.arguments = Some(r#"{"x": 1}"#.into());
        let p = plan(&a).unwrap();
        assert_eq!(p.arguments["x"], 1);
        assert_eq!(p.kind, Kind::Control);
        a.arguments = Some("[1]".into());
        assert!(plan(&a).is_err());
        assert!(!plan(&ctl("shutdown", &[])).unwrap().reply);
        let mut a = ctl("revoke", &["id1"]);
        a.terminate = true;
        a.signal = Some("KILL".into());
        let p = plan(&a).unwrap();
        assert_eq!(p.arguments["terminate"], true);
        assert_eq!(p.arguments["signal"], "KILL");
    }

    #[test]
    fn bad_command_lines_are_usage_errors() {
        assert!(
            plan(&ctl("nope", &[]))
                .unwrap_err()
                .contains("unknown command")
        );
        assert!(plan(&ctl("broadcast", &[])).is_err());
        let mut a = ctl("ping", &[]);
        a.terminate = true;
        assert!(plan(&a).is_err());
        let mut a = ctl("ping", &[]);
        a.timeout = 0.0;
        assert!(plan(&a).is_err());
        let mut a = ctl("ping", &[]);
        a.limit = Some(0);
        assert!(plan(&a).is_err());
        let mut a = ctl("ping", &[]);
        a.matcher = Some("regex".into());
        assert!(plan(&a).is_err());
    }

    #[test]
    fn request_bodies_match_celerys() {
        let mut a = ctl("rate_limit", &["tasks.add", "5/s"]);
        a.destination = vec!["w1@h".into()];
        let p = plan(&a).unwrap();
        let b = Value::Object(celeryd_actors::protocol::pidbox::with_reply(
            request_body(&p, &a),
            "t",
            "oid",
        ));
        assert_eq!(b["method"], "rate_limit");
        assert_eq!(b["arguments"]["rate_limit"], "5/s");
        assert_eq!(b["destination"], json!(["w1@h"]));
        assert_eq!(b["reply_to"]["routing_key"], "oid");
        assert_eq!(b["ticket"], "t");
        assert_eq!(b["pattern"], Value::Null);
        let mut a = ctl("shutdown", &[]);
        a.pattern = Some("w*".into());
        let p = plan(&a).unwrap();
        let b = Value::Object(request_body(&p, &a));
        assert_eq!(b["destination"], Value::Null);
        assert_eq!(b["matcher"], "glob");
        assert!(b.get("ticket").is_none() && b.get("reply_to").is_none());
    }
}
