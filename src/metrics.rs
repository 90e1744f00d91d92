//! The operator's Prometheus metrics, served at `/metrics` on the health address.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{crd::v1alpha1::Phase, target::Target};

/// Labels of the reconcile counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok`, or the error category.
    pub outcome: String,
}

/// Labels of the per-phase gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// The phase, as `status.phase` shows it.
    pub phase: String,
}

/// Labels of the per-provider gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// The provider's name.
    pub provider: String,
}

/// Labels of the provider error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderErrorLabels {
    /// The provider's name.
    pub provider: String,
    /// What kind of error: `refused`, `transient`, `invalid`, `not_configured`, `ledger`.
    pub category: String,
}

/// Labels of the reconcile error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    /// The step that failed: `observe`, `apply`, `status`.
    pub step: String,
}

/// Labels of the delivery backlog gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    /// The NotificationChannel's name.
    pub channel: String,
}

/// Labels of the delivery counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// The NotificationChannel's name.
    pub channel: String,
    /// `delivered` or `failed`.
    pub outcome: String,
}

/// Labels of the webhook decision counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `mutate` or `validate`.
    pub webhook: String,
    /// `allowed` or `denied`.
    pub outcome: String,
}

/// What the gauges know about one request.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Tracked {
    /// Nothing on the heap for each of 10,000 requests.
    phase: Phase,
    /// The provider holding its grant, while Active.
    provider: Option<Target>,
}

