//! The operator killed while a grant is active and restarted after its expiry: the grant is
//! revoked as soon as the operator is back, from what the request's status recorded. While
//! the operator is down, admission fails closed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use jit_operator::crd::v1alpha1::{AccessPolicy, AccessRequest, Phase};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::{
    Api, ResourceExt,
    api::{ListParams, PostParams},
};
use serde_json::json;
use support::{
    TestEnv, condition_true, operator::Operator, phase, random_suffix, wait_for_request,
};

#[tokio::test]
async fn a_grant_that_expires_while_the_operator_is_down_is_revoked_on_restart() {
    let first = Operator::start("jit-operator");
    let env = TestEnv::new().await;
    let policy_name = format!("policy-{}", random_suffix(8));
    let policy: AccessPolicy = serde_json::from_value(json!({
        "apiVersion": "jit.dev/v1alpha1",
        "kind": "AccessPolicy",
        "metadata": {"name": policy_name},
        "spec": {
            "requesters": {"groups": ["devs"]},
            "approvers": {"groups": ["approvers"]},
            "approvalsRequired": 0,
            "maxDuration": "1h",
            "roles": [{"name": "view", "kubernetes": {"clusterRole": "jit-dev-view", "namespace": env.namespace}}]
        }
    }))
    .unwrap();
    Api::<AccessPolicy>::all(env.admin.clone())
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let request: AccessRequest = serde_json::from_value(json!({
        "apiVersion": "jit.dev/v1alpha1",
        "kind": "AccessRequest",
        "metadata": {"name": "short"},
        "spec": {"policy": policy_name, "role": "view", "duration": "5s"}
    }))
    .unwrap();
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    Api::<AccessRequest>::namespaced(env.alice.clone(), &env.namespace)
        .create(&PostParams::default(), &request)
        .await
        .unwrap();
    let active = wait_for_request(&requests, "short", "granted", |r| {
        condition_true(r, "Granted")
    })
    .await;
    let expires_at = active
        .status
        .as_ref()
        .unwrap()
        .expires_at
        .clone()
        .unwrap()
        .0;
    let selector =
        ListParams::default().labels(&format!("jit.dev/request-uid={}", active.uid().unwrap()));
    let bindings = Api::<RoleBinding>::namespaced(env.admin.clone(), &env.namespace);
    assert_eq!(bindings.list(&selector).await.unwrap().items.len(), 1);

    first.kill();

    // With the webhook gone, admission fails closed: no new request gets in unchecked.
    let another: AccessRequest = serde_json::from_value(json!({
        "apiVersion": "jit.dev/v1alpha1",
        "kind": "AccessRequest",
        "metadata": {"name": "while-down"},
        "spec": {"policy": policy_name, "role": "view", "duration": "5s"}
    }))
    .unwrap();
    let refused = Api::<AccessRequest>::namespaced(env.alice.clone(), &env.namespace)
        .create(&PostParams::default(), &another)
        .await;
    assert!(
        refused.is_err(),
        "a request was admitted with the webhook down"
    );

    // Wait out the expiry with the operator down: nothing in Kubernetes ends the binding.
    let remaining = expires_at.duration_since(jiff::Timestamp::now());
    let remaining = std::time::Duration::try_from(remaining).unwrap_or_default();
    tokio::time::sleep(remaining + std::time::Duration::from_millis(500)).await;
    assert_eq!(
        bindings.list(&selector).await.unwrap().items.len(),
        1,
        "the binding outlives its expiry while the operator is down"
    );
    assert_eq!(
        phase(&requests.get("short").await.unwrap()),
        Some(Phase::Active)
    );

    let _second = Operator::start("jit-operator");
    let expired = wait_for_request(&requests, "short", "expired", |r| {
        phase(r) == Some(Phase::Expired)
    })
    .await;
    assert!(bindings.list(&selector).await.unwrap().items.is_empty());
    assert_eq!(
        expired.status.unwrap().expires_at.unwrap().0,
        expires_at,
        "expiresAt never moves"
    );
}
