//! The relay's health as its workers report it, for `/readyz`: per group, what the worker
//! is doing now.
//!
//! ```text
//!   starting ──▶ active (holds the lease) ◀──▶ standby (another relay holds it)
//!                   │  ▲                           │  ▲
//!                   ▼  │ next step succeeds        ▼  │
//!                failing(reason): the last step failed (Postgres or Redis gone, …)
//! ```
//! A worker writes only when its state changes (one short lock), so the hot path pays nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// What one group's worker is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerHealth {
    /// Not through its first step yet.
    Starting,
    /// Holds the group's lease and forwards.
    Active,
    /// Another relay holds the lease; this one takes over when it expires.
    Standby,
    /// The last step failed; it is retried with backoff.
    Failing(String),
}

impl WorkerHealth {
    /// Active or a healthy standby.
    pub fn is_ready(&self) -> bool {
        matches!(self, WorkerHealth::Active | WorkerHealth::Standby)
    }
}

impl std::fmt::Display for WorkerHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerHealth::Starting => f.write_str("starting"),
            WorkerHealth::Active => f.write_str("active"),
            WorkerHealth::Standby => f.write_str("standby"),
            WorkerHealth::Failing(reason) => write!(f, "failing: {reason}"),
        }
    }
}

/// A shared handle on every group's [`WorkerHealth`]; clones see the same state.
#[derive(Debug, Clone, Default)]
pub struct Health {
    groups: Arc<Mutex<BTreeMap<String, WorkerHealth>>>,
}

impl Health {
    /// A handle no group has reported to yet.
    pub fn new() -> Health {
        Health::default()
    }

    /// Records what `group`'s worker is doing now.
    pub fn set(&self, group: &str, health: WorkerHealth) {
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        match groups.get_mut(group) {
            Some(current) => *current = health,
            None => {
                groups.insert(group.to_owned(), health);
            }
        }
    }

    /// Every group's state, by group name.
    pub fn snapshot(&self) -> Vec<(String, WorkerHealth)> {
        let groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        groups.iter().map(|(g, h)| (g.clone(), h.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_state() {
        let health = Health::new();
        let worker = health.clone();
        worker.set("g", WorkerHealth::Starting);
        worker.set("g", WorkerHealth::Failing("redis gone".into()));
        worker.set("h", WorkerHealth::Standby);
        let snapshot = health.snapshot();
        assert_eq!(snapshot.len(), 2);
        assert_eq!(snapshot[0].1.to_string(), "failing: redis gone");
        assert!(!snapshot[0].1.is_ready());
        assert!(snapshot[1].1.is_ready());
    }
}
