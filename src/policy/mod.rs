//! Policy evaluation: whether a request is allowed under a policy, who may decide on it or end
//! it, and how recorded decisions add up. Pure: no client, no clock.

pub mod auto_approve;

use std::time::Duration;

use kube::ResourceExt;

use crate::{
    crd::v1alpha1::{
        AccessPolicy, AccessRequestSpec, Approval, Decision, Phase, PolicyRole, Requester,
        SubjectSet,
    },
    subject::{self, Subject},
};

/// The shortest `idleTimeout` a policy may set: activity reaches a request up to
/// [`crate::activity::recorder::WRITE_INTERVAL`] late, plus the API server's batch wait.
pub const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a policy refuses something. The messages are shown to people as they are.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// The request names a policy that does not exist.
    #[error("policy {policy} does not exist")]
    PolicyNotFound {
        /// The policy named.
        policy: String,
    },
    /// The policy has no such role.
    #[error("policy {policy} has no role {role}; it offers {offered}")]
    RoleNotFound {
        /// The policy.
        policy: String,
        /// The role asked for.
        role: String,
        /// The roles it has, comma-separated.
        offered: String,
    },
    /// The requester is not among the policy's requesters.
    #[error("{user} is not a requester of policy {policy}")]
    NotARequester {
        /// The requester.
        user: String,
        /// The policy.
        policy: String,
    },
    /// Someone named another subject without being a delegate.
    #[error(
        "{user} may not request access for {subject}: only delegates of policy {policy} may name another subject"
    )]
    NotADelegate {
        /// The requester.
        user: String,
        /// The subject named.
        subject: String,
        /// The policy.
        policy: String,
    },
    /// A delegate named a subject that may not hold the role.
    #[error(
        "{subject} is not a requester of policy {policy}, so no one may request access for them"
    )]
    SubjectNotARequester {
        /// The subject named.
        subject: String,
        /// The policy.
        policy: String,
    },
    /// `spec.subject` does not parse.
    #[error(transparent)]
    InvalidSubject(#[from] subject::Error),
    /// The request asks for longer than the role allows.
    #[error(
        "duration {requested} is longer than the maximum {max} for role {role} of policy {policy}"
    )]
    DurationTooLong {
        /// What was asked for.
        requested: String,
        /// The role's maximum, or the policy's.
        max: String,
        /// The role.
        role: String,
        /// The policy.
        policy: String,
    },
    /// Neither the request nor the policy gives a duration.
    #[error("policy {policy} has no defaultDuration, so the request must name a duration")]
    DurationRequired {
        /// The policy.
        policy: String,
    },
    /// A duration in the policy or request that the schema should have refused.
    #[error("{what} {value:?} is not a valid duration")]
    InvalidDuration {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: String,
    },
    /// The policy requires a reason and none was given.
    #[error("policy {policy} requires a reason")]
    ReasonRequired {
        /// The policy.
        policy: String,
    },
    /// The reason does not match the policy's pattern.
    #[error("reason {reason:?} does not match the pattern {pattern:?} required by policy {policy}")]
    ReasonMismatch {
        /// The reason given.
        reason: String,
        /// The pattern.
        pattern: String,
        /// The policy.
        policy: String,
    },
    /// The policy's reason pattern does not compile; an admin must fix the policy.
    #[error("policy {policy} has a reason pattern that is not a valid regular expression: {error}")]
    InvalidReasonPattern {
        /// The policy.
        policy: String,
        /// What the regex engine said.
        error: String,
    },
    /// Someone who is not an approver tried to approve or deny.
    #[error("{user} is not an approver of policy {policy}")]
    NotAnApprover {
        /// Who tried.
        user: String,
        /// The policy.
        policy: String,
    },
    /// The requester or subject tried to decide on their own request.
    #[error(
        "{user} may not approve or deny their own request: policy {policy} does not allow self-approval"
    )]
    SelfApproval {
        /// Who tried.
        user: String,
        /// The policy.
        policy: String,
    },
    /// Someone decided twice.
    #[error(
        "{user} has already decided on this request ({decision:?}); a decision cannot be changed"
    )]
    AlreadyDecided {
        /// Who tried.
        user: String,
        /// What they decided before.
        decision: Decision,
    },
    /// A decision on a request that has ended.
    #[error("the request has already ended ({phase:?}); it can no longer be approved or denied")]
    RequestEnded {
        /// Its final phase.
        phase: Phase,
    },
    /// Someone tried to end a request they have nothing to do with.
    #[error(
        "{user} may not revoke this request: only its requester, its subject or an approver of policy {policy} may"
    )]
    NotAllowedToRevoke {
        /// Who tried.
        user: String,
        /// The policy.
        policy: String,
    },
}

