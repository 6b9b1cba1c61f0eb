//! The task limit commands: `rate_limit` and `time_limit`. The pool enforces them; the
//! control actor's copy of the task attributes (what `registered` shows) follows.

use std::collections::BTreeMap;

use serde_json::Value;

use super::command::{Checked, TimeLimits};
use super::info::TaskAttrs;
use super::request::{error, ok};
use super::{Control, ControlPeers};
use crate::pool::ControlMsg;

/// `rate_limit`: sets `task`'s rate (`text` as written, `rate` per second; `None` disables
/// it) in the pool, and in `tasks` once the pool knows the task.
pub(super) async fn rate_limit(
    peers: &ControlPeers,
    tasks: &mut BTreeMap<String, TaskAttrs>,
    task: String,
    text: String,
    rate: Option<f64>,
) -> Value {
    let known = ractor::call!(peers.pool, |reply| ControlMsg::SetRateLimit {
        task: task.clone(),
        rate,
        reply
    }
    .into())
    .unwrap_or(false);
    if known && let Some(attrs) = tasks.get_mut(&task) {
        attrs.rate_limit = Some(text).filter(|r| !r.is_empty());
    }
    match (known, rate) {
        (false, _) => error("unknown task"),
        (true, Some(_)) => ok("new rate limit set successfully"),
        (true, None) => ok("rate limit disabled successfully"),
    }
}

impl Control {
    /// `time_limit`: sets the task's (soft, hard) limits in the pool, and in `tasks` once the
    /// pool knows the task. A pool on threads refuses a hard limit (whatever its value) before
    /// the arguments are looked at.
    pub(super) async fn time_limit(
        &self,
        peers: &ControlPeers,
        tasks: &mut BTreeMap<String, TaskAttrs>,
        hard_given: bool,
        limits: Checked<TimeLimits>,
    ) -> Value {
        if self.settings.worker.pool.on_threads() && hard_given {
            return error(format!(
                "NotImplementedError('the {} pool runs tasks on threads, which cannot be \
                 killed: a hard time limit cannot be enforced; set the soft one only')",
                self.settings.worker.pool.name()
            ));
        }
        let TimeLimits { task, soft, hard } = match limits {
            Ok(l) => l,
            Err(e) => return e,
        };
        let known = ractor::call!(peers.pool, |reply| ControlMsg::SetTimeLimit {
            task: task.clone(),
            soft,
            hard,
            reply
        }
        .into())
        .unwrap_or(false);
        if !known {
            return error("unknown task");
        }
        if let Some(attrs) = tasks.get_mut(&task) {
            attrs.time_limit = hard;
            attrs.soft_time_limit = soft;
        }
        ok("time limits set successfully")
    }
}
