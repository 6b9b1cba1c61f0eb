//! The prefork strategy of the [`Pool`](super::Pool): each task runs in a child process, one
//! [`ChildProcess`] actor per process and one task per child at a time. The pool supervises
//! the children one-for-one: a child that stops has its task reported (lost, killed at its
//! hard limit, or terminated) and is replaced, with backoff when children keep dying at
//! start-up. A child is recycled once its task ends (`max_tasks_per_child`,
//! `max_memory_per_child`, `pool_restart`), and stopped when the pool shrinks (an idle one at
//! once, a busy one when its task ends).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tracing::{debug, error, info, warn};

use super::PoolMessage;
use super::child::{ChildMessage, ChildProcess, ChildStop};
use super::message::TimerMsg;
use super::report::{PoolReport, ToConsumer};
use super::workers::Running;
use crate::metrics::Metrics;
use crate::process::{ChildCommand, Limits, Recycling};
use crate::work::{Reserved, TaskOutcome};

/// The child actors, and how to start more.
#[derive(Debug)]
pub struct Prefork {
    /// The pool: the children's supervisor, and where they report.
    pool: ActorRef<PoolMessage>,
    command: ChildCommand,
    hostname: String,
    recycling: Recycling,
    metrics: Arc<Metrics>,
    children: HashMap<ActorId, Slot>,
    /// When children failed at start-up lately (the last minute), for the backoff.
    recent_failures: VecDeque<Instant>,
}

#[derive(Debug)]
struct Slot {
    actor: ActorRef<ChildMessage>,
    pid: Option<u32>,
    busy: bool,
    /// What the child runs, so that a child that dies (even with the task still in its
    /// mailbox) has its task reported lost rather than dropped.
    running: Option<Running>,
    /// Its task was revoked with `terminate`: however it ends, it is REVOKED `terminated`.
    terminating: Option<i32>,
    /// `pool_restart` asked for it to be replaced once its task ends.
    retire: bool,
}

impl Prefork {
    /// No children yet; they start `command` and report to `pool`.
    pub(super) fn new(
        pool: ActorRef<PoolMessage>,
        command: ChildCommand,
        hostname: String,
        recycling: Recycling,
        metrics: Arc<Metrics>,
    ) -> Self {
        Prefork {
            pool,
            command,
            hostname,
            recycling,
            metrics,
            children: HashMap::new(),
            recent_failures: VecDeque::new(),
        }
    }

    /// How many children there are (starting, idle or busy).
    pub(super) fn len(&self) -> usize {
        self.children.len()
    }

    /// Children running a task.
    pub(super) fn active(&self) -> usize {
        self.children.values().filter(|s| s.busy).count()
    }

    /// The running tasks, each with its child's pid.
    pub(super) fn running(&self) -> impl Iterator<Item = (&Running, u32)> {
        self.children
            .values()
            .filter_map(|s| s.running.as_ref().map(|r| (r, s.pid.unwrap_or_default())))
    }

    /// The pids of the children that are up.
    pub(super) fn processes(&self) -> Vec<u32> {
        self.children.values().filter_map(|s| s.pid).collect()
    }

    /// Whether an idle child is ready for work.
    pub(super) fn has_room(&self) -> bool {
        self.idle().is_some()
    }

    fn idle(&self) -> Option<ActorId> {
        self.children
            .iter()
            .find(|(_, s)| !s.busy && s.pid.is_some())
            .map(|(id, _)| *id)
    }

    /// Hands `reserved` to an idle child: its pid, or the request back when the child actor
    /// is gone (its supervision event will replace it and clear the slot, which stays busy
    /// meanwhile).
    pub(super) fn start(
        &mut self,
        reserved: Box<Reserved>,
        running: Running,
        limits: Limits,
    ) -> Result<u32, Option<Box<Reserved>>> {
        let Some(slot) = self.idle().and_then(|id| self.children.get_mut(&id)) else {
            return Err(Some(reserved));
        };
        let pid = slot.pid.unwrap_or_default();
        slot.busy = true;
        match slot.actor.cast(ChildMessage::Run(reserved, limits)) {
            Ok(()) => {
                slot.running = Some(running);
                Ok(pid)
            }
            Err(ractor::MessagingErr::SendErr(ChildMessage::Run(back, _))) => {
                info!(task_id = %back.request.id, "Child went away; task goes back to the queue.");
                Err(Some(back))
            }
            Err(_) => Err(None),
        }
    }

