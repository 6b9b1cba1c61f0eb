//! The root of the tree. Starts the revoke registry, the pool (with its children), the
//! scheduler, remote control and the consumer, in that order (the scheduler releases into the
//! pool, so the pool comes first; control comes before the consumer so that a node name already
//! in use stops the start before any task is taken; the consumer comes last so nothing is
//! delivered before there is somewhere to run it), and stops them in reverse.
//!
//! Warm shutdown: cancel consuming; take back what the pool and the scheduler hold but have
//! not started and requeue it; wait for running tasks (their results are published and acked);
//! close the connection. Cold shutdown: kill everything now (unacked messages return to the
//! broker when the connection drops). An infrastructure child that fails (the consumer giving
//! up on the broker, a queue clash) stops the supervisor with that reason: never a quiet loop.

mod children;
mod endpoint;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{error, info, warn};

use self::children::{Children, Stop};
use self::endpoint::GaugeSources;
use crate::abort::AbortOnDrop;
use crate::beat::{Beat, BeatMessage};
use crate::broker::{BrokerError, ErrorKind};
use crate::clock::Clock;
use crate::consumer::python::PythonTasks;
use crate::consumer::{Consumer, ConsumerMessage, ConsumerPeers};
use crate::control::custom::ControlCommands;
use crate::control::info::TaskAttrs;
use crate::control::{Control, ControlMessage, ControlPeers};
use crate::events::{Events, EventsMessage, TaskEvents};
use crate::helper::{HelperProcess, PythonHelper};
use crate::metrics::Metrics;
use crate::pool::{ControlMsg, LifecycleMsg, Pool, PoolArgs, PoolMessage, effective_rates};
use crate::process::python::PythonTask;
use crate::process::{ChildCommand, Recycling};
use crate::revoke::{RevokePeers, RevokeRegistry, RevokedCount};
use crate::scheduler::{Scheduler, SchedulerMessage};
use crate::settings::Settings;
use crate::shutdown::ShutdownMode;
use crate::task::{TaskOptions, Tasks};

/// Why the supervisor stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum ExitReason {
    /// Warm shutdown completed.
    Warm,
    /// Cold shutdown.
    Cold,
    /// An infrastructure child failed.
    Failed(Failure),
}

/// A child that stopped the worker: which, what kind of failure, and its words.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The child's name (`consumer`, `pool`, …).
    pub component: &'static str,
    /// What kind of failure it is.
    pub kind: FailureKind,
    /// What it said.
    pub message: String,
}

/// The kinds of failure the exit code tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The broker refused the login: retrying will not mend it.
    LoginRefused,
    /// A queue or exchange is declared otherwise on the broker: the configuration must change.
    Clash,
    /// The broker could not be reached (or gave up on).
    Broker,
    /// Anything else.
    Other,
}

impl Failure {
    /// The failure of `component`, classified by its error's type (a [`BrokerError`] and its
    /// [`kind`](BrokerError::kind)), never by its text.
    pub fn of(component: &'static str, error: &(dyn std::error::Error + 'static)) -> Failure {
        let kind = match error.downcast_ref::<BrokerError>() {
            Some(BrokerError::Clash { .. }) => FailureKind::Clash,
            Some(e) if e.kind() == ErrorKind::LoginRefused => FailureKind::LoginRefused,
            Some(_) => FailureKind::Broker,
            None => FailureKind::Other,
        };
        Failure {
            component,
            kind,
            message: error.to_string(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.component, self.message)
    }
}

/// Everything the tree is built from.
#[derive(Debug)]
pub struct SupervisorArgs {
    /// Validated settings.
    pub settings: Settings,
    /// The expanded node name.
    pub hostname: String,
    /// The registered tasks (name -> options set at registration).
    pub tasks: HashMap<String, TaskOptions>,
    /// The application's own remote-control commands.
    pub commands: ControlCommands,
    /// How to start a child process.
    pub child_command: ChildCommand,
    /// The Rust tasks, which the in-process pools (`async`, `threads`, `solo`) run.
    pub registry: Arc<Tasks>,
    /// With `-A`: the app's `beat_schedule` entries, for the scheduler (`-B`).
    pub beat_entries: crate::settings::BeatEntries,
    /// Receives the exit reason just before the supervisor stops.
    pub exit: UnboundedSender<ExitReason>,
    /// With Python tasks (`-A`): the helper (already started: it said which tasks the app
    /// has) and those tasks. `child_command` then starts Python children.
    pub python: Option<PythonSetup>,
}

