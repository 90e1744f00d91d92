//! The API server's own metrics, read before and after a run: writes by verb and resource
//! (`apiserver_request_total`) and the admission webhooks' latency
//! (`apiserver_admission_webhook_admission_duration_seconds`).

use std::collections::BTreeMap;

use kube::Client;

/// One sample: metric name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample the API server exposed at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot(pub Vec<Sample>);

/// Reads `/metrics` (the caller must be allowed the nonResourceURL).
pub async fn read(client: &Client) -> Snapshot {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a request");
    let text = client
        .request_text(request)
        .await
        .expect("read the API server's /metrics");
    parse(&text)
}

/// The Prometheus text format, as far as counters and histograms need it.
pub fn parse(text: &str) -> Snapshot {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(parts) => parts,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, labels_of(rest.trim_end_matches('}'))),
            None => (series, BTreeMap::new()),
        };
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Snapshot(samples)
}

fn labels_of(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((index, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(match escaped {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = index + 1;
                    break;
                }
                other => value.push(other),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    labels
}

impl Snapshot {
    /// The sum of `name` over series whose labels pass `keep`, grouped by `key`.
    pub fn sum_by<K: Ord>(
        &self,
        name: &str,
        keep: impl Fn(&BTreeMap<String, String>) -> bool,
        key: impl Fn(&BTreeMap<String, String>) -> K,
    ) -> BTreeMap<K, f64> {
        let mut sums = BTreeMap::new();
        for sample in &self.0 {
            if sample.name == name && keep(&sample.labels) {
                *sums.entry(key(&sample.labels)).or_insert(0.0) += sample.value;
            }
        }
        sums
    }
}

/// A counter's growth from `before` to `after`, per key.
pub fn growth<K: Ord + Clone>(
    before: &BTreeMap<K, f64>,
    after: &BTreeMap<K, f64>,
) -> BTreeMap<K, f64> {
    after
        .iter()
        .map(|(key, value)| {
            (
                key.clone(),
                value - before.get(key).copied().unwrap_or_default(),
            )
        })
        .filter(|(_, value)| *value > 0.0)
        .collect()
}

/// The verbs that write, as `apiserver_request_total` labels them.
pub const WRITE_VERBS: [&str; 6] = [
    "POST",
    "PUT",
    "PATCH",
    "DELETE",
    "DELETECOLLECTION",
    "APPLY",
];

/// Writes by (verb, resource[/subresource]) between two snapshots.
pub fn writes(before: &Snapshot, after: &Snapshot) -> BTreeMap<(String, String), f64> {
    let by = |snapshot: &Snapshot| {
        snapshot.sum_by(
            "apiserver_request_total",
            |labels| WRITE_VERBS.contains(&labels.get("verb").map_or("", String::as_str)),
            |labels| {
                let resource = labels.get("resource").cloned().unwrap_or_default();
                let resource = match labels.get("subresource").map(String::as_str) {
                    Some(sub) if !sub.is_empty() => format!("{resource}/{sub}"),
                    _ => resource,
                };
                (labels.get("verb").cloned().unwrap_or_default(), resource)
            },
        )
    };
    growth(&by(before), &by(after))
}

/// Reads (GET and LIST; not WATCH, whose count is of streams) by resource between two
/// snapshots.
pub fn reads(before: &Snapshot, after: &Snapshot) -> BTreeMap<(String, String), f64> {
    let by = |snapshot: &Snapshot| {
        snapshot.sum_by(
            "apiserver_request_total",
            |labels| matches!(labels.get("verb").map(String::as_str), Some("GET" | "LIST")),
            |labels| {
                (
                    labels.get("verb").cloned().unwrap_or_default(),
                    labels.get("resource").cloned().unwrap_or_default(),
                )
            },
        )
    };
    growth(&by(before), &by(after))
}

/// A histogram's growth between two snapshots, over series whose labels pass `keep`:
/// cumulative counts per upper bound.
pub fn histogram(
    before: &Snapshot,
    after: &Snapshot,
    name: &str,
    keep: impl Fn(&BTreeMap<String, String>) -> bool + Copy,
) -> Vec<(f64, f64)> {
    let by_bound = |snapshot: &Snapshot| {
        snapshot.sum_by(&format!("{name}_bucket"), keep, |labels| {
            let bound = labels.get("le").map_or("+Inf", String::as_str);
            // Ordered keys for floats: the bound in micro-units, +Inf last.
            if bound == "+Inf" {
                u64::MAX
            } else {
                (bound.parse::<f64>().unwrap_or(f64::MAX) * 1e6) as u64
            }
        })
    };
    let (before, after) = (by_bound(before), by_bound(after));
    after
        .iter()
        .map(|(bound, count)| {
            let bound = if *bound == u64::MAX {
                f64::INFINITY
            } else {
                *bound as f64 / 1e6
            };
            let count = count - before.get(&((bound * 1e6) as u64)).copied().unwrap_or(0.0);
            (bound, count.max(0.0))
        })
        .collect()
}

/// The `q` quantile of a cumulative histogram, interpolated inside its bucket as Prometheus'
/// `histogram_quantile` does; `None` when it is empty.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let width = count - lower.1;
            let within = if width > 0.0 {
                (rank - lower.1) / width
            } else {
                0.0
            };
            return Some(lower.0 + (bound - lower.0) * within);
        }
        lower = (bound, count);
    }
    Some(lower.0)
}

/// Checks the parsing and the arithmetic on a known text; the smoke run calls it (a bench
/// target without the test harness has no `#[test]`s).
pub fn self_test() {
    {
        let before = parse(
            r#"# HELP x
apiserver_request_total{code="201",resource="accessrequests",subresource="",verb="POST"} 10
apiserver_request_total{code="200",resource="accessrequests",subresource="status",verb="PATCH"} 5
apiserver_request_total{code="200",resource="pods",subresource="",verb="GET"} 50
h_bucket{le="0.1",name="a"} 1
h_bucket{le="1",name="a"} 2
h_bucket{le="+Inf",name="a"} 2
"#,
        );
        let after = parse(
            r#"apiserver_request_total{code="201",resource="accessrequests",subresource="",verb="POST"} 30
apiserver_request_total{code="200",resource="accessrequests",subresource="status",verb="PATCH"} 25
apiserver_request_total{code="200",resource="pods",subresource="",verb="GET"} 90
h_bucket{le="0.1",name="a"} 11
h_bucket{le="1",name="a"} 22
h_bucket{le="+Inf",name="a"} 22
"#,
        );
        let writes = writes(&before, &after);
        assert_eq!(writes[&("POST".into(), "accessrequests".into())], 20.0);
        assert_eq!(
            writes[&("PATCH".into(), "accessrequests/status".into())],
            20.0
        );
        assert_eq!(writes.len(), 2, "reads are not writes");
        let buckets = histogram(&before, &after, "h", |_| true);
        assert_eq!(buckets, [(0.1, 10.0), (1.0, 20.0), (f64::INFINITY, 20.0)]);
        assert_eq!(quantile(&buckets, 0.5), Some(0.1));
        let p75 = quantile(&buckets, 0.75).unwrap();
        assert!((p75 - 0.55).abs() < 1e-9, "{p75}");
    }
}