    /// Sends `signal` to the children running these ids; their tasks will be REVOKED
    /// `terminated` however they end.
    pub(super) fn terminate(&mut self, ids: &HashSet<String>, signal: Signal) {
        for slot in self.children.values_mut() {
            let Some(run) = &slot.running else { continue };
            if ids.contains(&run.request.id) {
                info!(
                    "Terminating {}[{}] (signal {signal}).",
                    run.request.display_name(),
                    run.request.id
                );
                slot.terminating = Some(signal as i32);
                let _ = slot.actor.cast(ChildMessage::Terminate(signal));
            }
        }
    }

    /// Child `child` is up as process `pid`.
    pub(super) fn ready(&mut self, child: ActorId, pid: u32) {
        if let Some(slot) = self.children.get_mut(&child) {
            slot.pid = Some(pid);
        }
    }

    /// Child `child` finished its task, which ended with `outcome`: the outcome to report
    /// (`Terminated` for a task revoked with terminate) and why to replace the child now, if
    /// it should be. None when the child is gone: its task was reported lost already by the
    /// supervision event (which ractor delivers ahead of ordinary messages).
    pub(super) fn finished(
        &mut self,
        child: ActorId,
        outcome: TaskOutcome,
        recycle: Option<String>,
    ) -> Option<(TaskOutcome, Option<String>)> {
        let slot = self.children.get_mut(&child)?;
        slot.busy = false;
        slot.running = None;
        let recycle = recycle.or_else(|| slot.retire.then(|| "pool_restart".to_owned()));
        let outcome = match slot.terminating.take() {
            Some(signum) => TaskOutcome::Terminated(signum),
            None => outcome,
        };
        Some((outcome, recycle))
    }

    /// Replaces idle child `child` (after `why`): it leaves the pool before it stops, so its
    /// supervision event is not mistaken for a death; the replacement starts right away
    /// (unless the pool drains).
    pub(super) async fn recycle(
        &mut self,
        child: ActorId,
        why: &str,
        consumer: &mut ToConsumer,
        draining: bool,
    ) {
        self.metrics.recycled();
        if let Some(old) = self.children.remove(&child) {
            info!(
                "Replacing child process {} after {why}.",
                old.pid.unwrap_or_default()
            );
            old.actor.stop(Some("recycled".into()));
        }
        if !draining && let Err(e) = self.spawn(consumer).await {
            self.start_failed(&e.to_string());
        }
    }

