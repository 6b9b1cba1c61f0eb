//! Queue declarations as Celery's `task_queues` makes them (`rabbitmq-compat.md` §5): a
//! `[[task.queues]]` entry per queue (exchange name and type, binding keys, queue arguments),
//! the default queue, queues created on demand for names given with `-Q`, and `-X`.
//! Everything here is pure: [`resolve`] turns settings into the [`TaskQueue`]s (with their
//! [`Binding`]s) to declare and consume, or an error naming the key; the consumer declares
//! them on the broker.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{TaskSettings, WorkerSettings};
use crate::error::ConfigError;

/// The queue types Celery names (`task_default_queue_type`, `task_create_missing_queue_type`,
/// `broker_native_delayed_delivery_queue_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// RabbitMQ's classic queue.
    #[default]
    Classic,
    /// A quorum queue (`x-queue-type: quorum`).
    Quorum,
}

impl QueueType {
    /// RabbitMQ's name for it, as `x-queue-type` takes it.
    pub fn name(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// A queue the worker consumes from, with the exchange it is bound to (and any more
/// bindings) and its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskQueue {
    /// Queue name.
    pub name: String,
    /// Exchange name (`""`: the default exchange, which is neither declared nor bound).
    pub exchange: String,
    /// Exchange type: `direct`, `topic`, `fanout` or `headers`.
    pub exchange_type: String,
    /// Binding key.
    pub routing_key: String,
    /// More bindings, each with its own exchange.
    pub bindings: Vec<Binding>,
    /// Queue arguments (`x-queue-type`, `x-max-priority`, …).
    pub arguments: serde_json::Map<String, serde_json::Value>,
}

/// A binding of a queue to an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Exchange name.
    pub exchange: String,
    /// Exchange type.
    pub exchange_type: String,
    /// Binding key.
    pub routing_key: String,
}

/// The exchange types RabbitMQ has, by Celery's names for them.
pub const EXCHANGE_TYPES: [&str; 4] = ["direct", "topic", "fanout", "headers"];

/// Checks an exchange type by Celery's name for it; the error names the type.
pub fn check_exchange_type(name: &str) -> Result<(), String> {
    if EXCHANGE_TYPES.contains(&name) {
        Ok(())
    } else {
        Err(format!(
            "exchange type {name:?} is not one of direct, topic, fanout, headers"
        ))
    }
}

impl TaskQueue {
    /// A queue as Celery declares a plain queue name: bound to a direct exchange of the same
    /// name with the name as routing key.
    pub fn plain(name: &str) -> Self {
        TaskQueue {
            name: name.to_owned(),
            exchange: name.to_owned(),
            exchange_type: "direct".to_owned(),
            routing_key: name.to_owned(),
            bindings: Vec::new(),
            arguments: serde_json::Map::new(),
        }
    }

    /// Whether it is a quorum queue (`x-queue-type = quorum`).
    pub fn is_quorum(&self) -> bool {
        self.arguments.get("x-queue-type").and_then(|v| v.as_str()) == Some("quorum")
    }

    /// Every binding: the main one first.
    pub fn all_bindings(&self) -> impl Iterator<Item = Binding> + '_ {
        std::iter::once(Binding {
            exchange: self.exchange.clone(),
            exchange_type: self.exchange_type.clone(),
            routing_key: self.routing_key.clone(),
        })
        .chain(self.bindings.iter().cloned())
    }

    /// Checks what the broker would refuse on the wire: names and the binding key are AMQP
    /// short strings (at most 255 bytes; a queue name at least 1), and the exchange type is
    /// one RabbitMQ has.
    pub fn check(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.len() > 255 {
            return Err("a queue name is 1 to 255 bytes".to_owned());
        }
        for b in self.all_bindings() {
            if b.exchange.len() > 255 {
                return Err("an exchange name is at most 255 bytes".to_owned());
            }
            if b.routing_key.len() > 255 {
                return Err("a routing key is at most 255 bytes".to_owned());
            }
            check_exchange_type(&b.exchange_type)?;
        }
        Ok(())
    }
}

/// One `[[task.queues]]` entry: what `kombu.Queue(name, Exchange(exchange, type=…),
/// routing_key=…, queue_arguments=…, bindings=[…])` declares.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSpec {
    /// Queue name.
    pub name: String,
    /// Exchange the queue is bound to. Default, as in Celery: `task.default_exchange`, else
    /// `task.default_queue` (not the queue's own name). `""` is that default too.
    pub exchange: Option<String>,
    /// `direct`, `topic`, `fanout` or `headers`. Default: `task.default_exchange_type`.
    pub exchange_type: Option<String>,
    /// Binding key. Default `""`, as kombu's `Queue` has it.
    pub routing_key: Option<String>,
    /// Queue arguments, e.g. `{ "x-queue-type" = "quorum" }`, `{ "x-max-priority" = 10 }`.
    pub queue_arguments: BTreeMap<String, Value>,
    /// Bindings in place of the one above (kombu's `bindings=[binding(…), …]`): several
    /// exchanges or keys.
    pub bindings: Vec<BindingSpec>,
}

