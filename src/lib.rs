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

pub mod call;
pub mod cli;
pub mod ctl;
pub mod error;
pub mod pidfile;
pub mod settings;
pub mod signals;
pub mod tasks;
pub mod telemetry;

use std::collections::HashMap;
use std::process::ExitCode;

use clap::Parser;
use tokio::sync::mpsc;

use celeryd_actors::child::ChildCommand;
use celeryd_actors::control::custom::ControlCommands;
use celeryd_actors::supervisor::{ExitReason, Supervisor, SupervisorArgs};
use celeryd_actors::task::TaskOptions;
pub use celeryd_actors::{Registry, Settings, ShutdownMode};

use crate::cli::{Cli, Command};
pub use crate::error::StartupError;

/// Runs the worker until it is shut down through `shutdown` (or fails).
pub async fn run(
    settings: Settings,
    tasks: HashMap<String, TaskOptions>,
    commands: ControlCommands,
    child_command: ChildCommand,
    mut shutdown: mpsc::UnboundedReceiver<ShutdownMode>,
) -> Result<ExitReason, StartupError> {
    let host = celeryd_actors::hostname::this_host();
    let hostname = celeryd_actors::hostname::expand_nodename(&settings.worker.hostname, &host)
        .map_err(|e| StartupError::Config(format!("worker.hostname: {e}")))?;
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel();
    let args = SupervisorArgs {
        settings,
        hostname,
        tasks,
        commands,
        child_command,
        exit: exit_tx,
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
        ExitReason::Failed(why) if why.contains("broker") || why.contains("clashes") => {
            Err(StartupError::Broker(why))
        }
        ExitReason::Failed(why) => Err(StartupError::Runtime(why)),
        other => Ok(other),
    }
}

/// The whole program: parses the command line and runs the worker, `call`, or child mode,
/// with `registry` as the task registry. Call it from your own `main`.
pub fn main_with(registry: Registry) -> ExitCode {
    // A pool process (started by the worker as `worker child --of NODE`) goes straight to its
    // loop: building the whole command-line parser would only leave its memory behind in
    // every child.
    if std::env::args_os().nth(1).is_some_and(|a| a == "child") {
        return run_child(&registry);
    }
    let cli = Cli::parse();
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
        None => {}
    }
    let settings = match settings::load(cli.config.as_deref(), &cli.run) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    if cli.print_config {
        print!("{}", settings::render(&settings));
        return ExitCode::SUCCESS;
    }
    let sink = match telemetry::LogSink::new(settings.worker.logfile.as_ref().map(Into::into)) {
        Ok(s) => s,
        Err(e) => return fail(&StartupError::Config(e)),
    };
    let format = telemetry::LogFormat::parse(&settings.worker.log_format)
        .unwrap_or(telemetry::LogFormat::Text);
    telemetry::init(&settings.worker.loglevel, format, sink.clone());
    let _pidfile =
        match settings.worker.pidfile.as_deref().map(|p| {
            pidfile::Pidfile::acquire(std::path::Path::new(p)).map_err(StartupError::Pidfile)
        }) {
            Some(Err(e)) => return fail(&e),
            Some(Ok(p)) => Some(p),
            None => None,
        };
    set_process_name("celeryd: main");
    let host = celeryd_actors::hostname::this_host();
    let node = celeryd_actors::hostname::expand_nodename(&settings.worker.hostname, &host)
        .unwrap_or_default();
    let child_command = match std::env::current_exe() {
        // `ps` shows which node a child belongs to: `worker child --of w1@host`.
        Ok(program) => ChildCommand {
            program,
            args: vec!["child".to_owned(), "--of".to_owned(), node],
        },
        Err(e) => {
            return fail(&StartupError::Runtime(format!(
                "cannot find own executable: {e}"
            )));
        }
    };
    let tasks = registry.options();
    let commands = registry.control_commands().clone();
    let restart = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let restart_requested = restart.clone();
    let code = with_runtime(|| async move {
        let mut requests = signals::listen().map_err(|e| StartupError::Runtime(e.to_string()))?;
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
        match run(settings, tasks, commands, child_command, shutdown).await? {
            ExitReason::Cold => Ok(ExitCode::from(1)),
            _ => Ok(ExitCode::SUCCESS),
        }
    });
    if restart.load(std::sync::atomic::Ordering::SeqCst) && code == ExitCode::SUCCESS {
        return reexec();
    }
    code
}

fn run_child(registry: &Registry) -> ExitCode {
    set_process_name("celeryd: child");
    let code = celeryd_actors::child::runner::run_child(registry);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Replaces this process with a fresh run of the same command line (same pid; the config file
/// is read again). Only returns if the exec failed.
fn reexec() -> ExitCode {
    use std::os::unix::process::CommandExt;
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
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
    eprintln!("worker: {e}");
    ExitCode::from(e.exit_code())
}

/// Sets this process's name as `ps -o comm` and `top` show it (at most 15 bytes).
pub fn set_process_name(name: &str) {
    if let Ok(c) = std::ffi::CString::new(name) {
        let _ = nix::sys::prctl::set_name(&c);
    }
}
