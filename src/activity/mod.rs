//! Session activity from the Kubernetes API server's audit events: which request's grant
//! allowed each call (exactly, from the `authorization.k8s.io/reason` the RBAC authorizer
//! writes, which names the binding), which calls by a subject were refused while a grant was
//! held, and the bounded summary that lands in `status.activity`.
//!
//! The attribution and the tally are pure; `server` receives the API server's audit posts
//! and `recorder` keeps the grants index, the pending counts and writes the summaries.

pub(crate) mod channels;
pub(crate) mod cloud;
pub(crate) mod line;
pub(crate) mod recorder;
pub(crate) mod server;
pub(crate) mod thread;

use std::{collections::HashMap, sync::Arc};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Deserialize;

use crate::crd::v1alpha1::{
    ACTIVITY_RECENT, ACTIVITY_TOP, Activity, ActivityAction, ActivityCompleteness, ActivityCount,
    ActivitySource,
};

/// The audit annotation the API server sets to its authorization decision.
const DECISION_ANNOTATION: &str = "authorization.k8s.io/decision";
/// The audit annotation with the authorizer's reason; for RBAC it names the binding.
const REASON_ANNOTATION: &str = "authorization.k8s.io/reason";

/// An `audit.k8s.io/v1` `EventList`, as the API server's webhook backend posts it.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct EventList {
    #[serde(default)]
    pub items: Vec<AuditEvent>,
}

/// The parts of an `audit.k8s.io/v1` `Event` that attribution reads.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AuditEvent {
    #[serde(default, rename = "auditID")]
    pub audit_id: String,
    #[serde(default)]
    pub stage: String,
    #[serde(default)]
    pub verb: String,
    #[serde(default, rename = "requestURI")]
    pub request_uri: String,
    #[serde(default)]
    pub user: UserInfo,
    #[serde(default)]
    pub impersonated_user: Option<UserInfo>,
    #[serde(default)]
    pub object_ref: Option<ObjectReference>,
    #[serde(default)]
    pub response_status: Option<ResponseStatus>,
    #[serde(default)]
    pub request_received_timestamp: Option<Timestamp>,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

/// Who made a call.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct UserInfo {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// What a call was about.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ObjectReference {
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub api_group: Option<String>,
    #[serde(default)]
    pub subresource: Option<String>,
}

/// How the API server answered.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct ResponseStatus {
    #[serde(default)]
    pub code: i32,
}

/// A RoleBinding or ClusterRoleBinding, as the RBAC authorizer and a grant's reference name
/// it. Shared strings: the index of grants is keyed by its grants' own (a copy per grant
/// otherwise, at 10,000 of them).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum BindingRef {
    /// A RoleBinding: namespace and name.
    RoleBinding { namespace: Arc<str>, name: Arc<str> },
    /// A ClusterRoleBinding: name.
    ClusterRoleBinding { name: Arc<str> },
}

impl BindingRef {
    /// The binding an RBAC reason names: `RBAC: allowed by RoleBinding "NAME/NAMESPACE" of
    /// ClusterRole "ROLE" to User "alice"`, or `... by ClusterRoleBinding "NAME" of ...`.
    pub fn from_reason(reason: &str) -> Option<Self> {
        let rest = reason.strip_prefix("RBAC: allowed by ")?;
        let (kind, rest) = rest.split_once(' ')?;
        let quoted = rest.strip_prefix('"')?;
        let (name, _) = quoted.split_once('"')?;
        match kind {
            // Names and namespaces hold no '/': the last one separates them.
            "RoleBinding" => {
                let (name, namespace) = name.rsplit_once('/')?;
                Some(Self::RoleBinding {
                    namespace: namespace.into(),
                    name: name.into(),
                })
            }
            "ClusterRoleBinding" => Some(Self::ClusterRoleBinding { name: name.into() }),
            _ => None,
        }
    }

