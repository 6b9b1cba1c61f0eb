//! A Redis broker as `[broker]` names it: the URL (`redis://`, `rediss://`,
//! `redis+socket://`, `sentinel://…;sentinel://…`) read into its parts, and
//! `[broker] transport_options` (Celery's `broker_transport_options`) typed, with kombu's
//! defaults. Pure: nothing here connects.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::ConfigError;

use super::broker::mask_password;

/// Where the Redis server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP address.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port (6379 unless given).
        port: u16,
    },
    /// A Unix socket (`redis+socket:///path`).
    Unix(String),
    /// Sentinels to ask for the master named by the `master_name` transport option.
    Sentinel(Vec<(String, u16)>),
}

/// A Redis broker URL read into its parts.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// Where the server is.
    pub endpoint: Endpoint,
    /// TLS (`rediss://`).
    pub tls: bool,
    /// The database number (the URL's path, kombu's "virtual host"); 0 unless given.
    pub db: i64,
    /// ACL user name, if any.
    pub username: Option<String>,
    /// Password, if any.
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisUrl")
            .field("endpoint", &self.endpoint)
            .field("tls", &self.tls)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "**"))
            .finish()
    }
}

/// Whether `url` names a Redis broker (any of the schemes [`RedisUrl::parse`] reads).
pub fn is_redis_url(url: &str) -> bool {
    let scheme = url.trim().split_once("://").map_or("", |(s, _)| s);
    matches!(
        scheme,
        "redis" | "rediss" | "redis+socket" | "socket" | "sentinel"
    )
}

impl RedisUrl {
    /// Reads `url`: one `redis://[user:password@]host[:port][/db]` (`rediss://` for TLS),
    /// `redis+socket:///path[?virtual_host=N]`, or a `;`-separated list of
    /// `sentinel://[user:password@]host[:port][/db]` (port 26379 unless given).
    pub fn parse(url: &str) -> Result<RedisUrl, String> {
        let parts: Vec<&str> = url
            .split(';')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let first = *parts.first().ok_or("no URL given")?;
        if first.starts_with("sentinel://") {
            return parse_sentinels(&parts);
        }
        if parts.len() > 1 {
            return Err(format!(
                "{:?}: a failover list of Redis URLs is not supported; give one redis:// URL, \
                 or sentinel:// URLs for a Sentinel-managed master",
                mask_password(url)
            ));
        }
        parse_one(first)
    }
}

fn parse_one(raw: &str) -> Result<RedisUrl, String> {
    let masked = mask_password(raw);
    let u = url::Url::parse(raw).map_err(|e| format!("cannot parse {masked:?}: {e}"))?;
    let (username, password) = credentials(&u);
    let query_db = u
        .query_pairs()
        .find(|(k, _)| k == "virtual_host" || k == "db")
        .map(|(_, v)| v.into_owned());
    match u.scheme() {
        "redis" | "rediss" => {
            let host = u
                .host_str()
                .filter(|h| !h.is_empty())
                .unwrap_or("localhost")
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let path = u.path().trim_matches('/');
            let db = parse_db(if path.is_empty() {
                query_db.as_deref().unwrap_or("")
            } else {
                path
            })
            .map_err(|e| format!("{masked:?}: {e}"))?;
            Ok(RedisUrl {
                endpoint: Endpoint::Tcp {
                    host,
                    port: u.port().unwrap_or(6379),
                },
                tls: u.scheme() == "rediss",
                db,
                username,
                password,
            })
        }
        "redis+socket" | "socket" => {
            if u.path().is_empty() || u.path() == "/" {
                return Err(format!("{masked:?}: no socket path"));
            }
            let db = parse_db(query_db.as_deref().unwrap_or(""))
                .map_err(|e| format!("{masked:?}: {e}"))?;
            Ok(RedisUrl {
                endpoint: Endpoint::Unix(u.path().to_owned()),
                tls: false,
                db,
                username,
                password,
            })
        }
        other => Err(format!("{masked:?}: {other}:// is not a Redis URL")),
    }
}

