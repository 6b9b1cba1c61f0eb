//! `[worker]`: node name, pool ([`PoolKind`]) and its size, queues consumed, prefetch, logging,
//! revokes, events; with the parsers of `--autoscale`, time limits and `--metrics-addr`.

use serde::{Deserialize, Serialize};

use super::Seconds;
use crate::error::ConfigError;

/// Which pool runs the tasks (`[worker] pool`, `-P`): Celery's names, read with
/// [`PoolKind::parse`] (so that `gevent` is refused with its reason, naming the key).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum PoolKind {
    /// Child processes, one task at a time each (`prefork`, `processes`).
    #[default]
    Prefork,
    /// Async Rust tasks in the worker process, many in flight (`async`).
    Async,
    /// One task at a time in the worker process (`solo`).
    Solo,
    /// Tasks on threads of the worker process (`threads`).
    Threads,
}

impl PoolKind {
    /// The most tasks at once each pool may be given (`-c`, `pool_grow`, `autoscale`): AMQP's
    /// prefetch count is 16 bits, so an async pool stops there; processes and threads at 1024.
    pub fn max_concurrency(self) -> usize {
        match self {
            PoolKind::Async => 65_535,
            _ => 1024,
        }
    }

    /// Reads a pool name as `celery worker -P` takes it.
    ///
    /// ```
    /// use celeryd_actors::settings::PoolKind;
    /// assert_eq!(PoolKind::parse("processes"), Ok(PoolKind::Prefork));
    /// assert_eq!(PoolKind::parse("async"), Ok(PoolKind::Async));
    /// assert!(PoolKind::parse("gevent").unwrap_err().contains("async"));
    /// ```
    pub fn parse(name: &str) -> Result<PoolKind, String> {
        match name.trim().to_ascii_lowercase().as_str() {
            "prefork" | "processes" => Ok(PoolKind::Prefork),
            "async" => Ok(PoolKind::Async),
            "solo" => Ok(PoolKind::Solo),
            "threads" => Ok(PoolKind::Threads),
            "eventlet" | "gevent" => Err(format!(
                "{name:?}: green threads run Python code; celeryd's async pool (-P async) runs \
                 async Rust tasks the same way (thousands at once, -c 1000). Python tasks (-A) run in the \
                 prefork pool; keep Celery's own worker with -P {name} for queues of I/O-bound \
                 Python tasks"
            )),
            _ => Err(format!(
                "{name:?} is not one of prefork (processes), async, solo, threads"
            )),
        }
    }

    /// Celery's name for it.
    pub fn name(self) -> &'static str {
        match self {
            PoolKind::Prefork => "prefork",
            PoolKind::Async => "async",
            PoolKind::Solo => "solo",
            PoolKind::Threads => "threads",
        }
    }

    /// Whether tasks run inside the worker process (every pool but prefork).
    pub fn in_process(self) -> bool {
        self != PoolKind::Prefork
    }

    /// Whether a running task is on a thread that cannot be stopped (threads, solo).
    pub fn on_threads(self) -> bool {
        matches!(self, PoolKind::Threads | PoolKind::Solo)
    }
}

impl TryFrom<String> for PoolKind {
    type Error = String;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        PoolKind::parse(&name)
    }
}

impl From<PoolKind> for String {
    fn from(pool: PoolKind) -> String {
        pool.name().to_owned()
    }
}

/// `--autoscale max,min`: the bounds of an autoscaled pool, as Celery reads them (`"10,3"`,
/// or `"10"` for a minimum of 0). Whether the maximum fits the pool is checked by
/// `validate` (the cap depends on `worker.pool`).
///
/// ```
/// use celeryd_actors::settings::Autoscale;
/// let a: Autoscale = "10,3".parse().unwrap();
/// assert_eq!((a.max, a.min), (10, 3));
/// assert_eq!(a.to_string(), "10,3");
/// assert!("3,5".parse::<Autoscale>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Autoscale {
    /// The most child processes (threads, tasks in flight).
    pub max: usize,
    /// The fewest, and the number the pool starts with.
    pub min: usize,
}

impl std::str::FromStr for Autoscale {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (max, min) = parse_autoscale(text, usize::MAX)?;
        Ok(Autoscale { max, min })
    }
}

impl TryFrom<String> for Autoscale {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Autoscale> for String {
    fn from(a: Autoscale) -> String {
        a.to_string()
    }
}

impl std::fmt::Display for Autoscale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{}", self.max, self.min)
    }
}

