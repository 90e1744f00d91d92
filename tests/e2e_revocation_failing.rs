//! Revocation never gives up: with the operator's permission to delete bindings taken away,
//! an expired grant stays Active with a `RevocationFailing` condition, a Warning Event, the
//! `jit_revocations_failing` metric and its finalizer; once the permission is back, the
//! retry succeeds and everything clears.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use jit_operator::crd::v1alpha1::{AccessRequest, Phase};
use k8s_openapi::api::{
    core::v1::Event,
    rbac::v1::{ClusterRole, RoleBinding},
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{
    TestEnv, condition_true, operator::Operator, phase, request_view, view_policy, wait_for_request,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn metrics(address: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

async fn set_binding_verbs(env: &TestEnv, verbs: &[&str]) {
    let roles = Api::<ClusterRole>::all(env.admin.clone());
    let mut role = roles.get("jit-operator").await.unwrap();
    for rule in role.rules.iter_mut().flatten() {
        if rule
            .resources
            .as_ref()
            .is_some_and(|r| r.iter().any(|r| r == "rolebindings"))
        {
            rule.verbs = verbs.iter().map(|verb| verb.to_string()).collect();
        }
    }
    roles
        .replace("jit-operator", &PostParams::default(), &role)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_failing_revoke_is_retried_loudly_until_it_succeeds() {
    let operator = Operator::start("jit-operator");
    let ready: serde_json::Value = serde_json::from_str(
        &operator.wait_for_log("operator ready", std::time::Duration::from_secs(1)),
    )
    .unwrap();
    let health = ready["health_addr"].as_str().unwrap().to_owned();
    let env = TestEnv::new().await;
    let policy = view_policy(&env, 0).await;
    request_view(&env, "stuck", &policy, "4s").await;
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    let active = wait_for_request(&requests, "stuck", "granted", |r| {
        condition_true(r, "Granted")
    })
    .await;

    // The operator loses the right to delete bindings before the grant expires.
    let all_verbs = ["get", "list", "watch", "create", "patch", "delete"];
    set_binding_verbs(&env, &["get", "list", "watch", "create", "patch"]).await;

    let failing = wait_for_request(&requests, "stuck", "showing RevocationFailing", |r| {
        condition_true(r, "RevocationFailing")
    })
    .await;
    assert_eq!(
        phase(&failing),
        Some(Phase::Active),
        "not ended while the grant exists"
    );
    assert!(!failing.finalizers().is_empty(), "the finalizer stays");
    let condition = failing
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "RevocationFailing")
        .unwrap()
        .clone();
    assert!(
        condition.message.contains("forbidden"),
        "{}",
        condition.message
    );
    let selector = format!("jit.dev/request-uid={}", active.uid().unwrap());
    let held = Api::<RoleBinding>::all(env.admin.clone())
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap();
    assert_eq!(held.items.len(), 1);
    // The Event follows the status write; each retry that fails the same way counts on it as
    // a series rather than adding an Event.
    let warned = async {
        loop {
            let events = Api::<Event>::namespaced(env.admin.clone(), &env.namespace)
                .list(&ListParams::default().fields("involvedObject.name=stuck"))
                .await
                .unwrap();
            let failing: Vec<&Event> = events
                .items
                .iter()
                .filter(|e| {
                    e.reason.as_deref() == Some("RevocationFailing")
                        && e.type_.as_deref() == Some("Warning")
                })
                .collect();
            if failing.iter().any(|e| {
                e.series
                    .as_ref()
                    .is_some_and(|series| series.count >= Some(2))
            }) {
                return failing.len();
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    let warnings = tokio::time::timeout(support::ACT_LIMIT, warned)
        .await
        .expect("a Warning Event RevocationFailing, seen again");
    assert_eq!(warnings, 1, "repeats are counted on the one Event");
    assert!(metrics(&health).await.contains("jit_revocations_failing 1"));

    // Permission back: the retry goes through and everything clears.
    set_binding_verbs(&env, &all_verbs).await;
    let expired = wait_for_request(&requests, "stuck", "expired and released", |r| {
        phase(r) == Some(Phase::Expired) && r.finalizers().is_empty()
    })
    .await;
    assert!(!condition_true(&expired, "RevocationFailing"));
    let held = Api::<RoleBinding>::all(env.admin.clone())
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap();
    assert!(held.items.is_empty());
    let after = metrics(&health).await;
    assert!(after.contains("jit_revocations_failing 0"), "{after}");
    let patch = json!({"metadata": {"labels": {"checked": "true"}}});
    // The request is still an ordinary object afterwards.
    requests
        .patch("stuck", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}
