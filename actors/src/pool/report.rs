//! What the pool tells the consumer, gathered while the pool handles one message of its own
//! and sent as one [`PoolReports`].
//!
//! When the pool handles a task's end it usually starts the next reserved task at once: a
//! [`PoolReport::TaskFinished`] and a [`PoolReport::TaskStarted`]. Sent apart, each is a
//! mailbox round (a wake, a handler future, the actor loop's checks); gathered here they travel
//! as one message, handled in order. Order is kept because every report goes through the one
//! [`ToConsumer`], flushed before the pool's handler returns or waits on anything.
//!
//! The pool names no consumer type: the consumer hands it a
//! [`ractor::DerivedActorRef`] of [`PoolReports`].

use std::sync::Arc;
use std::time::Duration;

use ractor::DerivedActorRef;

use crate::protocol::TaskRequest;
use crate::task::TaskSignal;
use crate::work::{Reserved, StartedInfo, TaskOutcome};

/// One thing the pool tells the consumer.
#[derive(Debug)]
pub enum PoolReport {
    /// A child (or an in-process job) started a task.
    TaskStarted(Box<StartedInfo>),
    /// A task ended, or will not run.
    TaskFinished {
        /// The request and its delivery.
        reserved: Box<Reserved>,
        /// How it ended.
        outcome: TaskOutcome,
        /// How long it ran.
        runtime: Duration,
    },
    /// A running Rust task asks for a state update or a task to be sent.
    TaskSignal {
        /// The task.
        request: Arc<TaskRequest>,
        /// What it asks.
        signal: TaskSignal,
    },
    /// The pool holds one more request for a rate-limit token (marked `holds_prefetch`):
    /// the prefetch window grows by one until it starts, so other tasks keep flowing past it.
    HoldPrefetch,
    /// The pool now has (or, autoscaling, may have) this many children: the prefetch count
    /// follows (`pool_grow`, `pool_shrink`, `autoscale`), as Celery's does.
    SetConcurrency(usize),
}

/// Reports sent together, in order.
#[derive(Debug)]
pub struct PoolReports(pub Vec<PoolReport>);

/// The way to the consumer, with the reports not sent yet.
#[derive(Debug, Default)]
pub struct ToConsumer {
    actor: Option<DerivedActorRef<PoolReports>>,
    pending: Vec<PoolReport>,
}

impl ToConsumer {
    /// Where reports go from now on.
    pub fn set(&mut self, actor: DerivedActorRef<PoolReports>) {
        self.actor = Some(actor);
    }

    /// Whether the consumer is known yet.
    pub fn is_set(&self) -> bool {
        self.actor.is_some()
    }

    /// Queues `report` for the next [`flush`](Self::flush); dropped when there is no consumer
    /// yet (nothing was delivered then, so nothing is reported).
    pub fn tell(&mut self, report: PoolReport) {
        if self.actor.is_some() {
            self.pending.push(report);
        }
    }

    /// Sends what was queued, as one message, if anything.
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let reports = PoolReports(std::mem::take(&mut self.pending));
        if let Some(actor) = &self.actor {
            let _ = actor.send_message(reports);
        }
    }
}

#[cfg(test)]
mod tests {
    use ractor::{Actor, ActorProcessingErr, ActorRef};
    use tokio::sync::mpsc;

    use super::*;

    /// Records the batches it receives.
    struct Recorder;

    enum RecorderMsg {
        Reports(PoolReports),
    }

    impl From<PoolReports> for RecorderMsg {
        fn from(r: PoolReports) -> Self {
            RecorderMsg::Reports(r)
        }
    }

    impl TryFrom<RecorderMsg> for PoolReports {
        type Error = ();
        fn try_from(m: RecorderMsg) -> Result<Self, ()> {
            let RecorderMsg::Reports(r) = m;
            Ok(r)
        }
    }

    impl Actor for Recorder {
        type Msg = RecorderMsg;
        type State = mpsc::UnboundedSender<Vec<String>>;
        type Arguments = mpsc::UnboundedSender<Vec<String>>;

        async fn pre_start(
            &self,
            _myself: ActorRef<RecorderMsg>,
            out: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(out)
        }

        async fn handle(
            &self,
            _myself: ActorRef<RecorderMsg>,
            RecorderMsg::Reports(PoolReports(reports)): RecorderMsg,
            out: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            let names = reports
                .iter()
                .map(|r| match r {
                    PoolReport::SetConcurrency(n) => format!("concurrency {n}"),
                    PoolReport::HoldPrefetch => "hold".to_owned(),
                    other => format!("{other:?}"),
                })
                .collect();
            let _ = out.send(names);
            Ok(())
        }
    }

    #[tokio::test]
    async fn reports_of_one_message_travel_as_one_batch_in_order() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (actor, handle) = Actor::spawn(None, Recorder, tx).await.expect("a recorder");
        let mut to = ToConsumer::default();
        to.set(actor.get_derived());
        to.flush(); // nothing pending: nothing sent
        to.tell(PoolReport::HoldPrefetch);
        to.tell(PoolReport::SetConcurrency(2));
        to.tell(PoolReport::HoldPrefetch);
        to.flush();
        to.tell(PoolReport::SetConcurrency(1));
        to.flush();
        assert_eq!(
            rx.recv().await.expect("a batch"),
            ["hold", "concurrency 2", "hold"]
        );
        assert_eq!(rx.recv().await.expect("a batch"), ["concurrency 1"]);
        actor.stop(None);
        handle.await.expect("stopped");
        assert!(
            rx.try_recv().is_err(),
            "one message per flush, none for an empty one"
        );
    }

    #[test]
    fn without_a_consumer_nothing_is_kept() {
        let mut to = ToConsumer::default();
        to.tell(PoolReport::HoldPrefetch);
        assert!(!to.is_set());
        assert!(to.pending.is_empty());
        to.flush();
    }
}
