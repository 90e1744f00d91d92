//! Test support: one real control plane (etcd + kube-apiserver) per test binary, the CRDs
//! installed once, and per test a random namespace and one `kube::Client` per user.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock},
};

use jit_operator::crd::v1alpha1::{AccessPolicy, AccessRequest};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Config,
    api::{DynamicObject, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    core::ApiResource,
};
use rand::{Rng, distr::Alphanumeric};

/// The test users the control plane knows, with the groups it gives them.
pub const USERS: [(&str, &[&str]); 6] = [
    ("admin", &["system:masters"]),
    ("alice", &["devs"]),
    ("bob", &["approvers"]),
    ("carol", &["approvers"]),
    ("mallory", &[]),
    ("jit-operator", &[]),
];

/// The running control plane of this test binary.
pub struct ControlPlane {
    /// Where its kubeconfigs are.
    pub dir: PathBuf,
    /// The `cluster.sh run` process; its stdin closes when this test binary exits, which
    /// stops the control plane.
    _process: Mutex<Child>,
}

static CONTROL_PLANE: OnceLock<ControlPlane> = OnceLock::new();

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Starts the control plane the first time it is asked for and installs the CRDs and RBAC.
pub fn control_plane() -> &'static ControlPlane {
    CONTROL_PLANE.get_or_init(|| {
        let control_plane = start_control_plane();
        let install = repo_root().join("tests/control-plane/install.sh");
        let status = Command::new("bash")
            .arg(&install)
            .arg(&control_plane.dir)
            .status()
            .unwrap_or_else(|error| panic!("failed to run {}: {error}", install.display()));
        assert!(
            status.success(),
            "installing the CRDs and RBAC failed; see above"
        );
        control_plane
    })
}

fn start_control_plane() -> ControlPlane {
    let dir = std::env::temp_dir().join(format!("jit-operator-test-{}", random_suffix(10)));
    let script = repo_root().join("tests/control-plane/cluster.sh");
    let mut process = Command::new("bash")
        .arg(&script)
        .arg("run")
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|error| panic!("failed to run {}: {error}", script.display()));
    let stdout = process.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("ready ") => break,
            Some(Ok(_)) => continue,
            _ => panic!("the control plane did not start; its output is above"),
        }
    }
    ControlPlane {
        dir,
        _process: Mutex::new(process),
    }
}

impl ControlPlane {
    /// The kubeconfig file of a test user.
    pub fn kubeconfig(&self, user: &str) -> PathBuf {
        self.dir.join(format!("kubeconfig-{user}"))
    }

    /// The flags that make the operator serve the audit webhook this control plane's
    /// kube-apiserver posts its audit events to.
    pub fn activity_args(&self) -> Vec<String> {
        let port = std::fs::read_to_string(self.dir.join("activity-port")).expect("activity-port");
        vec![
            "--activity-addr".into(),
            format!("127.0.0.1:{}", port.trim()),
            "--activity-cert-dir".into(),
            self.dir.join("pki/activity").display().to_string(),
            "--activity-token-file".into(),
            self.dir.join("pki/activity-token").display().to_string(),
        ]
    }

    /// Stops kube-apiserver and starts it again on the same port and data, as an outage.
    pub fn restart_apiserver(&self) {
        let script = repo_root().join("tests/control-plane/cluster.sh");
        let status = Command::new("bash")
            .arg(&script)
            .arg("restart-apiserver")
            .arg(&self.dir)
            .status()
            .expect("run cluster.sh");
        assert!(
            status.success(),
            "restarting kube-apiserver failed; see above"
        );
    }

    /// The kubectl built beside the control plane, at the same version.
    pub fn kubectl(&self) -> PathBuf {
        self.dir.join("bin/kubectl")
    }
}

/// A client that authenticates with the given kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|error| panic!("failed to read {}: {error}", kubeconfig.display()));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is usable");
    Client::try_from(config).expect("client")
}

/// Lowercase letters and digits, for names.
pub fn random_suffix(length: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(length)
        .map(|byte| char::from(byte).to_ascii_lowercase())
        .collect()
}