impl Refusal {
    /// A CamelCase reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::PolicyNotFound { .. } => "PolicyNotFound",
            Self::RoleNotFound { .. } => "RoleNotFound",
            Self::NotARequester { .. } => "NotARequester",
            Self::NotADelegate { .. } => "NotADelegate",
            Self::SubjectNotARequester { .. } => "SubjectNotARequester",
            Self::InvalidSubject(_) => "InvalidSubject",
            Self::DurationTooLong { .. } => "DurationTooLong",
            Self::DurationRequired { .. } => "DurationRequired",
            Self::InvalidDuration { .. } => "InvalidDuration",
            Self::ReasonRequired { .. } => "ReasonRequired",
            Self::ReasonMismatch { .. } => "ReasonMismatch",
            Self::InvalidReasonPattern { .. } => "InvalidReasonPattern",
            Self::NotAnApprover { .. } => "NotAnApprover",
            Self::SelfApproval { .. } => "SelfApproval",
            Self::AlreadyDecided { .. } => "AlreadyDecided",
            Self::RequestEnded { .. } => "RequestEnded",
            Self::NotAllowedToRevoke { .. } => "NotAllowedToRevoke",
        }
    }

    /// Whether the request can never be granted under the policy as written (the policy or
    /// role is gone or broken) rather than refused by it.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            Self::PolicyNotFound { .. }
                | Self::RoleNotFound { .. }
                | Self::InvalidSubject(_)
                | Self::InvalidDuration { .. }
                | Self::InvalidReasonPattern { .. }
        )
    }
}

impl SubjectSet {
    /// Whether this username or one of these groups is listed.
    pub fn admits(&self, username: &str, groups: &[String]) -> bool {
        self.users.iter().any(|user| user == username)
            || self.groups.iter().any(|group| groups.contains(group))
    }

    /// Whether the subject itself is listed: its username, or the group it names. A user's
    /// groups are not known when someone else names them, so only a listed username counts.
    pub fn admits_subject(&self, subject: &Subject) -> bool {
        match subject {
            Subject::Group(group) => self.groups.contains(group),
            other => other
                .username()
                .is_some_and(|username| self.users.contains(&username)),
        }
    }
}

/// What a policy allows a request to receive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed<'policy> {
    /// The role, as the policy defines it.
    pub role: &'policy PolicyRole,
    /// Who receives it.
    pub subject: Subject,
    /// For how long, once granted.
    pub duration: Duration,
    /// Distinct approvals needed.
    pub approvals_required: u32,
}

