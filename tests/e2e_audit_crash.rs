//! Delivery that loses nothing: a burst of 30 request lifecycles while the operator (built
//! with the `failpoints` feature) is killed again and again, by failpoints between recording a
//! transition and delivering it (`audit-after-record`) and between delivering one and marking
//! it delivered (`audit-after-send`), and by SIGKILL from outside at random moments, while the
//! sink fails a third of all deliveries. A third of the requests are deleted right after they
//! expire. Afterwards every transition of every request arrived at least once, each id names
//! one transition, order per request held, and the channel owes nothing. The delivery latency
//! over the burst (transition to receiver, p50 and p99) is printed for the record.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use jit_operator::crd::v1alpha1::{AccessRequest, NotificationChannel, Phase, annotations};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, PostParams},
};
use serde_json::{Value, json};
use support::{
    TestEnv, eventually_within,
    operator::Operator,
    phase,
    receiver::{Receiver, channel, routed_policy},
};

const REQUESTS: usize = 30;
/// How long the burst may take with the operator down half the time.
const BURST_LIMIT: Duration = Duration::from_secs(300);

/// Operators started one after another, each killed after a few seconds unless a failpoint
/// killed it first.
struct Churn {
    stop: Arc<AtomicBool>,
    /// Failpoint crashes, kills, and the logs of operators that exited otherwise.
    thread: JoinHandle<(usize, usize, Vec<String>)>,
}

impl Churn {
    /// Starts the churn once a first operator (without failpoints) has registered the
    /// webhooks, as an installed chart has: from then on they are down at times, never
    /// missing.
    fn start() -> Self {
        Operator::start("jit-operator").kill();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut crashes, mut kills, mut unexpected) = (0, 0, Vec::new());
            for generation in 0.. {
                // Alternate the failpoints so that both moments are hit often.
                let failpoints = if generation % 2 == 0 {
                    "audit-after-record=10%return"
                } else {
                    "audit-after-send=10%return"
                };
                let operator = Operator::launch("jit-operator", &[("FAILPOINTS", failpoints)]);
                // Until the guard has started it, the operator is not running yet.
                let launched = Instant::now();
                while !operator.is_running() && launched.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let lifetime = Duration::from_millis(rand::random_range(2_000..8_000));
                let started = Instant::now();
                while started.elapsed() < lifetime
                    && operator.is_running()
                    && !stopping.load(Ordering::Acquire)
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                if operator.is_running() {
                    operator.kill();
                    kills += 1;
                } else {
                    let log = std::fs::read_to_string(&operator.log).unwrap();
                    if !log.contains("failpoint: crashing") {
                        unexpected.push(log);
                    }
                    crashes += 1;
                }
                if stopping.load(Ordering::Acquire) {
                    break;
                }
            }
            (crashes, kills, unexpected)
        });
        Self { stop, thread }
    }

    /// Stops the churn with no operator left running; returns (failpoint crashes, kills).
    fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Release);
        let (crashes, kills, unexpected) = self.thread.join().unwrap();
        assert!(
            unexpected.is_empty(),
            "operators exited, but not at a failpoint:\n{}",
            unexpected.join("\n---\n")
        );
        (crashes, kills)
    }
}

