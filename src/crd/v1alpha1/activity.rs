//! `status.activity`: what the subject did with a grant while it was held, bounded in size
//! however busy the subject was.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The most verb and resource pairs `byVerbAndResource` lists; the rest are summed in
/// `otherActions`.
pub const ACTIVITY_TOP: usize = 20;
/// The most actions `recent` keeps.
pub const ACTIVITY_RECENT: usize = 10;

/// Where an activity summary comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ActivitySource {
    /// The Kubernetes API server's audit events, attributed exactly through the binding that
    /// allowed each call.
    KubernetesAudit,
    /// AWS CloudTrail event history (`LookupEvents`).
    AwsCloudTrail,
    /// Google Cloud Audit Logs, read from Cloud Logging (`entries.list`).
    GcpAuditLogs,
    /// The Azure Activity Log.
    AzureActivityLog,
}

/// How complete a summary is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ActivityCompleteness {
    /// Counted as the API server reports each call: complete up to `asOf`.
    Live,
    /// Read from a cloud's log while the grant was active or before the cloud's delivery
    /// delay had passed since it ended: actions may still arrive, and are read again.
    Preliminary,
    /// Read once more after the grant ended and the cloud's delivery delay passed: final.
    Final,
    /// More actions than the operator reads in one go: the counts are a lower bound.
    Truncated,
}

/// Which field of the cloud's log names the grant's holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ActivityMatch {
    /// CloudTrail's user name of an IAM user.
    AwsUserName,
    /// The source identity of assumed-role sessions (`userIdentity.sessionContext
    /// .sourceIdentity`), of sessions of the role `scope` names.
    AwsSourceIdentity,
    /// The authenticated principal's email (`protoPayload.authenticationInfo.principalEmail`).
    GcpPrincipalEmail,
    /// The caller's Entra ID object ID (the `oid` claim of the event).
    AzureObjectId,
}

/// Where and how the cloud's own activity log names the holder of a grant, recorded when
/// the grant is made so that the log can be read after it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActivityLookup {
    /// The log.
    pub source: ActivitySource,
    /// The field that names the holder.
    #[serde(rename = "match")]
    pub matches: ActivityMatch,
    /// The holder, as that field names them.
    #[schemars(length(max = 512))]
    pub principal: String,
    /// Where the log is read: the assumed role's ARN, the Google resource, the Azure scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub scope: Option<String>,
}

/// What the subject did with the grant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    /// Where the summary comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ActivitySource>,
    /// Actions the grant allowed.
    #[serde(default)]
    pub actions: i64,
    /// Attempts by the subject during the grant that were refused (403).
    #[serde(default)]
    pub refused: i64,
    /// When the first allowed action happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_action_time: Option<Time>,
    /// When the last allowed action happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action_time: Option<Time>,
    /// Allowed actions by verb and resource, the most frequent first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub by_verb_and_resource: Vec<ActivityCount>,
    /// Allowed actions not in `byVerbAndResource`.
    #[serde(default)]
    pub other_actions: i64,
    /// The last actions, allowed or refused, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub recent: Vec<ActivityAction>,
    /// When the summary was made: complete up to then for the Kubernetes audit, read from
    /// the cloud's log then for a cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<Time>,
    /// How complete it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completeness: Option<ActivityCompleteness>,
    /// Why the cloud's log could not be read the last time it was tried (it is tried again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub read_error: Option<String>,
}

/// How many allowed actions had this verb and resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActivityCount {
    /// The verb, e.g. `list`.
    #[schemars(length(max = 64))]
    pub verb: String,
    /// The resource, `group/resource/subresource` with empty parts left out, e.g. `pods/log`
    /// or `apps/deployments`; the path for non-resource requests.
    #[schemars(length(max = 512))]
    pub resource: String,
    /// How many.
    pub count: i64,
}

/// One action, as the API server recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActivityAction {
    /// When the API server received it.
    pub time: Time,
    /// The verb.
    #[schemars(length(max = 64))]
    pub verb: String,
    /// The resource, as in [`ActivityCount`].
    #[schemars(length(max = 512))]
    pub resource: String,
    /// The namespace, for namespaced resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
    /// The object's name, when the request named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub name: Option<String>,
    /// The HTTP status the API server answered.
    pub code: i32,
}
