//! Finding 4 of the security review: the operator's cache kept whole requests (labels,
//! annotations, managedFields), so padded requests cost it megabytes each. Its memory must stay
//! flat however large the requests it watches.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use jit_operator::crd::v1alpha1::{AccessRequest, Phase};
use kube::api::{Api, ListParams, PostParams};
use support::{ACT_LIMIT, TestEnv, operator::Operator, padded_request, phase, view_policy};

/// Requests created, each padded to about 210 KB as stored.
const REQUESTS: usize = 120;
const LABELS: usize = 2700;

#[tokio::test]
async fn memory_stays_flat_with_many_large_requests() {
    // The image is a static musl binary, whose allocator has no per-thread arenas; glibc's
    // (these tests run a glibc build) keeps one per thread that touched the heap, which would
    // show here as growth that is no request's. Two arenas, as in a memory-tight glibc pod.
    // The resync is the safety net, not what this measures: every request looked at again
    // each 2 s (the tests' default) would only add transient reads.
    let operator = Operator::start_with_args(
        "jit-operator",
        &["--resync-interval", "10m"],
        &[("MALLOC_ARENA_MAX", "2")],
    );
    let env = TestEnv::new().await;
    // Approval needed: the requests stay pending (and watched) without granting anything.
    let policy = view_policy(&env, 1).await;
    let requests = Api::<AccessRequest>::namespaced(env.alice.clone(), &env.namespace);
    // Warm up: one ordinary request seen through, so that start-up allocations are done.
    requests
        .create(&PostParams::default(), &padded_request(&policy, "warm", 0))
        .await
        .unwrap();
    let log = operator.log.clone();
    let all_pending = |expected: usize| {
        let requests = requests.clone();
        let log = log.clone();
        async move {
            let deadline = tokio::time::Instant::now() + ACT_LIMIT * 4;
            loop {
                let listed = requests.list(&ListParams::default()).await.unwrap();
                let pending = listed
                    .items
                    .iter()
                    .filter(|r| phase(r) == Some(Phase::Pending))
                    .count();
                if pending == expected {
                    return;
                }
                if tokio::time::Instant::now() >= deadline {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    eprintln!(
                        "operator log tail:\n{}",
                        lines[lines.len().saturating_sub(60)..].join("\n")
                    );
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{pending} of {expected} requests pending; the others: {:?}",
                    listed
                        .items
                        .iter()
                        .filter(|r| phase(r) != Some(Phase::Pending))
                        .map(|r| (r.metadata.name.clone(), r.status.clone()))
                        .collect::<Vec<_>>()
                );
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
    };
    all_pending(1).await;

    // A first batch brings the allocator to its working set (a reconcile reads each request
    // whole, briefly); a second batch as large must then cost next to nothing, since nothing of
    // a request's padding is kept.
    let batch = |first: usize| {
        let requests = requests.clone();
        let policy = policy.clone();
        async move {
            let mut stored = 0;
            for index in first..first + REQUESTS / 2 {
                let request = padded_request(&policy, &format!("padded-{index}"), LABELS);
                stored += serde_json::to_vec(&request).unwrap().len();
                requests
                    .create(&PostParams::default(), &request)
                    .await
                    .unwrap();
            }
            stored
        }
    };
    batch(0).await;
    all_pending(REQUESTS / 2 + 1).await;
    let before = operator.rss_kib();
    let stored = batch(REQUESTS / 2).await;
    all_pending(REQUESTS + 1).await;
    let after = operator.rss_kib();
    let grown = after.saturating_sub(before) * 1024;

    eprintln!(
        "{} padded requests ({stored} bytes) grew the operator by {grown} bytes",
        REQUESTS / 2
    );
    // An untrimmed cache held about five times what the requests weigh as JSON (44 MB for
    // 8.4 MB); trimmed, 60 requests of 12.6 MB in all grew the operator by under 1 MB.
    assert!(
        (grown as usize) < stored / 4,
        "the operator grew by {grown} bytes holding {} more requests of {stored} bytes in all \
         ({before} KiB before, {after} KiB after)",
        REQUESTS / 2
    );
}
