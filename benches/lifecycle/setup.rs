//! Where the benchmark runs: a fresh local control plane per size with the operator started as
//! `make run` starts it (its own user, webhooks registered), or the cluster `KUBECONFIG` names.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use jit_operator::crd::v1alpha1::AccessPolicy;
use k8s_openapi::api::{core::v1::Namespace, rbac::v1::RoleBinding};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

use crate::Plan;

/// The operator process, when the benchmark started it.
pub struct Operator {
    process: Child,
    log: PathBuf,
    /// Where it serves /metrics.
    health_addr: String,
}

impl Operator {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Its metrics, scraped now.
    pub async fn metrics(&self) -> crate::metrics::Snapshot {
        let text = reqwest::get(format!("http://{}/metrics", self.health_addr))
            .await
            .expect("scrape the operator's metrics")
            .text()
            .await
            .expect("the operator's metrics");
        crate::metrics::parse(&text)
    }
}

/// A cluster ready for the benchmark.
pub struct Cluster {
    /// The control plane's directory, when local.
    dir: Option<PathBuf>,
    /// Creates the namespace and policy, reads metrics.
    pub admin: Client,
    /// Creates the requests.
    pub requester: Client,
    /// Approves them.
    pub approver: Client,
    /// The requester's and approver's names, as the policy lists them.
    pub requester_name: String,
    pub approver_name: String,
    /// The benchmark's own namespace.
    pub namespace: String,
    /// The ClusterRole each request is granted in it.
    pub cluster_role: String,
    /// The benchmark's policy.
    pub policy: String,
    /// The operator, when local.
    pub operator: Option<Operator>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(command: &mut Command) {
    let output = command.output().expect("run a set-up script");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn client_from(path: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(path).expect("read the kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

/// A client acting as `user` in `groups` through impersonation, from the caller's kubeconfig.
async fn impersonating(user: &str, groups: &[&str]) -> Client {
    let mut config = Config::infer().await.expect("KUBECONFIG");
    config.auth_info.impersonate = Some(user.to_owned());
    config.auth_info.impersonate_groups = Some(groups.iter().map(|g| (*g).to_owned()).collect());
    Client::try_from(config).expect("client")
}

impl Cluster {
    /// The local control plane's directory, if the benchmark started one.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// A fresh local control plane and operator, or the `KUBECONFIG` cluster; then the
    /// benchmark's namespace.
    pub async fn start(plan: &Plan, size: usize) -> Self {
        let suffix = format!("{size}-{}", std::process::id());
        let namespace = format!("jit-bench-{suffix}");
        let mut cluster = if std::env::var_os("KUBECONFIG").is_some() {
            eprintln!(
                "bench: against the KUBECONFIG cluster; it creates and deletes objects in namespace {namespace} and a policy of the same name"
            );
            Self {
                dir: None,
                admin: Client::try_default().await.expect("KUBECONFIG"),
                requester: impersonating("jit-bench-requester", &["system:authenticated"]).await,
                approver: impersonating("jit-bench-approver", &["system:authenticated"]).await,
                requester_name: "jit-bench-requester".into(),
                approver_name: "jit-bench-approver".into(),
                namespace,
                cluster_role: std::env::var("BENCH_CLUSTER_ROLE").unwrap_or_else(|_| "view".into()),
                policy: format!("jit-bench-{suffix}"),
                operator: None,
            }
        } else {
            let dir = plan.out.join(format!("cluster-{suffix}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create the cluster directory");
            eprintln!("bench: starting a local control plane in {}", dir.display());
            run(Command::new(root().join("tests/control-plane/cluster.sh"))
                .args(["start"])
                .arg(&dir));
            run(Command::new(root().join("tests/control-plane/install.sh")).arg(&dir));
            let operator = start_operator(&dir);
            Self {
                admin: client_from(&dir.join("kubeconfig-admin")).await,
                requester: client_from(&dir.join("kubeconfig-alice")).await,
                approver: client_from(&dir.join("kubeconfig-bob")).await,
                requester_name: "alice".into(),
                approver_name: "bob".into(),
                dir: Some(dir),
                namespace,
                cluster_role: "jit-dev-view".into(),
                policy: format!("jit-bench-{suffix}"),
                operator: Some(operator),
            }
        };
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(cluster.namespace.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(cluster.admin.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .expect("create the benchmark's namespace");
        cluster.namespace = namespace.metadata.name.unwrap_or_default();
        if cluster.dir.is_none() {
            cluster.bind_people().await;
        }
        cluster.create_policy().await;
        cluster
    }

    /// Against a real cluster: the chart's user roles for the impersonated requester and
    /// approver, in the benchmark's namespace only.
    async fn bind_people(&self) {
        for (role, user) in [
            ("jit-requester", &self.requester_name),
            ("jit-approver", &self.approver_name),
        ] {
            let binding: RoleBinding = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("{role}-bench"), "namespace": self.namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
            }))
            .expect("a RoleBinding");
            Api::<RoleBinding>::namespaced(self.admin.clone(), &self.namespace)
                .create(&PostParams::default(), &binding)
                .await
                .expect("bind the benchmark's users");
        }
    }

    /// One policy: the requester may request `view` in the namespace for up to a day, the
    /// approver's one approval grants it.
    async fn create_policy(&self) {
        let policy: AccessPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "jit.dev/v1alpha1",
            "kind": "AccessPolicy",
            "metadata": {"name": self.policy},
            "spec": {
                "requesters": {"users": [self.requester_name]},
                "approvers": {"users": [self.approver_name]},
                "approvalsRequired": 1,
                "maxDuration": "24h",
                "roles": [{
                    "name": "view",
                    "kubernetes": {"clusterRole": self.cluster_role, "namespace": self.namespace},
                }],
            },
        }))
        .expect("a policy");
        Api::<AccessPolicy>::all(self.admin.clone())
            .create(&PostParams::default(), &policy)
            .await
            .expect("create the benchmark's policy");
    }

    /// Stops what `start` started; against a real cluster, deletes the namespace.
    pub async fn stop(mut self) {
        if let Some(mut operator) = self.operator.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &operator.pid().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = operator.process.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = operator.process.kill();
            let _ = operator.process.wait();
            eprintln!("bench: operator log in {}", operator.log.display());
        }
        match &self.dir {
            Some(dir) => {
                run(Command::new(root().join("tests/control-plane/cluster.sh"))
                    .args(["stop"])
                    .arg(dir));
                // etcd's data is hundreds of MB at N = 10,000; the logs stay for a look.
                let _ = std::fs::remove_dir_all(dir.join("etcd"));
            }
            None => {
                let _ = Api::<AccessPolicy>::all(self.admin.clone())
                    .delete(&self.policy, &DeleteParams::default())
                    .await;
                let _ = Api::<Namespace>::all(self.admin.clone())
                    .delete(&self.namespace, &DeleteParams::default())
                    .await;
            }
        }
    }
}

