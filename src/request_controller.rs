//! The AccessRequest controller driver: for each request, observe (fresh reads), decide (pure),
//! apply (finalizer and provider effect), then write the status and publish Events.

pub mod apply;
pub mod decide;
pub mod observe;
pub mod status;

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError},
    time::Duration,
};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::{
    api::rbac::v1::{ClusterRoleBinding, RoleBinding},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef},
        watcher,
    },
};
use serde_json::json;
use tracing::{debug, error, info, instrument, warn};

use self::decide::{FinalizerChange, Notice, Severity};
use crate::{
    crd::v1alpha1::{
        AccessPolicy, AccessRequest, AccessRequestStatus, GrantIntent, IntentAction, Phase,
        TimelineEntry,
    },
    metrics::Metrics,
    provider::{GrantKey, MANAGED_BY, MANAGED_BY_LABEL, Providers, REQUEST_ANNOTATION},
    seal::Sealer,
    telemetry::error_chain,
};

/// The controller's name, as Events report it.
pub const CONTROLLER_NAME: &str = "jit-operator";

/// The field manager of the operator's status writes.
const FIELD_MANAGER: &str = "jit-operator";

/// Most reconciles running at once.
const RECONCILE_CONCURRENCY: u16 = 16;

/// Longest wait between retries of a failing step.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Why reconciling one request failed; each variant is the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the request or policy failed.
    #[error("failed to observe")]
    Observe(#[from] observe::Error),
    /// Deciding did not finish (the decision task panicked or was cancelled).
    #[error("failed to decide")]
    Decide,
    /// Changing the finalizer failed.
    #[error("failed to apply")]
    Apply(#[from] apply::Error),
    /// Writing the status failed.
    #[error("failed to write status")]
    Status(#[source] kube::Error),
}

impl Error {
    /// A short label for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Observe(_) => "observe",
            Self::Decide => "decide",
            Self::Apply(_) => "apply",
            Self::Status(_) => "status",
        }
    }
}

/// What every reconcile can reach.
pub struct Context {
    /// The operator's own client.
    pub client: Client,
    /// Where grants are made.
    pub providers: Providers,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Longest time between two looks at a request (`--resync-interval`): the drift check.
    pub resync: Duration,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Checks the seals on decision records and grant windows, and seals the windows it
    /// writes.
    pub sealer: Sealer,
    /// Consecutive failed reconciles per request (`namespace/name`), for their backoff.
    failed: std::sync::Mutex<HashMap<String, i32>>,
}

impl Context {
    /// A context publishing Events as `jit-operator` from `instance`.
    pub fn new(
        client: Client,
        providers: Providers,
        instance: Option<String>,
        resync: Duration,
        metrics: Arc<Metrics>,
        sealer: Sealer,
    ) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER_NAME.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            providers,
            resync,
            metrics,
            sealer,
            failed: std::sync::Mutex::default(),
        }
    }

    /// Counts one more failed reconcile of `key`; returns how many in a row.
    fn failed_once(&self, key: &str) -> i32 {
        let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        let count = failed.entry(key.to_owned()).or_default();
        *count = count.saturating_add(1);
        *count
    }

    /// Forgets the failures of `key` after a reconcile that went through.
    fn succeeded(&self, key: &str) {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }
}

