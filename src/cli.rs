//! The operator's command line: flags, each also settable from the environment.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;

use crate::{provider::gcp::Credentials as GcpCredentials, target::Target, telemetry::LogFormat};

/// jit-operator: grants one role for a bounded time when a policy allows it, and takes it away.
#[derive(Clone, Debug, Parser)]
#[command(name = "jit-operator", version, about, args_override_self = true)]
pub struct Args {
    /// Address of the health endpoints (/healthz, /readyz); port 0 picks a free port.
    #[arg(long, env = "JIT_HEALTH_ADDR", default_value = "127.0.0.1:8080")]
    pub health_addr: SocketAddr,

    /// Address of the admission webhook server (HTTPS); port 0 picks a free port.
    #[arg(long, env = "JIT_WEBHOOK_ADDR", default_value = "127.0.0.1:8443")]
    pub webhook_addr: SocketAddr,

    /// Register the admission webhooks with the API server, pointing at --webhook-addr with a
    /// certificate made at start-up. For local control planes, which can reach this process;
    /// in a cluster the chart registers them against a Service.
    #[arg(long, env = "JIT_REGISTER_WEBHOOKS", conflicts_with_all = ["webhook_cert_dir", "webhook_secret"])]
    pub register_webhooks: bool,

    /// Serve the webhook with `tls.crt` and `tls.key` from this directory (a cert-manager
    /// Secret, mounted), reloaded when they change.
    #[arg(long, env = "JIT_WEBHOOK_CERT_DIR", conflicts_with = "webhook_secret")]
    pub webhook_cert_dir: Option<std::path::PathBuf>,

    /// Make and rotate the webhook's CA and certificate in this Secret (in --namespace), for
    /// the DNS names of --webhook-service, and set the CA as the caBundle of
    /// --webhook-configuration.
    #[arg(long, env = "JIT_WEBHOOK_SECRET")]
    pub webhook_secret: Option<String>,

    /// The webhook's Service (in --namespace), whose DNS names the certificate is for.
    #[arg(long, env = "JIT_WEBHOOK_SERVICE", default_value = "jit-operator")]
    pub webhook_service: String,

