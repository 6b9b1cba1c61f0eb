//! `[broker]`: the broker URLs (a failover list, kombu's scheme aliases), qos and frame size,
//! and the masking of passwords in URLs that get printed.

use serde::{Deserialize, Serialize};

use super::queues;
use super::redis::{Endpoint, RedisOptions, RedisUrl, is_redis_url};
use crate::error::ConfigError;

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
    pub failover_strategy: FailoverStrategy,
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
    pub qos: Qos,
    /// The older spelling of `qos`: true = `global`, false = `per-consumer`. Unset by default.
    pub global_qos: Option<bool>,
    /// `broker_native_delayed_delivery_queue_type`: the type of the queues of Celery's
    /// native delayed delivery (`celery_delayed_0…27`), which the worker declares when any of
    /// its queues is a quorum queue. `quorum` (the default) or `classic`.
    pub native_delayed_delivery_queue_type: queues::QueueType,
    /// Largest AMQP frame in bytes (4096 to 131072); bigger messages are split into frames.
    /// The AMQP client keeps two buffers of 32 frames per connection, so this sizes the
    /// worker's memory: 16384 (the default) costs 1 MiB per connection instead of the 8 MiB
    /// of RabbitMQ's own 131072, for the same throughput on task-sized messages.
    pub frame_max: u32,
    /// `broker_use_ssl = {"ca_certs": …}`: a PEM file of the certificate authorities to
    /// trust for an `amqps://` broker (e.g. a self-signed one), besides the system's.
    /// Unset by default.
    pub ssl_ca_file: Option<String>,
    /// `broker_transport_options`: for a Redis broker, kombu's redis transport options
    /// (`visibility_timeout`, `global_keyprefix`, `priority_steps`, …; see
    /// [`RedisOptions`](super::redis::RedisOptions)). An AMQP broker takes none.
    pub transport_options: std::collections::BTreeMap<String, serde_json::Value>,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            url: "amqp://guest:guest@127.0.0.1:5672//".to_owned(),
            failover_strategy: FailoverStrategy::RoundRobin,
            heartbeat: 120,
            connection_retry_on_startup: true,
            connection_max_retries: 100,
            qos: Qos::Auto,
            global_qos: None,
            native_delayed_delivery_queue_type: queues::QueueType::Quorum,
            frame_max: 16_384,
            ssl_ca_file: None,
            transport_options: Default::default(),
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

    /// For a Redis broker, its URL and transport options read (or what is wrong with them);
    /// `None` for an AMQP broker.
    pub fn redis(&self) -> Option<Result<(RedisUrl, RedisOptions), ConfigError>> {
        if !is_redis_url(&self.url) {
            return None;
        }
        let url = RedisUrl::parse(&self.url).map_err(|e| ConfigError::invalid("broker.url", e));
        Some(url.and_then(|url| {
            let options = RedisOptions::from_map(&self.transport_options)?;
            if matches!(url.endpoint, Endpoint::Sentinel(_)) && options.master_name.is_none() {
                return Err(ConfigError::invalid(
                    "broker.transport_options.master_name",
                    "sentinel:// URLs need the name of the master the sentinels watch \
                     (broker_transport_options = {'master_name': 'mymaster'})",
                ));
            }
            Ok((url, options))
        }))
    }

    /// Whether the broker is Redis.
    pub fn is_redis(&self) -> bool {
        is_redis_url(&self.url)
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

    /// Checks `broker.url` (every URL an AMQP one that parses) and `broker.frame_max`.
    pub(super) fn validate_connection(&self) -> Result<(), ConfigError> {
        if let Some(redis) = self.redis() {
            redis?;
            return Ok(());
        }
        if let Some(key) = self.transport_options.keys().next() {
            return Err(ConfigError::invalid(
                format!("broker.transport_options.{key}"),
                "transport options apply to a Redis broker; the AMQP transport takes none \
                 (its settings are [broker] keys of their own); remove it",
            ));
        }
        let urls = self.urls();
        if urls.is_empty() {
            return Err(ConfigError::invalid("broker.url", "no URL given"));
        }
        for url in &urls {
            if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
                return Err(ConfigError::invalid(
                    "broker.url",
                    format!(
                        "{:?} is not an amqp://, amqps:// or Redis (redis://, rediss://, \
                         redis+socket://, sentinel://) URL",
                        mask_password(url)
                    ),
                ));
            }
            if url.parse::<amq_protocol_uri::AMQPUri>().is_err() {
                return Err(ConfigError::invalid(
                    "broker.url",
                    format!("cannot parse {:?}", mask_password(url)),
                ));
            }
        }
        if !(4096..=131_072).contains(&self.frame_max) {
            return Err(ConfigError::invalid(
                "broker.frame_max",
                format!("{} is not from 4096 to 131072", self.frame_max),
            ));
        }
        Ok(())
    }
}

