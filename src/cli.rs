//! Command-line interface. Flags mirror Celery's `celery worker` names and override the
//! config file.

use std::path::PathBuf;

use celeryd_actors::settings::{Autoscale, Seconds};
use clap::{Args, Parser, Subcommand};

/// celeryd: a Celery worker written in Rust.
#[derive(Debug, Parser)]
#[command(
    name = "worker",
    version,
    about,
    args_conflicts_with_subcommands = false,
    // A flag given twice takes the last value, as click does for `celery worker`.
    args_override_self = true
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
    /// How many tasks at once (default: number of CPUs): child processes (prefork), tasks in
    /// flight (async, e.g. 1000), threads (threads); `auto`: the CPUs this process may use
    /// (its affinity mask and cgroup quota).
    #[arg(short = 'c', long, value_parser = concurrency)]
    pub concurrency: Option<usize>,
    /// Broker URL (`celery -b`), over the config file and the environment (for `ctl` and
    /// `call` too).
    #[arg(short = 'b', long, global = true, value_name = "URL")]
    pub broker: Option<String>,
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
    /// Hard time limit in seconds for every task (`task_time_limit`): prefork kills the
    /// child, async cancels the future; threads and solo refuse it (a thread cannot be
    /// killed).
    #[arg(long, value_name = "SECONDS", value_parser = duration)]
    pub time_limit: Option<Seconds>,
    /// Soft time limit in seconds for every task (`task_soft_time_limit`).
    #[arg(long, value_name = "SECONDS", value_parser = duration)]
    pub soft_time_limit: Option<Seconds>,
    /// Replace a child process after this many tasks (prefork only: the in-process pools
    /// have no child to replace and refuse it).
    #[arg(long, value_name = "N")]
    pub max_tasks_per_child: Option<u64>,
    /// Replace a child process whose resident memory exceeds this many KiB (prefork only:
    /// the in-process pools share the worker's memory and refuse it).
    #[arg(long, value_name = "KIB")]
    pub max_memory_per_child: Option<u64>,
    /// Keep revoked task ids in this RocksDB directory across restarts (`worker_state_db`;
    /// `%n`, `%h`, `%i`, `%I` expanded).
    #[arg(short = 'S', long, value_name = "PATH")]
    pub statedb: Option<String>,
    /// Ignore every rate limit (`worker_disable_rate_limits`).
    #[arg(long)]
    pub disable_rate_limits: bool,
    /// Send task events (`celery events`, Flower) from the start (`-E`, `--task-events`).
    #[arg(short = 'E', long = "events", visible_alias = "task-events")]
    pub events: bool,
    /// Seconds between worker-heartbeat events (default 2).
    #[arg(long, value_name = "SECONDS", value_parser = duration)]
    pub heartbeat_interval: Option<Seconds>,
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
    #[arg(long, value_name = "MAX,MIN", value_parser = str::parse::<Autoscale>)]
    pub autoscale: Option<Autoscale>,
    /// Run this Python Celery app's tasks, as `celery -A` names it (`proj`,
    /// `proj.celery:app`); its app.conf is honoured under the config file.
    #[arg(short = 'A', long, value_name = "MODULE[:ATTR]")]
    pub app: Option<String>,
    /// With -A: the Python interpreter (default $VIRTUAL_ENV/bin/python, else python3;
    /// `--executable` as Celery spells it).
    #[arg(long, visible_alias = "executable", value_name = "PATH")]
    pub python: Option<String>,
    /// Change to this directory first (as `celery --workdir`); with -A the app is imported
    /// from it.
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// With -A: do not emulate celeryd_init and worker_init in the Python children.
    #[arg(long)]
    pub no_main_signals: bool,
    /// With -A: start each Python child as a fresh interpreter instead of forking it from
    /// a fork server that loaded the app once.
    #[arg(long)]
    pub no_fork_server: bool,
    /// `-O fair` or `default`: celeryd always hands a task to an idle child only (what
    /// Celery's `fair` does), so both mean that.
    #[arg(short = 'O', long = "optimization", value_name = "default|fair",
          value_parser = ["default", "fair"])]
    pub optimization: Option<String>,
    /// Pool (`[worker] pool`): `prefork` (the default, also `processes`): child processes;
    /// `async`: async Rust tasks in the worker process, -c of them in flight (e.g. -c 1000);
    /// `threads`: -c threads; `solo`: one task at a time. In-process pools have no child to
    /// recycle or signal: --max-tasks-per-child, --max-memory-per-child and pool_restart are
    /// refused with them, and threads/solo refuse --time-limit (a thread cannot be killed).
    #[arg(short = 'P', long, value_name = "POOL")]
    pub pool: Option<String>,
    /// With -A: `fork` (the default: children forked from a fork server that loaded the app)
    /// or `spawn` (each a fresh interpreter, as `--no-fork-server`). Rust children are
    /// always fresh processes.
    #[arg(long, value_name = "fork|spawn", value_parser = ["fork", "spawn"])]
    pub pool_start_method: Option<String>,
    /// Do not ask the other workers for their revoked tasks and clock at start.
    #[arg(long)]
    pub without_mingle: bool,
    /// Send no worker-heartbeat events.
    #[arg(long)]
    pub without_heartbeat: bool,
    /// Accepted: celeryd keeps no gossip (it does not follow other workers' events), so
    /// there is nothing to turn off.
    #[arg(long)]
    pub without_gossip: bool,
    /// Delete every waiting message of the consumed queues before consuming (`--discard`).
    #[arg(long, visible_alias = "discard")]
    pub purge: bool,
    /// Start as a background process (after the configuration is checked; use with
    /// --logfile and --pidfile).
    #[arg(short = 'D', long)]
    pub detach: bool,
    /// Drop privileges to this user (name or id) once the log and pid files are open.
    #[arg(long, value_name = "USER")]
    pub uid: Option<String>,
    /// Drop privileges to this group (name or id) once the log and pid files are open.
    #[arg(long, value_name = "GROUP")]
    pub gid: Option<String>,
    /// Create files and directories with this umask (octal, e.g. 027).
    #[arg(long, value_name = "OCTAL")]
    pub umask: Option<String>,
    /// No start-up banner.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Accepted: celeryd's log is never coloured.
    #[arg(short = 'C', long)]
    pub no_color: bool,
    /// With -A: skip Django's checks in the children (sets CELERY_SKIP_CHECKS, as Celery).
    #[arg(long)]
    pub skip_checks: bool,
    /// With -A: the app's result backend (sets CELERY_RESULT_BACKEND for it, as `celery
    /// --result-backend`); for Rust tasks, `[result] backend` (rpc://, redis://, rediss://,
    /// disabled://).
    #[arg(long, value_name = "URL")]
    pub result_backend: Option<String>,
    /// Also run the periodic task scheduler (`[beat]`) in this worker. Several `-B` workers
    /// may run: one publishes (it holds the broker-side lock `[beat] lock`), the others stand
    /// by and take over when it goes.
    #[arg(short = 'B', long)]
    pub beat: bool,
    /// With -B: the schedule database, where each entry's last run is kept (`[beat]
    /// schedule_db`; a RocksDB directory, default `celeryd-beat-schedule`).
    #[arg(
        short = 's',
        long = "schedule",
        visible_alias = "schedule-filename",
        value_name = "PATH"
    )]
    pub schedule: Option<String>,
    /// Refused: celeryd's scheduler keeps its schedule in the config (and the app's
    /// beat_schedule), not in a scheduler class.
    #[arg(long, hide = true)]
    pub scheduler: Option<String>,
    /// `worker_disable_prefetch` (Redis brokers only): fetch a message only while fewer are
    /// held than there are pool processes.
    #[arg(long)]
    pub disable_prefetch: bool,
    /// Refused: see the message.
    #[arg(short = 'I', long, hide = true)]
    pub include: Option<String>,
    /// Refused: see the message.
    #[arg(long, hide = true)]
    pub loader: Option<String>,
}

