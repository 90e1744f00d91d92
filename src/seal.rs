//! Seals: an HMAC-SHA256 the operator puts on what only it and its admission webhook write
//! (decision records, the grant window in status), with a key kept in a Secret only the operator
//! reads. A record or a status written by anyone else, even with the webhook down or its
//! configuration deleted, carries no valid seal, and never creates or extends a grant.

use std::collections::BTreeMap;

use k8s_openapi::{ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use ring::{
    hmac,
    rand::{SecureRandom, SystemRandom},
};
use tracing::info;

use crate::{
    crd::v1alpha1::{Approval, Decision},
    provider::{MANAGED_BY, MANAGED_BY_LABEL},
};

/// The Secret data key holding the sealing key.
const KEY_DATA: &str = "key";
/// Bytes of a new key.
const KEY_LENGTH: usize = 32;

/// Why the sealing key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed.
    #[error("failed to {action} the sealing key Secret {namespace}/{name}")]
    Api {
        /// What was being done.
        action: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: Box<kube::Error>,
    },
    /// The Secret holds no usable key.
    #[error(
        "the sealing key Secret {namespace}/{name} holds no key of at least {KEY_LENGTH} bytes under {KEY_DATA:?}"
    )]
    NoKey {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The system's random source failed.
    #[error("failed to make a random sealing key")]
    Random,
}

/// Seals and checks seals with one key.
#[derive(Clone)]
pub struct Sealer {
    key: hmac::Key,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        formatter.write_str("Sealer")
    }
}

impl Sealer {
    /// A sealer with this key.
    pub fn new(key: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// The key in `namespace/name`, made (random, 32 bytes) when the Secret does not exist.
    /// Every replica reads the same Secret; a replica that loses the race to create it reads
    /// the winner's.
    pub async fn load_or_create(
        client: &Client,
        namespace: &str,
        name: &str,
    ) -> Result<Self, Error> {
        let api = Api::<Secret>::namespaced(client.clone(), namespace);
        let failed = |action| {
            move |source| Error::Api {
                action,
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source: Box::new(source),
            }
        };
        if let Some(secret) = api.get_opt(name).await.map_err(failed("read"))? {
            return Self::from_secret(&secret, namespace, name);
        }
        let mut key = vec![0u8; KEY_LENGTH];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| Error::Random)?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY_LABEL.to_owned(),
                    MANAGED_BY.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(KEY_DATA.to_owned(), ByteString(key))])),
            type_: Some("Opaque".into()),
            ..Secret::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(created) => {
                info!(%namespace, %name, "made the sealing key");
                Self::from_secret(&created, namespace, name)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let secret = api.get(name).await.map_err(failed("read"))?;
                Self::from_secret(&secret, namespace, name)
            }
            Err(error) => Err(failed("create")(error)),
        }
    }

    fn from_secret(secret: &Secret, namespace: &str, name: &str) -> Result<Self, Error> {
        match secret.data.as_ref().and_then(|data| data.get(KEY_DATA)) {
            Some(key) if key.0.len() >= KEY_LENGTH => Ok(Self::new(&key.0)),
            _ => Err(Error::NoKey {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }),
        }
    }

    /// The seal of `parts`.
    fn seal<S: AsRef<str>>(&self, parts: &[S]) -> String {
        hex(hmac::sign(&self.key, &message(parts)).as_ref())
    }

    /// Whether `seal` is the seal of `parts` (compared in constant time).
    fn verify<S: AsRef<str>>(&self, parts: &[S], seal: &str) -> bool {
        unhex(seal).is_some_and(|tag| hmac::verify(&self.key, &message(parts), &tag).is_ok())
    }

    /// The seal of a decision record on the request with this UID: who, with which groups,
    /// what, when and with which comment.
    pub fn seal_decision(&self, uid: &str, record: &Approval) -> String {
        self.seal(&decision_parts(uid, record))
    }

    /// Whether a decision record carries the seal admission gave it on this request.
    pub fn verify_decision(&self, uid: &str, record: &Approval) -> bool {
        record
            .seal
            .as_deref()
            .is_some_and(|seal| self.verify(&decision_parts(uid, record), seal))
    }

    /// The seal of a grant-ledger entry: which provider, for which request, recording what.
    pub fn seal_ledger(&self, provider: &str, uid: &str, targets: &str) -> String {
        self.seal(&["ledger", provider, uid, targets])
    }

    /// Whether a grant-ledger entry carries the seal the operator gave it.
    pub fn verify_ledger(&self, provider: &str, uid: &str, targets: &str, seal: &str) -> bool {
        self.verify(&["ledger", provider, uid, targets], seal)
    }

    /// The seal of an audit record of the request with this UID, at this ordinal.
    pub fn seal_audit(&self, uid: &str, ordinal: u64, record: &str) -> String {
        self.seal(&["audit", uid, &ordinal.to_string(), record])
    }

    /// Whether an audit record carries the operator's seal.
    pub fn verify_audit(&self, uid: &str, ordinal: u64, record: &str, seal: &str) -> bool {
        self.verify(&["audit", uid, &ordinal.to_string(), record], seal)
    }

    /// The seal of a grant window on the request with this UID.
    pub fn seal_window(&self, uid: &str, granted_at: &Time, expires_at: &Time) -> String {
        let (granted_at, expires_at) = (seconds(granted_at), seconds(expires_at));
        self.seal(&["window", uid, &granted_at, &expires_at])
    }

    /// Whether a grant window carries the operator's seal.
    pub fn verify_window(
        &self,
        uid: &str,
        granted_at: &Time,
        expires_at: &Time,
        seal: Option<&str>,
    ) -> bool {
        let Some(seal) = seal else {
            return false;
        };
        let (granted_at, expires_at) = (seconds(granted_at), seconds(expires_at));
        self.verify(&["window", uid, &granted_at, &expires_at], seal)
    }
}

