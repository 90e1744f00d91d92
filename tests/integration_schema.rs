//! The CRD schemas as the real API server enforces them: each rule refuses a bad object with a
//! message a person understands, good objects and the samples are accepted, `spec` is frozen
//! after creation and `status` is a subresource.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use jit_operator::crd::v1alpha1::{AccessRequest, AccessRequestStatus, Phase};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use support::{TestEnv, create_raw, random_suffix, read_yaml, refusal_message};

/// A valid policy with a unique name; tests change one thing about it.
fn policy(spec_changes: impl FnOnce(&mut Value)) -> Value {
    let mut policy = json!({
        "apiVersion": "jit.dev/v1alpha1",
        "kind": "AccessPolicy",
        "metadata": {"name": format!("policy-{}", random_suffix(8))},
        "spec": {
            "requesters": {"groups": ["devs"]},
            "approvers": {"groups": ["approvers"]},
            "approvalsRequired": 1,
            "defaultDuration": "30m",
            "maxDuration": "2h",
            "roles": [{"name": "view", "kubernetes": {"clusterRole": "view", "namespace": "prod"}}]
        }
    });
    spec_changes(&mut policy["spec"]);
    policy
}

/// A valid request; tests change one thing about it.
fn request(spec_changes: impl FnOnce(&mut Value)) -> Value {
    let mut request = json!({
        "apiVersion": "jit.dev/v1alpha1",
        "kind": "AccessRequest",
        "metadata": {"name": format!("request-{}", random_suffix(8))},
        "spec": {"policy": "prod-oncall", "role": "view", "duration": "30m", "reason": "INC-1"}
    });
    spec_changes(&mut request["spec"]);
    request
}

async fn refused_policy(env: &TestEnv, spec_changes: impl FnOnce(&mut Value)) -> String {
    let object = policy(spec_changes);
    let what = format!("policy {}", object["spec"]);
    refusal_message(create_raw(&env.admin, None, object).await, &what)
}

async fn refused_request(env: &TestEnv, spec_changes: impl FnOnce(&mut Value)) -> String {
    let object = request(spec_changes);
    let what = format!("request {}", object["spec"]);
    refusal_message(
        create_raw(&env.admin, Some(&env.namespace), object).await,
        &what,
    )
}

fn assert_mentions(message: &str, expected: &[&str]) {
    for part in expected {
        assert!(
            message.contains(part),
            "refusal {message:?} does not mention {part:?}"
        );
    }
}

#[tokio::test]
async fn valid_policy_and_request_are_accepted_with_defaults() {
    let env = TestEnv::new().await;
    let created = create_raw(
        &env.admin,
        None,
        policy(|spec| {
            spec.as_object_mut().unwrap().remove("approvalsRequired");
        }),
    )
    .await
    .expect("a valid policy is accepted");
    // The schema defaults what the user left out: one approval, no self-approval.
    assert_eq!(created.data["spec"]["approvalsRequired"], 1);
    assert_eq!(created.data["spec"]["allowSelfApproval"], false);

    let created = create_raw(&env.admin, Some(&env.namespace), request(|_| {}))
        .await
        .expect("a valid request is accepted");
    assert_eq!(created.data["spec"]["duration"], "30m");
}

#[tokio::test]
async fn request_needs_policy_and_role() {
    let env = TestEnv::new().await;
    for field in ["policy", "role"] {
        let message = refused_request(&env, |spec| {
            spec.as_object_mut().unwrap().remove(field);
        })
        .await;
        assert_mentions(&message, &[&format!("spec.{field}"), "Required value"]);

        let message = refused_request(&env, |spec| spec[field] = json!("")).await;
        assert_mentions(
            &message,
            &[&format!("spec.{field}"), "at least 1 chars long"],
        );
    }
}

#[tokio::test]
async fn durations_must_be_hours_minutes_seconds() {
    let env = TestEnv::new().await;
    for bad in ["banana", "1d", "90", "1.5h", "-1h", "0s", "0h0m"] {
        let message = refused_request(&env, |spec| spec["duration"] = json!(bad)).await;
        assert_mentions(
            &message,
            &[
                "spec.duration",
                &format!("\"{bad}\" is not a positive duration"),
                "1h30m",
            ],
        );
    }
    for bad in ["banana", "2 hours"] {
        let message = refused_policy(&env, |spec| spec["maxDuration"] = json!(bad)).await;
        assert_mentions(
            &message,
            &["spec.maxDuration", "is not a positive duration"],
        );
        let message = refused_policy(&env, |spec| {
            spec["roles"][0]["maxDuration"] = json!(bad);
        })
        .await;
        assert_mentions(
            &message,
            &["spec.roles[0].maxDuration", "is not a positive duration"],
        );
    }
    let message = refused_policy(&env, |spec| spec["approvalTimeout"] = json!("soon")).await;
    assert_mentions(
        &message,
        &["spec.approvalTimeout", "is not a positive duration"],
    );

    for good in ["30s", "15m", "1h30m", "2h0m10s"] {
        create_raw(
            &env.admin,
            Some(&env.namespace),
            request(|spec| spec["duration"] = json!(good)),
        )
        .await
        .unwrap_or_else(|error| panic!("duration {good} was refused: {error}"));
    }
}

