//! The deliverer (leader only): sends each outbox's records to their channels, one at a time
//! per request and channel so that order holds, marks each one delivered only once the channel
//! acknowledged it, backs a failing channel off (honouring its Retry-After) without holding up
//! any other, records `Deleted` for requests that are gone, removes outboxes every channel has
//! emptied, and shows each channel's health in its status and in metrics. Nothing here is on
//! the path of a grant or a revoke.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::{
    api::core::v1::ConfigMap,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::{
    Recorder,
    outbox::{OUTBOX_LABEL, OUTBOX_VALUE, Outbox, Record},
    send::{self, ChannelSecret},
};
use crate::{
    crd::v1alpha1::{NotificationChannel, NotificationChannelStatus},
    metrics::Metrics,
    request_controller::CachedRequest,
    telemetry::error_chain,
};

/// Deliveries in flight per channel at once (each to a different request).
const PER_CHANNEL: usize = 8;
/// How often the deliverer looks even when nothing changed (backoffs ending).
const TICK: Duration = Duration::from_millis(500);
/// How long a wake waits for the rest of its burst: outboxes change a few times per request
/// lifecycle, and a round looks at every outbox, so a burst is one round, not hundreds.
const COALESCE: Duration = Duration::from_millis(100);
/// How often a round also looks up every outbox's request, for those deleted (whose outbox
/// then gets its `Deleted` record): at 10,000 outboxes that is 10,000 lookups, which the
/// rounds that only send need not make.
const GONE_SCAN: Duration = Duration::from_secs(2);
/// How often a channel's status is written at most.
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// Longest wait between two probes of a failing channel (its own Retry-After may be longer).
const CHANNEL_MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What the deliverer knows about one channel.
#[derive(Default)]
struct ChannelState {
    failures: u32,
    retry_at: Option<Instant>,
    in_flight: usize,
    last_delivery: Option<Timestamp>,
    last_error: Option<(String, String)>,
    delivered: i64,
    secret: Option<(Instant, ChannelSecret, reqwest::Client)>,
    status_written: Option<Instant>,
    written: Option<NotificationChannelStatus>,
}

impl ChannelState {
    /// Starts a delivery if the channel may take one now: not backing off, and under its
    /// limit (one probe at a time while it fails). Returns the failure count it starts under.
    fn start(&mut self, now: Instant) -> Option<u32> {
        let limit = if self.failures > 0 { 1 } else { PER_CHANNEL };
        if self.retry_at.is_some_and(|at| now < at) || self.in_flight >= limit {
            return None;
        }
        self.in_flight += 1;
        Some(self.failures)
    }

    /// A delivery was acknowledged.
    fn succeeded(&mut self, at: Timestamp) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.failures = 0;
        self.retry_at = None;
        self.last_delivery = Some(at);
        self.last_error = None;
        self.delivered += 1;
    }

    /// A delivery started under `failures_at_start` failed; returns how long the channel
    /// now waits. Deliveries in flight together fail together and count as one failure, so
    /// a burst does not push the backoff to its cap; the channel's own Retry-After wins,
    /// however long.
    fn failed(
        &mut self,
        channel: &str,
        failures_at_start: u32,
        retry_after: Option<Duration>,
        now: Instant,
    ) -> Duration {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.failures == failures_at_start {
            self.failures = self.failures.saturating_add(1);
        }
        let wait = backoff(channel, self.failures).max(retry_after.unwrap_or_default());
        self.retry_at = Some(now + wait);
        wait
    }
}

#[derive(Default)]
struct State {
    channels: HashMap<String, ChannelState>,
    /// (request uid, channel) pairs with a delivery in flight.
    in_flight: HashSet<(String, String)>,
    /// The next ordinal each (uid, channel) is owed, as this process last wrote it (ahead of
    /// the watched outbox until the watch catches up).
    sent: HashMap<(String, String), u64>,
    /// Outboxes whose removal or `Deleted` record is under way.
    busy: HashSet<String>,
    /// Every outbox, parsed as the watch delivered it, by ConfigMap name.
    outboxes: HashMap<String, Arc<Outbox>>,
    /// Whether `outboxes` holds every outbox (the watch has listed them all).
    outboxes_listed: bool,
}

