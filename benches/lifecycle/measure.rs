//! One run at one size: the ceiling (the API server's write rate for the generator alone),
//! then N requests created, approved as fast as the API server takes them, granted and left
//! to expire, each step timed from watches on the requests and on the bindings.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt, stream};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use jiff::Timestamp;
use jit_operator::crd::v1alpha1::{AccessRequest, Phase};
use k8s_openapi::api::{core::v1::ConfigMap, rbac::v1::RoleBinding};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::watcher,
};

use crate::{
    Plan,
    audit_load::{AuditLoad, AuditLoadReport, Endpoint, LiveBinding},
    metrics::{self, Snapshot},
    report::{ControlPlaneCpu, Latency, Run, Webhook, Writes},
    setup::Cluster,
};

/// What was seen of one request, in wall-clock time (the API server's `expiresAt` is one).
#[derive(Clone, Debug, Default)]
struct Seen {
    approved_ack: Option<Timestamp>,
    binding_added: Option<Timestamp>,
    /// The binding's name.
    binding: Option<String>,
    granted: Option<Timestamp>,
    expires_at: Option<Timestamp>,
    binding_deleted: Option<Timestamp>,
    expired: Option<Timestamp>,
    /// Ended and its finalizer released: what follows its revoke (audit record, Events,
    /// release) is done, which may come after the revoke while revokes are behind.
    released: Option<Timestamp>,
}

type Book = Arc<Mutex<HashMap<String, Seen>>>;

fn bar(progress: &MultiProgress, length: usize, message: &str) -> ProgressBar {
    let bar = progress.add(ProgressBar::new(length as u64));
    bar.set_style(
        ProgressStyle::with_template("{msg:>22} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(message.to_owned());
    bar
}

/// The API server's write rate for the generator alone: `count` ConfigMaps created with the
/// generator's concurrency (no admission webhook matches them), then removed. Also what each
/// of those writes cost the API server in CPU milliseconds, when it says.
async fn ceiling(cluster: &Cluster, count: usize, concurrency: usize) -> (f64, Option<f64>) {
    let api = Api::<ConfigMap>::namespaced(cluster.admin.clone(), &cluster.namespace);
    let cpu_before = apiserver_cpu_seconds(&metrics::read(&cluster.admin).await);
    let started = Instant::now();
    stream::iter(0..count)
        .map(|index| {
            let api = api.clone();
            async move {
                let map = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(format!("ceiling-{index:05}")),
                        labels: Some([("jit-bench".to_owned(), "ceiling".to_owned())].into()),
                        ..ObjectMeta::default()
                    },
                    ..ConfigMap::default()
                };
                api.create(&PostParams::default(), &map).await
            }
        })
        .buffer_unordered(concurrency)
        .try_for_each(|_| async { Ok(()) })
        .await
        .expect("create the ceiling's ConfigMaps");
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let cpu_after = apiserver_cpu_seconds(&metrics::read(&cluster.admin).await);
    let ms_per_write = cpu_after
        .zip(cpu_before)
        .map(|(after, before)| (after - before) * 1_000.0 / count.max(1) as f64);
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("jit-bench=ceiling"),
    )
    .await
    .expect("remove the ceiling's ConfigMaps");
    (rate, ms_per_write)
}

/// The API server's own CPU seconds so far (`process_cpu_seconds_total`).
fn apiserver_cpu_seconds(snapshot: &metrics::Snapshot) -> Option<f64> {
    snapshot
        .sum_by("process_cpu_seconds_total", |_| true, |_| ())
        .into_values()
        .next()
}