/// `broker.qos`: how the prefetch limit applies (see [`BrokerSettings::qos`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Qos {
    /// Per-consumer for one queue or any quorum queue, else channel-wide.
    #[default]
    Auto,
    /// Channel-wide (`basic.qos` with `global = true`).
    Global,
    /// Per consumer (`global = false`).
    PerConsumer,
}

impl Qos {
    /// Whether it decides the question by itself: `Some(global)`, `None` for `auto`.
    pub fn global(self) -> Option<bool> {
        match self {
            Qos::Auto => None,
            Qos::Global => Some(true),
            Qos::PerConsumer => Some(false),
        }
    }
}

/// `broker_failover_strategy`: the order the broker URLs are tried in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailoverStrategy {
    /// As written, from the one last connected to.
    #[default]
    RoundRobin,
    /// An order drawn once per process.
    Shuffle,
}

impl FailoverStrategy {
    /// Celery's name for it: `round-robin`, `shuffle`.
    pub fn name(self) -> &'static str {
        match self {
            FailoverStrategy::RoundRobin => "round-robin",
            FailoverStrategy::Shuffle => "shuffle",
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

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
    fn broker_urls_are_one_a_list_or_an_array_and_kombus_schemes_are_read_as_amqp() {
        let s: Settings =
            toml::from_str("[broker]\nurl = [\"amqp://a:1@h1//\", \"pyamqp://b:2@h2:5673//\"]\n")
                .unwrap();
        assert_eq!(s.broker.urls(), ["amqp://a:1@h1//", "amqp://b:2@h2:5673//"]);
        assert!(s.validate().is_ok());
        assert!(
            !s.broker.safe_url().contains(":2@"),
            "{}",
            s.broker.safe_url()
        );
        let mut s = Settings::default();
        s.broker.url = "amqp://a:1@h1//; redis://x:secret@h2//".into();
        let err = s.validate().unwrap_err().to_string();
        assert!(
            err.contains("broker.url") && !err.contains("secret"),
            "{err}"
        );
    }

    #[test]
    fn closed_sets_are_read_by_name_and_a_wrong_one_is_refused_naming_the_key() {
        let s: Settings = toml::from_str(
            "[broker]\nqos = \"per-consumer\"\nfailover_strategy = \"shuffle\"\n\
             native_delayed_delivery_queue_type = \"classic\"\n",
        )
        .unwrap();
        assert_eq!(s.broker.qos, Qos::PerConsumer);
        assert_eq!(s.broker.failover_strategy, FailoverStrategy::Shuffle);
        assert_eq!(
            s.broker.native_delayed_delivery_queue_type,
            queues::QueueType::Classic
        );
        for (text, key, told) in [
            (
                "failover_strategy = \"random\"",
                "failover_strategy",
                "round-robin",
            ),
            ("qos = \"sometimes\"", "qos", "per-consumer"),
            (
                "native_delayed_delivery_queue_type = \"stream\"",
                "native_delayed",
                "quorum",
            ),
        ] {
            let table: toml::Value = toml::from_str(&format!("[broker]\n{text}\n")).unwrap();
            let e = table.try_into::<Settings>().unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(told), "{e}");
        }
    }
}
