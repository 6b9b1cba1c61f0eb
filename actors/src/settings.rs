//! Settings types, one section per concern. Keys reuse Celery's setting names minus the prefix
//! that the section supplies (`[broker] url` is `broker_url`, `[task] acks_late` is
//! `task_acks_late`). Loading (file, CLI) happens in the root crate; validation happens here.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

pub mod queues;

pub use queues::{BindingSpec, QueueSpec};

/// Every setting of a worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `[broker]`: where the messages come from.
    pub broker: BrokerSettings,
    /// `[worker]`: node name, pool size, queues, prefetch, logging.
    pub worker: WorkerSettings,
    /// `[task]`: acknowledgement and result behaviour of tasks.
    pub task: TaskSettings,
    /// `[python]`: run a Python Celery app's own tasks (`-A`).
    pub python: PythonSettings,
    /// `[result]`: where Rust tasks' results go.
    pub result: ResultSettings,
    /// `[beat]`: the periodic task scheduler (`-B`, `worker beat`) and its entries.
    pub beat: BeatSettings,
}

/// `[beat]` section: the periodic task scheduler, run inside the worker with `-B` (`[worker]
/// beat`) or alone with `worker beat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BeatSettings {
    /// `-s/--schedule`: the RocksDB directory that keeps each entry's last run, so that a
    /// restart neither runs an entry twice nor skips it (`%n`, `%h`… expanded). Default
    /// `celeryd-beat-schedule` (in the working directory, as Celery's `celerybeat-schedule`).
    pub schedule_db: String,
    /// Celery's `timezone`: the time zone crontab entries are read in (an IANA name).
    /// Default `UTC`.
    pub timezone: String,
    /// The exclusive queue whose owner is the one scheduler that publishes: several `-B`
    /// workers may run, and the others stand by until its connection goes. Schedulers of
    /// different schedules on one vhost need different names. Default `celeryd.beat`.
    pub lock: String,
    /// Seconds between a standing-by scheduler's attempts to take the lock. Default 1.
    pub lock_retry: f64,
    /// The entries, `[beat.schedule.<name>]` (Celery's `beat_schedule`). With `-A` the app's
    /// `beat_schedule` entries are added (these win on the same name).
    pub schedule: std::collections::BTreeMap<String, BeatEntry>,
}

impl Default for BeatSettings {
    fn default() -> Self {
        BeatSettings {
            schedule_db: "celeryd-beat-schedule".to_owned(),
            timezone: "UTC".to_owned(),
            lock: "celeryd.beat".to_owned(),
            lock_retry: 1.0,
            schedule: std::collections::BTreeMap::new(),
        }
    }
}

/// Named entries (the app's `beat_schedule`, say), in order.
pub type BeatEntries = Vec<(String, BeatEntry)>;

/// One periodic task, `[beat.schedule.<name>]`: what to send and when.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BeatEntry {
    /// The task's registered name.
    pub task: String,
    /// Run every this many seconds (Celery's `timedelta` or number schedule).
    pub every: Option<f64>,
    /// Or on this crontab: `"minute hour day_of_month month_of_year day_of_week"`.
    pub crontab: Option<String>,
    /// Positional arguments.
    pub args: Vec<serde_json::Value>,
    /// Keyword arguments.
    pub kwargs: serde_json::Map<String, serde_json::Value>,
    /// How to send it.
    pub options: BeatOptions,
}

/// An entry's `options`: where its message goes and what it carries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BeatOptions {
    /// The queue (through the default exchange). Default: `task.default_queue`.
    pub queue: Option<String>,
    /// The exchange (with `routing_key`).
    pub exchange: Option<String>,
    /// The routing key.
    pub routing_key: Option<String>,
    /// Message priority, 0–255.
    pub priority: Option<u8>,
    /// Seconds after sending when the task expires (not run if not started by then).
    pub expires: Option<f64>,
}

/// `[result]` section: the result backend of Rust tasks (a Python app's tasks use the app's
/// own `result_backend`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResultSettings {
    /// `result_backend`: `rpc://` (results sent to the client's reply queue, the default),
    /// `redis://[:password@]host[:port][/db]` or `rediss://…` (stored as Celery's Redis
    /// backend stores them, with chords), or `disabled://` (none).
    pub backend: String,
    /// `result_expires`: seconds a stored result is kept (Redis). Default 86400 (1 day);
    /// 0 keeps them for ever.
    pub expires: f64,
    /// `result_extended`: store the task's name, args, kwargs, worker, retries and queue with
    /// its result (Redis). Default false.
    pub extended: bool,
    /// `result_chord_ordered` (Celery's `result_backend_transport_options`): keep a chord's
    /// header results in header order (a sorted set) rather than arrival order (a list).
    /// Default true, as Celery 5.7. Every worker of one chord must agree.
    pub chord_ordered: bool,
}

impl Default for ResultSettings {
    fn default() -> Self {
        ResultSettings {
            backend: "rpc://".to_owned(),
            expires: 86_400.0,
            extended: false,
            chord_ordered: true,
        }
    }
}

/// Which result backend `[result] backend` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendKind {
    /// Replies to the client's queue.
    Rpc,
    /// Celery's Redis backend at this URL.
    Redis(String),
    /// No results at all.
    Disabled,
}