/// Records what the watches see until `stop` is set.
fn watch(cluster: &Cluster, book: Book) -> Vec<tokio::task::JoinHandle<()>> {
    let requests = Api::<AccessRequest>::namespaced(cluster.admin.clone(), &cluster.namespace);
    let bindings = Api::<RoleBinding>::namespaced(cluster.admin.clone(), &cluster.namespace);
    let on_requests = {
        let book = book.clone();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(requests, watcher::Config::default()));
            while let Some(event) = events.next().await {
                let now = Timestamp::now();
                let (watcher::Event::Apply(request) | watcher::Event::InitApply(request)) =
                    (match event {
                        Ok(event) => event,
                        Err(_) => continue,
                    })
                else {
                    continue;
                };
                let Some(uid) = request.uid() else { continue };
                let status = request.status.unwrap_or_default();
                let granted = status
                    .conditions
                    .iter()
                    .any(|condition| condition.type_ == "Granted" && condition.status == "True");
                let mut book = book.lock().unwrap_or_else(|e| e.into_inner());
                let seen = book.entry(uid).or_default();
                if granted && seen.granted.is_none() {
                    seen.granted = Some(now);
                }
                if let Some(expires) = status.expires_at {
                    seen.expires_at = Some(expires.0);
                }
                if status.phase == Some(Phase::Expired) && seen.expired.is_none() {
                    seen.expired = Some(now);
                }
                if status.phase == Some(Phase::Expired)
                    && request
                        .metadata
                        .finalizers
                        .as_ref()
                        .is_none_or(Vec::is_empty)
                    && seen.released.is_none()
                {
                    seen.released = Some(now);
                }
            }
        })
    };
    let on_bindings = tokio::spawn(async move {
        let config = watcher::Config::default().labels("app.kubernetes.io/managed-by=jit-operator");
        let mut events = std::pin::pin!(watcher(bindings, config));
        while let Some(event) = events.next().await {
            let now = Timestamp::now();
            let (binding, deleted) = match event {
                Ok(watcher::Event::Apply(binding) | watcher::Event::InitApply(binding)) => {
                    (binding, false)
                }
                Ok(watcher::Event::Delete(binding)) => (binding, true),
                _ => continue,
            };
            let Some(uid) = binding.labels().get("jit.dev/request-uid").cloned() else {
                continue;
            };
            let mut book = book.lock().unwrap_or_else(|e| e.into_inner());
            let seen = book.entry(uid).or_default();
            if deleted {
                seen.binding_deleted.get_or_insert(now);
            } else {
                seen.binding_added.get_or_insert(now);
                seen.binding.get_or_insert_with(|| binding.name_any());
            }
        }
    });
    vec![on_requests, on_bindings]
}

fn count(book: &Book, done: impl Fn(&Seen) -> bool) -> usize {
    book.lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter(|seen| done(seen))
        .count()
}

/// Waits until `done` holds for `size` requests, or `limit` passes; returns how many it holds
/// for.
async fn until(
    book: &Book,
    size: usize,
    bar: &ProgressBar,
    limit: Duration,
    done: impl Fn(&Seen) -> bool,
) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let finished = count(book, &done);
        bar.set_position(finished as u64);
        if finished >= size || Instant::now() >= deadline {
            bar.finish();
            return finished;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A process's peak resident memory (VmHWM) in MiB and its CPU seconds so far.
type Usage = (Option<f64>, Option<f64>);

/// The operator's peak resident memory (VmHWM) in MiB and its CPU seconds, from /proc.
fn process_usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
    let peak = status.as_deref().and_then(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.split_whitespace().next()?.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
    });
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // After the command's closing parenthesis: state is field 3; utime 14, stime 15.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        });
    (peak, cpu)
}

/// etcd's CPU seconds so far, when the control plane is local.
fn etcd_cpu_seconds(cluster: &Cluster) -> Option<f64> {
    let pid = std::fs::read_to_string(cluster.dir()?.join("pids/etcd")).ok()?;
    process_usage(pid.trim().parse().ok()?).1
}

/// How long each request is granted: long enough that all are live at once, from the
/// ceiling with room for a slow operator. A lifecycle costs the API server's CPU about as much
/// as 80 of the ceiling's writes (76-79 measured at N = 1,000), half of it up to the grant.
/// The report says how many were live at once.
fn grant_duration(plan: &Plan, size: usize, ceiling: f64) -> Duration {
    if let Some(fixed) = plan.fixed_duration {
        return fixed;
    }
    let writes_needed = size as f64 * 40.0;
    let seconds = 3.0 * writes_needed / ceiling.max(1.0);
    plan.min_duration + Duration::from_secs_f64(seconds.ceil())
}

/// Who the grants' bindings are for, to name them as the API server's audit reason does.
struct LiveOf {
    namespace: String,
    cluster_role: String,
    user: String,
}

impl LiveOf {
    /// The bindings of granted requests with at least a few seconds left: calls the index
    /// will attribute.
    fn bindings(&self, book: &Book) -> Vec<LiveBinding> {
        let soon = Timestamp::now() + jiff::SignedDuration::from_secs(5);
        book.lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|seen| {
                seen.granted.is_some()
                    && seen.binding_deleted.is_none()
                    && seen.expires_at.is_some_and(|expires| expires > soon)
            })
            .filter_map(|seen| seen.binding.clone())
            .take(1_000)
            .map(|name| LiveBinding {
                namespace: self.namespace.clone(),
                name,
                cluster_role: self.cluster_role.clone(),
                user: self.user.clone(),
            })
            .collect()
    }
}