fn parse_sentinels(parts: &[&str]) -> Result<RedisUrl, String> {
    let mut nodes = Vec::new();
    let (mut username, mut password, mut db) = (None, None, 0);
    for raw in parts {
        let masked = mask_password(raw);
        let u = url::Url::parse(raw).map_err(|e| format!("cannot parse {masked:?}: {e}"))?;
        if u.scheme() != "sentinel" {
            return Err(format!(
                "{masked:?}: a Sentinel list takes sentinel:// URLs only"
            ));
        }
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{masked:?}: no host"))?;
        nodes.push((host.to_owned(), u.port().unwrap_or(26379)));
        let (user, pass) = credentials(&u);
        username = username.or(user);
        password = password.or(pass);
        let path = u.path().trim_matches('/');
        if !path.is_empty() {
            db = parse_db(path).map_err(|e| format!("{masked:?}: {e}"))?;
        }
    }
    Ok(RedisUrl {
        endpoint: Endpoint::Sentinel(nodes),
        tls: false,
        db,
        username,
        password,
    })
}

fn credentials(u: &url::Url) -> (Option<String>, Option<String>) {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let user = Some(u.username()).filter(|s| !s.is_empty()).map(decode);
    let pass = u.password().map(decode);
    (user, pass)
}

fn parse_db(text: &str) -> Result<i64, String> {
    if text.is_empty() {
        return Ok(0);
    }
    text.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| format!("the database {text:?} is not a number from 0 up"))
}

/// How the queues are taken in turn when several have messages (kombu's
/// `queue_order_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueOrder {
    /// The queue a message came from goes last (the default).
    RoundRobin,
    /// Always in the configured order.
    Priority,
    /// Alphabetically.
    Sorted,
}

/// `[broker] transport_options` for a Redis broker, with kombu 5.7's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisOptions {
    /// Seconds a fetched message may stay unacked before any worker restores it (3600).
    pub visibility_timeout: f64,
    /// Prefix of every key and channel (`""`).
    pub global_keyprefix: String,
    /// Priority steps (`[0, 3, 6, 9]`): the lists a queue's messages are spread over.
    pub priority_steps: Vec<u8>,
    /// Separator between a queue's name and its step (`"\x06\x16"`).
    pub sep: String,
    /// How several queues take turns.
    pub queue_order_strategy: QueueOrder,
    /// The fanout channel prefix: `/{db}.` by default; a string given; empty when false.
    pub fanout_prefix: String,
    /// Whether a fanout routing key narrows the channel (`exchange/routing_key`) (true).
    pub fanout_patterns: bool,
    /// Seconds a blocking wait for messages lasts before it is issued again (1).
    pub polling_interval: f64,
    /// Seconds between health checks of an idle connection (25).
    pub health_check_interval: f64,
    /// The hash of fetched, unacked messages (`unacked`).
    pub unacked_key: String,
    /// The sorted set of their fetch times (`unacked_index`).
    pub unacked_index_key: String,
    /// The lock taken to restore expired messages (`unacked_mutex`).
    pub unacked_mutex_key: String,
    /// Seconds the restore lock is held at most (300).
    pub unacked_mutex_expire: f64,
    /// At most this many expired messages are restored per scan (no limit).
    pub unacked_restore_limit: Option<u64>,
    /// Seconds between checks for expired messages (10, as kombu 5.7).
    pub unacked_restore_interval: f64,
    /// Only every this many checks scans (kombu 5.7's default is 10: a scan every 100 s;
    /// celeryd's is 1, a scan every 10 s, so lost work comes back sooner).
    pub unacked_restore_throttle: u32,
    /// Connections at most in the worker's command pool (10).
    pub max_connections: u32,
    /// The master's name for Sentinel URLs (required with them).
    pub master_name: Option<String>,
    /// Seconds to wait for a connection (none: the client's default).
    pub socket_connect_timeout: Option<f64>,
    /// Seconds a command may take (none).
    pub socket_timeout: Option<f64>,
    /// Options kombu knows that change nothing here, each with why (logged at start).
    pub notes: Vec<String>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            visibility_timeout: 3600.0,
            global_keyprefix: String::new(),
            priority_steps: vec![0, 3, 6, 9],
            sep: "\x06\x16".to_owned(),
            queue_order_strategy: QueueOrder::RoundRobin,
            fanout_prefix: "/{db}.".to_owned(),
            fanout_patterns: true,
            polling_interval: 1.0,
            health_check_interval: 25.0,
            unacked_key: "unacked".to_owned(),
            unacked_index_key: "unacked_index".to_owned(),
            unacked_mutex_key: "unacked_mutex".to_owned(),
            unacked_mutex_expire: 300.0,
            unacked_restore_limit: None,
            unacked_restore_interval: 10.0,
            unacked_restore_throttle: 1,
            max_connections: 10,
            master_name: None,
            socket_connect_timeout: None,
            socket_timeout: None,
            notes: Vec::new(),
        }
    }
}

