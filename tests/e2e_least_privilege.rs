//! Least privilege, proved against the real control plane: the operator run with the token of
//! the chart's ServiceAccount (bound to the chart's ClusterRole and Role, not admin) completes
//! a whole lifecycle; and with any one verb taken out of those roles it refuses to start,
//! naming what is missing (or, for `bind`, which administrators may narrow by name, the
//! grant fails saying so). A binary of its own: it runs its own operators and edits RBAC.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use jit_operator::crd::v1alpha1::{AccessRequest, Phase, annotations};
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::ServiceAccount,
    rbac::v1::RoleBinding,
};
use kube::{Api, api::PostParams};
use serde_json::{Value, json};
use support::{
    ACT_LIMIT, Ending, TestEnv, annotate, control_plane, end_request, failure_message,
    operator::Operator, phase, repo_root, request_view, view_policy, wait_for_request,
};

const RELEASE: &str = "lp";
const FULL_NAME: &str = "lp-jit-operator";
const NAMESPACE: &str = "jit-system";
/// The chart's sealing-key Secret for release `lp`.
const SEAL_SECRET: &str = "lp-jit-operator-seal";

/// The chart's RBAC objects for release `lp` with `values`.
fn chart_rbac(values: &[&str]) -> Vec<Value> {
    let helm = Command::new(repo_root().join("tests/control-plane/build-helm.sh"))
        .output()
        .unwrap();
    let helm = String::from_utf8(helm.stdout).unwrap();
    let mut command = Command::new(helm.trim());
    command
        .args(["template", RELEASE])
        .arg(repo_root().join("charts/jit-operator"))
        .args(["--namespace", NAMESPACE, "--kube-version", "v1.36.0"]);
    for value in values {
        command.args(["--set", value]);
    }
    let output = command.output().unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .split("\n---")
        .filter_map(|document| serde_yaml::from_str::<Value>(document).ok())
        .filter(|document| {
            [
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
            ]
            .contains(&document["kind"].as_str().unwrap_or_default())
                && document["metadata"]["name"] == FULL_NAME
        })
        .collect()
}

fn kubectl_apply(objects: &[Value]) {
    let text = objects
        .iter()
        .map(|object| serde_yaml::to_string(object).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    let control_plane = control_plane();
    let mut child = Command::new(control_plane.kubectl())
        .args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=test",
            "-f",
            "-",
        ])
        .env("KUBECONFIG", control_plane.kubeconfig("admin"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A kubeconfig (as test user `lp-sa`) with a token of the chart's ServiceAccount.
async fn service_account_kubeconfig(env: &TestEnv) -> &'static str {
    let token = Api::<ServiceAccount>::namespaced(env.admin.clone(), NAMESPACE)
        .create_token_request(
            FULL_NAME,
            &PostParams::default(),
            &TokenRequest {
                spec: Some(TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..TokenRequestSpec::default()
                }),
                ..TokenRequest::default()
            },
        )
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let control_plane = control_plane();
    let admin = std::fs::read_to_string(control_plane.kubeconfig("admin")).unwrap();
    let mut config: Value = serde_yaml::from_str(&admin).unwrap();
    config["users"][0]["user"] = json!({"token": token});
    std::fs::write(
        control_plane.kubeconfig("lp-sa"),
        serde_yaml::to_string(&config).unwrap(),
    )
    .unwrap();
    "lp-sa"
}

/// Locally the operator registers its own webhooks (there is no Service to route to); that
/// right is the dev-only registration role, given on top of the chart's.
fn registration_binding() -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "lp-registration"},
        "subjects": [{"kind": "ServiceAccount", "name": FULL_NAME, "namespace": NAMESPACE}],
        "roleRef": {"kind": "ClusterRole", "apiGroup": "rbac.authorization.k8s.io",
                    "name": "jit-operator-webhook-registration"},
    })
}

