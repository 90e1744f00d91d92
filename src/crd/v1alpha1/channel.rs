//! `NotificationChannel`: where the audit trail and notifications go (a CloudEvents sink, a
//! webhook, Slack, Teams, email), and the routes in an `AccessPolicy` that pick which channel
//! hears which kind of event.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd::ApiDuration;

/// How a channel delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChannelType {
    /// CloudEvents 1.0 over HTTP in structured mode (`application/cloudevents+json`): Knative,
    /// Argo Events, Vector, a SIEM.
    CloudEvents,
    /// The same JSON event as a plain `application/json` POST, for anything else.
    Webhook,
    /// A Slack incoming webhook, as a Block Kit message.
    Slack,
    /// A Microsoft Teams Workflows webhook, as an Adaptive Card.
    MsTeams,
    /// Email over SMTP with STARTTLS.
    Email,
}

impl ChannelType {
    /// The type as the spec writes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::CloudEvents => "cloudevents",
            Self::Webhook => "webhook",
            Self::Slack => "slack",
            Self::MsTeams => "msteams",
            Self::Email => "email",
        }
    }
}

/// The Secret holding a channel's address and credentials.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// A Secret in the operator's own namespace. Keys: `address` (the URL; for email, unused),
    /// `token` (sent as `Authorization: Bearer`), `username` and `password` (SMTP), `ca.crt`
    /// (a CA to trust besides the system's, PEM).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Where and as whom email is sent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmailSettings {
    /// The SMTP server's host name.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// Its submission port.
    #[serde(default = "default_smtp_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// The sender address.
    #[schemars(length(min = 3, max = 320))]
    pub from: String,
    /// Addresses that get every message this channel sends, besides the people each event is
    /// for (approvers, requester or subject, from their `email` identity mapping or a username
    /// that is an address).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub to: Vec<String>,
}

fn default_smtp_port() -> u16 {
    587
}

/// A place the operator delivers audit events and notifications to.
// Each `printcolumn(...)` repeats the same keys, which clippy takes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "jit.dev",
    version = "v1alpha1",
    kind = "NotificationChannel",
    shortname = "nc",
    // Not in category `jit`: channels are the administrators'; `kubectl get jit` is what
    // requesters run, and they may not list channels.
    status = "NotificationChannelStatus",
    derive = "PartialEq",
    doc = "Where audit events and notifications for access requests are delivered.",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Backlog", type_ = "integer", json_path = ".status.backlog"),
    printcolumn(
        name = "Last Delivery",
        type_ = "date",
        json_path = ".status.lastDeliveryTime"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("(self.type == 'email') == has(self.email)")
    .message("email settings are needed for, and only for, type email"))]
pub struct NotificationChannelSpec {
    /// How the channel delivers.
    #[serde(rename = "type")]
    pub type_: ChannelType,
    /// The Secret with the channel's URL and credentials; they never appear anywhere else.
    pub secret_ref: SecretReference,
    /// For type `email`: the SMTP server and sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailSettings>,
    /// Holds deliveries back (they wait in the backlog) while true.
    #[serde(default)]
    pub suspend: bool,
}

