//! Builders for unit tests: policies and requests from YAML, with the fields tests vary.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::v1alpha1::{
    AccessPolicy, AccessRequest, Approval, Decision, Requester, Revocation,
};

/// The policy most tests start from: alice and `devs` request, bob, carol and `approvers`
/// approve, one approval, 30m default, 2h max, reason `INC-n` required.
pub fn policy() -> AccessPolicy {
    policy_from_yaml(
        r#"
apiVersion: jit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: prod}
spec:
  requesters: {users: [alice], groups: [devs]}
  approvers: {users: [bob], groups: [approvers]}
  delegates: {users: ["system:serviceaccount:ci:gitops"]}
  approvalsRequired: 1
  defaultDuration: 30m
  maxDuration: 2h
  approvalTimeout: 1h
  reason: {required: true, pattern: "^INC-[0-9]+"}
  roles:
  - name: view
    kubernetes: {clusterRole: view, namespace: prod}
  - name: admin
    approvalsRequired: 2
    maxDuration: 30m
    kubernetes: {clusterRole: admin}
"#,
    )
}

/// A policy from YAML; panics on bad YAML, which is a broken test.
pub fn policy_from_yaml(yaml: &str) -> AccessPolicy {
    serde_yaml::from_str(yaml).unwrap_or_else(|error| panic!("bad policy fixture: {error}"))
}

/// A request by alice (group `devs`) for `view` of `prod`, 1h, with a reason.
pub fn request() -> AccessRequest {
    serde_yaml::from_str(
        r#"
apiVersion: jit.dev/v1alpha1
kind: AccessRequest
metadata:
  name: alice-view
  namespace: team-a
  uid: 0b7c9f7e-1111-4222-8333-944455556666
  creationTimestamp: "2026-01-01T00:00:00Z"
  generation: 1
spec:
  policy: prod
  role: view
  duration: 1h
  reason: INC-42 checkout errors
  subject: alice
  requester: {username: alice, uid: uid-alice, groups: [devs, "system:authenticated"]}
"#,
    )
    .unwrap_or_else(|error| panic!("bad request fixture: {error}"))
}

/// A requester with these groups.
pub fn requester(username: &str, groups: &[&str]) -> Requester {
    Requester {
        username: username.to_owned(),
        uid: Some(format!("uid-{username}")),
        groups: groups.iter().map(|group| group.to_string()).collect(),
        extra: Default::default(),
    }
}

/// A time given as RFC 3339.
pub fn at(text: &str) -> Timestamp {
    text.parse()
        .unwrap_or_else(|error| panic!("bad time {text}: {error}"))
}

/// A decision record.
pub fn decision(user: &str, groups: &[&str], decision: Decision, time: &str) -> Approval {
    Approval {
        seal: None,
        user: user.to_owned(),
        groups: groups.iter().map(|group| group.to_string()).collect(),
        decision,
        time: Time(at(time)),
        comment: Some(format!("{decision:?} by {user}")),
    }
}

/// A revocation record.
pub fn revocation(user: &str, time: &str) -> Revocation {
    Revocation {
        user: user.to_owned(),
        time: Time(at(time)),
        comment: Some("done".into()),
    }
}

/// [`request`] as the operator leaves it when it waits: Pending, its timeline saying so.
pub fn pending_request() -> AccessRequest {
    let mut request = request();
    request.status = Some(crate::crd::v1alpha1::AccessRequestStatus {
        phase: Some(crate::crd::v1alpha1::Phase::Pending),
        timeline: vec![entry("2026-01-01T00:00:01Z", "Requested", Some("alice"))],
        ..Default::default()
    });
    request
}

/// [`request`] approved by bob and granted: Active, with its grant and timeline.
pub fn active_request() -> AccessRequest {
    let mut request = pending_request();
    let status = request.status.get_or_insert_with(Default::default);
    status.phase = Some(crate::crd::v1alpha1::Phase::Active);
    status.approvals = vec![decision(
        "bob",
        &["approvers"],
        Decision::Approved,
        "2026-01-01T00:01:00Z",
    )];
    status.granted_at = Some(Time(at("2026-01-01T00:01:01Z")));
    status.expires_at = Some(Time(at("2026-01-01T01:01:01Z")));
    status.grant = Some(crate::crd::v1alpha1::Grant {
        provider: "kubernetes".into(),
        reference: "RoleBinding prod/jit-0b7c9f7e".into(),
        cloud_enforced_expiry: false,
    });
    status.timeline.extend([
        entry("2026-01-01T00:01:00Z", "Approval", Some("bob")),
        entry("2026-01-01T00:01:00Z", "Approved", None),
        entry("2026-01-01T00:01:01Z", "Granted", None),
    ]);
    request
}

/// A timeline entry.
pub fn entry(time: &str, event: &str, actor: Option<&str>) -> crate::crd::v1alpha1::TimelineEntry {
    crate::crd::v1alpha1::TimelineEntry {
        time: Time(at(time)),
        event: event.to_owned(),
        actor: actor.map(str::to_owned),
        message: Some(format!("{event} message")),
    }
}
