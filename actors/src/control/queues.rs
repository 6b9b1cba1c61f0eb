//! The consumer commands: `add_consumer`, `cancel_consumer` and `active_queues`, answered by
//! the consumer actor (none until the supervisor hands it over: then `add_consumer` is an
//! error, `cancel_consumer` a no-op and `active_queues` empty).

use ractor::ActorRef;
use serde_json::{Value, json};

use super::info;
use super::request::{error, ok};
use crate::consumer::ConsumerMessage;
use crate::settings::queues::TaskQueue;

/// `add_consumer`: the queue (checked by [`Command::parse`](super::command::Command::parse))
/// is declared and consumed by the consumer actor; the reply waits for it, so a queue the
/// broker refuses (an `amq.*` name, an existing queue with other arguments) is an error reply,
/// and nothing else is disturbed.
pub(super) async fn add_consumer(
    consumer: Option<&ActorRef<ConsumerMessage>>,
    spec: TaskQueue,
) -> Value {
    let Some(c) = consumer else {
        return error("consumer unavailable");
    };
    let queue = spec.name.clone();
    let added = ractor::call_t!(
        c,
        |reply| ConsumerMessage::AddQueue { queue: spec, reply },
        10_000
    );
    match added {
        Ok(Ok(())) => ok(format!("add consumer {queue}")),
        Ok(Err(reason)) => error(format!(
            "cannot consume from {queue}: {}",
            reason.replace('\'', "\"")
        )),
        Err(e) => error(format!("consumer unavailable: {e}")),
    }
}

/// `cancel_consumer`: the consumer stops consuming from `queue`; replied to at once.
pub(super) fn cancel_consumer(consumer: Option<&ActorRef<ConsumerMessage>>, queue: &str) -> Value {
    if let Some(c) = consumer {
        let _ = c.cast(ConsumerMessage::CancelQueue(queue.to_owned()));
    }
    ok(format!("no longer consuming from {queue}"))
}

/// `active_queues`: the queues consumed from, as kombu describes them.
pub(super) async fn active_queues(consumer: Option<&ActorRef<ConsumerMessage>>) -> Value {
    let queues = match consumer {
        Some(c) => ractor::call!(c, ConsumerMessage::GetQueues).unwrap_or_default(),
        None => Vec::new(),
    };
    json!(queues.iter().map(info::queue_info).collect::<Vec<_>>())
}
