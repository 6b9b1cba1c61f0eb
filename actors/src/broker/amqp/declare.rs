//! Declaring Celery's topology as Celery 5.7 declares it: task queues with their exchanges and
//! bindings, the delay ladder, Celery's native delayed delivery; purging; QoS.

use lapin::options::{
    BasicQosOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ExchangeKind};

use super::connect::{LAST_CONNECTED, connect, connect_one};
use super::{Binding, TaskQueue, value};
use crate::broker::BrokerError;
use crate::settings::BrokerSettings;

/// An exchange kind by Celery's name for it, or an error naming the type.
pub fn exchange_kind(name: &str) -> Result<ExchangeKind, String> {
    crate::settings::queues::check_exchange_type(name)?;
    Ok(match name {
        "direct" => ExchangeKind::Direct,
        "topic" => ExchangeKind::Topic,
        "fanout" => ExchangeKind::Fanout,
        _ => ExchangeKind::Headers,
    })
}

/// Declares a task queue exactly as Celery 5.7 does: a durable exchange of each binding's
/// type, a durable queue with the queue's arguments, and its bindings. The default exchange
/// (`""`) is neither declared nor bound, as kombu leaves it.
pub async fn declare_task_queue(
    channel: &lapin::Channel,
    queue: &TaskQueue,
) -> Result<(), BrokerError> {
    let name = queue.name.as_str();
    let clash = |e: lapin::Error| {
        let text = e.to_string();
        if text.contains("PRECONDITION_FAILED") {
            BrokerError::Clash {
                name: name.to_owned(),
                reason: describe_clash(name, &text),
            }
        } else {
            BrokerError::from(e)
        }
    };
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let bindings: Vec<Binding> = queue
        .all_bindings()
        .filter(|b| !b.exchange.is_empty())
        .collect();
    for b in &bindings {
        let kind = exchange_kind(&b.exchange_type).map_err(|reason| BrokerError::Clash {
            name: name.to_owned(),
            reason,
        })?;
        channel
            .exchange_declare(
                b.exchange.as_str().into(),
                kind,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(clash)?;
    }
    let qopts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(name.into(), qopts, value::json_to_table(&queue.arguments))
        .await
        .map_err(clash)?;
    for b in &bindings {
        channel
            .queue_bind(
                name.into(),
                b.exchange.as_str().into(),
                b.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(clash)?;
    }
    Ok(())
}

/// What a 406 `PRECONDITION_FAILED` on declaring queue `queue` means and what to change:
/// RabbitMQ's `inequivalent arg 'A' for queue|exchange 'N' in vhost 'V': received X but
/// current is Y` named as the argument, both values and the setting that decides it. Other
/// texts are passed on as the broker wrote them.
pub fn describe_clash(queue: &str, broker: &str) -> String {
    let words = broker
        .split_once("PRECONDITION_FAILED - ")
        .map_or(broker, |(_, rest)| rest);
    let parsed = (|| {
        let rest = words.strip_prefix("inequivalent arg '")?;
        let (arg, rest) = rest.split_once('\'')?;
        let rest = rest.strip_prefix(" for ")?;
        let (kind, rest) = rest.split_once(" '")?;
        let (name, rest) = rest.split_once('\'')?;
        let (_, values) = rest.split_once(": received ")?;
        let (ours, theirs) = values.split_once(" but current is ")?;
        let theirs = theirs.strip_prefix("the value ").unwrap_or(theirs);
        let (theirs, amqp_type) = match theirs.split_once(" of type ") {
            Some((v, t)) => (v, t.trim_matches('\'')),
            None => (theirs, "longstr"),
        };
        Some((arg, kind, name, ours.trim(), theirs.trim(), amqp_type))
    })();
    let Some((arg, kind, name, ours, theirs, amqp_type)) = parsed else {
        return words.to_owned();
    };
    let fix = match (kind, arg) {
        ("exchange", "type") => format!(
            "set exchange_type = {} for it in queue {queue:?}'s [[task.queues]] entry \
             (task_queues with -A)",
            theirs.replace('\'', "\"")
        ),
        ("exchange", _) => format!(
            "the worker declares exchanges durable and not auto-delete, as Celery does: \
             delete exchange {name:?} or declare queue {queue:?} on another exchange"
        ),
        ("queue", a) if a.starts_with("x-") => {
            let toml = match amqp_type {
                "longstr" | "shortstr" => theirs.replace('\'', "\""),
                _ => theirs.trim_matches('\'').to_owned(),
            };
            let value = if theirs == "none" {
                "no such argument".to_owned()
            } else {
                format!("{{ \"{a}\" = {toml} }}")
            };
            format!(
                "give it the broker's arguments: queue_arguments = {value} in its \
                 [[task.queues]] entry (task_queues with -A; for x-queue-type also \
                 task.default_queue_type / task.create_missing_queue_type), or delete the \
                 queue and let the worker declare it"
            )
        }
        _ => format!(
            "the worker declares queues durable, not exclusive and not auto-delete, as Celery \
             does: delete queue {name:?} or consume another one"
        ),
    };
    format!(
        "{kind} {name:?} exists on the broker with {arg} = {theirs}, and this worker declares \
         it with {arg} = {ours}: {fix}"
    )
}

/// Declares Celery's native delayed-delivery topology ([`super::native_delay`]) with level
/// queues of `queue_type`, and binds each of `queues` that is not on a direct exchange to
/// it. On `channel`, opened for it and closed after, so that a refusal (a 406 from a ladder
/// declared otherwise) closes only that channel; a queue whose binding fails is named and the
/// others still bound, as Celery carries on past them.
pub async fn declare_native_delayed_delivery(
    channel: &lapin::Channel,
    queue_type: &str,
    queues: &[TaskQueue],
) -> Result<(), BrokerError> {
    use super::native_delay::{
        DELIVERY, LEVELS, destination_bindings, level, pattern, queue_arguments,
    };
    declare_durable_topic(channel, DELIVERY).await?;
    for k in 0..LEVELS {
        declare_durable_topic(channel, &level(k)).await?;
        let qopts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let args = value::json_to_table(&queue_arguments(k, queue_type));
        channel
            .queue_declare(level(k).as_str().into(), qopts, args)
            .await?;
        channel
            .queue_bind(
                level(k).as_str().into(),
                level(k).as_str().into(),
                pattern(k, 1).as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    for k in 0..LEVELS {
        let next = if k == 0 {
            DELIVERY.to_owned()
        } else {
            level(k - 1)
        };
        channel
            .exchange_bind(
                next.as_str().into(),
                level(k).as_str().into(),
                pattern(k, 0).as_str().into(),
                lapin::options::ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    for q in queues {
        for (exchange, key) in destination_bindings(q) {
            let bound = async {
                channel
                    .exchange_bind(
                        exchange.as_str().into(),
                        DELIVERY.into(),
                        key.as_str().into(),
                        lapin::options::ExchangeBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                channel
                    .queue_bind(
                        q.name.as_str().into(),
                        exchange.as_str().into(),
                        key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
            };
            if let Err(e) = bound.await {
                tracing::error!(queue = %q.name, exchange = %exchange, error = %e,
                    "Cannot bind the queue to Celery's native delayed delivery.");
                if !channel.status().connected() {
                    return Err(e.into());
                }
            }
        }
    }
    if channel.status().connected() {
        let _ = channel.close(200, "declared".into()).await;
    }
    Ok(())
}

/// Declares Celery's native delayed delivery on every other URL of a failover list, as
/// Celery's `DelayedDelivery` bootstep does for each URL (a cluster shares its topology, but
/// separate brokers each need theirs). Once per process, in the background, one try per URL:
/// an unreachable one is logged (password masked) and skipped, and consuming never waits on
/// it. The URL the worker is connected to was set up by its connect.
pub fn declare_native_on_alternates(
    settings: &BrokerSettings,
    nodename: &str,
    queue_type: &str,
    queues: Vec<TaskQueue>,
) {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let urls = settings.urls();
    if urls.len() < 2 || DONE.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let current = LAST_CONNECTED.load(std::sync::atomic::Ordering::Relaxed);
    let (settings, nodename, queue_type) =
        (settings.clone(), nodename.to_owned(), queue_type.to_owned());
    tokio::spawn(async move {
        for (i, url) in urls.iter().enumerate().filter(|(i, _)| *i != current) {
            let masked = crate::settings::mask_password(url);
            let attempt = async {
                let (connection, channel) = connect_one(&settings, url, &nodename, None).await?;
                let done = declare_native_delayed_delivery(&channel, &queue_type, &queues).await;
                let _ = connection.close(200, "declared".into()).await;
                done
            };
            match tokio::time::timeout(std::time::Duration::from_secs(10), attempt).await {
                Ok(Ok(())) => tracing::info!(broker = %masked,
                    "Declared Celery's native delayed delivery on broker {} of {}.", i + 1, urls.len()),
                Ok(Err(e)) => tracing::warn!(broker = %masked, error = %e,
                    "Cannot declare Celery's native delayed delivery on this broker; it is set up when the worker connects to it."),
                Err(_) => tracing::warn!(broker = %masked,
                    "Cannot reach this broker within 10 s to declare Celery's native delayed delivery; it is set up when the worker connects to it."),
            }
        }
    });
}

/// `--purge`: deletes every waiting message of `queues` (as `celery worker --purge` purges
/// the queues it consumes), each on a channel of its own so that a queue that does not exist
/// yet is skipped without closing anything else. Returns (queue, messages deleted).
pub async fn purge(
    settings: &BrokerSettings,
    nodename: &str,
    queues: &[String],
) -> Result<Vec<(String, u32)>, BrokerError> {
    let (connection, _) = connect(settings, nodename, None).await?;
    let mut purged = Vec::new();
    for q in queues {
        let channel = connection.create_channel().await?;
        match channel
            .queue_purge(
                q.as_str().into(),
                lapin::options::QueuePurgeOptions::default(),
            )
            .await
        {
            Ok(n) => {
                purged.push((q.clone(), n));
                let _ = channel.close(200, "purged".into()).await;
            }
            Err(e) => tracing::info!(queue = %q, error = %e, "Nothing to purge (no such queue)."),
        }
    }
    let _ = connection.close(200, "purged".into()).await;
    Ok(purged)
}

/// Declares a durable topic exchange (the levels of both delay ladders).
pub(super) async fn declare_durable_topic(
    channel: &lapin::Channel,
    name: &str,
) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
}

/// Declares `queue` on a channel opened for it and closed after, so that a refusal (403 for an
/// `amq.*` name, 406 for other arguments, 405 for another connection's exclusive queue) closes
/// only that channel: the consumer's channel and its unacked deliveries are untouched.
pub async fn declare_on_own_channel(
    connection: &Connection,
    queue: &TaskQueue,
) -> Result<(), BrokerError> {
    queue.check().map_err(|reason| BrokerError::Clash {
        name: queue.name.clone(),
        reason,
    })?;
    let channel = connection.create_channel().await?;
    let declared = declare_task_queue(&channel, queue).await;
    if channel.status().connected() {
        let _ = channel.close(200, "declared".into()).await;
    }
    declared
}

/// Sets the prefetch count (0 = unlimited): for the whole channel when `global` (RabbitMQ
/// applies a changed channel limit at once, so ETA bumps work), else for consumers started
/// afterwards.
pub async fn set_prefetch(
    channel: &lapin::Channel,
    count: u16,
    global: bool,
) -> Result<(), BrokerError> {
    channel.basic_qos(count, BasicQosOptions { global }).await?;
    Ok(())
}

/// Declares the delay ladder (see [`super::delay`]) and binds `queues` to its deliver
/// exchange. Idempotent.
pub async fn declare_delay_topology(
    channel: &lapin::Channel,
    queues: &[String],
) -> Result<(), BrokerError> {
    use super::delay::{
        DELIVER_EXCHANGE, LEVELS, bit_pattern, can_delay, deliver_pattern, legacy_wildcard_pattern,
        level_name, next_exchange,
    };
    use lapin::types::{AMQPValue, LongString};
    declare_durable_topic(channel, DELIVER_EXCHANGE).await?;
    for k in 0..LEVELS {
        declare_durable_topic(channel, &level_name(k)).await?;
    }
    for k in 0..LEVELS {
        let name = level_name(k);
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(1000i64 << k));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from(next_exchange(k).into_bytes())),
        );
        let qopts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(name.as_str().into(), qopts, args)
            .await?;
        channel
            .queue_bind(
                name.as_str().into(),
                name.as_str().into(),
                bit_pattern(k, true).as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_bind(
                next_exchange(k).as_str().into(),
                name.as_str().into(),
                bit_pattern(k, false).as_str().into(),
                Default::default(),
                FieldTable::default(),
            )
            .await?;
    }
    for q in queues.iter().filter(|q| can_delay(q)) {
        channel
            .queue_bind(
                q.as_str().into(),
                DELIVER_EXCHANGE.into(),
                deliver_pattern(q).as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        if let Some(old) = legacy_wildcard_pattern(q) {
            // Removing a binding that is not there is no error for RabbitMQ.
            channel
                .queue_unbind(
                    q.as_str().into(),
                    DELIVER_EXCHANGE.into(),
                    old.as_str().into(),
                    FieldTable::default(),
                )
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clash_names_the_argument_both_values_and_the_key_to_change() {
        let quorum = "protocol error: AMQP soft error: PRECONDITION_FAILED - inequivalent arg \
                      'x-queue-type' for queue 'jobs' in vhost '/': received none but current \
                      is the value 'quorum' of type 'longstr'";
        let text = describe_clash("jobs", quorum);
        assert!(
            text.starts_with("queue \"jobs\" exists on the broker with x-queue-type = 'quorum'"),
            "{text}"
        );
        assert!(
            text.contains("declares it with x-queue-type = none"),
            "{text}"
        );
        assert!(
            text.contains(r#"queue_arguments = { "x-queue-type" = "quorum" }"#),
            "{text}"
        );
        let topic = "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'bus' in vhost \
                     '/': received 'direct' but current is 'topic'";
        let text = describe_clash("events", topic);
        assert!(text.starts_with("exchange \"bus\" exists on the broker with type = 'topic'"));
        assert!(text.contains(r#"exchange_type = "topic""#), "{text}");
        assert!(
            text.contains("queue \"events\"'s [[task.queues]] entry"),
            "{text}"
        );
        let length = "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'q' in \
                      vhost '/': received none but current is the value '10' of type 'signedint'";
        assert!(
            describe_clash("q", length).contains(r#"queue_arguments = { "x-max-length" = 10 }"#),
            "{}",
            describe_clash("q", length)
        );
        let durable = "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost \
                       '/': received 'true' but current is 'false'";
        assert!(describe_clash("q", durable).contains("durable, not exclusive"));
        let other = "PRECONDITION_FAILED - something new";
        assert_eq!(describe_clash("q", other), "something new");
    }
}
