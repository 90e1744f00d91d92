//! What a grant's holder did in AWS, from CloudTrail's event history (`LookupEvents`): which
//! events name the holder, and what each one was.
//!
//! `LookupEvents` filters on one attribute only. An IAM user is looked up by `Username`; a
//! role session's source identity is no lookup attribute, so the window is read whole and
//! each event's `userIdentity` checked. Either way every event is checked against the
//! holder: a `Username` lookup also finds role sessions that happen to carry the same name.

use aws_sdk_cloudtrail::{
    primitives::DateTime,
    types::{LookupAttribute, LookupAttributeKey},
};
use jiff::Timestamp;
use serde_json::Value;

use super::{Error, cloud};
use crate::{
    crd::v1alpha1::{ActivityLookup, ActivityMatch},
    provider::{ACTIVITY_READ_LIMIT, ActivityLog, LoggedAction},
};

/// The most events `LookupEvents` returns in one page.
const PAGE_SIZE: i32 = 50;

/// Error codes CloudTrail records for a call refused for lack of permission.
const DENIED_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "Client.UnauthorizedOperation",
    "UnauthorizedAccess",
];

/// The holder's events between `from` and `to`, read page by page (the SDK backs off when
/// CloudTrail throttles: it allows two lookups a second per account and region).
pub(super) async fn read(
    trail: &aws_sdk_cloudtrail::Client,
    lookup: &ActivityLookup,
    from: Timestamp,
    to: Timestamp,
) -> Result<ActivityLog, Error> {
    let mut request = trail
        .lookup_events()
        .start_time(DateTime::from_secs(from.as_second()))
        .end_time(DateTime::from_secs(to.as_second()))
        .max_results(PAGE_SIZE);
    if lookup.matches == ActivityMatch::AwsUserName {
        let attribute = LookupAttribute::builder()
            .attribute_key(LookupAttributeKey::Username)
            .attribute_value(&lookup.principal)
            .build()
            .map_err(|error| Error::Invalid {
                message: format!("aws: cannot look up {}: {error}", lookup.principal),
            })?;
        request = request.lookup_attributes(attribute);
    }
    let mut log = ActivityLog::default();
    let mut token: Option<String> = None;
    let mut read = 0;
    loop {
        let page = request
            .clone()
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|error| cloud("look up CloudTrail events", error))?;
        for event in page.events() {
            read += 1;
            let Some(record) = event.cloud_trail_event() else {
                continue;
            };
            let Ok(record) = serde_json::from_str::<Value>(record) else {
                continue;
            };
            if let Some(action) = action_of(lookup, &record) {
                log.actions.push(action);
            }
        }
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
        if read >= ACTIVITY_READ_LIMIT {
            log.truncated = true;
            break;
        }
    }
    // CloudTrail lists the newest first.
    log.actions.sort_by_key(|action| action.time);
    Ok(log)
}

