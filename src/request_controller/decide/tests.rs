//! Unit tests of `decide`: every transition, with the clock passed in.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::{
    crd::{
        ApiDuration,
        v1alpha1::{AutoApprove, annotations},
    },
    fixtures::{self, at, decision, revocation},
    provider::GrantState,
    subject::Subject,
};

fn observed() -> Observed {
    Observed {
        request: fixtures::request(),
        policy: Some(fixtures::policy()),
        grant: None,
        unverified: None,
        decisions: Vec::new(),
        forged: Vec::new(),
        window_sealed: true,
        policy_unreadable: None,
        policy_cached: false,
    }
}

fn with_finalizer(mut observed: Observed) -> Observed {
    observed.request.metadata.finalizers = Some(vec![FINALIZER.to_owned()]);
    observed
}

fn with_decisions(mut observed: Observed, records: &[Approval]) -> Observed {
    observed
        .request
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            annotations::DECISIONS.into(),
            serde_json::to_string(records).unwrap(),
        );
    // As observe hands them over once their seals check out.
    observed.decisions = records.to_vec();
    observed
}

fn with_revocation(mut observed: Observed, by: &str) -> Observed {
    observed
        .request
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            annotations::REVOCATION.into(),
            serde_json::to_string(&revocation(by, "2026-01-01T00:10:00Z")).unwrap(),
        );
    observed
}

/// Applies a plan's status as the driver would after a successful effect.
fn advance(mut observed: Observed, plan: &Plan) -> Observed {
    observed.request.status = Some(plan.status.clone());
    match plan.finalizer {
        FinalizerChange::Add => {
            observed.request.metadata.finalizers = Some(vec![FINALIZER.into()]);
        }
        FinalizerChange::Remove => observed.request.metadata.finalizers = None,
        FinalizerChange::Keep => {}
    }
    observed
}

/// A new request with the finalizer and bob's approval at `time`.
fn approved_by_bob(time: &str) -> Observed {
    with_finalizer(with_decisions(
        observed(),
        &[decision("bob", &[], Decision::Approved, time)],
    ))
}

fn active(granted: &str) -> Observed {
    let observed = approved_by_bob("2026-01-01T00:01:00Z");
    let plan = decide(&observed, at(granted));
    assert_eq!(plan.status.phase, Some(Phase::Active));
    advance(observed, &plan)
}

fn condition<'a>(
    plan: &'a Plan,
    kind: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    plan.status
        .conditions
        .iter()
        .find(|condition| condition.type_ == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {:?}", plan.status.conditions))
}

fn reasons(plan: &Plan) -> Vec<&str> {
    plan.notices
        .iter()
        .map(|notice| notice.reason.as_str())
        .collect()
}

#[test]
fn a_new_request_becomes_pending_gets_the_finalizer_and_waits() {
    let plan = decide(&observed(), at("2026-01-01T00:00:05Z"));
    assert_eq!(plan.status.phase, Some(Phase::Pending));
    assert_eq!(plan.finalizer, FinalizerChange::Add);
    assert_eq!(plan.effect, Effect::None);
    assert_eq!(reasons(&plan), ["Requested"]);
    let approved = condition(&plan, APPROVED);
    assert_eq!(
        (approved.status.as_str(), approved.reason.as_str()),
        ("False", "WaitingForApproval")
    );
    assert_eq!(approved.message, "0 of 1 approvals");
    assert_eq!(condition(&plan, GRANTED).status, "False");
    // The policy's approval timeout is 1h from creation.
    assert_eq!(plan.requeue_after, RESYNC.min(Duration::from_secs(3595)));
    assert_eq!(plan.status.timeline[0].event, "Requested");
    assert_eq!(plan.status.timeline[0].actor.as_deref(), Some("alice"));
    assert_eq!(plan.status.observed_generation, Some(1));
}

#[test]
fn one_approval_grants_from_now_for_the_requested_duration() {
    let observed = approved_by_bob("2026-01-01T00:01:00Z");
    let now = at("2026-01-01T00:02:00Z");
    let plan = decide(&observed, now);
    assert_eq!(plan.status.phase, Some(Phase::Active));
    assert_eq!(
        plan.effect,
        Effect::Grant {
            role: observed.policy.as_ref().unwrap().spec.roles[0].clone(),
            identity: alice_identity(&observed),
            expires_at: at("2026-01-01T01:02:00Z"),
            approval: "approved by bob".into(),
        }
    );
    assert_eq!(plan.status.granted_at, Some(Time(now)));
    assert_eq!(
        plan.status.expires_at,
        Some(Time(at("2026-01-01T01:02:00Z")))
    );
    assert_eq!(condition(&plan, APPROVED).message, "approved by bob");
    assert_eq!(condition(&plan, GRANTED).status, "True");
    assert_eq!(
        reasons(&plan),
        ["Requested", "Approval", "Approved", "Granted"]
    );
    assert_eq!(plan.status.approvals.len(), 1);
    assert_eq!(
        plan.requeue_after,
        RESYNC - ANNOUNCE_REVOKE,
        "the next look announces the revoke, ahead of the hour's end"
    );
}

#[test]
fn two_approval_role_waits_for_a_second_distinct_approver() {
    let mut observed = with_finalizer(observed());
    observed.request.spec.role = "admin".into();
    observed.request.spec.duration = Some(ApiDuration::parse("30m").unwrap());
    let bob = decision("bob", &[], Decision::Approved, "2026-01-01T00:01:00Z");
    let bob_again = decision("bob", &[], Decision::Approved, "2026-01-01T00:01:30Z");
    let observed = with_decisions(observed, &[bob.clone(), bob_again]);
    let plan = decide(&observed, at("2026-01-01T00:02:00Z"));
    assert_eq!(plan.status.phase, Some(Phase::Pending));
    assert_eq!(condition(&plan, APPROVED).message, "1 of 2 approvals (bob)");

    let carol = decision(
        "carol",
        &["approvers"],
        Decision::Approved,
        "2026-01-01T00:03:00Z",
    );
    let observed = with_decisions(advance(observed, &plan), &[bob, carol]);
    let plan = decide(&observed, at("2026-01-01T00:03:01Z"));
    assert_eq!(plan.status.phase, Some(Phase::Active));
    assert_eq!(condition(&plan, APPROVED).message, "approved by bob, carol");
    assert!(matches!(plan.effect, Effect::Grant { .. }));
}

