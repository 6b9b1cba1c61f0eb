//! celeryd: the Celery worker, in Rust. This crate is the thin top: command line, config
//! loading, telemetry, OS signals and exit codes. The engine (actors, protocol, broker, child
//! processes) is `celeryd_actors`.
//!
//! # Layout
//! - [`cli`]: clap definitions (`worker`, `worker call`, the hidden child mode).
//! - [`settings`]: defaults -> TOML file -> CLI flags, then validation.
//! - [`signals`]: TERM/INT/QUIT -> warm/cold shutdown requests.
//! - [`call`]: `worker call`, a `celery call` equivalent.
//! - [`tasks`]: the example tasks of the stock binary.
//!
//! Your own worker binary builds a [`Registry`] and hands it to [`main_with`].

pub mod appconf;
pub mod banner;
pub mod call;
pub mod cli;
pub mod ctl;
pub mod daemon;
pub mod error;
pub mod pidfile;
pub mod python;
pub mod settings;
pub mod signals;
pub mod tasks;
pub mod telemetry;

use std::collections::HashMap;
use std::process::ExitCode;

use clap::Parser;
use tokio::sync::mpsc;

/// The engine, for what the re-exports above leave out.
pub use celeryd_actors as engine;
use celeryd_actors::control::custom::ControlCommands;
use celeryd_actors::process::ChildCommand;
use celeryd_actors::supervisor::{ExitReason, PythonSetup, Supervisor, SupervisorArgs};
/// What a worker of your own needs besides [`Registry`] and [`main_with`]: one crate to
/// depend on.
pub use celeryd_actors::task::{Args, RegisteredTask, TaskContext, TaskError};
use celeryd_actors::task::{TaskOptions, Tasks};
pub use celeryd_actors::{Registry, Settings, ShutdownMode};
/// The JSON values task arguments and results are (`json!`, `Value`, `Map`).
pub use serde_json;

use crate::cli::{Cli, Command};
pub use crate::error::StartupError;

/// What a worker runs besides its settings: its tasks and how to run them.
#[derive(Debug)]
pub struct Work {
    /// The registered tasks (name -> options set at registration).
    pub tasks: HashMap<String, TaskOptions>,
    /// The application's own remote-control commands.
    pub commands: ControlCommands,
    /// How to start a child process.
    pub child_command: ChildCommand,
    /// The Rust tasks (run in the worker process by the in-process pools).
    pub registry: std::sync::Arc<Tasks>,
    /// With `-A`: the app's `beat_schedule` entries (for `-B`).
    pub beat_entries: celeryd_actors::settings::BeatEntries,
    /// With `-A`: the Python side, set up.
    pub python: Option<PythonSetup>,
}

/// Runs the worker until it is shut down through `shutdown` (or fails).
pub async fn run(
    settings: Settings,
    work: Work,
    mut shutdown: mpsc::UnboundedReceiver<ShutdownMode>,
) -> Result<ExitReason, StartupError> {
    let host = celeryd_actors::hostname::this_host();
    let hostname = celeryd_actors::hostname::expand_nodename(&settings.worker.hostname, &host)
        .map_err(|e| StartupError::Config(format!("worker.hostname: {e}")))?;
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel();
    let args = SupervisorArgs {
        settings,
        hostname,
        tasks: work.tasks,
        commands: work.commands,
        child_command: work.child_command,
        registry: work.registry,
        beat_entries: work.beat_entries,
        exit: exit_tx,
        python: work.python,
    };
    let (sup, handle) = ractor::Actor::spawn(None, Supervisor, args)
        .await
        .map_err(|e| StartupError::from_spawn(&e.to_string()))?;
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .map_err(|e| StartupError::Runtime(e.to_string()))?;
    let reason = loop {
        tokio::select! {
            Some(()) = usr1.recv() => {
                let _ = sup.cast(celeryd_actors::SupervisorMessage::DumpActive);
            }
            Some(mode) = shutdown.recv() => {
                let _ = sup.cast(celeryd_actors::SupervisorMessage::Shutdown(mode));
            }
            reason = exit_rx.recv() => break reason.unwrap_or(ExitReason::Cold),
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), handle).await;
    match reason {
        ExitReason::Failed(failure) => Err(StartupError::from(failure)),
        other => Ok(other),
    }
}

