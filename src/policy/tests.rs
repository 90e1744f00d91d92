//! Unit tests of the policy checks.

use std::time::Duration;

use super::*;
use crate::{
    crd::{ApiDuration, v1alpha1::ReasonPolicy},
    fixtures::{self, decision, requester},
};

fn spec() -> AccessRequestSpec {
    fixtures::request().spec
}

fn alice() -> Requester {
    requester("alice", &["devs"])
}

#[test]
fn a_listed_requester_gets_the_role_for_the_requested_duration() {
    let policy = fixtures::policy();
    let allowed = check_request(&policy, &spec(), &alice()).unwrap();
    assert_eq!(allowed.role.name, "view");
    assert_eq!(allowed.subject, Subject::User("alice".into()));
    assert_eq!(allowed.duration, Duration::from_secs(3600));
    assert_eq!(allowed.approvals_required, 1);
}

#[test]
fn requesters_match_by_user_or_group() {
    let policy = fixtures::policy();
    let mut spec = spec();
    spec.subject = None;
    // By group.
    assert!(check_request(&policy, &spec, &requester("dave", &["devs"])).is_ok());
    // Neither.
    assert_eq!(
        check_request(&policy, &spec, &requester("mallory", &["others"])),
        Err(Refusal::NotARequester {
            user: "mallory".into(),
            policy: "prod".into()
        })
    );
    // A ServiceAccount by its username.
    let mut policy = fixtures::policy();
    policy.spec.requesters.users = vec!["system:serviceaccount:ci:deployer".into()];
    policy.spec.requesters.groups.clear();
    let account = requester(
        "system:serviceaccount:ci:deployer",
        &["system:serviceaccounts", "system:serviceaccounts:ci"],
    );
    assert!(check_request(&policy, &spec, &account).is_ok());
}

#[test]
fn unknown_role_names_what_the_policy_offers() {
    let mut spec = spec();
    spec.role = "root".into();
    let refusal = check_request(&fixtures::policy(), &spec, &alice()).unwrap_err();
    assert_eq!(refusal.reason(), "RoleNotFound");
    assert_eq!(
        refusal.to_string(),
        "policy prod has no role root; it offers view, admin"
    );
    assert!(refusal.is_failure());
}

#[test]
fn naming_someone_else_needs_a_delegate_and_a_subject_who_is_a_requester() {
    let policy = fixtures::policy();
    let mut spec = spec();
    spec.subject = Some("dave".into());
    // alice is no delegate.
    assert_eq!(
        check_request(&policy, &spec, &alice())
            .unwrap_err()
            .reason(),
        "NotADelegate"
    );
    // The GitOps delegate may name alice, who is a requester...
    let gitops = requester("system:serviceaccount:ci:gitops", &[]);
    spec.subject = Some("alice".into());
    let allowed = check_request(&policy, &spec, &gitops).unwrap();
    assert_eq!(allowed.subject, Subject::User("alice".into()));
    // ...and the group of requesters...
    spec.subject = Some("group:devs".into());
    assert!(check_request(&policy, &spec, &gitops).is_ok());
    // ...but not dave, whose groups nobody can vouch for, nor itself.
    spec.subject = Some("dave".into());
    assert_eq!(
        check_request(&policy, &spec, &gitops),
        Err(Refusal::SubjectNotARequester {
            subject: "dave".into(),
            policy: "prod".into()
        })
    );
    spec.subject = None;
    assert_eq!(
        check_request(&policy, &spec, &gitops).unwrap_err().reason(),
        "NotARequester"
    );
}

#[test]
fn durations_are_capped_by_the_role_then_the_policy() {
    let policy = fixtures::policy();
    let mut spec = spec();
    spec.duration = Some(ApiDuration::parse("2h").unwrap());
    assert_eq!(
        check_request(&policy, &spec, &alice()).unwrap().duration,
        Duration::from_secs(7200)
    );
    spec.duration = Some(ApiDuration::parse("2h0m1s").unwrap());
    assert_eq!(
        check_request(&policy, &spec, &alice())
            .unwrap_err()
            .to_string(),
        "duration 2h0m1s is longer than the maximum 2h for role view of policy prod"
    );
    // The admin role overrides the maximum with 30m.
    spec.role = "admin".into();
    spec.duration = Some(ApiDuration::parse("31m").unwrap());
    assert_eq!(
        check_request(&policy, &spec, &alice())
            .unwrap_err()
            .reason(),
        "DurationTooLong"
    );
    spec.duration = Some(ApiDuration::parse("30m").unwrap());
    assert_eq!(
        check_request(&policy, &spec, &alice())
            .unwrap()
            .approvals_required,
        2
    );
}

