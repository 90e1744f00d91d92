//! The AccessRequest controller driver: for each request, observe (fresh reads), decide (pure),
//! apply (finalizer and provider effect), then write the status and publish Events.

mod apply;
mod cached;
mod conditions;
mod decide;
#[cfg(test)]
mod driver_tests;
mod events;
mod failures;
mod followups;
mod notice;
mod observe;
mod outcome;
mod wakes;

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError},
    time::Duration,
};

use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        reflector::{self, ObjectRef},
        watcher,
    },
};
use serde_json::json;
use tracing::{debug, error, info, instrument, warn};

pub(crate) use self::cached::CachedRequest;
use self::{
    decide::{Effect, FinalizerChange},
    notice::{Notice, Reason, Severity, TimelineEvent},
};
use crate::{
    crd::v1alpha1::{AccessPolicy, AccessRequest, AccessRequestStatus, IntentAction, Phase},
    metrics::Metrics,
    provider::Providers,
    retry,
    seal::Sealer,
    telemetry::error_chain,
};

/// The controller's name, as Events report it.
pub const CONTROLLER_NAME: &str = "jit-operator";

/// The field manager of the operator's status writes.
const FIELD_MANAGER: &str = "jit-operator";

/// Most reconciles running at once.
const RECONCILE_CONCURRENCY: u16 = 16;

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
    /// Recording the audit events of a request about to be released failed.
    #[error("failed to record audit events")]
    Audit(#[from] crate::audit::Error),
}