/// The action a CloudTrail record is, when the holder made it. Pure.
pub(crate) fn action_of(lookup: &ActivityLookup, record: &Value) -> Option<LoggedAction> {
    let identity = &record["userIdentity"];
    let holder = match lookup.matches {
        ActivityMatch::AwsUserName => {
            identity["type"] == "IAMUser" && identity["userName"] == lookup.principal.as_str()
        }
        ActivityMatch::AwsSourceIdentity => {
            let session = &identity["sessionContext"];
            identity["type"] == "AssumedRole"
                && session["sourceIdentity"] == lookup.principal.as_str()
                && lookup
                    .scope
                    .as_deref()
                    .is_none_or(|role| session["sessionIssuer"]["userName"] == role)
        }
        ActivityMatch::GcpPrincipalEmail | ActivityMatch::AzureObjectId => false,
    };
    if !holder {
        return None;
    }
    let time = record["eventTime"].as_str()?.parse::<Timestamp>().ok()?;
    let error = record["errorCode"].as_str();
    let denied = error.is_some_and(|code| DENIED_CODES.contains(&code));
    let code = match error {
        None => 200,
        Some(_) if denied => 403,
        Some(_) => 400,
    };
    let resource = record["resources"]
        .as_array()
        .and_then(|resources| resources.first())
        .and_then(|resource| resource["ARN"].as_str())
        .map(str::to_owned);
    Some(LoggedAction {
        id: record["eventID"].as_str().unwrap_or_default().to_owned(),
        time,
        operation: record["eventName"].as_str()?.to_owned(),
        service: record["eventSource"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        resource,
        denied,
        code,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;
    use crate::crd::v1alpha1::ActivitySource;

    fn lookup(matches: ActivityMatch, principal: &str, scope: Option<&str>) -> ActivityLookup {
        ActivityLookup {
            source: ActivitySource::AwsCloudTrail,
            matches,
            principal: principal.into(),
            scope: scope.map(str::to_owned),
        }
    }

    fn user_event(user: &str, error: Option<&str>) -> Value {
        let mut event = json!({
            "eventVersion": "1.09",
            "eventID": "0e1f4c7a-3b2d-4d7e-9f3a-1c2b3d4e5f60",
            "userIdentity": {"type": "IAMUser", "userName": user,
                             "arn": format!("arn:aws:iam::123456789012:user/{user}")},
            "eventTime": "2026-11-29T10:00:00Z",
            "eventSource": "s3.amazonaws.com",
            "eventName": "ListBuckets",
            "resources": [{"ARN": "arn:aws:s3:::logs", "type": "AWS::S3::Bucket"}],
        });
        if let Some(code) = error {
            event["errorCode"] = json!(code);
        }
        event
    }

    fn session_event(source_identity: &str, role: &str) -> Value {
        json!({
            "userIdentity": {"type": "AssumedRole", "sessionContext": {
                "sourceIdentity": source_identity,
                "sessionIssuer": {"type": "Role", "userName": role},
            }},
            "eventTime": "2026-11-29T10:00:01Z",
            "eventSource": "ec2.amazonaws.com",
            "eventName": "DescribeInstances",
        })
    }

    #[test]
    fn a_user_lookup_takes_that_users_calls_and_tells_refusals_apart() {
        let alice = lookup(ActivityMatch::AwsUserName, "alice", None);
        let used = action_of(&alice, &user_event("alice", None)).unwrap();
        assert_eq!(
            (used.operation.as_str(), used.service.as_str(), used.code),
            ("ListBuckets", "s3.amazonaws.com", 200)
        );
        assert_eq!(used.resource.as_deref(), Some("arn:aws:s3:::logs"));
        assert_eq!(used.id, "0e1f4c7a-3b2d-4d7e-9f3a-1c2b3d4e5f60");
        assert!(!used.denied);
        let refused = action_of(&alice, &user_event("alice", Some("AccessDenied"))).unwrap();
        assert!(refused.denied);
        assert_eq!(refused.code, 403);
        let failed = action_of(&alice, &user_event("alice", Some("NoSuchBucket"))).unwrap();
        assert!(!failed.denied);
        assert_eq!(failed.code, 400);
        assert_eq!(action_of(&alice, &user_event("bob", None)), None);
    }

    #[test]
    fn a_role_session_named_like_the_user_is_not_the_user() {
        let alice = lookup(ActivityMatch::AwsUserName, "alice", None);
        let mut session = session_event("mallory", "admin");
        session["userIdentity"]["userName"] = json!("alice");
        assert_eq!(action_of(&alice, &session), None);
    }

    #[test]
    fn a_source_identity_lookup_takes_only_that_roles_sessions_of_that_identity() {
        let alice = lookup(ActivityMatch::AwsSourceIdentity, "alice", Some("deploy"));
        assert!(action_of(&alice, &session_event("alice", "deploy")).is_some());
        assert_eq!(action_of(&alice, &session_event("alice", "other")), None);
        assert_eq!(action_of(&alice, &session_event("bob", "deploy")), None);
        assert_eq!(action_of(&alice, &user_event("alice", None)), None);
    }

    #[test]
    fn a_record_without_a_time_or_name_is_skipped() {
        let alice = lookup(ActivityMatch::AwsUserName, "alice", None);
        let mut event = user_event("alice", None);
        event["eventTime"] = json!("yesterday");
        assert_eq!(action_of(&alice, &event), None);
    }
}
