//! What people see: an audit event as a Slack Block Kit message, a Teams Adaptive Card or an
//! email, carrying what the reader needs to act (for approvers: who asks, for whom, what it
//! grants, for how long, why, the approvals so far, the subject's recent history and the exact
//! commands). Long values are cut to the platforms' documented limits, never refused.

use serde_json::{Value, json};

use super::event::{AuditData, Commands, kind_of};
use crate::crd::v1alpha1::AuditEventType;

/// Slack's limit on a header block's text.
pub const SLACK_HEADER_LIMIT: usize = 150;
/// Slack's limit on a section's text, and on the top-level fallback text we send.
pub const SLACK_TEXT_LIMIT: usize = 3000;
/// Slack's limit on one field of a section.
pub const SLACK_FIELD_LIMIT: usize = 2000;
/// Slack's limit on the fields of a section.
pub const SLACK_FIELDS_MAX: usize = 10;
/// Teams' limit on a message, in bytes (about 28 KB, card and envelope).
pub const TEAMS_BYTES_LIMIT: usize = 28_000;
/// The most of a reason or role definition a message shows.
const VALUE_LIMIT: usize = 1000;

/// A message in no platform's shape yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// One line: what happened.
    pub title: String,
    /// The facts, label and value.
    pub facts: Vec<(String, String)>,
    /// The commands to approve and deny, for approvers.
    pub commands: Option<Commands>,
    /// Whether this needs someone's attention now (failing revocations).
    pub loud: bool,
}