impl RunArgs {
    /// The first `celery worker` option given that celeryd does not carry out, with why and
    /// what to do instead (exit 64): such a flag is never accepted and ignored.
    pub fn refusal(&self) -> Option<String> {
        if let Some(pool) = &self.pool
            && let Err(why) = celeryd_actors::settings::PoolKind::parse(pool)
        {
            return Some(format!("-P/--pool {pool}: {why}."));
        }
        if let Some(s) = &self.scheduler {
            return Some(format!(
                "--scheduler {s}: celeryd's scheduler runs the entries of [beat.schedule] and the app's beat_schedule, kept in its own database (-s); a scheduler class (django-celery-beat's DatabaseScheduler…) cannot be loaded. Keep `celery beat --scheduler {s}` for a database-driven schedule."
            ));
        }
        if self.include.is_some() {
            return Some(
                "-I/--include: Rust tasks are compiled into the binary, and with -A the children import the app's `imports` and `include` settings as Celery's do: add the modules to app.conf.include (or imports) instead."
                    .to_owned(),
            );
        }
        if self.loader.is_some() {
            return Some(
                "--loader: celeryd loads the app given with -A as Celery's default app loader does; custom loaders are not supported. Leave it out."
                    .to_owned(),
            );
        }
        None
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send a task the way `celery call` does, and optionally wait for its result.
    Call(CallArgs),
    /// Remote control: inspect or control running workers (celeryd or Python Celery), like
    /// `celery inspect`/`celery control`/`celery status`. `worker ctl --help` lists commands.
    Ctl(CtlArgs),
    /// Run only the periodic task scheduler (`celery beat`): the entries of `[beat.schedule]`
    /// (and with -A the app's `beat_schedule`), sent when due. Several may run: one publishes.
    Beat(BeatArgs),
    /// Child-process mode (internal: the worker starts its pool processes this way).
    #[command(hide = true)]
    Child {
        /// The node the child works for (shown by `ps`).
        #[arg(long = "of")]
        of: Option<String>,
    },
}

/// `worker beat` arguments (`celery beat`'s names).
#[derive(Debug, Clone, Default, Args)]
pub struct BeatArgs {
    /// The schedule database (`[beat] schedule_db`).
    #[arg(
        short = 's',
        long = "schedule",
        visible_alias = "schedule-filename",
        value_name = "PATH"
    )]
    pub schedule: Option<String>,
    /// Log level: debug, info, warning, error, critical.
    #[arg(short = 'l', long)]
    pub loglevel: Option<String>,
    /// Write the log to this file.
    #[arg(short = 'f', long, value_name = "FILE")]
    pub logfile: Option<String>,
    /// Write the pid to this file.
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<String>,
    /// The node name the scheduler announces itself with (default `celery@%h`).
    #[arg(short = 'n', long)]
    pub hostname: Option<String>,
    /// Also schedule this Python Celery app's `beat_schedule` (and use its `timezone`).
    #[arg(short = 'A', long, value_name = "MODULE[:ATTR]")]
    pub app: Option<String>,
    /// With -A: the Python interpreter.
    #[arg(long, visible_alias = "executable", value_name = "PATH")]
    pub python: Option<String>,
    /// Change to this directory first; with -A the app is imported from it.
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Refused: see the message.
    #[arg(long, hide = true)]
    pub max_interval: Option<String>,
    /// Refused: see the message.
    #[arg(short = 'S', long, hide = true)]
    pub scheduler: Option<String>,
}

