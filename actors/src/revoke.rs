//! Revoked task ids, with Celery's expiry (ids older than `expires` are dropped) and cap.
//! In memory for now; the RocksDB-backed statedb comes with the revoke control command.
//!
//! Supervised by [`Supervisor`](crate::supervisor::Supervisor); asked by the consumer for
//! every delivery.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

/// Celery keeps revoked ids for 3 hours (`CELERY_WORKER_REVOKE_EXPIRES`).
pub const DEFAULT_EXPIRES: Duration = Duration::from_secs(10_800);
/// Celery keeps at most 50,000 revoked ids (`CELERY_WORKER_REVOKES_MAX`).
pub const DEFAULT_MAX: usize = 50_000;

/// Revoked ids with their time of revocation; O(1) lookup, oldest dropped first.
#[derive(Debug)]
pub struct RevokedSet {
    ids: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
    max: usize,
    expires: Duration,
}

impl RevokedSet {
    /// An empty set keeping at most `max` ids for `expires` each.
    pub fn new(max: usize, expires: Duration) -> Self {
        RevokedSet {
            ids: HashMap::new(),
            order: VecDeque::new(),
            max,
            expires,
        }
    }

    /// Adds an id revoked at `now`.
    pub fn add(&mut self, id: String, now: Instant) {
        self.purge(now);
        if self.ids.insert(id.clone(), now).is_none() {
            self.order.push_back((now, id));
        }
        while self.ids.len() > self.max {
            self.pop_oldest();
        }
    }

    /// Whether `id` is revoked (and not expired) at `now`.
    pub fn contains(&self, id: &str, now: Instant) -> bool {
        self.ids
            .get(id)
            .is_some_and(|t| now.duration_since(*t) < self.expires)
    }

    /// Drops expired ids.
    pub fn purge(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= self.expires)
        {
            self.pop_oldest();
        }
    }

    /// The ids, oldest first.
    pub fn ids(&self) -> Vec<String> {
        self.order
            .iter()
            .filter(|(t, id)| self.ids.get(id) == Some(t))
            .map(|(_, id)| id.clone())
            .collect()
    }

    fn pop_oldest(&mut self) {
        if let Some((t, id)) = self.order.pop_front()
            && self.ids.get(&id) == Some(&t)
        {
            self.ids.remove(&id);
        }
    }
}

/// The revoke registry actor.
#[derive(Debug, Default)]
pub struct RevokeRegistry;

/// Messages to the revoke registry.
#[derive(Debug)]
pub enum RevokeMessage {
    /// Add these ids.
    Revoke(Vec<String>),
    /// Whether this id is revoked.
    IsRevoked(String, RpcReplyPort<bool>),
    /// All revoked ids.
    GetRevoked(RpcReplyPort<Vec<String>>),
}

impl Actor for RevokeRegistry {
    type Msg = RevokeMessage;
    type State = RevokedSet;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(RevokedSet::new(DEFAULT_MAX, DEFAULT_EXPIRES))
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        match msg {
            RevokeMessage::Revoke(ids) => ids.into_iter().for_each(|id| state.add(id, now)),
            RevokeMessage::IsRevoked(id, reply) => {
                let _ = reply.send(state.contains(&id, now));
            }
            RevokeMessage::GetRevoked(reply) => {
                state.purge(now);
                let _ = reply.send(state.ids());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_and_caps() {
        let t0 = Instant::now();
        let mut s = RevokedSet::new(2, Duration::from_secs(10));
        s.add("a".into(), t0);
        s.add("b".into(), t0 + Duration::from_secs(1));
        assert!(s.contains("a", t0 + Duration::from_secs(2)));
        s.add("c".into(), t0 + Duration::from_secs(2));
        assert!(
            !s.contains("a", t0 + Duration::from_secs(2)),
            "capped: oldest dropped"
        );
        assert!(!s.contains("b", t0 + Duration::from_secs(12)), "expired");
        s.purge(t0 + Duration::from_secs(11));
        assert_eq!(s.ids(), vec!["c".to_owned()]);
    }
}
