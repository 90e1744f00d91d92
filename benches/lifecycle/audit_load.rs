//! The audit load beside a run (`BENCH_AUDIT_RATE`): audit events posted to the operator's
//! audit webhook at a set rate, on top of the real API server's own, in batches of up to 400
//! as kube-apiserver's batch backend posts them. A tenth are calls the live grants' bindings
//! allowed (attributed, counted, written to `status.activity` at most every 10 s per request);
//! the rest are other users' calls, allowed by bindings of their own or refused (what a
//! cluster's audit stream mostly is, and what must cost the operator almost nothing).

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::{Value, json};

use crate::{metrics::Snapshot, report::Latency};

/// The most events in one post, as kube-apiserver's `--audit-webhook-batch-max-size` default.
const BATCH_MAX: u32 = 400;
/// Of each batch, the share the grants' bindings allowed, unless `BENCH_AUDIT_GRANTED`
/// (a percentage) says otherwise: 0 measures the intake alone, with no summary to write.
const GRANTED_SHARE: f64 = 0.1;

fn granted_share() -> f64 {
    std::env::var("BENCH_AUDIT_GRANTED")
        .ok()
        .and_then(|text| text.trim().parse::<f64>().ok())
        .map_or(GRANTED_SHARE, |percent| (percent / 100.0).clamp(0.0, 1.0))
}
/// Of the rest, the share refused.
const REFUSED_SHARE: f64 = 0.05;

/// A binding the operator made, as the audit reason names it.
#[derive(Clone, Debug)]
pub struct LiveBinding {
    pub namespace: String,
    pub name: String,
    pub cluster_role: String,
    pub user: String,
}

/// What the load did, and what the operator made of it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditLoadReport {
    /// Events per second asked for.
    pub rate_asked: u32,
    /// Events per second posted, over the load's whole time.
    pub rate_posted: f64,
    pub events_posted: u64,
    /// Of those, calls the grants' bindings allowed.
    pub events_granted: u64,
    /// Of those, refused calls (by users holding no grant: the operator keeps each 30 s for
    /// a grant it may not know yet before it counts it as unattributed).
    pub events_refused: u64,
    pub posts: u64,
    /// Posts not answered 200.
    pub posts_failed: u64,
    /// How long the operator took to answer a post, in milliseconds.
    pub post_latency: Latency,
    /// The operator's `jit_activity_events_total` growth by outcome (the API server's own
    /// events included).
    pub events_by_outcome: std::collections::BTreeMap<String, f64>,
    /// `jit_activity_dropped_total` growth by outcome.
    pub dropped_by_outcome: std::collections::BTreeMap<String, f64>,
    /// `jit_activity_writes_total` growth by outcome: `status.activity` writes.
    pub activity_writes: std::collections::BTreeMap<String, f64>,
}

impl AuditLoadReport {
    /// Adds the operator's own counts between two scrapes of its metrics.
    pub fn with_operator_counts(mut self, before: &Snapshot, after: &Snapshot) -> Self {
        let by_outcome = |snapshot: &Snapshot, name: &str| {
            snapshot.sum_by(
                name,
                |_| true,
                |labels| labels.get("outcome").cloned().unwrap_or_default(),
            )
        };
        for (name, field) in [
            ("jit_activity_events_total", &mut self.events_by_outcome),
            ("jit_activity_dropped_total", &mut self.dropped_by_outcome),
            ("jit_activity_writes_total", &mut self.activity_writes),
        ] {
            *field = crate::metrics::growth(&by_outcome(before, name), &by_outcome(after, name));
        }
        self
    }
}

/// Where and how to post: the operator's audit webhook, the API server's token for it, and
/// the CA that signed its certificate.
pub struct Endpoint {
    url: String,
    token: String,
    client: reqwest::Client,
}

impl Endpoint {
    /// The endpoint of the local control plane in `dir` (cluster.sh writes its port, token and
    /// CA there).
    pub fn local(dir: &Path) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = std::fs::read_to_string(dir.join("activity-port")).expect("activity-port");
        let token = std::fs::read_to_string(dir.join("pki/activity-token")).expect("token");
        let ca = std::fs::read(dir.join("pki/ca.crt")).expect("the control plane's CA");
        let client = reqwest::Client::builder()
            .tls_certs_merge(reqwest::Certificate::from_pem_bundle(&ca).expect("CA"))
            .build()
            .expect("an HTTPS client");
        Self {
            url: format!("https://127.0.0.1:{}/audit", port.trim()),
            token: token.trim().to_owned(),
            client,
        }
    }
}

/// The load while it runs.
pub struct AuditLoad {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<AuditLoadReport>,
}

