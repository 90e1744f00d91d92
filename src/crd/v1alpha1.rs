//! The `jit.dev/v1alpha1` API: `AccessPolicy`, `AccessRequest` and `NotificationChannel`,
//! with the schema rules the API server enforces on them.

mod activity;
mod channel;

pub use activity::{
    ACTIVITY_RECENT, ACTIVITY_TOP, Activity, ActivityAction, ActivityCompleteness, ActivityCount,
    ActivityLookup, ActivityMatch, ActivitySource,
};
pub use channel::{
    AuditEventType, ChannelType, EmailSettings, NotificationChannel, NotificationChannelSpec,
    NotificationChannelStatus, NotificationRoute, Notifications, SecretReference,
};

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::{ApiDuration, DURATION_PATTERN};
use crate::target::Target;

/// Annotations people write to act on a request, and the records admission keeps of them.
pub mod annotations {
    /// An approver agrees: `kubectl annotate ar NAME jit.dev/approve="comment"`.
    pub const APPROVE: &str = "jit.dev/approve";
    /// An approver refuses: `kubectl annotate ar NAME jit.dev/deny="comment"`.
    pub const DENY: &str = "jit.dev/deny";
    /// The requester, the subject or an approver ends a request early.
    pub const REVOKE: &str = "jit.dev/revoke";
    /// The verified decisions (JSON list of [`super::Approval`]), written only by admission
    /// from `jit.dev/approve` and `jit.dev/deny`, only ever appended to.
    pub const DECISIONS: &str = "jit.dev/decisions";
    /// The verified early end (JSON [`super::Revocation`]), written only by admission from
    /// `jit.dev/revoke`, once.
    pub const REVOCATION: &str = "jit.dev/revocation";
}

/// The finalizer that makes deletion revoke the grant first.
pub const FINALIZER: &str = "jit.dev/revoke";

/// The kinds of AWS grant; an `aws` block names exactly one of them.
pub const AWS_GRANT_KINDS: &[&str] = &[
    "policyDocument",
    "policyArn",
    "groupName",
    "assumeRoleArn",
    "identityCenter",
];

/// Longest name of a policy, role or namespace reference (a DNS label is at most 63).
const NAME_MAX_LENGTH: u32 = 253;

/// Most roles one policy may list; bounds the cost of the uniqueness rule.
const ROLES_MAX_ITEMS: u32 = 64;

impl PolicyRole {
    /// The target the role grants in: the one block it carries (admission refuses a role
    /// with none or several).
    pub fn target(&self) -> Option<Target> {
        let Self {
            name: _,
            kubernetes,
            aws,
            gcp,
            azure,
            max_duration: _,
            approvals_required: _,
        } = self;
        [
            (kubernetes.is_some(), Target::Kubernetes),
            (aws.is_some(), Target::Aws),
            (gcp.is_some(), Target::Gcp),
            (azure.is_some(), Target::Azure),
        ]
        .into_iter()
        .find_map(|(present, target)| present.then_some(target))
    }
}

/// The rule that a role carries exactly one target block.
fn exactly_one_target_rule() -> kube::core::Rule {
    let present = Target::ALL
        .iter()
        .map(|target| format!("has(self.{target})"))
        .collect::<Vec<_>>()
        .join(", ");
    kube::core::Rule::new(format!("[{present}].filter(set, set).size() == 1")).message(
        kube::core::Message::Message(format!(
            "a role must name exactly one target: {}",
            Target::ALL.map(Target::as_str).join(", ")
        )),
    )
}

/// The rule that an `aws` block names exactly one kind of grant, and a principal unless the
/// grant is an Identity Center assignment (which names its own).
fn aws_kind_rule() -> kube::core::Rule {
    let present = AWS_GRANT_KINDS
        .iter()
        .map(|kind| format!("has(self.{kind})"))
        .collect::<Vec<_>>()
        .join(", ");
    kube::core::Rule::new(format!(
        "[{present}].filter(set, set).size() == 1 && (has(self.identityCenter) != has(self.principal))"
    ))
    .message(kube::core::Message::Message(format!(
        "an aws role must name exactly one of {}, and a principal unless it is identityCenter",
        AWS_GRANT_KINDS.join(", ")
    )))
}

