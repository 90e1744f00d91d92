//! The operator keeps AccessPolicies in a watch cache, and reads a policy fresh before it acts
//! on what the cache says. With its policy watch held back (a failpoint delays every change
//! by 3 s), a role added to a policy and requested at once is granted, not failed for a role
//! the cache does not have yet: GitOps applies the two together.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use jit_operator::crd::v1alpha1::{AccessPolicy, Phase};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;
use support::{
    TestEnv, alice_requests, condition_true, operator::Operator, phase, random_suffix, view_policy,
    wait_for_request,
};

#[tokio::test]
async fn a_policy_cache_behind_the_api_server_never_decides_a_request() {
    let env = TestEnv::new().await;
    let policy = view_policy(&env, 0).await;
    let _operator = Operator::start_with(
        "jit-operator",
        &[("FAILPOINTS", "policy-watch=return(3000)")],
    );
    // The cache is offered to reconciles once it has listed every policy (this one too).
    tokio::time::sleep(Duration::from_secs(1)).await;

    let patch: json_patch::Patch = serde_json::from_value(json!([{
        "op": "add",
        "path": "/spec/roles/-",
        "value": {"name": "added", "kubernetes": {"clusterRole": "jit-dev-view", "namespace": env.namespace}}
    }]))
    .unwrap();
    Api::<AccessPolicy>::all(env.admin.clone())
        .patch(&policy, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .unwrap();
    let name = format!("added-{}", random_suffix(6));
    alice_requests(
        &env,
        &name,
        json!({"policy": policy, "role": "added", "duration": "1h"}),
    )
    .await;

    let requests = Api::namespaced(env.admin.clone(), &env.namespace);
    let settled = wait_for_request(&requests, &name, "granted or ended", |request| {
        condition_true(request, "Granted")
            || matches!(
                phase(request),
                Some(Phase::Failed | Phase::Denied | Phase::Expired | Phase::Revoked)
            )
    })
    .await;
    assert_eq!(phase(&settled), Some(Phase::Active), "{:?}", settled.status);
}
