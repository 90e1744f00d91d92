//! The `dev.jit.activity.v1` CloudEvent: one attributed call, for the JSON-lines audit log
//! (and whoever reads it). Pure.

use cloudevents::{EventBuilder, EventBuilderV10};
use serde::Serialize;

use super::Attribution;
use crate::{
    audit::event::{chrono_time, source_of},
    crd::v1alpha1::ActivityAction,
};

/// The CloudEvents `type` of an attributed call.
pub(crate) const ACTIVITY_TYPE: &str = "dev.jit.activity.v1";

/// The `data` of an activity event.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ActivityData<'a> {
    request: RequestData<'a>,
    /// `used` (the grant allowed it) or `refused`.
    outcome: &'static str,
    /// Who made the call, as the API server authenticated them.
    user: &'a str,
    /// The API server's id of the call, to find it in the API server's own audit log.
    #[serde(rename = "auditID")]
    audit_id: &'a str,
    action: &'a ActivityAction,
}

#[derive(Serialize)]
struct RequestData<'a> {
    namespace: &'a str,
    name: &'a str,
    uid: &'a str,
}

/// The event for `attribution`, as structured JSON; `None` when the SDK refuses it (a time
/// out of range).
pub(crate) fn event_json(attribution: &Attribution) -> Option<serde_json::Value> {
    let (namespace, name) = attribution
        .request
        .split_once('/')
        .unwrap_or(("", &*attribution.request));
    let time = chrono_time(attribution.action.time.0)?;
    let data = ActivityData {
        request: RequestData {
            namespace,
            name,
            uid: &attribution.uid,
        },
        outcome: attribution.outcome.as_str(),
        user: &attribution.user,
        audit_id: &attribution.audit_id,
        action: &attribution.action,
    };
    // One call is one event per request it concerns: the API server's id and the request's
    // uid together are unique, and the same on a redelivered batch.
    let id = format!("{}.{}", attribution.audit_id, attribution.uid);
    let event = EventBuilderV10::new()
        .id(id)
        .source(source_of(namespace, name))
        .ty(ACTIVITY_TYPE)
        .subject(attribution.user.clone())
        .time(time)
        .data(
            "application/json",
            serde_json::to_value(&data).unwrap_or_default(),
        )
        .build()
        .ok()?;
    serde_json::to_value(&event).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::activity::Outcome;

    #[test]
    fn an_attributed_call_is_a_cloud_event_naming_the_request_and_the_call() {
        let attribution = Attribution {
            request: "team/alice-view".into(),
            uid: "0b7c9f7e".into(),
            policy: "dev".into(),
            outcome: Outcome::Refused,
            user: "alice".into(),
            audit_id: "4c7b1d7e".into(),
            action: ActivityAction {
                time: Time("2026-01-01T00:05:00.123Z".parse().unwrap()),
                verb: "get".into(),
                resource: "secrets".into(),
                namespace: Some("team".into()),
                name: Some("db".into()),
                code: 403,
            },
        };
        let event = event_json(&attribution).unwrap();
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["type"], ACTIVITY_TYPE);
        assert_eq!(event["id"], "4c7b1d7e.0b7c9f7e");
        assert_eq!(
            event["source"],
            "/apis/jit.dev/v1alpha1/namespaces/team/accessrequests/alice-view"
        );
        assert_eq!(event["subject"], "alice");
        assert_eq!(event["data"]["outcome"], "refused");
        assert_eq!(event["data"]["request"]["uid"], "0b7c9f7e");
        assert_eq!(event["data"]["action"]["resource"], "secrets");
        assert_eq!(event["data"]["action"]["code"], 403);
    }
}