/// Runs the controller until `shutdown` completes; calls `synced` once its caches hold
/// everything it watches.
pub async fn run(
    context: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    synced: impl FnOnce() + Send + 'static,
) {
    // Watching through DeserializeGuard keeps one malformed object from stopping the watch.
    let requests = Api::<DeserializeGuard<AccessRequest>>::all(context.client.clone());
    let policies = Api::<AccessPolicy>::all(context.client.clone());
    // The cache keeps only what the controller reads from it (reconcile reads each request
    // fresh): a requester padding a request with labels or annotations costs the operator
    // nothing to hold.
    let (store, writer) = reflector::store::<DeserializeGuard<AccessRequest>>();
    let stream = watcher(requests, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(trim)
        .reflect(writer)
        .applied_objects();
    let controller = Controller::for_stream(stream, store.clone());
    let readable = store.clone();
    tokio::spawn(async move {
        // The store's readiness is a shared oneshot that wakes only its latest poller (the
        // controller's own runner polls it too), so look again now and then.
        loop {
            match tokio::time::timeout(Duration::from_millis(200), readable.wait_until_ready())
                .await
            {
                Ok(Ok(())) => {
                    debug!("caches synced");
                    synced();
                    return;
                }
                Ok(Err(_)) => return,
                Err(_) => {}
            }
        }
    });
    controller
        // A policy edit may decide pending requests (fewer approvals needed, or none allowed).
        .watches(policies, watcher::Config::default(), move |policy| {
            let name = policy.name_any();
            store
                .state()
                .into_iter()
                .filter(|guarded| {
                    guarded
                        .0
                        .as_ref()
                        .is_ok_and(|request| request.spec.policy == name)
                })
                .map(|guarded| ObjectRef::from_obj(guarded.as_ref()))
                .collect::<Vec<_>>()
        })
        // A managed binding changed or deleted by hand: look at its request now (drift).
        .watches(
            Api::<RoleBinding>::all(context.client.clone()),
            managed_only(),
            |binding| request_of(&binding),
        )
        .watches(
            Api::<ClusterRoleBinding>::all(context.client.clone()),
            managed_only(),
            |binding| request_of(&binding),
        )
        // Reconciles at once: each holds a request read whole and an API connection (with its
        // buffers) while it runs, so this bounds the operator's memory whatever the number and
        // size of requests; grants and revokes are short, so a queue of them drains fast.
        .with_config(controller::Config::default().concurrency(RECONCILE_CONCURRENCY))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                debug!(error = %error_chain(&error), "reconcile did not complete");
            }
        })
        .await;
}

/// What the controller's cache keeps of a request: no managedFields, no labels, and only the
/// operator's own annotations.
fn trim(guarded: &mut DeserializeGuard<AccessRequest>) {
    if let Ok(request) = guarded.0.as_mut() {
        let metadata = &mut request.metadata;
        metadata.managed_fields = None;
        metadata.labels = None;
        if let Some(annotations) = metadata.annotations.as_mut() {
            annotations.retain(|key, _| {
                key.strip_prefix(crate::crd::GROUP)
                    .is_some_and(|rest| rest.starts_with('/'))
            });
        }
    }
}

/// Watches only what the operator manages.
fn managed_only() -> watcher::Config {
    watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"))
}

/// The request a managed object belongs to, from its `jit.dev/request` annotation.
fn request_of<K: ResourceExt>(object: &K) -> Option<ObjectRef<DeserializeGuard<AccessRequest>>> {
    let (namespace, name) = object
        .annotations()
        .get(REQUEST_ANNOTATION)?
        .split_once('/')?;
    Some(ObjectRef::new(name).within(namespace))
}

#[instrument(skip_all, fields(request = %guarded.name_any(), namespace = guarded.namespace(), subject = tracing::field::Empty))]
async fn reconcile(
    guarded: Arc<DeserializeGuard<AccessRequest>>,
    context: Arc<Context>,
) -> Result<Action, Error> {
    let key = key_of(&guarded);
    let result = reconcile_steps(guarded, context.clone()).await;
    if result.is_ok() {
        context.succeeded(&key);
    }
    result
}

