//! The driver's order of effects, in milliseconds: one reconcile against a mocked API server
//! (tower-test, as kube-rs controller-rs does) and an in-memory provider, both writing into
//! one log. Each test is one scenario and checks the sequence a crash must be able to stop
//! anywhere in: intent before the provider call, the finalizer released after the status.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use hyper::{Request, Response};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Client, ResourceExt, client::Body, core::DeserializeGuard, runtime::controller::Action,
};
use serde_json::{Value, json};

use super::{Context, reconcile_steps};
use crate::{
    crd::v1alpha1::{AccessRequest, Decision, FINALIZER, Grant, Phase, annotations},
    fixtures,
    metrics::Metrics,
    provider::{self, GrantRecord, GrantSpec, GrantState, Provider, Providers, RequestRef},
    seal::Sealer,
    target::Target,
};

/// What happened, in order: API calls as `VERB what`, provider calls by name.
type Log = Arc<Mutex<Vec<String>>>;

fn entries(log: &Log) -> Vec<String> {
    log.lock().map(|log| log.clone()).unwrap_or_default()
}

/// Where `entry` first stands in the log; panics (a failed test) when it is not there.
fn position(log: &[String], entry: &str) -> usize {
    log.iter()
        .position(|logged| logged == entry)
        .unwrap_or_else(|| panic!("{entry:?} not in {log:#?}"))
}

/// A provider that keeps its grants in memory.
struct InMemory {
    log: Log,
    held: Mutex<HashSet<String>>,
    /// The grant answers this error (`retryable`) instead of granting.
    refuse: Option<bool>,
    /// How long a grant takes.
    takes: Mutex<Duration>,
}

#[async_trait]
impl Provider for InMemory {
    fn target(&self) -> Target {
        Target::Kubernetes
    }

    async fn grant(&self, grant: &GrantSpec<'_>) -> Result<GrantRecord, provider::Error> {
        self.log.lock().unwrap().push("grant".into());
        let takes = *self.takes.lock().unwrap();
        tokio::time::sleep(takes).await;
        if let Some(retryable) = self.refuse {
            let failure = if retryable {
                provider::Failure::Throttled {
                    retry_after: Some(Duration::from_secs(30)),
                }
            } else {
                provider::Failure::Refused
            };
            return Err(provider::Error::cloud(
                Target::Kubernetes,
                "grant",
                "no",
                failure,
            ));
        }
        self.held.lock().unwrap().insert(grant.request.uid.clone());
        Ok(GrantRecord {
            target: Target::Kubernetes,
            reference: "RoleBinding prod/jit".into(),
            cloud_enforced_expiry: false,
            activity_lookup: None,
        })
    }

    async fn revoke(&self, request: &RequestRef) -> Result<(), provider::Error> {
        self.log.lock().unwrap().push("revoke".into());
        self.held.lock().unwrap().remove(&request.uid);
        Ok(())
    }

    async fn verify(&self, grant: &GrantSpec<'_>) -> Result<GrantState, provider::Error> {
        self.log.lock().unwrap().push("verify".into());
        Ok(if self.held.lock().unwrap().contains(&grant.request.uid) {
            GrantState::Present
        } else {
            GrantState::Missing
        })
    }

    async fn list_managed(&self) -> Result<Vec<String>, provider::Error> {
        Ok(self.held.lock().unwrap().iter().cloned().collect())
    }
}

/// The API server as far as one reconcile needs it: the request and its policy, status and
/// finalizer patches applied to the stored request, Events accepted.
struct ApiServer {
    log: Log,
    request: Arc<Mutex<Value>>,
    policy: Value,
    /// The statuses written, in order.
    statuses: Arc<Mutex<Vec<Value>>>,
}

