//! Command-line interface. Flags mirror Celery's `celery worker` names and override the
//! config file.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// celeryd: a Celery worker written in Rust.
#[derive(Debug, Parser)]
#[command(
    name = "worker",
    version,
    about,
    args_conflicts_with_subcommands = false
)]
pub struct Cli {
    /// TOML config file (see config/worker.toml for every key).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (file, `CELERYD_<SECTION>_<KEY>` environment
    /// variables and flags; password masked) as TOML, and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Worker options (when no subcommand is given, the worker runs).
    #[command(flatten)]
    pub run: RunArgs,

    /// What to do instead of running the worker.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Flags that override `[worker]` settings.
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// Log level: debug, info, warning, error, critical.
    #[arg(short = 'l', long)]
    pub loglevel: Option<String>,
    /// Number of child processes (default: number of CPUs).
    #[arg(short = 'c', long)]
    pub concurrency: Option<usize>,
    /// Node name, e.g. `w1@%h` (default `celery@%h`).
    #[arg(short = 'n', long)]
    pub hostname: Option<String>,
    /// Comma-separated queues to consume from (default: every `[[task.queues]]` entry, else
    /// `celery`).
    #[arg(short = 'Q', long)]
    pub queues: Option<String>,
    /// Comma-separated queues not to consume (`-X`, as `celery worker --exclude-queues`).
    #[arg(short = 'X', long)]
    pub exclude_queues: Option<String>,
    /// Prefetch = concurrency × this (default 4).
    #[arg(long)]
    pub prefetch_multiplier: Option<u16>,
    /// Hard time limit in seconds for every task (`task_time_limit`).
    #[arg(long, value_name = "SECONDS")]
    pub time_limit: Option<f64>,
    /// Soft time limit in seconds for every task (`task_soft_time_limit`).
    #[arg(long, value_name = "SECONDS")]
    pub soft_time_limit: Option<f64>,
    /// Replace a child process after this many tasks.
    #[arg(long, value_name = "N")]
    pub max_tasks_per_child: Option<u64>,
    /// Replace a child process whose resident memory exceeds this many KiB.
    #[arg(long, value_name = "KIB")]
    pub max_memory_per_child: Option<u64>,
    /// Keep revoked task ids in this RocksDB directory across restarts (`worker_state_db`).
    #[arg(long, value_name = "PATH")]
    pub statedb: Option<String>,
    /// Ignore every rate limit (`worker_disable_rate_limits`).
    #[arg(long)]
    pub disable_rate_limits: bool,
    /// Send task events (`celery events`, Flower) from the start (`-E`).
    #[arg(short = 'E', long = "events")]
    pub events: bool,
    /// Seconds between worker-heartbeat events (default 2).
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    pub heartbeat_interval: Option<f64>,
    /// Log line format: text (Celery's layout) or json.
    #[arg(long, value_name = "text|json")]
    pub log_format: Option<String>,
    /// Write the log to this file (reopened on SIGUSR2, for log rotation).
    #[arg(short = 'f', long, value_name = "FILE")]
    pub logfile: Option<String>,
    /// Write the main process's pid to this file (refuses to start over a live one).
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<String>,
    /// Serve Prometheus metrics on http://ADDR/metrics, e.g. `127.0.0.1:9808`.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// Scale the pool by load between min and max child processes, e.g. `10,3`.
    #[arg(long, value_name = "MAX,MIN")]
    pub autoscale: Option<String>,
    /// Run this Python Celery app's tasks, as `celery -A` names it (`proj`,
    /// `proj.celery:app`); its app.conf is honoured under the config file.
    #[arg(short = 'A', long, value_name = "MODULE[:ATTR]")]
    pub app: Option<String>,
    /// With -A: the Python interpreter (default $VIRTUAL_ENV/bin/python, else python3).
    #[arg(long, value_name = "PATH")]
    pub python: Option<String>,
    /// With -A: the directory the app is imported from (default: the current one).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// With -A: do not emulate celeryd_init and worker_init in the Python children.
    #[arg(long)]
    pub no_main_signals: bool,
    /// With -A: start each Python child as a fresh interpreter instead of forking it from
    /// a fork server that loaded the app once.
    #[arg(long)]
    pub no_fork_server: bool,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send a task the way `celery call` does, and optionally wait for its result.
    Call(CallArgs),
    /// Remote control: inspect or control running workers (celeryd or Python Celery), like
    /// `celery inspect`/`celery control`/`celery status`. `worker ctl --help` lists commands.
    Ctl(CtlArgs),
    /// Child-process mode (internal: the worker starts its pool processes this way).
    #[command(hide = true)]
    Child {
        /// The node the child works for (shown by `ps`).
        #[arg(long = "of")]
        of: Option<String>,
    },
}

