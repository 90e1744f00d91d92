//! Step 2, no client: from a fresh read of the request and its policy, and the time, decide
//! what to do (grant, revoke, nothing), what the status becomes, which Events to publish and
//! when to look again.
//!
//! # Invariants
//! - Final phases (Expired, Revoked, Denied, Failed) are never left.
//! - A grant is planned only when the policy, as read just now, allows the request and
//!   enough distinct eligible approvers agree (or the policy needs none, or auto-approves).
//! - A request that may hold a grant ends only through a planned revoke.
//! - `expiresAt` is set once, with the first grant attempt, and never moved: a retried grant
//!   keeps it, and a grant past it is revoked.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::{
    conditions::{
        self, APPROVED, AUTO_APPROVE, ConditionStatus, GRANT_FAILING, GRANTED, REVOCATION_FAILING,
        VERIFY_FAILING, is_true, set_condition,
    },
    failures::{StepFailure, after_failure, clear_failures},
    notice::{Notice, Reason, TimelineEvent},
    outcome::{intent_over, revoke_open},
};
use crate::{
    crd::{
        ApiDuration,
        v1alpha1::{
            AccessPolicy, AccessRequest, AccessRequestStatus, Approval, Decision, FINALIZER,
            IntentAction, Phase, PolicyRole, Revocation, TimelineEntry, annotations,
        },
    },
    policy::{self, Refusal, auto_approve},
    provider::{GrantState, identity::Identity},
    retry::until,
};

/// When to look again at a request whose policy could not be read.
pub const POLICY_RETRY: Duration = Duration::from_secs(10);

/// Longest wait before looking at a request again, whatever its timers say; the driver
/// shortens it to `--resync-interval`.
pub const RESYNC: Duration = Duration::from_secs(3600);

/// How long before a grant ends its subject is told, when the policy does not say.
pub const DEFAULT_EXPIRY_WARNING: Duration = Duration::from_secs(600);

/// How long before a grant's end a look announces its revoke: it writes the revoke intent
/// then, so that at `expiresAt` the delete follows a read alone (intent before action, written
/// ahead of time). While expiries come due by the dozen a second, every request before the
/// delete waits its turn at the API server, and the intent write is the costliest of them.
pub const ANNOUNCE_REVOKE: Duration = Duration::from_secs(2);

/// What the controller read, fresh from the API server.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The request.
    pub request: AccessRequest,
    /// Its policy; `None` when it does not exist.
    pub policy: Option<AccessPolicy>,
    /// The grant as the provider has it, for an active request; `None` when not looked at.
    pub grant: Option<GrantState>,
    /// Why the active grant could not be looked at, when it could not: drift is then not
    /// repaired, but nothing else waits for it.
    pub unverified: Option<Unverified>,
    /// The decision records that carry admission's seal, oldest first: the only ones counted.
    pub decisions: Vec<Approval>,
    /// Who the records without a valid seal claim to be (written around admission).
    pub forged: Vec<String>,
    /// Whether the grant window in status (if any) carries the operator's seal. A window it
    /// did not write is never granted from, and an active grant with one is revoked.
    pub window_sealed: bool,
    /// Why the policy could not be read, when it could not (not: it does not exist). Nothing
    /// is granted or refused on account of the policy then; expiry, revoke and delete go on.
    pub policy_unreadable: Option<String>,
    /// Whether `policy` came from the watch cache and has not been read fresh since.
    pub policy_cached: bool,
}

/// Whether the finalizer must change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinalizerChange {
    /// Leave it as it is.
    Keep,
    /// Add it before anything else happens.
    Add,
    /// Remove it after everything else is done.
    Remove,
}

/// The one effect on the outside world a reconcile may have.
#[derive(Clone, Debug, PartialEq, Eq)]
// One plan exists per reconcile and none are kept, so the large variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Effect {
    /// Nothing.
    None,
    /// Grant the role (create or adopt).
    Grant {
        /// The role as the policy defines it now.
        role: PolicyRole,
        /// Who receives it, with what is known about them.
        identity: Identity,
        /// How it was approved, for the target's own record: "approved by bob".
        approval: String,
        /// When it ends.
        expires_at: Timestamp,
    },
    /// Remove whatever is granted for the request.
    Revoke,
}

