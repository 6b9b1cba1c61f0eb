//! Task retries (Celery's `Task.retry`) from a Rust task, seen by the Python client.

use serde_json::json;

use crate::block_on;
use crate::kit::{Worker, call_task, delete_queue, unique_queue};

#[test]
fn a_task_retries_with_the_same_id_until_it_succeeds_or_runs_out() {
    let queue = unique_queue("retry");
    let worker = Worker::builder(&queue).concurrency(1).start();
    let r = call_task(&queue, "tasks.flaky", "[2]", &[]);
    assert_eq!(r["state"], "SUCCESS", "{r}");
    assert_eq!(r["result"], json!(2), "two retries, then success: {r}");
    let id = r["id"].as_str().unwrap();
    let log = worker.log();
    assert_eq!(
        log.matches(&format!("Task tasks.flaky[{id}] retry: Retry in 0.2s"))
            .count(),
        2,
        "{log}"
    );
    assert!(log.contains("ValueError('attempt 1 failed')"), "{log}");
    // max_retries 3: the fourth failure is final, with the task's own exception.
    let r = call_task(&queue, "tasks.flaky", "[10]", &[]);
    assert_eq!(r["state"], "FAILURE", "{r}");
    assert_eq!(r["exc_type"], "ValueError", "{r}");
    assert_eq!(r["exc_message"], "attempt 4 failed", "{r}");
    drop(worker);
    block_on(delete_queue(&queue));
}