/// `worker call` arguments.
#[derive(Debug, Clone, Args)]
pub struct CallArgs {
    /// Task name, e.g. `tasks.add`.
    pub name: String,
    /// Positional arguments, each a JSON value (a word that is not JSON is taken as a string).
    pub args: Vec<String>,
    /// Keyword arguments as a JSON object.
    #[arg(long, value_name = "JSON")]
    pub kwargs: Option<String>,
    /// Run no earlier than this many seconds from now.
    #[arg(long, value_name = "SECONDS")]
    pub countdown: Option<f64>,
    /// Run no earlier than this ISO-8601 time.
    #[arg(long, value_name = "ISO")]
    pub eta: Option<String>,
    /// Discard the task if not started within this many seconds (or by this ISO-8601 time).
    #[arg(long, value_name = "SECONDS|ISO")]
    pub expires: Option<String>,
    /// Queue to send to (default: the first configured queue).
    #[arg(short = 'Q', long)]
    pub queue: Option<String>,
    /// Wait for the result and print it; exit 1 if the task failed.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds (exit 2).
    #[arg(long, default_value_t = 60.0, value_parser = seconds)]
    pub timeout: f64,
}

/// `worker ctl` arguments.
#[derive(Debug, Clone, Args)]
#[command(after_help = ctl_commands_help())]
pub struct CtlArgs {
    /// The command: `status`, `broadcast`, or one of the commands listed below.
    pub command: String,
    /// The command's arguments (see its signature below).
    pub args: Vec<String>,
    /// Comma-separated node names to send to (default: every node).
    #[arg(short = 'd', long, value_delimiter = ',')]
    pub destination: Vec<String>,
    /// Seconds to wait for a further reply.
    #[arg(short = 't', long, default_value_t = 1.0, value_parser = seconds)]
    pub timeout: f64,
    /// Stop after this many replies (default: the number of destinations, else no limit).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print the replies as JSON (the merged dict for inspect commands, the list for control).
    #[arg(short = 'j', long)]
    pub json: bool,
    /// Send only to nodes whose name matches this pattern.
    #[arg(long)]
    pub pattern: Option<String>,
    /// How --pattern matches: glob (default) or pcre.
    #[arg(long, requires = "pattern")]
    pub matcher: Option<String>,
    /// broadcast: the method's arguments as a JSON object.
    #[arg(long, value_name = "JSON")]
    pub arguments: Option<String>,
    /// broadcast: send without waiting for replies.
    #[arg(long)]
    pub no_reply: bool,
    /// revoke, revoke_by_stamped_headers: also terminate the running tasks.
    #[arg(long)]
    pub terminate: bool,
    /// revoke, revoke_by_stamped_headers: the signal for --terminate (default SIGTERM).
    #[arg(long, value_name = "SIGNAL")]
    pub signal: Option<String>,
}

fn ctl_commands_help() -> String {
    let mut out = String::from(
        "Commands:\n  status  Which workers are online.\n  broadcast <method> [--arguments JSON] \
         [--no-reply]  Any method, e.g. an application's own command.\n",
    );
    for c in crate::ctl::spec::COMMANDS {
        let kind = match c.kind {
            crate::ctl::spec::Kind::Inspect => "inspect",
            crate::ctl::spec::Kind::Control => "control",
        };
        out.push_str(&format!(
            "  {} {}  ({kind}) {}\n",
            c.name, c.signature, c.help
        ));
    }
    out
}

/// A number of seconds on the command line: finite, from 0 to a year (a clear error instead of
/// a panic where it becomes a `Duration`).
fn seconds(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=31_536_000.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{text:?} is not a number of seconds from 0 to 31536000"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The systemd units' command lines are ones this CLI accepts.
    #[test]
    fn systemd_units_start_the_worker_with_valid_flags() {
        for unit in [
            include_str!("../config/celeryd.service"),
            include_str!("../config/celeryd@.service"),
        ] {
            let line = unit
                .lines()
                .find_map(|l| l.strip_prefix("ExecStart="))
                .expect("an ExecStart line");
            let words = line.replace("%i", "w1").replace("%H", "host.example");
            let cli = Cli::try_parse_from(words.split_whitespace()).unwrap();
            assert!(cli.command.is_none());
            assert!(cli.run.pidfile.is_some());
        }
    }
}
