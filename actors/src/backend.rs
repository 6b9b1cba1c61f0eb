//! The result backend actor: stores Rust tasks' results in Redis as Celery's Redis backend
//! does (`celery-task-meta-<id>` with `result_expires`, published on the same channel for
//! clients waiting by pub/sub; a SUCCESS already stored is never overwritten), and counts
//! chord header parts with the same keys and the same atomic claim as Celery 5.7, so that a
//! chord's header and body may run on celeryd and Python workers in any mix.
//!
//! Writes are kept in order. While Redis is unreachable they wait in memory and are retried
//! with a backoff; the log says when it went and when it came back, and how many results
//! waited. An error Redis answers (not a lost connection) drops that one write, logged with
//! the task id. Supervised by [`Supervisor`](crate::supervisor::Supervisor); the consumer
//! sends to it; it tells the consumer when a chord's body is due.

pub mod redis_keys;

use std::collections::VecDeque;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::Value;
use tracing::{debug, error, info, warn};

use self::redis_keys::{CLAIM_SECONDS, CLEANUP_SCRIPT, DONE_SECONDS, PART_SCRIPT, group_key};
use crate::settings::mask_password;

/// The backend actor.
#[derive(Debug)]
pub struct Backend {
    url: String,
    expires: u64,
    ordered: bool,
}

impl Backend {
    /// A backend storing in the Redis at `url`, results kept `expires` seconds (0: for
    /// ever), chord parts ordered by header index when `ordered`.
    pub fn new(url: String, expires: f64, ordered: bool) -> Self {
        Backend {
            url,
            expires: expires.max(0.0).round() as u64,
            ordered,
        }
    }
}

/// A chord header part, to be counted.
#[derive(Debug, Clone)]
pub struct ChordPart {
    /// The chord's group id (the header's `group` header).
    pub group_id: String,
    /// The header task's id.
    pub task_id: String,
    /// Its position in the header (`group_index`), when the client sent one.
    pub group_index: Option<i64>,
    /// The part as the backend records it ([`redis_keys::chord_part`]).
    pub part: Vec<u8>,
    /// The chord's body signature (the request's `chord`).
    pub body: Value,
    /// The header task's workflow root.
    pub root_id: String,
}

/// A chord whose header is complete, and whose body this worker holds the claim to publish.
#[derive(Debug, Clone)]
pub struct ChordReady {
    /// The chord's group id.
    pub group_id: String,
    /// The claim's token (given back with [`BackendMessage::ChordCleanup`]).
    pub token: String,
    /// The body signature.
    pub body: Value,
    /// The header's results in order, or the part that failed.
    pub results: Result<Vec<Value>, (String, Value)>,
    /// The last header task (the body's parent).
    pub task_id: String,
    /// The workflow root.
    pub root_id: String,
}

/// Messages to the backend.
#[derive(Debug)]
pub enum BackendMessage {
    /// Where to tell that a chord body is due (the consumer, which publishes it).
    SetConsumer(DerivedActorRef<Box<ChordReady>>),
    /// Store a task's result (`value`: the stored JSON).
    Store {
        /// Task id.
        task_id: String,
        /// The value to store.
        value: Vec<u8>,
    },
    /// Count a chord header part.
    ChordPart(Box<ChordPart>),
    /// The body is published: release the claim and clear the chord's counters.
    ChordCleanup {
        /// The chord's group id.
        group_id: String,
        /// The claim's token.
        token: String,
    },
    /// Retry what waits (sent to itself).
    Flush,
}

#[derive(Debug)]
enum Op {
    Store { task_id: String, value: Vec<u8> },
    Part(Box<ChordPart>),
    Cleanup { group_id: String, token: String },
}

impl Op {
    fn describe(&self) -> String {
        match self {
            Op::Store { task_id, .. } => format!("the result of task {task_id}"),
            Op::Part(p) => format!("chord part {} of group {}", p.task_id, p.group_id),
            Op::Cleanup { group_id, .. } => format!("the cleanup of chord {group_id}"),
        }
    }
}

/// The backend's state.
#[derive(Debug)]
pub struct BackendState {
    conn: ConnectionManager,
    pending: VecDeque<Op>,
    /// Since when Redis is unreachable, and how many retries so far.
    down: Option<(std::time::Instant, u32)>,
    retry_armed: bool,
    consumer: Option<DerivedActorRef<Box<ChordReady>>>,
    part_script: redis::Script,
    cleanup_script: redis::Script,
}

