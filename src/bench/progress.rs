//! How a benchmark tells whoever runs it where it is: a phase, and how far into it. The
//! command line draws it on stderr when that is a terminal (a hidden bar otherwise).

/// Receives the progress of a run; must be cheap (it is called in loops).
pub trait Progress: Send + Sync {
    /// A new phase begins, with `total` units of work when known.
    fn phase(&self, name: &str, total: Option<u64>);
    /// `done` units of the current phase are finished.
    fn advance_to(&self, done: u64);
}