    /// The binding a Kubernetes grant's reference in status names: `RoleBinding NS/NAME` or
    /// `ClusterRoleBinding NAME`.
    pub fn from_grant_reference(reference: &str) -> Option<Self> {
        let (kind, rest) = reference.split_once(' ')?;
        match kind {
            "RoleBinding" => {
                let (namespace, name) = rest.split_once('/')?;
                Some(Self::RoleBinding {
                    namespace: namespace.into(),
                    name: name.into(),
                })
            }
            "ClusterRoleBinding" => Some(Self::ClusterRoleBinding { name: rest.into() }),
            _ => None,
        }
    }
}

/// A request, as `namespace/name`: one allocation shared by the recorder's cache, its index,
/// the grant and every call attributed to it.
pub(crate) type RequestKey = Arc<str>;

/// An active Kubernetes grant: whose request, for which subject, from when to when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ActiveGrant {
    pub request: RequestKey,
    pub uid: String,
    /// The request's policy, whose routes may want its activity.
    pub policy: String,
    pub binding: BindingRef,
    /// The subject as a request writes it: `alice`, `group:oncall` or
    /// `system:serviceaccount:NS:NAME`.
    pub subject: String,
    pub granted_at: Timestamp,
    pub expires_at: Timestamp,
}

/// The active grants, indexed for attribution. Each grant is shared with the recorder's index
/// that this is built from, so building it anew copies no grant.
#[derive(Clone, Debug, Default)]
pub(crate) struct Grants {
    by_binding: HashMap<BindingRef, Arc<ActiveGrant>>,
}

impl Grants {
    /// An index of these grants.
    pub fn new(grants: impl IntoIterator<Item = Arc<ActiveGrant>>) -> Self {
        Self {
            by_binding: grants
                .into_iter()
                .map(|grant| (grant.binding.clone(), grant))
                .collect(),
        }
    }

    /// Whether there is nothing to attribute to (events then cost a lookup each).
    pub fn is_empty(&self) -> bool {
        self.by_binding.is_empty()
    }

    /// How many grants are indexed.
    pub fn len(&self) -> usize {
        self.by_binding.len()
    }

    /// The grants of this index that `earlier` did not hold.
    pub fn fresh_since<'a>(
        &'a self,
        earlier: &'a Self,
    ) -> impl Iterator<Item = &'a ActiveGrant> + 'a {
        self.by_binding
            .iter()
            .filter(|(binding, _)| !earlier.by_binding.contains_key(*binding))
            .map(|(_, grant)| &**grant)
    }
}

/// Whether `event` was allowed by a binding the operator made (named `jit-...`) that the index
/// does not know yet: the binding is in place a moment before the request's status says so,
/// and a call in that moment is attributed once the index catches up.
pub(crate) fn awaits_index(event: &AuditEvent, grants: &Grants) -> bool {
    event.stage == "ResponseComplete"
        && event
            .annotations
            .get(DECISION_ANNOTATION)
            .map(String::as_str)
            == Some("allow")
        && event
            .annotations
            .get(REASON_ANNOTATION)
            .and_then(|reason| BindingRef::from_reason(reason))
            .is_some_and(|binding| {
                let name = match &binding {
                    BindingRef::RoleBinding { name, .. }
                    | BindingRef::ClusterRoleBinding { name } => name,
                };
                name.starts_with(OPERATOR_BINDING_PREFIX)
                    && !grants.by_binding.contains_key(&binding)
            })
}

/// How the names of the bindings the operator makes start (`jit-<request uid>`).
const OPERATOR_BINDING_PREFIX: &str = "jit-";

/// Whether `user` is (or is in) the request subject `subject`.
fn is_subject(subject: &str, user: &UserInfo) -> bool {
    match subject.strip_prefix("group:") {
        Some(group) => user.groups.iter().any(|own| own == group),
        None => subject == user.username,
    }
}

/// Whether a call was a use of the grant or a refused attempt by its subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The grant allowed the call.
    Used,
    /// The subject of the grant was refused, while it held the grant.
    Refused,
}