/// One test's view of the control plane: its own namespace and a client per user.
pub struct TestEnv {
    /// The namespace created for this test.
    pub namespace: String,
    /// system:masters.
    pub admin: Client,
    /// In group `devs`.
    pub alice: Client,
    /// In group `approvers`.
    pub bob: Client,
    /// In group `approvers`.
    pub carol: Client,
    /// In no group of note.
    pub mallory: Client,
    /// The operator's own identity.
    pub operator: Client,
}

impl TestEnv {
    /// Starts the control plane if needed and creates a fresh, labelled namespace.
    pub async fn new() -> Self {
        let control_plane = control_plane();
        let admin = client_from(&control_plane.kubeconfig("admin")).await;
        let namespace = format!("jit-test-{}", random_suffix(8));
        let object: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": namespace, "labels": {"jit.dev/test": "true"}}
        }))
        .expect("namespace");
        Api::<Namespace>::all(admin.clone())
            .create(&PostParams::default(), &object)
            .await
            .expect("create test namespace");
        Self {
            namespace,
            admin,
            alice: client_from(&control_plane.kubeconfig("alice")).await,
            bob: client_from(&control_plane.kubeconfig("bob")).await,
            carol: client_from(&control_plane.kubeconfig("carol")).await,
            mallory: client_from(&control_plane.kubeconfig("mallory")).await,
            operator: client_from(&control_plane.kubeconfig("jit-operator")).await,
        }
    }

    /// The client of a test user by name.
    pub fn client(&self, user: &str) -> &Client {
        match user {
            "admin" => &self.admin,
            "alice" => &self.alice,
            "bob" => &self.bob,
            "carol" => &self.carol,
            "mallory" => &self.mallory,
            "jit-operator" => &self.operator,
            other => panic!("no test user {other}"),
        }
    }
}

/// The API resource of one of our kinds, for sending objects the Rust types can't express.
pub fn api_resource(kind: &str) -> ApiResource {
    match kind {
        "AccessPolicy" => ApiResource::erase::<AccessPolicy>(&()),
        "AccessRequest" => ApiResource::erase::<AccessRequest>(&()),
        other => panic!("not one of our kinds: {other}"),
    }
}

