//! What the holder of a cloud grant did, read from each cloud's own activity log: the
//! operator (one process, `--providers aws,gcp,azure`) grants in moto, the Google fake and the
//! Azure fake, and reads the project's fakes of CloudTrail `LookupEvents`, Cloud Logging
//! `entries.list` and the Azure Activity Log (tests/support/activity_logs.rs, azure.rs). Each
//! test records the holder's calls, someone else's, and calls outside the grant's window, with
//! enough of them to page, and throttling on the way; the request's `status.activity` shows
//! exactly the holder's calls in the window, first as preliminary while the grant is active,
//! then final once it ended and the delivery delay passed, counting a call the log received
//! late.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    sync::{Mutex, OnceLock, PoisonError},
    time::Duration,
};

use jiff::{SignedDuration, Timestamp};
use jit_operator::crd::v1alpha1::{
    AccessRequest, Activity, ActivityCompleteness, ActivityLookup, ActivityMatch, ActivitySource,
    Phase, annotations,
};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use support::{
    Ending, TestEnv, activity_lines,
    activity_logs::{cloud_logging, cloudtrail},
    alice_requests, annotate,
    aws::{Fixture, Kind, aws_policy, fixture},
    azure::{self, azure_fake},
    create_policy, end_request,
    gcp::gcp_fake,
    moto::{ACCOUNT, moto},
    operator::Operator,
    phase, random_suffix, wait_for_request,
};

/// Reads while active this often, and the last read this long after the end: short, so that
/// a test sees both.
const INTERVAL: &str = "2s";
const DELAY: &str = "5s";
/// How long a summary may take to show what the log holds (reads are retried with backoff
/// on throttling).
const READ_LIMIT: Duration = Duration::from_secs(60);

/// The operator of this binary, granting in all three clouds and reading their logs.
fn operator() -> &'static Mutex<Operator> {
    static SHARED: OnceLock<Mutex<Operator>> = OnceLock::new();
    SHARED.get_or_init(|| {
        let azure = azure_fake();
        let mut environment: Vec<(&str, String)> = moto().environment();
        environment.push(("AWS_ENDPOINT_URL_CLOUDTRAIL", cloudtrail().endpoint.clone()));
        environment.extend(azure.operator_environment());
        let environment: Vec<(&str, &str)> = environment
            .iter()
            .map(|(key, value)| (*key, value.as_str()))
            .collect();
        let gcp = gcp_fake().endpoint.clone();
        let logging = cloud_logging().endpoint.clone();
        let ca = azure.ca_file.display().to_string();
        let args = [
            "--providers",
            "aws,gcp,azure",
            "--gcp-endpoint",
            &gcp,
            "--gcp-logging-endpoint",
            &logging,
            "--gcp-credentials",
            "anonymous",
            "--azure-endpoint",
            &azure.endpoint,
            "--azure-ca-file",
            &ca,
            "--cloud-activity-interval",
            INTERVAL,
            "--cloud-activity-delay",
            DELAY,
        ];
        Mutex::new(Operator::start_with_args(
            "jit-operator",
            &args,
            &environment,
        ))
    })
}

/// An active request, with how its cloud's log names the holder and when it was granted.
struct Granted {
    request: AccessRequest,
    lookup: ActivityLookup,
    start: Timestamp,
}

/// Has bob approve alice's request and waits until it is active.
async fn approved(env: &TestEnv, request: &AccessRequest) -> Granted {
    let name = request.name_any();
    annotate(&env.bob, &env.namespace, &name, annotations::APPROVE, "ok")
        .await
        .unwrap();
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    let active = wait_for_request(&requests, &name, "active", |request| {
        phase(request) == Some(Phase::Active)
    })
    .await;
    let status = active.status.as_ref().unwrap();
    Granted {
        lookup: status
            .activity_lookup
            .clone()
            .expect("the holder, as the cloud's log names them, is recorded at grant"),
        start: status.granted_at.as_ref().unwrap().0,
        request: active,
    }
}

fn activity_of(request: &AccessRequest) -> Activity {
    request
        .status
        .as_ref()
        .and_then(|status| status.activity.clone())
        .unwrap_or_default()
}

