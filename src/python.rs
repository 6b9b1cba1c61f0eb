//! `-A/--app`: a Python Celery app's own tasks, run in Python children through Celery's
//! tracer. This module finds the interpreter, puts the embedded child script on disk, and
//! starts the first Python process (the helper), whose `ready` frame says which tasks the
//! app has and what its configuration is before anything else starts.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use celeryd_actors::Settings;
use celeryd_actors::error::ChildError;
use celeryd_actors::helper::{HelperProcess, START_TIMEOUT};
use celeryd_actors::process::forkserver::ForkServer;
use celeryd_actors::process::python::{self, Hello, PythonTask, Ready};
use celeryd_actors::process::{ChildCommand, Codec};
use celeryd_actors::task::TaskOptions;

use crate::error::StartupError;

/// The interpreter: `[python] executable` (`--python`), else `$VIRTUAL_ENV/bin/python` when
/// a virtualenv is active, else `python3` on `PATH`.
pub fn interpreter(settings: &Settings, virtual_env: Option<&str>) -> PathBuf {
    if let Some(exe) = &settings.python.executable {
        return PathBuf::from(exe);
    }
    match virtual_env.filter(|v| !v.is_empty()) {
        Some(venv) => PathBuf::from(venv).join("bin").join("python"),
        None => PathBuf::from("python3"),
    }
}

/// Where the child script is written: `$XDG_RUNTIME_DIR/celeryd`, else
/// `$HOME/.cache/celeryd`, else a per-user directory in the temporary directory.
pub fn script_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(dir) = var("XDG_RUNTIME_DIR") {
        return PathBuf::from(dir).join("celeryd");
    }
    if let Some(home) = var("HOME") {
        return PathBuf::from(home).join(".cache").join("celeryd");
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "worker".to_owned());
    std::env::temp_dir().join(format!("celeryd-{user}"))
}

/// How to start a Python process of this worker (children and the helper alike).
pub fn command(settings: &Settings, node: &str, script: PathBuf) -> ChildCommand {
    let p = &settings.python;
    let mut args = vec![
        script.display().to_string(),
        "--app".to_owned(),
        p.app.clone().unwrap_or_default(),
        "--hostname".to_owned(),
        node.to_owned(),
        "--loglevel".to_owned(),
        settings.worker.loglevel.to_ascii_uppercase(),
    ];
    if let Some(dir) = &p.workdir {
        args.extend(["--workdir".to_owned(), dir.clone()]);
    }
    if !p.main_signals {
        args.push("--no-main-signals".to_owned());
    }
    ChildCommand {
        program: interpreter(settings, std::env::var("VIRTUAL_ENV").ok().as_deref()),
        args,
        codec: Codec::Python,
        env: Vec::new(),
        fork: None,
    }
}

/// `command`, with the app pointed at `broker` (Celery reads `CELERY_BROKER_URL` before
/// anything the app configures).
pub fn with_broker(mut command: ChildCommand, broker: &str) -> ChildCommand {
    command.env.retain(|(k, _)| k != "CELERY_BROKER_URL");
    command
        .env
        .push(("CELERY_BROKER_URL".to_owned(), broker.to_owned()));
    command
}

/// Starts the helper: the app loaded (its tasks and configuration), or the reason it did not
/// (a missing interpreter or `celery` package, an import error with its traceback).
pub async fn start_helper(
    settings: &Settings,
    node: &str,
    broker: Option<&str>,
) -> Result<(HelperProcess, Box<Ready>, ChildCommand), StartupError> {
    let dir = script_dir();
    let script = python::write_script(&dir).map_err(|e| {
        StartupError::Python(format!(
            "cannot write the child script into {}: {e}",
            dir.display()
        ))
    })?;
    let mut command = command(settings, node, script);
    if let Some(url) = broker {
        command = with_broker(command, url);
    }
    let app = settings.python.app.as_deref().unwrap_or_default();
    let program = command.program.display().to_string();
    let failed = |e: ChildError| {
        StartupError::Python(format!(
            "{app}: {e} (interpreter {program}; set it with --python or [python] executable)"
        ))
    };
    let loaded = |hello: Hello| match hello {
        Hello::Ready(ready) => Ok(ready),
        Hello::Failed(traceback) => Err(StartupError::Python(format!(
            "{app} (with {program}):\n{}",
            traceback.trim_end()
        ))),
    };
    // The fork server (when used) is the process that loads the app and tells its tasks and
    // configuration; the helper is then its first fork.
    let mut first = None;
    if settings.python.fork_server {
        let (server, hello) = ForkServer::start(&command, START_TIMEOUT)
            .await
            .map_err(failed)?;
        first = Some(loaded(hello)?);
        command.fork = Some(Arc::new(server));
    }
    let (helper, hello) = HelperProcess::start(&command, START_TIMEOUT)
        .await
        .map_err(failed)?;
    let helper_ready = loaded(hello)?;
    Ok((helper, first.unwrap_or(helper_ready), command))
}

