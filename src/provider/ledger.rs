//! The grant ledger: what a cloud provider granted for each request, kept in a ConfigMap in the
//! operator's namespace and written before the cloud call. Clouds cannot be searched for "what
//! did the operator grant for request X" (a managed-policy attachment carries no label), so
//! revocation, the orphan sweep and crash recovery read the ledger instead; a policy edited or
//! deleted after the grant does not change what is revoked. Every entry carries the operator's
//! seal over its provider, request UID and content: an entry edited or forged by anyone else
//! is never acted on (the sweep skips it, a revoke that needs it fails loudly). An owner
//! reference to the request is not possible: the request lives in another namespace.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, ObjectMeta, PostParams},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use tracing::warn;

use crate::{seal::Sealer, target::Target};

use super::{
    EXPIRES_AT_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL, REQUEST_ANNOTATION, REQUEST_UID_LABEL,
    RequestRef,
};

/// The label naming the provider a ledger entry belongs to.
pub const PROVIDER_LABEL: &str = "jit.dev/provider";
/// The data key holding the JSON list of targets.
const TARGETS_KEY: &str = "targets";
/// The data key holding the operator's seal over the entry.
const SEAL_KEY: &str = "seal";

/// Why the ledger could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed.
    #[error("failed to {action} grant ledger entry {name}")]
    Api {
        /// What was being done.
        action: &'static str,
        /// The ConfigMap.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// An entry was not written by the operator as it is (its seal or labels do not match);
    /// it is left for a person to look at, and never acted on.
    #[error(
        "grant ledger entry {name} was not written by the operator as it is ({reason}); it is not used"
    )]
    Tampered {
        /// The ConfigMap.
        name: String,
        /// What does not match.
        reason: &'static str,
    },
    /// The request's entry records a grant in another target: one request holds one grant,
    /// and that one is revoked before another is recorded.
    #[error("grant ledger entry {name} records a grant in {held_in}, not in {wanted_in}")]
    HeldElsewhere {
        /// The ConfigMap.
        name: String,
        /// The target the entry records.
        held_in: String,
        /// The target asked to record.
        wanted_in: String,
    },
    /// An entry does not parse; it is left for a person to look at.
    #[error("grant ledger entry {name} does not parse: {reason}")]
    Corrupt {
        /// The ConfigMap.
        name: String,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// Whether trying again may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Api { source, .. } => !matches!(
                source,
                kube::Error::Api(status) if matches!(status.code, 400 | 403 | 422)
            ),
            Self::Corrupt { .. } | Self::Tampered { .. } | Self::HeldElsewhere { .. } => false,
        }
    }
}

/// One provider's entries.
#[derive(Clone)]
pub struct Ledger {
    api: Api<ConfigMap>,
    target: Target,
    sealer: Sealer,
}

