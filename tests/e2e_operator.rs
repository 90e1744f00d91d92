//! The operator binary as a separate process against the real control plane: it says when it
//! is ready, serves its health endpoints, watches requests, stops cleanly on SIGTERM, and
//! refuses to start with a hint when it cannot reach its CRDs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{process::Stdio, time::Duration};

use serde_json::{Value, json};
use support::{TestEnv, control_plane, create_raw};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines},
    net::TcpStream,
    process::{Child, ChildStdout, Command},
    time::timeout,
};

/// Generous bounds for a slow machine; they only stop a hung test, they measure nothing.
const START_LIMIT: Duration = Duration::from_secs(60);
const STOP_LIMIT: Duration = Duration::from_secs(30);

struct Operator {
    process: Child,
    logs: Lines<BufReader<ChildStdout>>,
}

impl Operator {
    fn start(user: &str) -> Self {
        let mut process = Command::new(env!("CARGO_BIN_EXE_jit-operator"))
            .args([
                "--health-addr",
                "127.0.0.1:0",
                "--webhook-addr",
                "127.0.0.1:0",
            ])
            .args(["--log-format", "json"])
            .env("KUBECONFIG", control_plane().kubeconfig(user))
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the operator");
        let logs = BufReader::new(process.stdout.take().unwrap()).lines();
        Self { process, logs }
    }

    /// Reads log lines until one satisfies `matches`, and returns it.
    async fn wait_for_log(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let reading = async {
            while let Some(line) = self.logs.next_line().await.expect("read operator logs") {
                let entry: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|error| panic!("log line {line:?} is not JSON: {error}"));
                if matches(&entry) {
                    return entry;
                }
            }
            panic!("the operator exited before logging {what}")
        };
        timeout(START_LIMIT, reading)
            .await
            .unwrap_or_else(|_| panic!("the operator did not log {what} in time"))
    }
}

async fn http_get(address: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn operator_becomes_ready_watches_requests_and_stops_on_sigterm() {
    let env = TestEnv::new().await;
    let mut operator = Operator::start("admin");
    let ready = operator
        .wait_for_log("that it is ready", |entry| {
            entry["message"]
                .as_str()
                .is_some_and(|m| m.contains("ready"))
        })
        .await;
    let health = ready["health_addr"]
        .as_str()
        .expect("ready line names the health address");
    assert!(
        http_get(health, "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        http_get(health, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );

    let request = json!({
        "apiVersion": "jit.dev/v1alpha1",
        "kind": "AccessRequest",
        "metadata": {"name": "watched"},
        "spec": {"policy": "any", "role": "view", "reason": "e2e"}
    });
    create_raw(&env.admin, Some(&env.namespace), request)
        .await
        .expect("create request");
    let namespace = env.namespace.clone();
    operator
        .wait_for_log("the new request", |entry| {
            entry["message"] == "observed access request"
                && entry["span"]["request"] == "watched"
                && entry["span"]["namespace"] == namespace.as_str()
        })
        .await;

    let pid = operator.process.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = timeout(STOP_LIMIT, operator.process.wait())
        .await
        .expect("the operator stops after SIGTERM")
        .unwrap();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

#[tokio::test]
async fn operator_refuses_to_start_without_the_permissions_it_needs() {
    control_plane();
    // mallory may read requests and policies but not write status or bindings.
    let mut operator = Operator::start("mallory");
    let stopped = operator
        .wait_for_log("why it stopped", |entry| entry["level"] == "ERROR")
        .await;
    assert!(
        stopped["hint"]
            .as_str()
            .is_some_and(|hint| hint.contains("config/rbac/operator.yaml")),
        "{stopped}"
    );
    assert!(
        stopped["error"]
            .as_str()
            .is_some_and(|error| error.contains("the operator may not patch accessrequests/status")),
        "{stopped}"
    );
    let status = timeout(STOP_LIMIT, operator.process.wait())
        .await
        .expect("the operator exits")
        .unwrap();
    assert!(!status.success());
}
