//! [`Command::parse`]: every built-in name, the arguments' defaults, and each argument error
//! with the exact reply the worker gives.

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use super::{Command, TimeLimits};
use crate::control::request::error;
use crate::settings::queues::TaskQueue;

fn parse(method: &str, args: Value) -> Result<Command, Value> {
    Command::parse(method, args.as_object().expect("an object"))
}

fn queue(name: &str, exchange: &str, kind: &str, key: &str) -> TaskQueue {
    TaskQueue {
        name: name.into(),
        exchange: exchange.into(),
        exchange_type: kind.into(),
        routing_key: key.into(),
        bindings: Vec::new(),
        arguments: serde_json::Map::new(),
    }
}

#[test]
fn every_built_in_command_parses() {
    let items = || vec!["exchange".into(), "routing_key".into(), "rate_limit".into()];
    let cases = [
        ("ping", json!({}), Command::Ping),
        ("shutdown", json!({}), Command::Shutdown),
        (
            "revoke",
            json!({"task_id": "a"}),
            Command::Revoke {
                ids: vec!["a".into()],
                signal: Ok(None),
            },
        ),
        (
            "terminate",
            json!({"task_id": ["a", "b"]}),
            Command::Revoke {
                ids: vec!["a".into(), "b".into()],
                signal: Ok(Some(Signal::SIGTERM)),
            },
        ),
        (
            "revoke_by_stamped_headers",
            json!({"headers": ["k=v"], "signal": "KILL"}),
            Command::RevokeStamped {
                headers: vec![("k".into(), json!("v"))],
                signal: Signal::SIGKILL,
                terminate: false,
            },
        ),
        ("revoked", json!({}), Command::Revoked),
        ("dump_revoked", json!({}), Command::Revoked),
        (
            "rate_limit",
            json!({"task_name": "t", "rate_limit": "10/s"}),
            Command::RateLimit {
                task: "t".into(),
                text: "10/s".into(),
                rate: Some(10.0),
            },
        ),
        (
            "time_limit",
            json!({"task_name": "t", "soft": "1.5", "hard": null}),
            Command::TimeLimit {
                hard_given: false,
                limits: Ok(TimeLimits {
                    task: "t".into(),
                    soft: Some(1.5),
                    hard: None,
                }),
            },
        ),
        ("clock", json!({}), Command::Clock),
        ("enable_events", json!({}), Command::EnableEvents),
        ("disable_events", json!({}), Command::DisableEvents),
        ("heartbeat", json!({}), Command::Heartbeat),
        ("election", json!({"id": "x"}), Command::Election),
        (
            "registered",
            json!({}),
            Command::Registered {
                items: items(),
                builtins: false,
            },
        ),
        (
            "dump_tasks",
            json!({"builtins": 1}),
            Command::Registered {
                items: items(),
                builtins: true,
            },
        ),
        ("active_queues", json!({}), Command::ActiveQueues),
        (
            "add_consumer",
            json!({"queue": "q", "exchange": ""}),
            Command::AddConsumer(queue("q", "q", "direct", "q")),
        ),
        (
            "cancel_consumer",
            json!({"queue": "q"}),
            Command::CancelConsumer { queue: "q".into() },
        ),
        ("active", json!({}), Command::Active { safe: false }),
        (
            "dump_active",
            json!({"safe": true}),
            Command::Active { safe: true },
        ),
        ("reserved", json!({}), Command::Reserved),
        ("dump_reserved", json!({}), Command::Reserved),
        ("scheduled", json!({}), Command::Scheduled),
        ("dump_schedule", json!({}), Command::Scheduled),
        (
            "query_task",
            json!({"ids": [["a"], "b", 3]}),
            Command::QueryTask {
                ids: vec!["a".into(), "b".into()],
            },
        ),
        ("pool_grow", json!({}), Command::PoolGrow { n: Ok(1) }),
        (
            "pool_shrink",
            json!({"n": "3"}),
            Command::PoolShrink { n: Ok(3) },
        ),
        (
            "pool_restart",
            json!({"reload": true}),
            Command::PoolRestart,
        ),
        (
            "autoscale",
            json!({"max": 4, "min": "2"}),
            Command::Autoscale {
                bounds: Ok((Some(4), Some(2))),
            },
        ),
        ("stats", json!({}), Command::Stats),
        ("beat_schedule", json!({}), Command::BeatSchedule),
        (
            "conf",
            json!({}),
            Command::Conf {
                with_defaults: false,
            },
        ),
        (
            "dump_conf",
            json!({"with_defaults": true}),
            Command::Conf {
                with_defaults: true,
            },
        ),
        ("memsample", json!({}), Command::Memsample),
        ("report", json!({}), Command::Report),
        (
            "hello",
            json!({"from_node": "w2@h", "revoked": {"a": 1.0}}),
            Command::Hello {
                from: "w2@h".into(),
                revoked: vec!["a".into()],
            },
        ),
    ];
    assert_eq!(cases.len(), 37, "every built-in name and alias");
    for (method, args, want) in cases {
        assert_eq!(parse(method, args), Ok(want), "{method}");
    }
}