impl ResultSettings {
    /// The backend named, or why the URL names none celeryd has.
    pub fn kind(&self) -> Result<BackendKind, ConfigError> {
        let url = self.backend.trim();
        let scheme = url.split_once("://").map_or(url, |(s, _)| s);
        match scheme {
            "rpc" => Ok(BackendKind::Rpc),
            "" | "disabled" => Ok(BackendKind::Disabled),
            "redis" | "rediss" => {
                redis::Client::open(url).map_err(|e| {
                    ConfigError::invalid(
                        "result.backend",
                        format!("cannot use {:?}: {e}", mask_password(url)),
                    )
                })?;
                Ok(BackendKind::Redis(url.to_owned()))
            }
            other => Err(ConfigError::invalid(
                "result.backend",
                format!(
                    "{:?}: Rust tasks store results over rpc://, redis:// or rediss:// (or \
                     disabled://); the {other} backend is not there. With -A, the app's own \
                     result_backend is used whatever it is.",
                    mask_password(url)
                ),
            )),
        }
    }
}

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

/// `[broker]` section.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// `broker_url`: `amqp://user:password@host:port/vhost` or `amqps://…` (kombu's
    /// `pyamqp://` too); several for failover, separated by `;` or as a TOML array.
    /// Default `amqp://guest:guest@127.0.0.1:5672//`.
    #[serde(deserialize_with = "url_or_list")]
    pub url: String,
    /// `broker_failover_strategy`: the order the URLs are tried in, `round-robin` (the
    /// default: as written, from the one last connected to) or `shuffle` (an order drawn once
    /// per process).
    pub failover_strategy: String,
    /// `broker_heartbeat`: AMQP heartbeat in seconds, 0 disables. Default 120.
    pub heartbeat: u16,
    /// `broker_connection_retry_on_startup`: keep retrying when the broker is unreachable at
    /// start. Default true.
    pub connection_retry_on_startup: bool,
    /// `broker_connection_max_retries`: attempts before giving up (0 = forever). Default 100.
    pub connection_max_retries: u32,
    /// How the prefetch limit applies: `global` (to the whole channel, as Celery does on
    /// RabbitMQ 3.x: the limit can then be raised while consuming, which holding ETA tasks
    /// needs), `per-consumer` (what quorum queues and RabbitMQ 4.x take), or `auto` (the
    /// default): per-consumer when any configured queue is a quorum queue, as Celery detects
    /// it, or when the worker consumes one queue only (the window is the same, and RabbitMQ
    /// spends less per delivery: no channel-wide limiter to consult); else global, so that
    /// several classic queues share one window as with Celery on 3.x.
    pub qos: String,
    /// The older spelling of `qos`: true = `global`, false = `per-consumer`. Unset by default.
    pub global_qos: Option<bool>,
    /// `broker_native_delayed_delivery_queue_type`: the type of the queues of Celery's
    /// native delayed delivery (`celery_delayed_0…27`), which the worker declares when any of
    /// its queues is a quorum queue. `quorum` (the default) or `classic`.
    pub native_delayed_delivery_queue_type: String,
    /// Largest AMQP frame in bytes (4096 to 131072); bigger messages are split into frames.
    /// The AMQP client keeps two buffers of 32 frames per connection, so this sizes the
    /// worker's memory: 16384 (the default) costs 1 MiB per connection instead of the 8 MiB
    /// of RabbitMQ's own 131072, for the same throughput on task-sized messages.
    pub frame_max: u32,
    /// `broker_use_ssl = {"ca_certs": …}`: a PEM file of the certificate authorities to
    /// trust for an `amqps://` broker (e.g. a self-signed one), besides the system's.
    /// Unset by default.
    pub ssl_ca_file: Option<String>,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            url: "amqp://guest:guest@127.0.0.1:5672//".to_owned(),
            failover_strategy: "round-robin".to_owned(),
            heartbeat: 120,
            connection_retry_on_startup: true,
            connection_max_retries: 100,
            qos: "auto".to_owned(),
            global_qos: None,
            native_delayed_delivery_queue_type: "quorum".to_owned(),
            frame_max: 16_384,
            ssl_ca_file: None,
        }
    }
}

impl std::fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSettings")
            .field("url", &self.safe_url())
            .field("heartbeat", &self.heartbeat)
            .field(
                "connection_retry_on_startup",
                &self.connection_retry_on_startup,
            )
            .field("connection_max_retries", &self.connection_max_retries)
            .field("qos", &self.qos)
            .field("global_qos", &self.global_qos)
            .finish()
    }
}

impl BrokerSettings {
    /// The URL with the password replaced by `********`, for logs and replies.
    pub fn safe_url(&self) -> String {
        mask_password(&self.url)
    }

    /// The broker URLs (one, or the failover list), kombu's scheme aliases spelt as AMQP's.
    pub fn urls(&self) -> Vec<String> {
        self.url
            .split(';')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(amqp_scheme)
            .collect()
    }
}

/// `pyamqp://`, `librabbitmq://` (kombu's AMQP transports) as `amqp://`; `pyamqps://` as
/// `amqps://`.
pub fn amqp_scheme(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
            "pyamqp" | "librabbitmq" => format!("amqp://{rest}"),
            "pyamqps" => format!("amqps://{rest}"),
            _ => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// `broker.url` as one string (`a;b`) or a TOML array of them.
fn url_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Url {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Url::deserialize(d)? {
        Url::One(s) => s,
        Url::Many(list) => list.join(";"),
    })
}

/// Replaces the password of a `scheme://user:password@host…` URL with `********`; each URL of
/// a `;`-separated failover list is masked. Also for text that does not parse as a URL (a
/// typo in it is exactly when it gets printed): whatever stands between the user name's `:`
/// and the last `@` is masked.
///
/// ```
/// use celeryd_actors::settings::mask_password;
/// assert_eq!(mask_password("amqp://u:pw@h//"), "amqp://u:********@h//");
/// assert_eq!(mask_password("amqp:/u:pw@h"), "amqp:/u:********@h");
/// assert_eq!(mask_password("amqp://a:1@h1;amqp://b:2@h2"), "amqp://a:********@h1;amqp://b:********@h2");
/// ```
pub fn mask_password(url: &str) -> String {
    url.split(';').map(mask_one).collect::<Vec<_>>().join(";")
}

