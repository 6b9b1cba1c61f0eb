//! The supervisor's children as data: one list in start order, named, so that a failure is
//! reported by name and every child is stopped, in the reverse order.

use ractor::{ActorCell, ActorId};

/// How a child is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// Stopped (or killed, in a cold shutdown) like the others.
    Signal,
    /// Let it finish what it was sent first (the result backend's pending writes), then
    /// stop; killed in a cold shutdown.
    Drain,
}

/// One child.
#[derive(Debug)]
struct Child {
    name: &'static str,
    cell: ActorCell,
    stop: Stop,
}

/// The children, in start order.
#[derive(Debug, Default)]
pub(super) struct Children(Vec<Child>);

impl Children {
    /// Adds the child started last.
    pub(super) fn push(&mut self, name: &'static str, cell: ActorCell, stop: Stop) {
        self.0.push(Child { name, cell, stop });
    }

    /// The name of the child with `id` (`"unknown"` for none of them).
    pub(super) fn name_of(&self, id: ActorId) -> &'static str {
        self.0
            .iter()
            .find(|c| c.cell.get_id() == id)
            .map_or("unknown", |c| c.name)
    }

    /// The names in stop order: the reverse of the start order.
    pub(super) fn stop_order(&self) -> Vec<&'static str> {
        self.0.iter().rev().map(|c| c.name).collect()
    }

    /// Stops every child, last started first: killed (`kill`, a cold shutdown or a failure)
    /// or stopped.
    pub(super) fn stop_all(&self, kill: bool) {
        for child in self.0.iter().rev() {
            match (kill, child.stop) {
                (true, _) => child.cell.kill(),
                (false, Stop::Signal) => child.cell.stop(Some("warm_shutdown".into())),
                (false, Stop::Drain) => {
                    let _ = child.cell.drain();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::recorder;

    #[tokio::test]
    async fn children_are_named_and_stopped_last_started_first() {
        let (a, _rx_a, ha) = recorder::<u8>().await;
        let (b, _rx_b, hb) = recorder::<u8>().await;
        let (other, _rx_o, ho) = recorder::<u8>().await;
        let mut children = Children::default();
        children.push("pool", a.get_cell(), Stop::Signal);
        children.push("backend", b.get_cell(), Stop::Drain);
        assert_eq!(children.name_of(a.get_id()), "pool");
        assert_eq!(children.name_of(b.get_id()), "backend");
        assert_eq!(children.name_of(other.get_id()), "unknown");
        assert_eq!(children.stop_order(), ["backend", "pool"]);
        children.stop_all(false);
        ha.await.expect("pool stopped");
        hb.await.expect("backend drained and stopped");
        other.stop(None);
        ho.await.expect("stopped");
    }
}
