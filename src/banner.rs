//! The start-up banner: what an operator reads first in a Celery worker's log — the node,
//! version, transport (password masked), results, concurrency and pool, task events, the
//! queues with their exchanges and keys, and the registered tasks. Laid out as Celery lays
//! its banner out, so that the eye finds the same lines; `-q/--quiet` leaves it out.

use std::collections::HashMap;

use celeryd_actors::Settings;
use celeryd_actors::task::TaskOptions;

/// The banner for node `node` running `tasks`, with `app_backend` the Python app's result
/// backend (masked) when the tasks are an app's.
pub fn banner(
    settings: &Settings,
    node: &str,
    tasks: &HashMap<String, TaskOptions>,
    app_backend: Option<&str>,
) -> String {
    let app = settings
        .python
        .app
        .as_deref()
        .map(|a| format!("{a} (Python tasks through Celery's tracer)"))
        .unwrap_or_else(|| "Rust tasks (this binary's registry)".to_owned());
    let results = match (&settings.python.app, app_backend) {
        (Some(_), Some(b)) => b.to_owned(),
        (Some(_), None) => "disabled:// (the app sets no result_backend)".to_owned(),
        (None, _) => celeryd_actors::settings::mask_password(&settings.result.backend),
    };
    let pool = settings.worker.pool.name();
    let concurrency = match settings.worker.autoscale {
        Some(celeryd_actors::settings::Autoscale { max, min }) => {
            format!("{{min={min}, max={max}}} ({pool}, autoscale)")
        }
        None => format!("{} ({pool})", settings.effective_concurrency()),
    };
    let events = if settings.worker.send_events {
        "ON".to_owned()
    } else {
        "OFF (enable -E to monitor tasks in this worker)".to_owned()
    };
    let host = nix::sys::utsname::uname()
        .map(|u| {
            format!(
                "{}-{}-{}",
                u.sysname().to_string_lossy(),
                u.release().to_string_lossy(),
                u.machine().to_string_lossy()
            )
        })
        .unwrap_or_default();
    let now = celeryd_actors::protocol::time::format_iso(time::OffsetDateTime::now_utc());
    let lines = [
        format!(
            " -------------- {node} v{} (celeryd)",
            env!("CARGO_PKG_VERSION")
        ),
        "--- ***** ----- ".to_owned(),
        format!("-- ******* ---- {host} {now}"),
        "- *** --- * --- ".to_owned(),
        "- ** ---------- [config]".to_owned(),
        format!("- ** ---------- .> app:         {app}"),
        format!(
            "- ** ---------- .> transport:   {}",
            settings.broker.safe_url()
        ),
        format!("- ** ---------- .> results:     {results}"),
        format!("- *** --- * --- .> concurrency: {concurrency}"),
        format!("-- ******* ---- .> task events: {events}"),
        "--- ***** ----- ".to_owned(),
        " -------------- [queues]".to_owned(),
    ];
    let mut out = String::from("\n");
    for l in lines {
        out.push_str(&l);
        out.push('\n');
    }
    for q in settings.task_queues() {
        let exchange = if q.exchange.is_empty() {
            "(default)".to_owned()
        } else {
            format!("{}({})", q.exchange, q.exchange_type)
        };
        let kind = if q.is_quorum() { " quorum" } else { "" };
        out.push_str(&format!(
            "                .> {:<16} exchange={exchange} key={}{kind}\n",
            q.name, q.routing_key
        ));
    }
    out.push_str("\n[tasks]\n");
    let mut names: Vec<&String> = tasks.keys().collect();
    names.sort();
    for n in names {
        out.push_str(&format!("  . {n}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_banner_names_what_an_operator_reads_first_without_the_password() {
        let mut s = Settings::default();
        s.broker.url = "amqp://guest:secret@rabbit:5672//".into();
        let s = s.validated().unwrap();
        let mut tasks = HashMap::new();
        tasks.insert("tasks.add".to_owned(), TaskOptions::default());
        let b = banner(&s, "w1@host", &tasks, None);
        for part in [
            "w1@host v",
            ".> transport:   amqp://guest:",
            ".> results:     rpc://",
            "(prefork)",
            ".> task events: OFF",
            ".> celery",
            "  . tasks.add",
        ] {
            assert!(b.contains(part), "{part} in {b}");
        }
        assert!(!b.contains("secret"), "{b}");
    }
}