#[tokio::test]
async fn policy_needs_at_least_one_role() {
    let env = TestEnv::new().await;
    let message = refused_policy(&env, |spec| spec["roles"] = json!([])).await;
    assert_mentions(&message, &["spec.roles", "at least 1 items"]);
    let message = refused_policy(&env, |spec| {
        spec.as_object_mut().unwrap().remove("roles");
    })
    .await;
    assert_mentions(&message, &["spec.roles", "Required value"]);
}

#[tokio::test]
async fn policy_needs_a_max_duration_no_shorter_than_the_default() {
    let env = TestEnv::new().await;
    let message = refused_policy(&env, |spec| {
        spec.as_object_mut().unwrap().remove("maxDuration");
    })
    .await;
    assert_mentions(&message, &["spec.maxDuration", "Required value"]);

    let message = refused_policy(&env, |spec| {
        spec["defaultDuration"] = json!("3h");
        spec["maxDuration"] = json!("2h");
    })
    .await;
    assert_mentions(
        &message,
        &[
            "spec.defaultDuration",
            "defaultDuration 3h must not be longer than maxDuration 2h",
        ],
    );
    // Equal is fine, and units are compared by length of time, not by text.
    for (default, max) in [("2h", "2h"), ("90m", "2h"), ("3600s", "1h")] {
        create_raw(
            &env.admin,
            None,
            policy(|spec| {
                spec["defaultDuration"] = json!(default);
                spec["maxDuration"] = json!(max);
            }),
        )
        .await
        .unwrap_or_else(|error| panic!("default {default} with max {max} was refused: {error}"));
    }
}

#[tokio::test]
async fn approvals_required_is_never_negative() {
    let env = TestEnv::new().await;
    let message = refused_policy(&env, |spec| spec["approvalsRequired"] = json!(-1)).await;
    assert_mentions(
        &message,
        &["spec.approvalsRequired", "greater than or equal to 0"],
    );
    let message = refused_policy(&env, |spec| {
        spec["roles"][0]["approvalsRequired"] = json!(-1);
    })
    .await;
    assert_mentions(
        &message,
        &[
            "spec.roles[0].approvalsRequired",
            "greater than or equal to 0",
        ],
    );
    create_raw(
        &env.admin,
        None,
        policy(|spec| spec["approvalsRequired"] = json!(0)),
    )
    .await
    .expect("zero approvals (grant without approval) is allowed");
}

#[tokio::test]
async fn role_names_are_unique_within_a_policy() {
    let env = TestEnv::new().await;
    let message = refused_policy(&env, |spec| {
        spec["roles"] = json!([
            {"name": "view", "kubernetes": {"clusterRole": "view"}},
            {"name": "edit", "kubernetes": {"clusterRole": "edit"}},
            {"name": "view", "kubernetes": {"clusterRole": "admin"}}
        ]);
    })
    .await;
    assert_mentions(
        &message,
        &["spec.roles", "role names must be unique within a policy"],
    );
}

#[tokio::test]
async fn each_role_names_exactly_one_target() {
    let env = TestEnv::new().await;
    let message = refused_policy(&env, |spec| spec["roles"] = json!([{"name": "nothing"}])).await;
    assert_mentions(
        &message,
        &[
            "spec.roles[0]",
            "a role must name exactly one target: kubernetes, aws, gcp, azure",
        ],
    );
}

#[tokio::test]
async fn an_aws_role_names_one_kind_of_grant_and_its_principal() {
    let env = TestEnv::new().await;
    let principal = "arn:aws:iam::123456789012:user/{{username}}";
    for aws in [
        json!({"principal": principal}),
        json!({"principal": principal, "policyArn": "arn:aws:iam::aws:policy/ReadOnlyAccess",
               "groupName": "readers"}),
        json!({"policyArn": "arn:aws:iam::aws:policy/ReadOnlyAccess"}),
    ] {
        let message = refused_policy(&env, |spec| {
            spec["roles"] = json!([{"name": "cloud", "aws": aws}])
        })
        .await;
        assert_mentions(
            &message,
            &[
                "spec.roles[0].aws",
                "an aws role must name exactly one of policyDocument, policyArn, groupName, assumeRoleArn, identityCenter, and a principal unless it is identityCenter",
            ],
        );
    }
    let message = refused_policy(&env, |spec| {
        spec["roles"] = json!([{"name": "cloud", "aws": {"principal": principal,
            "policyArn": "arn:aws:s3:::bucket"}}]);
    })
    .await;
    assert_mentions(&message, &["spec.roles[0].aws.policyArn", "should match"]);
}