/// Options kombu accepts that have no effect on celeryd's Redis transport, and why.
const NO_EFFECT: &[(&str, &str)] = &[
    (
        "ack_emulation",
        "celeryd always records fetched messages in `unacked` (kombu's default, true)",
    ),
    (
        "min_other_sentinels",
        "the master the sentinels report is used as it is",
    ),
    (
        "socket_keepalive",
        "the worker's connections always use TCP keepalive",
    ),
    (
        "socket_keepalive_options",
        "the system's keepalive timings are used",
    ),
    (
        "retry_on_timeout",
        "a command that timed out makes the worker reconnect",
    ),
    (
        "client_name",
        "connections are named after the worker's node name",
    ),
    (
        "body_encoding",
        "messages are read by their own properties.body_encoding; published ones are base64, as kombu's default",
    ),
];

impl RedisOptions {
    /// The options from `map` (`[broker] transport_options`), or the first that is wrong,
    /// named. A key kombu does not know is refused; one that has no effect here is kept in
    /// [`RedisOptions::notes`].
    pub fn from_map(map: &BTreeMap<String, Value>) -> Result<RedisOptions, ConfigError> {
        let mut o = RedisOptions::default();
        for (key, value) in map {
            let bad = |what: &str| {
                ConfigError::invalid(
                    format!("broker.transport_options.{key}"),
                    format!("{value} is not {what}"),
                )
            };
            let secs = || {
                value
                    .as_f64()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| bad("a number of seconds from 0 up"))
            };
            let text = || {
                value
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad("a string"))
            };
            let flag = || value.as_bool().ok_or_else(|| bad("true or false"));
            match key.as_str() {
                "visibility_timeout" => o.visibility_timeout = secs()?,
                "global_keyprefix" => o.global_keyprefix = text()?,
                "priority_steps" => {
                    o.priority_steps = steps(value).ok_or_else(|| {
                        bad("a list of distinct priorities from 0 to 9 starting at 0")
                    })?
                }
                "sep" => {
                    o.sep = text()?;
                    if o.sep.is_empty() {
                        return Err(bad("a non-empty string"));
                    }
                }
                "queue_order_strategy" => {
                    o.queue_order_strategy = match value.as_str() {
                        Some("round_robin") => QueueOrder::RoundRobin,
                        Some("priority") => QueueOrder::Priority,
                        Some("sorted") => QueueOrder::Sorted,
                        _ => return Err(bad("\"round_robin\", \"priority\" or \"sorted\"")),
                    }
                }
                "fanout_prefix" => {
                    o.fanout_prefix = match value {
                        Value::Bool(true) => "/{db}.".to_owned(),
                        Value::Bool(false) => String::new(),
                        Value::String(s) => s.clone(),
                        _ => return Err(bad("true, false or a string")),
                    }
                }
                "fanout_patterns" => o.fanout_patterns = flag()?,
                "polling_interval" => {
                    o.polling_interval = secs()?;
                    if o.polling_interval < 0.01 {
                        return Err(bad("at least 0.01 seconds"));
                    }
                }
                "health_check_interval" => {
                    o.health_check_interval = secs()?;
                    o.notes.push(format!(
                        "transport_options.{key}: no effect: the worker's \
                        connections are checked by their own use (the fetcher's waits return \
                        every polling_interval; pub/sub ends when its connection does)"
                    ));
                }
                "unacked_key" => o.unacked_key = text()?,
                "unacked_index_key" => o.unacked_index_key = text()?,
                "unacked_mutex_key" => o.unacked_mutex_key = text()?,
                "unacked_mutex_expire" => o.unacked_mutex_expire = secs()?,
                "unacked_restore_limit" => {
                    o.unacked_restore_limit = match value {
                        Value::Null => None,
                        v => Some(v.as_u64().ok_or_else(|| bad("a whole number"))?),
                    }
                }
                "unacked_restore_interval" => {
                    o.unacked_restore_interval = secs()?;
                    if o.unacked_restore_interval < 0.1 {
                        return Err(bad("at least 0.1 seconds"));
                    }
                }
                "unacked_restore_throttle" => {
                    o.unacked_restore_throttle = value
                        .as_u64()
                        .filter(|n| *n >= 1)
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| bad("a whole number from 1 up"))?
                }
                "max_connections" => {
                    o.max_connections = value
                        .as_u64()
                        .filter(|n| *n >= 1)
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| bad("a whole number from 1 up"))?;
                    o.notes.push(format!(
                        "transport_options.{key}: no effect: the worker \
                        opens a fixed, small set of connections (commands, one per watched \
                        list up to 8, pub/sub), not a pool"
                    ));
                }
                "master_name" => o.master_name = Some(text()?),
                "socket_connect_timeout" => o.socket_connect_timeout = Some(secs()?),
                "socket_timeout" => o.socket_timeout = Some(secs()?),
                known => match NO_EFFECT.iter().find(|(k, _)| *k == known) {
                    Some((k, why)) => o
                        .notes
                        .push(format!("transport_options.{k}: no effect: {why}")),
                    None => {
                        return Err(ConfigError::invalid(
                            format!("broker.transport_options.{key}"),
                            "not a transport option of the Redis broker (kombu's redis \
                             transport has none of that name either); remove it",
                        ));
                    }
                },
            }
        }
        Ok(o)
    }

    /// Seconds between scans for expired messages.
    pub fn restore_every(&self) -> f64 {
        self.unacked_restore_interval * f64::from(self.unacked_restore_throttle)
    }

    /// Seconds between renewals of the leases of held messages: a quarter of the
    /// visibility timeout (half a second to five minutes).
    pub fn renew_every(&self) -> f64 {
        (self.visibility_timeout / 4.0).clamp(0.5, 300.0)
    }

    /// The fanout channel prefix with the database filled in (`/0.`).
    pub fn fanout_prefix_for(&self, db: i64) -> String {
        self.fanout_prefix.replace("{db}", &db.to_string())
    }
}

