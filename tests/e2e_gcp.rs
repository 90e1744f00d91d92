//! The Google Cloud provider end to end: the operator (a separate process, `--providers gcp`)
//! with its real google-cloud-rust clients against the fake Resource Manager in
//! tests/support/gcp.rs. A conditional binding is made on approval with the exact condition and
//! removed at expiry, revoke and delete; everything else in the policy survives; a change made
//! between our read and write survives our write; throttling, 5xx and a dropped reply are
//! retried, and the retry adopts rather than duplicates; Google's refusal fails the request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    sync::{Mutex, OnceLock},
    time::Duration,
};

use jit_operator::crd::v1alpha1::{AccessRequest, Phase, annotations};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use support::{
    Ending, TestEnv, alice_requests, annotate, create_policy, end_request, failure_message,
    gcp::{Fault, gcp_fake},
    operator::Operator,
    phase, random_suffix, wait_for_request,
};

fn gcp_operator() -> &'static Mutex<Operator> {
    static SHARED: OnceLock<Mutex<Operator>> = OnceLock::new();
    SHARED.get_or_init(|| {
        Mutex::new(Operator::start_with_args(
            "jit-operator",
            &[
                "--providers",
                "gcp",
                "--gcp-endpoint",
                &gcp_fake().endpoint,
                "--gcp-credentials",
                "anonymous",
            ],
            &[],
        ))
    })
}

/// Someone else's policy on the project: a plain binding, a conditional one, audit configs.
fn original_policy() -> Value {
    json!({
        "version": 3,
        "bindings": [
            {"role": "roles/owner", "members": ["user:root@example.com"]},
            {"role": "roles/viewer", "members": ["group:auditors@example.com"],
             "condition": {"title": "business-hours", "expression": "request.time.getHours(\"UTC\") < 18"}},
        ],
        "auditConfigs": [{"service": "allServices",
                          "auditLogConfigs": [{"logType": "DATA_READ"}]}],
    })
}

/// A fresh project in the fake with the original policy; returns its resource name.
fn project() -> String {
    let resource = format!("projects/jit-{}", random_suffix(10).to_lowercase());
    gcp_fake().create(&resource, original_policy());
    resource
}

async fn gcp_policy(env: &TestEnv, resource: &str, member: &str, approvals: u32) -> String {
    create_policy(
        env,
        json!({
            "requesters": {"groups": ["devs"]},
            "approvers": {"groups": ["approvers"]},
            "approvalsRequired": approvals,
            "maxDuration": "1h",
            "roles": [{"name": "viewer", "gcp": {
                "resource": resource, "role": "roles/viewer", "member": member}}],
            "identityMappings": [{"subject": "alice", "values": {"email": "alice@example.com"}}],
        }),
    )
    .await
}

async fn request(env: &TestEnv, policy: &str, duration: &str) -> AccessRequest {
    alice_requests(
        env,
        &format!("gcp-{}", random_suffix(6).to_lowercase()),
        json!({"policy": policy, "role": "viewer", "duration": duration,
               "reason": "INC-77 dashboards down"}),
    )
    .await
}

