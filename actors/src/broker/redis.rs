//! Redis as the broker, wire-compatible with kombu's redis transport (`redis-transport.md`):
//! the same keys, envelope, fetch order, `unacked` records and fanout channels, so Python
//! clients, Python workers, `celery inspect` and Flower share a Redis with celeryd.

pub mod envelope;
pub mod keys;

pub use self::envelope::Message;
