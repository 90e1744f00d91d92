//! The request lifecycle against the real API server with the operator as a process: grants
//! after one and two approvals, denial, approval timeout, early revoke, deletion while
//! active and expiry, each checked by what the subject can actually do (a
//! SubjectAccessReview) and by the bindings that exist.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use jit_operator::crd::v1alpha1::{AccessPolicy, AccessRequest, Phase, annotations};
use k8s_openapi::api::{
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
    core::v1::Event,
    rbac::v1::RoleBinding,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use support::{
    TestEnv, alice_revokes, annotate, condition_true, eventually, operator::shared_operator, phase,
    random_suffix, wait_for_request,
};

async fn policy(env: &TestEnv, changes: impl FnOnce(&mut Value)) -> String {
    let mut spec = json!({
        "requesters": {"groups": ["devs"]},
        "approvers": {"groups": ["approvers"]},
        "approvalsRequired": 1,
        "maxDuration": "2h",
        "roles": [
            {"name": "view", "kubernetes": {"clusterRole": "jit-dev-view", "namespace": env.namespace}},
            {"name": "admin", "approvalsRequired": 2, "kubernetes": {"clusterRole": "jit-dev-edit", "namespace": env.namespace}}
        ]
    });
    changes(&mut spec);
    support::create_policy(env, spec).await
}

async fn request(env: &TestEnv, policy: &str, role: &str, duration: &str) -> String {
    let name = format!("request-{}", random_suffix(8));
    let object: AccessRequest = serde_json::from_value(json!({
        "apiVersion": "jit.dev/v1alpha1",
        "kind": "AccessRequest",
        "metadata": {"name": name},
        "spec": {"policy": policy, "role": role, "duration": duration, "reason": "INC-1"}
    }))
    .unwrap();
    Api::<AccessRequest>::namespaced(env.alice.clone(), &env.namespace)
        .create(&PostParams::default(), &object)
        .await
        .expect("alice requests");
    name
}

/// Whether alice may `verb` deployments in the test namespace, as the API server decides.
async fn alice_can(env: &TestEnv, verb: &str) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some("alice".into()),
            groups: Some(vec!["devs".into(), "system:authenticated".into()]),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(env.namespace.clone()),
                verb: Some(verb.into()),
                group: Some("apps".into()),
                resource: Some("deployments".into()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    Api::<SubjectAccessReview>::all(env.admin.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("access review")
        .status
        .is_some_and(|status| status.allowed)
}

async fn bindings_for(env: &TestEnv, request: &AccessRequest) -> Vec<RoleBinding> {
    let selector = format!("jit.dev/request-uid={}", request.uid().unwrap());
    Api::<RoleBinding>::all(env.admin.clone())
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items
}

/// Bob approves the request; returns it once it is granted.
async fn bob_approves(env: &TestEnv, name: &str) -> AccessRequest {
    annotate(&env.bob, &env.namespace, name, annotations::APPROVE, "ok")
        .await
        .expect("annotate");
    wait_for_request(&requests(env), name, "granted", |r| {
        condition_true(r, "Granted")
    })
    .await
}

async fn event_reasons(env: &TestEnv, name: &str) -> Vec<String> {
    Api::<Event>::namespaced(env.admin.clone(), &env.namespace)
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|event| event.reason)
        .collect()
}

/// The notes of the Events of `reason` about `name`, sorted.
async fn event_notes(env: &TestEnv, name: &str, reason: &str) -> Vec<String> {
    let mut notes: Vec<String> = Api::<Event>::namespaced(env.admin.clone(), &env.namespace)
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|event| event.reason.as_deref() == Some(reason))
        .filter_map(|event| event.message)
        .collect();
    notes.sort();
    notes
}

fn requests(env: &TestEnv) -> Api<AccessRequest> {
    Api::namespaced(env.admin.clone(), &env.namespace)
}

