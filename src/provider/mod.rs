//! Where grants live: one trait every target implements, one module per target, and the one
//! place that picks the provider for a role. SDK types never leave their module.

pub mod aws;
pub mod azure;
pub(crate) mod cloud;
pub mod gcp;
pub mod identity;
pub mod kubernetes;
pub mod ledger;
mod set;

use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;

use kube::ResourceExt;

pub use self::set::{Providers, Settings};
use crate::{
    crd::v1alpha1::{AccessRequest, ActivityLookup, ActivitySource, PolicyRole},
    provider::identity::Identity,
    target::Target,
};

/// The label every object the operator manages carries.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "jit-operator";
/// The label naming the request a managed object belongs to.
pub const REQUEST_UID_LABEL: &str = "jit.dev/request-uid";
/// The annotation naming that request as `namespace/name`, for people.
pub const REQUEST_ANNOTATION: &str = "jit.dev/request";
/// The annotation giving the grant's expiry, for people.
pub const EXPIRES_AT_ANNOTATION: &str = "jit.dev/expires-at";

/// The deterministic name of a request's grant, derived from its UID, so that a grant made
/// before a crash is found again rather than made twice.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GrantKey(String);

impl GrantKey {
    /// The key of the request with this UID.
    pub fn for_request(uid: &str) -> Self {
        Self(format!("jit-{uid}"))
    }

    /// The key as text; a valid Kubernetes object name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which request a grant belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRef {
    /// Its UID.
    pub uid: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl RequestRef {
    /// Identifies a stored request; `None` without the UID and namespace the API server sets.
    pub fn of(request: &AccessRequest) -> Option<Self> {
        Some(Self {
            uid: request.uid()?,
            namespace: request.namespace()?,
            name: request.name_any(),
        })
    }

    /// The grant key of this request.
    pub fn key(&self) -> GrantKey {
        GrantKey::for_request(&self.uid)
    }
}

/// Everything a provider needs to make one grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantSpec<'a> {
    /// The request it is for.
    pub request: &'a RequestRef,
    /// Who receives it, with what is known about them.
    pub identity: &'a Identity,
    /// What the policy says to grant.
    pub role: &'a PolicyRole,
    /// When it must end.
    pub expires_at: Timestamp,
    /// Who asked and who approved, for targets that keep a note with the grant.
    pub description: &'a str,
    /// The request's reason as its author wrote it; empty when none was given.
    pub reason: &'a str,
}

/// What a provider reports about a grant it made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantRecord {
    /// Where it was made.
    pub target: Target,
    /// Where the grant is, for people: `RoleBinding prod/jit-...`.
    pub reference: String,
    /// Whether the target ends the access at `expires_at` by itself.
    pub cloud_enforced_expiry: bool,
    /// How the cloud's activity log names the holder, when it can be searched for them.
    pub activity_lookup: Option<ActivityLookup>,
}

/// What a grant looks like compared with what it should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantState {
    /// Exactly as granted.
    Present,
    /// Gone.
    Missing,
    /// There, but changed; says how.
    Drifted(String),
}

/// The most actions one read of a cloud's activity log takes in; past it the summary says it
/// is truncated. Bounds the memory and the calls (CloudTrail answers 50 events a call, at two
/// calls a second) one busy subject can cost.
pub const ACTIVITY_READ_LIMIT: usize = 5_000;

/// One action a cloud's activity log recorded for a grant's holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedAction {
    /// The cloud's id of the event (CloudTrail's `eventID`, the audit log entry's `insertId`,
    /// the Activity Log's `eventDataId`).
    pub id: String,
    /// When the cloud received it.
    pub time: Timestamp,
    /// The operation as the log names it: `GetObject`, `storage.buckets.list`,
    /// `Microsoft.Compute/virtualMachines/write`.
    pub operation: String,
    /// The service: `s3.amazonaws.com`, `storage.googleapis.com`, `Microsoft.Compute`.
    pub service: String,
    /// What it acted on, when the log says.
    pub resource: Option<String>,
    /// Whether the cloud refused it for lack of permission.
    pub denied: bool,
    /// The status as HTTP would say it: 200, 403 for a refusal, 400 or 500 for other errors.
    pub code: i32,
}

