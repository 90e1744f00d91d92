//! What a reconcile tells people: the Kubernetes Events it publishes and the entries it adds
//! to the request's timeline, each kind an enum so that nothing compares strings.

use crate::crd::v1alpha1::Phase;

/// Whether an Event reports something normal or something a person should look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// A normal transition.
    Normal,
    /// A refusal or failure.
    Warning,
}

/// Why an Event was published: its `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A request was made.
    Requested,
    /// An approver agreed.
    Approval,
    /// An approver refused.
    Denial,
    /// The request was approved (by people, the policy, or its expression).
    Approved,
    /// The role was granted.
    Granted,
    /// A grant changed or removed by hand was restored.
    GrantRepaired,
    /// The grant ran its course, or the request timed out waiting.
    Expired,
    /// Ended early.
    Revoked,
    /// Refused by an approver or the policy.
    Denied,
    /// Could not be granted.
    Failed,
    /// A grant failed and is retried.
    GrantFailing,
    /// A revoke failed and is retried until it succeeds.
    RevocationFailing,
    /// A revoke found no record of a cloud grant the request says it holds.
    GrantRecordMissing,
}

impl Reason {
    /// The reason as Events carry it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "Requested",
            Self::Approval => "Approval",
            Self::Denial => "Denial",
            Self::Approved => "Approved",
            Self::Granted => "Granted",
            Self::GrantRepaired => "GrantRepaired",
            Self::Expired => "Expired",
            Self::Revoked => "Revoked",
            Self::Denied => "Denied",
            Self::Failed => "Failed",
            Self::GrantFailing => "GrantFailing",
            Self::RevocationFailing => "RevocationFailing",
            Self::GrantRecordMissing => "GrantRecordMissing",
        }
    }

    /// The reason of moving to a final phase.
    pub const fn ended(phase: Phase) -> Self {
        match phase {
            Phase::Expired => Self::Expired,
            Phase::Revoked => Self::Revoked,
            Phase::Denied => Self::Denied,
            // Pending and Active are not ends; `end` is never called with them.
            Phase::Failed | Phase::Pending | Phase::Active => Self::Failed,
        }
    }

    /// Whether Events of this reason are warnings.
    pub const fn severity(self) -> Severity {
        match self {
            Self::Failed
            | Self::GrantRepaired
            | Self::GrantFailing
            | Self::RevocationFailing
            | Self::GrantRecordMissing => Severity::Warning,
            Self::Requested
            | Self::Approval
            | Self::Denial
            | Self::Approved
            | Self::Granted
            | Self::Expired
            | Self::Revoked
            | Self::Denied => Severity::Normal,
        }
    }
}

/// A Kubernetes Event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// Why.
    pub reason: Reason,
    /// For people.
    pub note: String,
}

impl Notice {
    /// An Event of this reason.
    pub fn new(reason: Reason, note: impl Into<String>) -> Self {
        Self {
            reason,
            note: note.into(),
        }
    }
}

/// What a timeline entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimelineEvent {
    /// The request was made.
    Requested,
    /// An approver agreed.
    Approval,
    /// An approver refused.
    Denial,
    /// The request was approved.
    Approved,
    /// The role was granted.
    Granted,
    /// The grant was restored after a change by hand.
    Repaired,
    /// Still pending after the policy's reminder interval.
    Reminder,
    /// The grant ends within the policy's expiry warning.
    ExpiringSoon,
    /// Taking the grant away failed, and is retried until it succeeds.
    RevocationFailing,
    /// Taking the grant away succeeded after failing.
    RevocationRecovered,
    /// The request ended in this phase.
    Ended(Phase),
}

impl TimelineEvent {
    /// The event as `status.timeline[].event` shows it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "Requested",
            Self::Approval => "Approval",
            Self::Denial => "Denial",
            Self::Approved => "Approved",
            Self::Granted => "Granted",
            Self::Repaired => "Repaired",
            Self::Reminder => "Reminder",
            Self::ExpiringSoon => "ExpiringSoon",
            Self::RevocationFailing => "RevocationFailing",
            Self::RevocationRecovered => "RevocationRecovered",
            Self::Ended(phase) => phase.as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_are_named_after_their_phase() {
        for phase in [Phase::Expired, Phase::Revoked, Phase::Denied, Phase::Failed] {
            assert_eq!(Reason::ended(phase).as_str(), phase.as_str());
            assert_eq!(TimelineEvent::Ended(phase).as_str(), phase.as_str());
        }
        assert_eq!(Reason::Failed.severity(), Severity::Warning);
        assert_eq!(Reason::Expired.severity(), Severity::Normal);
    }
}