/// Why the active grant could not be looked at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unverified {
    /// What went wrong.
    pub message: String,
    /// How long the target asked the operator to wait, when it said.
    pub retry_after: Option<Duration>,
}

/// What to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Finalizer change.
    pub finalizer: FinalizerChange,
    /// The effect.
    pub effect: Effect,
    /// The status once the effect has succeeded.
    pub status: AccessRequestStatus,
    /// Events, once the status is written.
    pub notices: Vec<Notice>,
    /// When to look again.
    pub requeue_after: Duration,
}

impl Plan {
    /// Whether carrying the plan out does anything that a policy may have decided: everything
    /// but a plan that changes nothing, and the revoke of a grant whose time is up or whose
    /// request is being deleted (neither reads the policy, and neither may wait on reading it).
    pub fn rests_on_policy(&self, request: &AccessRequest, now: Timestamp) -> bool {
        let current = request.status.as_ref();
        match self.effect {
            Effect::Grant { .. } => true,
            Effect::Revoke => {
                let deleting = request.metadata.deletion_timestamp.is_some();
                let time_up = current
                    .and_then(|status| status.expires_at.as_ref())
                    .is_some_and(|expires_at| expires_at.0 <= now);
                !(deleting || time_up)
            }
            // Releasing an ended request's finalizer rests on nothing but its status, and
            // announcing the revoke of a grant about to end on nothing but its time.
            Effect::None => {
                self.finalizer == FinalizerChange::Add
                    || !self.notices.is_empty()
                    || current.is_none_or(|current| {
                        let mut compared = self.status.clone();
                        if revoke_open(&compared) {
                            compared.intent.clone_from(&current.intent);
                        }
                        super::outcome::differs(current, &compared)
                    })
            }
        }
    }
}

/// Decides what to do with a request.
pub fn decide(observed: &Observed, now: Timestamp) -> Plan {
    let request = &observed.request;
    let mut builder = Builder::new(request, &observed.decisions, observed.window_sealed, now);
    builder.policy_unreadable = observed.policy_unreadable.is_some();
    let has_finalizer = request.finalizers().iter().any(|f| f == FINALIZER);

    if request.metadata.deletion_timestamp.is_some() {
        if has_finalizer {
            builder.deleting();
            builder.plan.finalizer = FinalizerChange::Remove;
        }
        return builder.finish();
    }
    match builder.plan.status.phase {
        // Ended: nothing to do but release it, which follows for every plan that ends it.
        Some(Phase::Expired | Phase::Revoked | Phase::Denied | Phase::Failed) => {}
        Some(Phase::Active) => {
            if !has_finalizer {
                builder.plan.finalizer = FinalizerChange::Add;
            }
            builder.active(
                observed.policy.as_ref(),
                observed.grant.as_ref(),
                observed.unverified.as_ref(),
            );
        }
        None | Some(Phase::Pending) => {
            if !has_finalizer {
                builder.plan.finalizer = FinalizerChange::Add;
            }
            builder.pending(observed.policy.as_ref());
        }
    }
    let mut plan = builder.finish();
    // A plan that ends the request (a revoke gone through, a denial, a timeout, or one ended
    // before and not yet released) releases it in the same pass, once its status and audit
    // events are written: the request holds nothing then, and a look of its own would cost a
    // read of it and of its policy. A revoke that fails keeps it (`outcome` releases only on
    // success).
    if has_finalizer && plan.status.phase.is_some_and(Phase::is_final) {
        plan.finalizer = FinalizerChange::Remove;
    }
    plan
}

/// The decision records on the request, oldest first, sealed or not (observe keeps only the
/// sealed ones for `decide`).
pub fn decisions(request: &AccessRequest) -> Result<Vec<Approval>, serde_json::Error> {
    match request.annotations().get(annotations::DECISIONS) {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text),
    }
}

/// The verified early end admission recorded, if any. A record that does not parse still
/// ends the request: when in doubt, take access away.
pub fn revocation(request: &AccessRequest) -> Option<Revocation> {
    let text = request.annotations().get(annotations::REVOCATION)?;
    Some(serde_json::from_str(text).unwrap_or_else(|_| Revocation {
        user: "unknown".into(),
        time: Time(Timestamp::UNIX_EPOCH),
        comment: Some("unreadable revocation record".into()),
    }))
}

