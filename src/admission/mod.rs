//! Admission for AccessRequests: identity comes only from the API server's authentication.
//! `mutate` stamps the requester and turns `jit.dev/approve|deny|revoke` into verified
//! records; `validate` refuses everything a user may not do. Both are pure; the server in
//! `server` feeds them. Requests by the operator itself never reach here (matchConditions).

pub mod register;
pub mod server;

use std::collections::BTreeMap;

use jiff::Timestamp;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, jsonptr::PointerBuf};
use k8s_openapi::{api::authentication::v1::UserInfo, apimachinery::pkg::apis::meta::v1::Time};
use kube::core::admission::Operation;

use crate::{
    crd::v1alpha1::{
        AccessPolicy, AccessRequest, Approval, Decision, FINALIZER, Requester, Revocation,
        annotations,
    },
    policy::{self, Refusal},
    seal::Sealer,
};

/// Why admission refuses; the message reaches the person who ran `kubectl`.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Denial {
    /// The policy refuses.
    #[error(transparent)]
    Policy(#[from] Refusal),
    /// An idle timeout shorter than session activity can tell.
    #[error(
        "spec.idleTimeout is {idle}; it must be at least 30s, since activity reaches a request up to 10s late (more with the API server's audit batch wait)"
    )]
    IdleTimeoutTooShort {
        /// As written.
        idle: String,
    },
    /// A notification route names a channel that does not exist.
    #[error(
        "spec.notifications.routes names NotificationChannel {channel}, which does not exist; create it first or fix the name"
    )]
    UnknownChannel {
        /// The name as written.
        channel: String,
    },
    /// Whether a channel exists could not be learned.
    #[error("could not check NotificationChannel {channel}: {message}")]
    ChannelUnchecked {
        /// The name as written.
        channel: String,
        /// Why.
        message: String,
    },
    /// Someone tried to write the requester.
    #[error(
        "spec.requester is written by admission from your credentials: you are {actual}, not {claimed}"
    )]
    RequesterMismatch {
        /// Who they are.
        actual: String,
        /// Who they claimed to be.
        claimed: String,
    },
    /// A create without a stamped requester (the mutating webhook did not run).
    #[error("spec.requester is missing; the mutating webhook must stamp it")]
    RequesterMissing,
    /// Someone other than the operator wrote status.
    #[error("the status of an AccessRequest is written only by the operator")]
    StatusWrite,
    /// Someone other than the operator removed the finalizer.
    #[error(
        "only the operator removes the finalizer {FINALIZER}; delete the request or annotate it with jit.dev/revoke to end it"
    )]
    FinalizerRemoved,
    /// The spec changed.
    #[error("spec is immutable; create a new AccessRequest to ask for something else")]
    SpecChanged,
    /// Decision records were written other than by admission from an action annotation.
    #[error(
        "the decision records in {} are written only by admission; approve or deny with the jit.dev/approve or jit.dev/deny annotation",
        annotations::DECISIONS
    )]
    DecisionsTampered,
    /// The revocation record was edited.
    #[error(
        "the revocation record in {} is written only from jit.dev/revoke, once",
        annotations::REVOCATION
    )]
    RevocationTampered,
    /// A create carries decisions or a revocation.
    #[error(
        "a new request cannot carry approvals, denials or a revocation; approvers annotate it after it is created"
    )]
    DecisionsOnCreate,
    /// Both approve and deny at once.
    #[error("annotate with jit.dev/approve or jit.dev/deny, not both")]
    ApproveAndDeny,
    /// An action annotation was left unprocessed.
    #[error("annotation {0} was not processed by the mutating webhook")]
    Unprocessed(&'static str),
    /// A record annotation does not parse.
    #[error("annotation {0} is not valid")]
    Malformed(&'static str),
    /// The policy could not be read; admission fails closed.
    #[error("could not read policy {0} to check this request; try again")]
    PolicyUnreadable(String),
    /// The request is larger than any honest request needs to be.
    #[error(
        "the request is {size} bytes without its status and decision records; an AccessRequest may be at most {limit} bytes (labels, annotations and spec together)"
    )]
    TooLarge {
        /// Its size.
        size: usize,
        /// The most allowed.
        limit: usize,
    },
    /// A policy's auto-approve expression is refused: it does not compile, or it could cost
    /// more than the operator lets an expression cost.
    #[error(transparent)]
    AutoApprove(#[from] policy::auto_approve::Error),
    /// A delete review came without the object being deleted.
    #[error("the delete review carries no object to check; refusing")]
    DeleteWithoutObject,
    /// Someone with no part in the request tried to delete it.
    #[error(
        "{user} may not delete this request: only its requester, its subject, an approver of policy {policy} or an administrator may; to end access early, annotate it with jit.dev/revoke"
    )]
    DeleteNotAllowed {
        /// Who tried.
        user: String,
        /// The request's policy.
        policy: String,
    },
}

