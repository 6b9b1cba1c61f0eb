//! A spawned task tied to its owner's life.

/// Aborts a spawned task when dropped, so that a stopped actor leaves no task behind.
#[derive(Debug)]
pub struct AbortOnDrop<T = ()>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