#[tokio::test]
async fn one_approval_grants_and_expiry_takes_it_away() {
    shared_operator();
    let env = TestEnv::new().await;
    let policy = policy(&env, |_| {}).await;
    assert!(!alice_can(&env, "list").await, "no standing access");
    let name = request(&env, &policy, "view", "4s").await;
    let pending = wait_for_request(&requests(&env), &name, "pending", |r| {
        phase(r) == Some(Phase::Pending)
    })
    .await;
    assert!(!condition_true(&pending, "Granted"));
    assert!(!alice_can(&env, "list").await, "nothing before approval");

    let active = bob_approves(&env, &name).await;
    let status = active.status.clone().unwrap();
    assert_eq!(status.phase, Some(Phase::Active));
    assert_eq!(status.approvals[0].user, "bob");
    let granted_at = status.granted_at.clone().unwrap().0;
    let expires_at = status.expires_at.clone().unwrap().0;
    assert_eq!(
        expires_at.duration_since(granted_at).as_secs(),
        4,
        "expiresAt = grantedAt + duration"
    );
    let grant = status.grant.clone().unwrap();
    assert_eq!(grant.provider, "kubernetes");
    assert_eq!(
        grant.reference,
        format!(
            "RoleBinding {}/jit-{}",
            env.namespace,
            active.uid().unwrap()
        )
    );
    assert!(!grant.cloud_enforced_expiry);
    assert!(alice_can(&env, "list").await, "view granted");
    assert!(!alice_can(&env, "delete").await, "only view");
    let bindings = bindings_for(&env, &active).await;
    assert_eq!(bindings.len(), 1);
    assert_eq!(
        bindings[0].labels()["app.kubernetes.io/managed-by"],
        "jit-operator"
    );

    let expired = wait_for_request(&requests(&env), &name, "expired", |r| {
        phase(r) == Some(Phase::Expired)
    })
    .await;
    assert!(!condition_true(&expired, "Granted"));
    assert!(!alice_can(&env, "list").await, "access gone after expiry");
    assert!(bindings_for(&env, &expired).await.is_empty());
    let reasons = event_reasons(&env, &name).await;
    for reason in ["Requested", "Approval", "Approved", "Granted", "Expired"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "no {reason} Event in {reasons:?}"
        );
    }
    // The finalizer is released once nothing is held.
    let released = wait_for_request(&requests(&env), &name, "released", |r| {
        r.finalizers().is_empty()
    })
    .await;
    assert_eq!(phase(&released), Some(Phase::Expired));
}

#[tokio::test]
async fn two_approval_role_needs_two_distinct_approvers() {
    shared_operator();
    let env = TestEnv::new().await;
    let policy = policy(&env, |_| {}).await;
    let name = request(&env, &policy, "admin", "1h").await;
    annotate(&env.bob, &env.namespace, &name, annotations::APPROVE, "one")
        .await
        .expect("annotate");
    let one = wait_for_request(&requests(&env), &name, "counting bob", |r| {
        r.status.as_ref().is_some_and(|s| s.approvals.len() == 1)
    })
    .await;
    assert_eq!(phase(&one), Some(Phase::Pending));
    let approved = one
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Approved")
        .unwrap();
    assert_eq!(approved.message, "1 of 2 approvals (bob)");
    assert!(!alice_can(&env, "delete").await);

    annotate(
        &env.carol,
        &env.namespace,
        &name,
        annotations::APPROVE,
        "two",
    )
    .await
    .expect("annotate");
    let active = wait_for_request(&requests(&env), &name, "granted", |r| {
        condition_true(r, "Granted")
    })
    .await;
    let approved = active
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Approved")
        .unwrap();
    assert_eq!(approved.message, "approved by bob, carol");
    assert!(alice_can(&env, "delete").await, "admin granted");
    // Each approval is an Event of its own, in its approver's words (not one Event counted
    // twice with the first approver's note).
    let notes = eventually("an Approval Event from each approver", || async {
        let notes = event_notes(&env, &name, "Approval").await;
        (notes.len() >= 2).then_some(notes)
    })
    .await;
    assert_eq!(
        notes,
        ["bob approved: one", "carol approved: two"],
        "{notes:?}"
    );
}

#[tokio::test]
async fn a_denial_ends_the_request_without_access() {
    shared_operator();
    let env = TestEnv::new().await;
    let policy = policy(&env, |_| {}).await;
    let name = request(&env, &policy, "view", "1h").await;
    annotate(
        &env.carol,
        &env.namespace,
        &name,
        annotations::DENY,
        "not during the freeze",
    )
    .await
    .expect("annotate");
    let denied = wait_for_request(&requests(&env), &name, "denied", |r| {
        phase(r) == Some(Phase::Denied)
    })
    .await;
    assert_eq!(
        denied.status.as_ref().unwrap().message.as_deref(),
        Some("not during the freeze")
    );
    assert!(!alice_can(&env, "list").await);
    assert!(
        event_reasons(&env, &name)
            .await
            .iter()
            .any(|r| r == "Denied")
    );
}

#[tokio::test]
async fn a_pending_request_past_the_approval_timeout_expires() {
    shared_operator();
    let env = TestEnv::new().await;
    let policy = policy(&env, |spec| spec["approvalTimeout"] = json!("3s")).await;
    let name = request(&env, &policy, "view", "1h").await;
    let expired = wait_for_request(&requests(&env), &name, "timed out", |r| {
        phase(r) == Some(Phase::Expired)
    })
    .await;
    let approved = expired
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Approved")
        .unwrap();
    assert_eq!(approved.reason, "ApprovalTimeout");
    assert!(!alice_can(&env, "list").await);
}