#[test]
fn without_a_duration_the_default_applies_capped_by_the_role_maximum() {
    let mut policy = fixtures::policy();
    let mut spec = spec();
    spec.duration = None;
    assert_eq!(
        check_request(&policy, &spec, &alice()).unwrap().duration,
        Duration::from_secs(1800)
    );
    policy.spec.default_duration = Some(ApiDuration::parse("1h").unwrap());
    spec.role = "admin".into();
    assert_eq!(
        check_request(&policy, &spec, &alice()).unwrap().duration,
        Duration::from_secs(1800),
        "the admin role's 30m maximum caps the 1h default"
    );
    policy.spec.default_duration = None;
    assert_eq!(
        check_request(&policy, &spec, &alice())
            .unwrap_err()
            .reason(),
        "DurationRequired"
    );
}

#[test]
fn reasons_are_required_and_matched_when_the_policy_says_so() {
    let mut policy = fixtures::policy();
    let mut spec = spec();
    for missing in [None, Some(""), Some("   ")] {
        spec.reason = missing.map(str::to_owned);
        assert_eq!(
            check_request(&policy, &spec, &alice())
                .unwrap_err()
                .reason(),
            "ReasonRequired"
        );
    }
    spec.reason = Some("because".into());
    assert_eq!(
        check_request(&policy, &spec, &alice())
            .unwrap_err()
            .to_string(),
        "reason \"because\" does not match the pattern \"^INC-[0-9]+\" required by policy prod"
    );
    spec.reason = Some("INC-7 pager".into());
    assert!(check_request(&policy, &spec, &alice()).is_ok());

    policy.spec.reason = Some(ReasonPolicy {
        required: false,
        pattern: Some("^CHG-".into()),
    });
    spec.reason = None;
    assert!(
        check_request(&policy, &spec, &alice()).is_ok(),
        "optional reason may be absent"
    );
    spec.reason = Some("INC-1".into());
    assert_eq!(
        check_request(&policy, &spec, &alice())
            .unwrap_err()
            .reason(),
        "ReasonMismatch",
        "but when given it must match"
    );

    policy.spec.reason = Some(ReasonPolicy {
        required: true,
        pattern: Some("([".into()),
    });
    let refusal = check_request(&policy, &spec, &alice()).unwrap_err();
    assert_eq!(refusal.reason(), "InvalidReasonPattern");
    assert!(refusal.is_failure());
}

#[test]
fn deciders_must_be_approvers_and_not_parties_unless_allowed() {
    let mut policy = fixtures::policy();
    let spec = spec();
    assert!(check_decider(&policy, &spec, "bob", &[]).is_ok());
    assert!(check_decider(&policy, &spec, "carol", &["approvers".into()]).is_ok());
    assert_eq!(
        check_decider(&policy, &spec, "mallory", &[])
            .unwrap_err()
            .reason(),
        "NotAnApprover"
    );
    // alice, the requester and subject, is made an approver: still not for her own request.
    policy.spec.approvers.users.push("alice".into());
    assert_eq!(
        check_decider(&policy, &spec, "alice", &[])
            .unwrap_err()
            .reason(),
        "SelfApproval"
    );
    policy.spec.allow_self_approval = true;
    assert!(check_decider(&policy, &spec, "alice", &[]).is_ok());
}

#[test]
fn a_member_of_a_subject_group_is_a_party() {
    let policy = fixtures::policy();
    let mut spec = spec();
    spec.subject = Some("group:approvers".into());
    assert_eq!(
        check_decider(&policy, &spec, "carol", &["approvers".into()])
            .unwrap_err()
            .reason(),
        "SelfApproval"
    );
    // bob is listed by name and not in the group.
    assert!(check_decider(&policy, &spec, "bob", &[]).is_ok());
}

#[test]
fn a_delegates_request_cannot_be_approved_by_the_delegate_or_the_subject() {
    let mut policy = fixtures::policy();
    policy
        .spec
        .approvers
        .users
        .extend(["system:serviceaccount:ci:gitops".into(), "alice".into()]);
    let mut spec = spec();
    spec.requester = Some(requester("system:serviceaccount:ci:gitops", &[]));
    spec.subject = Some("alice".into());
    for user in ["system:serviceaccount:ci:gitops", "alice"] {
        assert_eq!(
            check_decider(&policy, &spec, user, &[])
                .unwrap_err()
                .reason(),
            "SelfApproval",
            "{user}"
        );
    }
}

