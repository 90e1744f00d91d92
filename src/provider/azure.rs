//! The Azure provider: Azure RBAC role assignments the operator deletes at the expiry
//! (`direct`), or Privileged Identity Management assignment schedules that Azure itself ends
//! at the expiry (`pim`). Calls go to Azure Resource Manager through azure_core's pipeline
//! (bearer token from azure_identity, retries of 429 with Retry-After, 5xx and dropped
//! connections); every call can be repeated after a crash because every name is derived.
//! What the holder did is read from the Activity Log (`activity_log`).

mod activity_log;
pub mod requests;

use std::{path::PathBuf, sync::Arc, time::Duration};

use async_trait::async_trait;
use azure_core::{
    credentials::TokenCredential,
    http::{
        ClientOptions, ExponentialRetryOptions, HttpClient, Method, Pipeline, PipelineSendOptions,
        Request, RetryOptions, Transport, Url, headers,
        policies::auth::BearerTokenAuthorizationPolicy,
    },
};
use azure_identity::{
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use jiff::{SignedDuration, Timestamp};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::{debug, info};

use self::requests::{
    ASSIGNMENTS_API_VERSION, ArmError, AzureGrant, PIM_API_VERSION, Page, RequestOutcome,
    RoleAssignment, Schedule, ScheduleRequest,
};
use super::{
    ActivityLog, Error, Failure, GrantSpec, GrantState, RequestRef,
    cloud::{Cloud, Replacement},
    identity::Identity,
};
use crate::{
    crd::v1alpha1::{ActivityLookup, AzureMode, AzureTarget},
    target::Target,
};
/// Azure Resource Manager in Azure's public cloud.
pub const PUBLIC_ENDPOINT: &str = "https://management.azure.com";
/// Retries of one call inside the pipeline before the reconcile is requeued.
const MAX_RETRIES: u32 = 5;
/// How near its end a PIM schedule may be gone without counting as drift: Azure ends it by
/// its own clock, which may run a little ahead of ours.
const EXPIRY_SKEW: SignedDuration = SignedDuration::from_secs(60);

/// Where Azure is and how to reach it.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Azure Resource Manager's base URL.
    pub endpoint: String,
    /// The audience of ARM tokens (`https://management.azure.com` in the public cloud).
    pub audience: String,
    /// An extra CA certificate file (PEM) to trust: emulators and private endpoints.
    pub ca_file: Option<PathBuf>,
}

/// Why an Azure call failed, before it becomes a provider error.
enum CallFailure {
    /// Azure answered with an error.
    Refused {
        /// The HTTP status.
        status: u16,
        /// Azure's code and message.
        error: ArmError,
        /// How long Azure asked to wait, when it said.
        retry_after: Option<Duration>,
    },
    /// The error for the request, as is.
    Other(Error),
}

impl CallFailure {
    /// The provider error: 429 and 5xx (still failing after the pipeline's retries) may
    /// pass, and so may 401 (the operator's own credentials, fixed by its administrator,
    /// not by the requester); any other refusal needs a person.
    fn into_error(self, action: &str) -> Error {
        match self {
            Self::Refused {
                status,
                error,
                retry_after,
            } => {
                let failure = match status {
                    404 => Failure::NotFound,
                    429 => Failure::Throttled { retry_after },
                    401 | 408 => Failure::Transient,
                    _ if status >= 500 => Failure::Transient,
                    _ => Failure::Refused,
                };
                Error::cloud(Target::Azure, action, error.describe(), failure)
            }
            Self::Other(error) => error,
        }
    }

    /// A 409: something of that name or that access exists already.
    fn is_conflict(&self) -> bool {
        matches!(self, Self::Refused { status: 409, .. })
    }

    fn code(&self) -> Option<&str> {
        match self {
            Self::Refused { error, .. } => Some(&error.error.code),
            Self::Other(_) => None,
        }
    }
}

/// A reply Azure gave with a success status.
struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    fn json<T: DeserializeOwned>(&self, action: &str) -> Result<T, CallFailure> {
        serde_json::from_slice(&self.body).map_err(|error| {
            CallFailure::Other(Error::cloud(
                Target::Azure,
                action,
                format!("azure replied with a body that does not parse: {error}"),
                Failure::Transient,
            ))
        })
    }
}

