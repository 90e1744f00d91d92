//! Step 4, no client: from the plan and what applying it came to, the status to write, the
//! Events to publish and when to look again. The driver only carries this out; the property
//! test of `decide` calls the same function, failures included.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{
    apply::{Applied, Error as ApplyError},
    conditions::{
        ConditionStatus, GRANT_FAILING, GRANTED, REVOCATION_FAILING, is_true, set_condition,
    },
    decide::{Effect, Plan, RESYNC},
    failures::{StepFailure, after_failure, clear_failures},
    notice::{Notice, Reason, TimelineEvent},
};
use crate::{
    crd::v1alpha1::{
        AccessRequestStatus, Grant, GrantIntent, IntentAction, Phase, TIMELINE_LIMIT, TimelineEntry,
    },
    provider::GrantKey,
    retry,
    telemetry::error_chain,
};

/// What the reconcile ends with.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The status to write.
    pub status: AccessRequestStatus,
    /// The Events to publish once it is written.
    pub notices: Vec<Notice>,
    /// When to look again; `None`: only when something changes.
    pub requeue: Option<Duration>,
    /// Whether the plan's finalizer removal may go ahead (only once its effect is done).
    pub release: bool,
    /// The step that failed, when one did.
    pub failed: Option<FailedStep>,
}

/// A step that failed, for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailedStep {
    /// A grant refused for good: the request failed (and what it held was revoked).
    GrantRefused(String),
    /// A grant that failed and is retried.
    Grant(String),
    /// A revoke that failed and is retried until it succeeds.
    Revoke(String),
}

/// The outcome of `plan`, applied over `written` (the status as the API server has it now,
/// with the intent) with `result`, for the request with `uid`.
pub fn outcome(
    plan: Plan,
    written: &AccessRequestStatus,
    result: Result<&Applied, &ApplyError>,
    uid: &str,
    now: Timestamp,
) -> Outcome {
    let Plan {
        finalizer,
        effect,
        status,
        notices,
        requeue_after,
    } = plan;
    let generation = status.observed_generation;
    match result {
        Ok(applied) => {
            let mut status = after_success(status, &effect, applied);
            if matches!(effect, Effect::Revoke) && is_true(&written.conditions, REVOCATION_FAILING)
            {
                status.timeline.push(entry(
                    TimelineEvent::RevocationRecovered,
                    "the revoke went through after failing",
                    now,
                ));
            }
            bound_timeline(&mut status);
            let mut notices = notices;
            if let Some(what) = &applied.unaccounted {
                notices.push(Notice::new(Reason::GrantRecordMissing, what.clone()));
            }
            let ended = status.phase.is_some_and(Phase::is_final);
            let requeue = match (ended, finalizer) {
                (false, _) => Some(requeue_after),
                // Ended by a revoke that took the finalizer first (a request admitted before
                // it was added): its own writes do not wake the controller, so it comes back
                // to release it.
                (true, super::decide::FinalizerChange::Add) => Some(Duration::ZERO),
                // Ended, revoked and released: nothing to look at until someone changes it
                // (a leftover grant would be the orphan sweep's).
                (true, _) => None,
            };
            Outcome {
                status,
                notices,
                requeue,
                release: finalizer == super::decide::FinalizerChange::Remove,
                failed: None,
            }
        }
        Err(error) => {
            let message = error_chain(error);
            let refused = matches!(error, ApplyError::Grant(cause) if !cause.is_retryable());
            if refused {
                // apply revoked whatever the attempt may have left: the request fails.
                let mut status = refused_grant(status, written.timeline.len(), &message, now);
                bound_timeline(&mut status);
                return Outcome {
                    status,
                    notices: vec![Notice::new(
                        Reason::Failed,
                        format!("could not grant: {message}"),
                    )],
                    requeue: Some(RESYNC),
                    release: false,
                    failed: Some(FailedStep::GrantRefused(message)),
                };
            }
            // A refused grant's revoke that failed is a failing revocation.
            let granting = match error {
                ApplyError::Grant(_) => true,
                ApplyError::Revoke(_) => false,
                ApplyError::Finalizer(_) | ApplyError::Unidentified => {
                    matches!(effect, Effect::Grant { .. })
                }
            };
            let (kind, reason, notice, failed) = if granting {
                (
                    GRANT_FAILING,
                    "GrantFailed",
                    Notice::new(
                        Reason::GrantFailing,
                        format!("grant failed, will retry: {message}"),
                    ),
                    FailedStep::Grant(message.clone()),
                )
            } else {
                (
                    REVOCATION_FAILING,
                    "RevokeFailed",
                    Notice::new(
                        Reason::RevocationFailing,
                        format!("revocation failed, will retry until it succeeds: {message}"),
                    ),
                    FailedStep::Revoke(message.clone()),
                )
            };
            let failure = StepFailure {
                kind,
                reason,
                message: &message,
                retry_after: error.retry_after(),
            };
            let mut status = after_failure(written, &failure, uid, now, generation);
            if !granting && revocation_failing_is_news(written, now) {
                let text = if is_true(&written.conditions, REVOCATION_FAILING) {
                    format!("revocation still failing, will retry until it succeeds: {message}")
                } else {
                    format!("revocation failed, will retry until it succeeds: {message}")
                };
                status
                    .timeline
                    .push(entry(TimelineEvent::RevocationFailing, &text, now));
            }
            bound_timeline(&mut status);
            let requeue = status
                .next_retry_time
                .as_ref()
                .map_or(retry::MAX_BACKOFF, |at| retry::until(now, at.0));
            Outcome {
                status,
                notices: vec![notice],
                requeue: Some(requeue),
                release: false,
                failed: Some(failed),
            }
        }
    }
}

