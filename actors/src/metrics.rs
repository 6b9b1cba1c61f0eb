//! Prometheus metrics (`--metrics-addr`): what Celery has no endpoint for. Counters and
//! histograms live in a shared [`Metrics`] registry that the consumer and the pool update as
//! things happen; gauges (pool size, busy children, held tasks, revoked ids) are read from the
//! actors at scrape time by the endpoint the supervisor owns (`supervisor::endpoint`), which
//! renders them with [`Metrics::render`] in the Prometheus text format.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Histogram bucket bounds, in seconds.
pub const BUCKETS: [f64; 13] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A cumulative histogram with [`BUCKETS`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, seconds: f64) {
        for (bound, n) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *n += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn render(&self, name: &str, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, n) in BUCKETS.iter().zip(self.counts.iter()) {
            out.push_str(&format!(
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}\n"
            ));
        }
        out.push_str(&format!(
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}\n",
            self.count
        ));
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        out.push_str(&format!("{name}_sum{} {}\n", braces(labels), self.sum));
        out.push_str(&format!("{name}_count{} {}\n", braces(labels), self.count));
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Task name -> state -> count (looked up by `&str`: no allocation per task once a name
    /// has been seen).
    tasks: BTreeMap<String, BTreeMap<&'static str, u64>>,
    runtime: BTreeMap<String, Histogram>,
    queue_wait: Histogram,
    recycled: u64,
    killed: u64,
    lost: u64,
    reconnects: u64,
    unregistered: u64,
    malformed: u64,
    connected: bool,
}

/// The shared registry of counters and histograms.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// Records nothing ([`Metrics::off`]).
    off: bool,
}

/// Values read from the actors when scraped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Child processes.
    pub processes: usize,
    /// Children running a task.
    pub busy: usize,
    /// Requests waiting for a child (or a rate-limit token).
    pub reserved: usize,
    /// ETA requests held by the scheduler.
    pub scheduled: usize,
    /// Revoked ids kept.
    pub revoked: usize,
}

impl Metrics {
    /// An empty registry, shared.
    pub fn new() -> Arc<Self> {
        Arc::new(Metrics::default())
    }

    /// A registry that records nothing: no endpoint serves it (`--metrics-addr` unset), so
    /// the per-task counting would be work nobody reads.
    pub fn off() -> Arc<Self> {
        Arc::new(Metrics {
            off: true,
            ..Metrics::default()
        })
    }

    fn with(&self, f: impl FnOnce(&mut Inner)) {
        if self.off {
            return;
        }
        if let Ok(mut inner) = self.inner.lock() {
            f(&mut inner);
        }
    }

    /// A task reached `state` (`received`, `succeeded`, `failed`, `retried`, `revoked`,
    /// `rejected`).
    pub fn task(&self, name: &str, state: &'static str) {
        self.with(|i| match i.tasks.get_mut(name) {
            Some(states) => *states.entry(state).or_default() += 1,
            None => {
                i.tasks
                    .insert(name.to_owned(), BTreeMap::from([(state, 1)]));
            }
        });
    }

    /// A task ran for `seconds`.
    pub fn runtime(&self, name: &str, seconds: f64) {
        self.with(|i| match i.runtime.get_mut(name) {
            Some(h) => h.observe(seconds),
            None => {
                let mut h = Histogram::default();
                h.observe(seconds);
                i.runtime.insert(name.to_owned(), h);
            }
        });
    }

    /// A task waited `seconds` between being received and starting.
    pub fn queue_wait(&self, seconds: f64) {
        self.with(|i| i.queue_wait.observe(seconds));
    }

    /// A child was replaced after `max_tasks_per_child`/`max_memory_per_child`.
    pub fn recycled(&self) {
        self.with(|i| i.recycled += 1);
    }

    /// A child was killed at a hard time limit.
    pub fn killed(&self) {
        self.with(|i| i.killed += 1);
    }

    /// A child died on its own.
    pub fn lost(&self) {
        self.with(|i| i.lost += 1);
    }

    /// The consumer reconnected to the broker.
    pub fn reconnected(&self) {
        self.with(|i| i.reconnects += 1);
    }

    /// A message named a task this worker does not have (rejected).
    pub fn unregistered(&self) {
        self.with(|i| i.unregistered += 1);
    }

    /// A message could not be decoded (rejected).
    pub fn malformed(&self) {
        self.with(|i| i.malformed += 1);
    }

    /// The consumer is now connected to the broker (`true`) or has lost it (`false`).
    pub fn broker_connected(&self, connected: bool) {
        self.with(|i| i.connected = connected);
    }