impl Error {
    /// A short label for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Observe(_) => "observe",
            Self::Decide => "decide",
            Self::Apply(_) => "apply",
            Self::Status(_) => "status",
            Self::Audit(_) => "audit",
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
    events: events::Publisher,
    /// Longest time between two looks at a request (`--resync-interval`): the drift check.
    pub resync: Duration,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Checks the seals on decision records and grant windows, and seals the windows it
    /// writes.
    pub sealer: Sealer,
    /// Records each transition as an audit event; none in tests that do not audit.
    pub audit: Option<Arc<crate::audit::Recorder>>,
    /// How long ended requests are kept (`--retain-ended`); kept for ever when `None`.
    pub retain_ended: Option<Duration>,
    /// The controller's cache of requests, once it runs: the history in approvers' messages.
    requests: std::sync::OnceLock<reflector::Store<CachedRequest>>,
    /// The controller's cache of policies, once it has listed them all.
    policies: std::sync::OnceLock<reflector::Store<AccessPolicy>>,
    /// Consecutive failed reconciles per request (`namespace/name`), for their backoff.
    failed: std::sync::Mutex<HashMap<String, i32>>,
    /// Which changes seen through the watch wake the controller: not its own writes.
    wakes: Arc<wakes::Wakes>,
    /// What follows the revokes made while expiry revokes were behind.
    followups: Arc<followups::Followups>,
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
        Self {
            events: events::Publisher::new(client.clone(), CONTROLLER_NAME, instance),
            client,
            providers,
            resync,
            metrics,
            sealer,
            audit: None,
            retain_ended: None,
            requests: std::sync::OnceLock::new(),
            policies: std::sync::OnceLock::new(),
            failed: std::sync::Mutex::default(),
            wakes: Arc::default(),
            followups: Arc::default(),
        }
    }

    /// The same context, recording audit events with `recorder`.
    pub fn with_audit(mut self, recorder: Arc<crate::audit::Recorder>) -> Self {
        self.audit = Some(recorder);
        self
    }

    /// The same context, deleting requests that ended longer than `retain` ago.
    pub fn with_retention(mut self, retain: Duration) -> Self {
        self.retain_ended = Some(retain);
        self
    }

    /// How many requests of the same policy and role for the same subject were granted in
    /// the 30 days before `now` (this one excluded).
    fn grants_last_30_days(&self, request: &AccessRequest, now: Timestamp) -> usize {
        let Some(store) = self.requests.get() else {
            return 0;
        };
        let since = now - jiff::SignedDuration::from_hours(24 * 30);
        // Borrowed, not cloned: this runs over every cached request.
        let subject = request.spec.subject_name();
        store
            .state()
            .iter()
            .filter(|other| {
                other.invalid.is_none()
                    && other.uid() != request.metadata.uid
                    && other.policy == request.spec.policy
                    && other.role == request.spec.role
                    && other.subject.as_deref() == subject
                    && other
                        .granted_at
                        .is_some_and(|granted_at| granted_at >= since)
            })
            .count()
    }

    /// The cache of policies, once synced; until then each reconcile reads its policy fresh.
    fn policies(&self) -> Option<&reflector::Store<AccessPolicy>> {
        self.policies.get()
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
    // The cache keeps a small record of each request ([`CachedRequest`]); whether a change is
    // worth a reconcile is decided on the whole request as it passes.
    let (store, mut writer) = reflector::store::<CachedRequest>();
    let (gone, woken) = (context.wakes.clone(), context.wakes.clone());
    let held = context.followups.clone();
    let stream = watcher(requests, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|guarded: &mut DeserializeGuard<AccessRequest>| {
            if let Ok(request) = guarded.0.as_mut() {
                request.metadata.managed_fields = None;
            }
        })
        .inspect_ok(move |event| {
            if let watcher::Event::Delete(guarded) = event {
                let key = key_of_meta(guarded.meta());
                gone.forget(&key);
                held.take(&key);
            }
            writer.apply_watcher_event(&cached_event(event));
        })
        .applied_objects()
        .try_filter(move |guarded| {
            let meta = guarded.meta();
            let wakes = woken.wakes(
                &key_of_meta(meta),
                meta.resource_version.as_deref(),
                reconcile_relevant(guarded),
            );
            futures::future::ready(wakes)
        })
        .map_ok(|guarded| CachedRequest::of(&guarded));
    let controller = Controller::for_stream(stream, store.clone());
    let (by_policy, by_grant) = (context.wakes.clone(), context.wakes.clone());
    let _ = context.requests.set(store.clone());
    let (policy_store, policy_writer) = reflector::store::<AccessPolicy>();
    let policy_stream = watcher(policies, watcher::Config::default())
        .default_backoff()
        .then(|event| async move {
            // A test holds changes back here, to show a stale cache never decides a request.
            if let Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) = &event {
                crate::failpoint::delay_point("policy-watch").await;
            }
            event
        })
        .modify(|policy: &mut AccessPolicy| policy.metadata.managed_fields = None)
        .reflect(policy_writer)
        .applied_objects();
    let policies_context = context.clone();
    tokio::spawn(async move {
        // Offered to reconciles only once whole: a policy missing from a cache still listing
        // is not a policy that does not exist.
        if policy_store.wait_until_ready().await.is_ok() {
            let _ = policies_context.policies.set(policy_store);
        }
    });
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let followups_due = followups_due(context.clone());
    let requests_synced = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deliverer = context.audit.clone().map(|recorder| {
        let deliverer = crate::audit::delivery::Deliverer::new(
            context.client.clone(),
            recorder,
            context.metrics.clone(),
            store.clone(),
            requests_synced.clone(),
        );
        tokio::spawn(deliverer.run(shutdown.clone()))
    });
    if let Some(retain) = context.retain_ended {
        tokio::spawn(crate::retention::run(
            context.client.clone(),
            store.clone(),
            retain,
            shutdown.clone(),
        ));
    }
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
                    requests_synced.store(true, std::sync::atomic::Ordering::Release);
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
        .watches_stream(policy_stream, move |policy| {
            let name = policy.name_any();
            store
                .state()
                .into_iter()
                .filter(|cached| cached.invalid.is_none() && cached.policy == name)
                .map(|cached| {
                    by_policy.woken_otherwise(&key_of(&cached));
                    ObjectRef::from_obj(cached.as_ref())
                })
                .collect::<Vec<_>>()
        })
        // A managed binding changed or deleted by hand: look at its request now (drift).
        .reconcile_on(
            futures::stream::select_all(context.providers.all().filter_map(|p| p.watch())).map(
                move |(namespace, name)| {
                    by_grant.woken_otherwise(&format!("{namespace}/{name}"));
                    ObjectRef::new(&name).within(&namespace)
                },
            ),
        )
        // A revoke's followups, held while revokes were behind, once they may go ahead.
        .reconcile_on(followups_due)
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
    if let Some(deliverer) = deliverer {
        let _ = deliverer.await;
    }
}

