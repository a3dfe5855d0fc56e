//! The webhook `bench handler` points an `http` route at: a local axum server that answers
//! every request 200 `{"outputs": []}` after sleeping a fixed latency, and the [`CallCount`]
//! it shares with the bench's custom Rust handler: calls made, calls running at once (and the
//! most ever), and when the first began.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::post;

use super::webhook::LocalWebhook;
use super::{BenchError, Progress};

/// Calls of a handler: how many, how many at once, and when the first began. Atomics only,
/// so taking it on every call costs nothing measurable.
#[derive(Debug, Default)]
pub(super) struct CallCount {
    calls: AtomicU64,
    running: AtomicU64,
    peak: AtomicU64,
    first_began: OnceLock<Instant>,
}

impl CallCount {
    /// A call begins; it ends when the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> CallGuard {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(running, Ordering::SeqCst);
        self.first_began.get_or_init(Instant::now);
        CallGuard {
            count: Arc::clone(self),
        }
    }

    /// Calls begun so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Calls running now.
    pub fn running(&self) -> u64 {
        self.running.load(Ordering::SeqCst)
    }

    /// The most calls that ran at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }

    /// When the first call began.
    pub fn first_began(&self) -> Option<Instant> {
        self.first_began.get().copied()
    }
}

/// How often the end of a run is looked for: the call count is two atomics, so a fine poll
/// costs the relay nothing.
pub(super) const END_POLL: Duration = Duration::from_millis(2);

/// Waits until `expected` calls were made and none is running; `check_alive` fails when the
/// relay making them has stopped.
pub(super) async fn wait_for_calls(
    count: &CallCount,
    expected: u64,
    mut check_alive: impl FnMut() -> Result<(), BenchError>,
    progress: &dyn Progress,
) -> Result<(), BenchError> {
    loop {
        let calls = count.calls();
        progress.advance_to(calls.min(expected));
        if calls >= expected && count.running() == 0 {
            return Ok(());
        }
        check_alive()?;
        tokio::time::sleep(END_POLL).await;
    }
}

/// One call running; dropping it ends the call.
pub(super) struct CallGuard {
    count: Arc<CallCount>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.count.running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Clone)]
struct Shared {
    latency: Duration,
    count: Arc<CallCount>,
}

/// A running endpoint; [`SlowEndpoint::stop`] shuts it down.
pub(super) struct SlowEndpoint {
    webhook: LocalWebhook,
    count: Arc<CallCount>,
}

impl SlowEndpoint {
    /// Listens on a free port of 127.0.0.1; every request takes `latency`.
    pub async fn start(latency: Duration) -> Result<SlowEndpoint, BenchError> {
        let count = Arc::new(CallCount::default());
        let app = axum::Router::new()
            .route("/hook", post(hook))
            .with_state(Shared {
                latency,
                count: Arc::clone(&count),
            });
        let webhook = LocalWebhook::serve(app).await?;
        Ok(SlowEndpoint { webhook, count })
    }

    pub fn url(&self) -> String {
        self.webhook.url()
    }

    /// The requests it received.
    pub fn count(&self) -> &CallCount {
        &self.count
    }

    pub fn stop(self) {
        self.webhook.stop();
    }
}

// The body is read (and ignored), so the connection can carry the next request.
async fn hook(State(shared): State<Shared>, _body: Bytes) -> impl IntoResponse {
    let _call = shared.count.begin();
    tokio::time::sleep(shared.latency).await;
    ([(CONTENT_TYPE, "application/json")], r#"{"outputs": []}"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_is_the_most_calls_running_at_once() {
        let count = Arc::new(CallCount::default());
        let a = count.begin();
        let b = count.begin();
        drop(a);
        let c = count.begin();
        drop(b);
        drop(c);
        let d = count.begin();
        drop(d);
        assert_eq!(count.calls(), 4);
        assert_eq!(count.peak(), 2);
        assert_eq!(count.running(), 0);
        assert!(count.first_began().is_some());
    }
}
