//! One audit event: a request's transition (a timeline entry) as a CloudEvents 1.0 event,
//! with what people need to understand it in `data`. Pure: built from the request, its policy
//! and the entry, so that a retry builds the same event with the same id.

use cloudevents::{EventBuilder, EventBuilderV10};
use jiff::Timestamp;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::crd::v1alpha1::{
    AccessPolicy, AccessRequest, AccessRequestStatus, AuditEventType, PolicyRole, TimelineEntry,
    annotations,
};

/// Why an event could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CloudEvents SDK refused an attribute.
    #[error("failed to build the cloud event")]
    Build(#[from] cloudevents::event::EventBuilderError),
    /// A timestamp did not convert.
    #[error("invalid time {0}")]
    Time(String),
}

/// The request an event is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// One approver's decision, as events carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalData {
    pub user: String,
    pub decision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub time: String,
}

/// The grant, in the target's own terms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantData {
    /// kubernetes, aws, gcp or azure.
    pub target: String,
    /// What it is called there: a binding's namespace and name, a policy or assignment name.
    pub reference: String,
    /// Whether the target ends it by itself at `expiresAt`.
    pub cloud_enforced_expiry: bool,
}

/// The commands an approver runs to decide: the `kubectl jit` plugin's, and the plain
/// `kubectl` one for approvers without the plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Commands {
    pub approve: String,
    pub deny: String,
    pub approve_by_annotation: String,
}

/// The `data` of every audit event. No secret is ever in it: the policy's roles name what is
/// granted, never a credential, and identity mappings are not copied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditData {
    pub request: RequestRef,
    pub policy: String,
    pub role: String,
    /// What the role grants, as the policy defines it (its target block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_definition: Option<serde_json::Value>,
    /// Who asked, as the API server authenticated them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
    /// Who receives the role.
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// The phase after the transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Who caused the transition, when a person did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// What the timeline says about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals_required: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// How many times in the last 30 days this subject was granted this role of this policy
    /// (for the approver's context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants_last_30_days: Option<usize>,
    /// How to approve or deny, for events approvers get.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commands: Option<Commands>,
}

/// A transition to report: which kind, its ordinal in the request's timeline (the event id's
/// stable part), and the entry.
#[derive(Clone, Debug)]
pub struct Transition<'a> {
    pub kind: AuditEventType,
    pub ordinal: u64,
    pub entry: &'a TimelineEntry,
}

/// The transitions in a status's timeline, with their ordinals (the timeline keeps only its
/// last entries; `timelineOffset` counts those dropped).
pub fn transitions(status: &AccessRequestStatus) -> Vec<Transition<'_>> {
    let offset = u64::try_from(status.timeline_offset).unwrap_or(0);
    status
        .timeline
        .iter()
        .zip(offset..)
        .filter_map(|(entry, ordinal)| {
            AuditEventType::parse(&entry.event).map(|kind| Transition {
                kind,
                ordinal,
                entry,
            })
        })
        .collect()
}

/// The subject a request's role goes to.
pub fn subject_of(request: &AccessRequest) -> String {
    request.spec.subject_name().unwrap_or_default().to_owned()
}

/// The id of the event for a request's transition: stable across retries and restarts.
pub fn event_id(uid: &str, ordinal: u64) -> String {
    format!("{uid}.{ordinal}")
}

/// The CloudEvents `source`: the request's API path.
pub fn source_of(namespace: &str, name: &str) -> String {
    format!("/apis/jit.dev/v1alpha1/namespaces/{namespace}/accessrequests/{name}")
}