impl Actor for Backend {
    type Msg = BackendMessage;
    type State = BackendState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        let client = redis::Client::open(self.url.as_str())?;
        // Fail a command soon when Redis is away; the actor keeps it and retries itself.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        info!(backend = %mask_password(&self.url), "Results of Rust tasks go to Redis.");
        Ok(BackendState {
            conn,
            pending: VecDeque::new(),
            down: None,
            retry_armed: false,
            consumer: None,
            part_script: redis::Script::new(PART_SCRIPT),
            cleanup_script: redis::Script::new(CLEANUP_SCRIPT),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let op = match msg {
            BackendMessage::SetConsumer(c) => {
                state.consumer = Some(c);
                return Ok(());
            }
            BackendMessage::Store { task_id, value } => Op::Store { task_id, value },
            BackendMessage::ChordPart(p) => Op::Part(p),
            BackendMessage::ChordCleanup { group_id, token } => Op::Cleanup { group_id, token },
            BackendMessage::Flush => {
                state.retry_armed = false;
                self.flush(&myself, state).await;
                return Ok(());
            }
        };
        state.pending.push_back(op);
        if state.down.is_none() {
            self.flush(&myself, state).await;
        }
        Ok(())
    }
}

/// Whether a Redis error means "not reachable now" (retry) rather than a refused command.
fn is_transient(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped()
}

/// The most results sent in one pipeline.
const STORE_BATCH: usize = 256;

/// Delay before retry `n` (1-based): 0.5 s doubling to 8 s.
pub fn retry_backoff(n: u32) -> Duration {
    Duration::from_millis(500u64 << n.saturating_sub(1).min(4))
}

impl Backend {
    /// Sends what waits, in order, until Redis fails; then arms a retry.
    async fn flush(&self, myself: &ActorRef<BackendMessage>, state: &mut BackendState) {
        while let Some(op) = state.pending.pop_front() {
            // Results waiting one after another go in one pipeline (one round trip).
            let mut single = Some(op);
            let mut batch = Vec::new();
            if matches!(single, Some(Op::Store { .. }))
                && matches!(state.pending.front(), Some(Op::Store { .. }))
            {
                batch.extend(single.take());
                while batch.len() < STORE_BATCH
                    && matches!(state.pending.front(), Some(Op::Store { .. }))
                {
                    batch.extend(state.pending.pop_front());
                }
            }
            let done = match &single {
                Some(op) => self.run(state, op).await,
                None => match self.store_all(state, &batch).await {
                    Err(e) if !is_transient(&e) => {
                        // One of them is refused: store them one by one, so only it is lost.
                        for one in &batch {
                            if let Err(e) = self.run(state, one).await {
                                error!(error = %e, "The result backend refused {}; it is dropped.", one.describe());
                            }
                        }
                        Ok(())
                    }
                    other => other,
                },
            };
            let op = single;
            match done {
                Ok(()) => {
                    if let Some((since, _)) = state.down.take() {
                        info!(
                            waited = state.pending.len() + 1,
                            "The result backend is reachable again after {:.1} s; the results \
                             kept meanwhile are being stored.",
                            since.elapsed().as_secs_f64()
                        );
                    }
                }
                Err(e) if is_transient(&e) => {
                    for back in op.into_iter().chain(batch).rev() {
                        state.pending.push_front(back);
                    }
                    let (since, tries) = state.down.unwrap_or((std::time::Instant::now(), 0));
                    if tries == 0 {
                        warn!(error = %e, kept = state.pending.len(),
                            "The result backend is unreachable; results are kept in memory and \
                             stored when it is back. The worker goes on.");
                    } else {
                        debug!(error = %e, kept = state.pending.len(), "Result backend still unreachable.");
                    }
                    state.down = Some((since, tries + 1));
                    if !state.retry_armed {
                        state.retry_armed = true;
                        myself.send_after(retry_backoff(tries + 1), || BackendMessage::Flush);
                    }
                    return;
                }
                Err(e) => {
                    let what = op.as_ref().map_or_else(String::new, Op::describe);
                    error!(error = %e, "The result backend refused {what}; it is dropped.");
                }
            }
        }
    }

    /// Stores several results in one pipeline.
    async fn store_all(&self, state: &mut BackendState, batch: &[Op]) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        for op in batch {
            if let Op::Store { task_id, value } = op {
                pipe.add_command(self.store_cmd(task_id, value)).ignore();
            }
        }
        pipe.query_async::<()>(&mut state.conn).await
    }