#[tokio::test]
async fn a_subject_is_mapped_at_most_once() {
    let env = TestEnv::new().await;
    let message = refused_policy(&env, |spec| {
        spec["identityMappings"] = json!([
            {"subject": "alice", "values": {"awsUser": "alice"}},
            {"subject": "alice", "values": {"awsUser": "mallory"}},
        ]);
    })
    .await;
    assert_mentions(&message, &["spec.identityMappings[1]", "Duplicate value"]);
}

#[tokio::test]
async fn spec_cannot_change_after_creation() {
    let env = TestEnv::new().await;
    let created = create_raw(&env.admin, Some(&env.namespace), request(|_| {}))
        .await
        .expect("request");
    let name = created.metadata.name.clone().unwrap();
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    for change in [
        json!({"spec": {"duration": "2h"}}),
        json!({"spec": {"role": "admin"}}),
        json!({"spec": {"subject": "mallory"}}),
    ] {
        let result = requests
            .patch(&name, &PatchParams::default(), &Patch::Merge(&change))
            .await;
        match result {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{change}: {status:?}");
                assert_mentions(&status.message, &["spec is immutable"]);
            }
            other => panic!("changing {change} was not refused: {other:?}"),
        }
    }
    // Writing the same spec again is not a change.
    let same = json!({"spec": created.data["spec"]});
    requests
        .patch(&name, &PatchParams::default(), &Patch::Merge(&same))
        .await
        .expect("re-writing an identical spec is harmless");
}

#[tokio::test]
async fn status_is_a_subresource() {
    let env = TestEnv::new().await;
    let created = create_raw(&env.admin, Some(&env.namespace), request(|_| {}))
        .await
        .expect("request");
    let name = created.metadata.name.clone().unwrap();
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);

    // Status written through the main resource is dropped.
    let mut object = requests.get(&name).await.unwrap();
    object.status = Some(AccessRequestStatus {
        phase: Some(Phase::Active),
        message: Some("forged".into()),
        ..AccessRequestStatus::default()
    });
    let replaced = requests
        .replace(&name, &PostParams::default(), &object)
        .await
        .expect("replace");
    assert_eq!(
        replaced.status, None,
        "status written through the main resource"
    );

    // Through the status subresource it is kept, and the spec is not touched.
    let patch = json!({"status": {"phase": "Denied", "message": "not during the freeze"}});
    let patched = requests
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("status patch");
    let status = patched.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Denied));
    assert_eq!(status.message.as_deref(), Some("not during the freeze"));
    assert_eq!(
        patched.spec.duration.as_ref().map(|d| d.as_str()),
        Some("30m")
    );

    // A status patch cannot change the spec either.
    let sneaky = json!({"spec": {"role": "cluster-admin"}, "status": {"phase": "Active"}});
    let patched = requests
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&sneaky))
        .await
        .expect("status patch");
    assert_eq!(patched.spec.role, "view");
}

#[tokio::test]
async fn samples_are_accepted_and_the_invalid_one_is_refused() {
    let env = TestEnv::new().await;
    let samples = std::fs::read_dir(support::repo_root().join("config/samples"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect::<Vec<_>>();
    let invalid = samples
        .iter()
        .filter(|name| name.starts_with("invalid"))
        .collect::<Vec<_>>();
    assert_eq!(invalid.len(), 1, "exactly one invalid sample: {samples:?}");

    // Policies first: requests name them.
    let mut ordered = samples.clone();
    ordered.sort_by_key(|name| (!name.contains("accesspolicy"), name.clone()));
    for name in &ordered {
        let object = read_yaml(&format!("config/samples/{name}"));
        let namespace = (object["kind"] == "AccessRequest").then_some(env.namespace.as_str());
        let result = create_raw(&env.admin, namespace, object).await;
        if name.starts_with("invalid") {
            let message = refusal_message(result, name);
            assert_mentions(
                &message,
                &["spec.duration", "\"banana\" is not a positive duration"],
            );
        } else {
            result.unwrap_or_else(|error| panic!("sample {name} was refused: {error}"));
        }
    }
}