/// How deliveries to a channel go.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationChannelStatus {
    /// `Ready`: the last delivery (or its set-up) worked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When the channel last acknowledged a delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery_time: Option<Time>,
    /// What went wrong last, without any address or credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Events waiting for this channel.
    #[serde(default)]
    pub backlog: i64,
    /// Events delivered since the operator started.
    #[serde(default)]
    pub delivered: i64,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// What happened to a request, as audit events and routes name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum AuditEventType {
    /// A request was made.
    Requested,
    /// Refused at admission (no request was stored).
    Refused,
    /// One approver agreed.
    Approval,
    /// One approver refused.
    Denial,
    /// Still pending after the policy's reminder interval: announced again.
    Reminder,
    /// Approved (by people, the policy, or its expression).
    Approved,
    /// Refused by an approver or the policy.
    Denied,
    /// The role was granted.
    Granted,
    /// A grant changed or removed by hand was restored.
    GrantRepaired,
    /// The grant ends soon (the policy's `expiryWarning` ahead).
    ExpiringSoon,
    /// The grant ran its course (or the request timed out waiting) and was taken away.
    Expired,
    /// Ended early and taken away.
    Revoked,
    /// Could not be granted.
    Failed,
    /// Taking the grant away is failing, and is retried until it succeeds.
    RevocationFailing,
    /// Taking the grant away succeeded after failing.
    RevocationRecovered,
    /// The request object was deleted.
    Deleted,
    /// One action the subject took with the grant (`dev.jit.activity.v1`), from the API
    /// server's audit events or the cloud's log. Only routes that list it hear it, and only
    /// `cloudevents` and `webhook` channels, in batches.
    Activity,
}

impl AuditEventType {
    /// Every type, in the order of a request's life.
    pub const ALL: [Self; 16] = [
        Self::Requested,
        Self::Refused,
        Self::Approval,
        Self::Denial,
        Self::Reminder,
        Self::Approved,
        Self::Denied,
        Self::Granted,
        Self::GrantRepaired,
        Self::ExpiringSoon,
        Self::Expired,
        Self::Revoked,
        Self::Failed,
        Self::RevocationFailing,
        Self::RevocationRecovered,
        Self::Deleted,
    ];

    /// The type as routes and the timeline write it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Activity => "Activity",
            Self::Requested => "Requested",
            Self::Refused => "Refused",
            Self::Approval => "Approval",
            Self::Denial => "Denial",
            Self::Reminder => "Reminder",
            Self::Approved => "Approved",
            Self::Denied => "Denied",
            Self::Granted => "Granted",
            Self::GrantRepaired => "GrantRepaired",
            Self::ExpiringSoon => "ExpiringSoon",
            Self::Expired => "Expired",
            Self::Revoked => "Revoked",
            Self::Failed => "Failed",
            Self::RevocationFailing => "RevocationFailing",
            Self::RevocationRecovered => "RevocationRecovered",
            Self::Deleted => "Deleted",
        }
    }

    /// The CloudEvents `type`, e.g. `dev.jit.accessrequest.granted.v1`.
    pub fn cloud_event_type(self) -> String {
        if self == Self::Activity {
            return "dev.jit.activity.v1".to_owned();
        }
        format!(
            "dev.jit.accessrequest.{}.v1",
            self.as_str().to_ascii_lowercase()
        )
    }

    /// The type a timeline entry's `event` names, if it names one.
    pub fn parse(text: &str) -> Option<Self> {
        // The timeline has said `Repaired` since before there were audit events.
        if text == "Repaired" {
            return Some(Self::GrantRepaired);
        }
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// One channel and what it hears.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationRoute {
    /// The NotificationChannel's name.
    #[schemars(length(min = 1, max = 253))]
    pub channel: String,
    /// The types it hears; every type when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub events: Vec<AuditEventType>,
}

impl NotificationRoute {
    /// Whether this route sends events of `kind`. Activity (one event per action) only when
    /// listed: a route that hears "everything" should not start hearing every call.
    pub fn hears(&self, kind: AuditEventType) -> bool {
        if kind == AuditEventType::Activity {
            return self.events.contains(&kind);
        }
        self.events.is_empty() || self.events.contains(&kind)
    }
}

/// Who hears about a policy's requests, and when people are reminded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notifications {
    /// Channels and the types each hears. Every channel named must exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub routes: Vec<NotificationRoute>,
    /// How long before a grant ends its subject is told (`ExpiringSoon`); 10m when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_warning: Option<ApiDuration>,
    /// A request pending this long is announced to approvers again (`Reminder`), and again
    /// after each further interval; never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reminder_interval: Option<ApiDuration>,
}