/// An object kept as written (an IAM policy document), not described field by field.
fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// The rule that a policy's default duration is not above its maximum. Malformed durations are
/// reported by their own field rule, so this one stays quiet about them.
fn default_within_max_rule() -> kube::core::Rule {
    kube::core::Rule::new(format!(
        "!has(self.defaultDuration) || !self.defaultDuration.matches('{DURATION_PATTERN}') || \
         !self.maxDuration.matches('{DURATION_PATTERN}') || self.defaultDuration == '' || \
         self.maxDuration == '' || duration(self.defaultDuration) <= duration(self.maxDuration)"
    ))
    .message(kube::core::Message::Expression(
        "'defaultDuration ' + self.defaultDuration + ' must not be longer than maxDuration ' + \
         self.maxDuration"
            .into(),
    ))
    .field_path(".defaultDuration")
}

/// Who a policy lets do something: anyone whose username is listed or who is in a listed group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubjectSet {
    /// Usernames as the API server authenticates them, e.g. `alice` or
    /// `system:serviceaccount:ci:deployer`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Group names as the API server authenticates them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// What a request's reason must look like.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReasonPolicy {
    /// Whether a request must give a reason.
    #[serde(default)]
    pub required: bool,
    /// A regular expression (RE2 syntax) the reason must match, e.g. `^(INC|CHG)-[0-9]+`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub pattern: Option<String>,
}

/// A CEL expression that, when true, grants a request without human approval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoApprove {
    /// CEL over `request` (policy, role, duration, reason) and `subject` (username, groups).
    #[schemars(length(min = 1, max = 4096))]
    pub expression: String,
}

/// A Kubernetes RBAC role to bind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesTarget {
    /// The ClusterRole to bind.
    #[schemars(length(min = 1, max = 253))]
    pub cluster_role: String,
    /// Bind in this namespace with a RoleBinding; without it, a ClusterRoleBinding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// An AWS grant: one of an inline policy, a managed policy, a group membership, the right to
/// assume a role, or an IAM Identity Center account assignment. Text fields marked as templates
/// may use `{{username}}`, `{{group}}`, `{{extra.KEY}}` and `{{mapping.KEY}}` (see
/// `identityMappings`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = aws_kind_rule())]
pub struct AwsTarget {
    /// Who receives the grant: the ARN of an IAM user, role or group (a template), e.g.
    /// `arn:aws:iam::123456789012:user/{{username}}`. Not used with `identityCenter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub principal: Option<String>,
    /// An IAM policy document put on the principal as an inline policy that AWS itself stops
    /// honouring at the expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub policy_document: Option<serde_json::Value>,
    /// A managed policy attached to the principal for the duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^arn:aws[a-z-]*:iam::(\d{12}|aws):policy/.+$"))]
    pub policy_arn: Option<String>,
    /// An IAM group the principal (a user) is added to for the duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[\w+=,.@-]+$"))]
    pub group_name: Option<String>,
    /// A role the principal may assume until the expiry, through a statement in its trust
    /// policy; sessions are tied to the subject by `sts:SourceIdentity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$"))]
    pub assume_role_arn: Option<String>,
    /// The source identity sessions of an `assumeRoleArn` grant must carry (a template);
    /// `{{username}}` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub source_identity: Option<String>,
    /// An IAM Identity Center account assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_center: Option<IdentityCenterTarget>,
}

/// A Google Cloud IAM role bound, with a condition that ends it at the expiry, on a project,
/// folder or organization.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcpTarget {
    /// Where: `projects/ID`, `folders/NUMBER` or `organizations/NUMBER`.
    #[schemars(regex(
        pattern = r"^(projects/[a-z][-a-z0-9]{4,28}[a-z0-9]|folders/[0-9]+|organizations/[0-9]+)$"
    ))]
    pub resource: String,
    /// The IAM role, e.g. `roles/viewer` or a custom `projects/ID/roles/NAME`.
    #[schemars(regex(
        pattern = r"^(roles/[A-Za-z0-9_.]+|(projects|organizations)/[^/]+/roles/[A-Za-z0-9_.]+)$"
    ))]
    pub role: String,
    /// Who receives it (a template): `user:{{username}}`, `group:...`, `serviceAccount:...`,
    /// `principal://...`.
    #[schemars(length(min = 1, max = 1024))]
    pub member: String,
}