/// The policy's role of this name.
pub fn find_role<'policy>(
    policy: &'policy AccessPolicy,
    role: &str,
) -> Result<&'policy PolicyRole, Refusal> {
    policy
        .spec
        .roles
        .iter()
        .find(|candidate| candidate.name == role)
        .ok_or_else(|| Refusal::RoleNotFound {
            policy: policy.name_any(),
            role: role.to_owned(),
            offered: policy
                .spec
                .roles
                .iter()
                .map(|role| role.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The role and subject a request's grant is for, as the policy has the role now; `None` when
/// the role is gone, the request has no requester or its subject does not parse.
pub fn granted_role<'policy>(
    policy: &'policy AccessPolicy,
    spec: &AccessRequestSpec,
) -> Option<(&'policy PolicyRole, Subject)> {
    let requester = spec.requester.as_ref()?;
    let role = find_role(policy, &spec.role).ok()?;
    let subject = Subject::of_request(spec.subject.as_deref(), &requester.username).ok()?;
    Some((role, subject))
}

/// Checks everything a policy says about a request and its authenticated requester.
pub fn check_request<'policy>(
    policy: &'policy AccessPolicy,
    spec: &AccessRequestSpec,
    requester: &Requester,
) -> Result<Allowed<'policy>, Refusal> {
    let name = policy.name_any();
    let role = find_role(policy, &spec.role)?;
    let subject = Subject::of_request(spec.subject.as_deref(), &requester.username)?;

    let for_themselves = subject.username().as_deref() == Some(requester.username.as_str());
    if for_themselves {
        if !policy
            .spec
            .requesters
            .admits(&requester.username, &requester.groups)
        {
            return Err(Refusal::NotARequester {
                user: requester.username.clone(),
                policy: name,
            });
        }
    } else {
        if !policy
            .spec
            .delegates
            .admits(&requester.username, &requester.groups)
        {
            return Err(Refusal::NotADelegate {
                user: requester.username.clone(),
                subject: subject.to_string(),
                policy: name,
            });
        }
        if !policy.spec.requesters.admits_subject(&subject) {
            return Err(Refusal::SubjectNotARequester {
                subject: subject.to_string(),
                policy: name,
            });
        }
    }

    let duration = resolve_duration(policy, role, spec)?;
    check_reason(policy, spec.reason.as_deref())?;
    let approvals_required = role
        .approvals_required
        .unwrap_or(policy.spec.approvals_required)
        .max(0)
        .unsigned_abs();
    Ok(Allowed {
        role,
        subject,
        duration,
        approvals_required,
    })
}

/// The duration a request receives: its own, else the policy default capped at the maximum;
/// never above the maximum (the role's override first, then the policy's).
pub fn resolve_duration(
    policy: &AccessPolicy,
    role: &PolicyRole,
    spec: &AccessRequestSpec,
) -> Result<Duration, Refusal> {
    let max_text = role
        .max_duration
        .as_ref()
        .unwrap_or(&policy.spec.max_duration);
    let max = max_text.to_std().map_err(|_| Refusal::InvalidDuration {
        what: "maxDuration",
        value: max_text.to_string(),
    })?;
    match &spec.duration {
        Some(requested) => {
            let duration = requested.to_std().map_err(|_| Refusal::InvalidDuration {
                what: "duration",
                value: requested.to_string(),
            })?;
            if duration > max {
                return Err(Refusal::DurationTooLong {
                    requested: requested.to_string(),
                    max: max_text.to_string(),
                    role: role.name.clone(),
                    policy: policy.name_any(),
                });
            }
            Ok(duration)
        }
        None => {
            let default =
                policy
                    .spec
                    .default_duration
                    .as_ref()
                    .ok_or_else(|| Refusal::DurationRequired {
                        policy: policy.name_any(),
                    })?;
            let default = default.to_std().map_err(|_| Refusal::InvalidDuration {
                what: "defaultDuration",
                value: default.to_string(),
            })?;
            Ok(default.min(max))
        }
    }
}

/// Checks the reason against the policy's `reason` block.
pub fn check_reason(policy: &AccessPolicy, reason: Option<&str>) -> Result<(), Refusal> {
    let Some(rules) = &policy.spec.reason else {
        return Ok(());
    };
    let reason = reason.map(str::trim).filter(|reason| !reason.is_empty());
    let Some(reason) = reason else {
        return if rules.required {
            Err(Refusal::ReasonRequired {
                policy: policy.name_any(),
            })
        } else {
            Ok(())
        };
    };
    let Some(pattern) = &rules.pattern else {
        return Ok(());
    };
    let regex = regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|error| Refusal::InvalidReasonPattern {
            policy: policy.name_any(),
            error: error.to_string(),
        })?;
    if regex.is_match(reason) {
        Ok(())
    } else {
        Err(Refusal::ReasonMismatch {
            reason: reason.to_owned(),
            pattern: pattern.clone(),
            policy: policy.name_any(),
        })
    }
}

