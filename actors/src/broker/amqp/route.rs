//! Where the worker publishes a task on its own account — a retry, or a far-ETA task moved
//! into the broker — and which delay ladder carries it (`rabbitmq-compat.md` §1.2, §5).
//!
//! A message that came out of a ladder (Celery's `celery_delayed_<k>` or celeryd's own
//! `celeryd.delayed.<k>`) reports the ladder's last exchange and a routing key that starts
//! with the old delay's 28 digits. Republishing there would put it back into the ladder at
//! level `k` with stale bits, so the route is rebuilt: the digits stripped (as kombu 5.7
//! does), the exchange taken from the queue's own bindings.
//!
//! Celery's ladder brings a message back through `celery_delayed_delivery → <exchange>`, so
//! it can only carry one whose exchange is a non-direct binding of the queue and whose key
//! that binding matches; everything else (direct exchanges, the default exchange) goes
//! through celeryd's own ladder, which routes by queue name.

use super::TaskQueue;
use super::native_delay::{LEVELS, destination_key, level};
use crate::protocol::DeliveryInfo;

/// The longest routing key AMQP carries.
const MAX_KEY: usize = 255;

/// `key` without a leading delay prefix (`^([01]\.){28}`): what kombu 5.7 strips before it
/// adds a new one.
///
/// ```
/// use celeryd_actors::broker::amqp::route::strip_delay_prefix;
/// let delayed = format!("{}tasks.add", "0.".repeat(25) + "1.0.1.");
/// assert_eq!(strip_delay_prefix(&delayed), "tasks.add");
/// assert_eq!(strip_delay_prefix("0.1.tasks"), "0.1.tasks");
/// ```
pub fn strip_delay_prefix(key: &str) -> &str {
    let b = key.as_bytes();
    let n = 2 * LEVELS as usize;
    let prefixed = b.len() >= n
        && b[..n]
            .chunks(2)
            .all(|w| (w[0] == b'0' || w[0] == b'1') && w[1] == b'.');
    if prefixed { &key[n..] } else { key }
}

/// Whether `exchange` belongs to a delay ladder (Celery's or celeryd's).
pub fn is_ladder_exchange(exchange: &str) -> bool {
    exchange.starts_with("celery_delayed_") || exchange.starts_with("celeryd.delayed.")
}

/// Whether a topic binding key matches a routing key (`*` one word, `#` zero or more).
///
/// ```
/// use celeryd_actors::broker::amqp::route::topic_matches;
/// assert!(topic_matches("tasks.*", "tasks.add"));
/// assert!(topic_matches("#.add", "add"));
/// assert!(!topic_matches("tasks.*", "tasks.add.x"));
/// ```
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|i| go(rest, &k[i..])),
            Some((&w, rest)) => match k.split_first() {
                Some((&kw, krest)) => (w == "*" || w == kw) && go(rest, krest),
                None => false,
            },
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    go(&p, &k)
}

/// Whether a message published to `exchange` with `key` reaches `queue` through one of its
/// non-direct bindings by way of Celery's ladder: the delayed key (digits, then `key`) must
/// match the binding's delayed-delivery key on `celery_delayed_delivery` (a topic exchange)
/// and, for a topic exchange, again on the way into the queue.
fn reaches_by_non_direct(queue: &TaskQueue, exchange: &str, key: &str) -> bool {
    let delayed = native_delay_key(0, key);
    queue.all_bindings().any(|b| {
        b.exchange == exchange
            && !b.exchange.is_empty()
            && matches!(b.exchange_type.as_str(), "topic" | "fanout" | "headers")
            && topic_matches(&destination_key(&b.routing_key), &delayed)
    })
}

/// Where a task re-sent from `info`'s delivery goes: where it was published (Celery's
/// `Task.retry` uses the request's `delivery_info`), but never back into a ladder. Out of
/// celeryd's ladder, the key names the queue, so the default exchange takes it there; out of
/// Celery's, the key is the original one and the queue's first non-direct binding that
/// matches it is its exchange.
pub fn retry_target(info: &DeliveryInfo, queue: Option<&TaskQueue>) -> (String, String) {
    let key = strip_delay_prefix(&info.routing_key);
    let to_queue = || (String::new(), info.queue.clone());
    if info.exchange.starts_with("celeryd.delayed.") {
        return to_queue();
    }
    if info.exchange.starts_with("celery_delayed_") {
        let Some(q) = queue else {
            return to_queue();
        };
        return q
            .all_bindings()
            .find(|b| reaches_by_non_direct(q, &b.exchange, key))
            .map(|b| (b.exchange, key.to_owned()))
            .unwrap_or_else(to_queue);
    }
    (info.exchange.clone(), key.to_owned())
}

