//! `worker call` and configuration errors, through the real binary.

use crate::block_on;
use crate::kit::{Worker, amqp_url, delete_queue, unique_queue, worker_command};

fn worker_call(queue: &str, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, format!("[broker]\nurl = \"{}\"\n", amqp_url())).unwrap();
    worker_command()
        .arg("--config")
        .arg(&config)
        .arg("call")
        .args(args)
        .args(["-Q", queue, "--wait", "--timeout", "30"])
        .output()
        .unwrap()
}

#[test]
fn worker_call_prints_results_and_fails_on_errors() {
    let queue = unique_queue("call");
    let worker = Worker::builder(&queue).concurrency(1).start();
    let out = worker_call(&queue, &["tasks.add", "2", "3"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5");
    let out = worker_call(&queue, &["tasks.add", "--kwargs", r#"{"x": 1, "y": 2}"#]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3", "{out:?}");
    let out = worker_call(&queue, &["tasks.fail", "boom"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ValueError") && err.contains("boom"), "{err}");
    // Held until its ETA, expired by then: REVOKED.
    let out = worker_call(
        &queue,
        &[
            "tasks.add",
            "1",
            "2",
            "--countdown",
            "1",
            "--expires",
            "0.3",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("REVOKED"),
        "{out:?}"
    );
    let out = worker_call(&queue, &["tasks.add", "1", "2", "--countdown", "0.5"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3", "{out:?}");
    let out = worker_call(&queue, &["tasks.add", "--kwargs", "[1]"]);
    assert_eq!(
        out.status.code(),
        Some(78),
        "argument errors are caught before sending"
    );
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn bad_config_exits_non_zero_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("[worker]\nconcurency = 2\n", "concurency"),
        ("[worker]\nconcurrency = \"lots\"\n", "concurrency"),
        ("[worker]\nloglevel = \"chatty\"\n", "worker.loglevel"),
        ("[broker]\nurl = \"sqs://x\"\n", "broker.url"),
        ("[worker]\nhostname = \"w@%z\"\n", "worker.hostname"),
    ] {
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, text).unwrap();
        let out = worker_command().arg("--config").arg(&p).output().unwrap();
        assert_eq!(out.status.code(), Some(78), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[test]
fn unusable_statedb_stops_the_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let out = worker_command()
        .arg("--statedb")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(74), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open the statedb at") && err.contains("not-a-dir"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"x", "nothing was reset");
}
