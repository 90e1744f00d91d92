//! History with a bound: with `--retain-ended`, the operator deletes a request once it has
//! been over for that long, and its audit trail, ending with `deleted`, still reaches the
//! channels; requests still running are left alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use jit_operator::crd::v1alpha1::{AccessRequest, Phase};
use kube::{Api, ResourceExt};
use support::{
    Ending, TestEnv, end_request, eventually,
    operator::Operator,
    phase,
    receiver::{Receiver, channel, routed_policy},
    request_view, wait_for_request,
};

#[tokio::test]
async fn ended_requests_are_deleted_after_their_retention_and_their_trail_arrives() {
    let _operator = Operator::start_with_args("jit-operator", &["--retain-ended", "3s"], &[]);
    let env = TestEnv::new().await;
    let receiver = Receiver::start();
    let channel = channel(&env, "cloudevents", Some(&receiver.url)).await;
    let policy = routed_policy(&env, &channel, 0).await;
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    let ended = request_view(&env, "over", &policy, "30m").await;
    request_view(&env, "running", &policy, "30m").await;
    for name in ["over", "running"] {
        wait_for_request(&requests, name, "active", |r| {
            phase(r) == Some(Phase::Active)
        })
        .await;
    }
    end_request(&env, "over", Ending::Revoke).await;

    let requests_ref = &requests;
    eventually("the ended request is deleted", || async move {
        requests_ref
            .get_opt("over")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let running = requests.get("running").await.unwrap();
    assert_eq!(
        phase(&running),
        Some(Phase::Active),
        "a running request is kept"
    );

    let uid = ended.uid().unwrap();
    let receiver = &receiver;
    let uid = &uid;
    let types = eventually("the deleted request's trail arrives", || async move {
        let types: Vec<String> = receiver
            .events()
            .iter()
            .filter(|event| event["data"]["request"]["uid"] == uid.as_str())
            .map(|event| event["type"].as_str().unwrap().to_owned())
            .collect();
        (types.last().map(String::as_str) == Some("dev.jit.accessrequest.deleted.v1"))
            .then_some(types)
    })
    .await;
    assert_eq!(
        types,
        [
            "dev.jit.accessrequest.requested.v1",
            "dev.jit.accessrequest.approved.v1",
            "dev.jit.accessrequest.granted.v1",
            "dev.jit.accessrequest.revoked.v1",
            "dev.jit.accessrequest.deleted.v1",
        ]
    );
}