impl BeatArgs {
    /// Why a `celery beat` option given cannot be carried out, if one is.
    pub fn refusal(&self) -> Option<String> {
        if self.max_interval.is_some() {
            return Some(
                "--max-interval: celeryd's scheduler wakes when the next entry is due, not on a polling interval; leave it out."
                    .to_owned(),
            );
        }
        self.scheduler.as_ref().map(|s| {
            format!(
                "-S/--scheduler {s}: celeryd's scheduler runs [beat.schedule] and the app's beat_schedule; a scheduler class cannot be loaded. Keep `celery beat -S {s}` for it."
            )
        })
    }

    /// The worker flags these stand for (the settings are loaded as the worker's are).
    pub fn as_run_args(&self) -> RunArgs {
        RunArgs {
            loglevel: self.loglevel.clone(),
            logfile: self.logfile.clone(),
            pidfile: self.pidfile.clone(),
            hostname: self.hostname.clone(),
            app: self.app.clone(),
            python: self.python.clone(),
            workdir: self.workdir.clone(),
            schedule: self.schedule.clone(),
            ..Default::default()
        }
    }
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

/// Celery's worker options from the environment, as click reads them for `celery worker`:
/// `CELERY_WORKER_<OPTION>` (`CELERY_WORKER_CONCURRENCY=4` = `--concurrency 4`,
/// `CELERY_WORKER_WITHOUT_MINGLE=1` = `--without-mingle`), each only where the command line
/// does not give the option. Returns the command line with them added (so they are checked
/// and refused like flags) and the names of `CELERY_WORKER_*` variables that name no option
/// (Celery ignores them too; the worker logs each).
pub fn with_celery_worker_env(
    argv: impl Iterator<Item = std::ffi::OsString>,
    env: impl Iterator<Item = (String, String)>,
) -> (Vec<std::ffi::OsString>, Vec<String>) {
    use clap::CommandFactory;
    let mut argv: Vec<std::ffi::OsString> = argv.collect();
    let cmd = Cli::command();
    let given = |long: &str| {
        argv.iter().skip(1).any(|a| {
            let a = a.to_string_lossy();
            a == format!("--{long}") || a.starts_with(&format!("--{long}="))
        })
    };
    let mut added = Vec::new();
    let mut unknown = Vec::new();
    let mut vars: Vec<(String, String)> = env
        .filter(|(k, _)| k.starts_with("CELERY_WORKER_"))
        .filter(|(k, _)| crate::settings::celery_variable(k).is_none())
        .collect();
    vars.sort();
    for (name, value) in vars {
        let option = name["CELERY_WORKER_".len()..]
            .to_ascii_lowercase()
            .replace('_', "-");
        let Some(arg) = cmd.get_arguments().find(|a| {
            a.get_long() == Some(option.as_str())
                || a.get_all_aliases()
                    .is_some_and(|v| v.contains(&option.as_str()))
        }) else {
            unknown.push(name);
            continue;
        };
        let long = arg.get_long().unwrap_or(&option).to_owned();
        if arg.get_id() == "config" || given(&long) || given(&option) {
            continue;
        }
        if arg.get_action().takes_values() {
            added.push(format!("--{long}={value}").into());
        } else if matches!(
            value.to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        ) {
            added.push(format!("--{long}").into());
        }
    }
    let at = 1.min(argv.len());
    argv.splice(at..at, added);
    (argv, unknown)
}

/// `-c`: a positive number of child processes, or `auto` (the CPUs this process may run on:
/// its affinity mask and cgroup CPU quota, as Rust's `available_parallelism` reads them).
fn concurrency(text: &str) -> Result<usize, String> {
    if text.trim() == "auto" {
        return Ok(std::thread::available_parallelism().map_or(1, |n| n.get()));
    }
    text.trim()
        .parse::<usize>()
        .map_err(|_| format!("{text:?} is not a number of child processes or `auto`"))
}

/// A number of seconds on the command line: finite, from 0 to a year (a clear error instead of
/// a panic where it becomes a `Duration`).
/// A `--…` number of seconds as a setting's [`Seconds`].
fn duration(text: &str) -> Result<Seconds, String> {
    seconds(text).and_then(Seconds::new)
}

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