async fn reconcile_steps(
    guarded: Arc<DeserializeGuard<AccessRequest>>,
    context: Arc<Context>,
) -> Result<Action, Error> {
    if let Err(invalid) = &guarded.0 {
        warn!(error = %invalid.error, "ignoring access request that does not parse");
        return Ok(Action::await_change());
    }
    let namespace = guarded.namespace().unwrap_or_default();
    let name = guarded.name_any();

    // Observe: client required.
    let Some(observed) = observe::observe(
        &context.client,
        &context.providers,
        &context.sealer,
        &namespace,
        &name,
    )
    .await?
    else {
        context
            .metrics
            .track(&format!("{namespace}/{name}"), None, None);
        return Ok(Action::await_change());
    };
    let request = &observed.request;
    if let Some(subject) = request.spec.subject.as_deref().or_else(|| {
        request
            .spec
            .requester
            .as_ref()
            .map(|requester| requester.username.as_str())
    }) {
        tracing::Span::current().record("subject", subject);
    }
    if !observed.forged.is_empty() {
        // Written around admission (the webhook down or bypassed): never counted.
        warn!(claimed = ?observed.forged, "ignoring decision records without admission's seal");
    }
    if let Some(why) = &observed.policy_unreadable {
        warn!(error = %why, "could not read the request's policy; nothing is granted or refused until it can be");
        context.metrics.reconcile_error("observe");
    }
    if let Some(why) = &observed.unverified {
        // Loud, but not in the way: expiry, revoke and deny go ahead without it.
        warn!(error = %why, "could not verify the active grant; drift is not checked until it can be");
        let provider = request
            .status
            .as_ref()
            .and_then(|status| status.grant.as_ref())
            .map_or("unknown", |grant| grant.provider.as_str());
        context.metrics.provider_error(provider, "verify");
    }
    let now = Timestamp::now();

    // Decide: no client. On a blocking thread, because the policy's autoApprove CEL runs
    // there: its cost is bounded (auto_approve::check), and however long it takes, the
    // runtime's workers stay free for the webhook, health checks and other grants.
    let (observed, plan) = tokio::task::spawn_blocking(move || {
        let plan = decide::decide(&observed, now);
        (observed, plan)
    })
    .await
    .map_err(|_| Error::Decide)?;
    let request = &observed.request;
    let phase = request.status.as_ref().and_then(|status| status.phase);
    if phase != plan.status.phase || plan.effect != decide::Effect::None {
        info!(?phase, next = ?plan.status.phase, effect = ?plan.effect, "observed access request");
    } else {
        debug!(?phase, "observed access request; nothing to do");
    }

    // Apply: client required.
    let api = Api::<AccessRequest>::namespaced(context.client.clone(), &namespace);
    if plan.finalizer == FinalizerChange::Add {
        apply::set_finalizer(&api, request, true).await?;
    }
    let mut written = request.status.clone().unwrap_or_default();
    let kind = match &plan.effect {
        decide::Effect::None => None,
        decide::Effect::Grant { .. } => Some(IntentAction::Grant),
        decide::Effect::Revoke => Some(IntentAction::Revoke),
    };
    if let Some(action) = kind {
        // Intent before action: status says what is about to happen before the provider
        // is called, so a crash in between is visible and resolved on restart.
        let mut intent = written.clone();
        if action == IntentAction::Grant {
            // The window is fixed here, before the first attempt: whatever later write fails,
            // a retry keeps it and the grant ends at its time.
            intent.granted_at.clone_from(&plan.status.granted_at);
            intent.expires_at.clone_from(&plan.status.expires_at);
        }
        intent.intent = Some(GrantIntent {
            action,
            key: GrantKey::for_request(&request.uid().unwrap_or_default())
                .as_str()
                .to_owned(),
            time: Time(now),
        });
        written = write_status(&api, &context.sealer, request, &written, &intent).await?;
        crash_point(action, "before-effect");
    }
    let applied = match apply::effect(&context.providers, request, &plan.effect).await {
        Ok(applied) => applied,
        Err(error) => {
            return record_failure(&context, &api, request, &written, &plan, error, now).await;
        }
    };
    if let Some(action) = kind {
        crash_point(action, "after-effect");
    }
    if let Some(what) = &applied.unaccounted {
        error!(problem = %what, "a cloud grant may outlive its request");
        let notice = Notice {
            severity: Severity::Warning,
            reason: "GrantRecordMissing".into(),
            note: what.clone(),
        };
        publish(&context, request, &[notice]).await;
    }
    count_success(&context.metrics, request, &plan);

    // Status: from what was applied.
    let status = status::after_success(plan.status, &applied);
    let status = write_status(&api, &context.sealer, request, &written, &status).await?;
    measure(&context.metrics, request, phase, &status, now);
    if let Some(action) = kind {
        crash_point(action, "after-status");
    }
    publish(&context, request, &plan.notices).await;
    if plan.finalizer == FinalizerChange::Remove {
        apply::set_finalizer(&api, request, false).await?;
        if let Some(action) = kind {
            crash_point(action, "after-finalizer");
        }
    }
    if status.phase.is_some_and(Phase::is_final) {
        // Ended, revoked and released: nothing to look at until someone changes it (a
        // leftover grant would be the orphan sweep's).
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(plan.requeue_after.min(context.resync)))
}