/// Our bindings (by title) in the stored policy.
fn ours(resource: &str, uid: &str) -> Vec<Value> {
    gcp_fake().policy(resource)["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|binding| binding["condition"]["title"] == format!("jit-{uid}").as_str())
        .cloned()
        .collect()
}

/// The policy without what our grants may change: the etag and the version.
fn theirs(resource: &str) -> Value {
    let mut policy = gcp_fake().policy(resource);
    let object = policy.as_object_mut().unwrap();
    object.remove("etag");
    object.remove("version");
    policy
}

fn original_without_version() -> Value {
    let mut policy = original_policy();
    policy.as_object_mut().unwrap().remove("version");
    policy
}

async fn lifecycle(env: &TestEnv, ending: Ending) {
    let resource = project();
    let policy = gcp_policy(env, &resource, "user:{{mapping.email}}", 1).await;
    let duration = if ending == Ending::Expiry {
        "6s"
    } else {
        "30m"
    };
    let created = request(env, &policy, duration).await;
    let (name, uid) = (created.name_any(), created.uid().unwrap());
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    assert!(
        ours(&resource, &uid).is_empty(),
        "{ending:?}: nothing before approval"
    );

    annotate(&env.bob, &env.namespace, &name, annotations::APPROVE, "ok")
        .await
        .unwrap();
    let active = wait_for_request(&requests, &name, "active", |r| {
        phase(r) == Some(Phase::Active)
    })
    .await;
    let status = active.status.unwrap();
    let expires_at = status.expires_at.unwrap().0;
    let grant = status.grant.unwrap();
    assert_eq!(grant.provider, "gcp");
    assert!(grant.cloud_enforced_expiry, "Google ends it at the expiry");
    let bound = ours(&resource, &uid);
    assert_eq!(bound.len(), 1, "{ending:?}: one binding");
    assert_eq!(bound[0]["role"], "roles/viewer");
    assert_eq!(bound[0]["members"], json!(["user:alice@example.com"]));
    assert_eq!(
        bound[0]["condition"]["expression"],
        format!(
            "request.time < timestamp(\"{}\")",
            expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        ),
        "{ending:?}: the condition ends it at status.expiresAt"
    );
    assert_eq!(
        bound[0]["condition"]["description"],
        format!(
            "{}/{name} approved by bob: INC-77 dashboards down",
            env.namespace
        )
    );
    assert_eq!(gcp_fake().policy(&resource)["version"], 3);

    end_request(env, &name, ending).await;
    assert!(
        ours(&resource, &uid).is_empty(),
        "{ending:?}: binding removed"
    );
    assert_eq!(
        theirs(&resource),
        original_without_version(),
        "{ending:?}: the rest as it was"
    );
}

#[tokio::test]
async fn a_conditional_binding_is_made_on_approval_and_removed_at_expiry_revoke_and_delete() {
    let env = TestEnv::new().await;
    let _ = gcp_operator();
    futures::future::join_all(
        [Ending::Expiry, Ending::Revoke, Ending::Delete].map(|ending| lifecycle(&env, ending)),
    )
    .await;
}

/// Grants with no approval needed and waits until active; returns (resource, uid).
async fn granted_with_faults(env: &TestEnv, faults: &[Fault]) -> (String, String) {
    let resource = project();
    gcp_fake().inject(&resource, faults);
    let policy = gcp_policy(env, &resource, "user:{{mapping.email}}", 0).await;
    let created = request(env, &policy, "30m").await;
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    wait_for_request(&requests, &created.name_any(), "active", |r| {
        phase(r) == Some(Phase::Active)
    })
    .await;
    assert_eq!(
        gcp_fake().pending_faults(&resource),
        0,
        "every fault was met"
    );
    (resource, created.uid().unwrap())
}

#[tokio::test]
async fn a_change_made_between_our_read_and_write_survives_our_write() {
    let env = TestEnv::new().await;
    let _ = gcp_operator();
    let (resource, uid) = granted_with_faults(&env, &[Fault::ConcurrentChange]).await;
    let bindings = gcp_fake().policy(&resource)["bindings"].clone();
    assert!(
        bindings
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["members"] == json!(["user:concurrent@example.com"])),
        "the concurrent change is kept: {bindings}"
    );
    assert_eq!(ours(&resource, &uid).len(), 1);
}

#[tokio::test]
async fn throttling_conflicts_and_server_errors_are_retried() {
    let env = TestEnv::new().await;
    let _ = gcp_operator();
    let (resource, uid) = granted_with_faults(
        &env,
        &[
            Fault::TooManyRequests(1),
            Fault::Conflict,
            Fault::ServerError,
        ],
    )
    .await;
    assert_eq!(ours(&resource, &uid).len(), 1);
    assert_eq!(
        gcp_fake().writes(&resource),
        1,
        "written once, after the faults"
    );
}

