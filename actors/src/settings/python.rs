//! `[python]`: the Python Celery app (`-A`) whose tasks the worker runs in Python children.

use serde::{Deserialize, Serialize};

/// `[python]` section: a Python Celery app whose tasks the worker runs, in Python children
/// through Celery's own tracer. Without `app`, the worker runs its Rust tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PythonSettings {
    /// `-A/--app`: the app, as `celery -A` takes it (`proj`, `proj.celery:app`). Unset by
    /// default (Rust tasks).
    pub app: Option<String>,
    /// `--python`: the interpreter. Default: `$VIRTUAL_ENV/bin/python` when a virtualenv is
    /// active, else `python3` on `PATH`.
    pub executable: Option<String>,
    /// `--workdir`: the directory the app is imported from (first on `sys.path`). Default:
    /// the worker's current directory.
    pub workdir: Option<String>,
    /// Emulate `celeryd_init` and `worker_init` where the app is loaded (once in the fork
    /// server, as in Celery's MainProcess, or in each fresh child), so that what an app
    /// connects to them, the Django fixup among them, runs. Default true.
    pub main_signals: bool,
    /// Load the app once in a fork server that forks the children (as Celery's prefork
    /// pool forks them from its MainProcess): they share its memory and start in
    /// milliseconds. False (`--no-fork-server`): each child is a fresh interpreter that
    /// imports the app itself (for an app whose import starts threads). Default true.
    pub fork_server: bool,
}

impl Default for PythonSettings {
    fn default() -> Self {
        PythonSettings {
            app: None,
            executable: None,
            workdir: None,
            main_signals: true,
            fork_server: true,
        }
    }
}
