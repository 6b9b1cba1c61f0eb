//! The broker-side ETA ladder (`celeryd.delayed.*` exchanges) losing an exchange under a
//! running worker: the refused delay publish makes the worker hold that ETA task itself, on
//! the same connection. (One case per defect of an adversarial pass, issue 13.)

use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;

use celeryd_actors::broker::amqp::publish_task;
use celeryd_actors::protocol::encode::{TaskCall, TaskMessage};

use crate::kit::{Worker, amqp_url, block_on, unique_queue};
use crate::serial;

/// A vhost of this test's own (created, and deleted when dropped), for a test that deletes
/// broker objects other workers share.
struct OwnVhost(String);

impl OwnVhost {
    fn new(name: &str) -> OwnVhost {
        let ctl = |args: &[&str]| {
            std::process::Command::new("rabbitmqctl")
                .args(args)
                .output()
                .expect("run rabbitmqctl")
        };
        let _ = ctl(&["delete_vhost", name]);
        assert!(
            ctl(&["add_vhost", name]).status.success(),
            "add_vhost {name}"
        );
        let perms = ctl(&["set_permissions", "-p", name, "guest", ".*", ".*", ".*"]);
        assert!(perms.status.success(), "set_permissions on {name}");
        OwnVhost(name.to_owned())
    }

    fn url(&self) -> String {
        let base = amqp_url();
        let root = base.rsplit_once('/').map_or(base.as_str(), |(r, _)| r);
        format!("{root}/{}", self.0)
    }
}

impl Drop for OwnVhost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.0])
            .output();
    }
}

#[test]
fn a_refused_delay_publish_holds_the_task_and_keeps_the_connection() {
    let _serial = serial();
    let vhost = OwnVhost::new("celeryd-faults-side");
    let url = vhost.url();
    let queue = unique_queue("sidech");
    let toml = format!("[broker]\nurl = \"{url}\"\n[worker]\neta_hold_max = 1.0\n");
    let worker = Worker::builder(&queue)
        .config_file(&toml)
        .concurrency(1)
        .start();
    let publish_eta = |id: &str| {
        let call = TaskCall {
            name: "tasks.add".into(),
            args: vec![json!(2), json!(2)],
            id: Some(id.into()),
            eta: Some(OffsetDateTime::now_utc() + time::Duration::seconds(3)),
            origin: "faults@localhost".into(),
            ..Default::default()
        };
        block_on(async {
            let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
                .await
                .unwrap();
            let ch = conn.create_channel().await.unwrap();
            let msg = TaskMessage::new(&call, OffsetDateTime::now_utc());
            publish_task(&ch, &queue, &msg).await.unwrap();
            let _ = conn.close(200, "bye".into()).await;
        });
    };
    publish_eta("side-1");
    worker.wait_for_log(
        "Task tasks.add[side-1] waits in the broker",
        Duration::from_secs(20),
    );
    // An operator (or a policy) removes the ladder's entry exchange under the running worker.
    block_on(async {
        let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.exchange_delete("celeryd.delayed.27".into(), Default::default())
            .await
            .unwrap();
        let _ = conn.close(200, "bye".into()).await;
    });
    publish_eta("side-2");
    worker.wait_for_log("holding it instead", Duration::from_secs(20));
    for id in ["side-1", "side-2"] {
        worker.wait_for_log(
            &format!("Task tasks.add[{id}] succeeded"),
            Duration::from_secs(30),
        );
    }
    let log = worker.log();
    assert!(
        !log.contains("Connection to the broker lost"),
        "the refusal closed only the side channel"
    );
    assert_eq!(log.matches("Task tasks.add[side-2] succeeded").count(), 1);
    drop(worker);
}
