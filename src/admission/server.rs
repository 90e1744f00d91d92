//! The HTTPS server the API server calls for admission: `/mutate` and `/validate`, fed to the
//! pure `mutate` and `validate`. Anything it cannot read is refused (fail closed).

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, body::Bytes, extract::State, routing::post};
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use jiff::Timestamp;
use kube::{
    Api, Client,
    core::{
        DynamicObject,
        admission::{AdmissionRequest, AdmissionResponse, AdmissionReview},
    },
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::{Denial, Review, mutate, register, tls::Reloadable, validate};
use crate::{
    crd::v1alpha1::{AccessPolicy, AccessRequest},
    metrics::Metrics,
    telemetry::error_chain,
};

/// Why the webhook server could not run.
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
    /// The certificate was not accepted by rustls.
    #[error("failed to configure TLS")]
    Tls(#[from] rustls::Error),
    /// Reading the bound address failed.
    #[error("failed to read the bound address")]
    Address(#[source] std::io::Error),
}

#[derive(Clone)]
struct AppState {
    client: Client,
    operator: Arc<str>,
    metrics: Arc<Metrics>,
}

impl AppState {
    /// Whether the request comes from the operator itself, which is always admitted (the
    /// matchCondition should already have kept it away).
    fn is_operator(&self, request: &AdmissionRequest<AccessRequest>) -> bool {
        request.user_info.username.as_deref() == Some(&*self.operator)
    }
}

/// A bound, not yet serving, webhook server.
pub struct WebhookServer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: AppState,
}

impl WebhookServer {
    /// Binds the address and prepares TLS with the given identity. `operator` is the
    /// operator's own username, whose requests are always admitted.
    pub async fn bind(
        address: SocketAddr,
        certificate: Arc<Reloadable>,
        client: Client,
        operator: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self, Error> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| Error::Bind { address, source })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(certificate);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            state: AppState {
                client,
                operator: operator.into(),
                metrics,
            },
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.listener.local_addr().map_err(Error::Address)
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let router = Router::new()
            .route(register::MUTATE_PATH, post(mutate_handler))
            .route(register::VALIDATE_PATH, post(validate_handler))
            .with_state(self.state);
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(error = %error, "failed to accept a webhook connection");
                    continue;
                }
            };
            let acceptor = self.acceptor.clone();
            let service = TowerToHyperService::new(router.clone());
            tokio::spawn(async move {
                let tls = match acceptor.accept(stream).await {
                    Ok(tls) => tls,
                    Err(error) => {
                        debug!(%peer, error = %error, "webhook TLS handshake failed");
                        return;
                    }
                };
                if let Err(error) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await
                {
                    debug!(%peer, error = %error, "webhook connection ended with an error");
                }
            });
        }
    }
}

fn respond(response: AdmissionResponse) -> axum::Json<AdmissionReview<DynamicObject>> {
    axum::Json(response.into_review())
}

fn parse(body: &Bytes) -> Result<AdmissionRequest<AccessRequest>, Box<AdmissionResponse>> {
    let review: AdmissionReview<AccessRequest> = serde_json::from_slice(body).map_err(|error| {
        Box::new(AdmissionResponse::invalid(format!(
            "unreadable admission review: {error}"
        )))
    })?;
    review
        .try_into()
        .map_err(|error| Box::new(AdmissionResponse::invalid(format!("{error}"))))
}

fn review_of(request: &AdmissionRequest<AccessRequest>) -> Review<'_> {
    Review {
        operation: &request.operation,
        sub_resource: request.sub_resource.as_deref(),
        user: &request.user_info,
        object: request.object.as_ref(),
        old_object: request.old_object.as_ref(),
    }
}

fn deny(
    request: &AdmissionRequest<AccessRequest>,
    denial: &Denial,
    webhook: &str,
) -> AdmissionResponse {
    info!(
        webhook,
        user = request.user_info.username.as_deref().unwrap_or_default(),
        operation = ?request.operation,
        request = %request.name,
        namespace = request.namespace.as_deref().unwrap_or_default(),
        reason = %denial,
        "admission refused"
    );
    AdmissionResponse::from(request).deny(denial)
}

async fn mutate_handler(
    State(state): State<AppState>,
    body: Bytes,
) -> axum::Json<AdmissionReview<DynamicObject>> {
    let response = mutate_response(&state, &body);
    state.metrics.webhook_decision("mutate", response.allowed);
    respond(response)
}

fn mutate_response(state: &AppState, body: &Bytes) -> AdmissionResponse {
    let request = match parse(body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let response = AdmissionResponse::from(&request);
    if state.is_operator(&request) {
        return response;
    }
    match mutate(&review_of(&request), Timestamp::now()) {
        Err(denial) => deny(&request, &denial, "mutate"),
        Ok((patch, warnings)) => {
            let mut response = response;
            if !warnings.is_empty() {
                response.warnings = Some(warnings);
            }
            if patch.0.is_empty() {
                return response;
            }
            match response.with_patch(patch) {
                Ok(response) => response,
                Err(error) => AdmissionResponse::from(&request).deny(format!(
                    "failed to encode the admission patch: {}",
                    error_chain(&error)
                )),
            }
        }
    }
}

async fn validate_handler(
    State(state): State<AppState>,
    body: Bytes,
) -> axum::Json<AdmissionReview<DynamicObject>> {
    let response = validate_response(&state, &body).await;
    state.metrics.webhook_decision("validate", response.allowed);
    respond(response)
}

async fn validate_response(state: &AppState, body: &Bytes) -> AdmissionResponse {
    let request = match parse(body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    if state.is_operator(&request) {
        return AdmissionResponse::from(&request);
    }
    let policy_name = request
        .object
        .as_ref()
        .or(request.old_object.as_ref())
        .map(|object| object.spec.policy.clone());
    let policy = match &policy_name {
        None => None,
        Some(name) => match Api::<AccessPolicy>::all(state.client.clone())
            .get_opt(name)
            .await
        {
            Ok(policy) => policy,
            Err(error) => {
                warn!(policy = %name, error = %error_chain(&error), "failed to read policy for admission");
                let denial = Denial::PolicyUnreadable(name.clone());
                return deny(&request, &denial, "validate");
            }
        },
    };
    match validate(&review_of(&request), policy.as_ref()) {
        Ok(()) => AdmissionResponse::from(&request),
        Err(denial) => deny(&request, &denial, "validate"),
    }
}
