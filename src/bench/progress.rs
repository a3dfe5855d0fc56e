//! How a benchmark tells whoever runs it where it is: a phase, and how far into it. The
//! command line draws it on a terminal; tests and pipes get [`Silent`].

/// Receives the progress of a run; must be cheap (it is called in loops).
pub trait Progress: Send + Sync {
    /// A new phase begins, with `total` units of work when known.
    fn phase(&self, name: &str, total: Option<u64>);
    /// `done` units of the current phase are finished.
    fn advance_to(&self, done: u64);
}

/// Progress that goes nowhere.
pub struct Silent;

impl Progress for Silent {
    fn phase(&self, _name: &str, _total: Option<u64>) {}
    fn advance_to(&self, _done: u64) {}
}