struct Builder<'a> {
    request: &'a AccessRequest,
    /// The sealed decision records.
    decisions: &'a [Approval],
    window_sealed: bool,
    policy_unreadable: bool,
    /// The grant ends within [`ANNOUNCE_REVOKE`] and nothing else is to be done: the plan
    /// records the revoke's intent now.
    announce_revoke: bool,
    now: Timestamp,
    generation: Option<i64>,
    plan: Plan,
}

impl<'a> Builder<'a> {
    fn new(
        request: &'a AccessRequest,
        decisions: &'a [Approval],
        window_sealed: bool,
        now: Timestamp,
    ) -> Self {
        Self {
            request,
            decisions,
            window_sealed,
            policy_unreadable: false,
            announce_revoke: false,
            now,
            generation: request.metadata.generation,
            plan: Plan {
                finalizer: FinalizerChange::Keep,
                effect: Effect::None,
                status: request.status.clone().unwrap_or_default(),
                notices: Vec::new(),
                requeue_after: RESYNC,
            },
        }
    }

    fn finish(mut self) -> Plan {
        self.plan.status.observed_generation = self.generation;
        // The plan's status is the state once its effect is done: no intent is left open, but
        // for the announced revoke of a grant about to end (one already open stays as it is).
        self.plan.status.intent = None;
        if self.announce_revoke
            && self.plan.effect == Effect::None
            && let Some(current) = &self.request.status
        {
            let uid = self.request.metadata.uid.as_deref().unwrap_or_default();
            self.plan.status.intent = if revoke_open(current) {
                current.intent.clone()
            } else {
                Some(intent_over(current, IntentAction::Revoke, uid, self.now))
            };
        }
        if let Some(waiting) = self.backing_off() {
            return waiting;
        }
        if self.plan.effect == Effect::None {
            // Nothing to grant or revoke any more: no such step is failing. A look at the
            // grant that keeps failing keeps its count.
            let status = &mut self.plan.status;
            if is_true(&status.conditions, VERIFY_FAILING) {
                conditions::clear_condition(&mut status.conditions, GRANT_FAILING);
                conditions::clear_condition(&mut status.conditions, REVOCATION_FAILING);
            } else {
                clear_failures(status);
            }
        }
        self.plan
    }

    /// The plan while the step it would take again is backing off: nothing happens and
    /// nothing is written before the next attempt is due. A different step (a revoke while a
    /// grant fails) is not held back.
    fn backing_off(&self) -> Option<Plan> {
        let current = self.request.status.as_ref()?;
        let due = current.next_retry_time.as_ref()?.0;
        let failing = match self.plan.effect {
            Effect::Grant { .. } => GRANT_FAILING,
            Effect::Revoke => REVOCATION_FAILING,
            Effect::None => return None,
        };
        if self.now >= due || !is_true(&current.conditions, failing) {
            return None;
        }
        Some(Plan {
            finalizer: match self.plan.finalizer {
                FinalizerChange::Add => FinalizerChange::Add,
                // Released only once the revoke went through.
                FinalizerChange::Keep | FinalizerChange::Remove => FinalizerChange::Keep,
            },
            effect: Effect::None,
            status: current.clone(),
            notices: Vec::new(),
            requeue_after: until(self.now, due).min(self.plan.requeue_after),
        })
    }

    fn requester(&self) -> Option<&str> {
        self.request
            .spec
            .requester
            .as_ref()
            .map(|requester| requester.username.as_str())
    }

    fn record(&mut self, event: TimelineEvent, actor: Option<&str>, message: &str) {
        self.plan.status.timeline.push(TimelineEntry {
            time: Time(self.now),
            event: event.as_str().to_owned(),
            actor: actor.map(str::to_owned),
            message: Some(message.to_owned()).filter(|message| !message.is_empty()),
        });
    }

    fn notice(&mut self, reason: Reason, note: String) {
        self.plan.notices.push(Notice::new(reason, note));
    }

    fn condition(&mut self, kind: &str, status: ConditionStatus, reason: &str, message: &str) {
        set_condition(
            &mut self.plan.status.conditions,
            kind,
            status,
            reason,
            message,
            self.now,
            self.generation,
        );
    }

