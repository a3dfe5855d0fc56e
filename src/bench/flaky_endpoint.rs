//! The webhook `bench retry` points an `http` route at: a local axum server that answers
//! 503 the first time it sees a message whose payload says `"fail_once": true`, and 200
//! (no outputs) to everything else, counting the messages it accepted.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;

use super::BenchError;
use super::webhook::LocalWebhook;

#[derive(Default)]
struct Seen {
    /// Marked messages already refused once.
    refused: HashSet<String>,
    /// Messages answered 200.
    accepted: HashSet<String>,
    requests: u64,
}

type Shared = Arc<Mutex<Seen>>;

fn lock(seen: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running endpoint; [`FlakyEndpoint::stop`] shuts it down.
pub(super) struct FlakyEndpoint {
    webhook: LocalWebhook,
    seen: Shared,
}

impl FlakyEndpoint {
    pub async fn start() -> Result<FlakyEndpoint, BenchError> {
        let seen = Shared::default();
        let app = axum::Router::new()
            .route("/hook", post(hook))
            .with_state(seen.clone());
        let webhook = LocalWebhook::serve(app).await?;
        Ok(FlakyEndpoint { webhook, seen })
    }

    pub fn url(&self) -> String {
        self.webhook.url()
    }

    /// Distinct messages answered 200.
    pub fn accepted(&self) -> u64 {
        lock(&self.seen).accepted.len() as u64
    }

    /// Requests received in all, and how many were refused.
    pub fn requests_and_refusals(&self) -> (u64, u64) {
        let seen = lock(&self.seen);
        (seen.requests, seen.refused.len() as u64)
    }

    /// Forgets every message (between runs).
    pub fn reset(&self) {
        *lock(&self.seen) = Seen::default();
    }

    pub fn stop(self) {
        self.webhook.stop();
    }
}

async fn hook(State(seen): State<Shared>, body: Bytes) -> StatusCode {
    let Ok(message) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let Some(id) = message["id"].as_str() else {
        return StatusCode::BAD_REQUEST;
    };
    let marked = message["payload"]["fail_once"] == serde_json::Value::Bool(true);
    let mut seen = lock(&seen);
    seen.requests += 1;
    if marked && seen.refused.insert(id.to_owned()) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    seen.accepted.insert(id.to_owned());
    StatusCode::OK
}