fn mask_one(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_owned();
    };
    let head = &url[..at];
    // Where the user name starts: after a leading `scheme:` and its slashes (`amqp://`, or
    // an `amqp:/` typo), else at once (then a bare `scheme:` counts as the user name, and all
    // after it is masked). A `://` inside the password is not a scheme.
    let is_scheme = |t: &str| {
        t.starts_with(|c: char| c.is_ascii_alphabetic())
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
    };
    let start = match head.find(":/") {
        Some(i) if is_scheme(&head[..i]) => {
            let rest = &head[i + 1..];
            i + 1 + rest.len() - rest.trim_start_matches('/').len()
        }
        _ => 0,
    };
    let colon = head[start..].find(':').map(|c| start + c);
    match colon {
        Some(c) => format!("{}:********{}", &url[..c], &url[at..]),
        None => url.to_owned(),
    }
}

/// Masks the password of every `scheme://user:password@` URL inside free text (an error
/// message from a library, say), as [`mask_password`] does for one URL.
///
/// ```
/// use celeryd_actors::settings::mask_urls;
/// assert_eq!(
///     mask_urls("cannot parse \"amqp://guest:s3cret@host:99999//\": bad port"),
///     "cannot parse \"amqp://guest:********@host:99999//\": bad port"
/// );
/// ```
pub fn mask_urls(text: &str) -> String {
    static URL: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    let re = URL.get_or_init(|| {
        regex::Regex::new(r#"([A-Za-z][A-Za-z0-9+.-]*:/+[^\s"'/:@;]*:)[^\s"';]*@"#).ok()
    });
    match re {
        Some(re) => re.replace_all(text, "${1}********@").into_owned(),
        None => text.to_owned(),
    }
}

/// Which pool runs the tasks (`[worker] pool`, `-P`): Celery's names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
    pub pool: String,
    /// Worker threads of the `async` pool's runtime (1 to 64). Async tasks await rather than
    /// compute, and on one thread they run without handing wake-ups between threads (a
    /// task that blocks its thread stalls the others, as a blocking call stalls gevent's
    /// hub; never the consumer or remote control, which run apart). More for async tasks
    /// that compute. Default 1.
    pub async_threads: usize,
    /// `worker_prefetch_multiplier`: prefetch = concurrency × this. Default 4; 0 = unlimited.
    pub prefetch_multiplier: u16,
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
    pub eta_hold_max: f64,
    /// `worker_disable_rate_limits`: ignore every rate limit. Default false.
    pub disable_rate_limits: bool,
    /// `worker_state_db` (`--statedb`): directory of the RocksDB database that keeps revoked
    /// ids across restarts. Unset (the default): revokes are kept in memory only.
    pub statedb: Option<String>,
    /// How many revoked ids are kept (`CELERY_WORKER_REVOKES_MAX`). Default 50000.
    pub revokes_max: usize,
    /// Seconds a revoked id is kept (`CELERY_WORKER_REVOKE_EXPIRES`). Default 10800 (3 h).
    pub revoke_expires: f64,
    /// `--autoscale`: `"max,min"` child processes, scaled by load (min defaults to 0). The
    /// pool starts with `min`, grows while more tasks are received than there are children,
    /// and shrinks back `autoscale_keepalive` seconds after the last growth. Unset (the
    /// default): a fixed pool of `concurrency`.
    pub autoscale: Option<String>,
    /// Seconds after the last scale-up before the autoscaler may shrink the pool
    /// (`AUTOSCALE_KEEPALIVE`). Default 30.
    pub autoscale_keepalive: f64,
    /// `worker_pool_restarts`: allow the `pool_restart` control command (replaces every child
    /// process; busy ones after their task). Default false.
    pub pool_restarts: bool,
    /// `worker_send_task_events` (`-E`): send task events from the start (worker events are
    /// always sent; `enable_events`/`disable_events` switch task events at runtime).
    /// Default false.
    pub send_events: bool,
    /// `--heartbeat-interval`: seconds between `worker-heartbeat` events. Default 2.
    pub heartbeat_interval: f64,
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
            pool: "prefork".to_owned(),
            async_threads: 1,
            prefetch_multiplier: 4,
            queues: Vec::new(),
            exclude_queues: Vec::new(),
            loglevel: "info".to_owned(),
            log_format: "text".to_owned(),
            logfile: None,
            pidfile: None,
            max_tasks_per_child: 0,
            max_memory_per_child: 0,
            eta_hold_max: 600.0,
            disable_rate_limits: false,
            statedb: None,
            revokes_max: 50_000,
            revoke_expires: 10_800.0,
            autoscale: None,
            autoscale_keepalive: 30.0,
            pool_restarts: false,
            send_events: false,
            heartbeat_interval: 2.0,
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

/// `[task]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskSettings {
    /// `task_acks_late`: ack after the task finished instead of when it starts. Default false.
    pub acks_late: bool,
    /// `task_track_started`: publish a STARTED result when a child starts the task.
    /// Default false.
    pub track_started: bool,
    /// `task_ignore_result`: publish no results (unless the message asks). Default false.
    pub ignore_result: bool,
    /// `task_store_errors_even_if_ignored`: store failures of tasks whose result is ignored.
    /// Default false.
    pub store_errors_even_if_ignored: bool,
    /// `task_acks_on_failure_or_timeout`: with acks_late, ack failed and timed-out tasks
    /// (else requeue them). Default true.
    pub acks_on_failure_or_timeout: bool,
    /// `task_reject_on_worker_lost`: with acks_late, requeue a task whose child died.
    /// Default false.
    pub reject_on_worker_lost: bool,
    /// `task_time_limit`: hard time limit in seconds for every task (the task's own limit and
    /// the message's `timelimit` header take precedence). Unset by default.
    pub time_limit: Option<f64>,
    /// `task_soft_time_limit`: soft time limit in seconds. Unset by default.
    pub soft_time_limit: Option<f64>,
    /// `task_default_rate_limit`: rate limit for every task (`"10/s"`, `"200/m"`, `"100/h"`, a
    /// bare number = per second). Unset by default.
    pub default_rate_limit: Option<String>,
    /// Per-task rate limits, `"task.name" = "10/s"` (what Celery sets through
    /// `task_annotations`). They override the task's own and the default. Empty by default.
    pub rate_limits: std::collections::BTreeMap<String, String>,
    /// `task_queues`: `[[task.queues]]` entries (name, exchange, exchange_type, routing_key,
    /// queue_arguments, bindings). Empty by default: the default queue only.
    pub queues: Vec<QueueSpec>,
    /// `task_default_queue`: the queue consumed when no queue is declared or named. Default
    /// `celery`.
    pub default_queue: String,
    /// `task_default_queue_type`: `classic` (the default) or `quorum`, for the default queue.
    pub default_queue_type: String,
    /// `task_default_exchange`: the default queue's exchange, and that of entries without
    /// one. Unset (the default): the queue's name.
    pub default_exchange: Option<String>,
    /// `task_default_exchange_type`: of entries without one. Default `direct`.
    pub default_exchange_type: String,
    /// `task_default_routing_key`: the default queue's binding key, and that of entries
    /// without one. Unset (the default): the queue's name.
    pub default_routing_key: Option<String>,
    /// `task_create_missing_queues`: a `-Q` name with no entry is declared as a plain queue.
    /// Default true; false refuses it.
    pub create_missing_queues: bool,
    /// `task_create_missing_queue_type`: `classic` (the default) or `quorum`, for those.
    pub create_missing_queue_type: String,
    /// `task_create_missing_queue_exchange_type`: their exchange's type. Unset (the
    /// default): `direct`.
    pub create_missing_queue_exchange_type: Option<String>,
    /// `task_queue_max_priority`: `x-max-priority` for every queue that has none (as in
    /// Celery, quorum queues too, which refuse it). Unset by default.
    pub queue_max_priority: Option<u8>,
}