    /// Moves to a final phase; the caller has planned the revoke if one is needed.
    fn end(&mut self, phase: Phase, reason: &str, actor: Option<&str>, message: &str) {
        // Ending always revokes: it is idempotent, and a crash between a grant and its
        // status write leaves a grant that a Pending status does not show.
        self.plan.effect = Effect::Revoke;
        let was_active = self.plan.status.phase == Some(Phase::Active);
        self.plan.status.phase = Some(phase);
        self.plan.status.message = Some(message.to_owned());
        self.plan.status.grant = None;
        if matches!(phase, Phase::Revoked) {
            self.plan.status.revoked_at = Some(Time(self.now));
        }
        let granted_reason = if was_active { reason } else { "NotGranted" };
        self.condition(GRANTED, ConditionStatus::False, granted_reason, message);
        self.record(TimelineEvent::Ended(phase), actor, message);
        let by = actor
            .map(|actor| format!(" by {actor}"))
            .unwrap_or_default();
        let event = phase.as_str();
        self.notice(Reason::ended(phase), format!("{event}{by}: {message}"));
        self.plan.requeue_after = RESYNC;
    }

    fn deleting(&mut self) {
        // Revoke whatever the phase says: a crash between a grant and its status write
        // leaves a Pending request that may hold a grant. Revoking nothing is harmless.
        self.plan.effect = Effect::Revoke;
        match self.plan.status.phase {
            Some(phase) if phase.is_final() => {}
            Some(Phase::Active) => self.end(
                Phase::Revoked,
                "Deleted",
                None,
                "the request was deleted; access is revoked",
            ),
            _ => self.end(
                Phase::Revoked,
                "Deleted",
                None,
                "the request was deleted before it was granted",
            ),
        }
    }

    fn sync_decisions(&mut self) {
        let records = self.decisions;
        for record in records {
            if self.plan.status.approvals.contains(record) {
                continue;
            }
            let (event, reason, verb) = match record.decision {
                Decision::Approved => (TimelineEvent::Approval, Reason::Approval, "approved"),
                Decision::Denied => (TimelineEvent::Denial, Reason::Denial, "denied"),
            };
            let comment = record.comment.clone().unwrap_or_default();
            self.record(event, Some(&record.user), &comment);
            let note = if comment.is_empty() {
                format!("{} {verb}", record.user)
            } else {
                format!("{} {verb}: {comment}", record.user)
            };
            self.notice(reason, note);
            self.plan.status.approvals.push(record.clone());
        }
    }

    fn pending(&mut self, policy: Option<&AccessPolicy>) {
        if self.plan.status.phase.is_none() {
            self.plan.status.phase = Some(Phase::Pending);
            let requester = self.requester().unwrap_or("unknown").to_owned();
            let what = format!(
                "{} of policy {} for {}",
                self.request.spec.role,
                self.request.spec.policy,
                self.request.spec.subject.as_deref().unwrap_or(&requester)
            );
            self.record(TimelineEvent::Requested, Some(&requester), &what);
            self.notice(Reason::Requested, format!("{requester} requested {what}"));
        }
        self.sync_decisions();

        let Some(requester) = self.request.spec.requester.clone() else {
            return self.end(
                Phase::Failed,
                "RequesterUnknown",
                None,
                "the request carries no authenticated requester (was the admission webhook installed when it was created?)",
            );
        };
        if let Some(revocation) = revocation(self.request) {
            let message = revocation
                .comment
                .clone()
                .unwrap_or_else(|| "withdrawn before it was granted".into());
            self.condition(APPROVED, ConditionStatus::False, "Revoked", &message);
            return self.end(Phase::Revoked, "Revoked", Some(&revocation.user), &message);
        }
        if self.policy_unreadable {
            // Neither granted nor refused on a policy nobody could read: look again soon.
            self.plan.requeue_after = POLICY_RETRY;
            return;
        }
        let Some(policy) = policy else {
            let refusal = Refusal::PolicyNotFound {
                policy: self.request.spec.policy.clone(),
            };
            return self.refuse(&refusal);
        };
        let allowed = match policy::check_request(policy, &self.request.spec, &requester) {
            Ok(allowed) => allowed,
            Err(refusal) => return self.refuse(&refusal),
        };

        // An approval given after the approval timeout does not count: a request nobody
        // decided on in time is closed, however late someone agrees.
        let deadline = self.approval_deadline(policy);
        // Sealed records only: `status.approvals` is what people read, not what grants.
        let mut records = self.decisions.to_vec();
        records.retain(|record| {
            record.decision == Decision::Denied || deadline.is_none_or(|end| record.time.0 < end)
        });
        let tally = policy::tally(policy, &self.request.spec, &records);
        if let Some(denial) = tally.denied_by {
            let message = denial
                .comment
                .clone()
                .unwrap_or_else(|| format!("denied by {}", denial.user));
            self.condition(APPROVED, ConditionStatus::False, "Denied", &message);
            return self.end(Phase::Denied, "Denied", Some(&denial.user), &message);
        }

        let approved = if allowed.approvals_required == 0 {
            Some((
                "NoApprovalRequired",
                "the policy needs no approval".to_owned(),
            ))
        } else if tally.approved_by.len() >= allowed.approvals_required as usize {
            let names: Vec<&str> = tally.approved_by.iter().map(|a| a.user.as_str()).collect();
            Some(("Approved", format!("approved by {}", names.join(", "))))
        } else {
            self.auto_approve(policy, &allowed).map(|()| {
                (
                    "AutoApproved",
                    "approved by the policy's autoApprove expression".to_owned(),
                )
            })
        };

        match approved {
            Some((reason, message)) => self.grant(policy, &allowed, reason, &message),
            None => self.wait(policy, &tally, allowed.approvals_required),
        }
    }

