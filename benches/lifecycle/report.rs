//! The report: target/bench/report.json (everything), report.md (the tables) and latency.png
//! (the latency distributions, one line per size), and the short table printed at the end.

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf};

use plotters::prelude::*;
use serde::Serialize;

use crate::{Plan, audit_load::AuditLoadReport};

/// One latency's distribution, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    /// Every value, sorted: for the plot.
    #[serde(skip)]
    pub sorted: Vec<f64>,
}

impl Latency {
    /// The distribution of these values (nearest-rank percentiles).
    pub fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let rank = |q: f64| -> f64 {
            if values.is_empty() {
                return 0.0;
            }
            let index = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
            values[index]
        };
        Self {
            count: values.len(),
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: values.last().copied().unwrap_or_default(),
            sorted: values.clone(),
        }
    }
}

/// The admission webhooks' latency, from the API server's histogram.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Webhook {
    pub count: usize,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// The API writes during the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Writes {
    /// The generator's: a create and an approval per request.
    pub generator: u64,
    /// Everyone else's: the operator's, and a few of the API server's own.
    pub operator: u64,
    /// All writes per lifecycle, the generator's included.
    pub per_lifecycle: f64,
    /// The operator's per lifecycle.
    pub operator_per_lifecycle: f64,
    /// "VERB resource[/subresource]" → count.
    pub by_verb_resource: BTreeMap<String, f64>,
}

/// The control plane's CPU seconds over a run, and per lifecycle in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ControlPlaneCpu {
    pub apiserver_seconds: Option<f64>,
    pub etcd_seconds: Option<f64>,
    pub apiserver_ms_per_lifecycle: Option<f64>,
    pub etcd_ms_per_lifecycle: Option<f64>,
    /// What one of the ceiling's writes (a small ConfigMap, no webhook) cost the API server.
    pub apiserver_ms_per_ceiling_write: Option<f64>,
}

impl ControlPlaneCpu {
    /// How many of the ceiling's writes a lifecycle costs the API server, in its CPU.
    pub fn ceiling_writes_per_lifecycle(&self) -> Option<f64> {
        self.apiserver_ms_per_lifecycle
            .zip(self.apiserver_ms_per_ceiling_write)
            .filter(|(_, per_write)| *per_write > 0.0)
            .map(|(lifecycle, per_write)| lifecycle / per_write)
    }
}

/// One size's results.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Run {
    pub size: usize,
    pub grant_seconds: u64,
    pub ceiling_writes_per_second: f64,
    pub approval_to_binding: Latency,
    pub approval_to_granted: Latency,
    pub expiry_to_binding_deleted: Latency,
    pub expiry_to_expired: Latency,
    pub webhook: Webhook,
    pub lifecycles_per_second: f64,
    pub writes: Writes,
    /// The most bindings present at one moment.
    pub peak_live: usize,
    pub peak_rss_mib: Option<f64>,
    pub cpu_seconds: Option<f64>,
    /// The control plane's CPU over the run (the generator's calls included): the API
    /// server's from its own `process_cpu_seconds_total`, etcd's from /proc when local.
    pub control_plane: ControlPlaneCpu,
    /// Requests that never ended within the run.
    pub failures: usize,
    /// The audit load posted beside the run, if any.
    pub audit: Option<AuditLoadReport>,
    /// "VERB resource" → reads per lifecycle (everyone's: the generator's watches' lists
    /// are a handful in all).
    pub reads_per_lifecycle: BTreeMap<String, f64>,
    /// The operator's reconciles per lifecycle, when local.
    pub reconciles_per_lifecycle: Option<f64>,
}

impl Run {
    /// The run's name in tables: its size, and the audit load beside it.
    pub fn label(&self) -> String {
        match &self.audit {
            Some(audit) => format!("{} +{}/s", self.size, audit.rate_asked),
            None => self.size.to_string(),
        }
    }

