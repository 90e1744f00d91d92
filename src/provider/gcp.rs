//! The Google Cloud provider: a conditional IAM binding on a project, folder or organization
//! that Google itself stops honouring at the expiry, written by read-modify-write with the etag
//! just read. A stale etag means someone else changed the policy: re-read and try again,
//! never overwrite a change not read. Retry policy is ours (the client does not retry these
//! POSTs): conflicts, 429 (honouring Retry-After), 5xx and dropped replies.

pub mod bindings;

use std::time::Duration;

use async_trait::async_trait;
use google_cloud_gax::error::Error as GaxError;
use google_cloud_iam_v1::model::{GetPolicyOptions, Policy};
use google_cloud_resourcemanager_v3::client::{Folders, Organizations, Projects};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::{
    Error, GrantRecord, GrantSpec, GrantState, Provider, RequestRef, identity::Identity,
    ledger::Ledger,
};
use crate::crd::v1alpha1::GcpTarget;

/// The provider's name.
const NAME: &str = "gcp";
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

/// How the provider authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// Application Default Credentials: workload identity in GKE, a key file, gcloud.
    ApplicationDefault,
    /// No credentials at all: for emulators only.
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

/// Grants Google Cloud IAM roles.
pub struct GcpProvider {
    clients: Clients,
    ledger: Ledger,
}

/// What one attempt at a call came to.
enum Failure {
    /// Try again after this long (conflict, throttling, 5xx, dropped reply).
    Again(Duration, String),
    /// Give up: the error for the request.
    Stop(Error),
}