    #[test]
    fn celerys_worker_variables_act_as_flags_the_command_line_does_not_give() {
        let argv = ["worker", "-Q", "a", "--loglevel=debug"].map(std::ffi::OsString::from);
        let env = [
            ("CELERY_WORKER_CONCURRENCY", "3"),
            ("CELERY_WORKER_LOGLEVEL", "error"),
            ("CELERY_WORKER_WITHOUT_MINGLE", "true"),
            ("CELERY_WORKER_POOL", "gevent"),
            ("CELERY_WORKER_NOT_AN_OPTION", "x"),
            ("CELERY_WORKER_REVOKES_MAX", "9"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let (argv, unknown) = with_celery_worker_env(argv.into_iter(), env.into_iter());
        assert_eq!(
            unknown,
            ["CELERY_WORKER_NOT_AN_OPTION"],
            "a setting read from the environment is not an unknown option"
        );
        let cli = Cli::try_parse_from(argv).unwrap();
        assert_eq!(cli.run.concurrency, Some(3));
        assert_eq!(cli.run.loglevel.as_deref(), Some("debug"), "the flag wins");
        assert!(cli.run.without_mingle);
        assert!(cli.run.refusal().unwrap().contains("-P/--pool gevent"));
    }

    #[test]
    fn every_refused_flag_says_why_and_what_instead() {
        for args in [
            &[
                "worker",
                "--scheduler",
                "django_celery_beat.schedulers:DatabaseScheduler",
            ][..],
            &["worker", "-I", "a.b"],
            &["worker", "--loader", "x"],
            &["worker", "-P", "eventlet"],
            &["worker", "-P", "greenlets"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            let why = cli.run.refusal().unwrap_or_default();
            assert!(why.contains(';') || why.contains(':'), "{args:?}: {why}");
        }
        for args in [
            &["worker", "-P", "prefork"][..],
            &["worker", "-P", "async", "-c", "1000"],
            &["worker", "-P", "threads"],
            &["worker", "-P", "solo"],
            &["worker", "-P", "processes", "-O", "fair", "-c", "auto"],
            &[
                "worker",
                "--task-events",
                "-S",
                "/tmp/s",
                "-b",
                "amqp://x//",
                "--executable",
                "p",
            ],
            &[
                "worker",
                "--without-gossip",
                "--without-heartbeat",
                "--discard",
            ],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert_eq!(cli.run.refusal(), None, "{args:?}");
        }
        let cli = Cli::try_parse_from(["worker", "-c", "auto"]).unwrap();
        assert!(cli.run.concurrency.unwrap() >= 1);
    }

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
