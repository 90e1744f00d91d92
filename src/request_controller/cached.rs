//! What the controller's cache keeps of a request: only what is read from the cache (whether
//! the request is settled, its policy, role, subject and grant time for approvers' history, its
//! end for the retention, its name and UID for the audit deliverer). Reconciles read each
//! request fresh.
//!
//! A whole request was the cache's largest part (about 5 KB each, 55 MB at 10,000); a trimmed
//! `AccessRequest` still took about 1.2 KB inline and in its strings, most of it empty fields;
//! this record is about half that, and a requester padding a request with labels, annotations,
//! a long reason or many groups costs the operator nothing to hold.

use std::borrow::Cow;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, core::DeserializeGuard};
use serde::Deserialize;

use crate::crd::v1alpha1::{AccessRequest, FINALIZER, Phase};

/// A request as the controller's cache holds it. It deserializes from a request's JSON (the
/// controller's watch hands it whole requests, and makes these from them).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(from = "DeserializeGuard<AccessRequest>")]
pub(crate) struct CachedRequest {
    /// Name, namespace, UID, resourceVersion, creation and deletion times, finalizers.
    metadata: ObjectMeta,
    /// Why the request does not parse, if it does not: such a request is never acted on.
    pub invalid: Option<String>,
    pub policy: String,
    pub role: String,
    /// The subject, or the requester for a request of one's own.
    pub subject: Option<String>,
    pub phase: Option<Phase>,
    pub granted_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    /// When it ended, once its phase is final ([`crate::retention::ended_at`]).
    pub ended_at: Option<Timestamp>,
}

impl CachedRequest {
    /// What the cache keeps of `guarded`.
    pub fn of(guarded: &DeserializeGuard<AccessRequest>) -> Self {
        let request = match &guarded.0 {
            Ok(request) => request,
            Err(invalid) => {
                return Self {
                    metadata: kept_metadata(&invalid.metadata),
                    invalid: Some(invalid.error.clone()),
                    ..Self::default()
                };
            }
        };
        let status = request.status.as_ref();
        Self {
            metadata: kept_metadata(&request.metadata),
            invalid: None,
            policy: request.spec.policy.clone(),
            role: request.spec.role.clone(),
            subject: request.spec.subject_name().map(str::to_owned),
            phase: status.and_then(|status| status.phase),
            granted_at: request.status_time(|status| status.granted_at.as_ref()),
            expires_at: request.status_time(|status| status.expires_at.as_ref()),
            ended_at: crate::retention::ended_at(request),
        }
    }

    /// Its phase, if it has nothing left to do: ended (a phase never left), its finalizer
    /// released (which happens only once its grant is gone and its audit events are
    /// recorded) and not being deleted. Such a request is not read again: the look the watch
    /// reports after its last writes, a resync and a restart cost no API call. The cache can
    /// only be behind, and behind "settled" there is nothing but "settled".
    pub fn settled(&self) -> Option<Phase> {
        let phase = self.phase?;
        let released = !self
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|finalizer| finalizer == FINALIZER);
        (phase.is_final() && released && self.metadata.deletion_timestamp.is_none())
            .then_some(phase)
    }
}

impl From<DeserializeGuard<AccessRequest>> for CachedRequest {
    fn from(guarded: DeserializeGuard<AccessRequest>) -> Self {
        Self::of(&guarded)
    }
}

/// The metadata the cache reads, and the reflector's keys need.
fn kept_metadata(metadata: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: metadata.name.clone(),
        namespace: metadata.namespace.clone(),
        uid: metadata.uid.clone(),
        resource_version: metadata.resource_version.clone(),
        creation_timestamp: metadata.creation_timestamp.clone(),
        deletion_timestamp: metadata.deletion_timestamp.clone(),
        finalizers: metadata.finalizers.clone(),
        ..ObjectMeta::default()
    }
}

/// The same resource as [`AccessRequest`]: object references and the reflector's keys are
/// the request's.
impl Resource for CachedRequest {
    type DynamicType = ();
    type Scope = <AccessRequest as Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        AccessRequest::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        AccessRequest::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        AccessRequest::version(dt)
    }

    fn api_version(dt: &()) -> Cow<'_, str> {
        AccessRequest::api_version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        AccessRequest::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}
