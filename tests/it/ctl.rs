//! `worker ctl`, the remote-control client: the same output as the real `celery inspect` /
//! `celery control` for the same worker, destination/limit/timeout behaviour with two celeryd
//! workers on one host, a real Python Celery worker driven by it, and errors.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::block_on;
use crate::kit::{
    PyWorker, Worker, celery_cli, celery_client, delete_queue, unique_queue, worker_ctl,
    worker_ctl_with_broker,
};

fn ctl_ok(args: &[&str]) -> String {
    let (code, out, err) = worker_ctl(args);
    assert_eq!(code, 0, "worker ctl {args:?}: {out}{err}");
    out
}

fn celery_out(args: &[&str]) -> String {
    let out = celery_cli(args);
    assert!(out.status.success(), "celery {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ctl_prints_what_the_celery_cli_prints() {
    let queue = unique_queue("ctl");
    let worker = Worker::builder(&queue).concurrency(1).start();
    let node = worker.nodename();
    for (kind, cmd) in [
        ("inspect", "ping"),
        ("inspect", "registered"),
        ("inspect", "active_queues"),
        ("inspect", "revoked"),
        ("inspect", "conf"),
        ("control", "pool_grow"),
        ("control", "pool_shrink"),
    ] {
        let ours = ctl_ok(&[cmd, "-d", &node]);
        let theirs = celery_out(&[kind, cmd, "-d", &node]);
        assert_eq!(ours, theirs, "{kind} {cmd}");
    }
    // --json: the same document (the merged dict for inspect, the list for control).
    let ours = ctl_ok(&["stats", "--json", "-d", &node]);
    let stats: Value = serde_json::from_str(&ours).unwrap();
    assert!(stats[&node]["pool"]["max-concurrency"].is_u64(), "{ours}");
    let ours = ctl_ok(&["rate_limit", "tasks.add", "10/m", "--json", "-d", &node]);
    let theirs = celery_out(&[
        "control",
        "rate_limit",
        "tasks.add",
        "10/m",
        "--json",
        "-d",
        &node,
    ]);
    assert_eq!(ours, theirs);
    assert_eq!(
        serde_json::from_str::<Value>(&ours).unwrap(),
        json!([{ node.as_str(): {"ok": "new rate limit set successfully"} }])
    );
    // registered with attributes reflects the change; an error reply prints ERROR.
    let out = ctl_ok(&["registered", "rate_limit", "-d", &node]);
    assert!(out.contains("* tasks.add [rate_limit=10/m]"), "{out}");
    let out = ctl_ok(&["rate_limit", "tasks.nope", "1/s", "-d", &node]);
    assert_eq!(out, format!("->  {node}: ERROR\n        unknown task\n"));
    // status: the node lines only.
    let out = ctl_ok(&["status", "-d", &node]);
    assert_eq!(out, format!("->  {node}: OK\n\n1 node online.\n"));
    // clock, report, memsample, and the hidden hello / election through broadcast.
    let json_of = |args: &[&str]| -> Value {
        let mut a = args.to_vec();
        a.extend_from_slice(&["--json", "-d", &node]);
        serde_json::from_str(&ctl_ok(&a)).unwrap()
    };
    let c1 = json_of(&["clock"])[&node]["clock"].as_u64().unwrap();
    let c2 = json_of(&["clock"])[&node]["clock"].as_u64().unwrap();
    assert!(c2 > c1, "the Lamport clock moves: {c1} then {c2}");
    let report = json_of(&["report"]);
    assert!(
        report[&node]["ok"].as_str().unwrap().contains("celeryd"),
        "{report}"
    );
    assert!(
        !report.to_string().contains("guest:guest"),
        "password masked"
    );
    let mem = json_of(&["memsample"]);
    assert!(mem[&node].as_str().unwrap().ends_with("MB"), "{mem}");
    let hello = json_of(&[
        "broadcast",
        "hello",
        "--arguments",
        r#"{"from_node": "other@h"}"#,
    ]);
    assert!(
        hello[0][&node]["revoked"].is_array() && hello[0][&node]["clock"].is_u64(),
        "{hello}"
    );
    let own = json_of(&[
        "broadcast",
        "hello",
        "--arguments",
        &json!({"from_node": node}).to_string(),
    ]);
    assert_eq!(own[0][&node], Value::Null, "no hello to itself");
    let election = json_of(&[
        "broadcast",
        "election",
        "--arguments",
        r#"{"id": "1", "topic": "t"}"#,
    ]);
    assert_eq!(election[0][&node], Value::Null);
    let unknown = json_of(&["broadcast", "no_such_command"]);
    assert_eq!(unknown[0][&node]["error"], "KeyError('no_such_command')");
    // The application's own command, through ctl and through Python's broadcast().
    let out = ctl_ok(&["broadcast", "task_counts", "--json", "-d", &node]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0][&node]["ok"]["active"], 0, "{out}");
    let v = celery_client(&["broadcast", "task_counts", "--destination", &node]);
    assert_eq!(v[0][&node]["ok"]["reserved"], 0, "{v}");
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn ctl_errors_exit_with_celerys_statuses() {
    // Argument errors are found before connecting: the broker here does not exist.
    let nowhere = "amqp://guest:guest@127.0.0.1:1/%2f";
    for args in [
        &["rate_limit", "tasks.add"][..],
        &["pool_grow", "two"],
        &["time_limit", "t", "soon"],
        &["revoke"],
        &["nope"],
        &["ping", "--limit", "0"],
    ] {
        let (code, out, err) = worker_ctl_with_broker(nowhere, args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.starts_with("Error: "), "{args:?}: {err}");
        assert!(!err.contains("connect"), "{args:?}: {err}");
    }
    let (code, _, err) = worker_ctl_with_broker(nowhere, &["ping"]);
    assert_eq!(code, 69, "{err}");
    assert!(
        err.contains("Could not connect to the message broker"),
        "{err}"
    );
    let (code, out, err) = worker_ctl(&["ping", "-d", "nobody@nowhere", "-t", "0.3"]);
    assert_eq!((code, out.as_str()), (69, ""), "{err}");
    assert_eq!(err, "Error: No nodes replied within time constraint\n");
}

#[test]
fn two_workers_on_one_host_destination_limit_and_timeout() {
    let queue = unique_queue("two");
    let a = Worker::builder(&queue).concurrency(1).start();
    let b = Worker::builder(&queue).concurrency(1).start();
    let (na, nb) = (a.nodename(), b.nodename());
    let both = format!("{na},{nb}");
    // Limit = number of destinations: both reply, no waiting for the 20 s timeout.
    let start = Instant::now();
    let out = ctl_ok(&["ping", "--json", "-d", &both, "-t", "20"]);
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "waited for the timeout"
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        json!({ na.as_str(): {"ok": "pong"}, nb.as_str(): {"ok": "pong"} })
    );
    // One destination: only that node answers.
    let out = ctl_ok(&["ping", "--json", "-d", &nb]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_object().unwrap().len(), 1);
    assert!(v.get(&nb).is_some(), "{out}");
    // --limit 1 stops at the first reply.
    let out = ctl_ok(&["ping", "-d", &both, "--limit", "1", "-t", "20"]);
    assert!(out.ends_with("\n1 node online.\n"), "{out}");
    // A node that does not exist: the one reply is kept, then the timeout ends the wait.
    let out = ctl_ok(&["ping", "-d", &format!("{na},ghost@nowhere"), "-t", "0.5"]);
    assert_eq!(
        out,
        format!("->  {na}: OK\n        pong\n\n1 node online.\n")
    );
    // Patterns: glob, and pcre (anchored at the start, like Python's re.match).
    let host = celeryd_actors::hostname::this_host();
    let glob = format!("{}@*", a.name);
    let out = ctl_ok(&["ping", "--json", "--pattern", &glob]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_object().unwrap().keys().collect::<Vec<_>>(), vec![&na]);
    let pcre = format!("({}|{})@{host}", a.name, b.name);
    let out = ctl_ok(&["ping", "--json", "--pattern", &pcre, "--matcher", "pcre"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_object().unwrap().len(), 2, "{out}");
    let v = celery_client(&["broadcast", "ping", "--pattern", &pcre, "--matcher", "pcre"]);
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    // Shutdown to one node (no reply wanted): only that one stops.
    let mut a = a;
    let out = ctl_ok(&["shutdown", "-d", &na]);
    assert!(out.contains("shutdown sent to"), "{out}");
    assert!(a.wait_exit(Duration::from_secs(20)).success());
    let out = ctl_ok(&["ping", "-d", &nb]);
    assert!(out.contains("pong"), "{out}");
    drop(b);
    block_on(delete_queue(&queue));
}

#[test]
fn ctl_drives_a_python_celery_worker() {
    let queue = unique_queue("py");
    let py = PyWorker::start(&queue);
    let node = py.nodename.clone();
    let out = ctl_ok(&["ping", "-d", &node]);
    assert_eq!(
        out,
        format!("->  {node}: OK\n        pong\n\n1 node online.\n")
    );
    let out = ctl_ok(&["registered", "-d", &node]);
    assert!(out.contains("* py.add"), "{out}");
    let out = ctl_ok(&["rate_limit", "py.add", "5/s", "-d", &node]);
    assert!(out.contains("new rate limit set successfully"), "{out}");
    let out = ctl_ok(&["registered", "rate_limit", "-d", &node]);
    assert!(out.contains("py.add [rate_limit=5/s]"), "{out}");
    let out = ctl_ok(&["stats", "--json", "-d", &node]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(
        v[&node]["pool"]["implementation"]
            .as_str()
            .unwrap()
            .contains("solo"),
        "{out}"
    );
    let out = ctl_ok(&["active_queues", "--json", "-d", &node]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[&node][0]["name"], queue.as_str(), "{out}");
    let out = ctl_ok(&["revoke", "some-id", "-d", &node]);
    assert!(
        out.contains("tasks {'some-id'} flagged as revoked"),
        "{out}"
    );
    let out = ctl_ok(&["revoked", "--json", "-d", &node]);
    assert!(out.contains("some-id"), "{out}");
    drop(py);
    block_on(delete_queue(&queue));
}
