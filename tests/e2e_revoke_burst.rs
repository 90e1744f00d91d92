//! A burst of revokes come due at once (here: two dozen grants that ran out while the
//! operator was down): every binding is removed and every request ends, and what follows a
//! revoke (its Events, its audit record, its finalizer's release) still follows for each, after
//! the revokes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use jit_operator::crd::v1alpha1::{AccessRequest, Phase};
use k8s_openapi::api::{core::v1::Event, rbac::v1::RoleBinding};
use kube::{Api, ResourceExt, api::ListParams};
use support::{
    TestEnv, condition_true, eventually, operator::Operator, phase, request_view, view_policy,
    wait_for_request,
};

/// More than the number of late revokes that tell the operator revokes are behind.
const REQUESTS: usize = 24;

/// The value of the metric line starting with `name ` in `metrics`.
fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

#[tokio::test]
async fn a_burst_of_overdue_revokes_removes_every_binding_and_every_followup_still_comes() {
    let first = Operator::start("jit-operator");
    let env = TestEnv::new().await;
    let policy = view_policy(&env, 0).await;
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    let names: Vec<String> = (0..REQUESTS)
        .map(|index| format!("burst-{index}"))
        .collect();
    for name in &names {
        request_view(&env, name, &policy, "20s").await;
    }
    let mut uids = Vec::new();
    let mut last_expiry = jiff::Timestamp::UNIX_EPOCH;
    for name in &names {
        let active =
            wait_for_request(&requests, name, "granted", |r| condition_true(r, "Granted")).await;
        uids.push(active.uid().unwrap());
        let expires_at = active.status.unwrap().expires_at.unwrap().0;
        last_expiry = last_expiry.max(expires_at);
    }
    first.kill();

    // Every grant runs out while nobody is there to revoke it.
    let remaining = last_expiry.duration_since(jiff::Timestamp::now());
    let remaining = Duration::try_from(remaining).unwrap_or_default();
    tokio::time::sleep(remaining + Duration::from_millis(500)).await;
    let bindings = Api::<RoleBinding>::namespaced(env.admin.clone(), &env.namespace);
    let managed = ListParams::default().labels("app.kubernetes.io/managed-by=jit-operator");
    assert_eq!(
        bindings.list(&managed).await.unwrap().items.len(),
        REQUESTS,
        "the bindings outlive their expiry while the operator is down"
    );

    let second = Operator::start("jit-operator");
    for name in &names {
        wait_for_request(&requests, name, "expired", |r| {
            phase(r) == Some(Phase::Expired)
        })
        .await;
    }
    assert!(
        bindings.list(&managed).await.unwrap().items.is_empty(),
        "every binding is gone once every request shows Expired"
    );
    let held = metric(&second.metrics().await, "jit_revoke_followups_held_total");
    assert!(
        held >= 1.0,
        "two dozen overdue revokes at once are a burst: followups wait for the revokes"
    );

    // Then what follows each revoke, for every one of them.
    let events = Api::<Event>::namespaced(env.admin.clone(), &env.namespace);
    for (name, uid) in names.iter().zip(&uids) {
        wait_for_request(&requests, name, "released", |r| r.finalizers().is_empty()).await;
        eventually(&format!("an Expired Event about {name}"), || async {
            let listed = events
                .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
                .await
                .ok()?;
            listed
                .items
                .iter()
                .any(|event| event.reason.as_deref() == Some("Expired"))
                .then_some(())
        })
        .await;
        let log = std::fs::read_to_string(&second.log).unwrap();
        let recorded = log
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .any(|event| {
                event["type"] == "dev.jit.accessrequest.expired.v1"
                    && event["data"]["request"]["uid"] == uid.as_str()
            });
        assert!(recorded, "no expired audit event for {name} in {log}");
    }
    eventually("no followups left waiting", || async {
        let metrics = second.metrics().await;
        (metric(&metrics, "jit_revoke_followups_waiting") == 0.0).then_some(())
    })
    .await;
}