#[test]
fn approvals_by_ineligible_people_do_not_count() {
    let records = [
        decision("mallory", &[], Decision::Approved, "2026-01-01T00:01:00Z"),
        decision(
            "alice",
            &["approvers"],
            Decision::Approved,
            "2026-01-01T00:01:00Z",
        ),
    ];
    let plan = decide(
        &with_finalizer(with_decisions(observed(), &records)),
        at("2026-01-01T00:02:00Z"),
    );
    assert_eq!(plan.status.phase, Some(Phase::Pending));
    assert_eq!(plan.effect, Effect::None);
}

#[test]
fn a_denial_ends_the_request_denied() {
    let records = [
        decision("bob", &[], Decision::Approved, "2026-01-01T00:01:00Z"),
        decision(
            "carol",
            &["approvers"],
            Decision::Denied,
            "2026-01-01T00:01:30Z",
        ),
    ];
    let mut observed = with_finalizer(with_decisions(observed(), &records));
    observed.request.spec.role = "admin".into();
    observed.request.spec.duration = None;
    let plan = decide(&observed, at("2026-01-01T00:02:00Z"));
    assert_eq!(plan.status.phase, Some(Phase::Denied));
    assert_eq!(condition(&plan, APPROVED).reason, "Denied");
    assert_eq!(
        plan.status.timeline.last().unwrap().actor.as_deref(),
        Some("carol")
    );
    assert!(reasons(&plan).contains(&"Denied"));
    assert_eq!(plan.status.grant, None);
    // Final: the finalizer goes with the status that says so, and then nothing is left to do.
    assert_eq!(plan.finalizer, FinalizerChange::Remove);
    let plan = decide(&advance(observed, &plan), at("2026-01-01T00:02:01Z"));
    assert_eq!(plan.finalizer, FinalizerChange::Keep);
    assert_eq!(plan.effect, Effect::None);
}

#[test]
fn zero_approvals_grants_at_once() {
    let mut observed = observed();
    observed.policy.as_mut().unwrap().spec.approvals_required = 0;
    let plan = decide(&observed, at("2026-01-01T00:00:01Z"));
    assert_eq!(plan.status.phase, Some(Phase::Active));
    assert_eq!(
        plan.finalizer,
        FinalizerChange::Add,
        "the finalizer is added before the grant"
    );
    assert_eq!(condition(&plan, APPROVED).reason, "NoApprovalRequired");
}

#[test]
fn auto_approve_grants_when_true_and_shows_errors_when_broken() {
    let mut observed = observed();
    observed.request.spec.duration = Some(ApiDuration::parse("30m").unwrap());
    observed.policy.as_mut().unwrap().spec.auto_approve = Some(AutoApprove {
        expression: "request.duration <= duration('30m') && 'devs' in subject.groups".into(),
    });
    let plan = decide(&observed, at("2026-01-01T00:00:01Z"));
    assert_eq!(plan.status.phase, Some(Phase::Active));
    assert_eq!(condition(&plan, APPROVED).reason, "AutoApproved");

    observed.policy.as_mut().unwrap().spec.auto_approve = Some(AutoApprove {
        expression: "request.duration <=".into(),
    });
    let plan = decide(&observed, at("2026-01-01T00:00:01Z"));
    assert_eq!(
        plan.status.phase,
        Some(Phase::Pending),
        "a broken expression never approves"
    );
    let failure = condition(&plan, AUTO_APPROVE);
    assert_eq!(failure.reason, "ExpressionError");
    assert!(
        failure
            .message
            .starts_with("autoApprove expression does not compile")
    );
}

#[test]
fn pending_past_the_approval_timeout_expires_never_granted() {
    let plan = decide(&with_finalizer(observed()), at("2026-01-01T01:00:00Z"));
    assert_eq!(plan.status.phase, Some(Phase::Expired));
    assert_eq!(condition(&plan, APPROVED).reason, "ApprovalTimeout");
    assert_eq!(condition(&plan, GRANTED).status, "False");
    // Approvals that arrive too late do not revive it.
    let late = with_decisions(
        advance(with_finalizer(observed()), &plan),
        &[decision(
            "bob",
            &[],
            Decision::Approved,
            "2026-01-01T01:00:01Z",
        )],
    );
    let plan = decide(&late, at("2026-01-01T01:00:02Z"));
    assert_eq!(plan.status.phase, Some(Phase::Expired));
    assert_eq!(plan.effect, Effect::None);
}

#[test]
fn a_policy_edited_before_the_grant_can_deny_but_not_widen() {
    let approved = approved_by_bob("2026-01-01T00:01:00Z");
    // The maximum drops below the requested hour.
    let mut shorter = approved.clone();
    shorter.policy.as_mut().unwrap().spec.max_duration = ApiDuration::parse("30m").unwrap();
    let plan = decide(&shorter, at("2026-01-01T00:02:00Z"));
    assert_eq!(plan.status.phase, Some(Phase::Denied));
    assert_eq!(condition(&plan, APPROVED).reason, "DurationTooLong");
    // alice leaves the requesters.
    let mut removed = approved.clone();
    let policy = &mut removed.policy.as_mut().unwrap().spec;
    policy.requesters = Default::default();
    let plan = decide(&removed, at("2026-01-01T00:02:00Z"));
    assert_eq!(plan.status.phase, Some(Phase::Denied));
    // The role is removed: the request can never be granted.
    let mut no_role = approved.clone();
    no_role.policy.as_mut().unwrap().spec.roles.remove(0);
    let plan = decide(&no_role, at("2026-01-01T00:02:00Z"));
    assert_eq!(plan.status.phase, Some(Phase::Failed));
    // The policy is deleted.
    let mut gone = approved;
    gone.policy = None;
    let plan = decide(&gone, at("2026-01-01T00:02:00Z"));
    assert_eq!(plan.status.phase, Some(Phase::Failed));
    assert_eq!(condition(&plan, APPROVED).reason, "PolicyNotFound");
}