/// Waits until the request's activity is `completeness` with `actions` actions, and returns
/// it; says what it was last when it never gets there.
async fn activity_reaches(
    env: &TestEnv,
    name: &str,
    completeness: ActivityCompleteness,
    actions: i64,
) -> Activity {
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    let deadline = tokio::time::Instant::now() + READ_LIMIT;
    loop {
        let activity = activity_of(&requests.get(name).await.unwrap());
        if activity.completeness == Some(completeness) && activity.actions == actions {
            return activity;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}'s activity is not {completeness:?} with {actions} actions within {READ_LIMIT:?}; it is {activity:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A CloudTrail record of a call by IAM user `user` at `time`.
fn iam_user_call(user: &str, time: Timestamp, name: &str, error: Option<&str>) -> Value {
    let mut record = json!({
        "eventVersion": "1.09",
        "userIdentity": {"type": "IAMUser", "principalId": "AIDAEXAMPLE",
                         "arn": format!("arn:aws:iam::{ACCOUNT}:user/{user}"),
                         "accountId": ACCOUNT, "userName": user},
        "eventTime": time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "eventSource": "s3.amazonaws.com",
        "eventName": name,
        "awsRegion": "us-east-1",
        "sourceIPAddress": "192.0.2.10",
        "readOnly": true,
        "resources": [{"ARN": "arn:aws:s3:::team-logs", "type": "AWS::S3::Bucket"}],
    });
    if let Some(code) = error {
        record["errorCode"] = json!(code);
        record["errorMessage"] = json!("User is not authorized to perform this action");
    }
    record
}

/// A CloudTrail record of a call in a session of `role` with `source_identity`, whose
/// session name is `session`.
fn session_call(role: &str, session: &str, source_identity: &str, time: Timestamp) -> Value {
    json!({
        "eventVersion": "1.09",
        "userIdentity": {"type": "AssumedRole",
            "arn": format!("arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{session}"),
            "accountId": ACCOUNT,
            "sessionContext": {
                "sessionIssuer": {"type": "Role", "arn": format!("arn:aws:iam::{ACCOUNT}:role/{role}"),
                                  "accountId": ACCOUNT, "userName": role},
                "sourceIdentity": source_identity,
            }},
        "eventTime": time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "eventSource": "ec2.amazonaws.com",
        "eventName": "DescribeInstances",
        "readOnly": true,
    })
}

fn at(start: Timestamp, seconds: i64) -> Timestamp {
    start + SignedDuration::from_secs(seconds)
}

#[tokio::test]
async fn cloudtrail_shows_exactly_what_the_iam_user_did_in_the_window() {
    let _ = operator();
    let env = TestEnv::new().await;
    let place: Fixture = fixture().await;
    let policy = aws_policy(&env, Kind::Inline, &place, 1).await;
    let request = support::aws::request(&env, &policy, "10m").await;
    let name = request.name_any();
    let Granted {
        request: active,
        lookup,
        start,
    } = approved(&env, &request).await;
    assert_eq!(
        (lookup.source, lookup.matches, lookup.principal.as_str()),
        (
            ActivitySource::AwsCloudTrail,
            ActivityMatch::AwsUserName,
            place.user.as_str()
        ),
        "the holder, as CloudTrail names them, recorded at grant"
    );
    let trail = cloudtrail();
    // 70 calls of hers (three pages of 50 at most), two of them refused.
    for second in 0..68 {
        let operation = if second % 2 == 0 {
            "GetObject"
        } else {
            "ListBucket"
        };
        trail.record(iam_user_call(
            &place.user,
            at(start, 1 + second / 30),
            operation,
            None,
        ));
    }
    for _ in 0..2 {
        trail.record(iam_user_call(
            &place.user,
            at(start, 2),
            "DeleteBucket",
            Some("AccessDenied"),
        ));
    }
    // Not hers: another user, a role session named like her, and her calls before the grant.
    trail.record(iam_user_call(
        "someone-else",
        at(start, 1),
        "GetObject",
        None,
    ));
    trail.record(session_call("admin", &place.user, "mallory", at(start, 1)));
    trail.record(iam_user_call(
        &place.user,
        at(start, -120),
        "GetObject",
        None,
    ));
    // The rate limit throttles the third page of a read; these are thrown in besides.
    trail.throttle(2);

    let preliminary = activity_reaches(&env, &name, ActivityCompleteness::Preliminary, 68).await;
    assert_eq!(preliminary.refused, 2);
    assert_eq!(preliminary.source, Some(ActivitySource::AwsCloudTrail));
    let counts: Vec<(&str, &str, i64)> = preliminary
        .by_verb_and_resource
        .iter()
        .map(|count| (count.verb.as_str(), count.resource.as_str(), count.count))
        .collect();
    assert_eq!(
        counts,
        [
            ("GetObject", "s3.amazonaws.com", 34),
            ("ListBucket", "s3.amazonaws.com", 34)
        ]
    );
    assert_eq!(preliminary.recent.len(), 10);
    assert!(preliminary.recent.iter().any(|action| action.code == 403));
    assert_eq!(
        preliminary.recent[9].name.as_deref(),
        Some("arn:aws:s3:::team-logs")
    );

    end_request(&env, &name, Ending::Revoke).await;
    // A call of hers from inside the window that CloudTrail delivered late.
    trail.record(iam_user_call(&place.user, at(start, 3), "GetObject", None));
    let last = activity_reaches(&env, &name, ActivityCompleteness::Final, 69).await;
    assert_eq!(last.refused, 2);
    assert_eq!(last.read_error, None);
    // The last read is the record: each of her calls is an audit line, once.
    let uid = active.uid().unwrap();
    let lines = activity_lines(
        &operator().lock().unwrap_or_else(PoisonError::into_inner),
        &uid,
    );
    assert_eq!(lines.len(), 71, "69 used and 2 refused");
    let refused = lines
        .iter()
        .filter(|line| line["data"]["outcome"] == "refused")
        .count();
    assert_eq!(refused, 2);
    let ids: std::collections::HashSet<&str> = lines
        .iter()
        .map(|line| line["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 71, "one line per CloudTrail event");
    assert_eq!(lines[0]["subject"], place.user.as_str());
    let (answered, throttled) = trail.lookups();
    assert!(
        answered >= 4 && throttled >= 2,
        "{answered} pages, {throttled} throttled"
    );
}

#[tokio::test]
async fn cloudtrail_attributes_role_sessions_by_their_source_identity() {
    let _ = operator();
    let env = TestEnv::new().await;
    let place: Fixture = fixture().await;
    let policy = aws_policy(&env, Kind::AssumeRole, &place, 1).await;
    let request = support::aws::request(&env, &policy, "10m").await;
    let name = request.name_any();
    let Granted { lookup, start, .. } = approved(&env, &request).await;
    assert_eq!(lookup.matches, ActivityMatch::AwsSourceIdentity);
    let trail = cloudtrail();
    // Her sessions of the role, whatever she named them; bob's session of the same role; her
    // session of another role.
    for second in 0..3 {
        trail.record(session_call(
            &place.role,
            "any-name",
            "alice",
            at(start, 1 + second),
        ));
    }
    trail.record(session_call(&place.role, "alice", "bob", at(start, 1)));
    trail.record(session_call("other-role", "x", "alice", at(start, 1)));
    // Seen while active (the calls are inside the window only once it is past them).
    activity_reaches(&env, &name, ActivityCompleteness::Preliminary, 3).await;
    end_request(&env, &name, Ending::Revoke).await;
    let last = activity_reaches(&env, &name, ActivityCompleteness::Final, 3).await;
    assert_eq!(last.by_verb_and_resource[0].verb, "DescribeInstances");
    assert_eq!(last.by_verb_and_resource[0].resource, "ec2.amazonaws.com");
}

/// An AuditLog payload of a call by `email`.
fn audit_log(email: &str, method: &str, code: i64) -> Value {
    json!({
        "authenticationInfo": {"principalEmail": email},
        "requestMetadata": {"callerIp": "192.0.2.10"},
        "serviceName": "compute.googleapis.com",
        "methodName": method,
        "resourceName": "projects/p/zones/europe-west1-b/instances/web-1",
        "authorizationInfo": [{"permission": "compute.instances.get", "granted": code != 7}],
        "status": if code == 0 { json!({}) } else { json!({"code": code, "message": "PERMISSION_DENIED"}) },
    })
}

#[tokio::test]
async fn cloud_audit_logs_show_exactly_what_the_principal_did_on_the_project() {
    let _ = operator();
    let env = TestEnv::new().await;
    let project = format!("projects/jit-{}", random_suffix(10).to_lowercase());
    let other = format!("projects/jit-{}", random_suffix(10).to_lowercase());
    gcp_fake().create(&project, json!({"version": 1, "bindings": []}));
    let email = format!("alice-{}@example.com", random_suffix(6).to_lowercase());
    let policy = create_policy(
        &env,
        json!({
            "requesters": {"groups": ["devs"]},
            "approvers": {"groups": ["approvers"]},
            "approvalsRequired": 1,
            "maxDuration": "1h",
            "roles": [{"name": "viewer", "gcp": {
                "resource": project, "role": "roles/viewer", "member": "user:{{mapping.email}}"}}],
            "identityMappings": [{"subject": "alice", "values": {"email": email}}],
        }),
    )
    .await;
    let request = alice_requests(
        &env,
        &format!("gcp-{}", random_suffix(6).to_lowercase()),
        json!({"policy": policy, "role": "viewer", "duration": "10m", "reason": "INC-77"}),
    )
    .await;
    let name = request.name_any();
    let Granted { lookup, start, .. } = approved(&env, &request).await;
    assert_eq!(
        (
            lookup.matches,
            lookup.principal.as_str(),
            lookup.scope.as_deref()
        ),
        (
            ActivityMatch::GcpPrincipalEmail,
            email.as_str(),
            Some(project.as_str())
        )
    );
    let logging = cloud_logging();
    // Nine calls of hers (pages of four), one refused; bob's; hers on another project; hers
    // before the grant.
    for second in 0..8 {
        logging.record(
            &project,
            at(start, 1 + second),
            audit_log(&email, "v1.compute.instances.get", 0),
        );
    }
    logging.record(
        &project,
        at(start, 2),
        audit_log(&email, "v1.compute.instances.delete", 7),
    );
    logging.record(
        &project,
        at(start, 2),
        audit_log("bob@example.com", "v1.compute.instances.get", 0),
    );
    logging.record(
        &other,
        at(start, 2),
        audit_log(&email, "v1.compute.instances.get", 0),
    );
    logging.record(
        &project,
        at(start, -60),
        audit_log(&email, "v1.compute.instances.get", 0),
    );
    logging.throttle(1);

    let preliminary = activity_reaches(&env, &name, ActivityCompleteness::Preliminary, 8).await;
    assert_eq!(preliminary.refused, 1);
    assert_eq!(preliminary.source, Some(ActivitySource::GcpAuditLogs));
    assert_eq!(
        preliminary.by_verb_and_resource[0].verb,
        "v1.compute.instances.get"
    );
    assert_eq!(
        preliminary.by_verb_and_resource[0].resource,
        "compute.googleapis.com"
    );
    end_request(&env, &name, Ending::Revoke).await;
    logging.record(
        &project,
        at(start, 3),
        audit_log(&email, "v1.compute.instances.list", 0),
    );
    let last = activity_reaches(&env, &name, ActivityCompleteness::Final, 9).await;
    assert_eq!(last.refused, 1);
    let (pages, throttled) = logging.calls();
    assert!(
        pages >= 3 && throttled >= 1,
        "{pages} pages, {throttled} throttled"
    );
}

/// An Activity Log event by the object `caller_oid` in `scope`, with `status`.
fn activity_event(
    scope: &str,
    caller_oid: &str,
    time: Timestamp,
    operation: &str,
    status: &str,
    sub_status: &str,
) -> Value {
    let group = scope.rsplit('/').next().unwrap();
    json!({
        "authorization": {"action": operation, "scope": format!("{scope}/providers/Microsoft.Compute/virtualMachines/vm1")},
        "caller": "alice@contoso.com",
        "claims": {"http://schemas.microsoft.com/identity/claims/objectidentifier": caller_oid},
        "correlationId": uuid::Uuid::new_v4().to_string(),
        "eventDataId": uuid::Uuid::new_v4().to_string(),
        "eventName": {"value": if status == "Started" { "BeginRequest" } else { "EndRequest" }},
        "category": {"value": "Administrative"},
        // As Azure writes it: seven fractional digits.
        "eventTimestamp": format!("{}.{:07}Z", time.strftime("%Y-%m-%dT%H:%M:%S"), time.subsec_nanosecond() / 100),
        "level": "Informational",
        "operationName": {"value": operation},
        "resourceGroupName": group,
        "resourceProviderName": {"value": "Microsoft.Compute"},
        "resourceId": format!("{scope}/providers/Microsoft.Compute/virtualMachines/vm1"),
        "status": {"value": status},
        "subStatus": {"value": sub_status},
        "subscriptionId": azure::SUBSCRIPTION,
    })
}

#[tokio::test]
async fn the_azure_activity_log_shows_exactly_what_the_object_did_in_the_resource_group() {
    let _ = operator();
    let env = TestEnv::new().await;
    let fake = azure_fake();
    let scope = fake.resource_group(None);
    let elsewhere = fake.resource_group(None);
    let alice = fake.user();
    let bob = fake.user();
    let policy = azure::azure_policy(&env, &scope, "direct", &alice, 1).await;
    let request = azure::request(&env, &policy, "10m").await;
    let name = request.name_any();
    let Granted { lookup, start, .. } = approved(&env, &request).await;
    assert_eq!(
        (lookup.matches, lookup.principal.as_str()),
        (ActivityMatch::AzureObjectId, alice.as_str())
    );
    let restart = "Microsoft.Compute/virtualMachines/restart/action";
    // Four operations of hers (each logged as Started, then Succeeded), one refused; bob's;
    // hers in another resource group; hers before the grant.
    for second in 0..4 {
        fake.record_activity(activity_event(
            &scope,
            &alice,
            at(start, 1 + second),
            restart,
            "Started",
            "",
        ));
        fake.record_activity(activity_event(
            &scope,
            &alice,
            at(start, 1 + second),
            restart,
            "Succeeded",
            "OK",
        ));
    }
    fake.record_activity(activity_event(
        &scope,
        &alice,
        at(start, 2),
        "Microsoft.Compute/virtualMachines/delete",
        "Failed",
        "Forbidden",
    ));
    fake.record_activity(activity_event(
        &scope,
        &bob,
        at(start, 2),
        restart,
        "Succeeded",
        "OK",
    ));
    fake.record_activity(activity_event(
        &elsewhere,
        &alice,
        at(start, 2),
        restart,
        "Succeeded",
        "OK",
    ));
    fake.record_activity(activity_event(
        &scope,
        &alice,
        at(start, -60),
        restart,
        "Succeeded",
        "OK",
    ));
    fake.fail_activity_reads(&[azure::Fault::TooManyRequests(1)]);

    let preliminary = activity_reaches(&env, &name, ActivityCompleteness::Preliminary, 4).await;
    assert_eq!(preliminary.refused, 1);
    assert_eq!(preliminary.source, Some(ActivitySource::AzureActivityLog));
    assert_eq!(preliminary.by_verb_and_resource[0].verb, restart);
    assert_eq!(
        preliminary.by_verb_and_resource[0].resource,
        "Microsoft.Compute"
    );
    end_request(&env, &name, Ending::Revoke).await;
    fake.record_activity(activity_event(
        &scope,
        &alice,
        at(start, 3),
        restart,
        "Succeeded",
        "OK",
    ));
    let last = activity_reaches(&env, &name, ActivityCompleteness::Final, 5).await;
    assert_eq!(last.refused, 1);
    let (pages, faulted) = fake.activity_reads();
    assert!(
        pages >= 3 && faulted >= 1,
        "{pages} pages, {faulted} refused"
    );
}
