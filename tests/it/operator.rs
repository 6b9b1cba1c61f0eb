//! Switching from `celery worker` as an operator would: Celery's environment names and
//! flags, refused flags that say why, the start-up (banner, "ready." only once consuming, a
//! refused login), SIGHUP with a broken config, two instances with `%n` paths, `-O fair`,
//! `--purge`, `-D`, `--uid/--gid`, and mingle.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::block_on;
use crate::kit::{
    Worker, amqp_url, call_task, connect, delete_queue, eventually, free_port, node_name,
    queue_depth, spawn_task, unique_queue, worker_command, worker_ctl,
};

/// Declares `queue` as Celery (and celeryd) declare a plain queue: durable, no arguments.
fn declare_plain_queue(queue: &str) {
    block_on(async {
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(queue.into(), durable, FieldTable::default())
            .await
            .unwrap();
        let _ = conn.close(200, "bye".into()).await;
    });
}

fn host() -> String {
    celeryd_actors::hostname::this_host()
}

#[test]
fn celery_environment_names_are_honoured_and_misspelt_celeryd_ones_refused() {
    let out = worker_command()
        .arg("--print-config")
        .env(
            "CELERY_BROKER_URL",
            "amqp://ops:t0psecret@rabbit.example:5672//",
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("amqp://ops:********@rabbit.example:5672//"),
        "{text}"
    );
    assert!(!text.contains("t0psecret"), "{text}");
    // celeryd's own name wins over Celery's.
    let out = worker_command()
        .arg("--print-config")
        .env("CELERY_BROKER_URL", "amqp://a@celery.example//")
        .env("CELERYD_BROKER_URL", "amqp://a@celeryd.example//")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("celeryd.example"));
    let out = worker_command()
        .arg("--print-config")
        .env("CELERYD_BROKR_URL", "amqp://guest:guest@elsewhere//")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("CELERYD_BROKR_URL"), "{err}");
    assert!(err.contains("CELERYD_BROKER_URL"), "a suggestion: {err}");
    // The variables of Celery's own systemd/init examples are not settings and pass.
    let out = worker_command()
        .arg("--print-config")
        .env("CELERYD_NODES", "w1 w2")
        .env("CELERYD_OPTS", "--time-limit=300")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn flags_celeryd_cannot_honour_are_refused_with_the_reason_and_exit_64() {
    for (flags, says) in [
        (&["-P", "gevent"][..], "-P/--pool gevent"),
        (
            &[
                "-B",
                "--scheduler",
                "django_celery_beat.schedulers:DatabaseScheduler",
            ][..],
            "celery beat --scheduler",
        ),
        (&["-I", "proj.tasks"][..], "-I/--include"),
        (&["--loader", "x.Loader"][..], "--loader"),
    ] {
        let out = worker_command()
            .args(["-b", "amqp://guest:guest@127.0.0.1:1//"])
            .args(flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{flags:?}: {err}");
        assert!(err.contains(says), "{flags:?}: {err}");
        assert!(!err.contains("error: unexpected argument"), "{err}");
    }
    // Celery's --disable-prefetch is for Redis brokers: on RabbitMQ a configuration error
    // that says what to use instead.
    let out = worker_command()
        .args([
            "-b",
            "amqp://guest:guest@127.0.0.1:1//",
            "--disable-prefetch",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("worker.disable_prefetch") && err.contains("--prefetch-multiplier 1"),
        "{err}"
    );
}

#[test]
fn celery_worker_flags_are_accepted_and_the_worker_serves() {
    let queue = unique_queue("flags");
    let dir = tempfile::tempdir().unwrap();
    let statedb = dir.path().join("%n.state");
    // The config's broker is unreachable: `-b` must win, or the worker never consumes.
    let toml = "[broker]\nurl = \"amqp://guest:guest@127.0.0.1:1/%2f\"\n";
    let url = amqp_url();
    let worker = Worker::builder(&queue)
        .config_file(toml)
        .concurrency(2)
        .pool("prefork")
        .args(&[
            "-b",
            &url,
            "-O",
            "fair",
            "-E",
            "--task-events",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-S",
            statedb.to_str().unwrap(),
            "--umask",
            "027",
            "--pool-start-method",
            "spawn",
            "--prefetch-multiplier",
            "2",
        ])
        .start();
    let r = call_task(&queue, "tasks.add", "[1, 2]", &[]);
    assert_eq!(r["result"], 3, "{r}");
    let state = dir.path().join(format!("{}.state", worker.name));
    assert!(state.is_dir(), "the statedb at -S with %n expanded");
    let log = worker.log();
    assert!(!log.contains("mingle: searching"), "{log}");
    assert!(log.contains(".> task events: ON"), "{log}");
    // `worker ctl inspect …` is a spelling of `worker ctl …`.
    let node = worker.nodename();
    let (code, out, err) = worker_ctl(&["inspect", "ping", "-d", &node]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pong"), "{out}");
    let (code, out, _) = worker_ctl(&["control", "enable_events", "-d", &node]);
    assert_eq!(code, 0, "{out}");
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn without_heartbeat_sends_no_worker_heartbeats() {
    let qa = unique_queue("hb-on");
    let qb = unique_queue("hb-off");
    let beating = Worker::builder(&qa)
        .concurrency(1)
        .args(&["--heartbeat-interval", "0.5"])
        .start();
    let silent = Worker::builder(&qb)
        .concurrency(1)
        .args(&["--heartbeat-interval", "0.5", "--without-heartbeat"])
        .start();
    let (on, off) = block_on(async {
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let topic = lapin::ExchangeKind::Topic;
        ch.exchange_declare("celeryev".into(), topic, durable, FieldTable::default())
            .await
            .unwrap();
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let q = ch
            .queue_declare("".into(), exclusive, FieldTable::default())
            .await
            .unwrap();
        let name = q.name().as_str().to_owned();
        let bind = QueueBindOptions::default();
        ch.queue_bind(
            name.as_str().into(),
            "celeryev".into(),
            "worker.heartbeat".into(),
            bind,
            FieldTable::default(),
        )
        .await
        .unwrap();
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let mut stream = ch
            .basic_consume(
                name.as_str().into(),
                "".into(),
                no_ack,
                FieldTable::default(),
            )
            .await
            .unwrap();
        let (mut on, mut off) = (0, 0);
        let until = Instant::now() + Duration::from_secs(4);
        while let Ok(Some(Ok(d))) = tokio::time::timeout_at(until.into(), stream.next()).await {
            let v: Value = serde_json::from_slice(&d.data).unwrap_or_default();
            let from = v["hostname"].as_str().unwrap_or_default();
            if from == beating.nodename() {
                on += 1;
            } else if from == silent.nodename() {
                off += 1;
            }
        }
        let _ = conn.close(200, "bye".into()).await;
        (on, off)
    });
    assert!(on >= 3, "heartbeats from the worker that sends them: {on}");
    assert_eq!(off, 0, "no heartbeats with --without-heartbeat");
    drop((beating, silent));
    block_on(delete_queue(&qa));
    block_on(delete_queue(&qb));
}

#[test]
fn a_refused_login_exits_77_at_once_without_the_password() {
    let start = Instant::now();
    let out = worker_command()
        .args(["-b", "amqp://guest:n0tthepassword@127.0.0.1:5672/%2f"])
        .args(["-Q", &unique_queue("auth"), "-n", &node_name("op")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{err}");
    assert!(err.contains("ACCESS_REFUSED"), "{err}");
    assert!(!err.contains("n0tthepassword"), "{err}");
    assert!(!err.contains(" ready."), "{err}");
    eprintln!("a refused login stopped the worker in {took:?}");
    assert!(took < Duration::from_secs(30), "{took:?}: fails fast");
}

#[test]
fn ready_is_logged_only_once_consuming_and_the_banner_comes_first() {
    // Nothing listens on the port: the worker retries and is never "ready".
    let port = free_port();
    let n = node_name("op");
    let mut child = Children(vec![
        worker_command()
            .args(["-b", &format!("amqp://guest:guest@127.0.0.1:{port}/%2f")])
            .args(["-Q", "nowhere", "-n", &n])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ]);
    let log = crate::kit::capture_log(child.0[0].stderr.take().unwrap(), "worker");
    eventually(Duration::from_secs(20), "a connection retry", || {
        log.lock().unwrap().contains("Cannot connect to")
    });
    std::thread::sleep(Duration::from_secs(2));
    let text = log.lock().unwrap().clone();
    assert!(!text.contains(" ready."), "{text}");
    drop(child);
    // With a broker: the banner, then "ready.".
    let queue = unique_queue("banner");
    let worker = Worker::builder(&queue).concurrency(2).start();
    let node = worker.nodename();
    worker.wait_for_log(&format!("{node} ready."), Duration::from_secs(10));
    let log = worker.log();
    let banner = log.find(&format!(" -------------- {node} v")).expect(&log);
    assert!(banner < log.find(" ready.").unwrap(), "{log}");
    for part in [
        ".> transport:   amqp://guest:********@127.0.0.1:5672",
        ".> results:     rpc://",
        ".> concurrency: 2 (prefork)",
        ".> task events: OFF",
        &format!(".> {queue}"),
        "  . tasks.add",
    ] {
        assert!(log.contains(part), "{part} in {log}");
    }
    assert!(!log.contains("guest:guest@"), "{log}");
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn sighup_with_a_broken_config_keeps_the_worker_running_on_the_old_one() {
    let queue = unique_queue("hup");
    let worker = Worker::builder(&queue).concurrency(1).start();
    let config = worker.config_path();
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{good}\n[worker]\nconcurency = 2\n")).unwrap();
    worker.signal(Signal::SIGHUP);
    worker.wait_for_log("Not restarting (SIGHUP)", Duration::from_secs(10));
    assert!(worker.log().contains("concurency"), "{}", worker.log());
    let r = call_task(&queue, "tasks.add", "[2, 2]", &[]);
    assert_eq!(r["result"], 4, "still serving: {r}");
    // Fixed: the next SIGHUP restarts it.
    std::fs::write(&config, &good).unwrap();
    worker.signal(Signal::SIGHUP);
    eventually(
        Duration::from_secs(30),
        "the restarted worker consuming",
        || worker.log().matches("Consuming from queue").count() >= 2,
    );
    let r = call_task(&queue, "tasks.add", "[3, 3]", &[]);
    assert_eq!(r["result"], 6, "{r}");
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn two_instances_with_percent_n_paths_run_side_by_side() {
    let queue = unique_queue("twins");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let config = dir.path().join("w.toml");
    let url = amqp_url();
    let text = format!(
        "[broker]\nurl = \"{url}\"\n[worker]\nstatedb = \"{d}/%n.state\"\n\
         logfile = \"{d}/%n%I.log\"\npidfile = \"{d}/%h-%n.pid\"\n"
    );
    std::fs::write(&config, text).unwrap();
    let nodes = [node_name("op"), node_name("op")];
    // What `%n` expands to: the node name's part before `@`.
    let names = nodes
        .clone()
        .map(|n| n.split('@').next().unwrap().to_owned());
    let mut children = Children(Vec::new());
    for n in &nodes {
        children.0.push(
            worker_command()
                .arg("--config")
                .arg(&config)
                .args(["-Q", &queue, "-n", n, "-c", "1"])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    for (n, child) in names.iter().zip(&children.0) {
        let log = dir.path().join(format!("{n}.log"));
        eventually(Duration::from_secs(30), "both instances consuming", || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Consuming from queue"))
        });
        assert!(dir.path().join(format!("{n}.state")).is_dir());
        let pid = dir.path().join(format!("{}-{n}.pid", host()));
        assert_eq!(
            std::fs::read_to_string(&pid).unwrap().trim(),
            child.id().to_string()
        );
    }
    let r = call_task(&queue, "tasks.add", "[1, 1]", &["--count", "4"]);
    let results = r.as_array().expect("four results");
    assert!(results.iter().all(|one| one["result"] == 2), "{r}");
    for c in &mut children.0 {
        assert!(c.try_wait().unwrap().is_none(), "both still up");
    }
    drop(children);
    block_on(delete_queue(&queue));
}

/// Worker processes killed when the test ends, passed or not (their stdout is the test's).
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn fair_dispatch_no_task_waits_behind_a_busy_child() {
    let queue = unique_queue("fair");
    let worker = Worker::builder(&queue)
        .concurrency(2)
        .args(&["-O", "fair"])
        .start();
    let mut long = spawn_task(&queue, "tasks.sleep", "[8]", &[]);
    worker.wait_for_log("tasks.sleep[", Duration::from_secs(20));
    let start = Instant::now();
    for i in 0..6 {
        let r = call_task(&queue, "tasks.add", &format!("[{i}, 1]"), &[]);
        assert_eq!(r["result"], i + 1, "{r}");
    }
    let took = start.elapsed();
    assert!(
        long.try_wait().unwrap().is_none(),
        "six short tasks finished while the long one still ran"
    );
    eprintln!("-O fair: six short tasks beside a busy child in {took:?}");
    let out = long.wait_with_output().unwrap();
    assert_eq!(crate::kit::parse_client_output(&out)["result"], 8.0);
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn purge_discards_the_waiting_messages_before_consuming() {
    let queue = unique_queue("purge");
    declare_plain_queue(&queue);
    for _ in 0..3 {
        let r = call_task(&queue, "tasks.add", "[1, 1]", &["--no-wait"]);
        assert!(r["id"].is_string(), "{r}");
    }
    assert_eq!(
        block_on(async { queue_depth(&connect().await, &queue).await }),
        3
    );
    let worker = Worker::builder(&queue)
        .concurrency(1)
        .args(&["--purge"])
        .start();
    assert!(
        worker
            .log()
            .contains("Purged 3 messages from 1 known task queue"),
        "{}",
        worker.log()
    );
    let r = call_task(&queue, "tasks.add", "[2, 5]", &[]);
    assert_eq!(r["result"], 7, "{r}");
    assert_eq!(
        worker.log().matches("succeeded in").count(),
        1,
        "only the task sent after the start ran: {}",
        worker.log()
    );
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn detach_runs_in_the_background_with_pidfile_and_logfile() {
    let queue = unique_queue("detach");
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("w.pid");
    let logfile = dir.path().join("w.log");
    let n = node_name("op");
    let out = worker_command()
        .args(["-b", &amqp_url(), "-D", "-Q", &queue, "-c", "1"])
        .args(["-n", &n])
        .arg("--pidfile")
        .arg(&pidfile)
        .arg("--logfile")
        .arg(&logfile)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the foreground process returns: {out:?}"
    );
    let log = || std::fs::read_to_string(&logfile).unwrap_or_default();
    eventually(Duration::from_secs(30), "the detached worker ready", || {
        log().contains(" ready.")
    });
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(crate::kit::alive(pid));
    let r = call_task(&queue, "tasks.add", "[20, 22]", &[]);
    assert_eq!(r["result"], 42, "{r}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ppid = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .unwrap()
        .trim();
    assert_ne!(ppid, std::process::id().to_string(), "detached from us");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    eventually(Duration::from_secs(30), "the warm shutdown", || {
        !pidfile.exists()
    });
    eventually(Duration::from_secs(10), "the process gone", || {
        !crate::kit::alive(pid)
    });
    block_on(delete_queue(&queue));
}

/// The uid and gid lines of `/proc/<pid>/status` (real, effective, saved, fs).
fn ids(pid: i32) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    (field("Uid:"), field("Gid:"))
}

#[test]
fn uid_and_gid_are_dropped_before_tasks_run() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: dropping privileges needs root");
        return;
    }
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
        panic!("no user nobody on this machine");
    };
    // The children re-run the binary: put a copy where `nobody` may run it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("worker");
    std::fs::copy(env!("CARGO_BIN_EXE_worker"), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let queue = unique_queue("uid");
    let uid = nobody.uid.to_string();
    let gid = nobody.gid.to_string();
    let worker = Worker::builder(&queue)
        .exe(&exe)
        .concurrency(2)
        .args(&["--uid", "nobody", "--gid", &gid, "--workdir", "/tmp"])
        .start();
    let r = call_task(&queue, "tasks.add", "[5, 6]", &[]);
    assert_eq!(r["result"], 11, "{r}");
    let want = (
        format!("{uid} {uid} {uid} {uid}"),
        format!("{gid} {gid} {gid} {gid}"),
    );
    assert_eq!(ids(worker.pid() as i32), want, "the main process");
    let kids = worker.children();
    assert_eq!(kids.len(), 2, "{kids:?}");
    for k in kids {
        assert_eq!(ids(k), want, "child {k}");
    }
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn mingle_takes_over_a_revoke_sent_while_the_worker_was_down() {
    let qa = unique_queue("mingle-a");
    let qb = unique_queue("mingle-b");
    let a = Worker::builder(&qa).concurrency(1).start();
    let revoked = uuid::Uuid::new_v4().to_string();
    // Only A hears the revoke: B is not running yet.
    let (code, out, err) = worker_ctl(&["revoke", &revoked, "-d", &a.nodename()]);
    assert_eq!(code, 0, "{out}{err}");
    declare_plain_queue(&qb);
    let r = call_task(
        &qb,
        "tasks.add",
        "[1, 2]",
        &["--no-wait", "--task-id", &revoked],
    );
    assert_eq!(r["id"], revoked.as_str(), "{r}");
    let b = Worker::builder(&qb).concurrency(1).start();
    assert!(
        b.log().contains("mingle: searching for neighbors"),
        "{}",
        b.log()
    );
    assert!(b.log().contains("mingle: sync with"), "{}", b.log());
    b.wait_for_log(
        &format!("Discarding revoked task: tasks.add[{revoked}]"),
        Duration::from_secs(10),
    );
    let (code, out, _) = worker_ctl(&["inspect", "revoked", "-d", &b.nodename()]);
    assert_eq!(code, 0);
    assert!(out.contains(&revoked), "{out}");
    let r = call_task(&qb, "tasks.add", "[2, 2]", &[]);
    assert_eq!(r["result"], 4, "{r}");
    assert!(!b.log().contains(&format!("tasks.add[{revoked}] succeeded")));
    drop((a, b));
    block_on(delete_queue(&qa));
    block_on(delete_queue(&qb));
}