impl GcpProvider {
    /// A provider talking to `endpoint` (the public one when `None`).
    pub async fn new(
        endpoint: Option<&str>,
        credentials: Credentials,
        ledger: Ledger,
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
            ($kind:ty) => {{
                let mut builder = <$kind>::builder().with_credentials(credentials.clone());
                if let Some(endpoint) = endpoint {
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
            ledger,
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
        if resource.starts_with("folders/") {
            self.clients
                .folders
                .get_iam_policy()
                .set_resource(resource)
                .set_options(options)
                .send()
                .await
        } else if resource.starts_with("organizations/") {
            self.clients
                .organizations
                .get_iam_policy()
                .set_resource(resource)
                .set_options(options)
                .send()
                .await
        } else {
            self.clients
                .projects
                .get_iam_policy()
                .set_resource(resource)
                .set_options(options)
                .send()
                .await
        }
    }

    async fn set(&self, resource: &str, policy: Policy) -> Result<Policy, GaxError> {
        if resource.starts_with("folders/") {
            self.clients
                .folders
                .set_iam_policy()
                .set_resource(resource)
                .set_policy(policy)
                .send()
                .await
        } else if resource.starts_with("organizations/") {
            self.clients
                .organizations
                .set_iam_policy()
                .set_resource(resource)
                .set_policy(policy)
                .send()
                .await
        } else {
            self.clients
                .projects
                .set_iam_policy()
                .set_resource(resource)
                .set_policy(policy)
                .send()
                .await
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
        let mut last = String::new();
        for attempt in 1..=MAX_ATTEMPTS {
            let outcome = match self.get(resource).await {
                Err(error) => Err(classify(action, &error, attempt)),
                Ok(policy) => match edit(&policy) {
                    None => return Ok(()),
                    Some(edited) => self
                        .set(resource, edited)
                        .await
                        .map(|_| ())
                        .map_err(|error| classify(action, &error, attempt)),
                },
            };
            match outcome {
                Ok(()) => return Ok(()),
                Err(Failure::Stop(error)) => return Err(error),
                Err(Failure::Again(pause, why)) => {
                    debug!(%resource, attempt, %why, pause_ms = pause.as_millis() as u64, "gcp: retrying");
                    last = why;
                    tokio::time::sleep(pause).await;
                }
            }
        }
        warn!(%resource, %last, "gcp: giving up for now");
        Err(Error::Cloud {
            provider: NAME,
            action: action.to_owned(),
            message: format!("still failing after {MAX_ATTEMPTS} attempts: {last}"),
            retryable: true,
        })
    }
}

/// Sorts a failed call into "try again" (with how long to wait) or "stop".
fn classify(action: &str, error: &GaxError, attempt: u32) -> Failure {
    let backoff = Duration::from_millis(200 * 2u64.pow(attempt.min(6))).min(MAX_PAUSE);
    let status = error.http_status_code();
    let message = error
        .status()
        .map(|status| format!("{:?}: {}", status.code, status.message))
        .unwrap_or_else(|| crate::telemetry::error_chain(error));
    match status {
        // Someone changed the policy between our read and write: read again at once.
        Some(409 | 412) => Failure::Again(Duration::from_millis(50), message),
        Some(429) => {
            let pause = error
                .http_headers()
                .and_then(|headers| headers.get("retry-after"))
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse::<u64>().ok())
                .map_or(backoff, Duration::from_secs)
                .min(MAX_PAUSE);
            Failure::Again(pause, message)
        }
        Some(code) if code >= 500 => Failure::Again(backoff, message),
        Some(_) => Failure::Stop(Error::Cloud {
            provider: NAME,
            action: action.to_owned(),
            message,
            retryable: false,
        }),
        // No reply at all (dropped connection, timeout): the write may have landed; the
        // next read shows whether it did.
        None if error.is_io()
            || error.is_timeout()
            || error.is_connect()
            || error.is_transport() =>
        {
            Failure::Again(backoff, message)
        }
        None => Failure::Stop(Error::Cloud {
            provider: NAME,
            action: action.to_owned(),
            message,
            retryable: error.is_authentication(),
        }),
    }
}

#[async_trait]
impl Provider for GcpProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn enforces_expiry(&self) -> bool {
        true
    }

    async fn grant(&self, grant: &GrantSpec<'_>) -> Result<GrantRecord, Error> {
        let target = Self::target(grant)?;
        let made = resolve(target, grant.identity, grant.request)?;
        // A policy edited while the grant is active: what the role granted before goes first.
        let now = Timestamp::now();
        let (stale, held_before) = self.ledger.others(&grant.request.uid, &made).await?;
        for stale in &stale {
            self.remove(stale, now).await?;
            info!(reference = %stale.reference(), "revoked what the role granted before it changed");
        }
        self.ledger
            .record_only(grant.request, &made, grant.expires_at, !stale.is_empty())
            .await?;
        let condition = bindings::condition(&made.title, grant.description, grant.expires_at);
        let result = self
            .read_modify_write(&made.resource, "set the IAM policy", |policy| {
                bindings::with_grant(policy, &made.role, &made.member, condition.clone())
            })
            .await;
        if let Err(error) = result {
            self.ledger
                .forget_refused(&grant.request.uid, &error, !held_before)
                .await;
            return Err(error);
        }
        info!(reference = %made.reference(), "granted in gcp");
        Ok(GrantRecord {
            provider: NAME,
            reference: made.reference(),
            cloud_enforced_expiry: true,
        })
    }

    async fn revoke(&self, request: &RequestRef) -> Result<(), Error> {
        let held: Vec<GcpGrant> = self.ledger.targets(&request.uid).await?;
        let now = Timestamp::now();
        for grant in &held {
            self.remove(grant, now).await?;
            info!(reference = %grant.reference(), "revoked in gcp");
        }
        self.ledger.clear(&request.uid).await?;
        Ok(())
    }

    async fn verify(&self, grant: &GrantSpec<'_>) -> Result<GrantState, Error> {
        let target = Self::target(grant)?;
        let made = resolve(target, grant.identity, grant.request)?;
        let policy = self.get(&made.resource).await.map_err(|error| {
            match classify("read the IAM policy", &error, MAX_ATTEMPTS) {
                Failure::Stop(error) => error,
                Failure::Again(_, message) => Error::Cloud {
                    provider: NAME,
                    action: "read the IAM policy".into(),
                    message,
                    retryable: true,
                },
            }
        })?;
        let Some(found) = bindings::find(&policy, &made.title) else {
            return Ok(GrantState::Missing);
        };
        let expression = bindings::expiry_expression(grant.expires_at);
        let condition_kept = found
            .condition
            .as_ref()
            .is_some_and(|condition| condition.expression == expression);
        Ok(
            if found.role == made.role && found.members == [made.member.clone()] && condition_kept {
                GrantState::Present
            } else {
                GrantState::Drifted(format!(
                    "binding {} on {} was changed",
                    made.title, made.resource
                ))
            },
        )
    }

    async fn list_managed(&self) -> Result<Vec<String>, Error> {
        Ok(self.ledger.uids().await?)
    }

    async fn holds(&self, request: &RequestRef) -> Result<bool, Error> {
        Ok(self.ledger.holds(&request.uid).await?)
    }
}

impl GcpProvider {
    async fn remove(&self, grant: &GcpGrant, now: Timestamp) -> Result<(), Error> {
        let result = self
            .read_modify_write(&grant.resource, "set the IAM policy", |policy| {
                bindings::without_grant(policy, &grant.title, &grant.member, now)
            })
            .await;
        match result {
            // The resource itself is gone: so is the binding.
            Err(Error::Cloud { message, .. }) if message.starts_with("NotFound") => Ok(()),
            other => other,
        }
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