#[tokio::test]
async fn the_charts_rights_are_enough_for_a_lifecycle_and_each_one_is_needed() {
    let env = TestEnv::new().await;
    // The chart with a cloud provider (so the ledger's rights are in it) and its defaults
    // otherwise: leader election and the operator's own webhook certificate.
    let rbac = chart_rbac(&["providers={aws}"]);
    kubectl_apply(&rbac);
    // The dev control plane lets every authenticated user request and approve (so that
    // admission, not RBAC, refuses people); here only the test's people may, or the
    // ServiceAccount would hold those rights besides the chart's.
    for (binding, role) in [
        ("jit-requesters", "jit-requester"),
        ("jit-approvers", "jit-approver"),
    ] {
        kubectl_apply(&[json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": binding},
            "subjects": [
                {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "devs"},
                {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "approvers"},
                {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "mallory"},
            ],
            "roleRef": {"kind": "ClusterRole", "apiGroup": "rbac.authorization.k8s.io", "name": role},
        })]);
    }
    kubectl_apply(&[registration_binding()]);
    let user = service_account_kubeconfig(&env).await;

    // Enough: a whole lifecycle as the ServiceAccount.
    {
        let operator =
            Operator::start_with_args(user, &["--leader-elect", "--seal-secret", SEAL_SECRET], &[]);
        operator.wait_for_log("\"operator ready\"", ACT_LIMIT);
        let policy = view_policy(&env, 1).await;
        request_view(&env, "least", &policy, "30m").await;
        annotate(
            &env.bob,
            &env.namespace,
            "least",
            annotations::APPROVE,
            "ok",
        )
        .await
        .unwrap();
        let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
        let active = wait_for_request(&requests, "least", "active", |r| {
            phase(r) == Some(Phase::Active)
        })
        .await;
        let binding = format!("jit-{}", active.metadata.uid.unwrap());
        let bindings = Api::<RoleBinding>::namespaced(env.admin.clone(), &env.namespace);
        assert!(bindings.get_opt(&binding).await.unwrap().is_some());
        end_request(&env, "least", Ending::Revoke).await;
        assert!(bindings.get_opt(&binding).await.unwrap().is_none());
    }

    // Needed: every verb of every rule, taken out one at a time.
    let check_args = [
        "--leader-elect",
        "--providers",
        "aws",
        "--webhook-secret",
        "lp-jit-operator-webhook-tls",
        "--webhook-service",
        FULL_NAME,
        "--webhook-configuration",
        FULL_NAME,
        "--seal-secret",
        SEAL_SECRET,
    ];
    let mut checked = 0;
    for (index, object) in rbac.iter().enumerate() {
        if !matches!(object["kind"].as_str(), Some("ClusterRole" | "Role")) {
            continue;
        }
        let rules = object["rules"].as_array().unwrap().clone();
        for (rule_index, rule) in rules.iter().enumerate() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    let (resource, verb) = (resource.as_str().unwrap(), verb.as_str().unwrap());
                    let mut without = rbac[index].clone();
                    let mut narrowed = rules.clone();
                    let mut kept = rule.clone();
                    kept["verbs"] = json!(
                        rule["verbs"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .filter(|v| *v != verb)
                            .collect::<Vec<_>>()
                    );
                    kept["resources"] = json!([resource]);
                    let mut others = rule.clone();
                    others["resources"] = json!(
                        rule["resources"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .filter(|r| *r != resource)
                            .collect::<Vec<_>>()
                    );
                    narrowed.remove(rule_index);
                    if !kept["verbs"].as_array().unwrap().is_empty() {
                        narrowed.push(kept);
                    }
                    if !others["resources"].as_array().unwrap().is_empty() {
                        narrowed.push(others);
                    }
                    without["rules"] = json!(narrowed);
                    kubectl_apply(&[without]);
                    if verb == "bind" {
                        bind_is_needed(&env, user).await;
                    } else {
                        let mut operator = Operator::start_unregistered_failing(user, &check_args);
                        let stopped = operator.wait_for_log("operator stopped", ACT_LIMIT);
                        assert!(
                            stopped.contains(&format!("the operator may not {verb} {resource}")),
                            "without {verb} {resource} ({}) the operator said:\n{stopped}",
                            object["kind"]
                        );
                        operator.wait_for_exit(ACT_LIMIT);
                    }
                    kubectl_apply(&[rbac[index].clone()]);
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 30, "checked {checked} verbs");
}

/// Without `bind`, a grant of a ClusterRole the operator does not hold fails, saying so.
async fn bind_is_needed(env: &TestEnv, user: &str) {
    let operator =
        Operator::start_with_args(user, &["--leader-elect", "--seal-secret", SEAL_SECRET], &[]);
    operator.wait_for_log("\"operator ready\"", ACT_LIMIT);
    let policy = view_policy(env, 0).await;
    request_view(env, "unbound", &policy, "30m").await;
    let message = failure_message(env, "unbound").await;
    assert!(
        message.contains("bind") || message.contains("escalat") || message.contains("forbidden"),
        "{message}"
    );
    drop(operator);
    tokio::time::sleep(Duration::from_millis(100)).await;
}
