//! Unit tests of admission: identity stamping, decision records, and every refusal.

use json_patch::Patch;
use k8s_openapi::api::authentication::v1::UserInfo;
use kube::core::admission::Operation;

use super::*;
use crate::{
    crd::v1alpha1::{AccessRequestStatus, Phase},
    fixtures::{self, at},
};

fn sealer() -> crate::seal::Sealer {
    crate::seal::Sealer::new(b"the admission tests' sealing key.")
}

fn user(name: &str, groups: &[&str]) -> UserInfo {
    UserInfo {
        username: Some(name.to_owned()),
        uid: Some(format!("uid-{name}")),
        groups: Some(groups.iter().map(|group| group.to_string()).collect()),
        extra: None,
    }
}

fn alice() -> UserInfo {
    user("alice", &["devs", "system:authenticated"])
}

fn bob() -> UserInfo {
    user("bob", &["system:authenticated"])
}

fn carol() -> UserInfo {
    user("carol", &["approvers", "system:authenticated"])
}

fn stored() -> AccessRequest {
    let mut request = fixtures::request();
    request.spec.requester = Some(requester_from(&alice()));
    request.metadata.finalizers = Some(vec![FINALIZER.into()]);
    request
}

fn apply_patch(object: &AccessRequest, patch: &Patch) -> AccessRequest {
    let mut value = serde_json::to_value(object).unwrap();
    json_patch::patch(&mut value, patch).unwrap();
    serde_json::from_value(value).unwrap()
}

fn annotate(object: &AccessRequest, key: &str, value: &str) -> AccessRequest {
    let mut object = object.clone();
    object
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(key.into(), value.into());
    object
}

/// Runs an UPDATE through both webhooks as the API server would.
fn update(
    old: &AccessRequest,
    new: &AccessRequest,
    who: &UserInfo,
    now: &str,
) -> Result<AccessRequest, Denial> {
    let review = Review {
        operation: &Operation::Update,
        sub_resource: None,
        user: who,
        object: Some(new),
        old_object: Some(old),
    };
    let (patch, _) = mutate(&review, at(now), &sealer())?;
    let mutated = apply_patch(new, &patch);
    let review = Review {
        object: Some(&mutated),
        ..review
    };
    validate(&review, Some(&fixtures::policy()))?;
    Ok(mutated)
}

fn create(object: &AccessRequest, who: &UserInfo) -> Result<AccessRequest, Denial> {
    let review = Review {
        operation: &Operation::Create,
        sub_resource: None,
        user: who,
        object: Some(object),
        old_object: None,
    };
    let (patch, _) = mutate(&review, at("2026-01-01T00:00:00Z"), &sealer())?;
    let mutated = apply_patch(object, &patch);
    validate(
        &Review {
            object: Some(&mutated),
            ..review
        },
        Some(&fixtures::policy()),
    )?;
    Ok(mutated)
}

fn unstamped() -> AccessRequest {
    let mut request = fixtures::request();
    request.spec.requester = None;
    request.spec.subject = None;
    request
}

#[test]
fn create_stamps_the_authenticated_requester_and_the_subject() {
    let created = create(&unstamped(), &alice()).unwrap();
    let requester = created.spec.requester.unwrap();
    assert_eq!(requester.username, "alice");
    assert_eq!(requester.uid.as_deref(), Some("uid-alice"));
    assert_eq!(requester.groups, ["devs", "system:authenticated"]);
    assert_eq!(created.spec.subject.as_deref(), Some("alice"));
}

#[test]
fn create_adds_the_finalizer_once_beside_any_other() {
    let created = create(&unstamped(), &alice()).unwrap();
    assert_eq!(
        created.metadata.finalizers,
        Some(vec![FINALIZER.to_owned()])
    );
    let mut with_other = unstamped();
    with_other.metadata.finalizers = Some(vec!["example.com/keep".into()]);
    let created = create(&with_other, &alice()).unwrap();
    assert_eq!(
        created.metadata.finalizers,
        Some(vec!["example.com/keep".to_owned(), FINALIZER.to_owned()])
    );
    let mut with_ours = unstamped();
    with_ours.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let created = create(&with_ours, &alice()).unwrap();
    assert_eq!(
        created.metadata.finalizers,
        Some(vec![FINALIZER.to_owned()])
    );
}

