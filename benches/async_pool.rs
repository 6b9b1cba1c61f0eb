//! The async pool against Python Celery's gevent pool: N preloaded `tasks.async_sleep(S)`
//! messages (rpc:// results), drained at `-c C` by celeryd `-P async` and by Celery 5.7
//! `-P gevent` running the same-shaped task (`tests/python/gevent_app.py`: `gevent.sleep`),
//! in interleaved rounds. Per subject: the wall time from the first task's start to the last
//! task's end (last result − first result + S, since the first result comes S after the first
//! start), against the ideal N / C × S; the peak PSS of its process tree, sampled every 50 ms
//! during the drain; CPU per task of the tree.
//!
//! Run: `cargo bench --profile dev --bench async_pool`. Env: BENCH_TASKS (default 10000),
//! BENCH_CONCURRENCY (default 1000), BENCH_SLEEP (default 0.1), BENCH_ROUNDS (default 3),
//! BENCH_SUBJECTS (default `celeryd,gevent`), BENCH_CELERYD_FLAGS (more flags for celeryd). Targets: celeryd ≤ 1.3 s (ideal 1.0 s),
//! ≥ 3× faster than gevent, ≤ 0.3× its memory.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub, dead_code)] // a benchmark

#[path = "support.rs"]
mod support;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::ConfirmSelectOptions;

use support::{cpu_seconds, env_or, process_tree, publish, setup, tree_pss_kib};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Subject {
    Celeryd,
    Gevent,
}

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Subject::Celeryd => "celeryd -P async",
            Subject::Gevent => "Python Celery 5.7 -P gevent",
        }
    }
}

struct Config {
    tasks: usize,
    concurrency: usize,
    sleep: f64,
}

struct Run {
    wall: f64,
    peak_pss_mib: f64,
    cpu_us: f64,
}

fn start(subject: Subject, queue: &str, dir: &Path, c: &Config, python: &Path) -> Child {
    let conc = c.concurrency.to_string();
    match subject {
        Subject::Celeryd => {
            let extra = std::env::var("BENCH_CELERYD_FLAGS").unwrap_or_default();
            let mut flags = vec!["-P", "async", "-c", &conc, "--without-mingle"];
            flags.extend(extra.split_whitespace());
            support::start_worker(dir, queue, "", &flags)
        }
        Subject::Gevent => {
            support::start_celery_pool(python, "gevent_app", "gevent", queue, c.concurrency, &[])
        }
    }
}

async fn drain(subject: Subject, c: &Config, python: &Path) -> Run {
    let (conn, ch, queue, reply, mut results) = setup("async").await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for _ in 0..c.tasks {
        let args = vec![serde_json::json!(c.sleep)];
        publish(&ch, &queue, &reply, "tasks.async_sleep", args).await;
    }
    ch.wait_for_confirms().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut child = start(subject, &queue, dir.path(), c, python);
    let pid = child.id();
    let (mut first, mut got, mut peak) = (None, 0usize, 0u64);
    let mut sample = tokio::time::interval(Duration::from_millis(50));
    let deadline = Instant::now() + Duration::from_secs(600);
    while got < c.tasks {
        tokio::select! {
            d = results.next() => {
                let d = d.expect("result stream").expect("result");
                let body: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_default();
                assert_eq!(body["status"], "SUCCESS", "{subject:?}: {body}");
                got += 1;
                first.get_or_insert_with(Instant::now);
            }
            _ = sample.tick() => {
                peak = peak.max(tree_pss_kib(pid));
                assert!(Instant::now() < deadline, "{subject:?}: {got} of {} after 600 s", c.tasks);
                assert!(child.try_wait().unwrap().is_none(), "{subject:?} exited");
            }
        }
    }
    let end = Instant::now();
    peak = peak.max(tree_pss_kib(pid));
    let cpu = cpu_seconds(&process_tree(pid));
    let p = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
    support::delete_queue(&ch, &queue).await;
    let _ = conn.close(200, "bye".into()).await;
    Run {
        wall: (end - first.unwrap()).as_secs_f64() + c.sleep,
        peak_pss_mib: peak as f64 / 1024.0,
        cpu_us: cpu * 1e6 / c.tasks as f64,
    }
}

/// Median, min, max.
fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let c = Config {
        tasks: env_or("BENCH_TASKS", 10_000),
        concurrency: env_or("BENCH_CONCURRENCY", 1000),
        sleep: env_or("BENCH_SLEEP", 0.1),
    };
    let rounds: usize = env_or("BENCH_ROUNDS", 3).max(1);
    let wanted = std::env::var("BENCH_SUBJECTS").unwrap_or_else(|_| "celeryd,gevent".into());
    let subjects: Vec<Subject> = [Subject::Celeryd, Subject::Gevent]
        .into_iter()
        .filter(|s| match s {
            Subject::Celeryd => wanted.contains("celeryd"),
            Subject::Gevent => wanted.contains("gevent"),
        })
        .collect();
    let python = support::python();
    let mut runs: Vec<Vec<Run>> = subjects.iter().map(|_| Vec::new()).collect();
    support::run(async {
        for round in 1..=rounds {
            for (i, s) in subjects.iter().enumerate() {
                let r = drain(*s, &c, &python).await;
                eprintln!(
                    "round {round}: {}: {:.3} s, peak PSS {:.1} MiB, {:.0} µs CPU per task",
                    s.name(),
                    r.wall,
                    r.peak_pss_mib,
                    r.cpu_us
                );
                runs[i].push(r);
            }
        }
    });
    let ideal = (c.tasks as f64 / c.concurrency as f64).ceil() * c.sleep;
    println!(
        "\nasync_pool: {} × async_sleep({}) at -c {}, rpc results, {rounds} interleaved rounds \
         (median, min–max); ideal {ideal:.2} s\n",
        c.tasks, c.sleep, c.concurrency
    );
    println!("| subject | wall time | peak PSS of the tree | CPU per task |");
    println!("|---|---|---|---|");
    for (s, rs) in subjects.iter().zip(&runs) {
        let (w, wlo, whi) = stats(rs.iter().map(|r| r.wall).collect());
        let (m, mlo, mhi) = stats(rs.iter().map(|r| r.peak_pss_mib).collect());
        let (cpu, _, _) = stats(rs.iter().map(|r| r.cpu_us).collect());
        println!(
            "| {} | {w:.3} s ({wlo:.3}–{whi:.3}) | {m:.1} MiB ({mlo:.1}–{mhi:.1}) | {cpu:.0} µs |",
            s.name()
        );
    }
    if let [ours, theirs] = &runs[..] {
        let per_round: Vec<String> = ours
            .iter()
            .zip(theirs)
            .map(|(a, b)| format!("{:.2}", b.wall / a.wall))
            .collect();
        let med = |rs: &Vec<Run>, f: fn(&Run) -> f64| stats(rs.iter().map(f).collect()).0;
        println!(
            "\nceleryd wall {:.3} s against the ideal {ideal:.2} s (×{:.2}; target ≤ 1.3 s for \
             the default shape)",
            med(ours, |r| r.wall),
            med(ours, |r| r.wall) / ideal
        );
        println!(
            "celeryd faster than gevent: ×{:.2} by medians (per round {}; target ≥ 3)",
            med(theirs, |r| r.wall) / med(ours, |r| r.wall),
            per_round.join(", ")
        );
        println!(
            "memory: celeryd / gevent peak PSS ×{:.2} (target ≤ 0.3)",
            med(ours, |r| r.peak_pss_mib) / med(theirs, |r| r.peak_pss_mib)
        );
    }
}