/// Updates the gauges and, on a change of phase, the latency histograms.
fn measure(
    metrics: &Metrics,
    request: &AccessRequest,
    before: Option<Phase>,
    status: &AccessRequestStatus,
    now: Timestamp,
) {
    let key = format!(
        "{}/{}",
        request.namespace().unwrap_or_default(),
        request.name_any()
    );
    let provider = status
        .grant
        .as_ref()
        .filter(|_| status.phase == Some(Phase::Active))
        .map(|grant| grant.provider.as_str());
    let phase = status.phase.map(|phase| format!("{phase:?}"));
    metrics.track(&key, phase.as_deref(), provider);
    if status.phase == before {
        return;
    }
    let seconds = |from: Timestamp| now.duration_since(from).as_secs_f64().max(0.0);
    let undecided = |phase: Option<Phase>| matches!(phase, None | Some(Phase::Pending));
    if undecided(before)
        && !undecided(status.phase)
        && let Some(created) = &request.metadata.creation_timestamp
    {
        metrics.decision_seconds.observe(seconds(created.0));
    }
    match status.phase {
        Some(Phase::Active) => {
            let approved = status
                .timeline
                .iter()
                .rev()
                .find(|entry| entry.event == decide::APPROVED)
                .map(|entry| entry.time.0);
            if let Some(approved) = approved {
                metrics.grant_seconds.observe(seconds(approved));
            }
        }
        Some(Phase::Expired) => {
            if let Some(expires_at) = &status.expires_at {
                metrics.revoke_lag_seconds.observe(seconds(expires_at.0));
            }
        }
        _ => {}
    }
}

fn count_success(metrics: &Metrics, request: &AccessRequest, plan: &decide::Plan) {
    match plan.effect {
        decide::Effect::None => {}
        decide::Effect::Grant { .. } => {
            metrics.grants.inc();
            if plan
                .notices
                .iter()
                .any(|notice| notice.reason == "GrantRepaired")
            {
                metrics.drift_repairs.inc();
            }
        }
        decide::Effect::Revoke => {
            metrics.revocations.inc();
            metrics.revocation_failing(&request.uid().unwrap_or_default(), false);
        }
    }
    metrics.reconciled("ok");
}

