//! Chaos: a burst of approvals while the operator process is killed with SIGKILL at random
//! moments and restarted. Afterwards every active request has exactly one binding, every
//! ended request none, and every request still expires on time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use jit_operator::crd::v1alpha1::{AccessRequest, Phase, annotations};
use kube::{Api, Client, ResourceExt};
use rand::Rng;
use support::{
    TestEnv, annotate, bindings_of, client_for, operator::Operator, phase, request_view,
    view_policy, wait_for_request,
};

const REQUESTS: usize = 12;
const KILLS: usize = 4;

/// Approves until the webhook (down while the operator is) accepts it, as a person would.
async fn approve_until_accepted(client: Client, namespace: String, name: String) {
    loop {
        match annotate(&client, &namespace, &name, annotations::APPROVE, "chaos").await {
            Ok(_) => return,
            Err(kube::Error::Api(status)) if status.message.contains("already decided") => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_survive_an_operator_killed_at_random() {
    let mut operator = Some(
        tokio::task::spawn_blocking(|| Operator::start("jit-operator"))
            .await
            .unwrap(),
    );
    let env = TestEnv::new().await;
    let policy = view_policy(&env, 1).await;
    let mut names = Vec::new();
    for index in 0..REQUESTS {
        let name = format!("chaos-{index}");
        // Half expire during or soon after the chaos, half stay active.
        let duration = if index % 2 == 0 { "8s" } else { "20m" };
        request_view(&env, &name, &policy, duration).await;
        names.push(name);
    }

    // The burst: each request approved by one of seven approvers, all at once.
    let approvers = [
        "bob",
        "carol",
        "approver-1",
        "approver-2",
        "approver-3",
        "approver-4",
        "approver-5",
    ];
    let mut burst = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let client = client_for(approvers[index % approvers.len()]).await;
        burst.push(tokio::spawn(approve_until_accepted(
            client,
            env.namespace.clone(),
            name.clone(),
        )));
    }

    // Meanwhile: kill the operator at random moments and bring it back.
    for _ in 0..KILLS {
        let pause = rand::rng().random_range(100..1200);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if let Some(running) = operator.take() {
            running.kill();
        }
        let down = rand::rng().random_range(0..600);
        tokio::time::sleep(Duration::from_millis(down)).await;
        operator = Some(
            tokio::task::spawn_blocking(|| Operator::start("jit-operator"))
                .await
                .unwrap(),
        );
    }
    for approval in burst {
        approval.await.unwrap();
    }

    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    for name in &names {
        let settled = wait_for_request(&requests, name, "granted or expired", |r| {
            matches!(phase(r), Some(Phase::Active | Phase::Expired))
                && r.status.as_ref().is_some_and(|s| s.intent.is_none())
        })
        .await;
        let uid = settled.uid().unwrap();
        let expected = usize::from(phase(&settled) == Some(Phase::Active));
        assert_eq!(
            bindings_of(&env, &uid).await.len(),
            expected,
            "{name}: {:?}",
            phase(&settled)
        );
    }
    // Every request still expires on time: the short ones end, at or after expiresAt and
    // within a resync of it, and leave nothing behind.
    for name in names.iter().step_by(2) {
        let expired = wait_for_request(&requests, name, "expired", |r| {
            phase(r) == Some(Phase::Expired)
        })
        .await;
        let status = expired.status.clone().unwrap();
        let expires_at = status.expires_at.clone().expect("it was granted").0;
        let ended = status
            .timeline
            .iter()
            .find(|entry| entry.event == "Expired")
            .expect("an Expired entry")
            .time
            .0;
        assert!(ended >= expires_at, "{name} ended before its time");
        assert!(
            ended.duration_since(expires_at) < jiff::SignedDuration::from_secs(30),
            "{name} ended {} after its time",
            ended.duration_since(expires_at)
        );
        assert_eq!(bindings_of(&env, &expired.uid().unwrap()).await.len(), 0);
    }
    drop(operator);
}