impl Default for TaskSettings {
    fn default() -> Self {
        TaskSettings {
            acks_late: false,
            track_started: false,
            ignore_result: false,
            store_errors_even_if_ignored: false,
            acks_on_failure_or_timeout: true,
            reject_on_worker_lost: false,
            time_limit: None,
            soft_time_limit: None,
            default_rate_limit: None,
            rate_limits: std::collections::BTreeMap::new(),
            queues: Vec::new(),
            default_queue: "celery".to_owned(),
            default_queue_type: "classic".to_owned(),
            default_exchange: None,
            default_exchange_type: "direct".to_owned(),
            default_routing_key: None,
            create_missing_queues: true,
            create_missing_queue_type: "classic".to_owned(),
            create_missing_queue_exchange_type: None,
            queue_max_priority: None,
        }
    }
}

/// The log levels accepted for `worker.loglevel` (Celery's names, case-insensitive).
pub const LOG_LEVELS: &[&str] = &[
    "debug", "info", "warning", "warn", "error", "critical", "fatal",
];

impl Settings {
    /// The queues to declare and consume ([`queues::resolve`]).
    pub fn task_queues(&self) -> Result<Vec<crate::consumer::amqp::TaskQueue>, ConfigError> {
        queues::resolve(&self.task, &self.worker)
    }

    /// How many queues the worker consumes at start: the configured ones not excluded, and
    /// with `worker.direct` its own `<node>.dq2`.
    pub fn consumed_queues(&self) -> usize {
        self.task_queues().map_or(0, |q| q.len()) + usize::from(self.worker.direct)
    }

    /// Whether the prefetch limit is channel-wide (`broker.qos`, `broker.global_qos`).
    pub fn global_qos(&self) -> Result<bool, ConfigError> {
        let by_qos = match self.broker.qos.as_str() {
            "auto" => None,
            "global" => Some(true),
            "per-consumer" => Some(false),
            other => {
                return Err(ConfigError::invalid(
                    "broker.qos",
                    format!("{other:?} is not one of auto, global, per-consumer"),
                ));
            }
        };
        match (by_qos, self.broker.global_qos) {
            (Some(a), Some(b)) if a != b => Err(ConfigError::invalid(
                "broker.global_qos",
                format!(
                    "says {b} while broker.qos says {:?}: keep one of the two",
                    self.broker.qos
                ),
            )),
            (Some(a), _) | (None, Some(a)) => Ok(a),
            (None, None) => {
                Ok(!queues::any_quorum(&self.task, &self.worker) && self.consumed_queues() > 1)
            }
        }
    }

