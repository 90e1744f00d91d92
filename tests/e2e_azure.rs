//! The Azure provider end to end: the operator (a separate process, `--providers azure`) with
//! azure_identity's real workload identity flow and azure_core's pipeline, against the HTTPS
//! fake of Entra ID and Microsoft.Authorization in tests/support/azure.rs. The shared cloud
//! scenarios (tests/support/clouds.rs) run over both modes: granted on approval and gone after
//! expiry, revoke and delete, with the PIM expiration at `status.expiresAt`; an assignment
//! deleted by hand is restored; throttling (after Retry-After), 5xx and a dropped reply are
//! retried without duplicates; access someone else holds, an unknown principal and a scope the
//! operator may not touch fail the request with Azure's words. Here besides: the other 409 a
//! PIM retry may meet, a PIM policy refusal and a principal that is no object ID.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    sync::{Mutex, OnceLock},
    time::Duration,
};

use jit_operator::crd::v1alpha1::{AccessRequest, Phase};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use support::{
    Ending, TestEnv,
    azure::{Fault, READER, azure_fake, azure_policy, held, request, start_operator},
    clouds::{CloudUnderTest, FaultyCloud, Standing, cloud_scenarios},
    end_request, failure_message,
    operator::Operator,
    phase, wait_for_request,
};

fn azure_operator() -> &'static Mutex<Operator> {
    static SHARED: OnceLock<Mutex<Operator>> = OnceLock::new();
    SHARED.get_or_init(|| Mutex::new(start_operator(&[])))
}

/// Azure under the shared scenarios: its two kinds are direct role assignments and PIM
/// schedules.
struct Azure;

/// A resource group to grant Reader on, in one mode, to a user of the directory.
struct Place {
    scope: String,
    mode: &'static str,
    principal: String,
}

impl CloudUnderTest for Azure {
    /// `direct` or `pim`, as the role's `mode` says.
    type Kind = &'static str;
    type Place = Place;
    const PROVIDER: &'static str = "azure";
    const SHORT: &'static str = "6s";

    fn start_operator(&self) {
        let _ = azure_operator();
    }

    fn kinds(&self) -> Vec<&'static str> {
        vec!["direct", "pim"]
    }

    fn cloud_enforced(&self, mode: &'static str) -> bool {
        // Only PIM ends it by itself.
        mode == "pim"
    }

    async fn place(&self, mode: &'static str) -> Place {
        let fake = azure_fake();
        Place {
            scope: fake.resource_group(None),
            mode,
            principal: fake.user(),
        }
    }

    async fn policy(&self, env: &TestEnv, place: &Place, approvals: u32) -> String {
        azure_policy(env, &place.scope, place.mode, &place.principal, approvals).await
    }

    async fn request(&self, env: &TestEnv, policy: &str, duration: &str) -> AccessRequest {
        request(env, policy, duration).await
    }

    async fn held(&self, place: &Place, _uid: &str) -> usize {
        held(&place.scope, place.mode)
    }

    async fn check_granted(&self, env: &TestEnv, place: &Place, active: &AccessRequest) {
        let fake = azure_fake();
        let (scope, mode, name) = (&place.scope, place.mode, active.name_any());
        let expires_at = active
            .status
            .as_ref()
            .unwrap()
            .expires_at
            .as_ref()
            .unwrap()
            .0;
        assert!(
            fake.tokens_issued() >= 1,
            "the operator authenticated through workload identity"
        );
        if mode == "pim" {
            let schedule = &fake.schedules(scope)[0]["properties"];
            assert_eq!(schedule["principalId"], place.principal.as_str());
            let sent: Vec<Value> = fake
                .schedule_requests(scope)
                .into_iter()
                .map(|request| request["properties"].clone())
                .collect();
            assert_eq!(sent.len(), 1, "one AdminAssign");
            assert_eq!(sent[0]["requestType"], "AdminAssign");
            assert_eq!(sent[0]["roleDefinitionId"], READER);
            assert_eq!(
                sent[0]["scheduleInfo"]["expiration"],
                json!({"type": "AfterDateTime",
                       "endDateTime": expires_at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()}),
                "Azure ends it at status.expiresAt"
            );
            assert_eq!(sent[0]["justification"], "INC-77 dashboards down");
            assert_eq!(
                sent[0]["ticketInfo"],
                json!({"ticketNumber": "INC-77", "ticketSystem": "ServiceNow"})
            );
        } else {
            let assignment = &fake.assignments(scope)[0]["properties"];
            assert_eq!(assignment["principalId"], place.principal.as_str());
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
    }

    async fn check_ended(&self, place: &Place, ending: Ending) {
        if place.mode == "pim" && ending != Ending::Expiry {
            let removals = azure_fake()
                .schedule_requests(&place.scope)
                .into_iter()
                .filter(|request| request["properties"]["requestType"] == "AdminRemove")
                .count();
            assert_eq!(
                removals, 1,
                "{ending:?}: the operator asked PIM to remove it"
            );
        }
    }

    fn repairable(&self) -> &'static str {
        "direct"
    }

    async fn snapshot(&self, place: &Place, _uid: &str) -> Value {
        // Restored under the same name.
        azure_fake()
            .assignments(&place.scope)
            .into_iter()
            .map(|assignment| assignment["name"].clone())
            .collect()
    }

    async fn remove_by_hand(&self, place: &Place, _uid: &str) {
        azure_fake().delete_assignments(&place.scope);
    }

    fn standing_kinds(&self) -> Vec<&'static str> {
        self.kinds()
    }

    async fn hold_by_hand(&self, place: &Place) -> Standing {
        let (fake, scope, alice) = (azure_fake(), &place.scope, &place.principal);
        let mut words = vec!["did not make".to_owned(), alice.clone()];
        if place.mode == "pim" {
            fake.schedule_by_hand(scope, alice, READER);
        } else {
            fake.assign_by_hand(scope, alice, READER);
            words.push("RoleAssignmentExists".to_owned());
        }
        Standing::Refused(words)
    }

    async fn held_by_hand(&self, place: &Place) -> bool {
        held(&place.scope, place.mode) == 1
    }

    async fn stranger(&self, env: &TestEnv) -> (Place, String, Vec<String>) {
        let place = Place {
            principal: uuid::Uuid::new_v4().to_string(),
            ..self.place("direct").await
        };
        let policy = self.policy(env, &place, 0).await;
        (place, policy, vec!["PrincipalNotFound".to_owned()])
    }

    async fn check_untouched(&self, place: &Place) {
        assert_eq!(held(&place.scope, place.mode), 0);
    }
}