/// The API for raw objects of one of our kinds; namespaced kinds use `namespace`.
pub fn raw_api(client: &Client, kind: &str, namespace: Option<&str>) -> Api<DynamicObject> {
    let resource = api_resource(kind);
    match namespace {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

/// Creates a raw object, exactly as given.
pub async fn create_raw(
    client: &Client,
    namespace: Option<&str>,
    object: serde_json::Value,
) -> Result<DynamicObject, kube::Error> {
    let kind = object["kind"]
        .as_str()
        .expect("object has a kind")
        .to_owned();
    let object: DynamicObject = serde_json::from_value(object).expect("object parses");
    raw_api(client, &kind, namespace)
        .create(&PostParams::default(), &object)
        .await
}

/// The message of an API error, or a panic naming what was expected to fail.
pub fn refusal_message(result: Result<DynamicObject, kube::Error>, what: &str) -> String {
    match result {
        Ok(object) => panic!("{what} was accepted: {object:?}"),
        Err(kube::Error::Api(status)) => {
            assert_eq!(
                status.code, 422,
                "{what}: expected 422 Invalid, got {status:?}"
            );
            status.message
        }
        Err(other) => panic!("{what}: expected a refusal from the API server, got {other}"),
    }
}

/// Reads a YAML file from the repository as JSON.
pub fn read_yaml(relative: &str) -> serde_json::Value {
    let path = repo_root().join(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("failed to read {}: {error}", path.display()));
    serde_yaml::from_str(&text)
        .unwrap_or_else(|error| panic!("failed to parse {}: {error}", path.display()))
}

pub mod activity_logs;
pub mod aws;
pub mod azure;
pub mod clouds;
pub mod gcp;
pub mod mailpit;
pub mod moto;
pub mod operator;
pub mod receiver;

/// The namespace the operator keeps its grant ledger in (config/rbac/ledger.yaml).
pub const LEDGER_NAMESPACE: &str = "jit-system";

/// The grant ledger's entry for a request, if there is one.
pub async fn ledger_entry(
    env: &TestEnv,
    uid: &str,
) -> Option<k8s_openapi::api::core::v1::ConfigMap> {
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(env.admin.clone(), LEDGER_NAMESPACE)
        .get_opt(&format!("jit-grant-{uid}"))
        .await
        .unwrap()
}

/// How long a test waits for the operator to act; only stops a hung test.
pub const ACT_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Looks every 200 ms until `attempt` gives a value, and returns it; fails the test, saying
/// `what` did not happen, after [`ACT_LIMIT`]. Replaces hand-written poll loops.
pub async fn eventually<T, F, Fut>(what: &str, attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_within(ACT_LIMIT, what, attempt).await
}

/// Like [`eventually`], for what takes longer by design (a grant running out, a backlog
/// draining): polls until `attempt` returns `Some`, failing after `limit`.
pub async fn eventually_within<T, F, Fut>(
    limit: std::time::Duration,
    what: &str,
    mut attempt: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let polled = tokio::time::timeout(limit, async {
        loop {
            if let Some(value) = attempt().await {
                return value;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await;
    polled.unwrap_or_else(|_| panic!("not within {limit:?}: {what}"))
}

/// Waits until the request satisfies `check`, and returns it as it is then.
pub async fn wait_for_request(
    api: &Api<AccessRequest>,
    name: &str,
    what: &str,
    check: impl Fn(&AccessRequest) -> bool,
) -> AccessRequest {
    let condition = |object: Option<&AccessRequest>| object.is_some_and(&check);
    match tokio::time::timeout(
        ACT_LIMIT,
        kube::runtime::wait::await_condition(api.clone(), name, condition),
    )
    .await
    {
        Ok(Ok(Some(request))) => request,
        Ok(Ok(None)) => panic!("request {name} disappeared while waiting until {what}"),
        Ok(Err(error)) => panic!("failed to watch request {name}: {error}"),
        Err(_) => {
            let current = api.get_opt(name).await.ok().flatten();
            panic!(
                "request {name} not {what} within {ACT_LIMIT:?}; it is {:#?}",
                current.and_then(|request| request.status)
            )
        }
    }
}

/// The phase of a request, if it has one.
pub fn phase(request: &AccessRequest) -> Option<jit_operator::crd::v1alpha1::Phase> {
    request.status.as_ref().and_then(|status| status.phase)
}

/// Whether the request's condition of this type is True.
pub fn condition_true(request: &AccessRequest, kind: &str) -> bool {
    request.status.as_ref().is_some_and(|status| {
        status
            .conditions
            .iter()
            .any(|condition| condition.type_ == kind && condition.status == "True")
    })
}

/// Creates a policy with a random name from its spec, as the admin; returns the name.
pub async fn create_policy(env: &TestEnv, spec: serde_json::Value) -> String {
    let name = format!("policy-{}", random_suffix(8));
    let policy: AccessPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "jit.dev/v1alpha1",
        "kind": "AccessPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("policy parses");
    Api::<AccessPolicy>::all(env.admin.clone())
        .create(&PostParams::default(), &policy)
        .await
        .expect("create policy");
    name
}

/// Sets one annotation on a request, as `kubectl annotate` does.
pub async fn annotate(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
    value: &str,
) -> Result<AccessRequest, kube::Error> {
    let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
    Api::<AccessRequest>::namespaced(client.clone(), namespace)
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
}

/// A client for any user of the control plane, e.g. `approver-3`.
pub async fn client_for(user: &str) -> Client {
    client_from(&control_plane().kubeconfig(user)).await
}

/// A policy offering one role, `view` (ClusterRole `jit-dev-view` in the test's namespace),
/// to group `devs`, decided by group `approvers`; returns its name.
pub async fn view_policy(env: &TestEnv, approvals: u32) -> String {
    create_policy(
        env,
        serde_json::json!({
            "requesters": {"groups": ["devs"]},
            "approvers": {"groups": ["approvers"]},
            "approvalsRequired": approvals,
            "maxDuration": "1h",
            "roles": [{
                "name": "view",
                "kubernetes": {"clusterRole": "jit-dev-view", "namespace": env.namespace}
            }]
        }),
    )
    .await
}

/// Creates, as alice, a request for `view` of `policy`.
pub async fn request_view(
    env: &TestEnv,
    name: &str,
    policy: &str,
    duration: &str,
) -> AccessRequest {
    alice_requests(
        env,
        name,
        serde_json::json!({"policy": policy, "role": "view", "duration": duration}),
    )
    .await
}

/// Creates, as alice, a request named `name` with this spec.
pub async fn alice_requests(env: &TestEnv, name: &str, spec: serde_json::Value) -> AccessRequest {
    let request: AccessRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "jit.dev/v1alpha1",
        "kind": "AccessRequest",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("request parses");
    Api::<AccessRequest>::namespaced(env.alice.clone(), &env.namespace)
        .create(&PostParams::default(), &request)
        .await
        .expect("alice requests")
}

/// Alice ends her request early; returns it once it says so.
pub async fn alice_revokes(env: &TestEnv, name: &str) -> AccessRequest {
    use jit_operator::crd::v1alpha1::{Phase, annotations};
    annotate(
        &env.alice,
        &env.namespace,
        name,
        annotations::REVOKE,
        "done",
    )
    .await
    .expect("annotate");
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    wait_for_request(&requests, name, "revoked", |r| {
        phase(r) == Some(Phase::Revoked)
    })
    .await
}

/// How an active request is ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Its time runs out.
    Expiry,
    /// Alice revokes it early.
    Revoke,
    /// It is deleted.
    Delete,
}

/// Ends an active request one way and waits until it has ended (or is gone).
pub async fn end_request(env: &TestEnv, name: &str, ending: Ending) {
    use jit_operator::crd::v1alpha1::Phase;
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    match ending {
        Ending::Expiry => {
            wait_for_request(&requests, name, "expired", |r| {
                phase(r) == Some(Phase::Expired)
            })
            .await;
        }
        Ending::Revoke => {
            alice_revokes(env, name).await;
        }
        Ending::Delete => {
            requests
                .delete(name, &kube::api::DeleteParams::default())
                .await
                .unwrap();
            let requests = &requests;
            eventually(&format!("request {name} deleted"), || async move {
                requests
                    .get_opt(name)
                    .await
                    .unwrap()
                    .is_none()
                    .then_some(())
            })
            .await;
        }
    }
}

/// Waits for the request to fail and returns its message.
pub async fn failure_message(env: &TestEnv, name: &str) -> String {
    use jit_operator::crd::v1alpha1::Phase;
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    let failed = wait_for_request(&requests, name, "failed", |r| {
        phase(r) == Some(Phase::Failed)
    })
    .await;
    failed.status.unwrap().message.unwrap_or_default()
}

/// A request for `view` of `policy` as alice writes it, padded with `labels` labels of 63
/// characters (about 78 bytes each as stored).
pub fn padded_request(policy: &str, name: &str, labels: usize) -> AccessRequest {
    let padding: std::collections::BTreeMap<String, String> = (0..labels)
        .map(|index| (format!("pad-{index:05}"), "x".repeat(63)))
        .collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "jit.dev/v1alpha1",
        "kind": "AccessRequest",
        "metadata": {"name": name, "labels": padding},
        "spec": {"policy": policy, "role": "view", "duration": "10m"},
    }))
    .expect("request parses")
}

/// The RoleBindings the operator holds for a request, found by its UID label.
pub async fn bindings_of(env: &TestEnv, uid: &str) -> Vec<k8s_openapi::api::rbac::v1::RoleBinding> {
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::all(env.admin.clone())
        .list(&kube::api::ListParams::default().labels(&format!("jit.dev/request-uid={uid}")))
        .await
        .expect("list bindings")
        .items
}

/// Waits until `check` holds for the request's bindings, and returns them.
pub async fn wait_for_bindings(
    env: &TestEnv,
    uid: &str,
    what: &str,
    check: impl Fn(&[k8s_openapi::api::rbac::v1::RoleBinding]) -> bool,
) -> Vec<k8s_openapi::api::rbac::v1::RoleBinding> {
    let deadline = tokio::time::Instant::now() + ACT_LIMIT;
    loop {
        let bindings = bindings_of(env, uid).await;
        if check(&bindings) {
            return bindings;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bindings of {uid} not {what} within {ACT_LIMIT:?}: {bindings:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The `dev.jit.activity.v1` audit lines `operator` wrote about request `uid`.
pub fn activity_lines(operator: &operator::Operator, uid: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(&operator.log)
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| {
            event["type"] == "dev.jit.activity.v1" && event["data"]["request"]["uid"] == uid
        })
        .collect()
}
