//! What a grant's holder did in Google Cloud, from Cloud Audit Logs read through Cloud
//! Logging's `entries.list`: the filter (the audit logs, the principal, the window) and what
//! each entry was. Entries are checked against the principal again: the filter is ours, the
//! answer is the cloud's.

use std::time::Duration;

use google_cloud_logging_v2::{client::LoggingServiceV2, model::log_entry::Payload};
use jiff::Timestamp;
use serde_json::Value;
use tracing::debug;

use super::{Error, Failure, MAX_ATTEMPTS, classify};
use crate::{
    provider::{ACTIVITY_READ_LIMIT, ActivityLog, LoggedAction},
    target::Target,
};

/// Entries per page: the API's largest.
const PAGE_SIZE: i32 = 1_000;

/// gRPC's PERMISSION_DENIED, as audit log entries record a refused call.
const PERMISSION_DENIED: i64 = 7;

/// The `entries.list` filter: the audit logs of the principal between `from` and `to`. The
/// email is quoted as the filter language quotes strings. Pure.
pub(crate) fn filter(principal_email: &str, from: Timestamp, to: Timestamp) -> String {
    let quoted = principal_email.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "logName:\"cloudaudit.googleapis.com\" AND protoPayload.authenticationInfo.principalEmail=\"{quoted}\" AND timestamp>=\"{from}\" AND timestamp<=\"{to}\""
    )
}

/// The action an audit log entry (its time and its `protoPayload`, an `AuditLog`) is, when
/// the principal made it. Pure.
pub(crate) fn action_of(
    principal_email: &str,
    id: &str,
    time: Timestamp,
    payload: &Value,
) -> Option<LoggedAction> {
    if payload["authenticationInfo"]["principalEmail"] != principal_email {
        return None;
    }
    let status = payload["status"]["code"].as_i64().unwrap_or(0);
    let refused_by_iam = payload["authorizationInfo"]
        .as_array()
        .is_some_and(|checks| checks.iter().any(|check| check["granted"] == false));
    let denied = status == PERMISSION_DENIED || refused_by_iam;
    let code = match status {
        0 if !denied => 200,
        _ if denied => 403,
        5 => 404,
        _ => 400,
    };
    Some(LoggedAction {
        id: id.to_owned(),
        time,
        operation: payload["methodName"].as_str()?.to_owned(),
        service: payload["serviceName"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        resource: payload["resourceName"].as_str().map(str::to_owned),
        denied,
        code,
    })
}

/// The principal's audit log entries on `resource` between `from` and `to`, page by page,
/// each page retried on throttling (with the server's Retry-After), 5xx and dropped replies.
pub(super) async fn read(
    logging: &LoggingServiceV2,
    resource: &str,
    principal_email: &str,
    from: Timestamp,
    to: Timestamp,
) -> Result<ActivityLog, Error> {
    let action = "list audit log entries";
    let filter = filter(principal_email, from, to);
    let mut log = ActivityLog::default();
    let mut token = String::new();
    let mut read = 0;
    loop {
        let mut attempt = 0;
        let page = loop {
            attempt += 1;
            let sent = logging
                .list_log_entries()
                .set_resource_names([resource])
                .set_filter(&filter)
                .set_order_by("timestamp asc")
                .set_page_size(PAGE_SIZE)
                .set_page_token(&token)
                .send()
                .await;
            match sent {
                Ok(page) => break page,
                Err(error) => {
                    let failed = classify(&error, attempt);
                    match failed.again {
                        Some(pause) if attempt < MAX_ATTEMPTS => {
                            debug!(%resource, attempt, why = %failed.message, "gcp: retrying a log read");
                            tokio::time::sleep(pause.min(Duration::from_secs(30))).await;
                        }
                        _ => {
                            return Err(Error::cloud(
                                Target::Gcp,
                                action,
                                failed.message,
                                failed.failure,
                            ));
                        }
                    }
                }
            }
        };
        for entry in &page.entries {
            read += 1;
            let Some(Payload::ProtoPayload(payload)) = &entry.payload else {
                continue;
            };
            let Some(time) = entry
                .timestamp
                .as_ref()
                .and_then(|time| Timestamp::new(time.seconds(), time.nanos()).ok())
            else {
                continue;
            };
            let Ok(payload) = serde_json::to_value(payload.as_ref()) else {
                continue;
            };
            if let Some(logged) = action_of(principal_email, &entry.insert_id, time, &payload) {
                log.actions.push(logged);
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        if read >= ACTIVITY_READ_LIMIT {
            log.truncated = true;
            break;
        }
        token = page.next_page_token;
    }
    log.actions.sort_by_key(|logged| logged.time);
    Ok(log)
}

/// The error for a principal the audit logs cannot be searched by.
pub(super) fn unsearchable(member: &str) -> Error {
    Error::cloud(
        Target::Gcp,
        "list audit log entries",
        format!("{member} is not a principal audit logs name"),
        Failure::Refused,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn payload(principal: &str, status: i64, granted: bool) -> Value {
        json!({
            "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
            "authenticationInfo": {"principalEmail": principal},
            "serviceName": "storage.googleapis.com",
            "methodName": "storage.buckets.list",
            "resourceName": "projects/_/buckets/logs",
            "authorizationInfo": [{"permission": "storage.buckets.list", "granted": granted}],
            "status": {"code": status},
        })
    }

    #[test]
    fn the_filter_names_the_audit_logs_the_principal_and_the_window() {
        let text = filter(
            "alice@example.com",
            "2026-01-01T10:00:00Z".parse().unwrap(),
            "2026-01-01T11:00:00Z".parse().unwrap(),
        );
        assert_eq!(
            text,
            "logName:\"cloudaudit.googleapis.com\" AND protoPayload.authenticationInfo.principalEmail=\"alice@example.com\" AND timestamp>=\"2026-01-01T10:00:00Z\" AND timestamp<=\"2026-01-01T11:00:00Z\""
        );
        let sneaky = filter("a\" OR \"b", Timestamp::UNIX_EPOCH, Timestamp::UNIX_EPOCH);
        assert!(
            sneaky.contains("principalEmail=\"a\\\" OR \\\"b\""),
            "{sneaky}"
        );
    }

    #[test]
    fn entries_of_the_principal_are_actions_and_refusals_are_told_apart() {
        let time = Timestamp::UNIX_EPOCH;
        let used = action_of(
            "alice@example.com",
            "i1",
            time,
            &payload("alice@example.com", 0, true),
        )
        .unwrap();
        assert_eq!(
            (
                used.operation.as_str(),
                used.service.as_str(),
                used.code,
                used.denied
            ),
            ("storage.buckets.list", "storage.googleapis.com", 200, false)
        );
        let refused = action_of(
            "alice@example.com",
            "i1",
            time,
            &payload("alice@example.com", 7, false),
        )
        .unwrap();
        assert!(refused.denied);
        assert_eq!(refused.code, 403);
        assert_eq!(
            action_of(
                "alice@example.com",
                "i1",
                time,
                &payload("bob@example.com", 0, true)
            ),
            None
        );
    }
}
