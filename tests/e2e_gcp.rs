//! The Google Cloud provider end to end: the operator (a separate process, `--providers gcp`)
//! with its real google-cloud-rust clients against the fake Resource Manager in
//! tests/support/gcp.rs. The shared cloud scenarios (tests/support/clouds.rs) run over it: a
//! conditional binding with the exact condition is made on approval and removed at expiry,
//! revoke and delete, and everything else in the policy survives; a binding removed by hand is
//! restored; a standing binding of the same role is left alone; throttling, 5xx and a dropped
//! reply are retried, and the retry adopts rather than duplicates; Google's refusal fails the
//! request. Here besides: a change made between our read and write survives our write, and a
//! cloud throttling every look is asked a handful of times.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    sync::{Mutex, OnceLock},
    time::Duration,
};

use jit_operator::crd::v1alpha1::{AccessRequest, Phase};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use support::{
    Ending, TestEnv, alice_requests,
    clouds::{CloudUnderTest, FaultyCloud, Standing, cloud_scenarios},
    create_policy,
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

/// Google Cloud under the shared scenarios: one kind of grant, a conditional binding.
struct Gcp;

#[derive(Clone, Copy, Debug)]
struct Conditional;

/// The member alice is mapped to.
const ALICE: &str = "user:alice@example.com";

impl CloudUnderTest for Gcp {
    type Kind = Conditional;
    /// A project's resource name.
    type Place = String;
    const PROVIDER: &'static str = "gcp";
    const SHORT: &'static str = "6s";

    fn start_operator(&self) {
        let _ = gcp_operator();
    }

    fn kinds(&self) -> Vec<Conditional> {
        vec![Conditional]
    }

    fn cloud_enforced(&self, _: Conditional) -> bool {
        true
    }

    async fn place(&self, _: Conditional) -> String {
        project()
    }

    async fn policy(&self, env: &TestEnv, resource: &String, approvals: u32) -> String {
        gcp_policy(env, resource, "user:{{mapping.email}}", approvals).await
    }

    async fn request(&self, env: &TestEnv, policy: &str, duration: &str) -> AccessRequest {
        request(env, policy, duration).await
    }

    async fn held(&self, resource: &String, uid: &str) -> usize {
        ours(resource, uid).len()
    }

    async fn check_granted(&self, env: &TestEnv, resource: &String, active: &AccessRequest) {
        let (name, uid) = (active.name_any(), active.uid().unwrap());
        let expires_at = active
            .status
            .as_ref()
            .unwrap()
            .expires_at
            .as_ref()
            .unwrap()
            .0;
        let bound = ours(resource, &uid);
        assert_eq!(bound[0]["role"], "roles/viewer");
        assert_eq!(bound[0]["members"], json!([ALICE]));
        assert_eq!(
            bound[0]["condition"]["expression"],
            format!(
                "request.time < timestamp(\"{}\")",
                expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
            ),
            "the condition ends it at status.expiresAt"
        );
        assert_eq!(
            bound[0]["condition"]["description"],
            format!(
                "{}/{name} approved by bob: INC-77 dashboards down",
                env.namespace
            )
        );
        assert_eq!(gcp_fake().policy(resource)["version"], 3);
    }

    async fn check_ended(&self, resource: &String, ending: Ending) {
        assert_eq!(
            theirs(resource),
            original_without_version(),
            "{ending:?}: the rest as it was"
        );
    }

    fn repairable(&self) -> Conditional {
        Conditional
    }

    async fn snapshot(&self, resource: &String, uid: &str) -> Value {
        json!(ours(resource, uid))
    }

    async fn remove_by_hand(&self, resource: &String, _uid: &str) {
        // An administrator puts the original policy back, dropping our binding.
        gcp_fake().create(resource, original_policy());
    }

    fn standing_kinds(&self) -> Vec<Conditional> {
        vec![Conditional]
    }

    async fn hold_by_hand(&self, resource: &String) -> Standing {
        let mut policy = original_policy();
        policy["bindings"]
            .as_array_mut()
            .unwrap()
            .push(json!({"role": "roles/viewer", "members": [ALICE]}));
        gcp_fake().create(resource, policy);
        // Ours is a binding of its own, with its own condition; theirs has none.
        Standing::Beside
    }

    async fn held_by_hand(&self, resource: &String) -> bool {
        gcp_fake().policy(resource)["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|binding| binding == &json!({"role": "roles/viewer", "members": [ALICE]}))
    }

    async fn stranger(&self, env: &TestEnv) -> (String, String, Vec<String>) {
        let resource = project();
        let policy = gcp_policy(env, &resource, "user:{{username}}@nonexistent.example", 0).await;
        let words = vec!["User alice@nonexistent.example does not exist.".to_owned()];
        (resource, policy, words)
    }

    async fn check_untouched(&self, resource: &String) {
        assert_eq!(theirs(resource), original_without_version());
    }
}

impl FaultyCloud for Gcp {
    type Fault = Fault;

    fn inject(&self, resource: &String, faults: &[Fault]) {
        gcp_fake().inject(resource, faults);
    }

    fn pending_faults(&self, resource: &String) -> usize {
        gcp_fake().pending_faults(resource)
    }

    fn writes(&self, resource: &String) -> usize {
        gcp_fake().writes(resource)
    }

    fn transient_faults(&self) -> Vec<Fault> {
        vec![
            Fault::TooManyRequests(1),
            Fault::Conflict,
            Fault::ServerError,
        ]
    }

    fn dropped_reply(&self) -> Fault {
        Fault::DropReply
    }

    fn check_retries(&self, _resource: &String) {}

    async fn forbidden(&self, env: &TestEnv) -> (String, Vec<String>) {
        // Never created in the fake: Google answers 403 for projects that do not exist or that
        // the caller may not see.
        let resource = format!("projects/elsewhere-{}", random_suffix(8).to_lowercase());
        let policy = gcp_policy(env, &resource, "user:{{mapping.email}}", 0).await;
        let words = vec!["The caller does not have permission".to_owned(), resource];
        (policy, words)
    }
}

cloud_scenarios!(Gcp;
    every_kind_is_granted_on_approval_and_gone_after_expiry_revoke_and_delete,
    a_grant_removed_by_hand_is_restored,
    access_someone_else_holds_is_left_alone,
    a_principal_the_cloud_does_not_know_fails_the_request_with_its_words,
    a_place_the_operator_may_not_touch_fails_the_request_with_the_clouds_words,
    throttling_conflicts_and_server_errors_are_retried,
    a_retry_after_a_dropped_reply_adopts_instead_of_duplicating,
);

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
