//! The built-in control commands as data: [`Command::parse`] reads a request's method and
//! arguments once, with every argument check, before any actor is asked anything. Pure.
//!
//! A few argument errors are replied only after a refusal that depends on this worker's
//! settings (the solo pool refuses resizing whatever `n` is, for instance): those arguments
//! are kept as [`Checked`] values in their command, and the command's effect gives the error
//! in today's order.

use nix::sys::signal::Signal;
use serde_json::{Map, Value};

use super::info;
use super::request::{error, int_arg, seconds_arg, task_ids, truthy};
use crate::revoke::parse_signal;
use crate::revoke::stamps::parse_headers;
use crate::settings::queues::TaskQueue;

/// An argument, or the error reply for it, which its command gives only after the refusals
/// that come before it (`worker.revokes_max`, the solo pool, a hard limit on the thread pool).
pub(super) type Checked<T> = Result<T, Value>;

/// The largest `n`, `max` and `min` of the pool commands.
const MAX_POOL_ARG: usize = 1024;

/// A built-in control command with its arguments read.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Command {
    /// `ping`.
    Ping,
    /// `shutdown` (never replied to).
    Shutdown,
    /// `revoke`, and `terminate` (a revoke that terminates).
    Revoke {
        /// `task_id`: one id or a list.
        ids: Vec<String>,
        /// The signal to terminate running ones with, if `terminate` (SIGTERM by default).
        signal: Checked<Option<Signal>>,
    },
    /// `revoke_by_stamped_headers`.
    RevokeStamped {
        /// `headers`, in the order given.
        headers: Vec<(String, Value)>,
        /// `signal` (SIGTERM by default).
        signal: Signal,
        /// `terminate`: whether running matches are signalled.
        terminate: bool,
    },
    /// `revoked`, `dump_revoked`.
    Revoked,
    /// `rate_limit`.
    RateLimit {
        /// `task_name`.
        task: String,
        /// `rate_limit` as written (`""` when absent or null).
        text: String,
        /// The rate in tasks per second (`None`: no limit).
        rate: Option<f64>,
    },
    /// `time_limit`.
    TimeLimit {
        /// Whether a non-null `hard` was sent (whatever its value).
        hard_given: bool,
        /// The task and its limits.
        limits: Checked<TimeLimits>,
    },
    /// `clock`.
    Clock,
    /// `enable_events`.
    EnableEvents,
    /// `disable_events`.
    DisableEvents,
    /// `heartbeat`.
    Heartbeat,
    /// `election`.
    Election,
    /// `registered`, `dump_tasks`.
    Registered {
        /// `taskinfoitems` (Celery's defaults when none are asked for).
        items: Vec<String>,
        /// `builtins`: whether `celery.*` tasks are listed too.
        builtins: bool,
    },
    /// `active_queues`.
    ActiveQueues,
    /// `add_consumer`: the queue to declare and consume, checked.
    AddConsumer(TaskQueue),
    /// `cancel_consumer`.
    CancelConsumer {
        /// `queue`.
        queue: String,
    },
    /// `active`, `dump_active`.
    Active {
        /// `safe`.
        safe: bool,
    },
    /// `reserved`, `dump_reserved`.
    Reserved,
    /// `scheduled`, `dump_schedule`.
    Scheduled,
    /// `query_task`.
    QueryTask {
        /// `ids`: every string at any depth.
        ids: Vec<String>,
    },
    /// `pool_grow`.
    PoolGrow {
        /// `n` (1 by default).
        n: Checked<usize>,
    },
    /// `pool_shrink`.
    PoolShrink {
        /// `n` (1 by default).
        n: Checked<usize>,
    },
    /// `pool_restart`.
    PoolRestart,
    /// `autoscale`.
    Autoscale {
        /// `max` and `min`.
        bounds: Checked<(Option<usize>, Option<usize>)>,
    },
    /// `stats`.
    Stats,
    /// `beat_schedule` (celeryd's own).
    BeatSchedule,
    /// `conf`, `dump_conf`.
    Conf {
        /// `with_defaults`.
        with_defaults: bool,
    },
    /// `memsample`.
    Memsample,
    /// `report`.
    Report,
    /// `hello`: a starting worker's mingle.
    Hello {
        /// `from_node` (`""` when absent).
        from: String,
        /// The revoked ids it sends.
        revoked: Vec<String>,
    },
}