/// `[worker]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Node name (`-n`); `%h` host, `%n` short host, `%d` domain, `%%` a percent sign.
    /// A name without `@` is the host part (`w1` → `celery@w1`). Default `celery@%h`.
    pub hostname: String,
    /// `worker_concurrency` (`-c`): how many tasks run at once: child processes (prefork),
    /// threads (threads), tasks in flight (async, up to 65535); solo runs one. 0 (the
    /// default) = number of CPUs.
    pub concurrency: usize,
    /// `worker_pool` (`-P`): how tasks run. `prefork` (the default; also `processes`): each
    /// task in a child process, one at a time per child, killed at its hard time limit.
    /// `async`: async Rust tasks on a runtime of their own inside the worker process,
    /// `concurrency` of them in flight (sync tasks run on its blocking threads). `threads`:
    /// tasks on `concurrency` threads of the worker process (no hard time limit: a thread
    /// cannot be killed). `solo`: one task at a time in the worker process (debugging).
    pub pool: PoolKind,
    /// Worker threads of the `async` pool's runtime (1 to 64). Async tasks await rather than
    /// compute, and on one thread they run without handing wake-ups between threads (a
    /// task that blocks its thread stalls the others, as a blocking call stalls gevent's
    /// hub; never the consumer or remote control, which run apart). More for async tasks
    /// that compute. Default 1.
    pub async_threads: usize,
    /// `worker_prefetch_multiplier`: prefetch = concurrency × this. Default 4; 0 = unlimited.
    pub prefetch_multiplier: u16,
    /// `worker_disable_prefetch` (`--disable-prefetch`, Redis brokers only, as Celery's): a
    /// message is fetched only while fewer are held than there are pool processes (the
    /// multiplier taken as 1). Default false.
    pub disable_prefetch: bool,
    /// Queues to consume from (`-Q`), by name: a `[[task.queues]]` entry, or (with
    /// `task.create_missing_queues`) a queue declared as Celery declares a plain name (durable,
    /// bound to a durable direct exchange of the same name). Empty (the default): every
    /// `[[task.queues]]` entry, or `task.default_queue` when there are none.
    pub queues: Vec<String>,
    /// `-X/--exclude-queues`: queues not to consume. Empty by default.
    pub exclude_queues: Vec<String>,
    /// Log level: `debug`, `info`, `warning`, `error`, `critical`. Default `info`.
    pub loglevel: String,
    /// `--log-format`: `text` (Celery's layout, the default) or `json` (one object per line).
    pub log_format: String,
    /// `--logfile` (`-f`): write the log to this file (appended; reopened on SIGUSR2 for log
    /// rotation). Unset (the default): stderr.
    pub logfile: Option<String>,
    /// `--pidfile`: write the main process's pid here; a live pid in it refuses the start, a
    /// stale one is replaced. Unset by default.
    pub pidfile: Option<String>,
    /// `worker_max_tasks_per_child`: replace a child process after this many tasks.
    /// 0 (the default) = never.
    pub max_tasks_per_child: u64,
    /// `worker_max_memory_per_child`: replace a child process after its current task when its
    /// resident memory exceeds this many KiB. 0 (the default) = no limit.
    pub max_memory_per_child: u64,
    /// ETA tasks due further off than this many seconds wait in the broker (a delay ladder of
    /// fixed-TTL queues) instead of being held unacked by the worker, so none outlives
    /// RabbitMQ's `consumer_timeout` (30 min by default). 0 = always hold. Default 600.
    pub eta_hold_max: Seconds,
    /// `worker_disable_rate_limits`: ignore every rate limit. Default false.
    pub disable_rate_limits: bool,
    /// `worker_state_db` (`--statedb`): directory of the RocksDB database that keeps revoked
    /// ids across restarts. Unset (the default): revokes are kept in memory only.
    pub statedb: Option<String>,
    /// How many revoked ids are kept (`CELERY_WORKER_REVOKES_MAX`). Default 50000.
    pub revokes_max: usize,
    /// Seconds a revoked id is kept (`CELERY_WORKER_REVOKE_EXPIRES`). Default 10800 (3 h).
    pub revoke_expires: Seconds,
    /// `--autoscale`: `"max,min"` child processes, scaled by load (min defaults to 0). The
    /// pool starts with `min`, grows while more tasks are received than there are children,
    /// and shrinks back `autoscale_keepalive` seconds after the last growth. Unset (the
    /// default): a fixed pool of `concurrency`.
    pub autoscale: Option<Autoscale>,
    /// Seconds after the last scale-up before the autoscaler may shrink the pool
    /// (`AUTOSCALE_KEEPALIVE`). Default 30.
    pub autoscale_keepalive: Seconds,
    /// `worker_pool_restarts`: allow the `pool_restart` control command (replaces every child
    /// process; busy ones after their task). Default false.
    pub pool_restarts: bool,
    /// `worker_send_task_events` (`-E`): send task events from the start (worker events are
    /// always sent; `enable_events`/`disable_events` switch task events at runtime).
    /// Default false.
    pub send_events: bool,
    /// `--heartbeat-interval`: seconds between `worker-heartbeat` events. Default 2.
    pub heartbeat_interval: Seconds,
    /// Send `worker-heartbeat` events (`--without-heartbeat` turns them off). Default true.
    pub heartbeat: bool,
    /// Mingle: at start, ask the other workers for the tasks they hold revoked (and their
    /// logical clock), so that a revoke sent while this worker was down still applies
    /// (`--without-mingle` turns it off). Default true.
    pub mingle: bool,
    /// The largest task message body accepted, in bytes, after decompression: a larger one
    /// (a zlib body that inflates without end, say) is rejected without requeue and logged.
    /// 1024 to 2147483648. Default 67108864 (64 MiB).
    pub max_message_size: usize,
    /// The most child processes `pool_grow` and `autoscale` may ask for (1 to 1024); a request
    /// beyond it gets an error reply. 0 (the default) = four per CPU, and never less than
    /// `concurrency` or the autoscale maximum.
    pub max_pool_size: usize,
    /// `--metrics-addr`: serve Prometheus metrics on `http://ADDR/metrics`, e.g.
    /// `"127.0.0.1:9808"`. Unset (the default): no endpoint.
    pub metrics_addr: Option<String>,
    /// `-B/--beat`: also run the periodic task scheduler (`[beat]`) inside the worker.
    /// Default false.
    pub beat: bool,
    /// `worker_direct`: also consume `<node name>.dq2`, bound to the direct exchange `C.dq2`
    /// with the node name as key, so that a task can be sent to this worker alone (Celery's
    /// `task.apply_async(exchange="C.dq2", routing_key=node)`). Default false.
    pub direct: bool,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            hostname: "celery@%h".to_owned(),
            concurrency: 0,
            pool: PoolKind::Prefork,
            async_threads: 1,
            prefetch_multiplier: 4,
            disable_prefetch: false,
            queues: Vec::new(),
            exclude_queues: Vec::new(),
            loglevel: "info".to_owned(),
            log_format: "text".to_owned(),
            logfile: None,
            pidfile: None,
            max_tasks_per_child: 0,
            max_memory_per_child: 0,
            eta_hold_max: Seconds::whole(600),
            disable_rate_limits: false,
            statedb: None,
            revokes_max: 50_000,
            revoke_expires: Seconds::whole(10_800),
            autoscale: None,
            autoscale_keepalive: Seconds::whole(30),
            pool_restarts: false,
            send_events: false,
            heartbeat_interval: Seconds::whole(2),
            heartbeat: true,
            mingle: true,
            max_message_size: crate::protocol::message::DEFAULT_MAX_BODY,
            max_pool_size: 0,
            metrics_addr: None,
            beat: false,
            direct: false,
        }
    }
}