/// The whole program: parses the command line and runs the worker, `call`, or child mode,
/// with `registry` as the task registry. Call it from your own `main`, before it starts any
/// thread (it sets the default stack size of threads the AMQP client starts).
pub fn main_with(registry: Registry) -> ExitCode {
    deep_thread_stacks();
    // A pool process (started by the worker as `worker child --of NODE`) goes straight to its
    // loop: building the whole command-line parser would only leave its memory behind in
    // every child.
    if std::env::args_os().nth(1).is_some_and(|a| a == "child") {
        return run_child(&registry);
    }
    let (argv, ignored_env) = cli::with_celery_worker_env(std::env::args_os(), std::env::vars());
    let mut cli = Cli::parse_from(argv);
    if let Some(why) = cli.run.refusal() {
        return fail(&StartupError::Usage(why));
    }
    // `worker beat`: the scheduler alone, its settings loaded as the worker's are.
    let beat_only = match &cli.command {
        Some(Command::Beat(args)) => {
            if let Some(why) = args.refusal() {
                return fail(&StartupError::Usage(why));
            }
            cli.run = args.as_run_args();
            true
        }
        _ => false,
    };
    if let Err(e) = enter_workdir(&mut cli) {
        return fail(&e);
    }
    match cli.command {
        Some(Command::Child { .. }) => return run_child(&registry),
        Some(Command::Ctl(args)) => {
            let settings = match settings::load(cli.config.as_deref(), &cli.run) {
                Ok(s) => s,
                Err(e) => return fail(&e),
            };
            return with_runtime(|| async move { Ok(ctl::run(&settings, &args).await) });
        }
        Some(Command::Call(args)) => {
            let settings = match settings::load(cli.config.as_deref(), &cli.run) {
                Ok(s) => s,
                Err(e) => return fail(&e),
            };
            return with_runtime(|| call::call(&settings, &args));
        }
        Some(Command::Beat(_)) | None => {}
    }
    let settings = match settings::load(cli.config.as_deref(), &cli.run) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    if cli.print_config {
        // With -A the app's configuration is read first (its values are marked).
        return with_runtime(|| async move {
            let shown = if settings.python.app.is_some() {
                let node = node_name(&settings);
                let (_, prepared) = prepare_python(&cli, &settings, &node).await?;
                let mut shown = String::new();
                if !prepared.unhonoured.is_empty() {
                    shown.push_str(&format!(
                        "# app.conf settings celeryd does not honour: {}\n",
                        prepared.unhonoured.join(", ")
                    ));
                }
                shown.push_str(&appconf::annotate(
                    &settings::render(&prepared.settings),
                    &prepared.from_app,
                ));
                shown
            } else {
                settings::render(&settings)
            };
            print!("{shown}");
            Ok(ExitCode::SUCCESS)
        });
    }
    let privileges = match daemon::prepare(&cli.run) {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    if cli.run.detach
        && let Err(e) = daemon::detach(settings.worker.logfile.is_some())
    {
        return fail(&e);
    }
    let sink = match telemetry::LogSink::new(settings.worker.logfile.as_ref().map(Into::into)) {
        Ok(s) => s,
        Err(e) => return fail(&StartupError::Config(e)),
    };
    let format = telemetry::LogFormat::parse(&settings.worker.log_format)
        .unwrap_or(telemetry::LogFormat::Text);
    telemetry::init(&settings.worker.loglevel, format, sink.clone());
    for name in &ignored_env {
        tracing::warn!("{name} is not a `celery worker` option; ignored, as Celery ignores it.");
    }
    let _pidfile =
        match settings.worker.pidfile.as_deref().map(|p| {
            pidfile::Pidfile::acquire(std::path::Path::new(p)).map_err(StartupError::Pidfile)
        }) {
            Some(Err(e)) => return fail(&e),
            Some(Ok(p)) => Some(p),
            None => None,
        };
    // The log and pid files are open (as root, if it started as root): now the user that
    // runs the tasks.
    if let Err(e) = privileges.drop_now() {
        return fail(&e);
    }
    set_process_name("celeryd: main");
    let node = node_name(&settings);
    let rust_child = match std::env::current_exe() {
        // `ps` shows which node a child belongs to: `worker child --of w1@host`.
        Ok(program) => ChildCommand {
            program,
            args: vec!["child".to_owned(), "--of".to_owned(), node.clone()],
            codec: celeryd_actors::process::Codec::Rust,
            env: Vec::new(),
            fork: None,
        },
        Err(e) => {
            return fail(&StartupError::Runtime(format!(
                "cannot find own executable: {e}"
            )));
        }
    };
    let rust_tasks = registry.options();
    let (registry, commands) = registry.into_parts();
    let registry = std::sync::Arc::new(registry);
    let (purge, quiet) = (cli.run.purge, cli.run.quiet);
    let restart = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let restart_requested = restart.clone();
    let code = with_runtime(|| async move {
        let mut app_backend = None;
        let mut beat_entries = Vec::new();
        let (settings, tasks, child_command, python) = if settings.python.app.is_some() {
            let (setup, prepared) = prepare_python(&cli, &settings, &node).await?;
            let tasks = python::task_options(&setup.tasks);
            app_backend = prepared.result_backend.clone();
            if prepared.settings.worker.beat || beat_only {
                let (entries, warnings) =
                    appconf::beat_entries(&prepared.conf).map_err(StartupError::Config)?;
                for w in warnings {
                    tracing::warn!("{w}");
                }
                beat_entries = entries;
            }
            // The scheduler alone needs no child, helper or fork server.
            let python = (!beat_only).then_some(setup);
            (prepared.settings, tasks, prepared.command, python)
        } else {
            (settings, rust_tasks, rust_child, None)
        };
        if let Some(Ok((_, options))) = settings.broker.redis() {
            for note in &options.notes {
                tracing::warn!("{note}");
            }
        }
        if purge && !beat_only {
            let names: Vec<String> = settings
                .task_queues()
                .iter()
                .map(|q| q.name.clone())
                .collect();
            let purged = celeryd_actors::broker::purge(&settings.broker, &node, &names)
                .await
                .map_err(|e| StartupError::Broker(e.to_string()))?;
            let total: u64 = purged.iter().map(|(_, n)| u64::from(*n)).sum();
            tracing::warn!(
                "Purged {total} message{} from {} known task queue{} (--purge).",
                if total == 1 { "" } else { "s" },
                purged.len(),
                if purged.len() == 1 { "" } else { "s" }
            );
        }
        if !quiet && !beat_only {
            tracing::info!(
                "{}",
                banner::banner(&settings, &node, &tasks, app_backend.as_deref())
            );
        }
        let (config_path, run_args) = (cli.config.clone(), cli.run.clone());
        // The new configuration is read before anything stops: a broken one leaves this
        // worker running on the old.
        let can_restart = move || match settings::load(config_path.as_deref(), &run_args) {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(
                    "Not restarting (SIGHUP): the configuration is invalid, so the worker \
                     goes on with the one it started with. {}",
                    celeryd_actors::settings::mask_urls(&e.to_string())
                );
                false
            }
        };
        let mut requests =
            signals::listen(can_restart).map_err(|e| StartupError::Runtime(e.to_string()))?;
        let mut usr2 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())
                .map_err(|e| StartupError::Runtime(e.to_string()))?;
        tokio::spawn(async move {
            while usr2.recv().await.is_some() {
                match sink.reopen() {
                    Ok(()) => tracing::info!("Log file reopened (SIGUSR2)."),
                    Err(e) => eprintln!("celeryd: cannot reopen the log file: {e}"),
                }
            }
        });
        let (tx, shutdown) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(request) = requests.recv().await {
                let mode = match request {
                    signals::Request::Shutdown(mode) => mode,
                    signals::Request::Restart => {
                        tracing::info!("worker: Restarting (SIGHUP): warm stop, then re-exec.");
                        restart_requested.store(true, std::sync::atomic::Ordering::SeqCst);
                        ShutdownMode::Warm
                    }
                };
                if tx.send(mode).is_err() {
                    return;
                }
            }
        });
        if beat_only {
            return match run_beat(settings, node, beat_entries, shutdown).await? {
                ExitReason::Cold => Ok(ExitCode::from(1)),
                _ => Ok(ExitCode::SUCCESS),
            };
        }
        let registry = if python.is_some() {
            std::sync::Arc::new(Tasks::new())
        } else {
            registry
        };
        let work = Work {
            tasks,
            commands,
            child_command,
            registry,
            beat_entries,
            python,
        };
        match run(settings, work, shutdown).await? {
            ExitReason::Cold => Ok(ExitCode::from(1)),
            _ => Ok(ExitCode::SUCCESS),
        }
    });
    if restart.load(std::sync::atomic::Ordering::SeqCst) && code == ExitCode::SUCCESS {
        return reexec();
    }
    code
}