impl ApiServer {
    fn start(self) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let response = self.answer(request).await;
                respond.send_response(response);
            }
        });
        Client::new(service, "default")
    }

    async fn answer(&self, request: Request<Body>) -> Response<Body> {
        let method = request.method().as_str().to_owned();
        let path = request.uri().path().to_owned();
        let body = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let (what, reply) = if path.contains("/accesspolicies/") {
            ("policy".to_owned(), self.policy.clone())
        } else if path.ends_with("/status") {
            let mut stored = self.request.lock().unwrap();
            stored["status"] = body["status"].clone();
            next_version(&mut stored);
            self.statuses.lock().unwrap().push(body["status"].clone());
            ("status".to_owned(), stored.clone())
        } else if path.contains("/accessrequests/") && method == "PATCH" {
            // The JSON patch: test the finalizers, then set them.
            let mut stored = self.request.lock().unwrap();
            stored["metadata"]["finalizers"] = body[1]["value"].clone();
            next_version(&mut stored);
            ("finalizers".to_owned(), stored.clone())
        } else if path.contains("/accessrequests/") {
            ("request".to_owned(), self.request.lock().unwrap().clone())
        } else if path.contains("/events") {
            (
                format!("event {}", body["reason"].as_str().unwrap_or("")),
                body,
            )
        } else {
            (path.clone(), json!({}))
        };
        self.log.lock().unwrap().push(format!("{method} {what}"));
        Response::builder()
            .status(if method == "POST" { 201 } else { 200 })
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap()
    }
}

