//! The activity recorder: the index of Kubernetes grants that calls are attributed to (from a
//! watch of the requests), the counts not yet written, the `dev.jit.activity.v1` audit lines,
//! and the writes of `status.activity`, at most one per request per [`WRITE_INTERVAL`] and
//! [`WRITES_PER_SECOND`] in all, fewer while grants or revokes are due (see [`Pace`]).
//!
//! Every replica runs one (the API server may post to any of them): a write merges this
//! replica's pending counts onto the summary as it is stored, guarded by its
//! resourceVersion, so replicas never overwrite each other's counts.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Duration,
};

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{ActiveGrant, Attribution, AuditEvent, BindingRef, Grants, RequestKey, Tally};
use crate::{
    crd::v1alpha1::{AccessPolicy, AccessRequest, Activity, Phase},
    metrics::Metrics,
    telemetry::error_chain,
};

/// Longest a request's summary waits behind its counts, and the shortest time between two
/// writes of it, however busy its subject is.
pub(crate) const WRITE_INTERVAL: Duration = Duration::from_secs(10);

/// How many summaries a second are written in all of requests no idle timeout reads: what
/// session activity costs the API server is bounded whatever the number of grants in use
/// (at one write per request per [`WRITE_INTERVAL`], 10,000 busy grants would otherwise be
/// 1,000 writes a second, on the API server revokes need). Past 250 grants in use at once,
/// each summary is written less often than every [`WRITE_INTERVAL`].
const WRITES_PER_SECOND: f64 = 25.0;

/// The same while grants or revokes are due: the lifecycle comes first.
const YIELDING_WRITES_PER_SECOND: f64 = 5.0;

/// How long before its end an active grant's revoke counts as due: summary writes already
/// in flight finish before it.
const REVOKE_DUE_BEFORE: SignedDuration = SignedDuration::from_secs(2);

/// How long after a pending request changed (created, approved) its grant counts as due.
const GRANT_DUE_FOR: SignedDuration = SignedDuration::from_secs(5);

/// How long the recorder remembers when it wrote a summary: the longest-unwritten go first
/// while grants or revokes are due.
const WRITTEN_KEPT: Duration = Duration::from_secs(600);

/// How long an ended grant still takes late calls: the API server posts in batches (up to
/// `--audit-webhook-batch-max-wait`, 30 s by default) and retries a failed post.
const LATE_CALLS: SignedDuration = SignedDuration::from_mins(10);

/// The field manager of `status.activity`; the controller never writes that field.
const FIELD_MANAGER: &str = "jit-operator-activity";

/// Attributed calls waiting to be written as audit lines; past this, lines are shed (the
/// counts are kept).
const LINES_QUEUED: usize = 8_192;

/// Calls allowed by a binding of ours that the index does not know yet, kept to be
/// attributed when it does; past the bound, or after [`PARKED_FOR`], they are let go.
const PARKED_MAX: usize = 10_000;
const PARKED_FOR: Duration = Duration::from_secs(30);

/// Refused calls kept (for [`PARKED_FOR`]) for grants their user may hold that the index does
/// not know yet; past the bound, the oldest are let go.
const REFUSALS_PARKED_MAX: usize = 4_096;

/// How long a change waits for others before the index is rebuilt.
const REINDEX_COALESCE: Duration = Duration::from_millis(50);

/// Summaries written at once.
const WRITES_IN_FLIGHT: usize = 8;

/// What the audit webhook hands the recorder, and what it keeps between writes.
pub(crate) struct Recorder {
    grants: RwLock<Arc<Grants>>,
    pending: Mutex<HashMap<RequestKey, Tally>>,
    parked: Mutex<VecDeque<(tokio::time::Instant, AuditEvent)>>,
    refusals: Mutex<VecDeque<ParkedRefusal>>,
    lines: mpsc::Sender<Attribution>,
    metrics: Arc<Metrics>,
}

/// A refused call, and the requests it has been counted for so far.
struct ParkedRefusal {
    at: tokio::time::Instant,
    event: AuditEvent,
    counted: Vec<RequestKey>,
}

/// The end of the recorder that writes audit lines.
pub(crate) struct Lines(mpsc::Receiver<Attribution>);

impl Recorder {
    /// A recorder with no grants yet, and the receiving end of its audit lines.
    pub fn new(metrics: Arc<Metrics>) -> (Arc<Self>, Lines) {
        let (sender, receiver) = mpsc::channel(LINES_QUEUED);
        (
            Arc::new(Self {
                grants: RwLock::new(Arc::new(Grants::default())),
                pending: Mutex::default(),
                parked: Mutex::default(),
                refusals: Mutex::default(),
                lines: sender,
                metrics,
            }),
            Lines(receiver),
        )
    }

    /// Attributes a batch of the API server's audit events. Never waits for anything but a
    /// short lock: the API server is waiting for the answer.
    pub fn receive(&self, events: &[AuditEvent]) {
        let grants = self.grants();
        let mut unattributed = 0;
        let mut attributions = Vec::new();
        let mut early = Vec::new();
        let mut refusals = Vec::new();
        for event in events {
            let found = super::attribute(event, &grants);
            if super::is_refusal(event) {
                refusals.push(ParkedRefusal {
                    at: tokio::time::Instant::now(),
                    event: event.clone(),
                    counted: found.iter().map(|found| found.request.clone()).collect(),
                });
            } else if found.is_empty() {
                if super::awaits_index(event, &grants) {
                    early.push(event.clone());
                } else {
                    unattributed += 1;
                }
            }
            attributions.extend(found);
        }
        Metrics::count(&self.metrics.activity_events, "unattributed", unattributed);
        tracing::trace!(
            events = events.len(),
            attributed = attributions.len(),
            early = early.len(),
            grants = grants.len(),
            "received audit events"
        );
        if !early.is_empty() {
            let now = tokio::time::Instant::now();
            let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
            let room = PARKED_MAX.saturating_sub(parked.len());
            let dropped = early.len().saturating_sub(room);
            parked.extend(early.into_iter().take(room).map(|event| (now, event)));
            Metrics::count(&self.metrics.activity_dropped, "early_call", dropped as u64);
        }
        if !refusals.is_empty() {
            let mut parked = self.refusals.lock().unwrap_or_else(PoisonError::into_inner);
            parked.extend(refusals);
            let over = parked.len().saturating_sub(REFUSALS_PARKED_MAX);
            let never_counted = parked
                .drain(..over)
                .filter(|refusal| refusal.counted.is_empty())
                .count();
            Metrics::count(
                &self.metrics.activity_events,
                "unattributed",
                never_counted as u64,
            );
        }
        self.count(attributions);
    }

