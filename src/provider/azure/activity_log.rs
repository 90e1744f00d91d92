//! What a grant's holder did in Azure, from the Activity Log
//! (`/subscriptions/{id}/providers/Microsoft.Insights/eventtypes/management/values`): the
//! filter, in one of the few forms the API accepts (a time range, narrowed to the grant's
//! resource group or resource), and what each event was. The filter forms have no caller
//! term, and a caller is an email or an application ID depending on who called; every event
//! carries the caller's object ID in its claims, which is what the grant was made to, so
//! events are matched on that.

use jiff::Timestamp;
use serde_json::Value;

use super::{Arm, CallFailure};
use crate::{
    crd::v1alpha1::{ActivityLookup, ActivityMatch, ActivitySource, AzurePrincipalType},
    provider::{ACTIVITY_READ_LIMIT, ActivityLog, Error, Failure, LoggedAction},
    target::Target,
};

use super::requests::AzureGrant;

/// The Activity Log API's version.
const API_VERSION: &str = "2015-04-01";
/// The claim holding the caller's Entra ID object ID.
const OBJECT_ID_CLAIM: &str = "http://schemas.microsoft.com/identity/claims/objectidentifier";

/// How the Activity Log names the holder: a user's or service principal's object ID, in the
/// subscription of the grant's scope. A group's members act as themselves, and a scope above
/// a subscription has no subscription log to read.
pub(super) fn lookup(grant: &AzureGrant) -> Option<ActivityLookup> {
    if grant.principal_type == AzurePrincipalType::Group {
        return None;
    }
    subscription_of(&grant.scope)?;
    Some(ActivityLookup {
        source: ActivitySource::AzureActivityLog,
        matches: ActivityMatch::AzureObjectId,
        principal: grant.principal_id.clone(),
        scope: Some(grant.scope.clone()),
    })
}

/// The subscription ID of `/subscriptions/{id}/...`.
fn subscription_of(scope: &str) -> Option<&str> {
    let mut parts = scope.trim_start_matches('/').split('/');
    match (parts.next(), parts.next()) {
        (Some(kind), Some(id)) if kind.eq_ignore_ascii_case("subscriptions") && !id.is_empty() => {
            Some(id)
        }
        _ => None,
    }
}

/// The path and `$filter` that read the events of `scope` between `from` and `to`: the
/// subscription's, its resource group's, or its resource's. Pure.
pub(crate) fn query(scope: &str, from: Timestamp, to: Timestamp) -> Option<(String, String)> {
    let subscription = subscription_of(scope)?;
    let path = format!(
        "/subscriptions/{subscription}/providers/Microsoft.Insights/eventtypes/management/values"
    );
    let mut filter = format!("eventTimestamp ge '{from}' and eventTimestamp le '{to}'");
    let parts: Vec<&str> = scope.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        [_, _] => {}
        [_, _, group, name] if group.eq_ignore_ascii_case("resourceGroups") => {
            filter.push_str(&format!(" and resourceGroupName eq '{name}'"));
        }
        _ => filter.push_str(&format!(
            " and resourceUri eq '{}'",
            scope.trim_end_matches('/')
        )),
    }
    Some((path, filter))
}

