//! The audit trail end to end: the operator (a separate process) delivers every transition of
//! a request as a CloudEvent to a sink that parses it with the official CloudEvents SDK
//! (tests/audit/receiver.py): once per transition, in order, with ids stable per transition;
//! a deleted request's last events arrive; a sink that fails and throttles gets everything
//! afterwards; a policy naming a channel that does not exist is refused; a channel without
//! its Secret says so while requests still grant and revoke.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use jit_operator::crd::v1alpha1::{AccessRequest, NotificationChannel, Phase, annotations};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use support::{
    Ending, TestEnv, annotate, create_policy, end_request, eventually,
    operator::shared_operator,
    phase,
    receiver::{Receiver, channel},
    request_view, wait_for_request,
};

/// A policy like `view_policy` whose events go to `channel`.
async fn routed_policy(env: &TestEnv, channel: &str, approvals: u32) -> String {
    create_policy(
        env,
        json!({
            "requesters": {"groups": ["devs"]},
            "approvers": {"groups": ["approvers"]},
            "approvalsRequired": approvals,
            "maxDuration": "1h",
            "roles": [{"name": "view",
                       "kubernetes": {"clusterRole": "jit-dev-view", "namespace": env.namespace}}],
            "notifications": {"routes": [{"channel": channel}]},
        }),
    )
    .await
}

/// The events about one request, in the order they arrived.
fn events_of(receiver: &Receiver, uid: &str) -> Vec<Value> {
    receiver
        .events()
        .into_iter()
        .filter(|event| event["data"]["request"]["uid"] == uid)
        .collect()
}

fn short_type(event: &Value) -> String {
    event["type"]
        .as_str()
        .unwrap()
        .trim_start_matches("dev.jit.accessrequest.")
        .trim_end_matches(".v1")
        .to_owned()
}

/// Waits until the request's events are exactly `types`, and returns them.
async fn until_events(receiver: &Receiver, uid: &str, types: &[&str]) -> Vec<Value> {
    let wanted: Vec<String> = types.iter().map(|kind| (*kind).to_owned()).collect();
    let wanted = &wanted;
    eventually(&format!("events {types:?} for {uid}"), || async move {
        let events = events_of(receiver, uid);
        let got: Vec<String> = events.iter().map(short_type).collect();
        (got == *wanted).then_some(events)
    })
    .await
}