    /// A child actor stopped ([`Actor::handle_supervisor_evt`]): its task is reported (lost,
    /// killed at its limit, or terminated) and, unless the pool drains, a replacement
    /// scheduled. False when it was no child of the pool's (any more).
    pub(super) fn stopped(
        &mut self,
        event: SupervisionEvent,
        consumer: &mut ToConsumer,
        draining: bool,
    ) -> bool {
        let (cell, reason) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason),
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            _ => return false,
        };
        let Some(slot) = self.children.remove(&cell.get_id()) else {
            // A recycled child (already replaced) or one from before a restart.
            debug!(actor = %cell.get_id(), "Supervision event from a child no longer in the pool.");
            return false;
        };
        let reason = reason.unwrap_or_default();
        let stop = ChildStop::parse(&reason);
        // How the process ended, as the running task's WorkerLostError quotes it.
        let how = match &stop {
            Some(ChildStop::Exited(how)) => how.clone(),
            _ => reason.clone(),
        };
        if let Some(run) = slot.running {
            let outcome = match (slot.terminating, &stop) {
                (Some(signum), _) => TaskOutcome::Terminated(signum),
                (None, Some(ChildStop::HardLimit(seconds))) => {
                    TaskOutcome::TimeLimitExceeded(*seconds)
                }
                (None, _) => TaskOutcome::WorkerLost(how.clone()),
            };
            consumer.tell(PoolReport::TaskFinished {
                reserved: run.to_reserved(),
                outcome,
                runtime: run.since.elapsed(),
            });
        }
        if draining {
            return true;
        }
        match slot.pid {
            None => self.start_failed(&format!("died before it was ready ({how})")),
            Some(pid) if matches!(stop, Some(ChildStop::HardLimit(_))) => {
                self.metrics.killed();
                info!(
                    child_pid = pid,
                    "Child process killed at the hard time limit; replacing it."
                );
                self.schedule_spawn();
            }
            Some(pid) => {
                self.metrics.lost();
                warn!(
                    child_pid = pid,
                    reason = %how,
                    "Child process gone; starting a replacement."
                );
                self.schedule_spawn();
            }
        }
        true
    }

    /// Starts children until there are `target` (not while the pool drains).
    pub(super) async fn grow(&mut self, target: usize, consumer: &mut ToConsumer, draining: bool) {
        while self.children.len() < target && !draining {
            if let Err(e) = self.spawn(consumer).await {
                self.start_failed(&e.to_string());
                break;
            }
        }
    }

    /// The backoff is over ([`TimerMsg::SpawnChild`]): starts a replacement if the pool is
    /// still short of `target`.
    pub(super) async fn respawn(&mut self, target: usize, consumer: &mut ToConsumer) {
        if self.children.len() < target
            && let Err(e) = self.spawn(consumer).await
        {
            self.start_failed(&e.to_string());
        }
    }

    /// Stops idle children while there are more than `target` (busy ones are stopped by
    /// another call when their task ends).
    pub(super) fn shrink(&mut self, target: usize) {
        while self.children.len() > target {
            let Some(id) = self
                .children
                .iter()
                .find(|(_, s)| !s.busy)
                .map(|(id, _)| *id)
            else {
                return;
            };
            if let Some(slot) = self.children.remove(&id) {
                info!(
                    "Pool shrinks: stopping child process {}.",
                    slot.pid.unwrap_or_default()
                );
                slot.actor.stop(Some("pool_shrink".into()));
            }
        }
    }

    /// `pool_restart`: stops the idle children now and marks the busy ones to be replaced
    /// when their task ends. The caller [`grow`](Self::grow)s the pool back.
    pub(super) fn restart(&mut self) {
        info!(
            "Pool restart: replacing {} child processes.",
            self.children.len()
        );
        let idle: Vec<ActorId> = self
            .children
            .iter()
            .filter(|(_, s)| !s.busy)
            .map(|(id, _)| *id)
            .collect();
        for slot in self.children.values_mut() {
            slot.retire = slot.busy;
        }
        for id in idle {
            if let Some(old) = self.children.remove(&id) {
                old.actor.stop(Some("pool_restart".into()));
            }
        }
    }

    /// Starts one child, linked to the pool.
    pub(super) async fn spawn(
        &mut self,
        consumer: &mut ToConsumer,
    ) -> Result<(), ActorProcessingErr> {
        // What was told the consumer goes before the wait for the child to start.
        consumer.flush();
        let child = ChildProcess::new(
            self.command.clone(),
            self.hostname.clone(),
            self.pool.clone(),
            self.recycling,
        );
        let (actor, _handle) = Actor::spawn_linked(None, child, (), self.pool.get_cell()).await?;
        self.children.insert(
            actor.get_id(),
            Slot {
                actor,
                pid: None,
                busy: false,
                running: None,
                terminating: None,
                retire: false,
            },
        );
        Ok(())
    }

    /// A child could not be started, or died before it was ready: counted for the backoff and
    /// reported loudly, then another start is scheduled.
    pub(super) fn start_failed(&mut self, why: &str) {
        self.recent_failures.push_back(Instant::now());
        let delay = restart_backoff(self.recent_failures.len());
        error!(
            "Child process failed to start: {why}; next attempt in {} ms.",
            delay.as_millis()
        );
        self.schedule_spawn();
    }

    /// Starts a replacement now, or after a backoff when children keep failing at start-up
    /// (never a hot loop).
    fn schedule_spawn(&mut self) {
        let now = Instant::now();
        while self
            .recent_failures
            .front()
            .is_some_and(|t| now - *t > Duration::from_secs(60))
        {
            self.recent_failures.pop_front();
        }
        let delay = restart_backoff(self.recent_failures.len());
        self.pool.send_after(delay, || TimerMsg::SpawnChild.into());
    }
}

/// Delay before starting a replacement, given recent start-up failures: none for the first,
/// then doubling from 100 ms up to 30 s.
pub fn restart_backoff(recent_failures: usize) -> Duration {
    match recent_failures {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(100u64.saturating_mul(1 << (n - 2).min(9)))
            .min(Duration::from_secs(30)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(restart_backoff(0), Duration::ZERO);
        assert_eq!(restart_backoff(1), Duration::ZERO);
        assert_eq!(restart_backoff(2), Duration::from_millis(100));
        assert_eq!(restart_backoff(3), Duration::from_millis(200));
        assert_eq!(restart_backoff(50), Duration::from_secs(30));
    }
}
