//! A rusty-celery worker for the side-by-side benchmark: one no-op task, `tasks.noop`, on the
//! queue named by `RUSTY_QUEUE`, prefetch `RUSTY_PREFETCH` (default 8), broker `AMQP_ADDR`.

use celery::prelude::*;

#[celery::task(name = "tasks.noop")]
async fn noop() -> TaskResult<()> {
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let queue = std::env::var("RUSTY_QUEUE").unwrap_or_else(|_| "celery".into());
    let prefetch: u16 = std::env::var("RUSTY_PREFETCH")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8);
    let app = celery::app!(
        broker = AMQPBroker { std::env::var("AMQP_ADDR").unwrap_or_else(|_| "amqp://127.0.0.1:5672".into()) },
        tasks = [noop],
        task_routes = ["*" => queue.as_str()],
        prefetch_count = prefetch,
        heartbeat = Some(10),
    )
    .await?;
    app.consume_from(&[queue.as_str()]).await?;
    Ok(())
}