/// The largest AccessRequest admission lets in, measured without managedFields, status and the
/// decision and revocation records (which only admission and the operator write, and which the
/// API server bounds with all annotations at 256 KiB). Anything bigger would only cost the
/// operator memory and risk its status writes.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// Who may delete any request besides its parties and approvers: administrators the chart
/// names, and the Kubernetes controllers that delete objects for a namespace or an owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Administrators {
    /// Usernames.
    pub users: Vec<String>,
    /// Groups.
    pub groups: Vec<String>,
}

/// The controllers that must always be able to delete a request: the namespace controller
/// (deleting a namespace) and the garbage collector (an owner deleted).
const SYSTEM_DELETERS: [&str; 2] = [
    "system:serviceaccount:kube-system:namespace-controller",
    "system:serviceaccount:kube-system:generic-garbage-collector",
];

impl Default for Administrators {
    fn default() -> Self {
        Self {
            users: Vec::new(),
            groups: vec!["system:masters".into()],
        }
    }
}

impl Administrators {
    fn admit(&self, user: &Requester) -> bool {
        SYSTEM_DELETERS.contains(&user.username.as_str())
            || self.users.contains(&user.username)
            || user.groups.iter().any(|group| self.groups.contains(group))
    }
}

/// The size admission measures: the object as stored, without what users cannot write or what
/// admission writes itself.
pub fn measured_size(object: &AccessRequest) -> usize {
    let mut object = object.clone();
    object.metadata.managed_fields = None;
    object.status = None;
    if let Some(annotations) = object.metadata.annotations.as_mut() {
        annotations.remove(annotations::DECISIONS);
        annotations.remove(annotations::REVOCATION);
    }
    if object
        .metadata
        .annotations
        .as_ref()
        .is_some_and(BTreeMap::is_empty)
    {
        object.metadata.annotations = None;
    }
    serde_json::to_vec(&object).map_or(usize::MAX, |bytes| bytes.len())
}

/// Whether a create or update leaves the request within the size limit. An update of a request
/// that is already too large (made before the limit, or with the webhook down) is let through
/// when it does not grow it, so that approvers can always deny or revoke it.
fn check_size(object: &AccessRequest, old: Option<&AccessRequest>) -> Result<(), Denial> {
    let size = measured_size(object);
    let grows = old.is_none_or(|old| size > measured_size(old));
    if size > MAX_REQUEST_BYTES && grows {
        return Err(Denial::TooLarge {
            size,
            limit: MAX_REQUEST_BYTES,
        });
    }
    Ok(())
}

/// Whether a policy may be written: its auto-approve expression must compile and stay within
/// the cost limit (it runs for every pending request, and is checked again before each run).
pub fn validate_policy(policy: &AccessPolicy) -> Result<(), Denial> {
    if let Some(idle) = &policy.spec.idle_timeout
        && idle
            .to_std()
            .map_or(true, |idle| idle < crate::policy::MIN_IDLE_TIMEOUT)
    {
        return Err(Denial::IdleTimeoutTooShort {
            idle: idle.as_str().to_owned(),
        });
    }
    if let Some(auto_approve) = &policy.spec.auto_approve {
        policy::auto_approve::check(&auto_approve.expression)?;
    }
    Ok(())
}