/// Delivers audit records to channels.
pub struct Deliverer {
    client: Client,
    recorder: Arc<Recorder>,
    metrics: Arc<Metrics>,
    requests: reflector::Store<CachedRequest>,
    /// Whether `requests` holds every request (until then, no request counts as gone).
    requests_synced: Arc<AtomicBool>,
    state: Mutex<State>,
    wake: Notify,
}

impl Deliverer {
    /// A deliverer for the recorder's outboxes; `requests` tells which requests still exist
    /// once `requests_synced` is set.
    pub fn new(
        client: Client,
        recorder: Arc<Recorder>,
        metrics: Arc<Metrics>,
        requests: reflector::Store<CachedRequest>,
        requests_synced: Arc<AtomicBool>,
    ) -> Arc<Self> {
        Arc::new(Self {
            client,
            recorder,
            metrics,
            requests,
            requests_synced,
            state: Mutex::default(),
            wake: Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs until `shutdown` completes.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()> + Send + 'static) {
        let namespace = self.recorder.store().namespace().to_owned();
        let outboxes = Api::<ConfigMap>::namespaced(self.client.clone(), &namespace);
        // Outboxes are parsed as they arrive and held parsed, without the ConfigMaps: each
        // change is parsed (and its seals checked) once, and a round reads no ConfigMap.
        let watcher_self = self.clone();
        let outbox_stream = watcher(
            outboxes,
            watcher::Config::default().labels(&format!("{OUTBOX_LABEL}={OUTBOX_VALUE}")),
        )
        .default_backoff()
        .map(move |event| event.map(|event| watcher_self.outbox_changed(event)));
        let channels = Api::<NotificationChannel>::all(self.client.clone());
        let (channel_store, channel_writer) = reflector::store();
        let channel_stream = watcher(channels, watcher::Config::default())
            .default_backoff()
            .modify(|channel: &mut NotificationChannel| channel.metadata.managed_fields = None)
            .reflect(channel_writer)
            .touched_objects();
        let waker = self.clone();
        let watches = tokio::spawn(async move {
            let mut merged = futures::stream::select(
                Box::pin(outbox_stream.map(|event| event.map(|_| ()).map_err(|e| e.to_string()))),
                Box::pin(channel_stream.map(|event| event.map(|_| ()).map_err(|e| e.to_string()))),
            );
            while let Some(event) = merged.next().await {
                if let Err(error) = event {
                    debug!(%error, "audit watch error; retrying");
                }
                waker.wake.notify_one();
            }
        });
        tokio::pin!(shutdown);
        info!(%namespace, "delivering audit events");
        let mut rest = Duration::ZERO;
        let mut scanned: Option<Instant> = None;
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = self.wake.notified() => {
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(COALESCE.max(rest)) => {},
                    }
                },
                () = tokio::time::sleep(TICK) => {},
            }
            let outboxes: Vec<Arc<Outbox>> = {
                let state = self.state();
                if !state.outboxes_listed {
                    continue;
                }
                state.outboxes.values().cloned().collect()
            };
            let channels: HashMap<String, Arc<NotificationChannel>> = channel_store
                .state()
                .into_iter()
                .map(|channel| (channel.name_any(), channel))
                .collect();
            let started = Instant::now();
            let scan_for_gone = scanned.is_none_or(|at| started.duration_since(at) >= GONE_SCAN);
            if scan_for_gone {
                scanned = Some(started);
            }
            self.round(&outboxes, &channels, scan_for_gone);
            // A round's cost grows with the outboxes held; resting as long as it took keeps
            // delivery under half a core however many there are.
            rest = started.elapsed();
        }
        watches.abort();
    }

    /// Takes one change from the outbox watch into the parsed outboxes.
    fn outbox_changed(&self, event: watcher::Event<ConfigMap>) {
        let sealer = self.recorder.store().sealer();
        let parse = |config_map: ConfigMap| {
            let name = config_map.name_any();
            let outbox = Outbox::parse(&Arc::new(config_map), sealer)
                .map(|outbox| Arc::new(outbox.keeping_owed()));
            // Said once for each change that holds them, not at every round.
            if let Some(outbox) = outbox.as_ref().filter(|outbox| !outbox.forged.is_empty()) {
                warn!(outbox = %outbox.uid, keys = ?outbox.forged, "ignoring audit records without the operator's seal");
            }
            (name, outbox)
        };
        let mut state = self.state();
        match event {
            watcher::Event::Init => {
                state.outboxes_listed = false;
                state.outboxes.clear();
            }
            watcher::Event::InitApply(config_map) | watcher::Event::Apply(config_map) => {
                let (name, outbox) = parse(config_map);
                match outbox {
                    Some(outbox) => state.outboxes.insert(name, outbox),
                    None => state.outboxes.remove(&name),
                };
            }
            watcher::Event::InitDone => {
                state.outboxes_listed = true;
                // A removed outbox is owed nothing more: forget its cursors.
                let State { sent, outboxes, .. } = &mut *state;
                let uids: HashSet<&str> = outboxes
                    .values()
                    .map(|outbox| outbox.uid.as_str())
                    .collect();
                sent.retain(|(uid, _), _| uids.contains(uid.as_str()));
            }
            watcher::Event::Delete(config_map) => {
                if let Some(outbox) = state.outboxes.remove(&config_map.name_any()) {
                    state.sent.retain(|(uid, _), _| *uid != outbox.uid);
                }
            }
        }
    }

    /// One look at everything: starts what can be sent, removes what is done, and with
    /// `scan_for_gone` records the requests no longer in the cache as deleted.
    fn round(
        self: &Arc<Self>,
        outboxes: &[Arc<Outbox>],
        channels: &HashMap<String, Arc<NotificationChannel>>,
        scan_for_gone: bool,
    ) {
        let requests_known = self.requests_synced.load(Ordering::Acquire);
        let now = Instant::now();
        let mut backlog: HashMap<String, usize> =
            channels.keys().map(|name| (name.clone(), 0)).collect();
        for outbox in outboxes {
            let uid = &outbox.uid;
            if scan_for_gone && !outbox.gone && requests_known && !self.request_exists(outbox) {
                self.spawn_deleted(outbox.clone());
            }
            if outbox.records.is_empty() && !outbox.gone {
                // Owed to nobody, its request still there: nothing to send or remove.
                continue;
            }
            let mut complete = outbox.gone;
            for channel in outbox.channels() {
                let Some(resource) = channels.get(&channel) else {
                    // A channel that no longer exists is owed nothing.
                    continue;
                };
                let cursor = self.cursor(outbox, &channel);
                let owed = outbox.owed(&channel, cursor);
                if owed == 0 {
                    continue;
                }
                complete = false;
                *backlog.entry(channel.clone()).or_default() += owed;
                if resource.spec.suspend {
                    continue;
                }
                let next = outbox
                    .next_for(&channel, cursor)
                    .and_then(|(ordinal, _)| Some((ordinal, outbox.record(ordinal)?)));
                if let Some((ordinal, record)) = next {
                    self.try_send(resource.clone(), outbox.clone(), ordinal, record, now);
                }
            }
            if complete {
                self.spawn_removal(uid.clone());
            }
        }
        for (channel, waiting) in &backlog {
            self.metrics.backlog(channel, *waiting);
        }
        for (name, resource) in channels {
            self.spawn_status(resource.clone(), backlog.get(name).copied().unwrap_or(0));
        }
    }

    /// Whether the outbox's request is still in the cache: the same name and the same UID
    /// (a request made again under the same name is another request).
    fn request_exists(&self, outbox: &Outbox) -> bool {
        let Some((namespace, name)) = outbox.request.split_once('/') else {
            return false;
        };
        self.requests
            .get(&reflector::ObjectRef::new(name).within(namespace))
            .is_some_and(|request| request.uid().as_deref() == Some(outbox.uid.as_str()))
    }

    /// The next ordinal `channel` is owed from `outbox`, counting what this process sent.
    fn cursor(&self, outbox: &Outbox, channel: &str) -> u64 {
        let stored = outbox.delivered.get(channel).copied().unwrap_or(0);
        let sent = self
            .state()
            .sent
            .get(&(outbox.uid.clone(), channel.to_owned()))
            .copied()
            .unwrap_or(0);
        stored.max(sent)
    }

    fn try_send(
        self: &Arc<Self>,
        channel: Arc<NotificationChannel>,
        outbox: Arc<Outbox>,
        ordinal: u64,
        record: Record,
        now: Instant,
    ) {
        let name = channel.name_any();
        let key = (outbox.uid.clone(), name.clone());
        let failures = {
            let mut state = self.state();
            if state.in_flight.contains(&key) {
                return;
            }
            let Some(failures) = state.channels.entry(name.clone()).or_default().start(now) else {
                return;
            };
            state.in_flight.insert(key.clone());
            failures
        };
        let deliverer = self.clone();
        tokio::spawn(async move {
            let result = deliverer
                .deliver(&channel, &outbox.uid, ordinal, &record)
                .await;
            deliverer.finish(&name, key, ordinal, failures, &record, result);
        });
    }

    async fn deliver(
        &self,
        channel: &NotificationChannel,
        uid: &str,
        ordinal: u64,
        record: &Record,
    ) -> Result<(), (String, String, Option<Duration>)> {
        let (secret, http) = self
            .secret(channel)
            .await
            .map_err(|(reason, message)| (reason, message, None))?;
        send::send(&channel.spec, &secret, &http, record)
            .await
            .map_err(|error| {
                let reason = match &error {
                    send::Error::Setup(_) => "Misconfigured",
                    send::Error::Answered { .. } => "DeliveryRefused",
                    send::Error::Unreachable(_) => "Unreachable",
                };
                (reason.to_owned(), error.to_string(), error.retry_after())
            })?;
        // Delivered, not yet marked: the channel will hear this record again.
        crate::failpoint::crash_point("audit-after-send");
        self.recorder
            .store()
            .mark_delivered(uid, &channel.name_any(), ordinal + 1)
            .await
            .map_err(|error| ("OutboxWriteFailed".to_owned(), error_chain(&error), None))
    }

    /// The channel's Secret and HTTP client, read again after [`send::SECRET_TTL`].
    async fn secret(
        &self,
        channel: &NotificationChannel,
    ) -> Result<(ChannelSecret, reqwest::Client), (String, String)> {
        let name = channel.name_any();
        if let Some((read, secret, http)) = self
            .state()
            .channels
            .get(&name)
            .and_then(|state| state.secret.clone())
            && read.elapsed() < send::SECRET_TTL
        {
            return Ok((secret, http));
        }
        let namespace = self.recorder.store().namespace().to_owned();
        let (parsed, http) = send::credentials(&self.client, &namespace, &channel.spec).await?;
        if let Some(state) = self.state().channels.get_mut(&name) {
            state.secret = Some((Instant::now(), parsed.clone(), http.clone()));
        }
        Ok((parsed, http))
    }

    fn finish(
        &self,
        channel: &str,
        key: (String, String),
        ordinal: u64,
        failures_at_start: u32,
        record: &Record,
        result: Result<(), (String, String, Option<Duration>)>,
    ) {
        let delivered = result.is_ok();
        self.metrics.delivery(channel, delivered);
        {
            let mut state = self.state();
            state.in_flight.remove(&key);
            let sent = &mut state.sent;
            if delivered {
                let next = sent.entry(key.clone()).or_default();
                *next = (*next).max(ordinal + 1);
            }
            let channel_state = state.channels.entry(channel.to_owned()).or_default();
            match &result {
                Ok(()) => channel_state.succeeded(Timestamp::now()),
                Err((reason, message, retry_after)) => {
                    let wait = channel_state.failed(
                        channel,
                        failures_at_start,
                        *retry_after,
                        Instant::now(),
                    );
                    channel_state.last_error = Some((reason.clone(), message.clone()));
                    // Secret problems may be fixed at any moment: read it again next time.
                    if reason.starts_with("Secret") || reason == "Misconfigured" {
                        channel_state.secret = None;
                    }
                    warn!(%channel, %reason, error = %message, failures = channel_state.failures, retry_in = ?wait, "audit delivery failed; retrying");
                }
            }
        }
        if delivered {
            if let Some(time) = record
                .event
                .get("time")
                .and_then(|time| time.as_str())
                .and_then(|time| time.parse::<Timestamp>().ok())
            {
                let seconds = Timestamp::now().duration_since(time).as_secs_f64().max(0.0);
                self.metrics.delivery_seconds.observe(seconds);
            }
            self.wake.notify_one();
        }
    }

    fn spawn_deleted(self: &Arc<Self>, outbox: Arc<Outbox>) {
        if !self.state().busy.insert(format!("deleted/{}", outbox.uid)) {
            return;
        }
        let deliverer = self.clone();
        tokio::spawn(async move {
            // Read fresh: the cache may not hold the request's last transitions yet (recorded
            // just before it was released), and `Deleted` takes the ordinal after them.
            let result = match deliverer.recorder.store().read(&outbox.uid).await {
                Ok(Some(fresh)) if !fresh.gone => {
                    deliverer
                        .recorder
                        .record_deleted(&fresh, Timestamp::now())
                        .await
                }
                Ok(_) => Ok(()),
                Err(error) => Err(error.into()),
            };
            // Once recorded, never again in this process: the outbox cache may not show
            // `gone` for a moment, and a second record would give the same event id a second
            // time. The mark goes with the outbox (spawn_removal).
            if let Err(error) = &result {
                warn!(outbox = %outbox.uid, error = %error_chain(error), "failed to record a deleted request; retrying");
                deliverer
                    .state()
                    .busy
                    .remove(&format!("deleted/{}", outbox.uid));
            }
        });
    }

    fn spawn_removal(self: &Arc<Self>, uid: String) {
        if !self.state().busy.insert(format!("remove/{uid}")) {
            return;
        }
        let deliverer = self.clone();
        tokio::spawn(async move {
            match deliverer.recorder.store().remove(&uid).await {
                Ok(()) => {
                    debug!(outbox = %uid, "every channel has this request's events; outbox removed");
                    let mut state = deliverer.state();
                    state.sent.retain(|(sent_uid, _), _| *sent_uid != uid);
                    state.busy.remove(&format!("deleted/{uid}"));
                }
                Err(error) => {
                    warn!(outbox = %uid, error = %error_chain(&error), "failed to remove a delivered outbox")
                }
            }
            deliverer.state().busy.remove(&format!("remove/{uid}"));
        });
    }

    /// Writes the channel's status when it changed, at most every [`STATUS_EVERY`].
    fn spawn_status(self: &Arc<Self>, channel: Arc<NotificationChannel>, backlog: usize) {
        let name = channel.name_any();
        let status = {
            let mut state = self.state();
            let channel_state = state.channels.entry(name.clone()).or_default();
            let status = status_of(&channel, channel_state, backlog);
            let due = channel_state
                .status_written
                .is_none_or(|at| at.elapsed() >= STATUS_EVERY);
            let changed = channel_state.written.as_ref() != Some(&status)
                && channel.status.as_ref().map(without_times) != Some(without_times(&status));
            if !due || !changed {
                return;
            }
            channel_state.status_written = Some(Instant::now());
            channel_state.written = Some(status.clone());
            status
        };
        let api = Api::<NotificationChannel>::all(self.client.clone());
        tokio::spawn(async move {
            let patch = serde_json::json!({"status": status});
            if let Err(error) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                debug!(%name, error = %error_chain(&error), "failed to write a channel's status");
            }
        });
    }
}

