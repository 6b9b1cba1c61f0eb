//! The celeryd engine: a Celery worker as a ractor supervision tree.
//!
//! ```text
//! Supervisor                      root: children as data in start order, stopped in reverse
//! ├── PythonHelper (-A)           writes the results Celery's MainProcess writes
//! ├── Backend                     Redis result backend
//! ├── Pool                        reserved queue, rate limits, dispatch; prefork or in-process
//! │   └── ChildProcess …          one actor per OS process: one task at a time over a pipe
//! ├── Events                      worker heartbeats, task events
//! ├── Scheduler                   ETA / countdown tasks held until due
//! ├── RevokeRegistry              revoked task ids (with expiry, RocksDB statedb)
//! ├── Beat (-B)                   periodic tasks
//! ├── Control                     pidbox: remote control
//! └── Consumer                    deliveries -> requests; acks; rpc:// results
//! ```
//!
//! Start order is top to bottom, so that each actor starts before what sends to it and
//! nothing is delivered before there is somewhere to run it; stop order is the reverse. What
//! an actor sends to one started before it (pool reports, chord bodies, a shutdown request)
//! goes through a [`ractor::DerivedActorRef`] of a message type the sender defines,
//! so modules depend only downwards: the foundations and [`protocol`] (pure), [`work`],
//! [`settings`], then [`broker`] (the seam; [`broker::amqp`] is the only code that names
//! lapin) and [`task`], then the actors. The layering is a unit test (`layers.rs`). The pure
//! parts ([`protocol`], [`crontab`], the consumer's routing decision and prefetch window, the
//! ETA queue, settings validation) hold the logic and carry most of the unit tests; the
//! actors wire them to the broker and the child processes.

pub mod abort;
pub mod backend;
pub mod beat;
pub mod broker;
pub mod clock;
pub mod consumer;
pub mod control;
pub mod crontab;
pub mod error;
pub mod events;
pub mod helper;
pub mod hostname;
#[cfg(test)]
mod layers;
pub mod metrics;
pub mod pool;
pub mod process;
pub mod protocol;
pub mod revoke;
pub mod scheduler;
pub mod settings;
pub mod shutdown;
pub mod supervisor;
pub mod task;
#[cfg(test)]
mod testkit;
pub mod work;

pub use broker::BrokerError;
pub use control::custom::Registry;
pub use error::{ChildError, ConfigError, ProtocolError, StoreError};
pub use settings::Settings;
pub use shutdown::ShutdownMode;
pub use supervisor::{Supervisor, SupervisorArgs, SupervisorMessage};
pub use task::{Args, TaskContext, TaskError};
