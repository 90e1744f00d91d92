//! The request's conditions: their types, and setting one so that its transition time moves
//! only when its status does.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// That the request was approved.
pub const APPROVED: &str = "Approved";
/// That the role is granted (`kubectl wait --for=condition=Granted`).
pub const GRANTED: &str = "Granted";
/// That the auto-approve expression failed or did not match.
pub const AUTO_APPROVE: &str = "AutoApprove";
/// That granting failed and will be retried.
pub const GRANT_FAILING: &str = "GrantFailing";
/// That revoking keeps failing; present (True) only while it does.
pub const REVOCATION_FAILING: &str = "RevocationFailing";
/// That the grant cannot be looked at (drift is not checked until it can); present only while
/// it cannot.
pub const VERIFY_FAILING: &str = "VerifyFailing";

/// A condition's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    /// True.
    True,
    /// False.
    False,
}

impl ConditionStatus {
    pub(crate) fn as_str(self) -> &'static str {
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

/// Whether the condition of this type is True.
pub fn is_true(conditions: &[Condition], kind: &str) -> bool {
    conditions
        .iter()
        .any(|condition| condition.type_ == kind && condition.status == "True")
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
}
