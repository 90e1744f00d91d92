//! The operator as a separate process against the test control plane, running as the
//! `jit-operator` user with the RBAC in config/rbac/, serving and registering its webhooks.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use super::{control_plane, random_suffix};

/// A running operator. Its process dies when this handle's stdin pipe closes: when the
/// handle is dropped, or when the test binary exits however it exits.
pub struct Operator {
    process: Child,
    /// Its log file (JSON lines).
    pub log: PathBuf,
}

/// How long start-up may take on a slow machine; only stops a hung test.
const START_LIMIT: Duration = Duration::from_secs(60);

/// A small guard: runs the operator, and stops it when stdin closes.
const GUARD: &str = r#"
"$@" </dev/null &
child=$!
stop() {
	kill -TERM "$child" 2>/dev/null
	for _ in $(seq 1 150); do
		kill -0 "$child" 2>/dev/null || return 0
		sleep 0.1
	done
	echo "operator-guard: the operator ignored SIGTERM for 15s; killing it" >&2
	kill -KILL "$child" 2>/dev/null
}
trap stop EXIT
cat >/dev/null
"#;

impl Operator {
    /// Starts the operator as `user` with the webhooks registered, and waits until it is
    /// ready.
    pub fn start(user: &str) -> Self {
        Self::start_with(user, &[])
    }

    /// Like `start`, with extra environment (e.g. `FAILPOINTS`).
    pub fn start_with(user: &str, environment: &[(&str, &str)]) -> Self {
        Self::start_with_args(user, &[], environment)
    }

    /// Like `start`, with extra flags and environment.
    pub fn start_with_args(user: &str, args: &[&str], environment: &[(&str, &str)]) -> Self {
        let mut all = vec!["--register-webhooks"];
        all.extend_from_slice(args);
        Self::start_unregistered(user, &all, environment)
    }

    /// Starts the operator without registering its webhooks (they serve, but the API server
    /// does not call them), with these flags and environment.
    pub fn start_unregistered(user: &str, args: &[&str], environment: &[(&str, &str)]) -> Self {
        let operator = Self::spawn(user, args, environment);
        operator.wait_for_log("operator ready", START_LIMIT);
        operator
    }

    /// Starts the operator with its webhooks registered, without waiting for it to be ready:
    /// for runs that may crash at any moment.
    pub fn launch(user: &str, environment: &[(&str, &str)]) -> Self {
        Self::spawn(user, &["--register-webhooks"], environment)
    }

    /// Whether the operator process is still running.
    pub fn is_running(&self) -> bool {
        let children = Command::new("pgrep")
            .args(["-P", &self.process.id().to_string(), "-f", "jit-operator"])
            .output()
            .expect("pgrep");
        !children.stdout.iter().all(u8::is_ascii_whitespace)
    }

    /// Starts the operator without waiting for it to be ready: for runs expected to fail.
    pub fn start_unregistered_failing(user: &str, args: &[&str]) -> Self {
        Self::spawn(user, args, &[])
    }

    fn spawn(user: &str, args: &[&str], environment: &[(&str, &str)]) -> Self {
        let control_plane = control_plane();
        let log = control_plane
            .dir
            .join(format!("operator-{}.log", random_suffix(6)));
        let output = File::create(&log).expect("create operator log");
        let process = Command::new("bash")
            .args(["-c", GUARD, "operator-guard"])
            .arg(env!("CARGO_BIN_EXE_jit-operator"))
            .args([
                "--health-addr",
                "127.0.0.1:0",
                "--webhook-addr",
                "127.0.0.1:0",
                "--log-format",
                "json",
                // Short, so that drift checks and the orphan sweep happen within a test.
                "--resync-interval",
                "2s",
            ])
            .args(args)
            .envs(environment.iter().copied())
            .env("KUBECONFIG", control_plane.kubeconfig(user))
            .env(
                "RUST_LOG",
                "info,jit_operator=debug,jit_operator::activity=trace",
            )
            .stdin(Stdio::piped())
            .stdout(output.try_clone().expect("log file"))
            .stderr(output)
            .spawn()
            .expect("start the operator");
        Self { process, log }
    }

    /// Waits until a log line contains `text`, and returns it.
    pub fn wait_for_log(&self, text: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let file = File::open(&self.log).expect("open operator log");
            if let Some(line) = BufReader::new(file)
                .lines()
                .map_while(Result::ok)
                .find(|line| line.contains(text))
            {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "operator did not log {text:?} within {limit:?}; see {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the operator to exit by itself (a failpoint crash), up to `limit`.
    pub fn wait_for_exit(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if !self.is_running() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "operator still running after {limit:?}; see {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The operator's metrics, in the Prometheus text format, from its health endpoint.
    pub async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ready: serde_json::Value =
            serde_json::from_str(&self.wait_for_log("\"operator ready\"", START_LIMIT))
                .expect("the ready line is JSON");
        let address = ready["health_addr"].as_str().expect("health_addr");
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let request =
            format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    }

    /// The operator's resident memory, in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let children = Command::new("pgrep")
            .args(["-P", &self.process.id().to_string(), "-f", "jit-operator"])
            .output()
            .expect("pgrep");
        let pid = String::from_utf8_lossy(&children.stdout)
            .split_whitespace()
            .next()
            .expect("the operator runs")
            .to_owned();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    }

    /// Asks the operator to stop (SIGTERM), as Kubernetes does before it kills a pod.
    pub fn terminate(&self) {
        let pid = self.process.id().to_string();
        let _ = Command::new("pkill").args(["-TERM", "-P", &pid]).status();
    }

    /// Kills the operator at once (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        let pid = self.process.id().to_string();
        // The guard's child is the operator; kill it first so nothing shuts down cleanly.
        let _ = Command::new("pkill").args(["-KILL", "-P", &pid]).status();
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        // Closing stdin (dropping it) makes the guard stop the operator.
        drop(self.process.stdin.take());
        let _ = self.process.wait();
    }
}

static SHARED: OnceLock<Mutex<Operator>> = OnceLock::new();

/// The operator shared by all tests of this binary, started on first use.
pub fn shared_operator() -> &'static Mutex<Operator> {
    SHARED.get_or_init(|| Mutex::new(Operator::start("jit-operator")))
}