/// Crashes the process here when the test failpoint `<grant|revoke>-<step>` is on (feature
/// `failpoints`, set with the `FAILPOINTS` environment variable); nothing otherwise.
fn crash_point(action: IntentAction, step: &str) {
    #[cfg(feature = "failpoints")]
    {
        let kind = match action {
            IntentAction::Grant => "grant",
            IntentAction::Revoke => "revoke",
        };
        if fail::eval(&format!("{kind}-{step}"), |_| ()).is_some() {
            error!(failpoint = %format!("{kind}-{step}"), "failpoint: crashing");
            std::process::abort();
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = (action, step);
}

/// Writes the status with server-side apply, so that fields the operator no longer sets are
/// removed; skips the write when nothing but condition times would change.
/// Seals the grant window: only what the operator writes may be granted from.
async fn write_status(
    api: &Api<AccessRequest>,
    sealer: &Sealer,
    request: &AccessRequest,
    current: &AccessRequestStatus,
    status: &AccessRequestStatus,
) -> Result<AccessRequestStatus, Error> {
    let mut status = status.clone();
    status.seal = match (&status.granted_at, &status.expires_at, request.uid()) {
        (Some(granted_at), Some(expires_at), Some(uid)) => {
            Some(sealer.seal_window(&uid, granted_at, expires_at))
        }
        _ => None,
    };
    if !status::differs(current, &status) {
        return Ok(status);
    }
    let patch = json!({
        "apiVersion": "jit.dev/v1alpha1",
        "kind": "AccessRequest",
        "status": status,
    });
    api.patch_status(
        &request.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| status)
    .map_err(Error::Status)
}

/// Shows a failed grant or revoke on the request and schedules the retry. A grant refused for
/// good (no permission, no such namespace) fails the request instead.
async fn record_failure(
    context: &Context,
    api: &Api<AccessRequest>,
    request: &AccessRequest,
    written: &AccessRequestStatus,
    plan: &decide::Plan,
    error: apply::Error,
    now: Timestamp,
) -> Result<Action, Error> {
    let generation = request.metadata.generation;
    if let apply::Error::Grant(cause) | apply::Error::Revoke(cause) = &error {
        let target = cause.target().or(match &plan.effect {
            decide::Effect::Grant { role, .. } => crate::target::Target::of(role),
            _ => None,
        });
        let provider = target.map_or("unknown", crate::target::Target::as_str);
        context.metrics.provider_error(provider, cause.category());
    }
    // A refused grant ends the request, and ending always revokes: a refused drift repair
    // leaves the grant it replaced, and a refused multi-step grant may have landed in part.
    let error = match &error {
        apply::Error::Grant(cause) if !cause.is_retryable() => {
            match apply::effect(&context.providers, request, &decide::Effect::Revoke).await {
                Ok(_) => error,
                Err(revoke) => revoke,
            }
        }
        _ => error,
    };
    let message = error_chain(&error);
    let (status, notice) = match &error {
        apply::Error::Grant(cause) if !cause.is_retryable() => {
            warn!(error = %message, "grant refused; failing the request");
            let status = refused_grant(plan.status.clone(), &message, now);
            let notice = Notice {
                severity: Severity::Warning,
                reason: "Failed".into(),
                note: format!("could not grant: {message}"),
            };
            write_status(api, &context.sealer, request, written, &status).await?;
            let before = request.status.as_ref().and_then(|status| status.phase);
            measure(&context.metrics, request, before, &status, now);
            publish(context, request, &[notice]).await;
            return Ok(Action::requeue(decide::RESYNC));
        }
        apply::Error::Grant(_) => (
            status::after_failure(
                Some(written),
                status::GRANT_FAILING,
                "GrantFailed",
                &message,
                now,
                generation,
            ),
            Notice {
                severity: Severity::Warning,
                reason: "GrantFailing".into(),
                note: format!("grant failed, will retry: {message}"),
            },
        ),
        _ => {
            error!(error = %message, "revocation failed; retrying");
            context.metrics.revocation_failures.inc();
            context
                .metrics
                .revocation_failing(&request.uid().unwrap_or_default(), true);
            (
                status::after_failure(
                    Some(written),
                    status::REVOCATION_FAILING,
                    "RevokeFailed",
                    &message,
                    now,
                    generation,
                ),
                Notice {
                    severity: Severity::Warning,
                    reason: "RevocationFailing".into(),
                    note: format!("revocation failed, will retry until it succeeds: {message}"),
                },
            )
        }
    };
    let backoff = backoff(status.failures);
    write_status(api, &context.sealer, request, written, &status).await?;
    publish(context, request, &[notice]).await;
    Ok(Action::requeue(backoff))
}

/// The status of a request whose approved grant was refused for good.
fn refused_grant(
    mut status: AccessRequestStatus,
    message: &str,
    now: Timestamp,
) -> AccessRequestStatus {
    status.phase = Some(Phase::Failed);
    status.granted_at = None;
    status.expires_at = None;
    status.grant = None;
    status.message = Some(format!("could not grant: {message}"));
    status.timeline.retain(|entry| entry.event != "Granted");
    status.timeline.push(TimelineEntry {
        time: Time(now),
        event: "Failed".into(),
        actor: None,
        message: Some(message.to_owned()),
    });
    status::set_condition(
        &mut status.conditions,
        decide::GRANTED,
        status::ConditionStatus::False,
        "GrantFailed",
        message,
        now,
        status.observed_generation,
    );
    status
}

/// Exponential backoff from the failure count: 0.5s, 1s, 2s, ... up to five minutes.
fn backoff(failures: i32) -> Duration {
    let exponent = failures.saturating_sub(1).clamp(0, 16).unsigned_abs();
    Duration::from_millis(500u64.saturating_mul(1u64 << exponent)).min(MAX_BACKOFF)
}

async fn publish(context: &Context, request: &AccessRequest, notices: &[Notice]) {
    let reference = request.object_ref(&());
    for notice in notices {
        let event = Event {
            type_: match notice.severity {
                Severity::Normal => EventType::Normal,
                Severity::Warning => EventType::Warning,
            },
            reason: notice.reason.clone(),
            // The API server refuses Event notes over 1024 characters.
            note: Some(crate::telemetry::truncate(&notice.note, 1024)),
            action: notice.reason.clone(),
            secondary: None,
        };
        if let Err(error) = context.recorder.publish(&event, &reference).await {
            warn!(error = %error_chain(&error), reason = %notice.reason, "failed to publish event");
        }
    }
}

fn error_policy(
    request: Arc<DeserializeGuard<AccessRequest>>,
    error: &Error,
    context: Arc<Context>,
) -> Action {
    context.metrics.reconciled(error.category());
    context.metrics.reconcile_error(error.category());
    // Conflicts and API hiccups: the next reconcile reads everything fresh. Backing off per
    // request, with jitter, keeps a struggling API server from being hammered by every
    // request at once; nothing gives up (a revoke that fails is retried from its status).
    let failures = context.failed_once(&key_of(&request));
    let delay = jittered(backoff(failures), random_fraction());
    warn!(error = %error_chain(error), category = error.category(), failures, retry_in = ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// `namespace/name`.
fn key_of(request: &DeserializeGuard<AccessRequest>) -> String {
    format!(
        "{}/{}",
        request.namespace().unwrap_or_default(),
        request.name_any()
    )
}

/// A delay spread over 75% to 125% of `delay`, never above the longest backoff, so that
/// requests failing together do not retry together.
fn jittered(delay: Duration, fraction: f64) -> Duration {
    delay
        .mul_f64(0.75 + 0.5 * fraction.clamp(0.0, 1.0))
        .min(MAX_BACKOFF)
}

/// A number in [0, 1) from the system's random source (0.5 if it fails: no jitter).
fn random_fraction() -> f64 {
    let mut bytes = [0u8; 4];
    match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_spread_around_the_backoff_and_capped() {
        let base = Duration::from_secs(8);
        assert_eq!(jittered(base, 0.0), Duration::from_secs(6));
        assert_eq!(jittered(base, 1.0), Duration::from_secs(10));
        assert_eq!(jittered(base, 0.5), base);
        assert_eq!(jittered(MAX_BACKOFF, 1.0), MAX_BACKOFF);
        for _ in 0..100 {
            let fraction = random_fraction();
            assert!((0.0..1.0).contains(&fraction), "{fraction}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(5), Duration::from_secs(8));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn a_refused_grant_fails_the_request_and_clears_the_grant() {
        let now = crate::fixtures::at("2026-01-01T00:00:00Z");
        let status = AccessRequestStatus {
            phase: Some(Phase::Active),
            granted_at: Some(Time(now)),
            expires_at: Some(Time(now)),
            timeline: vec![TimelineEntry {
                time: Time(now),
                event: "Granted".into(),
                actor: None,
                message: None,
            }],
            ..AccessRequestStatus::default()
        };
        let failed = refused_grant(status, "forbidden", now);
        assert_eq!(failed.phase, Some(Phase::Failed));
        assert_eq!(failed.expires_at, None);
        assert_eq!(failed.timeline.len(), 1);
        assert_eq!(failed.timeline[0].event, "Failed");
        assert_eq!(failed.conditions[0].reason, "GrantFailed");
    }
}
