//! Test doubles for actor-level unit tests: a peer that records what it is sent.

use std::marker::PhantomData;

use ractor::{Actor, ActorProcessingErr, ActorRef, Message};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A peer actor that hands every message it receives to the test, in order.
pub(crate) struct Recorder<M>(PhantomData<fn() -> M>);

impl<M: Message> Actor for Recorder<M> {
    type Msg = M;
    type State = mpsc::UnboundedSender<M>;
    type Arguments = mpsc::UnboundedSender<M>;

    async fn pre_start(
        &self,
        _myself: ActorRef<M>,
        out: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(out)
    }

    async fn handle(
        &self,
        _myself: ActorRef<M>,
        msg: M,
        out: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = out.send(msg);
        Ok(())
    }
}

/// A recording peer: its ref, what it received, and its handle.
pub(crate) async fn recorder<M: Message>()
-> (ActorRef<M>, mpsc::UnboundedReceiver<M>, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (actor, handle) = Actor::spawn(None, Recorder(PhantomData), tx)
        .await
        .expect("a recorder starts");
    (actor, rx, handle)
}