/// Runs one size, with `audit_rate` audit events a second posted beside it.
pub async fn run(plan: &Plan, cluster: &Cluster, size: usize, audit_rate: u32) -> Run {
    let progress = MultiProgress::new();
    let concurrency = plan.concurrency;
    let (ceiling_rate, ceiling_ms_per_write) =
        ceiling(cluster, size.clamp(200, 2_000), concurrency).await;
    let duration = grant_duration(plan, size, ceiling_rate);
    eprintln!(
        "bench: N={size}: ceiling {ceiling_rate:.0} writes/s; each grant lasts {}s",
        duration.as_secs()
    );
    let book: Book = Arc::default();
    let watches = watch(cluster, book.clone());
    let before = metrics::read(&cluster.admin).await;
    let etcd_before = etcd_cpu_seconds(cluster);
    let usage_before = cluster
        .operator
        .as_ref()
        .map(|operator| process_usage(operator.pid()));
    let operator_before = match &cluster.operator {
        Some(operator) => Some(operator.metrics().await),
        None => None,
    };
    let audit_load = match (audit_rate, cluster.dir()) {
        (0, _) => None,
        (rate, Some(dir)) => {
            eprintln!("bench: posting {rate} audit events a second to the operator");
            let (book, cluster_namespace) = (book.clone(), cluster.namespace.clone());
            let live_of = LiveOf {
                namespace: cluster_namespace.clone(),
                cluster_role: cluster.cluster_role.clone(),
                user: cluster.requester_name.clone(),
            };
            Some(AuditLoad::start(
                Endpoint::local(dir),
                rate,
                cluster_namespace,
                move || live_of.bindings(&book),
            ))
        }
        (_, None) => {
            eprintln!(
                "bench: no audit load against a KUBECONFIG cluster (its audit webhook is its own)"
            );
            None
        }
    };

    // Create every request as the requester.
    let requests = Api::<AccessRequest>::namespaced(cluster.requester.clone(), &cluster.namespace);
    let creating = bar(&progress, size, "created");
    let names: Vec<(String, String)> = stream::iter(0..size)
        .map(|index| {
            let requests = requests.clone();
            let creating = creating.clone();
            let request: AccessRequest = serde_json::from_value(serde_json::json!({
                "apiVersion": "jit.dev/v1alpha1",
                "kind": "AccessRequest",
                "metadata": {"name": format!("bench-{index:05}")},
                "spec": {
                    "policy": cluster.policy,
                    "role": "view",
                    "duration": format!("{}s", duration.as_secs()),
                    "reason": "benchmark",
                },
            }))
            .expect("a request");
            async move {
                let created = requests.create(&PostParams::default(), &request).await?;
                creating.inc(1);
                Ok::<_, kube::Error>((created.name_any(), created.uid().unwrap_or_default()))
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await
        .expect("create the requests");
    creating.finish();

    // Approve every one as the approver, as fast as the API server takes it.
    let approving = bar(&progress, size, "approved");
    let approvals = Api::<AccessRequest>::namespaced(cluster.approver.clone(), &cluster.namespace);
    let approve_started = Timestamp::now();
    stream::iter(names.iter().cloned())
        .map(|(name, uid)| {
            let approvals = approvals.clone();
            let book = book.clone();
            let approving = approving.clone();
            async move {
                let patch =
                    serde_json::json!({"metadata": {"annotations": {"jit.dev/approve": "bench"}}});
                approvals
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                let now = Timestamp::now();
                book.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(uid)
                    .or_default()
                    .approved_ack = Some(now);
                approving.inc(1);
                Ok::<_, kube::Error>(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await
        .expect("approve the requests");
    approving.finish();

    let granting = bar(&progress, size, "granted");
    until(&book, size, &granting, duration, |seen| {
        seen.granted.is_some() && seen.binding_added.is_some()
    })
    .await;
    let expiring = bar(&progress, size, "expired and revoked");
    let expired = until(
        &book,
        size,
        &expiring,
        duration + Duration::from_secs(300),
        |seen| seen.expired.is_some() && seen.binding_deleted.is_some(),
    )
    .await;
    // The lifecycle ends with what follows each revoke: counted in its writes and time.
    let releasing = bar(&progress, size, "released");
    until(&book, size, &releasing, Duration::from_secs(300), |seen| {
        seen.released.is_some()
    })
    .await;
    let audit = match audit_load {
        Some(load) => Some(load.stop().await),
        None => None,
    };
    // Let the last status writes land in the API server's counters (and parked calls be
    // attributed).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = metrics::read(&cluster.admin).await;
    let operator_after = match &cluster.operator {
        Some(operator) => Some(operator.metrics().await),
        None => None,
    };
    let reconciles =
        operator_before
            .as_ref()
            .zip(operator_after.as_ref())
            .map(|(before, after)| {
                let total = |snapshot: &Snapshot| {
                    snapshot
                        .sum_by("jit_reconciles_total", |_| true, |_| ())
                        .values()
                        .sum::<f64>()
                };
                total(after) - total(before)
            });
    let audit = match (audit, &operator_before, &operator_after) {
        (Some(audit), Some(before), Some(after)) => Some(audit.with_operator_counts(before, after)),
        (audit, ..) => audit,
    };
    let usage_after = cluster
        .operator
        .as_ref()
        .map(|operator| process_usage(operator.pid()));
    let etcd_after = etcd_cpu_seconds(cluster);
    for watch in watches {
        watch.abort();
    }
    let book = book.lock().unwrap_or_else(|e| e.into_inner()).clone();
    write_timeline(plan, size, audit_rate, &book);
    summarize(
        SummaryInput {
            size,
            duration,
            ceiling: ceiling_rate,
            approve_started,
            failures: size.saturating_sub(expired),
            operator: usage_before.zip(usage_after),
            ceiling_ms_per_write,
            etcd_cpu_seconds: etcd_after
                .zip(etcd_before)
                .map(|(after, before)| after - before),
            audit,
            reconciles,
        },
        &book,
        &before,
        &after,
    )
}

struct SummaryInput {
    size: usize,
    duration: Duration,
    ceiling: f64,
    approve_started: Timestamp,
    failures: usize,
    /// The operator's usage before and after, when local.
    operator: Option<(Usage, Usage)>,
    /// What one of the ceiling's writes cost the API server, in CPU milliseconds.
    ceiling_ms_per_write: Option<f64>,
    /// etcd's CPU seconds over the run, when local.
    etcd_cpu_seconds: Option<f64>,
    audit: Option<AuditLoadReport>,
    /// The operator's reconciles during the run, when local.
    reconciles: Option<f64>,
}

/// Writes what was seen of each request (`requests-N[-audit-R].csv`, in wall-clock time):
/// to find what the slowest grants and revokes have in common, and when they happened.
fn write_timeline(plan: &Plan, size: usize, audit_rate: u32, book: &HashMap<String, Seen>) {
    let time = |at: Option<Timestamp>| at.map(|at| at.to_string()).unwrap_or_default();
    let mut rows: Vec<(&String, &Seen)> = book.iter().collect();
    rows.sort_by_key(|(_, seen)| seen.expires_at);
    let mut csv = String::from(
        "request,approved_ack,binding_added,granted,expires_at,binding_deleted,expired,released\n",
    );
    for (name, seen) in rows {
        csv.push_str(&format!(
            "{name},{},{},{},{},{},{},{}\n",
            time(seen.approved_ack),
            time(seen.binding_added),
            time(seen.granted),
            time(seen.expires_at),
            time(seen.binding_deleted),
            time(seen.expired),
            time(seen.released),
        ));
    }
    let suffix = if audit_rate > 0 {
        format!("-audit-{audit_rate}")
    } else {
        String::new()
    };
    let path = plan.out.join(format!("requests-{size}{suffix}.csv"));
    if let Err(error) = std::fs::write(&path, csv) {
        eprintln!("bench: could not write {}: {error}", path.display());
    }
}

fn millis(from: Option<Timestamp>, to: Option<Timestamp>) -> Option<f64> {
    let (from, to) = (from?, to?);
    Some(to.duration_since(from).as_secs_f64() * 1_000.0)
}

fn summarize(
    input: SummaryInput,
    book: &HashMap<String, Seen>,
    before: &Snapshot,
    after: &Snapshot,
) -> Run {
    let series = |step: fn(&Seen) -> Option<f64>| -> Latency {
        Latency::of(book.values().filter_map(step).collect())
    };
    let approval_to_binding = series(|seen| millis(seen.approved_ack, seen.binding_added));
    let approval_to_granted = series(|seen| millis(seen.approved_ack, seen.granted));
    let expiry_to_binding_deleted = series(|seen| millis(seen.expires_at, seen.binding_deleted));
    let expiry_to_expired = series(|seen| millis(seen.expires_at, seen.expired));

    // All live at once: the most bindings present at one moment.
    let mut changes: Vec<(Timestamp, i64)> = Vec::new();
    for seen in book.values() {
        if let Some(added) = seen.binding_added {
            changes.push((added, 1));
        }
        if let Some(deleted) = seen.binding_deleted {
            changes.push((deleted, -1));
        }
    }
    changes.sort();
    let (mut live, mut peak_live) = (0_i64, 0_i64);
    for (_, change) in changes {
        live += change;
        peak_live = peak_live.max(live);
    }

    // Throughput: the operator's busy time per lifecycle, granting and revoking.
    let last = |step: fn(&Seen) -> Option<Timestamp>| book.values().filter_map(step).max();
    let first = |step: fn(&Seen) -> Option<Timestamp>| book.values().filter_map(step).min();
    let grant_span = millis(Some(input.approve_started), last(|seen| seen.granted)).unwrap_or(0.0);
    let revoke_span = millis(
        first(|seen| seen.expires_at),
        last(|seen| seen.released.or(seen.expired)),
    )
    .unwrap_or(0.0);
    let busy_seconds = (grant_span + revoke_span) / 1_000.0;
    let lifecycles_per_second = if busy_seconds > 0.0 {
        input.size as f64 / busy_seconds
    } else {
        0.0
    };

    let reads = metrics::reads(before, after);
    let by_verb_resource = metrics::writes(before, after);
    let total: f64 = by_verb_resource.values().sum();
    // The generator's own: one create and one approval per request.
    let generator = 2 * input.size as u64;
    let operator_writes = (total as u64).saturating_sub(generator);
    let webhook_buckets = metrics::histogram(
        before,
        after,
        "apiserver_admission_webhook_admission_duration_seconds",
        |labels| {
            labels
                .get("name")
                .is_some_and(|name| name.contains("jit.dev"))
        },
    );
    let webhook_count = webhook_buckets.last().map_or(0.0, |last| last.1) as usize;
    let webhook = Webhook {
        count: webhook_count,
        p50_ms: metrics::quantile(&webhook_buckets, 0.5).map(|s| s * 1_000.0),
        p90_ms: metrics::quantile(&webhook_buckets, 0.9).map(|s| s * 1_000.0),
        p99_ms: metrics::quantile(&webhook_buckets, 0.99).map(|s| s * 1_000.0),
    };
    let (peak_rss_mib, cpu_seconds) = match input.operator {
        Some(((_, cpu_before), (peak, cpu_after))) => (
            peak,
            cpu_after
                .zip(cpu_before)
                .map(|(after, before)| after - before),
        ),
        None => (None, None),
    };
    let apiserver_seconds = apiserver_cpu_seconds(after)
        .zip(apiserver_cpu_seconds(before))
        .map(|(after, before)| after - before);
    let per_lifecycle = |seconds: f64| seconds * 1_000.0 / input.size.max(1) as f64;
    let control_plane = ControlPlaneCpu {
        apiserver_seconds,
        etcd_seconds: input.etcd_cpu_seconds,
        apiserver_ms_per_lifecycle: apiserver_seconds.map(per_lifecycle),
        etcd_ms_per_lifecycle: input.etcd_cpu_seconds.map(per_lifecycle),
        apiserver_ms_per_ceiling_write: input.ceiling_ms_per_write,
    };
    Run {
        size: input.size,
        grant_seconds: input.duration.as_secs(),
        ceiling_writes_per_second: input.ceiling,
        approval_to_binding,
        approval_to_granted,
        expiry_to_binding_deleted,
        expiry_to_expired,
        webhook,
        lifecycles_per_second,
        writes: Writes {
            generator,
            operator: operator_writes,
            per_lifecycle: total / input.size.max(1) as f64,
            operator_per_lifecycle: operator_writes as f64 / input.size.max(1) as f64,
            by_verb_resource: by_verb_resource
                .into_iter()
                .map(|((verb, resource), count)| (format!("{verb} {resource}"), count))
                .collect(),
        },
        peak_live: peak_live.max(0) as usize,
        peak_rss_mib,
        cpu_seconds,
        control_plane,
        failures: input.failures,
        audit: input.audit,
        reads_per_lifecycle: reads
            .into_iter()
            .map(|((verb, resource), count)| {
                (
                    format!("{verb} {resource}"),
                    count / input.size.max(1) as f64,
                )
            })
            .collect(),
        reconciles_per_lifecycle: input
            .reconciles
            .map(|reconciles| reconciles / input.size.max(1) as f64),
    }
}