    /// Checks every value and cross-field rule; the error names the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let urls = self.broker.urls();
        if urls.is_empty() {
            return Err(ConfigError::invalid("broker.url", "no URL given"));
        }
        for url in &urls {
            if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
                return Err(ConfigError::invalid(
                    "broker.url",
                    format!("{:?} is not an amqp:// or amqps:// URL", mask_password(url)),
                ));
            }
            if url.parse::<lapin::uri::AMQPUri>().is_err() {
                return Err(ConfigError::invalid(
                    "broker.url",
                    format!("cannot parse {:?}", mask_password(url)),
                ));
            }
        }
        if !["round-robin", "shuffle"].contains(&self.broker.failover_strategy.as_str()) {
            return Err(ConfigError::invalid(
                "broker.failover_strategy",
                format!(
                    "{:?} is not one of round-robin, shuffle",
                    self.broker.failover_strategy
                ),
            ));
        }
        if !(4096..=131_072).contains(&self.broker.frame_max) {
            return Err(ConfigError::invalid(
                "broker.frame_max",
                format!("{} is not from 4096 to 131072", self.broker.frame_max),
            ));
        }
        let pool = PoolKind::parse(&self.worker.pool)
            .map_err(|reason| ConfigError::invalid("worker.pool", reason))?;
        if self.worker.concurrency > pool.max_concurrency() {
            return Err(ConfigError::invalid(
                "worker.concurrency",
                format!(
                    "must be at most {} for the {} pool",
                    pool.max_concurrency(),
                    pool.name()
                ),
            ));
        }
        self.check_pool(pool)?;
        if !(1..=64).contains(&self.worker.async_threads) {
            return Err(ConfigError::invalid(
                "worker.async_threads",
                format!("{} is not from 1 to 64", self.worker.async_threads),
            ));
        }
        self.task_queues()?;
        self.global_qos()?;
        // With -A the app's own result_backend is used, whatever it is.
        if self.python.app.is_none() {
            self.result.kind()?;
        }
        if !(self.result.expires.is_finite() && self.result.expires >= 0.0) {
            return Err(ConfigError::invalid(
                "result.expires",
                "must be a number of seconds, 0 or more",
            ));
        }
        if !queues::QUEUE_TYPES.contains(&self.broker.native_delayed_delivery_queue_type.as_str()) {
            return Err(ConfigError::invalid(
                "broker.native_delayed_delivery_queue_type",
                format!(
                    "{:?} is not one of {}",
                    self.broker.native_delayed_delivery_queue_type,
                    queues::QUEUE_TYPES.join(", ")
                ),
            ));
        }
        if !LOG_LEVELS.contains(&self.worker.loglevel.to_ascii_lowercase().as_str()) {
            return Err(ConfigError::invalid(
                "worker.loglevel",
                format!(
                    "{:?} is not one of {}",
                    self.worker.loglevel,
                    LOG_LEVELS.join(", ")
                ),
            ));
        }
        if !matches!(
            self.worker.log_format.to_ascii_lowercase().as_str(),
            "text" | "json"
        ) {
            return Err(ConfigError::invalid(
                "worker.log_format",
                format!("{:?} is not text or json", self.worker.log_format),
            ));
        }
        for (key, value) in [
            ("worker.logfile", &self.worker.logfile),
            ("worker.pidfile", &self.worker.pidfile),
        ] {
            if value.as_deref().is_some_and(str::is_empty) {
                return Err(ConfigError::invalid(key, "must be a path"));
            }
        }
        for (key, value) in [
            ("task.time_limit", self.task.time_limit),
            ("task.soft_time_limit", self.task.soft_time_limit),
        ] {
            if let Some(v) = value {
                check_limit(v).map_err(|reason| ConfigError::invalid(key, reason))?;
            }
        }
        if !self.worker.eta_hold_max.is_finite() || self.worker.eta_hold_max < 0.0 {
            return Err(ConfigError::invalid(
                "worker.eta_hold_max",
                "must be 0 or a number of seconds",
            ));
        }
        if self.worker.revokes_max == 0 {
            return Err(ConfigError::invalid(
                "worker.revokes_max",
                "must be at least 1",
            ));
        }
        check_limit(self.worker.revoke_expires)
            .map_err(|reason| ConfigError::invalid("worker.revoke_expires", reason))?;
        if let Some(a) = &self.worker.autoscale {
            parse_autoscale(a, pool.max_concurrency())
                .map_err(|reason| ConfigError::invalid("worker.autoscale", reason))?;
        }
        if let Some(a) = &self.worker.metrics_addr {
            metrics_socket(a).map_err(|r| ConfigError::invalid("worker.metrics_addr", r))?;
        }
        check_limit(self.worker.heartbeat_interval)
            .map_err(|reason| ConfigError::invalid("worker.heartbeat_interval", reason))?;
        if self.worker.heartbeat_interval < 0.1 {
            return Err(ConfigError::invalid(
                "worker.heartbeat_interval",
                format!(
                    "{} s is below the shortest interval, 0.1 s (each heartbeat is a broker publish)",
                    self.worker.heartbeat_interval
                ),
            ));
        }
        if !(1024..=(2usize << 30)).contains(&self.worker.max_message_size) {
            return Err(ConfigError::invalid(
                "worker.max_message_size",
                format!(
                    "{} is not from 1024 to 2147483648 bytes",
                    self.worker.max_message_size
                ),
            ));
        }
        if self.worker.max_pool_size > pool.max_concurrency() {
            return Err(ConfigError::invalid(
                "worker.max_pool_size",
                format!(
                    "must be at most {} for the {} pool (0 = four per CPU)",
                    pool.max_concurrency(),
                    pool.name()
                ),
            ));
        }
        if self.worker.max_pool_size > 0 && self.worker.max_pool_size < self.max_concurrency() {
            return Err(ConfigError::invalid(
                "worker.max_pool_size",
                format!(
                    "{} is below the pool's own size {} (worker.concurrency or the autoscale maximum)",
                    self.worker.max_pool_size,
                    self.max_concurrency()
                ),
            ));
        }
        check_limit(self.worker.autoscale_keepalive)
            .map_err(|reason| ConfigError::invalid("worker.autoscale_keepalive", reason))?;
        if self.worker.statedb.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::invalid("worker.statedb", "must be a path"));
        }
        if let Some(r) = &self.task.default_rate_limit {
            crate::pool::rate::parse_rate(r)
                .map_err(|e| ConfigError::invalid("task.default_rate_limit", e))?;
        }
        for (task, r) in &self.task.rate_limits {
            crate::pool::rate::parse_rate(r)
                .map_err(|e| ConfigError::invalid(format!("task.rate_limits.{task}"), e))?;
        }
        crate::hostname::expand_nodename(&self.worker.hostname, "host.example")
            .map_err(|reason| ConfigError::invalid("worker.hostname", reason))?;
        self.beat.validate()?;
        Ok(())
    }

    /// The pool named by `worker.pool` (prefork when it names none; `validate` refuses that).
    pub fn pool_kind(&self) -> PoolKind {
        PoolKind::parse(&self.worker.pool).unwrap_or_default()
    }

    /// What the pool cannot carry out is refused, naming the key: nothing configured is
    /// ignored.
    fn check_pool(&self, pool: PoolKind) -> Result<(), ConfigError> {
        if pool == PoolKind::Prefork {
            return Ok(());
        }
        let name = pool.name();
        if self.python.app.is_some() {
            return Err(ConfigError::invalid(
                "worker.pool",
                format!(
                    "{name}: Python tasks (-A) run in Python child processes, which only the \
                     prefork pool has; use -P prefork (the default)"
                ),
            ));
        }
        let no_child = |key: &str, what: &str| {
            ConfigError::invalid(
                key,
                format!(
                    "the {name} pool runs tasks inside the worker process: there is no child \
                     process to {what}. Leave it out, or use -P prefork"
                ),
            )
        };
        if self.worker.max_tasks_per_child > 0 {
            return Err(no_child(
                "worker.max_tasks_per_child",
                "replace after N tasks",
            ));
        }
        if self.worker.max_memory_per_child > 0 {
            return Err(no_child(
                "worker.max_memory_per_child",
                "replace when it grows",
            ));
        }
        if self.worker.pool_restarts {
            return Err(no_child("worker.pool_restarts", "restart"));
        }
        if pool.on_threads() && self.task.time_limit.is_some() {
            return Err(ConfigError::invalid(
                "task.time_limit",
                format!(
                    "the {name} pool runs tasks on threads, and a thread cannot be killed, so a \
                     hard time limit cannot be enforced. Use task.soft_time_limit \
                     (--soft-time-limit: the task sees it through its context), or -P prefork \
                     (the child is killed) or -P async (the future is cancelled)"
                ),
            ));
        }
        if pool == PoolKind::Solo && self.worker.concurrency > 1 {
            return Err(ConfigError::invalid(
                "worker.concurrency",
                format!(
                    "the solo pool runs one task at a time, not {}; use -P threads -c {} for \
                     that many at once",
                    self.worker.concurrency, self.worker.concurrency
                ),
            ));
        }
        if pool == PoolKind::Solo && self.worker.autoscale.is_some() {
            return Err(ConfigError::invalid(
                "worker.autoscale",
                "the solo pool runs one task at a time and cannot scale; use -P threads or \
                 -P async with --autoscale",
            ));
        }
        Ok(())
    }

    /// The default (soft, hard) limits from the `[task]` section.
    pub fn default_limits(&self) -> crate::task::TaskOptions {
        crate::task::TaskOptions {
            time_limit: self.task.time_limit,
            soft_time_limit: self.task.soft_time_limit,
            rate_limit: None,
            ignore_result: None,
        }
    }

    /// The number of child processes the pool starts with: the autoscale minimum, else
    /// `worker.concurrency`, or the number of CPUs when 0.
    pub fn effective_concurrency(&self) -> usize {
        if self.pool_kind() == PoolKind::Solo {
            return 1;
        }
        if let Some((_, min)) = self.autoscale() {
            return min;
        }
        match self.worker.concurrency {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        }
    }

    /// `(max, min)` when autoscaling.
    pub fn autoscale(&self) -> Option<(usize, usize)> {
        self.worker
            .autoscale
            .as_deref()
            .and_then(|a| parse_autoscale(a, self.pool_kind().max_concurrency()).ok())
    }

    /// The most child processes the pool may have: the autoscale maximum, else the fixed size.
    pub fn max_concurrency(&self) -> usize {
        match self.autoscale() {
            Some((max, _)) => max,
            None => self.effective_concurrency(),
        }
    }

    /// The most child processes (threads, tasks in flight) `pool_grow` and `autoscale` may
    /// reach: `worker.max_pool_size`, or when 0 four per CPU (an async pool: four times its
    /// own size), never less than the pool's own size.
    pub fn pool_size_limit(&self) -> usize {
        let pool = self.pool_kind();
        match self.worker.max_pool_size {
            0 => {
                let base = match pool {
                    PoolKind::Async => self.max_concurrency(),
                    _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
                };
                base.saturating_mul(4)
                    .max(self.max_concurrency())
                    .min(pool.max_concurrency())
            }
            n => n,
        }
    }

    /// The basic.qos prefetch count (0 = unlimited) for `processes` children, capped to what
    /// AMQP can carry.
    pub fn prefetch_for(&self, processes: usize) -> u16 {
        let n = processes.max(1) * usize::from(self.worker.prefetch_multiplier);
        u16::try_from(n).unwrap_or(u16::MAX)
    }

    /// The starting basic.qos prefetch count: [`Settings::max_concurrency`] × multiplier.
    pub fn prefetch_count(&self) -> u16 {
        self.prefetch_for(self.max_concurrency())
    }
}