/// Whether `user` may delete the request `old`: its requester, its subject, an approver of its
/// policy, or an administrator. Deleting revokes, so a stranger must not be able to end
/// someone else's access.
pub fn validate_delete(
    old: &AccessRequest,
    user: &UserInfo,
    policy: Option<&AccessPolicy>,
    administrators: &Administrators,
) -> Result<(), Denial> {
    let me = requester_from(user);
    if administrators.admit(&me)
        || policy::check_revoker(policy, &old.spec, &me.username, &me.groups).is_ok()
    {
        return Ok(());
    }
    Err(Denial::DeleteNotAllowed {
        user: me.username,
        policy: old.spec.policy.clone(),
    })
}

/// Who is asking, as the API server authenticated them.
pub fn requester_from(user: &UserInfo) -> Requester {
    Requester {
        username: user.username.clone().unwrap_or_default(),
        uid: user.uid.clone().filter(|uid| !uid.is_empty()),
        groups: user.groups.clone().unwrap_or_default(),
        extra: user
            .extra
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
    }
}

/// The admission request as `mutate` and `validate` see it.
#[derive(Clone, Debug)]
pub struct Review<'a> {
    /// CREATE or UPDATE.
    pub operation: &'a Operation,
    /// `Some("status")` for the status subresource.
    pub sub_resource: Option<&'a str>,
    /// The authenticated user.
    pub user: &'a UserInfo,
    /// The object as it would be stored.
    pub object: Option<&'a AccessRequest>,
    /// The object as it is stored (UPDATE).
    pub old_object: Option<&'a AccessRequest>,
}

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(tokens: &[&str], value: serde_json::Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(tokens),
        value,
    })
}

fn remove(tokens: &[&str]) -> PatchOperation {
    PatchOperation::Remove(RemoveOperation {
        path: pointer(tokens),
    })
}

fn records_in(request: &AccessRequest) -> Result<Vec<Approval>, Denial> {
    match request
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::DECISIONS))
    {
        None => Ok(Vec::new()),
        Some(text) => {
            serde_json::from_str(text).map_err(|_| Denial::Malformed(annotations::DECISIONS))
        }
    }
}

fn revocation_in(request: &AccessRequest) -> Result<Option<Revocation>, Denial> {
    match request
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::REVOCATION))
    {
        None => Ok(None),
        Some(text) => serde_json::from_str(text)
            .map(Some)
            .map_err(|_| Denial::Malformed(annotations::REVOCATION)),
    }
}

fn annotation<'a>(request: &'a AccessRequest, key: &str) -> Option<&'a String> {
    request.metadata.annotations.as_ref()?.get(key)
}

fn comment(value: &str) -> Option<String> {
    Some(value.trim().to_owned()).filter(|comment| !comment.is_empty())
}