#[test]
fn a_request_without_an_authenticated_requester_fails_closed() {
    let mut observed = observed();
    observed.request.spec.requester = None;
    observed.policy.as_mut().unwrap().spec.approvals_required = 0;
    let plan = decide(&observed, at("2026-01-01T00:00:01Z"));
    assert_eq!(plan.status.phase, Some(Phase::Failed));
    assert!(!matches!(plan.effect, Effect::Grant { .. }));
}

#[test]
fn an_active_grant_is_revoked_at_its_expiry_not_before() {
    let observed = active("2026-01-01T00:02:00Z");
    let plan = decide(&observed, at("2026-01-01T00:30:00Z"));
    assert_eq!(plan.effect, Effect::None);
    assert_eq!(plan.status.phase, Some(Phase::Active));
    // Woken first for the expiry warning, ten minutes ahead of the end.
    assert_eq!(plan.requeue_after, Duration::from_secs(22 * 60));
    let plan = decide(&observed, at("2026-01-01T00:52:00Z"));
    assert_eq!(plan.effect, Effect::None);
    let warned: Vec<&str> = plan
        .status
        .timeline
        .iter()
        .map(|entry| entry.event.as_str())
        .collect();
    assert_eq!(warned.last(), Some(&"ExpiringSoon"), "{warned:?}");
    let plan = decide(&observed, at("2026-01-01T00:59:00Z"));
    assert_eq!(
        plan.requeue_after,
        Duration::from_secs(178),
        "requeue to announce the revoke, two seconds before expiresAt"
    );
    let plan = decide(&observed, at("2026-01-01T01:01:58Z"));
    assert_eq!(plan.effect, Effect::None, "announced, not revoked early");
    assert_eq!(
        plan.requeue_after,
        Duration::from_secs(2),
        "requeue at expiresAt"
    );

    let plan = decide(&observed, at("2026-01-01T01:02:00Z"));
    assert_eq!(plan.effect, Effect::Revoke);
    assert_eq!(plan.status.phase, Some(Phase::Expired));
    assert_eq!(plan.status.grant, None);
    assert_eq!(condition(&plan, GRANTED).reason, "Expired");
    assert_eq!(reasons(&plan), ["Expired"]);
    assert_eq!(
        plan.finalizer,
        FinalizerChange::Remove,
        "released in the pass that revokes, once that went through"
    );
    assert!(
        !plan.rests_on_policy(&observed.request, at("2026-01-01T01:02:00Z")),
        "an expiry's revoke and release wait on no read of the policy"
    );
}

#[test]
fn a_plan_that_ends_the_request_releases_it_in_the_same_pass() {
    // Denied, withdrawn, timed out: each ends with the finalizer released by the same plan.
    let records = [decision(
        "carol",
        &["approvers"],
        Decision::Denied,
        "2026-01-01T00:01:30Z",
    )];
    let denied = decide(
        &with_finalizer(with_decisions(observed(), &records)),
        at("2026-01-01T00:02:00Z"),
    );
    assert_eq!(denied.status.phase, Some(Phase::Denied));
    assert_eq!(denied.finalizer, FinalizerChange::Remove);
    let withdrawn = decide(
        &with_revocation(with_finalizer(observed()), "alice"),
        at("2026-01-01T00:10:00Z"),
    );
    assert_eq!(withdrawn.status.phase, Some(Phase::Revoked));
    assert_eq!(withdrawn.finalizer, FinalizerChange::Remove);
    let timed_out = decide(&with_finalizer(observed()), at("2026-01-01T01:00:00Z"));
    assert_eq!(timed_out.status.phase, Some(Phase::Expired));
    assert_eq!(timed_out.finalizer, FinalizerChange::Remove);
    // Without the finalizer, the ending's revoke takes it first, like any revoke; a live
    // request keeps it.
    let plan = decide(&observed(), at("2026-01-01T01:00:00Z"));
    assert_eq!(plan.status.phase, Some(Phase::Expired));
    assert_eq!(plan.effect, Effect::Revoke);
    assert_eq!(plan.finalizer, FinalizerChange::Add);
    let live = active("2026-01-01T00:02:00Z");
    let plan = decide(&live, at("2026-01-01T00:30:00Z"));
    assert_eq!(plan.finalizer, FinalizerChange::Keep);
    // An ended request whose release did not happen yet: released, without a policy read.
    let mut ended = with_finalizer(observed());
    ended.request.status = Some(timed_out.status.clone());
    let plan = decide(&ended, at("2026-01-01T01:00:05Z"));
    assert_eq!(plan.finalizer, FinalizerChange::Remove);
    assert_eq!(plan.effect, Effect::None);
    assert!(!plan.rests_on_policy(&ended.request, at("2026-01-01T01:00:05Z")));
}

#[test]
fn a_revoke_backing_off_keeps_the_finalizer_until_it_goes_through() {
    let observed = failing(
        active("2026-01-01T00:02:00Z"),
        REVOCATION_FAILING,
        2,
        "2026-01-01T01:05:00Z",
    );
    let plan = decide(&observed, at("2026-01-01T01:03:00Z"));
    assert_eq!(plan.effect, Effect::None, "waiting for the backoff");
    assert_eq!(plan.finalizer, FinalizerChange::Keep);
    let plan = decide(&observed, at("2026-01-01T01:05:00Z"));
    assert_eq!(plan.effect, Effect::Revoke);
    assert_eq!(plan.status.phase, Some(Phase::Expired));
    assert_eq!(plan.finalizer, FinalizerChange::Remove);
}