    /// Evaluates the policy's auto-approve expression; a failure shows as a condition and
    /// leaves the request to human approvers.
    fn auto_approve(&mut self, policy: &AccessPolicy, allowed: &policy::Allowed<'_>) -> Option<()> {
        let expression = &policy.spec.auto_approve.as_ref()?.expression;
        let requester = self.request.spec.requester.as_ref()?;
        // Groups are known only for the authenticated requester receiving the role themselves.
        let subject_username = allowed.subject.username().unwrap_or_default();
        let groups = if subject_username == requester.username {
            requester.groups.clone()
        } else {
            Vec::new()
        };
        let input = auto_approve::Input {
            policy: &self.request.spec.policy,
            role: &self.request.spec.role,
            duration: allowed.duration,
            reason: self.request.spec.reason.as_deref().unwrap_or_default(),
            subject_username: &subject_username,
            subject_groups: &groups,
            now: self.now,
        };
        match auto_approve::evaluate(expression, &input) {
            Ok(true) => Some(()),
            Ok(false) => {
                self.condition(
                    AUTO_APPROVE,
                    ConditionStatus::False,
                    "NotMatched",
                    "the autoApprove expression is false for this request",
                );
                None
            }
            Err(error) => {
                self.condition(
                    AUTO_APPROVE,
                    ConditionStatus::False,
                    "ExpressionError",
                    &error.to_string(),
                );
                None
            }
        }
    }

    fn refuse(&mut self, refusal: &Refusal) {
        let phase = if refusal.is_failure() {
            Phase::Failed
        } else {
            Phase::Denied
        };
        let message = refusal.to_string();
        self.condition(APPROVED, ConditionStatus::False, refusal.reason(), &message);
        self.end(phase, refusal.reason(), Some("policy"), &message);
    }