/// The log levels accepted for `worker.loglevel` (Celery's names, case-insensitive).
pub const LOG_LEVELS: &[&str] = &[
    "debug", "info", "warning", "warn", "error", "critical", "fatal",
];

impl WorkerSettings {
    /// Checks `worker.concurrency` against the pool `worker.pool` names.
    pub(super) fn validate_pool(&self) -> Result<(), ConfigError> {
        let pool = self.pool;
        if self.concurrency > pool.max_concurrency() {
            return Err(ConfigError::invalid(
                "worker.concurrency",
                format!(
                    "must be at most {} for the {} pool",
                    pool.max_concurrency(),
                    pool.name()
                ),
            ));
        }
        Ok(())
    }

    /// Checks `worker.async_threads`.
    pub(super) fn validate_async_threads(&self) -> Result<(), ConfigError> {
        if !(1..=64).contains(&self.async_threads) {
            return Err(ConfigError::invalid(
                "worker.async_threads",
                format!("{} is not from 1 to 64", self.async_threads),
            ));
        }
        Ok(())
    }

    /// Checks `worker.loglevel`, `worker.log_format`, `worker.logfile` and `worker.pidfile`.
    pub(super) fn validate_logging(&self) -> Result<(), ConfigError> {
        if !LOG_LEVELS.contains(&self.loglevel.to_ascii_lowercase().as_str()) {
            return Err(ConfigError::invalid(
                "worker.loglevel",
                format!(
                    "{:?} is not one of {}",
                    self.loglevel,
                    LOG_LEVELS.join(", ")
                ),
            ));
        }
        if !matches!(
            self.log_format.to_ascii_lowercase().as_str(),
            "text" | "json"
        ) {
            return Err(ConfigError::invalid(
                "worker.log_format",
                format!("{:?} is not text or json", self.log_format),
            ));
        }
        for (key, value) in [
            ("worker.logfile", &self.logfile),
            ("worker.pidfile", &self.pidfile),
        ] {
            if value.as_deref().is_some_and(str::is_empty) {
                return Err(ConfigError::invalid(key, "must be a path"));
            }
        }
        Ok(())
    }