/// How an Azure role is granted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AzureMode {
    /// A role assignment the operator deletes at the expiry.
    #[default]
    Direct,
    /// A Privileged Identity Management assignment schedule that Azure itself ends at the
    /// expiry.
    Pim,
}

/// What kind of Entra ID object an Azure principal is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AzurePrincipalType {
    /// A user.
    User,
    /// A security group.
    Group,
    /// A service principal (an application or managed identity).
    ServicePrincipal,
}

/// An Azure RBAC role assigned at a scope, directly or through Privileged Identity Management.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureTarget {
    /// Where: a management group, subscription, resource group or resource, e.g.
    /// `/subscriptions/SUB/resourceGroups/RG`.
    #[schemars(
        length(min = 1, max = 1024),
        regex(
            pattern = r"^(/providers/Microsoft\.Management/managementGroups/[-\w.()]+|/subscriptions/[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(/resourceGroups/[-\w.()]+(/providers/[^?#]+)?)?)$"
        )
    )]
    pub scope: String,
    /// The role definition, e.g.
    /// `/subscriptions/SUB/providers/Microsoft.Authorization/roleDefinitions/GUID`.
    #[schemars(regex(
        pattern = r"^(/subscriptions/[0-9a-fA-F-]{36}|/providers/Microsoft\.Management/managementGroups/[-\w.()]+)?/providers/Microsoft\.Authorization/roleDefinitions/[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    ))]
    pub role_definition_id: String,
    /// The Entra ID object that receives the role (a template that must come to an object
    /// ID), e.g. `{{mapping.azureObjectId}}`.
    #[schemars(length(min = 1, max = 256))]
    pub principal_id: String,
    /// What kind of object `principalId` is.
    pub principal_type: AzurePrincipalType,
    /// `direct` (a role assignment) or `pim` (an assignment schedule Azure ends itself).
    #[serde(default)]
    pub mode: AzureMode,
    /// The ticket system named with a ticket number found in the reason (`pim` only), e.g.
    /// `ServiceNow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub ticket_system: Option<String>,
}

/// Who an Identity Center assignment is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum IdentityCenterPrincipalType {
    /// An Identity Center user.
    User,
    /// An Identity Center group.
    Group,
}

/// An IAM Identity Center account assignment: a permission set in one account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentityCenterTarget {
    /// The Identity Center instance.
    #[schemars(regex(pattern = r"^arn:aws[a-z-]*:sso:::instance/.+$"))]
    pub instance_arn: String,
    /// The permission set to assign.
    #[schemars(regex(pattern = r"^arn:aws[a-z-]*:sso:::permissionSet/.+$"))]
    pub permission_set_arn: String,
    /// The AWS account it applies to.
    #[schemars(regex(pattern = r"^\d{12}$"))]
    pub account_id: String,
    /// Whether `principalId` is a user or a group.
    pub principal_type: IdentityCenterPrincipalType,
    /// The Identity Center user or group ID (a template, usually `{{mapping.KEY}}`).
    #[schemars(length(min = 1, max = 256))]
    pub principal_id: String,
}

/// Values an administrator sets for one subject, for templates that cannot derive them from
/// the username (`{{mapping.KEY}}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentityMapping {
    /// The subject, written as in a request: `alice`, `group:oncall` or
    /// `system:serviceaccount:NAMESPACE:NAME`.
    #[schemars(length(min = 1, max = 253))]
    pub subject: String,
    /// The values, by key.
    #[schemars(extend("maxProperties" = 64))]
    pub values: BTreeMap<String, String>,
}

/// One role a policy can grant, with the target that grants it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = exactly_one_target_rule())]
pub struct PolicyRole {
    /// The name requests use for this role; unique within the policy.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Distinct approvals this role needs, overriding the policy's `approvalsRequired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16))]
    pub approvals_required: Option<i32>,
    /// The longest grant of this role, overriding the policy's `maxDuration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<ApiDuration>,
    /// Bind a Kubernetes ClusterRole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesTarget>,
    /// Grant in AWS IAM or IAM Identity Center.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsTarget>,
    /// Grant in Google Cloud IAM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcp: Option<GcpTarget>,
    /// Grant in Azure RBAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureTarget>,
}

