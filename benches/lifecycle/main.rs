//! `make bench`: N access requests, all live at once, through their whole life on a real API
//! server with the release-built operator: created as a requester, approved as an approver as
//! fast as the API server takes it, granted a Kubernetes role, left to expire. Watches on the
//! requests and on the bindings time each step; the API server's own metrics count every write
//! and time the admission webhooks; /proc gives the operator's peak memory and CPU. Writes
//! target/bench/report.{md,json} and latency.png.
//!
//! `cargo bench --bench lifecycle` runs N = 100, 1,000 and 10,000 (`BENCH_N=1000` or
//! `BENCH_N=100,1000` to choose). Under `cargo test` it runs once at N = 20 as a smoke test,
//! which checks that every request lived and ended and that the report is whole, and nothing
//! about time. With `KUBECONFIG` set it runs against that cluster instead of a local control
//! plane, in a namespace of its own, impersonating its requester and approver.
//!
//! `BENCH_AUDIT_RATE=0,2000` measures each size once per rate of audit events posted to the
//! operator's audit webhook beside the API server's own (0: none); the smoke run posts 200 a
//! second so that the load keeps working. A tenth of the posted calls are the live grants'
//! (`BENCH_AUDIT_GRANTED=0` for none: the intake alone, no summaries to write).
//!
//! Each grant lasts long enough, by the ceiling just measured, for all N to be live at once;
//! `BENCH_GRANT_SECONDS=900` fixes it instead, for runs to be compared: the ceiling varies
//! from run to run, and so would the resync looks each grant gets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod audit_load;
mod measure;
mod metrics;
mod report;
mod setup;

use std::{path::PathBuf, time::Duration};

/// How this run was asked for.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The sizes to measure.
    pub sizes: Vec<usize>,
    /// Audit events a second posted beside each size's run, one run per rate (0: none).
    pub audit_rates: Vec<u32>,
    /// Requests in flight at once from the generator.
    pub concurrency: usize,
    /// The shortest grant, to which the time the ceiling says N lifecycles need is added so
    /// that all are live at once.
    pub min_duration: Duration,
    /// How long each grant lasts whatever the ceiling (`BENCH_GRANT_SECONDS`): runs to be
    /// compared get the same number of resync looks per grant.
    pub fixed_duration: Option<Duration>,
    /// Where the report goes.
    pub out: PathBuf,
    /// A smoke run under `cargo test`.
    pub smoke: bool,
}

impl Plan {
    fn from_env() -> Self {
        let smoke = !std::env::args().any(|arg| arg == "--bench");
        let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
        let sizes = numbers("BENCH_N").unwrap_or_else(|| {
            if smoke {
                vec![20]
            } else {
                vec![100, 1_000, 10_000]
            }
        });
        let audit_rates =
            numbers("BENCH_AUDIT_RATE").unwrap_or_else(|| if smoke { vec![200] } else { vec![0] });
        Self {
            sizes,
            audit_rates,
            concurrency: std::env::var("BENCH_CONCURRENCY")
                .ok()
                .and_then(|text| text.parse().ok())
                .unwrap_or(32),
            min_duration: if smoke {
                Duration::from_secs(10)
            } else {
                Duration::from_secs(30)
            },
            fixed_duration: std::env::var("BENCH_GRANT_SECONDS")
                .ok()
                .and_then(|text| text.parse().ok())
                .map(Duration::from_secs),
            out: if smoke { target.join("smoke") } else { target },
            smoke,
        }
    }
}

/// A comma-separated list of numbers (`_` allowed) from the environment, if set.
fn numbers<T: std::str::FromStr>(name: &str) -> Option<Vec<T>> {
    let text = std::env::var(name)
        .ok()
        .filter(|text| !text.trim().is_empty())?;
    Some(
        text.split(',')
            .map(|number| {
                number
                    .trim()
                    .replace('_', "")
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}: {number:?} is not a number"))
            })
            .collect(),
    )
}

fn main() {
    let plan = Plan::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let runs = runtime.block_on(async {
        let mut runs = Vec::new();
        for &size in &plan.sizes {
            for &audit_rate in &plan.audit_rates {
                let cluster = setup::Cluster::start(&plan, size).await;
                let run = measure::run(&plan, &cluster, size, audit_rate).await;
                cluster.stop().await;
                runs.push(run);
            }
        }
        runs
    });
    std::fs::create_dir_all(&plan.out).expect("create the report directory");
    let written = report::write(&plan, &runs);
    print!("{}", report::table(&runs));
    println!("report: {}", written.display());
    if plan.smoke {
        smoke_checks(&plan, &runs);
    }
}

/// What the smoke test holds: every request was granted and ended, every step was timed, and
/// the report is whole. Nothing about how fast.
fn smoke_checks(plan: &Plan, runs: &[report::Run]) {
    metrics::self_test();
    for run in runs {
        for (name, latency) in run.latencies() {
            assert_eq!(
                latency.count, run.size,
                "{name}: {} of {} requests timed",
                latency.count, run.size
            );
        }
        assert_eq!(run.failures, 0, "{} requests never ended", run.failures);
        assert!(
            run.writes.generator >= 2 * run.size as u64,
            "the API server counted the generator's writes: {:?}",
            run.writes
        );
        assert!(run.writes.operator > 0, "{:?}", run.writes);
        assert!(run.webhook.count > 0, "the webhooks were timed");
        // What the run cost the control plane was read (the API server's own counter, etcd's
        // /proc) and is not nothing.
        let cpu = &run.control_plane;
        assert!(
            cpu.apiserver_ms_per_lifecycle.is_some_and(|ms| ms > 0.0)
                && cpu.etcd_ms_per_lifecycle.is_some_and(|ms| ms > 0.0),
            "{cpu:?}"
        );
        let audit = run
            .audit
            .as_ref()
            .expect("the smoke run posts audit events");
        assert!(audit.posts > 0, "{audit:?}");
        assert_eq!(
            audit.posts_failed, 0,
            "the operator took every post: {audit:?}"
        );
        assert!(
            audit.events_granted > 0,
            "some posted calls were the grants': {audit:?}"
        );
        // Every posted call the grants allowed was attributed (and the API server's own
        // events were counted too): counting is never shed.
        let used = audit
            .events_by_outcome
            .get("used")
            .copied()
            .unwrap_or_default();
        assert!(used >= audit.events_granted as f64, "{audit:?}");
        let counted: f64 = audit.events_by_outcome.values().sum();
        assert!(
            counted >= (audit.events_posted - audit.events_refused) as f64,
            "{audit:?}"
        );
    }
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(plan.out.join("report.json")).expect("report.json"),
    )
    .expect("report.json parses");
    assert_eq!(json["runs"].as_array().map(Vec::len), Some(runs.len()));
    let png = std::fs::read(plan.out.join("latency.png")).expect("latency.png");
    assert!(png.starts_with(b"\x89PNG"), "latency.png is a PNG");
    let markdown = std::fs::read_to_string(plan.out.join("report.md")).expect("report.md");
    assert!(markdown.contains("| approval → binding |"), "{markdown}");
}
