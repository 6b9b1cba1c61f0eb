//! The example worker (`examples/shop_worker.rs`): its own tasks and control command, answered
//! to the real Python client and to `ctl`.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::block_on;
use crate::kit::{Worker, call_task, delete_queue, unique_queue};

/// target/debug/examples/shop_worker, beside this test binary's deps directory.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = debug.join("examples/shop_worker");
    assert!(
        path.exists(),
        "{} missing: build it with `cargo build --examples` (scripts/test.sh does)",
        path.display()
    );
    path
}

#[test]
fn the_example_worker_answers_python_and_ctl() {
    let queue = unique_queue("shop");
    let worker = Worker::builder(&queue)
        .exe(example_binary())
        .concurrency(1)
        .start();
    let r = call_task(&queue, "shop.total", "[[1.5, 2.25]]", &[]);
    assert_eq!(r["result"], json!(3.75), "{r}");
    let r = call_task(&queue, "shop.discount", "[100, 150]", &[]);
    assert_eq!(r["exc_type"], "ValueError", "{r}");
    let node = worker.nodename();
    let (code, out, err) = example_ctl(&["broadcast", "shop_stats", "--json", "-d", &node]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0][&node]["ok"]["started_total"], 2, "{v}");
    let (_, out, _) = example_ctl(&["registered", "rate_limit", "time_limit", "-d", &node]);
    assert!(
        out.contains("* shop.report [rate_limit=10/m time_limit=30.0]"),
        "{out}"
    );
    drop(worker);
    block_on(delete_queue(&queue));
}

fn example_ctl(args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ctl.toml");
    let url = crate::kit::amqp_url();
    std::fs::write(&config, format!("[broker]\nurl = \"{url}\"\n")).unwrap();
    let out = std::process::Command::new(example_binary())
        .arg("--config")
        .arg(&config)
        .arg("ctl")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