#[test]
fn an_operator_back_after_the_expiry_revokes_at_once() {
    let observed = active("2026-01-01T00:02:00Z");
    let plan = decide(&observed, at("2026-01-03T00:00:00Z"));
    assert_eq!(plan.effect, Effect::Revoke);
    assert_eq!(plan.status.phase, Some(Phase::Expired));
    // expiresAt is kept as it was: it never moves.
    assert_eq!(
        plan.status.expires_at,
        Some(Time(at("2026-01-01T01:02:00Z")))
    );
}

#[test]
fn revoke_annotation_ends_an_active_grant_early() {
    let observed = with_revocation(active("2026-01-01T00:02:00Z"), "alice");
    let plan = decide(&observed, at("2026-01-01T00:10:00Z"));
    assert_eq!(plan.effect, Effect::Revoke);
    assert_eq!(plan.status.phase, Some(Phase::Revoked));
    assert_eq!(
        plan.status.revoked_at,
        Some(Time(at("2026-01-01T00:10:00Z")))
    );
    assert_eq!(
        plan.status.timeline.last().unwrap().actor.as_deref(),
        Some("alice")
    );
    assert_eq!(condition(&plan, GRANTED).reason, "Revoked");
}

#[test]
fn revoke_annotation_withdraws_a_pending_request() {
    let observed = with_revocation(with_finalizer(observed()), "alice");
    let plan = decide(&observed, at("2026-01-01T00:10:00Z"));
    assert_eq!(plan.status.phase, Some(Phase::Revoked));
    assert!(!matches!(plan.effect, Effect::Grant { .. }));
}

#[test]
fn deleting_revokes_then_releases_the_finalizer() {
    let mut observed = active("2026-01-01T00:02:00Z");
    observed.request.metadata.deletion_timestamp = Some(Time(at("2026-01-01T00:20:00Z")));
    let plan = decide(&observed, at("2026-01-01T00:20:00Z"));
    assert_eq!(plan.effect, Effect::Revoke);
    assert_eq!(plan.finalizer, FinalizerChange::Remove);
    assert_eq!(plan.status.phase, Some(Phase::Revoked));
    assert_eq!(condition(&plan, GRANTED).reason, "Deleted");
    // Deleting a pending request revokes too, in case a grant beat a crash.
    let mut pending = with_finalizer(observed_pending());
    pending.request.metadata.deletion_timestamp = Some(Time(at("2026-01-01T00:20:00Z")));
    let plan = decide(&pending, at("2026-01-01T00:20:00Z"));
    assert_eq!(plan.effect, Effect::Revoke);
    assert_eq!(plan.finalizer, FinalizerChange::Remove);
}

fn observed_pending() -> Observed {
    let plan = decide(&observed(), at("2026-01-01T00:00:01Z"));
    advance(observed(), &plan)
}

#[test]
fn removing_the_role_from_the_policy_revokes_an_active_grant() {
    let mut observed = active("2026-01-01T00:02:00Z");
    observed.policy.as_mut().unwrap().spec.roles.remove(0);
    let plan = decide(&observed, at("2026-01-01T00:05:00Z"));
    assert_eq!(plan.effect, Effect::Revoke);
    assert_eq!(plan.status.phase, Some(Phase::Revoked));
    assert_eq!(condition(&plan, GRANTED).reason, "PolicyChanged");
    let mut gone = active("2026-01-01T00:02:00Z");
    gone.policy = None;
    assert_eq!(
        decide(&gone, at("2026-01-01T00:05:00Z")).effect,
        Effect::Revoke
    );
}

#[test]
fn a_denial_after_the_grant_revokes() {
    let observed = active("2026-01-01T00:02:00Z");
    let observed = with_decisions(
        observed,
        &[
            decision("bob", &[], Decision::Approved, "2026-01-01T00:01:00Z"),
            decision(
                "carol",
                &["approvers"],
                Decision::Denied,
                "2026-01-01T00:05:00Z",
            ),
        ],
    );
    let plan = decide(&observed, at("2026-01-01T00:05:01Z"));
    assert_eq!(plan.effect, Effect::Revoke);
    assert_eq!(condition(&plan, GRANTED).reason, "DeniedAfterGrant");
}

#[test]
fn final_phases_are_never_left() {
    for phase in [Phase::Expired, Phase::Revoked, Phase::Denied, Phase::Failed] {
        let mut observed = approved_by_bob("2026-01-01T00:01:00Z");
        observed.request.status = Some(AccessRequestStatus {
            phase: Some(phase),
            ..AccessRequestStatus::default()
        });
        let plan = decide(&observed, at("2026-01-01T00:02:00Z"));
        assert_eq!(plan.status.phase, Some(phase));
        assert_eq!(plan.effect, Effect::None);
        assert!(plan.notices.is_empty());
    }
}

#[test]
fn an_unreadable_revocation_record_still_revokes() {
    let mut observed = active("2026-01-01T00:02:00Z");
    observed
        .request
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(annotations::REVOCATION.into(), "not json".into());
    let plan = decide(&observed, at("2026-01-01T00:05:00Z"));
    assert_eq!(plan.effect, Effect::Revoke);
}

#[test]
fn deciding_twice_on_the_same_input_is_stable() {
    let observed = active("2026-01-01T00:02:00Z");
    let plan = decide(&observed, at("2026-01-01T00:05:00Z"));
    let again = decide(&advance(observed, &plan), at("2026-01-01T00:05:00Z"));
    assert_eq!(plan.status, again.status);
    assert!(again.notices.is_empty(), "no Events without a transition");
}