impl BeatSettings {
    /// The time zone crontab entries are read in.
    pub fn time_zone(&self) -> Result<jiff::tz::TimeZone, ConfigError> {
        let name = self.timezone.trim();
        if name.eq_ignore_ascii_case("utc") {
            return Ok(jiff::tz::TimeZone::UTC);
        }
        jiff::tz::TimeZone::get(name).map_err(|e| {
            ConfigError::invalid(
                "beat.timezone",
                format!("{name:?} is not a time zone name (e.g. UTC, Europe/Berlin): {e}"),
            )
        })
    }

    /// Checks the section and every entry; the error names the entry and its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.time_zone()?;
        if self.schedule_db.trim().is_empty() {
            return Err(ConfigError::invalid("beat.schedule_db", "must be a path"));
        }
        if self.lock.is_empty() || self.lock.len() > 200 || self.lock.starts_with("amq.") {
            return Err(ConfigError::invalid(
                "beat.lock",
                "must be a queue name of 1 to 200 bytes, not starting with amq.",
            ));
        }
        if !(self.lock_retry.is_finite() && (0.1..=3600.0).contains(&self.lock_retry)) {
            return Err(ConfigError::invalid(
                "beat.lock_retry",
                "must be from 0.1 to 3600 seconds",
            ));
        }
        for (name, entry) in &self.schedule {
            entry.validate(&format!("beat.schedule.{name}"))?;
        }
        Ok(())
    }
}