/// As the API server does: each change of the request gets a resourceVersion of its own.
fn next_version(stored: &mut Value) {
    let version = stored["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|version| version.parse::<u64>().ok())
        .unwrap_or(1);
    stored["metadata"]["resourceVersion"] = json!((version + 1).to_string());
}

/// One scenario: the stored request, what the provider holds, and how it answers.
struct Scenario {
    log: Log,
    request: Arc<Mutex<Value>>,
    statuses: Arc<Mutex<Vec<Value>>>,
    provider: Arc<InMemory>,
    context: Arc<Context>,
}

impl Scenario {
    fn new(request: AccessRequest, holds: bool, refuse: Option<bool>) -> Self {
        let log = Log::default();
        let stored = Arc::new(Mutex::new(serde_json::to_value(&request).unwrap()));
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let client = ApiServer {
            log: log.clone(),
            request: stored.clone(),
            policy: serde_json::to_value(fixtures::policy()).unwrap(),
            statuses: statuses.clone(),
        }
        .start();
        let uid = request.metadata.uid.clone().unwrap_or_default();
        let provider = Arc::new(InMemory {
            log: log.clone(),
            held: Mutex::new(if holds {
                HashSet::from([uid])
            } else {
                HashSet::new()
            }),
            refuse,
            takes: Mutex::default(),
        });
        let context = Arc::new(Context::new(
            client,
            Providers::new([provider.clone() as Arc<dyn Provider>]),
            Some("test".into()),
            Duration::from_secs(300),
            Metrics::shared(),
            sealer(),
        ));
        Self {
            log,
            request: stored,
            statuses,
            provider,
            context,
        }
    }

    async fn reconcile(&self) -> Option<Duration> {
        // As the controller's cache hands it over.
        let cached: super::CachedRequest =
            serde_json::from_value(self.request.lock().unwrap().clone()).unwrap();
        reconcile_steps(&cached, self.context.clone())
            .await
            .unwrap()
    }

    fn stored(&self) -> AccessRequest {
        serde_json::from_value(self.request.lock().unwrap().clone()).unwrap()
    }

    fn held(&self) -> bool {
        !self.provider.held.lock().unwrap().is_empty()
    }
}

fn sealer() -> Sealer {
    Sealer::new(b"driver tests key, thirty-two bytes")
}

/// alice's request made a minute ago and approved by bob (sealed, as admission does).
fn approved() -> AccessRequest {
    let mut request = fixtures::request();
    let now = Timestamp::now();
    request.metadata.creation_timestamp = Some(Time(now - jiff::SignedDuration::from_secs(60)));
    let mut record = fixtures::decision("bob", &[], Decision::Approved, "2026-01-01T00:00:00Z");
    record.time = Time(now);
    let uid = request.metadata.uid.clone().unwrap_or_default();
    record.seal = Some(sealer().seal_decision(&uid, &record));
    request.metadata.annotations = Some(
        [(
            annotations::DECISIONS.to_owned(),
            serde_json::to_string(&[record]).unwrap(),
        )]
        .into(),
    );
    request.metadata.finalizers = Some(vec![FINALIZER.into()]);
    request
}

/// An approved request granted until `expires_at` (sealed window), with the finalizer.
fn active(expires_at: Timestamp) -> AccessRequest {
    let mut request = approved();
    let uid = request.metadata.uid.clone().unwrap_or_default();
    let granted_at = Time(expires_at - jiff::SignedDuration::from_secs(3600));
    let expires = Time(expires_at);
    let status = request.status.get_or_insert_with(Default::default);
    status.phase = Some(Phase::Active);
    status.seal = Some(sealer().seal_window(&uid, &granted_at, &expires));
    status.granted_at = Some(granted_at);
    status.expires_at = Some(expires);
    status.grant = Some(Grant {
        provider: "kubernetes".into(),
        reference: "RoleBinding prod/jit".into(),
        cloud_enforced_expiry: false,
    });
    request
}

/// Whether a reconcile asked to look again in `seconds`, less the time it took itself.
fn about(again: Option<Duration>, seconds: u64) -> bool {
    again.is_some_and(|again| {
        again <= Duration::from_secs(seconds) && again > Duration::from_secs(seconds - 1)
    })
}

fn phase(status: &Value) -> &str {
    status["phase"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_grant_writes_its_intent_before_the_provider_call_and_the_status_after() {
    let scenario = Scenario::new(approved(), false, None);
    let action = scenario.reconcile().await;
    let log = entries(&scenario.log);
    let statuses = scenario.statuses.lock().unwrap().clone();
    assert_eq!(
        &log[..6],
        [
            "GET request",
            "GET policy",
            "PATCH status",
            "grant",
            "PATCH status",
            "POST event Requested",
        ],
        "{log:#?}"
    );
    // The first write is the intent, with the window fixed and sealed; the second the result.
    assert_eq!(statuses[0]["intent"]["action"], "Grant");
    assert!(statuses[0]["expiresAt"].is_string() && statuses[0]["seal"].is_string());
    assert_eq!(phase(&statuses[1]), "Active");
    assert!(statuses[1]["intent"].is_null());
    assert_eq!(statuses[1]["expiresAt"], statuses[0]["expiresAt"]);
    assert!(log.contains(&"POST event Granted".to_owned()));
    assert!(scenario.held());
    assert!(about(action, 300), "{action:?}");
}

#[tokio::test]
async fn the_controllers_own_writes_seen_through_the_watch_do_not_wake_it_again() {
    let scenario = Scenario::new(approved(), false, None);
    let key = "team-a/alice-view";
    let before = scenario.stored().metadata.resource_version;
    // As the watch reports the request before the reconcile: it wakes the controller.
    assert!(
        scenario
            .context
            .wakes
            .wakes(key, before.as_deref(), Some(1))
    );
    scenario.reconcile().await;
    let after = scenario.stored().metadata.resource_version;
    assert_ne!(before, after, "the grant wrote the request");
    // Each change the reconcile made, as the watch then reports it: none wakes it again, but
    // a change someone else made in between (another version) does.
    let written: Vec<String> = (2..=after.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0))
        .map(|version: u64| version.to_string())
        .collect();
    assert!(written.len() >= 2, "intent and status: {written:?}");
    for (hash, version) in written.iter().enumerate() {
        assert!(
            !scenario
                .context
                .wakes
                .wakes(key, Some(version), Some(hash as u64 + 2)),
            "its own change {version} woke it"
        );
    }
    assert!(scenario.context.wakes.wakes(key, Some("100"), Some(100)));
}

#[tokio::test]
async fn the_next_look_is_timed_from_the_decision_not_from_the_end_of_a_slow_grant() {
    let scenario = Scenario::new(approved(), false, None);
    *scenario.provider.takes.lock().unwrap() = Duration::from_millis(400);
    let again = scenario.reconcile().await;
    assert!(
        again.is_some_and(|again| again <= Duration::from_millis(299_600)),
        "the grant's 400 ms are taken off: {again:?}"
    );
}

#[tokio::test]
async fn woken_by_its_own_writes_alone_it_keeps_its_timer_and_reads_nothing() {
    let scenario = Scenario::new(approved(), false, None);
    let key = "team-a/alice-view";
    let wakes = &scenario.context.wakes;
    // The watch reports the grant's two writes (versions 2 and 3 here) before their
    // responses arrive: they pass, and wake the controller again once the grant is done.
    assert!(wakes.wakes(key, Some("2"), Some(2)));
    assert!(wakes.wakes(key, Some("3"), Some(3)));
    let granted = scenario.reconcile().await;
    assert!(about(granted, 300), "{granted:?}");
    let calls = entries(&scenario.log).len();
    let cached = || -> Arc<super::CachedRequest> {
        Arc::new(serde_json::from_value(scenario.request.lock().unwrap().clone()).unwrap())
    };
    let again = super::reconcile(cached(), scenario.context.clone())
        .await
        .unwrap();
    assert_eq!(
        entries(&scenario.log).len(),
        calls,
        "no read: {:#?}",
        entries(&scenario.log)
    );
    assert_ne!(again, Action::await_change(), "its timer kept");
    // Anything else (its policy, its grant at the target) makes it look.
    assert!(
        wakes.wakes(key, Some("3"), Some(4)),
        "a relist, content changed"
    );
    wakes.woken_otherwise(key);
    super::reconcile(cached(), scenario.context.clone())
        .await
        .unwrap();
    assert_eq!(entries(&scenario.log)[calls], "GET request");
}

#[tokio::test]
async fn an_expiry_revokes_writes_the_status_then_releases_the_finalizer() {
    let expired = active(Timestamp::now() - jiff::SignedDuration::from_secs(1));
    let scenario = Scenario::new(expired, true, None);
    let action = scenario.reconcile().await;
    let log = entries(&scenario.log);
    let intent = position(&log, "PATCH status");
    let revoke = position(&log, "revoke");
    let result = intent + 1 + position(&log[intent + 1..], "PATCH status");
    assert!(intent < revoke && revoke < result, "{log:#?}");
    let released = position(&log, "PATCH finalizers");
    assert!(result < position(&log, "POST event Expired"));
    assert!(
        position(&log, "POST event Expired") < released,
        "released last, in the same pass: {log:#?}"
    );
    assert_eq!(
        log.iter().filter(|entry| *entry == "GET request").count(),
        1,
        "the request read once: {log:#?}"
    );
    assert!(!scenario.held());
    let stored = scenario.stored();
    let status = stored.status.unwrap_or_default();
    assert_eq!(status.phase, Some(Phase::Expired));
    assert!(status.intent.is_none());
    assert_eq!(stored.metadata.finalizers, Some(Vec::new()));
    // Ended and released: looked at again only when something changes.
    assert_eq!(action, None);
}

#[tokio::test]
async fn while_revokes_are_behind_a_revoke_leaves_its_events_and_release_to_a_later_look() {
    let expired = active(Timestamp::now() - jiff::SignedDuration::from_secs(1));
    let scenario = Scenario::new(expired, true, None);
    // Sixteen expiry revokes began a second late just now: a burst.
    for _ in 0..16 {
        scenario
            .context
            .followups
            .revoke_began(Duration::from_secs(1), std::time::Instant::now());
    }
    let again = scenario.reconcile().await;
    let log = entries(&scenario.log);
    assert!(!scenario.held(), "revoked at once: {log:#?}");
    assert_eq!(
        phase(scenario.statuses.lock().unwrap().last().unwrap()),
        "Expired"
    );
    assert!(
        !log.iter()
            .any(|entry| entry.starts_with("POST event") || entry == "PATCH finalizers"),
        "no Event and no release yet: {log:#?}"
    );
    assert!(again.is_some(), "a backstop look is scheduled");
    assert_eq!(scenario.context.followups.waiting(), 1);

    // The later look: the Events held, then the release; nothing revoked or written again.
    scenario.log.lock().unwrap().clear();
    assert_eq!(scenario.reconcile().await, None);
    let log = entries(&scenario.log);
    assert!(
        position(&log, "POST event Expired") < position(&log, "PATCH finalizers"),
        "{log:#?}"
    );
    assert!(
        !log.iter()
            .any(|entry| entry == "revoke" || entry == "PATCH status")
    );
    assert_eq!(scenario.stored().metadata.finalizers, Some(Vec::new()));
    assert_eq!(scenario.context.followups.waiting(), 0);
}

#[tokio::test]
async fn an_ended_request_whose_finalizer_is_released_is_not_read_again() {
    let mut ended = active(Timestamp::now() - jiff::SignedDuration::from_secs(60));
    let status = ended.status.get_or_insert_with(Default::default);
    status.phase = Some(Phase::Expired);
    ended.metadata.finalizers = None;
    let scenario = Scenario::new(ended.clone(), false, None);
    assert_eq!(scenario.reconcile().await, None);
    assert!(
        entries(&scenario.log).is_empty(),
        "{:#?}",
        entries(&scenario.log)
    );

    // Still holding the finalizer, or being deleted: read and handled as ever.
    let mut holding = ended.clone();
    holding.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let scenario = Scenario::new(holding, false, None);
    scenario.reconcile().await;
    assert_eq!(entries(&scenario.log)[0], "GET request");
    let mut deleting = ended;
    deleting.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    let scenario = Scenario::new(deleting, false, None);
    scenario.reconcile().await;
    assert_eq!(entries(&scenario.log)[0], "GET request");
}

#[tokio::test]
async fn a_deletion_revokes_then_writes_the_status_then_releases_the_finalizer() {
    let mut deleted = active(Timestamp::now() + jiff::SignedDuration::from_secs(600));
    deleted.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    let scenario = Scenario::new(deleted, true, None);
    let action = scenario.reconcile().await;
    let log = entries(&scenario.log);
    let intent = position(&log, "PATCH status");
    let revoke = position(&log, "revoke");
    let released = position(&log, "PATCH finalizers");
    assert!(intent < revoke, "intent before the revoke: {log:#?}");
    let result = intent + 1 + position(&log[intent + 1..], "PATCH status");
    assert!(revoke < result && result < released, "{log:#?}");
    assert!(position(&log, "POST event Revoked") < released);
    assert!(!scenario.held());
    let stored = scenario.stored();
    assert_eq!(
        stored.status.and_then(|status| status.phase),
        Some(Phase::Revoked)
    );
    assert_eq!(stored.metadata.finalizers, Some(Vec::new()));
    assert_eq!(action, None);
}

#[tokio::test]
async fn a_grant_resumed_after_a_crash_keeps_the_window_its_intent_recorded() {
    // The operator wrote its intent, granted, and crashed before the status said so.
    let first = Scenario::new(approved(), false, None);
    first.reconcile().await;
    let intent = first.statuses.lock().unwrap()[0].clone();
    let mut interrupted = approved();
    interrupted.status = serde_json::from_value(intent.clone()).ok();
    let restarted = Scenario::new(interrupted, true, None);
    restarted.reconcile().await;
    let log = entries(&restarted.log);
    assert_eq!(
        log.iter().filter(|entry| *entry == "grant").count(),
        1,
        "granted (adopted) once: {log:#?}"
    );
    assert!(position(&log, "grant") < position(&log, "POST event Granted"));
    let status = restarted.stored().status.unwrap_or_default();
    assert_eq!(status.phase, Some(Phase::Active));
    assert!(status.intent.is_none());
    assert_eq!(
        serde_json::to_value(&status.expires_at).unwrap(),
        intent["expiresAt"],
        "the window recorded with the intent is kept, not moved"
    );
}

#[tokio::test]
async fn a_failing_grant_is_shown_and_backed_off_and_a_refused_one_is_revoked() {
    let throttled = Scenario::new(approved(), false, Some(true));
    let action = throttled.reconcile().await;
    let log = entries(&throttled.log);
    assert_eq!(
        log.iter()
            .filter(|entry| *entry == "PATCH finalizers")
            .count(),
        0
    );
    assert!(!log.contains(&"revoke".to_owned()), "{log:#?}");
    let status = throttled.stored().status.unwrap_or_default();
    assert_eq!(status.phase, None, "still pending: the grant is retried");
    assert_eq!(status.failures, 1);
    assert!(
        status
            .conditions
            .iter()
            .any(|condition| condition.type_ == "GrantFailing" && condition.status == "True")
    );
    // The provider asked for 30 s: the retry comes no sooner.
    assert!(about(action, 30), "{action:?}");
    assert!(log.contains(&"POST event GrantFailing".to_owned()));

    let refused = Scenario::new(approved(), false, Some(false));
    refused.reconcile().await;
    let log = entries(&refused.log);
    assert!(
        position(&log, "grant") < position(&log, "revoke"),
        "a refused grant is revoked: {log:#?}"
    );
    let status = refused.stored().status.unwrap_or_default();
    assert_eq!(status.phase, Some(Phase::Failed));
    assert!(log.contains(&"POST event Failed".to_owned()));
}

/// The controller looks again at any change but the activity recorder's and the version.
#[test]
fn activity_and_version_changes_do_not_wake_the_controller_and_others_do() {
    use crate::crd::v1alpha1::Activity;
    let guarded = |request: &AccessRequest| DeserializeGuard(Ok(request.clone()));
    let active = fixtures::active_request();
    let before = super::reconcile_relevant(&guarded(&active));
    assert!(before.is_some());

    let mut used = active.clone();
    used.metadata.resource_version = Some("999".into());
    if let Some(status) = used.status.as_mut() {
        status.activity = Some(Activity {
            actions: 3,
            ..Activity::default()
        });
    }
    assert_eq!(super::reconcile_relevant(&guarded(&used)), before);

    let mut revoked = active.clone();
    revoked
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(annotations::REVOKE.to_owned(), "done".to_owned());
    assert_ne!(super::reconcile_relevant(&guarded(&revoked)), before);

    let mut expired = active.clone();
    if let Some(status) = expired.status.as_mut() {
        status.phase = Some(Phase::Expired);
    }
    assert_ne!(super::reconcile_relevant(&guarded(&expired)), before);

    let mut deleting = active;
    deleting.metadata.deletion_timestamp = Some(Time(fixtures::at("2026-01-01T00:00:00Z")));
    assert_ne!(super::reconcile_relevant(&guarded(&deleting)), before);
}

/// The controller's cache holds a small record of each request; everything read from the
/// cache reads the same from it as from the whole request.
#[test]
fn the_cached_record_answers_what_the_cache_is_asked_as_the_whole_request_does() {
    let mut ended = active(Timestamp::now() - jiff::SignedDuration::from_secs(60));
    ended.spec.reason = Some("x".repeat(10_000));
    ended.metadata.labels = Some([("padding".to_owned(), "y".repeat(60))].into());
    ended.metadata.finalizers = None;
    let status = ended.status.get_or_insert_with(Default::default);
    status.phase = Some(Phase::Expired);
    status.timeline.push(crate::crd::v1alpha1::TimelineEntry {
        time: Time(Timestamp::now()),
        event: "Expired".into(),
        actor: None,
        message: Some("ran its course".into()),
    });
    let mut deleting = ended.clone();
    deleting.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    let mut held = ended.clone();
    held.metadata.finalizers = Some(vec![FINALIZER.to_owned()]);
    let cases = [
        (approved(), None),
        (ended.clone(), Some(Phase::Expired)),
        (deleting, None),
        (held, None),
    ];
    for (request, settled) in cases {
        let record = super::CachedRequest::of(&DeserializeGuard(Ok(request.clone())));
        assert_eq!(record.settled(), settled, "{:?}", request.metadata);
        assert_eq!(record.ended_at, crate::retention::ended_at(&request));
        assert_eq!(record.name_any(), request.name_any());
        assert_eq!(record.namespace(), request.namespace());
        assert_eq!(record.uid(), request.uid());
        assert_eq!(record.policy, request.spec.policy);
        assert_eq!(record.role, request.spec.role);
        assert_eq!(record.subject.as_deref(), request.spec.subject_name());
        let status = request.status.as_ref();
        let granted = status.and_then(|status| status.granted_at.as_ref());
        assert_eq!(record.granted_at, granted.map(|time| time.0));
        let expires = status.and_then(|status| status.expires_at.as_ref());
        assert_eq!(record.expires_at, expires.map(|time| time.0));
        assert!(record.labels().is_empty(), "what nothing reads is not kept");
        assert!(record.annotations().is_empty());
    }
    assert!(crate::retention::ended_at(&ended).is_some());

    // It is the request's resource, and reads from the request's JSON.
    let json = serde_json::to_value(&ended).unwrap();
    let read: super::CachedRequest = serde_json::from_value(json.clone()).unwrap();
    // (As the API server has it: times in whole seconds.)
    let ended: AccessRequest = serde_json::from_value(json).unwrap();
    assert_eq!(
        kube::runtime::reflector::ObjectRef::from_obj(&read).erase(),
        kube::runtime::reflector::ObjectRef::from_obj(&ended).erase()
    );
    assert_eq!(read, super::CachedRequest::of(&DeserializeGuard(Ok(ended))));

    // A request that does not parse is kept by name, and never acted on.
    let broken: super::CachedRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "jit.dev/v1alpha1", "kind": "AccessRequest",
        "metadata": {"name": "broken", "namespace": "team", "uid": "u"},
        "spec": "not a spec",
    }))
    .unwrap();
    assert!(broken.invalid.is_some());
    assert_eq!(broken.name_any(), "broken");
    assert_eq!(broken.settled(), None);
}
