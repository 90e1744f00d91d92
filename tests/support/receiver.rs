//! A CloudEvents sink for the tests (tests/audit/receiver.py): every event the operator
//! delivers is parsed by the official CloudEvents SDK for Python before the test sees it, and
//! the sink fails, throttles or drops connections on command. Plus the NotificationChannel and
//! Secret that point the operator at it.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use jit_operator::crd::v1alpha1::NotificationChannel;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, api::PostParams};
use serde_json::{Value, json};

use super::{LEDGER_NAMESPACE, TestEnv, random_suffix, repo_root};

/// A running sink.
pub struct Receiver {
    child: Child,
    /// Where it listens: `http://127.0.0.1:PORT/`.
    pub url: String,
    directory: PathBuf,
}

impl Receiver {
    /// Starts a sink of its own.
    pub fn start() -> Self {
        let root = repo_root();
        let installed = Command::new(root.join("tests/audit/receiver.sh"))
            .output()
            .expect("tests/audit/receiver.sh runs");
        assert!(installed.status.success(), "{installed:?}");
        let python = String::from_utf8(installed.stdout)
            .unwrap()
            .trim()
            .to_owned();
        let directory = std::env::temp_dir().join(format!("jit-receiver-{}", random_suffix(10)));
        std::fs::create_dir_all(&directory).unwrap();
        let port_file = directory.join("port");
        let child = Command::new(python)
            .arg(root.join("tests/audit/receiver.py"))
            .arg(&port_file)
            .arg(directory.join("events.jsonl"))
            .arg(directory.join("rejects.jsonl"))
            .arg(directory.join("bodies.jsonl"))
            .stdout(Stdio::null())
            .spawn()
            .expect("the receiver starts");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Ok(port) = std::fs::read_to_string(&port_file) {
                break port;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the receiver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Self {
            child,
            url: format!("http://127.0.0.1:{port}/"),
            directory,
        }
    }

    fn lines(&self, file: &str) -> Vec<Value> {
        let text = std::fs::read_to_string(self.directory.join(file)).unwrap_or_default();
        // Only whole lines: the sink may be half-way through writing the last one.
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        whole
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// The events received, as the SDK parsed them (attributes, `data`, `authorization`).
    pub fn events(&self) -> Vec<Value> {
        self.lines("events.jsonl")
    }

    /// Bodies the SDK refused.
    pub fn rejects(&self) -> Vec<Value> {
        self.lines("rejects.jsonl")
    }

    /// What arrived under `/plain/` (Slack, Teams): path, content type, JSON body, received.
    pub fn bodies(&self) -> Vec<Value> {
        self.lines("bodies.jsonl")
    }

    /// Changes how the sink answers (see receiver.py).
    pub async fn control(&self, settings: Value) {
        let response = reqwest::Client::new()
            .post(format!("{}control", self.url))
            .body(settings.to_string())
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// Makes a NotificationChannel of `type_` whose Secret (in the operator's namespace) holds
/// `address` (and a token); returns the channel's name. With `address` `None`, the Secret is
/// not made.
pub async fn channel(env: &TestEnv, type_: &str, address: Option<&str>) -> String {
    let name = format!("channel-{}", random_suffix(8).to_lowercase());
    if let Some(address) = address {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": LEDGER_NAMESPACE},
            "stringData": {"address": address, "token": "s3cret-token"},
        }))
        .unwrap();
        Api::<Secret>::namespaced(env.admin.clone(), LEDGER_NAMESPACE)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    let channel: NotificationChannel = serde_json::from_value(json!({
        "apiVersion": "jit.dev/v1alpha1", "kind": "NotificationChannel",
        "metadata": {"name": name},
        "spec": {"type": type_, "secretRef": {"name": name}},
    }))
    .unwrap();
    Api::<NotificationChannel>::all(env.admin.clone())
        .create(&PostParams::default(), &channel)
        .await
        .unwrap();
    name
}

/// A policy like `view_policy` (role `view`, requesters `devs`, approvers `approvers`) whose
/// events all go to `channel`.
pub async fn routed_policy(env: &TestEnv, channel: &str, approvals: u32) -> String {
    super::create_policy(
        env,
        json!({
            "requesters": {"groups": ["devs"]},
            "approvers": {"groups": ["approvers"]},
            "approvalsRequired": approvals,
            "maxDuration": "1h",
            "roles": [{"name": "view",
                       "kubernetes": {"clusterRole": "jit-dev-view", "namespace": env.namespace}}],
            "notifications": {"routes": [{"channel": channel}]},
        }),
    )
    .await
}