/// How often a revocation that keeps failing is announced again (a timeline entry, so an
/// audit event to the security channel): loud until it recovers.
pub const REVOCATION_FAILING_REPEAT: Duration = Duration::from_secs(15 * 60);

/// Whether a failed revoke is to be announced: when revocation starts failing, and again
/// every [`REVOCATION_FAILING_REPEAT`] while it keeps failing.
fn revocation_failing_is_news(written: &AccessRequestStatus, now: Timestamp) -> bool {
    if !is_true(&written.conditions, REVOCATION_FAILING) {
        return true;
    }
    let last = written
        .timeline
        .iter()
        .rev()
        .find(|entry| entry.event == TimelineEvent::RevocationFailing.as_str())
        .map(|entry| entry.time.0);
    last.is_none_or(|last| retry::until(last, now) >= REVOCATION_FAILING_REPEAT)
}

/// A timeline entry the driver adds, with no actor.
fn entry(event: TimelineEvent, message: &str, now: Timestamp) -> TimelineEntry {
    TimelineEntry {
        time: Time(now),
        event: event.as_str().to_owned(),
        actor: None,
        message: Some(message.to_owned()),
    }
}

/// Keeps the timeline to its last [`TIMELINE_LIMIT`] entries, counting those dropped in
/// `timelineOffset` so that every entry keeps its ordinal (and its audit event its id).
pub fn bound_timeline(status: &mut AccessRequestStatus) {
    let limit = TIMELINE_LIMIT as usize;
    let excess = status.timeline.len().saturating_sub(limit);
    if excess > 0 {
        status.timeline.drain(..excess);
        status.timeline_offset = status
            .timeline_offset
            .saturating_add(i64::try_from(excess).unwrap_or(i64::MAX));
    }
}

/// The status to write before the provider is called: the current one with the intent and,
/// for a grant, the window, fixed here before the first attempt so that whatever later write
/// fails, a retry keeps it and the grant ends at its time.
pub fn with_intent(
    current: &AccessRequestStatus,
    plan: &Plan,
    action: IntentAction,
    uid: &str,
    now: Timestamp,
) -> AccessRequestStatus {
    let mut intent = current.clone();
    if action == IntentAction::Grant {
        intent.granted_at.clone_from(&plan.status.granted_at);
        intent.expires_at.clone_from(&plan.status.expires_at);
    }
    intent.intent = Some(intent_over(current, action, uid, now));
    intent
}

/// The intent to record for `action` over `current` status.
pub fn intent_over(
    current: &AccessRequestStatus,
    action: IntentAction,
    uid: &str,
    now: Timestamp,
) -> GrantIntent {
    GrantIntent {
        action,
        key: GrantKey::for_request(uid).as_str().to_owned(),
        time: Time(now),
        recorded: action == IntentAction::Revoke && grants_recorded(current),
    }
}

/// Whether a revoke's intent is open in `status` (announced ahead of the grant's end, or
/// left by a revoke that failed).
pub fn revoke_open(status: &AccessRequestStatus) -> bool {
    status
        .intent
        .as_ref()
        .is_some_and(|open| open.action == IntentAction::Revoke)
}

/// Whether every grant made for the request is on record in `status`: no intent is open, or
/// the one open is a revoke written while that held. A grant intent left open (a crash
/// between the grant and its outcome) means the target may hold one status does not name.
pub fn grants_recorded(status: &AccessRequestStatus) -> bool {
    status
        .intent
        .as_ref()
        .is_none_or(|open| open.action == IntentAction::Revoke && open.recorded)
}

