//! The example tasks the stock `worker` binary registers (used by the tests and benchmarks).

use std::time::{Duration, Instant};

use celeryd_actors::{Args, Registry, TaskContext, TaskError};
use serde_json::{Value, json};

/// A registry with `tasks.noop`, `add`, `echo`, `sleep`, `spin`, `fail`, `crash`, `hog`,
/// `flaky`, `retry_in`, `progress`, `send_add`, the async tasks `async_noop`, `async_sleep`,
/// `async_panic` and `async_block`, and the control command `task_counts`.
pub fn example_registry() -> Registry {
    let mut r = Registry::new();
    r.task("tasks.noop", &[], |_ctx, ()| Ok(Value::Null));
    r.task("tasks.add", &["x", "y"], |_ctx, (x, y): (Value, Value)| {
        add(&x, &y)
    });
    r.register("tasks.echo", |_ctx: &TaskContext, a: Args| {
        Ok(json!([a.args, a.kwargs]))
    });
    r.task("tasks.sleep", &["seconds"], |ctx, (seconds,): (f64,)| {
        sleep(ctx, seconds)
    });
    r.task("tasks.spin", &["seconds"], |_ctx, (seconds,): (f64,)| {
        Ok(spin(seconds))
    });
    r.task(
        "tasks.fail",
        &["message"],
        |_ctx, (message,): (String,)| -> Result<(), TaskError> {
            Err(TaskError::new("ValueError", message))
        },
    );
    r.task("tasks.crash", &[], |_ctx, ()| -> Result<(), TaskError> {
        std::process::abort()
    });
    r.task("tasks.hog", &["mib"], |_ctx, (mib,): (usize,)| Ok(hog(mib)));
    // Fails `times` times, retrying after 0.2 s (at most 3 retries), then returns how many
    // retries it took: Celery's `self.retry(exc=…, countdown=…, max_retries=…)`.
    r.task("tasks.flaky", &["times"], |ctx, (times,): (u32,)| {
        if ctx.retries < times {
            let e = TaskError::new("ValueError", format!("attempt {} failed", ctx.retries + 1));
            return Err(ctx.retry(e, 0.2, 3));
        }
        Ok(ctx.retries)
    });
    // Fails `times` times, retrying after `seconds` each time (at most 3 retries), then
    // returns how many retries it took. A countdown of a second or more on a quorum queue
    // goes through Celery's native delayed delivery.
    r.task(
        "tasks.retry_in",
        &["times", "seconds"],
        |ctx, (times, seconds): (u32, f64)| {
            if ctx.retries < times {
                let e = TaskError::new("ValueError", format!("attempt {} failed", ctx.retries + 1));
                return Err(ctx.retry(e, seconds, 3));
            }
            Ok(ctx.retries)
        },
    );
    // Reports PROGRESS {current, total} after each of `steps` steps of `pause` seconds
    // (default 0.2), then returns `steps`: Celery's `self.update_state`.
    r.task(
        "tasks.progress",
        &["steps", "pause=0.2"],
        |ctx, (steps, pause): (u32, f64)| {
            for i in 1..=steps {
                sleep(ctx, pause)?;
                ctx.update_state("PROGRESS", json!({"current": i, "total": steps}))?;
            }
            Ok(steps)
        },
    );
    // Sends `tasks.add(x, y)` (to `queue`, default the worker's default queue) and returns its
    // id: a task that sends a task, with this one as its parent.
    r.task(
        "tasks.send_add",
        &["x", "y", "queue?"],
        |ctx, (x, y, queue): (Value, Value, Option<String>)| {
            let options = queue.map_or(json!({}), |q| json!({ "queue": q }));
            ctx.send_task("tasks.add", vec![x, y], serde_json::Map::new(), options)
        },
    );
    // Async tasks: `-P async` runs thousands of them at once on a few threads.
    // Returns at once (the async counterpart of `tasks.noop`).
    r.task_async("tasks.async_noop", &[], |_ctx, ()| async move {
        Ok(Value::Null)
    });
    // Awaits a timer for `seconds` and returns it; the soft time limit ends the wait with
    // SoftTimeLimitExceeded, the hard limit and `revoke --terminate` cancel it.
    r.task_async(
        "tasks.async_sleep",
        &["seconds"],
        |ctx, (seconds,): (f64,)| async move {
            let Some(d) = deadline(seconds).map(|end| end - Instant::now()) else {
                return Err(TaskError::new(
                    "ValueError",
                    "seconds must be a number from 0 to 31536000",
                ));
            };
            ctx.sleep(d).await?;
            Ok(seconds)
        },
    );
    // Awaits once, then panics with `message`: the task fails with RuntimeError, nothing else.
    r.task_async(
        "tasks.async_panic",
        &["message"],
        |_ctx, (message,): (String,)| async move {
            tokio::task::yield_now().await;
            panic_with(&message)
        },
    );
    // What a mistaken async task does: blocks its thread (std::thread::sleep) for `seconds`
    // instead of awaiting. The worker's consumer and remote control must go on regardless.
    r.task_async(
        "tasks.async_block",
        &["seconds"],
        |_ctx, (seconds,): (f64,)| async move {
            let Some(end) = deadline(seconds) else {
                return Err(TaskError::new("ValueError", "seconds out of range"));
            };
            std::thread::sleep(end.saturating_duration_since(Instant::now()));
            Ok(seconds)
        },
    );
    // An application control command (Celery's `Panel.register`): how much work this node
    // holds, by where it is. `worker ctl broadcast task_counts`.
    r.control_command("task_counts", |handle, _args| async move {
        let tasks = handle.pool_tasks().await;
        let scheduled = handle.scheduled().await.len();
        json!({"ok": {
            "active": tasks.active.len(),
            "reserved": tasks.reserved.len(),
            "scheduled": scheduled,
        }})
    });
    r
}