/// What is sealed: each part length-prefixed, so that no two lists of parts read alike.
fn message<S: AsRef<str>>(parts: &[S]) -> Vec<u8> {
    let mut message = Vec::new();
    for part in parts {
        let part = part.as_ref().as_bytes();
        message.extend_from_slice(&(part.len() as u64).to_be_bytes());
        message.extend_from_slice(part);
    }
    message
}

/// A time as stored: metav1.Time keeps whole seconds.
fn seconds(time: &Time) -> String {
    time.0.as_second().to_string()
}

fn decision_parts(uid: &str, record: &Approval) -> Vec<String> {
    let decision = match record.decision {
        Decision::Approved => "Approved",
        Decision::Denied => "Denied",
    };
    let mut parts = vec![
        "decision".to_owned(),
        uid.to_owned(),
        record.user.clone(),
        decision.to_owned(),
        // Whole seconds: what the record keeps once stored (metav1.Time).
        record.time.0.as_second().to_string(),
        record.comment.clone().unwrap_or_default(),
    ];
    parts.extend(record.groups.iter().cloned());
    parts
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::at;

    fn record(user: &str) -> Approval {
        Approval {
            user: user.into(),
            groups: vec!["approvers".into()],
            decision: Decision::Approved,
            time: Time(at("2026-01-01T00:01:00Z")),
            comment: Some("ok".into()),
            seal: None,
        }
    }

    #[test]
    fn a_sealed_decision_verifies_and_any_change_breaks_it() {
        let sealer = Sealer::new(b"0123456789abcdef0123456789abcdef");
        let mut sealed = record("bob");
        sealed.seal = Some(sealer.seal_decision("uid-1", &sealed));
        assert!(sealer.verify_decision("uid-1", &sealed));
        // Another request, another approver, another decision, time, comment or group list.
        assert!(!sealer.verify_decision("uid-2", &sealed));
        for change in [
            |r: &mut Approval| r.user = "mallory".into(),
            |r: &mut Approval| r.decision = Decision::Denied,
            |r: &mut Approval| r.time = Time(at("2026-01-02T00:00:00Z")),
            |r: &mut Approval| r.comment = None,
            |r: &mut Approval| r.groups.push("system:masters".into()),
        ] {
            let mut forged = sealed.clone();
            change(&mut forged);
            assert!(!sealer.verify_decision("uid-1", &forged), "{forged:?}");
        }
        // Unsealed, or sealed with another key.
        assert!(!sealer.verify_decision("uid-1", &record("bob")));
        let other = Sealer::new(b"another key, 32 bytes long......");
        assert!(!other.verify_decision("uid-1", &sealed));
        let mut garbage = sealed.clone();
        garbage.seal = Some("zz".into());
        assert!(!sealer.verify_decision("uid-1", &garbage));
    }

    #[test]
    fn a_seal_survives_the_round_trip_through_the_api_server() {
        // Admission seals a record stamped with the current time, sub-second; stored, the time
        // keeps whole seconds.
        let sealer = Sealer::new(b"0123456789abcdef0123456789abcdef");
        let mut fresh = record("bob");
        fresh.time = Time(at("2026-01-01T00:01:00.123456789Z"));
        fresh.seal = Some(sealer.seal_decision("uid-1", &fresh));
        let stored: Approval =
            serde_json::from_value(serde_json::to_value(&fresh).unwrap()).unwrap();
        assert_ne!(stored.time, fresh.time);
        assert!(sealer.verify_decision("uid-1", &stored));
    }

    #[test]
    fn a_window_verifies_only_as_sealed() {
        let sealer = Sealer::new(b"0123456789abcdef0123456789abcdef");
        let (granted, expires) = (
            Time(at("2026-01-01T00:00:00Z")),
            Time(at("2026-01-01T01:00:00Z")),
        );
        let seal = sealer.seal_window("uid-1", &granted, &expires);
        assert!(sealer.verify_window("uid-1", &granted, &expires, Some(&seal)));
        let later = Time(at("2026-01-01T09:00:00Z"));
        assert!(!sealer.verify_window("uid-1", &granted, &later, Some(&seal)));
        assert!(!sealer.verify_window("uid-2", &granted, &expires, Some(&seal)));
        assert!(!sealer.verify_window("uid-1", &granted, &expires, None));
        assert_eq!(format!("{sealer:?}"), "Sealer");
    }
}