impl Outcome {
    /// As metrics and audit lines name it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Used => "used",
            Self::Refused => "refused",
        }
    }
}

/// One call, attributed to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Attribution {
    /// The request whose grant it concerns.
    pub request: RequestKey,
    /// That request's uid.
    pub uid: String,
    /// That request's policy.
    pub policy: String,
    pub outcome: Outcome,
    /// Who made the call, as the API server authenticated them.
    pub user: String,
    /// The API server's id of the call.
    pub audit_id: String,
    pub action: ActivityAction,
}

impl Attribution {
    fn of(
        grant: &ActiveGrant,
        outcome: Outcome,
        event: &AuditEvent,
        user: &UserInfo,
        time: Timestamp,
    ) -> Self {
        Self {
            request: grant.request.clone(),
            uid: grant.uid.clone(),
            policy: grant.policy.clone(),
            outcome,
            user: cut(&user.username, 253),
            audit_id: cut(&event.audit_id, 64),
            action: action_of(event, time),
        }
    }
}

/// The attributions of one audit event: none for calls no grant allowed (a standing binding,
/// another user), one for a call a grant allowed, one per grant its user held for a refused
/// call. Only the final stage counts, so that a call is counted once.
pub(crate) fn attribute(event: &AuditEvent, grants: &Grants) -> Vec<Attribution> {
    if event.stage != "ResponseComplete" || grants.is_empty() {
        return Vec::new();
    }
    // An impersonated call is authorized as the impersonated user; the reason names that
    // user's binding, and that user is who acted.
    let user = event.impersonated_user.as_ref().unwrap_or(&event.user);
    let Some(time) = event.request_received_timestamp else {
        return Vec::new();
    };
    match event
        .annotations
        .get(DECISION_ANNOTATION)
        .map(String::as_str)
    {
        Some("allow") => {
            let Some(binding) = event
                .annotations
                .get(REASON_ANNOTATION)
                .and_then(|reason| BindingRef::from_reason(reason))
            else {
                return Vec::new();
            };
            grants
                .by_binding
                .get(&binding)
                .filter(|grant| grant.granted_at <= time && time < grant.expires_at)
                .map(|grant| vec![Attribution::of(grant, Outcome::Used, event, user, time)])
                .unwrap_or_default()
        }
        Some("forbid") => {
            attribute_refusal(event, grants.by_binding.values().map(|grant| &**grant), &[])
        }
        _ => Vec::new(),
    }
}

/// Whether `event` is a refused call (its final stage).
pub(crate) fn is_refusal(event: &AuditEvent) -> bool {
    event.stage == "ResponseComplete"
        && event
            .annotations
            .get(DECISION_ANNOTATION)
            .map(String::as_str)
            == Some("forbid")
}

/// The attributions of a refused call to those of `grants` its user held at the time, but
/// for the requests in `counted`: a refusal may reach the operator before the index knows a
/// grant its user held (the binding is in place before the request's status says so).
pub(crate) fn attribute_refusal<'a>(
    event: &AuditEvent,
    grants: impl IntoIterator<Item = &'a ActiveGrant>,
    counted: &[RequestKey],
) -> Vec<Attribution> {
    let user = event.impersonated_user.as_ref().unwrap_or(&event.user);
    let Some(time) = event.request_received_timestamp else {
        return Vec::new();
    };
    if !is_refusal(event) {
        return Vec::new();
    }
    grants
        .into_iter()
        .filter(|grant| {
            grant.granted_at <= time
                && time < grant.expires_at
                && is_subject(&grant.subject, user)
                && !counted.contains(&grant.request)
        })
        .map(|grant| Attribution::of(grant, Outcome::Refused, event, user, time))
        .collect()
}

fn action_of(event: &AuditEvent, time: Timestamp) -> ActivityAction {
    ActivityAction {
        time: Time(time),
        verb: cut(&event.verb, 64),
        resource: cut(&resource_of(event), 512),
        namespace: event
            .object_ref
            .as_ref()
            .and_then(|object| object.namespace.clone()),
        name: event
            .object_ref
            .as_ref()
            .and_then(|object| object.name.clone()),
        code: event
            .response_status
            .as_ref()
            .map_or(0, |status| status.code),
    }
}