/// Cuts `text` to at most `limit` characters, marking the cut.
pub fn cut(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_owned();
    }
    let kept: String = text.chars().take(limit.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// A ticket reference in a reason, like `INC-42` or `OPS-7`.
pub fn ticket_in(reason: &str) -> Option<String> {
    reason
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .find(|word| {
            word.split_once('-').is_some_and(|(project, number)| {
                !project.is_empty()
                    && project
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
                    && project.starts_with(|c: char| c.is_ascii_uppercase())
                    && !number.is_empty()
                    && number.chars().all(|c| c.is_ascii_digit())
            })
        })
        .map(str::to_owned)
}

/// The message for an event, from its structured JSON.
pub fn message(event: &Value) -> Option<Message> {
    let kind = kind_of(event)?;
    let data = super::event::data_in(event)?;
    Some(message_of(kind, &data))
}

/// The message for an event of `kind` with `data`.
pub fn message_of(kind: AuditEventType, data: &AuditData) -> Message {
    let request = format!("{}/{}", data.request.namespace, data.request.name);
    let requester = data.requester.as_deref().unwrap_or("someone");
    let what = format!("{} of {}", data.role, data.policy);
    let for_whom = if data.requester.as_deref() == Some(data.subject.as_str()) {
        String::new()
    } else {
        format!(" for {}", data.subject)
    };
    let actor = data.actor.as_deref().unwrap_or("the operator");
    let title = match kind {
        AuditEventType::Requested => format!("{requester} asks for {what}{for_whom}"),
        AuditEventType::Reminder => format!("Still waiting: {requester} asks for {what}{for_whom}"),
        AuditEventType::Refused => format!("Refused at admission: {what}{for_whom}"),
        AuditEventType::Approval => format!("{actor} approved {request}"),
        AuditEventType::Denial => format!("{actor} denied {request}"),
        AuditEventType::Approved => format!("Approved: {what} for {}", data.subject),
        AuditEventType::Denied => format!("Denied: {what} for {}", data.subject),
        AuditEventType::Granted => format!("Granted: {what} to {}", data.subject),
        AuditEventType::GrantRepaired => format!("Repaired: {what} of {}", data.subject),
        AuditEventType::ExpiringSoon => format!("Expiring soon: {what} for {}", data.subject),
        AuditEventType::Expired => format!("Expired: {what} for {}", data.subject),
        AuditEventType::Revoked => format!("Revoked: {what} for {}", data.subject),
        AuditEventType::Failed => format!("Failed: {what} for {}", data.subject),
        AuditEventType::RevocationFailing => {
            format!(
                "REVOCATION FAILING: {what} of {} is still held",
                data.subject
            )
        }
        AuditEventType::RevocationRecovered => {
            format!(
                "Revocation recovered: {what} of {} is taken away",
                data.subject
            )
        }
        AuditEventType::Deleted => format!("Deleted: {request}"),
        // Never rendered for people: activity goes to cloudevents and webhook channels only.
        AuditEventType::Activity => format!("Activity: {what} of {}", data.subject),
    };
    let mut facts = vec![("Request".to_owned(), request)];
    let mut fact = |label: &str, value: Option<String>| {
        if let Some(value) = value.filter(|value| !value.is_empty()) {
            facts.push((label.to_owned(), value));
        }
    };
    fact("Subject", Some(data.subject.clone()));
    fact("Requester", data.requester.clone());
    fact("Role", Some(what));
    fact(
        "Grants",
        data.role_definition
            .as_ref()
            .map(|definition| cut(&definition.to_string(), VALUE_LIMIT)),
    );
    fact("Duration", data.duration.clone());
    fact(
        "Reason",
        data.reason
            .as_deref()
            .map(|reason| cut(reason, VALUE_LIMIT)),
    );
    fact("Ticket", data.reason.as_deref().and_then(ticket_in));
    let approved: Vec<String> = data
        .approvals
        .iter()
        .filter(|approval| approval.decision == "Approved")
        .map(|approval| match &approval.comment {
            Some(comment) => format!("{} ({})", approval.user, cut(comment, 200)),
            None => approval.user.clone(),
        })
        .collect();
    if let Some(required) = data.approvals_required.filter(|required| *required > 0) {
        let mut text = format!("{} of {required}", approved.len());
        if !approved.is_empty() {
            text.push_str(&format!(": {}", approved.join(", ")));
        }
        fact("Approvals", Some(text));
    }
    fact(
        "History",
        data.grants_last_30_days.map(|count| {
            format!(
                "{} had this role {count} time{} in the last 30 days",
                data.subject,
                if count == 1 { "" } else { "s" }
            )
        }),
    );
    fact(
        "Granted",
        data.grant
            .as_ref()
            .map(|grant| format!("{}: {}", grant.target, grant.reference)),
    );
    fact("Expires", data.expires_at.clone());
    fact(
        "Details",
        data.message
            .as_deref()
            .map(|message| cut(message, VALUE_LIMIT)),
    );
    Message {
        title,
        facts,
        commands: data.commands.clone(),
        loud: kind == AuditEventType::RevocationFailing,
    }
}

/// The message as a Slack incoming-webhook payload (Block Kit), within Slack's limits.
pub fn slack(message: &Message) -> Value {
    let title = if message.loud {
        format!(":rotating_light: {}", message.title)
    } else {
        message.title.clone()
    };
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": cut(&title, SLACK_HEADER_LIMIT), "emoji": true},
    })];
    for chunk in message.facts.chunks(SLACK_FIELDS_MAX) {
        let fields: Vec<Value> = chunk
            .iter()
            .map(|(label, value)| {
                json!({"type": "mrkdwn", "text": cut(&format!("*{label}*\n{}", escape_slack(value)), SLACK_FIELD_LIMIT)})
            })
            .collect();
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    if let Some(commands) = &message.commands {
        let text = format!(
            "*Approve:* `{}`\n*Deny:* `{}`\n_Without the kubectl jit plugin:_ `{}`",
            escape_slack(&commands.approve),
            escape_slack(&commands.deny),
            escape_slack(&commands.approve_by_annotation)
        );
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": cut(&text, SLACK_TEXT_LIMIT)},
        }));
    }
    json!({"text": cut(&title, SLACK_TEXT_LIMIT), "blocks": blocks})
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped.
fn escape_slack(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The message as a Teams Workflows webhook payload (an Adaptive Card), within Teams' size
/// limit: facts are cut shorter until it fits.
pub fn teams(message: &Message) -> Value {
    let mut limit = VALUE_LIMIT;
    loop {
        let card = teams_card(message, limit);
        if card.to_string().len() <= TEAMS_BYTES_LIMIT || limit <= 50 {
            return card;
        }
        limit /= 2;
    }
}

fn teams_card(message: &Message, limit: usize) -> Value {
    let facts: Vec<Value> = message
        .facts
        .iter()
        .map(|(label, value)| json!({"title": label, "value": cut(value, limit)}))
        .collect();
    let mut body = vec![
        json!({
            "type": "TextBlock", "text": cut(&message.title, limit), "weight": "Bolder",
            "size": "Medium", "wrap": true,
            "color": if message.loud { "Attention" } else { "Default" },
        }),
        json!({"type": "FactSet", "facts": facts}),
    ];
    if let Some(commands) = &message.commands {
        for (label, command) in [
            ("Approve:", &commands.approve),
            ("Deny:", &commands.deny),
            (
                "Without the kubectl jit plugin:",
                &commands.approve_by_annotation,
            ),
        ] {
            body.push(
                json!({"type": "TextBlock", "text": label, "weight": "Bolder", "wrap": true}),
            );
            body.push(json!({"type": "TextBlock", "text": cut(command, limit), "fontType": "Monospace", "wrap": true}));
        }
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": body,
            },
        }],
    })
}

