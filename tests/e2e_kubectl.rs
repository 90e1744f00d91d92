//! The whole flow the way people drive it, with the real kubectl (built beside the control
//! plane): an admin applies a policy, alice applies a request, bob annotates it, alice waits
//! for Granted, and `kubectl auth can-i` tells what alice can do before, during and after.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Command, Output};

use support::{TestEnv, control_plane, operator::shared_operator, random_suffix};

/// A directory on PATH with the plugin as krew installs it: `kubectl-jit` and
/// `kubectl_complete-jit`.
fn plugin_path() -> std::ffi::OsString {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("jit-plugin-{}", random_suffix(8)));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kubectl-jit"), dir.join("kubectl-jit"))
            .unwrap();
        std::os::unix::fs::symlink(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/kubectl_complete-jit"),
            dir.join("kubectl_complete-jit"),
        )
        .unwrap();
        dir
    });
    let mut path = dir.as_os_str().to_owned();
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    path
}

/// Runs kubectl as `user`, with `stdin` as its input and the plugin on PATH.
fn kubectl(user: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let control_plane = control_plane();
    let mut child = Command::new(control_plane.kubectl())
        .args(args)
        .env("KUBECONFIG", control_plane.kubeconfig(user))
        .env("PATH", plugin_path())
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
    // `kubectl jit <TAB>` through the real kubectl's plugin completion: the names come from
    // the cluster, as each user sees it.
    let complete =
        |user: &str, words: &[&str]| ok(user, &[&["__complete", "jit"], words].concat(), None);
    let offered = complete("bob", &["approve", "-n", ns, ""]);
    assert!(
        offered.contains(&format!(
            "{name}\talice asks for view of {policy} (Pending)"
        )),
        "{offered}"
    );
    assert!(offered.trim_end().ends_with(":4"), "{offered}");
    let offered = complete("alice", &["request", ""]);
    assert!(
        offered.lines().any(|line| line.starts_with(&policy)),
        "{offered}"
    );
    let offered = complete("alice", &["request", &policy, ""]);
    assert!(
        offered.contains("view\tkubernetes jit-dev-view in"),
        "{offered}"
    );
    let offered = complete("alice", &["re"]);
    assert!(
        offered.contains("request\t") && offered.contains("revoke\t"),
        "{offered}"
    );

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
        "Grant:     RoleBinding",
        "Expires:",
        "Timeline:",
    ] {
        assert!(shown.contains(expected), "{expected:?} in {shown}");
    }
    assert!(
        shown.contains("(in 9m)") || shown.contains("(in 10m)"),
        "{shown}"
    );
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

/// Starts `kubectl jit` as `user` with stdout read line by line as it comes.
fn jit_following(
    user: &str,
    args: &[&str],
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
    std::thread::JoinHandle<Vec<String>>,
) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubectl-jit"))
        .args(args)
        .env("KUBECONFIG", control_plane().kubeconfig(user))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            all.push(line.clone());
            let _ = sender.send(line);
        }
        all
    });
    (child, receiver, reader)
}

/// Waits for a line containing `needle`; returns the request's name from the lines seen.
fn expect_line(lines: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + support::ACT_LIMIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(error) => panic!("no line with {needle:?}: {error}"),
        }
    }
}