/// Buckets from 0.1 s to about 7 h, for times people and clouds take.
fn seconds_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.1, 3.0, 12)
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
    /// Revokes whose followups (audit record, Events, release) were held while expiry
    /// revokes were behind.
    pub revoke_followups_held: Counter,
    /// Requests whose followups are held now.
    pub revoke_followups_waiting: Gauge,
    /// Grants restored after a change by hand.
    pub drift_repairs: Counter,
    /// Orphaned grants revoked by the sweep.
    pub orphans_swept: Counter,
    /// Requests by phase.
    pub requests: Family<PhaseLabels, Gauge>,
    /// Active grants by provider.
    pub active_grants: Family<ProviderLabels, Gauge>,
    /// Seconds from a request's creation to its decision (approved, denied or refused).
    pub decision_seconds: Histogram,
    /// Seconds from approval to the grant being in place.
    pub grant_seconds: Histogram,
    /// Seconds from `expiresAt` to the revocation being done.
    pub revoke_lag_seconds: Histogram,
    /// Provider errors by provider and category.
    pub provider_errors: Family<ProviderErrorLabels, Counter>,
    /// Failed reconciles by the step that failed.
    pub reconcile_errors: Family<StepLabels, Counter>,
    /// Admission decisions by webhook and outcome.
    pub webhook_decisions: Family<WebhookLabels, Counter>,
    /// Audit events waiting for each channel.
    pub delivery_backlog: Family<ChannelLabels, Gauge>,
    /// Delivery attempts by channel and outcome.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Seconds from a transition to its acknowledged delivery.
    pub delivery_seconds: Histogram,
    /// Audit webhook posts from the API server by outcome.
    pub activity_posts: Family<OutcomeLabels, Counter>,
    /// Audit events received by what they meant for the grants.
    pub activity_events: Family<OutcomeLabels, Counter>,
    /// Detail shed under load, by what was dropped (the counts are always kept).
    pub activity_dropped: Family<OutcomeLabels, Counter>,
    /// Writes of `status.activity` by outcome.
    pub activity_writes: Family<OutcomeLabels, Counter>,
    /// Activity events channels took, by channel.
    pub activity_sent: Family<ChannelLabels, Counter>,
    /// Reads of the clouds' activity logs by provider and outcome (`ok` or the error's
    /// category).
    pub cloud_activity_reads: Family<ProviderErrorLabels, Counter>,
    failing: Mutex<HashSet<String>>,
    tracked: Mutex<HashMap<String, Tracked>>,
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
            revoke_followups_held: Counter::default(),
            revoke_followups_waiting: Gauge::default(),
            drift_repairs: Counter::default(),
            orphans_swept: Counter::default(),
            requests: Family::default(),
            active_grants: Family::default(),
            decision_seconds: Histogram::new(seconds_buckets()),
            grant_seconds: Histogram::new(seconds_buckets()),
            revoke_lag_seconds: Histogram::new(seconds_buckets()),
            provider_errors: Family::default(),
            reconcile_errors: Family::default(),
            webhook_decisions: Family::default(),
            delivery_backlog: Family::default(),
            deliveries: Family::default(),
            delivery_seconds: Histogram::new(seconds_buckets()),
            activity_posts: Family::default(),
            activity_events: Family::default(),
            activity_dropped: Family::default(),
            activity_writes: Family::default(),
            cloud_activity_reads: Family::default(),
            activity_sent: Family::default(),
            failing: Mutex::new(HashSet::new()),
            tracked: Mutex::new(HashMap::new()),
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
            "revoke_followups_held",
            "Revokes whose audit record, Events and release waited while expiry revokes were behind",
            metrics.revoke_followups_held.clone(),
        );
        registry.register(
            "revoke_followups_waiting",
            "Requests whose audit record, Events and release wait for revokes to catch up",
            metrics.revoke_followups_waiting.clone(),
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
        registry.register(
            "requests",
            "Access requests by phase",
            metrics.requests.clone(),
        );
        registry.register(
            "active_grants",
            "Grants in place now, by provider",
            metrics.active_grants.clone(),
        );
        // Every phase and provider has a series, 0 when none: series that come and go make
        // alerts and rates lie.
        for phase in Phase::ALL {
            metrics.requests_in(phase).set(0);
        }
        for target in Target::ALL {
            metrics.active_grants_in(target).set(0);
        }
        registry.register(
            "decision_seconds",
            "Seconds from a request's creation to its decision",
            metrics.decision_seconds.clone(),
        );
        registry.register(
            "grant_seconds",
            "Seconds from approval to the grant being in place",
            metrics.grant_seconds.clone(),
        );
        registry.register(
            "revoke_lag_seconds",
            "Seconds from expiresAt to the revocation being done",
            metrics.revoke_lag_seconds.clone(),
        );
        registry.register(
            "provider_errors",
            "Provider errors by provider and category",
            metrics.provider_errors.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles by the step that failed",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "webhook_decisions",
            "Admission decisions by webhook and outcome",
            metrics.webhook_decisions.clone(),
        );
        registry.register(
            "delivery_backlog",
            "Audit events waiting for each notification channel",
            metrics.delivery_backlog.clone(),
        );
        registry.register(
            "deliveries",
            "Deliveries to notification channels by outcome",
            metrics.deliveries.clone(),
        );
        registry.register(
            "delivery_seconds",
            "Seconds from a transition to its acknowledged delivery",
            metrics.delivery_seconds.clone(),
        );
        registry.register(
            "activity_posts",
            "Audit webhook posts from the API server by outcome",
            metrics.activity_posts.clone(),
        );
        registry.register(
            "activity_events",
            "Audit events received, by what they meant for the grants",
            metrics.activity_events.clone(),
        );
        registry.register(
            "activity_dropped",
            "Activity detail shed under load, by what was dropped",
            metrics.activity_dropped.clone(),
        );
        registry.register(
            "activity_writes",
            "Writes of status.activity by outcome",
            metrics.activity_writes.clone(),
        );
        registry.register(
            "activity_sent",
            "Activity events NotificationChannels took, by channel",
            metrics.activity_sent.clone(),
        );
        registry.register(
            "cloud_activity_reads",
            "Reads of the clouds' activity logs by provider and outcome (category ok or the error's)",
            metrics.cloud_activity_reads.clone(),
        );
        // Series that exist from the start, so that a rate over them is 0, not absent.
        for outcome in ["accepted", "unauthenticated", "malformed"] {
            let _ = metrics.activity_posts.get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            });
        }
        let _ = metrics.activity_dropped.get_or_create(&OutcomeLabels {
            outcome: "audit_line".to_owned(),
        });
        for step in ["observe", "decide", "apply", "status"] {
            let _ = metrics.reconcile_errors.get_or_create(&StepLabels {
                step: step.to_owned(),
            });
        }
        Self {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// Counts one delivery attempt to `channel`.
    pub fn delivery(&self, channel: &str, delivered: bool) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                channel: channel.to_owned(),
                outcome: if delivered { "delivered" } else { "failed" }.to_owned(),
            })
            .inc();
    }

    /// Sets how many events wait for `channel`.
    pub fn backlog(&self, channel: &str, waiting: usize) {
        self.delivery_backlog
            .get_or_create(&ChannelLabels {
                channel: channel.to_owned(),
            })
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    /// Adds `count` to the `outcome` series of an activity counter.
    pub fn count(family: &Family<OutcomeLabels, Counter>, outcome: &str, count: u64) {
        if count > 0 {
            family
                .get_or_create(&OutcomeLabels {
                    outcome: outcome.to_owned(),
                })
                .inc_by(count);
        }
    }

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

    /// Records where a request (`namespace/name`) is now: its phase and, while Active, the
    /// provider holding its grant; `None` when it is gone.
    pub fn track(&self, request: &str, phase: Option<Phase>, provider: Option<Target>) {
        let Ok(mut tracked) = self.tracked.lock() else {
            return;
        };
        // The gauges hold the counts: a change moves the request out of its old series and
        // into its new one, rather than recounting every request (10,000, at every reconcile).
        let now = phase.map(|phase| Tracked { phase, provider });
        let before = match &now {
            Some(now) => match tracked.get_mut(request) {
                Some(entry) if entry == now => return,
                Some(entry) => Some(std::mem::replace(entry, now.clone())),
                None => {
                    tracked.insert(request.to_owned(), now.clone());
                    None
                }
            },
            None => tracked.remove(request),
        };
        if let Some(before) = before {
            self.requests_in(before.phase).dec();
            if let Some(provider) = before.provider {
                self.active_grants_in(provider).dec();
            }
        }
        if let Some(now) = now {
            self.requests_in(now.phase).inc();
            if let Some(provider) = now.provider {
                self.active_grants_in(provider).inc();
            }
        }
    }

    /// The `jit_requests` series of a phase.
    fn requests_in(&self, phase: Phase) -> impl std::ops::Deref<Target = Gauge> + '_ {
        self.requests.get_or_create(&PhaseLabels {
            phase: phase.as_str().to_owned(),
        })
    }

    /// The `jit_active_grants` series of a provider.
    fn active_grants_in(&self, target: Target) -> impl std::ops::Deref<Target = Gauge> + '_ {
        self.active_grants.get_or_create(&ProviderLabels {
            provider: target.as_str().to_owned(),
        })
    }

    /// Counts a provider error.
    pub fn provider_error(&self, provider: &str, category: &str) {
        self.provider_errors
            .get_or_create(&ProviderErrorLabels {
                provider: provider.to_owned(),
                category: category.to_owned(),
            })
            .inc();
    }

    /// Counts a failed reconcile.
    pub fn reconcile_error(&self, step: &str) {
        self.reconcile_errors
            .get_or_create(&StepLabels {
                step: step.to_owned(),
            })
            .inc();
    }

    /// Counts an admission decision.
    pub fn webhook_decision(&self, webhook: &str, allowed: bool) {
        self.webhook_decisions
            .get_or_create(&WebhookLabels {
                webhook: webhook.to_owned(),
                outcome: if allowed { "allowed" } else { "denied" }.to_owned(),
            })
            .inc();
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

    #[test]
    fn requests_are_counted_by_phase_and_active_grants_by_provider() {
        let metrics = Metrics::default();
        metrics.track("a/one", Some(Phase::Pending), None);
        metrics.track("a/two", Some(Phase::Active), Some(Target::Aws));
        metrics.track("a/three", Some(Phase::Active), Some(Target::Kubernetes));
        metrics.track("a/three", Some(Phase::Expired), None);
        let text = metrics.render();
        for line in [
            "jit_requests{phase=\"Pending\"} 1",
            "jit_requests{phase=\"Active\"} 1",
            "jit_requests{phase=\"Expired\"} 1",
            "jit_active_grants{provider=\"aws\"} 1",
            "jit_active_grants{provider=\"kubernetes\"} 0",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        metrics.track("a/one", None, None);
        assert!(
            metrics
                .render()
                .contains("jit_requests{phase=\"Pending\"} 0")
        );
        // A look that changes nothing moves no count.
        metrics.track("a/two", Some(Phase::Active), Some(Target::Aws));
        metrics.track("a/two", Some(Phase::Active), Some(Target::Aws));
        // A provider's count follows the request out of Active, and out of the gauges.
        metrics.track("a/two", Some(Phase::Revoked), None);
        let text = metrics.render();
        for line in [
            "jit_requests{phase=\"Active\"} 0",
            "jit_requests{phase=\"Revoked\"} 1",
            "jit_active_grants{provider=\"aws\"} 0",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn every_phase_and_provider_has_a_series_before_any_request() {
        let text = Metrics::default().render();
        for phase in Phase::ALL {
            let line = format!("jit_requests{{phase=\"{}\"}} 0", phase.as_str());
            assert!(text.contains(&line), "{line} in {text}");
        }
        for target in Target::ALL {
            let line = format!("jit_active_grants{{provider=\"{}\"}} 0", target.as_str());
            assert!(text.contains(&line), "{line} in {text}");
        }
    }
}