/// The message as an email: subject line and plain-text body.
pub fn email(message: &Message) -> (String, String) {
    let subject = cut(
        &format!(
            "[jit]{} {}",
            if message.loud { " URGENT:" } else { "" },
            message.title
        ),
        200,
    )
    .replace(['\r', '\n'], " ");
    let mut body = format!("{}\n\n", message.title);
    for (label, value) in &message.facts {
        body.push_str(&format!("{label}: {value}\n"));
    }
    if let Some(commands) = &message.commands {
        body.push_str(&format!(
            "\nTo approve:\n  {}\nTo deny:\n  {}\nWithout the kubectl jit plugin, to approve:\n  {}\n",
            commands.approve, commands.deny, commands.approve_by_annotation
        ));
    }
    (subject, body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::{audit::event, fixtures};

    fn requested(reason: &str) -> Message {
        let mut request = fixtures::pending_request();
        request.spec.reason = Some(reason.to_owned());
        let policy = fixtures::policy();
        let status = request.status.clone().unwrap();
        let transitions = event::transitions(&status);
        let data = event::data_of(&request, &status, Some(&policy), &transitions[0], Some(2));
        message_of(AuditEventType::Requested, &data)
    }

    fn fact<'a>(message: &'a Message, label: &str) -> &'a str {
        message
            .facts
            .iter()
            .find(|(name, _)| name == label)
            .map(|(_, value)| value.as_str())
            .unwrap_or_else(|| panic!("no {label} in {:?}", message.facts))
    }

    #[test]
    fn the_approval_message_carries_what_an_approver_needs() {
        let message = requested("INC-42 checkout errors");
        assert_eq!(message.title, "alice asks for view of prod");
        assert_eq!(fact(&message, "Subject"), "alice");
        assert!(fact(&message, "Grants").contains("\"clusterRole\":\"view\""));
        assert_eq!(fact(&message, "Duration"), "1h");
        assert_eq!(fact(&message, "Ticket"), "INC-42");
        assert_eq!(fact(&message, "Approvals"), "0 of 1");
        assert_eq!(
            fact(&message, "History"),
            "alice had this role 2 times in the last 30 days"
        );
        let commands = message.commands.clone().unwrap();
        assert_eq!(
            commands.approve,
            "kubectl jit approve alice-view -n team-a --comment '<comment>'"
        );
        assert_eq!(
            commands.deny,
            "kubectl jit deny alice-view -n team-a --comment '<reason>'"
        );
        assert!(
            commands.approve_by_annotation.starts_with(
                "kubectl annotate accessrequest alice-view -n team-a jit.dev/approve="
            )
        );
    }

    #[test]
    fn a_long_reason_is_cut_to_slacks_and_teams_limits_not_refused() {
        let message = requested(&format!("INC-1 {}", "x".repeat(50_000)));
        let payload = slack(&message);
        let blocks = payload["blocks"].as_array().unwrap();
        assert!(blocks.len() <= 50);
        assert!(payload["text"].as_str().unwrap().chars().count() <= SLACK_TEXT_LIMIT);
        assert!(blocks[0]["text"]["text"].as_str().unwrap().chars().count() <= SLACK_HEADER_LIMIT);
        for block in &blocks[1..] {
            for field in block["fields"].as_array().into_iter().flatten() {
                assert!(field["text"].as_str().unwrap().chars().count() <= SLACK_FIELD_LIMIT);
            }
            if let Some(text) = block["text"]["text"].as_str() {
                assert!(text.chars().count() <= SLACK_TEXT_LIMIT);
            }
            assert!(
                block["fields"]
                    .as_array()
                    .is_none_or(|fields| fields.len() <= SLACK_FIELDS_MAX)
            );
        }
        let card = teams(&message);
        assert!(card.to_string().len() <= TEAMS_BYTES_LIMIT);
        assert_eq!(
            card["attachments"][0]["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        assert!(
            card.to_string().contains("INC-1 xxx"),
            "the reason's start is kept"
        );
    }

    #[test]
    fn slack_text_is_escaped() {
        let message = requested("INC-9 <script> & <@here>");
        let text = slack(&message).to_string();
        assert!(!text.contains("<@here>"), "{text}");
        assert!(text.contains("&lt;@here&gt;"));
    }

    #[test]
    fn tickets_are_found_in_reasons() {
        assert_eq!(ticket_in("INC-42 checkout"), Some("INC-42".into()));
        assert_eq!(ticket_in("see OPS2-7, please"), Some("OPS2-7".into()));
        assert_eq!(ticket_in("no ticket-here"), None);
    }

    #[test]
    fn an_email_subject_is_one_line() {
        let mut message = requested("INC-1");
        message.title = "a\r\nBcc: evil@example.com".into();
        let (subject, _) = email(&message);
        assert!(
            !subject.contains('\n') && !subject.contains('\r'),
            "{subject}"
        );
    }
}
