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
