//! Connecting: the failover list in its order, the heartbeat and frame size, the node's name
//! on the connection.

use lapin::{Connection, ConnectionProperties};

use crate::broker::BrokerError;
use crate::settings::{BrokerSettings, FailoverStrategy};

/// Opens a connection (with the configured heartbeat) and one channel. The connection is named
/// after the node (`connection_name` client property), so operators can find it in
/// `rabbitmqctl list_connections name client_properties`.
///
/// With a failover list (`broker.url` with several URLs), each URL is tried once, in the
/// order of `broker.failover_strategy`, starting from the one this process last connected
/// to (so the worker's connections land on one node); a URL that fails is named (password
/// masked) and the next is tried at once. The error is the last URL's, after a full cycle:
/// the callers back off only then.
///
/// `frame_max` overrides the configured frame size: the consumer raises it after a message's
/// header frame did not fit (see [`FRAME_MAX_RAISED`]).
pub async fn connect(
    settings: &BrokerSettings,
    nodename: &str,
    frame_max: Option<u32>,
) -> Result<(Connection, lapin::Channel), BrokerError> {
    let urls = settings.urls();
    let order = failover_order(urls.len(), settings.failover_strategy);
    let first = LAST_CONNECTED.load(std::sync::atomic::Ordering::Relaxed);
    let start = order.iter().position(|&i| i == first).unwrap_or(0);
    let mut last = BrokerError::Url("no broker URL".to_owned());
    for k in 0..order.len() {
        let index = order[(start + k) % order.len()];
        let url = &urls[index];
        match connect_one(settings, url, nodename, frame_max).await {
            Ok(link) => {
                if urls.len() > 1 {
                    tracing::info!(broker = %crate::settings::mask_password(url), "Connected to broker {} of {}.", index + 1, urls.len());
                }
                LAST_CONNECTED.store(index, std::sync::atomic::Ordering::Relaxed);
                return Ok(link);
            }
            Err(e) => {
                if urls.len() > 1 {
                    tracing::warn!(broker = %crate::settings::mask_password(url), error = %e,
                        "Cannot connect to this broker; trying the next one.");
                }
                last = e;
            }
        }
    }
    Err(last)
}

/// The URL index this process last connected to (failover lists start there).
pub(super) static LAST_CONNECTED: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// The order in which `n` failover URLs are tried: as written (`round-robin`), or an order
/// drawn once per process (`shuffle`).
pub fn failover_order(n: usize, strategy: FailoverStrategy) -> Vec<usize> {
    static SEED: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let mut order: Vec<usize> = (0..n).collect();
    if strategy == FailoverStrategy::Shuffle {
        let seed = *SEED.get_or_init(|| uuid::Uuid::new_v4().as_u128());
        shuffle(&mut order, seed);
    }
    order
}

/// Fisher–Yates with a xorshift stream from `seed` (the order only spreads workers over
/// nodes; it need not be cryptographic).
fn shuffle(v: &mut [usize], seed: u128) {
    let mut x = (seed as u64) ^ ((seed >> 64) as u64) | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let j = (x % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

pub(super) async fn connect_one(
    settings: &BrokerSettings,
    url: &str,
    nodename: &str,
    frame_max: Option<u32>,
) -> Result<(Connection, lapin::Channel), BrokerError> {
    let mut uri: lapin::uri::AMQPUri = url
        .parse()
        .map_err(|e: String| BrokerError::Url(crate::settings::mask_urls(&e)))?;
    uri.query.heartbeat = Some(settings.heartbeat);
    uri.query.frame_max = Some(frame_max.unwrap_or(settings.frame_max));
    if uri.query.connection_timeout.is_none() {
        uri.query.connection_timeout = Some(5_000);
    }
    let props = ConnectionProperties::default().with_connection_name(nodename.into());
    let conn = match &settings.ssl_ca_file {
        Some(path) if matches!(uri.scheme, lapin::uri::AMQPScheme::AMQPS) => {
            let pem = std::fs::read_to_string(path).map_err(|e| {
                BrokerError::Url(format!("broker.ssl_ca_file: cannot read {path}: {e}"))
            })?;
            let tls = lapin::tcp::OwnedTLSConfig {
                identity: None,
                cert_chain: Some(pem),
            };
            lapin::DefaultConnectionBuilder::new()?
                .with_uri(uri)
                .with_properties(props)
                .with_tls_config(tls)
                .connect()
                .await?
        }
        _ => Connection::connect_uri(uri, props).await?,
    };
    let channel = conn.create_channel().await?;
    Ok((conn, channel))
}

/// The frame size asked for once a message's header frame was larger than the configured
/// `frame_max` (the broker sends a header frame whole, whatever was negotiated, and the AMQP
/// client then closes the connection: without this the message would come back for ever).
/// This is RabbitMQ's default `frame_max`, and the broker accepts no message whose header
/// exceeds its own, so on such a broker every message fits then. (A broker configured with a
/// larger `frame_max` can still send a header this does not take: the connection then drops
/// and is retried at most every 4 s, logged as an error each time.)
pub const FRAME_MAX_RAISED: u32 = 131_072;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_order_is_as_written_or_a_permutation_drawn_once() {
        assert_eq!(failover_order(3, FailoverStrategy::RoundRobin), [0, 1, 2]);
        let a = failover_order(5, FailoverStrategy::Shuffle);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2, 3, 4]);
        assert_eq!(
            failover_order(5, FailoverStrategy::Shuffle),
            a,
            "the same order for the whole process"
        );
        let mut v = vec![0, 1, 2, 3, 4, 5, 6, 7];
        shuffle(&mut v, 42);
        assert_ne!(v, [0, 1, 2, 3, 4, 5, 6, 7]);
    }
}