fn default_approvals_required() -> i32 {
    1
}

fn default_approval_timeout() -> Option<ApiDuration> {
    Some(ApiDuration::hours(24))
}

/// Who may request which roles, who must approve, and for how long.
// Each `printcolumn(...)` repeats the same keys, which clippy takes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "jit.dev",
    version = "v1alpha1",
    kind = "AccessPolicy",
    shortname = "ap",
    derive = "PartialEq",
    category = "jit",
    doc = "Says who may request which roles, who must approve them and for how long.",
    printcolumn(
        name = "Approvals",
        type_ = "integer",
        json_path = ".spec.approvalsRequired",
        description = "distinct approvals a request needs unless a role overrides it"
    ),
    printcolumn(
        name = "Max",
        type_ = "string",
        json_path = ".spec.maxDuration",
        description = "longest grant unless a role overrides it"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = default_within_max_rule())]
pub struct AccessPolicySpec {
    /// What this policy is for, for the people who read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// Who may create requests under this policy (any match).
    #[serde(default)]
    pub requesters: SubjectSet,
    /// Who may approve or deny them (any match).
    #[serde(default)]
    pub approvers: SubjectSet,
    /// Who may request on behalf of someone else (e.g. a GitOps ServiceAccount): they may set
    /// `spec.subject` to a user, ServiceAccount or group that is itself a requester.
    #[serde(default)]
    pub delegates: SubjectSet,
    /// Distinct approvers a request needs; 0 grants without approval.
    #[serde(default = "default_approvals_required")]
    #[schemars(range(min = 0, max = 16))]
    pub approvals_required: i32,
    /// Whether a requester or subject may approve their own request.
    #[serde(default)]
    pub allow_self_approval: bool,
    /// Duration of a request that names none; at most `maxDuration`. Without it a request must
    /// name its duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_duration: Option<ApiDuration>,
    /// The longest grant a request may ask for.
    pub max_duration: ApiDuration,
    /// A request still pending after this long is closed, never granted.
    #[serde(
        default = "default_approval_timeout",
        skip_serializing_if = "Option::is_none"
    )]
    pub approval_timeout: Option<ApiDuration>,
    /// A Kubernetes grant with no action for this long (as the API server's audit events
    /// show, see `status.activity`) is revoked early, with reason `Idle`. At least 30s; needs
    /// the operator's audit webhook (`--activity-addr`), or every grant ends this long after
    /// it starts. Activity never extends a grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<ApiDuration>,
    /// What a request's reason must look like.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ReasonPolicy>,
    /// Grant without human approval when this expression holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_approve: Option<AutoApprove>,
    /// The only roles this policy can grant.
    #[schemars(length(min = 1, max = ROLES_MAX_ITEMS))]
    #[x_kube(validation = kube::core::Rule::new(
        "self.all(role, self.filter(other, other.name == role.name).size() == 1)"
    ).message("role names must be unique within a policy"))]
    pub roles: Vec<PolicyRole>,
    /// Values for `{{mapping.KEY}}` in role templates, per subject; a subject a template needs
    /// a value for and that has none here is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    // A list-map: the API server itself refuses a subject mapped twice, at no CEL cost.
    #[schemars(
        length(max = 1024),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["subject"])
    )]
    pub identity_mappings: Vec<IdentityMapping>,
    /// Which NotificationChannels hear about this policy's requests, and when people are
    /// reminded and warned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<Notifications>,
}

/// The authenticated identity that created a request, as the API server saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Requester {
    /// The username.
    pub username: String,
    /// The user's UID, when the authenticator gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The user's groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Extra attributes from the authenticator.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// A request for one role of one policy, for a bounded time.
