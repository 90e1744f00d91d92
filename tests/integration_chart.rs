//! The Helm chart: `helm lint --strict` passes; rendered with default and with non-default
//! values it installs into the real control plane with server-side apply (the API server
//! validates every object); the operator runs restricted; its ClusterRole is the one in
//! config/rbac/; cloud identities land where each cloud looks; bad values are refused by
//! values.schema.json. helm is built from the Go module proxy by tests/control-plane/. A
//! binary of its own: the webhook configurations it installs point at a Service without pods.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
};

use serde_json::{Value, json};
use support::{control_plane, random_suffix, read_yaml, repo_root};

fn helm() -> PathBuf {
    let output = Command::new(repo_root().join("tests/control-plane/build-helm.sh"))
        .output()
        .expect("run build-helm.sh");
    assert!(
        output.status.success(),
        "building helm failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

fn chart() -> PathBuf {
    repo_root().join("charts/jit-operator")
}

fn run(command: &mut Command, stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// Renders the chart as release `release` in `namespace` with `--set` values.
fn template(release: &str, namespace: &str, values: &[&str]) -> Result<String, String> {
    let mut command = Command::new(helm());
    command.args(["template", release]).arg(chart()).args([
        "--namespace",
        namespace,
        "--kube-version",
        "v1.36.0",
    ]);
    for value in values {
        command.args(["--set", value]);
    }
    let output = run(&mut command, None);
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn documents(rendered: &str) -> Vec<Value> {
    rendered
        .split("\n---")
        .filter_map(|document| serde_yaml::from_str::<Value>(document).ok())
        .filter(|document| document.is_object())
        .collect()
}

fn find<'a>(documents: &'a [Value], kind: &str) -> Vec<&'a Value> {
    documents.iter().filter(|d| d["kind"] == kind).collect()
}

/// The Deployment's container arguments, as the operator's own command line reads them: a
/// flag the chart passes that the operator does not know fails here, not in a cluster.
fn parse_operator_args(objects: &[Value]) -> jit_operator::cli::Args {
    use clap::Parser;
    let args = find(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap().to_owned());
    jit_operator::cli::Args::try_parse_from(std::iter::once("jit-operator".to_owned()).chain(args))
        .unwrap_or_else(|error| panic!("the chart's arguments: {error}"))
}

fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    let control_plane = control_plane();
    run(
        Command::new(control_plane.kubectl())
            .args(args)
            .env("KUBECONFIG", control_plane.kubeconfig("admin")),
        stdin,
    )
}

/// Installs `rendered` with server-side apply as the chart's field manager, and removes the
/// webhook configurations again (no pod serves them here). Conflicts are forced: the default
/// release's ClusterRole and binding have the names config/rbac/ already gave this control
/// plane's operator, which no test of this binary runs.
fn install(rendered: &str, namespace: &str) {
    let created = kubectl(&["create", "namespace", namespace], None);
    assert!(created.status.success(), "{created:?}");
    let applied = kubectl(
        &[
            "apply",
            "--server-side",
            "--field-manager=helm",
            "--force-conflicts",
            "-f",
            "-",
        ],
        Some(rendered),
    );
    assert!(
        applied.status.success(),
        "the API server refused the chart: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let deleted = kubectl(
        &["delete", "-f", "-", "--wait=false"],
        Some(&webhooks_only(rendered)),
    );
    assert!(deleted.status.success(), "{deleted:?}");
}

fn webhooks_only(rendered: &str) -> String {
    documents(rendered)
        .into_iter()
        .filter(|d| {
            d["kind"]
                .as_str()
                .is_some_and(|k| k.ends_with("WebhookConfiguration"))
        })
        .map(|d| serde_yaml::to_string(&d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

#[test]
fn the_chart_lints_and_its_app_version_is_the_operators() {
    let output = run(
        Command::new(helm()).args(["lint", "--strict"]).arg(chart()),
        None,
    );
    assert!(
        output.status.success(),
        "helm lint: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let chart = read_yaml("charts/jit-operator/Chart.yaml");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn the_default_chart_installs_and_runs_the_operator_restricted_and_highly_available() {
    let namespace = format!("jit-chart-{}", random_suffix(6).to_lowercase());
    let rendered = template("jit-operator", &namespace, &[]).unwrap();
    let objects = documents(&rendered);

    let deployment = find(&objects, "Deployment")[0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    assert_eq!(
        container["image"],
        format!(
            "ghcr.io/jit-operator/jit-operator:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert!(container["resources"]["requests"].is_object());
    assert!(container["resources"]["limits"].is_object());
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap())
        .collect();
    for wanted in [
        "--leader-elect",
        "--webhook-secret=jit-operator-webhook-tls",
        "--webhook-service=jit-operator",
        "--providers=kubernetes",
        &format!("--namespace={namespace}"),
    ] {
        assert!(args.contains(&wanted), "{wanted} in {args:?}");
    }
    let parsed = parse_operator_args(&objects);
    assert!(parsed.leader_elect);
    assert_eq!(
        parsed.webhook_secret.as_deref(),
        Some("jit-operator-webhook-tls")
    );
    assert_eq!(parsed.webhook_configuration, "jit-operator");
    assert_eq!(parsed.namespace, namespace);
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(
        find(&objects, "PodDisruptionBudget")[0]["spec"]["minAvailable"],
        1
    );
    assert_eq!(find(&objects, "NetworkPolicy").len(), 1);
    assert!(find(&objects, "ServiceMonitor").is_empty());

    // The operator's ClusterRole is the one config/rbac/ documents.
    let operator_role = find(&objects, "ClusterRole")
        .into_iter()
        .find(|role| role["metadata"]["name"] == "jit-operator")
        .unwrap();
    let documented =
        std::fs::read_to_string(repo_root().join("config/rbac/operator.yaml")).unwrap();
    let documented = documents(&documented)
        .into_iter()
        .find(|role| role["metadata"]["name"] == "jit-operator")
        .unwrap();
    let mut chart_rules = operator_role["rules"].as_array().unwrap().clone();
    // Setting the caBundle of its own webhooks is the chart's addition for cluster installs.
    chart_rules.retain(|rule| rule["apiGroups"] != json!(["admissionregistration.k8s.io"]));
    assert_eq!(json!(chart_rules), documented["rules"]);
    for user_role in ["jit-requester", "jit-approver"] {
        assert!(
            find(&objects, "ClusterRole")
                .iter()
                .any(|role| role["metadata"]["name"] == user_role),
            "{user_role}"
        );
    }
    // CRDs are kept when the release goes.
    for crd in find(&objects, "CustomResourceDefinition") {
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
    }

    install(&rendered, &namespace);
    let deployment = kubectl(
        &["-n", &namespace, "get", "deployment", "jit-operator"],
        None,
    );
    assert!(deployment.status.success(), "{deployment:?}");
}

#[test]
fn a_chart_with_every_option_changed_installs() {
    let applied = kubectl(
        &["apply", "--server-side", "-f", "-"],
        Some(
            &std::fs::read_to_string(repo_root().join("tests/chart/third-party-crds.yaml"))
                .unwrap(),
        ),
    );
    assert!(applied.status.success(), "{applied:?}");
    let waited = kubectl(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/certificates.cert-manager.io",
            "crd/issuers.cert-manager.io",
            "crd/servicemonitors.monitoring.coreos.com",
        ],
        None,
    );
    assert!(waited.status.success(), "{waited:?}");

    let namespace = format!("jit-chart-{}", random_suffix(6).to_lowercase());
    let rendered = template(
        "access",
        &namespace,
        &[
            "replicaCount=3",
            "providers={aws,gcp,azure}",
            "cloud.aws.roleArn=arn:aws:iam::123456789012:role/jit-operator",
            "cloud.gcp.serviceAccount=jit-operator@project.iam.gserviceaccount.com",
            "cloud.azure.clientId=0a1b2c3d-0000-4000-8000-00000000c11e",
            "webhook.certificate.mode=certManager",
            "metrics.serviceMonitor.enabled=true",
            "leaderElection.enabled=false",
            "crds.keep=false",
            "userRoles.enabled=false",
            "podDisruptionBudget.enabled=false",
            "networkPolicy.enabled=false",
            "logFormat=text",
            "image.tag=dev",
            "activity.enabled=true",
            "activity.port=9444",
            "activity.tlsSecret=apiserver-audit-tls",
            "activity.tokenSecret=apiserver-audit-token",
            "activity.cloudInterval=2m",
            "activity.cloudDelay=30m",
            "cloud.gcp.loggingEndpoint=https://logging.example.internal",
        ],
    )
    .unwrap();
    let objects = documents(&rendered);
    let account = find(&objects, "ServiceAccount")[0];
    let annotations = &account["metadata"]["annotations"];
    assert_eq!(
        annotations["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/jit-operator"
    );
    assert_eq!(
        annotations["iam.gke.io/gcp-service-account"],
        "jit-operator@project.iam.gserviceaccount.com"
    );
    assert_eq!(
        annotations["azure.workload.identity/client-id"],
        "0a1b2c3d-0000-4000-8000-00000000c11e"
    );
    let deployment = find(&objects, "Deployment")[0];
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"],
        "true"
    );
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("--providers=kubernetes,aws,gcp,azure"),
        "{args}"
    );
    assert!(args.contains("--webhook-cert-dir="), "{args}");
    let parsed = parse_operator_args(&objects);
    assert!(!parsed.leader_elect);
    assert_eq!(parsed.providers.len(), 4);
    // Session activity: the audit webhook on its port, its certificate and token mounted from
    // the Secrets named, the Service exposing it; the clouds' logs read as set.
    assert_eq!(parsed.activity_addr, Some("0.0.0.0:9444".parse().unwrap()));
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mounts = container["volumeMounts"].to_string();
    let cert_dir = parsed.activity_cert_dir.clone().unwrap();
    let token_file = parsed.activity_token_file.clone().unwrap();
    assert!(mounts.contains(cert_dir.to_str().unwrap()), "{mounts}");
    assert!(
        mounts.contains(token_file.parent().unwrap().to_str().unwrap()),
        "{mounts}"
    );
    let volumes = deployment["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(
        volumes.contains("apiserver-audit-tls") && volumes.contains("apiserver-audit-token"),
        "{volumes}"
    );
    assert_eq!(
        parsed.cloud_activity_interval,
        std::time::Duration::from_secs(120)
    );
    assert_eq!(
        parsed.cloud_activity_delay,
        Some(std::time::Duration::from_secs(1800))
    );
    assert_eq!(
        parsed.gcp_logging_endpoint.as_deref(),
        Some("https://logging.example.internal")
    );
    let service = find(&objects, "Service")[0];
    assert!(
        service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|port| port["name"] == "activity" && port["port"] == 9444),
        "{service}"
    );
    assert!(!args.contains("--leader-elect"), "{args}");
    assert_eq!(find(&objects, "Certificate").len(), 1);
    assert_eq!(find(&objects, "ServiceMonitor").len(), 1);
    assert!(find(&objects, "PodDisruptionBudget").is_empty());
    // The ledger (clouds) needs ConfigMaps in the namespace; no lease without election.
    let role = find(&objects, "Role")[0];
    let rules = role["rules"].to_string();
    assert!(
        rules.contains("configmaps") && !rules.contains("leases"),
        "{rules}"
    );
    for webhook in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        assert_eq!(
            find(&objects, webhook)[0]["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            format!("{namespace}/access-jit-operator-webhook")
        );
    }
    install(&rendered, &namespace);
}

#[test]
fn values_outside_the_schema_are_refused_with_the_reason() {
    for (value, reason) in [
        ("providers={oracle}", "providers/0"),
        ("replicaCount=0", "replicaCount"),
        ("webhook.certificate.mode=self", "mode"),
        ("cloud.azure.endpoint=http://plain", "endpoint"),
        ("unknown=1", "unknown"),
        ("activity.enabled=true", "tlsSecret"),
        ("activity.cloudInterval=soon", "cloudInterval"),
    ] {
        let error = template("bad", "jit-system", &[value]).unwrap_err();
        assert!(error.contains(reason), "{value}: {error}");
    }
}

#[test]
fn the_kustomize_base_renders_and_installs_like_the_chart() {
    let rendered = kubectl(
        &[
            "kustomize",
            repo_root().join("config/default").to_str().unwrap(),
        ],
        None,
    );
    assert!(
        rendered.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let rendered = String::from_utf8(rendered.stdout).unwrap();
    let objects = documents(&rendered);
    for kind in [
        "CustomResourceDefinition",
        "ClusterRole",
        "Role",
        "ServiceAccount",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        assert!(!find(&objects, kind).is_empty(), "{kind}");
    }
    let parsed = parse_operator_args(&objects);
    assert!(parsed.leader_elect);
    assert_eq!(
        parsed.webhook_secret.as_deref(),
        Some("jit-operator-webhook-tls")
    );

    // The same cluster-wide rights as the chart's defaults.
    let chart = documents(&template("jit-operator", "jit-system", &[]).unwrap());
    let chart_rules = find(&chart, "ClusterRole")
        .into_iter()
        .find(|role| role["metadata"]["name"] == "jit-operator")
        .unwrap()["rules"]
        .clone();
    let base_rules: Vec<Value> = find(&objects, "ClusterRole")
        .into_iter()
        .filter(|role| {
            ["jit-operator", "jit-operator-webhook-certificate"]
                .contains(&role["metadata"]["name"].as_str().unwrap())
        })
        .flat_map(|role| role["rules"].as_array().unwrap().clone())
        .collect();
    assert_eq!(json!(base_rules), chart_rules);

    let applied = kubectl(
        &[
            "apply",
            "--server-side",
            "--field-manager=kustomize",
            "--force-conflicts",
            "-f",
            "-",
        ],
        Some(&rendered),
    );
    assert!(
        applied.status.success(),
        "the API server refused the base: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let deleted = kubectl(
        &["delete", "-f", "-", "--wait=false"],
        Some(&webhooks_only(&rendered)),
    );
    assert!(deleted.status.success(), "{deleted:?}");
}