/// The content types the app accepts (`accept_content`, when it changed Celery's JSON-only
/// default), as MIME types; empty = JSON only.
pub fn accept_content(conf: &serde_json::Map<String, serde_json::Value>) -> Vec<String> {
    let names: Vec<String> = match conf.get("accept_content") {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    };
    celeryd_actors::consumer::python::accept_mime_types(&names)
}

/// What `inspect conf` and `inspect report` answer, from the ready frame's `inspect`.
pub fn inspect_info(
    inspect: &serde_json::Map<String, serde_json::Value>,
) -> celeryd_actors::control::PythonInfo {
    let table = |k: &str| {
        inspect
            .get(k)
            .and_then(serde_json::Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    celeryd_actors::control::PythonInfo {
        conf: table("conf"),
        conf_defaults: table("conf_defaults"),
        report: inspect
            .get("report")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    }
}

/// The tasks' limits and rates for the pool, from what the ready frame says of each.
pub fn task_options(tasks: &HashMap<String, PythonTask>) -> HashMap<String, TaskOptions> {
    tasks
        .iter()
        .map(|(name, t)| {
            let rate_limit = t
                .rate_limit
                .as_deref()
                .and_then(|r| celeryd_actors::pool::rate::parse_rate(r).ok().flatten());
            let options = TaskOptions {
                time_limit: t.time_limit.filter(|s| *s > 0.0),
                soft_time_limit: t.soft_time_limit.filter(|s| *s > 0.0),
                rate_limit,
                // Celery's tracer in the child decides for Python tasks.
                ignore_result: None,
            };
            (name.clone(), options)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interpreter_is_the_setting_then_the_virtualenv_then_python3() {
        let mut s = Settings::default();
        assert_eq!(interpreter(&s, None), PathBuf::from("python3"));
        assert_eq!(
            interpreter(&s, Some("/srv/venv")),
            PathBuf::from("/srv/venv/bin/python")
        );
        s.python.executable = Some("/opt/py".into());
        assert_eq!(interpreter(&s, Some("/srv/venv")), PathBuf::from("/opt/py"));
    }

    #[test]
    fn the_command_carries_the_app_node_and_switches() {
        let mut s = Settings::default();
        s.python.app = Some("proj.celery:app".into());
        s.python.workdir = Some("/srv/proj".into());
        s.python.main_signals = false;
        let c = command(&s, "w1@h", PathBuf::from("/x/celeryd_child.py"));
        assert_eq!(c.codec, Codec::Python);
        let line = c.args.join(" ");
        assert!(line.starts_with("/x/celeryd_child.py --app proj.celery:app --hostname w1@h"));
        assert!(line.contains("--workdir /srv/proj") && line.ends_with("--no-main-signals"));
    }

    #[test]
    fn task_options_come_from_the_ready_frame() {
        let mut tasks = HashMap::new();
        tasks.insert(
            "proj.slow".to_owned(),
            PythonTask {
                time_limit: Some(30.0),
                soft_time_limit: Some(5.0),
                rate_limit: Some("10/m".into()),
                ..PythonTask::default()
            },
        );
        let o = &task_options(&tasks)["proj.slow"];
        assert_eq!((o.time_limit, o.soft_time_limit), (Some(30.0), Some(5.0)));
        assert!((o.rate_limit.unwrap() - 10.0 / 60.0).abs() < 1e-9);
    }
}