#[test]
fn create_refuses_a_requester_naming_someone_else() {
    let mut forged = unstamped();
    forged.spec.requester = Some(requester_from(&user("bob", &["approvers"])));
    assert_eq!(
        create(&forged, &alice()).unwrap_err().to_string(),
        "spec.requester is written by admission from your credentials: you are alice, not bob"
    );
    // Claiming extra groups is a different identity too.
    let mut more_groups = unstamped();
    more_groups.spec.requester = Some(requester_from(&user("alice", &["devs", "system:masters"])));
    assert!(matches!(
        create(&more_groups, &alice()),
        Err(Denial::RequesterMismatch { .. })
    ));
    // The very same identity is fine (a re-created manifest).
    let mut same = unstamped();
    same.spec.requester = Some(requester_from(&alice()));
    assert!(create(&same, &alice()).is_ok());
}

#[test]
fn validation_refuses_a_create_that_was_not_stamped() {
    let review = Review {
        operation: &Operation::Create,
        sub_resource: None,
        user: &alice(),
        object: Some(&unstamped()),
        old_object: None,
    };
    assert_eq!(
        validate(&review, Some(&fixtures::policy())),
        Err(Denial::RequesterMissing)
    );
}

#[test]
fn create_applies_the_policy() {
    let mut request = unstamped();
    request.spec.role = "root".into();
    assert_eq!(
        create(&request, &alice()).unwrap_err().to_string(),
        "policy prod has no role root; it offers view, admin"
    );
    assert!(matches!(
        create(&unstamped(), &user("mallory", &[])),
        Err(Denial::Policy(Refusal::NotARequester { .. }))
    ));
    let review = Review {
        operation: &Operation::Create,
        sub_resource: None,
        user: &alice(),
        object: Some(&stored()),
        old_object: None,
    };
    assert_eq!(
        validate(&review, None),
        Err(Denial::Policy(Refusal::PolicyNotFound {
            policy: "prod".into()
        }))
    );
}

#[test]
fn create_refuses_smuggled_decisions() {
    for key in [
        annotations::APPROVE,
        annotations::DECISIONS,
        annotations::REVOCATION,
    ] {
        let request = annotate(&unstamped(), key, "[]");
        assert_eq!(
            create(&request, &alice()),
            Err(Denial::DecisionsOnCreate),
            "{key}"
        );
    }
}

#[test]
fn approve_becomes_a_record_in_the_approvers_name() {
    let old = stored();
    let new = annotate(&old, annotations::APPROVE, " looks fine ");
    let updated = update(&old, &new, &bob(), "2026-01-01T00:05:00Z").unwrap();
    let annotations = updated.metadata.annotations.as_ref().unwrap();
    assert!(
        !annotations.contains_key(annotations::APPROVE),
        "the action annotation is consumed"
    );
    let records: Vec<Approval> =
        serde_json::from_str(&annotations[annotations::DECISIONS]).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].user, "bob");
    assert_eq!(records[0].decision, Decision::Approved);
    assert_eq!(records[0].comment.as_deref(), Some("looks fine"));
    assert_eq!(records[0].time, Time(at("2026-01-01T00:05:00Z")));
    // A second approver appends; the first record is untouched.
    let newer = annotate(&updated, annotations::DENY, "");
    let updated = update(&updated, &newer, &carol(), "2026-01-01T00:06:00Z").unwrap();
    let records: Vec<Approval> =
        serde_json::from_str(&updated.metadata.annotations.unwrap()[annotations::DECISIONS])
            .unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].user, "carol");
    assert_eq!(records[1].decision, Decision::Denied);
    assert_eq!(records[1].comment, None);
}

#[test]
fn decisions_by_the_ineligible_are_refused() {
    let old = stored();
    let approve = annotate(&old, annotations::APPROVE, "ok");
    assert!(matches!(
        update(
            &old,
            &approve,
            &user("mallory", &[]),
            "2026-01-01T00:05:00Z"
        ),
        Err(Denial::Policy(Refusal::NotAnApprover { .. }))
    ));
    // alice is the requester; even in the approvers group she may not approve herself.
    assert!(matches!(
        update(
            &old,
            &approve,
            &user("alice", &["devs", "approvers"]),
            "2026-01-01T00:05:00Z"
        ),
        Err(Denial::Policy(Refusal::SelfApproval { .. }))
    ));
    let approved = update(&old, &approve, &bob(), "2026-01-01T00:05:00Z").unwrap();
    let again = annotate(&approved, annotations::DENY, "changed my mind");
    assert!(matches!(
        update(&approved, &again, &bob(), "2026-01-01T00:06:00Z"),
        Err(Denial::Policy(Refusal::AlreadyDecided { .. }))
    ));
    let both = annotate(&approve, annotations::DENY, "no");
    assert_eq!(
        update(&old, &both, &bob(), "2026-01-01T00:05:00Z"),
        Err(Denial::ApproveAndDeny)
    );
}

