//! A flood of audit posts against the operator's audit webhook, beside the real API server's
//! own: batches of 400 events as the API server sends them, from four senders without pause
//! until a grant and a revoke made meanwhile are done; a tenth of them calls a real grant
//! allowed. Every one of those is counted (only per-call detail may be shed), a
//! grant and a revoke made during the flood go through, and posts without the API server's
//! token or with an unreadable body are refused and counted. A binary of its own: the flood
//! would slow other tests. The rate is measured by `make bench`, not asserted here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Instant,
};

use jit_operator::crd::v1alpha1::{AccessRequest, Phase, annotations};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use support::{
    Ending, TestEnv, annotate, control_plane, end_request, eventually, operator::Operator, phase,
    request_view, view_policy, wait_for_request,
};

/// The fewest posts the flood makes, however quick the grant and revoke beside it are.
const POSTS: usize = 100;
const BATCH: usize = 400;
/// Of each batch, calls the grant allowed.
const GRANTED_PER_BATCH: usize = 40;
const SENDERS: usize = 4;

/// A batch as kube-apiserver's webhook backend posts it: `granted` calls alice made with the
/// grant's binding, the rest calls by other users allowed by bindings of their own.
fn batch(post: usize, binding: &str, namespace: &str) -> Value {
    let now = jiff::Timestamp::now().to_string();
    let items: Vec<Value> = (0..BATCH)
        .map(|index| {
            let (user, reason) = if index < GRANTED_PER_BATCH {
                (
                    "alice".to_owned(),
                    format!(r#"RBAC: allowed by RoleBinding "{binding}/{namespace}" of ClusterRole "jit-dev-view" to User "alice""#),
                )
            } else {
                let user = format!("load-{}", index % 50);
                let reason = format!(r#"RBAC: allowed by ClusterRoleBinding "standing-{user}" of ClusterRole "view" to User "{user}""#);
                (user, reason)
            };
            json!({
                "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
                "auditID": format!("flood-{post}-{index}"), "stage": "ResponseComplete",
                "requestURI": format!("/api/v1/namespaces/{namespace}/pods?limit=500"),
                "verb": "list", "user": {"username": user, "groups": ["system:authenticated"]},
                "sourceIPs": ["127.0.0.1"],
                "objectRef": {"resource": "pods", "namespace": namespace, "apiVersion": "v1"},
                "responseStatus": {"metadata": {}, "code": 200},
                "requestReceivedTimestamp": now, "stageTimestamp": now,
                "annotations": {
                    "authorization.k8s.io/decision": "allow",
                    "authorization.k8s.io/reason": reason,
                },
            })
        })
        .collect();
    json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": items})
}

fn https_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = std::fs::read(control_plane().dir.join("pki/ca.crt")).unwrap();
    reqwest::Client::builder()
        .tls_certs_merge(reqwest::Certificate::from_pem_bundle(&ca).unwrap())
        .build()
        .unwrap()
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test]
async fn a_flood_is_counted_exactly_while_grants_and_revokes_go_on() {
    let args = control_plane().activity_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let operator = Operator::start_with_args("jit-operator", &args, &[]);
    let env = TestEnv::new().await;
    let policy = view_policy(&env, 1).await;
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    request_view(&env, "flooded", &policy, "30m").await;
    annotate(
        &env.bob,
        &env.namespace,
        "flooded",
        annotations::APPROVE,
        "ok",
    )
    .await
    .unwrap();
    let flooded = wait_for_request(&requests, "flooded", "active", |request| {
        phase(request) == Some(Phase::Active)
    })
    .await;
    let uid = flooded.uid().unwrap();
    let reference = flooded.status.unwrap().grant.unwrap().reference;
    let binding = reference.rsplit('/').next().unwrap().to_owned();

    let url = format!(
        "https://127.0.0.1:{}/audit",
        std::fs::read_to_string(control_plane().dir.join("activity-port"))
            .unwrap()
            .trim()
    );
    let token = std::fs::read_to_string(control_plane().dir.join("pki/activity-token"))
        .unwrap()
        .trim()
        .to_owned();
    let client = https_client();
    let started = Instant::now();
    let posted = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (client, url, token, binding, namespace, posted, done) = (
                client.clone(),
                url.clone(),
                token.clone(),
                binding.clone(),
                env.namespace.clone(),
                posted.clone(),
                done.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let post = posted.fetch_add(1, Ordering::SeqCst);
                    if post >= POSTS && done.load(Ordering::SeqCst) {
                        posted.fetch_sub(1, Ordering::SeqCst);
                        return;
                    }
                    let body = batch(post, &binding, &namespace).to_string();
                    let response = client
                        .post(&url)
                        .bearer_auth(&token)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                }
            })
        })
        .collect();

    // During the flood: a request is granted, and another revoked.
    request_view(&env, "during", &policy, "30m").await;
    annotate(
        &env.bob,
        &env.namespace,
        "during",
        annotations::APPROVE,
        "ok",
    )
    .await
    .unwrap();
    wait_for_request(&requests, "during", "active", |request| {
        phase(request) == Some(Phase::Active)
    })
    .await;
    end_request(&env, "during", Ending::Revoke).await;
    let grant_and_revoke = started.elapsed();
    done.store(true, Ordering::SeqCst);
    for sender in senders {
        sender.await.unwrap();
    }
    let elapsed = started.elapsed();
    let posts = posted.load(Ordering::SeqCst);
    let events = posts * BATCH;
    println!("a grant and a revoke took {grant_and_revoke:?} during the flood");
    println!(
        "posted {events} audit events in {elapsed:?} ({:.0} events/s with {SENDERS} senders)",
        events as f64 / elapsed.as_secs_f64()
    );

    // Refused: no token, a wrong one, an unreadable body.
    let list = r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[]}"#;
    let no_token = client.post(&url).body(list).send().await.unwrap();
    assert_eq!(no_token.status(), 401);
    let wrong = client
        .post(&url)
        .bearer_auth("guess")
        .body(list)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let unreadable = client
        .post(&url)
        .bearer_auth(&token)
        .body("{\"items\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(unreadable.status(), 400);

    // Every call the grant allowed is counted; only lines may have been shed.
    let expected = i64::try_from(posts * GRANTED_PER_BATCH).unwrap();
    let requests = &requests;
    let activity = eventually("the flooded request's count", || async move {
        let request = requests.get("flooded").await.unwrap();
        let activity = request.status.and_then(|status| status.activity)?;
        (activity.actions >= expected).then_some(activity)
    })
    .await;
    assert_eq!(activity.actions, expected, "{activity:#?}");
    assert_eq!(activity.by_verb_and_resource.len(), 1);
    assert_eq!(activity.by_verb_and_resource[0].count, expected);

    let metrics = operator.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"jit_activity_posts_total{outcome="unauthenticated"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(&metrics, r#"jit_activity_posts_total{outcome="malformed"}"#),
        1.0
    );
    assert!(sample(&metrics, r#"jit_activity_posts_total{outcome="accepted"}"#) >= posts as f64);
    assert_eq!(
        sample(&metrics, r#"jit_activity_events_total{outcome="used"}"#),
        expected as f64
    );
    let shed = sample(
        &metrics,
        r#"jit_activity_dropped_total{outcome="audit_line"}"#,
    );
    let lines = std::fs::read_to_string(&operator.log)
        .unwrap()
        .lines()
        .filter(|line| line.contains("\"dev.jit.activity.v1\"") && line.contains(&uid))
        .count();
    println!("audit lines written: {lines}, shed: {shed}");
    assert_eq!(
        lines as f64 + shed,
        expected as f64,
        "every attributed call is either an audit line or counted as shed"
    );
    let flooded = requests.get("flooded").await.unwrap();
    assert_eq!(phase(&flooded), Some(Phase::Active));
}