/// The status after a successful apply: the plan's, with what the provider reported about
/// the grant. A grant or revoke that went through ends every failing step; a plan with no
/// effect keeps the bookkeeping `decide` left (a look at the grant that keeps failing).
pub fn after_success(
    mut status: AccessRequestStatus,
    effect: &Effect,
    applied: &Applied,
) -> AccessRequestStatus {
    if let Some(record) = &applied.grant {
        status.grant = Some(Grant {
            provider: record.target.as_str().to_owned(),
            reference: record.reference.clone(),
            cloud_enforced_expiry: record.cloud_enforced_expiry,
        });
        if record.activity_lookup.is_some() {
            status.activity_lookup = record.activity_lookup.clone();
        }
    }
    if *effect != Effect::None {
        clear_failures(&mut status);
    }
    status
}

/// The status of a request whose approved grant was refused for good.
fn refused_grant(
    mut status: AccessRequestStatus,
    written_entries: usize,
    message: &str,
    now: Timestamp,
) -> AccessRequestStatus {
    status.phase = Some(Phase::Failed);
    status.granted_at = None;
    status.expires_at = None;
    status.grant = None;
    status.message = Some(format!("could not grant: {message}"));
    // The plan's own `Granted` never happened; what the timeline held before stays (each entry
    // keeps its ordinal: its audit event may be delivered already).
    let mut index = 0;
    status.timeline.retain(|entry| {
        index += 1;
        index <= written_entries || entry.event != TimelineEvent::Granted.as_str()
    });
    status.timeline.push(TimelineEntry {
        time: Time(now),
        event: TimelineEvent::Ended(Phase::Failed).as_str().to_owned(),
        actor: None,
        message: Some(message.to_owned()),
    });
    clear_failures(&mut status);
    set_condition(
        &mut status.conditions,
        GRANTED,
        ConditionStatus::False,
        "GrantFailed",
        message,
        now,
        status.observed_generation,
    );
    status
}

/// Whether two statuses differ in anything but condition transition times.
pub fn differs(left: &AccessRequestStatus, right: &AccessRequestStatus) -> bool {
    let strip = |status: &AccessRequestStatus| {
        let mut status = status.clone();
        // Not the controller's to write: see `write_status`.
        status.activity = None;
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
    fn a_refused_grant_fails_the_request_and_clears_the_grant() {
        let now = at("2026-01-01T00:00:00Z");
        let status = AccessRequestStatus {
            phase: Some(Phase::Active),
            granted_at: Some(Time(now)),
            expires_at: Some(Time(now)),
            timeline: vec![TimelineEntry {
                time: Time(now),
                event: "Granted".into(),
                actor: None,
                message: None,
            }],
            ..AccessRequestStatus::default()
        };
        let failed = refused_grant(status, 0, "forbidden", now);
        assert_eq!(failed.phase, Some(Phase::Failed));
        assert_eq!(failed.expires_at, None);
        assert_eq!(failed.timeline.len(), 1);
        assert_eq!(failed.timeline[0].event, "Failed");
        assert_eq!(failed.conditions[0].reason, "GrantFailed");
    }

    #[test]
    fn a_failing_revocation_is_announced_when_it_starts_and_again_while_it_lasts() {
        let start = at("2026-01-01T00:00:00Z");
        let mut written = AccessRequestStatus {
            phase: Some(Phase::Expired),
            ..AccessRequestStatus::default()
        };
        assert!(
            revocation_failing_is_news(&written, start),
            "news when it starts"
        );
        set_condition(
            &mut written.conditions,
            REVOCATION_FAILING,
            ConditionStatus::True,
            "RevokeFailed",
            "denied",
            start,
            None,
        );
        written
            .timeline
            .push(entry(TimelineEvent::RevocationFailing, "denied", start));
        assert!(!revocation_failing_is_news(
            &written,
            at("2026-01-01T00:14:59Z")
        ));
        assert!(revocation_failing_is_news(
            &written,
            at("2026-01-01T00:15:00Z")
        ));
        // Announced again: the next one is due 15 minutes after that.
        written.timeline.push(entry(
            TimelineEvent::RevocationFailing,
            "still",
            at("2026-01-01T00:15:00Z"),
        ));
        assert!(!revocation_failing_is_news(
            &written,
            at("2026-01-01T00:20:00Z")
        ));
        // The condition without an entry (cut from a long timeline): announced.
        written.timeline.clear();
        assert!(revocation_failing_is_news(
            &written,
            at("2026-01-01T00:20:00Z")
        ));
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

    #[test]
    fn differs_ignores_the_activity_the_controller_does_not_write() {
        let left = AccessRequestStatus::default();
        let right = AccessRequestStatus {
            activity: Some(crate::crd::v1alpha1::Activity {
                actions: 3,
                ..Default::default()
            }),
            ..AccessRequestStatus::default()
        };
        assert!(!differs(&left, &right));
    }
}