/// Azure Resource Manager, through one pipeline with the bearer token policy.
struct Arm {
    pipeline: Pipeline,
    endpoint: String,
}

impl Arm {
    fn url(&self, path: &str, api_version: &str, filter: Option<&str>) -> Result<Url, CallFailure> {
        let mut text = format!("{}{path}?api-version={api_version}", self.endpoint);
        if let Some(filter) = filter {
            text.push_str("&$filter=");
            text.push_str(&urlencoding::encode(filter));
        }
        Url::parse(&text).map_err(|error| {
            CallFailure::Other(Error::Invalid {
                message: format!("azure: {text} is not a URL: {error}"),
            })
        })
    }

    /// Sends one call; a status outside 2xx is a [`CallFailure::Refused`].
    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        action: &str,
    ) -> Result<Reply, CallFailure> {
        let mut request = Request::new(url, method);
        request.insert_header(headers::ACCEPT, "application/json");
        if let Some(body) = body {
            request.insert_header(headers::CONTENT_TYPE, "application/json");
            request.set_body(body.to_string());
        }
        let options = PipelineSendOptions {
            skip_checks: true,
            ..PipelineSendOptions::default()
        };
        let response = self
            .pipeline
            .send(
                &azure_core::http::Context::new(),
                &mut request,
                Some(options),
            )
            .await
            .map_err(|error| {
                // No answer (a dropped connection after the retries, no token): the call may
                // or may not have landed; the next attempt reads before it writes.
                CallFailure::Other(Error::cloud(
                    Target::Azure,
                    action,
                    crate::telemetry::error_chain(&error),
                    Failure::Transient,
                ))
            })?;
        let status = u16::from(response.status());
        let retry_after = response
            .headers()
            .get_optional_str(&headers::RETRY_AFTER)
            .and_then(super::retry_after_seconds);
        let body = response.into_body().to_vec();
        if (200..300).contains(&status) {
            Ok(Reply { status, body })
        } else {
            Err(CallFailure::Refused {
                status,
                error: ArmError::parse(status, &body),
                retry_after,
            })
        }
    }

    /// Every item of a list, following `nextLink` only within our endpoint (the bearer token
    /// goes with it).
    async fn list<T: DeserializeOwned>(
        &self,
        first: Url,
        action: &str,
    ) -> Result<Vec<T>, CallFailure> {
        Ok(self.list_up_to(first, action, usize::MAX).await?.0)
    }

    /// The items of a list up to `limit` (a page past it is not fetched), and whether there
    /// were more.
    async fn list_up_to<T: DeserializeOwned>(
        &self,
        first: Url,
        action: &str,
        limit: usize,
    ) -> Result<(Vec<T>, bool), CallFailure> {
        let mut items = Vec::new();
        let mut next = Some(first);
        while let Some(url) = next.take() {
            let page: Page<T> = self
                .send(Method::Get, url, None, action)
                .await?
                .json(action)?;
            items.extend(page.value);
            if let Some(link) = page.next_link.filter(|link| !link.is_empty()) {
                if items.len() >= limit {
                    return Ok((items, true));
                }
                if !link.starts_with(&format!("{}/", self.endpoint)) {
                    return Err(CallFailure::Other(Error::cloud(
                        Target::Azure,
                        action,
                        format!("azure gave a next page outside {}", self.endpoint),
                        Failure::Refused,
                    )));
                }
                next = Some(Url::parse(&link).map_err(|error| {
                    CallFailure::Other(Error::cloud(
                        Target::Azure,
                        action,
                        format!("azure gave a next page that is not a URL: {error}"),
                        Failure::Transient,
                    ))
                })?);
            }
        }
        Ok((items, false))
    }
}

/// Grants Azure roles.
pub(crate) struct Azure {
    arm: Arm,
}

