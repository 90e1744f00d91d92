//! Admission against the real API server, with the operator serving its webhooks and the five
//! users: every refusal a person can run into, with the message they see, and the identity
//! stamping that makes requests and approvals unforgeable.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use jit_operator::crd::v1alpha1::{AccessRequest, Approval, FINALIZER, annotations};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use support::{TestEnv, annotate, operator::shared_operator, random_suffix, wait_for_request};

/// A policy: alice and `devs` request, bob and `approvers` approve, one approval, reasons
/// like `INC-1`, at most 2h; the GitOps ServiceAccount may request for others.
async fn policy(env: &TestEnv, changes: impl FnOnce(&mut Value)) -> String {
    let mut spec = json!({
        "requesters": {"users": ["alice"], "groups": ["devs"]},
        "approvers": {"users": ["bob"], "groups": ["approvers"]},
        "delegates": {"users": ["system:serviceaccount:ci:gitops", "carol"]},
        "approvalsRequired": 1,
        "defaultDuration": "30m",
        "maxDuration": "2h",
        "reason": {"required": true, "pattern": "^INC-[0-9]+"},
        "roles": [
            {"name": "view", "kubernetes": {"clusterRole": "view", "namespace": env.namespace}},
            {"name": "edit", "maxDuration": "30m", "kubernetes": {"clusterRole": "edit", "namespace": env.namespace}}
        ]
    });
    changes(&mut spec);
    support::create_policy(env, spec).await
}

fn request_object(policy: &str, changes: impl FnOnce(&mut Value)) -> AccessRequest {
    let mut object = json!({
        "apiVersion": "jit.dev/v1alpha1",
        "kind": "AccessRequest",
        "metadata": {"name": format!("request-{}", random_suffix(8))},
        "spec": {"policy": policy, "role": "view", "duration": "1h", "reason": "INC-7 pager"}
    });
    changes(&mut object["spec"]);
    serde_json::from_value(object).unwrap()
}

async fn create_as(
    client: &Client,
    namespace: &str,
    request: &AccessRequest,
) -> Result<AccessRequest, kube::Error> {
    Api::<AccessRequest>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), request)
        .await
}