    /// The one command that stores a result: [`redis_keys::STORE_SCRIPT`] (a stored SUCCESS
    /// is kept; else SET with the expiry, then PUBLISH on the key).
    fn store_cmd(&self, task_id: &str, value: &[u8]) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(redis_keys::STORE_SCRIPT)
            .arg(1)
            .arg(redis_keys::task_key(task_id))
            .arg(value)
            .arg(self.expires);
        cmd
    }

    async fn run(&self, state: &mut BackendState, op: &Op) -> redis::RedisResult<()> {
        match op {
            Op::Store { task_id, value } => self.store(state, task_id, value).await,
            Op::Part(part) => self.count_part(state, part).await,
            Op::Cleanup { group_id, token } => {
                let key = |s: &str| group_key(group_id, s);
                let cleaned: i64 = state
                    .cleanup_script
                    .key(key(".c"))
                    .key(key(".j"))
                    .key(key(".t"))
                    .key(key(".s"))
                    .key(key(".d"))
                    .arg(token)
                    .arg(DONE_SECONDS)
                    .invoke_async(&mut state.conn)
                    .await?;
                if cleaned == 0 {
                    warn!(group_id = %group_id,
                        "Chord claim lost before cleanup; its data is left to expire.");
                }
                Ok(())
            }
        }
    }

    async fn store(
        &self,
        state: &mut BackendState,
        task_id: &str,
        value: &[u8],
    ) -> redis::RedisResult<()> {
        let stored: i64 = self
            .store_cmd(task_id, value)
            .query_async(&mut state.conn)
            .await?;
        if stored == 0 {
            debug!(
                task_id,
                "A SUCCESS is stored already; the later state is not."
            );
        }
        Ok(())
    }

    async fn count_part(&self, state: &mut BackendState, p: &ChordPart) -> redis::RedisResult<()> {
        let key = |s: &str| group_key(&p.group_id, s);
        let token = uuid::Uuid::new_v4().simple().to_string();
        let score = p
            .group_index
            .map_or_else(|| "+inf".to_owned(), |i| i.to_string());
        let reply: Vec<redis::Value> = state
            .part_script
            .key(key(".j"))
            .key(key(".t"))
            .key(key(".s"))
            .key(key(".d"))
            .key(key(""))
            .key(key(".c"))
            .arg(&p.task_id)
            .arg(&p.part)
            .arg(if self.ordered { "1" } else { "0" })
            .arg(score)
            .arg(self.expires)
            .arg(self.expires)
            .arg(CLAIM_SECONDS)
            .arg(&token)
            .invoke_async(&mut state.conn)
            .await?;
        let number = |i: usize| -> Option<i64> {
            match reply.get(i)? {
                redis::Value::Int(n) => Some(*n),
                redis::Value::BulkString(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
                redis::Value::SimpleString(s) => s.trim().parse().ok(),
                _ => None,
            }
        };
        let (count, diff, size, claimed) = (number(0), number(1), number(2), number(3));
        debug!(group_id = %p.group_id, task_id = %p.task_id, ?count, ?size, "Chord part counted.");
        let (Some(count), Some(size)) = (count, size) else {
            return Ok(()); // done already (-1 has a size of 0), or no size set yet
        };
        if count < 0 || count != size + diff.unwrap_or(0) || claimed != Some(1) {
            return Ok(());
        }
        let parts: Vec<Vec<u8>> = if self.ordered {
            redis::cmd("ZRANGE")
                .arg(key(".j"))
                .arg(0)
                .arg(-1)
                .query_async(&mut state.conn)
                .await?
        } else {
            redis::cmd("LRANGE")
                .arg(key(".j"))
                .arg(0)
                .arg(count)
                .query_async(&mut state.conn)
                .await?
        };
        let ready = ChordReady {
            group_id: p.group_id.clone(),
            token,
            body: p.body.clone(),
            results: redis_keys::chord_results(&parts),
            task_id: p.task_id.clone(),
            root_id: p.root_id.clone(),
        };
        match &state.consumer {
            Some(c) => {
                let _ = c.send_message(Box::new(ready));
            }
            None => {
                error!(group_id = %p.group_id, "A chord is complete but no consumer publishes its body.")
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_eight_seconds() {
        assert_eq!(retry_backoff(1), Duration::from_millis(500));
        assert_eq!(retry_backoff(2), Duration::from_secs(1));
        assert_eq!(retry_backoff(5), Duration::from_secs(8));
        assert_eq!(retry_backoff(50), Duration::from_secs(8));
    }
}
