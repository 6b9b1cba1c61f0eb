//! `celery inspect …` (the real CLI, `--json`) against celeryd: the reply shapes Flower and
//! the CLI read.

use std::time::Duration;

use serde_json::Value;

use crate::block_on;
use crate::kit::{Worker, call_task, celery_cli, delete_queue, spawn_task, unique_queue};

fn inspect(worker: &Worker, args: &[&str]) -> Value {
    crate::kit::celery_inspect(&worker.nodename(), args)
}

#[test]
fn inspect_commands_answer_in_celery_shapes() {
    let queue = unique_queue("inspect");
    let worker = Worker::builder(&queue).concurrency(1).start();
    assert!(inspect(&worker, &["ping"])["ok"] == "pong");
    let registered = inspect(&worker, &["registered"]);
    assert!(
        registered
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "tasks.add"),
        "{registered}"
    );
    let running = spawn_task(&queue, "tasks.sleep", "[10]", &[]);
    worker.wait_for_log("Task tasks.sleep[", Duration::from_secs(20));
    call_task(&queue, "tasks.add", "[1, 2]", &["--no-wait"]);
    call_task(
        &queue,
        "tasks.add",
        "[3, 4]",
        &["--countdown", "60", "--no-wait"],
    );
    crate::kit::eventually(Duration::from_secs(10), "three deliveries", || {
        worker.log().matches("] received").count() == 3
    });
    let active = inspect(&worker, &["active"]);
    let a = &active[0];
    assert_eq!(a["name"], "tasks.sleep", "{active}");
    assert!(
        a["worker_pid"].as_u64().unwrap() > 0
            && a["time_start"].is_f64()
            && a["acknowledged"] == true
    );
    let reserved = inspect(&worker, &["reserved"]);
    assert_eq!(reserved[0]["args"], serde_json::json!([1, 2]), "{reserved}");
    let scheduled = inspect(&worker, &["scheduled"]);
    assert_eq!(scheduled[0]["priority"], 6, "{scheduled}");
    assert_eq!(scheduled[0]["request"]["args"], serde_json::json!([3, 4]));
    let id = a["id"].as_str().unwrap().to_owned();
    let q = inspect(&worker, &["query_task", &id]);
    assert_eq!(q[&id][0], "active", "{q}");
    let queues = inspect(&worker, &["active_queues"]);
    assert_eq!(queues[0]["name"], queue.as_str(), "{queues}");
    let stats = inspect(&worker, &["stats"]);
    assert!(
        stats["clock"].is_string() && stats["pool"]["processes"].as_array().unwrap().len() == 1,
        "{stats}"
    );
    assert!(
        stats["broker"].is_object() && stats["rusage"]["maxrss"].as_u64().unwrap() > 0,
        "{stats}"
    );
    let conf = inspect(&worker, &["conf"]);
    assert!(
        conf["broker_url"].as_str().unwrap().contains("********"),
        "{conf}"
    );
    assert!(!conf.to_string().contains("guest:guest"), "password masked");
    let r = crate::kit::parse_client_output(&running.wait_with_output().unwrap());
    assert_eq!(r["state"], "SUCCESS");
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn pool_grows_and_shrinks_on_command() {
    let queue = unique_queue("grow");
    let worker = Worker::builder(&queue).concurrency(1).start();
    let node = worker.nodename();
    let out = celery_cli(&["control", "pool_grow", "2", "-d", &node]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pool will grow"),
        "{out:?}"
    );
    crate::kit::eventually(Duration::from_secs(10), "3 children", || {
        worker.children().len() == 3
    });
    let stats = inspect(&worker, &["stats"]);
    crate::kit::eventually(Duration::from_secs(5), "3 ready children", || {
        inspect(&worker, &["stats"])["pool"]["processes"]
            .as_array()
            .unwrap()
            .len()
            == 3
    });
    assert!(stats["pool"].is_object());
    let out = celery_cli(&["control", "pool_shrink", "2", "-d", &node]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pool will shrink"),
        "{out:?}"
    );
    crate::kit::eventually(Duration::from_secs(10), "1 child", || {
        worker.children().len() == 1
    });
    let r = call_task(&queue, "tasks.add", "[2, 2]", &[]);
    assert_eq!(r["result"], serde_json::json!(4), "{r}");
    drop(worker);
    block_on(delete_queue(&queue));
}
