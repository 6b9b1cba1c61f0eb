//! The inspect commands: what the worker runs and holds (`active`, `reserved`, `scheduled`,
//! `query_task`), what it knows (`registered`, `revoked`, `beat_schedule`) and how it runs
//! (`stats`, `conf`, `report`, `memsample`). Each asks the actor that owns the state; the
//! reply bodies are built in [`info`](super::info).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::info::{self, TaskAttrs};
use super::request::{error, ok};
use super::{Control, ControlPeers, PythonInfo};
use crate::pool::ControlMsg;
use crate::revoke::RevokeMessage;
use crate::settings::Settings;

impl Control {
    /// `active`: the running tasks, with their worker pid and start time.
    pub(super) async fn active(&self, peers: &ControlPeers, safe: bool) -> Value {
        let tasks = pool_tasks(peers).await;
        let acked = !self.settings.task.acks_late;
        json!(
            tasks
                .active
                .iter()
                .map(|(r, pid, t)| info::task_info(
                    r,
                    &self.nodename,
                    Some(*t),
                    acked,
                    Some(*pid),
                    safe
                ))
                .collect::<Vec<_>>()
        )
    }

    /// `reserved`: the tasks the pool holds, waiting for a process.
    pub(super) async fn reserved(&self, peers: &ControlPeers) -> Value {
        let tasks = pool_tasks(peers).await;
        json!(
            tasks
                .reserved
                .iter()
                .map(|r| info::task_info(r, &self.nodename, None, false, None, false))
                .collect::<Vec<_>>()
        )
    }

    /// `scheduled`: the ETA tasks the scheduler holds.
    pub(super) async fn scheduled(&self, peers: &ControlPeers) -> Value {
        let held = ractor::call!(
            peers.scheduler,
            crate::scheduler::SchedulerMessage::GetScheduled
        )
        .unwrap_or_default();
        json!(
            held.iter()
                .map(|r| info::scheduled_entry(r, &self.nodename))
                .collect::<Vec<_>>()
        )
    }

    /// `registered`: sorted task names, each with the requested attributes that are set
    /// (`taskinfoitems`, default exchange, routing_key, rate_limit), e.g.
    /// `"tasks.slow [rate_limit=10/m]"`.
    pub(super) fn registered(
        &self,
        tasks: &BTreeMap<String, TaskAttrs>,
        items: &[String],
        builtins: bool,
    ) -> Value {
        json!(
            tasks
                .iter()
                .filter(|(n, _)| builtins || !n.starts_with("celery."))
                .map(|(n, a)| info::registered_entry(n, a, items, &self.settings.task))
                .collect::<Vec<_>>()
        )
    }

    /// `query_task`: each of `ids` this worker runs, holds or schedules, with its state.
    pub(super) async fn query_task(&self, peers: &ControlPeers, ids: &[String]) -> Value {
        let tasks = pool_tasks(peers).await;
        let held = ractor::call!(
            peers.scheduler,
            crate::scheduler::SchedulerMessage::GetScheduled
        )
        .unwrap_or_default();
        let acked = !self.settings.task.acks_late;
        let node = &self.nodename;
        let mut out = Map::new();
        for (r, pid, t) in &tasks.active {
            if ids.contains(&r.id) {
                let i = info::task_info(r, node, Some(*t), acked, Some(*pid), false);
                out.insert(r.id.clone(), json!(["active", i]));
            }
        }
        for r in &tasks.reserved {
            if ids.contains(&r.id) {
                let i = info::task_info(r, node, None, false, None, false);
                out.insert(r.id.clone(), json!(["reserved", i]));
            }
        }
        for r in &held {
            if ids.contains(&r.id) {
                let i = info::task_info(r, node, None, false, None, false);
                out.insert(r.id.clone(), json!(["scheduled", i]));
            }
        }
        Value::Object(out)
    }

    /// `stats`: totals, the pool, the broker connection, rusage, and the periodic task
    /// scheduler and autoscaler when they run.
    pub(super) async fn stats(&self, peers: &ControlPeers, clock: u64) -> Value {
        let tasks = pool_tasks(peers).await;
        let broker = crate::broker::stats(&self.settings.broker);
        let concurrency = tasks.target;
        let mtpc = self.settings.worker.max_tasks_per_child;
        let soft = self.settings.task.soft_time_limit.map_or(0.0, f64::from);
        let hard = self.settings.task.time_limit.map_or(0.0, f64::from);
        let mut pool = json!({
            "implementation": "celeryd.pool:ChildProcessPool",
            "max-concurrency": concurrency,
            "processes": tasks.processes,
            "max-tasks-per-child": if mtpc == 0 { json!("N/A") } else { json!(mtpc) },
            "put-guarded-by-semaphore": false,
            "timeouts": [soft, hard],
            "writes": "N/A",
        });
        if let Value::Object(p) = &mut pool {
            info::pool_kind_stats(p, self.settings.worker.pool, tasks.active.len());
        }
        let mut stats = json!({
            "total": tasks.total,
            "pid": std::process::id(),
            "clock": clock.to_string(),
            "uptime": self.started.elapsed().as_secs(),
            "pool": pool,
            "broker": broker.unwrap_or_else(|| json!({})),
            "prefetch_count": self.settings.prefetch_for(match tasks.autoscaler {
                Some((max, ..)) => max,
                None => concurrency,
            }),
            "rusage": rusage(),
        });
        if let (Some(beat), Value::Object(m)) = (beat_info(peers).await, &mut stats) {
            m.insert(
                "beat".into(),
                json!({"role": beat.role, "lock": beat.lock, "entries": beat.entries.len()}),
            );
        }
        if let (Some((max, min, current, qty)), Value::Object(m)) = (tasks.autoscaler, &mut stats) {
            m.insert(
                "autoscaler".into(),
                json!({"max": max, "min": min, "current": current, "qty": qty}),
            );
        }
        stats
    }