/// `time_limit`'s task and limits (seconds; `None`: no limit).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TimeLimits {
    /// `task_name`.
    pub(super) task: String,
    /// `soft`.
    pub(super) soft: Option<f64>,
    /// `hard`.
    pub(super) hard: Option<f64>,
}

impl Command {
    /// The command `method` names, its arguments read and checked; an unknown method or a bad
    /// argument is the error reply.
    pub(super) fn parse(method: &str, args: &Map<String, Value>) -> Result<Command, Value> {
        let command = match method {
            "ping" => Command::Ping,
            "shutdown" => Command::Shutdown,
            "revoke" | "terminate" => {
                let terminate = method == "terminate" || truthy(args.get("terminate"));
                Command::Revoke {
                    ids: task_ids(args),
                    signal: signal_arg(terminate, args.get("signal")),
                }
            }
            "revoke_by_stamped_headers" => {
                let headers = parse_headers(args.get("headers"))
                    .map_err(|e| error(format!("ValueError('{e}')")))?;
                Command::RevokeStamped {
                    headers,
                    signal: signal(args.get("signal"))?,
                    terminate: truthy(args.get("terminate")),
                }
            }
            "revoked" | "dump_revoked" => Command::Revoked,
            "rate_limit" => {
                let Some(task) = task_name(args) else {
                    return Err(error("unknown task"));
                };
                let text = rate_text(args).unwrap_or_default();
                let rate = crate::pool::rate::parse_rate(&text)
                    .map_err(|e| error(format!("Invalid rate limit string: ValueError({e:?})")))?;
                Command::RateLimit {
                    task: task.to_owned(),
                    text,
                    rate,
                }
            }
            "time_limit" => Command::TimeLimit {
                hard_given: args.get("hard").is_some_and(|h| !h.is_null()),
                limits: time_limits(args),
            },
            "clock" => Command::Clock,
            "enable_events" => Command::EnableEvents,
            "disable_events" => Command::DisableEvents,
            "heartbeat" => Command::Heartbeat,
            "election" => Command::Election,
            "registered" | "dump_tasks" => Command::Registered {
                items: task_info_items(args),
                builtins: truthy(args.get("builtins")),
            },
            "active_queues" => Command::ActiveQueues,
            "add_consumer" => Command::AddConsumer(queue_spec(args)?),
            "cancel_consumer" => match args.get("queue").and_then(Value::as_str) {
                None => return Err(missing_argument("cancel_consumer", "queue")),
                Some(queue) => Command::CancelConsumer {
                    queue: queue.to_owned(),
                },
            },
            "active" | "dump_active" => Command::Active {
                safe: truthy(args.get("safe")),
            },
            "reserved" | "dump_reserved" => Command::Reserved,
            "scheduled" | "dump_schedule" => Command::Scheduled,
            "query_task" => {
                let mut ids = Vec::new();
                if let Some(v) = args.get("ids") {
                    strings(v, &mut ids);
                }
                Command::QueryTask { ids }
            }
            "pool_grow" => Command::PoolGrow { n: pool_n(args) },
            "pool_shrink" => Command::PoolShrink { n: pool_n(args) },
            "pool_restart" => Command::PoolRestart,
            "autoscale" => Command::Autoscale {
                bounds: match (
                    int_arg(args, "max", MAX_POOL_ARG),
                    int_arg(args, "min", MAX_POOL_ARG),
                ) {
                    (Ok(max), Ok(min)) => Ok((max, min)),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                },
            },
            "stats" => Command::Stats,
            "beat_schedule" => Command::BeatSchedule,
            "conf" | "dump_conf" => Command::Conf {
                with_defaults: truthy(args.get("with_defaults")),
            },
            "memsample" => Command::Memsample,
            "report" => Command::Report,
            "hello" => Command::Hello {
                from: args
                    .get("from_node")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                revoked: crate::protocol::pidbox::revoked_in_hello(&Value::Object(args.clone())),
            },
            other => return Err(error(format!("KeyError('{other}')"))),
        };
        Ok(command)
    }
}