#[test]
fn decisions_on_ended_requests_are_refused() {
    let mut old = stored();
    old.status = Some(AccessRequestStatus {
        phase: Some(Phase::Expired),
        ..AccessRequestStatus::default()
    });
    let approve = annotate(&old, annotations::APPROVE, "late");
    assert!(matches!(
        update(&old, &approve, &bob(), "2026-01-01T00:05:00Z"),
        Err(Denial::Policy(Refusal::RequestEnded {
            phase: Phase::Expired
        }))
    ));
}

#[test]
fn records_cannot_be_forged_edited_or_removed() {
    let old = stored();
    let approved = update(
        &old,
        &annotate(&old, annotations::APPROVE, "ok"),
        &bob(),
        "2026-01-01T00:05:00Z",
    )
    .unwrap();
    let records = approved.metadata.annotations.as_ref().unwrap()[annotations::DECISIONS].clone();

    // Carol writes her own record directly, with a made-up time.
    let mut own = serde_json::from_str::<Vec<Approval>>(&records).unwrap();
    own.push(Approval {
        seal: None,
        user: "carol".into(),
        groups: vec!["approvers".into(), "system:authenticated".into()],
        ..own[0].clone()
    });
    let own = annotate(
        &approved,
        annotations::DECISIONS,
        &serde_json::to_string(&own).unwrap(),
    );
    assert_eq!(
        update(&approved, &own, &carol(), "2026-01-01T00:06:00Z"),
        Err(Denial::DecisionsTampered)
    );
    // Mallory writes a record in bob's name directly.
    let forged = annotate(&old, annotations::DECISIONS, &records);
    assert_eq!(
        update(&old, &forged, &user("mallory", &[]), "2026-01-01T00:06:00Z"),
        Err(Denial::DecisionsTampered)
    );
    // Carol edits bob's record.
    let edited = annotate(
        &approved,
        annotations::DECISIONS,
        &records.replace("Approved", "Denied"),
    );
    assert_eq!(
        update(&approved, &edited, &carol(), "2026-01-01T00:06:00Z"),
        Err(Denial::DecisionsTampered)
    );
    // Alice removes the records.
    let mut removed = approved.clone();
    removed
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .remove(annotations::DECISIONS);
    assert_eq!(
        update(&approved, &removed, &alice(), "2026-01-01T00:06:00Z"),
        Err(Denial::DecisionsTampered)
    );
    // Garbage.
    let garbage = annotate(&approved, annotations::DECISIONS, "{");
    assert_eq!(
        update(&approved, &garbage, &alice(), "2026-01-01T00:06:00Z"),
        Err(Denial::DecisionsTampered)
    );
}

#[test]
fn revoke_is_recorded_for_requester_subject_and_approvers_only() {
    let old = stored();
    let revoke = annotate(&old, annotations::REVOKE, "done");
    let revoked = update(&old, &revoke, &alice(), "2026-01-01T00:07:00Z").unwrap();
    let record: Revocation = serde_json::from_str(
        &revoked.metadata.annotations.as_ref().unwrap()[annotations::REVOCATION],
    )
    .unwrap();
    assert_eq!(record.user, "alice");
    assert_eq!(record.comment.as_deref(), Some("done"));
    assert!(update(&old, &revoke, &bob(), "2026-01-01T00:07:00Z").is_ok());
    assert!(matches!(
        update(&old, &revoke, &user("mallory", &[]), "2026-01-01T00:07:00Z"),
        Err(Denial::Policy(Refusal::NotAllowedToRevoke { .. }))
    ));
    // The record cannot be rewritten or removed afterwards.
    let mut removed = revoked.clone();
    removed
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .remove(annotations::REVOCATION);
    assert_eq!(
        update(&revoked, &removed, &alice(), "2026-01-01T00:08:00Z"),
        Err(Denial::RevocationTampered)
    );
    // Revoking again is harmless and keeps the first record.
    let again = annotate(&revoked, annotations::REVOKE, "again");
    let unchanged = update(&revoked, &again, &bob(), "2026-01-01T00:08:00Z").unwrap();
    assert_eq!(
        unchanged.metadata.annotations.as_ref().unwrap()[annotations::REVOCATION],
        revoked.metadata.annotations.as_ref().unwrap()[annotations::REVOCATION]
    );
}

#[test]
fn revoking_an_ended_request_is_a_harmless_no_op_with_a_warning() {
    let mut old = stored();
    old.status = Some(AccessRequestStatus {
        phase: Some(Phase::Expired),
        ..AccessRequestStatus::default()
    });
    let revoke = annotate(&old, annotations::REVOKE, "done");
    let review = Review {
        operation: &Operation::Update,
        sub_resource: None,
        user: &alice(),
        object: Some(&revoke),
        old_object: Some(&old),
    };
    let (patch, warnings) = mutate(&review, at("2026-01-01T05:00:00Z"), &sealer()).unwrap();
    assert_eq!(
        warnings,
        ["the request has already ended (Expired); nothing to revoke"]
    );
    let mutated = apply_patch(&revoke, &patch);
    assert!(
        !mutated
            .metadata
            .annotations
            .unwrap()
            .contains_key(annotations::REVOCATION)
    );
}