/// The action an Activity Log event is, when the holder made it and it is an operation's
/// final event (an operation logs `Started`, then `Succeeded` or `Failed`). Pure.
pub(crate) fn action_of(object_id: &str, event: &Value) -> Option<LoggedAction> {
    let caller = event["claims"][OBJECT_ID_CLAIM].as_str()?;
    if !caller.eq_ignore_ascii_case(object_id) {
        return None;
    }
    let status = event["status"]["value"].as_str()?;
    if !matches!(status, "Succeeded" | "Failed") {
        return None;
    }
    let forbidden = |value: &Value| value.as_str() == Some("Forbidden");
    let denied = status == "Failed"
        && (forbidden(&event["subStatus"]["value"])
            || forbidden(&event["properties"]["statusCode"]));
    let code = match (status, denied) {
        ("Succeeded", _) => 200,
        (_, true) => 403,
        _ => 400,
    };
    Some(LoggedAction {
        id: event["eventDataId"].as_str().unwrap_or_default().to_owned(),
        time: event["eventTimestamp"].as_str()?.parse().ok()?,
        operation: event["operationName"]["value"].as_str()?.to_owned(),
        service: event["resourceProviderName"]["value"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        resource: event["resourceId"].as_str().map(str::to_owned),
        denied,
        code,
    })
}

/// The holder's events between `from` and `to`, following `nextLink` (the pipeline retries
/// 429 with Retry-After, 5xx and dropped connections).
pub(super) async fn read(
    arm: &Arm,
    lookup: &ActivityLookup,
    from: Timestamp,
    to: Timestamp,
) -> Result<ActivityLog, Error> {
    let action = "read the activity log";
    let scope = lookup.scope.as_deref().unwrap_or_default();
    let Some((path, filter)) = query(scope, from, to) else {
        return Err(Error::cloud(
            Target::Azure,
            action,
            format!("{scope:?} is not in a subscription"),
            Failure::Refused,
        ));
    };
    let url = arm
        .url(&path, API_VERSION, Some(&filter))
        .map_err(|failure| failure.into_error(action))?;
    let (events, truncated) = arm
        .list_up_to::<Value>(url, action, ACTIVITY_READ_LIMIT)
        .await
        .map_err(|failure: CallFailure| failure.into_error(action))?;
    let mut actions: Vec<LoggedAction> = events
        .iter()
        .filter_map(|event| action_of(&lookup.principal, event))
        .collect();
    actions.sort_by_key(|logged| logged.time);
    Ok(ActivityLog { actions, truncated })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    const ALICE: &str = "0d3b6a8e-1111-4c4c-9c9c-000000000001";

    fn event(object_id: &str, status: &str, sub_status: &str) -> Value {
        json!({
            "claims": {OBJECT_ID_CLAIM: object_id},
            "caller": "alice@example.com",
            "eventTimestamp": "2026-11-29T10:00:00.1234567Z",
            "operationName": {"value": "Microsoft.Compute/virtualMachines/restart/action"},
            "resourceProviderName": {"value": "Microsoft.Compute"},
            "resourceId": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1",
            "status": {"value": status},
            "subStatus": {"value": sub_status},
        })
    }

    #[test]
    fn the_query_takes_the_form_the_scope_needs() {
        let (from, to) = (
            "2026-11-29T10:00:00Z".parse().unwrap(),
            "2026-11-29T11:00:00Z".parse().unwrap(),
        );
        let window =
            "eventTimestamp ge '2026-11-29T10:00:00Z' and eventTimestamp le '2026-11-29T11:00:00Z'";
        let (path, filter) = query("/subscriptions/s1", from, to).unwrap();
        assert_eq!(
            path,
            "/subscriptions/s1/providers/Microsoft.Insights/eventtypes/management/values"
        );
        assert_eq!(filter, window);
        let (_, filter) = query("/subscriptions/s1/resourceGroups/rg1", from, to).unwrap();
        assert_eq!(filter, format!("{window} and resourceGroupName eq 'rg1'"));
        let vm =
            "/subscriptions/s1/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/vm1";
        let (_, filter) = query(vm, from, to).unwrap();
        assert_eq!(filter, format!("{window} and resourceUri eq '{vm}'"));
        assert_eq!(
            query(
                "/providers/Microsoft.Management/managementGroups/m",
                from,
                to
            ),
            None
        );
    }

    #[test]
    fn final_events_of_the_holder_are_actions_and_refusals_are_told_apart() {
        let done = action_of(ALICE, &event(ALICE, "Succeeded", "OK")).unwrap();
        assert_eq!(
            (done.operation.as_str(), done.service.as_str(), done.code),
            (
                "Microsoft.Compute/virtualMachines/restart/action",
                "Microsoft.Compute",
                200
            )
        );
        let upper = ALICE.to_uppercase();
        assert!(action_of(&upper, &event(ALICE, "Succeeded", "OK")).is_some());
        let refused = action_of(ALICE, &event(ALICE, "Failed", "Forbidden")).unwrap();
        assert!(refused.denied);
        assert_eq!(refused.code, 403);
        assert_eq!(action_of(ALICE, &event(ALICE, "Started", "")), None);
        let bob = "0d3b6a8e-1111-4c4c-9c9c-000000000002";
        assert_eq!(action_of(ALICE, &event(bob, "Succeeded", "OK")), None);
    }
}
