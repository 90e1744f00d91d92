//! What `kubectl jit` prints for people: tables in kubectl's look, one request whole, an
//! approver's context and the progress of `request --wait`. Pure: the clock, the time zone and
//! whether to colour are passed in, so the text is pinned by snapshot tests.

use std::{collections::BTreeSet, fmt::Write as _, time::Duration};

use anstyle::{AnsiColor, Style};
use jiff::{Timestamp, tz::TimeZone};
use kube::ResourceExt;

use crate::{
    crd::v1alpha1::{
        AccessPolicy, AccessRequest, AccessRequestSpec, Decision, Phase, PolicyRole, SubjectSet,
    },
    policy,
};

/// Whether to colour, decided once per stream: only on a terminal, never with `NO_COLOR` set
/// (<https://no-color.org>) or on a dumb terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Paint {
    on: bool,
}

impl Paint {
    /// Never colours.
    #[cfg(test)]
    pub(crate) const PLAIN: Self = Self { on: false };

    /// For a stream that is a terminal or not, with the environment's say.
    pub(crate) fn new(terminal: bool, no_color: Option<&str>, term: Option<&str>) -> Self {
        let no_color = no_color.is_some_and(|value| !value.is_empty());
        Self {
            on: terminal && !no_color && term != Some("dumb"),
        }
    }

    /// `text` in `style` when colouring.
    fn paint(self, style: Style, text: &str) -> String {
        if self.on {
            format!("{style}{text}{style:#}")
        } else {
            text.to_owned()
        }
    }

    /// A heading or a name that matters.
    pub(crate) fn bold(self, text: &str) -> String {
        self.paint(Style::new().bold(), text)
    }

    /// The word `error`, as stderr shows it.
    pub(crate) fn error(self, text: &str) -> String {
        self.paint(
            Style::new().bold().fg_color(Some(AnsiColor::Red.into())),
            text,
        )
    }

    /// A phase in the colour people expect: green live, yellow waiting, red refused, dim over.
    fn phase_style(phase: Phase) -> Style {
        match phase {
            Phase::Active => Style::new().fg_color(Some(AnsiColor::Green.into())),
            Phase::Pending => Style::new().fg_color(Some(AnsiColor::Yellow.into())),
            Phase::Denied | Phase::Failed => Style::new().fg_color(Some(AnsiColor::Red.into())),
            Phase::Expired | Phase::Revoked => Style::new().dimmed(),
        }
    }
}

/// One table cell: its text and how to colour it.
#[derive(Clone, Debug)]
struct Cell {
    text: String,
    style: Style,
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Self {
            text,
            style: Style::new(),
        }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Self::from(text.to_owned())
    }
}

/// Rows under a header, columns three spaces apart and padded as kubectl pads them; colour
/// never counts toward a width.
fn table(header: &[&str], rows: &[Vec<Cell>], paint: Paint) -> String {
    let mut widths: Vec<usize> = header.iter().map(|name| name.chars().count()).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(index) {
                *width = (*width).max(cell.text.chars().count());
            }
        }
    }
    let mut text = String::new();
    let mut line = |cells: &[Cell]| {
        let mut out = String::new();
        for (index, cell) in cells.iter().enumerate() {
            let width = widths.get(index).copied().unwrap_or_default();
            let last = index + 1 == cells.len();
            out.push_str(&paint.paint(cell.style, &cell.text));
            if !last {
                let pad = width.saturating_sub(cell.text.chars().count()) + 3;
                out.push_str(&" ".repeat(pad));
            }
        }
        text.push_str(out.trim_end());
        text.push('\n');
    };
    let header: Vec<Cell> = header.iter().map(|name| Cell::from(*name)).collect();
    line(&header);
    for row in rows {
        line(row);
    }
    text
}

/// How much of a table to print.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Columns {
    /// `-o wide`: the extra columns.
    pub(crate) wide: bool,
    /// `-A`: a NAMESPACE column first.
    pub(crate) namespace: bool,
}

/// A span as people say it: `45s`, `30m`, `1h30m`, `2d`.
pub(crate) fn span(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (days, hours, minutes, rest) = (
        seconds / 86_400,
        seconds % 86_400 / 3_600,
        seconds % 3_600 / 60,
        seconds % 60,
    );
    let mut text = String::new();
    for (value, unit) in [(days, "d"), (hours, "h"), (minutes, "m"), (rest, "s")] {
        if value > 0 {
            let _ = write!(text, "{value}{unit}");
        }
    }
    if text.is_empty() { "0s".into() } else { text }
}

