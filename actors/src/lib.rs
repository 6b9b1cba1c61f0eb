//! The celeryd engine: a Celery worker as a ractor supervision tree.
//!
//! ```text
//! Supervisor                      root; shutdown order, restart policy
//! ├── RevokeRegistry              revoked task ids (with expiry)
//! ├── Scheduler                   ETA / countdown tasks held until due (deliveries stay unacked)
//! ├── Pool                        dispatch over the children; reserved queue
//! │   ├── ChildProcess #1         one actor per OS process: one task at a time over a pipe
//! │   └── …
//! └── Consumer                    AMQP: deliveries -> decoded requests; acks; results (rpc://)
//! ```
//!
//! Start order is top to bottom, so nothing is delivered before there is somewhere to run it;
//! stop order is the reverse. The pure parts (the Celery [`protocol`], the consumer's routing
//! decision, the ETA queue, node-name expansion, [`crontab`] schedules, settings validation)
//! hold the logic and carry most of the unit tests; the actors wire them to the broker and the
//! child processes.

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
pub use error::{ChildError, ConfigError, ProtocolError, StoreError};
pub use settings::Settings;
pub use shutdown::ShutdownMode;
pub use supervisor::{Supervisor, SupervisorArgs, SupervisorMessage};
pub use task::{Args, Registry, TaskContext, TaskError};