    fn grant(
        &mut self,
        policy: &AccessPolicy,
        allowed: &policy::Allowed<'_>,
        reason: &str,
        message: &str,
    ) {
        // The window is fixed once, with the first attempt (the intent write records it): a
        // grant whose status write keeps failing is retried, and revoked, within that same
        // window, never a new one.
        let recorded = match (&self.plan.status.granted_at, &self.plan.status.expires_at) {
            (Some(granted_at), Some(expires_at)) if self.window_sealed => {
                Some((granted_at.0, expires_at.0))
            }
            _ => None,
        };
        let (granted_at, expires_at) = match recorded {
            Some(window) => window,
            None => {
                // Status keeps whole seconds: grant at a whole second so that, read back,
                // expiresAt is exactly grantedAt plus the duration.
                let granted_at = Timestamp::from_second(self.now.as_second()).unwrap_or(self.now);
                let Some(expires_at) = add(granted_at, allowed.duration) else {
                    return self.end(
                        Phase::Failed,
                        "InvalidDuration",
                        None,
                        "the duration runs past the end of time",
                    );
                };
                (granted_at, expires_at)
            }
        };
        if self.now >= expires_at {
            return self.end(
                Phase::Expired,
                "Expired",
                None,
                "the granted time ran out before the grant was confirmed",
            );
        }
        self.plan.effect = Effect::Grant {
            role: allowed.role.clone(),
            identity: Identity::of(
                &allowed.subject,
                self.request.spec.requester.as_ref(),
                policy,
            ),
            expires_at,
            approval: message.to_owned(),
        };
        self.condition(APPROVED, ConditionStatus::True, reason, message);
        self.record(TimelineEvent::Approved, None, message);
        self.notice(Reason::Approved, message.to_owned());

        let status = &mut self.plan.status;
        status.phase = Some(Phase::Active);
        status.granted_at = Some(Time(granted_at));
        status.expires_at = Some(Time(expires_at));
        let granted = format!(
            "{} of policy {} granted to {} until {expires_at}",
            self.request.spec.role, self.request.spec.policy, allowed.subject
        );
        status.message = Some(granted.clone());
        self.condition(GRANTED, ConditionStatus::True, "Granted", &granted);
        self.record(TimelineEvent::Granted, None, &granted);
        self.notice(Reason::Granted, granted);
        self.plan.requeue_after = self.towards_end(expires_at).0.min(RESYNC);
    }

    /// When a grant that ends at `expires_at` is looked at next: [`ANNOUNCE_REVOKE`] before
    /// its end, to announce the revoke, then at its end; and whether this look is within that
    /// lead, and so announces it.
    fn towards_end(&self, expires_at: Timestamp) -> (Duration, bool) {
        let announce_at = revoke_announced_at(expires_at);
        if self.now < announce_at {
            (until(self.now, announce_at), false)
        } else {
            (until(self.now, expires_at), true)
        }
    }

    /// When the policy's approval timeout closes this request, if it has one.
    fn approval_deadline(&self, policy: &AccessPolicy) -> Option<Timestamp> {
        let created = self
            .request
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(self.now, |time| time.0);
        let timeout = policy.spec.approval_timeout.as_ref()?.to_std().ok()?;
        Some(add(created, timeout).unwrap_or(Timestamp::MAX))
    }

    fn wait(&mut self, policy: &AccessPolicy, tally: &policy::Tally<'_>, required: u32) {
        if let Some(deadline) = self.approval_deadline(policy) {
            if self.now >= deadline {
                let message = format!(
                    "no decision within the approval timeout of {}",
                    policy
                        .spec
                        .approval_timeout
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                );
                self.condition(
                    APPROVED,
                    ConditionStatus::False,
                    "ApprovalTimeout",
                    &message,
                );
                return self.end(Phase::Expired, "ApprovalTimeout", None, &message);
            }
            self.plan.requeue_after = until(self.now, deadline).min(RESYNC);
        }
        let names: Vec<&str> = tally.approved_by.iter().map(|a| a.user.as_str()).collect();
        let mut message = format!("{} of {required} approvals", names.len());
        if !names.is_empty() {
            message.push_str(&format!(" ({})", names.join(", ")));
        }
        self.condition(
            APPROVED,
            ConditionStatus::False,
            "WaitingForApproval",
            &message,
        );
        self.condition(
            GRANTED,
            ConditionStatus::False,
            "NotApproved",
            "waiting for approval",
        );
        self.plan.status.message = Some(format!("waiting for approval: {message}"));
        self.remind(policy, &message);
    }

    /// Announces a request still pending to approvers again after each reminder interval.
    fn remind(&mut self, policy: &AccessPolicy, approvals: &str) {
        let Some(interval) = policy
            .spec
            .notifications
            .as_ref()
            .and_then(|notifications| notifications.reminder_interval.as_ref())
            .and_then(|interval| interval.to_std().ok())
            .filter(|interval| !interval.is_zero())
        else {
            return;
        };
        let announced = self
            .plan
            .status
            .timeline
            .iter()
            .rev()
            .find(|entry| {
                entry.event == TimelineEvent::Requested.as_str()
                    || entry.event == TimelineEvent::Reminder.as_str()
            })
            .map(|entry| entry.time.0);
        let Some(due) = announced.and_then(|announced| add(announced, interval)) else {
            return;
        };
        if self.now >= due {
            let message = format!("still waiting for approval: {approvals}");
            self.record(TimelineEvent::Reminder, None, &message);
            self.plan.requeue_after = self.plan.requeue_after.min(interval);
        } else {
            self.plan.requeue_after = self.plan.requeue_after.min(until(self.now, due));
        }
    }