/// `group/resource/subresource` with empty parts left out, or the path of a non-resource
/// request (without its query).
fn resource_of(event: &AuditEvent) -> String {
    match &event.object_ref {
        Some(object) if !object.resource.is_empty() => [
            object.api_group.as_deref().unwrap_or_default(),
            object.resource.as_str(),
            object.subresource.as_deref().unwrap_or_default(),
        ]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("/"),
        _ => event
            .request_uri
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}

fn cut(text: &str, limit: usize) -> String {
    text.chars().take(limit).collect()
}

/// Most distinct verb and resource pairs a tally tells apart.
const TALLY_PAIRS: usize = 1_000;

/// One request's activity while it is being counted: every verb and resource pair, of which
/// the summary shows the most frequent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    actions: i64,
    refused: i64,
    first: Option<Time>,
    last: Option<Time>,
    counts: HashMap<(String, String), i64>,
    /// What earlier summaries summed as other and cannot be told apart any more.
    other: i64,
    recent: Vec<ActivityAction>,
}

impl Tally {
    /// Continues from a summary written earlier (after a restart).
    pub fn from_summary(summary: &Activity) -> Self {
        Self {
            actions: summary.actions,
            refused: summary.refused,
            first: summary.first_action_time.clone(),
            last: summary.last_action_time.clone(),
            counts: summary
                .by_verb_and_resource
                .iter()
                .map(|count| ((count.verb.clone(), count.resource.clone()), count.count))
                .collect(),
            other: summary.other_actions,
            recent: summary.recent.clone(),
        }
    }

    /// Counts one attribution.
    pub fn add(&mut self, attribution: Attribution) {
        self.count_action(attribution.outcome, attribution.action);
    }

    /// Counts one action.
    pub fn count_action(&mut self, outcome: Outcome, action: ActivityAction) {
        match outcome {
            Outcome::Used => {
                self.actions += 1;
                self.saw(&action.time, &action.time);
                self.count(&action.verb, &action.resource, 1);
            }
            Outcome::Refused => self.refused += 1,
        }
        self.keep_recent([action]);
    }

    /// Adds another tally's counts (pending ones, onto what was written).
    pub fn merge(&mut self, other: &Self) {
        self.actions += other.actions;
        self.refused += other.refused;
        if let (Some(first), Some(last)) = (&other.first, &other.last) {
            self.saw(first, last);
        }
        for ((verb, resource), count) in &other.counts {
            self.count(verb, resource, *count);
        }
        self.other += other.other;
        self.keep_recent(other.recent.iter().cloned());
    }

    fn saw(&mut self, first: &Time, last: &Time) {
        if self.first.as_ref().is_none_or(|known| first < known) {
            self.first = Some(first.clone());
        }
        if self.last.as_ref().is_none_or(|known| last > known) {
            self.last = Some(last.clone());
        }
    }

    fn count(&mut self, verb: &str, resource: &str, count: i64) {
        let key = (verb.to_owned(), resource.to_owned());
        // Distinct pairs are bounded (a grant on non-resource URLs could name endless
        // paths): past the bound, new pairs are summed as other.
        if self.counts.len() >= TALLY_PAIRS && !self.counts.contains_key(&key) {
            self.other += count;
            return;
        }
        *self.counts.entry(key).or_default() += count;
    }

    fn keep_recent(&mut self, actions: impl IntoIterator<Item = ActivityAction>) {
        self.recent.extend(actions);
        // Batches may arrive out of order: keep the newest, oldest first.
        self.recent
            .sort_by(|left, right| left.time.cmp(&right.time));
        let excess = self.recent.len().saturating_sub(ACTIVITY_RECENT);
        self.recent.drain(..excess);
    }

