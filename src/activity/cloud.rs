//! Cloud grants' activity, from each cloud's own log: read while the grant is active (every
//! `--cloud-activity-interval`), once when it ends, and once more after the cloud's delivery
//! delay, when the summary becomes final. Each read covers the whole grant window, so that a
//! summary is recounted from the log rather than added to: late events and repeated reads
//! count once. Only the leader reads (the clouds' quotas are per account, not per replica).
//!
//! The last read also writes each action to the JSON-lines audit log as a
//! `dev.jit.activity.v1` event (earlier reads may still miss late events; the last one is
//! the record).
//!
//! When to read and what the summary says are pure (`next_read`, `window`, `summarize`,
//! `attributions`); the runner watches the requests, calls the provider and writes
//! `status.activity`.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::{Future, StreamExt};
use jiff::{SignedDuration, Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde_json::json;
use tracing::{debug, info, warn};

use super::{Attribution, Outcome, Tally, channels::Fanout, cut, line};
use crate::{
    crd::v1alpha1::{
        AccessRequest, AccessRequestStatus, Activity, ActivityAction, ActivityCompleteness,
        ActivityLookup, ActivitySource, Phase,
    },
    metrics::{Metrics, ProviderErrorLabels},
    provider::{ActivityLog, LoggedAction, Providers},
    telemetry::error_chain,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The field manager of the summaries written here (the Kubernetes audit's share it: a
/// request has one source or the other).
const FIELD_MANAGER: &str = "jit-operator-activity";
/// How often the runner looks for reads that are due.
const TICK: Duration = Duration::from_secs(1);
/// Reads under way at once, across clouds.
const CONCURRENT_READS: usize = 4;
/// The first wait after a failed read; doubled each time, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: SignedDuration = SignedDuration::from_secs(15);
const MAX_BACKOFF: SignedDuration = SignedDuration::from_secs(600);

/// When to read the clouds' logs (from the command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Between reads while a grant is active.
    pub interval: Duration,
    /// How long after a grant ends its log is read the last time; `None`: each cloud's own
    /// documented delivery delay ([`delivery_delay`]).
    pub delay: Option<Duration>,
}

impl Settings {
    fn delay_for(&self, source: ActivitySource) -> SignedDuration {
        self.delay
            .and_then(|delay| SignedDuration::try_from(delay).ok())
            .unwrap_or_else(|| delivery_delay(source))
    }

    fn interval(&self) -> SignedDuration {
        SignedDuration::try_from(self.interval).unwrap_or(SignedDuration::from_secs(300))
    }
}

/// How late each cloud's log may still receive an event: CloudTrail delivers within 15
/// minutes of the call, the Azure Activity Log within 20, Cloud Audit Logs within minutes
/// (taken as 10).
pub fn delivery_delay(source: ActivitySource) -> SignedDuration {
    match source {
        ActivitySource::AwsCloudTrail => SignedDuration::from_mins(15),
        ActivitySource::AzureActivityLog => SignedDuration::from_mins(20),
        ActivitySource::GcpAuditLogs => SignedDuration::from_mins(10),
        ActivitySource::KubernetesAudit => SignedDuration::ZERO,
    }
}

/// When the grant ended, for a request that was granted and ended.
fn ended_at(status: &AccessRequestStatus) -> Option<Timestamp> {
    match status.phase? {
        Phase::Pending | Phase::Active => None,
        // The earlier of the two: a revoke after the expiry changes nothing.
        Phase::Expired | Phase::Revoked | Phase::Denied | Phase::Failed => {
            [&status.revoked_at, &status.expires_at]
                .into_iter()
                .flatten()
                .map(|time| time.0)
                .min()
        }
    }
}

/// When the request's cloud log is read next: `interval` after the last read while the grant
/// is active, at once when it has ended, and `delay` after its end for the final read; `None`
/// when it has no cloud lookup or its final read is done. `last_read` is a read this replica
/// made that the status may not show yet. Pure.
pub(crate) fn next_read(
    status: &AccessRequestStatus,
    settings: &Settings,
    last_read: Option<Timestamp>,
) -> Option<Timestamp> {
    let lookup = status.activity_lookup.as_ref()?;
    let granted = status.granted_at.as_ref()?.0;
    let written = status
        .activity
        .as_ref()
        .filter(|activity| activity.source == Some(lookup.source))
        .and_then(|activity| activity.as_of.as_ref())
        .map(|time| time.0);
    let last = written.max(last_read);
    match ended_at(status) {
        None if status.phase == Some(Phase::Active) => {
            Some(last.unwrap_or(granted) + settings.interval())
        }
        None => None,
        Some(end) => {
            let last_at = end + settings.delay_for(lookup.source);
            match last {
                Some(last) if last >= last_at => None,
                Some(last) if last >= end => Some(last_at),
                _ => Some(end),
            }
        }
    }
}

/// What one read covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    pub from: Timestamp,
    pub to: Timestamp,
    /// Whether the cloud's delivery delay has passed since the grant ended.
    pub last: bool,
}

/// The window a read made at `now` covers: from the grant to its end (or now). Pure.
pub(crate) fn window(
    status: &AccessRequestStatus,
    settings: &Settings,
    now: Timestamp,
) -> Option<Window> {
    let lookup = status.activity_lookup.as_ref()?;
    let from = status.granted_at.as_ref()?.0;
    let end = ended_at(status);
    let to = end.map_or(now, |end| end.min(now)).max(from);
    let last = end.is_some_and(|end| now >= end + settings.delay_for(lookup.source));
    Some(Window { from, to, last })
}

/// The summary of what one read found. Pure.
pub(crate) fn summarize(
    source: ActivitySource,
    log: &ActivityLog,
    last: bool,
    as_of: Timestamp,
) -> Activity {
    let mut tally = Tally::default();
    for logged in &log.actions {
        let (outcome, action) = action_of(logged);
        tally.count_action(outcome, action);
    }
    let completeness = if log.truncated {
        ActivityCompleteness::Truncated
    } else if last {
        ActivityCompleteness::Final
    } else {
        ActivityCompleteness::Preliminary
    };
    tally.summary_of(source, completeness, as_of)
}

/// Each action of a last read, attributed to the request, for the audit log. Pure.
pub(crate) fn attributions(
    request: &str,
    uid: &str,
    policy: &str,
    lookup: &ActivityLookup,
    log: &ActivityLog,
) -> Vec<Attribution> {
    log.actions
        .iter()
        .map(|logged| {
            let (outcome, action) = action_of(logged);
            Attribution {
                request: request.into(),
                uid: uid.to_owned(),
                policy: policy.to_owned(),
                outcome,
                user: cut(&lookup.principal, 253),
                audit_id: cut(&logged.id, 64),
                action,
            }
        })
        .collect()
}

/// A logged action in the shape `status.activity` and the audit lines use: the operation as
/// the verb, the service as the resource, within the schema's lengths. Pure.
fn action_of(logged: &LoggedAction) -> (Outcome, ActivityAction) {
    let outcome = if logged.denied {
        Outcome::Refused
    } else {
        Outcome::Used
    };
    let action = ActivityAction {
        time: Time(logged.time),
        verb: cut(&logged.operation, 64),
        resource: cut(&logged.service, 512),
        namespace: None,
        name: logged.resource.as_deref().map(|name| cut(name, 253)),
        code: logged.code,
    };
    (outcome, action)
}

/// What the runner remembers per request (by uid): its last read, and its failures.
#[derive(Clone, Copy, Debug, Default)]
struct Memory {
    last_read: Option<Timestamp>,
    failures: u32,
    retry_at: Option<Timestamp>,
}

/// One due read.
struct Due {
    uid: String,
    policy: String,
    namespace: String,
    name: String,
    lookup: ActivityLookup,
    window: Window,
    /// The read error the status shows now.
    shown_error: Option<String>,
}

/// Keeps of a request only what deciding when to read needs: requests may be large (labels,
/// annotations, a long timeline), and this cache holds every one of them.
fn trim(guarded: &mut DeserializeGuard<AccessRequest>) {
    let Ok(request) = guarded.0.as_mut() else {
        return;
    };
    request.strip_for_cache();
    if let Some(status) = request.status.take() {
        let window = status.phase_and_window();
        request.status = Some(AccessRequestStatus {
            activity: status.activity.map(|activity| Activity {
                source: activity.source,
                as_of: activity.as_of,
                read_error: activity.read_error,
                ..Activity::default()
            }),
            activity_lookup: status.activity_lookup,
            ..window
        });
    }
}

/// Reads the clouds' logs for cloud grants until `stop` completes.
pub async fn run(
    client: Client,
    providers: Providers,
    settings: Settings,
    metrics: Arc<Metrics>,
    audit: Option<Arc<crate::audit::Recorder>>,
    fanout: Fanout,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let requests = Api::<DeserializeGuard<AccessRequest>>::all(client.clone());
    let (store, writer) = reflector::store::<DeserializeGuard<AccessRequest>>();
    let stream = watcher(requests, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(trim)
        .reflect(writer)
        .touched_objects();
    let watch = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(error) = event {
                debug!(error = %error_chain(&error), "cloud activity: request watch failed; retrying");
            }
        }
    });
    futures::pin_mut!(stop);
    let mut memory: HashMap<String, Memory> = HashMap::new();
    info!(interval = ?settings.interval, delay = ?settings.delay, "reading the clouds' activity logs for cloud grants");
    loop {
        tokio::select! {
            () = &mut stop => break,
            () = tokio::time::sleep(TICK) => {}
        }
        let now = Timestamp::now();
        let mut due = Vec::new();
        let mut live = std::collections::HashSet::new();
        for guarded in store.state() {
            let Ok(request) = guarded.0.as_ref() else {
                continue;
            };
            let (Some(uid), Some(namespace), Some(status)) =
                (request.uid(), request.namespace(), request.status.as_ref())
            else {
                continue;
            };
            let Some(lookup) = status.activity_lookup.clone() else {
                continue;
            };
            live.insert(uid.clone());
            let remembered = memory.get(&uid).copied().unwrap_or_default();
            let Some(at) = next_read(status, &settings, remembered.last_read) else {
                continue;
            };
            if at > now || remembered.retry_at.is_some_and(|retry| retry > now) {
                continue;
            }
            let Some(window) = window(status, &settings, now) else {
                continue;
            };
            due.push(Due {
                uid,
                policy: request.spec.policy.clone(),
                namespace,
                name: request.name_any(),
                lookup,
                window,
                shown_error: status
                    .activity
                    .as_ref()
                    .and_then(|activity| activity.read_error.clone()),
            });
        }
        memory.retain(|uid, _| live.contains(uid));
        if due.is_empty() {
            continue;
        }
        let results: Vec<(String, Result<(), crate::provider::Error>)> = futures::stream::iter(due)
            .map(|due| {
                let (client, providers, metrics) = (&client, &providers, &metrics);
                let (audit, fanout) = (&audit, &fanout);
                async move {
                    let result =
                        read_and_write(client, providers, metrics, audit, fanout, &due, now).await;
                    (due.uid, result)
                }
            })
            .buffer_unordered(CONCURRENT_READS)
            .collect()
            .await;
        for (uid, result) in results {
            let entry = memory.entry(uid).or_default();
            match result {
                Ok(()) => {
                    *entry = Memory {
                        last_read: Some(now),
                        ..Memory::default()
                    };
                }
                Err(error) => {
                    entry.failures = entry.failures.saturating_add(1);
                    let backoff = FIRST_BACKOFF
                        .checked_mul(1 << entry.failures.saturating_sub(1).min(6))
                        .unwrap_or(MAX_BACKOFF)
                        .min(MAX_BACKOFF);
                    let asked = error
                        .retry_after()
                        .and_then(|wait| SignedDuration::try_from(wait).ok())
                        .unwrap_or(SignedDuration::ZERO);
                    entry.retry_at = Some(now + backoff.max(asked));
                }
            }
        }
    }
    watch.abort();
}

