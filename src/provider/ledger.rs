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
            Self::Corrupt { .. } | Self::Tampered { .. } => false,
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
    /// wrote it as it is.
    fn checked(&self, uid: &str, name: &str, entry: &ConfigMap) -> Result<Vec<Value>, Error> {
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
        if label(REQUEST_UID_LABEL) != Some(uid)
            || label(PROVIDER_LABEL) != Some(self.target.as_str())
        {
            return Err(tampered("its labels name another request or provider"));
        }
        let data = entry.data.as_ref();
        let text = data.and_then(|data| data.get(TARGETS_KEY));
        let seal = data.and_then(|data| data.get(SEAL_KEY));
        match (text, seal) {
            (Some(text), Some(seal))
                if self
                    .sealer
                    .verify_ledger(self.target.as_str(), uid, text, seal) => {}
            _ => return Err(tampered("its seal does not match its content")),
        }
        Self::parse(name, entry)
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
            .is_some_and(|entry| self.checked(uid, &name, &entry).is_ok()))
    }

    /// What is recorded for the request with this UID; empty when nothing is.
    pub async fn targets<T: DeserializeOwned>(&self, uid: &str) -> Result<Vec<T>, Error> {
        let name = Self::name(uid);
        let Some(entry) = self.entry(uid).await? else {
            return Ok(Vec::new());
        };
        self.checked(uid, &name, &entry)?
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
            Some(entry) => self.checked(&request.uid, &name, entry)?,
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
        if self.checked(&request.uid, &name, &entry)? == [wanted.clone()] {
            return Ok(());
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
                    Ok(_) => Some(uid),
                    Err(error) => {
                        warn!(error = %error, "ignoring a grant ledger entry in the sweep");
                        None
                    }
                }
            })
            .collect())
    }
}