#[test]
fn arguments_take_their_defaults() {
    let revoke = parse("revoke", json!({"terminate": 1, "signal": 9}));
    assert_eq!(
        revoke,
        Ok(Command::Revoke {
            ids: vec![],
            signal: Ok(Some(Signal::SIGKILL))
        })
    );
    let unchecked = parse("revoke", json!({"task_id": 7, "signal": "SIGNOPE"}));
    assert_eq!(
        unchecked,
        Ok(Command::Revoke {
            ids: vec![],
            signal: Ok(None)
        })
    );
    let stamped = parse(
        "revoke_by_stamped_headers",
        json!({"headers": {"k": 1}, "terminate": "y"}),
    );
    let want = Command::RevokeStamped {
        headers: vec![("k".into(), json!(1))],
        signal: Signal::SIGTERM,
        terminate: true,
    };
    assert_eq!(stamped, Ok(want));
    let off = parse("rate_limit", json!({"task_name": "t", "rate_limit": null}));
    let want = Command::RateLimit {
        task: "t".into(),
        text: String::new(),
        rate: None,
    };
    assert_eq!(off, Ok(want));
    let number = parse("rate_limit", json!({"task_name": "t", "rate_limit": 5}));
    let want = Command::RateLimit {
        task: "t".into(),
        text: "5".into(),
        rate: Some(5.0),
    };
    assert_eq!(number, Ok(want));
    let Ok(Command::TimeLimit { hard_given, limits }) =
        parse("time_limit", json!({"task_name": "t", "hard": 0}))
    else {
        panic!("time_limit");
    };
    assert!(hard_given, "any non-null hard counts, 0 too");
    assert_eq!(
        limits,
        Ok(TimeLimits {
            task: "t".into(),
            soft: None,
            hard: None
        })
    );
    let items = parse(
        "registered",
        json!({"taskinfoitems": "rate_limit, time_limit"}),
    );
    let want = Command::Registered {
        items: vec!["rate_limit".into(), "time_limit".into()],
        builtins: false,
    };
    assert_eq!(items, Ok(want));
    let args = json!({"queue": "q", "exchange": "x", "exchange_type": "topic",
                      "routing_key": "k.#", "queue_arguments": {"x-max-priority": 5}});
    let mut want = queue("q", "x", "topic", "k.#");
    want.arguments.insert("x-max-priority".into(), json!(5));
    assert_eq!(parse("add_consumer", args), Ok(Command::AddConsumer(want)));
    let hello = parse("hello", json!({}));
    assert_eq!(
        hello,
        Ok(Command::Hello {
            from: String::new(),
            revoked: vec![]
        })
    );
    let bounds = parse("autoscale", json!({"max": null}));
    assert_eq!(
        bounds,
        Ok(Command::Autoscale {
            bounds: Ok((None, None))
        })
    );
}

