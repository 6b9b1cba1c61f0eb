//! Connecting to the Redis server a [`RedisUrl`] names: TCP, TLS, a Unix socket, or the
//! master Sentinel currently reports for `master_name` (asked again at every connect, so a
//! reconnect after a failover follows the new master).

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo,
};

use super::RedisError;
use crate::settings::redis::{Endpoint, RedisOptions, RedisUrl};

/// How long a connection attempt may take unless `socket_connect_timeout` says otherwise.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn redis_info(url: &RedisUrl) -> RedisConnectionInfo {
    let mut info = RedisConnectionInfo::default().set_db(url.db);
    if let Some(u) = &url.username {
        info = info.set_username(u);
    }
    if let Some(p) = &url.password {
        info = info.set_password(p);
    }
    info
}

/// A client for the server `url` names now (for Sentinel: the master it reports).
pub(super) async fn client(url: &RedisUrl, options: &RedisOptions) -> Result<Client, RedisError> {
    let addr = match &url.endpoint {
        Endpoint::Tcp { host, port } if url.tls => ConnectionAddr::TcpTls {
            host: host.clone(),
            port: *port,
            insecure: false,
            tls_params: None,
        },
        Endpoint::Tcp { host, port } => ConnectionAddr::Tcp(host.clone(), *port),
        Endpoint::Unix(path) => ConnectionAddr::Unix(path.into()),
        Endpoint::Sentinel(nodes) => return sentinel_master(url, nodes, options).await,
    };
    let info = addr
        .into_connection_info()?
        .set_redis_settings(redis_info(url));
    Ok(Client::open(info)?)
}

async fn sentinel_master(
    url: &RedisUrl,
    nodes: &[(String, u16)],
    options: &RedisOptions,
) -> Result<Client, RedisError> {
    use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
    let name = options.master_name.clone().ok_or(RedisError::Config(
        "sentinel:// URLs need transport_options.master_name",
    ))?;
    let addrs: Vec<ConnectionAddr> = nodes
        .iter()
        .map(|(h, p)| ConnectionAddr::Tcp(h.clone(), *p))
        .collect();
    let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(redis_info(url));
    let mut sentinel = SentinelClient::build(addrs, name, Some(node), SentinelServerType::Master)?;
    Ok(sentinel.async_get_client().await?)
}

/// A multiplexed connection to `client`: `blocking` ones (blocking waits, pub/sub) have no
/// response timeout; others take `socket_timeout`, if set.
pub(super) async fn connection(
    client: &Client,
    options: &RedisOptions,
    blocking: bool,
) -> Result<MultiplexedConnection, RedisError> {
    let secs = |s: Option<f64>| s.map(Duration::from_secs_f64);
    let response = if blocking {
        None
    } else {
        secs(options.socket_timeout)
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(
            secs(options.socket_connect_timeout).unwrap_or(CONNECT_TIMEOUT),
        ))
        .set_response_timeout(response);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    // A server that answers: fail here, not on the first real command.
    redis::cmd("PING").query_async::<()>(&mut conn).await?;
    Ok(conn)
}