    /// Checks the limits, intervals and sizes of the section for `pool`; `own_size` is the
    /// pool's own size (`worker.concurrency` or the autoscale maximum).
    pub(super) fn validate_limits(
        &self,
        pool: PoolKind,
        own_size: usize,
    ) -> Result<(), ConfigError> {
        if self.revokes_max == 0 {
            return Err(ConfigError::invalid(
                "worker.revokes_max",
                "must be at least 1",
            ));
        }
        check_limit(self.revoke_expires.as_secs_f64())
            .map_err(|reason| ConfigError::invalid("worker.revoke_expires", reason))?;
        if let Some(a) = self.autoscale
            && a.max > pool.max_concurrency()
        {
            return Err(ConfigError::invalid(
                "worker.autoscale",
                format!(
                    "max {} must be 1 to {} for the {} pool",
                    a.max,
                    pool.max_concurrency(),
                    pool.name()
                ),
            ));
        }
        if let Some(a) = &self.metrics_addr {
            metrics_socket(a).map_err(|r| ConfigError::invalid("worker.metrics_addr", r))?;
        }
        check_limit(self.heartbeat_interval.as_secs_f64())
            .map_err(|reason| ConfigError::invalid("worker.heartbeat_interval", reason))?;
        if self.heartbeat_interval.as_secs_f64() < 0.1 {
            return Err(ConfigError::invalid(
                "worker.heartbeat_interval",
                format!(
                    "{} s is below the shortest interval, 0.1 s (each heartbeat is a broker publish)",
                    self.heartbeat_interval
                ),
            ));
        }
        if !(1024..=(2usize << 30)).contains(&self.max_message_size) {
            return Err(ConfigError::invalid(
                "worker.max_message_size",
                format!(
                    "{} is not from 1024 to 2147483648 bytes",
                    self.max_message_size
                ),
            ));
        }
        if self.max_pool_size > pool.max_concurrency() {
            return Err(ConfigError::invalid(
                "worker.max_pool_size",
                format!(
                    "must be at most {} for the {} pool (0 = four per CPU)",
                    pool.max_concurrency(),
                    pool.name()
                ),
            ));
        }
        if self.max_pool_size > 0 && self.max_pool_size < own_size {
            return Err(ConfigError::invalid(
                "worker.max_pool_size",
                format!(
                    "{} is below the pool's own size {} (worker.concurrency or the autoscale maximum)",
                    self.max_pool_size, own_size
                ),
            ));
        }
        check_limit(self.autoscale_keepalive.as_secs_f64())
            .map_err(|reason| ConfigError::invalid("worker.autoscale_keepalive", reason))?;
        if self.statedb.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::invalid("worker.statedb", "must be a path"));
        }
        Ok(())
    }

    /// Checks that `worker.hostname` expands.
    pub(super) fn validate_hostname(&self) -> Result<(), ConfigError> {
        crate::hostname::expand_nodename(&self.hostname, "host.example")
            .map_err(|reason| ConfigError::invalid("worker.hostname", reason))?;
        Ok(())
    }
}