#[test]
fn a_grant_removed_or_changed_by_hand_is_restored_with_the_same_expiry() {
    for state in [
        GrantState::Missing,
        GrantState::Drifted("has 2 subjects instead of exactly 1".into()),
    ] {
        let mut observed = active("2026-01-01T00:02:00Z");
        observed.grant = Some(state);
        let plan = decide(&observed, at("2026-01-01T00:10:00Z"));
        assert_eq!(
            plan.effect,
            Effect::Grant {
                role: observed.policy.as_ref().unwrap().spec.roles[0].clone(),
                identity: alice_identity(&observed),
                expires_at: at("2026-01-01T01:02:00Z"),
                approval: "approved by bob".into(),
            }
        );
        assert_eq!(plan.status.phase, Some(Phase::Active));
        assert_eq!(
            plan.status.expires_at,
            Some(Time(at("2026-01-01T01:02:00Z")))
        );
        assert_eq!(reasons(&plan), ["GrantRepaired"]);
    }
    let mut intact = active("2026-01-01T00:02:00Z");
    intact.grant = Some(GrantState::Present);
    assert_eq!(
        decide(&intact, at("2026-01-01T00:10:00Z")).effect,
        Effect::None
    );
}

#[test]
fn a_drifted_grant_past_its_expiry_is_revoked_not_repaired() {
    let mut observed = active("2026-01-01T00:02:00Z");
    observed.grant = Some(GrantState::Missing);
    let plan = decide(&observed, at("2026-01-01T01:02:00Z"));
    assert_eq!(plan.effect, Effect::Revoke);
    assert_eq!(plan.status.phase, Some(Phase::Expired));
}

/// Alice as the grant sees her under the observed policy.
fn alice_identity(observed: &Observed) -> Identity {
    Identity::of(
        &Subject::User("alice".into()),
        observed.request.spec.requester.as_ref(),
        observed.policy.as_ref().unwrap(),
    )
}

/// An approved request whose grant was attempted (the intent write fixed its window) but whose
/// status write never landed: it reads as Pending with the window recorded.
fn attempted(granted: &str) -> Observed {
    let observed = approved_by_bob("2026-01-01T00:01:00Z");
    let plan = decide(&observed, at(granted));
    let mut status = observed.request.status.clone().unwrap_or_default();
    status.phase = Some(Phase::Pending);
    status.granted_at = plan.status.granted_at.clone();
    status.expires_at = plan.status.expires_at.clone();
    let mut observed = observed;
    observed.request.status = Some(status);
    observed
}

#[test]
fn a_retried_grant_keeps_the_window_of_its_first_attempt() {
    let observed = attempted("2026-01-01T00:02:00Z");
    // Retried again and again, later: the same expiry, never a new one.
    for later in ["2026-01-01T00:02:01Z", "2026-01-01T00:30:00Z"] {
        let plan = decide(&observed, at(later));
        assert_eq!(plan.status.phase, Some(Phase::Active));
        assert_eq!(
            plan.status.expires_at,
            Some(Time(at("2026-01-01T01:02:00Z")))
        );
        assert_eq!(
            plan.status.granted_at,
            Some(Time(at("2026-01-01T00:02:00Z")))
        );
        let Effect::Grant { expires_at, .. } = plan.effect else {
            panic!("expected a grant, got {:?}", plan.effect);
        };
        assert_eq!(expires_at, at("2026-01-01T01:02:00Z"));
    }
}

#[test]
fn a_grant_never_confirmed_is_revoked_once_its_window_ends() {
    let observed = attempted("2026-01-01T00:02:00Z");
    let plan = decide(&observed, at("2026-01-01T01:02:00Z"));
    assert_eq!(plan.effect, Effect::Revoke);
    assert_eq!(plan.status.phase, Some(Phase::Expired));
    assert!(reasons(&plan).contains(&"Expired"), "{:?}", reasons(&plan));
    assert!(!reasons(&plan).contains(&"Granted"));
}

#[test]
fn a_grant_that_cannot_be_verified_still_expires_and_can_still_be_ended() {
    let mut observed = active("2026-01-01T00:02:00Z");
    observed.grant = None;
    observed.unverified = Some(Unverified {
        message: "identity mapping for alice is gone".into(),
        retry_after: None,
    });
    let plan = decide(&observed, at("2026-01-01T00:10:00Z"));
    assert_eq!(plan.effect, Effect::None, "nothing to repair from");
    assert_eq!(plan.status.phase, Some(Phase::Active));
    let plan = decide(&observed, at("2026-01-01T01:02:00Z"));
    assert_eq!(plan.effect, Effect::Revoke);
    assert_eq!(plan.status.phase, Some(Phase::Expired));
    let revoked = decide(
        &with_revocation(observed.clone(), "alice"),
        at("2026-01-01T00:10:00Z"),
    );
    assert_eq!(revoked.effect, Effect::Revoke);
    assert_eq!(revoked.status.phase, Some(Phase::Revoked));
}

#[test]
fn an_approval_after_the_approval_timeout_does_not_grant() {
    // Nobody looked at the request while the timeout passed (the operator was down); an
    // approval written after the deadline is too late, however soon the operator looks.
    let late = approved_by_bob("2026-01-01T01:00:01Z");
    let plan = decide(&late, at("2026-01-01T01:00:02Z"));
    assert_eq!(plan.status.phase, Some(Phase::Expired));
    assert_eq!(condition(&plan, APPROVED).reason, "ApprovalTimeout");
    assert!(!matches!(plan.effect, Effect::Grant { .. }));
    // An approval in time still grants, even when the operator looks late.
    let in_time = approved_by_bob("2026-01-01T00:59:59Z");
    let plan = decide(&in_time, at("2026-01-01T01:00:02Z"));
    assert_eq!(plan.status.phase, Some(Phase::Active));
}