    /// The four per-request latencies, named as the report names them.
    pub fn latencies(&self) -> [(&'static str, &Latency); 4] {
        [
            ("approval → binding", &self.approval_to_binding),
            ("approval → Granted", &self.approval_to_granted),
            (
                "expiresAt → binding deleted",
                &self.expiry_to_binding_deleted,
            ),
            ("expiresAt → Expired", &self.expiry_to_expired),
        ]
    }

    /// Lifecycles per second as a share of what the API server's write rate allows at this
    /// many writes per lifecycle.
    pub fn ratio_to_ceiling(&self) -> f64 {
        let allowed = self.ceiling_writes_per_second / self.writes.per_lifecycle.max(1.0);
        if allowed > 0.0 {
            self.lifecycles_per_second / allowed
        } else {
            0.0
        }
    }
}

fn optional(value: Option<f64>, digits: usize) -> String {
    value.map_or("n/a".into(), |value| format!("{value:.digits$}"))
}

/// The short table printed at the end of a run.
pub fn table(runs: &[Run]) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{:>12}  {:>28}  {:>9} {:>9} {:>9} {:>9}",
        "N", "latency (ms)", "p50", "p90", "p99", "max"
    );
    for run in runs {
        for (name, latency) in run.latencies() {
            let _ = writeln!(
                text,
                "{:>12}  {name:>28}  {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
                run.label(),
                latency.p50,
                latency.p90,
                latency.p99,
                latency.max
            );
        }
        let _ = writeln!(
            text,
            "{:>12}  {:>28}  {:>9} {:>9} {:>9}",
            run.label(),
            "admission webhook",
            optional(run.webhook.p50_ms, 1),
            optional(run.webhook.p90_ms, 1),
            optional(run.webhook.p99_ms, 1)
        );
        let _ = writeln!(
            text,
            "{:>12}  {:.1} lifecycles/s ({:.2} of the ceiling's {:.0} writes/s at {:.1} writes per lifecycle); peak RSS {} MiB; CPU {} s; {} live at once; {} never ended",
            run.label(),
            run.lifecycles_per_second,
            run.ratio_to_ceiling(),
            run.ceiling_writes_per_second,
            run.writes.per_lifecycle,
            optional(run.peak_rss_mib, 1),
            optional(run.cpu_seconds, 1),
            run.peak_live,
            run.failures
        );
        let _ = writeln!(
            text,
            "{:>12}  control plane CPU per lifecycle: API server {} ms (as much as {} of the ceiling's writes at {} ms each), etcd {} ms",
            run.label(),
            optional(run.control_plane.apiserver_ms_per_lifecycle, 1),
            optional(run.control_plane.ceiling_writes_per_lifecycle(), 1),
            optional(run.control_plane.apiserver_ms_per_ceiling_write, 2),
            optional(run.control_plane.etcd_ms_per_lifecycle, 1)
        );
        if let Some(audit) = &run.audit {
            let _ = writeln!(
                text,
                "{:>12}  audit load: {} events posted at {:.0}/s ({} of them the grants'), {} posts failed, post p50/p99 {:.1}/{:.1} ms",
                run.label(),
                audit.events_posted,
                audit.rate_posted,
                audit.events_granted,
                audit.posts_failed,
                audit.post_latency.p50,
                audit.post_latency.p99
            );
        }
    }
    text
}

