//! The Google Cloud provider: a conditional IAM binding on a project, folder or organization
//! that Google itself stops honouring at the expiry, written by read-modify-write with the etag
//! just read. A stale etag means someone else changed the policy: re-read and try again,
//! never overwrite a change not read. Retry policy is ours (the client does not retry these
//! POSTs): conflicts, 429 (honouring Retry-After), 5xx and dropped replies. What the holder
//! did is read from Cloud Audit Logs (`audit_logs`).

mod audit_logs;
pub mod bindings;

use std::time::Duration;

use async_trait::async_trait;
use google_cloud_gax::error::Error as GaxError;
use google_cloud_iam_v1::model::{GetPolicyOptions, Policy};
use google_cloud_logging_v2::client::LoggingServiceV2;
use google_cloud_resourcemanager_v3::client::{Folders, Organizations, Projects};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::{
    ActivityLog, Error, Failure, GrantSpec, GrantState, RequestRef,
    cloud::{Cloud, Replacement},
    identity::Identity,
};
use crate::{
    crd::v1alpha1::{ActivityLookup, ActivityMatch, ActivitySource, GcpTarget},
    target::Target,
};
/// Attempts at one read-modify-write before the reconcile is requeued.
const MAX_ATTEMPTS: u32 = 6;
/// Longest wait between attempts, whatever Retry-After says.
const MAX_PAUSE: Duration = Duration::from_secs(30);
/// The member prefixes Google IAM accepts.
const MEMBER_PREFIXES: &[&str] = &[
    "user:",
    "group:",
    "serviceAccount:",
    "domain:",
    "principal://",
    "principalSet://",
];

/// How the provider authenticates (`--gcp-credentials`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Credentials {
    /// Application Default Credentials: workload identity in GKE, GOOGLE_APPLICATION_CREDENTIALS,
    /// gcloud.
    #[default]
    #[value(name = "adc")]
    ApplicationDefault,
    /// No credentials. For emulators only: Google refuses every anonymous call.
    Anonymous,
}

/// One grant as made in Google Cloud: what the ledger records and revoke undoes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcpGrant {
    /// The project, folder or organization.
    pub resource: String,
    /// The role.
    pub role: String,
    /// The member.
    pub member: String,
    /// Our condition's title (the grant key).
    pub title: String,
}

impl GcpGrant {
    /// Where it is, for people.
    pub fn reference(&self) -> String {
        format!(
            "{} on {} for {} (condition {})",
            self.role, self.resource, self.member, self.title
        )
    }

    /// How the audit logs name the holder: a user's or service account's email. Members of a
    /// group or a domain act under their own names: nobody's actions in particular.
    pub fn activity_lookup(&self) -> Option<ActivityLookup> {
        let email = self
            .member
            .strip_prefix("user:")
            .or_else(|| self.member.strip_prefix("serviceAccount:"))?;
        Some(ActivityLookup {
            source: ActivitySource::GcpAuditLogs,
            matches: ActivityMatch::GcpPrincipalEmail,
            principal: email.to_owned(),
            scope: Some(self.resource.clone()),
        })
    }
}

/// Resolves a role's `gcp` block for a subject into the binding to make. Pure.
pub fn resolve(
    target: &GcpTarget,
    identity: &Identity,
    request: &RequestRef,
) -> Result<GcpGrant, Error> {
    let member = identity.render(&target.member)?;
    if !MEMBER_PREFIXES
        .iter()
        .any(|prefix| member.starts_with(prefix) && member.len() > prefix.len())
    {
        return Err(Error::Invalid {
            message: format!(
                "{member:?} is not a Google IAM member: it must start with one of {}",
                MEMBER_PREFIXES.join(", ")
            ),
        });
    }
    Ok(GcpGrant {
        resource: target.resource.clone(),
        role: target.role.clone(),
        member,
        title: request.key().as_str().to_owned(),
    })
}

/// The Resource Manager clients, one per kind of resource.
struct Clients {
    projects: Projects,
    folders: Folders,
    organizations: Organizations,
}

/// The kind of resource a binding is on, which picks the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResourceKind {
    Project,
    Folder,
    Organization,
}

impl ResourceKind {
    /// The kind of `projects/P`, `folders/F` or `organizations/O` (a project otherwise: the
    /// API refuses what is not one).
    fn of(resource: &str) -> Self {
        match resource.split_once('/').map(|(kind, _)| kind) {
            Some("folders") => Self::Folder,
            Some("organizations") => Self::Organization,
            _ => Self::Project,
        }
    }
}

/// Grants Google Cloud IAM roles.
pub(crate) struct Gcp {
    clients: Clients,
    logging: LoggingServiceV2,
}

/// What one failed call came to.
struct Classified {
    /// The cloud's words.
    message: String,
    /// What kind of failure.
    failure: Failure,
    /// When to try again inside this reconcile (conflicts, throttling, 5xx, dropped replies);
    /// `None`: give up now.
    again: Option<Duration>,
}