// Each `printcolumn(...)` repeats the same keys, which clippy takes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "jit.dev",
    version = "v1alpha1",
    kind = "AccessRequest",
    namespaced,
    shortname = "ar",
    category = "jit",
    status = "AccessRequestStatus",
    derive = "PartialEq",
    doc = "Asks for one role of one policy for a bounded time, with a reason.",
    printcolumn(name = "Policy", type_ = "string", json_path = ".spec.policy"),
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.role"),
    printcolumn(name = "Subject", type_ = "string", json_path = ".spec.subject"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    // A string, not a date: kubectl shows future dates as "<invalid>".
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.expiresAt"),
    printcolumn(
        name = "Actions",
        type_ = "integer",
        json_path = ".status.activity.actions",
        description = "Actions the grant allowed, as the API server's audit events show",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self == oldSelf")
    .message("spec is immutable; create a new AccessRequest to ask for something else"))]
pub struct AccessRequestSpec {
    /// The AccessPolicy to request under.
    #[schemars(length(min = 1, max = NAME_MAX_LENGTH))]
    pub policy: String,
    /// The role of that policy to receive.
    #[schemars(length(min = 1, max = 63))]
    pub role: String,
    /// How long to hold the role once granted; the policy's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<ApiDuration>,
    /// Why the access is needed, e.g. a ticket reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
    /// Who receives the role: a username, `system:serviceaccount:NAMESPACE:NAME`, or
    /// `group:NAME`. Admission sets it to the requester when absent; naming someone else
    /// needs the policy's `delegates`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = NAME_MAX_LENGTH))]
    pub subject: Option<String>,
    /// The authenticated creator, written by admission; never typed by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<Requester>,
}

impl AccessRequestSpec {
    /// Who asked, as admission recorded them; `None` before admission.
    pub fn requester_name(&self) -> Option<&str> {
        self.requester
            .as_ref()
            .map(|requester| requester.username.as_str())
    }

    /// Who receives the role: the named subject, else the requester.
    pub fn subject_name(&self) -> Option<&str> {
        self.subject.as_deref().or_else(|| self.requester_name())
    }
}

impl AccessRequest {
    /// Drops what none of the operator's caches of requests reads, and what a requester can
    /// make large: managedFields, labels, annotations, the reason and the requester's extra
    /// attributes.
    pub fn strip_for_cache(&mut self) {
        let metadata = &mut self.metadata;
        metadata.managed_fields = None;
        metadata.labels = None;
        metadata.annotations = None;
        self.spec.reason = None;
        if let Some(requester) = self.spec.requester.as_mut() {
            requester.extra.clear();
        }
    }

    /// The time one field of its status holds (`|status| status.expires_at.as_ref()`), if
    /// it has a status and the field is set.
    pub fn status_time(
        &self,
        field: impl Fn(&AccessRequestStatus) -> Option<&Time>,
    ) -> Option<jiff::Timestamp> {
        self.status.as_ref().and_then(field).map(|time| time.0)
    }
}

impl AccessRequestStatus {
    /// Its phase and its grant's window: what every cache of requests keeps of a status, each
    /// adding what else it reads.
    pub fn phase_and_window(&self) -> Self {
        Self {
            phase: self.phase,
            granted_at: self.granted_at.clone(),
            expires_at: self.expires_at.clone(),
            revoked_at: self.revoked_at.clone(),
            ..Self::default()
        }
    }
}

/// Where a request is in its life. The last four are final and never left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Waiting for approval.
    Pending,
    /// The role is granted.
    Active,
    /// The grant ran its course and was taken away.
    Expired,
    /// Ended early and taken away.
    Revoked,
    /// An approver or the policy said no.
    Denied,
    /// Could not be granted.
    Failed,
}

impl Phase {
    /// Every phase.
    pub const ALL: [Self; 6] = [
        Self::Pending,
        Self::Active,
        Self::Expired,
        Self::Revoked,
        Self::Denied,
        Self::Failed,
    ];

    /// The phase as status shows it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Active => "Active",
            Self::Expired => "Expired",
            Self::Revoked => "Revoked",
            Self::Denied => "Denied",
            Self::Failed => "Failed",
        }
    }

    /// Whether the phase is final.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Expired | Self::Revoked | Self::Denied | Self::Failed
        )
    }
}

