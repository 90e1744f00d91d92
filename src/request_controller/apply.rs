//! Step 3, client required: carry out a plan's finalizer change and its one effect through the
//! providers. Returns what was done, from which the status is computed.

use json_patch::{AddOperation, PatchOperation, TestOperation, jsonptr::PointerBuf};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};

use super::decide::Effect;
use crate::{
    crd::v1alpha1::{AccessRequest, FINALIZER},
    provider::{self, GrantRecord, GrantSpec, Providers, RequestRef},
};

/// Why applying failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Adding or removing the finalizer failed.
    #[error("failed to update the finalizer")]
    Finalizer(#[source] kube::Error),
    /// The grant failed.
    #[error("failed to grant")]
    Grant(#[source] provider::Error),
    /// The revoke failed.
    #[error("failed to revoke")]
    Revoke(#[source] provider::Error),
    /// The request has no UID or namespace, which the API server always sets.
    #[error("the request has no uid or namespace")]
    Unidentified,
}

impl Error {
    /// The provider's error, when a provider failed.
    pub fn provider_error(&self) -> Option<&provider::Error> {
        match self {
            Self::Grant(cause) | Self::Revoke(cause) => Some(cause),
            Self::Finalizer(_) | Self::Unidentified => None,
        }
    }

    /// How long the target asked the operator to wait, when it said.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.provider_error().and_then(provider::Error::retry_after)
    }
}

/// What `apply` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The grant made, when the effect was a grant.
    pub grant: Option<GrantRecord>,
    /// A revoke that found no record of a cloud grant the request says it holds (its ledger
    /// entry removed by someone): what the operator cannot vouch for, for people to act on.
    pub unaccounted: Option<String>,
}

/// Identifies a request to the providers.
fn request_ref(request: &AccessRequest) -> Result<RequestRef, Error> {
    RequestRef::of(request).ok_or(Error::Unidentified)
}

/// Adds or removes the finalizer. The JSON patch first tests that the finalizer list is
/// still what was read, so that a concurrent change makes this fail (and retry) rather than
/// overwrite it; status writes in between do not matter. Returns the resourceVersion the
/// change was given.
pub async fn set_finalizer(
    api: &Api<AccessRequest>,
    request: &AccessRequest,
    present: bool,
) -> Result<Option<String>, Error> {
    let current = request.metadata.finalizers.clone();
    let mut finalizers: Vec<String> = current
        .iter()
        .flatten()
        .filter(|finalizer| *finalizer != FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(FINALIZER.to_owned());
    }
    let path = PointerBuf::from_tokens(["metadata", "finalizers"]);
    let patch = json_patch::Patch(vec![
        PatchOperation::Test(TestOperation {
            path: path.clone(),
            value: serde_json::to_value(&current).unwrap_or_default(),
        }),
        PatchOperation::Add(AddOperation {
            path,
            value: serde_json::to_value(&finalizers).unwrap_or_default(),
        }),
    ]);
    api.patch(
        &request.name_any(),
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await
    .map(|patched| patched.metadata.resource_version)
    .map_err(Error::Finalizer)
}

/// Carries out the effect.
pub async fn effect(
    providers: &Providers,
    request: &AccessRequest,
    effect: &Effect,
) -> Result<Applied, Error> {
    match effect {
        Effect::None => Ok(Applied::default()),
        Effect::Grant {
            role,
            identity,
            expires_at,
            approval,
        } => {
            let request_ref = request_ref(request)?;
            let granted = match providers.for_role(role) {
                Ok(provider) => {
                    provider
                        .grant(&GrantSpec {
                            request: &request_ref,
                            identity,
                            role,
                            description: &description(&request_ref, approval, request),
                            reason: request.spec.reason.as_deref().unwrap_or_default(),
                            expires_at: *expires_at,
                        })
                        .await
                }
                Err(error) => Err(error),
            };
            match granted {
                Ok(record) => Ok(Applied {
                    grant: Some(record),
                    unaccounted: None,
                }),
                // A refused grant ends the request, and ending always revokes: a refused
                // drift repair leaves the grant it replaced, and a refused multi-step grant
                // may have landed in part. A revoke that fails is what the request shows.
                Err(cause) if !cause.is_retryable() => {
                    revoke(providers, request).await?;
                    Err(Error::Grant(cause))
                }
                Err(cause) => Err(Error::Grant(cause)),
            }
        }
        Effect::Revoke => revoke(providers, request).await,
    }
}

/// Removes whatever every provider holds for the request.
async fn revoke(providers: &Providers, request: &AccessRequest) -> Result<Applied, Error> {
    let request_ref = request_ref(request)?;
    // What was recorded at grant time, not the policy: a grant held in a provider the
    // operator no longer runs cannot be removed, and that is loud, not silent.
    let recorded = request
        .status
        .as_ref()
        .and_then(|status| status.grant.as_ref());
    let mut unaccounted = None;
    if let Some(grant) = recorded {
        let Some(provider) = providers.named(&grant.provider) else {
            return Err(Error::Revoke(provider::Error::NotRunning {
                target: grant.provider.clone(),
            }));
        };
        // A cloud grant leaves a ledger entry until it is revoked: none left means
        // someone removed it, and the operator can no longer find what it granted.
        // Not silence.
        if provider.target().keeps_ledger()
            && !provider.holds(&request_ref).await.map_err(Error::Revoke)?
        {
            unaccounted = Some(format!(
                "the operator has no record of what it granted in {} ({}): its grant \
                 ledger entry was removed outside the operator, so it cannot find that \
                 access to revoke it; remove it by hand",
                grant.provider, grant.reference
            ));
        }
    }
    // The policy may be gone: ask every provider; each treats nothing held as done. With no
    // grant intent open, every grant made for the request is on record in its status, and a
    // provider that tracks what it made need not search for it.
    let all_recorded = request
        .status
        .as_ref()
        .is_none_or(super::outcome::grants_recorded);
    for provider in providers.all() {
        let revoked = if all_recorded {
            let reference = recorded
                .filter(|grant| grant.provider == provider.target().as_str())
                .map(|grant| grant.reference.as_str());
            provider.revoke_recorded(&request_ref, reference).await
        } else {
            provider.revoke(&request_ref).await
        };
        revoked.map_err(Error::Revoke)?;
    }
    Ok(Applied {
        grant: None,
        unaccounted,
    })
}

/// What the target records about a grant, for people who find it there:
/// `team/fix-db approved by bob: INC-1234 disk full`.
fn description(request: &RequestRef, approval: &str, object: &AccessRequest) -> String {
    let mut text = format!("{}/{} {approval}", request.namespace, request.name);
    if let Some(reason) = object
        .spec
        .reason
        .as_deref()
        .filter(|reason| !reason.is_empty())
    {
        text.push_str(": ");
        text.push_str(reason);
    }
    text
}