    /// The bounded summary for `status.activity` of the Kubernetes audit, complete up to
    /// `as_of`.
    pub fn summary(&self, as_of: Timestamp) -> Activity {
        self.summary_of(
            ActivitySource::KubernetesAudit,
            ActivityCompleteness::Live,
            as_of,
        )
    }

    /// The bounded summary for `status.activity`, from `source`, made at `as_of`.
    pub fn summary_of(
        &self,
        source: ActivitySource,
        completeness: ActivityCompleteness,
        as_of: Timestamp,
    ) -> Activity {
        let mut counts: Vec<ActivityCount> = self
            .counts
            .iter()
            .map(|((verb, resource), count)| ActivityCount {
                verb: verb.clone(),
                resource: resource.clone(),
                count: *count,
            })
            .collect();
        // Most frequent first; ties in a fixed order, so that the status does not flap.
        counts.sort_by(|left, right| {
            right
                .count
                .cmp(&left.count)
                .then_with(|| left.resource.cmp(&right.resource))
                .then_with(|| left.verb.cmp(&right.verb))
        });
        let rest: i64 = counts
            .iter()
            .skip(ACTIVITY_TOP)
            .map(|count| count.count)
            .sum();
        counts.truncate(ACTIVITY_TOP);
        Activity {
            source: Some(source),
            actions: self.actions,
            refused: self.refused,
            first_action_time: self.first.clone(),
            last_action_time: self.last.clone(),
            by_verb_and_resource: counts,
            other_actions: self.other + rest,
            recent: self.recent.clone(),
            as_of: Some(Time(as_of)),
            completeness: Some(completeness),
            read_error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use serde_json::json;

    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    /// An audit event as kube-apiserver v1.36 posts it (trimmed to what is read).
    fn event(user: &str, verb: &str, resource: &str, decision: &str, reason: &str) -> AuditEvent {
        serde_json::from_value(json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
            "auditID": "4c7b1d7e-0000-4000-8000-000000000001",
            "stage": "ResponseComplete",
            "requestURI": format!("/api/v1/namespaces/team/{resource}?limit=500"),
            "verb": verb,
            "user": {"username": user, "groups": ["devs", "system:authenticated"]},
            "sourceIPs": ["127.0.0.1"],
            "objectRef": {"resource": resource, "namespace": "team", "apiVersion": "v1"},
            "responseStatus": {"metadata": {}, "code": if decision == "allow" { 200 } else { 403 }},
            "requestReceivedTimestamp": "2026-01-01T00:05:00.123456Z",
            "stageTimestamp": "2026-01-01T00:05:00.130000Z",
            "annotations": {
                "authorization.k8s.io/decision": decision,
                "authorization.k8s.io/reason": reason,
            },
        }))
        .unwrap()
    }

    const GRANTED: &str = r#"RBAC: allowed by RoleBinding "jit-0b7c9f7e/team" of ClusterRole "jit-dev-view" to User "alice""#;
    const STANDING: &str =
        r#"RBAC: allowed by RoleBinding "alice-own/team" of ClusterRole "edit" to User "alice""#;

    fn grants() -> Grants {
        Grants::new([Arc::new(ActiveGrant {
            request: "team/alice-view".into(),
            uid: "uid-1".into(),
            policy: "dev".into(),
            binding: BindingRef::RoleBinding {
                namespace: "team".into(),
                name: "jit-0b7c9f7e".into(),
            },
            subject: "alice".into(),
            granted_at: at("2026-01-01T00:00:00Z"),
            expires_at: at("2026-01-01T01:00:00Z"),
        })])
    }

