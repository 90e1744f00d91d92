//! The Azure provider end to end: the operator (a separate process, `--providers azure`) with
//! azure_identity's real workload identity flow and azure_core's pipeline, against the HTTPS
//! fake of Entra ID and Microsoft.Authorization in tests/support/azure.rs. Both modes are
//! granted on approval and gone after expiry, revoke and delete; the PIM expiration is
//! `status.expiresAt`; throttling, 5xx and a dropped reply are retried without duplicates;
//! access someone else holds, a PIM policy refusal and an unknown principal fail the request
//! with Azure's words.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    sync::{Mutex, OnceLock},
    time::Duration,
};

use jit_operator::crd::v1alpha1::{AccessRequest, Phase, annotations};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use support::{
    Ending, TestEnv, annotate,
    azure::{Fault, READER, azure_fake, azure_policy, held, request, start_operator},
    end_request, failure_message,
    operator::Operator,
    phase, wait_for_request,
};

fn azure_operator() -> &'static Mutex<Operator> {
    static SHARED: OnceLock<Mutex<Operator>> = OnceLock::new();
    SHARED.get_or_init(|| Mutex::new(start_operator(&[])))
}

async fn lifecycle(env: &TestEnv, mode: &str, ending: Ending) {
    let fake = azure_fake();
    let scope = fake.resource_group(None);
    let alice = fake.user();
    let policy = azure_policy(env, &scope, mode, &alice, 1).await;
    let duration = if ending == Ending::Expiry {
        "6s"
    } else {
        "30m"
    };
    let created = request(env, &policy, duration).await;
    let name = created.name_any();
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    let case = format!("{mode} {ending:?}");
    assert_eq!(held(&scope, mode), 0, "{case}: nothing before approval");

    annotate(&env.bob, &env.namespace, &name, annotations::APPROVE, "ok")
        .await
        .unwrap();
    let active = wait_for_request(&requests, &name, "active", |r| {
        phase(r) == Some(Phase::Active)
    })
    .await;
    let status = active.status.unwrap();
    let expires_at = status.expires_at.unwrap().0;
    let grant = status.grant.unwrap();
    assert_eq!(grant.provider, "azure", "{case}");
    assert_eq!(
        grant.cloud_enforced_expiry,
        mode == "pim",
        "{case}: only PIM ends it by itself"
    );
    assert_eq!(held(&scope, mode), 1, "{case}: granted once");
    if mode == "pim" {
        let schedule = &fake.schedules(&scope)[0]["properties"];
        assert_eq!(schedule["principalId"], alice.as_str(), "{case}");
        let sent: Vec<Value> = fake
            .schedule_requests(&scope)
            .into_iter()
            .map(|request| request["properties"].clone())
            .collect();
        assert_eq!(sent.len(), 1, "{case}: one AdminAssign");
        assert_eq!(sent[0]["requestType"], "AdminAssign");
        assert_eq!(sent[0]["roleDefinitionId"], READER);
        assert_eq!(
            sent[0]["scheduleInfo"]["expiration"],
            json!({"type": "AfterDateTime",
                   "endDateTime": expires_at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()}),
            "{case}: Azure ends it at status.expiresAt"
        );
        assert_eq!(sent[0]["justification"], "INC-77 dashboards down");
        assert_eq!(
            sent[0]["ticketInfo"],
            json!({"ticketNumber": "INC-77", "ticketSystem": "ServiceNow"})
        );
    } else {
        let assignment = &fake.assignments(&scope)[0]["properties"];
        assert_eq!(assignment["principalId"], alice.as_str(), "{case}");
        assert_eq!(assignment["roleDefinitionId"], READER);
        assert_eq!(assignment["principalType"], "User");
        assert_eq!(
            assignment["description"],
            format!(
                "{}/{name} approved by bob: INC-77 dashboards down",
                env.namespace
            )
        );
    }

    end_request(env, &name, ending).await;
    assert_eq!(held(&scope, mode), 0, "{case}: gone");
    if mode == "pim" && ending != Ending::Expiry {
        let removals = fake
            .schedule_requests(&scope)
            .into_iter()
            .filter(|request| request["properties"]["requestType"] == "AdminRemove")
            .count();
        assert_eq!(removals, 1, "{case}: the operator asked PIM to remove it");
    }
}