#[tokio::test]
async fn revoke_annotation_ends_access_early() {
    shared_operator();
    let env = TestEnv::new().await;
    let policy = policy(&env, |spec| spec["approvalsRequired"] = json!(0)).await;
    let name = request(&env, &policy, "view", "1h").await;
    wait_for_request(&requests(&env), &name, "granted", |r| {
        condition_true(r, "Granted")
    })
    .await;
    assert!(alice_can(&env, "list").await);
    let revoked = alice_revokes(&env, &name).await;
    let status = revoked.status.unwrap();
    assert!(status.revoked_at.is_some());
    assert_eq!(
        status.timeline.last().unwrap().actor.as_deref(),
        Some("alice")
    );
    assert!(!alice_can(&env, "list").await, "access gone after revoke");
}

#[tokio::test]
async fn deleting_an_active_request_revokes_first() {
    shared_operator();
    let env = TestEnv::new().await;
    let policy = policy(&env, |spec| spec["approvalsRequired"] = json!(0)).await;
    let name = request(&env, &policy, "view", "1h").await;
    let active = wait_for_request(&requests(&env), &name, "granted", |r| {
        condition_true(r, "Granted")
    })
    .await;
    assert_eq!(bindings_for(&env, &active).await.len(), 1);
    Api::<AccessRequest>::namespaced(env.alice.clone(), &env.namespace)
        .delete(&name, &DeleteParams::default())
        .await
        .expect("alice deletes");
    let gone = tokio::time::timeout(
        support::ACT_LIMIT,
        kube::runtime::wait::await_condition(
            requests(&env),
            &name,
            kube::runtime::conditions::is_deleted(&active.uid().unwrap()),
        ),
    )
    .await;
    assert!(
        matches!(gone, Ok(Ok(_))),
        "the request is deleted once revoked"
    );
    assert!(bindings_for(&env, &active).await.is_empty());
    assert!(!alice_can(&env, "list").await);
}

#[tokio::test]
async fn removing_the_role_from_the_policy_revokes() {
    shared_operator();
    let env = TestEnv::new().await;
    let policy_name = policy(&env, |spec| spec["approvalsRequired"] = json!(0)).await;
    let name = request(&env, &policy_name, "view", "1h").await;
    wait_for_request(&requests(&env), &name, "granted", |r| {
        condition_true(r, "Granted")
    })
    .await;
    let patch = json!({"spec": {"roles": [{"name": "admin", "kubernetes": {"clusterRole": "jit-dev-edit", "namespace": env.namespace}}]}});
    Api::<AccessPolicy>::all(env.admin.clone())
        .patch(&policy_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let revoked = wait_for_request(&requests(&env), &name, "revoked", |r| {
        phase(r) == Some(Phase::Revoked)
    })
    .await;
    let granted = revoked
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Granted")
        .unwrap();
    assert_eq!(granted.reason, "PolicyChanged");
    assert!(!alice_can(&env, "list").await);
}

/// A revoke deletes the bindings it knows of by name, without listing the cluster's bindings:
/// one the status records, and any other labelled with the request's UID that the operator's
/// watch of its bindings has seen (here one made by hand, as an earlier grant of the request
/// at a place its policy no longer names would be). Both are gone by the time the request
/// says it is revoked.
#[tokio::test]
async fn a_revoke_removes_every_binding_of_the_request_not_only_the_recorded_one() {
    shared_operator();
    let env = TestEnv::new().await;
    let policy = policy(&env, |_| {}).await;
    let name = request(&env, &policy, "view", "1h").await;
    let pending = wait_for_request(&requests(&env), &name, "pending", |r| {
        phase(r) == Some(Phase::Pending)
    })
    .await;
    let uid = pending.uid().unwrap();
    let earlier: RoleBinding = serde_json::from_value(json!({
        "metadata": {
            "name": format!("jit-earlier-{}", random_suffix(6)),
            "namespace": env.namespace,
            "labels": {"app.kubernetes.io/managed-by": "jit-operator", "jit.dev/request-uid": uid},
            "annotations": {"jit.dev/request": format!("{}/{name}", env.namespace)},
        },
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "jit-dev-view"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(env.admin.clone(), &env.namespace)
        .create(&PostParams::default(), &earlier)
        .await
        .expect("an earlier binding of the request");
    let active = bob_approves(&env, &name).await;
    assert_eq!(bindings_for(&env, &active).await.len(), 2);
    alice_revokes(&env, &name).await;
    assert_eq!(
        bindings_for(&env, &active)
            .await
            .iter()
            .map(ResourceExt::name_any)
            .collect::<Vec<_>>(),
        Vec::<String>::new(),
        "every binding of the request is gone once it says revoked"
    );
    assert!(!alice_can(&env, "list").await);
}