impl FaultyCloud for Azure {
    type Fault = Fault;

    fn inject(&self, place: &Place, faults: &[Fault]) {
        azure_fake().inject(&place.scope, faults);
    }

    fn pending_faults(&self, place: &Place) -> usize {
        azure_fake().pending_faults(&place.scope)
    }

    fn writes(&self, place: &Place) -> usize {
        azure_fake().writes(&place.scope)
    }

    fn transient_faults(&self) -> Vec<Fault> {
        vec![Fault::TooManyRequests(2), Fault::ServerError]
    }

    fn dropped_reply(&self) -> Fault {
        Fault::DropReply
    }

    fn check_retries(&self, place: &Place) {
        let puts: Vec<_> = azure_fake()
            .calls(&place.scope)
            .into_iter()
            .filter(|call| call.method == "PUT")
            .collect();
        let statuses: Vec<u16> = puts.iter().map(|call| call.status).collect();
        assert_eq!(statuses, [429, 500, 201], "{}", place.mode);
        let waited = puts[1].at.duration_since(puts[0].at);
        assert!(
            waited >= Duration::from_millis(1900),
            "{}: waited {waited:?} after Retry-After: 2",
            place.mode
        );
    }

    async fn forbidden(&self, env: &TestEnv) -> (String, Vec<String>) {
        // Never created in the fake: Azure answers 403 AuthorizationFailed.
        let place = Place {
            scope: format!(
                "/subscriptions/{}/resourceGroups/elsewhere",
                support::azure::SUBSCRIPTION
            ),
            ..self.place("direct").await
        };
        let policy = self.policy(env, &place, 0).await;
        (policy, vec!["AuthorizationFailed".to_owned(), place.scope])
    }
}

cloud_scenarios!(Azure;
    every_kind_is_granted_on_approval_and_gone_after_expiry_revoke_and_delete,
    a_grant_removed_by_hand_is_restored,
    access_someone_else_holds_is_left_alone,
    a_principal_the_cloud_does_not_know_fails_the_request_with_its_words,
    a_place_the_operator_may_not_touch_fails_the_request_with_the_clouds_words,
    throttling_conflicts_and_server_errors_are_retried,
    a_retry_after_a_dropped_reply_adopts_instead_of_duplicating,
);

/// PIM's retry after a dropped reply usually meets a 409 for the request name (what Azure
/// answers, in the shared scenario); here it meets the one for the assignment instead. Either
/// way the operator reads, finds its own schedule and adopts it.
#[tokio::test]
async fn a_dropped_pim_reply_met_by_assignment_exists_adopts_the_schedule() {
    let env = TestEnv::new().await;
    let _ = azure_operator();
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
async fn a_principal_that_is_not_an_object_id_fails_clearly() {
    let env = TestEnv::new().await;
    let _ = azure_operator();
    let scope = azure_fake().resource_group(None);
    let policy = azure_policy(&env, &scope, "direct", "alice@example.com", 0).await;
    let created = request(&env, &policy, "10m").await;
    let message = failure_message(&env, &created.name_any()).await;
    assert!(message.contains("not an Entra ID object ID"), "{message}");
    assert_eq!(held(&scope, "direct"), 0);
}