/// What a worker with Python tasks starts with.
#[derive(Debug)]
pub struct PythonSetup {
    /// The helper process, started and ready.
    pub helper: HelperProcess,
    /// How to start another helper process if it dies.
    pub helper_command: ChildCommand,
    /// The app's tasks, from the helper's `ready` frame.
    pub tasks: HashMap<String, PythonTask>,
    /// The content types the app accepts (MIME types; empty = JSON only).
    pub accept: Vec<String>,
    /// What `inspect conf` and `inspect report` answer.
    pub info: crate::control::PythonInfo,
}

/// The supervisor actor.
#[derive(Debug, Default)]
pub struct Supervisor;

/// Messages to the supervisor.
#[derive(Debug)]
pub enum SupervisorMessage {
    /// Shut down (a signal arrived, or the `shutdown` control command).
    Shutdown(ShutdownMode),
    /// Log what runs and waits (SIGUSR1).
    DumpActive,
    /// The warm shutdown sequence finished (sent by its own task).
    Drained,
}

/// Remote control asks for a shutdown through a derived ref of this.
impl From<ShutdownMode> for SupervisorMessage {
    fn from(mode: ShutdownMode) -> Self {
        SupervisorMessage::Shutdown(mode)
    }
}

impl TryFrom<SupervisorMessage> for ShutdownMode {
    type Error = SupervisorMessage;

    fn try_from(msg: SupervisorMessage) -> Result<Self, SupervisorMessage> {
        match msg {
            SupervisorMessage::Shutdown(mode) => Ok(mode),
            other => Err(other),
        }
    }
}

/// The supervisor's state: its children's handles.
#[derive(Debug)]
pub struct SupervisorState {
    /// Every child, in start order: named in failures, stopped in reverse.
    children: Children,
    /// The children the shutdown sequence and `DumpActive` talk to.
    pool: ActorRef<PoolMessage>,
    scheduler: ActorRef<SchedulerMessage>,
    consumer: ActorRef<ConsumerMessage>,
    events: ActorRef<EventsMessage>,
    /// With `-B`: the periodic task scheduler (stopped first in a warm shutdown).
    beat: Option<ActorRef<BeatMessage>>,
    /// The metrics endpoint's task, stopped with the supervisor.
    _metrics_endpoint: Option<AbortOnDrop<()>>,
    exit: UnboundedSender<ExitReason>,
    shutting_down: bool,
}

