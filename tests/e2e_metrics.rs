//! Metrics and health as a platform team scrapes them, from the operator as a separate
//! process: after a lifecycle the named metrics hold the right counts (requests by phase,
//! active grants by provider, decision, grant and revoke-lag histograms, provider errors,
//! webhook decisions), and on SIGTERM readiness turns false while liveness holds until the
//! operator stops. A binary of its own: it counts what its one operator did.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use jit_operator::crd::v1alpha1::{AccessRequest, Phase, annotations};
use kube::{Api, api::PostParams};
use serde_json::{Value, json};
use support::{
    ACT_LIMIT, TestEnv, alice_requests, annotate, create_policy, failure_message,
    operator::Operator, phase, request_view, view_policy, wait_for_request,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(address: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    (response[9..12].parse().unwrap(), response)
}

/// The value of the sample `name` (with its labels, as written) in the exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
        .and_then(|line| line[name.len()..].trim().parse().ok())
}

/// Waits until the metrics satisfy `ready`, and returns them.
async fn metrics_when(health: &str, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let ready = &ready;
    support::eventually(&format!("metrics showing {what}"), || async move {
        let (_, text) = get(health, "/metrics").await;
        ready(&text).then_some(text)
    })
    .await
}

fn health_of(operator: &Operator) -> String {
    let ready: Value =
        serde_json::from_str(&operator.wait_for_log("\"operator ready\"", ACT_LIMIT)).unwrap();
    ready["health_addr"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn after_a_lifecycle_the_metrics_count_it_and_sigterm_turns_readiness_off_first() {
    let operator = Operator::start_with_args("jit-operator", &["--shutdown-delay", "3s"], &[]);
    let health = health_of(&operator);
    let env = TestEnv::new().await;
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);

    // One request approved, granted, and expired.
    let policy = view_policy(&env, 1).await;
    request_view(&env, "counted", &policy, "4s").await;
    annotate(
        &env.bob,
        &env.namespace,
        "counted",
        annotations::APPROVE,
        "ok",
    )
    .await
    .unwrap();
    wait_for_request(&requests, "counted", "active", |r| {
        phase(r) == Some(Phase::Active)
    })
    .await;
    metrics_when(&health, "the active grant", |text| {
        sample(text, "jit_active_grants{provider=\"kubernetes\"}") == Some(1.0)
            && sample(text, "jit_requests{phase=\"Active\"}") == Some(1.0)
    })
    .await;
    wait_for_request(&requests, "counted", "expired", |r| {
        phase(r) == Some(Phase::Expired)
    })
    .await;

    // One refused by admission: mallory is no requester.
    let refused: AccessRequest = serde_json::from_value(json!({
        "apiVersion": "jit.dev/v1alpha1", "kind": "AccessRequest",
        "metadata": {"name": "refused"},
        "spec": {"policy": policy, "role": "view"},
    }))
    .unwrap();
    let mallory = support::client_for("mallory").await;
    assert!(
        Api::<AccessRequest>::namespaced(mallory, &env.namespace)
            .create(&PostParams::default(), &refused)
            .await
            .is_err()
    );

    // One whose target this operator is not configured for.
    let aws_policy = create_policy(
        &env,
        json!({
            "requesters": {"groups": ["devs"]}, "approvers": {"groups": ["approvers"]},
            "approvalsRequired": 0, "maxDuration": "1h",
            "roles": [{"name": "cloud", "aws": {
                "principal": "arn:aws:iam::123456789012:user/{{username}}",
                "policyArn": "arn:aws:iam::aws:policy/ReadOnlyAccess"}}],
        }),
    )
    .await;
    alice_requests(
        &env,
        "unconfigured",
        json!({"policy": aws_policy, "role": "cloud", "duration": "10m"}),
    )
    .await;
    failure_message(&env, "unconfigured").await;

    let text = metrics_when(&health, "the whole lifecycle", |text| {
        sample(text, "jit_requests{phase=\"Expired\"}") == Some(1.0)
            && sample(text, "jit_requests{phase=\"Failed\"}") == Some(1.0)
            && sample(text, "jit_revoke_lag_seconds_count") == Some(1.0)
    })
    .await;
    for (name, value) in [
        ("jit_active_grants{provider=\"kubernetes\"}", 0.0),
        ("jit_requests{phase=\"Active\"}", 0.0),
        // Decided: the approved one and the one granted without approval.
        ("jit_decision_seconds_count", 2.0),
        ("jit_grant_seconds_count", 1.0),
        ("jit_revoke_lag_seconds_count", 1.0),
        (
            "jit_provider_errors_total{provider=\"aws\",category=\"not_configured\"}",
            1.0,
        ),
        ("jit_grants_total", 1.0),
        ("jit_revocations_total", 1.0),
    ] {
        assert_eq!(sample(&text, name), Some(value), "{name} in\n{text}");
    }
    let denied: f64 = text
        .lines()
        .filter(|line| {
            line.starts_with("jit_webhook_decisions_total") && line.contains("outcome=\"denied\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(denied, 1.0, "{text}");
    assert!(
        sample(
            &text,
            "jit_webhook_decisions_total{webhook=\"validate\",outcome=\"allowed\"}"
        )
        .is_some_and(|allowed| allowed >= 3.0),
        "{text}"
    );
    // The lag is from expiresAt to the binding gone: well under the 2 s the design allows.
    let lag = sample(&text, "jit_revoke_lag_seconds_sum").unwrap();
    assert!((0.0..5.0).contains(&lag), "lag {lag}");
    for step in ["observe", "apply", "status"] {
        let name = format!("jit_reconcile_errors_total{{step=\"{step}\"}}");
        assert!(sample(&text, &name).is_some(), "{name} in\n{text}");
    }

    // SIGTERM: not ready at once (load balancers drain), still alive, then gone.
    assert_eq!(get(&health, "/readyz").await.0, 200);
    operator.terminate();
    tokio::time::timeout(Duration::from_secs(2), async {
        while get(&health, "/readyz").await.0 != 503 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("readiness turns off on SIGTERM");
    assert_eq!(
        get(&health, "/healthz").await.0,
        200,
        "alive while draining"
    );
    operator.wait_for_log("shutting down", ACT_LIMIT);
}