#[test]
fn records_without_admissions_seal_never_approve() {
    // The annotation says bob approved, but observe found no valid seal on it.
    let mut forged = approved_by_bob("2026-01-01T00:01:00Z");
    forged.decisions.clear();
    forged.forged = vec!["bob".into()];
    let plan = decide(&forged, at("2026-01-01T00:02:00Z"));
    assert_eq!(plan.status.phase, Some(Phase::Pending));
    assert_eq!(plan.effect, Effect::None);
    // Nor does an approval written into status by hand.
    let mut in_status = forged.clone();
    let mut status = in_status.request.status.clone().unwrap_or_default();
    status.approvals = vec![decision(
        "bob",
        &[],
        Decision::Approved,
        "2026-01-01T00:01:00Z",
    )];
    in_status.request.status = Some(status);
    let plan = decide(&in_status, at("2026-01-01T00:02:00Z"));
    assert_eq!(plan.effect, Effect::None);
}

#[test]
fn a_window_the_operator_did_not_seal_is_never_granted_from_and_ends_an_active_grant() {
    // Active in status, written by someone else: revoked, not repaired or kept.
    let mut forged = active("2026-01-01T00:02:00Z");
    forged.window_sealed = false;
    forged.grant = Some(GrantState::Missing);
    let plan = decide(&forged, at("2026-01-01T00:10:00Z"));
    assert_eq!(plan.effect, Effect::Revoke);
    assert_eq!(plan.status.phase, Some(Phase::Failed));
    // Pending with a far window written in: an approval grants from now, not from it.
    let mut pending = attempted("2026-01-01T00:02:00Z");
    let mut status = pending.request.status.clone().unwrap();
    status.expires_at = Some(Time(at("2030-01-01T00:00:00Z")));
    pending.request.status = Some(status);
    pending.window_sealed = false;
    let plan = decide(&pending, at("2026-01-01T00:05:00Z"));
    assert_eq!(
        plan.status.expires_at,
        Some(Time(at("2026-01-01T01:05:00Z"))),
        "a fresh window of the requested hour"
    );
}

#[test]
fn a_policy_that_cannot_be_read_holds_up_nothing_that_ends_access() {
    let unreadable = |mut observed: Observed| {
        observed.policy = None;
        observed.policy_unreadable = Some("accesspolicies is forbidden".into());
        observed
    };
    // Active: still expires, still revoked; not ended as "policy changed" meanwhile.
    let observed = unreadable(active("2026-01-01T00:02:00Z"));
    let plan = decide(&observed, at("2026-01-01T00:10:00Z"));
    assert_eq!(plan.status.phase, Some(Phase::Active));
    assert_eq!(plan.effect, Effect::None);
    assert!(plan.requeue_after <= POLICY_RETRY);
    let plan = decide(&observed, at("2026-01-01T01:02:00Z"));
    assert_eq!(plan.status.phase, Some(Phase::Expired));
    assert_eq!(plan.effect, Effect::Revoke);
    let plan = decide(
        &with_revocation(observed, "alice"),
        at("2026-01-01T00:10:00Z"),
    );
    assert_eq!(plan.status.phase, Some(Phase::Revoked));
    // Pending and approved: neither granted nor refused until the policy can be read.
    let pending = unreadable(with_finalizer(with_decisions(
        observed_pending(),
        &[decision(
            "bob",
            &[],
            Decision::Approved,
            "2026-01-01T00:01:00Z",
        )],
    )));
    let plan = decide(&pending, at("2026-01-01T00:02:00Z"));
    assert_eq!(plan.effect, Effect::None);
    assert_ne!(plan.status.phase, Some(Phase::Failed));
    assert_ne!(plan.status.phase, Some(Phase::Active));
}

#[test]
fn a_look_at_the_grant_that_fails_backs_off_and_never_past_the_expiry() {
    let mut observed = active("2026-01-01T00:02:00Z");
    observed.grant = None;
    observed.unverified = Some(Unverified {
        message: "gcp: failed to read the IAM policy: ResourceExhausted".into(),
        retry_after: Some(Duration::from_secs(30)),
    });
    let now = at("2026-01-01T00:10:00Z");
    let plan = decide(&observed, now);
    assert_eq!(plan.effect, Effect::None);
    assert_eq!(condition(&plan, VERIFY_FAILING).status, "True");
    assert_eq!(plan.status.failures, 1);
    // The cloud asked for 30 s: not sooner.
    let due = plan.status.next_retry_time.clone().map(|time| time.0);
    assert_eq!(due, Some(at("2026-01-01T00:10:30Z")));
    assert_eq!(plan.requeue_after, Duration::from_secs(30));
    // Failing again: counted, and the wait grows.
    let again = advance(observed.clone(), &plan);
    let mut again_observed = again;
    again_observed.unverified = observed.unverified.clone();
    let second = decide(&again_observed, at("2026-01-01T00:10:31Z"));
    assert_eq!(second.status.failures, 2);
    // Many failures later, the next look is still due by the expiry.
    let mut late = again_observed.clone();
    late.request.status.as_mut().unwrap().failures = 30;
    let plan = decide(&late, at("2026-01-01T01:01:00Z"));
    assert_eq!(
        plan.status.next_retry_time.as_ref().map(|time| time.0),
        Some(at("2026-01-01T01:02:00Z"))
    );
    // A look that works again clears it all.
    let mut recovered = advance(late, &plan);
    recovered.unverified = None;
    recovered.grant = Some(GrantState::Present);
    let plan = decide(&recovered, at("2026-01-01T01:01:30Z"));
    assert!(
        plan.status
            .conditions
            .iter()
            .all(|condition| condition.type_ != VERIFY_FAILING)
    );
    assert_eq!(plan.status.failures, 0);
    assert_eq!(plan.status.next_retry_time, None);
}

/// A status whose `kind` step failed `failures` times, next due at `due`.
fn failing(mut observed: Observed, kind: &str, failures: i32, due: &str) -> Observed {
    let status = observed.request.status.get_or_insert_with(Default::default);
    status.failures = failures;
    status.next_retry_time = Some(Time(at(due)));
    crate::request_controller::conditions::set_condition(
        &mut status.conditions,
        kind,
        crate::request_controller::conditions::ConditionStatus::True,
        "Failed",
        "boom",
        at("2026-01-01T00:00:00Z"),
        None,
    );
    observed
}

