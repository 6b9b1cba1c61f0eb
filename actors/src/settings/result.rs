//! `[result]`: the result backend of Rust tasks, and which backend ([`BackendKind`]) its URL
//! names.

use serde::{Deserialize, Serialize};

use super::mask_password;
use crate::error::ConfigError;

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
    pub expires: super::Seconds,
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
            expires: super::Seconds::whole(86_400),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

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
}
