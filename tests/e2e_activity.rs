//! Session activity end to end: the real kube-apiserver, started with an audit policy and the
//! operator's audit webhook (tests/control-plane/cluster.sh), posts its audit events to the
//! operator (a separate process); what alice does with a grant lands in the request's
//! `status.activity` and as `dev.jit.activity.v1` audit lines, attributed exactly through the
//! binding the API server says allowed each call; an unused grant is revoked as idle.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use jit_operator::crd::v1alpha1::{AccessRequest, Activity, Phase, annotations};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::{
    Api, ResourceExt,
    api::{ListParams, PostParams},
};
use serde_json::{Value, json};
use support::{
    ACT_LIMIT, TestEnv, activity_lines, annotate, bindings_of, control_plane, create_policy,
    eventually, eventually_within,
    operator::Operator,
    phase,
    receiver::{Receiver, channel},
    request_view, wait_for_request,
};

/// The operator of this binary, serving the audit webhook its control plane posts to.
fn operator() -> &'static Operator {
    static OPERATOR: OnceLock<Operator> = OnceLock::new();
    OPERATOR.get_or_init(|| {
        let args = control_plane().activity_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Operator::start_with_args("jit-operator", &args, &[])
    })
}

/// A policy offering `view` (jit-dev-view in the test namespace) on one approval, with
/// `extra` merged into its spec.
async fn policy(env: &TestEnv, extra: Value) -> String {
    let mut spec = json!({
        "requesters": {"groups": ["devs"]},
        "approvers": {"groups": ["approvers"]},
        "approvalsRequired": 1,
        "maxDuration": "1h",
        "roles": [{
            "name": "view",
            "kubernetes": {"clusterRole": "jit-dev-view", "namespace": env.namespace}
        }]
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    create_policy(env, spec).await
}

/// Requests `view` as alice, has bob approve it and waits until it is active.
async fn granted(env: &TestEnv, name: &str, policy: &str) -> AccessRequest {
    request_view(env, name, policy, "30m").await;
    annotate(&env.bob, &env.namespace, name, annotations::APPROVE, "ok")
        .await
        .unwrap();
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    wait_for_request(&requests, name, "active", |request| {
        phase(request) == Some(Phase::Active)
    })
    .await
}

fn activity_of(request: &AccessRequest) -> Activity {
    request
        .status
        .as_ref()
        .and_then(|status| status.activity.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn what_the_grant_allowed_is_counted_exactly_and_nothing_else_is() {
    let operator = operator();
    let env = TestEnv::new().await;
    let configs = Api::<ConfigMap>::namespaced(env.admin.clone(), &env.namespace);
    let settings: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "settings"}, "data": {"a": "b"}}))
            .unwrap();
    configs
        .create(&PostParams::default(), &settings)
        .await
        .unwrap();
    // A SIEM that asked for activity, and a webhook that hears every transition (but not one
    // event per call: it did not ask).
    let sink = Receiver::start();
    let siem = channel(&env, "cloudevents", Some(&sink.url)).await;
    let everything = channel(
        &env,
        "webhook",
        Some(&format!("{}plain/everything", sink.url)),
    )
    .await;
    let policy = policy(
        &env,
        json!({"notifications": {"routes": [
            {"channel": siem, "events": ["Activity"]},
            {"channel": everything},
        ]}}),
    )
    .await;
    let request = granted(&env, "used", &policy).await;
    let uid = request.uid().unwrap();

    // Allowed by her own standing binding (requesters may list requests): not the grant's.
    Api::<AccessRequest>::namespaced(env.alice.clone(), &env.namespace)
        .list(&ListParams::default())
        .await
        .expect("alice may list requests on her own");
    // Allowed by the grant: two calls.
    Api::<Pod>::namespaced(env.alice.clone(), &env.namespace)
        .list(&ListParams::default())
        .await
        .expect("the grant lets alice list pods");
    Api::<ConfigMap>::namespaced(env.alice.clone(), &env.namespace)
        .get("settings")
        .await
        .expect("the grant lets alice read a ConfigMap");
    // Refused: the role does not cover Secrets.
    let refused = Api::<Secret>::namespaced(env.alice.clone(), &env.namespace)
        .get("db")
        .await
        .expect_err("the grant does not cover secrets");
    assert!(
        matches!(&refused, kube::Error::Api(status) if status.code == 403),
        "{refused:?}"
    );

    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    let requests = &requests;
    let activity = eventually(
        "the request's activity to show two actions and one refusal",
        || async move {
            let activity = activity_of(&requests.get("used").await.unwrap());
            (activity.actions >= 2 && activity.refused >= 1).then_some(activity)
        },
    )
    .await;
    // Every call reached the operator in the same batches or earlier; give a straggler the
    // time of two more writes all the same, then look again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let activity = {
        let again = activity_of(&requests.get("used").await.unwrap());
        assert_eq!(again.actions, activity.actions, "{again:#?}");
        again
    };
    assert_eq!(
        activity.actions, 2,
        "exactly the two granted calls: {activity:#?}"
    );
    assert_eq!(activity.refused, 1, "{activity:#?}");
    let mut counted: Vec<(String, String, i64)> = activity
        .by_verb_and_resource
        .iter()
        .map(|count| (count.verb.clone(), count.resource.clone(), count.count))
        .collect();
    counted.sort();
    assert_eq!(
        counted,
        vec![
            ("get".to_owned(), "configmaps".to_owned(), 1),
            ("list".to_owned(), "pods".to_owned(), 1)
        ]
    );
    assert_eq!(activity.other_actions, 0);
    let recent: Vec<(String, String, i32)> = activity
        .recent
        .iter()
        .map(|action| (action.verb.clone(), action.resource.clone(), action.code))
        .collect();
    assert_eq!(recent.len(), 3, "{recent:?}");
    assert!(recent.contains(&("get".into(), "secrets".into(), 403)));
    assert!(
        !recent
            .iter()
            .any(|(_, resource, _)| resource.contains("accessrequests")),
        "the standing binding's call is not the grant's: {recent:?}"
    );
    let settings_read = activity
        .recent
        .iter()
        .find(|action| action.resource == "configmaps")
        .unwrap();
    assert_eq!(settings_read.name.as_deref(), Some("settings"));
    assert_eq!(
        settings_read.namespace.as_deref(),
        Some(env.namespace.as_str())
    );
    let granted_at = request.status.as_ref().unwrap().granted_at.clone().unwrap();
    assert!(activity.first_action_time.unwrap() >= granted_at);
    assert!(activity.as_of.is_some());

    // The same calls, one audit line each, as CloudEvents.
    let lines = eventually("three activity audit lines", || async {
        let lines = activity_lines(operator, &uid);
        (lines.len() >= 3).then_some(lines)
    })
    .await;
    assert_eq!(lines.len(), 3, "{lines:#?}");
    for line in &lines {
        assert_eq!(line["specversion"], "1.0");
        assert_eq!(line["subject"], "alice");
        assert_eq!(
            line["source"],
            format!(
                "/apis/jit.dev/v1alpha1/namespaces/{}/accessrequests/used",
                env.namespace
            )
        );
    }
    let outcomes: Vec<&str> = lines
        .iter()
        .map(|line| line["data"]["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes.iter().filter(|o| **o == "used").count(), 2);
    assert_eq!(outcomes.iter().filter(|o| **o == "refused").count(), 1);

    // The channel that asked got the same events, in CloudEvents batched mode, read back by
    // the official SDK; the one that hears "everything" got transitions only.
    let delivered = eventually("three activity events at the SIEM", || async {
        let events: Vec<Value> = sink
            .events()
            .into_iter()
            .filter(|event| {
                event["type"] == "dev.jit.activity.v1" && event["data"]["request"]["uid"] == uid
            })
            .collect();
        (events.len() >= 3).then_some(events)
    })
    .await;
    assert_eq!(delivered.len(), 3, "{delivered:#?}");
    assert!(delivered.iter().all(|event| event["batched"] == true));
    let mut ids: Vec<&str> = delivered
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    let mut written: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    written.sort_unstable();
    assert_eq!(ids, written, "the events the audit log holds");
    assert!(sink.rejects().is_empty(), "{:?}", sink.rejects());
    let heard_everything = sink.bodies();
    assert!(
        heard_everything
            .iter()
            .any(|body| body["body"]["type"] == "dev.jit.accessrequest.granted.v1"),
        "{heard_everything:#?}"
    );
    assert!(
        !heard_everything
            .iter()
            .any(|body| body["body"].is_array() || body["body"]["type"] == "dev.jit.activity.v1"),
        "{heard_everything:#?}"
    );

    // `kubectl get ar -o wide` shows the count.
    let output = std::process::Command::new(control_plane().kubectl())
        .args([
            "get",
            "accessrequests",
            "used",
            "-o",
            "wide",
            "-n",
            &env.namespace,
        ])
        .env("KUBECONFIG", control_plane().kubeconfig("admin"))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    let column = header.iter().position(|name| *name == "ACTIONS").unwrap();
    assert_eq!(row[column], "2", "{table}");
}

#[tokio::test]
async fn a_grant_unused_for_its_idle_timeout_is_revoked_and_use_keeps_it() {
    let _ = operator();
    let env = TestEnv::new().await;
    // Shorter than the minimum: refused when the policy is written.
    let eager: jit_operator::crd::v1alpha1::AccessPolicy = serde_json::from_value(json!({
        "apiVersion": "jit.dev/v1alpha1", "kind": "AccessPolicy",
        "metadata": {"name": format!("too-eager-{}", env.namespace)},
        "spec": {
            "requesters": {"groups": ["devs"]}, "approvers": {"groups": ["approvers"]},
            "approvalsRequired": 1, "maxDuration": "1h", "idleTimeout": "10s",
            "roles": [{"name": "view", "kubernetes": {"clusterRole": "jit-dev-view", "namespace": env.namespace}}]
        }
    }))
    .unwrap();
    let refused = Api::<jit_operator::crd::v1alpha1::AccessPolicy>::all(env.admin.clone())
        .create(&PostParams::default(), &eager)
        .await
        .expect_err("an idle timeout of 10s is refused");
    let message = refused.to_string();
    assert!(message.contains("spec.idleTimeout is 10s"), "{message}");

    let policy = policy(&env, json!({"idleTimeout": "30s"})).await;
    let request = granted(&env, "kept", &policy).await;
    let granted_at = request
        .status
        .as_ref()
        .unwrap()
        .granted_at
        .clone()
        .unwrap()
        .0;
    let pods = Api::<Pod>::namespaced(env.alice.clone(), &env.namespace);
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    // Used every 5 s for well past the idle timeout: still active.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(50) {
        pods.list(&ListParams::default()).await.expect("granted");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let kept = requests.get("kept").await.unwrap();
    assert_eq!(phase(&kept), Some(Phase::Active), "{:#?}", kept.status);
    assert!(activity_of(&kept).actions >= 5, "{:#?}", activity_of(&kept));
    assert!(
        jiff::Timestamp::now().duration_since(granted_at) > jiff::SignedDuration::from_secs(45)
    );

    // Then left alone: revoked as idle, the binding gone.
    let requests = &requests;
    let revoked = eventually_within(
        ACT_LIMIT + Duration::from_secs(60),
        "the idle grant to be revoked",
        || async move {
            let request = requests.get("kept").await.unwrap();
            (phase(&request) == Some(Phase::Revoked)).then_some(request)
        },
    )
    .await;
    let status = revoked.status.unwrap();
    let condition = status
        .conditions
        .iter()
        .find(|condition| condition.type_ == "Granted")
        .unwrap();
    assert_eq!(condition.reason, "Idle", "{condition:?}");
    let last_action = status.activity.unwrap().last_action_time.unwrap().0;
    let revoked_at = status.revoked_at.unwrap().0;
    assert!(
        revoked_at.duration_since(last_action) >= jiff::SignedDuration::from_secs(30),
        "not before the idle timeout: last action {last_action}, revoked {revoked_at}"
    );
    let uid = revoked.metadata.uid.unwrap();
    eventually("the binding to be removed", || async {
        bindings_of(&env, &uid).await.is_empty().then_some(())
    })
    .await;
    pods.list(&ListParams::default())
        .await
        .expect_err("no access after the idle revoke");
}