/// Runs the periodic task scheduler alone (`worker beat`) until a signal stops it: TERM/INT
/// (or HUP, which then re-executes) stop it at once (nothing is half done: each run is
/// recorded before it is sent).
pub async fn run_beat(
    settings: Settings,
    nodename: String,
    entries: celeryd_actors::settings::BeatEntries,
    mut shutdown: mpsc::UnboundedReceiver<ShutdownMode>,
) -> Result<ExitReason, StartupError> {
    let beat = celeryd_actors::beat::Beat::new(std::sync::Arc::new(settings), nodename, entries);
    let (actor, mut handle) = ractor::Actor::spawn(None, beat, ())
        .await
        .map_err(|e| StartupError::from_spawn(&e.to_string()))?;
    tokio::select! {
        mode = shutdown.recv() => {
            tracing::info!("beat: Stopping.");
            actor.stop(Some("shutdown".into()));
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), handle).await;
            Ok(match mode {
                Some(ShutdownMode::Cold) => ExitReason::Cold,
                _ => ExitReason::Warm,
            })
        }
        _ = &mut handle => Err(StartupError::Runtime(
            "the periodic task scheduler stopped (see the log above)".to_owned(),
        )),
    }
}

/// `--workdir`: changes to it before anything else reads a path, as `celery --workdir`
/// does; the app (`-A`) is then imported from it (kept as an absolute path for that).
fn enter_workdir(cli: &mut Cli) -> Result<(), StartupError> {
    let Some(dir) = cli.run.workdir.clone() else {
        return Ok(());
    };
    let abs = std::fs::canonicalize(&dir)
        .map_err(|e| StartupError::Config(format!("--workdir {dir}: {e}")))?;
    std::env::set_current_dir(&abs)
        .map_err(|e| StartupError::Config(format!("--workdir {dir}: {e}")))?;
    cli.run.workdir = Some(abs.display().to_string());
    Ok(())
}