impl Gcp {
    /// The clients, talking to `endpoint` and `logging_endpoint` (the public ones when
    /// `None`).
    pub(crate) async fn new(
        endpoint: Option<&str>,
        logging_endpoint: Option<&str>,
        credentials: Credentials,
    ) -> Result<Self, Error> {
        // The Google clients use rustls without choosing a crypto provider; use ring, as the
        // rest of the operator does. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let credentials = match credentials {
            Credentials::Anonymous => {
                google_cloud_auth::credentials::anonymous::Builder::new().build()
            }
            Credentials::ApplicationDefault => google_cloud_auth::credentials::Builder::default()
                .build()
                .map_err(|error| Error::Invalid {
                    message: format!("gcp: no application default credentials: {error}"),
                })?,
        };
        macro_rules! client {
            ($kind:ty) => {
                client!($kind, endpoint)
            };
            ($kind:ty, $endpoint:expr) => {{
                let mut builder = <$kind>::builder().with_credentials(credentials.clone());
                if let Some(endpoint) = $endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                builder.build().await.map_err(|error| Error::Invalid {
                    message: format!("gcp: cannot build the client: {error}"),
                })?
            }};
        }
        Ok(Self {
            clients: Clients {
                projects: client!(Projects),
                folders: client!(Folders),
                organizations: client!(Organizations),
            },
            logging: client!(LoggingServiceV2, logging_endpoint),
        })
    }

    fn target<'a>(grant: &'a GrantSpec<'_>) -> Result<&'a GcpTarget, Error> {
        grant.role.gcp.as_ref().ok_or_else(|| Error::NoTarget {
            role: grant.role.name.clone(),
        })
    }

    async fn get(&self, resource: &str) -> Result<Policy, GaxError> {
        let options =
            GetPolicyOptions::new().set_requested_policy_version(bindings::CONDITIONAL_VERSION);
        macro_rules! get {
            ($client:expr) => {
                $client
                    .get_iam_policy()
                    .set_resource(resource)
                    .set_options(options)
                    .send()
                    .await
            };
        }
        match ResourceKind::of(resource) {
            ResourceKind::Project => get!(self.clients.projects),
            ResourceKind::Folder => get!(self.clients.folders),
            ResourceKind::Organization => get!(self.clients.organizations),
        }
    }

    async fn set(&self, resource: &str, policy: Policy) -> Result<Policy, GaxError> {
        macro_rules! set {
            ($client:expr) => {
                $client
                    .set_iam_policy()
                    .set_resource(resource)
                    .set_policy(policy)
                    .send()
                    .await
            };
        }
        match ResourceKind::of(resource) {
            ResourceKind::Project => set!(self.clients.projects),
            ResourceKind::Folder => set!(self.clients.folders),
            ResourceKind::Organization => set!(self.clients.organizations),
        }
    }

    /// Reads the policy, applies `edit` (`None`: nothing to change) and writes it back with
    /// the etag read, retrying from the read on conflicts and transient failures.
    async fn read_modify_write(
        &self,
        resource: &str,
        action: &str,
        edit: impl Fn(&Policy) -> Option<Policy>,
    ) -> Result<(), Error> {
        let mut last = None;
        for attempt in 1..=MAX_ATTEMPTS {
            let outcome = match self.get(resource).await {
                Err(error) => Err(classify(&error, attempt)),
                Ok(policy) => match edit(&policy) {
                    None => return Ok(()),
                    Some(edited) => self
                        .set(resource, edited)
                        .await
                        .map(|_| ())
                        .map_err(|error| classify(&error, attempt)),
                },
            };
            let failed = match outcome {
                Ok(()) => return Ok(()),
                Err(failed) => failed,
            };
            let Some(pause) = failed.again else {
                return Err(Error::cloud(
                    Target::Gcp,
                    action,
                    failed.message,
                    failed.failure,
                ));
            };
            debug!(%resource, attempt, why = %failed.message, pause_ms = pause.as_millis() as u64, "gcp: retrying");
            last = Some(failed);
            tokio::time::sleep(pause).await;
        }
        let (message, failure) = last.map_or((String::new(), Failure::Transient), |last| {
            (last.message, last.failure)
        });
        warn!(%resource, %message, "gcp: giving up for now");
        Err(Error::cloud(
            Target::Gcp,
            action,
            format!("still failing after {MAX_ATTEMPTS} attempts: {message}"),
            failure,
        ))
    }
}

/// Sorts a failed call by what it means and whether (after how long) to try again.
fn classify(error: &GaxError, attempt: u32) -> Classified {
    let backoff = Duration::from_millis(200 * 2u64.pow(attempt.min(6))).min(MAX_PAUSE);
    let message = error
        .status()
        .map(|status| format!("{:?}: {}", status.code, status.message))
        .unwrap_or_else(|| crate::telemetry::error_chain(error));
    let (failure, again) = match error.http_status_code() {
        // Someone changed the policy between our read and write: read again at once.
        Some(409 | 412) => (Failure::Transient, Some(Duration::from_millis(50))),
        Some(429) => {
            let retry_after = error
                .http_headers()
                .and_then(|headers| headers.get("retry-after"))
                .and_then(|value| value.to_str().ok())
                .and_then(super::retry_after_seconds);
            let pause = retry_after.map_or(backoff, |wait| wait.min(MAX_PAUSE));
            (Failure::Throttled { retry_after }, Some(pause))
        }
        Some(code) if code >= 500 => (Failure::Transient, Some(backoff)),
        Some(404) => (Failure::NotFound, None),
        Some(_) => (Failure::Refused, None),
        // No reply at all (dropped connection, timeout): the write may have landed; the
        // next read shows whether it did.
        None if error.is_io()
            || error.is_timeout()
            || error.is_connect()
            || error.is_transport() =>
        {
            (Failure::Transient, Some(backoff))
        }
        // The operator's own credentials: fixed by its administrator, not the requester.
        None if error.is_authentication() => (Failure::Transient, None),
        None => (Failure::Refused, None),
    };
    Classified {
        message,
        failure,
        again,
    }
}