/// The routing key Celery's ladder carries a `seconds` delay with towards `key`: the 28
/// binary digits, most significant first, each followed by `.`, then the key.
///
/// ```
/// use celeryd_actors::broker::amqp::route::native_delay_key;
/// assert_eq!(
///     native_delay_key(120, "tasks"),
///     format!("{}1.1.1.1.0.0.0.tasks", "0.".repeat(21))
/// );
/// ```
pub fn native_delay_key(seconds: u64, key: &str) -> String {
    let seconds = seconds.min((1 << LEVELS) - 1);
    let mut out = String::with_capacity(2 * LEVELS as usize + key.len());
    for k in (0..LEVELS).rev() {
        out.push(if seconds & (1 << k) != 0 { '1' } else { '0' });
        out.push('.');
    }
    out.push_str(key);
    out
}

/// How a re-sent task reaches its queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Published to the exchange with the key, at once (its `eta` header, if any, is held by
    /// the worker that gets it).
    Now {
        /// Exchange (`""`: the default exchange).
        exchange: String,
        /// Routing key.
        routing_key: String,
    },
    /// Through Celery's ladder: published to `celery_delayed_27` with this key.
    Native {
        /// Exchange (`celery_delayed_27`).
        exchange: String,
        /// The delay digits and the destination key.
        routing_key: String,
    },
}

impl Route {
    /// The exchange and routing key to publish with.
    pub fn into_parts(self) -> (String, String) {
        match self {
            Route::Now {
                exchange,
                routing_key,
            }
            | Route::Native {
                exchange,
                routing_key,
            } => (exchange, routing_key),
        }
    }
}