/// Human time to `to` from `now`: `in 23m`, `3h ago`, as kubectl rounds ages.
pub(crate) fn human(to: Timestamp, now: Timestamp) -> String {
    let seconds = to.as_second() - now.as_second();
    let text = age_text(seconds.unsigned_abs());
    if seconds >= 0 {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

fn age_text(magnitude: u64) -> String {
    match magnitude {
        0..=119 => format!("{magnitude}s"),
        120..=7_199 => format!("{}m", magnitude / 60),
        7_200..=172_799 => format!("{}h", magnitude / 3_600),
        _ => format!("{}d", magnitude / 86_400),
    }
}

/// An age, never "in": the API server's clock may run ahead of ours.
fn age(created: Timestamp, now: Timestamp) -> String {
    age_text(
        now.as_second()
            .saturating_sub(created.as_second())
            .max(0)
            .unsigned_abs(),
    )
}

/// A clock time in the reader's zone: `14:02`, with the date when it is not today.
pub(crate) fn clock(at: Timestamp, now: Timestamp, zone: &TimeZone) -> String {
    let at = at.to_zoned(zone.clone());
    let today = now.to_zoned(zone.clone());
    if at.date() == today.date() {
        at.strftime("%H:%M").to_string()
    } else {
        at.strftime("%Y-%m-%d %H:%M").to_string()
    }
}

/// Who asked for the request, as admission recorded them.
pub(crate) fn requester_of(request: &AccessRequest) -> String {
    request.spec.requester_name().unwrap_or_default().to_owned()
}

/// A request's phase; one with no status yet is pending.
pub(crate) fn phase_of(request: &AccessRequest) -> Phase {
    request
        .status
        .as_ref()
        .and_then(|status| status.phase)
        .unwrap_or(Phase::Pending)
}

fn phase_cell(phase: Phase) -> Cell {
    Cell {
        text: phase.as_str().to_owned(),
        style: Paint::phase_style(phase),
    }
}

/// `text` cut to `limit` characters, with an ellipsis.
fn cut(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(limit.saturating_sub(1)).collect();
    short.push('…');
    short
}

/// The requests as `kubectl jit list` prints them.
pub(crate) fn requests_table(
    requests: &[AccessRequest],
    columns: Columns,
    now: Timestamp,
    paint: Paint,
) -> String {
    if requests.is_empty() {
        return "No requests found.\n".into();
    }
    let rows: Vec<Vec<Cell>> = requests
        .iter()
        .map(|request| {
            let status = request.status.clone().unwrap_or_default();
            let phase = phase_of(request);
            let expires = match (phase, status.expires_at) {
                (Phase::Active, Some(at)) => human(at.0, now),
                _ => "-".into(),
            };
            let mut row: Vec<Cell> = Vec::new();
            if columns.namespace {
                row.push(request.namespace().unwrap_or_default().into());
            }
            row.extend([
                request.name_any().into(),
                request.spec.policy.as_str().into(),
                request.spec.role.as_str().into(),
                crate::audit::event::subject_of(request).into(),
                phase_cell(phase),
                expires.into(),
                request
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|created| age(created.0, now))
                    .unwrap_or_default()
                    .into(),
            ]);
            if columns.wide {
                let approved: Vec<&str> = status
                    .approvals
                    .iter()
                    .filter(|approval| approval.decision == Decision::Approved)
                    .map(|approval| approval.user.as_str())
                    .collect();
                row.extend([
                    requester_of(request).into(),
                    if approved.is_empty() {
                        "-".into()
                    } else {
                        approved.join(",").into()
                    },
                    status
                        .grant
                        .as_ref()
                        .map_or("-".into(), |grant| grant.reference.clone())
                        .into(),
                    cut(request.spec.reason.as_deref().unwrap_or("-"), 40).into(),
                ]);
            }
            row
        })
        .collect();
    let mut header = Vec::new();
    if columns.namespace {
        header.push("NAMESPACE");
    }
    header.extend([
        "NAME",
        "POLICY",
        "ROLE",
        "SUBJECT",
        "PHASE",
        "EXPIRES IN",
        "AGE",
    ]);
    if columns.wide {
        header.extend(["REQUESTER", "APPROVED BY", "GRANT", "REASON"]);
    }
    table(&header, &rows, paint)
}

/// Whether a role would be approved by the policy's rule for me, now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AutoApproval {
    /// The policy has no rule: people decide.
    NoRule,
    /// The rule approves a request for the default duration without a reason, now.
    Yes,
    /// It does not.
    No,
    /// The rule fails; people decide.
    Broken,
}