#[async_trait]
impl Cloud for Gcp {
    type Grant = GcpGrant;
    const TARGET: Target = Target::Gcp;
    const REPLACEMENT: Replacement = Replacement::RevokeFirst;

    fn resolve(&self, spec: &GrantSpec<'_>) -> Result<GcpGrant, Error> {
        resolve(Self::target(spec)?, spec.identity, spec.request)
    }

    fn reference(grant: &GcpGrant) -> String {
        grant.reference()
    }

    fn cloud_enforced(_grant: &GcpGrant) -> bool {
        true
    }

    fn activity_lookup(grant: &GcpGrant) -> Option<ActivityLookup> {
        grant.activity_lookup()
    }

    async fn activity(
        &self,
        lookup: &ActivityLookup,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Option<ActivityLog>, Error> {
        let Some(resource) = lookup.scope.as_deref() else {
            return Err(audit_logs::unsearchable(&lookup.principal));
        };
        audit_logs::read(&self.logging, resource, &lookup.principal, from, to)
            .await
            .map(Some)
    }

    async fn make(&self, grant: &GcpGrant, spec: &GrantSpec<'_>) -> Result<(), Error> {
        let condition = bindings::condition(&grant.title, spec.description, spec.expires_at);
        self.read_modify_write(&grant.resource, "set the IAM policy", |policy| {
            bindings::with_grant(policy, &grant.role, &grant.member, condition.clone())
        })
        .await
    }

    async fn remove(&self, grant: &GcpGrant, now: Timestamp) -> Result<(), Error> {
        let result = self
            .read_modify_write(&grant.resource, "set the IAM policy", |policy| {
                bindings::without_grant(policy, &grant.title, &grant.member, now)
            })
            .await;
        match result {
            // The resource itself is gone: so is the binding.
            Err(error) if error.is_not_found() => Ok(()),
            other => other,
        }
    }

    async fn state(&self, grant: &GcpGrant, spec: &GrantSpec<'_>) -> Result<GrantState, Error> {
        let action = "read the IAM policy";
        let policy = self.get(&grant.resource).await.map_err(|error| {
            let failed = classify(&error, MAX_ATTEMPTS);
            Error::cloud(Target::Gcp, action, failed.message, failed.failure)
        })?;
        let Some(found) = bindings::find(&policy, &grant.title) else {
            return Ok(GrantState::Missing);
        };
        let expression = bindings::expiry_expression(spec.expires_at);
        let condition_kept = found
            .condition
            .as_ref()
            .is_some_and(|condition| condition.expression == expression);
        Ok(
            if found.role == grant.role && found.members == [grant.member.clone()] && condition_kept
            {
                GrantState::Present
            } else {
                GrantState::Drifted(format!(
                    "binding {} on {} was changed",
                    grant.title, grant.resource
                ))
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subject::Subject;

    fn request() -> RequestRef {
        RequestRef {
            uid: "7f3a".into(),
            namespace: "team".into(),
            name: "fix".into(),
        }
    }

    fn target(member: &str) -> GcpTarget {
        GcpTarget {
            resource: "projects/my-prod".into(),
            role: "roles/viewer".into(),
            member: member.into(),
        }
    }

    #[test]
    fn the_resource_picks_the_client() {
        assert_eq!(ResourceKind::of("projects/p"), ResourceKind::Project);
        assert_eq!(ResourceKind::of("folders/1"), ResourceKind::Folder);
        assert_eq!(
            ResourceKind::of("organizations/2"),
            ResourceKind::Organization
        );
    }

    #[test]
    fn members_are_templated_and_must_name_a_member_kind() {
        let mut alice = Identity::bare(Subject::User("alice".into()));
        alice
            .mapping
            .insert("email".into(), "alice@example.com".into());
        let made = resolve(&target("user:{{mapping.email}}"), &alice, &request()).unwrap();
        assert_eq!(made.member, "user:alice@example.com");
        assert_eq!(made.title, "jit-7f3a");
        for member in ["{{mapping.email}}", "user:", "owner:alice"] {
            assert!(
                resolve(&target(member), &alice, &request()).is_err(),
                "{member}"
            );
        }
        let group = Identity::bare(Subject::Group("oncall".into()));
        let made = resolve(&target("group:{{group}}@example.com"), &group, &request()).unwrap();
        assert_eq!(made.member, "group:oncall@example.com");
    }
}
