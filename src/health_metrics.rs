//! The operator's HTTP endpoints: `/healthz` (the process is alive), `/readyz` (the webhook
//! serves and the controller's caches are synced, or it follows another leader) and
//! `/metrics` (Prometheus).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// Whether the operator is ready to serve; shared between the server and the operator.
/// Ready means: the webhook serves, the operator is not stopping, and either it follows
/// another leader (it serves only the webhook) or its controller's caches are synced.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<ReadinessState>);

#[derive(Debug, Default)]
struct ReadinessState {
    webhook_serving: AtomicBool,
    following: AtomicBool,
    caches_synced: AtomicBool,
    stopping: AtomicBool,
}

impl Readiness {
    /// The webhook server accepts connections.
    pub fn set_webhook_serving(&self) {
        self.0.webhook_serving.store(true, Ordering::SeqCst);
    }

    /// Whether the operator waits for another replica's lease (and needs no caches).
    pub fn set_following(&self, following: bool) {
        self.0.following.store(following, Ordering::SeqCst);
    }

    /// The controller has listed everything it watches.
    pub fn set_caches_synced(&self) {
        self.0.caches_synced.store(true, Ordering::SeqCst);
    }

    /// The operator is shutting down: take no new work.
    pub fn set_stopping(&self) {
        self.0.stopping.store(true, Ordering::SeqCst);
    }

    /// Whether the operator is ready.
    pub fn is_ready(&self) -> bool {
        let state = &self.0;
        state.webhook_serving.load(Ordering::SeqCst)
            && !state.stopping.load(Ordering::SeqCst)
            && (state.following.load(Ordering::SeqCst)
                || state.caches_synced.load(Ordering::SeqCst))
    }
}

/// Why the HTTP server could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address is taken or not ours.
    #[error("failed to listen on {address}")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The listener failed while serving.
    #[error("failed to serve http")]
    Serve(#[source] std::io::Error),
}

/// A bound, not yet serving, health server.
pub struct HealthServer {
    listener: TcpListener,
    readiness: Readiness,
    metrics: Arc<Metrics>,
}

impl HealthServer {
    /// Binds the address now, so a taken port fails start-up rather than later.
    pub async fn bind(
        address: SocketAddr,
        readiness: Readiness,
        metrics: Arc<Metrics>,
    ) -> Result<Self, Error> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| Error::Bind { address, source })?;
        Ok(Self {
            listener,
            readiness,
            metrics,
        })
    }

    /// The address actually bound (port 0 resolves to a real port).
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.listener.local_addr().map_err(Error::Serve)
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let metrics = self.metrics;
        let router = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .with_state(self.readiness)
            .route("/metrics", get(move || async move { metrics.render() }));
        axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(Error::Serve)
    }
}

async fn readyz(State(readiness): State<Readiness>) -> (StatusCode, &'static str) {
    if readiness.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_serving_and_synced_or_following_and_not_stopping() {
        let readiness = Readiness::default();
        assert!(!readiness.is_ready());
        readiness.set_webhook_serving();
        assert!(!readiness.is_ready(), "caches not synced");
        readiness.set_following(true);
        assert!(readiness.is_ready(), "a follower serves only the webhook");
        readiness.set_following(false);
        assert!(!readiness.is_ready(), "a new leader waits for its caches");
        readiness.set_caches_synced();
        assert!(readiness.is_ready());
        readiness.set_stopping();
        assert!(!readiness.is_ready());
    }
}