/// The message of a refusal by the webhook, or a panic.
fn webhook_refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str) -> String {
    match result {
        Err(kube::Error::Api(status)) => {
            assert!(
                status.message.contains("denied the request"),
                "{what}: expected the webhook to refuse, got {status:?}"
            );
            status.message
        }
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

fn assert_mentions(message: &str, part: &str) {
    assert!(
        message.contains(part),
        "{message:?} does not mention {part:?}"
    );
}

fn decisions(request: &AccessRequest) -> Vec<Approval> {
    request
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(annotations::DECISIONS))
        .map(|text| serde_json::from_str(text).unwrap())
        .unwrap_or_default()
}

#[tokio::test]
async fn create_stamps_the_authenticated_requester() {
    shared_operator();
    let env = TestEnv::new().await;
    let policy = policy(&env, |_| {}).await;
    let created = create_as(&env.alice, &env.namespace, &request_object(&policy, |_| {}))
        .await
        .expect("alice may request");
    let requester = created.spec.requester.expect("stamped");
    assert_eq!(requester.username, "alice");
    assert_eq!(requester.uid.as_deref(), Some("uid-alice"));
    assert!(requester.groups.contains(&"devs".to_string()));
    assert_eq!(created.spec.subject.as_deref(), Some("alice"));
}

#[tokio::test]
async fn nobody_can_name_another_requester() {
    shared_operator();
    let env = TestEnv::new().await;
    let policy = policy(&env, |_| {}).await;
    let forged = request_object(&policy, |spec| {
        spec["requester"] = json!({"username": "alice", "groups": ["devs"]});
    });
    let message = webhook_refusal(
        create_as(&env.mallory, &env.namespace, &forged).await,
        "forged requester",
    );
    assert_mentions(&message, "you are mallory, not alice");
}

#[tokio::test]
async fn the_policy_refuses_what_it_does_not_allow() {
    shared_operator();
    let env = TestEnv::new().await;
    let policy = policy(&env, |_| {}).await;
    let cases: Vec<(&str, &Client, AccessRequest, String)> = vec![
        (
            "a non-requester",
            &env.mallory,
            request_object(&policy, |_| {}),
            "mallory is not a requester of policy".into(),
        ),
        (
            "a missing policy",
            &env.alice,
            request_object("no-such-policy", |_| {}),
            "policy no-such-policy does not exist".into(),
        ),
        (
            "a missing role",
            &env.alice,
            request_object(&policy, |spec| spec["role"] = json!("root")),
            "has no role root; it offers view, edit".into(),
        ),
        (
            "too long for the policy",
            &env.alice,
            request_object(&policy, |spec| spec["duration"] = json!("3h")),
            "duration 3h is longer than the maximum 2h".into(),
        ),
        (
            "too long for the role",
            &env.alice,
            request_object(&policy, |spec| {
                spec["role"] = json!("edit");
                spec["duration"] = json!("45m");
            }),
            "duration 45m is longer than the maximum 30m for role edit".into(),
        ),
        (
            "no reason",
            &env.alice,
            request_object(&policy, |spec| {
                spec.as_object_mut().unwrap().remove("reason");
            }),
            format!("policy {policy} requires a reason"),
        ),
        (
            "a reason off pattern",
            &env.alice,
            request_object(&policy, |spec| spec["reason"] = json!("just because")),
            "does not match the pattern".into(),
        ),
        (
            "someone else's subject, no delegate",
            &env.alice,
            request_object(&policy, |spec| spec["subject"] = json!("dave")),
            "only delegates of policy".into(),
        ),
        (
            "a delegate naming a non-requester",
            &env.carol,
            request_object(&policy, |spec| spec["subject"] = json!("dave")),
            "dave is not a requester of policy".into(),
        ),
    ];
    for (what, client, request, expected) in cases {
        let message = webhook_refusal(create_as(client, &env.namespace, &request).await, what);
        assert_mentions(&message, &expected);
    }
    // A delegate naming a requester is fine; the subject is who gets the role.
    let delegated = create_as(
        &env.carol,
        &env.namespace,
        &request_object(&policy, |spec| spec["subject"] = json!("alice")),
    )
    .await
    .expect("a delegate may request for a requester");
    assert_eq!(delegated.spec.subject.as_deref(), Some("alice"));
    assert_eq!(delegated.spec.requester.unwrap().username, "carol");
}

#[tokio::test]
async fn approvals_are_recorded_in_the_approvers_name_and_refused_for_others() {
    shared_operator();
    let env = TestEnv::new().await;
    let policy = policy(&env, |spec| spec["approvalsRequired"] = json!(2)).await;
    let request = create_as(&env.alice, &env.namespace, &request_object(&policy, |_| {}))
        .await
        .unwrap();
    let name = request.metadata.name.clone().unwrap();
    let ns = env.namespace.as_str();

    for (who, client, expected) in [
        (
            "mallory",
            &env.mallory,
            "mallory is not an approver of policy",
        ),
        ("alice", &env.alice, "alice is not an approver of policy"),
    ] {
        let message = webhook_refusal(
            annotate(client, ns, &name, annotations::APPROVE, "ok").await,
            who,
        );
        assert_mentions(&message, expected);
    }

    let approved = annotate(&env.bob, ns, &name, annotations::APPROVE, "looks fine")
        .await
        .expect("bob approves");
    let records = decisions(&approved);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].user, "bob");
    assert_eq!(records[0].comment.as_deref(), Some("looks fine"));
    assert!(
        !approved
            .metadata
            .annotations
            .unwrap()
            .contains_key(annotations::APPROVE)
    );

    let message = webhook_refusal(
        annotate(&env.bob, ns, &name, annotations::DENY, "changed my mind").await,
        "bob twice",
    );
    assert_mentions(&message, "bob has already decided on this request");

    // Nobody can write or edit the records directly, not even an approver or an admin.
    let forged = serde_json::to_string(&vec![
        records[0].clone(),
        Approval {
            user: "carol".into(),
            ..records[0].clone()
        },
    ])
    .unwrap();
    for (who, client) in [
        ("carol", &env.carol),
        ("admin", &env.admin),
        ("alice", &env.alice),
    ] {
        let message = webhook_refusal(
            annotate(client, ns, &name, annotations::DECISIONS, &forged).await,
            who,
        );
        assert_mentions(&message, "are written only by admission");
    }
    let message = webhook_refusal(
        annotate(&env.alice, ns, &name, annotations::DECISIONS, "[]").await,
        "erasing",
    );
    assert_mentions(&message, "are written only by admission");
}

#[tokio::test]
async fn self_approval_is_refused_unless_the_policy_allows_it() {
    shared_operator();
    let env = TestEnv::new().await;
    // carol is both a requester (by name) and an approver (by group).
    let strict = policy(&env, |spec| spec["requesters"]["users"] = json!(["carol"])).await;
    let request = create_as(&env.carol, &env.namespace, &request_object(&strict, |_| {}))
        .await
        .unwrap();
    let name = request.metadata.name.unwrap();
    let message = webhook_refusal(
        annotate(
            &env.carol,
            &env.namespace,
            &name,
            annotations::APPROVE,
            "me",
        )
        .await,
        "self-approval",
    );
    assert_mentions(&message, "may not approve or deny their own request");

    // The subject of a delegated request may not approve it either: carol asks for alice,
    // and alice, an approver here, would be approving her own access.
    let delegated = policy(&env, |spec| {
        spec["approvers"]["users"] = json!(["bob", "alice"])
    })
    .await;
    let request = create_as(
        &env.carol,
        &env.namespace,
        &request_object(&delegated, |spec| spec["subject"] = json!("alice")),
    )
    .await
    .unwrap();
    let name = request.metadata.name.unwrap();
    let message = webhook_refusal(
        annotate(
            &env.alice,
            &env.namespace,
            &name,
            annotations::APPROVE,
            "mine",
        )
        .await,
        "subject approving",
    );
    assert_mentions(&message, "alice may not approve or deny their own request");

    let lenient = policy(&env, |spec| {
        spec["requesters"]["users"] = json!(["carol"]);
        spec["allowSelfApproval"] = json!(true);
    })
    .await;
    let request = create_as(
        &env.carol,
        &env.namespace,
        &request_object(&lenient, |_| {}),
    )
    .await
    .unwrap();
    let name = request.metadata.name.unwrap();
    annotate(
        &env.carol,
        &env.namespace,
        &name,
        annotations::APPROVE,
        "me",
    )
    .await
    .expect("allowed by allowSelfApproval");
}