/// The target whose provider reads this activity log.
pub(crate) fn target_of(source: ActivitySource) -> Option<Target> {
    match source {
        ActivitySource::AwsCloudTrail => Some(Target::Aws),
        ActivitySource::GcpAuditLogs => Some(Target::Gcp),
        ActivitySource::AzureActivityLog => Some(Target::Azure),
        ActivitySource::KubernetesAudit => None,
    }
}

/// What one read of a cloud's activity log found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActivityLog {
    /// The holder's actions in the window, oldest first.
    pub actions: Vec<LoggedAction>,
    /// Whether the log held more than [`ACTIVITY_READ_LIMIT`] (or more pages than the cloud's
    /// quota allows in one read).
    pub truncated: bool,
}

/// Why a provider call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The role names no target this operator supports.
    #[error("role {role} names no target this operator supports")]
    NoTarget {
        /// The role.
        role: String,
    },
    /// The role names a target this operator runs without.
    #[error(
        "role {role} grants in {target}, which this operator is not configured for (see --providers)"
    )]
    Disabled {
        /// The role.
        role: String,
        /// The target.
        target: Target,
    },
    /// The role and subject do not make a grant (a template, an ARN, a document).
    #[error("{message}")]
    Invalid {
        /// What is wrong.
        message: String,
    },
    /// A grant is held in a target this operator no longer runs: it cannot be removed until
    /// the operator is configured for it again.
    #[error(
        "the grant is held in {target}, which this operator is not configured for (see --providers); it stays until that provider is enabled again"
    )]
    NotRunning {
        /// The target the grant was made in, as status names it.
        target: String,
    },
    /// A template could not be filled in for the subject.
    #[error(transparent)]
    Template(#[from] identity::Error),
    /// The grant ledger could not be read or written.
    #[error(transparent)]
    Ledger(#[from] ledger::Error),
    /// A cloud API refused or failed.
    #[error("{target}: failed to {action}: {message}")]
    Cloud {
        /// The cloud.
        target: Target,
        /// What was being done.
        action: String,
        /// The cloud's own words.
        message: String,
        /// What kind of failure, for the retry logic.
        failure: Failure,
    },
    /// A revoked object is still there (held by something the operator could not remove).
    #[error("{reference} still exists after it was deleted")]
    StillPresent {
        /// What is still there.
        reference: String,
    },
    /// The Kubernetes API refused or failed.
    #[error("failed to {action} {reference}")]
    Kubernetes {
        /// What was being done.
        action: &'static str,
        /// To what.
        reference: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

/// How a cloud call failed, in the terms the retry logic needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// What was asked about (or its parent: the principal, the project) does not exist.
    NotFound,
    /// The cloud asks to slow down (429, a throttling code), for this long when it said.
    Throttled {
        /// The server's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// It may pass: a 5xx, a dropped or timed-out connection, a concurrent change, the
    /// operator's own credentials failing.
    Transient,
    /// It needs a person: a permission the operator lacks, an invalid object, access held by
    /// someone else.
    Refused,
}

impl Error {
    /// A cloud error of `target`.
    pub(crate) fn cloud(
        target: Target,
        action: impl Into<String>,
        message: impl Into<String>,
        failure: Failure,
    ) -> Self {
        Self::Cloud {
            target,
            action: action.into(),
            message: message.into(),
            failure,
        }
    }

    /// What kind of error, for metrics: `not_configured`, `invalid`, `ledger`, `throttled`,
    /// `refused` (the target said no) or `transient` (it may pass).
    pub fn category(&self) -> &'static str {
        match self {
            Self::NoTarget { .. } | Self::Disabled { .. } | Self::NotRunning { .. } => {
                "not_configured"
            }
            Self::Invalid { .. } | Self::Template(_) => "invalid",
            Self::Ledger(_) => "ledger",
            _ if self.is_throttled() => "throttled",
            _ if self.is_retryable() => "transient",
            _ => "refused",
        }
    }

    /// The target the error came from, when it says.
    pub fn target(&self) -> Option<Target> {
        match self {
            Self::Disabled { target, .. } | Self::Cloud { target, .. } => Some(*target),
            Self::Kubernetes { .. } | Self::StillPresent { .. } => Some(Target::Kubernetes),
            _ => None,
        }
    }

    /// Whether the thing asked about does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            Self::Cloud { failure, .. } => *failure == Failure::NotFound,
            Self::Kubernetes {
                source: kube::Error::Api(status),
                ..
            } => status.code == 404,
            _ => false,
        }
    }

    /// Whether the target asked the operator to slow down.
    pub fn is_throttled(&self) -> bool {
        match self {
            Self::Cloud { failure, .. } => matches!(failure, Failure::Throttled { .. }),
            Self::Kubernetes {
                source: kube::Error::Api(status),
                ..
            } => status.code == 429,
            _ => false,
        }
    }

    /// How long the target asked the operator to wait, when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Cloud {
                failure: Failure::Throttled { retry_after },
                ..
            } => *retry_after,
            _ => None,
        }
    }

    /// Whether trying again later may succeed. Refusals that need a person (a missing
    /// namespace, a permission the operator lacks, an invalid object) are not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::NoTarget { .. }
            | Self::Disabled { .. }
            | Self::NotRunning { .. }
            | Self::Invalid { .. }
            | Self::Template(_) => false,
            Self::Ledger(error) => error.is_retryable(),
            Self::Cloud { failure, .. } => {
                matches!(failure, Failure::Throttled { .. } | Failure::Transient)
            }
            Self::StillPresent { .. } => true,
            Self::Kubernetes { source, .. } => match source {
                kube::Error::Api(status) => !matches!(status.code, 400 | 403 | 404 | 422),
                _ => true,
            },
        }
    }
}

