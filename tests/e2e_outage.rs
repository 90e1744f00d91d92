//! The API server restarted under a running operator: the operator keeps running, its
//! watches reconnect, and a request approved after the outage is granted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use jit_operator::crd::v1alpha1::{AccessRequest, Phase, annotations};
use kube::Api;
use support::{
    TestEnv, annotate, condition_true, control_plane, operator::Operator, phase, request_view,
    view_policy, wait_for_request,
};

#[tokio::test]
async fn the_operator_rides_out_an_api_server_restart() {
    let operator = Operator::start("jit-operator");
    let env = TestEnv::new().await;
    let policy = view_policy(&env, 1).await;
    request_view(&env, "across-the-outage", &policy, "10m").await;
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    wait_for_request(&requests, "across-the-outage", "pending", |r| {
        phase(r) == Some(Phase::Pending)
    })
    .await;

    control_plane().restart_apiserver();

    // The operator lives on and picks up what happens after the outage.
    let bob = support::client_for("bob").await;
    annotate(
        &bob,
        &env.namespace,
        "across-the-outage",
        annotations::APPROVE,
        "after the outage",
    )
    .await
    .expect("bob approves");
    wait_for_request(&requests, "across-the-outage", "granted", |r| {
        condition_true(r, "Granted")
    })
    .await;
    operator.wait_for_log("operator ready", Duration::from_secs(1));
    let log = std::fs::read_to_string(&operator.log).unwrap();
    assert!(
        !log.contains("operator stopped"),
        "the operator stopped during the outage"
    );
}