#[tokio::test]
async fn both_modes_are_granted_on_approval_and_gone_after_expiry_revoke_and_delete() {
    let env = TestEnv::new().await;
    let _ = azure_operator();
    let cases = ["direct", "pim"].into_iter().flat_map(|mode| {
        [Ending::Expiry, Ending::Revoke, Ending::Delete].map(move |ending| (mode, ending))
    });
    futures::future::join_all(cases.map(|(mode, ending)| lifecycle(&env, mode, ending))).await;
    assert!(
        azure_fake().tokens_issued() >= 1,
        "the operator authenticated through workload identity"
    );
}

/// Grants with no approval needed, with faults queued, and waits until active; returns the
/// scope.
async fn granted_with_faults(env: &TestEnv, mode: &str, faults: &[Fault]) -> String {
    let fake = azure_fake();
    let scope = fake.resource_group(None);
    fake.inject(&scope, faults);
    let policy = azure_policy(env, &scope, mode, &fake.user(), 0).await;
    let created = request(env, &policy, "30m").await;
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    wait_for_request(&requests, &created.name_any(), "active", |r| {
        phase(r) == Some(Phase::Active)
    })
    .await;
    assert_eq!(fake.pending_faults(&scope), 0, "every fault was met");
    scope
}

#[tokio::test]
async fn throttling_is_retried_after_retry_after_and_server_errors_are_retried() {
    let env = TestEnv::new().await;
    let _ = azure_operator();
    for mode in ["direct", "pim"] {
        let scope =
            granted_with_faults(&env, mode, &[Fault::TooManyRequests(2), Fault::ServerError]).await;
        assert_eq!(held(&scope, mode), 1, "{mode}");
        assert_eq!(azure_fake().writes(&scope), 1, "{mode}: written once");
        let puts: Vec<_> = azure_fake()
            .calls(&scope)
            .into_iter()
            .filter(|call| call.method == "PUT")
            .collect();
        let statuses: Vec<u16> = puts.iter().map(|call| call.status).collect();
        assert_eq!(statuses, [429, 500, 201], "{mode}");
        let waited = puts[1].at.duration_since(puts[0].at);
        assert!(
            waited >= Duration::from_millis(1900),
            "{mode}: waited {waited:?} after Retry-After: 2"
        );
    }
}

#[tokio::test]
async fn a_retry_after_a_dropped_reply_adopts_instead_of_duplicating() {
    let env = TestEnv::new().await;
    let _ = azure_operator();
    for mode in ["direct", "pim"] {
        let scope = granted_with_faults(&env, mode, &[Fault::DropReply]).await;
        assert_eq!(held(&scope, mode), 1, "{mode}: one grant, not two");
        assert_eq!(
            azure_fake().writes(&scope),
            1,
            "{mode}: the retry wrote nothing"
        );
    }
    // PIM's retry meets a 409 for the request name (what Azure answers) above; here for the
    // assignment instead. Either way the operator reads, finds its own schedule and adopts it.
    let fake = azure_fake();
    let scope = fake.resource_group(None);
    fake.answer_repeats_with_assignment_exists(&scope);
    fake.inject(&scope, &[Fault::DropReply]);
    let policy = azure_policy(&env, &scope, "pim", &fake.user(), 0).await;
    let created = request(&env, &policy, "30m").await;
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    wait_for_request(&requests, &created.name_any(), "active", |r| {
        phase(r) == Some(Phase::Active)
    })
    .await;
    assert_eq!(held(&scope, "pim"), 1);
    let codes: Vec<u16> = fake
        .calls(&scope)
        .into_iter()
        .filter(|call| call.method == "PUT")
        .map(|call| call.status)
        .collect();
    assert_eq!(codes, [0, 409], "a dropped reply, then the conflict");
    // The grant is remembered: revoking it removes the schedule.
    end_request(&env, &created.name_any(), Ending::Revoke).await;
    assert_eq!(held(&scope, "pim"), 0);
}