/// Reads one request's window from its cloud and writes the summary; on failure, says why in
/// the status (once) and returns the error for the backoff.
async fn read_and_write(
    client: &Client,
    providers: &Providers,
    metrics: &Metrics,
    audit: &Option<Arc<crate::audit::Recorder>>,
    fanout: &Fanout,
    due: &Due,
    now: Timestamp,
) -> Result<(), crate::provider::Error> {
    let api = Api::<AccessRequest>::namespaced(client.clone(), &due.namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let Some(target) = crate::provider::target_of(due.lookup.source) else {
        return Ok(());
    };
    let count = |outcome: &str| {
        metrics
            .cloud_activity_reads
            .get_or_create(&ProviderErrorLabels {
                provider: target.as_str().to_owned(),
                category: outcome.to_owned(),
            })
            .inc();
    };
    let read = match providers.named(target.as_str()) {
        Some(provider) => {
            provider
                .activity(&due.lookup, due.window.from, due.window.to)
                .await
        }
        None => Err(crate::provider::Error::NotRunning {
            target: target.as_str().to_owned(),
        }),
    };
    let patch = match read {
        Ok(Some(log)) => {
            count("ok");
            let summary = summarize(due.lookup.source, &log, due.window.last, now);
            debug!(request = %format!("{}/{}", due.namespace, due.name), actions = summary.actions, refused = summary.refused, completeness = ?summary.completeness, "read a cloud grant's activity");
            if due.window.last {
                let request = format!("{}/{}", due.namespace, due.name);
                let lines = attributions(&request, &due.uid, &due.policy, &due.lookup, &log);
                let (audit, fanout) = (audit.clone(), fanout.clone());
                // File writes, off the runtime's threads.
                let _ = tokio::task::spawn_blocking(move || {
                    for attribution in &lines {
                        if let Some(event) = line::event_json(attribution) {
                            if let Some(audit) = &audit {
                                audit.write_line(&event);
                            }
                            fanout.offer(&attribution.policy, &event);
                        }
                    }
                })
                .await;
            }
            let mut activity = serde_json::to_value(&summary).unwrap_or_default();
            // Merge patch: clear what an earlier, failed read said.
            activity["readError"] = serde_json::Value::Null;
            json!({ "status": { "activity": activity } })
        }
        // This cloud keeps no log the operator reads: nothing to show, nothing to retry.
        Ok(None) => return Ok(()),
        Err(error) => {
            count(error.category());
            let message = cut(&error.to_string(), 1024);
            warn!(request = %format!("{}/{}", due.namespace, due.name), error = %message, "cannot read a cloud grant's activity; retrying");
            if due.shown_error.as_deref() == Some(message.as_str()) {
                return Err(error);
            }
            let patch = json!({ "status": { "activity": {
                "source": due.lookup.source,
                "readError": message,
            } } });
            if let Err(failed) = api
                .patch_status(&due.name, &params, &Patch::Merge(&patch))
                .await
            {
                debug!(error = %error_chain(&failed), "could not say why a cloud log read failed");
            }
            return Err(error);
        }
    };
    match api
        .patch_status(&due.name, &params, &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        // Deleted meanwhile: nothing left to show it on.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(crate::provider::Error::Kubernetes {
            action: "write the activity of",
            reference: format!("{}/{}", due.namespace, due.name),
            source: error,
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{crd::v1alpha1::ActivityMatch, fixtures::at, provider::LoggedAction};

    fn settings() -> Settings {
        Settings {
            interval: Duration::from_secs(300),
            delay: None,
        }
    }

    fn granted(phase: Phase) -> AccessRequestStatus {
        AccessRequestStatus {
            phase: Some(phase),
            granted_at: Some(Time(at("2026-01-01T10:00:00Z"))),
            expires_at: Some(Time(at("2026-01-01T11:00:00Z"))),
            activity_lookup: Some(ActivityLookup {
                source: ActivitySource::AwsCloudTrail,
                matches: ActivityMatch::AwsUserName,
                principal: "alice".into(),
                scope: None,
            }),
            ..AccessRequestStatus::default()
        }
    }

    fn read_at(status: &mut AccessRequestStatus, time: &str) {
        status.activity = Some(Activity {
            source: Some(ActivitySource::AwsCloudTrail),
            as_of: Some(Time(at(time))),
            ..Activity::default()
        });
    }

    #[test]
    fn an_active_grant_is_read_every_interval() {
        let mut status = granted(Phase::Active);
        assert_eq!(
            next_read(&status, &settings(), None),
            Some(at("2026-01-01T10:05:00Z"))
        );
        read_at(&mut status, "2026-01-01T10:05:02Z");
        assert_eq!(
            next_read(&status, &settings(), None),
            Some(at("2026-01-01T10:10:02Z"))
        );
        // A read this replica made that the watch has not shown yet counts too.
        assert_eq!(
            next_read(&status, &settings(), Some(at("2026-01-01T10:09:00Z"))),
            Some(at("2026-01-01T10:14:00Z"))
        );
    }

    #[test]
    fn an_ended_grant_is_read_at_its_end_and_once_more_after_the_clouds_delay() {
        let mut status = granted(Phase::Revoked);
        status.revoked_at = Some(Time(at("2026-01-01T10:20:00Z")));
        read_at(&mut status, "2026-01-01T10:15:00Z");
        assert_eq!(
            next_read(&status, &settings(), None),
            Some(at("2026-01-01T10:20:00Z")),
            "at once, from its end"
        );
        read_at(&mut status, "2026-01-01T10:20:03Z");
        assert_eq!(
            next_read(&status, &settings(), None),
            Some(at("2026-01-01T10:35:00Z")),
            "CloudTrail's 15 minutes after the end"
        );
        read_at(&mut status, "2026-01-01T10:35:01Z");
        assert_eq!(next_read(&status, &settings(), None), None, "final");
    }

    #[test]
    fn the_delay_can_be_set_for_every_cloud() {
        let mut status = granted(Phase::Expired);
        read_at(&mut status, "2026-01-01T11:00:01Z");
        let quick = Settings {
            interval: Duration::from_secs(2),
            delay: Some(Duration::from_secs(3)),
        };
        assert_eq!(
            next_read(&status, &quick, None),
            Some(at("2026-01-01T11:00:03Z"))
        );
    }

    #[test]
    fn requests_without_a_cloud_lookup_or_never_granted_are_not_read() {
        let mut kubernetes = granted(Phase::Active);
        kubernetes.activity_lookup = None;
        assert_eq!(next_read(&kubernetes, &settings(), None), None);
        let mut pending = granted(Phase::Pending);
        pending.granted_at = None;
        assert_eq!(next_read(&pending, &settings(), None), None);
    }

    #[test]
    fn the_window_runs_from_the_grant_to_its_end_and_says_when_it_is_the_last() {
        let mut status = granted(Phase::Revoked);
        status.revoked_at = Some(Time(at("2026-01-01T10:20:00Z")));
        let early = window(&status, &settings(), at("2026-01-01T10:21:00Z")).unwrap();
        assert_eq!(
            (early.from, early.to, early.last),
            (
                at("2026-01-01T10:00:00Z"),
                at("2026-01-01T10:20:00Z"),
                false
            )
        );
        let last = window(&status, &settings(), at("2026-01-01T10:36:00Z")).unwrap();
        assert!(last.last);
        let active = granted(Phase::Active);
        let now = at("2026-01-01T10:30:00Z");
        assert_eq!(window(&active, &settings(), now).unwrap().to, now);
    }

    fn logged(second: i64, operation: &str, denied: bool) -> LoggedAction {
        LoggedAction {
            id: format!("e{second}"),
            time: at("2026-01-01T10:00:00Z") + SignedDuration::from_secs(second),
            operation: operation.into(),
            service: "s3.amazonaws.com".into(),
            resource: Some("arn:aws:s3:::logs".into()),
            denied,
            code: if denied { 403 } else { 200 },
        }
    }

    #[test]
    fn a_summary_counts_use_and_refusals_and_says_how_complete_it_is() {
        let log = ActivityLog {
            actions: vec![
                logged(1, "ListBuckets", false),
                logged(2, "GetObject", false),
                logged(3, "GetObject", false),
                logged(4, "DeleteBucket", true),
            ],
            truncated: false,
        };
        let as_of = at("2026-01-01T10:30:00Z");
        let summary = summarize(ActivitySource::AwsCloudTrail, &log, false, as_of);
        assert_eq!((summary.actions, summary.refused), (3, 1));
        assert_eq!(summary.by_verb_and_resource[0].verb, "GetObject");
        assert_eq!(summary.by_verb_and_resource[0].count, 2);
        assert_eq!(summary.recent.len(), 4);
        assert_eq!(summary.recent[3].code, 403);
        assert_eq!(
            summary.first_action_time,
            Some(Time(at("2026-01-01T10:00:01Z")))
        );
        assert_eq!(summary.source, Some(ActivitySource::AwsCloudTrail));
        assert_eq!(
            summary.completeness,
            Some(ActivityCompleteness::Preliminary)
        );
        let last = summarize(ActivitySource::AwsCloudTrail, &log, true, as_of);
        assert_eq!(last.completeness, Some(ActivityCompleteness::Final));
        let cut_short = ActivityLog {
            truncated: true,
            ..log
        };
        let truncated = summarize(ActivitySource::AwsCloudTrail, &cut_short, true, as_of);
        assert_eq!(
            truncated.completeness,
            Some(ActivityCompleteness::Truncated)
        );
    }
}