impl AutoApproval {
    fn as_str(self) -> &'static str {
        match self {
            Self::NoRule => "-",
            Self::Yes => "yes",
            Self::No => "no",
            Self::Broken => "error",
        }
    }
}

/// One role I may request.
#[derive(Clone, Debug)]
pub(crate) struct Offer<'policy> {
    /// Its policy.
    pub(crate) policy: &'policy AccessPolicy,
    /// The role.
    pub(crate) role: &'policy PolicyRole,
    /// Whether the policy's rule approves it for me now.
    pub(crate) auto: AutoApproval,
}

/// The default a request for `role` receives, capped at the maximum; `None` when the policy
/// has no default (a request must say `--for`).
pub(crate) fn default_duration(policy: &AccessPolicy, role: &PolicyRole) -> Option<Duration> {
    let spec = AccessRequestSpec {
        policy: policy.name_any(),
        role: role.name.clone(),
        duration: None,
        reason: None,
        subject: None,
        requester: None,
    };
    policy::resolve_duration(policy, role, &spec).ok()
}

/// Distinct approvals a role needs.
pub(crate) fn approvals_needed(policy: &AccessPolicy, role: &PolicyRole) -> u32 {
    role.approvals_required
        .unwrap_or(policy.spec.approvals_required)
        .max(0)
        .unsigned_abs()
}

fn subjects(set: &SubjectSet) -> String {
    let mut names: Vec<String> = set.users.clone();
    names.extend(set.groups.iter().map(|group| format!("group:{group}")));
    if names.is_empty() {
        "-".into()
    } else {
        names.join(",")
    }
}

/// The roles I may request, as `kubectl jit policies` prints them.
pub(crate) fn policies_table(offers: &[Offer<'_>], columns: Columns, paint: Paint) -> String {
    let rows: Vec<Vec<Cell>> = offers
        .iter()
        .map(|offer| {
            let max = offer
                .role
                .max_duration
                .as_ref()
                .unwrap_or(&offer.policy.spec.max_duration);
            let mut row: Vec<Cell> = vec![
                offer.policy.name_any().into(),
                offer.role.name.as_str().into(),
                grants(offer.role).into(),
                default_duration(offer.policy, offer.role)
                    .map_or("-".into(), span)
                    .into(),
                max.to_string().into(),
                approvals_needed(offer.policy, offer.role)
                    .to_string()
                    .into(),
                offer.auto.as_str().into(),
            ];
            if columns.wide {
                let reason = offer.policy.spec.reason.as_ref();
                row.extend([
                    subjects(&offer.policy.spec.approvers).into(),
                    match reason {
                        Some(reason) if reason.pattern.is_some() => {
                            reason.pattern.clone().unwrap_or_default()
                        }
                        Some(reason) if reason.required => "required".into(),
                        _ => "-".into(),
                    }
                    .into(),
                    cut(offer.policy.spec.description.as_deref().unwrap_or("-"), 50).into(),
                ]);
            }
            row
        })
        .collect();
    let mut header = vec![
        "POLICY",
        "ROLE",
        "GRANTS",
        "DEFAULT",
        "MAX",
        "APPROVALS",
        "AUTO-APPROVE",
    ];
    if columns.wide {
        header.extend(["APPROVERS", "REASON", "DESCRIPTION"]);
    }
    table(&header, &rows, paint)
}

/// A role's target in a few words, for tables.
pub(crate) fn grants(role: &PolicyRole) -> String {
    if let Some(kubernetes) = &role.kubernetes {
        let name = &kubernetes.cluster_role;
        return match &kubernetes.namespace {
            Some(namespace) => format!("kubernetes {name} in {namespace}"),
            None => format!("kubernetes {name} cluster-wide"),
        };
    }
    if let Some(aws) = &role.aws {
        if let Some(center) = &aws.identity_center {
            return format!("aws identity center in account {}", center.account_id);
        }
        if let Some(arn) = &aws.assume_role_arn {
            return format!("aws assume {arn}");
        }
        if let Some(group) = &aws.group_name {
            return format!("aws group {group}");
        }
        if let Some(arn) = &aws.policy_arn {
            return format!("aws {arn}");
        }
        return "aws inline policy".into();
    }
    if let Some(gcp) = &role.gcp {
        return format!("gcp {} on {}", gcp.role, gcp.resource);
    }
    if let Some(azure) = &role.azure {
        return format!("azure role at {}", azure.scope);
    }
    "-".into()
}

/// Exactly what a role grants, one fact per line, for an approver.
pub(crate) fn grants_exactly(role: &PolicyRole, subject: &str) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(kubernetes) = &role.kubernetes {
        lines.push(match &kubernetes.namespace {
            Some(namespace) => format!(
                "Kubernetes ClusterRole {} to {subject}, in namespace {namespace} only (a RoleBinding)",
                kubernetes.cluster_role
            ),
            None => format!(
                "Kubernetes ClusterRole {} to {subject}, in every namespace (a ClusterRoleBinding)",
                kubernetes.cluster_role
            ),
        });
    }
    if let Some(aws) = &role.aws {
        if let Some(center) = &aws.identity_center {
            lines.push(format!(
                "AWS IAM Identity Center permission set {} in account {} to {:?} {}",
                center.permission_set_arn,
                center.account_id,
                center.principal_type,
                center.principal_id
            ));
        }
        if let Some(arn) = &aws.assume_role_arn {
            lines.push(format!("AWS: may assume role {arn}"));
        }
        if let Some(group) = &aws.group_name {
            lines.push(format!("AWS: membership of IAM group {group}"));
        }
        if let Some(arn) = &aws.policy_arn {
            lines.push(format!("AWS managed policy {arn}"));
        }
        if let Some(document) = &aws.policy_document {
            lines.push(format!("AWS inline policy {document}"));
        }
        if let Some(principal) = &aws.principal {
            lines.push(format!("AWS principal {principal}"));
        }
    }
    if let Some(gcp) = &role.gcp {
        lines.push(format!(
            "GCP {} on {} to {}",
            gcp.role, gcp.resource, gcp.member
        ));
    }
    if let Some(azure) = &role.azure {
        lines.push(format!(
            "Azure role definition {} at {} to {:?} {} ({:?})",
            azure.role_definition_id,
            azure.scope,
            azure.principal_type,
            azure.principal_id,
            azure.mode
        ));
    }
    lines
}

