//! High availability: two operators with `--leader-elect` against the real control plane.
//! Only the Lease holder reconciles (every Event comes from it, the follower observes nothing)
//! while both serve the webhook and report ready; when the leader is killed while a request is
//! active, the other takes over within 20 s and still revokes the grant at its expiry. A
//! binary of its own: it runs its own operators.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use jit_operator::crd::v1alpha1::{AccessRequest, Phase, annotations};
use k8s_openapi::api::{events::v1::Event, rbac::v1::RoleBinding};
use kube::{Api, ResourceExt, api::ListParams};
use serde_json::Value;
use support::{
    TestEnv, annotate, operator::Operator, phase, request_view, view_policy, wait_for_request,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http_status(address: &str, path: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response[9..12].parse().unwrap()
}

fn replica(name: &str) -> (Operator, String) {
    let operator = Operator::start_with_args(
        "jit-operator",
        &["--leader-elect", "--leader-election-lease-duration", "15s"],
        &[("POD_NAME", name)],
    );
    let ready: Value =
        serde_json::from_str(&operator.wait_for_log("operator ready", Duration::from_secs(1)))
            .unwrap();
    let health = ready["health_addr"].as_str().unwrap().to_owned();
    (operator, health)
}

/// Who wrote each Event about `name`, and when.
async fn reporters(env: &TestEnv, name: &str) -> Vec<(String, jiff::Timestamp)> {
    Api::<Event>::namespaced(env.admin.clone(), &env.namespace)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|event| event.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|event| {
            let at = event
                .event_time
                .map(|time| time.0)
                .or(event.metadata.creation_timestamp.map(|time| time.0))
                .unwrap();
            (event.reporting_instance.unwrap_or_default(), at)
        })
        .collect()
}

fn log_lines(operator: &Operator) -> Vec<Value> {
    std::fs::read_to_string(&operator.log)
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

#[tokio::test]
async fn a_new_leader_takes_over_within_20s_and_still_revokes_on_time() {
    let env = TestEnv::new().await;
    let (leader, leader_health) = replica("replica-a");
    leader.wait_for_log("became the leader", Duration::from_secs(30));
    // Ready as leader once its caches are synced (the JSON message, quotes included).
    leader.wait_for_log("\"operator ready\"", Duration::from_secs(30));
    let (follower, follower_health) = replica("replica-b");
    assert!(
        follower
            .wait_for_log("operator ready", Duration::from_secs(1))
            .contains("waiting to lead")
    );
    // Both serve the webhook, so both are ready; only one leads.
    assert_eq!(http_status(&leader_health, "/readyz").await, 200);
    assert_eq!(http_status(&follower_health, "/readyz").await, 200);

    let policy = view_policy(&env, 1).await;
    request_view(&env, "failover", &policy, "40s").await;
    annotate(
        &env.bob,
        &env.namespace,
        "failover",
        annotations::APPROVE,
        "ok",
    )
    .await
    .unwrap();
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    let active = wait_for_request(&requests, "failover", "active", |r| {
        phase(r) == Some(Phase::Active)
    })
    .await;
    let expires_at = active.status.unwrap().expires_at.unwrap().0;
    let bindings = Api::<RoleBinding>::namespaced(env.admin.clone(), &env.namespace);
    let uid = active.metadata.uid.unwrap();
    assert!(
        bindings
            .get_opt(&format!("jit-{uid}"))
            .await
            .unwrap()
            .is_some()
    );
    let before = reporters(&env, "failover").await;
    assert!(!before.is_empty(), "the leader published Events");
    assert!(
        before.iter().all(|(instance, _)| instance == "replica-a"),
        "only the leader wrote: {before:?}"
    );
    assert!(
        !log_lines(&follower)
            .iter()
            .any(|line| line["message"] == "observed access request"),
        "the follower reconciled nothing"
    );

    // The leader dies at once, holding the Lease.
    let killed = Instant::now();
    let killed_at = jiff::Timestamp::now();
    leader.kill();
    follower.wait_for_log("became the leader", Duration::from_secs(30));
    let takeover = killed.elapsed();
    assert!(
        takeover <= Duration::from_secs(20),
        "took over after {takeover:?}"
    );

    // The new leader revokes at the expiry as if nothing happened.
    wait_for_request(&requests, "failover", "expired", |r| {
        phase(r) == Some(Phase::Expired)
    })
    .await;
    let lag = jiff::Timestamp::now().duration_since(expires_at);
    assert!(
        bindings
            .get_opt(&format!("jit-{uid}"))
            .await
            .unwrap()
            .is_none(),
        "binding removed"
    );
    assert!(
        lag <= jiff::SignedDuration::from_secs(5),
        "revoked {lag:?} after expiresAt"
    );
    let after = reporters(&env, "failover").await;
    for (instance, at) in &after {
        match instance.as_str() {
            "replica-a" => assert!(*at <= killed_at, "the old leader wrote after it died"),
            "replica-b" => assert!(*at >= killed_at, "the follower wrote while following"),
            other => panic!("an Event from {other:?}"),
        }
    }
    assert!(
        after.iter().any(|(instance, _)| instance == "replica-b"),
        "the new leader published the expiry: {after:?}"
    );
    assert!(
        requests
            .get("failover")
            .await
            .unwrap()
            .finalizers()
            .is_empty()
    );
}