/// The status to show for a channel.
fn status_of(
    channel: &NotificationChannel,
    state: &ChannelState,
    backlog: usize,
) -> NotificationChannelStatus {
    let previous = channel.status.clone().unwrap_or_default();
    let (ready, reason, message) = if channel.spec.suspend {
        (
            "False",
            "Suspended".to_owned(),
            "delivery is suspended".to_owned(),
        )
    } else if let Some((reason, message)) = &state.last_error {
        ("False", reason.clone(), message.clone())
    } else if state.last_delivery.is_some() || backlog == 0 {
        (
            "True",
            "Delivering".to_owned(),
            "deliveries are acknowledged".to_owned(),
        )
    } else {
        (
            "Unknown",
            "Waiting".to_owned(),
            "nothing delivered yet".to_owned(),
        )
    };
    let transition = previous
        .conditions
        .iter()
        .find(|condition| condition.type_ == "Ready" && condition.status == ready)
        .map_or_else(
            || Time(Timestamp::now()),
            |condition| condition.last_transition_time.clone(),
        );
    NotificationChannelStatus {
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: ready.into(),
            reason,
            message,
            last_transition_time: transition,
            observed_generation: channel.metadata.generation,
        }],
        last_delivery_time: state
            .last_delivery
            .map(Time)
            .or(previous.last_delivery_time),
        last_error: state
            .last_error
            .as_ref()
            .map(|(_, message)| message.clone()),
        backlog: i64::try_from(backlog).unwrap_or(i64::MAX),
        delivered: state.delivered,
        observed_generation: channel.metadata.generation,
    }
}

