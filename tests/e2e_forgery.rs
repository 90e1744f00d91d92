//! Finding 8 of the security review: with the admission webhook out of the way (here its
//! configurations deleted; in the report, `failurePolicy: Ignore` while it was down), a decision
//! record or a status written by anyone but the operator must not create or extend a grant. A
//! binary of its own: it deletes the webhook configurations.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use jit_operator::crd::v1alpha1::{AccessRequest, Phase, annotations};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{
    ACT_LIMIT, TestEnv, annotate, bindings_of, condition_true, operator::Operator, phase,
    request_view, view_policy, wait_for_bindings, wait_for_request,
};

/// Deletes the webhook configurations and waits until the API server no longer calls them: a
/// create naming another requester, which admission refuses, goes through.
async fn remove_webhooks(env: &TestEnv, policy: &str) {
    Api::<MutatingWebhookConfiguration>::all(env.admin.clone())
        .delete("jit-operator", &DeleteParams::default())
        .await
        .unwrap();
    Api::<ValidatingWebhookConfiguration>::all(env.admin.clone())
        .delete("jit-operator", &DeleteParams::default())
        .await
        .unwrap();
    let requests = Api::<AccessRequest>::namespaced(env.alice.clone(), &env.namespace);
    let deadline = tokio::time::Instant::now() + ACT_LIMIT;
    for attempt in 0.. {
        let probe: AccessRequest = serde_json::from_value(json!({
            "apiVersion": "jit.dev/v1alpha1",
            "kind": "AccessRequest",
            "metadata": {"name": format!("probe-{attempt}")},
            "spec": {"policy": policy, "role": "view",
                     "requester": {"username": "nobody", "groups": []}},
        }))
        .unwrap();
        if requests
            .create(&PostParams::default(), &probe)
            .await
            .is_ok()
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the webhooks are still called"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn records_and_status_written_around_admission_never_grant() {
    let operator = Operator::start("jit-operator");
    let env = TestEnv::new().await;
    let policy = view_policy(&env, 1).await;
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);

    // Before: one request granted the proper way, one pending.
    let granted = request_view(&env, "granted", &policy, "30m").await;
    annotate(
        &env.bob,
        &env.namespace,
        "granted",
        annotations::APPROVE,
        "ok",
    )
    .await
    .unwrap();
    wait_for_request(&requests, "granted", "granted", |r| {
        condition_true(r, "Granted")
    })
    .await;
    let pending = request_view(&env, "pending", &policy, "30m").await;
    let forged_status = request_view(&env, "forged-status", &policy, "30m").await;
    wait_for_request(&requests, "forged-status", "pending", |r| {
        phase(r) == Some(Phase::Pending)
    })
    .await;

    remove_webhooks(&env, &policy).await;

    // Alice writes a record saying bob approved, as admission would have, with a made-up seal.
    let forged = json!([{
        "user": "bob", "groups": ["approvers"], "decision": "Approved",
        "time": "2026-01-01T00:00:00Z", "comment": "sure", "seal": "00".repeat(32)
    }]);
    let patch = json!({"metadata": {"annotations": {annotations::DECISIONS: forged.to_string()}}});
    Api::<AccessRequest>::namespaced(env.alice.clone(), &env.namespace)
        .patch("pending", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("nothing stops the write");
    operator.wait_for_log(
        "ignoring decision records without admission's seal",
        ACT_LIMIT,
    );
    let still = requests.get("pending").await.unwrap();
    assert_eq!(phase(&still), Some(Phase::Pending));
    assert_eq!(bindings_of(&env, &pending.uid().unwrap()).await.len(), 0);

    // Someone with rights on status marks a pending request Active for a day.
    let now = jiff::Timestamp::now();
    let day = now + jiff::SignedDuration::from_hours(24);
    let patch = json!({"status": {"phase": "Active", "grantedAt": now.to_string(),
                                  "expiresAt": day.to_string()}});
    requests
        .patch_status(
            "forged-status",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .expect("nothing stops the write");
    let ended = wait_for_request(&requests, "forged-status", "failed", |r| {
        phase(r) == Some(Phase::Failed)
    })
    .await;
    assert!(
        ended
            .status
            .unwrap()
            .message
            .unwrap()
            .contains("not written by the operator")
    );
    assert_eq!(
        bindings_of(&env, &forged_status.uid().unwrap()).await.len(),
        0
    );

    // And extends the real grant by a day: the grant ends instead.
    let patch = json!({"status": {"expiresAt": day.to_string()}});
    requests
        .patch_status("granted", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("nothing stops the write");
    wait_for_request(&requests, "granted", "failed", |r| {
        phase(r) == Some(Phase::Failed)
    })
    .await;
    wait_for_bindings(
        &env,
        &granted.uid().unwrap(),
        "revoked after the extension",
        <[_]>::is_empty,
    )
    .await;
}