    #[test]
    fn rbac_reasons_name_the_binding() {
        assert_eq!(
            BindingRef::from_reason(GRANTED),
            Some(BindingRef::RoleBinding {
                namespace: "team".into(),
                name: "jit-0b7c9f7e".into()
            })
        );
        assert_eq!(
            BindingRef::from_reason(
                r#"RBAC: allowed by ClusterRoleBinding "jit-1" of ClusterRole "admin" to Group "oncall""#
            ),
            Some(BindingRef::ClusterRoleBinding {
                name: "jit-1".into()
            })
        );
        assert_eq!(BindingRef::from_reason(""), None);
        assert_eq!(
            BindingRef::from_reason("allowed by the node authorizer"),
            None
        );
        assert_eq!(
            BindingRef::from_grant_reference("RoleBinding team/jit-0b7c9f7e"),
            BindingRef::from_reason(GRANTED)
        );
        assert_eq!(
            BindingRef::from_grant_reference("ClusterRoleBinding jit-1"),
            Some(BindingRef::ClusterRoleBinding {
                name: "jit-1".into()
            })
        );
    }

    #[test]
    fn a_call_the_grant_allowed_is_its_use_and_nothing_else_is() {
        let grants = grants();
        let used = attribute(&event("alice", "list", "pods", "allow", GRANTED), &grants);
        assert_eq!(used.len(), 1);
        let Attribution {
            request,
            outcome: Outcome::Used,
            action,
            user,
            ..
        } = &used[0]
        else {
            panic!("{used:?}")
        };
        assert_eq!(&**request, "team/alice-view");
        assert_eq!(user, "alice");
        assert_eq!(action.verb, "list");
        assert_eq!(action.resource, "pods");
        assert_eq!(action.namespace.as_deref(), Some("team"));
        assert_eq!(action.code, 200);
        // Allowed by her own standing binding: not the grant's use.
        assert!(attribute(&event("alice", "get", "pods", "allow", STANDING), &grants).is_empty());
        // A binding of ours the index does not know yet: attributed later.
        let early = event("alice", "list", "pods", "allow", GRANTED);
        assert!(awaits_index(&early, &Grants::default()));
        assert!(!awaits_index(&early, &grants));
        assert!(!awaits_index(
            &event("alice", "get", "pods", "allow", STANDING),
            &Grants::default()
        ));
        // Only the final stage counts.
        let mut started = event("alice", "list", "pods", "allow", GRANTED);
        started.stage = "ResponseStarted".into();
        assert!(attribute(&started, &grants).is_empty());
    }

    #[test]
    fn a_refused_call_by_the_subject_during_the_grant_is_counted_as_refused() {
        let grants = grants();
        let refused = attribute(&event("alice", "get", "secrets", "forbid", ""), &grants);
        assert!(
            matches!(&refused[..], [Attribution { request, outcome: Outcome::Refused, action, .. }] if &**request == "team/alice-view" && action.code == 403),
            "{refused:?}"
        );
        // Someone else refused: nothing to do with the grant.
        assert!(attribute(&event("mallory", "get", "secrets", "forbid", ""), &grants).is_empty());
        // Outside the window: not counted.
        let mut later = event("alice", "get", "secrets", "forbid", "");
        later.request_received_timestamp = Some(at("2026-01-01T02:00:00Z"));
        assert!(attribute(&later, &grants).is_empty());
    }

    #[test]
    fn a_group_grant_counts_its_members_refusals() {
        let grants = Grants::new([Arc::new(ActiveGrant {
            request: "team/oncall".into(),
            uid: "uid-2".into(),
            policy: "oncall".into(),
            binding: BindingRef::ClusterRoleBinding {
                name: "jit-2".into(),
            },
            subject: "group:devs".into(),
            granted_at: at("2026-01-01T00:00:00Z"),
            expires_at: at("2026-01-01T01:00:00Z"),
        })]);
        assert_eq!(
            attribute(&event("alice", "delete", "pods", "forbid", ""), &grants).len(),
            1
        );
    }