/// Whether this person would receive or asked for the access: the requester, or included in
/// the subject.
fn is_party(spec: &AccessRequestSpec, username: &str, groups: &[String]) -> bool {
    let requester = spec
        .requester
        .as_ref()
        .map(|requester| requester.username.as_str());
    if requester == Some(username) {
        return true;
    }
    let subject = spec.subject.as_deref().or(requester);
    subject
        .and_then(|subject| Subject::parse(subject).ok())
        .is_some_and(|subject| subject.includes(username, groups))
}

/// Whether a person may decide on a request under the policy as it is now.
pub fn check_decider(
    policy: &AccessPolicy,
    spec: &AccessRequestSpec,
    username: &str,
    groups: &[String],
) -> Result<(), Refusal> {
    if !policy.spec.approvers.admits(username, groups) {
        return Err(Refusal::NotAnApprover {
            user: username.to_owned(),
            policy: policy.name_any(),
        });
    }
    if !policy.spec.allow_self_approval && is_party(spec, username, groups) {
        return Err(Refusal::SelfApproval {
            user: username.to_owned(),
            policy: policy.name_any(),
        });
    }
    Ok(())
}

/// Whether a person may record a new decision: eligible, the request still open, and no
/// earlier decision of theirs.
pub fn check_new_decision(
    policy: &AccessPolicy,
    spec: &AccessRequestSpec,
    phase: Option<Phase>,
    earlier: &[Approval],
    username: &str,
    groups: &[String],
) -> Result<(), Refusal> {
    if let Some(phase) = phase.filter(|phase| phase.is_final()) {
        return Err(Refusal::RequestEnded { phase });
    }
    if let Some(previous) = earlier.iter().find(|record| record.user == username) {
        return Err(Refusal::AlreadyDecided {
            user: username.to_owned(),
            decision: previous.decision,
        });
    }
    check_decider(policy, spec, username, groups)
}

/// Whether a person may end a request early: its requester, someone included in its subject,
/// or an approver of its policy. Without the policy only the first two may.
pub fn check_revoker(
    policy: Option<&AccessPolicy>,
    spec: &AccessRequestSpec,
    username: &str,
    groups: &[String],
) -> Result<(), Refusal> {
    let approver = policy.is_some_and(|policy| policy.spec.approvers.admits(username, groups));
    if approver || is_party(spec, username, groups) {
        Ok(())
    } else {
        Err(Refusal::NotAllowedToRevoke {
            user: username.to_owned(),
            policy: spec.policy.clone(),
        })
    }
}

/// How the recorded decisions add up under the policy as it is now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally<'records> {
    /// Distinct eligible approvers, in the order they approved.
    pub approved_by: Vec<&'records Approval>,
    /// The first eligible denial, if any.
    pub denied_by: Option<&'records Approval>,
    /// Decisions that no longer count, and why (the approver left the policy, say).
    pub not_counted: Vec<(&'records Approval, Refusal)>,
}

/// Counts each person's first decision once, if they may still decide under `policy`.
pub fn tally<'records>(
    policy: &AccessPolicy,
    spec: &AccessRequestSpec,
    records: &'records [Approval],
) -> Tally<'records> {
    let mut tally = Tally::default();
    let mut seen: Vec<&str> = Vec::new();
    for record in records {
        if seen.contains(&record.user.as_str()) {
            continue;
        }
        seen.push(&record.user);
        match check_decider(policy, spec, &record.user, &record.groups) {
            Err(refusal) => tally.not_counted.push((record, refusal)),
            Ok(()) => match record.decision {
                Decision::Approved => tally.approved_by.push(record),
                Decision::Denied => {
                    tally.denied_by.get_or_insert(record);
                }
            },
        }
    }
    tally
}

#[cfg(test)]
mod tests;