#[test]
fn only_the_operator_writes_status_or_removes_the_finalizer() {
    let old = stored();
    let review = Review {
        operation: &Operation::Update,
        sub_resource: Some("status"),
        user: &user("admin", &["system:masters"]),
        object: Some(&old),
        old_object: Some(&old),
    };
    assert_eq!(
        validate(&review, Some(&fixtures::policy())),
        Err(Denial::StatusWrite)
    );
    let mut released = old.clone();
    released.metadata.finalizers = None;
    assert_eq!(
        update(&old, &released, &alice(), "2026-01-01T00:05:00Z"),
        Err(Denial::FinalizerRemoved)
    );
}

#[test]
fn re_applying_the_manifest_keeps_the_stamped_fields() {
    let old = stored();
    // Server-side apply of the original manifest drops what admission added.
    let mut reapplied = old.clone();
    reapplied.spec.requester = None;
    reapplied.spec.subject = None;
    let updated = update(&old, &reapplied, &alice(), "2026-01-01T00:05:00Z").unwrap();
    assert_eq!(updated.spec, old.spec);
    // Any other spec change is refused.
    let mut changed = old.clone();
    changed.spec.role = "admin".into();
    assert_eq!(
        update(&old, &changed, &alice(), "2026-01-01T00:05:00Z"),
        Err(Denial::SpecChanged)
    );
}

#[test]
fn other_metadata_changes_are_allowed() {
    let old = stored();
    let labelled = annotate(&old, "team", "payments");
    assert!(update(&old, &labelled, &alice(), "2026-01-01T00:05:00Z").is_ok());
}

#[test]
fn deleting_is_for_the_parties_the_approvers_and_administrators() {
    let request = stored();
    let policy = fixtures::policy();
    let administrators = Administrators::default();
    let mallory = user("mallory", &["system:authenticated"]);
    assert_eq!(
        validate_delete(&request, &mallory, Some(&policy), &administrators),
        Err(Denial::DeleteNotAllowed {
            user: "mallory".into(),
            policy: request.spec.policy.clone(),
        })
    );
    // The requester, an approver, an administrator and the namespace controller may.
    for who in [
        alice(),
        carol(),
        user("root", &["system:masters"]),
        user(
            "system:serviceaccount:kube-system:namespace-controller",
            &[],
        ),
    ] {
        validate_delete(&request, &who, Some(&policy), &administrators)
            .unwrap_or_else(|denial| panic!("{:?} refused: {denial}", who.username));
    }
    // With the policy gone, the requester still may; a stranger still may not.
    assert!(validate_delete(&request, &alice(), None, &administrators).is_ok());
    assert!(validate_delete(&request, &mallory, None, &administrators).is_err());
    let named = Administrators {
        users: vec!["mallory".into()],
        groups: Vec::new(),
    };
    assert!(validate_delete(&request, &mallory, Some(&policy), &named).is_ok());
}

#[test]
fn a_request_over_the_size_limit_is_refused_but_an_oversized_one_can_still_be_decided() {
    let mut padded = fixtures::request();
    padded.metadata.labels = Some(
        (0..4000)
            .map(|index| (format!("pad-{index:05}"), "x".repeat(63)))
            .collect(),
    );
    let size = measured_size(&padded);
    assert!(size > MAX_REQUEST_BYTES);
    assert!(matches!(
        create(&padded, &alice()),
        Err(Denial::TooLarge {
            limit: MAX_REQUEST_BYTES,
            ..
        })
    ));
    // Already stored that large (before the limit): a denial does not grow what is measured,
    // so it is let through.
    let mut old = padded.clone();
    old.spec.requester = Some(requester_from(&alice()));
    old.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let denied = update(
        &old,
        &annotate(&old, annotations::DENY, "too big"),
        &carol(),
        "2026-01-01T00:01:00Z",
    )
    .expect("carol may deny an oversized request");
    assert_eq!(measured_size(&denied), measured_size(&old));
    // Growing it further is refused.
    let mut grown = old.clone();
    grown
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("more".into(), "x".into());
    assert!(matches!(
        update(&old, &grown, &alice(), "2026-01-01T00:01:00Z"),
        Err(Denial::TooLarge { .. })
    ));
}