/// The operator exactly as `make run` starts it (its own user, webhooks registered, the audit
/// webhook served), on free ports, logging JSON at info.
fn start_operator(dir: &Path) -> Operator {
    let log = dir.join("operator.log");
    let output = File::create(&log).expect("create the operator log");
    let port = std::fs::read_to_string(dir.join("activity-port")).expect("activity-port");
    let process = Command::new(env!("CARGO_BIN_EXE_jit-operator"))
        .args([
            "--register-webhooks",
            "--health-addr",
            "127.0.0.1:0",
            "--webhook-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--activity-addr",
            &format!("127.0.0.1:{}", port.trim()),
            "--activity-cert-dir",
        ])
        .arg(dir.join("pki/activity"))
        .arg("--activity-token-file")
        .arg(dir.join("pki/activity-token"))
        .env("KUBECONFIG", dir.join("kubeconfig-jit-operator"))
        // `BENCH_OPERATOR_LOG=jit_operator=debug,kube_runtime=debug` to see each reconcile
        // and what woke it.
        .env(
            "RUST_LOG",
            std::env::var("BENCH_OPERATOR_LOG").unwrap_or_else(|_| "info".into()),
        )
        // The image is a static musl binary, whose allocator keeps no per-thread arenas; this
        // build is glibc's, whose arenas (one per thread that allocated, up to 8 per core)
        // would count as the operator's memory. Two, as in a memory-tight glibc pod.
        .env("MALLOC_ARENA_MAX", "2")
        // And musl maps every block over 128 KiB on its own and unmaps it when freed, where
        // glibc raises that threshold to the largest block freed so far (up to 32 MiB) and
        // serves the next ones from the arenas: each 5-minute sweep's lists (a page of
        // requests, every managed UID) then left the arenas a few MiB larger for good. Fixed
        // at musl's 128 KiB, as the image has it.
        .env("MALLOC_MMAP_THRESHOLD_", "131072")
        .stdin(Stdio::null())
        .stdout(output.try_clone().expect("log file"))
        .stderr(output)
        .spawn()
        .expect("start the operator");
    let deadline = Instant::now() + Duration::from_secs(60);
    let health_addr = loop {
        let ready = File::open(&log).ok().and_then(|file| {
            BufReader::new(file)
                .lines()
                .map_while(Result::ok)
                .find(|line| line.contains("\"operator ready\""))
        });
        if let Some(line) = ready {
            let ready: serde_json::Value =
                serde_json::from_str(&line).expect("the ready line is JSON");
            break ready["health_addr"]
                .as_str()
                .expect("the ready line names health_addr")
                .to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the operator was not ready within a minute; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    Operator {
        process,
        log,
        health_addr,
    }
}