#[tokio::test]
async fn kubectl_jit_wait_tells_each_approval_and_each_refusal_in_its_own_words() {
    shared_operator();
    let env = TestEnv::new().await;
    let two = support::view_policy(&env, 2).await;
    let ns = env.namespace.as_str();

    // Two approvals: the wait says how many are missing, and who approved.
    let (mut child, lines, reader) = jit_following(
        "alice",
        &[
            "request",
            &two,
            "view",
            "--for",
            "5m",
            "--reason",
            "INC-5",
            "--wait",
            "--timeout",
            "60s",
            "-n",
            ns,
        ],
    );
    let created = expect_line(&lines, " created");
    let name = created
        .trim_start_matches("accessrequest/")
        .trim_end_matches(" created")
        .to_owned();
    expect_line(&lines, "waiting for 2 more approvals");
    let (code, _, err) = text(&jit(
        "bob",
        &["approve", &name, "--comment", "ok", "-n", ns],
    ));
    assert_eq!(code, 0, "{err}");
    expect_line(&lines, "approved by bob (ok)");
    expect_line(&lines, "waiting for 1 more approval");
    // Bob cannot decide twice; carol's is the second.
    let (code, _, err) = text(&jit("bob", &["approve", &name, "-n", ns]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already decided"), "{err}");
    let (code, _, err) = text(&jit("carol", &["approve", &name, "-n", ns]));
    assert_eq!(code, 0, "{err}");
    expect_line(&lines, "approved by carol");
    let granted = expect_line(&lines, "granted until");
    assert!(
        granted.contains("(in 4m)") || granted.contains("(in 5m)"),
        "{granted}"
    );
    assert!(child.wait().unwrap().success());
    drop(reader.join());

    // Denied: the wait ends with exit 1 and the approver's reason.
    let (mut child, lines, reader) = jit_following(
        "alice",
        &[
            "request", &two, "view", "--reason", "INC-6", "--for", "5m", "--wait", "-n", ns,
        ],
    );
    let created = expect_line(&lines, " created");
    let denied = created
        .trim_start_matches("accessrequest/")
        .trim_end_matches(" created")
        .to_owned();
    let (code, out, err) = text(&jit(
        "bob",
        &["deny", &denied, "--comment", "use the runbook", "-n", ns],
    ));
    assert_eq!(code, 0, "{out}{err}");
    expect_line(&lines, "denied by bob (use the runbook)");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains(&format!("error: {denied} is Denied")),
        "{stderr}"
    );
    drop(reader.join());

    // A wait that runs out: exit 3, and the request stays.
    let (code, out, err) = text(&jit(
        "alice",
        &[
            "request",
            &two,
            "view",
            "--reason",
            "INC-7",
            "--for",
            "5m",
            "--wait",
            "--timeout",
            "2s",
            "-n",
            ns,
        ],
    ));
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("still pending after 2s"), "{err}");

    // Refusals, each in its own words, each with its exit code.
    let refusals: [(&str, Vec<&str>, i32, &str); 6] = [
        // The API server's words: mallory is no approver; a decision on an ended request.
        (
            "mallory",
            vec!["approve", &name, "-n", ns],
            1,
            "is not an approver",
        ),
        (
            "carol",
            vec!["deny", &denied, "--comment", "no", "-n", ns],
            1,
            "has already ended",
        ),
        // Caught locally, before the API call, with what is possible.
        (
            "alice",
            vec!["request", "no-such-policy", "view", "-n", ns],
            2,
            "kubectl jit policies lists yours",
        ),
        (
            "mallory",
            vec!["request", &two, "view", "-n", ns],
            2,
            "mallory",
        ),
        (
            "alice",
            vec!["request", &two, "view", "--for", "3h", "-n", ns],
            2,
            "1h",
        ),
        // A usage error from the command line itself.
        ("bob", vec!["deny", &name, "-n", ns], 2, "--comment"),
    ];
    for (user, args, expected, words) in refusals {
        let (code, out, err) = text(&jit(user, &args));
        assert_eq!(code, expected, "{user} {args:?}: {out}{err}");
        assert!(
            err.contains(words),
            "{user} {args:?}: {words:?} not in {err}"
        );
    }

    // The cluster cannot be reached: exit 4.
    let kubeconfig = std::fs::read_to_string(control_plane().kubeconfig("alice")).unwrap();
    let unreachable = regex::Regex::new(r"server: https://[^\s]+")
        .unwrap()
        .replace(&kubeconfig, "server: https://127.0.0.1:9");
    let path = std::env::temp_dir().join(format!("kubeconfig-unreachable-{}", random_suffix(6)));
    std::fs::write(&path, unreachable.as_bytes()).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kubectl-jit"))
        .args(["whoami"])
        .env("KUBECONFIG", &path)
        .output()
        .unwrap();
    let (code, _, err) = text(&output);
    assert_eq!(code, 4, "{err}");
    let _ = std::fs::remove_file(&path);

    // YAML parses back, times in RFC 3339.
    let (code, out, _) = text(&jit("alice", &["show", &name, "-n", ns, "-o", "yaml"]));
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_yaml::from_str(&out).unwrap();
    let expires = shown["status"]["expiresAt"].as_str().unwrap();
    assert!(expires.parse::<jiff::Timestamp>().is_ok(), "{expires}");
    // Wide shows who approved.
    let (_, wide, _) = text(&jit("alice", &["list", "--active", "-n", ns, "-o", "wide"]));
    let row = wide.lines().find(|line| line.starts_with(&name)).unwrap();
    assert!(row.contains("bob,carol") && row.contains("INC-5"), "{wide}");
}

