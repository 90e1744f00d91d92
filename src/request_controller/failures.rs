//! The failure bookkeeping in status: which step fails, how often in a row, and when it is
//! tried next. `decide` (a look at the grant that fails) and `outcome` (a grant or revoke
//! that fails) both write it.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::conditions::{
    self, ConditionStatus, GRANT_FAILING, REVOCATION_FAILING, VERIFY_FAILING, set_condition,
};
use crate::{crd::v1alpha1::AccessRequestStatus, retry};

/// Forgets every failing step.
pub fn clear_failures(status: &mut AccessRequestStatus) {
    status.failures = 0;
    status.next_retry_time = None;
    for kind in [REVOCATION_FAILING, GRANT_FAILING, VERIFY_FAILING] {
        conditions::clear_condition(&mut status.conditions, kind);
    }
}

/// A step that failed, as the status shows it.
pub struct StepFailure<'a> {
    /// The condition that says so.
    pub kind: &'static str,
    /// Its reason.
    pub reason: &'static str,
    /// What went wrong.
    pub message: &'a str,
    /// How long the target asked to wait.
    pub retry_after: Option<Duration>,
}

/// The status after a failed step: as it was, with the failure counted (from one when the
/// failing step changed), its condition set, and the time of the next attempt: the backoff
/// or the target's Retry-After, never past the grant's end (expiry does not wait).
pub fn after_failure(
    current: &AccessRequestStatus,
    failure: &StepFailure<'_>,
    uid: &str,
    now: Timestamp,
    generation: Option<i64>,
) -> AccessRequestStatus {
    let mut status = current.clone();
    let continuing = conditions::is_true(&status.conditions, failure.kind);
    let failures = if continuing {
        status.failures.saturating_add(1)
    } else {
        1
    };
    clear_failures(&mut status);
    status.failures = failures;
    set_condition(
        &mut status.conditions,
        failure.kind,
        ConditionStatus::True,
        failure.reason,
        failure.message,
        now,
        generation,
    );
    let wait = retry::delay(uid, failures, failure.retry_after);
    let mut next = now.checked_add(wait).unwrap_or(now);
    if failure.kind != REVOCATION_FAILING
        && let Some(expires_at) = status.expires_at.as_ref().map(|time| time.0)
        && expires_at > now
    {
        next = next.min(expires_at);
    }
    status.next_retry_time = Some(Time(next));
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::at;

    fn failing<'a>(kind: &'static str) -> StepFailure<'a> {
        StepFailure {
            kind,
            reason: "RevokeFailed",
            message: "boom",
            retry_after: None,
        }
    }

    #[test]
    fn failures_are_counted_and_cleared_by_success() {
        let now = at("2026-01-01T00:00:00Z");
        let once = after_failure(
            &AccessRequestStatus::default(),
            &failing(REVOCATION_FAILING),
            "u",
            now,
            None,
        );
        let twice = after_failure(&once, &failing(REVOCATION_FAILING), "u", now, None);
        assert_eq!(twice.failures, 2);
        assert_eq!(twice.conditions[0].type_, REVOCATION_FAILING);
        let next = twice.next_retry_time.as_ref().map(|time| time.0);
        assert!(next.is_some_and(|next| next > now), "{next:?}");
        // Another step failing starts its own count.
        let other = after_failure(&twice, &failing(GRANT_FAILING), "u", now, None);
        assert_eq!(other.failures, 1);
        assert_eq!(other.conditions.len(), 1);
        let mut cleared = twice;
        clear_failures(&mut cleared);
        assert_eq!(cleared.failures, 0);
        assert_eq!(cleared.next_retry_time, None);
        assert!(cleared.conditions.is_empty());
    }

    #[test]
    fn a_grant_retry_is_never_planned_past_the_grants_end() {
        let now = at("2026-01-01T00:00:00Z");
        let expires_at = at("2026-01-01T00:00:02Z");
        let status = AccessRequestStatus {
            expires_at: Some(Time(expires_at)),
            failures: 12,
            conditions: after_failure(
                &AccessRequestStatus::default(),
                &failing(GRANT_FAILING),
                "u",
                now,
                None,
            )
            .conditions,
            ..AccessRequestStatus::default()
        };
        let failed = after_failure(&status, &failing(GRANT_FAILING), "u", now, None);
        assert_eq!(failed.failures, 13);
        assert_eq!(failed.next_retry_time, Some(Time(expires_at)));
        let asked = StepFailure {
            retry_after: Some(Duration::from_secs(60)),
            ..failing(REVOCATION_FAILING)
        };
        let revoke = after_failure(&AccessRequestStatus::default(), &asked, "u", now, None);
        assert_eq!(
            revoke.next_retry_time,
            Some(Time(at("2026-01-01T00:01:00Z")))
        );
    }
}