/// Resolves a role's `azure` block for a subject into the grant to make. Pure.
pub fn resolve(
    target: &AzureTarget,
    identity: &Identity,
    request: &RequestRef,
) -> Result<AzureGrant, Error> {
    let rendered = identity.render(&target.principal_id)?;
    let principal_id = requests::object_id(&rendered).ok_or_else(|| Error::Invalid {
        message: format!(
            "{rendered:?} is not an Entra ID object ID (a GUID like \
             00000000-0000-0000-0000-000000000000); map the subject to one in identityMappings"
        ),
    })?;
    let name = requests::grant_name(
        request.key().as_str(),
        target.mode,
        &target.scope,
        &target.role_definition_id,
        &principal_id,
    );
    Ok(AzureGrant {
        mode: target.mode,
        scope: target.scope.trim_end_matches('/').to_owned(),
        role_definition_id: target.role_definition_id.clone(),
        principal_id,
        principal_type: target.principal_type,
        name,
    })
}

impl Azure {
    /// A provider with credentials from the environment: workload identity when
    /// `AZURE_FEDERATED_TOKEN_FILE` is set, else a client secret when `AZURE_CLIENT_SECRET`
    /// is, else the managed identity (`AZURE_CLIENT_ID` picks a user-assigned one). The
    /// authority host comes from `AZURE_AUTHORITY_HOST`.
    pub(crate) fn new(settings: &Settings) -> Result<Self, Error> {
        // reqwest is built without a crypto provider of its own; use ring, as the rest of
        // the operator does. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let invalid = |message: String| Error::Invalid { message };
        let endpoint = settings.endpoint.trim_end_matches('/').to_owned();
        let parsed = Url::parse(&endpoint).map_err(|error| {
            invalid(format!("azure: endpoint {endpoint} is not a URL: {error}"))
        })?;
        if parsed.scheme() != "https" {
            return Err(invalid(format!(
                "azure: endpoint {endpoint} must be https: it receives bearer tokens"
            )));
        }
        let transport = Transport::new(http_client(settings.ca_file.as_ref())?);
        let options = || ClientOptions {
            transport: Some(transport.clone()),
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                max_retries: MAX_RETRIES,
                max_total_elapsed: azure_core::time::Duration::seconds(45),
                ..ExponentialRetryOptions::default()
            }),
            ..ClientOptions::default()
        };
        let credential = credential(options())?;
        let scope = format!("{}/.default", settings.audience.trim_end_matches('/'));
        let bearer = Arc::new(BearerTokenAuthorizationPolicy::new(credential, [scope]));
        let pipeline = Pipeline::new(
            Some(env!("CARGO_PKG_NAME")),
            Some(env!("CARGO_PKG_VERSION")),
            options(),
            Vec::new(),
            vec![bearer],
            None,
        );
        Ok(Self {
            arm: Arm { pipeline, endpoint },
        })
    }

    fn target<'a>(grant: &'a GrantSpec<'_>) -> Result<&'a AzureTarget, Error> {
        grant.role.azure.as_ref().ok_or_else(|| Error::NoTarget {
            role: grant.role.name.clone(),
        })
    }

    /// The role assignment named `grant.name`, if there is one.
    async fn assignment(&self, grant: &AzureGrant) -> Result<Option<RoleAssignment>, CallFailure> {
        let action = "read the role assignment";
        let url = self
            .arm
            .url(&grant.assignment_path(), ASSIGNMENTS_API_VERSION, None)?;
        match self.arm.send(Method::Get, url, None, action).await {
            Ok(reply) => Ok(Some(reply.json(action)?)),
            Err(CallFailure::Refused { status: 404, .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }

    async fn assign_directly(&self, grant: &AzureGrant, description: &str) -> Result<(), Error> {
        let action = "create the role assignment";
        let url = self
            .arm
            .url(&grant.assignment_path(), ASSIGNMENTS_API_VERSION, None)
            .map_err(|failure| failure.into_error(action))?;
        let body = requests::assignment_body(grant, description);
        match self.arm.send(Method::Put, url, Some(&body), action).await {
            Ok(_) => Ok(()),
            // Azure refuses a second assignment of the same role to the same principal at
            // the same scope. Ours (a retry after a crash or a dropped reply) is adopted;
            // anyone else's is not taken over: revoking it would end their access.
            Err(failure) if failure.code() == Some("RoleAssignmentExists") => {
                match self.assignment(grant).await {
                    Ok(Some(found)) if grant.is(&found) => {
                        info!(name = %grant.name, "adopted our existing role assignment");
                        Ok(())
                    }
                    Ok(_) => Err(Error::cloud(
                        Target::Azure,
                        action,
                        format!(
                            "{} already holds role {} at {} through an assignment the operator \
                             did not make; remove it or stop requesting this role ({})",
                            grant.principal_id,
                            requests::role_definition_name(&grant.role_definition_id),
                            grant.scope,
                            failure_text(&failure),
                        ),
                        Failure::Refused,
                    )),
                    Err(other) => Err(other.into_error("read the role assignment")),
                }
            }
            Err(failure) => Err(failure.into_error(action)),
        }
    }

    /// Every PIM schedule of the grant's principal at its scope.
    async fn schedules(&self, grant: &AzureGrant) -> Result<Vec<Schedule>, CallFailure> {
        let url = self.arm.url(
            &grant.schedules_path(),
            PIM_API_VERSION,
            Some(&grant.schedules_filter()),
        )?;
        let all: Vec<Schedule> = self
            .arm
            .list(url, "list the role assignment schedules")
            .await?;
        Ok(all
            .into_iter()
            .filter(|schedule| grant.same_access(schedule))
            .collect())
    }

    /// The schedule request named `name`, if there is one.
    async fn schedule_request(
        &self,
        grant: &AzureGrant,
        name: &str,
    ) -> Result<Option<ScheduleRequest>, CallFailure> {
        let action = "read the role assignment schedule request";
        let url = self
            .arm
            .url(&grant.schedule_request_path(name), PIM_API_VERSION, None)?;
        match self.arm.send(Method::Get, url, None, action).await {
            Ok(reply) => Ok(Some(reply.json(action)?)),
            Err(CallFailure::Refused { status: 404, .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// Finds the schedule our AdminAssign request made; a schedule of the same access made
    /// by anyone else is an error (it is not ours to adopt or to end).
    async fn our_schedule(
        &self,
        grant: &AzureGrant,
        action: &str,
    ) -> Result<Option<Schedule>, Error> {
        let schedules = self
            .schedules(grant)
            .await
            .map_err(|failure| failure.into_error("list the role assignment schedules"))?;
        if let Some(ours) = schedules.iter().find(|schedule| grant.made(schedule)) {
            return Ok(Some(ours.clone()));
        }
        if let Some(foreign) = schedules.first() {
            return Err(Error::cloud(
                Target::Azure,
                action,
                format!(
                    "{} already holds role {} at {} through PIM schedule {} the operator did not \
                     make; remove it or stop requesting this role",
                    grant.principal_id,
                    requests::role_definition_name(&grant.role_definition_id),
                    grant.scope,
                    foreign.name,
                ),
                Failure::Refused,
            ));
        }
        Ok(None)
    }

    async fn assign_with_pim(
        &self,
        grant: &AzureGrant,
        spec: &GrantSpec<'_>,
        target: &AzureTarget,
    ) -> Result<(), Error> {
        let action = "create the PIM assignment request";
        if self.our_schedule(grant, action).await?.is_some() {
            debug!(name = %grant.name, "our PIM schedule exists already");
            return Ok(());
        }
        let earlier = self
            .schedule_request(grant, &grant.name)
            .await
            .map_err(|failure| failure.into_error("read the role assignment schedule request"))?;
        if let Some(earlier) = earlier {
            return Err(earlier_request(&earlier.properties.status, action));
        }
        let justification = if spec.reason.is_empty() {
            spec.description
        } else {
            spec.reason
        };
        let ticket = requests::ticket_in(spec.reason, target.ticket_system.as_deref());
        let body = requests::assign_request_body(
            grant,
            Timestamp::now(),
            spec.expires_at,
            justification,
            ticket.as_ref(),
        );
        let url = self
            .arm
            .url(
                &grant.schedule_request_path(&grant.name),
                PIM_API_VERSION,
                None,
            )
            .map_err(|failure| failure.into_error(action))?;
        match self.arm.send(Method::Put, url, Some(&body), action).await {
            Ok(reply) => {
                let made: ScheduleRequest = reply.json(action).map_err(|f| f.into_error(action))?;
                match made.properties.outcome() {
                    RequestOutcome::Done => Ok(()),
                    RequestOutcome::Pending => Err(Error::cloud(
                        Target::Azure,
                        action,
                        format!(
                            "PIM has not provisioned it yet (status {}, HTTP {})",
                            made.properties.status, reply.status
                        ),
                        Failure::Transient,
                    )),
                    RequestOutcome::Failed => Err(Error::cloud(
                        Target::Azure,
                        action,
                        format!("PIM answered {}", made.properties.status),
                        Failure::Refused,
                    )),
                }
            }
            // A conflict, whatever its code: the PUT may have landed with its reply lost, and
            // the pipeline's retry found our request (Azure refuses a second request of the
            // same name) or the assignment it made. Read before deciding anything.
            Err(failure) if failure.is_conflict() => {
                if self.our_schedule(grant, action).await?.is_some() {
                    return Ok(());
                }
                let ours = self
                    .schedule_request(grant, &grant.name)
                    .await
                    .map_err(|failure| {
                        failure.into_error("read the role assignment schedule request")
                    })?;
                match ours {
                    Some(earlier) => Err(earlier_request(&earlier.properties.status, action)),
                    // Nothing of ours is there: the conflict is someone else's, and says so.
                    None => Err(failure.into_error(action)),
                }
            }
            Err(failure) => Err(failure.into_error(action)),
        }
    }

    async fn remove_grant(&self, grant: &AzureGrant) -> Result<(), Error> {
        match grant.mode {
            AzureMode::Direct => {
                let action = "delete the role assignment";
                let url = self
                    .arm
                    .url(&grant.assignment_path(), ASSIGNMENTS_API_VERSION, None)
                    .map_err(|failure| failure.into_error(action))?;
                match self.arm.send(Method::Delete, url, None, action).await {
                    // 200 with the assignment, or 204 when there was none: gone either way.
                    Ok(_) | Err(CallFailure::Refused { status: 404, .. }) => Ok(()),
                    Err(failure) => Err(failure.into_error(action)),
                }
            }
            AzureMode::Pim => {
                let action = "create the PIM removal request";
                let schedules = self
                    .schedules(grant)
                    .await
                    .map_err(|failure| failure.into_error("list the role assignment schedules"))?;
                // Only what our request made: a schedule someone else holds is theirs.
                for schedule in schedules.iter().filter(|schedule| grant.made(schedule)) {
                    let name = grant.removal_name(&schedule.name);
                    let url = self
                        .arm
                        .url(&grant.schedule_request_path(&name), PIM_API_VERSION, None)
                        .map_err(|failure| failure.into_error(action))?;
                    let body = requests::remove_request_body(
                        grant,
                        "access ended by jit-operator (expired, revoked or deleted)",
                    );
                    match self.arm.send(Method::Put, url, Some(&body), action).await {
                        Ok(_) => {}
                        // Gone already (a retried removal, or Azure's own expiry).
                        Err(failure) if failure.code() == Some("RoleAssignmentDoesNotExist") => {}
                        Err(failure) => return Err(failure.into_error(action)),
                    }
                }
                Ok(())
            }
        }
    }
}

/// Why an AdminAssign request made before cannot simply be made again.
fn earlier_request(status: &str, action: &str) -> Error {
    let outcome = requests::ScheduleRequestProperties {
        status: status.to_owned(),
    }
    .outcome();
    match outcome {
        RequestOutcome::Pending => Error::cloud(
            Target::Azure,
            action,
            format!("PIM has not provisioned it yet (status {status})"),
            Failure::Transient,
        ),
        RequestOutcome::Failed => Error::cloud(
            Target::Azure,
            action,
            format!("PIM answered {status}"),
            Failure::Refused,
        ),
        // Made, and its schedule is gone: removed outside the operator. Asking again would
        // hide that; the request fails and says so.
        RequestOutcome::Done => Error::cloud(
            Target::Azure,
            action,
            "the PIM assignment made for this request was removed outside the operator".to_owned(),
            Failure::Refused,
        ),
    }
}

fn failure_text(failure: &CallFailure) -> String {
    match failure {
        CallFailure::Refused { error, .. } => error.describe(),
        CallFailure::Other(error) => error.to_string(),
    }
}

/// The HTTP client: rustls with ring, the system's roots and `ca_file`'s, no redirects
/// (a redirect would carry the bearer token elsewhere).
fn http_client(ca_file: Option<&PathBuf>) -> Result<Arc<dyn HttpClient>, Error> {
    let invalid = |message: String| Error::Invalid { message };
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|error| {
            invalid(format!(
                "azure: cannot read the CA file {}: {error}",
                path.display()
            ))
        })?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|error| {
            invalid(format!(
                "azure: the CA file {} does not parse: {error}",
                path.display()
            ))
        })?;
        builder = builder.tls_certs_merge(certificates);
    }
    let client = builder
        .build()
        .map_err(|error| invalid(format!("azure: cannot build the HTTP client: {error}")))?;
    Ok(Arc::new(client))
}

/// The credential the environment describes (see [`AzureProvider::new`]).
fn credential(options: ClientOptions) -> Result<Arc<dyn TokenCredential>, Error> {
    let invalid = |kind: &str, error: azure_core::Error| Error::Invalid {
        message: format!("azure: cannot set up {kind} credentials: {error}"),
    };
    let set = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    if set("AZURE_FEDERATED_TOKEN_FILE").is_some() {
        info!("azure: workload identity credentials");
        let options = WorkloadIdentityCredentialOptions {
            credential_options: ClientAssertionCredentialOptions {
                client_options: options,
            },
            ..WorkloadIdentityCredentialOptions::default()
        };
        let credential = WorkloadIdentityCredential::new(Some(options))
            .map_err(|error| invalid("workload identity", error))?;
        return Ok(credential);
    }
    if let Some(secret) = set("AZURE_CLIENT_SECRET") {
        info!("azure: client secret credentials");
        let tenant = set("AZURE_TENANT_ID").unwrap_or_default();
        let client = set("AZURE_CLIENT_ID").unwrap_or_default();
        let credential = ClientSecretCredential::new(
            &tenant,
            client,
            secret.into(),
            Some(ClientSecretCredentialOptions {
                client_options: options,
            }),
        )
        .map_err(|error| invalid("client secret", error))?;
        return Ok(credential);
    }
    info!("azure: managed identity credentials");
    let credential = ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
        user_assigned_id: set("AZURE_CLIENT_ID").map(UserAssignedId::ClientId),
        client_options: options,
    }))
    .map_err(|error| invalid("managed identity", error))?;
    Ok(credential)
}

