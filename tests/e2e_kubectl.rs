//! The whole flow the way people drive it, with the real kubectl (built beside the control
//! plane): an admin applies a policy, alice applies a request, bob annotates it, alice waits
//! for Granted, and `kubectl auth can-i` tells what alice can do before, during and after.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Command, Output};

use support::{TestEnv, control_plane, operator::shared_operator, random_suffix};

/// Runs kubectl as `user`, with `stdin` as its input.
fn kubectl(user: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let control_plane = control_plane();
    let mut child = Command::new(control_plane.kubectl())
        .args(args)
        .env("KUBECONFIG", control_plane.kubeconfig(user))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kubectl");
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

/// Runs kubectl and returns its output, failing the test if it fails.
fn ok(user: &str, args: &[&str], stdin: Option<&str>) -> String {
    let output = kubectl(user, args, stdin);
    assert!(
        output.status.success(),
        "kubectl {args:?} as {user} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn can_alice(namespace: &str, verb: &str) -> String {
    let output = kubectl(
        "alice",
        &["auth", "can-i", verb, "deployments", "-n", namespace],
        None,
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test]
async fn request_approve_wait_and_revoke_with_kubectl() {
    shared_operator();
    let env = TestEnv::new().await;
    let ns = env.namespace.as_str();
    let policy = format!("oncall-{}", random_suffix(6));
    ok(
        "admin",
        &["apply", "-f", "-"],
        Some(&format!(
            r#"
apiVersion: jit.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: {policy}}}
spec:
  requesters: {{groups: [devs]}}
  approvers: {{users: [bob]}}
  approvalsRequired: 1
  defaultDuration: 30m
  maxDuration: 1h
  reason: {{required: true, pattern: "^INC-[0-9]+"}}
  roles:
  - name: edit
    kubernetes: {{clusterRole: jit-dev-edit, namespace: {ns}}}
"#
        )),
    );
    let request = format!(
        r#"
apiVersion: jit.dev/v1alpha1
kind: AccessRequest
metadata: {{name: alice-inc-1234}}
spec:
  policy: {policy}
  role: edit
  reason: INC-1234 checkout errors
"#
    );
    assert_eq!(can_alice(ns, "create"), "no", "no standing access");

    let applied = ok("alice", &["apply", "-n", ns, "-f", "-"], Some(&request));
    assert!(applied.contains("created"), "{applied}");
    // GitOps tools re-apply the same manifest all the time.
    let reapplied = ok("alice", &["apply", "-n", ns, "-f", "-"], Some(&request));
    assert!(
        reapplied.contains("unchanged") || reapplied.contains("configured"),
        "{reapplied}"
    );

    // Mallory cannot approve; alice cannot approve herself.
    for user in ["mallory", "alice"] {
        let output = kubectl(
            user,
            &[
                "annotate",
                "-n",
                ns,
                "accessrequest",
                "alice-inc-1234",
                "jit.dev/approve=sure",
            ],
            None,
        );
        assert!(!output.status.success(), "{user} approved");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("is not an approver"), "{stderr}");
    }

    ok(
        "bob",
        &[
            "annotate",
            "-n",
            ns,
            "accessrequest",
            "alice-inc-1234",
            "jit.dev/approve=looks fine",
        ],
        None,
    );
    ok(
        "alice",
        &[
            "wait",
            "-n",
            ns,
            "--for=condition=Granted",
            "accessrequest/alice-inc-1234",
            "--timeout=60s",
        ],
        None,
    );
    assert_eq!(can_alice(ns, "create"), "yes", "edit granted");

    let listed = ok("alice", &["get", "accessrequests", "-n", ns], None);
    let header = listed.lines().next().unwrap();
    for column in ["POLICY", "ROLE", "SUBJECT", "PHASE", "EXPIRES", "AGE"] {
        assert!(header.contains(column), "{header}");
    }
    assert!(
        listed.contains("Active") && listed.contains("alice"),
        "{listed}"
    );
    let by_category = ok("alice", &["get", "jit", "-n", ns], None);
    assert!(by_category.contains("alice-inc-1234"), "{by_category}");

    ok(
        "alice",
        &[
            "annotate",
            "-n",
            ns,
            "accessrequest",
            "alice-inc-1234",
            "jit.dev/revoke=done",
        ],
        None,
    );
    ok(
        "alice",
        &[
            "wait",
            "-n",
            ns,
            "--for=jsonpath={.status.phase}=Revoked",
            "accessrequest/alice-inc-1234",
            "--timeout=60s",
        ],
        None,
    );
    assert_eq!(can_alice(ns, "create"), "no", "access gone after revoke");

    let timeline = ok(
        "alice",
        &[
            "get",
            "-n",
            ns,
            "accessrequest",
            "alice-inc-1234",
            "-o",
            "jsonpath={.status.timeline[*].event}",
        ],
        None,
    );
    assert_eq!(timeline, "Requested Approval Approved Granted Revoked");
}