/// A `Retry-After` header in seconds (the form clouds send); an HTTP date is not used.
pub(crate) fn retry_after_seconds(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A place roles can be granted.
#[async_trait]
pub trait Provider: Send + Sync {
    /// The target it grants in, as `status.grant.provider` shows it.
    fn target(&self) -> Target;

    /// Makes the grant, or adopts it when it exists already. Idempotent.
    async fn grant(&self, grant: &GrantSpec<'_>) -> Result<GrantRecord, Error>;

    /// Removes every grant this provider holds for the request; nothing there counts as done.
    async fn revoke(&self, request: &RequestRef) -> Result<(), Error>;

    /// [`Provider::revoke`], told that every grant made for the request was recorded in its
    /// status (no grant intent is open) and what the status records (`recorded`, the
    /// reference of the grant in this provider, if any): a provider that keeps track of
    /// what it made need not search the target for it.
    async fn revoke_recorded(
        &self,
        request: &RequestRef,
        recorded: Option<&str>,
    ) -> Result<(), Error> {
        let _ = recorded;
        self.revoke(request).await
    }

    /// The requests (namespace, name) whose grants in this target change or go, from a
    /// watch the provider also learns from; `None` when it watches nothing. The controller
    /// looks at those requests again (drift).
    fn watch(&self) -> Option<futures::stream::BoxStream<'static, (String, String)>> {
        None
    }

    /// Compares the grant with what it should be, for drift repair.
    async fn verify(&self, grant: &GrantSpec<'_>) -> Result<GrantState, Error>;

    /// The request UIDs of every grant this provider manages (by its managed-by marker), for
    /// the orphan sweep.
    async fn list_managed(&self) -> Result<Vec<String>, Error>;

    /// Whether this provider holds a grant, or the record of one, for the request. The
    /// general answer lists everything managed; providers with a ledger read the one entry.
    async fn holds(&self, request: &RequestRef) -> Result<bool, Error> {
        Ok(self.list_managed().await?.contains(&request.uid))
    }

    /// What the cloud's own activity log recorded for the holder `lookup` names between
    /// `from` and `to`; `None` when this target keeps no log the operator reads.
    async fn activity(
        &self,
        _lookup: &ActivityLookup,
        _from: Timestamp,
        _to: Timestamp,
    ) -> Result<Option<ActivityLog>, Error> {
        Ok(None)
    }
}