impl BeatEntry {
    /// Checks the entry; `key` is where it was written (`beat.schedule.<name>`, or the app's
    /// `beat_schedule[<name>]`), named in the error with the field.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let field = |f: &str| format!("{key}.{f}");
        if self.task.trim().is_empty() {
            return Err(ConfigError::invalid(
                field("task"),
                "the task's name is missing",
            ));
        }
        match (self.every, &self.crontab) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    field("every"),
                    "give `every` or `crontab`, not both",
                ));
            }
            (None, None) => {
                return Err(ConfigError::invalid(
                    field("every"),
                    "the entry has no schedule: give `every = <seconds>` or \
                     `crontab = \"m h dom mon dow\"`",
                ));
            }
            (Some(every), None) => {
                if !(every.is_finite() && every > 0.0 && every <= 31_536_000.0) {
                    return Err(ConfigError::invalid(
                        field("every"),
                        format!("{every} is not a number of seconds above 0 (at most a year)"),
                    ));
                }
            }
            (None, Some(cron)) => {
                crate::beat::crontab::Crontab::parse(cron)
                    .map_err(|why| ConfigError::invalid(field("crontab"), why))?;
            }
        }
        if let Some(e) = self.options.expires
            && !(e.is_finite() && (0.0..=31_536_000.0).contains(&e))
        {
            return Err(ConfigError::invalid(
                field("options.expires"),
                format!("{e} is not a number of seconds from 0 to a year"),
            ));
        }
        if self.options.exchange.is_some() != self.options.routing_key.is_some() {
            return Err(ConfigError::invalid(
                field("options.exchange"),
                "give `exchange` and `routing_key` together (or `queue`)",
            ));
        }
        for (f, v) in [
            ("options.queue", &self.options.queue),
            ("options.exchange", &self.options.exchange),
            ("options.routing_key", &self.options.routing_key),
        ] {
            if v.as_ref().is_some_and(|v| v.len() > 255) {
                return Err(ConfigError::invalid(field(f), "longer than 255 bytes"));
            }
        }
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

    #[test]
    fn result_backends_rust_tasks_can_use() {
        let mut s = Settings::default();
        assert_eq!(s.result.kind(), Ok(BackendKind::Rpc));
        s.result.backend = "redis://:pw@127.0.0.1:6379/3".into();
        assert!(matches!(s.result.kind(), Ok(BackendKind::Redis(_))));
        s.result.backend = "rediss://:pw@redis.example:6380/0".into();
        assert!(
            matches!(s.result.kind(), Ok(BackendKind::Redis(_))),
            "TLS built in"
        );
        s.result.backend = "disabled://".into();
        assert_eq!(s.result.kind(), Ok(BackendKind::Disabled));
        s.result.backend = "db+postgresql://u:secret@h/db".into();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("result.backend") && !e.contains("secret"), "{e}");
        s.python.app = Some("proj".into());
        assert!(
            s.validate().is_ok(),
            "with -A the app's backend is the app's business"
        );
    }

    #[test]
    fn defaults_are_valid() {
        Settings::default().validate().unwrap();
    }

    #[test]
    fn masks_password() {
        assert_eq!(
            mask_password("amqp://guest:secret@h:5672//"),
            "amqp://guest:********@h:5672//"
        );
        assert_eq!(mask_password("amqp://h:5672//"), "amqp://h:5672//");
        assert_eq!(mask_password("amqp://user@h//"), "amqp://user@h//");
        // Unparsable ones too: an '@' in the password, no "//", no scheme, a bad port.
        for (url, secret) in [
            ("amqp://guest:p@ss@h//", "p@ss"),
            ("amqp:/guest:secret@h", "secret"),
            ("guest:secret@h", "secret"),
            ("amqp://guest:secret@h:99999//", "secret"),
            ("amqp://guest:secret@h:x//", "secret"),
            ("amqp://a:one@h1;amqp://b:two@h2", "two"),
            ("amqp:/guest:se://cret@h", "cret"),
        ] {
            let masked = mask_password(url);
            assert!(!masked.contains(secret), "{url} -> {masked}");
            if url.contains(":/") {
                assert!(
                    !mask_urls(&format!("error: {url:?} at x")).contains(secret),
                    "{url}"
                );
            }
        }
        let b = BrokerSettings {
            url: "amqp://u:pw@h//".into(),
            ..Default::default()
        };
        assert!(!format!("{b:?}").contains("pw@"));
    }

    #[test]
    fn invalid_values_name_the_key() {
        let mut s = Settings::default();
        s.broker.url = "redis://localhost".into();
        assert!(
            matches!(s.validate(), Err(ConfigError::Invalid { key, .. }) if key == "broker.url")
        );
        let mut s = Settings::default();
        s.worker.loglevel = "loud".into();
        assert!(
            matches!(s.validate(), Err(ConfigError::Invalid { key, .. }) if key == "worker.loglevel")
        );
        let mut s = Settings::default();
        s.worker.queues = vec!["x".repeat(256)];
        assert!(
            matches!(s.validate(), Err(ConfigError::Invalid { key, .. }) if key == "worker.queues")
        );
        let mut s = Settings::default();
        s.broker.qos = "sometimes".into();
        assert!(
            matches!(s.validate(), Err(ConfigError::Invalid { key, .. }) if key == "broker.qos")
        );
        s.broker.qos = "global".into();
        s.broker.global_qos = Some(false);
        assert!(
            matches!(s.validate(), Err(ConfigError::Invalid { key, .. }) if key == "broker.global_qos")
        );
        let mut s = Settings::default();
        s.worker.hostname = "celery@%q".into();
        assert!(
            matches!(s.validate(), Err(ConfigError::Invalid { key, .. }) if key == "worker.hostname")
        );
    }

    #[test]
    fn time_limits_must_be_positive() {
        let mut s = Settings::default();
        s.task.time_limit = Some(-1.0);
        assert!(
            matches!(s.validate(), Err(ConfigError::Invalid { key, .. }) if key == "task.time_limit")
        );
        let mut s = Settings::default();
        s.task.soft_time_limit = Some(f64::NAN);
        assert!(matches!(s.validate(),
            Err(ConfigError::Invalid { key, .. }) if key == "task.soft_time_limit"));
        let mut s = Settings::default();
        s.task.time_limit = Some(2.0);
        s.task.soft_time_limit = Some(5.0);
        s.validate().unwrap();
    }

    #[test]
    fn rate_limits_are_checked() {
        let mut s = Settings::default();
        s.task.rate_limits.insert("tasks.add".into(), "10/x".into());
        assert!(matches!(s.validate(),
            Err(ConfigError::Invalid { key, .. }) if key == "task.rate_limits.tasks.add"));
        let mut s = Settings::default();
        s.task.default_rate_limit = Some("lots".into());
        assert!(matches!(s.validate(),
            Err(ConfigError::Invalid { key, .. }) if key == "task.default_rate_limit"));
    }

    #[test]
    fn prefetch_is_concurrency_times_multiplier() {
        let mut s = Settings::default();
        s.worker.concurrency = 3;
        s.worker.prefetch_multiplier = 4;
        assert_eq!(s.prefetch_count(), 12);
        s.worker.prefetch_multiplier = 0;
        assert_eq!(s.prefetch_count(), 0);
    }

    #[test]
    fn metrics_addr_and_heartbeat_are_checked() {
        let mut s = Settings::default();
        s.worker.metrics_addr = Some("127.0.0.1:9808".into());
        s.validate().unwrap();
        s.worker.metrics_addr = Some("everywhere".into());
        assert!(matches!(s.validate(),
            Err(ConfigError::Invalid { key, .. }) if key == "worker.metrics_addr"));
        let mut s = Settings::default();
        s.worker.heartbeat_interval = 0.0;
        assert!(matches!(s.validate(),
            Err(ConfigError::Invalid { key, .. }) if key == "worker.heartbeat_interval"));
    }

    #[test]
    fn pools_refuse_what_they_cannot_do() {
        let mut s = Settings::default();
        let key = |s: &Settings| match s.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        s.worker.pool = "threads".into();
        s.task.time_limit = Some(5.0);
        assert_eq!(key(&s), "task.time_limit");
        s.task.time_limit = None;
        assert!(s.validate().is_ok());
        s.worker.pool = "async".into();
        s.worker.max_memory_per_child = 1000;
        assert_eq!(key(&s), "worker.max_memory_per_child");
        s.worker.max_memory_per_child = 0;
        s.worker.concurrency = 5000;
        assert!(s.validate().is_ok(), "thousands in flight");
        assert_eq!(s.pool_kind(), PoolKind::Async);
        s.worker.pool = "solo".into();
        assert_eq!(key(&s), "worker.concurrency");
        s.worker.concurrency = 0;
        assert_eq!(s.effective_concurrency(), 1);
        s.worker.pool = "gevent".into();
        assert_eq!(key(&s), "worker.pool");
        s.worker.pool = "async".into();
        s.python.app = Some("proj".into());
        assert_eq!(key(&s), "worker.pool");
    }

    #[test]
    fn beat_entries_and_section_are_checked() {
        let mut s = Settings::default();
        let key = |s: &Settings| match s.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        let mut e = BeatEntry {
            task: "t".into(),
            every: Some(1.0),
            ..Default::default()
        };
        s.beat.schedule.insert("x".into(), e.clone());
        assert!(s.validate().is_ok());
        e.options.exchange = Some("ex".into());
        s.beat.schedule.insert("x".into(), e.clone());
        assert_eq!(key(&s), "beat.schedule.x.options.exchange");
        e.options.exchange = None;
        e.every = None;
        e.crontab = Some("* * * *".into());
        s.beat.schedule.insert("x".into(), e);
        assert_eq!(key(&s), "beat.schedule.x.crontab");
        s.beat.schedule.clear();
        s.beat.timezone = "Europe/Berlin".into();
        assert!(s.validate().is_ok());
        s.beat.timezone = "Nowhere/Special".into();
        assert_eq!(key(&s), "beat.timezone");
        s.beat.timezone = "UTC".into();
        s.beat.lock = "amq.x".into();
        assert_eq!(key(&s), "beat.lock");
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
        s.worker.autoscale = Some("8,2".into());
        s.worker.prefetch_multiplier = 2;
        assert_eq!(s.effective_concurrency(), 2);
        assert_eq!(s.max_concurrency(), 8);
        assert_eq!(s.prefetch_count(), 16);
        s.worker.autoscale = Some("2,8".into());
        assert!(matches!(s.validate(),
            Err(ConfigError::Invalid { key, .. }) if key == "worker.autoscale"));
    }
}