/// How to send a task towards `target` (from [`retry_target`]) `seconds` from now. Celery's
/// ladder is used, as Celery's `apply_async` uses it, when its topology is declared
/// (`native`: some configured queue is quorum), the delay is at least one whole second
/// (Celery refuses a countdown that truncates to 0), the queue is reached through a
/// non-direct binding, and the key fits AMQP's 255 bytes.
pub fn route(
    target: (String, String),
    queue: Option<&TaskQueue>,
    seconds: f64,
    native: bool,
) -> Route {
    let (exchange, routing_key) = target;
    let whole = if seconds.is_finite() && seconds >= 1.0 {
        seconds as u64
    } else {
        0
    };
    let key = native_delay_key(whole, &routing_key);
    let through_ladder = native
        && whole > 0
        && key.len() <= MAX_KEY
        && queue.is_some_and(|q| reaches_by_non_direct(q, &exchange, &routing_key));
    if through_ladder {
        Route::Native {
            exchange: level(LEVELS - 1),
            routing_key: key,
        }
    } else {
        Route::Now {
            exchange,
            routing_key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Binding;
    use super::*;

    fn quorum_topic() -> TaskQueue {
        let mut q = TaskQueue::plain("jobs");
        q.exchange = "bus".into();
        q.exchange_type = "topic".into();
        q.routing_key = "jobs.*".into();
        q.arguments
            .insert("x-queue-type".into(), serde_json::json!("quorum"));
        q
    }

    fn info(exchange: &str, key: &str) -> DeliveryInfo {
        DeliveryInfo {
            exchange: exchange.into(),
            routing_key: key.into(),
            queue: "jobs".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_prefix_is_stripped_only_when_it_is_28_digits() {
        let p = native_delay_key(5, "jobs.x");
        assert_eq!(strip_delay_prefix(&p), "jobs.x");
        assert_eq!(strip_delay_prefix(&native_delay_key(5, "")), "");
        let short = &p[2..];
        assert_eq!(strip_delay_prefix(short), short);
        assert_eq!(
            strip_delay_prefix("2.".repeat(28).as_str()),
            "2.".repeat(28)
        );
    }

    #[test]
    fn topic_patterns_match_as_rabbitmq_matches_them() {
        for (p, k, yes) in [
            ("#", "", true),
            ("#", "a.b", true),
            ("a.#", "a", true),
            ("a.#.c", "a.b.b.c", true),
            ("*", "", true),
            ("*", "a.b", false),
            ("#.jobs.*", "0.1.jobs.x", true),
            ("#.jobs.*", "0.1.jobs", false),
            ("jobs", "jobs", true),
            ("jobs", "job", false),
        ] {
            assert_eq!(topic_matches(p, k), yes, "{p} ~ {k}");
        }
    }

    #[test]
    fn a_retry_never_goes_back_into_a_ladder() {
        let q = quorum_topic();
        // As published: kept.
        assert_eq!(
            retry_target(&info("bus", "jobs.x"), Some(&q)),
            ("bus".into(), "jobs.x".into())
        );
        // Out of Celery's ladder: the queue's exchange, the key without its digits.
        let out = info("celery_delayed_2", &native_delay_key(120, "jobs.x"));
        assert_eq!(
            retry_target(&out, Some(&q)),
            ("bus".into(), "jobs.x".into())
        );
        // A key no binding matches (or no queue known): straight to the queue.
        let odd = info("celery_delayed_0", &native_delay_key(3, "other"));
        assert_eq!(retry_target(&odd, Some(&q)), (String::new(), "jobs".into()));
        assert_eq!(retry_target(&out, None), (String::new(), "jobs".into()));
        // Out of celeryd's ladder: the key is the queue's name.
        let own = info(
            "celeryd.delayed.deliver",
            &super::super::delay::routing_key(9, "jobs"),
        );
        assert_eq!(retry_target(&own, Some(&q)), (String::new(), "jobs".into()));
        assert!(is_ladder_exchange("celery_delayed_27"));
        assert!(is_ladder_exchange("celeryd.delayed.3"));
        assert!(!is_ladder_exchange("celery"));
    }

    #[test]
    fn celerys_ladder_carries_whole_seconds_to_non_direct_bindings_only() {
        let q = quorum_topic();
        let t = || ("bus".to_owned(), "jobs.x".to_owned());
        assert_eq!(
            route(t(), Some(&q), 120.7, true),
            Route::Native {
                exchange: "celery_delayed_27".into(),
                routing_key: native_delay_key(120, "jobs.x"),
            }
        );
        let now = Route::Now {
            exchange: "bus".into(),
            routing_key: "jobs.x".into(),
        };
        assert_eq!(
            route(t(), Some(&q), 0.9, true),
            now,
            "under 1 s: sent as is"
        );
        assert_eq!(
            route(t(), Some(&q), 120.0, false),
            now,
            "no native topology"
        );
        assert_eq!(route(t(), Some(&q), f64::NAN, true), now);
        assert_eq!(route(t(), None, 120.0, true), now);
        let unmatched = ("bus".to_owned(), "other".to_owned());
        assert!(matches!(
            route(unmatched, Some(&q), 120.0, true),
            Route::Now { .. }
        ));
        // The default exchange and direct exchanges have nothing to come back through.
        let plain = TaskQueue::plain("jobs");
        let direct = ("jobs".to_owned(), "jobs".to_owned());
        assert!(matches!(
            route(direct, Some(&plain), 120.0, true),
            Route::Now { .. }
        ));
        let dflt = (String::new(), "jobs".to_owned());
        assert!(matches!(
            route(dflt, Some(&q), 120.0, true),
            Route::Now { .. }
        ));
        // A fanout binding takes any key its delayed-delivery binding matches (`#`: all;
        // an empty key gives Celery's `#.`, which no delayed key matches).
        let mut fan = plain.clone();
        fan.bindings.push(Binding {
            exchange: "all".into(),
            exchange_type: "fanout".into(),
            routing_key: "#".into(),
        });
        let mut empty = plain.clone();
        empty.bindings.push(Binding {
            exchange: "none".into(),
            exchange_type: "fanout".into(),
            routing_key: String::new(),
        });
        assert!(matches!(
            route(("none".into(), "x".into()), Some(&empty), 5.0, true),
            Route::Now { .. }
        ));
        assert!(matches!(
            route(("all".into(), "x".into()), Some(&fan), 5.0, true),
            Route::Native { .. }
        ));
        // Too long a key for AMQP: not through the ladder.
        let long = ("all".to_owned(), "k".repeat(220));
        assert!(matches!(
            route(long, Some(&fan), 5.0, true),
            Route::Now { .. }
        ));
    }
}