/// One binding of a `[[task.queues]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BindingSpec {
    /// Exchange name (required).
    pub exchange: String,
    /// Exchange type. Default: `task.default_exchange_type`.
    pub exchange_type: Option<String>,
    /// Binding key. Default `""`, as kombu's `binding` has it.
    pub routing_key: Option<String>,
}

/// The queues to declare and consume: `-Q` names (`worker.queues`) picked from
/// `task.queues` (or created, when `task.create_missing_queues`), every declared queue when
/// there is no `-Q`, less `worker.exclude_queues`.
pub fn resolve(
    task: &TaskSettings,
    worker: &WorkerSettings,
) -> Result<Vec<TaskQueue>, ConfigError> {
    let declared = declared(task)?;
    let mut picked = Vec::new();
    if worker.queues.is_empty() {
        picked.extend(declared.iter().cloned());
    } else {
        for name in &worker.queues {
            if picked.iter().any(|q: &TaskQueue| &q.name == name) {
                continue;
            }
            match declared.iter().find(|q| &q.name == name) {
                Some(q) => picked.push(q.clone()),
                None if task.create_missing_queues => picked.push(missing(task, name)),
                None => {
                    return Err(ConfigError::invalid(
                        "worker.queues",
                        format!(
                            "queue {name:?} is not in task.queues and task.create_missing_queues \
                             is false: declare it with a [[task.queues]] entry, or drop it from -Q"
                        ),
                    ));
                }
            }
        }
    }
    for name in &worker.exclude_queues {
        if !picked.iter().any(|q| &q.name == name) && !declared.iter().any(|q| &q.name == name) {
            return Err(ConfigError::invalid(
                "worker.exclude_queues",
                format!("{name:?} is not a queue this worker would consume"),
            ));
        }
    }
    picked.retain(|q| !worker.exclude_queues.contains(&q.name));
    if picked.is_empty() {
        return Err(ConfigError::invalid(
            "worker.exclude_queues",
            "every queue is excluded: nothing is left to consume",
        ));
    }
    if let Some(max) = task.queue_max_priority {
        for q in &mut picked {
            q.arguments
                .entry("x-max-priority".to_owned())
                .or_insert(Value::from(max));
        }
    }
    for q in &picked {
        q.check().map_err(|reason| {
            ConfigError::invalid(key_of(task, &q.name), format!("{:?}: {reason}", q.name))
        })?;
    }
    Ok(picked)
}

/// Whether any queue the worker knows of, consumed or excluded, is a quorum queue (Celery's
/// `detect_quorum_queues` looks at all of `task_queues`).
pub fn any_quorum(task: &TaskSettings, worker: &WorkerSettings) -> bool {
    let quorum = |q: &TaskQueue| q.is_quorum();
    declared(task).is_ok_and(|d| d.iter().any(quorum))
        || resolve(task, worker).is_ok_and(|p| p.iter().any(quorum))
}

/// The config key to name for queue `name`: its `[[task.queues]]` entry, or `-Q`.
fn key_of(task: &TaskSettings, name: &str) -> &'static str {
    if task.queues.iter().any(|q| q.name == name) {
        "task.queues"
    } else {
        "worker.queues"
    }
}

/// `task.queues`, each with its defaults filled in; or, when there are none, the default
/// queue as Celery makes it from `task_default_*`.
fn declared(task: &TaskSettings) -> Result<Vec<TaskQueue>, ConfigError> {
    if task.queues.is_empty() {
        let mut q = TaskQueue::plain(&task.default_queue);
        q.exchange = default_exchange(task);
        q.exchange_type = task.default_exchange_type.clone();
        q.routing_key = task
            .default_routing_key
            .clone()
            .unwrap_or_else(|| task.default_queue.clone());
        if task.default_queue_type == QueueType::Quorum {
            q.arguments
                .insert("x-queue-type".to_owned(), Value::from("quorum"));
        }
        return Ok(vec![q]);
    }
    let mut out: Vec<TaskQueue> = Vec::new();
    for (i, spec) in task.queues.iter().enumerate() {
        if spec.name.is_empty() {
            return Err(ConfigError::invalid(
                "task.queues",
                format!("entry {} has no name", i + 1),
            ));
        }
        if out.iter().any(|q| q.name == spec.name) {
            return Err(ConfigError::invalid(
                "task.queues",
                format!("queue {:?} is declared twice", spec.name),
            ));
        }
        out.push(from_spec(task, spec)?);
    }
    Ok(out)
}

