//! Where the [`Pool`](super::Pool)'s tasks run, one strategy per pool kind: [`Prefork`]
//! (child processes) or [`InProcess`] (`async`, `threads`, `solo`). The pool's shared logic
//! (the queue, dispatch, revokes, `inspect`, resizing) asks [`Workers`] the few things it
//! needs; what only one strategy has (children to supervise, jobs to time) the pool reaches
//! through its own variant.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use nix::sys::signal::Signal;
use ractor::ActorRef;
use time::OffsetDateTime;

use super::PoolMessage;
use super::inproc::InProcess;
use super::prefork::Prefork;
use crate::process::Limits;
use crate::protocol::TaskRequest;
use crate::work::{DeliveryRef, Reserved, TaskOutcome};

/// The pool's strategy and what it runs.
#[derive(Debug)]
pub(super) enum Workers {
    /// One child actor per OS process, one task each at a time.
    Prefork(Prefork),
    /// Jobs in the worker process, up to the pool's target at once.
    InProcess(InProcess),
}

/// A task that runs, as the pool keeps it: enough to report it however it ends.
#[derive(Debug)]
pub(super) struct Running {
    pub(super) request: Arc<TaskRequest>,
    pub(super) delivery: DeliveryRef,
    pub(super) was_scheduled: bool,
    pub(super) received: Instant,
    pub(super) since: Instant,
    pub(super) started_at: f64,
}

impl Running {
    /// `r` starts now.
    pub(super) fn of(r: &Reserved) -> Self {
        Running {
            request: r.request.clone(),
            delivery: r.delivery,
            was_scheduled: r.was_scheduled,
            received: r.received,
            since: Instant::now(),
            started_at: crate::protocol::time::epoch_f64(OffsetDateTime::now_utc()),
        }
    }

    /// The request again, to report how it ended.
    pub(super) fn to_reserved(&self) -> Box<Reserved> {
        Box::new(Reserved {
            request: self.request.clone(),
            delivery: self.delivery,
            was_scheduled: self.was_scheduled,
            holds_prefetch: false, // released when it started
            received: self.received,
        })
    }
}

impl Workers {
    /// Tasks holding a child, or a slot of the in-process pool.
    pub(super) fn active(&self) -> usize {
        match self {
            Workers::Prefork(children) => children.active(),
            Workers::InProcess(jobs) => jobs.len(),
        }
    }

    /// The running tasks, each with the pid it runs in.
    pub(super) fn running(&self) -> Box<dyn Iterator<Item = (&Running, u32)> + '_> {
        match self {
            Workers::Prefork(children) => Box::new(children.running()),
            Workers::InProcess(jobs) => Box::new(jobs.running().map(|r| (r, jobs.pid()))),
        }
    }

    /// Whether a task could start now: an idle child that is ready, or a free slot of the
    /// in-process pool (which has `target` of them).
    pub(super) fn has_room(&self, target: usize) -> bool {
        match self {
            Workers::Prefork(children) => children.has_room(),
            Workers::InProcess(jobs) => jobs.len() < target,
        }
    }

    /// The pids tasks run in.
    pub(super) fn processes(&self) -> Vec<u32> {
        match self {
            Workers::Prefork(children) => children.processes(),
            Workers::InProcess(jobs) => vec![jobs.pid()],
        }
    }

    /// The pool's size now: its children, or the `target` of the in-process pool.
    pub(super) fn size(&self, target: usize) -> usize {
        match self {
            Workers::Prefork(children) => children.len(),
            Workers::InProcess(_) => target,
        }
    }

    /// Starts `reserved` (kept as `running`) under `limits`, when [`has_room`](Self::has_room):
    /// the pid it runs in, or the request back when it could not start (`None`: lost with a
    /// child actor that refused it).
    pub(super) fn start(
        &mut self,
        pool: &ActorRef<PoolMessage>,
        reserved: Box<Reserved>,
        running: Running,
        limits: Limits,
    ) -> Result<u32, Option<Box<Reserved>>> {
        match self {
            Workers::Prefork(children) => children.start(reserved, running, limits),
            Workers::InProcess(jobs) => {
                jobs.start(pool, running, limits);
                Ok(jobs.pid())
            }
        }
    }

    /// `revoke --terminate`: stops the running tasks with these ids. In-process ones are
    /// returned to be reported at once; a child's is reported when the child says it ended.
    pub(super) fn terminate(
        &mut self,
        ids: &HashSet<String>,
        signal: Signal,
    ) -> Vec<(Box<Reserved>, TaskOutcome)> {
        match self {
            Workers::Prefork(children) => {
                children.terminate(ids, signal);
                Vec::new()
            }
            Workers::InProcess(jobs) => jobs.terminate(ids, signal),
        }
    }
}
