//! What the [`Pool`] does for remote control ([`ControlMsg`]): `pool_grow`, `pool_shrink`,
//! `autoscale` (and the autoscaler's own rule, applied once a second), `pool_restart`, the
//! `time_limit` and `rate_limit` commands, and the questions of `inspect`, `stats` and the
//! heartbeats.

use std::time::Instant;

use ractor::ActorRef;
use tracing::info;

use super::autoscale::Scale;
use super::report::PoolReport;
use super::workers::Workers;
use super::{ControlMsg, Pool, PoolMessage, PoolState, PoolTasks};

impl Pool {
    /// [`ControlMsg`]: changes and questions.
    pub(super) async fn on_control(
        &self,
        myself: &ActorRef<PoolMessage>,
        state: &mut PoolState,
        msg: ControlMsg,
    ) {
        match msg {
            ControlMsg::Grow { n, reply } => {
                if state.autoscaler.is_some() {
                    let _ = reply.send(false);
                    return;
                }
                let _ = reply.send(true);
                let target = state.target.saturating_add(n).min(self.max_size.max(1));
                self.resize(myself, state, target).await;
                state.prefetch_follows(state.target);
            }
            ControlMsg::Shrink { n, reply } => {
                if state.autoscaler.is_some() {
                    let _ = reply.send(false);
                    return;
                }
                let _ = reply.send(true);
                let target = state.target.saturating_sub(n).max(1);
                self.resize(myself, state, target).await;
                state.prefetch_follows(state.target);
            }
            ControlMsg::Autoscale { max, min, reply } => {
                let Some(scaler) = state.autoscaler.as_mut() else {
                    let _ = reply.send(None);
                    return;
                };
                let old_max = scaler.max;
                let bounds = scaler.update(max, min);
                info!("Autoscale now max={} min={}.", bounds.0, bounds.1);
                let _ = reply.send(Some(bounds));
                if bounds.0 != old_max {
                    state.prefetch_follows(bounds.0);
                }
                self.autoscale(myself, state).await;
                state.dispatch(myself, self.default_limits);
            }
            ControlMsg::Restart { reply } => match &mut state.workers {
                // Refused by the settings (worker.pool_restarts): there is no process.
                Workers::InProcess(_) => {
                    let _ = reply.send(0);
                }
                Workers::Prefork(children) => {
                    let _ = reply.send(children.len());
                    children.restart();
                    self.resize(myself, state, state.target).await;
                }
            },
            ControlMsg::SetTimeLimit {
                task,
                soft,
                hard,
                reply,
            } => {
                let known = match state.task_limits.get_mut(&task) {
                    Some(limits) => {
                        limits.time_limit = hard;
                        limits.soft_time_limit = soft;
                        true
                    }
                    None => false,
                };
                let _ = reply.send(known);
            }
            ControlMsg::SetRateLimit { task, rate, reply } => {
                let known = state.task_limits.contains_key(&task);
                if known {
                    state.queue.set_rate(&task, rate, Instant::now());
                    state.dispatch(myself, self.default_limits);
                }
                let _ = reply.send(known);
            }
            ControlMsg::GetActiveIds { reply } => {
                let running = state.workers.running();
                let ids = running.map(|(r, _)| r.request.id.clone()).collect();
                let _ = reply.send(ids);
            }
            ControlMsg::GetTasks { reply } => {
                let _ = reply.send(state.tasks());
            }
        }
    }

    /// Sets the number of children (tasks at once, in process) to keep and starts or stops
    /// children to match (busy ones stop when their task ends).
    async fn resize(&self, myself: &ActorRef<PoolMessage>, state: &mut PoolState, target: usize) {
        state.target = target;
        match &mut state.workers {
            Workers::Prefork(children) => {
                Box::pin(children.grow(target, &mut state.consumer, state.draining)).await;
                children.shrink(target);
            }
            // Only how many may run at once changes; running jobs finish as they are.
            Workers::InProcess(_) => state.dispatch(myself, self.default_limits),
        }
    }

    /// Applies the autoscaler's rule to the current load.
    pub(super) async fn autoscale(&self, myself: &ActorRef<PoolMessage>, state: &mut PoolState) {
        let Some(scaler) = state.autoscaler else {
            return;
        };
        if state.draining {
            return;
        }
        let now = Instant::now();
        match scaler.decide(state.target, state.held(), now) {
            Scale::Up(n) => {
                info!("Scaling up {n} processes.");
                if let Some(s) = state.autoscaler.as_mut() {
                    s.grew(now);
                }
                self.resize(myself, state, state.target + n).await;
            }
            Scale::Down(n) => {
                info!("Scaling down {n} processes.");
                self.resize(myself, state, state.target - n).await;
            }
            Scale::Hold => {}
        }
    }
}

impl PoolState {
    /// Tells the consumer the prefetch count now follows `processes` children.
    fn prefetch_follows(&mut self, processes: usize) {
        self.consumer.tell(PoolReport::SetConcurrency(processes));
    }

    /// What runs and what waits, for `inspect` and `stats`.
    fn tasks(&self) -> PoolTasks {
        let size = self.workers.size(self.target);
        PoolTasks {
            active: self
                .workers
                .running()
                .map(|(r, pid)| (r.request.clone(), pid, r.started_at))
                .collect(),
            reserved: self.queue.requests().cloned().collect(),
            processes: self.workers.processes(),
            total: self.total.clone(),
            target: self.target,
            autoscaler: self.autoscaler.map(|a| (a.max, a.min, size, self.held())),
        }
    }
}