    fn grants(&self) -> Arc<Grants> {
        self.grants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Adds attributions to the pending counts and queues their audit lines.
    fn count(&self, attributions: Vec<Attribution>) {
        if attributions.is_empty() {
            return;
        }
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            for attribution in &attributions {
                pending
                    .entry(attribution.request.clone())
                    .or_default()
                    .add(attribution.clone());
            }
        }
        let mut dropped = 0;
        for attribution in attributions {
            Metrics::count(
                &self.metrics.activity_events,
                attribution.outcome.as_str(),
                1,
            );
            // Under a flood the per-call lines go first; the counts above are never shed.
            if self.lines.try_send(attribution).is_err() {
                dropped += 1;
            }
        }
        Metrics::count(&self.metrics.activity_dropped, "audit_line", dropped);
    }

    /// Attributes the parked calls the index now knows, and the parked refusals by subjects of
    /// `fresh` grants (those new to the index); lets go of those parked too long.
    fn attribute_parked<'a>(
        &self,
        now: tokio::time::Instant,
        fresh: impl IntoIterator<Item = &'a ActiveGrant>,
    ) {
        self.attribute_parked_refusals(now, fresh);
        let grants = self.grants();
        let parked: Vec<_> =
            std::mem::take(&mut *self.parked.lock().unwrap_or_else(PoisonError::into_inner)).into();
        if parked.is_empty() {
            return;
        }
        let mut attributions = Vec::new();
        let mut still = Vec::new();
        let mut expired = 0;
        for (at, event) in parked {
            let found = super::attribute(&event, &grants);
            if !found.is_empty() {
                attributions.extend(found);
            } else if now.duration_since(at) < PARKED_FOR {
                still.push((at, event));
            } else {
                expired += 1;
            }
        }
        Metrics::count(&self.metrics.activity_events, "unattributed", expired);
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(still);
        self.count(attributions);
    }

    fn attribute_parked_refusals<'a>(
        &self,
        now: tokio::time::Instant,
        fresh: impl IntoIterator<Item = &'a ActiveGrant>,
    ) {
        let fresh: Vec<&ActiveGrant> = fresh.into_iter().collect();
        let mut attributions = Vec::new();
        let mut never_counted = 0;
        {
            let mut parked = self.refusals.lock().unwrap_or_else(PoisonError::into_inner);
            if !fresh.is_empty() {
                for refusal in parked.iter_mut() {
                    let found = super::attribute_refusal(
                        &refusal.event,
                        fresh.iter().copied(),
                        &refusal.counted,
                    );
                    refusal
                        .counted
                        .extend(found.iter().map(|found| found.request.clone()));
                    attributions.extend(found);
                }
            }
            while parked
                .front()
                .is_some_and(|refusal| now.duration_since(refusal.at) >= PARKED_FOR)
            {
                if parked
                    .pop_front()
                    .is_some_and(|refusal| refusal.counted.is_empty())
                {
                    never_counted += 1;
                }
            }
        }
        Metrics::count(&self.metrics.activity_events, "unattributed", never_counted);
        self.count(attributions);
    }

    /// Puts a new index in place, and returns it.
    fn set_grants(&self, grants: Grants) -> Arc<Grants> {
        let grants = Arc::new(grants);
        *self.grants.write().unwrap_or_else(PoisonError::into_inner) = grants.clone();
        grants
    }

    /// Takes the pending counts of requests whose summary may be written now (never written,
    /// or last written at least [`WRITE_INTERVAL`] ago), as fast as `pace` lets.
    fn take_due(
        &self,
        written: &HashMap<RequestKey, tokio::time::Instant>,
        now: tokio::time::Instant,
        pace: Pace<'_>,
    ) -> Vec<(RequestKey, Tally)> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let mut due: Vec<(&RequestKey, Option<tokio::time::Instant>)> = pending
            .keys()
            .filter_map(|key| {
                let at = written.get(key).copied();
                at.is_none_or(|at| now.duration_since(at) >= WRITE_INTERVAL)
                    .then_some((key, at))
            })
            .collect();
        if let Pace::Limited {
            allowed,
            read_by_idle,
        } = pace
        {
            let (mut chosen, mut others): (Vec<_>, Vec<_>) =
                due.into_iter().partition(|(key, _)| read_by_idle(key));
            // Never written first, then the longest unwritten.
            others.sort_by_key(|(_, at)| *at);
            chosen.extend(others.into_iter().take(allowed));
            due = chosen;
        }
        let due: Vec<RequestKey> = due.into_iter().map(|(key, _)| key.clone()).collect();
        due.into_iter()
            .filter_map(|key| pending.remove(&key).map(|tally| (key, tally)))
            .collect()
    }

    /// Puts counts that could not be written back, to go with the next write.
    fn put_back(&self, key: RequestKey, tally: &Tally) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_default()
            .merge(tally);
    }

    /// Keeps the grants index and writes the summaries until `shutdown` completes; writes
    /// the audit lines with `write_line` on a thread of its own.
    pub async fn run(
        self: Arc<Self>,
        client: Client,
        lines: Lines,
        write_line: impl Fn(&Attribution, &serde_json::Value) + Send + 'static,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let mut receiver = lines.0;
        // Writing lines blocks on stdout and the audit file: not on the runtime's workers.
        let writer = tokio::task::spawn_blocking(move || {
            while let Some(attribution) = receiver.blocking_recv() {
                if let Some(event) = super::line::event_json(&attribution) {
                    write_line(&attribution, &event);
                }
            }
        });
        let requests = Api::<DeserializeGuard<AccessRequest>>::all(client.clone());
        let stream = watcher(requests, watcher::Config::default().any_semantic()).default_backoff();
        let changed = Arc::new(tokio::sync::Notify::new());
        let notify = changed.clone();
        let cache = Arc::new(Mutex::new(Cache::default()));
        let watched = cache.clone();
        let watch = tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => {
                        watched
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .take(event);
                        notify.notify_one();
                    }
                    Err(error) => {
                        debug!(error = %error_chain(&error), "activity watch error; retrying");
                    }
                }
            }
        });
        let idle_policies = Arc::new(RwLock::new(IdlePolicies::default()));
        let policies = tokio::spawn(watch_idle_policies(client.clone(), idle_policies.clone()));
        let mut index = Index::default();
        let mut written = HashMap::new();
        let mut allowance = Allowance::new(tokio::time::Instant::now(), WRITES_PER_SECOND);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        info!("recording session activity from the API server's audit events");
        let mut rest = Duration::ZERO;
        loop {
            // A request that changed is indexed at once: its calls may be on their way (and
            // are parked until it is).
            tokio::select! {
                () = &mut shutdown => break,
                () = changed.notified() => {
                    // A burst of changes is indexed once; under a steady stream of them, the
                    // index rests as long as it took to build, so it never takes more than
                    // half a core however many requests there are.
                    tokio::time::sleep(REINDEX_COALESCE.max(rest)).await;
                }
                _ = tick.tick() => {}
            }
            let started = tokio::time::Instant::now();
            let now = Timestamp::now();
            let mut grants_changed = {
                let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
                let changes = std::mem::take(&mut cache.changes);
                if changes.relisted {
                    index.relist(&cache.requests, now);
                    true
                } else {
                    // Only what changed is looked at, not every request (each one: no
                    // short cut).
                    let mut grants_changed = false;
                    for key in &changes.keys {
                        grants_changed |= index.take(key, cache.requests.get(key), now);
                    }
                    grants_changed
                }
            };
            grants_changed |= index.forget_late(now);
            let earlier = self.grants();
            let grants = if grants_changed {
                self.set_grants(index.grants())
            } else {
                earlier.clone()
            };
            rest = started.elapsed();
            let instant = tokio::time::Instant::now();
            self.attribute_parked(instant, grants.fresh_since(&earlier));
            let due = {
                let rate = if index.lifecycle_due(now) {
                    YIELDING_WRITES_PER_SECOND
                } else {
                    WRITES_PER_SECOND
                };
                let idle = idle_policies.read().unwrap_or_else(PoisonError::into_inner);
                let read_by_idle = |key: &RequestKey| index.read_by_idle(key, &idle, now);
                let pace = Pace::Limited {
                    allowed: allowance.available(instant, rate),
                    read_by_idle: &read_by_idle,
                };
                let due = self.take_due(&written, instant, pace);
                allowance.spend(due.iter().filter(|(key, _)| !read_by_idle(key)).count());
                due
            };
            self.write_due(&client, &cache, &mut written, due).await;
        }
        // What is pending is written once more before stopping.
        written.clear();
        let due = self.take_due(&written, tokio::time::Instant::now(), Pace::Free);
        self.write_due(&client, &cache, &mut written, due).await;
        watch.abort();
        policies.abort();
        writer.abort();
    }

    /// Writes the summaries taken by [`Recorder::take_due`].
    async fn write_due(
        &self,
        client: &Client,
        cache: &Mutex<Cache>,
        written: &mut HashMap<RequestKey, tokio::time::Instant>,
        due: Vec<(RequestKey, Tally)>,
    ) {
        let now = tokio::time::Instant::now();
        written.retain(|_, at| now.duration_since(*at) < WRITTEN_KEPT);
        if due.is_empty() {
            return;
        }
        let results: Vec<_> = futures::stream::iter(due)
            .map(|(key, tally)| async move {
                let outcome = write(client, cache, &key, &tally, Timestamp::now()).await;
                (key, tally, outcome)
            })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .collect()
            .await;
        for (key, tally, outcome) in results {
            let label = match outcome {
                Written::Yes => {
                    written.insert(key, tokio::time::Instant::now());
                    "written"
                }
                Written::Gone => {
                    written.remove(&key);
                    "gone"
                }
                Written::NotYet(wait) => {
                    // Another replica wrote it a moment ago.
                    written.insert(key.clone(), now - WRITE_INTERVAL.saturating_sub(wait));
                    self.put_back(key, &tally);
                    "deferred"
                }
                Written::Conflict => {
                    self.put_back(key, &tally);
                    "conflict"
                }
                Written::Failed => {
                    written.insert(key.clone(), tokio::time::Instant::now());
                    self.put_back(key, &tally);
                    "failed"
                }
            };
            Metrics::count(&self.metrics.activity_writes, label, 1);
        }
    }
}

