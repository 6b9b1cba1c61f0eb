//! The consumer's link to the broker: connecting with backoff, what lives and dies with one
//! connection ([`Link`]), the queues' consumers on it, a lost connection, and closing.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use tracing::{debug, error, info, warn};

use super::acks::Acks;
use super::{Consumer, ConsumerMessage, ConsumerState};
use crate::abort::AbortOnDrop;
use crate::broker::{self, BrokerError, ErrorKind, StreamEvent, consumer_tag};
use crate::pool::WorkMsg;
use crate::scheduler::SchedulerMessage;
use crate::settings::queues::{self, TaskQueue};

/// A connection that lived this long was not broken by what it received at once.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// One connection and what lives and dies with it: dropped with the connection, so nothing
/// of it is reset by hand for the next.
pub(super) struct Link {
    /// The connection and its consuming channel.
    pub(super) broker: broker::Link,
    /// Queue name -> (consumer tag, the task forwarding its deliveries).
    pub(super) consumers: HashMap<String, (String, AbortOnDrop)>,
    /// Forwarding tasks of consumers replaced for a new prefetch count, left to drain what
    /// was delivered to them.
    pub(super) retired: Vec<AbortOnDrop>,
    /// Deliveries of this connection not acked yet, and the acks waiting to go out together
    /// ([`ConsumerMessage::FlushAcks`]).
    pub(super) acks: Acks,
    /// The prefetch count the consumers were started with (per-consumer QoS).
    pub(super) consumer_prefetch: u16,
    /// When the connection was made.
    pub(super) connected_at: Instant,
}

impl Consumer {
    pub(super) async fn connect(
        &self,
        myself: &ActorRef<ConsumerMessage>,
        state: &mut ConsumerState,
        attempt: u32,
    ) -> Result<(), BrokerError> {
        if state.closed || state.link.is_some() {
            return Ok(());
        }
        let broker = &self.settings.broker;
        match self.open_link(myself, state).await {
            Ok(link) => {
                state.peers.metrics.broker_connected(true);
                if attempt > 0 {
                    state.peers.metrics.reconnected();
                    info!(broker = %broker.safe_url(), "Connected to the broker again.");
                } else {
                    info!(broker = %broker.safe_url(), "Connected to the broker.");
                }
                if !state.ready {
                    // Consuming now: what Celery's "ready." means to operators and scripts.
                    state.ready = true;
                    info!(hostname = %self.hostname,
                        concurrency = self.settings.effective_concurrency(),
                        "{} ready.", self.hostname);
                }
                state.link = Some(link);
                state.flush_pending_results().await;
                Ok(())
            }
            Err(e @ BrokerError::Clash { .. }) => {
                error!(error = %e, "Queue declaration clashes with the broker's; cannot consume.");
                Err(e)
            }
            Err(e) if state.window.is_global() && e.kind() == ErrorKind::GlobalQosRefused => {
                // A quorum queue that `qos = "auto"` could not see (added by add_consumer) or
                // `qos = "global"` set by hand: the broker closed the connection (540).
                warn!(error = %e, "The broker refuses channel-wide QoS for a quorum queue; \
                    using per-consumer QoS from now on (set [broker] qos = \"per-consumer\" \
                    to say so).");
                state.window.refuse_global();
                let _ = myself.cast(ConsumerMessage::Connect { attempt });
                Ok(())
            }
            Err(e) if !state.ready && e.kind() == ErrorKind::LoginRefused => {
                // A wrong user, password or vhost permission does not mend itself: stop at
                // once with the reason (exit 77) rather than retry it like a network blip.
                Err(BrokerError::Unreachable {
                    url: broker.safe_url(),
                    attempts: attempt + 1,
                    last: format!(
                        "ACCESS_REFUSED: the broker refused the login; check the user, the \
                         password and the vhost's permissions in broker.url ({e})"
                    ),
                })
            }
            Err(e) => {
                let attempts = attempt + 1;
                let limit = broker.connection_max_retries;
                let retry = state.generation > 0 || broker.connection_retry_on_startup;
                if !retry || (limit > 0 && attempts >= limit) {
                    return Err(BrokerError::Unreachable {
                        url: broker.safe_url(),
                        attempts,
                        last: e.to_string(),
                    });
                }
                let delay = broker::backoff(attempts);
                error!(broker = %broker.safe_url(), error = %e,
                    "Cannot connect to the broker; trying again in {:.1} seconds... ({attempts}/{})",
                    delay.as_secs_f64(),
                    if limit == 0 { "∞".to_owned() } else { limit.to_string() });
                myself.send_after(delay, move || ConsumerMessage::Connect {
                    attempt: attempts,
                });
                Ok(())
            }
        }
    }

