//! Shutdown modes, as Celery names them.

/// How the worker stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Stop consuming, let running tasks finish (and be acked), hand unstarted messages back
    /// to the broker, exit 0.
    Warm,
    /// Kill the children and exit at once; unacked messages go back to the broker when the
    /// connection closes.
    Cold,
}