/// Panics with `message` (the `tasks.async_panic` example).
fn panic_with(message: &str) -> Result<(), TaskError> {
    panic!("{message}")
}

/// x + y for integers (exact) or any numbers (as floats), like Python's `+`.
fn add(x: &Value, y: &Value) -> Result<Value, TaskError> {
    match (x.as_i64(), y.as_i64()) {
        (Some(a), Some(b)) => a
            .checked_add(b)
            .map(Value::from)
            .ok_or_else(|| TaskError::new("OverflowError", "integer overflow")),
        _ => match (x.as_f64(), y.as_f64()) {
            (Some(a), Some(b)) => Ok(json!(a + b)),
            _ => match (x, y) {
                (Value::String(a), Value::String(b)) => Ok(json!(format!("{a}{b}"))),
                _ => Err(TaskError::type_error(format!(
                    "unsupported operand type(s) for +: {x} and {y}"
                ))),
            },
        },
    }
}

/// `seconds` from now, for a finite number from 0 to a year (task arguments come from
/// outside: `NaN` or `1e300` must be an error, not a panic).
fn deadline(seconds: f64) -> Option<Instant> {
    if !(0.0..=31_536_000.0).contains(&seconds) {
        return None;
    }
    Instant::now().checked_add(Duration::try_from_secs_f64(seconds).ok()?)
}

/// Sleeps in small steps, giving up with `SoftTimeLimitExceeded` when the soft limit passes.
fn sleep(ctx: &TaskContext, seconds: f64) -> Result<f64, TaskError> {
    let Some(end) = deadline(seconds) else {
        return Err(TaskError::new(
            "ValueError",
            "seconds must be a number from 0 to 31536000",
        ));
    };
    loop {
        ctx.check_soft_time_limit()?;
        let now = Instant::now();
        if now >= end {
            return Ok(seconds);
        }
        std::thread::sleep((end - now).min(Duration::from_millis(10)));
    }
}

/// Allocates `mib` MiB, touches every page and keeps it for the life of the child process
/// (to exercise `max_memory_per_child`). Returns `mib`.
fn hog(mib: usize) -> usize {
    let mut block = vec![0u8; mib.min(4096) * 1024 * 1024];
    for page in block.chunks_mut(4096) {
        page[0] = 1;
    }
    std::mem::forget(std::hint::black_box(block));
    mib
}

/// Burns CPU for `seconds`, ignoring soft limits; returns the number of loop iterations.
fn spin(seconds: f64) -> u64 {
    let end = deadline(seconds.clamp(0.0, 1e6)).unwrap_or_else(Instant::now);
    let mut n: u64 = 0;
    while Instant::now() < end {
        n = std::hint::black_box(n.wrapping_add(1));
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn call(name: &str, args: Value) -> Result<Value, TaskError> {
        let r = example_registry();
        let ctx = TaskContext::new("id".into(), name.into(), 0, "h".into(), Arc::default());
        let args = Args {
            args: args.as_array().cloned().unwrap_or_default(),
            ..Default::default()
        };
        r.get(name).unwrap().call(&ctx, args)
    }

    #[test]
    fn example_tasks_behave() {
        assert_eq!(call("tasks.noop", json!([])), Ok(Value::Null));
        assert_eq!(call("tasks.add", json!([2, 3])), Ok(json!(5)));
        assert_eq!(call("tasks.add", json!([2.5, 3])), Ok(json!(5.5)));
        assert_eq!(
            call("tasks.echo", json!([1, "a"])),
            Ok(json!([[1, "a"], {}]))
        );
        assert_eq!(call("tasks.sleep", json!([0.01])), Ok(json!(0.01)));
        let e = call("tasks.fail", json!(["boom"])).unwrap_err();
        assert_eq!(
            (e.exc_type.as_str(), e.exc_module.as_str()),
            ("ValueError", "builtins")
        );
        assert!(call("tasks.spin", json!([0.001])).is_ok());
        assert!(call("tasks.add", json!([null, 1])).is_err());
        assert_eq!(call("tasks.async_noop", json!([])), Ok(Value::Null));
        assert_eq!(call("tasks.async_sleep", json!([0.01])), Ok(json!(0.01)));
        assert!(call("tasks.async_sleep", json!([-1])).is_err());
        assert_eq!(call("tasks.async_block", json!([0.01])), Ok(json!(0.01)));
        let panicked = std::panic::catch_unwind(|| call("tasks.async_panic", json!(["boo"])));
        assert!(
            panicked.is_err(),
            "call() leaves panics to the pool to catch"
        );
    }

    #[test]
    fn async_sleep_ends_at_the_soft_limit() {
        let r = example_registry();
        let ctx = TaskContext::new(
            "id".into(),
            "tasks.async_sleep".into(),
            0,
            "h".into(),
            Arc::default(),
        );
        let raiser = ctx.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            raiser.raise_soft_limit();
        });
        let started = Instant::now();
        let args = Args {
            args: vec![json!(30)],
            ..Default::default()
        };
        let e = r
            .get("tasks.async_sleep")
            .unwrap()
            .call(&ctx, args)
            .unwrap_err();
        assert_eq!(e.exc_type, "SoftTimeLimitExceeded");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn sleep_observes_the_soft_limit() {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let ctx = TaskContext::new("id".into(), "tasks.sleep".into(), 0, "h".into(), flag);
        let e = sleep(&ctx, 5.0).unwrap_err();
        assert_eq!(e.exc_type, "SoftTimeLimitExceeded");
    }
}
