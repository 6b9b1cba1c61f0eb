//! What beat's election and the connection watch need on Redis: a lock (`SET NX PX`,
//! renewed while held, so it frees itself when its holder is gone), a watcher that pings,
//! and rpc:// result reading for `worker call`.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;

use super::link::Link;
use super::pidbox::Channel;
use super::{RedisError, connect, envelope};
use crate::abort::AbortOnDrop;

/// How long the lock lives without renewal.
const LOCK_TTL: Duration = Duration::from_secs(30);
/// How often a connection is pinged to notice it is gone.
const PING_EVERY: Duration = Duration::from_secs(5);

static RENEW_LOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then \
         return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0",
    )
});

impl Link {
    /// Calls `lost` once with the error when the connection stops answering.
    pub fn watch<F>(&self, lost: F) -> AbortOnDrop
    where
        F: FnOnce(String) + Send + 'static,
    {
        let mut conn = self.conn();
        AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(PING_EVERY).await;
                if let Err(e) = redis::cmd("PING").query_async::<()>(&mut conn).await {
                    lost(e.to_string());
                    return;
                }
            }
        }))
    }

    /// Takes the lock `name` (`SET NX PX`), held and renewed as long as the returned
    /// handle; held by another worker: [`RedisError::Locked`].
    pub async fn hold_lock(&self, name: &str) -> Result<Channel, RedisError> {
        let key = format!("{}{name}", self.shared.options.global_keyprefix);
        let token = uuid::Uuid::new_v4().to_string();
        let ttl = LOCK_TTL.as_millis() as u64;
        let mut conn = self.conn();
        let taken: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl)
            .query_async(&mut conn)
            .await?;
        if taken.is_none() {
            return Err(RedisError::Locked(name.to_owned()));
        }
        let renew = tokio::spawn(async move {
            loop {
                tokio::time::sleep(LOCK_TTL / 3).await;
                let kept: Result<i64, _> = RENEW_LOCK
                    .key(&key)
                    .arg(&token)
                    .arg(ttl)
                    .invoke_async(&mut conn)
                    .await;
                if matches!(kept, Ok(0)) {
                    return; // lost (expired and taken): the election notices
                }
            }
        });
        let mut ch = self.channel();
        ch._held = Some(Arc::new(AbortOnDrop(renew)));
        Ok(ch)
    }

    /// Receives the rpc:// results sent to the list `name`: each body goes to `sink` until
    /// it returns false (the client side, for `worker call`).
    pub async fn consume_results<F>(&self, name: &str, sink: F) -> Result<AbortOnDrop, RedisError>
    where
        F: Fn(Vec<u8>) -> bool + Send + 'static,
    {
        let mut conn = connect::connection(&self.shared.client, &self.shared.options, true).await?;
        let list = self.keys().queue_key(name, 0);
        Ok(AbortOnDrop(tokio::spawn(async move {
            loop {
                let popped: Result<Option<(String, Vec<u8>)>, _> = redis::cmd("BRPOP")
                    .arg(&list)
                    .arg(1)
                    .query_async(&mut conn)
                    .await;
                match popped {
                    Ok(Some((_, item))) => {
                        if let Ok(m) = envelope::parse(&item)
                            && !sink(m.body)
                        {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(_) => return,
                }
            }
        })))
    }
}