/// How fast summaries are written in a round.
#[derive(Clone, Copy)]
enum Pace<'a> {
    /// Each at most once per [`WRITE_INTERVAL`]: when stopping, and in tests.
    Free,
    /// Summaries a policy's idle timeout reads (`lastActionTime`) as when free, since holding
    /// them back could end a grant in use; of the others, `allowed`, the longest-unwritten
    /// first.
    Limited {
        allowed: usize,
        read_by_idle: &'a dyn Fn(&RequestKey) -> bool,
    },
}

/// The summary writes allowed: a rate a second ([`WRITES_PER_SECOND`], or
/// [`YIELDING_WRITES_PER_SECOND`] while grants or revokes are due), saved up for at most a
/// second at the rate of the moment.
struct Allowance {
    tokens: f64,
    at: tokio::time::Instant,
}

impl Allowance {
    fn new(now: tokio::time::Instant, rate: f64) -> Self {
        Self {
            tokens: rate,
            at: now,
        }
    }

    /// How many writes are allowed now, at `rate` a second.
    fn available(&mut self, now: tokio::time::Instant, rate: f64) -> usize {
        let earned = now.duration_since(self.at).as_secs_f64() * rate;
        self.tokens = (self.tokens + earned).min(rate);
        self.at = now;
        // Never negative, at most a second's worth: the cast cannot truncate meaningfully.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let whole = self.tokens.floor().max(0.0) as usize;
        whole
    }

    fn spend(&mut self, writes: usize) {
        #[allow(clippy::cast_precision_loss)]
        let writes = writes as f64;
        self.tokens = (self.tokens - writes).max(0.0);
    }
}

/// How a summary write went.
enum Written {
    Yes,
    /// The request is gone; its counts go with it.
    Gone,
    /// Written by a replica less than [`WRITE_INTERVAL`] ago; due again after this wait.
    NotYet(Duration),
    /// Changed since it was read; written on the next round.
    Conflict,
    Failed,
}

