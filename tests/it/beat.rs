//! The periodic task scheduler (`worker -B`, `worker beat`) through the real binary, the
//! real broker and the real Python Celery: runs counted as executed tasks and as messages in
//! a queue, crontab next runs against Celery's own `crontab`, restarts, two schedulers on one
//! lock, an app's `beat_schedule`, bad entries.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};

use crate::block_on;
use crate::kit::{
    PyWorker, Worker, amqp_url, capture_log, connect, delete_queue, eventually, node_name, python,
    python_amqp_url, repo, unique_queue, worker_command, worker_ctl,
};

/// A `worker beat` process (or `worker -B` with `flags`) with its log.
struct Beat {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Beat {
    /// `worker beat` with `config` (TOML, appended to the broker's) and `flags`; `-s` is a
    /// directory of the caller's when given in `flags`.
    fn start(config: &str, flags: &[&str], env: &[(&str, String)]) -> Beat {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("beat.toml");
        std::fs::write(
            &path,
            format!("[broker]\nurl = \"{}\"\n{config}\n", amqp_url()),
        )
        .unwrap();
        let node = node_name("beat");
        let mut child = worker_command()
            .arg("--config")
            .arg(&path)
            .args(["beat", "-n", &node, "-l", "debug"])
            .args(flags)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start worker beat");
        let log = capture_log(child.stderr.take().unwrap(), "beat");
        Beat {
            child: Some(child),
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn wait_for_log(&self, needle: &str) {
        let log = self.log.clone();
        eventually(Duration::from_secs(30), needle, || {
            log.lock().unwrap().contains(needle)
        });
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        c.wait().unwrap()
    }
}

impl Drop for Beat {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Messages arriving in a queue, with when they arrived.
struct Arrivals {
    seen: Arc<Mutex<Vec<(Instant, Value, lapin::types::FieldTable)>>>,
    _rt: std::thread::JoinHandle<()>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Arrivals {
    /// Declares `queue` (durable, as Celery does) and records what arrives in it.
    fn watch(queue: &str) -> Arrivals {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (q, into, halt) = (queue.to_owned(), seen.clone(), stop.clone());
        let rt = std::thread::spawn(move || {
            block_on(async move {
                let conn = connect().await;
                let ch = conn.create_channel().await.unwrap();
                let durable = QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                };
                ch.queue_declare(q.as_str().into(), durable, FieldTable::default())
                    .await
                    .unwrap();
                let no_ack = BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                };
                let mut c = ch
                    .basic_consume(q.as_str().into(), "".into(), no_ack, FieldTable::default())
                    .await
                    .unwrap();
                ready_tx.send(()).unwrap();
                while !halt.load(std::sync::atomic::Ordering::Relaxed) {
                    let next = tokio::time::timeout(Duration::from_millis(200), c.next()).await;
                    let Ok(Some(Ok(d))) = next else { continue };
                    let body = serde_json::from_slice(&d.data).unwrap_or(Value::Null);
                    let headers = d.properties.headers().clone().unwrap_or_default();
                    into.lock().unwrap().push((Instant::now(), body, headers));
                }
                let _ = conn.close(200, "bye".into()).await;
            })
        });
        ready_rx.recv_timeout(Duration::from_secs(20)).unwrap();
        Arrivals {
            seen,
            _rt: rt,
            stop,
        }
    }

    fn times(&self) -> Vec<Instant> {
        self.seen.lock().unwrap().iter().map(|(t, ..)| *t).collect()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for Arrivals {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn entry(name: &str, task: &str, schedule: &str, queue: &str, args: &str) -> String {
    format!(
        "[beat.schedule.{name}]\ntask = \"{task}\"\n{schedule}\nargs = {args}\n\
         options = {{ queue = \"{queue}\" }}\n"
    )
}

fn lock_config(lock: &str) -> String {
    format!("[beat]\nlock = \"{lock}\"\nlock_retry = 0.5\n")
}

#[test]
fn an_every_entry_runs_about_once_a_second_on_a_b_worker() {
    let queue = unique_queue("beat-b");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("schedule");
    let lock = unique_queue("lock");
    let config = format!(
        "{}{}",
        lock_config(&lock),
        entry("adder", "tasks.add", "every = 1.0", &queue, "[2, 3]")
    );
    let worker = Worker::builder(&queue)
        .config(&config)
        .args(&["-B", "-s", db.to_str().unwrap()])
        .start();
    worker.wait_for_log("beat: Holding the lock", Duration::from_secs(20));
    let ran = || worker.log().matches("succeeded in").count();
    let start = ran();
    std::thread::sleep(Duration::from_millis(5500));
    let n = ran() - start;
    assert!(
        (4..=7).contains(&n),
        "{n} runs of an every-second entry in 5.5 s:\n{}",
        worker.log()
    );
    assert!(
        worker
            .log()
            .contains("Scheduler: Sending due task adder (tasks.add)")
    );
    // The schedule through remote control: celeryd's own command, and stats.
    let (code, out, err) = worker_ctl(&[
        "inspect",
        "beat_schedule",
        "--json",
        "-d",
        &worker.nodename(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let reply: Value = serde_json::from_str(out.trim()).unwrap();
    let info = &reply[worker.nodename()];
    assert_eq!(info["role"], "active", "{info}");
    let adder = &info["entries"][0];
    assert_eq!(
        (&adder["name"], &adder["task"], &adder["schedule"]),
        (&json!("adder"), &json!("tasks.add"), &json!("every 1s")),
        "{info}"
    );
    assert!(adder["total_run_count"].as_u64().unwrap() >= 4, "{info}");
    assert!(adder["next_run_at"].is_string() && adder["last_run_at"].is_string());
    let stats = crate::kit::celery_inspect(&worker.nodename(), &["stats"]);
    assert_eq!(stats["beat"]["role"], "active", "{stats}");
    drop(worker);
    block_on(delete_queue(&queue));
}

#[test]
fn crontab_next_runs_match_celerys_own_crontab() {
    let exprs = [
        "* * * * *",
        "*/15 * * * *",
        "0 9 * * mon-fri",
        "30 4 1,15 * *",
        "0 0 29 2 *",
        "0 12 13 * fri",
        "5 0 * 8 *",
        "0 22-2 * * *",
        "15 14 1 * *",
        "0 */3 * * sun",
        "59 23 31 12 *",
        "0 0 1-7 * mon",
        "*/7 8-18/2 * jan-jun sat,sun",
        "10,20,30 5 10-20 3,6,9,12 *",
        "0 0 * * 0",
        "45 23 * * sat-mon",
        "30 2 * * *",
        "*/20 1-3 * * *",
    ];
    let lasts = [
        "2026-01-01T00:00:00+00:00",
        "2026-02-28T23:59:30+00:00",
        "2026-06-15T04:30:00+00:00",
        "2026-08-31T22:10:07+00:00",
        "2026-11-13T11:59:59+00:00",
        "2026-12-31T23:59:00+00:00",
        "2027-04-05T13:14:15+00:00",
        // Around daylight-saving changes in Berlin and New York.
        "2026-03-28T23:00:00+00:00",
        "2026-03-29T00:45:00+00:00",
        "2026-10-24T23:45:00+00:00",
        "2026-10-25T00:40:00+00:00",
        "2026-03-08T06:00:00+00:00",
        "2026-11-01T05:30:00+00:00",
    ];
    let mut queries = Vec::new();
    for tz in ["UTC", "Europe/Berlin", "America/New_York"] {
        for e in exprs {
            for l in lasts {
                queries.push((e, tz, l));
            }
        }
    }
    let mut child = Command::new(python())
        .arg(repo().join("tests/python/crontab_next.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    for (e, tz, l) in &queries {
        writeln!(input, "{}", json!({"expr": e, "tz": tz, "last": l})).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let theirs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(theirs.len(), queries.len());
    let mut mismatches = Vec::new();
    for ((e, tz, l), celery) in queries.iter().zip(&theirs) {
        let cron = celeryd_actors::beat::crontab::Crontab::parse(e).unwrap();
        let zone = if *tz == "UTC" {
            jiff::tz::TimeZone::UTC
        } else {
            jiff::tz::TimeZone::get(tz).unwrap()
        };
        let last: jiff::Timestamp = l.parse().unwrap();
        let ours = cron.next_after(last, &zone).unwrap();
        let celery: jiff::Timestamp = celery.parse().unwrap_or_else(|_| panic!("{celery}"));
        if ours != celery {
            mismatches.push(format!(
                "{e:?} in {tz} after {l}: celeryd {ours}, Celery {celery}"
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} differ:\n{}",
        mismatches.len(),
        queries.len(),
        mismatches.join("\n")
    );
}

#[test]
fn a_restart_neither_runs_twice_nor_skips_more_than_once() {
    let queue = unique_queue("beat-restart");
    let arrivals = Arrivals::watch(&queue);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("schedule");
    let lock = unique_queue("lock");
    let config = format!(
        "{}{}",
        lock_config(&lock),
        entry("tick", "tasks.noop", "every = 2.0", &queue, "[]")
    );
    let flags = ["-s", db.to_str().unwrap()];
    let mut beat = Beat::start(&config, &flags, &[]);
    eventually(Duration::from_secs(20), "two runs", || {
        arrivals.count() >= 2
    });
    // Killed right after a run, started again at once: the next run is still two seconds
    // after the last, not at start.
    beat.kill9();
    let killed = Instant::now();
    let before = arrivals.count();
    let last_before = *arrivals.times().last().unwrap();
    let beat = Beat::start(&config, &flags, &[]);
    beat.wait_for_log("beat: Holding the lock");
    eventually(Duration::from_secs(20), "a run after the restart", || {
        arrivals.count() > before
    });
    let first_after = arrivals.times()[before];
    let gap = first_after - last_before;
    assert!(
        gap >= Duration::from_millis(1500),
        "ran again {gap:?} after the last run: twice (restarted {:?} after it)",
        killed - last_before
    );
    assert!(
        gap <= Duration::from_millis(4500),
        "skipped more than once: {gap:?}"
    );
    drop(beat);
    // Down for three intervals: the missed run runs once at start, then every 2 s again.
    let count = arrivals.count();
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(arrivals.count(), count, "nothing sent while it is down");
    let beat = Beat::start(&config, &flags, &[]);
    beat.wait_for_log("beat: Holding the lock");
    eventually(Duration::from_secs(10), "the missed run", || {
        arrivals.count() > count
    });
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        arrivals.count(),
        count + 1,
        "one catch-up run, not one per missed interval"
    );
    let (_, body, headers) = arrivals.seen.lock().unwrap()[0].clone();
    assert_eq!(body[0], json!([]), "{body}");
    let h = format!("{headers:?}");
    assert!(
        h.contains("celery_beat_task") && h.contains("periodic_task_name"),
        "{h}"
    );
    drop(beat);
    block_on(delete_queue(&queue));
}

#[test]
fn two_b_workers_publish_each_run_once_and_the_standby_takes_over() {
    let queue = unique_queue("beat-two");
    let work = unique_queue("beat-two-work");
    let arrivals = Arrivals::watch(&queue);
    let lock = unique_queue("lock");
    let config = format!(
        "{}{}",
        lock_config(&lock),
        entry("often", "tasks.noop", "every = 0.5", &queue, "[]")
    );
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let s1 = d1.path().join("s");
    let s2 = d2.path().join("s");
    let mut first = Worker::builder(&work)
        .config(&config)
        .args(&["-B", "-s", s1.to_str().unwrap()])
        .start();
    first.wait_for_log("beat: Holding the lock", Duration::from_secs(20));
    let second = Worker::builder(&work)
        .config(&config)
        .args(&["-B", "-s", s2.to_str().unwrap()])
        .start();
    second.wait_for_log("beat: Standing by", Duration::from_secs(20));
    let stats = crate::kit::celery_inspect(&second.nodename(), &["stats"]);
    assert_eq!(stats["beat"]["role"], "standby", "{stats}");
    let start = arrivals.count();
    std::thread::sleep(Duration::from_secs(4));
    let n = arrivals.count() - start;
    assert!(
        (6..=10).contains(&n),
        "{n} runs in 4 s of a 0.5 s entry (twice would be ~16)"
    );
    let times = arrivals.times();
    let close = times
        .windows(2)
        .filter(|w| w[1] - w[0] < Duration::from_millis(250))
        .count();
    assert_eq!(close, 0, "no run sent twice");
    // The publisher dies: the other takes over within a few seconds.
    first.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = first.wait_exit(Duration::from_secs(10));
    let died = Instant::now();
    let before = arrivals.count();
    eventually(Duration::from_secs(10), "runs from the standby", || {
        arrivals.count() > before + 1
    });
    let resumed = arrivals.times()[before] - died;
    assert!(
        resumed < Duration::from_secs(5),
        "took over after {resumed:?}"
    );
    assert!(second.log().contains("took over"), "{}", second.log());
    drop(second);
    block_on(delete_queue(&queue));
    block_on(delete_queue(&work));
}

#[test]
fn a_python_worker_runs_what_celeryd_beat_sends_and_an_apps_schedule_is_honoured() {
    let queue = unique_queue("beat-py");
    let py = PyWorker::start(&queue);
    let lock = unique_queue("lock");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s");
    // The app's beat_schedule (a timedelta, a crontab, a solar that is left out) under
    // `worker beat -A proj`.
    let beat_json = json!({
        "py-adder": {"task": "py.add", "every": 0.5, "args": [20, 22],
                     "options": {"queue": queue}},
        "nightly": {"task": "proj.add", "crontab": {"minute": "0", "hour": "3"},
                    "args": [1, 1], "options": {"queue": queue}},
        "sunrise": {"task": "proj.add", "solar": ["sunrise", 52.5, 13.4]},
    });
    let workdir = repo().join("tests/python");
    let py_bin = python().display().to_string();
    let env = [
        ("AMQP_URL", python_amqp_url()),
        ("PROJ_BEAT", beat_json.to_string()),
    ];
    let beat = Beat::start(
        &lock_config(&lock),
        &[
            "-A",
            "proj",
            "--workdir",
            workdir.to_str().unwrap(),
            "--python",
            &py_bin,
            "-s",
            db.to_str().unwrap(),
        ],
        &env,
    );
    beat.wait_for_log("beat: Holding the lock");
    assert!(
        beat.log().contains("beat_schedule[\"sunrise\"]"),
        "the solar entry is named in a warning:\n{}",
        beat.log()
    );
    eventually(
        Duration::from_secs(20),
        "the Python worker to run it",
        || py.log().contains("py.add[") && py.log().contains("succeeded"),
    );
    assert!(py.log().contains(": 42"), "{}", py.log());
    assert!(beat.log().contains("2 entries"), "{}", beat.log());
    drop(beat);
    drop(py);
    block_on(delete_queue(&queue));
}

#[test]
fn bad_entries_stop_the_start_naming_the_entry_and_the_field() {
    for (config, says) in [
        ("[beat.schedule.x]\ntask = \"t\"\n", "beat.schedule.x.every"),
        (
            "[beat.schedule.x]\ntask = \"t\"\nevery = 1.0\ncrontab = \"* * * * *\"\n",
            "not both",
        ),
        ("[beat.schedule.x]\nevery = 1.0\n", "beat.schedule.x.task"),
        (
            "[beat.schedule.x]\ntask = \"t\"\nevery = -1.0\n",
            "beat.schedule.x.every",
        ),
        (
            "[beat.schedule.x]\ntask = \"t\"\ncrontab = \"61 * * * *\"\n",
            "beat.schedule.x.crontab",
        ),
        (
            "[beat.schedule.x]\ntask = \"t\"\ncrontab = \"0 0 31 2 *\"\n",
            "never occurs",
        ),
        ("[beat.schedule.x]\ntask = \"t\"\nevry = 1.0\n", "evry"),
        (
            "[beat.schedule.x]\ntask = \"t\"\nevery = 1.0\noptions = { countdown = 3 }\n",
            "countdown",
        ),
        ("[beat]\ntimezone = \"Mars/Olympus\"\n", "beat.timezone"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(
            &path,
            format!("[broker]\nurl = \"{}\"\n{config}", amqp_url()),
        )
        .unwrap();
        for mode in [&["beat"][..], &["-B"][..]] {
            let out = worker_command()
                .arg("--config")
                .arg(&path)
                .args(mode)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(78), "{config} {mode:?}: {err}");
            assert!(err.contains(says), "{config} {mode:?}: {err}");
        }
    }
    // A schedule database another scheduler holds: exit 74 naming it.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("held");
    let lock = unique_queue("lock");
    let config = format!(
        "{}{}",
        lock_config(&lock),
        entry("x", "tasks.noop", "every = 60.0", "nowhere", "[]")
    );
    let holder = Beat::start(&config, &["-s", db.to_str().unwrap()], &[]);
    holder.wait_for_log("beat: Holding the lock");
    let mut second = Beat::start(&config, &["-s", db.to_str().unwrap()], &[]);
    let status = second.wait_exit();
    assert_eq!(status.code(), Some(74), "{}", second.log());
    assert!(
        second.log().contains("beat schedule database"),
        "{}",
        second.log()
    );
    drop(holder);
}
