//! A real SMTP server for the email tests: upstream Mailpit (built from the Go module proxy by
//! tests/audit/mailpit.sh), requiring STARTTLS with a certificate from a CA of the test's own
//! and a password, whose HTTP API the tests read to see what arrived.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use serde_json::Value;

use super::{random_suffix, repo_root};

/// The SMTP user and password Mailpit accepts.
pub const USERNAME: &str = "jit-mailer";
/// See [`USERNAME`].
pub const PASSWORD: &str = "m4il-s3cret";

/// A running Mailpit.
pub struct Mailpit {
    child: Child,
    /// Its SMTP port on 127.0.0.1 (host name `localhost` for TLS).
    pub smtp_port: u16,
    /// The PEM of the CA its certificate chains to.
    pub ca_pem: String,
    api: String,
    directory: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Mailpit {
    /// Builds (once, into the cache) and starts a Mailpit of its own.
    pub async fn start() -> Self {
        let built = Command::new(repo_root().join("tests/audit/mailpit.sh"))
            .output()
            .expect("tests/audit/mailpit.sh runs");
        assert!(built.status.success(), "{built:?}");
        let binary = String::from_utf8(built.stdout).unwrap().trim().to_owned();
        let directory = std::env::temp_dir().join(format!("jit-mailpit-{}", random_suffix(10)));
        std::fs::create_dir_all(&directory).unwrap();

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "jit-operator test mail CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let mut leaf_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        leaf_params.is_ca = IsCa::ExplicitNoCa;
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        std::fs::write(directory.join("tls.crt"), leaf.pem()).unwrap();
        std::fs::write(directory.join("tls.key"), leaf_key.serialize_pem()).unwrap();
        std::fs::write(
            directory.join("passwords"),
            format!("{USERNAME}:{PASSWORD}\n"),
        )
        .unwrap();

        let (smtp_port, http_port) = (free_port(), free_port());
        let child = Command::new(binary)
            .arg("--smtp")
            .arg(format!("127.0.0.1:{smtp_port}"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{http_port}"))
            .arg("--smtp-tls-cert")
            .arg(directory.join("tls.crt"))
            .arg("--smtp-tls-key")
            .arg(directory.join("tls.key"))
            .arg("--smtp-require-starttls")
            .arg("--smtp-auth-file")
            .arg(directory.join("passwords"))
            .arg("--database")
            .arg(directory.join("mail.db"))
            .args(["--disable-version-check", "--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("mailpit starts");
        let mailpit = Self {
            child,
            smtp_port,
            ca_pem: ca.pem(),
            api: format!("http://127.0.0.1:{http_port}/api/v1"),
            directory,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while reqwest::get(format!("{}/messages", mailpit.api))
            .await
            .map(|response| !response.status().is_success())
            .unwrap_or(true)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "mailpit did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        mailpit
    }

    /// Every message that arrived, oldest first, each with its summary (`From`, `To`,
    /// `Subject`) and its plain-text body as `Text`.
    pub async fn messages(&self) -> Vec<Value> {
        let list: Value = reqwest::get(format!("{}/messages?limit=1000", self.api))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut messages = Vec::new();
        // The API lists the newest first.
        for summary in list["messages"].as_array().unwrap().iter().rev() {
            let id = summary["ID"].as_str().unwrap();
            let message: Value = reqwest::get(format!("{}/message/{id}", self.api))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            messages.push(message);
        }
        messages
    }
}

impl Drop for Mailpit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}
