//! Attacks on ending a grant, each performed against the real API server with the operator as a
//! process: a status write that never lands, a policy edited under an active grant, a finalizer
//! on a granted binding, a padded request, a stranger deleting someone else's request, a repair
//! the API server refuses.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{collections::BTreeMap, time::Duration};

use jit_operator::crd::v1alpha1::{AccessPolicy, AccessRequest, Phase, annotations};
use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    rbac::v1::RoleBinding,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{
    ACT_LIMIT, TestEnv, annotate, bindings_of, condition_true, operator::shared_operator,
    padded_request, phase, random_suffix, request_view, view_policy, wait_for_bindings,
    wait_for_request,
};

/// The refusal message of a write, or a panic.
fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str) -> String {
    match result {
        Err(kube::Error::Api(status)) => status.message,
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

/// Finding 1: the status write that would make a grant Active never lands (here a
/// ValidatingAdmissionPolicy of the API server refuses it; in the report, etcd's size limit).
/// The grant must still end at the expiry fixed by its first attempt, and that expiry must not
/// move while the write keeps failing.
#[tokio::test]
async fn a_grant_whose_status_write_fails_still_ends_at_its_first_expiry() {
    shared_operator();
    let env = TestEnv::new().await;
    let policy = view_policy(&env, 0).await;
    let marker = format!("blocked by the test in {}", env.namespace);
    let name = format!("jit-test-block-{}", random_suffix(6));
    let vap: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["jit.dev"], "apiVersions": ["v1alpha1"],
                "operations": ["CREATE", "UPDATE"],
                "resources": ["accessrequests", "accessrequests/status"]
            }]},
            "validations": [{
                // Active never lands in this namespace; probes show the policy is in force.
                "expression": format!(
                    "object.metadata.namespace != '{ns}' || (!object.metadata.name.startsWith('probe-') && !(has(object.status) && has(object.status.phase) && object.status.phase == 'Active'))",
                    ns = env.namespace
                ),
                "message": marker,
            }]
        }
    }))
    .unwrap();
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"]}
    }))
    .unwrap();
    let policies = Api::<ValidatingAdmissionPolicy>::all(env.admin.clone());
    let policy_bindings = Api::<ValidatingAdmissionPolicyBinding>::all(env.admin.clone());
    policies.create(&PostParams::default(), &vap).await.unwrap();
    policy_bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    // The API server takes a moment to load a new policy: probe until it refuses.
    let requests = Api::<AccessRequest>::namespaced(env.alice.clone(), &env.namespace);
    let deadline = tokio::time::Instant::now() + ACT_LIMIT;
    for attempt in 0.. {
        let probe = padded_request(&policy, &format!("probe-{attempt}"), 0);
        match requests.create(&PostParams::default(), &probe).await {
            Err(kube::Error::Api(status)) if status.message.contains(&marker) => break,
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the policy never took effect"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let created = request_view(&env, "blocked", &policy, "6s").await;
    let uid = created.uid().unwrap();
    let granted = wait_for_bindings(&env, &uid, "made", |bindings| bindings.len() == 1).await;
    let expiry = granted[0].annotations()["jit.dev/expires-at"].clone();
    let admin_requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    let stuck = admin_requests.get("blocked").await.unwrap();
    assert_ne!(phase(&stuck), Some(Phase::Active), "the write is refused");
    let recorded = stuck.status.as_ref().unwrap().expires_at.clone().unwrap();
    assert_eq!(
        recorded.0.to_string(),
        expiry,
        "the window is recorded before the grant"
    );

    // While the write keeps failing the binding's expiry never moves, and at that expiry the
    // binding goes.
    let deadline = tokio::time::Instant::now() + ACT_LIMIT;
    loop {
        let bindings = bindings_of(&env, &uid).await;
        let Some(binding) = bindings.first() else {
            break;
        };
        assert_eq!(
            binding.annotations()["jit.dev/expires-at"],
            expiry,
            "the expiry moved"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the grant outlived its expiry {expiry}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ended = wait_for_request(&admin_requests, "blocked", "expired", |r| {
        phase(r) == Some(Phase::Expired)
    })
    .await;
    assert_eq!(
        ended.status.unwrap().expires_at.unwrap().0.to_string(),
        expiry
    );
    policy_bindings
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    policies
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
}

/// Finding 2: the policy is edited under an active grant so that the grant can no longer be
/// looked at (its role now names a provider the operator does not run). Expiry still ends it.
#[tokio::test]
async fn a_policy_edit_under_an_active_grant_does_not_stop_its_expiry() {
    shared_operator();
    let env = TestEnv::new().await;
    let policy = view_policy(&env, 0).await;
    let created = request_view(&env, "edited", &policy, "5s").await;
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    wait_for_request(&requests, "edited", "granted", |r| {
        condition_true(r, "Granted")
    })
    .await;
    let patch = json!({"spec": {"roles": [{
        "name": "view",
        "azure": {
            "scope": "/subscriptions/a925f2f7-5c63-4b7b-8799-25a5f97bc3b2",
            "roleDefinitionId": "/subscriptions/a925f2f7-5c63-4b7b-8799-25a5f97bc3b2/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7",
            "principalId": "{{mapping.azureObjectId}}",
            "principalType": "User"
        }
    }]}});
    Api::<AccessPolicy>::all(env.admin.clone())
        .patch(&policy, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_for_request(&requests, "edited", "expired and released", |r| {
        phase(r) == Some(Phase::Expired) && r.finalizers().is_empty()
    })
    .await;
    assert!(bindings_of(&env, &created.uid().unwrap()).await.is_empty());
}

/// Finding 3: someone who may patch RoleBindings puts a finalizer on the operator's binding, so
/// that the delete at expiry leaves it Terminating (and RBAC still honouring it).
#[tokio::test]
async fn a_finalizer_on_a_granted_binding_does_not_keep_it_alive() {
    shared_operator();
    let env = TestEnv::new().await;
    let policy = view_policy(&env, 0).await;
    let created = request_view(&env, "pinned", &policy, "5s").await;
    let uid = created.uid().unwrap();
    let bindings = wait_for_bindings(&env, &uid, "made", |b| b.len() == 1).await;
    let binding = bindings[0].name_any();
    let patch = json!({"metadata": {"finalizers": ["example.com/keep"]}});
    Api::<RoleBinding>::namespaced(env.admin.clone(), &env.namespace)
        .patch(&binding, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    wait_for_request(&requests, "pinned", "expired", |r| {
        phase(r) == Some(Phase::Expired)
    })
    .await;
    let left = Api::<RoleBinding>::namespaced(env.admin.clone(), &env.namespace)
        .get_opt(&binding)
        .await
        .unwrap();
    assert!(
        left.is_none(),
        "the binding is gone, not Terminating: {left:#?}"
    );
}

/// Findings 1 and 4: a request padded with thousands of labels is refused at admission with
/// its size; so is an update that pads an accepted one.
#[tokio::test]
async fn a_padded_request_is_refused_at_admission_with_its_size() {
    shared_operator();
    let env = TestEnv::new().await;
    let policy = view_policy(&env, 1).await;
    let requests = Api::<AccessRequest>::namespaced(env.alice.clone(), &env.namespace);
    let message = refusal(
        requests
            .create(
                &PostParams::default(),
                &padded_request(&policy, "padded", 4000),
            )
            .await,
        "padded create",
    );
    assert!(
        message.contains("an AccessRequest may be at most 262144 bytes"),
        "{message}"
    );

    requests
        .create(
            &PostParams::default(),
            &padded_request(&policy, "grows", 10),
        )
        .await
        .unwrap();
    let padding: BTreeMap<String, String> = (0..4000)
        .map(|index| (format!("grow-{index:05}"), "y".repeat(63)))
        .collect();
    let patch = json!({"metadata": {"labels": padding}});
    let message = refusal(
        requests
            .patch("grows", &PatchParams::default(), &Patch::Merge(&patch))
            .await,
        "padding update",
    );
    assert!(message.contains("at most 262144 bytes"), "{message}");
}

/// A request just under the limit can still be decided: the webhook reads the update review of
/// every object it admits (object and old object, with managedFields).
#[tokio::test]
async fn an_approver_can_deny_a_request_at_the_size_limit() {
    shared_operator();
    let env = TestEnv::new().await;
    let policy = view_policy(&env, 1).await;
    let requests = Api::<AccessRequest>::namespaced(env.alice.clone(), &env.namespace);
    // About 240 KiB of labels.
    requests
        .create(
            &PostParams::default(),
            &padded_request(&policy, "large", 2700),
        )
        .await
        .unwrap();
    annotate(
        &env.bob,
        &env.namespace,
        "large",
        annotations::DENY,
        "not this",
    )
    .await
    .expect("bob may deny a large request");
    let admin_requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    wait_for_request(&admin_requests, "large", "denied", |r| {
        phase(r) == Some(Phase::Denied)
    })
    .await;
}

/// Finding 6: deleting a request revokes it, so only its parties, its approvers and
/// administrators may.
#[tokio::test]
async fn a_stranger_cannot_delete_someone_elses_request() {
    shared_operator();
    let env = TestEnv::new().await;
    let policy = view_policy(&env, 1).await;
    request_view(&env, "mine", &policy, "10m").await;
    request_view(&env, "ours", &policy, "10m").await;
    request_view(&env, "own", &policy, "10m").await;
    let as_user =
        |client: &kube::Client| Api::<AccessRequest>::namespaced(client.clone(), &env.namespace);
    let message = refusal(
        as_user(&env.mallory)
            .delete("mine", &DeleteParams::default())
            .await,
        "mallory deletes alice's request",
    );
    assert!(
        message.contains("mallory may not delete this request"),
        "{message}"
    );
    assert!(as_user(&env.admin).get_opt("mine").await.unwrap().is_some());
    // An approver of its policy, its requester and an administrator may.
    as_user(&env.bob)
        .delete("ours", &DeleteParams::default())
        .await
        .expect("an approver deletes");
    as_user(&env.alice)
        .delete("own", &DeleteParams::default())
        .await
        .expect("the requester deletes");
    as_user(&env.admin)
        .delete("mine", &DeleteParams::default())
        .await
        .expect("an administrator deletes");
}

/// Finding 11: a drift repair the API server refuses (the role now points at a namespace that
/// does not exist) fails the request and revokes the binding it would have replaced.
#[tokio::test]
async fn a_refused_repair_revokes_what_it_replaced() {
    shared_operator();
    let env = TestEnv::new().await;
    let policy = view_policy(&env, 0).await;
    let created = request_view(&env, "moved", &policy, "30m").await;
    let uid = created.uid().unwrap();
    wait_for_bindings(&env, &uid, "made", |b| b.len() == 1).await;
    let patch = json!({"spec": {"roles": [{
        "name": "view",
        "kubernetes": {"clusterRole": "jit-dev-view", "namespace": format!("gone-{}", random_suffix(6))}
    }]}});
    Api::<AccessPolicy>::all(env.admin.clone())
        .patch(&policy, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    wait_for_request(&requests, "moved", "failed", |r| {
        phase(r) == Some(Phase::Failed)
    })
    .await;
    wait_for_bindings(&env, &uid, "revoked", <[RoleBinding]>::is_empty).await;
}

/// Finding 7: an autoApprove expression whose worst case would hold the operator's threads for
/// minutes is refused when the policy is written, with its cost; a cheap one is accepted.
#[tokio::test]
async fn an_expensive_auto_approve_expression_is_refused_when_the_policy_is_written() {
    shared_operator();
    let env = TestEnv::new().await;
    let spec = |expression: &str| {
        json!({
            "requesters": {"groups": ["devs"]},
            "approvers": {"groups": ["approvers"]},
            "approvalsRequired": 1,
            "maxDuration": "1h",
            "autoApprove": {"expression": expression},
            "roles": [{"name": "view", "kubernetes": {"clusterRole": "jit-dev-view", "namespace": env.namespace}}]
        })
    };
    let nested =
        "subject.groups.all(a, subject.groups.all(b, subject.groups.all(c, a + b + c != '')))";
    let policy: AccessPolicy = serde_json::from_value(json!({
        "apiVersion": "jit.dev/v1alpha1",
        "kind": "AccessPolicy",
        "metadata": {"name": format!("costly-{}", random_suffix(6))},
        "spec": spec(nested),
    }))
    .unwrap();
    let policies = Api::<AccessPolicy>::all(env.admin.clone());
    let message = refusal(
        policies.create(&PostParams::default(), &policy).await,
        "nested comprehensions",
    );
    assert!(message.contains("could cost up to"), "{message}");
    assert!(
        message.contains("more than the limit of 1000000"),
        "{message}"
    );
    // A broken expression is refused too, with the compiler's words.
    let mut broken = policy.clone();
    broken.spec.auto_approve.as_mut().unwrap().expression = "request.duration <=".into();
    let message = refusal(
        policies.create(&PostParams::default(), &broken).await,
        "broken expression",
    );
    assert!(message.contains("does not compile"), "{message}");
    // The documented example is accepted.
    support::create_policy(
        &env,
        spec("request.duration <= duration('30m') && 'oncall' in subject.groups"),
    )
    .await;
}