/// What an approver needs in front of them before deciding: who asks, for whom, what exactly
/// it grants, for how long, why, the decisions so far, and the subject's recent requests for
/// the same role. `policy` is `None` when it cannot be read (it may have been deleted).
pub(crate) fn approver_context(
    request: &AccessRequest,
    policy: Option<&AccessPolicy>,
    history: &[AccessRequest],
    now: Timestamp,
    paint: Paint,
) -> String {
    let status = request.status.clone().unwrap_or_default();
    let requester = requester_of(request);
    let subject = crate::audit::event::subject_of(request);
    let mut text = String::new();
    let mut line = |label: &str, value: &str| {
        let _ = writeln!(text, "  {label:<11}{value}");
    };
    let for_whom = if subject == requester {
        String::new()
    } else {
        format!(" for {subject}")
    };
    let mut heading = format!(
        "{} asks for role {} of policy {}{for_whom}",
        paint.bold(&requester),
        paint.bold(&request.spec.role),
        request.spec.policy,
    );
    heading.push('\n');
    let role = policy.and_then(|policy| policy::find_role(policy, &request.spec.role).ok());
    match role {
        Some(role) => {
            for (index, fact) in grants_exactly(role, &subject).iter().enumerate() {
                line(if index == 0 { "Grants:" } else { "" }, fact);
            }
        }
        None => line("Grants:", "unknown: the policy or its role cannot be read"),
    }
    let duration = match (&request.spec.duration, policy.zip(role)) {
        (Some(duration), _) => duration.to_string(),
        (None, Some((policy, role))) => default_duration(policy, role)
            .map_or("the policy's default".into(), |default| {
                format!("{} (the policy's default)", span(default))
            }),
        (None, None) => "the policy's default".into(),
    };
    line("For:", &duration);
    let reason = request.spec.reason.clone().unwrap_or_default();
    line("Reason:", if reason.is_empty() { "-" } else { &reason });
    if let Some(ticket) = crate::audit::render::ticket_in(&reason) {
        line("Ticket:", &ticket);
    }
    let phase = phase_of(request);
    if phase != Phase::Pending {
        line("Phase:", phase.as_str());
    }
    let approved: Vec<String> = status
        .approvals
        .iter()
        .filter(|approval| approval.decision == Decision::Approved)
        .map(|approval| approval.user.clone())
        .collect();
    let needed = policy
        .zip(role)
        .map(|(policy, role)| approvals_needed(policy, role).to_string())
        .unwrap_or_else(|| "?".into());
    let mut decisions = format!("{} of {needed}", approved.len());
    if !approved.is_empty() {
        let _ = write!(decisions, " (approved by {})", approved.join(", "));
    }
    line("Approvals:", &decisions);
    for denial in status
        .approvals
        .iter()
        .filter(|approval| approval.decision == Decision::Denied)
    {
        line(
            "Denied by:",
            &format!(
                "{}{}",
                denial.user,
                denial
                    .comment
                    .as_ref()
                    .map(|comment| format!(": {comment}"))
                    .unwrap_or_default()
            ),
        );
    }
    let mut earlier: Vec<&AccessRequest> = history
        .iter()
        .filter(|other| {
            other.uid() != request.uid()
                && other.spec.policy == request.spec.policy
                && other.spec.role == request.spec.role
                && other.spec.subject_name() == request.spec.subject_name()
        })
        .collect();
    earlier.sort_by_key(|other| {
        std::cmp::Reverse(
            other
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|time| time.0),
        )
    });
    if earlier.is_empty() {
        line(
            "History:",
            &format!("no earlier requests by {subject} for this role"),
        );
    } else {
        let total = earlier.len();
        for (index, other) in earlier.iter().take(5).enumerate() {
            let when = other
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|created| format!("{} ago", age(created.0, now)))
                .unwrap_or_default();
            line(
                if index == 0 { "History:" } else { "" },
                &format!(
                    "{} {} {when}: {}",
                    other.name_any(),
                    phase_of(other).as_str(),
                    cut(other.spec.reason.as_deref().unwrap_or("-"), 50)
                ),
            );
        }
        if total > 5 {
            line("", &format!("and {} more", total - 5));
        }
    }
    heading + &text
}

