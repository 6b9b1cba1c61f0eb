//! The metrics endpoint (`--metrics-addr`): a task the supervisor owns, not an actor (it has
//! no state of its own). Answers `GET /metrics` with the shared [`Metrics`] and gauges read
//! from the actors at scrape time.

use std::sync::Arc;

use ractor::ActorRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::metrics::{Gauges, Metrics};
use crate::pool::{ControlMsg, PoolMessage};
use crate::revoke::RevokeMessage;
use crate::scheduler::SchedulerMessage;

/// The actors the gauges are read from.
#[derive(Debug, Clone)]
pub(super) struct GaugeSources {
    /// The pool.
    pub(super) pool: ActorRef<PoolMessage>,
    /// The scheduler.
    pub(super) scheduler: ActorRef<SchedulerMessage>,
    /// The revoke registry.
    pub(super) revoke: ActorRef<RevokeMessage>,
}

impl GaugeSources {
    async fn read(&self) -> Gauges {
        let tasks = ractor::call!(self.pool, |reply| ControlMsg::GetTasks { reply }.into())
            .unwrap_or_default();
        let scheduled = ractor::call!(self.scheduler, SchedulerMessage::GetScheduled)
            .map(|s| s.len())
            .unwrap_or_default();
        let revoked = ractor::call!(self.revoke, RevokeMessage::GetRevoked)
            .map(|r| r.len())
            .unwrap_or_default();
        Gauges {
            processes: tasks.processes.len(),
            busy: tasks.active.len(),
            reserved: tasks.reserved.len(),
            scheduled,
            revoked,
        }
    }
}

/// Answers `GET /metrics` (404 for anything else) on `listener` until the task is dropped.
pub(super) async fn serve(listener: TcpListener, metrics: Arc<Metrics>, sources: GaugeSources) {
    if let Ok(addr) = listener.local_addr() {
        info!("Metrics on http://{addr}/metrics");
    }
    // At most this many scrapes at once, each given a few seconds: a client that connects and
    // never sends (or floods connections) holds neither memory nor tasks without bound.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, say: wait instead of spinning on the error.
                debug!(error = %e, "Cannot accept a metrics connection.");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // too many at once: this one is closed at once
        };
        let (metrics, sources) = (metrics.clone(), sources.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            let read = async {
                while len < buf.len() && !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => len += n,
                    }
                }
            };
            if tokio::time::timeout(SCRAPE_TIMEOUT, read).await.is_err() {
                return;
            }
            let request = String::from_utf8_lossy(&buf[..len]);
            let response = match request_path(&request) {
                Some("/metrics") => {
                    let body = metrics.render(&sources.read().await);
                    http_response("200 OK", "text/plain; version=0.0.4", &body)
                }
                _ => http_response("404 Not Found", "text/plain", "not found: try /metrics\n"),
            };
            let write = stream.write_all(response.as_bytes());
            match tokio::time::timeout(SCRAPE_TIMEOUT, write).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(error = %e, "Metrics response not sent."),
                Err(_) => debug!("Metrics response not taken in time."),
            }
            let _ = stream.shutdown().await;
        });
    }
}

/// Scrapes served at once; more connections are closed at once.
const MAX_SCRAPES: usize = 16;
/// How long a scrape may take to send its request, and to take the response.
const SCRAPE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The path of a `GET` request line (query string dropped).
pub(super) fn request_path(request: &str) -> Option<&str> {
    let mut words = request.lines().next()?.split_whitespace();
    if words.next()? != "GET" {
        return None;
    }
    words.next()?.split('?').next()
}

fn http_response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(
            request_path("GET /metrics HTTP/1.1\r\n\r\n"),
            Some("/metrics")
        );
        assert_eq!(
            request_path("GET /metrics?x=1 HTTP/1.0\r\n"),
            Some("/metrics")
        );
        assert_eq!(request_path("POST /metrics HTTP/1.1\r\n"), None);
        assert_eq!(request_path(""), None);
    }
}
