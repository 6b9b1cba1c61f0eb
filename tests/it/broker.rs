//! Losing the broker: reconnect and resume; an unreachable broker at start is retried, then
//! reported with exit code 69.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::block_on;
use crate::kit::{Worker, call_task, delete_queue, unique_queue, worker_command};

/// Closes the worker's task connection (not its remote-control or event ones) from the broker
/// side, as a broker restart would.
fn force_close_connection(node_name: &str) {
    let out = Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "pid",
            "client_properties",
            "--quiet",
            "--no-table-headers",
        ])
        .output()
        .expect("rabbitmqctl");
    let text = String::from_utf8_lossy(&out.stdout);
    let needle = format!("\"connection_name\",\"{node_name}@");
    let line = text
        .lines()
        .find(|l| l.contains(&needle) && !l.contains("(pidbox)") && !l.contains("(events)"))
        .unwrap_or_else(|| panic!("no connection named {node_name}@… in:\n{text}"));
    let pid = line.split('\t').next().unwrap();
    let status = Command::new("rabbitmqctl")
        .args(["close_connection", pid, "test: forced close"])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn reconnects_after_losing_the_connection_and_resumes() {
    let queue = unique_queue("reconnect");
    let worker = Worker::builder(&queue).concurrency(1).start();
    let r = call_task(&queue, "tasks.add", "[1, 2]", &[]);
    assert_eq!(r["result"], json!(3), "{r}");
    force_close_connection(&worker.name);
    worker.wait_for_log("Connected to the broker again", Duration::from_secs(20));
    let r = call_task(&queue, "tasks.add", "[3, 4]", &[]);
    assert_eq!(r["result"], json!(7), "consuming resumed: {r}");
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn unreachable_broker_is_retried_then_reported() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("w.toml");
    let text = "[broker]\nurl = \"amqp://guest:guest@127.0.0.1:1//\"\nconnection_max_retries = 2\n";
    std::fs::write(&config, text).unwrap();
    let out = worker_command()
        .arg("--config")
        .arg(&config)
        .args(["-c", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "EX_UNAVAILABLE: {err}");
    assert!(
        err.contains("Cannot connect to the broker; trying again in 1.0 seconds"),
        "{err}"
    );
    assert!(
        err.contains("127.0.0.1:1") && !err.contains("guest:guest"),
        "names the broker, masks the password: {err}"
    );
}

#[test]
fn a_failover_list_skips_the_urls_that_fail_and_never_shows_a_password() {
    let queue = unique_queue("failover");
    let good = crate::kit::amqp_url();
    // A wrong password on the right node, then a port nothing listens on, then the broker.
    let toml = format!(
        "[broker]\nurl = [\"amqp://guest:wrong-secret@127.0.0.1:5672//\", \
         \"amqp://guest:other-secret@127.0.0.1:1//\", \"{good}\"]\n"
    );
    let worker = Worker::builder(&queue)
        .config_file(&toml)
        .concurrency(1)
        .start();
    let r = call_task(&queue, "tasks.add", "[20, 22]", &[]);
    assert_eq!(r["result"], json!(42), "{r}");
    let log = worker.log();
    assert!(
        log.contains("Cannot connect to this broker; trying the next one.")
            && log.contains("Connected to broker 3 of 3."),
        "{log}"
    );
    assert!(
        !log.contains("wrong-secret") && !log.contains("other-secret"),
        "no password in the log: {log}"
    );
    let stats = crate::kit::celery_inspect(&worker.nodename(), &["stats"]);
    let alternates = stats["broker"]["alternates"].to_string();
    assert!(
        stats["broker"]["failover_strategy"] == "round-robin" && !alternates.contains("secret"),
        "{stats}"
    );
    drop(worker);
    block_on(delete_queue(&queue));
}