#[tokio::test]
async fn a_retry_after_a_dropped_reply_adopts_instead_of_duplicating() {
    let env = TestEnv::new().await;
    let _ = gcp_operator();
    let (resource, uid) = granted_with_faults(&env, &[Fault::DropReply]).await;
    assert_eq!(ours(&resource, &uid).len(), 1, "one binding, not two");
    assert_eq!(
        gcp_fake().writes(&resource),
        1,
        "the retry read it back and wrote nothing"
    );
}

#[tokio::test]
async fn google_refusing_the_member_fails_the_request_with_its_message() {
    let env = TestEnv::new().await;
    let _ = gcp_operator();
    let resource = project();
    let policy = gcp_policy(&env, &resource, "user:{{username}}@nonexistent.example", 0).await;
    let created = request(&env, &policy, "10m").await;
    let message = failure_message(&env, &created.name_any()).await;
    assert!(
        message.contains("User alice@nonexistent.example does not exist."),
        "{message}"
    );
    assert_eq!(theirs(&resource), original_without_version());
}

#[tokio::test]
async fn a_resource_the_operator_may_not_touch_fails_the_request_with_googles_words() {
    let env = TestEnv::new().await;
    let _ = gcp_operator();
    // Never created in the fake: Google answers 403 for projects that do not exist or that
    // the caller may not see.
    let resource = format!("projects/elsewhere-{}", random_suffix(8).to_lowercase());
    let policy = gcp_policy(&env, &resource, "user:{{mapping.email}}", 0).await;
    let created = request(&env, &policy, "10m").await;
    let message = failure_message(&env, &created.name_any()).await;
    assert!(
        message.contains("The caller does not have permission"),
        "{message}"
    );
    assert!(message.contains(&resource), "{message}");
}

#[tokio::test]
async fn a_binding_removed_by_hand_is_restored() {
    let env = TestEnv::new().await;
    let _ = gcp_operator();
    let (resource, uid) = granted_with_faults(&env, &[]).await;
    let before = ours(&resource, &uid);
    // An administrator puts the original policy back, dropping our binding.
    gcp_fake().create(&resource, original_policy());
    let (resource_ref, uid_ref, before_ref) = (&resource, &uid, &before);
    support::eventually(
        "the drift check restores the binding as it was",
        || async move { (ours(resource_ref, uid_ref) == *before_ref).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_cloud_throttling_every_look_for_a_minute_is_asked_a_handful_of_times() {
    let env = TestEnv::new().await;
    let _ = gcp_operator();
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    // Two active grants, each on its own project so that each one's looks are counted.
    let mut granted = Vec::new();
    for _ in 0..2 {
        let resource = project();
        let policy = gcp_policy(&env, &resource, "user:{{mapping.email}}", 0).await;
        let created = request(&env, &policy, "90s").await;
        wait_for_request(&requests, &created.name_any(), "active", |r| {
            phase(r) == Some(Phase::Active)
        })
        .await;
        granted.push((resource, created.name_any(), created.uid().unwrap()));
    }
    let minute = Duration::from_secs(60);
    let before: Vec<usize> = granted
        .iter()
        .map(|(resource, ..)| {
            gcp_fake().throttle_reads(resource, minute, 1);
            gcp_fake().reads(resource)
        })
        .collect();
    // The drift check runs every 2 s here: without backoff that is 30 looks each, more with
    // the reconciles each status write starts.
    tokio::time::sleep(minute).await;
    for ((resource, name, _), before) in granted.iter().zip(before) {
        let looks = gcp_fake().reads(resource) - before;
        assert!(
            (2..=10).contains(&looks),
            "{name}: {looks} looks at a throttled grant in a minute; a handful expected"
        );
        let current = requests.get(name).await.unwrap();
        assert_eq!(phase(&current), Some(Phase::Active));
        assert!(
            support::condition_true(&current, "VerifyFailing"),
            "{name}: the failing look shows: {:?}",
            current.status.map(|status| status.conditions)
        );
    }
    // Backing off never delays the end: both expire on time and their bindings go.
    for (resource, name, uid) in &granted {
        wait_for_request(&requests, name, "expired", |r| {
            phase(r) == Some(Phase::Expired)
        })
        .await;
        assert!(ours(resource, uid).is_empty(), "{name}: binding removed");
    }
}