/// A request as people read it: `kubectl jit show`.
pub(crate) fn describe(
    request: &AccessRequest,
    policy: Option<&AccessPolicy>,
    now: Timestamp,
    paint: Paint,
) -> String {
    let status = request.status.clone().unwrap_or_default();
    let mut text = String::new();
    let mut line = |label: &str, value: String| {
        if !value.is_empty() {
            // Padded before it is painted: escapes have no width.
            let _ = writeln!(text, "{}{value}", paint.bold(&format!("{label:<11}")));
        }
    };
    line("Name:", request.name_any());
    line("Namespace:", request.namespace().unwrap_or_default());
    line("Requester:", requester_of(request));
    line("Subject:", crate::audit::event::subject_of(request));
    line(
        "Role:",
        format!("{} of policy {}", request.spec.role, request.spec.policy),
    );
    let role = policy.and_then(|policy| policy::find_role(policy, &request.spec.role).ok());
    if let Some(role) = role {
        line("Grants:", grants(role));
    }
    line("Reason:", request.spec.reason.clone().unwrap_or_default());
    let phase = phase_of(request);
    line(
        "Phase:",
        paint.paint(Paint::phase_style(phase), phase.as_str()),
    );
    line("Message:", status.message.clone().unwrap_or_default());
    if let Some(requested) = &request.metadata.creation_timestamp {
        line(
            "Requested:",
            format!("{} ({})", requested.0, human(requested.0, now)),
        );
    }
    if let Some(granted) = &status.granted_at {
        line(
            "Granted:",
            format!("{} ({})", granted.0, human(granted.0, now)),
        );
    }
    if let Some(grant) = &status.grant {
        line(
            "Grant:",
            format!(
                "{} ({}{})",
                grant.reference,
                grant.provider,
                if grant.cloud_enforced_expiry {
                    ", expiry enforced by the cloud"
                } else {
                    ""
                }
            ),
        );
    }
    if let Some(expires) = &status.expires_at {
        let label = if phase == Phase::Active {
            "Expires:"
        } else {
            "Was due:"
        };
        line(label, format!("{} ({})", expires.0, human(expires.0, now)));
    }
    if let Some(revoked) = &status.revoked_at {
        line(
            "Ended:",
            format!("{} ({})", revoked.0, human(revoked.0, now)),
        );
    }
    let needed = policy
        .zip(role)
        .map(|(policy, role)| format!(" (needs {})", approvals_needed(policy, role)))
        .unwrap_or_default();
    if status.approvals.is_empty() && phase == Phase::Pending {
        line("Decisions:", format!("none yet{needed}"));
    }
    for approval in &status.approvals {
        line(
            "Decision:",
            format!(
                "{} by {} {}{}",
                approval.decision.as_str(),
                approval.user,
                human(approval.time.0, now),
                approval
                    .comment
                    .as_ref()
                    .map(|comment| format!(": {comment}"))
                    .unwrap_or_default()
            ),
        );
    }
    if let Some(activity) = &status.activity {
        let mut summary = format!("{} actions, {} refused", activity.actions, activity.refused);
        if let Some(last) = &activity.last_action_time {
            let _ = write!(summary, ", last {}", human(last.0, now));
        }
        if let Some(completeness) = activity.completeness {
            let _ = write!(summary, " ({completeness:?})");
        }
        line("Activity:", summary);
        for count in activity.by_verb_and_resource.iter().take(10) {
            line(
                "",
                format!("{:>5} {} {}", count.count, count.verb, count.resource),
            );
        }
        if let Some(error) = &activity.read_error {
            line("", format!("could not read all of it: {error}"));
        }
    }
    text.push_str(&paint.bold("Timeline:"));
    text.push('\n');
    let rows: Vec<Vec<Cell>> = status
        .timeline
        .iter()
        .map(|entry| {
            vec![
                entry.time.0.to_string().into(),
                human(entry.time.0, now).into(),
                entry.event.as_str().into(),
                entry.actor.as_deref().unwrap_or("-").into(),
                entry.message.as_deref().unwrap_or_default().into(),
            ]
        })
        .collect();
    for row in table(&["TIME", "WHEN", "EVENT", "BY", "MESSAGE"], &rows, paint).lines() {
        let _ = writeln!(text, "  {row}");
    }
    text
}

