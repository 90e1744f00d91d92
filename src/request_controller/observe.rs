//! Step 1, client required: read the request fresh from the API server, and its policy from
//! the watch cache and again fresh before anything is done on its account, so that a decision
//! to grant (or to change anything) rests on what is true now; and for an active request, look
//! at the grant itself, so that drift is seen.

use kube::{
    Api, Client, ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};

use super::{
    conditions::{VERIFY_FAILING, is_true},
    decide::{Observed, Unverified},
};
use crate::provider::identity::Identity;
use crate::{
    crd::v1alpha1::{AccessPolicy, AccessRequest, Approval, Phase},
    policy,
    provider::{self, GrantSpec, Providers, RequestRef},
    seal::Sealer,
};

/// Why observing failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the request failed.
    #[error("failed to read the request")]
    ReadRequest(#[source] kube::Error),
    /// Reading the policy failed.
    #[error("failed to read policy {policy}")]
    ReadPolicy {
        /// The policy.
        policy: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Looking at the grant failed.
    #[error("failed to verify the grant")]
    Verify(#[source] provider::Error),
}

/// Reads the request fresh and its policy from `cached` (when the cache is synced; fresh
/// otherwise), and verifies an active grant; `None` when the request is gone. A policy taken
/// from the cache is marked so: the caller reads it again with [`confirm_policy`] before it
/// acts on a decision that rests on it.
pub async fn observe(
    client: &Client,
    providers: &Providers,
    sealer: &Sealer,
    cached: Option<&Store<AccessPolicy>>,
    namespace: &str,
    name: &str,
) -> Result<Option<Observed>, Error> {
    let requests = Api::<AccessRequest>::namespaced(client.clone(), namespace);
    let Some(mut request) = requests.get_opt(name).await.map_err(Error::ReadRequest)? else {
        return Ok(None);
    };
    // Nothing downstream reads labels or managedFields: drop them now rather than carry a
    // padded request through the reconcile.
    request.metadata.labels = None;
    request.metadata.managed_fields = None;
    let (policy, policy_unreadable, policy_cached) = match cached {
        Some(store) => (
            store
                .get(&ObjectRef::new(&request.spec.policy))
                .map(|policy| AccessPolicy::clone(&policy)),
            None,
            true,
        ),
        None => {
            let (policy, unreadable) = read_policy(client, &request.spec.policy).await;
            (policy, unreadable, false)
        }
    };
    // A grant that cannot be looked at (the policy edited, a mapping removed, a provider
    // turned off, a cloud refusing) must not stop its expiry, revoke or deny: the failure is
    // handed to `decide`, which ends the request regardless when it is time.
    let (grant, unverified) = look_at_grant(providers, &request, policy.as_ref()).await;
    let (decisions, forged) = sealed_decisions(sealer, &request);
    let window_sealed = window_sealed(sealer, &request);
    Ok(Some(Observed {
        request,
        policy,
        grant,
        unverified,
        decisions,
        forged,
        window_sealed,
        policy_unreadable,
        policy_cached,
    }))
}

/// Reads the policy fresh. One that cannot be read (the API server refusing or failing) must
/// not hold up an expiry, a revoke or a deletion: decide is told, grants nothing, and ends
/// what it must.
async fn read_policy(client: &Client, name: &str) -> (Option<AccessPolicy>, Option<String>) {
    match Api::<AccessPolicy>::all(client.clone()).get_opt(name).await {
        Ok(policy) => (policy, None),
        Err(source) => {
            let error = Error::ReadPolicy {
                policy: name.to_owned(),
                source,
            };
            (None, Some(crate::telemetry::error_chain(&error)))
        }
    }
}

/// Reads the policy of an observation made from the cache again, fresh. Returns whether it
/// differs from the cached one (another version, gone, or unreadable): the decision must then
/// be made again, and the active grant is looked at again against it.
pub async fn confirm_policy(
    client: &Client,
    providers: &Providers,
    mut observed: Observed,
) -> (Observed, bool) {
    let (fresh, unreadable) = read_policy(client, &observed.request.spec.policy).await;
    observed.policy_cached = false;
    let version = |policy: &Option<AccessPolicy>| {
        policy
            .as_ref()
            .map(|policy| policy.metadata.resource_version.clone())
    };
    if unreadable.is_none() && version(&fresh) == version(&observed.policy) {
        return (observed, false);
    }
    observed.policy = fresh;
    observed.policy_unreadable = unreadable;
    (observed.grant, observed.unverified) =
        look_at_grant(providers, &observed.request, observed.policy.as_ref()).await;
    (observed, true)
}

/// The active grant's state, or why it could not be looked at, as `decide` is told of them.
async fn look_at_grant(
    providers: &Providers,
    request: &AccessRequest,
    policy: Option<&AccessPolicy>,
) -> (Option<provider::GrantState>, Option<Unverified>) {
    match verify_active(providers, request, policy).await {
        Ok(grant) => (grant, None),
        Err(error) => {
            let retry_after = match &error {
                Error::Verify(cause) => cause.retry_after(),
                _ => None,
            };
            let unverified = Unverified {
                message: crate::telemetry::error_chain(&error),
                retry_after,
            };
            (None, Some(unverified))
        }
    }
}

/// The decision records admission sealed for this request, and who the others claim to be.
fn sealed_decisions(sealer: &Sealer, request: &AccessRequest) -> (Vec<Approval>, Vec<String>) {
    let uid = request.uid().unwrap_or_default();
    let records = super::decide::decisions(request).unwrap_or_default();
    let (sealed, forged): (Vec<Approval>, Vec<Approval>) = records
        .into_iter()
        .partition(|record| sealer.verify_decision(&uid, record));
    (
        sealed,
        forged.into_iter().map(|record| record.user).collect(),
    )
}

/// Whether the grant window in status, if any, carries the operator's seal.
fn window_sealed(sealer: &Sealer, request: &AccessRequest) -> bool {
    let Some(status) = request.status.as_ref() else {
        return true;
    };
    match (&status.granted_at, &status.expires_at, request.uid()) {
        (None, None, _) => true,
        (Some(granted_at), Some(expires_at), Some(uid)) => {
            sealer.verify_window(&uid, granted_at, expires_at, status.seal.as_deref())
        }
        _ => false,
    }
}

/// The state of an active request's grant; `None` when there is nothing to verify (not
/// active, being deleted, past its end, or the role is gone, which `decide` handles by
/// revoking).
async fn verify_active(
    providers: &Providers,
    request: &AccessRequest,
    policy: Option<&AccessPolicy>,
) -> Result<Option<provider::GrantState>, Error> {
    let status = request.status.as_ref();
    let active = status.and_then(|status| status.phase) == Some(Phase::Active);
    if !active || request.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    // A look that keeps failing waits for its backoff: a throttled cloud is not asked again
    // on every reconcile (each status write is one).
    if let Some(status) = status
        && is_true(&status.conditions, VERIFY_FAILING)
        && status
            .next_retry_time
            .as_ref()
            .is_some_and(|due| jiff::Timestamp::now() < due.0)
    {
        return Ok(None);
    }
    let (Some(policy), Some(expires_at), Some(request_ref)) = (
        policy,
        status.and_then(|status| status.expires_at.as_ref()),
        RequestRef::of(request),
    ) else {
        return Ok(None);
    };
    // Past its end the grant is revoked whatever state it is in: looking first would only
    // delay the revoke by a read. Within `ANNOUNCE_REVOKE` of its end likewise: that look
    // announces the revoke, which removes the grant whatever a hand did to it meanwhile.
    if super::decide::revoke_announced_at(expires_at.0) <= jiff::Timestamp::now() {
        return Ok(None);
    }
    let Some((role, subject)) = policy::granted_role(policy, &request.spec) else {
        return Ok(None);
    };
    let provider = providers.for_role(role).map_err(Error::Verify)?;
    let state = provider
        .verify(&GrantSpec {
            request: &request_ref,
            identity: &Identity::of(&subject, request.spec.requester.as_ref(), policy),
            description: "",
            reason: "",
            role,
            expires_at: expires_at.0,
        })
        .await
        .map_err(Error::Verify)?;
    Ok(Some(state))
}
