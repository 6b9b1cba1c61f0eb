//! Operating the worker: `--print-config`, environment overrides, `--pidfile`, `--logfile`
//! with reopening on SIGUSR2, `--log-format json`, SIGUSR1's task dump, process names; a
//! broker URL that does not parse is refused without echoing its password.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::block_on;
use crate::kit::{
    amqp_url, delete_queue, eventually, expand_host, node_name, spawn_task, unique_queue,
    worker_command,
};

#[test]
fn print_config_shows_the_environment_and_masks_the_password() {
    let out = worker_command()
        .arg("--print-config")
        .args(["-c", "3"])
        .env(
            "CELERYD_BROKER_URL",
            "amqp://admin:s3cret@broker.example:5672//",
        )
        .env("CELERYD_TASK_ACKS_LATE", "true")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{out:?}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(
        text.contains("amqp://admin:********@broker.example:5672//"),
        "{text}"
    );
    assert!(text.contains("acks_late = true"), "{text}");
    assert!(text.contains("concurrency = 3"), "flags win: {text}");
    let out = worker_command()
        .arg("--print-config")
        .env("CELERYD_WORKER_CONCURRENCY", "lots")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("CELERYD_WORKER_CONCURRENCY"), "{err}");
}

#[test]
fn pidfile_logfile_json_logs_dump_and_process_names() {
    let queue = unique_queue("ops");
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("w.pid");
    let logfile = dir.path().join("w.log");
    let config = dir.path().join("w.toml");
    std::fs::write(&config, format!("[broker]\nurl = \"{}\"\n", amqp_url())).unwrap();
    let node = node_name("ops");
    let mut child = worker_command()
        .arg("--config")
        .arg(&config)
        .args(["-Q", &queue, "-n", &node, "-c", "1", "--log-format", "json"])
        .arg("--pidfile")
        .arg(&pidfile)
        .arg("--logfile")
        .arg(&logfile)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let log = || std::fs::read_to_string(&logfile).unwrap_or_default();
    eventually(Duration::from_secs(30), "the worker to consume", || {
        log().contains("Consuming from queue")
    });
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        pid.to_string()
    );
    // Every line is JSON with a level and a message.
    for line in log().lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    // A second worker on the same pidfile refuses to start.
    let out = worker_command()
        .arg("--config")
        .arg(&config)
        .args(["-Q", &queue, "-c", "1"])
        .arg("--pidfile")
        .arg(&pidfile)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(73), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("pid {pid}")));
    // Process names: main and children tell themselves apart; children name their node.
    let comm = |p: u32| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
    assert_eq!(comm(pid).trim(), "celeryd: main");
    let kids = crate::kit::children_of(pid as i32);
    assert_eq!(kids.len(), 1);
    assert_eq!(comm(kids[0] as u32).trim(), "celeryd: child");
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", kids[0])).unwrap();
    let expanded = expand_host(&node);
    assert!(
        cmdline
            .replace('\0', " ")
            .contains(&format!("child --of {expanded}")),
        "{cmdline}"
    );
    // SIGUSR1: a dump of the running task.
    let running = spawn_task(&queue, "tasks.sleep", "[2]", &[]);
    eventually(Duration::from_secs(20), "the task to start", || {
        log().contains("tasks.sleep[") && log().contains("received")
    });
    std::thread::sleep(Duration::from_millis(300));
    let signal =
        |s: Signal| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), s).unwrap();
    signal(Signal::SIGUSR1);
    eventually(Duration::from_secs(10), "the dump", || {
        log().contains("Dump of active tasks (SIGUSR1): 1 running")
    });
    assert!(log().contains("* tasks.sleep["), "{}", log());
    // Log rotation: move the file away, SIGUSR2, new lines go to a new file of the old name.
    let rotated = dir.path().join("w.log.1");
    std::fs::rename(&logfile, &rotated).unwrap();
    signal(Signal::SIGUSR2);
    eventually(Duration::from_secs(10), "a new log file", || {
        log().contains("Log file reopened")
    });
    let r = crate::kit::parse_client_output(&running.wait_with_output().unwrap());
    assert_eq!(r["state"], "SUCCESS");
    eventually(
        Duration::from_secs(10),
        "the outcome logged in the new file",
        || log().contains("succeeded in"),
    );
    assert!(
        std::fs::read_to_string(&rotated)
            .unwrap()
            .contains("Dump of active tasks")
    );
    // Warm shutdown removes the pidfile.
    signal(Signal::SIGTERM);
    assert!(child.wait().unwrap().success());
    assert!(!pidfile.exists(), "pidfile removed on exit");
    block_on(delete_queue(&queue));
}

#[test]
fn an_unparsable_broker_url_is_never_echoed_with_its_password() {
    for url in [
        "amqp://guest:s3cr3t-pw@127.0.0.1:99999//",
        "amqp:/guest:s3cr3t-pw@127.0.0.1",
        "amqp://guest:s3cr3t@pw@127.0.0.1:notaport//",
        "amqp://a:s3cr3t-pw@h1;amqp://b:s3cr3t-pw2@h2:notaport//",
        "amqp://a:s3cr3t-pw@h1;redis://b:s3cr3t-pw2@h2",
        "redis://guest:s3cr3t-pw@127.0.0.1/notadb",
        "redis://a:s3cr3t-pw@h1;amqp://b:s3cr3t-pw2@h2//",
    ] {
        let out = worker_command()
            .args(["--print-config"])
            .env("CELERYD_BROKER_URL", url)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{url}: {err}");
        assert!(err.contains("broker.url"), "{url}: {err}");
        assert!(!err.contains("s3cr3t"), "{url} leaked: {err}");
    }
    // A good failover list is printed with every password masked.
    let out = worker_command()
        .args(["--print-config"])
        .env(
            "CELERYD_BROKER_URL",
            "amqp://a:s3cr3t-pw@h1//;amqp://b:s3cr3t-pw2@h2//",
        )
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{printed}");
    assert!(
        printed.contains("h1//;amqp://b:") && !printed.contains("s3cr3t"),
        "{printed}"
    );
    // A TOML error quotes the line: the password is masked there too.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[broker]\nurl = amqp://guest:s3cr3t-pw@h//\n").unwrap();
    let out = worker_command()
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(!err.contains("s3cr3t"), "leaked: {err}");
}