    /// Tells the subject, once per grant, that it ends soon: the policy's expiry warning
    /// ahead of the end (10 minutes by default), for grants longer than that.
    fn warn_of_expiry(&mut self, policy: &AccessPolicy, expires_at: Timestamp) {
        let warning = policy
            .spec
            .notifications
            .as_ref()
            .and_then(|notifications| notifications.expiry_warning.as_ref())
            .map_or(Ok(DEFAULT_EXPIRY_WARNING), ApiDuration::to_std)
            .unwrap_or(DEFAULT_EXPIRY_WARNING);
        let Ok(warning) = SignedDuration::try_from(warning) else {
            return;
        };
        let Ok(warn_at) = expires_at.checked_sub(warning) else {
            return;
        };
        let granted_at = self.plan.status.granted_at.as_ref().map(|time| time.0);
        if warning.is_zero() || granted_at.is_none_or(|granted_at| granted_at >= warn_at) {
            return;
        }
        let warned = self
            .plan
            .status
            .timeline
            .iter()
            .rev()
            .take_while(|entry| entry.event != TimelineEvent::Granted.as_str())
            .any(|entry| entry.event == TimelineEvent::ExpiringSoon.as_str());
        if warned {
            return;
        }
        if self.now >= warn_at {
            let minutes = (expires_at.duration_since(self.now).as_secs() + 59) / 60;
            let message = format!("access ends at {expires_at} (in {minutes} min)");
            self.record(TimelineEvent::ExpiringSoon, None, &message);
        } else {
            self.plan.requeue_after = self.plan.requeue_after.min(until(self.now, warn_at));
        }
    }

    fn active(
        &mut self,
        policy: Option<&AccessPolicy>,
        grant: Option<&GrantState>,
        unverified: Option<&Unverified>,
    ) {
        self.sync_decisions();
        if !self.window_sealed {
            // Active with a window the operator did not write: a status written around
            // admission. Nothing is granted from it; whatever is held is taken away.
            return self.end(
                Phase::Failed,
                "StatusForged",
                None,
                "the grant window in status was not written by the operator; access is revoked",
            );
        }
        let expires_at = self.plan.status.expires_at.as_ref().map(|time| time.0);
        if let Some(revocation) = revocation(self.request) {
            let message = revocation
                .comment
                .clone()
                .unwrap_or_else(|| "ended early".into());
            return self.end(Phase::Revoked, "Revoked", Some(&revocation.user), &message);
        }
        let Some(expires_at) = expires_at.filter(|expires_at| self.now < *expires_at) else {
            // Past its time, or with no expiry recorded at all: either way, take it away.
            return self.end(Phase::Expired, "Expired", None, "the granted time is up");
        };
        if self.policy_unreadable {
            // Expiry and revoke above went ahead; the policy's own checks wait for a read.
            self.plan.requeue_after = until(self.now, expires_at).min(POLICY_RETRY);
            return;
        }
        let still_offered =
            policy.is_some_and(|policy| policy::find_role(policy, &self.request.spec.role).is_ok());
        if !still_offered {
            let message = format!(
                "policy {} no longer offers role {}",
                self.request.spec.policy, self.request.spec.role
            );
            return self.end(Phase::Revoked, "PolicyChanged", Some("policy"), &message);
        }
        if let Some(policy) = policy {
            let records = self.decisions;
            if let Some(denial) = policy::tally(policy, &self.request.spec, records).denied_by {
                let message = denial
                    .comment
                    .clone()
                    .unwrap_or_else(|| "denied after it was granted".into());
                return self.end(
                    Phase::Revoked,
                    "DeniedAfterGrant",
                    Some(&denial.user),
                    &message,
                );
            }
        }
        if let Some(idle_until) = policy.and_then(|policy| self.idle_until(policy))
            && self.now >= idle_until
        {
            let message = format!(
                "no action with the grant since {}; revoked early for the policy's idle timeout",
                self.last_used()
                    .map_or_else(String::new, |time| time.to_string())
            );
            return self.end(Phase::Revoked, "Idle", None, &message);
        }
        if let (Some(policy), Some(state)) = (policy, grant) {
            self.repair(policy, state, expires_at);
        }
        let (next_look, announce) = self.towards_end(expires_at);
        self.announce_revoke = announce;
        self.plan.requeue_after = next_look.min(RESYNC);
        if let Some(idle_until) = policy.and_then(|policy| self.idle_until(policy)) {
            self.plan.requeue_after = self.plan.requeue_after.min(until(self.now, idle_until));
        }
        if let Some(policy) = policy {
            self.warn_of_expiry(policy, expires_at);
        }
        if let Some(failure) = unverified {
            self.verify_failed(failure);
        } else if grant.is_some() {
            conditions::clear_condition(&mut self.plan.status.conditions, VERIFY_FAILING);
        }
        if is_true(&self.plan.status.conditions, VERIFY_FAILING)
            && let Some(due) = &self.plan.status.next_retry_time
        {
            self.plan.requeue_after = self.plan.requeue_after.min(until(self.now, due.0));
        }
    }

