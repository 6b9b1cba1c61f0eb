//! The pool commands: `pool_grow`, `pool_shrink`, `autoscale` and `pool_restart`, within
//! `worker.max_pool_size`. The solo pool runs one task at a time and refuses resizing before
//! the arguments are looked at.

use serde_json::Value;
use tracing::info;

use super::command::Checked;
use super::inspect::pool_tasks;
use super::request::{error, ok};
use super::{Control, ControlPeers};
use crate::pool::ControlMsg;

impl Control {
    /// The solo pool's refusal of `command` (a resize), if this worker runs it.
    fn solo_refusal(&self, command: &str) -> Option<Value> {
        (self.settings.worker.pool == crate::settings::PoolKind::Solo).then(|| {
            error(format!(
                "NotImplementedError('the solo pool runs one task at a time: {command} is not \
                 possible (use -P threads or -P async)')"
            ))
        })
    }

    /// `pool_grow` (`grow`) or `pool_shrink` by `n` processes.
    pub(super) async fn resize(
        &self,
        peers: &ControlPeers,
        grow: bool,
        n: Checked<usize>,
    ) -> Value {
        let command = if grow { "pool_grow" } else { "pool_shrink" };
        if let Some(refusal) = self.solo_refusal(command) {
            return refusal;
        }
        let limit = self.settings.pool_size_limit();
        let n = match n {
            Ok(n) => n,
            Err(e) => return e,
        };
        if grow {
            let now = pool_tasks(peers).await.target;
            if now.saturating_add(n) > limit {
                return error(format!(
                    "ValueError('pool_grow by {n} would make {} processes; at most \
                     {limit} are allowed (worker.max_pool_size)')",
                    now.saturating_add(n)
                ));
            }
        }
        let done = if grow {
            ractor::call!(peers.pool, |reply| ControlMsg::Grow { n, reply }.into())
        } else {
            ractor::call!(peers.pool, |reply| ControlMsg::Shrink { n, reply }.into())
        };
        match (done.unwrap_or(false), grow) {
            (true, true) => ok("pool will grow"),
            (true, false) => ok("pool will shrink"),
            (false, _) => error(format!(
                "{command} is not supported with autoscale. Adjust autoscale range instead."
            )),
        }
    }

    /// `autoscale`: new `max` and `min` bounds (either may be left as it is).
    pub(super) async fn autoscale(
        &self,
        peers: &ControlPeers,
        bounds: Checked<(Option<usize>, Option<usize>)>,
    ) -> Value {
        if let Some(refusal) = self.solo_refusal("autoscale") {
            return refusal;
        }
        let (max, min) = match bounds {
            Ok(b) => b,
            Err(e) => return e,
        };
        let limit = self.settings.pool_size_limit();
        if let Some(n) = max.into_iter().chain(min).find(|n| *n > limit) {
            return error(format!(
                "ValueError('autoscale to {n} processes: at most {limit} are allowed \
                 (worker.max_pool_size)')"
            ));
        }
        let bounds = ractor::call!(peers.pool, |reply| ControlMsg::Autoscale {
            max,
            min,
            reply
        }
        .into());
        match bounds.ok().flatten() {
            Some((max, min)) => ok(format!("autoscale now max={max} min={min}")),
            None => error("ValueError('Autoscale not enabled')"),
        }
    }

    /// `pool_restart`: new processes for the old ones, if `worker.pool_restarts` allows it.
    pub(super) async fn pool_restart(&self, peers: &ControlPeers) -> Value {
        if self.settings.worker.pool_restarts {
            let n = ractor::call!(peers.pool, |reply| ControlMsg::Restart { reply }.into());
            info!(
                children = n.unwrap_or(0),
                "Pool restart requested by remote control."
            );
            ok("reload started")
        } else {
            error("ValueError('Pool restarts not enabled')")
        }
    }
}