/// A status without its times, to tell whether anything but the clock changed.
fn without_times(status: &NotificationChannelStatus) -> NotificationChannelStatus {
    let mut status = status.clone();
    status.last_delivery_time = None;
    for condition in &mut status.conditions {
        condition.last_transition_time = Time(Timestamp::UNIX_EPOCH);
    }
    status
}

/// The wait after `failures` failed deliveries to a channel: doubling from 0.5 s, with
/// jitter, up to five minutes.
/// The wait after a channel's `failures`-th failure in a row: exponential, jittered per
/// channel, at most [`CHANNEL_MAX_BACKOFF`], so that a channel back from a long outage gets
/// its backlog within a minute.
fn backoff(channel: &str, failures: u32) -> Duration {
    crate::retry::delay(channel, i32::try_from(failures).unwrap_or(i32::MAX), None)
        .min(CHANNEL_MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn a_healthy_channel_takes_several_deliveries_a_failing_one_a_single_probe() {
        let now = Instant::now();
        let mut channel = ChannelState::default();
        let started: Vec<u32> = (0..PER_CHANNEL + 2)
            .filter_map(|_| channel.start(now))
            .collect();
        assert_eq!(started.len(), PER_CHANNEL, "at most {PER_CHANNEL} at once");
        // All of them fail together: that is one failure, not eight.
        for failures_at_start in started {
            channel.failed("c", failures_at_start, None, now);
        }
        assert_eq!(channel.failures, 1);
        assert_eq!(channel.in_flight, 0);
        assert_eq!(channel.start(now), None, "backing off");
        let later = now + Duration::from_secs(61);
        assert_eq!(channel.start(later), Some(1), "one probe");
        assert_eq!(channel.start(later), None, "only one probe at a time");
        channel.succeeded(Timestamp::now());
        assert_eq!(channel.failures, 0);
        assert!(channel.start(later).is_some());
        assert!(
            channel.start(later).is_some(),
            "healthy again: several at once"
        );
    }

    #[test]
    fn a_long_outage_backs_off_to_a_minute_but_retry_after_is_honoured_whatever_its_length() {
        let now = Instant::now();
        let mut channel = ChannelState::default();
        let mut wait = Duration::ZERO;
        for _ in 0..40 {
            let failures = channel.start(now + wait + Duration::from_secs(1)).unwrap();
            wait += channel.failed("c", failures, None, now + wait);
        }
        assert_eq!(channel.failures, 40);
        assert!(
            backoff("c", channel.failures) <= CHANNEL_MAX_BACKOFF,
            "probed at least once a minute"
        );
        let failures = channel.failures;
        channel.in_flight = 1;
        let told = channel.failed("c", failures, Some(Duration::from_secs(3600)), now);
        assert_eq!(told, Duration::from_secs(3600));
    }
}