impl Ledger {
    /// The ledger of `target` in `namespace`, its entries sealed by `sealer`.
    pub fn new(client: Client, namespace: &str, target: Target, sealer: Sealer) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            target,
            sealer,
        }
    }

    /// The targets of an entry read for `uid`, once its labels and seal show the operator
    /// wrote it as it is; `None` for an entry another provider's ledger wrote as it is (the
    /// entry is the request's, whichever target holds its grant: with several providers
    /// running, each is asked on revoke, and another's entry is nothing held here).
    fn checked(
        &self,
        uid: &str,
        name: &str,
        entry: &ConfigMap,
    ) -> Result<Option<Vec<Value>>, Error> {
        let tampered = |reason| Error::Tampered {
            name: name.to_owned(),
            reason,
        };
        let labels = entry.metadata.labels.as_ref();
        let label = |key: &str| {
            labels
                .and_then(|labels| labels.get(key))
                .map(String::as_str)
        };
        if label(REQUEST_UID_LABEL) != Some(uid) {
            return Err(tampered("its labels name another request or provider"));
        }
        // The seal covers the provider: a label changed to another provider's name does not
        // verify as that provider's entry.
        let Some(provider) = label(PROVIDER_LABEL).and_then(Target::parse) else {
            return Err(tampered("its labels name another request or provider"));
        };
        let data = entry.data.as_ref();
        let text = data.and_then(|data| data.get(TARGETS_KEY));
        let seal = data.and_then(|data| data.get(SEAL_KEY));
        match (text, seal) {
            (Some(text), Some(seal))
                if self
                    .sealer
                    .verify_ledger(provider.as_str(), uid, text, seal) => {}
            _ => return Err(tampered("its seal does not match its content")),
        }
        if provider != self.target {
            return Ok(None);
        }
        Self::parse(name, entry).map(Some)
    }

    /// Puts `targets` into the entry, with the seal over them.
    fn fill(&self, uid: &str, entry: &mut ConfigMap, targets: &[Value]) {
        let text = serde_json::to_string(targets).unwrap_or_default();
        let seal = self.sealer.seal_ledger(self.target.as_str(), uid, &text);
        let data = entry.data.get_or_insert_with(BTreeMap::new);
        data.insert(TARGETS_KEY.into(), text);
        data.insert(SEAL_KEY.into(), seal);
    }

    fn name(uid: &str) -> String {
        format!("jit-grant-{uid}")
    }

    async fn entry(&self, uid: &str) -> Result<Option<ConfigMap>, Error> {
        let name = Self::name(uid);
        self.api.get_opt(&name).await.map_err(|source| Error::Api {
            action: "read",
            name,
            source,
        })
    }

    fn parse(name: &str, entry: &ConfigMap) -> Result<Vec<Value>, Error> {
        let Some(text) = entry.data.as_ref().and_then(|data| data.get(TARGETS_KEY)) else {
            return Ok(Vec::new());
        };
        serde_json::from_str(text).map_err(|error| Error::Corrupt {
            name: name.to_owned(),
            reason: error.to_string(),
        })
    }

    fn to_value<T: Serialize>(name: &str, target: &T) -> Result<Value, Error> {
        serde_json::to_value(target).map_err(|error| Error::Corrupt {
            name: name.to_owned(),
            reason: error.to_string(),
        })
    }

    /// Whether the request with this UID has an entry the operator wrote (one edited by
    /// someone else is no record of a grant, as in `uids`).
    pub async fn holds(&self, uid: &str) -> Result<bool, Error> {
        let name = Self::name(uid);
        Ok(self
            .entry(uid)
            .await?
            .is_some_and(|entry| matches!(self.checked(uid, &name, &entry), Ok(Some(_)))))
    }

    /// What is recorded for the request with this UID; empty when nothing is.
    pub async fn targets<T: DeserializeOwned>(&self, uid: &str) -> Result<Vec<T>, Error> {
        let name = Self::name(uid);
        let Some(entry) = self.entry(uid).await? else {
            return Ok(Vec::new());
        };
        let Some(recorded) = self.checked(uid, &name, &entry)? else {
            return Ok(Vec::new());
        };
        recorded
            .into_iter()
            .map(|value| {
                serde_json::from_value(value).map_err(|error| Error::Corrupt {
                    name: name.clone(),
                    reason: error.to_string(),
                })
            })
            .collect()
    }

    /// Records `target` for the request, before it is granted.
    pub async fn record<T: Serialize>(
        &self,
        request: &RequestRef,
        target: &T,
        expires_at: jiff::Timestamp,
    ) -> Result<(), Error> {
        let name = Self::name(&request.uid);
        let wanted = Self::to_value(&name, target)?;
        let existing = self.entry(&request.uid).await?;
        let mut targets = match &existing {
            Some(entry) => {
                self.checked(&request.uid, &name, entry)?
                    .ok_or_else(|| Error::HeldElsewhere {
                        name: name.clone(),
                        held_in: entry
                            .metadata
                            .labels
                            .as_ref()
                            .and_then(|labels| labels.get(PROVIDER_LABEL))
                            .cloned()
                            .unwrap_or_default(),
                        wanted_in: self.target.as_str().to_owned(),
                    })?
            }
            None => Vec::new(),
        };
        if targets.contains(&wanted) {
            return Ok(());
        }
        targets.push(wanted);
        let mut entry = existing.unwrap_or_else(|| self.new_entry(request, &name));
        entry
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(EXPIRES_AT_ANNOTATION.into(), expires_at.to_string());
        self.fill(&request.uid, &mut entry, &targets);
        // Replace carries the resourceVersion read above: a concurrent writer makes this fail
        // and the reconcile retry, instead of one record overwriting another.
        let written = if entry.metadata.resource_version.is_some() {
            self.api
                .replace(&name, &PostParams::default(), &entry)
                .await
        } else {
            self.api.create(&PostParams::default(), &entry).await
        };
        written.map(|_| ()).map_err(|source| Error::Api {
            action: "write",
            name,
            source,
        })
    }

    fn new_entry(&self, request: &RequestRef, name: &str) -> ConfigMap {
        let mut annotations = BTreeMap::new();
        if !request.namespace.is_empty() {
            annotations.insert(
                REQUEST_ANNOTATION.to_owned(),
                format!("{}/{}", request.namespace, request.name),
            );
        }
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(BTreeMap::from([
                    (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                    (REQUEST_UID_LABEL.to_owned(), request.uid.clone()),
                    (PROVIDER_LABEL.to_owned(), self.target.as_str().to_owned()),
                ])),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    /// Keeps only `target` in the request's entry, once the others are revoked.
    pub async fn keep_only<T: Serialize>(
        &self,
        request: &RequestRef,
        target: &T,
    ) -> Result<(), Error> {
        let name = Self::name(&request.uid);
        let wanted = Self::to_value(&name, target)?;
        let Some(mut entry) = self.entry(&request.uid).await? else {
            return Ok(());
        };
        match self.checked(&request.uid, &name, &entry)? {
            // Another provider's: nothing of this one's to keep.
            None => return Ok(()),
            Some(recorded) if recorded == [wanted.clone()] => return Ok(()),
            Some(_) => {}
        }
        self.fill(&request.uid, &mut entry, &[wanted]);
        self.api
            .replace(&name, &PostParams::default(), &entry)
            .await
            .map(|_| ())
            .map_err(|source| Error::Api {
                action: "write",
                name,
                source,
            })
    }

    /// Forgets everything recorded for the request, once it is all revoked.
    pub async fn clear(&self, uid: &str) -> Result<(), Error> {
        let name = Self::name(uid);
        match self.api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(source) => Err(Error::Api {
                action: "delete",
                name,
                source,
            }),
        }
    }

    /// The UIDs of every request with an entry.
    pub async fn uids(&self) -> Result<Vec<String>, Error> {
        let selector = format!(
            "{MANAGED_BY_LABEL}={MANAGED_BY},{PROVIDER_LABEL}={}",
            self.target.as_str()
        );
        let entries = self
            .api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|source| Error::Api {
                action: "list",
                name: "*".into(),
                source,
            })?;
        // Only entries the operator wrote: a forged one must not make the sweep detach
        // access the operator never granted, with the operator's own cloud rights.
        Ok(entries
            .into_iter()
            .filter_map(|entry| {
                let name = entry.metadata.name.clone().unwrap_or_default();
                let uid = name.strip_prefix("jit-grant-")?.to_owned();
                match self.checked(&uid, &name, &entry) {
                    Ok(Some(_)) => Some(uid),
                    Ok(None) => None,
                    Err(error) => {
                        warn!(error = %error, "ignoring a grant ledger entry in the sweep");
                        None
                    }
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A ledger whose client is never called: `checked` reads only the entry it is given.
    fn ledger(target: Target) -> Ledger {
        let (service, _handle) = tower_test::mock::pair::<
            hyper::Request<kube::client::Body>,
            hyper::Response<kube::client::Body>,
        >();
        let client = Client::new(service, "default");
        Ledger::new(client, "jit-system", target, Sealer::new(b"k"))
    }

    fn request() -> RequestRef {
        RequestRef {
            uid: "u1".into(),
            namespace: "team".into(),
            name: "fix".into(),
        }
    }

    fn entry_of(ledger: &Ledger) -> ConfigMap {
        let mut entry = ledger.new_entry(&request(), "jit-grant-u1");
        ledger.fill(
            "u1",
            &mut entry,
            &[serde_json::json!({"resource": "projects/p"})],
        );
        entry
    }

    #[tokio::test]
    async fn another_providers_entry_is_nothing_held_here_but_a_relabelled_one_is_tampered() {
        let (gcp, aws) = (ledger(Target::Gcp), ledger(Target::Aws));
        let entry = entry_of(&gcp);
        assert_eq!(
            gcp.checked("u1", "jit-grant-u1", &entry)
                .unwrap()
                .unwrap()
                .len(),
            1
        );
        // With several providers running, each is asked on revoke: the Google grant's entry
        // is nothing the AWS provider holds, and no reason for its revoke to fail.
        assert_eq!(aws.checked("u1", "jit-grant-u1", &entry).unwrap(), None);
        // The provider label changed by hand: the seal says which provider wrote it.
        let mut relabelled = entry.clone();
        relabelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(PROVIDER_LABEL.into(), "aws".into());
        assert!(matches!(
            aws.checked("u1", "jit-grant-u1", &relabelled),
            Err(Error::Tampered { .. })
        ));
        assert!(matches!(
            gcp.checked("u1", "jit-grant-u1", &relabelled),
            Err(Error::Tampered { .. })
        ));
        // Another request's entry.
        assert!(matches!(
            gcp.checked("u2", "jit-grant-u1", &entry),
            Err(Error::Tampered { .. })
        ));
    }
}
