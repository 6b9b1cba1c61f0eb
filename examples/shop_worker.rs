//! Your own worker: tasks written with the library API, a control command of your own, and
//! the same command line as the stock `worker` (`--config`, `ctl`, `call`, every flag).
//!
//! ```sh
//! cargo build --example shop_worker
//! target/debug/examples/shop_worker --config config/worker.toml -Q shop
//! target/debug/examples/shop_worker call shop.total '[1.5, 2.25]' -Q shop --wait
//! target/debug/examples/shop_worker ctl broadcast shop_stats
//! ```
//!
//! From Python: `app.send_task("shop.total", ([1.5, 2.25],), queue="shop").get()` → `3.75`.

use std::process::ExitCode;

use celeryd::Registry;
use celeryd_actors::TaskError;
use serde_json::json;

fn main() -> ExitCode {
    let mut registry = Registry::new();
    // Positional or keyword arguments, bound to typed parameters.
    registry.task("shop.total", &["prices"], |_ctx, (prices,): (Vec<f64>,)| {
        Ok(prices.iter().sum::<f64>())
    });
    // A Python exception type the client raises as itself.
    registry.task(
        "shop.discount",
        &["price", "percent"],
        |_ctx, (price, percent): (f64, f64)| {
            if !(0.0..=100.0).contains(&percent) {
                return Err(TaskError::new(
                    "ValueError",
                    format!("bad percent {percent}"),
                ));
            }
            Ok(price * (100.0 - percent) / 100.0)
        },
    );
    // Registration options: a time limit and a rate limit.
    registry
        .task("shop.report", &[], |ctx, ()| {
            ctx.check_soft_time_limit()?;
            Ok(json!({"node": ctx.hostname}))
        })
        .time_limit(30.0)
        .rate_limit("10/m")
        .expect("a valid rate");
    // A control command of your own (Celery's Panel.register).
    registry.control_command("shop_stats", |handle, _args| async move {
        let tasks = handle.pool_tasks().await;
        json!({"ok": {"node": handle.nodename(), "running": tasks.active.len(),
                      "started_total": tasks.total.values().sum::<u64>()}})
    });
    celeryd::main_with(registry)
}
