//! History with a bound: requests that ended longer than `--retain-ended` ago are deleted by
//! the operator (leader only), so that "the last 30 days" is what the cluster holds and etcd
//! does not fill up. Their audit trail lives in its own outbox and is delivered whether or not
//! the request still exists; the deletion itself becomes the request's `deleted` event.

use std::time::Duration;

use jiff::Timestamp;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Preconditions},
    runtime::reflector,
};
use tracing::{debug, info, warn};

use crate::{
    crd::v1alpha1::{AccessRequest, Phase},
    request_controller::CachedRequest,
    telemetry::error_chain,
};

/// When a request ended: the time of its last timeline entry, once its phase is final.
pub(crate) fn ended_at(request: &AccessRequest) -> Option<Timestamp> {
    let status = request.status.as_ref()?;
    match status.phase? {
        Phase::Expired | Phase::Revoked | Phase::Denied | Phase::Failed => {}
        Phase::Pending | Phase::Active => return None,
    }
    status
        .timeline
        .last()
        .map(|entry| entry.time.0)
        .or_else(|| status.revoked_at.as_ref().map(|time| time.0))
        .or_else(|| request.creation_timestamp().map(|time| time.0))
}

/// The requests (namespace, name, uid) that ended more than `retain` before `now`, and are
/// not being deleted already.
pub(crate) fn due<'a>(
    requests: impl IntoIterator<Item = &'a CachedRequest>,
    now: Timestamp,
    retain: Duration,
) -> Vec<(String, String, String)> {
    let retain = jiff::SignedDuration::try_from(retain).unwrap_or(jiff::SignedDuration::MAX);
    requests
        .into_iter()
        .filter(|request| request.meta().deletion_timestamp.is_none())
        .filter(|request| {
            request
                .ended_at
                .and_then(|ended| ended.checked_add(retain).ok())
                .is_some_and(|until| until <= now)
        })
        .filter_map(|request| Some((request.namespace()?, request.name_any(), request.uid()?)))
        .collect()
}

/// How often the history is looked at: often enough for short retentions (tests), at most
/// once a minute.
fn period(retain: Duration) -> Duration {
    (retain / 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Deletes requests past their retention, from `requests` (the controller's cache), until
/// `shutdown` completes.
pub(crate) async fn run(
    client: Client,
    requests: reflector::Store<CachedRequest>,
    retain: Duration,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // No wait for the cache to fill: whatever it holds is a real request, and a partial
    // cache only means some are deleted a round later.
    info!(retain = ?retain, "deleting ended requests after their retention");
    loop {
        let cached = requests.state();
        let due = due(
            cached
                .iter()
                .map(AsRef::as_ref)
                .filter(|request| request.invalid.is_none()),
            Timestamp::now(),
            retain,
        );
        for (namespace, name, uid) in due {
            let api = Api::<AccessRequest>::namespaced(client.clone(), &namespace);
            // The uid precondition: a new request of the same name is not touched.
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => info!(%namespace, request = %name, "deleted a request past its retention"),
                Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {
                    debug!(%namespace, request = %name, "request already gone or replaced");
                }
                Err(error) => {
                    warn!(%namespace, request = %name, error = %error_chain(&error), "failed to delete a request past its retention; retrying");
                }
            }
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(period(retain)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::crd::v1alpha1::{AccessRequestStatus, TimelineEntry};

    fn request(name: &str, phase: Option<Phase>, ended: &str) -> AccessRequest {
        let mut request: AccessRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "jit.dev/v1alpha1", "kind": "AccessRequest",
            "metadata": {"name": name, "namespace": "team", "uid": format!("uid-{name}"),
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"policy": "p", "role": "view", "duration": "1h"},
        }))
        .unwrap();
        request.status = Some(AccessRequestStatus {
            phase,
            timeline: vec![TimelineEntry {
                time: Time(ended.parse().unwrap()),
                event: "Expired".into(),
                actor: None,
                message: None,
            }],
            ..AccessRequestStatus::default()
        });
        request
    }

    fn cached(request: &AccessRequest) -> CachedRequest {
        CachedRequest::of(&kube::core::DeserializeGuard(Ok(request.clone())))
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn only_requests_ended_longer_ago_than_the_retention_are_due() {
        let now: Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
        let requests = [
            request("old-expired", Some(Phase::Expired), "2026-01-15T00:00:00Z"),
            request("old-denied", Some(Phase::Denied), "2026-01-20T00:00:00Z"),
            request("recent", Some(Phase::Revoked), "2026-02-20T00:00:00Z"),
            request(
                "old-but-active",
                Some(Phase::Active),
                "2026-01-01T00:00:00Z",
            ),
            request(
                "old-but-pending",
                Some(Phase::Pending),
                "2026-01-01T00:00:00Z",
            ),
            request("no-status-yet", None, "2026-01-01T00:00:00Z"),
        ];
        let cached = requests.each_ref().map(cached);
        let due: Vec<String> = due(&cached, now, 30 * DAY)
            .into_iter()
            .map(|(_, name, _)| name)
            .collect();
        assert_eq!(due, ["old-expired", "old-denied"]);
    }

    #[test]
    fn the_retention_counts_from_the_end_not_the_creation() {
        let ended = request("late", Some(Phase::Expired), "2026-02-25T00:00:00Z");
        let now: Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
        assert!(due([&cached(&ended)], now, 30 * DAY).is_empty());
        assert_eq!(due([&cached(&ended)], now, 4 * DAY).len(), 1);
    }

    #[test]
    fn a_request_being_deleted_is_not_deleted_again() {
        let mut ended = request("going", Some(Phase::Expired), "2026-01-01T00:00:00Z");
        ended.metadata.deletion_timestamp = Some(Time("2026-02-01T00:00:00Z".parse().unwrap()));
        let now: Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
        assert!(due([&cached(&ended)], now, DAY).is_empty());
    }

    #[test]
    fn an_enormous_retention_never_comes_due() {
        let ended = request("kept", Some(Phase::Expired), "2026-01-01T00:00:00Z");
        let now: Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
        assert!(due([&cached(&ended)], now, Duration::MAX).is_empty());
    }

    #[test]
    fn the_history_is_looked_at_at_least_once_a_minute() {
        assert_eq!(period(30 * DAY), Duration::from_secs(60));
        assert_eq!(period(Duration::from_secs(4)), Duration::from_secs(2));
        assert_eq!(period(Duration::ZERO), Duration::from_secs(1));
    }
}