#[async_trait]
impl Cloud for Azure {
    type Grant = AzureGrant;
    const TARGET: Target = Target::Azure;
    // Azure refuses a second assignment of the same role to the same principal at the same
    // scope: the old one goes first.
    const REPLACEMENT: Replacement = Replacement::RevokeFirst;

    fn resolve(&self, spec: &GrantSpec<'_>) -> Result<AzureGrant, Error> {
        resolve(Self::target(spec)?, spec.identity, spec.request)
    }

    fn reference(grant: &AzureGrant) -> String {
        grant.reference()
    }

    /// Only PIM schedules end by themselves; direct assignments are deleted by the operator.
    fn cloud_enforced(grant: &AzureGrant) -> bool {
        grant.mode == AzureMode::Pim
    }

    fn activity_lookup(grant: &AzureGrant) -> Option<ActivityLookup> {
        activity_log::lookup(grant)
    }

    async fn activity(
        &self,
        lookup: &ActivityLookup,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Option<ActivityLog>, Error> {
        activity_log::read(&self.arm, lookup, from, to)
            .await
            .map(Some)
    }

    async fn make(&self, grant: &AzureGrant, spec: &GrantSpec<'_>) -> Result<(), Error> {
        match grant.mode {
            AzureMode::Direct => self.assign_directly(grant, spec.description).await,
            AzureMode::Pim => self.assign_with_pim(grant, spec, Self::target(spec)?).await,
        }
    }

    async fn remove(&self, grant: &AzureGrant, _now: Timestamp) -> Result<(), Error> {
        self.remove_grant(grant).await
    }

    async fn state(&self, grant: &AzureGrant, spec: &GrantSpec<'_>) -> Result<GrantState, Error> {
        match grant.mode {
            AzureMode::Direct => {
                let found = self
                    .assignment(grant)
                    .await
                    .map_err(|failure| failure.into_error("read the role assignment"))?;
                Ok(match found {
                    None => GrantState::Missing,
                    Some(found) if grant.is(&found) => GrantState::Present,
                    Some(_) => GrantState::Drifted(format!(
                        "role assignment {} at {} was changed",
                        grant.name, grant.scope
                    )),
                })
            }
            AzureMode::Pim => {
                let schedule = self
                    .our_schedule(grant, "verify the PIM assignment")
                    .await?;
                let Some(schedule) = schedule else {
                    // Azure ends it at the expiry by its own clock: gone a little early is
                    // the cloud doing its job, not drift.
                    let ending = Timestamp::now() >= spec.expires_at - EXPIRY_SKEW;
                    return Ok(if ending {
                        GrantState::Present
                    } else {
                        GrantState::Missing
                    });
                };
                Ok(match schedule.properties.ends_at() {
                    Some(end) if end == spec.expires_at => GrantState::Present,
                    end => GrantState::Drifted(format!(
                        "PIM schedule {} ends at {}, not {}",
                        schedule.name,
                        end.map_or_else(|| "no time".to_owned(), requests::timestamp),
                        requests::timestamp(spec.expires_at)
                    )),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::v1alpha1::AzurePrincipalType;
    use crate::subject::Subject;

    const ALICE: &str = "ce2ce14e-85d7-4629-bdbc-454d0519d987";

    fn request() -> RequestRef {
        RequestRef {
            uid: "7f3a".into(),
            namespace: "team".into(),
            name: "fix".into(),
        }
    }

    fn target(principal: &str, mode: AzureMode) -> AzureTarget {
        AzureTarget {
            scope: "/subscriptions/a925f2f7-5c63-4b7b-8799-25a5f97bc3b2/resourceGroups/rg/".into(),
            role_definition_id: "/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7".into(),
            principal_id: principal.into(),
            principal_type: AzurePrincipalType::User,
            mode,
            ticket_system: None,
        }
    }

    #[test]
    fn principals_are_templated_and_must_be_object_ids() {
        let mut alice = Identity::bare(Subject::User("alice".into()));
        alice
            .mapping
            .insert("azureObjectId".into(), ALICE.to_uppercase());
        let made = resolve(
            &target("{{mapping.azureObjectId}}", AzureMode::Direct),
            &alice,
            &request(),
        )
        .unwrap();
        assert_eq!(made.principal_id, ALICE);
        assert_eq!(
            made.scope,
            "/subscriptions/a925f2f7-5c63-4b7b-8799-25a5f97bc3b2/resourceGroups/rg"
        );
        assert_eq!(
            made.name,
            requests::grant_name(
                "jit-7f3a",
                AzureMode::Direct,
                &made.scope,
                &made.role_definition_id,
                ALICE
            )
        );
        let error = resolve(
            &target("{{username}}", AzureMode::Direct),
            &alice,
            &request(),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("not an Entra ID object ID"),
            "{error}"
        );
        assert!(!error.is_retryable());
        let pim = resolve(&target(ALICE, AzureMode::Pim), &alice, &request()).unwrap();
        assert_ne!(pim.name, made.name);
    }

    #[test]
    fn refusals_are_retryable_only_when_azure_is_busy_or_failing() {
        let refused = |status: u16| {
            CallFailure::Refused {
                status,
                error: ArmError::parse(status, br#"{"error":{"code":"Code","message":"words"}}"#),
                retry_after: Some(Duration::from_secs(7)),
            }
            .into_error("act")
        };
        for status in [401, 429, 500, 503] {
            assert!(refused(status).is_retryable(), "{status}");
        }
        assert!(refused(429).is_throttled());
        assert_eq!(refused(429).retry_after(), Some(Duration::from_secs(7)));
        assert!(!refused(503).is_throttled());
        assert!(refused(404).is_not_found());
        for status in [400, 403, 404, 409] {
            let error = refused(status);
            assert!(!error.is_retryable(), "{status}");
            assert_eq!(error.to_string(), "azure: failed to act: Code: words");
        }
    }

    #[test]
    fn an_earlier_request_that_was_provisioned_is_not_made_again() {
        assert!(!earlier_request("Provisioned", "a").is_retryable());
        assert!(
            earlier_request("Provisioned", "a")
                .to_string()
                .contains("removed outside the operator")
        );
        assert!(earlier_request("PendingProvisioning", "a").is_retryable());
        assert!(!earlier_request("Denied", "a").is_retryable());
    }
}
