//! `worker call`: publishes a task message exactly as `celery call` would (so a Python worker
//! accepts it too) and, with `--wait`, waits for the rpc:// result.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Map, Value};
use time::OffsetDateTime;

use celeryd_actors::Settings;
use celeryd_actors::broker::Link;
use celeryd_actors::protocol::encode::{TaskCall, TaskMessage};
use celeryd_actors::protocol::time::parse_iso;
use celeryd_actors::settings::queues::TaskQueue;

use crate::cli::CallArgs;
use crate::error::StartupError;

/// Builds the call from the command line (pure; errors are caught before anything is sent).
pub fn build_call(args: &CallArgs, now: OffsetDateTime) -> Result<TaskCall, StartupError> {
    let bad = |what: &str, e: String| StartupError::Config(format!("{what}: {e}"));
    let positional: Vec<Value> = args
        .args
        .iter()
        .map(|a| serde_json::from_str(a).unwrap_or_else(|_| Value::String(a.clone())))
        .collect();
    let kwargs: Map<String, Value> = match &args.kwargs {
        Some(k) => serde_json::from_str(k)
            .map_err(|e| bad("--kwargs must be a JSON object", e.to_string()))?,
        None => Map::new(),
    };
    let later = |s: f64| celeryd_actors::protocol::time::after(now, s);
    let eta = match (&args.eta, args.countdown) {
        (Some(_), Some(_)) => return Err(bad("--eta", "use either --eta or --countdown".into())),
        (Some(iso), None) => Some(parse_iso(iso).map_err(|e| bad("--eta", e))?),
        (None, Some(c)) => Some(later(c).ok_or_else(|| {
            bad(
                "--countdown",
                "must be a number of seconds within the calendar".into(),
            )
        })?),
        (None, None) => None,
    };
    let expires = match &args.expires {
        None => None,
        Some(e) => match e.parse::<f64>() {
            Ok(s) => Some(later(s).ok_or_else(|| {
                bad(
                    "--expires",
                    "must be a number of seconds within the calendar".into(),
                )
            })?),
            Err(_) => Some(parse_iso(e).map_err(|err| bad("--expires", err))?),
        },
    };
    let host = celeryd_actors::hostname::this_host();
    Ok(TaskCall {
        name: args.name.clone(),
        args: positional,
        kwargs,
        eta,
        expires,
        reply_to: args.wait.then(|| uuid::Uuid::new_v4().to_string()),
        id: None,
        origin: format!("gen{}@{host}", std::process::id()),
        priority: 0,
    })
}

/// Runs `worker call`.
pub async fn call(settings: &Settings, args: &CallArgs) -> Result<ExitCode, StartupError> {
    let call = build_call(args, OffsetDateTime::now_utc())?;
    let msg = TaskMessage::new(&call, OffsetDateTime::now_utc());
    // The queue as the worker declares it ([[task.queues]], -Q); another name as a plain one.
    let declared = settings.task_queues();
    let spec = match &args.queue {
        Some(name) => declared
            .iter()
            .find(|q| &q.name == name)
            .cloned()
            .unwrap_or_else(|| TaskQueue::plain(name)),
        None => declared
            .first()
            .cloned()
            .unwrap_or_else(|| TaskQueue::plain(&settings.task.default_queue)),
    };
    let queue = spec.name.clone();
    let broker_error = |e: celeryd_actors::broker::BrokerError| StartupError::Broker(e.to_string());
    let link = Link::open(&settings.broker, "worker call", None)
        .await
        .map_err(broker_error)?;
    link.declare_task_queue(&spec).await.map_err(broker_error)?;
    let mut results = None;
    if let Some(reply_to) = &call.reply_to {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let task = link
            .consume_results(reply_to, move |body| tx.send(body).is_ok())
            .await
            .map_err(broker_error)?;
        results = Some((rx, task));
    }
    link.publish_task(&queue, &msg)
        .await
        .map_err(broker_error)?;
    let Some((mut results, _forwarding)) = results else {
        link.close("bye").await;
        println!("{}", msg.id);
        return Ok(ExitCode::SUCCESS);
    };
    let wait = Duration::from_secs_f64(args.timeout.max(0.0));
    let outcome = tokio::time::timeout(wait, async {
        while let Some(data) = results.recv().await {
            let Ok(body) = serde_json::from_slice::<Value>(&data) else {
                continue;
            };
            if body["task_id"] != Value::String(msg.id.clone()) {
                continue;
            }
            match body["status"].as_str() {
                Some("SUCCESS" | "FAILURE" | "REVOKED") => return Some(body),
                _ => continue,
            }
        }
        None
    })
    .await;
    link.close("bye").await;
    match outcome {
        Ok(Some(body)) => Ok(print_outcome(&msg.id, &body)),
        Ok(None) => Err(StartupError::Broker("result stream closed".into())),
        Err(_) => {
            eprintln!(
                "worker call: no result for {} within {:.1}s",
                msg.id, args.timeout
            );
            Ok(ExitCode::from(2))
        }
    }
}

fn print_outcome(id: &str, body: &Value) -> ExitCode {
    if body["status"] == "SUCCESS" {
        println!("{}", body["result"]);
        return ExitCode::SUCCESS;
    }
    let r = &body["result"];
    let args: Vec<String> = r["exc_message"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    eprintln!(
        "{} {id}: {}: {}",
        body["status"].as_str().unwrap_or("?"),
        r["exc_type"].as_str().unwrap_or("?"),
        args.join(", ")
    );
    ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: impl FnOnce(&mut CallArgs)) -> CallArgs {
        let mut a = CallArgs {
            name: "tasks.add".into(),
            args: vec!["2".into(), "3".into(), "hello".into()],
            kwargs: None,
            countdown: None,
            eta: None,
            expires: None,
            queue: None,
            wait: false,
            timeout: 1.0,
        };
        extra(&mut a);
        a
    }

    #[test]
    fn builds_calls_and_catches_bad_arguments() {
        let now = OffsetDateTime::now_utc();
        let c = build_call(&args(|_| {}), now).unwrap();
        assert_eq!(
            c.args,
            vec![Value::from(2), Value::from(3), Value::from("hello")]
        );
        assert!(c.reply_to.is_none());
        let c = build_call(
            &args(|a| {
                a.countdown = Some(10.0);
                a.expires = Some("60".into());
                a.wait = true;
            }),
            now,
        )
        .unwrap();
        assert_eq!(c.eta, Some(now + time::Duration::seconds(10)));
        assert_eq!(c.expires, Some(now + time::Duration::seconds(60)));
        assert!(c.reply_to.is_some());
        assert!(build_call(&args(|a| a.kwargs = Some("[1]".into())), now).is_err());
        assert!(build_call(&args(|a| a.eta = Some("soon".into())), now).is_err());
        assert!(
            build_call(
                &args(|a| {
                    a.eta = Some("2030-01-01T00:00:00".into());
                    a.countdown = Some(1.0);
                }),
                now
            )
            .is_err()
        );
    }
}