    pub(super) async fn open_link(
        &self,
        myself: &ActorRef<ConsumerMessage>,
        state: &mut ConsumerState,
    ) -> Result<Link, BrokerError> {
        let link =
            broker::Link::open(&self.settings.broker, &self.hostname, state.frame_max).await?;
        let configured: Vec<String> = self
            .configured_queues()
            .into_iter()
            .map(|q| q.name)
            .collect();
        let mut refused = Vec::new();
        for q in &state.queues {
            if configured.contains(&q.name) {
                link.declare_task_queue(q).await?;
            } else if let Err(e) = link.declare_on_own_channel(q).await {
                // Added by `add_consumer` and refused now (deleted and declared otherwise
                // since): dropped, not a reason to stop consuming the others.
                error!(queue = %q.name, error = %e, "No longer consuming an added queue the broker now refuses.");
                refused.push(q.name.clone());
            }
        }
        state.queues.retain(|q| !refused.contains(&q.name));
        if self.settings.worker.mingle && !state.ready {
            self.mingle(&link, state).await;
        }
        state.generation += 1;
        if queues::any_quorum(&self.settings.task, &self.settings.worker) {
            // As Celery's DelayedDelivery bootstep: Python clients send countdowns of quorum
            // queues through Celery's own ladder, which the worker declares. In the
            // background, on a channel of its own: 28 quorum queues take seconds on a
            // cluster, and consuming (after a failover too) must not wait for them.
            let queue_type = self.settings.broker.native_delayed_delivery_queue_type;
            let all = self.settings.task_queues().to_vec();
            if let Some(declaring) = link.native_delayed_declarer(queue_type.name(), all).await? {
                let (me, generation) = (myself.clone(), state.generation);
                tokio::spawn(async move {
                    let done = declaring.await;
                    let _ = me.cast(ConsumerMessage::NativeDeclared {
                        generation,
                        error: done.err().map(|e| e.to_string()),
                    });
                });
            }
        }
        let prefetch = state.window.count();
        link.set_prefetch(prefetch, state.window.is_global())
            .await?;
        let mut consumers = HashMap::new();
        if state.consuming {
            for q in &state.queues {
                let started = start_consumer(&link, myself, &self.hostname, state.generation, q);
                consumers.insert(q.name.clone(), started.await?);
            }
        }
        Ok(Link {
            broker: link,
            consumers,
            retired: Vec::new(),
            acks: Acks::default(),
            consumer_prefetch: prefetch,
            connected_at: Instant::now(),
        })
    }

    pub(super) async fn on_stream_end(
        &self,
        myself: &ActorRef<ConsumerMessage>,
        state: &mut ConsumerState,
        generation: u64,
        queue: &str,
        tag: &str,
        error: Option<String>,
    ) {
        if generation != state.generation || state.closed {
            return;
        }
        // Ours: cancelled by cancel_consumer, or replaced by a consumer with a raised prefetch.
        let cancelled_here = !state.consuming
            || state.link.as_ref().is_some_and(|l| {
                l.consumers
                    .get(queue)
                    .is_none_or(|(t, _)| t.as_str() != tag)
            });
        if error.is_none() && cancelled_here {
            return; // our own basic.cancel
        }
        if error.is_none() && self.consume_again(myself, state, queue).await {
            return;
        }
        let why = error
            .as_deref()
            .unwrap_or("consumer cancelled by the broker");
        warn!(
            error = why,
            "Connection to the broker lost; reconnecting. Unacked messages return to the queue."
        );
        if state.frame_max.is_none() && broker::kind_of_text(why) == ErrorKind::FrameTooLarge {
            warn!(
                frame_max = self.settings.broker.frame_max,
                "A message's header frame is larger than broker.frame_max; reconnecting with \
                 the broker's own frame size so that it can be received."
            );
            state.frame_max = Some(broker::FRAME_MAX_RAISED);
        }
        let quick = state
            .link
            .take()
            .is_some_and(|l| l.connected_at.elapsed() < STABLE_CONNECTION);
        state.quick_drops = if quick { state.quick_drops + 1 } else { 0 };
        state.peers.metrics.broker_connected(false);
        state.reserve_in_pool(); // before Forget, which drops those of this generation
        let _ = state.peers.pool.cast(WorkMsg::Forget { generation }.into());
        let _ = state
            .peers
            .scheduler
            .cast(SchedulerMessage::Forget { generation });
        state.window.connection_lost();
        if state.quick_drops >= 2 {
            let delay = broker::backoff(state.quick_drops - 1);
            warn!(
                "The connection was lost {} times in a row soon after it was made; next attempt in {:.0} s.",
                state.quick_drops,
                delay.as_secs_f64()
            );
            myself.send_after(delay, || ConsumerMessage::Connect { attempt: 1 });
        } else {
            let _ = myself.cast(ConsumerMessage::Connect { attempt: 1 });
        }
    }

