//! The cloud-grant protocol, written once for every target that keeps a grant ledger: record
//! in the ledger before the call; never adopt access the operator did not grant; revoke what an
//! edited role granted before; forget an attempt refused for good. Each cloud says only what
//! differs ([`Cloud`]: resolve, find what is held elsewhere, make, remove, read state), and
//! [`CloudProvider`] implements [`Provider`] on top of it.

use std::fmt::Debug;

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Serialize, de::DeserializeOwned};
use tracing::{debug, info, warn};

use super::{
    ActivityLog, Error, GrantRecord, GrantSpec, GrantState, Provider, RequestRef, ledger::Ledger,
};
use crate::{crd::v1alpha1::ActivityLookup, target::Target};

/// How a grant is replaced when the role it was made for changed while it is active (drift
/// repair re-grants under the role as the policy defines it now).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Replacement {
    /// Remove what the old definition granted, then make the new grant: never both at once.
    RevokeFirst,
    /// Make the new grant, then remove the old: the subject never loses access in between
    /// (AWS, where a principal may hold both and the old one is removed at once after).
    GrantFirst,
}

/// What one cloud does differently; everything else is [`CloudProvider`]'s.
#[async_trait]
pub(crate) trait Cloud: Send + Sync + 'static {
    /// One grant as made in this cloud: what the ledger records and revoke undoes.
    type Grant: Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync;

    /// The target this cloud is.
    const TARGET: Target;

    /// The order of a replacement.
    const REPLACEMENT: Replacement;

    /// The grant to make for this spec, with everything that can be checked without the
    /// cloud checked (templates, ARNs, documents). Pure.
    fn resolve(&self, spec: &GrantSpec<'_>) -> Result<Self::Grant, Error>;

    /// Where the grant is, for people.
    fn reference(grant: &Self::Grant) -> String;

    /// Whether the cloud itself ends this grant at its expiry.
    fn cloud_enforced(grant: &Self::Grant) -> bool;

    /// Whether the access exists already, granted by someone else. Asked only for a grant the
    /// ledger does not hold: taking such access over would end it at our expiry. Grants named
    /// from the request's key (nobody else makes them) answer `false`.
    async fn held_elsewhere(&self, _grant: &Self::Grant) -> Result<bool, Error> {
        Ok(false)
    }

    /// Makes the grant, or finds it made (a retry after a crash or a lost reply). Idempotent.
    async fn make(&self, grant: &Self::Grant, spec: &GrantSpec<'_>) -> Result<(), Error>;

    /// Removes the grant; one already gone counts as removed.
    async fn remove(&self, grant: &Self::Grant, now: Timestamp) -> Result<(), Error>;

    /// The grant as the cloud has it, compared with the spec.
    async fn state(&self, grant: &Self::Grant, spec: &GrantSpec<'_>) -> Result<GrantState, Error>;

    /// How the cloud's activity log names the grant's holder; `None` when it cannot tell
    /// their actions apart (a grant to a group or a shared role is used by many).
    fn activity_lookup(_grant: &Self::Grant) -> Option<ActivityLookup> {
        None
    }

    /// The holder's actions in the cloud's activity log between `from` and `to`; asked only
    /// with a lookup of this cloud's log.
    async fn activity(
        &self,
        _lookup: &ActivityLookup,
        _from: Timestamp,
        _to: Timestamp,
    ) -> Result<Option<ActivityLog>, Error> {
        Ok(None)
    }
}

/// A [`Provider`] for a cloud, with its ledger.
pub(crate) struct CloudProvider<C> {
    cloud: C,
    ledger: Ledger,
}

impl<C: Cloud> CloudProvider<C> {
    /// The provider for `cloud`, recording grants in `ledger`.
    pub(crate) fn new(cloud: C, ledger: Ledger) -> Self {
        Self { cloud, ledger }
    }

    /// Removes what an earlier definition of the role granted, then keeps only `made` on
    /// record.
    async fn replace(
        &self,
        request: &RequestRef,
        stale: &[C::Grant],
        made: &C::Grant,
    ) -> Result<(), Error> {
        if stale.is_empty() {
            return Ok(());
        }
        let now = Timestamp::now();
        for grant in stale {
            self.cloud.remove(grant, now).await?;
            info!(provider = %C::TARGET, reference = %C::reference(grant), "revoked what the role granted before it changed");
        }
        Ok(self.ledger.keep_only(request, made).await?)
    }
}

#[async_trait]
impl<C: Cloud> Provider for CloudProvider<C> {
    fn target(&self) -> Target {
        C::TARGET
    }

    async fn grant(&self, spec: &GrantSpec<'_>) -> Result<GrantRecord, Error> {
        let made = self.cloud.resolve(spec)?;
        let recorded: Vec<C::Grant> = self.ledger.targets(&spec.request.uid).await?;
        let known = recorded.contains(&made);
        let stale: Vec<C::Grant> = recorded
            .iter()
            .filter(|grant| **grant != made)
            .cloned()
            .collect();
        if !known && self.cloud.held_elsewhere(&made).await? {
            return Err(Error::Invalid {
                message: format!(
                    "{} exists already, granted outside this request; the operator will not take over access it did not grant",
                    C::reference(&made)
                ),
            });
        }
        if C::REPLACEMENT == Replacement::RevokeFirst {
            self.replace(spec.request, &stale, &made).await?;
        }
        // Intent before action: recorded before the call, so that a crash after it leaves
        // a record that revoke and the sweep find.
        if !known {
            self.ledger
                .record(spec.request, &made, spec.expires_at)
                .await?;
        }
        if let Err(error) = self.cloud.make(&made, spec).await {
            // Refused for good: forget the attempt when the entry holds nothing else (nothing
            // was made, nothing is left to revoke). An entry that held anything before (this
            // grant made earlier, or what a grant-first replacement still has to remove)
            // stays for the final revoke.
            let alone = C::REPLACEMENT == Replacement::RevokeFirst || stale.is_empty();
            if !error.is_retryable()
                && !known
                && alone
                && let Err(failed) = self.ledger.clear(&spec.request.uid).await
            {
                debug!(error = %failed, "could not forget a refused grant; the sweep will");
            }
            return Err(error);
        }
        if C::REPLACEMENT == Replacement::GrantFirst {
            self.replace(spec.request, &stale, &made).await?;
        }
        info!(provider = %C::TARGET, reference = %C::reference(&made), "granted");
        Ok(GrantRecord {
            target: C::TARGET,
            reference: C::reference(&made),
            cloud_enforced_expiry: C::cloud_enforced(&made),
            activity_lookup: C::activity_lookup(&made),
        })
    }

    async fn revoke(&self, request: &RequestRef) -> Result<(), Error> {
        let held: Vec<C::Grant> = self.ledger.targets(&request.uid).await?;
        if held.is_empty() {
            return Ok(());
        }
        let now = Timestamp::now();
        for grant in &held {
            if let Err(error) = self.cloud.remove(grant, now).await {
                warn!(provider = %C::TARGET, reference = %C::reference(grant), %error, "revoke failed");
                return Err(error);
            }
            info!(provider = %C::TARGET, reference = %C::reference(grant), "revoked");
        }
        Ok(self.ledger.clear(&request.uid).await?)
    }

    async fn verify(&self, spec: &GrantSpec<'_>) -> Result<GrantState, Error> {
        let made = self.cloud.resolve(spec)?;
        self.cloud.state(&made, spec).await
    }

    async fn list_managed(&self) -> Result<Vec<String>, Error> {
        Ok(self.ledger.uids().await?)
    }

    async fn holds(&self, request: &RequestRef) -> Result<bool, Error> {
        Ok(self.ledger.holds(&request.uid).await?)
    }

    async fn activity(
        &self,
        lookup: &ActivityLookup,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Option<ActivityLog>, Error> {
        if super::target_of(lookup.source) != Some(C::TARGET) {
            return Ok(None);
        }
        self.cloud.activity(lookup, from, to).await
    }
}
