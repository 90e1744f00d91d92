//! Step 4, the status: conditions that keep their transition time while unchanged, the
//! status computed from what `apply` actually did, and the failure conditions.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::apply::Applied;
use crate::crd::v1alpha1::{AccessRequestStatus, Grant};

/// The condition that revoking keeps failing; present (True) only while it does.
pub const REVOCATION_FAILING: &str = "RevocationFailing";
/// The condition that granting failed and will be retried.
pub const GRANT_FAILING: &str = "GrantFailing";

/// A condition's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    /// True.
    True,
    /// False.
    False,
}

impl ConditionStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
        }
    }
}

/// Sets a condition; its `lastTransitionTime` moves only when its status changes.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    kind: &str,
    status: ConditionStatus,
    reason: &str,
    message: &str,
    now: Timestamp,
    generation: Option<i64>,
) {
    let status = status.as_str();
    let transition = conditions
        .iter()
        .find(|condition| condition.type_ == kind && condition.status == status)
        .map_or(Time(now), |condition| {
            condition.last_transition_time.clone()
        });
    let condition = Condition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time: transition,
        observed_generation: generation,
    };
    match conditions
        .iter_mut()
        .find(|existing| existing.type_ == kind)
    {
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
}

/// Removes a condition.
pub fn clear_condition(conditions: &mut Vec<Condition>, kind: &str) {
    conditions.retain(|condition| condition.type_ != kind);
}

/// The status to write after a successful apply: the plan's, with what the provider reported
/// about the grant, and the failure bookkeeping reset.
pub fn after_success(mut status: AccessRequestStatus, applied: &Applied) -> AccessRequestStatus {
    if let Some(record) = &applied.grant {
        status.grant = Some(Grant {
            provider: record.target.as_str().to_owned(),
            reference: record.reference.clone(),
            cloud_enforced_expiry: record.cloud_enforced_expiry,
        });
    }
    status.failures = 0;
    clear_condition(&mut status.conditions, REVOCATION_FAILING);
    clear_condition(&mut status.conditions, GRANT_FAILING);
    status
}

/// The status to write when the effect failed: the request's status as it was, with the
/// failure counted and shown.
pub fn after_failure(
    current: Option<&AccessRequestStatus>,
    kind: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
    generation: Option<i64>,
) -> AccessRequestStatus {
    let mut status = current.cloned().unwrap_or_default();
    status.failures = status.failures.saturating_add(1);
    set_condition(
        &mut status.conditions,
        kind,
        ConditionStatus::True,
        reason,
        message,
        now,
        generation,
    );
    status
}

/// Whether two statuses differ in anything but condition transition times.
pub fn differs(left: &AccessRequestStatus, right: &AccessRequestStatus) -> bool {
    let strip = |status: &AccessRequestStatus| {
        let mut status = status.clone();
        for condition in &mut status.conditions {
            condition.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        status
    };
    strip(left) != strip(right)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::at;

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let mut conditions = Vec::new();
        let first = at("2026-01-01T00:00:00Z");
        let later = at("2026-01-01T00:05:00Z");
        set_condition(
            &mut conditions,
            "Approved",
            ConditionStatus::False,
            "Waiting",
            "0 of 1",
            first,
            Some(1),
        );
        set_condition(
            &mut conditions,
            "Approved",
            ConditionStatus::False,
            "Waiting",
            "0 of 2",
            later,
            Some(1),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].message, "0 of 2");
        assert_eq!(conditions[0].last_transition_time, Time(first));
        set_condition(
            &mut conditions,
            "Approved",
            ConditionStatus::True,
            "Approved",
            "by bob",
            later,
            Some(1),
        );
        assert_eq!(conditions[0].last_transition_time, Time(later));
        assert_eq!(conditions[0].status, "True");
    }

    #[test]
    fn failures_are_counted_and_cleared_by_success() {
        let now = at("2026-01-01T00:00:00Z");
        let failed = after_failure(None, REVOCATION_FAILING, "RevokeFailed", "boom", now, None);
        let failed = after_failure(
            Some(&failed),
            REVOCATION_FAILING,
            "RevokeFailed",
            "boom",
            now,
            None,
        );
        assert_eq!(failed.failures, 2);
        assert_eq!(failed.conditions[0].type_, REVOCATION_FAILING);
        let cleared = after_success(failed, &Applied::default());
        assert_eq!(cleared.failures, 0);
        assert!(cleared.conditions.is_empty());
    }

    #[test]
    fn differs_ignores_only_transition_times() {
        let mut left = AccessRequestStatus::default();
        set_condition(
            &mut left.conditions,
            "Granted",
            ConditionStatus::True,
            "Granted",
            "",
            at("2026-01-01T00:00:00Z"),
            None,
        );
        let mut right = left.clone();
        right.conditions[0].last_transition_time = Time(at("2026-01-02T00:00:00Z"));
        assert!(!differs(&left, &right));
        right.conditions[0].message = "changed".into();
        assert!(differs(&left, &right));
    }
}
