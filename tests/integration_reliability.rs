//! Reliability against the real API server with the operator as a process (resync every 2s):
//! bindings deleted or widened by hand are repaired, a seeded orphan is swept, and approvals
//! written at the same moment by several approvers are all recorded, each once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{collections::BTreeMap, time::Duration};

use jit_operator::crd::v1alpha1::{AccessRequest, Approval, Phase, annotations};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{
    ACT_LIMIT, TestEnv, annotate, client_for, condition_true, operator::shared_operator, phase,
    random_suffix, request_view, view_policy, wait_for_request,
};

async fn granted_request(env: &TestEnv, approvals: u32) -> (String, AccessRequest) {
    let policy = view_policy(env, approvals).await;
    let name = format!("request-{}", random_suffix(6));
    let created = request_view(env, &name, &policy, "30m").await;
    (name, created)
}

fn bindings(env: &TestEnv) -> Api<RoleBinding> {
    Api::namespaced(env.admin.clone(), &env.namespace)
}

/// Waits until `check` holds for the binding (or its absence).
async fn wait_for_binding(
    env: &TestEnv,
    name: &str,
    what: &str,
    check: impl Fn(Option<&RoleBinding>) -> bool,
) {
    let waiting = async {
        loop {
            let binding = bindings(env).get_opt(name).await.unwrap();
            if check(binding.as_ref()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(ACT_LIMIT, waiting)
        .await
        .unwrap_or_else(|_| panic!("binding {name} not {what} within {ACT_LIMIT:?}"));
}

#[tokio::test]
async fn a_binding_deleted_by_hand_is_restored() {
    shared_operator();
    let env = TestEnv::new().await;
    let (name, created) = granted_request(&env, 0).await;
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    let active = wait_for_request(&requests, &name, "granted", |r| {
        condition_true(r, "Granted")
    })
    .await;
    let binding = format!("jit-{}", created.uid().unwrap());
    bindings(&env)
        .delete(&binding, &DeleteParams::default())
        .await
        .unwrap();
    wait_for_binding(&env, &binding, "restored", |b| b.is_some()).await;
    let repaired = wait_for_request(&requests, &name, "showing the repair", |r| {
        r.status
            .as_ref()
            .is_some_and(|s| s.timeline.iter().any(|e| e.event == "Repaired"))
    })
    .await;
    assert_eq!(phase(&repaired), Some(Phase::Active));
    assert_eq!(
        repaired.status.unwrap().expires_at,
        active.status.unwrap().expires_at,
        "a repair keeps the expiry"
    );
}

#[tokio::test]
async fn a_binding_widened_by_hand_is_narrowed() {
    shared_operator();
    let env = TestEnv::new().await;
    let (name, created) = granted_request(&env, 0).await;
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    wait_for_request(&requests, &name, "granted", |r| {
        condition_true(r, "Granted")
    })
    .await;
    let binding = format!("jit-{}", created.uid().unwrap());
    // Mallory is slipped into the binding.
    let widened = json!({"subjects": [
        {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"},
        {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "mallory"}
    ]});
    bindings(&env)
        .patch(&binding, &PatchParams::default(), &Patch::Merge(&widened))
        .await
        .unwrap();
    wait_for_binding(&env, &binding, "narrowed to alice", |b| {
        b.and_then(|b| b.subjects.as_ref())
            .is_some_and(|subjects| subjects.len() == 1 && subjects[0].name == "alice")
    })
    .await;
}

#[tokio::test]
async fn an_orphaned_managed_binding_is_swept_and_unmanaged_ones_are_left_alone() {
    shared_operator();
    let env = TestEnv::new().await;
    let binding = |name: &str, labels: BTreeMap<String, String>| RoleBinding {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: "jit-dev-view".into(),
        },
        subjects: Some(vec![Subject {
            kind: "User".into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            name: "mallory".into(),
            namespace: None,
        }]),
    };
    let orphan = binding(
        "jit-orphan",
        BTreeMap::from([
            ("app.kubernetes.io/managed-by".into(), "jit-operator".into()),
            ("jit.dev/request-uid".into(), "no-such-request".into()),
        ]),
    );
    let unmanaged = binding(
        "someone-elses",
        BTreeMap::from([("jit.dev/request-uid".into(), "no-such-request".into())]),
    );
    bindings(&env)
        .create(&PostParams::default(), &orphan)
        .await
        .unwrap();
    bindings(&env)
        .create(&PostParams::default(), &unmanaged)
        .await
        .unwrap();
    wait_for_binding(&env, "jit-orphan", "swept", |b| b.is_none()).await;
    // The sweep has run at least once: the unmanaged binding is still there.
    assert!(
        bindings(&env)
            .get_opt("someone-elses")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn approvals_written_at_once_are_all_recorded_each_once() {
    shared_operator();
    let env = TestEnv::new().await;
    let (name, _) = granted_request(&env, 5).await;
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    wait_for_request(&requests, &name, "pending", |r| {
        phase(r) == Some(Phase::Pending)
    })
    .await;
    let approvers: Vec<String> = (1..=5).map(|n| format!("approver-{n}")).collect();
    let mut clients = Vec::new();
    for approver in &approvers {
        clients.push(client_for(approver).await);
    }
    let namespace = env.namespace.clone();
    let writes = clients.iter().map(|client| {
        let (namespace, name) = (namespace.clone(), name.clone());
        async move { annotate(client, &namespace, &name, annotations::APPROVE, "ok").await }
    });
    for result in futures::future::join_all(writes).await {
        result.expect("every approver's annotation is accepted");
    }
    let granted = wait_for_request(&requests, &name, "granted", |r| {
        condition_true(r, "Granted")
    })
    .await;
    let records: Vec<Approval> =
        serde_json::from_str(&granted.annotations()[annotations::DECISIONS]).unwrap();
    let mut users: Vec<&str> = records.iter().map(|record| record.user.as_str()).collect();
    users.sort();
    assert_eq!(users, approvers, "each approver recorded exactly once");
    assert_eq!(granted.status.unwrap().approvals.len(), 5);
    let all = Api::<RoleBinding>::all(env.admin.clone())
        .list(&ListParams::default().labels(&format!(
            "jit.dev/request-uid={}",
            granted.metadata.uid.unwrap()
        )))
        .await
        .unwrap();
    assert_eq!(all.items.len(), 1, "exactly one grant");
}