#[test]
fn argument_errors_give_the_replies_of_celeryd() {
    let missing = |c: &str| {
        error(format!(
            "TypeError(\"{c}() missing 1 required positional argument: 'queue'\")"
        ))
    };
    let cases = [
        ("nope", json!({}), error("KeyError('nope')")),
        ("", json!({}), error("KeyError('')")),
        (
            "revoke_by_stamped_headers",
            json!({}),
            error("ValueError('headers must be an object or a list of name=value')"),
        ),
        (
            "revoke_by_stamped_headers",
            json!({"headers": ["x"]}),
            error("ValueError('header \"x\" is not name=value')"),
        ),
        (
            "revoke_by_stamped_headers",
            json!({"headers": [1]}),
            error("ValueError('header 1 is not a \"name=value\" string')"),
        ),
        (
            "revoke_by_stamped_headers",
            json!({"headers": {"k": "v"}, "signal": "NOPE"}),
            error("unknown signal \"NOPE\""),
        ),
        (
            "revoke_by_stamped_headers",
            json!({"headers": {"k": "v"}, "signal": {}}),
            error("bad signal {}"),
        ),
        (
            "rate_limit",
            json!({"rate_limit": "1/s"}),
            error("unknown task"),
        ),
        ("rate_limit", json!({"task_name": 3}), error("unknown task")),
        (
            "rate_limit",
            json!({"task_name": "t", "rate_limit": "fast"}),
            error(
                r#"Invalid rate limit string: ValueError("invalid rate limit \"fast\": \"fast\" is not a number")"#,
            ),
        ),
        (
            "rate_limit",
            json!({"task_name": "t", "rate_limit": "1/d"}),
            error(
                r#"Invalid rate limit string: ValueError("invalid rate limit \"1/d\": unknown unit \"d\" (use s, m or h)")"#,
            ),
        ),
        ("add_consumer", json!({}), missing("add_consumer")),
        ("add_consumer", json!({"queue": 1}), missing("add_consumer")),
        (
            "add_consumer",
            json!({"queue": ""}),
            error("ValueError('a queue name is 1 to 255 bytes')"),
        ),
        (
            "add_consumer",
            json!({"queue": "q", "exchange_type": "bogus"}),
            error(
                "ValueError('exchange type \"bogus\" is not one of direct, topic, fanout, headers')",
            ),
        ),
        ("cancel_consumer", json!({}), missing("cancel_consumer")),
    ];
    for (method, args, want) in cases {
        assert_eq!(parse(method, args.clone()), Err(want), "{method} {args}");
    }
}

/// The argument errors a command replies only after its refusals for this worker's settings.
#[test]
fn checked_arguments_keep_their_error_replies() {
    let signal = |args: Value| match parse("terminate", args) {
        Ok(Command::Revoke { signal, .. }) => signal,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        signal(json!({"signal": "SIGNOPE"})),
        Err(error("unknown signal \"SIGNOPE\""))
    );
    assert_eq!(
        signal(json!({"signal": 99})),
        Err(error("unknown signal number 99"))
    );
    assert_eq!(signal(json!({"signal": [1]})), Err(error("bad signal [1]")));
    let revoke = parse("revoke", json!({"terminate": true, "signal": true}));
    let want = Command::Revoke {
        ids: vec![],
        signal: Err(error("bad signal true")),
    };
    assert_eq!(revoke, Ok(want));

    let limits = |args: Value| match parse("time_limit", args) {
        Ok(Command::TimeLimit { limits, .. }) => limits,
        other => panic!("{other:?}"),
    };
    assert_eq!(limits(json!({"soft": "abc"})), Err(error("unknown task")));
    let seconds = |key: &str, shown: &str| {
        error(format!(
            "ValueError('{key} must be a number of seconds from 0 (no limit) to 31536000, not {shown}')"
        ))
    };
    let bad_soft = json!({"task_name": "t", "soft": "abc", "hard": -1});
    assert_eq!(limits(bad_soft), Err(seconds("soft", "\"abc\"")));
    assert_eq!(
        limits(json!({"task_name": "t", "hard": -1})),
        Err(seconds("hard", "-1"))
    );

    let whole = |key: &str, shown: &str| {
        error(format!(
            "ValueError('{key} must be a whole number from 0 to 1024, not {shown}')"
        ))
    };
    assert_eq!(
        parse("pool_grow", json!({"n": -1})),
        Ok(Command::PoolGrow {
            n: Err(whole("n", "-1"))
        })
    );
    assert_eq!(
        parse("pool_shrink", json!({"n": "x"})),
        Ok(Command::PoolShrink {
            n: Err(whole("n", "\"x\""))
        })
    );
    let autoscale = |args: Value| match parse("autoscale", args) {
        Ok(Command::Autoscale { bounds }) => bounds,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        autoscale(json!({"max": "x", "min": 2000})),
        Err(whole("max", "\"x\""))
    );
    assert_eq!(
        autoscale(json!({"max": 2, "min": 2000})),
        Err(whole("min", "2000"))
    );
}