/// The expanded node name (`celery@%h` -> `celery@host`); empty if it cannot be (the
/// supervisor then refuses to start with the reason).
fn node_name(settings: &Settings) -> String {
    let host = celeryd_actors::hostname::this_host();
    celeryd_actors::hostname::expand_nodename(&settings.worker.hostname, &host).unwrap_or_default()
}

/// Settings and child command of a worker with Python tasks.
struct PythonPrepared {
    settings: Settings,
    from_app: std::collections::BTreeMap<String, String>,
    command: ChildCommand,
    unhonoured: Vec<String>,
    /// The app's result backend (`result_backend`, password masked), for the banner.
    result_backend: Option<String>,
    /// The app's configuration as the helper reported it (its `beat_schedule` among it).
    conf: serde_json::Map<String, serde_json::Value>,
}

/// `-A`: starts the helper (the app loaded, or exit 78 with the Python traceback), lays the
/// app's configuration under the file, the environment and the flags, and names the worker
/// settings of the app celeryd does not honour.
async fn prepare_python(
    cli: &Cli,
    settings: &Settings,
    node: &str,
) -> Result<(PythonSetup, PythonPrepared), StartupError> {
    let pinned = settings::broker_above_app(cli.config.as_deref(), &cli.run)?;
    let (mut helper, ready, probe) =
        python::start_helper(settings, node, pinned.as_deref()).await?;
    let layer = appconf::layer(&ready.conf).map_err(StartupError::Config)?;
    let (settings, from_app) = settings::load_over(cli.config.as_deref(), &cli.run, &layer)?;
    // The children (and the helper) publish results and send tasks through the app: it must
    // use the broker the worker consumes from, as `celery -b` makes it (CELERY_BROKER_URL).
    let broker = settings.broker.url.clone();
    let mut command = python::with_broker(probe, &broker);
    let app_broker = layer
        .table
        .get("broker")
        .and_then(|b| b.get("url"))
        .and_then(toml::Value::as_str);
    if pinned.as_deref() != Some(broker.as_str()) && app_broker != Some(broker.as_str()) {
        // The app (in the fork server, or in a fresh helper) read its broker at load: load
        // it again pointed at the worker's.
        drop(helper);
        drop(command);
        let (h, _, c) = python::start_helper(&settings, node, Some(&broker)).await?;
        helper = h;
        command = c;
    }
    let app = settings.python.app.clone().unwrap_or_default();
    tracing::info!(
        "Python app {app}: Celery {}, {} tasks, interpreter {} (pid {}).",
        ready.celery_version,
        ready.tasks.len(),
        command.program.display(),
        ready.pid
    );
    if !layer.unhonoured.is_empty() {
        tracing::warn!(
            "app.conf settings celeryd does not honour (see docs/python.md, \"Switching a Python Celery \
             deployment\"): {}",
            layer.unhonoured.join(", ")
        );
    }
    let setup = PythonSetup {
        helper,
        helper_command: command.clone(),
        tasks: ready.tasks.into_iter().collect(),
        accept: python::accept_content(&ready.conf),
        info: python::inspect_info(&ready.inspect),
    };
    let result_backend = std::env::var("CELERY_RESULT_BACKEND")
        .ok()
        .or_else(|| {
            ready
                .conf
                .get("result_backend")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        })
        .map(|b| celeryd_actors::settings::mask_urls(&b));
    let prepared = PythonPrepared {
        settings,
        from_app,
        command,
        unhonoured: layer.unhonoured,
        result_backend,
        conf: ready.conf.clone(),
    };
    Ok((setup, prepared))
}

