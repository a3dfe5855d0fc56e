//! A local webhook for the bench's `http` routes: a router served on a free port of 127.0.0.1
//! (its handler at `/hook`) until stopped.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use super::BenchError;
use super::relay_process::phase;

/// A running webhook; [`LocalWebhook::stop`] shuts it down (requests in flight finish).
pub(super) struct LocalWebhook {
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl LocalWebhook {
    /// Serves `app` in the background.
    pub async fn serve(app: axum::Router) -> Result<LocalWebhook, BenchError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| phase("start the webhook", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| phase("start the webhook", e))?;
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(error) = served {
                tracing::warn!(%error, "bench webhook stopped");
            }
        });
        Ok(LocalWebhook { addr, shutdown })
    }

    /// The URL of its `/hook` route.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}
