#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use jiff::{Timestamp, tz::TimeZone};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::{
    crd::v1alpha1::{Activity, ActivityCompleteness, ActivityCount, Decision, Phase},
    fixtures::{self, at},
};

fn now() -> Timestamp {
    at("2026-01-01T00:31:01Z")
}

/// alice's `view` request, approved by bob, granted for an hour, half of it gone.
fn active() -> AccessRequest {
    fixtures::active_request()
}

/// Requests of several phases, as `list -A` sees them.
fn several() -> Vec<AccessRequest> {
    let mut pending = fixtures::pending_request();
    pending.metadata.name = Some("carol-admin".into());
    pending.metadata.namespace = Some("team-b".into());
    pending.metadata.uid = Some("uid-carol-admin".into());
    pending.metadata.creation_timestamp = Some(Time(at("2026-01-01T00:29:00Z")));
    pending.spec.role = "admin".into();
    pending.spec.subject = Some("carol".into());
    pending.spec.reason = Some(format!("INC-77 {}", "a very long story ".repeat(5)));
    let mut denied = fixtures::pending_request();
    denied.metadata.name = Some("alice-view-old".into());
    denied.metadata.uid = Some("uid-alice-view-old".into());
    denied.metadata.creation_timestamp = Some(Time(at("2025-12-29T00:00:00Z")));
    let status = denied.status.as_mut().unwrap();
    status.phase = Some(Phase::Denied);
    status.approvals = vec![fixtures::decision(
        "bob",
        &["approvers"],
        Decision::Denied,
        "2025-12-29T00:05:00Z",
    )];
    vec![active(), pending, denied]
}

#[test]
fn the_list_table_has_kubectls_columns_and_human_times() {
    insta::assert_snapshot!(requests_table(
        &several(),
        Columns::default(),
        now(),
        Paint::PLAIN
    ));
}

#[test]
fn the_wide_list_across_namespaces_adds_who_and_why() {
    insta::assert_snapshot!(requests_table(
        &several(),
        Columns {
            wide: true,
            namespace: true
        },
        now(),
        Paint::PLAIN
    ));
}

#[test]
fn an_empty_list_says_so() {
    assert_eq!(
        requests_table(&[], Columns::default(), now(), Paint::PLAIN),
        "No requests found.\n"
    );
}

fn offers_policy() -> AccessPolicy {
    let mut policy = fixtures::policy();
    policy.spec.description = Some("production, for on-call".into());
    policy.spec.auto_approve = Some(crate::crd::v1alpha1::AutoApprove {
        expression: "request.role == 'view'".into(),
    });
    policy
}

#[test]
fn the_policies_table_says_what_each_role_grants_and_how_it_is_approved() {
    let policy = offers_policy();
    let offers = [
        Offer {
            policy: &policy,
            role: &policy.spec.roles[0],
            auto: AutoApproval::Yes,
        },
        Offer {
            policy: &policy,
            role: &policy.spec.roles[1],
            auto: AutoApproval::No,
        },
    ];
    insta::assert_snapshot!(policies_table(&offers, Columns::default(), Paint::PLAIN));
    insta::assert_snapshot!(
        "policies_wide",
        policies_table(
            &offers,
            Columns {
                wide: true,
                namespace: false
            },
            Paint::PLAIN
        )
    );
}

#[test]
fn the_approver_sees_what_exactly_is_granted_and_the_subjects_history() {
    let policy = fixtures::policy();
    let mut pending = fixtures::pending_request();
    pending.metadata.name = Some("alice-view-again".into());
    pending.metadata.uid = Some("uid-alice-view-again".into());
    pending.metadata.creation_timestamp = Some(Time(at("2026-01-01T00:31:00Z")));
    let mut history = several();
    // The same role for alice before: the denied one counts, carol's admin does not.
    history.push(pending.clone());
    insta::assert_snapshot!(approver_context(
        &pending,
        Some(&policy),
        &history,
        now(),
        Paint::PLAIN
    ));
}

#[test]
fn the_approver_context_without_a_readable_policy_says_what_is_unknown() {
    let mut request = fixtures::pending_request();
    request.spec.duration = None;
    let text = approver_context(&request, None, &[], now(), Paint::PLAIN);
    assert!(
        text.contains("Grants:    unknown: the policy or its role cannot be read"),
        "{text}"
    );
    assert!(text.contains("Approvals: 0 of ?"), "{text}");
    assert!(
        text.contains("no earlier requests by alice for this role"),
        "{text}"
    );
}