/// Retries `write` until the API server takes it: while the operator is down, its webhooks
/// refuse every write to requests.
async fn until_accepted<T, Fut>(what: &str, mut write: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let deadline = Instant::now() + BURST_LIMIT;
    loop {
        match write().await {
            Ok(value) => return value,
            // Only the webhooks being down (500, or no answer) is waited out.
            Err(kube::Error::Api(status)) if status.code != 500 => panic!("{what}: {status:?}"),
            Err(error) => assert!(Instant::now() < deadline, "{what}: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn ordinal_of(event: &Value) -> u64 {
    event["id"]
        .as_str()
        .unwrap()
        .rsplit_once('.')
        .unwrap()
        .1
        .parse()
        .unwrap()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::test]
async fn a_burst_through_crashes_and_a_flaky_sink_delivers_every_transition_in_order() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start();
    receiver
        .control(json!({"fail_ratio": 0.33, "status": 503}))
        .await;
    let channel = channel(&env, "cloudevents", Some(&receiver.url)).await;
    let policy = routed_policy(&env, &channel, 1).await;
    let churn = Churn::start();
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    let as_alice = Api::<AccessRequest>::namespaced(env.alice.clone(), &env.namespace);
    let as_bob = Api::<AccessRequest>::namespaced(env.bob.clone(), &env.namespace);

    let names: Vec<String> = (0..REQUESTS)
        .map(|index| format!("burst-{index}"))
        .collect();
    let mut uids = HashMap::new();
    for name in &names {
        let request: AccessRequest = serde_json::from_value(json!({
            "apiVersion": "jit.dev/v1alpha1", "kind": "AccessRequest",
            "metadata": {"name": name},
            "spec": {"policy": policy, "role": "view", "duration": "6s", "reason": "burst"},
        }))
        .unwrap();
        until_accepted(&format!("alice requests {name}"), || async {
            match as_alice.create(&PostParams::default(), &request).await {
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                other => other.map(|_| ()),
            }
        })
        .await;
        uids.insert(
            name.clone(),
            requests.get(name).await.unwrap().uid().unwrap(),
        );
    }
    for name in &names {
        let patch = json!({"metadata": {"annotations": {annotations::APPROVE: "burst"}}});
        let current = requests.get(name).await.unwrap();
        assert_ne!(
            phase(&current),
            Some(Phase::Failed),
            "{name} failed: {:#?}",
            current.status
        );
        until_accepted(&format!("bob approves {name}"), || async {
            as_bob
                .patch(
                    name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await
        })
        .await;
    }

    // Every request runs its course; every third is deleted as soon as it has expired. The
    // last status seen says how many transitions each one has.
    let mut transitions: BTreeMap<String, u64> = BTreeMap::new();
    let deadline = Instant::now() + BURST_LIMIT;
    while transitions.len() < REQUESTS {
        assert!(
            Instant::now() < deadline,
            "requests still running after {BURST_LIMIT:?}: {:?}",
            names
                .iter()
                .filter(|name| !transitions.contains_key(&uids[*name]))
                .collect::<Vec<_>>()
        );
        for (index, name) in names.iter().enumerate() {
            let uid = &uids[name];
            if transitions.contains_key(uid) {
                continue;
            }
            let request = requests.get(name).await.unwrap();
            if phase(&request) != Some(Phase::Expired) {
                continue;
            }
            let status = request.status.unwrap();
            let count =
                u64::try_from(status.timeline_offset).unwrap() + status.timeline.len() as u64;
            if index.is_multiple_of(3) {
                until_accepted(&format!("deleting {name}"), || async {
                    requests.delete(name, &DeleteParams::default()).await
                })
                .await;
                // The `deleted` event comes after the request's own.
                transitions.insert(uid.clone(), count + 1);
            } else {
                transitions.insert(uid.clone(), count);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (crashes, kills) = churn.stop();
    assert!(
        crashes > 0,
        "no audit failpoint fired; the test did not test crashes"
    );

    // A clean operator and a healthy sink: the rest of the backlog drains.
    let _operator = Operator::start("jit-operator");
    receiver.control(json!({"fail_ratio": 0.0})).await;
    let expected = &transitions;
    let receiver = &receiver;
    // Every transition arrives; when one never does, say which (and what the channel says).
    let deadline = Instant::now() + BURST_LIMIT;
    let events = loop {
        let events = receiver.events();
        let missing: Vec<String> = expected
            .iter()
            .flat_map(|(uid, count)| (0..*count).map(move |ordinal| format!("{uid}.{ordinal}")))
            .filter(|id| !events.iter().any(|event| event["id"] == id.as_str()))
            .collect();
        if missing.is_empty() {
            break events;
        }
        if Instant::now() > deadline {
            let channel = Api::<NotificationChannel>::all(env.admin.clone())
                .get(&channel)
                .await
                .ok()
                .and_then(|channel| channel.status);
            panic!(
                "not every transition arrived within {BURST_LIMIT:?}: {} missing, e.g. {:?}; \
                 the channel's status: {channel:#?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    let mut by_id: HashMap<String, Vec<&Value>> = HashMap::new();
    for event in &events {
        by_id
            .entry(event["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(event);
    }
    for (id, copies) in &by_id {
        let (uid, _) = id.rsplit_once('.').unwrap();
        let count = expected
            .get(uid)
            .unwrap_or_else(|| panic!("an event about no request of the burst: {id}"));
        assert!(
            ordinal_of(copies[0]) < *count,
            "an id past the last transition: {id}"
        );
        for copy in copies {
            assert_eq!(copy["type"], copies[0]["type"], "{id} names one transition");
            assert_eq!(copy["time"], copies[0]["time"], "{id} names one transition");
            assert_eq!(copy["data"], copies[0]["data"], "{id} names one transition");
        }
    }
    for uid in expected.keys() {
        let ordinals: Vec<u64> = events
            .iter()
            .filter(|event| event["data"]["request"]["uid"] == uid.as_str())
            .map(ordinal_of)
            .collect();
        assert!(
            ordinals.windows(2).all(|pair| pair[0] <= pair[1]),
            "events of {uid} out of order: {ordinals:?}"
        );
        let last = events
            .iter()
            .filter(|event| event["data"]["request"]["uid"] == uid.as_str())
            .max_by_key(|event| ordinal_of(event))
            .unwrap();
        let deleted = last["type"] == "dev.jit.accessrequest.deleted.v1";
        let name = last["data"]["request"]["name"].as_str().unwrap();
        let index: usize = name.trim_start_matches("burst-").parse().unwrap();
        assert_eq!(
            deleted,
            index.is_multiple_of(3),
            "{name}: last event {}",
            last["type"]
        );
    }
    assert!(receiver.rejects().is_empty(), "{:?}", receiver.rejects());

    let channels = Api::<NotificationChannel>::all(env.admin.clone());
    let (channels, channel) = (&channels, &channel);
    eventually_within(
        Duration::from_secs(60),
        "the channel owes nothing",
        || async move {
            let status = channels.get(channel).await.unwrap().status?;
            (status.backlog == 0 && status.observed_generation.is_some()).then_some(())
        },
    )
    .await;

    // For the record: how long a transition took to reach the sink over the burst. Event times
    // have whole seconds, so each figure is late by up to a second.
    let mut latencies: Vec<f64> = by_id
        .values()
        .map(|copies| {
            let first = copies
                .iter()
                .map(|copy| {
                    copy["received"]
                        .as_str()
                        .unwrap()
                        .parse::<jiff::Timestamp>()
                        .unwrap()
                })
                .min()
                .unwrap();
            let time: jiff::Timestamp = copies[0]["time"].as_str().unwrap().parse().unwrap();
            first.duration_since(time).as_secs_f64()
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let duplicates = events.len() - by_id.len();
    println!(
        "burst: {} transitions of {REQUESTS} requests, {} deliveries ({duplicates} repeated), \
         {crashes} failpoint crashes, {kills} kills; latency p50 {:.1}s p99 {:.1}s max {:.1}s",
        by_id.len(),
        events.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().unwrap(),
    );
}