impl AuditLoad {
    /// Starts posting `rate` events a second; `live` says which grants' bindings are live now.
    pub fn start(
        endpoint: Endpoint,
        rate: u32,
        namespace: String,
        live: impl Fn() -> Vec<LiveBinding> + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(post_until(
            endpoint,
            rate,
            namespace,
            Box::new(live),
            stop.clone(),
        ));
        Self { stop, task }
    }

    /// Stops it and says what it did.
    pub async fn stop(self) -> AuditLoadReport {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the audit load")
    }
}

type Live = Box<dyn Fn() -> Vec<LiveBinding> + Send>;

async fn post_until(
    endpoint: Endpoint,
    rate: u32,
    namespace: String,
    live: Live,
    stop: Arc<AtomicBool>,
) -> AuditLoadReport {
    let rate = rate.max(1);
    let batch = rate.min(BATCH_MAX);
    // Posts at a steady pace: `rate / batch` a second. Each post runs on its own task, so a
    // slow answer does not slow the pace (the API server's backend posts in parallel too).
    let mut tick =
        tokio::time::interval(Duration::from_secs_f64(f64::from(batch) / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let endpoint = Arc::new(endpoint);
    let started = Instant::now();
    let mut posts = Vec::new();
    let mut events_granted = 0;
    let mut events_refused = 0;
    let mut sequence = 0_u64;
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let bindings = live();
        let (body, granted, refused) = event_list(sequence, batch, &bindings, &namespace);
        sequence += 1;
        events_granted += granted;
        events_refused += refused;
        let endpoint = endpoint.clone();
        posts.push(tokio::spawn(async move {
            let sent = Instant::now();
            let answer = endpoint
                .client
                .post(&endpoint.url)
                .bearer_auth(&endpoint.token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let ok = answer.is_ok_and(|answer| answer.status() == 200);
            (ok, sent.elapsed().as_secs_f64() * 1_000.0)
        }));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    let mut failed = 0;
    for post in posts {
        match post.await {
            Ok((true, millis)) => latencies.push(millis),
            _ => failed += 1,
        }
    }
    let count = sequence;
    AuditLoadReport {
        rate_asked: rate,
        rate_posted: (count * u64::from(batch)) as f64 / elapsed.max(f64::EPSILON),
        events_posted: count * u64::from(batch),
        events_granted,
        events_refused,
        posts: count,
        posts_failed: failed,
        post_latency: Latency::of(latencies),
        ..AuditLoadReport::default()
    }
}

/// One post's `EventList`, as kube-apiserver v1.36 writes it at the Metadata level, how many
/// of its events a live grant allowed, and how many were refused.
fn event_list(
    sequence: u64,
    batch: u32,
    bindings: &[LiveBinding],
    namespace: &str,
) -> (String, u64, u64) {
    let now = jiff::Timestamp::now().to_string();
    let granted = if bindings.is_empty() {
        0
    } else {
        (f64::from(batch) * granted_share()).round() as u32
    };
    let refused = (f64::from(batch - granted) * REFUSED_SHARE).round() as u32;
    let items: Vec<Value> = (0..batch)
        .map(|index| {
            let (user, decision, reason, code) = if index < granted {
                let binding = &bindings[(sequence as usize * 7 + index as usize) % bindings.len()];
                (
                    binding.user.clone(),
                    "allow",
                    format!(
                        r#"RBAC: allowed by RoleBinding "{}/{}" of ClusterRole "{}" to User "{}""#,
                        binding.name, binding.namespace, binding.cluster_role, binding.user
                    ),
                    200,
                )
            } else if index < granted + refused {
                (format!("load-{}", index % 50), "forbid", String::new(), 403)
            } else {
                let user = format!("load-{}", index % 50);
                let reason = format!(
                    r#"RBAC: allowed by ClusterRoleBinding "standing-{user}" of ClusterRole "view" to User "{user}""#
                );
                (user, "allow", reason, 200)
            };
            json!({
                "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
                "auditID": format!("bench-{sequence}-{index}"), "stage": "ResponseComplete",
                "requestURI": format!("/api/v1/namespaces/{namespace}/pods?limit=500"),
                "verb": "list", "user": {"username": user, "groups": ["system:authenticated"]},
                "sourceIPs": ["127.0.0.1"], "userAgent": "kubectl/v1.36.0",
                "objectRef": {"resource": "pods", "namespace": namespace, "apiVersion": "v1"},
                "responseStatus": {"metadata": {}, "code": code},
                "requestReceivedTimestamp": now, "stageTimestamp": now,
                "annotations": {
                    "authorization.k8s.io/decision": decision,
                    "authorization.k8s.io/reason": reason,
                },
            })
        })
        .collect();
    let list = json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": items});
    (list.to_string(), u64::from(granted), u64::from(refused))
}