/// Merges `pending` onto the request's stored summary and writes it, if the stored one is at
/// least [`WRITE_INTERVAL`] old. The summary is read from the watch's cache; a stale one fails
/// the resourceVersion precondition and is written on the next round.
async fn write(
    client: &Client,
    cache: &Mutex<Cache>,
    key: &str,
    pending: &Tally,
    now: Timestamp,
) -> Written {
    let Some((namespace, name)) = key.split_once('/') else {
        return Written::Gone;
    };
    let api = Api::<AccessRequest>::namespaced(client.clone(), namespace);
    let cached = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .requests
        .get(key)
        .map(|watched| (watched.resource_version.clone(), watched.activity.clone()));
    let (resource_version, stored) = match cached {
        Some((resource_version, activity)) => (resource_version, activity.map(|boxed| *boxed)),
        // Not in the cache (yet, or any more): ask.
        None => match api.get_opt(name).await {
            Ok(Some(request)) => (
                request.metadata.resource_version,
                request.status.and_then(|status| status.activity),
            ),
            Ok(None) => return Written::Gone,
            Err(error) => {
                warn!(request = key, error = %error_chain(&error), "failed to read a request to record its activity");
                return Written::Failed;
            }
        },
    };
    if let Some(as_of) = stored.as_ref().and_then(|stored| stored.as_of.as_ref()) {
        let age = now.duration_since(as_of.0).unsigned_abs();
        if now >= as_of.0 && age < WRITE_INTERVAL {
            return Written::NotYet(WRITE_INTERVAL - age);
        }
    }
    let mut tally = stored.as_ref().map(Tally::from_summary).unwrap_or_default();
    tally.merge(pending);
    let patch = json!({
        "metadata": { "resourceVersion": resource_version },
        "status": { "activity": tally.summary(now) },
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    match api.patch_status(name, &params, &Patch::Merge(&patch)).await {
        Ok(_) => Written::Yes,
        Err(kube::Error::Api(status)) if status.code == 409 => Written::Conflict,
        Err(kube::Error::Api(status)) if status.code == 404 => Written::Gone,
        Err(error) => {
            warn!(request = key, error = %error_chain(&error), "failed to write a request's activity");
            Written::Failed
        }
    }
}

/// What the recorder keeps of every request (from its watch), and what changed since the
/// index last looked.
#[derive(Default)]
struct Cache {
    requests: HashMap<RequestKey, Watched>,
    /// Filled while the watch lists everything again; then replaces `requests`.
    listing: HashMap<RequestKey, Watched>,
    changes: Changes,
}

impl Cache {
    /// Takes one event of the watch. A request that does not parse is kept as absent: it
    /// holds no grant the index could know.
    fn take(&mut self, event: watcher::Event<DeserializeGuard<AccessRequest>>) {
        // What the cache holds already of the request is shared, not copied: its key, and
        // its grant while unchanged (the index holds that one; a copy per later change of the
        // request would be a second).
        let requests = &self.requests;
        let watched = |guarded: &DeserializeGuard<AccessRequest>| {
            let text = format!(
                "{}/{}",
                guarded.namespace().unwrap_or_default(),
                guarded.name_any()
            );
            let held = requests.get_key_value(text.as_str());
            let key: RequestKey = held.map_or_else(|| text.into(), |(key, _)| key.clone());
            let watched = guarded.0.as_ref().ok().map(|request| {
                let mut watched = Watched::of(request, &key);
                if let Some(grant) = held.and_then(|(_, held)| held.grant.as_ref())
                    && watched.grant.as_ref() == Some(grant)
                {
                    watched.grant = Some(grant.clone());
                }
                watched
            });
            (key, watched)
        };
        match event {
            watcher::Event::Apply(guarded) => {
                let (key, watched) = watched(&guarded);
                match watched {
                    Some(watched) => self.requests.insert(key.clone(), watched),
                    None => self.requests.remove(&key),
                };
                self.changes.keys.insert(key);
            }
            watcher::Event::Delete(guarded) => {
                let (key, _) = watched(&guarded);
                self.requests.remove(&key);
                self.changes.keys.insert(key);
            }
            watcher::Event::Init => self.listing.clear(),
            watcher::Event::InitApply(guarded) => {
                if let (key, Some(watched)) = watched(&guarded) {
                    self.listing.insert(key, watched);
                }
            }
            watcher::Event::InitDone => {
                self.requests = std::mem::take(&mut self.listing);
                self.changes.relisted = true;
                self.changes.keys.clear();
            }
        }
    }
}

/// What the recorder keeps of a request: what the index and the summary's merge read, a
/// tenth of the request it comes from (a trimmed request was about 2 KB in this cache).
#[derive(Clone, Debug, Default, PartialEq)]
struct Watched {
    resource_version: Option<String>,
    phase: Option<Phase>,
    expires_at: Option<Timestamp>,
    revoked_at: Option<Timestamp>,
    /// Its Kubernetes grant while active.
    grant: Option<Arc<ActiveGrant>>,
    /// The summary as stored.
    activity: Option<Box<Activity>>,
}

impl Watched {
    fn of(request: &AccessRequest, key: &RequestKey) -> Self {
        let status = request.status.as_ref();
        Self {
            resource_version: request.metadata.resource_version.clone(),
            phase: status.and_then(|status| status.phase),
            expires_at: request.status_time(|status| status.expires_at.as_ref()),
            revoked_at: request.status_time(|status| status.revoked_at.as_ref()),
            grant: active_grant(request, key).map(Arc::new),
            activity: status
                .and_then(|status| status.activity.clone())
                .map(Box::new),
        }
    }

    /// Whether it waits for its decision or its grant.
    fn is_pending(&self) -> bool {
        self.phase.is_none_or(|phase| phase == Phase::Pending)
    }

    /// From when its revoke is due, while active: a moment before its end.
    fn revoke_due_at(&self) -> Option<Timestamp> {
        if self.phase != Some(Phase::Active) {
            return None;
        }
        self.expires_at
            .and_then(|expires| expires.checked_sub(REVOKE_DUE_BEFORE).ok())
    }

    /// When its grant's window closed, seen `now`: when it was revoked, or now (expired).
    fn ended(&self, now: Timestamp) -> Timestamp {
        self.revoked_at.unwrap_or(now)
    }
}

/// The requests the watch changed since the index last looked.
#[derive(Default)]
struct Changes {
    /// Requests added, changed or deleted.
    keys: std::collections::HashSet<RequestKey>,
    /// The watch listed everything again (at start, or after it lost its place): the index
    /// is built anew from the cache.
    relisted: bool,
}

/// The grants calls are attributed to, kept up to date one changed request at a time: at
/// 10,000 requests, rebuilding it from every request on each change was the operator's
/// largest use of CPU.
#[derive(Default)]
struct Index {
    /// Kubernetes grants by request, ended ones for [`LATE_CALLS`] (see [`index`]).
    known: HashMap<RequestKey, Arc<ActiveGrant>>,
    /// From when each active request's revoke is due (any target).
    revoke_due_at: HashMap<RequestKey, Timestamp>,
    /// When a pending request last changed: its grant may be under way.
    pending_changed_at: Option<Timestamp>,
}

impl Index {
    /// Builds the index anew from every request.
    fn relist(&mut self, requests: &HashMap<RequestKey, Watched>, now: Timestamp) {
        index(&mut self.known, requests, now);
        self.revoke_due_at = requests
            .iter()
            .filter_map(|(key, request)| Some((key.clone(), request.revoke_due_at()?)))
            .collect();
        if requests.values().any(Watched::is_pending) {
            self.pending_changed_at = Some(now);
        }
    }

    /// Takes one request as it is now (`None`: gone); returns whether the grants changed.
    fn take(&mut self, key: &RequestKey, request: Option<&Watched>, now: Timestamp) -> bool {
        match request.and_then(Watched::revoke_due_at) {
            Some(at) => self.revoke_due_at.insert(key.clone(), at),
            None => self.revoke_due_at.remove(key),
        };
        if request.is_some_and(Watched::is_pending) {
            self.pending_changed_at = Some(now);
        }
        if let Some(grant) = request.and_then(|request| request.grant.as_ref()) {
            if self.known.get(key).is_some_and(|known| known == grant) {
                return false;
            }
            self.known.insert(key.clone(), grant.clone());
            return true;
        }
        let Some(grant) = self.known.get_mut(key) else {
            return false;
        };
        // Ended: its window closed when it was revoked, or now (gone, or expired).
        let ended = request.map_or(now, |request| request.ended(now));
        let closed = grant.expires_at.min(ended);
        if closed == grant.expires_at {
            return false;
        }
        // A copy only while the published index still holds this grant.
        Arc::make_mut(grant).expires_at = closed;
        true
    }

    /// Forgets grants that ended longer than [`LATE_CALLS`] ago; returns whether any went.
    fn forget_late(&mut self, now: Timestamp) -> bool {
        let before = self.known.len();
        self.known.retain(|_, grant| within_late_calls(grant, now));
        self.known.len() != before
    }

    fn grants(&self) -> Grants {
        Grants::new(self.known.values().cloned())
    }

    /// Whether the controller may have grants or revokes to write: a pending request changed
    /// less than [`GRANT_DUE_FOR`] ago, or a request is active within [`REVOKE_DUE_BEFORE`]
    /// of its end, or past it.
    fn lifecycle_due(&self, now: Timestamp) -> bool {
        self.pending_changed_at
            .and_then(|at| at.checked_add(GRANT_DUE_FOR).ok())
            .is_some_and(|until| now < until)
            || self.revoke_due_at.values().any(|at| *at <= now)
    }

    /// Whether a policy's idle timeout may read the request's summary: its grant is active
    /// and its policy sets one (or the policies are not known yet).
    fn read_by_idle(&self, key: &str, idle: &IdlePolicies, now: Timestamp) -> bool {
        self.known
            .get(key)
            .is_some_and(|grant| grant.expires_at > now && idle.may_set(&grant.policy))
    }
}

/// The policies that set `idleTimeout`, by name; `None` until they are listed.
#[derive(Default)]
struct IdlePolicies(Option<std::collections::HashSet<String>>);

impl IdlePolicies {
    /// Whether the policy may set an idle timeout: it does, or the policies are not known.
    fn may_set(&self, policy: &str) -> bool {
        self.0.as_ref().is_none_or(|named| named.contains(policy))
    }

    /// Takes a policy as it is now, or gone (`present` false).
    fn take(&mut self, policy: &AccessPolicy, present: bool) {
        if let Some(named) = self.0.as_mut() {
            if present && policy.spec.idle_timeout.is_some() {
                named.insert(policy.name_any());
            } else {
                named.remove(&policy.name_any());
            }
        }
    }
}

/// Keeps `idle` to the policies that set `idleTimeout`, from a watch of the policies.
async fn watch_idle_policies(client: Client, idle: Arc<RwLock<IdlePolicies>>) {
    let stream = watcher(
        Api::<AccessPolicy>::all(client),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff();
    futures::pin_mut!(stream);
    let mut listing = std::collections::HashSet::new();
    while let Some(event) = stream.next().await {
        let named = || idle.write().unwrap_or_else(PoisonError::into_inner);
        match event {
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitApply(policy)) => {
                if policy.spec.idle_timeout.is_some() {
                    listing.insert(policy.name_any());
                }
            }
            Ok(watcher::Event::InitDone) => named().0 = Some(std::mem::take(&mut listing)),
            Ok(watcher::Event::Apply(policy)) => named().take(&policy, true),
            Ok(watcher::Event::Delete(policy)) => named().take(&policy, false),
            Err(error) => {
                debug!(error = %error_chain(&error), "activity policy watch error; retrying");
            }
        }
    }
}

/// Whether an ended grant still takes late calls.
fn within_late_calls(grant: &ActiveGrant, now: Timestamp) -> bool {
    grant
        .expires_at
        .checked_add(LATE_CALLS)
        .is_ok_and(|until| now < until)
}

/// The grants calls are attributed to: every active Kubernetes grant, and those that ended
/// less than [`LATE_CALLS`] ago (their window closed at the end), which `known` remembers
/// since an ended request no longer names its binding.
fn index(
    known: &mut HashMap<RequestKey, Arc<ActiveGrant>>,
    requests: &HashMap<RequestKey, Watched>,
    now: Timestamp,
) -> Grants {
    for (key, request) in requests {
        if let Some(grant) = &request.grant {
            known.insert(key.clone(), grant.clone());
        } else if let Some(grant) = known.get_mut(key) {
            // Ended: its window closed when it was revoked, or now.
            let ended = request.ended(now);
            if ended < grant.expires_at {
                Arc::make_mut(grant).expires_at = ended;
            }
        }
    }
    for (key, grant) in known.iter_mut() {
        if !requests.contains_key(key) && now < grant.expires_at {
            Arc::make_mut(grant).expires_at = now;
        }
    }
    known.retain(|_, grant| within_late_calls(grant, now));
    Grants::new(known.values().cloned())
}

/// The Kubernetes grant an active request holds.
fn active_grant(request: &AccessRequest, key: &RequestKey) -> Option<ActiveGrant> {
    let status = request.status.as_ref()?;
    if status.phase != Some(Phase::Active) {
        return None;
    }
    let grant = status.grant.as_ref()?;
    if grant.provider != crate::target::Target::Kubernetes.as_str() {
        return None;
    }
    Some(ActiveGrant {
        request: key.clone(),
        uid: request.uid().unwrap_or_default(),
        policy: request.spec.policy.clone(),
        binding: BindingRef::from_grant_reference(&grant.reference)?,
        subject: crate::audit::event::subject_of(request),
        granted_at: status.granted_at.as_ref()?.0,
        expires_at: status.expires_at.as_ref().map(|time: &Time| time.0)?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::crd::{
        ApiDuration,
        v1alpha1::{AccessRequestStatus, Grant},
    };

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn key_of(request: &AccessRequest) -> RequestKey {
        format!(
            "{}/{}",
            request.namespace().unwrap_or_default(),
            request.name_any()
        )
        .into()
    }

    /// What the recorder's cache keeps of a request.
    fn watched(request: &AccessRequest) -> Watched {
        Watched::of(request, &key_of(request))
    }

    /// The recorder's cache of these requests.
    fn cached<'a>(
        requests: impl IntoIterator<Item = &'a AccessRequest>,
    ) -> HashMap<RequestKey, Watched> {
        requests
            .into_iter()
            .map(|request| (key_of(request), watched(request)))
            .collect()
    }

    /// The grants indexed from these requests as the cache keeps them.
    fn index<'a>(
        known: &mut HashMap<RequestKey, Arc<ActiveGrant>>,
        requests: impl IntoIterator<Item = &'a AccessRequest>,
        now: Timestamp,
    ) -> Grants {
        super::index(known, &cached(requests), now)
    }

    fn request(name: &str, phase: Phase, reference: Option<&str>) -> AccessRequest {
        let mut request: AccessRequest = serde_json::from_value(json!({
            "apiVersion": "jit.dev/v1alpha1", "kind": "AccessRequest",
            "metadata": {"name": name, "namespace": "team", "uid": format!("uid-{name}")},
            "spec": {"policy": "dev", "role": "view", "subject": "alice"},
        }))
        .unwrap();
        request.status = Some(AccessRequestStatus {
            phase: Some(phase),
            granted_at: Some(Time(at("2026-01-01T00:00:00Z"))),
            expires_at: Some(Time(at("2026-01-01T01:00:00Z"))),
            grant: reference.map(|reference| Grant {
                provider: "kubernetes".into(),
                reference: reference.into(),
                cloud_enforced_expiry: false,
            }),
            ..AccessRequestStatus::default()
        });
        request
    }

    #[test]
    fn active_kubernetes_grants_are_indexed_and_ended_ones_kept_for_late_calls() {
        let mut known = HashMap::new();
        let now = at("2026-01-01T00:10:00Z");
        let active = request("a", Phase::Active, Some("RoleBinding team/jit-a"));
        let pending = request("b", Phase::Pending, None);
        let grants = index(&mut known, &[active.clone(), pending], now);
        assert_eq!(grants.len(), 1);
        assert_eq!(known["team/a"].uid, "uid-a");
        // Revoked at 00:20: calls before still count, for a while.
        let mut revoked = request("a", Phase::Revoked, None);
        if let Some(status) = revoked.status.as_mut() {
            status.revoked_at = Some(Time(at("2026-01-01T00:20:00Z")));
        }
        let grants = index(&mut known, &[revoked.clone()], at("2026-01-01T00:21:00Z"));
        assert_eq!(grants.len(), 1);
        assert_eq!(known["team/a"].expires_at, at("2026-01-01T00:20:00Z"));
        // Long after: forgotten.
        let grants = index(&mut known, &[revoked], at("2026-01-01T00:31:00Z"));
        assert!(grants.is_empty());
        // A deleted request's window closes when it is seen gone.
        let grants = index(&mut known, &[active], now);
        assert_eq!(grants.len(), 1);
        index(&mut known, std::iter::empty(), at("2026-01-01T00:11:00Z"));
        assert_eq!(known["team/a"].expires_at, at("2026-01-01T00:11:00Z"));
    }

    #[test]
    fn a_change_that_leaves_the_grant_as_it_was_keeps_one_copy_of_it() {
        let mut granted = request("a", Phase::Active, Some("RoleBinding team/jit-a"));
        let mut cache = Cache::default();
        cache.take(watcher::Event::Apply(DeserializeGuard(Ok(granted.clone()))));
        let first = cache.requests["team/a"].grant.clone().unwrap();
        // Its outbox cursor or finalizer changed: the grant did not.
        granted.metadata.resource_version = Some("42".into());
        cache.take(watcher::Event::Apply(DeserializeGuard(Ok(granted.clone()))));
        let kept = cache.requests["team/a"].grant.clone().unwrap();
        assert!(
            Arc::ptr_eq(&first, &kept),
            "the grant held before, not a copy"
        );
        // Its window changed: another record.
        if let Some(status) = granted.status.as_mut() {
            status.expires_at = Some(Time(at("2026-01-01T00:30:00Z")));
        }
        cache.take(watcher::Event::Apply(DeserializeGuard(Ok(granted))));
        let changed = cache.requests["team/a"].grant.clone().unwrap();
        assert!(!Arc::ptr_eq(&first, &changed));
        assert_eq!(changed.expires_at, at("2026-01-01T00:30:00Z"));
    }

    /// The cache follows the watch (a listing replaces it only once whole, changes and
    /// deletions one at a time, a request that no longer parses holds nothing) and keeps what
    /// the index and the summary's merge read.
    #[test]
    fn the_cache_follows_the_watch_and_keeps_what_the_index_and_the_merge_read() {
        let guarded = |request: &AccessRequest| DeserializeGuard(Ok(request.clone()));
        let mut whole = request("a", Phase::Active, Some("RoleBinding team/jit-a"));
        whole.metadata.resource_version = Some("41".into());
        if let Some(status) = whole.status.as_mut() {
            status.activity = Some(Activity {
                actions: 7,
                ..Default::default()
            });
            status.message = Some("granted".into());
        }
        let mut cache = Cache::default();
        cache.take(watcher::Event::Init);
        cache.take(watcher::Event::InitApply(guarded(&whole)));
        assert!(cache.requests.is_empty(), "not before the listing is whole");
        cache.take(watcher::Event::InitDone);
        assert!(cache.changes.relisted);
        let kept = &cache.requests["team/a"];
        assert_eq!(kept.resource_version.as_deref(), Some("41"));
        assert_eq!(
            kept.activity.as_ref().map(|activity| activity.actions),
            Some(7)
        );
        assert_eq!(
            kept.grant.as_deref(),
            active_grant(&whole, &"team/a".into()).as_ref()
        );
        assert!(kept.grant.is_some());

        let changes = std::mem::take(&mut cache.changes);
        assert!(changes.keys.is_empty());
        cache.take(watcher::Event::Apply(guarded(&request(
            "b",
            Phase::Pending,
            None,
        ))));
        assert!(cache.requests["team/b"].is_pending());
        cache.take(watcher::Event::Delete(guarded(&whole)));
        assert!(!cache.requests.contains_key("team/a"));
        let broken: DeserializeGuard<AccessRequest> = serde_json::from_value(json!({
            "apiVersion": "jit.dev/v1alpha1", "kind": "AccessRequest",
            "metadata": {"name": "b", "namespace": "team"},
            "spec": "not a spec",
        }))
        .unwrap();
        assert!(broken.0.is_err());
        cache.take(watcher::Event::Apply(broken));
        assert!(
            cache.requests.is_empty(),
            "a request that does not parse is absent"
        );
        let mut keys: Vec<&str> = cache.changes.keys.iter().map(|key| &**key).collect();
        keys.sort();
        assert_eq!(keys, ["team/a", "team/b"]);
        assert!(!cache.changes.relisted);
    }

    #[test]
    fn a_revoke_is_due_from_a_moment_before_the_grants_end_until_it_happens() {
        let active = request("a", Phase::Active, Some("RoleBinding team/jit-a"));
        let expired = request("b", Phase::Expired, None);
        let now = at("2026-01-01T00:10:00Z");
        let mut index = Index::default();
        index.relist(&cached([&active, &expired]), now);
        // Both end at 01:00.
        assert!(!index.lifecycle_due(at("2026-01-01T00:59:57Z")));
        assert!(index.lifecycle_due(at("2026-01-01T00:59:58Z")));
        assert!(index.lifecycle_due(at("2026-01-01T01:00:05Z")), "overdue");
        // The revoke happens: nothing is due any more.
        let revoked = request("a", Phase::Expired, None);
        index.take(&RequestKey::from("team/a"), Some(&watched(&revoked)), now);
        assert!(!index.lifecycle_due(at("2026-01-01T02:00:00Z")));
    }

    #[test]
    fn a_grant_is_due_for_a_few_seconds_after_a_pending_request_changes() {
        let now = at("2026-01-01T00:10:00Z");
        let mut index = Index::default();
        index.relist(&cached([&request("a", Phase::Expired, None)]), now);
        assert!(!index.lifecycle_due(now), "nothing pending");
        let approved = request("b", Phase::Pending, None);
        index.take(&RequestKey::from("team/b"), Some(&watched(&approved)), now);
        assert!(index.lifecycle_due(at("2026-01-01T00:10:04Z")));
        // Waiting on people, not on the operator: summaries go at their usual pace again.
        assert!(!index.lifecycle_due(at("2026-01-01T00:10:05Z")));
        // A change to an ended request is no grant.
        index.take(
            &RequestKey::from("team/a"),
            Some(&watched(&request("a", Phase::Expired, None))),
            at("2026-01-01T00:20:00Z"),
        );
        assert!(!index.lifecycle_due(at("2026-01-01T00:20:00Z")));
    }

    #[test]
    fn only_active_grants_under_a_policy_with_an_idle_timeout_are_read_by_idle() {
        let now = at("2026-01-01T00:10:00Z");
        let mut index = Index::default();
        index.relist(
            &cached([
                &request("a", Phase::Active, Some("RoleBinding team/jit-a")),
                &request("b", Phase::Active, Some("RoleBinding team/jit-b")),
            ]),
            now,
        );
        let ended = request("b", Phase::Expired, None);
        index.take(&RequestKey::from("team/b"), Some(&watched(&ended)), now);
        let (a, b) = (RequestKey::from("team/a"), RequestKey::from("team/b"));
        // Before the policies are listed, any may be.
        let unknown = IdlePolicies::default();
        assert!(index.read_by_idle(&a, &unknown, now));
        let policy = |idle: Option<&str>| {
            let mut policy = crate::fixtures::policy();
            policy.metadata.name = Some("dev".into());
            policy.spec.idle_timeout = idle.map(|idle| ApiDuration::parse(idle).unwrap());
            policy
        };
        let mut listed = IdlePolicies(Some(std::collections::HashSet::new()));
        assert!(!index.read_by_idle(&a, &listed, now));
        listed.take(&policy(Some("5m")), true);
        assert!(index.read_by_idle(&a, &listed, now));
        assert!(
            !index.read_by_idle(&b, &listed, now),
            "ended: nothing reads it"
        );
        assert!(!index.read_by_idle(&RequestKey::from("team/c"), &listed, now));
        listed.take(&policy(None), true);
        assert!(
            !index.read_by_idle(&a, &listed, now),
            "the timeout was removed"
        );
        listed.take(&policy(Some("5m")), true);
        listed.take(&policy(Some("5m")), false);
        assert!(
            !index.read_by_idle(&a, &listed, now),
            "the policy was deleted"
        );
    }

    /// The index kept one change at a time is the index built from every request, at each
    /// step of two requests' lives (granted, revoked, deleted) and as time passes.
    #[test]
    fn the_index_kept_change_by_change_is_the_one_built_from_every_request() {
        let t = |minutes: i64| at("2026-01-01T00:00:00Z") + SignedDuration::from_mins(minutes);
        let a_active = request("a", Phase::Active, Some("RoleBinding team/jit-a"));
        let b_pending = request("b", Phase::Pending, None);
        let b_active = request("b", Phase::Active, Some("RoleBinding other/jit-b"));
        let mut a_revoked = request("a", Phase::Revoked, None);
        if let Some(status) = a_revoked.status.as_mut() {
            status.revoked_at = Some(Time(t(20)));
        }
        // (minute, requests now, the one that changed)
        let steps: [(i64, Vec<&AccessRequest>, &str); 6] = [
            (10, vec![&a_active, &b_pending], "team/b"),
            (11, vec![&a_active, &b_active], "team/b"),
            (21, vec![&a_revoked, &b_active], "team/a"),
            (22, vec![&b_active], "team/a"),
            (25, vec![&b_active], "team/b"),
            (40, vec![&b_active], "team/b"),
        ];
        let mut kept = Index::default();
        kept.relist(&cached([&a_active]), t(9));
        let mut built: HashMap<RequestKey, Arc<ActiveGrant>> = HashMap::new();
        index(&mut built, [&a_active], t(9));
        for (minute, requests, changed) in steps {
            let now = t(minute);
            let request = requests
                .iter()
                .find(|request| &*key_of(request) == changed)
                .copied();
            kept.take(
                &RequestKey::from(changed),
                request.map(watched).as_ref(),
                now,
            );
            kept.forget_late(now);
            index(&mut built, requests.iter().copied(), now);
            let mut kept_grants: Vec<String> = kept
                .known
                .iter()
                .map(|grant| format!("{grant:?}"))
                .collect();
            let mut built_grants: Vec<String> =
                built.iter().map(|grant| format!("{grant:?}")).collect();
            kept_grants.sort();
            built_grants.sort();
            assert_eq!(kept_grants, built_grants, "at minute {minute}");
        }
        assert_eq!(
            kept.known.len(),
            1,
            "a's window is long closed: {:?}",
            kept.known
        );
    }

    #[test]
    fn cloud_grants_are_not_indexed() {
        let mut cloud = request("c", Phase::Active, Some("RoleBinding team/jit-c"));
        if let Some(grant) = cloud
            .status
            .as_mut()
            .and_then(|status| status.grant.as_mut())
        {
            grant.provider = "aws".into();
        }
        assert!(index(&mut HashMap::new(), &[cloud], at("2026-01-01T00:10:00Z")).is_empty());
    }

    /// Alice is refused a Secret at 00:10, while she holds `a` (indexed) and `b` (whose
    /// binding is in place, but whose status the index has not seen yet).
    #[test]
    fn a_refusal_that_comes_before_the_index_knows_the_grant_is_counted_once_it_does() {
        let (recorder, _lines) = Recorder::new(Metrics::shared());
        let mut known = HashMap::new();
        let now = at("2026-01-01T00:10:01Z");
        let a = request("a", Phase::Active, Some("RoleBinding team/jit-a"));
        let b = request("b", Phase::Active, Some("RoleBinding other/jit-b"));
        let only_a = recorder.set_grants(index(&mut known, std::slice::from_ref(&a), now));
        let refused: AuditEvent = serde_json::from_value(json!({
            "auditID": "2", "stage": "ResponseComplete", "verb": "get",
            "user": {"username": "alice"},
            "objectRef": {"resource": "secrets", "namespace": "other", "name": "db"},
            "responseStatus": {"code": 403},
            "requestReceivedTimestamp": "2026-01-01T00:10:00Z",
            "annotations": {"authorization.k8s.io/decision": "forbid"},
        }))
        .unwrap();
        recorder.receive(&[refused]);
        let both = recorder.set_grants(index(&mut known, &[a.clone(), b.clone()], now));
        recorder.attribute_parked(tokio::time::Instant::now(), both.fresh_since(&only_a));
        // Later rounds see nothing new: nothing is counted twice.
        let again = recorder.set_grants(index(&mut known, &[a, b], now));
        recorder.attribute_parked(tokio::time::Instant::now(), again.fresh_since(&both));
        recorder.attribute_parked(tokio::time::Instant::now(), again.fresh_since(&only_a));
        let refused: HashMap<RequestKey, i64> = recorder
            .take_due(&HashMap::new(), tokio::time::Instant::now(), Pace::Free)
            .into_iter()
            .map(|(key, tally)| (key, tally.summary(Timestamp::UNIX_EPOCH).refused))
            .collect();
        assert_eq!(
            refused,
            HashMap::from([
                (RequestKey::from("team/a"), 1),
                (RequestKey::from("team/b"), 1)
            ])
        );
        // Let go once parked long enough.
        recorder.attribute_parked(tokio::time::Instant::now() + PARKED_FOR, []);
        assert!(recorder.refusals.lock().unwrap().is_empty());
    }

    #[test]
    fn counts_that_could_not_be_written_wait_for_the_next_round() {
        let (recorder, _lines) = Recorder::new(Metrics::shared());
        let mut known = HashMap::new();
        recorder.set_grants(index(
            &mut known,
            &[request("a", Phase::Active, Some("RoleBinding team/jit-a"))],
            at("2026-01-01T00:10:00Z"),
        ));
        let call: AuditEvent = serde_json::from_value(json!({
            "auditID": "1", "stage": "ResponseComplete", "verb": "list",
            "user": {"username": "alice"},
            "objectRef": {"resource": "pods", "namespace": "team"},
            "responseStatus": {"code": 200},
            "requestReceivedTimestamp": "2026-01-01T00:10:00Z",
            "annotations": {
                "authorization.k8s.io/decision": "allow",
                "authorization.k8s.io/reason": "RBAC: allowed by RoleBinding \"jit-a/team\" of ClusterRole \"view\" to User \"alice\"",
            },
        }))
        .unwrap();
        recorder.receive(&[call.clone(), call]);
        let now = tokio::time::Instant::now();
        let mut written = HashMap::new();
        let due = recorder.take_due(&written, now, Pace::Free);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1.summary(Timestamp::UNIX_EPOCH).actions, 2);
        recorder.put_back(due[0].0.clone(), &due[0].1);
        // Just written: not due again within the interval.
        written.insert(RequestKey::from("team/a"), now);
        assert!(recorder.take_due(&written, now, Pace::Free).is_empty());
        let later = recorder.take_due(&written, now + WRITE_INTERVAL, Pace::Free);
        assert_eq!(later[0].1.summary(Timestamp::UNIX_EPOCH).actions, 2);
    }

    /// Pending counts for each of `keys`, as the webhook would leave them.
    fn pending_for(recorder: &Recorder, keys: &[&str]) {
        let mut pending = recorder.pending.lock().unwrap();
        for key in keys {
            pending.insert(RequestKey::from(*key), Tally::default());
        }
    }

    #[test]
    fn while_revokes_are_due_only_summaries_an_idle_timeout_reads_are_not_held_back() {
        let (recorder, _lines) = Recorder::new(Metrics::shared());
        pending_for(
            &recorder,
            &[
                "team/idle",
                "team/new",
                "team/old",
                "team/older",
                "team/recent",
            ],
        );
        let now = tokio::time::Instant::now() + Duration::from_secs(120);
        let written = HashMap::from([
            (RequestKey::from("team/idle"), now - Duration::from_secs(15)),
            (RequestKey::from("team/old"), now - Duration::from_secs(30)),
            (
                RequestKey::from("team/older"),
                now - Duration::from_secs(60),
            ),
            (
                RequestKey::from("team/recent"),
                now - Duration::from_secs(3),
            ),
        ]);
        let read_by_idle = |key: &RequestKey| &**key == "team/idle";
        let pace = Pace::Limited {
            allowed: 2,
            read_by_idle: &read_by_idle,
        };
        let mut taken: Vec<String> = recorder
            .take_due(&written, now, pace)
            .into_iter()
            .map(|(key, _)| key.to_string())
            .collect();
        taken.sort();
        // The idle one as when free; of the rest, the never-written and the longest unwritten.
        assert_eq!(taken, ["team/idle", "team/new", "team/older"]);
        // The others wait for the next round, the recent one for its interval too.
        let rest = recorder.take_due(&written, now, Pace::Free);
        assert_eq!(rest.len(), 1);
        assert_eq!(&*rest[0].0, "team/old");
        assert_eq!(recorder.pending.lock().unwrap().len(), 1, "the recent one");
    }

    #[test]
    fn the_allowance_is_a_rate_a_second_saved_up_for_one_at_the_rate_of_the_moment() {
        let start = tokio::time::Instant::now();
        let yielding = YIELDING_WRITES_PER_SECOND;
        let mut allowance = Allowance::new(start, yielding);
        assert_eq!(allowance.available(start, yielding), 5);
        allowance.spend(5);
        assert_eq!(allowance.available(start, yielding), 0);
        assert_eq!(
            allowance.available(start + Duration::from_millis(400), yielding),
            2
        );
        allowance.spend(2);
        // A quiet minute saves up no more than a second's worth.
        let quiet = start + Duration::from_secs(60);
        assert_eq!(allowance.available(quiet, WRITES_PER_SECOND), 25);
        allowance.spend(10);
        // A grant coming due cuts what is saved up to the yielding rate's second at once.
        assert_eq!(allowance.available(quiet, yielding), 5);
    }

    #[test]
    fn a_thousand_busy_grants_are_summarised_twenty_five_a_second_in_all() {
        let (recorder, _lines) = Recorder::new(Metrics::shared());
        let keys: Vec<String> = (0..1_000).map(|n| format!("team/busy-{n}")).collect();
        pending_for(
            &recorder,
            &keys.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let now = tokio::time::Instant::now();
        let mut written = HashMap::new();
        let mut allowance = Allowance::new(now, WRITES_PER_SECOND);
        let read_by_idle = |_: &RequestKey| false;
        let mut per_second = Vec::new();
        for second in 0..3 {
            let at = now + Duration::from_secs(second);
            let pace = Pace::Limited {
                allowed: allowance.available(at, WRITES_PER_SECOND),
                read_by_idle: &read_by_idle,
            };
            let due = recorder.take_due(&written, at, pace);
            allowance.spend(due.len());
            for (key, _) in &due {
                written.insert(key.clone(), at);
            }
            per_second.push(due.len());
        }
        assert_eq!(per_second, [25, 25, 25]);
        assert_eq!(
            recorder.pending.lock().unwrap().len(),
            925,
            "the rest wait their turn"
        );
    }
}