    /// The mutating and validating webhook configurations whose caBundle the operator sets.
    #[arg(
        long,
        env = "JIT_WEBHOOK_CONFIGURATION",
        default_value = "jit-operator"
    )]
    pub webhook_configuration: String,

    /// Longest time between two looks at each request: verifies every active grant (drift)
    /// and sweeps orphaned grants. Hours, minutes, seconds: 30s, 5m, 1h.
    #[arg(long, env = "JIT_RESYNC_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub resync_interval: Duration,

    /// Targets to grant in, comma-separated. A role naming a target that is not enabled fails
    /// its requests with a message saying so.
    #[arg(
        long,
        env = "JIT_PROVIDERS",
        value_enum,
        value_delimiter = ',',
        default_value = "kubernetes"
    )]
    pub providers: Vec<Target>,

    /// The operator's own namespace, where it records what it granted in clouds (ConfigMaps
    /// `jit-grant-<request uid>`), so that every cloud grant can be found and revoked.
    #[arg(long, env = "JIT_NAMESPACE", default_value = "jit-system")]
    pub namespace: String,

    /// Where the Google Cloud Resource Manager API is (an emulator, a private endpoint);
    /// Google's public endpoint when unset.
    #[arg(long, env = "JIT_GCP_ENDPOINT")]
    pub gcp_endpoint: Option<String>,

    /// Where the Cloud Logging API is (an emulator, a private endpoint), read for what the
    /// holders of Google Cloud grants did; Google's public endpoint when unset.
    #[arg(long, env = "JIT_GCP_LOGGING_ENDPOINT")]
    pub gcp_logging_endpoint: Option<String>,

    /// How to authenticate to Google Cloud: adc, or anonymous (emulators only).
    #[arg(long, env = "JIT_GCP_CREDENTIALS", value_enum, default_value_t = GcpCredentials::ApplicationDefault)]
    pub gcp_credentials: GcpCredentials,

    /// Where Azure Resource Manager is (a private endpoint, a sovereign cloud, an emulator).
    #[arg(long, env = "JIT_AZURE_ENDPOINT", default_value = crate::provider::azure::PUBLIC_ENDPOINT)]
    pub azure_endpoint: String,

    /// The audience of Azure Resource Manager tokens; differs from the public one only in
    /// sovereign clouds.
    #[arg(long, env = "JIT_AZURE_AUDIENCE", default_value = crate::provider::azure::PUBLIC_ENDPOINT)]
    pub azure_audience: String,

    /// An extra CA certificate (PEM) to trust for Azure, besides the system's: for private
    /// endpoints behind an inspecting proxy, and emulators.
    #[arg(long, env = "JIT_AZURE_CA_FILE")]
    pub azure_ca_file: Option<std::path::PathBuf>,

    /// Elect a leader among replicas with a Lease (`jit-operator` in --leader-election-namespace):
    /// only the leader reconciles; every replica serves the webhook.
    #[arg(long, env = "JIT_LEADER_ELECT")]
    pub leader_elect: bool,

    /// The namespace of the leader election Lease; --namespace when unset.
    #[arg(long, env = "JIT_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    /// How long the Lease holds without renewal: a new leader takes over at most this long
    /// after the old one died. Seconds or minutes: 15s, 1m.
    #[arg(long, env = "JIT_LEADER_ELECTION_LEASE_DURATION", default_value = "15s", value_parser = parse_lease_duration)]
    pub leader_election_lease_duration: Duration,

    /// After SIGTERM, how long to keep serving the webhook while not ready, so that load
    /// balancers stop sending to this replica before it stops. 0s to stop at once.
    #[arg(long, env = "JIT_SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_delay)]
    pub shutdown_delay: Duration,

    /// The Secret (in --namespace) holding the key that seals decision records and grant
    /// windows; made at start-up when missing. Every replica must read the same one.
    #[arg(long, env = "JIT_SEAL_SECRET", default_value = "jit-operator-seal")]
    pub seal_secret: String,

    /// Users who may delete any AccessRequest (deleting one revokes it), besides its requester,
    /// its subject and the approvers of its policy. Comma-separated.
    #[arg(long, env = "JIT_ADMIN_USERS", value_delimiter = ',')]
    pub admin_users: Vec<String>,

    /// Groups whose members may delete any AccessRequest. Comma-separated.
    #[arg(
        long,
        env = "JIT_ADMIN_GROUPS",
        value_delimiter = ',',
        default_value = "system:masters"
    )]
    pub admin_groups: Vec<String>,

    /// A file the audit events are appended to, one JSON line each (they always go to
    /// stdout too).
    #[arg(long, env = "JIT_AUDIT_FILE")]
    pub audit_file: Option<std::path::PathBuf>,

    /// NotificationChannels that hear every event of every policy (a security channel, a
    /// SIEM), besides the routes each policy names.
    #[arg(
        long = "audit-channel",
        env = "JIT_AUDIT_CHANNELS",
        value_delimiter = ','
    )]
    pub audit_channels: Vec<String>,

    /// How long a request is kept after it ended (expired, revoked, denied, failed) before
    /// the operator deletes it; its audit trail is delivered regardless. 720h is 30 days.
    #[arg(long, env = "JIT_RETAIN_ENDED", default_value = "720h", value_parser = parse_duration)]
    pub retain_ended: Duration,

    /// How often the clouds' activity logs (CloudTrail, Cloud Audit Logs, the Azure Activity
    /// Log) are read for what the holder of an active cloud grant did.
    #[arg(long, env = "JIT_CLOUD_ACTIVITY_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub cloud_activity_interval: Duration,

    /// How long after a cloud grant ends its log is read the last time; unset, each cloud's
    /// documented delivery delay (CloudTrail 15m, Cloud Audit Logs 10m, Azure 20m).
    #[arg(long, env = "JIT_CLOUD_ACTIVITY_DELAY", value_parser = parse_duration)]
    pub cloud_activity_delay: Option<Duration>,

    /// Serve the API server's audit webhook backend here (HTTPS, path /audit) to record what
    /// each subject does with a Kubernetes grant (`status.activity`, `dev.jit.activity.v1`
    /// audit lines, `idleTimeout`). Off when unset. Port 0 picks a free port.
    #[arg(long, env = "JIT_ACTIVITY_ADDR", requires_all = ["activity_cert_dir", "activity_token_file"])]
    pub activity_addr: Option<SocketAddr>,

    /// Serve the audit webhook with `tls.crt` and `tls.key` from this directory, reloaded when
    /// they change; the API server's webhook kubeconfig trusts its CA.
    #[arg(long, env = "JIT_ACTIVITY_CERT_DIR")]
    pub activity_cert_dir: Option<std::path::PathBuf>,

    /// A file holding the bearer token the API server presents (its webhook kubeconfig's
    /// user token); posts without it are refused.
    #[arg(long, env = "JIT_ACTIVITY_TOKEN_FILE")]
    pub activity_token_file: Option<std::path::PathBuf>,

    /// Log line format.
    #[arg(long, env = "JIT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::crd::ApiDuration::parse(text)
        .and_then(|duration| duration.to_std())
        .map_err(|error| error.to_string())
}

fn parse_lease_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration < Duration::from_secs(3) {
        return Err("a lease must hold at least 3s".into());
    }
    Ok(duration)
}

fn parse_delay(text: &str) -> Result<Duration, String> {
    if matches!(text.trim(), "0" | "0s") {
        return Ok(Duration::ZERO);
    }
    parse_duration(text)
}