/// What the mutating webhook changes, as a JSON patch, plus warnings for the user. Decision
/// records it writes carry `sealer`'s seal over the record and the request's UID.
pub fn mutate(
    review: &Review<'_>,
    now: Timestamp,
    sealer: &Sealer,
) -> Result<(Patch, Vec<String>), Denial> {
    let mut operations = Vec::new();
    let mut warnings = Vec::new();
    let Some(object) = review.object else {
        return Ok((Patch(operations), warnings));
    };
    if review.sub_resource.is_some() {
        return Ok((Patch(operations), warnings));
    }
    let me = requester_from(review.user);
    match review.operation {
        Operation::Create => {
            match &object.spec.requester {
                Some(claimed) if *claimed != me => {
                    return Err(Denial::RequesterMismatch {
                        actual: me.username,
                        claimed: claimed.username.clone(),
                    });
                }
                Some(_) => {}
                None => operations.push(add(
                    &["spec", "requester"],
                    serde_json::to_value(&me).unwrap_or_default(),
                )),
            }
            if object.spec.subject.is_none() {
                operations.push(add(&["spec", "subject"], me.username.clone().into()));
            }
            // The finalizer from the start: one write fewer for the operator per request, and
            // a request is never without it (the operator still adds it to one created while
            // the webhook was not registered).
            match &object.metadata.finalizers {
                Some(finalizers) if finalizers.iter().any(|f| f == FINALIZER) => {}
                Some(_) => operations.push(add(&["metadata", "finalizers", "-"], FINALIZER.into())),
                None => operations.push(add(&["metadata", "finalizers"], vec![FINALIZER].into())),
            }
        }
        Operation::Update => {
            let Some(old) = review.old_object else {
                return Ok((Patch(operations), warnings));
            };
            // Records are written only here, from the action annotations: a user writing them
            // directly (even their own, with a made-up time) is refused before anything else.
            if annotation(object, annotations::DECISIONS) != annotation(old, annotations::DECISIONS)
            {
                return Err(Denial::DecisionsTampered);
            }
            if annotation(object, annotations::REVOCATION)
                != annotation(old, annotations::REVOCATION)
            {
                return Err(Denial::RevocationTampered);
            }
            // Re-applying the original manifest (kubectl apply, server-side apply) drops the
            // fields admission stamped; put them back so the re-apply is a no-op.
            if object.spec.requester.is_none()
                && let Some(requester) = &old.spec.requester
            {
                operations.push(add(
                    &["spec", "requester"],
                    serde_json::to_value(requester).unwrap_or_default(),
                ));
            }
            if object.spec.subject.is_none()
                && let Some(subject) = &old.spec.subject
            {
                operations.push(add(&["spec", "subject"], subject.clone().into()));
            }
            let uid = old.metadata.uid.as_deref().unwrap_or_default();
            decisions_from_annotations(object, uid, &me, now, sealer, &mut operations)?;
            revocation_from_annotation(object, old, &me, now, &mut operations, &mut warnings)?;
        }
        _ => {}
    }
    Ok((Patch(operations), warnings))
}

fn decisions_from_annotations(
    object: &AccessRequest,
    uid: &str,
    me: &Requester,
    now: Timestamp,
    sealer: &Sealer,
    operations: &mut Vec<PatchOperation>,
) -> Result<(), Denial> {
    let approve = annotation(object, annotations::APPROVE);
    let deny = annotation(object, annotations::DENY);
    let (decision, value, key) = match (approve, deny) {
        (Some(_), Some(_)) => return Err(Denial::ApproveAndDeny),
        (Some(value), None) => (Decision::Approved, value, annotations::APPROVE),
        (None, Some(value)) => (Decision::Denied, value, annotations::DENY),
        (None, None) => return Ok(()),
    };
    let mut records = records_in(object)?;
    let mut record = Approval {
        user: me.username.clone(),
        groups: me.groups.clone(),
        decision,
        time: Time(now),
        comment: comment(value),
        seal: None,
    };
    record.seal = Some(sealer.seal_decision(uid, &record));
    records.push(record);
    let text =
        serde_json::to_string(&records).map_err(|_| Denial::Malformed(annotations::DECISIONS))?;
    operations.push(remove(&["metadata", "annotations", key]));
    operations.push(add(
        &["metadata", "annotations", annotations::DECISIONS],
        text.into(),
    ));
    Ok(())
}

fn revocation_from_annotation(
    object: &AccessRequest,
    old: &AccessRequest,
    me: &Requester,
    now: Timestamp,
    operations: &mut Vec<PatchOperation>,
    warnings: &mut Vec<String>,
) -> Result<(), Denial> {
    let Some(value) = annotation(object, annotations::REVOKE) else {
        return Ok(());
    };
    operations.push(remove(&["metadata", "annotations", annotations::REVOKE]));
    let ended = old
        .status
        .as_ref()
        .and_then(|status| status.phase)
        .filter(|phase| phase.is_final());
    if let Some(phase) = ended {
        warnings.push(format!(
            "the request has already ended ({phase:?}); nothing to revoke"
        ));
        return Ok(());
    }
    if revocation_in(old)?.is_some() {
        warnings.push("the request is already being revoked".into());
        return Ok(());
    }
    let record = Revocation {
        user: me.username.clone(),
        time: Time(now),
        comment: comment(value),
    };
    let text =
        serde_json::to_string(&record).map_err(|_| Denial::Malformed(annotations::REVOCATION))?;
    operations.push(add(
        &["metadata", "annotations", annotations::REVOCATION],
        text.into(),
    ));
    Ok(())
}