impl Actor for Supervisor {
    type Msg = SupervisorMessage;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let cell = myself.get_cell();
        let settings = Arc::new(args.settings);
        let registry = RevokeRegistry {
            statedb: settings
                .worker
                .statedb
                .as_ref()
                .map(std::path::PathBuf::from),
            max: settings.worker.revokes_max,
            expires: settings.worker.revoke_expires.duration(),
            count: RevokedCount::default(),
        };
        let revoked = registry.count.clone();
        // Bound before anything starts: an address in use stops the start with the reason.
        let listener = match &settings.worker.metrics_addr {
            Some(addr) => {
                let socket = crate::settings::metrics_socket(addr)?;
                Some(tokio::net::TcpListener::bind(socket).await.map_err(|e| {
                    format!("cannot serve metrics on {addr} (worker.metrics_addr): {e}")
                })?)
            }
            None => None,
        };
        let metrics = if listener.is_some() {
            Metrics::new()
        } else {
            Metrics::off()
        };
        let mut python_info = None;
        let (helper, python) = match args.python {
            Some(setup) => {
                python_info = Some(setup.info);
                let actor = PythonHelper::new(setup.helper_command);
                let (helper, _) =
                    Actor::spawn_linked(None, actor, Some(setup.helper), cell.clone()).await?;
                let tasks = Arc::new(PythonTasks {
                    helper: helper.clone(),
                    tasks: setup.tasks,
                    accept: setup.accept,
                });
                (Some(helper), Some(tasks))
            }
            None => (None, None),
        };
        let pool = Pool::new(PoolArgs {
            kind: settings.worker.pool,
            registry: args.registry,
            max_size: settings.pool_size_limit(),
            async_threads: settings.worker.async_threads,
            command: args.child_command,
            concurrency: settings.effective_concurrency(),
            hostname: args.hostname.clone(),
            recycling: Recycling {
                max_tasks: settings.worker.max_tasks_per_child,
                max_memory_kib: settings.worker.max_memory_per_child,
            },
            default_limits: settings.default_limits(),
            rates: effective_rates(&settings, &args.tasks),
            autoscale: settings.worker.autoscale.map(|a| {
                let keepalive = settings.worker.autoscale_keepalive.duration();
                ((a.max, a.min), keepalive)
            }),
            metrics: metrics.clone(),
        });
        let attrs = task_attrs(&settings, &args.tasks);
        let registered: HashSet<String> = args.tasks.keys().cloned().collect();
        let ignoring: std::collections::HashMap<String, bool> = args
            .tasks
            .iter()
            .filter_map(|(name, o)| Some((name.clone(), o.ignore_result?)))
            .collect();
        let backend = match settings.result.kind() {
            Ok(crate::settings::BackendKind::Redis(url)) if python.is_none() => {
                let b = crate::backend::Backend::new(
                    url,
                    settings.result.expires.as_secs_f64(),
                    settings.result.chord_ordered,
                );
                Some(Actor::spawn_linked(None, b, (), cell.clone()).await?.0)
            }
            _ => None,
        };
        let (pool, _) = Actor::spawn_linked(None, pool, args.tasks, cell.clone()).await?;
        let clock = Clock::new();
        let task_events = TaskEvents::new(settings.worker.send_events);
        let dispatcher = Events::new(
            settings.clone(),
            args.hostname.clone(),
            clock.clone(),
            task_events.clone(),
        );
        let (events, _) = Actor::spawn_linked(None, dispatcher, pool.clone(), cell.clone()).await?;
        let (scheduler, _) =
            Actor::spawn_linked(None, Scheduler::new(pool.clone()), (), cell.clone()).await?;
        let revoke_peers = RevokePeers {
            pool: pool.clone(),
            scheduler: scheduler.clone(),
        };
        let (revoke, _) = Actor::spawn_linked(None, registry, revoke_peers, cell.clone()).await?;
        let peers = ConsumerPeers {
            backend: backend.clone(),
            pool: pool.clone(),
            scheduler: scheduler.clone(),
            revoke: revoke.clone(),
            revoked,
            events: events.clone(),
            task_events: task_events.clone(),
            metrics: metrics.clone(),
            python,
            clock: clock.clone(),
        };
        let beat = if settings.worker.beat {
            let b = Beat::new(settings.clone(), args.hostname.clone(), args.beat_entries);
            Some(Actor::spawn_linked(None, b, (), cell.clone()).await?.0)
        } else {
            None
        };
        let control_peers = ControlPeers {
            supervisor: myself.get_derived(),
            revoke: revoke.clone(),
            pool: pool.clone(),
            scheduler: scheduler.clone(),
            events: events.clone(),
            task_events,
            clock,
            helper: helper.clone(),
            beat: beat.clone(),
        };
        let mut control = Control::new(
            settings.clone(),
            args.hostname.clone(),
            attrs,
            args.commands,
        );
        if let Some(info) = python_info {
            control = control.with_python(info);
        }
        let (control, _) =
            Actor::spawn_linked(None, control, control_peers, myself.get_cell()).await?;
        let consumer =
            Consumer::new(settings.clone(), args.hostname.clone(), registered).ignoring(ignoring);
        let (consumer, _) = Actor::spawn_linked(None, consumer, peers, cell).await?;
        pool.cast(LifecycleMsg::SetConsumer(consumer.get_derived()).into())?;
        if let Some(b) = &backend {
            b.cast(crate::backend::BackendMessage::SetConsumer(
                consumer.get_derived(),
            ))?;
        }
        control.cast(ControlMessage::SetConsumer(consumer.clone()))?;
        let metrics_endpoint = listener.map(|l| {
            let sources = GaugeSources {
                pool: pool.clone(),
                scheduler: scheduler.clone(),
                revoke: revoke.clone(),
            };
            AbortOnDrop(tokio::spawn(endpoint::serve(l, metrics, sources)))
        });
        // Start order (helper, backend, pool, events, scheduler, revoke registry, beat,
        // control, consumer): each is started before what sends to it.
        let mut children = Children::default();
        if let Some(h) = &helper {
            children.push("python-helper", h.get_cell(), Stop::Signal);
        }
        if let Some(b) = &backend {
            children.push("backend", b.get_cell(), Stop::Drain);
        }
        children.push("pool", pool.get_cell(), Stop::Signal);
        children.push("events", events.get_cell(), Stop::Signal);
        children.push("scheduler", scheduler.get_cell(), Stop::Signal);
        children.push("revoke-registry", revoke.get_cell(), Stop::Signal);
        if let Some(b) = &beat {
            children.push("beat", b.get_cell(), Stop::Signal);
        }
        children.push("control", control.get_cell(), Stop::Signal);
        children.push("consumer", consumer.get_cell(), Stop::Signal);
        Ok(SupervisorState {
            children,
            pool,
            scheduler,
            consumer,
            events,
            beat,
            _metrics_endpoint: metrics_endpoint,
            exit: args.exit,
            shutting_down: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMessage::Shutdown(ShutdownMode::Warm) if !state.shutting_down => {
                state.shutting_down = true;
                info!("worker: Warm shutdown (MainProcess)");
                if let Some(beat) = &state.beat {
                    // Nothing is sent after a warm shutdown begins (the lock goes with it).
                    beat.stop(Some("warm_shutdown".into()));
                }
                tokio::spawn(warm_shutdown(
                    myself.clone(),
                    state.consumer.clone(),
                    state.pool.clone(),
                    state.scheduler.clone(),
                    state.events.clone(),
                ));
            }
            SupervisorMessage::Shutdown(ShutdownMode::Warm) => {}
            SupervisorMessage::Shutdown(ShutdownMode::Cold) => {
                warn!("worker: Cold shutdown (MainProcess)");
                state.stop_all(&myself, ExitReason::Cold, true);
            }
            SupervisorMessage::DumpActive => {
                tokio::spawn(dump_active(state.pool.clone(), state.scheduler.clone()));
            }
            SupervisorMessage::Drained => {
                info!("Warm shutdown complete.");
                state.stop_all(&myself, ExitReason::Warm, false);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let failure = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => Failure {
                component: state.children.name_of(cell.get_id()),
                kind: FailureKind::Other,
                message: reason.unwrap_or_default(),
            },
            SupervisionEvent::ActorFailed(cell, err) => {
                Failure::of(state.children.name_of(cell.get_id()), err.as_ref())
            }
            _ => return Ok(()),
        };
        if state.shutting_down {
            return Ok(());
        }
        error!(actor = failure.component, reason = %failure.message,
            "A worker component stopped; shutting down.");
        state.shutting_down = true;
        state.stop_all(&myself, ExitReason::Failed(failure), true);
        Ok(())
    }
}

impl SupervisorState {
    /// Stops the children in reverse start order, then the supervisor itself.
    fn stop_all(&mut self, myself: &ActorRef<SupervisorMessage>, reason: ExitReason, kill: bool) {
        self.shutting_down = true;
        tracing::debug!(order = ?self.children.stop_order(), kill, "Stopping the worker's components.");
        self.children.stop_all(kill);
        let _ = self.exit.send(reason);
        myself.stop(Some("shutdown".into()));
    }
}

async fn warm_shutdown(
    myself: ActorRef<SupervisorMessage>,
    consumer: ActorRef<ConsumerMessage>,
    pool: ActorRef<PoolMessage>,
    scheduler: ActorRef<SchedulerMessage>,
    events: ActorRef<EventsMessage>,
) {
    let _ = ractor::call!(consumer, |reply| ConsumerMessage::StopConsuming { reply });
    let mut unstarted =
        ractor::call!(pool, |reply| LifecycleMsg::Drain { reply }.into()).unwrap_or_default();
    unstarted.extend(
        ractor::call!(scheduler, |reply| SchedulerMessage::Drain { reply }).unwrap_or_default(),
    );
    if !unstarted.is_empty() {
        info!(
            count = unstarted.len(),
            "Returning unstarted tasks to the broker."
        );
    }
    let _ = ractor::call!(consumer, |reply| ConsumerMessage::Requeue {
        reserved: unstarted,
        reply
    });
    let _ = ractor::call!(pool, |reply| LifecycleMsg::WaitIdle { reply }.into());
    let _ = ractor::call!(consumer, |reply| ConsumerMessage::Close { reply });
    let _ = ractor::call!(events, EventsMessage::Offline);
    let _ = myself.cast(SupervisorMessage::Drained);
}

/// Each task's attributes as `inspect registered` shows them: the rate limit as configured
/// (`[task.rate_limits]`, else the registration's, else `default_rate_limit`) and the time
/// limits set at registration.
fn task_attrs(
    settings: &Settings,
    tasks: &HashMap<String, TaskOptions>,
) -> std::collections::BTreeMap<String, TaskAttrs> {
    let t = &settings.task;
    tasks
        .iter()
        .map(|(name, opts)| {
            let rate_limit = match t.rate_limits.get(name) {
                Some(r) => Some(r.clone()).filter(|r| !r.trim().is_empty()),
                None => opts
                    .rate_limit
                    .map(crate::pool::rate::format_rate)
                    .or_else(|| t.default_rate_limit.clone()),
            };
            let attrs = TaskAttrs {
                rate_limit,
                time_limit: opts.time_limit,
                soft_time_limit: opts.soft_time_limit,
            };
            (name.clone(), attrs)
        })
        .collect()
}

/// SIGUSR1: logs the tasks running now (with child pid and time so far), and how many wait.
async fn dump_active(pool: ActorRef<PoolMessage>, scheduler: ActorRef<SchedulerMessage>) {
    let tasks =
        ractor::call!(pool, |reply| ControlMsg::GetTasks { reply }.into()).unwrap_or_default();
    let held = ractor::call!(scheduler, SchedulerMessage::GetScheduled)
        .map(|h| h.len())
        .unwrap_or_default();
    let now = crate::protocol::time::epoch_f64(time::OffsetDateTime::now_utc());
    let mut text = format!(
        "Dump of active tasks (SIGUSR1): {} running, {} reserved, {held} scheduled, {} children",
        tasks.active.len(),
        tasks.reserved.len(),
        tasks.processes.len()
    );
    for (req, pid, started) in &tasks.active {
        text.push_str(&format!(
            "\n  * {}[{}] pid={pid} running {:.1}s args={} kwargs={}",
            req.display_name(),
            req.id,
            now - started,
            req.argsrepr,
            req.kwargsrepr
        ));
    }
    warn!("{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_by_their_type_not_their_words() {
        let clash = BrokerError::Clash {
            name: "q".into(),
            reason: "x-max-priority".into(),
        };
        assert_eq!(Failure::of("consumer", &clash).kind, FailureKind::Clash);
        let refused = BrokerError::Unreachable {
            url: "amqp://h".into(),
            attempts: 1,
            last: "ACCESS_REFUSED: check the user".into(),
        };
        assert_eq!(
            Failure::of("consumer", &refused).kind,
            FailureKind::LoginRefused
        );
        let gone = BrokerError::Unreachable {
            url: "amqp://h".into(),
            attempts: 3,
            last: "connection refused".into(),
        };
        let f = Failure::of("consumer", &gone);
        assert_eq!(f.kind, FailureKind::Broker);
        assert!(
            f.to_string()
                .starts_with("consumer: cannot reach the broker"),
            "{f}"
        );
        let other = std::io::Error::other("the broker said so");
        assert_eq!(
            Failure::of("beat", &other).kind,
            FailureKind::Other,
            "words do not count"
        );
    }
}