fn markdown(plan: &Plan, runs: &[Run]) -> String {
    let mut text = String::from("# jit-operator benchmark\n\n");
    let _ = writeln!(
        text,
        "{} on {} cores; generator concurrency {}. Latencies in milliseconds, from watches on \
         the requests and bindings; the webhook's from the API server's histogram. The \
         operator runs with MALLOC_ARENA_MAX=2 and MALLOC_MMAP_THRESHOLD_=131072 (the \
         image's musl allocator has no per-thread arenas and maps every block over 128 KiB \
         on its own).\n",
        match (
            std::env::var_os("KUBECONFIG").is_some(),
            cfg!(debug_assertions),
        ) {
            (true, _) => "Against the KUBECONFIG cluster",
            (false, false) => "Local control plane and release-built operator",
            (false, true) => "Local control plane and debug-built operator (a smoke run)",
        },
        std::thread::available_parallelism().map_or(0, usize::from),
        plan.concurrency
    );
    text.push_str(
        "| N | step | p50 | p90 | p99 | max |\n| ---: | --- | ---: | ---: | ---: | ---: |\n",
    );
    for run in runs {
        for (name, latency) in run.latencies() {
            let _ = writeln!(
                text,
                "| {} | {name} | {:.0} | {:.0} | {:.0} | {:.0} |",
                run.label(),
                latency.p50,
                latency.p90,
                latency.p99,
                latency.max
            );
        }
        let _ = writeln!(
            text,
            "| {} | admission webhook | {} | {} | {} | |",
            run.label(),
            optional(run.webhook.p50_ms, 1),
            optional(run.webhook.p90_ms, 1),
            optional(run.webhook.p99_ms, 1)
        );
    }
    text.push_str(
        "\n| N | grant (s) | lifecycles/s | ceiling (writes/s) | writes/lifecycle | operator writes/lifecycle | ratio to ceiling | peak live | peak RSS (MiB) | CPU (s) | API server CPU (ms/lifecycle) | the same in ceiling writes | etcd CPU (ms/lifecycle) | never ended |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for run in runs {
        let _ = writeln!(
            text,
            "| {} | {} | {:.1} | {:.0} | {:.1} | {:.1} | {:.2} | {} | {} | {} | {} | {} | {} | {} |",
            run.label(),
            run.grant_seconds,
            run.lifecycles_per_second,
            run.ceiling_writes_per_second,
            run.writes.per_lifecycle,
            run.writes.operator_per_lifecycle,
            run.ratio_to_ceiling(),
            run.peak_live,
            optional(run.peak_rss_mib, 1),
            optional(run.cpu_seconds, 1),
            optional(run.control_plane.apiserver_ms_per_lifecycle, 1),
            optional(run.control_plane.ceiling_writes_per_lifecycle(), 1),
            optional(run.control_plane.etcd_ms_per_lifecycle, 1),
            run.failures
        );
    }
    text.push_str("\nWrites by verb and resource, per lifecycle (the generator's create and approval included):\n\n| N | write | per lifecycle |\n| ---: | --- | ---: |\n");
    for run in runs {
        for (write, count) in &run.writes.by_verb_resource {
            let _ = writeln!(
                text,
                "| {} | {write} | {:.2} |",
                run.label(),
                count / run.size.max(1) as f64
            );
        }
    }
    text.push_str("\nReads (GET, LIST) per lifecycle, and the operator's reconciles per lifecycle:\n\n| N | read | per lifecycle |\n| ---: | --- | ---: |\n");
    for run in runs {
        for (read, count) in &run.reads_per_lifecycle {
            if *count >= 0.01 {
                let _ = writeln!(text, "| {} | {read} | {count:.2} |", run.label());
            }
        }
        let _ = writeln!(
            text,
            "| {} | reconciles | {} |",
            run.label(),
            optional(run.reconciles_per_lifecycle, 2)
        );
    }
    if runs.iter().any(|run| run.audit.is_some()) {
        text.push_str(
            "\nAudit load beside the run (posted to the operator's audit webhook; the API server's own events come on top):\n\n\
             | N | asked (events/s) | posted (events/s) | events | the grants' | posts failed | post p50 (ms) | post p99 (ms) | counted by outcome | dropped | activity writes |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |\n",
        );
        let pairs = |map: &BTreeMap<String, f64>| {
            map.iter()
                .map(|(key, value)| format!("{key} {value:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for run in runs {
            let Some(audit) = &run.audit else { continue };
            let _ = writeln!(
                text,
                "| {} | {} | {:.0} | {} | {} | {} | {:.1} | {:.1} | {} | {} | {} |",
                run.label(),
                audit.rate_asked,
                audit.rate_posted,
                audit.events_posted,
                audit.events_granted,
                audit.posts_failed,
                audit.post_latency.p50,
                audit.post_latency.p99,
                pairs(&audit.events_by_outcome),
                pairs(&audit.dropped_by_outcome),
                pairs(&audit.activity_writes)
            );
        }
    }
    text
}

/// Draws the four latency distributions (CDFs), one line per size.
fn plot(path: &std::path::Path, runs: &[Run]) -> Result<(), Box<dyn std::error::Error>> {
    let _ =
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    let root = BitMapBackend::new(path, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((2, 2));
    let colours = [BLUE, RED, GREEN, MAGENTA, BLACK];
    for (index, panel) in panels.iter().enumerate() {
        let name = runs.first().map_or("", |run| run.latencies()[index].0);
        let max = runs
            .iter()
            .map(|run| run.latencies()[index].1.max)
            .fold(1.0_f64, f64::max);
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{name} (ms)"), ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..max * 1.05, 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_desc("milliseconds")
            .y_desc("share of requests")
            .label_style(("sans-serif", 14))
            .draw()?;
        for (run, colour) in runs.iter().zip(colours.iter().cycle()) {
            let latency = run.latencies()[index].1;
            let total = latency.sorted.len().max(1) as f64;
            let points = latency
                .sorted
                .iter()
                .enumerate()
                .map(|(rank, value)| (*value, (rank + 1) as f64 / total));
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
                .label(format!("N={}", run.label()))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], *colour));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Writes report.json, report.md and latency.png; returns report.md's path.
pub fn write(plan: &Plan, runs: &[Run]) -> PathBuf {
    let json = serde_json::json!({
        "generatedAt": jiff::Timestamp::now().to_string(),
        "cores": std::thread::available_parallelism().map_or(0, usize::from),
        "concurrency": plan.concurrency,
        "runs": runs.iter().map(|run| {
            let mut value = serde_json::to_value(run).unwrap_or_default();
            value["ratioToCeiling"] = serde_json::json!(run.ratio_to_ceiling());
            value
        }).collect::<Vec<_>>(),
    });
    std::fs::write(
        plan.out.join("report.json"),
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    )
    .expect("write report.json");
    let markdown_path = plan.out.join("report.md");
    std::fs::write(&markdown_path, markdown(plan, runs)).expect("write report.md");
    plot(&plan.out.join("latency.png"), runs).expect("draw latency.png");
    markdown_path
}