#[tokio::test]
async fn only_the_operator_writes_status_and_removes_the_finalizer() {
    shared_operator();
    let env = TestEnv::new().await;
    let policy = policy(&env, |_| {}).await;
    let request = create_as(&env.alice, &env.namespace, &request_object(&policy, |_| {}))
        .await
        .unwrap();
    // Admission adds the finalizer: the create's own answer holds it.
    assert!(
        request.finalizers().iter().any(|f| f == FINALIZER),
        "{:?}",
        request.metadata.finalizers
    );
    let name = request.metadata.name.unwrap();
    let api = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    wait_for_request(&api, &name, "pending with its finalizer", |request| {
        request
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == FINALIZER)
            && support::phase(request) == Some(jit_operator::crd::v1alpha1::Phase::Pending)
    })
    .await;

    for (who, client) in [("alice", &env.alice), ("admin", &env.admin)] {
        let forged = json!({"status": {"phase": "Active"}});
        let result = Api::<AccessRequest>::namespaced(client.clone(), &env.namespace)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&forged))
            .await;
        if who == "alice" {
            // RBAC already stops alice; admission would too.
            assert!(result.is_err(), "alice wrote status");
        } else {
            let message = webhook_refusal(result, who);
            assert_mentions(&message, "written only by the operator");
        }
        let release = json!({"metadata": {"finalizers": null}});
        let result = Api::<AccessRequest>::namespaced(client.clone(), &env.namespace)
            .patch(&name, &PatchParams::default(), &Patch::Merge(&release))
            .await;
        let message = webhook_refusal(result, who);
        assert_mentions(
            &message,
            "only the operator removes the finalizer jit.dev/revoke",
        );
    }
}

#[tokio::test]
async fn decisions_on_an_ended_request_are_refused() {
    shared_operator();
    let env = TestEnv::new().await;
    let policy = policy(&env, |_| {}).await;
    let request = create_as(&env.alice, &env.namespace, &request_object(&policy, |_| {}))
        .await
        .unwrap();
    let name = request.metadata.name.unwrap();
    annotate(
        &env.carol,
        &env.namespace,
        &name,
        annotations::DENY,
        "not now",
    )
    .await
    .expect("carol denies");
    let api = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    wait_for_request(&api, &name, "denied", |request| {
        support::phase(request) == Some(jit_operator::crd::v1alpha1::Phase::Denied)
    })
    .await;
    let message = webhook_refusal(
        annotate(
            &env.bob,
            &env.namespace,
            &name,
            annotations::APPROVE,
            "too late",
        )
        .await,
        "late approval",
    );
    assert_mentions(&message, "has already ended (Denied)");
}

#[tokio::test]
async fn reapplying_the_same_manifest_is_a_no_op() {
    shared_operator();
    let env = TestEnv::new().await;
    let policy = policy(&env, |_| {}).await;
    let manifest = request_object(&policy, |_| {});
    let name = manifest.metadata.name.clone().unwrap();
    let api = Api::<AccessRequest>::namespaced(env.alice.clone(), &env.namespace);
    let params = PatchParams::apply("gitops-tool");
    let first = api
        .patch(&name, &params, &Patch::Apply(&manifest))
        .await
        .expect("server-side apply creates");
    let again = api
        .patch(&name, &params, &Patch::Apply(&manifest))
        .await
        .expect("re-applying is harmless");
    assert_eq!(again.spec, first.spec);
    assert_eq!(again.spec.requester.unwrap().username, "alice");
    // Changing the manifest is refused.
    let mut changed = manifest.clone();
    changed.spec.duration = Some("2h".parse().unwrap());
    let result = api.patch(&name, &params, &Patch::Apply(&changed)).await;
    match result {
        Err(kube::Error::Api(status)) => assert_mentions(&status.message, "spec is immutable"),
        other => panic!("changed spec accepted: {other:?}"),
    }
}