#[test]
fn new_decisions_only_on_open_requests_and_once_per_person() {
    let policy = fixtures::policy();
    let spec = spec();
    let earlier = vec![decision(
        "bob",
        &[],
        Decision::Approved,
        "2026-01-01T00:01:00Z",
    )];
    assert_eq!(
        check_new_decision(&policy, &spec, Some(Phase::Pending), &earlier, "bob", &[]),
        Err(Refusal::AlreadyDecided {
            user: "bob".into(),
            decision: Decision::Approved
        })
    );
    assert!(
        check_new_decision(
            &policy,
            &spec,
            Some(Phase::Active),
            &earlier,
            "carol",
            &["approvers".into()]
        )
        .is_ok(),
        "an active request may still collect decisions (a denial does not end it)"
    );
    for phase in [Phase::Expired, Phase::Revoked, Phase::Denied, Phase::Failed] {
        assert_eq!(
            check_new_decision(
                &policy,
                &spec,
                Some(phase),
                &[],
                "carol",
                &["approvers".into()]
            ),
            Err(Refusal::RequestEnded { phase })
        );
    }
}

#[test]
fn revokers_are_the_requester_the_subject_or_an_approver() {
    let policy = fixtures::policy();
    let mut spec = spec();
    assert!(check_revoker(Some(&policy), &spec, "alice", &[]).is_ok());
    assert!(check_revoker(Some(&policy), &spec, "bob", &[]).is_ok());
    assert_eq!(
        check_revoker(Some(&policy), &spec, "mallory", &[])
            .unwrap_err()
            .reason(),
        "NotAllowedToRevoke"
    );
    // Without a policy, approvers are unknown but the parties may still end it.
    assert!(check_revoker(None, &spec, "bob", &[]).is_err());
    spec.requester = Some(requester("system:serviceaccount:ci:gitops", &[]));
    assert!(check_revoker(None, &spec, "alice", &[]).is_ok());
    assert!(check_revoker(None, &spec, "system:serviceaccount:ci:gitops", &[]).is_ok());
}

#[test]
fn tally_counts_distinct_eligible_approvers_once() {
    let policy = fixtures::policy();
    let spec = spec();
    let records = vec![
        decision("bob", &[], Decision::Approved, "2026-01-01T00:01:00Z"),
        decision("bob", &[], Decision::Approved, "2026-01-01T00:02:00Z"),
        decision("mallory", &[], Decision::Approved, "2026-01-01T00:03:00Z"),
        decision(
            "alice",
            &["approvers"],
            Decision::Approved,
            "2026-01-01T00:03:30Z",
        ),
        decision(
            "carol",
            &["approvers"],
            Decision::Approved,
            "2026-01-01T00:04:00Z",
        ),
    ];
    let tally = tally(&policy, &spec, &records);
    let approvers: Vec<_> = tally.approved_by.iter().map(|r| r.user.as_str()).collect();
    assert_eq!(approvers, ["bob", "carol"]);
    let not_counted: Vec<_> = tally
        .not_counted
        .iter()
        .map(|(record, refusal)| (record.user.as_str(), refusal.reason()))
        .collect();
    assert_eq!(
        not_counted,
        [("mallory", "NotAnApprover"), ("alice", "SelfApproval")]
    );
    assert_eq!(tally.denied_by, None);
}

#[test]
fn tally_uses_the_policy_as_it_is_now() {
    let mut policy = fixtures::policy();
    let spec = spec();
    let records = vec![
        decision("bob", &[], Decision::Approved, "2026-01-01T00:01:00Z"),
        decision(
            "carol",
            &["approvers"],
            Decision::Denied,
            "2026-01-01T00:02:00Z",
        ),
    ];
    assert_eq!(
        tally(&policy, &spec, &records)
            .denied_by
            .map(|r| r.user.as_str()),
        Some("carol")
    );
    // Both leave the policy: nothing they said counts any more.
    policy.spec.approvers = Default::default();
    let tally = tally(&policy, &spec, &records);
    assert!(tally.approved_by.is_empty());
    assert_eq!(tally.denied_by, None);
    assert_eq!(tally.not_counted.len(), 2);
}