/// What `request --wait` has told so far, so that each change is said once.
#[derive(Clone, Debug, Default)]
pub(crate) struct Progress {
    decisions: BTreeSet<String>,
    waiting_for: Option<u32>,
    message: String,
}

impl Progress {
    /// The lines to print for this state of the request: decisions not yet told, how many
    /// approvals are still missing, a new message, and the end.
    pub(crate) fn lines(
        &mut self,
        request: &AccessRequest,
        approvals_required: u32,
        now: Timestamp,
        zone: &TimeZone,
    ) -> Vec<String> {
        let name = request.name_any();
        let status = request.status.clone().unwrap_or_default();
        let phase = phase_of(request);
        let mut lines = Vec::new();
        for approval in &status.approvals {
            if self.decisions.insert(approval.user.clone()) {
                let verb = match approval.decision {
                    Decision::Approved => "approved",
                    Decision::Denied => "denied",
                };
                lines.push(format!(
                    "{name}: {verb} by {}{}",
                    approval.user,
                    approval
                        .comment
                        .as_ref()
                        .map(|comment| format!(" ({comment})"))
                        .unwrap_or_default()
                ));
            }
        }
        match phase {
            Phase::Pending => {
                let approved = u32::try_from(
                    status
                        .approvals
                        .iter()
                        .filter(|approval| approval.decision == Decision::Approved)
                        .count(),
                )
                .unwrap_or(u32::MAX);
                let missing = approvals_required.saturating_sub(approved);
                if missing > 0 && self.waiting_for != Some(missing) {
                    self.waiting_for = Some(missing);
                    let plural = if missing == 1 { "" } else { "s" };
                    lines.push(format!(
                        "{name}: waiting for {missing} more approval{plural}"
                    ));
                }
            }
            Phase::Active => {
                let until = status
                    .expires_at
                    .as_ref()
                    .map(|at| format!(" until {} ({})", clock(at.0, now, zone), human(at.0, now)))
                    .unwrap_or_default();
                lines.push(format!("{name}: granted{until}"));
                return lines;
            }
            _ => {}
        }
        let message = status.message.unwrap_or_default();
        if phase.is_final() {
            lines.push(format!("{name}: {}: {message}", phase.as_str()));
        } else if !message.is_empty()
            && message != self.message
            // The count is told above, in the requester's words.
            && !message.starts_with("waiting for approval")
        {
            lines.push(format!("{name}: {message}"));
            self.message = message;
        }
        lines
    }
}

#[cfg(test)]
mod tests;