#[tokio::test]
async fn kubectl_jit_asks_the_approver_to_confirm_on_a_terminal() {
    shared_operator();
    let env = TestEnv::new().await;
    let policy = support::view_policy(&env, 1).await;
    let ns = env.namespace.as_str();
    let (code, out, err) = text(&jit(
        "alice",
        &[
            "request",
            &policy,
            "view",
            "--for",
            "5m",
            "--reason",
            "INC-8 logs",
            "-n",
            ns,
            "-o",
            "name",
        ],
    ));
    assert_eq!(code, 0, "{err}");
    let name = out.trim().trim_start_matches("accessrequest/").to_owned();

    let on_a_terminal = |extra_env: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kubectl-jit"));
        command
            .args(["approve", &name, "-n", ns, "--comment", "checked"])
            .env("KUBECONFIG", control_plane().kubeconfig("bob"))
            .env("TERM", "xterm")
            .env_remove("NO_COLOR");
        for (key, value) in extra_env {
            command.env(key, value);
        }
        rexpect::session::spawn_command(command, Some(30_000)).unwrap()
    };

    // Bob reads the context, in colour, and says no: nothing is recorded.
    let mut session = on_a_terminal(&[]);
    let context = session
        .exp_string(&format!("approve {name}? [y/N] "))
        .unwrap();
    assert!(
        context.contains("\u{1b}[1malice\u{1b}[0m asks for role"),
        "{context:?}"
    );
    assert!(
        context.contains(&format!(
            "Kubernetes ClusterRole jit-dev-view to alice, in namespace {ns} only"
        )),
        "{context}"
    );
    assert!(
        context.contains("INC-8 logs") && context.contains("Approvals: 0 of 1"),
        "{context}"
    );
    session.send_line("n").unwrap();
    let rest = session.exp_eof().unwrap();
    assert!(rest.contains("not confirmed"), "{rest}");
    assert!(matches!(
        session.process().wait().unwrap(),
        rexpect::process::WaitStatus::Exited(_, 1)
    ));
    let requests =
        kube::Api::<jit_operator::crd::v1alpha1::AccessRequest>::namespaced(env.admin.clone(), ns);
    let request = requests.get(&name).await.unwrap();
    assert!(
        request.status.unwrap_or_default().approvals.is_empty(),
        "a declined prompt records nothing"
    );

    // With NO_COLOR, no colour; yes approves.
    let mut session = on_a_terminal(&[("NO_COLOR", "1")]);
    let context = session
        .exp_string(&format!("approve {name}? [y/N] "))
        .unwrap();
    assert!(!context.contains('\u{1b}'), "{context:?}");
    session.send_line("y").unwrap();
    let rest = session.exp_eof().unwrap();
    assert!(
        rest.contains(&format!("accessrequest/{name} approved")),
        "{rest}"
    );
    assert!(matches!(
        session.process().wait().unwrap(),
        rexpect::process::WaitStatus::Exited(_, 0)
    ));
    support::wait_for_request(&requests, &name, "granted", |request| {
        support::phase(request) == Some(jit_operator::crd::v1alpha1::Phase::Active)
    })
    .await;
}