/// The stack size given to threads the worker does not create itself (the AMQP client's I/O
/// threads, one per connection), unless `RUST_MIN_STACK` says otherwise: 128 MiB of address
/// space, of which only what is used becomes memory. The AMQP client parses a header frame
/// recursively, about 2.7 KiB of stack per level of nesting, and a 128 KiB frame can nest an
/// array 26,000 levels deep: with the default 2 MiB, one such message (2,000 levels) aborts the
/// whole worker on a stack overflow, and its redelivery again, for ever.
const AMQP_THREAD_STACK: &str = "134217728";

/// Makes threads spawned without an explicit stack size (the AMQP client's) get
/// [`AMQP_THREAD_STACK`]. Runs first thing in [`main_with`].
#[allow(unsafe_code)]
fn deep_thread_stacks() {
    if std::env::var_os("RUST_MIN_STACK").is_none() {
        // SAFETY: called at the very start of `main_with`, before this process has spawned
        // any thread, so nothing can read the environment concurrently. The standard library
        // reads RUST_MIN_STACK when it spawns its first thread.
        unsafe { std::env::set_var("RUST_MIN_STACK", AMQP_THREAD_STACK) };
    }
}

/// Waits for this process's exited children (the old pool, killed at the warm stop) so none is
/// left a zombie: the re-executed image does not know them and would never wait for them.
/// Returns when there is no child left, or after `limit`.
fn reap_children(limit: std::time::Duration) {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let deadline = std::time::Instant::now() + limit;
    loop {
        match waitpid(nix::unistd::Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                if std::time::Instant::now() >= deadline {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(_) => {}       // reaped one; look for the next
            Err(_) => return, // ECHILD: none left
        }
    }
}

fn run_child(registry: &Registry) -> ExitCode {
    set_process_name("celeryd: child");
    let code = celeryd_actors::process::runner::run_child(registry);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Replaces this process with a fresh run of the same command line (same pid; the config file
/// is read again). Only returns if the exec failed.
fn reexec() -> ExitCode {
    use std::os::unix::process::CommandExt;
    reap_children(std::time::Duration::from_secs(5));
    let program = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return fail(&StartupError::Runtime(format!("cannot re-exec: {e}"))),
    };
    let err = std::process::Command::new(program)
        .args(std::env::args_os().skip(1))
        .exec();
    fail(&StartupError::Runtime(format!("cannot re-exec: {err}")))
}

fn with_runtime<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<ExitCode, StartupError>>,
{
    // One worker thread for the actors (tasks run in child processes or on the in-process
    // pool's own runtime, blocking stores on tokio's blocking threads): a task's messages
    // then pass from actor to actor without waking another thread. Against two threads, the
    // `compare` drain spent about a fifth less CPU per task with a third fewer context
    // switches (docs/benchmarks.md).
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        // Deep enough to drop (and look at) the deepest header a 128 KiB frame can carry.
        .thread_stack_size(32 << 20)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(&StartupError::Runtime(format!(
                "cannot start the runtime: {e}"
            )));
        }
    };
    match rt.block_on(f()) {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

fn fail(e: &StartupError) -> ExitCode {
    // Whatever printed a URL (a TOML error quotes the line, a library error its input), its
    // password never reaches the terminal or the journal.
    eprintln!(
        "worker: {}",
        celeryd_actors::settings::mask_urls(&e.to_string())
    );
    ExitCode::from(e.exit_code())
}

/// Sets this process's name as `ps -o comm` and `top` show it (at most 15 bytes).
pub fn set_process_name(name: &str) {
    if let Ok(c) = std::ffi::CString::new(name) {
        let _ = nix::sys::prctl::set_name(&c);
    }
}