/// Runs `kubectl jit` (the plugin binary) as `user`, with stdin closed (not a terminal).
fn jit(user: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-jit"))
        .args(args)
        .env("KUBECONFIG", control_plane().kubeconfig(user))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run kubectl-jit")
}

fn text(output: &Output) -> (i32, String, String) {
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn kubectl_jit_takes_a_request_from_policies_to_revoke_without_yaml() {
    shared_operator();
    let env = TestEnv::new().await;
    let policy = support::view_policy(&env, 1).await;
    let ns = env.namespace.as_str();

    // Who I am comes from the API server.
    let (code, out, _) = text(&jit("alice", &["whoami"]));
    assert_eq!(code, 0);
    assert!(out.starts_with("alice (groups: devs"), "{out}");

    // What I may request; mallory may request nothing.
    let (code, out, _) = text(&jit("alice", &["policies"]));
    assert_eq!(code, 0, "{out}");
    let row = out
        .lines()
        .find(|line| line.starts_with(&policy))
        .unwrap_or_else(|| panic!("{policy} not offered to alice: {out}"));
    assert!(
        row.contains("view") && row.contains("kubernetes jit-dev-view in"),
        "{row}"
    );
    let (code, out, _) = text(&jit("mallory", &["policies"]));
    assert_eq!(code, 0);
    assert!(!out.contains(&policy), "{out}");

    // A mistake is caught before the API call, with the valid choices.
    let (code, _, err) = text(&jit("alice", &["request", &policy, "admin", "-n", ns]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("view"), "the roles she may request: {err}");

    // Request and wait; bob sees it pending for him and approves.
    let waiting = Command::new(env!("CARGO_BIN_EXE_kubectl-jit"))
        .args([
            "request",
            &policy,
            "view",
            "--for",
            "10m",
            "--reason",
            "INC-1 pods crash",
            "--wait",
            "--timeout",
            "60s",
            "-n",
            ns,
        ])
        .env("KUBECONFIG", control_plane().kubeconfig("alice"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + support::ACT_LIMIT;
    let name = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "bob never saw the request pending"
        );
        let (_, out, _) = text(&jit(
            "bob",
            &["list", "--pending-for-me", "-n", ns, "-o", "name"],
        ));
        if let Some(line) = out.lines().next() {
            break line.trim_start_matches("accessrequest/").to_owned();
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    // The requester cannot approve her own: the API server says so.
    let (code, _, err) = text(&jit("alice", &["approve", &name, "-n", ns]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("update"), "{err}");
    let (code, out, err) = text(&jit(
        "bob",
        &["approve", &name, "--comment", "ok", "-n", ns],
    ));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("INC-1 pods crash"),
        "the approver sees the reason: {out}"
    );
    let waited = waiting.wait_with_output().unwrap();
    let (code, out, err) = text(&waited);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("granted until"), "{out}");

    // Listed as active, as JSON that parses back.
    let (code, out, _) = text(&jit("alice", &["list", "--active", "-n", ns, "-o", "json"]));
    assert_eq!(code, 0);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["status"]["phase"], "Active");
    let (_, table, _) = text(&jit("alice", &["list", "-n", ns]));
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap()
        .split("   ")
        .map(str::trim)
        .collect();
    assert_eq!(
        header
            .iter()
            .filter(|h| !h.is_empty())
            .copied()
            .collect::<Vec<_>>(),
        [
            "NAME",
            "POLICY",
            "ROLE",
            "SUBJECT",
            "PHASE",
            "EXPIRES IN",
            "AGE"
        ]
    );
    assert!(
        table.contains("Active") && (table.contains("in 9m") || table.contains("in 10m")),
        "{table}"
    );

    // Everything about it, for people.
    let (code, shown, _) = text(&jit("alice", &["show", &name, "-n", ns]));
    assert_eq!(code, 0);
    for expected in [
        "Phase:     Active",
        "Reason:    INC-1 pods crash",
        "Decision:  Approved by bob",
        "Granted:   RoleBinding",
        "Timeline:",
    ] {
        assert!(shown.contains(expected), "{expected:?} in {shown}");
    }
    let (code, script, _) = text(&jit("alice", &["completion", "bash"]));
    assert_eq!(code, 0);
    assert!(
        script.contains("kubectl__jit") || script.contains("kubectl-jit"),
        "{script}"
    );

    // Ended early.
    let (code, _, err) = text(&jit("alice", &["revoke", &name, "-n", ns]));
    assert_eq!(code, 0, "{err}");
    let requests =
        kube::Api::<jit_operator::crd::v1alpha1::AccessRequest>::namespaced(env.admin.clone(), ns);
    support::wait_for_request(&requests, &name, "revoked", |request| {
        support::phase(request) == Some(jit_operator::crd::v1alpha1::Phase::Revoked)
    })
    .await;
}