/// What an approver decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Decision {
    /// Agreed to the request.
    Approved,
    /// Refused the request.
    Denied,
}

impl Decision {
    /// The decision as status shows it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Approved => "Approved",
            Self::Denied => "Denied",
        }
    }
}

/// One approver's verified decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// The approver, as the API server authenticated them.
    pub user: String,
    /// The approver's groups at the time, as the API server authenticated them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// What they decided.
    pub decision: Decision,
    /// When.
    pub time: Time,
    /// What they wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Admission's seal over this record and the request's UID: a record without a valid seal
    /// was not written by admission, and is not counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
}

/// What the operator is about to do to a request's grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum IntentAction {
    /// Make (or adopt) the grant.
    Grant,
    /// Remove the grant.
    Revoke,
}

/// An action on the grant, recorded before the operator calls the provider and cleared once
/// the outcome is in status, so that a crash in between is visible and resolved on restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantIntent {
    /// What is about to happen.
    pub action: IntentAction,
    /// The deterministic grant key (from the request UID) the provider uses.
    pub key: String,
    /// Since when.
    pub time: Time,
    /// Whether every grant made for the request was on record in status when this intent was
    /// written (no grant intent was open): a revoke then removes what status records and need
    /// not search the target for more. Absent on a grant intent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recorded: bool,
}

/// Who ended a request early, verified by admission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Revocation {
    /// Who asked, as the API server authenticated them.
    pub user: String,
    /// When.
    pub time: Time,
    /// What they wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// The grant the operator holds for a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// The target that holds it: kubernetes, aws, gcp or azure.
    pub provider: String,
    /// What it is called there, e.g. a RoleBinding's namespace and name.
    pub reference: String,
    /// Whether the target itself ends the access at `expiresAt`, even with the operator down.
    #[serde(default)]
    pub cloud_enforced_expiry: bool,
}

/// One step in a request's life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    /// When it happened.
    pub time: Time,
    /// What happened, e.g. `Approved` or `Granted`.
    pub event: String,
    /// Who did it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What the operator has done with a request; written only by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessRequestStatus {
    /// Where the request is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// `Approved` and `Granted`, for `kubectl wait --for=condition=Granted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Verified approvals and denials, one per approver.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<Approval>,
    /// When the role was granted; the clock starts here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_at: Option<Time>,
    /// When the role is taken away: `grantedAt` plus the duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// When the role was taken away early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Time>,
    /// The grant held for this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<Grant>,
    /// An action on the grant under way; set before the provider call, cleared after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<GrantIntent>,
    /// What happened, in order: the last [`TIMELINE_LIMIT`] entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = TIMELINE_LIMIT))]
    pub timeline: Vec<TimelineEntry>,
    /// How many older entries were dropped from the front of the timeline: the ordinal of
    /// `timeline[i]` (the stable part of its audit event's id) is `timelineOffset + i`.
    #[serde(default, skip_serializing_if = "is_zero_long")]
    #[schemars(range(min = 0))]
    pub timeline_offset: i64,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// A human-readable summary of the current phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Consecutive failed attempts at the current step (a grant, a revoke, or a look at the
    /// grant); sets the retry backoff.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(min = 0))]
    pub failures: i32,
    /// When the failing step is tried next: the backoff from `failures`, or the target's own
    /// Retry-After when that is later. Never later than the grant's end: expiry does not wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_time: Option<Time>,
    /// The operator's seal over `grantedAt` and `expiresAt`: a window it did not write (no
    /// valid seal) is never granted from and ends the grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
    /// What the subject did with the grant; written by the activity recorder alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<Activity>,
    /// How the cloud's activity log names the holder of a cloud grant; recorded when it is
    /// granted, kept after it ends so that the log can be read once more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity_lookup: Option<ActivityLookup>,
}

fn is_zero(count: &i32) -> bool {
    *count == 0
}

fn is_zero_long(count: &i64) -> bool {
    *count == 0
}

/// The most entries a request's timeline keeps: drift repairs or reminders over a long grant
/// must not grow a request past the API server's object limit. Older entries were delivered
/// as audit events before they were dropped.
pub const TIMELINE_LIMIT: u32 = 64;
