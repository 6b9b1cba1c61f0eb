//! amqps:// with a certificate authority file, against the local RabbitMQ given a TLS
//! listener and a self-signed CA by scripts/ensure-broker-tls.sh (which may restart the
//! broker: hence this suite).

use std::process::Command;

use serde_json::json;

use crate::kit::{Worker, call_task, delete_queue, repo, unique_queue, worker_command};
use crate::{block_on, serial};

fn ca_file() -> String {
    let out = Command::new(repo().join("scripts/ensure-broker-tls.sh"))
        .output()
        .expect("run scripts/ensure-broker-tls.sh");
    assert!(
        out.status.success(),
        "ensure-broker-tls.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn amqps_with_a_ca_file_works_and_without_it_is_refused() {
    let _serial = serial();
    let ca = ca_file();
    let queue = unique_queue("tls");
    let tls = format!(
        "[broker]\nurl = \"amqps://guest:guest@localhost:5671/%2f\"\nssl_ca_file = \"{ca}\"\n"
    );
    // The config's own [broker] section replaces the helper's plain URL.
    let worker = Worker::builder(&queue)
        .config_file(&tls)
        .concurrency(1)
        .start();
    let r = call_task(&queue, "tasks.add", "[20, 22]", &[]);
    assert_eq!(r["result"], json!(42), "a task consumed over TLS: {r}");
    drop(worker);
    // Without the CA the self-signed certificate is refused, and said so.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("w.toml");
    std::fs::write(
        &config,
        "[broker]\nurl = \"amqps://guest:guest@localhost:5671/%2f\"\nconnection_max_retries = 1\n",
    )
    .unwrap();
    let out = worker_command()
        .arg("--config")
        .arg(&config)
        .args(["-c", "1", "-Q", &queue])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(!err.contains("guest:guest"), "{err}");
    block_on(delete_queue(&queue));
}