#[tokio::test]
async fn access_someone_else_holds_fails_the_request_and_is_left_alone() {
    let env = TestEnv::new().await;
    let _ = azure_operator();
    let fake = azure_fake();
    for mode in ["direct", "pim"] {
        let scope = fake.resource_group(None);
        let alice = fake.user();
        if mode == "pim" {
            fake.schedule_by_hand(&scope, &alice, READER);
        } else {
            fake.assign_by_hand(&scope, &alice, READER);
        }
        let policy = azure_policy(&env, &scope, mode, &alice, 0).await;
        let created = request(&env, &policy, "10m").await;
        let message = failure_message(&env, &created.name_any()).await;
        assert!(message.contains("did not make"), "{mode}: {message}");
        assert!(message.contains(&alice), "{mode}: {message}");
        if mode == "direct" {
            assert!(message.contains("RoleAssignmentExists"), "{message}");
        }
        assert_eq!(held(&scope, mode), 1, "{mode}: theirs is still there");
    }
}

#[tokio::test]
async fn a_pim_policy_refusal_fails_the_request_with_azures_message() {
    let env = TestEnv::new().await;
    let _ = azure_operator();
    let fake = azure_fake();
    // This resource group's PIM policy allows assignments of 30 minutes at most.
    let scope = fake.resource_group(Some(30));
    let policy = azure_policy(&env, &scope, "pim", &fake.user(), 0).await;
    let created = request(&env, &policy, "1h").await;
    let message = failure_message(&env, &created.name_any()).await;
    assert!(
        message.contains("RoleAssignmentRequestPolicyValidationFailed")
            && message.contains("ExpirationRule"),
        "{message}"
    );
    assert_eq!(held(&scope, "pim"), 0);
}

#[tokio::test]
async fn principals_azure_does_not_know_or_that_are_not_object_ids_fail_clearly() {
    let env = TestEnv::new().await;
    let _ = azure_operator();
    let fake = azure_fake();
    let scope = fake.resource_group(None);
    let stranger = uuid::Uuid::new_v4().to_string();
    let policy = azure_policy(&env, &scope, "direct", &stranger, 0).await;
    let created = request(&env, &policy, "10m").await;
    let message = failure_message(&env, &created.name_any()).await;
    assert!(message.contains("PrincipalNotFound"), "{message}");

    let policy = azure_policy(&env, &scope, "direct", "alice@example.com", 0).await;
    let created = request(&env, &policy, "10m").await;
    let message = failure_message(&env, &created.name_any()).await;
    assert!(message.contains("not an Entra ID object ID"), "{message}");
    assert_eq!(held(&scope, "direct"), 0);
}

#[tokio::test]
async fn a_scope_the_operator_may_not_touch_fails_the_request_with_azures_words() {
    let env = TestEnv::new().await;
    let _ = azure_operator();
    // Never created in the fake: Azure answers 403 AuthorizationFailed.
    let scope = format!(
        "/subscriptions/{}/resourceGroups/elsewhere",
        support::azure::SUBSCRIPTION
    );
    let policy = azure_policy(&env, &scope, "direct", &azure_fake().user(), 0).await;
    let created = request(&env, &policy, "10m").await;
    let message = failure_message(&env, &created.name_any()).await;
    assert!(message.contains("AuthorizationFailed"), "{message}");
    assert!(message.contains(&scope), "{message}");
}

#[tokio::test]
async fn an_assignment_deleted_by_hand_is_restored() {
    let env = TestEnv::new().await;
    let _ = azure_operator();
    let scope = granted_with_faults(&env, "direct", &[]).await;
    let before = azure_fake().assignments(&scope);
    azure_fake().delete_assignments(&scope);
    let scope_ref = &scope;
    support::eventually("the drift check restores the assignment", || async move {
        (azure_fake().assignments(scope_ref).len() == 1).then_some(())
    })
    .await;
    let after = azure_fake().assignments(&scope);
    assert_eq!(after[0]["name"], before[0]["name"], "under the same name");
}