    /// The Prometheus text exposition of everything, with `gauges`.
    pub fn render(&self, gauges: &Gauges) -> String {
        let Ok(i) = self.inner.lock() else {
            return String::new();
        };
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        };
        head(
            &mut out,
            "celeryd_build_info",
            "gauge",
            "The running build (always 1; the labels carry the facts).",
        );
        out.push_str(&format!(
            "celeryd_build_info{{version=\"{}\",protocol=\"2\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        ));
        head(
            &mut out,
            "celeryd_tasks_total",
            "counter",
            "Tasks by name and state reached.",
        );
        for (task, states) in &i.tasks {
            let task = escape(task);
            for (state, n) in states {
                out.push_str(&format!(
                    "celeryd_tasks_total{{task=\"{task}\",state=\"{state}\"}} {n}\n"
                ));
            }
        }
        head(
            &mut out,
            "celeryd_task_runtime_seconds",
            "histogram",
            "Task run time.",
        );
        for (task, h) in &i.runtime {
            h.render(
                "celeryd_task_runtime_seconds",
                &format!("task=\"{}\"", escape(task)),
                &mut out,
            );
        }
        head(
            &mut out,
            "celeryd_task_queue_wait_seconds",
            "histogram",
            "Time from receipt to start (ETA tasks excluded).",
        );
        i.queue_wait
            .render("celeryd_task_queue_wait_seconds", "", &mut out);
        let counters = [
            (
                "celeryd_children_recycled_total",
                "Children replaced after their task or memory limit.",
                i.recycled,
            ),
            (
                "celeryd_children_killed_total",
                "Children killed at a hard time limit.",
                i.killed,
            ),
            (
                "celeryd_children_lost_total",
                "Children that died on their own.",
                i.lost,
            ),
            (
                "celeryd_broker_reconnects_total",
                "Reconnections to the broker.",
                i.reconnects,
            ),
            (
                "celeryd_messages_unregistered_total",
                "Messages naming a task this worker does not have (rejected).",
                i.unregistered,
            ),
            (
                "celeryd_messages_malformed_total",
                "Messages that could not be decoded (rejected).",
                i.malformed,
            ),
        ];
        for (name, help, n) in counters {
            head(&mut out, name, "counter", help);
            out.push_str(&format!("{name} {n}\n"));
        }
        let gauges = [
            (
                "celeryd_broker_connected",
                "1 while the consumer is connected to the broker, else 0.",
                usize::from(i.connected),
            ),
            (
                "celeryd_pool_processes",
                "Child processes.",
                gauges.processes,
            ),
            ("celeryd_pool_busy", "Children running a task.", gauges.busy),
            (
                "celeryd_tasks_reserved",
                "Tasks waiting for a child.",
                gauges.reserved,
            ),
            (
                "celeryd_tasks_scheduled",
                "ETA tasks held.",
                gauges.scheduled,
            ),
            (
                "celeryd_revoked_ids",
                "Revoked task ids kept.",
                gauges.revoked,
            ),
        ];
        for (name, help, n) in gauges {
            head(&mut out, name, "gauge", help);
            out.push_str(&format!("{name} {n}\n"));
        }
        out
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::new();
        m.task("tasks.add", "succeeded");
        m.task("tasks.add", "succeeded");
        m.task("we\"ird", "failed");
        m.runtime("tasks.add", 0.003);
        m.runtime("tasks.add", 2.0);
        m.queue_wait(0.02);
        m.killed();
        let text = m.render(&Gauges {
            processes: 2,
            busy: 1,
            ..Default::default()
        });
        assert!(text.contains("celeryd_tasks_total{task=\"tasks.add\",state=\"succeeded\"} 2\n"));
        assert!(text.contains("celeryd_tasks_total{task=\"we\\\"ird\",state=\"failed\"} 1\n"));
        assert!(
            text.contains(
                "celeryd_task_runtime_seconds_bucket{task=\"tasks.add\",le=\"0.005\"} 1\n"
            )
        );
        assert!(
            text.contains(
                "celeryd_task_runtime_seconds_bucket{task=\"tasks.add\",le=\"+Inf\"} 2\n"
            )
        );
        assert!(text.contains("celeryd_task_runtime_seconds_count{task=\"tasks.add\"} 2\n"));
        assert!(text.contains("celeryd_task_queue_wait_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(text.contains("celeryd_task_queue_wait_seconds_count 1\n"));
        assert!(text.contains("celeryd_children_killed_total 1\n"));
        assert!(text.contains("celeryd_pool_processes 2\n"));
        assert!(text.contains("# TYPE celeryd_pool_busy gauge\n"));
        assert!(text.contains("celeryd_broker_connected 0\n"));
        assert!(text.contains("celeryd_messages_unregistered_total 0\n"));
        let version = format!(
            "celeryd_build_info{{version=\"{}\"",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&version), "{text}");
        m.unregistered();
        m.malformed();
        m.malformed();
        m.broker_connected(true);
        let text = m.render(&Gauges::default());
        assert!(text.contains("celeryd_broker_connected 1\n"));
        assert!(text.contains("celeryd_messages_unregistered_total 1\n"));
        assert!(text.contains("celeryd_messages_malformed_total 2\n"));
    }
}
