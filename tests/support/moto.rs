//! The AWS emulator: one moto server per test binary on a loopback port, installed by
//! tests/aws/moto.sh, with AWS-managed policies loaded so their ARNs can be attached. The
//! operator and the tests reach it through the SDK's standard `AWS_*` settings.

use std::{
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use aws_config::BehaviorVersion;

use super::repo_root;

/// The account moto answers as.
pub const ACCOUNT: &str = "123456789012";

/// A running moto server.
pub struct Moto {
    /// Its address, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    _process: Mutex<Child>,
}

static MOTO: OnceLock<Moto> = OnceLock::new();

/// Stops moto when the test binary's end closes the guard's stdin.
const GUARD: &str = r#"
"$@" </dev/null >/dev/null 2>&1 &
child=$!
trap 'kill -KILL "$child" 2>/dev/null' EXIT
cat >/dev/null
"#;

/// The moto server of this test binary, started on first use.
pub fn moto() -> &'static Moto {
    MOTO.get_or_init(|| {
        let install = Command::new("bash")
            .arg(repo_root().join("tests/aws/moto.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run tests/aws/moto.sh");
        assert!(
            install.status.success(),
            "installing moto failed; see above"
        );
        let server = String::from_utf8(install.stdout).unwrap().trim().to_owned();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let process = Command::new("bash")
            .args(["-c", GUARD, "moto-guard", &server, "-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .env("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
            .stdin(Stdio::piped())
            .spawn()
            .expect("start moto");
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not listen within 60s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            _process: Mutex::new(process),
        }
    })
}

impl Moto {
    /// The environment that points an SDK (the operator's) at this server.
    pub fn environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    async fn config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .http_client(jit_operator::provider::aws::http_client())
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_iam::config::Credentials::new(
                "testing", "testing", None, None, "tests",
            ))
            .load()
            .await
    }

    /// An IAM client, as an administrator looking at what the operator did.
    pub async fn iam(&self) -> aws_sdk_iam::Client {
        aws_sdk_iam::Client::new(&self.config().await)
    }

    /// An Identity Center admin client.
    pub async fn sso(&self) -> aws_sdk_ssoadmin::Client {
        aws_sdk_ssoadmin::Client::new(&self.config().await)
    }
}