    /// When the last action with the grant was (its start, before any).
    fn last_used(&self) -> Option<Timestamp> {
        let status = &self.plan.status;
        let granted_at = status.granted_at.as_ref()?.0;
        let last_action = status
            .activity
            .as_ref()
            .and_then(|activity| activity.last_action_time.as_ref())
            .map(|time| time.0);
        Some(last_action.map_or(granted_at, |last| last.max(granted_at)))
    }

    /// When an idle Kubernetes grant is revoked, if its policy sets `idleTimeout`. Only
    /// Kubernetes grants: the clouds' activity arrives minutes late.
    fn idle_until(&self, policy: &AccessPolicy) -> Option<Timestamp> {
        let idle = policy.spec.idle_timeout.as_ref()?.to_std().ok()?;
        let grant = self.plan.status.grant.as_ref()?;
        if grant.provider != crate::target::Target::Kubernetes.as_str() {
            return None;
        }
        add(self.last_used()?, idle)
    }

    /// Counts a look at the grant that failed and sets when the next one is due: a cloud
    /// that throttles is asked less and less often, never more than it asked for.
    fn verify_failed(&mut self, failure: &Unverified) {
        let uid = self.request.metadata.uid.clone().unwrap_or_default();
        let failed = StepFailure {
            kind: VERIFY_FAILING,
            reason: "VerifyFailed",
            message: &format!(
                "could not look at the grant (drift is not checked until it can): {}",
                failure.message
            ),
            retry_after: failure.retry_after,
        };
        self.plan.status =
            after_failure(&self.plan.status, &failed, &uid, self.now, self.generation);
    }

    /// Restores a grant that was removed or changed by hand while the request is active, with
    /// the same expiry.
    fn repair(&mut self, policy: &AccessPolicy, state: &GrantState, expires_at: Timestamp) {
        let what = match state {
            GrantState::Present => return,
            GrantState::Missing => "the grant was removed by hand".to_owned(),
            GrantState::Drifted(how) => format!("the grant was changed by hand: it {how}"),
        };
        let Some((role, subject)) = policy::granted_role(policy, &self.request.spec) else {
            return;
        };
        self.plan.effect = Effect::Grant {
            role: role.clone(),
            identity: Identity::of(&subject, self.request.spec.requester.as_ref(), policy),
            expires_at,
            approval: self
                .plan
                .status
                .conditions
                .iter()
                .find(|condition| condition.type_ == APPROVED)
                .map_or_else(
                    || "approved".to_owned(),
                    |condition| condition.message.clone(),
                ),
        };
        let message = format!("{what}; restored as granted until {expires_at}");
        self.record(TimelineEvent::Repaired, None, &message);
        self.notice(Reason::GrantRepaired, message);
    }
}

/// When the revoke of a grant that ends at `expires_at` is announced: [`ANNOUNCE_REVOKE`]
/// before.
pub fn revoke_announced_at(expires_at: Timestamp) -> Timestamp {
    SignedDuration::try_from(ANNOUNCE_REVOKE)
        .ok()
        .and_then(|lead| expires_at.checked_sub(lead).ok())
        .unwrap_or(expires_at)
}

fn add(time: Timestamp, duration: Duration) -> Option<Timestamp> {
    let duration = SignedDuration::try_from(duration).ok()?;
    time.checked_add(duration).ok()
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