fn from_spec(task: &TaskSettings, spec: &QueueSpec) -> Result<TaskQueue, ConfigError> {
    let name = &spec.name;
    let exchange_type = || {
        spec.exchange_type
            .clone()
            .unwrap_or_else(|| task.default_exchange_type.clone())
    };
    let mut bindings: Vec<Binding> = Vec::new();
    for b in &spec.bindings {
        if b.exchange.is_empty() {
            return Err(ConfigError::invalid(
                "task.queues",
                format!("queue {name:?}: a binding needs an exchange"),
            ));
        }
        bindings.push(Binding {
            exchange: b.exchange.clone(),
            exchange_type: b
                .exchange_type
                .clone()
                .unwrap_or_else(|| task.default_exchange_type.clone()),
            routing_key: b.routing_key.clone().unwrap_or_default(),
        });
    }
    let (first, rest) = match bindings.split_first() {
        Some((first, rest)) if spec.exchange.is_none() => (first.clone(), rest.to_vec()),
        _ => (
            Binding {
                exchange: spec
                    .exchange
                    .clone()
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| default_exchange(task)),
                exchange_type: exchange_type(),
                routing_key: spec.routing_key.clone().unwrap_or_default(),
            },
            bindings,
        ),
    };
    let arguments = spec
        .queue_arguments
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(TaskQueue {
        name: name.clone(),
        exchange: first.exchange,
        exchange_type: first.exchange_type,
        routing_key: first.routing_key,
        bindings: rest,
        arguments,
    })
}

/// Celery's default exchange: `task_default_exchange`, else the default queue's name.
fn default_exchange(task: &TaskSettings) -> String {
    task.default_exchange
        .clone()
        .unwrap_or_else(|| task.default_queue.clone())
}

