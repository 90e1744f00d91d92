//! The HTTPS server the API server calls for admission: `/mutate` and `/validate`, fed to the
//! pure `mutate` and `validate`. Anything it cannot read is refused (fail closed).

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    routing::post,
};
use jiff::Timestamp;
use kube::{
    Api, Client,
    core::{
        DynamicObject,
        admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
    },
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::certificate::Reloadable;

use super::{
    Administrators, Denial, Review, mutate, register, validate, validate_delete, validate_policy,
};
use crate::{
    crd::v1alpha1::{AccessPolicy, AccessRequest, NotificationChannel},
    metrics::Metrics,
    seal::Sealer,
    telemetry::error_chain,
};

pub use crate::https::Error;

/// The largest admission review the webhook reads: an UPDATE review carries the object twice
/// (new and old, with managedFields), and the API server stores objects of up to 1.5 MiB, so
/// every update of every object it holds fits. Anything larger is refused unread.
const MAX_REVIEW_BYTES: usize = 8 * 1024 * 1024;

#[derive(Clone)]
struct AppState {
    client: Client,
    operator: Arc<str>,
    metrics: Arc<Metrics>,
    administrators: Arc<Administrators>,
    sealer: Arc<Sealer>,
    /// Records refused creates as audit events; none when not auditing (tests).
    audit: Option<Arc<crate::audit::Recorder>>,
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
        administrators: Administrators,
        sealer: Sealer,
    ) -> Result<Self, Error> {
        let listener = crate::https::bind(address).await?;
        Ok(Self {
            listener,
            acceptor: crate::https::acceptor(certificate)?,
            state: AppState {
                client,
                operator: operator.into(),
                metrics,
                administrators: Arc::new(administrators),
                sealer: Arc::new(sealer),
                audit: None,
            },
        })
    }

    /// The same server, recording each refused create as a `Refused` audit event.
    pub fn with_audit(mut self, recorder: Arc<crate::audit::Recorder>) -> Self {
        self.state.audit = Some(recorder);
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        crate::https::local_addr(&self.listener)
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let router = Router::new()
            .route(register::MUTATE_PATH, post(mutate_handler))
            .route(register::VALIDATE_PATH, post(validate_handler))
            .route(
                register::VALIDATE_POLICY_PATH,
                post(validate_policy_handler),
            )
            .layer(DefaultBodyLimit::max(MAX_REVIEW_BYTES))
            .with_state(self.state);
        crate::https::serve(
            self.listener,
            self.acceptor,
            router,
            "admission webhook",
            shutdown,
        )
        .await;
    }
}

fn respond(response: AdmissionResponse) -> axum::Json<AdmissionReview<DynamicObject>> {
    axum::Json(response.into_review())
}

fn parse<K: kube::Resource + serde::de::DeserializeOwned>(
    body: &Bytes,
) -> Result<AdmissionRequest<K>, Box<AdmissionResponse>> {
    let review: AdmissionReview<K> = serde_json::from_slice(body).map_err(|error| {
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
    match mutate(&review_of(&request), Timestamp::now(), &state.sealer) {
        Err(denial) => {
            record_refusal(state, &request, None, &denial);
            deny(&request, &denial, "mutate")
        }
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
    if request.operation == Operation::Delete {
        let Some(old) = request.old_object.as_ref() else {
            // A delete the API server sent without the object: nothing to check it against.
            return deny(&request, &Denial::DeleteWithoutObject, "validate");
        };
        return match validate_delete(
            old,
            &request.user_info,
            policy.as_ref(),
            &state.administrators,
        ) {
            Ok(()) => AdmissionResponse::from(&request),
            Err(denial) => deny(&request, &denial, "validate"),
        };
    }
    match validate(&review_of(&request), policy.as_ref()) {
        Ok(()) => AdmissionResponse::from(&request),
        Err(denial) => {
            record_refusal(state, &request, policy.as_ref(), &denial);
            deny(&request, &denial, "validate")
        }
    }
}

/// A refused create (not a dry run) becomes a `Refused` audit event.
fn record_refusal(
    state: &AppState,
    request: &AdmissionRequest<AccessRequest>,
    policy: Option<&AccessPolicy>,
    denial: &Denial,
) {
    let (Some(recorder), Some(object)) = (&state.audit, request.object.as_ref()) else {
        return;
    };
    if request.operation != Operation::Create || request.dry_run {
        return;
    }
    let mut object = object.clone();
    // A create with generateName has no name yet; the namespace comes from the review.
    if object.metadata.namespace.is_none() {
        object.metadata.namespace.clone_from(&request.namespace);
    }
    recorder.record_refused(crate::audit::Refusal {
        admission_uid: request.uid.clone(),
        request: object,
        requester: request.user_info.username.clone().unwrap_or_default(),
        policy: policy.cloned(),
        why: denial.to_string(),
        time: Timestamp::now(),
    });
}

async fn validate_policy_handler(
    State(state): State<AppState>,
    body: Bytes,
) -> axum::Json<AdmissionReview<DynamicObject>> {
    let response = validate_policy_response(&state.client, &body).await;
    state
        .metrics
        .webhook_decision("validate-policy", response.allowed);
    respond(response)
}

/// Every channel a policy's routes name exists (a route to nowhere would lose its events).
async fn channels_exist(client: &Client, policy: &AccessPolicy) -> Result<(), Denial> {
    let channels = kube::Api::<NotificationChannel>::all(client.clone());
    let routes = policy
        .spec
        .notifications
        .iter()
        .flat_map(|notifications| &notifications.routes);
    for route in routes {
        match channels.get_opt(&route.channel).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(Denial::UnknownChannel {
                    channel: route.channel.clone(),
                });
            }
            Err(error) => {
                return Err(Denial::ChannelUnchecked {
                    channel: route.channel.clone(),
                    message: error_chain(&error),
                });
            }
        }
    }
    Ok(())
}

async fn validate_policy_response(client: &Client, body: &Bytes) -> AdmissionResponse {
    let request = match parse::<AccessPolicy>(body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let Some(policy) = request.object.as_ref() else {
        return AdmissionResponse::from(&request);
    };
    let checked = match validate_policy(policy) {
        Ok(()) => channels_exist(client, policy).await,
        Err(denial) => Err(denial),
    };
    match checked {
        Ok(()) => AdmissionResponse::from(&request),
        Err(denial) => {
            info!(
                webhook = "validate-policy",
                user = request.user_info.username.as_deref().unwrap_or_default(),
                policy = %request.name,
                reason = %denial,
                "admission refused"
            );
            AdmissionResponse::from(&request).deny(denial)
        }
    }
}