/// Parses `--autoscale` as Celery does: `"max,min"` or `"max"` (min 0); max must be at least
/// 1 and at most `cap` (the pool's [`PoolKind::max_concurrency`]), and min at most max.
pub fn parse_autoscale(text: &str, cap: usize) -> Result<(usize, usize), String> {
    let (max, min) = text.split_once(',').unwrap_or((text, ""));
    let num = |s: &str, what: &str| {
        s.trim()
            .parse::<usize>()
            .map_err(|_| format!("{what} {:?} in {text:?} is not a whole number", s.trim()))
    };
    let max = num(max, "max")?;
    let min = if min.trim().is_empty() {
        0
    } else {
        num(min, "min")?
    };
    if max == 0 || max > cap {
        return Err(format!("max in {text:?} must be 1 to {cap}"));
    }
    if min > max {
        return Err(format!("min {min} is above max {max} in {text:?}"));
    }
    Ok((max, min))
}

/// A time limit must be a positive, finite number of seconds (at most a year).
pub fn check_limit(seconds: f64) -> Result<(), String> {
    if seconds.is_finite() && seconds > 0.0 && seconds <= 31_536_000.0 {
        Ok(())
    } else {
        Err(format!("{seconds} is not a positive number of seconds"))
    }
}

/// `worker.metrics_addr` as a socket address: `host:port` (`127.0.0.1:9808`, `[::1]:9808`),
/// or `:port` for every interface, as Prometheus exporters spell it.
///
/// ```
/// use celeryd_actors::settings::metrics_socket;
/// assert_eq!(metrics_socket(":9808").unwrap().to_string(), "0.0.0.0:9808");
/// assert_eq!(metrics_socket("127.0.0.1:1").unwrap().port(), 1);
/// assert!(metrics_socket("everywhere").is_err());
/// ```
pub fn metrics_socket(addr: &str) -> Result<std::net::SocketAddr, String> {
    let full = match addr.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => addr.to_owned(),
    };
    full.parse()
        .map_err(|_| format!("{addr:?} is not an address like 127.0.0.1:9808 or :9808"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    #[test]
    fn metrics_addr_and_heartbeat_are_checked() {
        let mut s = Settings::default();
        s.worker.metrics_addr = Some("127.0.0.1:9808".into());
        s.validate().unwrap();
        s.worker.metrics_addr = Some("everywhere".into());
        assert!(matches!(s.validate(),
            Err(ConfigError::Invalid { key, .. }) if key == "worker.metrics_addr"));
        let mut s = Settings::default();
        s.worker.heartbeat_interval = Seconds::whole(0);
        assert!(matches!(s.validate(),
            Err(ConfigError::Invalid { key, .. }) if key == "worker.heartbeat_interval"));
    }

    #[test]
    fn autoscale_reads_max_then_min_and_sizes_prefetch_by_max() {
        assert_eq!(parse_autoscale("10,3", 1024), Ok((10, 3)));
        assert_eq!(parse_autoscale("4", 1024), Ok((4, 0)));
        assert_eq!(parse_autoscale(" 6 , 2 ", 1024), Ok((6, 2)));
        assert!(
            parse_autoscale("3,5", 1024)
                .unwrap_err()
                .contains("above max")
        );
        assert!(parse_autoscale("0", 1024).is_err());
        assert!(
            parse_autoscale("ten,1", 1024)
                .unwrap_err()
                .contains("\"ten\"")
        );
        let mut s = Settings::default();
        s.worker.autoscale = Some("8,2".parse().unwrap());
        s.worker.prefetch_multiplier = 2;
        assert_eq!(s.effective_concurrency(), 2);
        assert_eq!(s.max_concurrency(), 8);
        assert_eq!(s.prefetch_count(), 16);
        s.worker.autoscale = Some("2000".parse().unwrap());
        assert!(matches!(s.validate(),
            Err(ConfigError::Invalid { key, .. }) if key == "worker.autoscale"));
        s.worker.pool = PoolKind::Async;
        s.validate().unwrap();
        let e = toml::from_str::<Settings>("[worker]\nautoscale = \"2,8\"\n").unwrap_err();
        assert!(
            e.to_string().contains("autoscale") && e.to_string().contains("above max"),
            "{e}"
        );
        let table: toml::Value = toml::from_str("[worker]\npool = \"gevent\"\n").unwrap();
        let e = table.try_into::<Settings>().unwrap_err().to_string();
        assert!(e.contains("worker.pool") && e.contains("-P async"), "{e}");
    }
}