#[test]
fn show_tells_the_whole_story_with_human_times() {
    let mut request = active();
    request.status.as_mut().unwrap().activity = Some(Activity {
        actions: 12,
        refused: 1,
        last_action_time: Some(Time(at("2026-01-01T00:30:00Z"))),
        by_verb_and_resource: vec![ActivityCount {
            verb: "get".into(),
            resource: "pods".into(),
            count: 11,
        }],
        completeness: Some(ActivityCompleteness::Live),
        ..Activity::default()
    });
    insta::assert_snapshot!(describe(
        &request,
        Some(&fixtures::policy()),
        now(),
        Paint::PLAIN
    ));
}

#[test]
fn wait_progress_tells_each_change_once_in_the_requesters_words() {
    let zone = TimeZone::UTC;
    let mut progress = Progress::default();
    let mut request = fixtures::pending_request();
    request.spec.role = "admin".into();
    let mut told = progress.lines(&request, 2, now(), &zone);
    // Nothing changed: nothing said.
    told.extend(progress.lines(&request, 2, now(), &zone));
    let status = request.status.as_mut().unwrap();
    status.approvals.push(fixtures::decision(
        "bob",
        &["approvers"],
        Decision::Approved,
        "2026-01-01T00:02:00Z",
    ));
    status.message = Some("waiting for approval: 1 of 2 approvals (bob)".into());
    told.extend(progress.lines(&request, 2, now(), &zone));
    let status = request.status.as_mut().unwrap();
    status.approvals.push(fixtures::decision(
        "carol",
        &["approvers"],
        Decision::Approved,
        "2026-01-01T00:03:00Z",
    ));
    status.message = Some("granting: the RoleBinding is being written".into());
    told.extend(progress.lines(&request, 2, now(), &zone));
    let status = request.status.as_mut().unwrap();
    status.phase = Some(Phase::Active);
    status.expires_at = Some(Time(at("2026-01-01T01:01:01Z")));
    told.extend(progress.lines(&request, 2, now(), &zone));
    assert_eq!(
        told,
        [
            "alice-view: waiting for 2 more approvals",
            "alice-view: approved by bob (Approved by bob)",
            "alice-view: waiting for 1 more approval",
            "alice-view: approved by carol (Approved by carol)",
            "alice-view: granting: the RoleBinding is being written",
            "alice-view: granted until 01:01 (in 30m)",
        ]
    );
}

#[test]
fn a_denial_ends_the_wait_with_who_and_why() {
    let zone = TimeZone::UTC;
    let mut progress = Progress::default();
    let mut request = fixtures::pending_request();
    let status = request.status.as_mut().unwrap();
    status.phase = Some(Phase::Denied);
    status.message = Some("denied by bob: use the runbook".into());
    status.approvals.push(fixtures::decision(
        "bob",
        &["approvers"],
        Decision::Denied,
        "2026-01-01T00:02:00Z",
    ));
    assert_eq!(
        progress.lines(&request, 1, now(), &zone),
        [
            "alice-view: denied by bob (Denied by bob)",
            "alice-view: Denied: denied by bob: use the runbook",
        ]
    );
}

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    assert!(Paint::new(true, None, Some("xterm")).on);
    assert!(!Paint::new(false, None, Some("xterm")).on);
    assert!(!Paint::new(true, Some("1"), Some("xterm")).on);
    // NO_COLOR set but empty does not count (no-color.org).
    assert!(Paint::new(true, Some(""), Some("xterm")).on);
    assert!(!Paint::new(true, None, Some("dumb")).on);
    let coloured = requests_table(&several(), Columns::default(), now(), Paint { on: true });
    let plain = requests_table(&several(), Columns::default(), now(), Paint::PLAIN);
    assert!(
        coloured.contains("\u{1b}[32mActive\u{1b}[0m"),
        "{coloured:?}"
    );
    assert!(!plain.contains('\u{1b}'));
    // Colour never shifts a column.
    let strip = |text: &str| {
        regex::Regex::new("\u{1b}\\[[0-9;]*m")
            .unwrap()
            .replace_all(text, "")
            .into_owned()
    };
    assert_eq!(strip(&coloured), plain);
}

#[test]
fn times_and_spans_are_human() {
    let now = now();
    let after = |seconds: i64| now + jiff::SignedDuration::from_secs(seconds);
    assert_eq!(human(after(23 * 60), now), "in 23m");
    assert_eq!(human(after(-3 * 3_600), now), "3h ago");
    assert_eq!(human(after(45), now), "in 45s");
    assert_eq!(human(after(-3 * 86_400), now), "3d ago");
    assert_eq!(age(after(60), now), "0s", "a clock ahead of ours is no age");
    assert_eq!(span(Duration::from_secs(5_400)), "1h30m");
    assert_eq!(span(Duration::from_secs(0)), "0s");
    assert_eq!(clock(after(60), now, &TimeZone::UTC), "00:32");
    assert_eq!(
        clock(after(86_400), now, &TimeZone::UTC),
        "2026-01-02 00:31"
    );
}