#[tokio::test]
async fn every_step_of_a_request_reaches_a_cloudevents_sink_once_in_order() {
    let env = TestEnv::new().await;
    let _ = shared_operator();
    let receiver = Receiver::start();
    let channel = channel(&env, "cloudevents", Some(&receiver.url)).await;
    let policy = routed_policy(&env, &channel, 1).await;
    let created = request_view(&env, "audited", &policy, "30m").await;
    let uid = created.uid().unwrap();
    annotate(
        &env.bob,
        &env.namespace,
        "audited",
        annotations::APPROVE,
        "INC-1 looks right",
    )
    .await
    .unwrap();
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    wait_for_request(&requests, "audited", "active", |r| {
        phase(r) == Some(Phase::Active)
    })
    .await;
    end_request(&env, "audited", Ending::Revoke).await;
    let events = until_events(
        &receiver,
        &uid,
        &["requested", "approval", "approved", "granted", "revoked"],
    )
    .await;

    let ids: Vec<&str> = events
        .iter()
        .map(|event| event["id"].as_str().unwrap())
        .collect();
    for (index, id) in ids.iter().enumerate() {
        assert_eq!(*id, format!("{uid}.{index}"), "ids follow the timeline");
    }
    for event in &events {
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(
            event["source"],
            format!(
                "/apis/jit.dev/v1alpha1/namespaces/{}/accessrequests/audited",
                env.namespace
            )
        );
        assert_eq!(event["subject"], "alice");
        assert_eq!(event["data"]["policy"], policy.as_str());
        assert_eq!(event["data"]["role"], "view");
        assert_eq!(event["authorization"], "Bearer s3cret-token");
    }
    let requested = &events[0]["data"];
    assert!(
        requested["commands"]["approve"]
            .as_str()
            .unwrap()
            .contains("jit.dev/approve"),
        "{requested}"
    );
    assert_eq!(
        requested["roleDefinition"]["kubernetes"]["clusterRole"],
        "jit-dev-view"
    );
    let approval = &events[1]["data"];
    assert_eq!(approval["actor"], "bob");
    assert_eq!(approval["approvals"][0]["comment"], "INC-1 looks right");
    let granted = &events[3]["data"];
    assert_eq!(granted["grant"]["target"], "kubernetes");
    assert!(granted["expiresAt"].is_string());
    assert!(receiver.rejects().is_empty(), "{:?}", receiver.rejects());

    // Deleted after it ended: the last event still arrives, with the next id.
    requests
        .delete("audited", &Default::default())
        .await
        .unwrap();
    let events = until_events(
        &receiver,
        &uid,
        &[
            "requested",
            "approval",
            "approved",
            "granted",
            "revoked",
            "deleted",
        ],
    )
    .await;
    assert_eq!(events[5]["id"], format!("{uid}.5"));

    // The channel shows it is healthy and owes nothing.
    let channels = Api::<NotificationChannel>::all(env.admin.clone());
    let channel_ref = &channel;
    let channels_ref = &channels;
    eventually("the channel reports its deliveries", || async move {
        let status = channels_ref.get(channel_ref).await.unwrap().status?;
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        (ready && status.backlog == 0 && status.last_delivery_time.is_some()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_sink_that_fails_and_throttles_gets_every_event_afterwards_in_order() {
    let env = TestEnv::new().await;
    let _ = shared_operator();
    let receiver = Receiver::start();
    receiver
        .control(json!({"fail": 3, "status": 429, "retry_after": 1}))
        .await;
    let channel = channel(&env, "cloudevents", Some(&receiver.url)).await;
    let policy = routed_policy(&env, &channel, 0).await;
    let created = request_view(&env, "throttled", &policy, "30m").await;
    let uid = created.uid().unwrap();
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    wait_for_request(&requests, "throttled", "active", |r| {
        phase(r) == Some(Phase::Active)
    })
    .await;
    receiver.control(json!({"fail": 2, "status": 503})).await;
    end_request(&env, "throttled", Ending::Revoke).await;
    let events = until_events(
        &receiver,
        &uid,
        &["requested", "approved", "granted", "revoked"],
    )
    .await;
    let ids: Vec<&str> = events
        .iter()
        .map(|event| event["id"].as_str().unwrap())
        .collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids, unique, "each transition once");
}

#[tokio::test]
async fn a_policy_naming_a_channel_that_does_not_exist_is_refused() {
    let env = TestEnv::new().await;
    let _ = shared_operator();
    let missing = format!("nowhere-{}", support::random_suffix(6).to_lowercase());
    let policy: jit_operator::crd::v1alpha1::AccessPolicy = serde_json::from_value(json!({
        "apiVersion": "jit.dev/v1alpha1", "kind": "AccessPolicy",
        "metadata": {"name": format!("routed-{}", support::random_suffix(6).to_lowercase())},
        "spec": {
            "requesters": {"groups": ["devs"]},
            "maxDuration": "1h",
            "roles": [{"name": "view", "kubernetes": {"clusterRole": "jit-dev-view"}}],
            "notifications": {"routes": [{"channel": missing}]},
        },
    }))
    .unwrap();
    let refused = Api::<jit_operator::crd::v1alpha1::AccessPolicy>::all(env.admin.clone())
        .create(&Default::default(), &policy)
        .await
        .expect_err("a route to a channel that does not exist is refused");
    let message = refused.to_string();
    assert!(
        message.contains(&format!(
            "NotificationChannel {missing}, which does not exist"
        )),
        "{message}"
    );
}

#[tokio::test]
async fn a_channel_without_its_secret_says_so_and_requests_still_grant_and_revoke() {
    let env = TestEnv::new().await;
    let _ = shared_operator();
    let channel = channel(&env, "webhook", None).await;
    let policy = routed_policy(&env, &channel, 0).await;
    request_view(&env, "secretless", &policy, "30m").await;
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    wait_for_request(&requests, "secretless", "active", |r| {
        phase(r) == Some(Phase::Active)
    })
    .await;
    end_request(&env, "secretless", Ending::Revoke).await;
    let channels = Api::<NotificationChannel>::all(env.admin.clone());
    let (channels_ref, channel_ref) = (&channels, &channel);
    let condition = eventually("the channel says its Secret is missing", || async move {
        let status = channels_ref.get(channel_ref).await.unwrap().status?;
        let ready = status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready" && c.reason == "SecretMissing")?;
        (status.backlog > 0).then_some(ready)
    })
    .await;
    assert_eq!(condition.status, "False");
    assert!(
        condition
            .message
            .contains(&format!("Secret {channel} does not exist")),
        "{}",
        condition.message
    );
}