    #[test]
    fn the_summary_stays_bounded_however_busy_the_subject_is() {
        let mut tally = Tally::default();
        for index in 0..30 {
            for _ in 0..=index {
                let mut call = event("alice", "get", &format!("kind{index:02}"), "allow", GRANTED);
                call.request_received_timestamp =
                    Some(at("2026-01-01T00:05:00Z") + jiff::SignedDuration::from_secs(index));
                for attribution in attribute(&call, &grants()) {
                    tally.add(attribution);
                }
            }
        }
        let mut refused = event("alice", "get", "secrets", "forbid", "");
        refused.request_received_timestamp = Some(at("2026-01-01T00:06:00Z"));
        tally.add(attribute(&refused, &grants()).remove(0));
        let summary = tally.summary(at("2026-01-01T00:10:00Z"));
        let total: i64 = (1..=30).sum();
        assert_eq!(summary.actions, total);
        assert_eq!(summary.refused, 1);
        assert_eq!(summary.by_verb_and_resource.len(), ACTIVITY_TOP);
        assert_eq!(summary.by_verb_and_resource[0].resource, "kind29");
        assert_eq!(summary.by_verb_and_resource[0].count, 30);
        let shown: i64 = summary
            .by_verb_and_resource
            .iter()
            .map(|count| count.count)
            .sum();
        assert_eq!(shown + summary.other_actions, total, "the rest is summed");
        assert_eq!(summary.recent.len(), ACTIVITY_RECENT);
        assert_eq!(summary.recent.last().unwrap().code, 403, "newest last");
        assert_eq!(
            summary.first_action_time,
            Some(Time(at("2026-01-01T00:05:00Z")))
        );
        assert_eq!(
            summary.last_action_time,
            Some(Time(at("2026-01-01T00:05:29Z")))
        );
        // After a restart the count goes on from the summary.
        let mut resumed = Tally::from_summary(&summary);
        resumed
            .add(attribute(&event("alice", "list", "pods", "allow", GRANTED), &grants()).remove(0));
        let again = resumed.summary(at("2026-01-01T00:11:00Z"));
        assert_eq!(again.actions, total + 1);
        let shown: i64 = again
            .by_verb_and_resource
            .iter()
            .map(|count| count.count)
            .sum();
        assert_eq!(shown + again.other_actions, total + 1);
    }

    #[test]
    fn pending_counts_merged_onto_a_written_summary_equal_counting_everything_at_once() {
        let calls: Vec<AuditEvent> = (0..25)
            .map(|index| {
                let (verb, decision, reason) = match index % 5 {
                    4 => ("get", "forbid", ""),
                    3 => ("watch", "allow", GRANTED),
                    _ => ("list", "allow", GRANTED),
                };
                let mut call = event(
                    "alice",
                    verb,
                    &format!("kind{}", index % 7),
                    decision,
                    reason,
                );
                call.request_received_timestamp =
                    Some(at("2026-01-01T00:05:00Z") + jiff::SignedDuration::from_secs(index));
                call
            })
            .collect();
        let mut everything = Tally::default();
        let mut written = Tally::default();
        let mut pending = Tally::default();
        for (index, call) in calls.iter().enumerate() {
            for attribution in attribute(call, &grants()) {
                everything.add(attribution.clone());
                if index < 12 {
                    written.add(attribution);
                } else {
                    pending.add(attribution);
                }
            }
        }
        let as_of = at("2026-01-01T00:10:00Z");
        let mut resumed = Tally::from_summary(&written.summary(as_of));
        resumed.merge(&pending);
        assert_eq!(resumed.summary(as_of), everything.summary(as_of));
        assert_eq!(everything.summary(as_of).refused, 5);
    }

    #[test]
    fn an_event_list_from_the_api_server_parses() {
        let list: EventList = serde_json::from_value(json!({
            "kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {},
            "items": [{
                "level": "Metadata", "auditID": "x", "stage": "ResponseComplete",
                "requestURI": "/version", "verb": "get",
                "user": {"username": "alice"},
                "sourceIPs": ["127.0.0.1"], "responseStatus": {"code": 200},
                "requestReceivedTimestamp": "2026-01-01T00:05:00.000001Z",
                "stageTimestamp": "2026-01-01T00:05:00.000002Z",
            }],
        }))
        .unwrap();
        assert_eq!(list.items.len(), 1);
        assert_eq!(resource_of(&list.items[0]), "/version");
    }
}
