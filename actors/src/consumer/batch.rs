//! Messages for the consumer gathered while another actor handles one message of its own, and
//! sent as one.
//!
//! When the pool handles a task's end it usually starts the next reserved task at once: a
//! [`TaskFinished`](super::ConsumerMessage::TaskFinished) and a
//! [`TaskStarted`](super::ConsumerMessage::TaskStarted) for the consumer. Sent apart, each is a
//! mailbox round (a wake, a handler future, the actor loop's checks); gathered here they travel
//! as one [`Batch`](super::ConsumerMessage::Batch), handled in order. Order is kept because
//! every message the owner sends the consumer goes through its [`ToConsumer`], and is flushed
//! before the owner's handler returns or waits on anything.

use ractor::ActorRef;

use super::ConsumerMessage;

/// The way to the consumer, with the messages not sent yet.
#[derive(Debug, Default)]
pub struct ToConsumer {
    actor: Option<ActorRef<ConsumerMessage>>,
    pending: Vec<ConsumerMessage>,
}

impl ToConsumer {
    /// Where messages go from now on.
    pub fn set(&mut self, actor: ActorRef<ConsumerMessage>) {
        self.actor = Some(actor);
    }

    /// Whether the consumer is known yet.
    pub fn is_set(&self) -> bool {
        self.actor.is_some()
    }

    /// Queues `msg` for the next [`flush`](Self::flush) (a batch's members, so that batches
    /// never nest); dropped when there is no consumer yet (nothing was delivered then, so
    /// nothing is reported).
    pub fn tell(&mut self, msg: ConsumerMessage) {
        if self.actor.is_none() {
            return;
        }
        match msg {
            ConsumerMessage::Batch(msgs) => self.pending.extend(msgs),
            msg => self.pending.push(msg),
        }
    }

    /// Sends what was queued: nothing, the one message, or a batch of them in order.
    pub fn flush(&mut self) {
        let Some(msg) = gather(&mut self.pending) else {
            return;
        };
        if let Some(actor) = &self.actor {
            let _ = actor.cast(msg);
        }
    }
}

/// The one message that carries `pending` (emptied), if any.
pub fn gather(pending: &mut Vec<ConsumerMessage>) -> Option<ConsumerMessage> {
    one_or_all(pending, |m| m, ConsumerMessage::Batch)
}

/// Empties `pending` into one message: none when it is empty, `one` of its only item, else
/// `all` of them in order.
pub fn one_or_all<T, M>(
    pending: &mut Vec<T>,
    one: impl FnOnce(T) -> M,
    all: impl FnOnce(Vec<T>) -> M,
) -> Option<M> {
    match pending.len() {
        0 => None,
        1 => pending.pop().map(one),
        _ => Some(all(std::mem::take(pending))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(msg: &ConsumerMessage) -> Vec<String> {
        match msg {
            ConsumerMessage::Batch(msgs) => msgs.iter().flat_map(names).collect(),
            ConsumerMessage::SetConcurrency(n) => vec![format!("concurrency {n}")],
            ConsumerMessage::HoldPrefetch => vec!["hold".into()],
            other => vec![format!("{other:?}")],
        }
    }

    #[test]
    fn nothing_pending_sends_nothing() {
        assert!(gather(&mut Vec::new()).is_none());
    }

    #[test]
    fn one_message_goes_as_itself() {
        let mut pending = vec![ConsumerMessage::SetConcurrency(3)];
        let msg = gather(&mut pending).expect("one message");
        assert!(matches!(msg, ConsumerMessage::SetConcurrency(3)));
        assert!(pending.is_empty());
    }

    #[test]
    fn several_go_as_one_batch_in_order() {
        let mut pending = vec![
            ConsumerMessage::HoldPrefetch,
            ConsumerMessage::SetConcurrency(2),
            ConsumerMessage::HoldPrefetch,
        ];
        let msg = gather(&mut pending).expect("a batch");
        assert!(matches!(&msg, ConsumerMessage::Batch(m) if m.len() == 3));
        assert_eq!(names(&msg), ["hold", "concurrency 2", "hold"]);
        assert!(pending.is_empty());
        assert!(gather(&mut pending).is_none());
    }

    #[tokio::test]
    async fn batches_told_are_flattened() {
        let (actor, _handle) = ractor::Actor::spawn(None, Sink, ())
            .await
            .expect("a sink actor");
        let mut to = ToConsumer::default();
        to.set(actor.clone());
        to.tell(ConsumerMessage::HoldPrefetch);
        to.tell(ConsumerMessage::Batch(vec![
            ConsumerMessage::SetConcurrency(1),
            ConsumerMessage::SetConcurrency(2),
        ]));
        let msg = gather(&mut to.pending).expect("a batch");
        assert_eq!(names(&msg), ["hold", "concurrency 1", "concurrency 2"]);
        assert!(matches!(&msg, ConsumerMessage::Batch(m) if m.len() == 3));
        actor.stop(None);
    }

    struct Sink;

    impl ractor::Actor for Sink {
        type Msg = ConsumerMessage;
        type State = ();
        type Arguments = ();

        async fn pre_start(
            &self,
            _myself: ActorRef<ConsumerMessage>,
            _args: (),
        ) -> Result<(), ractor::ActorProcessingErr> {
            Ok(())
        }
    }

    #[test]
    fn without_a_consumer_nothing_is_kept() {
        let mut to = ToConsumer::default();
        to.tell(ConsumerMessage::HoldPrefetch);
        assert!(!to.is_set());
        assert!(to.pending.is_empty());
        to.flush();
    }
}