    /// Logs the outcome of declaring Celery's native delayed delivery; once it worked, it
    /// is declared on the failover list's other URLs too. A failure is logged and the worker
    /// carries on, as Celery's does (its own ladder or the worker then holds the delays).
    pub(super) fn on_native_declared(&self, error: Option<String>) {
        match error {
            None => {
                info!("Celery's native delayed delivery is declared (celery_delayed_0…27).");
                broker::declare_native_on_alternates(
                    &self.settings.broker,
                    &self.hostname,
                    self.settings
                        .broker
                        .native_delayed_delivery_queue_type
                        .name(),
                    self.settings.task_queues().to_vec(),
                )
            }
            Some(e) => error!(error = %e, "Cannot declare Celery's native delayed delivery; \
                countdowns of quorum queues sent by Python clients will not arrive."),
        }
    }

    /// After the broker cancelled one consumer (its queue deleted; on RabbitMQ 4.x also a
    /// quorum queue's consumer timeout or a lost leader) on a channel that is still open:
    /// declares the queue again (on a channel of its own, so a refusal closes nothing else)
    /// and consumes it under a new tag. What was delivered on the channel stays ackable, so
    /// the tasks running meanwhile settle as usual — a reconnect would hand them back and run
    /// them twice. False (the caller reconnects) if that could not be done.
    pub(super) async fn consume_again(
        &self,
        myself: &ActorRef<ConsumerMessage>,
        state: &mut ConsumerState,
        queue: &str,
    ) -> bool {
        let Some(q) = state.queues.iter().find(|q| q.name == queue).cloned() else {
            return false;
        };
        let Some(link) = &mut state.link else {
            return false;
        };
        if !link.broker.is_open() {
            return false;
        }
        warn!(queue = %queue, "The broker cancelled the consumer (consumer cancelled by the \
            broker); declaring the queue and consuming it again.");
        if let Err(e) = link.broker.declare_on_own_channel(&q).await {
            warn!(queue = %queue, error = %e, "Cannot declare the queue again; reconnecting.");
            return false;
        }
        state.restarts += 1;
        let tag = consumer_tag(
            &self.hostname,
            state.generation,
            &format!("{queue}~{}", state.restarts),
        );
        match consume_with_tag(&link.broker, myself, state.generation, &q, tag).await {
            Ok(entry) => {
                if let Some((_, old)) = link.consumers.insert(q.name.clone(), entry) {
                    link.retired.push(old);
                }
                link.retired.retain(|t| !t.0.is_finished());
                true
            }
            Err(e) => {
                warn!(queue = %queue, error = %e, "Cannot consume the queue again; reconnecting.");
                false
            }
        }
    }
}

/// Consumes `queue` and forwards its deliveries to the actor.
pub(super) async fn start_consumer(
    link: &broker::Link,
    myself: &ActorRef<ConsumerMessage>,
    hostname: &str,
    generation: u64,
    queue: &TaskQueue,
) -> Result<(String, AbortOnDrop), BrokerError> {
    let tag = consumer_tag(hostname, generation, &queue.name);
    consume_with_tag(link, myself, generation, queue, tag).await
}

/// [`start_consumer`] under a given consumer tag. Deliveries that arrived together go to
/// the actor as one [`ConsumerMessage::Deliveries`], so a burst released by one ack costs one
/// mailbox round instead of one each.
pub(super) async fn consume_with_tag(
    link: &broker::Link,
    myself: &ActorRef<ConsumerMessage>,
    generation: u64,
    queue: &TaskQueue,
    tag: String,
) -> Result<(String, AbortOnDrop), BrokerError> {
    let me = myself.clone();
    let name: Arc<str> = queue.name.as_str().into();
    let t: Arc<str> = tag.as_str().into();
    let sink = move |event| match event {
        StreamEvent::Deliveries(deliveries) => me
            .cast(ConsumerMessage::Deliveries {
                generation,
                deliveries,
            })
            .is_ok(),
        StreamEvent::Ended(error) => {
            let _ = me.cast(ConsumerMessage::StreamEnded {
                generation,
                queue: name.clone(),
                tag: t.clone(),
                error,
            });
            false
        }
    };
    let task = link.consume(&queue.name, &tag, sink).await?;
    info!(queue = %queue.name, "Consuming from queue.");
    Ok((tag, task))
}

impl ConsumerState {
    pub(super) async fn stop_consuming(&mut self) {
        self.consuming = false;
        if let Some(link) = &self.link {
            for (tag, _) in link.consumers.values() {
                if let Err(e) = link.broker.cancel(tag).await {
                    debug!(error = %e, "basic.cancel failed");
                }
            }
        }
    }

    pub(super) async fn close(&mut self) {
        self.flush_acks();
        self.closed = true;
        self.absorb_outbox().await;
        if let Some(link) = self.link.take() {
            link.broker.close("worker shutdown").await;
        }
        if !self.pending_results.is_empty() {
            error!(
                count = self.pending_results.len(),
                "Results not published before shutdown."
            );
        }
    }
}