    /// `conf`: the app's configuration with a Python app, else the settings under Celery's
    /// names.
    pub(super) fn conf(&self, with_defaults: bool) -> Value {
        match &self.python {
            Some(py) => python_conf(py, &self.settings, with_defaults),
            None => settings_conf(&self.settings),
        }
    }

    /// `report`: the app's bug report with a Python app, else the software, node and broker.
    pub(super) fn report(&self) -> Value {
        match &self.python {
            Some(py) => ok(format!(
                "{}\nworker -> celeryd:{} (Rust parent, Python children)",
                py.report.as_str().trim_end(),
                env!("CARGO_PKG_VERSION")
            )),
            None => ok(format!(
                "software -> celeryd:{} (Rust) celery-protocol:2\nnode -> {}\nbroker -> {}",
                env!("CARGO_PKG_VERSION"),
                self.nodename,
                self.settings.broker.safe_url()
            )),
        }
    }
}

/// `revoked`: the revoked task ids.
pub(super) async fn revoked(peers: &ControlPeers) -> Value {
    let ids = ractor::call!(peers.revoke, RevokeMessage::GetRevoked).unwrap_or_default();
    json!(ids)
}

/// `beat_schedule` (celeryd's own): the periodic task scheduler's entries and role (`-B`).
pub(super) async fn beat_schedule(peers: &ControlPeers) -> Value {
    match beat_info(peers).await {
        Some(info) => info.to_json(),
        None => error(
            "the periodic task scheduler does not run on this node (start the worker \
             with -B, or run `worker beat`)",
        ),
    }
}

/// `memsample`: the worker's resident memory.
pub(super) fn memsample() -> Value {
    json!(format!(
        "{:.1}MB",
        crate::process::runner::resident_kib() as f64 / 1024.0
    ))
}

async fn beat_info(peers: &ControlPeers) -> Option<crate::beat::BeatInfo> {
    let beat = peers.beat.as_ref()?;
    ractor::call!(beat, |reply| crate::beat::BeatMessage::GetSchedule {
        reply
    })
    .ok()
}

/// What the pool runs and holds.
pub(super) async fn pool_tasks(peers: &ControlPeers) -> crate::pool::PoolTasks {
    ractor::call!(peers.pool, |reply| ControlMsg::GetTasks { reply }.into()).unwrap_or_default()
}

/// `getrusage(RUSAGE_SELF)` as Celery's `stats.rusage` dict.
fn rusage() -> Value {
    use nix::sys::resource::{UsageWho, getrusage};
    let Ok(u) = getrusage(UsageWho::RUSAGE_SELF) else {
        return json!({});
    };
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    json!({
        "utime": secs(u.user_time()), "stime": secs(u.system_time()), "maxrss": u.max_rss(),
        "ixrss": u.shared_integral(), "idrss": u.unshared_data_integral(),
        "isrss": u.unshared_stack_integral(), "minflt": u.minor_page_faults(),
        "majflt": u.major_page_faults(), "nswap": u.full_swaps(), "inblock": u.block_reads(),
        "oublock": u.block_writes(), "msgsnd": u.ipc_sends(), "msgrcv": u.ipc_receives(),
        "nsignals": u.signals(), "nvcsw": u.voluntary_context_switches(),
        "nivcsw": u.involuntary_context_switches(),
    })
}

/// `conf` for a Python app: Celery's table of the app's configuration, with the worker
/// settings celeryd runs with laid over it (they may come from the config file or flags).
fn python_conf(py: &PythonInfo, s: &Settings, with_defaults: bool) -> Value {
    let mut table = if with_defaults {
        py.conf_defaults.clone()
    } else {
        py.conf.clone()
    };
    if let Value::Object(ours) = settings_conf(s) {
        for (k, v) in ours {
            if k != "result_backend" && k != "deprecated_settings" {
                table.insert(k, v);
            }
        }
    }
    Value::Object(table)
}

/// The settings under Celery's names, the broker password masked (`inspect conf`).
fn settings_conf(s: &Settings) -> Value {
    json!({
        "broker_url": s.broker.safe_url(),
        "broker_heartbeat": s.broker.heartbeat,
        "result_backend": "rpc://",
        "worker_concurrency": s.effective_concurrency(),
        "worker_prefetch_multiplier": s.worker.prefetch_multiplier,
        "worker_max_tasks_per_child": s.worker.max_tasks_per_child,
        "worker_max_memory_per_child": s.worker.max_memory_per_child,
        "worker_disable_rate_limits": s.worker.disable_rate_limits,
        "worker_state_db": s.worker.statedb,
        "task_acks_late": s.task.acks_late,
        "task_track_started": s.task.track_started,
        "task_ignore_result": s.task.ignore_result,
        "task_acks_on_failure_or_timeout": s.task.acks_on_failure_or_timeout,
        "task_reject_on_worker_lost": s.task.reject_on_worker_lost,
        "task_time_limit": s.task.time_limit,
        "task_soft_time_limit": s.task.soft_time_limit,
        "task_default_rate_limit": s.task.default_rate_limit,
        "deprecated_settings": null,
    })
}