/// The `task_name` argument.
fn task_name(args: &Map<String, Value>) -> Option<&str> {
    args.get("task_name").and_then(Value::as_str)
}

/// The `rate_limit` argument as text (`None` when absent or null).
fn rate_text(args: &Map<String, Value>) -> Option<String> {
    match args.get("rate_limit") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    }
}

/// `time_limit`'s arguments: the task (an "unknown task" error without one), then `soft` and
/// `hard`.
fn time_limits(args: &Map<String, Value>) -> Checked<TimeLimits> {
    let Some(task) = task_name(args) else {
        return Err(error("unknown task"));
    };
    let (soft, hard) = (seconds_arg(args, "soft")?, seconds_arg(args, "hard")?);
    Ok(TimeLimits {
        task: task.to_owned(),
        soft,
        hard,
    })
}

/// Python's error for a handler called without a required argument.
fn missing_argument(command: &str, name: &str) -> Value {
    error(format!(
        "TypeError(\"{command}() missing 1 required positional argument: '{name}'\")"
    ))
}

/// The signal of a `revoke`/`terminate` (`None` unless `terminate`), or the error reply.
fn signal_arg(terminate: bool, value: Option<&Value>) -> Checked<Option<Signal>> {
    if terminate {
        signal(value).map(Some)
    } else {
        Ok(None)
    }
}

/// A `signal` argument: a name or number (SIGTERM when absent or null), or the error reply.
fn signal(value: Option<&Value>) -> Result<Signal, Value> {
    match value {
        None | Some(Value::Null) => Ok(Signal::SIGTERM),
        Some(Value::Number(n)) => parse_signal(&n.to_string()).map_err(error),
        Some(Value::String(s)) => parse_signal(s).map_err(error),
        Some(other) => Err(error(format!("bad signal {other}"))),
    }
}

/// `registered`'s `taskinfoitems` (a list, or a comma-separated string), Celery's default
/// items when none are given.
fn task_info_items(args: &Map<String, Value>) -> Vec<String> {
    let mut items: Vec<String> = match args.get("taskinfoitems") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => s.split(',').map(|i| i.trim().to_owned()).collect(),
        _ => Vec::new(),
    };
    if items.is_empty() {
        items = info::DEFAULT_TASK_INFO_ITEMS
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
    }
    items
}

/// `add_consumer`'s queue: `queue` (required), its exchange, type, routing key and
/// `queue_arguments` (defaulting to the queue's name, `direct` and none), checked for what
/// the broker would refuse on the wire.
fn queue_spec(args: &Map<String, Value>) -> Result<TaskQueue, Value> {
    let Some(queue) = args.get("queue").and_then(Value::as_str) else {
        return Err(missing_argument("add_consumer", "queue"));
    };
    let text = |k: &str| {
        args.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let spec = TaskQueue {
        name: queue.to_owned(),
        exchange: text("exchange").unwrap_or(queue).to_owned(),
        exchange_type: text("exchange_type").unwrap_or("direct").to_owned(),
        routing_key: text("routing_key").unwrap_or(queue).to_owned(),
        bindings: Vec::new(),
        // kombu's `Queue(..., queue_arguments=…)`, passed through add_consumer's options.
        arguments: args
            .get("queue_arguments")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
    };
    if let Err(e) = spec.check() {
        return Err(error(format!("ValueError('{}')", e.replace('\'', "\""))));
    }
    Ok(spec)
}

/// `pool_grow`'s and `pool_shrink`'s `n` (1 by default).
fn pool_n(args: &Map<String, Value>) -> Checked<usize> {
    int_arg(args, "n", MAX_POOL_ARG).map(|n| n.unwrap_or(1))
}

/// Every string in `v` at any depth (the CLI may nest `query_task`'s list: `ids=[[…]]`).
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