/// A queue named with `-Q` and declared nowhere, as `task_create_missing_queues` makes it.
fn missing(task: &TaskSettings, name: &str) -> TaskQueue {
    let mut q = TaskQueue::plain(name);
    if let Some(kind) = &task.create_missing_queue_exchange_type {
        q.exchange_type = kind.clone();
    }
    if task.create_missing_queue_type == QueueType::Quorum {
        q.arguments
            .insert("x-queue-type".to_owned(), Value::from("quorum"));
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> QueueSpec {
        QueueSpec {
            name: name.to_owned(),
            ..Default::default()
        }
    }

    fn names(qs: &[TaskQueue]) -> Vec<&str> {
        qs.iter().map(|q| q.name.as_str()).collect()
    }

    #[test]
    fn without_task_queues_the_default_queue_is_consumed_as_celery_declares_it() {
        let task = TaskSettings::default();
        let worker = WorkerSettings::default();
        let qs = resolve(&task, &worker).unwrap();
        assert_eq!(qs, vec![TaskQueue::plain("celery")]);
        let quorum = TaskSettings {
            default_queue: "jobs".into(),
            default_queue_type: QueueType::Quorum,
            ..Default::default()
        };
        let qs = resolve(&quorum, &worker).unwrap();
        assert_eq!(qs[0].name, "jobs");
        assert_eq!(qs[0].exchange, "jobs");
        assert_eq!(qs[0].arguments["x-queue-type"], "quorum");
        assert!(any_quorum(&quorum, &worker));
        assert!(!any_quorum(&task, &worker));
    }

    #[test]
    fn declared_queues_fill_in_celerys_defaults_and_keep_their_bindings() {
        let task = TaskSettings {
            queues: vec![
                QueueSpec {
                    name: "events".into(),
                    exchange: Some("bus".into()),
                    exchange_type: Some("topic".into()),
                    routing_key: Some("events.#".into()),
                    queue_arguments: [("x-queue-type".to_owned(), Value::from("quorum"))].into(),
                    ..Default::default()
                },
                spec("plain"),
                QueueSpec {
                    name: "multi".into(),
                    bindings: vec![
                        BindingSpec {
                            exchange: "a".into(),
                            exchange_type: Some("topic".into()),
                            routing_key: Some("x.*".into()),
                        },
                        BindingSpec {
                            exchange: "b".into(),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let qs = resolve(&task, &WorkerSettings::default()).unwrap();
        assert_eq!(
            names(&qs),
            ["events", "plain", "multi"],
            "no -Q: all of them"
        );
        assert_eq!(
            (qs[0].exchange.as_str(), qs[0].exchange_type.as_str()),
            ("bus", "topic")
        );
        assert_eq!(qs[0].routing_key, "events.#");
        assert!(qs[0].is_quorum());
        // As Celery's Queues._add: no exchange = the default exchange (named after the
        // default queue), and kombu's empty routing key.
        assert_eq!(
            (
                qs[1].exchange.as_str(),
                qs[1].exchange_type.as_str(),
                qs[1].routing_key.as_str()
            ),
            ("celery", "direct", "")
        );
        assert_eq!(
            (qs[2].exchange.as_str(), qs[2].routing_key.as_str()),
            ("a", "x.*")
        );
        assert_eq!(
            qs[2].bindings,
            vec![Binding {
                exchange: "b".into(),
                exchange_type: "direct".into(),
                routing_key: String::new()
            }]
        );
    }

    #[test]
    fn dash_q_picks_creates_or_refuses_and_dash_x_excludes() {
        let task = TaskSettings {
            queues: vec![spec("a"), spec("b")],
            create_missing_queue_type: QueueType::Quorum,
            create_missing_queue_exchange_type: Some("topic".into()),
            ..Default::default()
        };
        let worker = WorkerSettings {
            queues: vec!["b".into(), "new".into(), "b".into()],
            ..Default::default()
        };
        let qs = resolve(&task, &worker).unwrap();
        assert_eq!(names(&qs), ["b", "new"]);
        assert!(qs[1].is_quorum());
        assert_eq!(qs[1].exchange_type, "topic");
        let strict = TaskSettings {
            create_missing_queues: false,
            ..task.clone()
        };
        let err = resolve(&strict, &worker).unwrap_err().to_string();
        assert!(
            err.contains("worker.queues") && err.contains("\"new\""),
            "{err}"
        );
        let excluded = WorkerSettings {
            exclude_queues: vec!["a".into()],
            ..Default::default()
        };
        assert_eq!(names(&resolve(&task, &excluded).unwrap()), ["b"]);
        let all = WorkerSettings {
            exclude_queues: vec!["a".into(), "b".into()],
            ..Default::default()
        };
        let err = resolve(&task, &all).unwrap_err().to_string();
        assert!(err.contains("nothing is left"), "{err}");
        let unknown = WorkerSettings {
            exclude_queues: vec!["zzz".into()],
            ..Default::default()
        };
        assert!(resolve(&task, &unknown).is_err());
    }

    #[test]
    fn queue_max_priority_goes_onto_every_queue_that_lacks_it() {
        let task = TaskSettings {
            queues: vec![
                spec("a"),
                QueueSpec {
                    name: "b".into(),
                    queue_arguments: [("x-max-priority".to_owned(), Value::from(3))].into(),
                    ..Default::default()
                },
            ],
            queue_max_priority: Some(10),
            ..Default::default()
        };
        let qs = resolve(&task, &WorkerSettings::default()).unwrap();
        assert_eq!(qs[0].arguments["x-max-priority"], 10);
        assert_eq!(qs[1].arguments["x-max-priority"], 3);
    }

    #[test]
    fn bad_entries_name_the_key() {
        let bad = |task: TaskSettings, needle: &str| {
            let err = resolve(&task, &WorkerSettings::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err} lacks {needle}");
        };
        bad(
            TaskSettings {
                queues: vec![spec("a"), spec("a")],
                ..Default::default()
            },
            "declared twice",
        );
        bad(
            TaskSettings {
                queues: vec![spec("")],
                ..Default::default()
            },
            "no name",
        );
        bad(
            TaskSettings {
                queues: vec![QueueSpec {
                    name: "a".into(),
                    exchange_type: Some("fan".into()),
                    ..Default::default()
                }],
                ..Default::default()
            },
            "task.queues",
        );
    }

    #[test]
    fn bindings_are_checked_and_listed_with_the_main_one_first() {
        let mut q = TaskQueue::plain("a");
        q.bindings.push(Binding {
            exchange: "b".into(),
            exchange_type: "fan".into(),
            routing_key: "k".into(),
        });
        assert!(q.check().unwrap_err().contains("\"fan\""));
        q.bindings[0].exchange_type = "fanout".into();
        assert!(q.check().is_ok());
        let all: Vec<String> = q.all_bindings().map(|b| b.exchange).collect();
        assert_eq!(all, ["a", "b"]);
        assert!(!q.is_quorum());
        q.arguments.insert("x-queue-type".into(), "quorum".into());
        assert!(q.is_quorum());
    }
}
