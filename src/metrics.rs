//! The operator's Prometheus metrics, served at `/metrics` on the health address.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Labels of the reconcile counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok`, or the error category.
    pub outcome: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    /// Reconciles by outcome.
    pub reconciles: Family<OutcomeLabels, Counter>,
    /// Grants made (including adoptions and repairs).
    pub grants: Counter,
    /// Revocations confirmed.
    pub revocations: Counter,
    /// Failed revocation attempts.
    pub revocation_failures: Counter,
    /// Requests whose revocation is failing right now.
    pub revocations_failing: Gauge,
    /// Grants restored after a change by hand.
    pub drift_repairs: Counter,
    /// Orphaned grants revoked by the sweep.
    pub orphans_swept: Counter,
    failing: Mutex<HashSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("jit");
        let metrics = Self {
            reconciles: Family::default(),
            grants: Counter::default(),
            revocations: Counter::default(),
            revocation_failures: Counter::default(),
            revocations_failing: Gauge::default(),
            drift_repairs: Counter::default(),
            orphans_swept: Counter::default(),
            failing: Mutex::new(HashSet::new()),
            registry: Registry::default(),
        };
        registry.register(
            "reconciles",
            "Reconciles by outcome",
            metrics.reconciles.clone(),
        );
        registry.register(
            "grants",
            "Grants made, adopted or repaired",
            metrics.grants.clone(),
        );
        registry.register(
            "revocations",
            "Revocations confirmed",
            metrics.revocations.clone(),
        );
        registry.register(
            "revocation_failures",
            "Failed revocation attempts",
            metrics.revocation_failures.clone(),
        );
        registry.register(
            "revocations_failing",
            "Requests whose revocation is failing now",
            metrics.revocations_failing.clone(),
        );
        registry.register(
            "drift_repairs",
            "Grants restored after a change by hand",
            metrics.drift_repairs.clone(),
        );
        registry.register(
            "orphans_swept",
            "Orphaned grants revoked by the sweep",
            metrics.orphans_swept.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// A shared set of metrics.
    pub fn shared() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Counts a reconcile.
    pub fn reconciled(&self, outcome: &str) {
        self.reconciles
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Marks whether the revocation for this request is failing now.
    pub fn revocation_failing(&self, request_uid: &str, failing: bool) {
        let Ok(mut set) = self.failing.lock() else {
            return;
        };
        let changed = if failing {
            set.insert(request_uid.to_owned())
        } else {
            set.remove(request_uid)
        };
        if changed {
            self.revocations_failing
                .set(i64::try_from(set.len()).unwrap_or(i64::MAX));
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_revocations_are_counted_per_request() {
        let metrics = Metrics::default();
        metrics.revocation_failing("a", true);
        metrics.revocation_failing("a", true);
        metrics.revocation_failing("b", true);
        assert_eq!(metrics.revocations_failing.get(), 2);
        metrics.revocation_failing("a", false);
        assert_eq!(metrics.revocations_failing.get(), 1);
        metrics.revocation_failures.inc();
        let text = metrics.render();
        assert!(text.contains("jit_revocations_failing 1"), "{text}");
        assert!(text.contains("jit_revocation_failures_total 1"), "{text}");
    }
}