#[test]
fn a_failing_grant_waits_for_its_backoff_but_a_revoke_does_not() {
    let observed = failing(
        approved_by_bob("2026-01-01T00:01:00Z"),
        GRANT_FAILING,
        3,
        "2026-01-01T00:03:00Z",
    );
    let before = observed.request.status.clone().unwrap();
    let plan = decide(&observed, at("2026-01-01T00:02:00Z"));
    assert_eq!(plan.effect, Effect::None, "backing off");
    assert_eq!(plan.status, before, "nothing is written while waiting");
    assert!(plan.notices.is_empty());
    assert_eq!(plan.requeue_after, Duration::from_secs(60));
    // Due: tried again.
    let plan = decide(&observed, at("2026-01-01T00:03:00Z"));
    assert!(matches!(plan.effect, Effect::Grant { .. }));
    // Withdrawn meanwhile: the revoke goes ahead at once.
    let withdrawn = with_revocation(observed, "alice");
    let plan = decide(&withdrawn, at("2026-01-01T00:02:00Z"));
    assert_eq!(plan.effect, Effect::Revoke);
    assert_eq!(plan.status.phase, Some(Phase::Revoked));
}

#[test]
fn a_failing_revoke_of_a_deleted_request_keeps_its_finalizer_while_it_waits() {
    let mut observed = failing(
        active("2026-01-01T00:02:00Z"),
        REVOCATION_FAILING,
        2,
        "2026-01-01T00:05:00Z",
    );
    observed.request.metadata.deletion_timestamp = Some(Time(at("2026-01-01T00:03:00Z")));
    let plan = decide(&observed, at("2026-01-01T00:04:00Z"));
    assert_eq!(plan.effect, Effect::None);
    assert_eq!(plan.finalizer, FinalizerChange::Keep);
    let plan = decide(&observed, at("2026-01-01T00:05:00Z"));
    assert_eq!(plan.effect, Effect::Revoke);
    assert_eq!(plan.finalizer, FinalizerChange::Remove);
}

/// An active Kubernetes grant (granted at 00:02, for the fixture's hour) whose policy sets
/// an idle timeout of `idle`, with its last action at `last_action`.
fn idle_grant(idle: &str, last_action: Option<&str>) -> Observed {
    let mut observed = active("2026-01-01T00:02:00Z");
    observed.policy.as_mut().unwrap().spec.idle_timeout = Some(ApiDuration::parse(idle).unwrap());
    let status = observed.request.status.as_mut().unwrap();
    status.grant = Some(crate::crd::v1alpha1::Grant {
        provider: "kubernetes".into(),
        reference: "RoleBinding team/jit-1".into(),
        cloud_enforced_expiry: false,
    });
    status.activity = last_action.map(|time| crate::crd::v1alpha1::Activity {
        actions: 1,
        last_action_time: Some(Time(at(time))),
        ..Default::default()
    });
    observed
}

#[test]
fn a_grant_unused_for_the_idle_timeout_is_revoked_as_idle() {
    // Never used: idle from the grant's start.
    let unused = idle_grant("10m", None);
    let plan = decide(&unused, at("2026-01-01T00:11:59Z"));
    assert_eq!(plan.status.phase, Some(Phase::Active));
    assert_eq!(
        plan.requeue_after,
        Duration::from_secs(1),
        "looks again when idle"
    );
    let plan = decide(&unused, at("2026-01-01T00:12:00Z"));
    assert_eq!(plan.effect, Effect::Revoke);
    assert_eq!(plan.status.phase, Some(Phase::Revoked));
    assert_eq!(condition(&plan, GRANTED).reason, "Idle");
    assert!(
        plan.status
            .message
            .as_deref()
            .unwrap()
            .contains("idle timeout"),
        "{:?}",
        plan.status.message
    );
}

#[test]
fn activity_keeps_a_grant_alive_but_never_past_its_end() {
    let used = idle_grant("10m", Some("2026-01-01T00:20:00Z"));
    let plan = decide(&used, at("2026-01-01T00:25:00Z"));
    assert_eq!(plan.status.phase, Some(Phase::Active));
    assert_eq!(plan.requeue_after, Duration::from_secs(300));
    assert_eq!(
        decide(&used, at("2026-01-01T00:30:00Z")).status.phase,
        Some(Phase::Revoked)
    );
    // Used a minute before the end: it still ends at its time, as expired.
    let mut busy = idle_grant("10m", None);
    let status = busy.request.status.as_mut().unwrap();
    let expires_at = status.expires_at.clone().unwrap().0;
    status.activity = Some(crate::crd::v1alpha1::Activity {
        actions: 1,
        last_action_time: Some(Time(expires_at - jiff::SignedDuration::from_secs(60))),
        ..Default::default()
    });
    let plan = decide(&busy, expires_at);
    assert_eq!(plan.status.phase, Some(Phase::Expired));
}

#[test]
fn idle_timeouts_do_not_apply_to_cloud_grants() {
    let mut cloud = idle_grant("10m", None);
    cloud
        .request
        .status
        .as_mut()
        .unwrap()
        .grant
        .as_mut()
        .unwrap()
        .provider = "aws".into();
    assert_eq!(
        decide(&cloud, at("2026-01-01T00:30:00Z")).status.phase,
        Some(Phase::Active)
    );
}