/// Whether the validating webhook admits the change. `policy` is the request's policy read
/// fresh (`None`: it does not exist).
pub fn validate(review: &Review<'_>, policy: Option<&AccessPolicy>) -> Result<(), Denial> {
    if review.sub_resource == Some("status") {
        return Err(Denial::StatusWrite);
    }
    let Some(object) = review.object else {
        return Ok(());
    };
    let me = requester_from(review.user);
    match review.operation {
        Operation::Create => validate_create(object, &me, policy),
        Operation::Update => match review.old_object {
            Some(old) => validate_update(object, old, &me, policy),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

fn validate_create(
    object: &AccessRequest,
    me: &Requester,
    policy: Option<&AccessPolicy>,
) -> Result<(), Denial> {
    check_size(object, None)?;
    match &object.spec.requester {
        None => return Err(Denial::RequesterMissing),
        Some(claimed) if claimed != me => {
            return Err(Denial::RequesterMismatch {
                actual: me.username.clone(),
                claimed: claimed.username.clone(),
            });
        }
        Some(_) => {}
    }
    for key in [
        annotations::APPROVE,
        annotations::DENY,
        annotations::REVOKE,
        annotations::DECISIONS,
        annotations::REVOCATION,
    ] {
        if annotation(object, key).is_some() {
            return Err(Denial::DecisionsOnCreate);
        }
    }
    let policy = policy.ok_or_else(|| Refusal::PolicyNotFound {
        policy: object.spec.policy.clone(),
    })?;
    policy::check_request(policy, &object.spec, me)?;
    Ok(())
}

fn validate_update(
    object: &AccessRequest,
    old: &AccessRequest,
    me: &Requester,
    policy: Option<&AccessPolicy>,
) -> Result<(), Denial> {
    if object.spec != old.spec {
        return Err(Denial::SpecChanged);
    }
    check_size(object, Some(old))?;
    let had_finalizer = old
        .metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == FINALIZER);
    let has_finalizer = object
        .metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == FINALIZER);
    if had_finalizer && !has_finalizer {
        return Err(Denial::FinalizerRemoved);
    }
    for key in [annotations::APPROVE, annotations::DENY, annotations::REVOKE] {
        if annotation(object, key).is_some() {
            return Err(Denial::Unprocessed(key));
        }
    }

    let before = records_in(old)?;
    let after = records_in(object).map_err(|_| Denial::DecisionsTampered)?;
    if after.len() < before.len()
        || after[..before.len()] != before[..]
        || after.len() > before.len() + 1
    {
        return Err(Denial::DecisionsTampered);
    }
    if let Some(new) = after.get(before.len()) {
        if new.user != me.username || new.groups != me.groups {
            return Err(Denial::DecisionsTampered);
        }
        let policy = policy.ok_or_else(|| Refusal::PolicyNotFound {
            policy: object.spec.policy.clone(),
        })?;
        let phase = old.status.as_ref().and_then(|status| status.phase);
        policy::check_new_decision(policy, &old.spec, phase, &before, &me.username, &me.groups)?;
    }

    let revoked_before = revocation_in(old)?;
    let revoked_after = revocation_in(object).map_err(|_| Denial::RevocationTampered)?;
    match (&revoked_before, &revoked_after) {
        (None, None) => {}
        (Some(before), Some(after)) if before == after => {}
        (None, Some(record)) => {
            if record.user != me.username {
                return Err(Denial::RevocationTampered);
            }
            policy::check_revoker(policy, &old.spec, &me.username, &me.groups)?;
        }
        _ => return Err(Denial::RevocationTampered),
    }
    Ok(())
}

#[cfg(test)]
mod tests;