/// The requests whose held followups may go ahead, looked for every [`followups::TICK`].
fn followups_due(
    context: Arc<Context>,
) -> impl futures::Stream<Item = ObjectRef<CachedRequest>> + Send + 'static {
    futures::stream::unfold(context, |context| async move {
        tokio::time::sleep(followups::TICK).await;
        let coming = context.followups.waiting() > 0 && revokes_coming(&context, Timestamp::now());
        let due = context.followups.due(std::time::Instant::now(), coming);
        let waiting = i64::try_from(context.followups.waiting()).unwrap_or(i64::MAX);
        context.metrics.revoke_followups_waiting.set(waiting);
        let due: Vec<_> = due
            .into_iter()
            .filter_map(|key| {
                let (namespace, name) = key.split_once('/')?;
                context.wakes.woken_otherwise(&key);
                Some(ObjectRef::new(name).within(namespace))
            })
            .collect();
        Some((futures::stream::iter(due), context))
    })
    .flatten()
}

/// Whether a grant in the controller's cache ends within [`followups::COMING`] or ended less
/// than [`followups::OVERDUE_NOT_COMING`] ago without being revoked yet: a revoke about to
/// come due or waiting its turn.
fn revokes_coming(context: &Context, now: Timestamp) -> bool {
    let Some(store) = context.requests.get() else {
        return true;
    };
    let (from, to) = (
        now.checked_sub(followups::OVERDUE_NOT_COMING)
            .unwrap_or(now),
        now.checked_add(followups::COMING).unwrap_or(now),
    );
    store.state().iter().any(|cached| {
        cached.phase == Some(Phase::Active)
            && cached
                .expires_at
                .is_some_and(|expires_at| expires_at >= from && expires_at <= to)
    })
}

