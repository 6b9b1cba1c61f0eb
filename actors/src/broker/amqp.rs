//! AMQP 0-9-1 over lapin: connect (with failover), declare Celery's topology, QoS, consume,
//! acknowledge, publish (with confirms), the delay ladder and Celery's native delayed
//! delivery. The only module of the engine that names lapin.

pub mod connect;
pub mod consume;
pub mod declare;
pub mod delay;
mod election;
mod error;
mod link;
mod message;
pub mod native_delay;
pub mod outbox;
mod own;
pub mod pidbox;
pub mod publish;
pub mod route;
pub mod value;

pub use self::connect::{FRAME_MAX_RAISED, connect, failover_order};
pub use self::declare::{
    declare_delay_topology, declare_native_delayed_delivery, declare_native_on_alternates,
    declare_on_own_channel, declare_task_queue, describe_clash, exchange_kind, purge, set_prefetch,
};
pub use self::election::Confirm;
pub use self::error::{AmqpError, kind_of_text};
pub use self::link::{Channel, Link};
pub use self::message::{Message, delivery_of, extra_properties};
pub use self::publish::{
    publish_delayed, publish_result, publish_task, publish_task_to, result_consumer, send_task_to,
};

use crate::settings::BrokerSettings;

// Pure queue declarations, defined with the settings they are resolved from; their paths
// here stay.
pub use crate::settings::queues::{Binding, TaskQueue};

/// The `broker` section of `inspect stats` for the first URL, as Celery's worker reports
/// its connection (password left out; the other URLs masked, as `alternates`).
pub fn stats(settings: &BrokerSettings) -> Option<serde_json::Value> {
    let urls = settings.urls();
    let url: lapin::uri::AMQPUri = urls.first()?.parse().ok()?;
    let alternates: Vec<String> = urls
        .iter()
        .skip(1)
        .map(|u| crate::settings::mask_password(u))
        .collect();
    Some(serde_json::json!({
        "hostname": url.authority.host, "userid": url.authority.userinfo.username,
        "virtual_host": url.vhost, "port": url.authority.port, "insist": false,
        "ssl": matches!(url.scheme, lapin::uri::AMQPScheme::AMQPS), "transport": "amqp",
        "connect_timeout": 4, "transport_options": {}, "login_method": "PLAIN",
        "uri_prefix": null, "heartbeat": f64::from(settings.heartbeat),
        "failover_strategy": settings.failover_strategy.name(), "alternates": alternates,
    }))
}