fn time_text(time: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> String {
    time.0.to_string()
}

/// The data of an event about `request`, whose status is now `status`, after `transition`.
pub fn data_of(
    request: &AccessRequest,
    status: &AccessRequestStatus,
    policy: Option<&AccessPolicy>,
    transition: &Transition<'_>,
    grants_last_30_days: Option<usize>,
) -> AuditData {
    let namespace = request.namespace().unwrap_or_default();
    let name = request.name_any();
    let role = policy.and_then(|policy| {
        policy
            .spec
            .roles
            .iter()
            .find(|role| role.name == request.spec.role)
    });
    let asks_approvers = matches!(
        transition.kind,
        AuditEventType::Requested | AuditEventType::Reminder
    );
    AuditData {
        request: RequestRef {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: request.uid().unwrap_or_default(),
        },
        policy: request.spec.policy.clone(),
        role: request.spec.role.clone(),
        role_definition: role.map(definition_of),
        requester: request.spec.requester_name().map(str::to_owned),
        subject: subject_of(request),
        reason: request.spec.reason.clone(),
        duration: request
            .spec
            .duration
            .as_ref()
            .map(|duration| duration.as_str().to_owned())
            .or_else(|| {
                policy
                    .and_then(|policy| policy.spec.default_duration.as_ref())
                    .map(|duration| duration.as_str().to_owned())
            }),
        phase: status.phase.map(|phase| phase.as_str().to_owned()),
        actor: transition.entry.actor.clone(),
        message: transition.entry.message.clone(),
        approvals: status
            .approvals
            .iter()
            .map(|approval| ApprovalData {
                user: approval.user.clone(),
                decision: approval.decision.as_str().to_owned(),
                comment: approval.comment.clone(),
                time: time_text(&approval.time),
            })
            .collect(),
        approvals_required: policy.map(|policy| policy.spec.approvals_required),
        grant: status.grant.as_ref().map(|grant| GrantData {
            target: grant.provider.clone(),
            reference: grant.reference.clone(),
            cloud_enforced_expiry: grant.cloud_enforced_expiry,
        }),
        requested_at: request.metadata.creation_timestamp.as_ref().map(time_text),
        granted_at: status.granted_at.as_ref().map(time_text),
        expires_at: status.expires_at.as_ref().map(time_text),
        revoked_at: status.revoked_at.as_ref().map(time_text),
        grants_last_30_days: grants_last_30_days.filter(|_| asks_approvers),
        commands: asks_approvers.then(|| Commands {
            approve: format!("kubectl jit approve {name} -n {namespace} --comment '<comment>'"),
            deny: format!("kubectl jit deny {name} -n {namespace} --comment '<reason>'"),
            approve_by_annotation: format!(
                "kubectl annotate accessrequest {name} -n {namespace} {}='<comment>'",
                annotations::APPROVE
            ),
        }),
    }
}

/// What a role grants, as its policy says: its target block without its name.
fn definition_of(role: &PolicyRole) -> serde_json::Value {
    let mut value = serde_json::to_value(role).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.remove("name");
    }
    value
}

/// `time` as the CloudEvents SDK takes it; `None` out of chrono's range.
pub(crate) fn chrono_time(time: Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(time.as_second(), time.subsec_nanosecond().unsigned_abs())
}

/// The CloudEvent for `data` of `kind`, with this id and time.
pub fn cloud_event(
    kind: AuditEventType,
    id: &str,
    time: Timestamp,
    data: &AuditData,
) -> Result<cloudevents::Event, Error> {
    let time = chrono_time(time).ok_or_else(|| Error::Time(time.to_string()))?;
    let json = serde_json::to_value(data).unwrap_or_default();
    Ok(EventBuilderV10::new()
        .id(id)
        .source(source_of(&data.request.namespace, &data.request.name))
        .ty(kind.cloud_event_type())
        .subject(data.subject.clone())
        .time(time)
        .data("application/json", json)
        .build()?)
}

/// The event for a transition of `request`, as JSON (structured mode).
pub fn event_json(
    request: &AccessRequest,
    status: &AccessRequestStatus,
    policy: Option<&AccessPolicy>,
    transition: &Transition<'_>,
    grants_last_30_days: Option<usize>,
) -> Result<serde_json::Value, Error> {
    let data = data_of(request, status, policy, transition, grants_last_30_days);
    let id = event_id(&data.request.uid, transition.ordinal);
    let event = cloud_event(transition.kind, &id, transition.entry.time.0, &data)?;
    Ok(serde_json::to_value(&event).unwrap_or_default())
}