/// A watch event as the controller's cache takes it: with [`CachedRequest`]s.
fn cached_event(
    event: &watcher::Event<DeserializeGuard<AccessRequest>>,
) -> watcher::Event<CachedRequest> {
    match event {
        watcher::Event::Apply(guarded) => watcher::Event::Apply(CachedRequest::of(guarded)),
        watcher::Event::Delete(guarded) => watcher::Event::Delete(CachedRequest::of(guarded)),
        watcher::Event::InitApply(guarded) => watcher::Event::InitApply(CachedRequest::of(guarded)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// What a change of a request must touch for the controller to look at it again: anything
/// but its resourceVersion and `status.activity`. The activity recorder writes that up to
/// every 10 s per request in use; `decide` reads it only for a policy's idle timeout, whose
/// deadline it schedules itself (and reads afresh then). Without this, a busy subject's
/// activity cost three reconciles a lifecycle, each with its fresh reads, queued before the
/// revokes that were due (revoke lag p50 1.8 s -> 8.8 s at 1,000 grants and 2,000 audit
/// events a second). A request that cannot be read always passes.
fn reconcile_relevant(guarded: &DeserializeGuard<AccessRequest>) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let request = guarded.0.as_ref().ok()?;
    let mut relevant = request.clone();
    relevant.metadata.resource_version = None;
    relevant.metadata.managed_fields = None;
    if let Some(status) = relevant.status.as_mut() {
        status.activity = None;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(&relevant).ok()?.hash(&mut hasher);
    Some(hasher.finish())
}

#[instrument(skip_all, fields(request = %cached.name_any(), namespace = cached.namespace(), subject = tracing::field::Empty))]
async fn reconcile(cached: Arc<CachedRequest>, context: Arc<Context>) -> Result<Action, Error> {
    let key = key_of(&cached);
    if let Some(again) = context.wakes.begin(&key, std::time::Instant::now()) {
        // Woken by its own writes alone: what the reconcile that wrote them decided holds.
        return Ok(again.map_or_else(Action::await_change, Action::requeue));
    }
    let result = reconcile_steps(&cached, context.clone()).await;
    if result.is_ok() {
        context.succeeded(&key);
    }
    result.map(|again| again.map_or_else(Action::await_change, Action::requeue))
}

/// Drives one reconcile: observe, decide, apply, then write what `outcome` says. Returns how
/// long until the request is looked at again, from now (`None`: only when it changes).
async fn reconcile_steps(
    cached: &CachedRequest,
    context: Arc<Context>,
) -> Result<Option<Duration>, Error> {
    if let Some(invalid) = &cached.invalid {
        warn!(error = %invalid, "ignoring access request that does not parse");
        return Ok(None);
    }
    let namespace = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    if let Some(phase) = cached.settled() {
        context.metrics.track(&key_of(cached), Some(phase), None);
        return Ok(None);
    }

    // Observe: client required. The policy from the cache: most looks change nothing (the
    // watch reporting the operator's own writes), and those need not cost a read.
    let Some(observed) = observe::observe(
        &context.client,
        &context.providers,
        &context.sealer,
        context.policies(),
        &namespace,
        &name,
    )
    .await?
    else {
        context
            .metrics
            .track(&format!("{namespace}/{name}"), None, None);
        return Ok(None);
    };
    let now = Timestamp::now();
    // What decide schedules is from `now`; the reconcile's own time (a grant's propagation
    // check, its writes) is taken off at the end, so that a revoke is due at its expiry and
    // not that much later.
    let decided = std::time::Instant::now();
    let (mut observed, mut plan) = decide_apart(observed, now).await?;
    // Whatever the plan does on the policy's account rests on the policy as it is now: read
    // fresh, and decided again if it changed since the cache had it.
    if observed.policy_cached && plan.rests_on_policy(&observed.request, now) {
        let (confirmed, changed) =
            observe::confirm_policy(&context.client, &context.providers, observed).await;
        (observed, plan) = if changed {
            decide_apart(confirmed, now).await?
        } else {
            (confirmed, plan)
        };
    }
    report_observed(&context, &observed);
    let request = &observed.request;
    let expiry_revoke = expiry_revoke(request, &plan.effect, now);
    if let Some(late_by) = expiry_revoke {
        context
            .followups
            .revoke_began(late_by, std::time::Instant::now());
    }
    let current = request.status.clone().unwrap_or_default();
    let uid = request.uid().unwrap_or_default();
    let phase = request.status.as_ref().and_then(|status| status.phase);
    if phase != plan.status.phase || plan.effect != Effect::None {
        info!(?phase, next = ?plan.status.phase, effect = ?plan.effect, "observed access request");
    } else {
        debug!(?phase, "observed access request; nothing to do");
    }

    // Apply: client required.
    let api = Api::<AccessRequest>::namespaced(context.client.clone(), &namespace);
    let key = key_of_meta(request.meta());
    if plan.finalizer == FinalizerChange::Add {
        let version = apply::set_finalizer(&api, request, true).await?;
        context.wakes.wrote(&key, version.as_deref());
    }
    let action = match &plan.effect {
        Effect::None => None,
        Effect::Grant { .. } => Some(IntentAction::Grant),
        Effect::Revoke => Some(IntentAction::Revoke),
    };
    let announced = outcome::revoke_open(&current);
    let written = match action {
        // A revoke announced ahead of the grant's end (decide::ANNOUNCE_REVOKE), or one whose
        // earlier attempt failed: its intent is on record already.
        Some(action @ IntentAction::Revoke) if announced => {
            crash_point(action, "before-effect");
            current
        }
        // Intent before action: status says what is about to happen before the provider is
        // called, so a crash in between is visible and resolved on restart.
        Some(action) => {
            let intent = outcome::with_intent(&current, &plan, action, &uid, now);
            let written = write_status(
                &api,
                &context.sealer,
                &context.wakes,
                request,
                &current,
                &intent,
            )
            .await?;
            crash_point(action, "before-effect");
            written
        }
        None => current,
    };
    let applied = apply::effect(&context.providers, request, &plan.effect).await;
    if let (Some(action), Ok(_)) = (action, &applied) {
        crash_point(action, "after-effect");
    }

    // Status: from what was applied.
    let granting = match &plan.effect {
        Effect::Grant { role, .. } => role.target(),
        Effect::None | Effect::Revoke => None,
    };
    let outcome = outcome::outcome(plan, &written, applied.as_ref(), &uid, now);
    report(
        &context,
        request,
        action,
        granting,
        applied.as_ref().err(),
        &outcome,
    );
    let status = write_status(
        &api,
        &context.sealer,
        &context.wakes,
        request,
        &written,
        &outcome.status,
    )
    .await?;
    measure(&context.metrics, request, phase, &status, now);
    // Revokes first: while expiry revokes are behind, what follows this one waits its turn.
    let at = std::time::Instant::now();
    if expiry_revoke.is_some() && outcome.release && context.followups.behind(at) {
        context.followups.hold(&key, outcome.notices, at);
        context.metrics.revoke_followups_held.inc();
        crash_point(IntentAction::Revoke, "after-status");
        // Its turn comes from the held followups; this look is the backstop, should that
        // turn be lost (an ended request has no drift to look for meanwhile).
        let again = followups::HELD_AT_MOST + Duration::from_secs(60);
        context.wakes.looked(&key, Some(again), at);
        return Ok(Some(again));
    }
    // Recorded after the status that holds the transitions and before anyone is told; a
    // request is released only once its events are in its outbox, which outlives it.
    if let Some(recorder) = &context.audit {
        let history = || context.grants_last_30_days(request, now);
        if let Err(error) = recorder
            .record(request, &status, observed.policy.as_ref(), history)
            .await
        {
            if outcome.release {
                return Err(error.into());
            }
            warn!(error = %error_chain(&error), "failed to record audit events; retrying at the next look");
            context.metrics.reconcile_error("audit");
        }
    }
    if let Some(action) = action {
        crash_point(action, "after-status");
    }
    let mut notices = outcome.notices;
    notices.extend(context.followups.take(&key));
    publish(&context, request, &notices).await;
    if outcome.release {
        let version = apply::set_finalizer(&api, request, false).await?;
        context.wakes.wrote(&key, version.as_deref());
        if let Some(action) = action {
            crash_point(action, "after-finalizer");
        }
    }
    let at = std::time::Instant::now();
    let again = outcome
        .requeue
        .map(|after| after.min(context.resync).saturating_sub(at - decided));
    context.wakes.looked(&key, again, at);
    Ok(again)
}

/// How late the revoke of a grant whose time is up begins, when the plan is one (not the
/// revoke of a request being deleted or revoked early).
fn expiry_revoke(request: &AccessRequest, effect: &Effect, now: Timestamp) -> Option<Duration> {
    if *effect != Effect::Revoke || request.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let expires_at = request.status.as_ref()?.expires_at.as_ref()?.0;
    let late_by = now.duration_since(expires_at);
    (!late_by.is_negative()).then(|| Duration::try_from(late_by).unwrap_or_default())
}

/// Decide: no client. On a blocking thread, because the policy's autoApprove CEL runs there:
/// its cost is bounded (auto_approve::check), and however long it takes, the runtime's workers
/// stay free for the webhook, health checks and other grants.
async fn decide_apart(
    observed: decide::Observed,
    now: Timestamp,
) -> Result<(decide::Observed, decide::Plan), Error> {
    tokio::task::spawn_blocking(move || {
        let plan = decide::decide(&observed, now);
        (observed, plan)
    })
    .await
    .map_err(|_| Error::Decide)
}

/// Logs and counts what observing found wrong.
fn report_observed(context: &Context, observed: &decide::Observed) {
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
        warn!(error = %why.message, retry_after = ?why.retry_after, "could not verify the active grant; drift is not checked until it can be");
        let provider = request
            .status
            .as_ref()
            .and_then(|status| status.grant.as_ref())
            .map_or("unknown", |grant| grant.provider.as_str());
        context.metrics.provider_error(provider, "verify");
    }
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
        .and_then(|grant| crate::target::Target::parse(&grant.provider));
    metrics.track(&key, status.phase, provider);
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
                .find(|entry| entry.event == TimelineEvent::Approved.as_str())
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

/// Logs and counts what the effect came to, as `outcome` classified it.
fn report(
    context: &Context,
    request: &AccessRequest,
    action: Option<IntentAction>,
    granting: Option<crate::target::Target>,
    error: Option<&apply::Error>,
    outcome: &outcome::Outcome,
) {
    let metrics = &context.metrics;
    let uid = request.uid().unwrap_or_default();
    if let Some(cause) = error.and_then(apply::Error::provider_error) {
        let provider = cause
            .target()
            .or(granting)
            .map_or("unknown", crate::target::Target::as_str);
        metrics.provider_error(provider, cause.category());
    }
    match &outcome.failed {
        None => {
            match action {
                Some(IntentAction::Grant) => {
                    metrics.grants.inc();
                    if outcome
                        .notices
                        .iter()
                        .any(|notice| notice.reason == Reason::GrantRepaired)
                    {
                        metrics.drift_repairs.inc();
                    }
                }
                Some(IntentAction::Revoke) => {
                    metrics.revocations.inc();
                    metrics.revocation_failing(&uid, false);
                }
                None => {}
            }
            metrics.reconciled("ok");
        }
        Some(outcome::FailedStep::GrantRefused(message)) => {
            warn!(error = %message, "grant refused; failing the request");
        }
        Some(outcome::FailedStep::Grant(message)) => {
            warn!(error = %message, "grant failed; retrying");
        }
        Some(outcome::FailedStep::Revoke(message)) => {
            error!(error = %message, "revocation failed; retrying");
            metrics.revocation_failures.inc();
            metrics.revocation_failing(&uid, true);
        }
    }
}

/// Crashes the process here when the test failpoint `<grant|revoke>-<step>` is on.
fn crash_point(action: IntentAction, step: &str) {
    let kind = match action {
        IntentAction::Grant => "grant",
        IntentAction::Revoke => "revoke",
    };
    crate::failpoint::crash_point(&format!("{kind}-{step}"));
}

/// Writes the status with server-side apply, so that fields the operator no longer sets are
/// removed; skips the write when nothing but condition times would change.
/// Seals the grant window: only what the operator writes may be granted from.
async fn write_status(
    api: &Api<AccessRequest>,
    sealer: &Sealer,
    wakes: &wakes::Wakes,
    request: &AccessRequest,
    current: &AccessRequestStatus,
    status: &AccessRequestStatus,
) -> Result<AccessRequestStatus, Error> {
    let mut status = status.clone();
    // The activity recorder owns `activity` (its own field manager): the controller never
    // writes it, so a stale copy read here cannot overwrite newer counts.
    status.activity = None;
    status.seal = match (&status.granted_at, &status.expires_at, request.uid()) {
        (Some(granted_at), Some(expires_at), Some(uid)) => {
            Some(sealer.seal_window(&uid, granted_at, expires_at))
        }
        _ => None,
    };
    if !outcome::differs(current, &status) {
        return Ok(status);
    }
    let patch = json!({
        "apiVersion": "jit.dev/v1alpha1",
        "kind": "AccessRequest",
        "status": status,
    });
    let written = api
        .patch_status(
            &request.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::Status)?;
    wakes.wrote(
        &key_of_meta(request.meta()),
        written.metadata.resource_version.as_deref(),
    );
    Ok(status)
}

/// Publishes a reconcile's notices, at once rather than one after another: each is its own
/// Event, and the reconcile holds its place until they are written.
async fn publish(context: &Context, request: &AccessRequest, notices: &[Notice]) {
    let reference = request.object_ref(&());
    let reference = &reference;
    futures::future::join_all(notices.iter().map(|notice| async move {
        let kind = match notice.reason.severity() {
            Severity::Normal => events::EventKind::Normal,
            Severity::Warning => events::EventKind::Warning,
        };
        // The API server refuses Event notes over 1024 characters.
        let note = crate::telemetry::truncate(&notice.note, 1024);
        let reason = notice.reason.as_str();
        if let Err(error) = context.events.publish(reference, kind, reason, &note).await {
            warn!(error = %error_chain(&error), reason, "failed to publish event");
        }
    }))
    .await;
}

/// A reconcile that failed before its outcome could be written (the API server refusing or
/// failing): retried with a backoff counted in memory, since the status is what could not be
/// written. Nothing gives up: a revoke is retried from its status.
fn error_policy(request: Arc<CachedRequest>, error: &Error, context: Arc<Context>) -> Action {
    context.metrics.reconciled(error.category());
    context.metrics.reconcile_error(error.category());
    let key = key_of(&request);
    let failures = context.failed_once(&key);
    // Never past the grant's end: a status write that keeps failing must not hold up the
    // revoke its expiry calls for.
    let now = Timestamp::now();
    let expires_at = request.expires_at.filter(|expires_at| *expires_at > now);
    let mut delay = retry::delay(&key, failures, None);
    if let Some(expires_at) = expires_at {
        delay = delay.min(retry::until(now, expires_at));
    }
    warn!(error = %error_chain(error), category = error.category(), failures, retry_in = ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// `namespace/name`.
fn key_of_meta(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// `namespace/name`.
fn key_of(request: &CachedRequest) -> String {
    key_of_meta(request.meta())
}
