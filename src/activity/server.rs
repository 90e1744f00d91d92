//! The HTTPS endpoint the API server's audit webhook backend posts `audit.k8s.io/v1`
//! EventLists to (`--audit-webhook-config-file`, batch mode). Only the API server may post:
//! it presents a bearer token the operator checks. It answers at once; the API server's own
//! batch buffer is the back-pressure.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header::AUTHORIZATION},
    routing::post,
};
use tokio::net::TcpListener;
use tracing::debug;

use super::{EventList, recorder::Recorder};
use crate::{certificate::Reloadable, metrics::Metrics};

/// The path the API server's webhook kubeconfig names.
pub(crate) const AUDIT_PATH: &str = "/audit";

/// The largest batch read: the API server sends at most `--audit-webhook-batch-max-size`
/// (400 by default) events of a few KiB each at the Metadata level.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Why the audit webhook server could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding, TLS or the bound address.
    #[error(transparent)]
    Serve(#[from] crate::https::Error),
    /// The token file could not be read, or is empty.
    #[error("failed to read the audit webhook token from {path}")]
    Token {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The token the API server presents, kept as its digest: comparing digests takes the same
/// time however much of a guess is right.
#[derive(Clone)]
struct Token(ring::digest::Digest);

impl Token {
    fn read(path: &std::path::Path) -> Result<Self, Error> {
        let failed = |source| Error::Token {
            path: path.to_owned(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(failed)?;
        let token = text.trim();
        if token.is_empty() {
            return Err(failed(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the file is empty",
            )));
        }
        Ok(Self::of(token))
    }

    fn of(token: &str) -> Self {
        Self(ring::digest::digest(
            &ring::digest::SHA256,
            token.as_bytes(),
        ))
    }

    fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(presented) = headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
        else {
            return false;
        };
        Self::of(presented.trim()).0.as_ref() == self.0.as_ref()
    }
}

#[derive(Clone)]
struct AppState {
    token: Token,
    recorder: Arc<Recorder>,
    metrics: Arc<Metrics>,
}

/// A bound, not yet serving, audit webhook server.
pub(crate) struct AuditServer {
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: AppState,
}

impl AuditServer {
    /// Binds `address`, serving `certificate`, admitting posts with the token in
    /// `token_file`.
    pub async fn bind(
        address: SocketAddr,
        certificate: Arc<Reloadable>,
        token_file: &std::path::Path,
        recorder: Arc<Recorder>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, Error> {
        let token = Token::read(token_file)?;
        let listener = crate::https::bind(address).await?;
        Ok(Self {
            listener,
            acceptor: crate::https::acceptor(certificate)?,
            state: AppState {
                token,
                recorder,
                metrics,
            },
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        Ok(crate::https::local_addr(&self.listener)?)
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        crate::https::serve(
            self.listener,
            self.acceptor,
            router(self.state),
            "audit webhook",
            shutdown,
        )
        .await;
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route(AUDIT_PATH, post(audit_handler))
        .layer(DefaultBodyLimit::max(MAX_BATCH_BYTES))
        .with_state(state)
}

async fn audit_handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> StatusCode {
    // Before the body is looked at: whoever is not the API server learns nothing.
    if !state.token.admits(&headers) {
        Metrics::count(&state.metrics.activity_posts, "unauthenticated", 1);
        return StatusCode::UNAUTHORIZED;
    }
    let list = match body.map_err(|error| error.to_string()).and_then(|body| {
        serde_json::from_slice::<EventList>(&body).map_err(|error| error.to_string())
    }) {
        Ok(list) => list,
        Err(error) => {
            debug!(%error, "refused an unreadable audit post");
            Metrics::count(&state.metrics.activity_posts, "malformed", 1);
            return StatusCode::BAD_REQUEST;
        }
    };
    state.recorder.receive(&list.items);
    Metrics::count(&state.metrics.activity_posts, "accepted", 1);
    StatusCode::OK
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use axum::{body::Body, http::Request};
    use tower::ServiceExt;

    use super::*;

    fn state() -> AppState {
        let metrics = Metrics::shared();
        AppState {
            token: Token::of("s3cret"),
            recorder: Recorder::new(metrics.clone()).0,
            metrics,
        }
    }

    async fn post_with(state: &AppState, authorization: Option<&str>, body: &str) -> StatusCode {
        let mut request = Request::post(AUDIT_PATH);
        if let Some(authorization) = authorization {
            request = request.header(AUTHORIZATION, authorization);
        }
        router(state.clone())
            .oneshot(request.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap()
            .status()
    }

    #[tokio::test]
    async fn only_the_api_server_token_is_admitted_and_unreadable_posts_are_refused() {
        let state = state();
        let list = r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[]}"#;
        assert_eq!(
            post_with(&state, None, list).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            post_with(&state, Some("Bearer s3cre"), list).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            post_with(&state, Some("Basic s3cret"), list).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            post_with(&state, Some("Bearer s3cret"), "{not json").await,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            post_with(&state, Some("Bearer s3cret"), list).await,
            StatusCode::OK
        );
        let text = state.metrics.render();
        assert!(
            text.contains(r#"jit_activity_posts_total{outcome="unauthenticated"} 3"#),
            "{text}"
        );
        assert!(text.contains(r#"jit_activity_posts_total{outcome="malformed"} 1"#));
        assert!(text.contains(r#"jit_activity_posts_total{outcome="accepted"} 1"#));
    }
}
