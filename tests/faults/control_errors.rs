//! Control commands the worker cannot carry out as asked (numbers and sizes out of range, a
//! revoke it cannot write to a full disk) get an error reply, and what was in force stays in
//! force. (One case per defect of an adversarial pass, issue 13.)

use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;

use celeryd_actors::broker::amqp::publish_task;
use celeryd_actors::protocol::encode::{TaskCall, TaskMessage};

use crate::kit::{
    Worker, assert_healthy, block_on, call_task, connect, control_call, delete_queue, error_text,
    unique_queue, with_worker, worker_ctl,
};
use crate::serial;

/// A small tmpfs, unmounted when dropped.
struct TinyDisk(tempfile::TempDir);

impl TinyDisk {
    fn mount(size: &str) -> TinyDisk {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs (the fault suite runs as root)");
        TinyDisk(dir)
    }

    fn path(&self) -> &std::path::Path {
        self.0.path()
    }

    /// Fills what is left of the disk.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path().join("filler")).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.path().join("filler")).unwrap();
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn a_revoke_on_a_full_disk_is_an_error_reply_and_still_in_force() {
    let _serial = serial();
    let queue = unique_queue("fulldisk");
    let disk = TinyDisk::mount("16m");
    let statedb = disk.path().join("state");
    let statedb = statedb.to_str().unwrap().to_owned();
    let worker = Worker::builder(&queue)
        .concurrency(1)
        .args(&["--statedb", &statedb])
        .start();
    let node = worker.nodename();
    disk.fill();
    let reply = control_call(&node, "revoke", json!({"task_id": "full-1"}));
    assert!(error_text(&reply).contains("in memory only"), "{reply}");
    // Still up, and the revoke is in force: the task is discarded.
    assert_healthy(&worker, &queue);
    let call = TaskCall {
        name: "tasks.add".into(),
        args: vec![json!(1), json!(1)],
        id: Some("full-1".into()),
        origin: "faults@localhost".into(),
        ..Default::default()
    };
    block_on(async {
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        let msg = TaskMessage::new(&call, OffsetDateTime::now_utc());
        publish_task(&ch, &queue, &msg).await.unwrap();
        let _ = conn.close(200, "bye".into()).await;
    });
    worker.wait_for_log(
        "Discarding revoked task: tasks.add[full-1]",
        Duration::from_secs(30),
    );
    // Space again: the next revoke is written, the earlier one with it.
    disk.free();
    let reply = control_call(&node, "revoke", json!({"task_id": "full-2"}));
    assert!(reply["ok"].is_string(), "{reply}");
    drop(worker);
    let worker = Worker::builder(&queue)
        .concurrency(1)
        .args(&["--statedb", &statedb])
        .start();
    let (_, out, _) = worker_ctl(&["revoked", "--json", "-d", &worker.nodename()]);
    let ids: Value = serde_json::from_str(&out).unwrap();
    let ids = ids[worker.nodename()].as_array().unwrap().clone();
    assert!(
        ids.contains(&json!("full-1")) && ids.contains(&json!("full-2")),
        "{ids:?}"
    );
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn bad_numbers_and_sizes_in_control_commands_are_error_replies() {
    let _serial = serial();
    with_worker(
        "badargs",
        |w| w.concurrency(1),
        |worker, queue| {
            let node = worker.nodename();
            let reply = control_call(
                &node,
                "time_limit",
                json!({"task_name": "tasks.sleep", "soft": 1, "hard": 10}),
            );
            assert_eq!(
                reply["ok"],
                json!("time limits set successfully"),
                "{reply}"
            );
            for (soft, hard) in [
                (json!("abc"), json!(10)),
                (json!(1), json!(-1)),
                (json!(1), json!("1e400")),
                (json!([1]), json!(10)),
            ] {
                let reply = control_call(
                    &node,
                    "time_limit",
                    json!({"task_name": "tasks.sleep", "soft": soft, "hard": hard}),
                );
                assert!(error_text(&reply).contains("number of seconds"), "{reply}");
            }
            // The limit set first is still in force.
            let r = call_task(queue, "tasks.sleep", "[3]", &[]);
            assert_eq!(r["state"], json!("FAILURE"), "{r}");
            assert_eq!(r["exc_type"], json!("SoftTimeLimitExceeded"), "{r}");
            // One request cannot make a thousand children, nor revoke a million ids.
            let reply = control_call(&node, "pool_grow", json!({"n": 1000}));
            assert!(error_text(&reply).contains("max_pool_size"), "{reply}");
            let ids: Vec<String> = (0..60_000).map(|i| format!("id-{i}")).collect();
            let reply = control_call(&node, "revoke", json!({"task_id": ids}));
            assert!(error_text(&reply).contains("revokes_max"), "{reply}");
            assert_eq!(worker.children().len(), 1);
            assert_healthy(worker, queue);
        },
    );
}