/// The kind of an event in structured JSON, from its `type`.
pub fn kind_of(event: &serde_json::Value) -> Option<AuditEventType> {
    let ty = event.get("type")?.as_str()?;
    AuditEventType::ALL
        .into_iter()
        .find(|kind| kind.cloud_event_type() == ty)
}

/// The data of an event in structured JSON.
pub fn data_in(event: &serde_json::Value) -> Option<AuditData> {
    serde_json::from_value(event.get("data")?.clone()).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::fixtures;

    #[test]
    fn every_type_round_trips_through_its_cloud_event_type() {
        for kind in AuditEventType::ALL {
            let event = serde_json::json!({"type": kind.cloud_event_type()});
            assert_eq!(kind_of(&event), Some(kind));
        }
        assert_eq!(
            AuditEventType::Granted.cloud_event_type(),
            "dev.jit.accessrequest.granted.v1"
        );
    }

    #[test]
    fn an_event_has_a_stable_id_the_source_path_and_the_transition_time() {
        let request = fixtures::active_request();
        let status = request.status.clone().unwrap();
        let transitions = transitions(&status);
        let granted = transitions
            .iter()
            .find(|transition| transition.kind == AuditEventType::Granted)
            .unwrap();
        let first = event_json(&request, &status, None, granted, None).unwrap();
        let again = event_json(&request, &status, None, granted, None).unwrap();
        assert_eq!(first, again, "a retry builds the same event");
        assert_eq!(first["specversion"], "1.0");
        assert_eq!(
            first["id"],
            format!("{}.{}", request.uid().unwrap(), granted.ordinal)
        );
        assert_eq!(
            first["source"],
            source_of(&request.namespace().unwrap(), &request.name_any())
        );
        assert_eq!(first["type"], "dev.jit.accessrequest.granted.v1");
        assert_eq!(first["subject"], subject_of(&request));
        assert_eq!(
            first["time"]
                .as_str()
                .unwrap()
                .parse::<Timestamp>()
                .unwrap(),
            granted.entry.time.0
        );
        assert_eq!(first["data"]["grant"]["target"], "kubernetes");
        assert!(
            first["data"].get("commands").is_none(),
            "only approvers get commands"
        );
    }

    #[test]
    fn a_new_request_tells_approvers_how_to_decide() {
        let request = fixtures::pending_request();
        let status = request.status.clone().unwrap();
        let transitions = transitions(&status);
        let requested = &transitions[0];
        assert_eq!(requested.kind, AuditEventType::Requested);
        let data = data_of(&request, &status, None, requested, Some(3));
        assert_eq!(data.grants_last_30_days, Some(3));
        let commands = data.commands.unwrap();
        assert_eq!(
            commands.approve,
            format!(
                "kubectl jit approve {} -n {} --comment '<comment>'",
                request.name_any(),
                request.namespace().unwrap()
            )
        );
        assert!(
            commands.deny.starts_with("kubectl jit deny "),
            "{}",
            commands.deny
        );
        assert!(
            commands.approve_by_annotation.contains("jit.dev/approve="),
            "{}",
            commands.approve_by_annotation
        );
    }

    #[test]
    fn ordinals_continue_past_dropped_timeline_entries() {
        let mut request = fixtures::active_request();
        let status = request.status.as_mut().unwrap();
        status.timeline_offset = 40;
        let ordinals: Vec<u64> = transitions(request.status.as_ref().unwrap())
            .iter()
            .map(|transition| transition.ordinal)
            .collect();
        assert_eq!(ordinals.first(), Some(&40));
        assert!(ordinals.windows(2).all(|pair| pair[1] == pair[0] + 1));
    }
}