/// What makes the driver read the policy fresh before acting: anything the plan would do,
/// except revoking a grant whose time is up; a look that finds everything as written does
/// nothing and needs no read.
#[test]
fn only_a_plan_that_does_something_on_the_policys_account_rests_on_a_fresh_read() {
    // New: becomes Pending, takes the finalizer, says so.
    let new = observed();
    let now = at("2026-01-01T00:00:05Z");
    let plan = decide(&new, now);
    assert!(plan.rests_on_policy(&new.request, now));

    // Looked at again once that is written (the watch reporting the operator's own write).
    let pending = advance(new, &plan);
    let now = at("2026-01-01T00:00:06Z");
    let again = decide(&pending, now);
    assert!(!again.rests_on_policy(&pending.request, now), "{again:?}");

    // Approved: the grant.
    let approved = approved_by_bob("2026-01-01T00:01:00Z");
    let now = at("2026-01-01T00:01:01Z");
    let plan = decide(&approved, now);
    assert!(matches!(plan.effect, Effect::Grant { .. }));
    assert!(plan.rests_on_policy(&approved.request, now));

    // Active and written: nothing to do until the end.
    let active = active("2026-01-01T00:01:01Z");
    let now = at("2026-01-01T00:02:00Z");
    let look = decide(&active, now);
    assert_eq!(look.effect, Effect::None);
    assert!(!look.rests_on_policy(&active.request, now), "{look:?}");

    // Past its end: the revoke goes ahead on whatever policy was at hand.
    let written = active.request.status.clone().unwrap();
    let now = written.expires_at.unwrap().0 + SignedDuration::from_secs(1);
    let end = decide(&active, now);
    assert_eq!(end.effect, Effect::Revoke);
    assert!(!end.rests_on_policy(&active.request, now));

    // Denied while pending: ended on the policy's account (who may deny), so read fresh first
    // although ending always revokes.
    let denied = with_finalizer(with_decisions(
        observed(),
        &[decision(
            "bob",
            &[],
            Decision::Denied,
            "2026-01-01T00:01:00Z",
        )],
    ));
    let now = at("2026-01-01T00:01:01Z");
    let plan = decide(&denied, now);
    assert_eq!(plan.status.phase, Some(Phase::Denied));
    assert_eq!(plan.effect, Effect::Revoke);
    assert!(plan.rests_on_policy(&denied.request, now));

    // The same request without its policy in the cache (one just created): it would fail,
    // so the driver reads the policy before failing it.
    let mut unknown = with_finalizer(observed());
    unknown.policy = None;
    let plan = decide(&unknown, now);
    assert_eq!(plan.status.phase, Some(Phase::Failed));
    assert!(plan.rests_on_policy(&unknown.request, now));
}

#[test]
fn a_grant_about_to_end_announces_its_revoke_and_revokes_at_its_end() {
    let observed = with_finalizer(active("2026-01-01T00:02:00Z"));
    // Its subject was told ten minutes ahead.
    let warned = decide(&observed, at("2026-01-01T00:52:00Z"));
    assert_eq!(
        warned
            .status
            .timeline
            .last()
            .map(|entry| entry.event.as_str()),
        Some("ExpiringSoon")
    );
    let observed = advance(observed, &warned);
    let lead = at("2026-01-01T01:01:58Z");
    let plan = decide(&observed, lead);
    assert_eq!(plan.effect, Effect::None);
    assert_eq!(
        plan.status.phase,
        Some(Phase::Active),
        "the grant holds until its end"
    );
    let intent = plan
        .status
        .intent
        .clone()
        .expect("the revoke's intent, written ahead");
    assert_eq!(intent.action, IntentAction::Revoke);
    assert_eq!(intent.time, Time(lead));
    assert!(
        intent.recorded,
        "no grant intent was open: every grant is on record"
    );
    assert!(
        !plan.rests_on_policy(&observed.request, lead),
        "announcing a revoke at the grant's end reads no policy"
    );

    // Looked at again within the lead (a restart, a change): the intent stays as written.
    let announced = advance(observed, &plan);
    let again = decide(&announced, at("2026-01-01T01:01:59Z"));
    assert_eq!(again.status.intent, Some(intent.clone()));
    assert!(!super::super::outcome::differs(
        announced.request.status.as_ref().unwrap(),
        &again.status
    ));

    // At its end: revoked, and the intent closed with the outcome.
    let end = at("2026-01-01T01:02:00Z");
    let revoke = decide(&announced, end);
    assert_eq!(revoke.effect, Effect::Revoke);
    assert_eq!(revoke.status.phase, Some(Phase::Expired));
    assert_eq!(revoke.status.intent, None);
    assert!(!revoke.rests_on_policy(&announced.request, end));
}

#[test]
fn a_revoke_is_announced_only_when_nothing_else_is_to_be_done() {
    // The grant was removed by hand two seconds before its end: restored, not announced.
    let mut observed = with_finalizer(active("2026-01-01T00:02:00Z"));
    observed.grant = Some(GrantState::Missing);
    let plan = decide(&observed, at("2026-01-01T01:01:58Z"));
    assert!(matches!(plan.effect, Effect::Grant { .. }));
    assert_eq!(plan.status.intent, None);

    // A policy that can no longer be read: the end goes ahead, unannounced.
    let mut observed = with_finalizer(active("2026-01-01T00:02:00Z"));
    observed.policy_unreadable = Some("forbidden".into());
    let plan = decide(&observed, at("2026-01-01T01:01:58Z"));
    assert_eq!(plan.status.intent, None);
    assert_eq!(plan.requeue_after, Duration::from_secs(2));
}

#[test]
fn an_announced_revoke_over_an_open_grant_intent_does_not_claim_every_grant_on_record() {
    // A crash left a grant intent open: the target may hold a grant status does not name, so
    // the revoke that follows searches for it.
    let mut observed = with_finalizer(active("2026-01-01T00:02:00Z"));
    let status = observed.request.status.as_mut().unwrap();
    status.intent = Some(crate::crd::v1alpha1::GrantIntent {
        action: IntentAction::Grant,
        key: "jit-0".into(),
        time: Time(at("2026-01-01T00:02:00Z")),
        recorded: false,
    });
    let plan = decide(&observed, at("2026-01-01T01:01:58Z"));
    let intent = plan.status.intent.clone().expect("announced");
    assert_eq!(intent.action, IntentAction::Revoke);
    assert!(!intent.recorded);
    assert!(!super::super::outcome::grants_recorded(&plan.status));
}
