//! Loading settings in layers: defaults, then the TOML file, then CLI flags; then validation.

use std::path::Path;

use celeryd_actors::Settings;

use crate::cli::RunArgs;
use crate::error::StartupError;

/// Reads `path` (if given) over the defaults and applies the CLI overrides, then validates.
pub fn load(path: Option<&Path>, overrides: &RunArgs) -> Result<Settings, StartupError> {
    let mut settings = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| StartupError::Config(format!("cannot read {}: {e}", p.display())))?;
            parse(&text).map_err(|e| StartupError::Config(format!("{}: {e}", p.display())))?
        }
        None => Settings::default(),
    };
    apply(&mut settings, overrides);
    settings
        .validate()
        .map_err(|e| StartupError::Config(e.to_string()))?;
    Ok(settings)
}

/// Parses a config file; unknown keys and wrong types are errors naming the key.
pub fn parse(text: &str) -> Result<Settings, String> {
    toml::from_str::<Settings>(text).map_err(|e| e.to_string().trim_end().to_owned())
}

/// Applies CLI flags over the file's values.
pub fn apply(settings: &mut Settings, o: &RunArgs) {
    let w = &mut settings.worker;
    if let Some(v) = &o.loglevel {
        w.loglevel = v.clone();
    }
    if let Some(v) = o.concurrency {
        w.concurrency = v;
    }
    if let Some(v) = &o.hostname {
        w.hostname = v.clone();
    }
    if let Some(v) = &o.queues {
        w.queues = v
            .split(',')
            .map(str::trim)
            .filter(|q| !q.is_empty())
            .map(str::to_owned)
            .collect();
    }
    if let Some(v) = o.prefetch_multiplier {
        w.prefetch_multiplier = v;
    }
    if let Some(v) = o.max_tasks_per_child {
        w.max_tasks_per_child = v;
    }
    if let Some(v) = o.max_memory_per_child {
        w.max_memory_per_child = v;
    }
    if let Some(v) = &o.statedb {
        w.statedb = Some(v.clone());
    }
    if o.disable_rate_limits {
        w.disable_rate_limits = true;
    }
    if let Some(v) = &o.autoscale {
        w.autoscale = Some(v.clone());
    }
    if o.events {
        w.send_events = true;
    }
    if let Some(v) = &o.metrics_addr {
        w.metrics_addr = Some(v.clone());
    }
    if let Some(v) = o.heartbeat_interval {
        w.heartbeat_interval = v;
    }
    if let Some(v) = o.time_limit {
        settings.task.time_limit = Some(v);
    }
    if let Some(v) = o.soft_time_limit {
        settings.task.soft_time_limit = Some(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_config_equals_defaults() {
        let text = include_str!("../config/worker.toml");
        assert_eq!(parse(text).unwrap(), Settings::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("[worker]\nconcurency = 2\n").unwrap_err();
        assert!(e.contains("concurency"), "{e}");
        let e = parse("[wurker]\n").unwrap_err();
        assert!(e.contains("wurker"), "{e}");
    }

    #[test]
    fn bad_value_is_named() {
        let e = parse("[worker]\nconcurrency = \"many\"\n").unwrap_err();
        assert!(e.contains("concurrency"), "{e}");
        let e = parse("[task]\nacks_late = 1\n").unwrap_err();
        assert!(e.contains("acks_late"), "{e}");
    }

    #[test]
    fn cli_overrides_file() {
        let mut s = parse("[worker]\nconcurrency = 2\nqueues = [\"a\"]\n").unwrap();
        let o = RunArgs {
            concurrency: Some(5),
            queues: Some("x, y".into()),
            hostname: Some("w1@%h".into()),
            ..Default::default()
        };
        apply(&mut s, &o);
        assert_eq!(s.worker.concurrency, 5);
        assert_eq!(s.worker.queues, vec!["x", "y"]);
        assert_eq!(s.worker.hostname, "w1@%h");
    }

    #[test]
    fn validation_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.toml");
        std::fs::write(&p, "[worker]\nloglevel = \"chatty\"\n").unwrap();
        let e = load(Some(&p), &RunArgs::default()).unwrap_err().to_string();
        assert!(e.contains("worker.loglevel"), "{e}");
        let e = load(Some(&dir.path().join("missing.toml")), &RunArgs::default()).unwrap_err();
        assert_eq!(e.exit_code(), 78);
    }
}