fn steps(value: &Value) -> Option<Vec<u8>> {
    let list = value.as_array()?;
    let steps: Vec<u8> = list
        .iter()
        .map(|v| v.as_u64().filter(|n| *n <= 9).map(|n| n as u8))
        .collect::<Option<_>>()?;
    let increasing = steps.windows(2).all(|w| w[0] < w[1]);
    (steps.first() == Some(&0) && increasing).then_some(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_as_kombu_reads_them() {
        let u = RedisUrl::parse("redis://").unwrap();
        assert_eq!(
            u.endpoint,
            Endpoint::Tcp {
                host: "localhost".into(),
                port: 6379
            }
        );
        assert_eq!((u.db, u.tls), (0, false));
        let u = RedisUrl::parse("rediss://user:p%40ss@h.example:6380/4").unwrap();
        assert!(u.tls);
        assert_eq!(u.db, 4);
        assert_eq!(u.username.as_deref(), Some("user"));
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        let u = RedisUrl::parse("redis://:secret@127.0.0.1:6379/2").unwrap();
        assert_eq!((u.username, u.password.as_deref()), (None, Some("secret")));
        let u = RedisUrl::parse("redis+socket:///tmp/r.sock?virtual_host=3").unwrap();
        assert_eq!(u.endpoint, Endpoint::Unix("/tmp/r.sock".into()));
        assert_eq!(u.db, 3);
        let u = RedisUrl::parse("sentinel://:pw@s1:26379;sentinel://s2/1").unwrap();
        assert_eq!(
            u.endpoint,
            Endpoint::Sentinel(vec![("s1".into(), 26379), ("s2".into(), 26379)])
        );
        assert_eq!((u.db, u.password.as_deref()), (1, Some("pw")));
    }

    #[test]
    fn bad_urls_say_why_without_the_password() {
        let e = RedisUrl::parse("redis://:secret@h/x").unwrap_err();
        assert!(e.contains("database") && !e.contains("secret"), "{e}");
        let e = RedisUrl::parse("redis://a;redis://b").unwrap_err();
        assert!(e.contains("failover"), "{e}");
        assert!(RedisUrl::parse("redis+socket://").is_err());
        assert!(format!("{:?}", RedisUrl::parse("redis://:secret@h").unwrap()).contains("**"));
        assert!(is_redis_url("sentinel://h") && !is_redis_url("amqp://h"));
    }

    fn opts(v: Value) -> Result<RedisOptions, ConfigError> {
        let map: BTreeMap<String, Value> = serde_json::from_value(v).unwrap();
        RedisOptions::from_map(&map)
    }

    #[test]
    fn options_typed_with_kombus_defaults() {
        let o = opts(json!({})).unwrap();
        assert_eq!(o, RedisOptions::default());
        assert_eq!(o.fanout_prefix_for(3), "/3.");
        let o = opts(
            json!({"visibility_timeout": 43200, "global_keyprefix": "p:",
            "priority_steps": [0,1,2,3,4,5,6,7,8,9], "sep": ":", "fanout_prefix": false,
            "queue_order_strategy": "sorted", "unacked_restore_limit": 5,
            "master_name": "mymaster", "ack_emulation": true}),
        )
        .unwrap();
        assert_eq!(o.visibility_timeout, 43200.0);
        assert_eq!(o.priority_steps.len(), 10);
        assert_eq!((o.sep.as_str(), o.fanout_prefix.as_str()), (":", ""));
        assert_eq!(o.queue_order_strategy, QueueOrder::Sorted);
        assert_eq!(o.unacked_restore_limit, Some(5));
        assert_eq!(o.notes.len(), 1, "ack_emulation is noted, not ignored");
    }

    #[test]
    fn wrong_or_unknown_options_name_the_key() {
        for (bad, key) in [
            (json!({"visibility_timeout": -1}), "visibility_timeout"),
            (json!({"priority_steps": [3, 6]}), "priority_steps"),
            (json!({"priority_steps": [0, 6, 3]}), "priority_steps"),
            (
                json!({"queue_order_strategy": "random"}),
                "queue_order_strategy",
            ),
            (json!({"visiblity_timeout": 10}), "visiblity_timeout"),
            (json!({"max_connections": 0}), "max_connections"),
        ] {
            let e = opts(bad).unwrap_err();
            assert!(
                matches!(&e, ConfigError::Invalid { key: k, .. } if k.ends_with(key)),
                "{e}"
            );
        }
    }
}
