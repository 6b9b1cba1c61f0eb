//! A Python Celery 5.7 client against celeryd.

use serde_json::json;

use crate::block_on;
use crate::kit::{Worker, call_task, delete_queue, unique_queue};

#[test]
fn python_client_gets_results_failures_and_not_registered() {
    let queue = unique_queue("interop");
    let worker = Worker::builder(&queue).concurrency(2).start();

    let r = call_task(&queue, "tasks.add", "[2, 3]", &[]);
    assert_eq!(r["state"], "SUCCESS", "{r}");
    assert_eq!(r["result"], json!(5));

    let r = call_task(&queue, "tasks.add", "[2]", &["--kwargs", r#"{"y": 40}"#]);
    assert_eq!(r["result"], json!(42), "{r}");

    let r = call_task(
        &queue,
        "tasks.echo",
        r#"[1, "é"]"#,
        &["--kwargs", r#"{"k": [null]}"#],
    );
    assert_eq!(r["result"], json!([[1, "é"], {"k": [null]}]), "{r}");

    let r = call_task(&queue, "tasks.fail", r#"["boom"]"#, &[]);
    assert_eq!(r["state"], "FAILURE", "{r}");
    assert_eq!(r["exc_type"], "ValueError", "{r}");
    assert_eq!(r["exc_module"], "builtins", "the real builtin class: {r}");
    assert_eq!(r["exc_message"], "boom", "{r}");

    let r = call_task(&queue, "tasks.nope", "[]", &[]);
    assert_eq!(r["state"], "FAILURE", "{r}");
    assert_eq!(r["exc_type"], "NotRegistered", "{r}");
    assert!(
        worker
            .log()
            .contains("Received unregistered task of type 'tasks.nope'")
    );

    let r = call_task(&queue, "tasks.crash", "[]", &[]);
    assert_eq!(r["state"], "FAILURE", "{r}");
    assert_eq!(r["exc_type"], "WorkerLostError", "{r}");
    // The pool is back to full size and still runs tasks.
    let r = call_task(&queue, "tasks.add", "[1, 1]", &[]);
    assert_eq!(r["result"], json!(2), "{r}");

    assert!(
        worker.log().contains("] succeeded in "),
        "celery-style log line"
    );
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn many_tasks_from_python_all_complete() {
    let queue = unique_queue("many");
    let worker = Worker::builder(&queue).concurrency(2).start();
    let r = call_task(&queue, "tasks.add", "[20, 22]", &["--count", "200"]);
    let results = r.as_array().expect("a list for --count");
    assert_eq!(results.len(), 200);
    assert!(
        results
            .iter()
            .all(|x| x["state"] == "SUCCESS" && x["result"] == 42),
        "{r}"
    );
    drop(worker);
    block_on(delete_queue(&queue));
}
