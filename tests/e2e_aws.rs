//! The AWS provider end to end: the operator (a separate process, `--providers aws`) against a
//! real moto server through its real SDK clients. The shared cloud scenarios
//! (tests/support/clouds.rs) run over its five kinds: made on approval and gone after expiry,
//! an early revoke and deletion, with the inline policy and trust statement expiring at
//! `status.expiresAt` on AWS's side and other trust statements surviving; an inline policy
//! removed by hand is restored; a missing principal and access held outside the operator fail
//! cleanly. Here besides: an unmapped subject, a role changed or refused while active, a
//! widened inline policy, and a ledger tampered with. Crash safety is in e2e_aws_crash.rs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use jit_operator::{
    crd::v1alpha1::{AccessRequest, Phase, annotations},
    provider::aws::documents,
};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use support::{
    ACT_LIMIT, Ending, TestEnv, annotate,
    aws::{
        Fixture, Kind, assignments, aws_block, aws_operator, aws_policy, fixture, held,
        inline_document, original_trust, request, trust,
    },
    clouds::{CloudUnderTest, Standing, cloud_scenarios},
    create_policy, end_request, failure_message, ledger_entry,
    moto::{ACCOUNT, moto},
    phase, random_suffix, wait_for_request,
};

/// AWS under the shared scenarios, in moto: five kinds of grant.
struct Aws;

/// An IAM user, group and role (and Identity Center names) for one kind of grant.
struct Place {
    kind: Kind,
    fixture: Fixture,
}

impl CloudUnderTest for Aws {
    type Kind = Kind;
    type Place = Place;
    const PROVIDER: &'static str = "aws";
    const SHORT: &'static str = "8s";

    fn start_operator(&self) {
        let _ = aws_operator();
    }

    fn kinds(&self) -> Vec<Kind> {
        vec![
            Kind::Inline,
            Kind::Managed,
            Kind::Group,
            Kind::AssumeRole,
            Kind::IdentityCenter,
        ]
    }

    fn cloud_enforced(&self, kind: Kind) -> bool {
        matches!(kind, Kind::Inline | Kind::AssumeRole)
    }

    async fn place(&self, kind: Kind) -> Place {
        Place {
            kind,
            fixture: fixture().await,
        }
    }

    async fn policy(&self, env: &TestEnv, place: &Place, approvals: u32) -> String {
        aws_policy(env, place.kind, &place.fixture, approvals).await
    }

    async fn request(&self, env: &TestEnv, policy: &str, duration: &str) -> AccessRequest {
        request(env, policy, duration).await
    }

    async fn held(&self, place: &Place, uid: &str) -> usize {
        held(place.kind, &place.fixture, uid).await
    }

    async fn check_granted(&self, _env: &TestEnv, place: &Place, active: &AccessRequest) {
        let (fixture, uid) = (&place.fixture, active.uid().unwrap());
        let expires_at = active
            .status
            .as_ref()
            .unwrap()
            .expires_at
            .as_ref()
            .unwrap()
            .0;
        let iam_expiry = documents::iam_time(expires_at);
        match place.kind {
            Kind::Inline => {
                let document = inline_document(fixture, &format!("jit-{uid}"))
                    .await
                    .unwrap();
                let statements = document["Statement"].as_array().unwrap();
                assert_eq!(statements.len(), 2);
                for statement in statements {
                    assert_eq!(
                        statement["Condition"]["DateLessThan"]["aws:CurrentTime"],
                        iam_expiry.as_str(),
                        "AWS stops honouring it at status.expiresAt"
                    );
                }
                assert_eq!(
                    statements[1]["Condition"]["Bool"]["aws:SecureTransport"],
                    "true"
                );
            }
            Kind::AssumeRole => {
                let trust = trust(fixture).await;
                let statements = trust["Statement"].as_array().unwrap();
                assert_eq!(statements.len(), 2, "{trust}");
                assert_eq!(
                    statements[0],
                    original_trust()["Statement"][0],
                    "theirs kept"
                );
                let ours = &statements[1];
                assert_eq!(
                    ours["Principal"]["AWS"],
                    format!("arn:aws:iam::{ACCOUNT}:user/{}", fixture.user)
                );
                assert_eq!(
                    ours["Condition"]["DateLessThan"]["aws:CurrentTime"],
                    iam_expiry.as_str()
                );
                assert_eq!(
                    ours["Condition"]["StringEquals"]["sts:SourceIdentity"],
                    "alice"
                );
            }
            Kind::Managed | Kind::Group | Kind::IdentityCenter => {}
        }
    }

    async fn check_ended(&self, place: &Place, ending: Ending) {
        if place.kind != Kind::AssumeRole {
            return;
        }
        let fixture = &place.fixture;
        assert_eq!(
            trust(fixture).await,
            original_trust(),
            "{ending:?}: trust policy as it was"
        );
        let deny = moto()
            .iam()
            .await
            .get_role_policy()
            .role_name(&fixture.role)
            .policy_name("jit-revoked-alice")
            .send()
            .await
            .unwrap_or_else(|error| panic!("{ending:?}: no session revocation policy: {error:?}"));
        let deny = documents::decode(&deny.policy_document).unwrap();
        let condition = &deny["Statement"][0]["Condition"];
        assert_eq!(condition["StringEquals"]["aws:SourceIdentity"], "alice");
        assert!(condition["DateLessThan"]["aws:TokenIssueTime"].is_string());
    }

    fn repairable(&self) -> Kind {
        Kind::Inline
    }

    async fn snapshot(&self, place: &Place, uid: &str) -> Value {
        json!(inline_document(&place.fixture, &format!("jit-{uid}")).await)
    }

    async fn remove_by_hand(&self, place: &Place, uid: &str) {
        moto()
            .iam()
            .await
            .delete_user_policy()
            .user_name(&place.fixture.user)
            .policy_name(format!("jit-{uid}"))
            .send()
            .await
            .unwrap();
    }

    fn standing_kinds(&self) -> Vec<Kind> {
        vec![Kind::Group]
    }

    async fn hold_by_hand(&self, place: &Place) -> Standing {
        moto()
            .iam()
            .await
            .add_user_to_group()
            .user_name(&place.fixture.user)
            .group_name(&place.fixture.group)
            .send()
            .await
            .unwrap();
        Standing::Refused(vec!["exists already".to_owned()])
    }

    async fn held_by_hand(&self, place: &Place) -> bool {
        // The standing membership is someone else's to end.
        held(place.kind, &place.fixture, "").await == 1
    }

    async fn stranger(&self, env: &TestEnv) -> (Place, String, Vec<String>) {
        let mut place = self.place(Kind::Managed).await;
        place.fixture.user = format!("nobody-{}", random_suffix(6));
        let policy = self.policy(env, &place, 0).await;
        let words = vec!["NoSuchEntity".to_owned(), "attach a policy".to_owned()];
        (place, policy, words)
    }

    async fn check_untouched(&self, place: &Place) {
        let lookup = moto()
            .iam()
            .await
            .get_user()
            .user_name(&place.fixture.user)
            .send()
            .await;
        assert!(lookup.is_err(), "the operator made no IAM user: {lookup:?}");
    }
}

cloud_scenarios!(Aws;
    every_kind_is_granted_on_approval_and_gone_after_expiry_revoke_and_delete,
    a_grant_removed_by_hand_is_restored,
    access_someone_else_holds_is_left_alone,
    a_principal_the_cloud_does_not_know_fails_the_request_with_its_words,
);

#[tokio::test]
async fn an_unmapped_subject_fails_with_the_reason() {
    let env = TestEnv::new().await;
    let _ = aws_operator();
    let fixture = fixture().await;
    let policy = create_policy(
        &env,
        json!({
            "requesters": {"groups": ["devs"]},
            "approvalsRequired": 0,
            "maxDuration": "1h",
            "roles": [{"name": "cloud", "aws": aws_block(Kind::IdentityCenter, &fixture)}],
        }),
    )
    .await;
    let created = request(&env, &policy, "10m").await;
    let message = failure_message(&env, &created.name_any()).await;
    assert!(
        message.contains("alice has no mapping.ssoUserId"),
        "{message}"
    );
    assert!(
        message.contains(&format!("identityMappings in AccessPolicy {policy}")),
        "{message}"
    );
    assert_eq!(assignments(&fixture).await, 0);
}

/// An administrator narrows a role while a grant of it is active: the next look at the grant
/// (drift check) grants what the role says now and revokes what it said before.
#[tokio::test]
async fn a_role_changed_while_active_does_not_leave_the_old_grant_behind() {
    let env = TestEnv::new().await;
    let _ = aws_operator();
    let fixture = fixture().await;
    let policy = aws_policy(&env, Kind::Managed, &fixture, 0).await;
    let created = request(&env, &policy, "30m").await;
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    wait_for_request(&requests, &created.name_any(), "active", |r| {
        phase(r) == Some(Phase::Active)
    })
    .await;
    assert_eq!(
        attached(&fixture).await,
        ["arn:aws:iam::aws:policy/ReadOnlyAccess"]
    );

    let narrower = "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess";
    let policies = Api::<jit_operator::crd::v1alpha1::AccessPolicy>::all(env.admin.clone());
    let patch = json!({"spec": {"roles": [{"name": "cloud", "aws": {
        "principal": format!("arn:aws:iam::{ACCOUNT}:user/{{{{mapping.awsUser}}}}"),
        "policyArn": narrower,
    }}]}});
    policies
        .patch(
            &policy,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let (fixture_ref, narrower_ref) = (&fixture, narrower);
    support::eventually(
        "the role's new policy replaces the old one",
        || async move { (attached(fixture_ref).await == [narrower_ref]).then_some(()) },
    )
    .await;
    end_request(&env, &created.name_any(), Ending::Revoke).await;
    assert!(attached(&fixture).await.is_empty());
}

async fn attached(fixture: &support::aws::Fixture) -> Vec<String> {
    moto()
        .iam()
        .await
        .list_attached_user_policies()
        .user_name(&fixture.user)
        .send()
        .await
        .unwrap()
        .attached_policies()
        .iter()
        .filter_map(|policy| policy.policy_arn().map(str::to_owned))
        .collect()
}

/// Someone rewrites the inline policy wider by hand: the drift check puts back exactly what
/// was granted, with the same expiry. (Removed by hand is a shared scenario.)
#[tokio::test]
async fn an_inline_policy_widened_by_hand_is_restored() {
    let env = TestEnv::new().await;
    let _ = aws_operator();
    let fixture = fixture().await;
    let policy = aws_policy(&env, Kind::Inline, &fixture, 0).await;
    let created = request(&env, &policy, "30m").await;
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    wait_for_request(&requests, &created.name_any(), "active", |r| {
        phase(r) == Some(Phase::Active)
    })
    .await;
    let name = format!("jit-{}", created.uid().unwrap());
    let granted = inline_document(&fixture, &name).await.unwrap();
    let widened = json!({"Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]});
    moto()
        .iam()
        .await
        .put_user_policy()
        .user_name(&fixture.user)
        .policy_name(&name)
        .policy_document(widened.to_string())
        .send()
        .await
        .unwrap();
    let (fixture_ref, name_ref, granted_ref) = (&fixture, &name, &granted);
    support::eventually("restored after widening", || async move {
        (inline_document(fixture_ref, name_ref).await.as_ref() == Some(granted_ref)).then_some(())
    })
    .await;
    support::clouds::assert_repaired(&env, &created.name_any()).await;
}

/// The role is changed to something AWS refuses while a grant of it is active: the request
/// fails, and what it had granted before is still found and revoked, not forgotten.
#[tokio::test]
async fn a_refused_regrant_does_not_strand_the_earlier_grant() {
    let env = TestEnv::new().await;
    let _ = aws_operator();
    let fixture = fixture().await;
    let policy = aws_policy(&env, Kind::Managed, &fixture, 0).await;
    let created = request(&env, &policy, "30m").await;
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    wait_for_request(&requests, &created.name_any(), "active", |r| {
        phase(r) == Some(Phase::Active)
    })
    .await;
    let policies = Api::<jit_operator::crd::v1alpha1::AccessPolicy>::all(env.admin.clone());
    let patch = json!({"spec": {"roles": [{"name": "cloud", "aws": {
        "principal": format!("arn:aws:iam::{ACCOUNT}:user/{{{{mapping.awsUser}}}}"),
        "policyArn": format!("arn:aws:iam::{ACCOUNT}:policy/does-not-exist"),
    }}]}});
    policies
        .patch(
            &policy,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let message = failure_message(&env, &created.name_any()).await;
    assert!(message.contains("NoSuchEntity"), "{message}");
    let fixture_ref = &fixture;
    support::eventually(
        "the earlier attachment is revoked (by the orphan sweep of the failed request)",
        || async move { attached(fixture_ref).await.is_empty().then_some(()) },
    )
    .await;
}

/// Finding 9 of the security review: the grant ledger is ConfigMaps in the operator's
/// namespace, which others may be able to write. A forged entry is never acted on by the
/// sweep; an edited one makes the revoke fail loudly rather than do the wrong thing; a removed
/// one is reported when the grant ends, not silently forgotten.
#[tokio::test]
async fn ledger_entries_forged_edited_or_removed_by_hand_are_never_trusted_silently() {
    use k8s_openapi::api::core::v1::{ConfigMap, Event};
    use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
    use support::LEDGER_NAMESPACE;

    let env = TestEnv::new().await;
    let operator = aws_operator();
    let fixture = fixture().await;
    let policy = aws_policy(&env, Kind::Inline, &fixture, 0).await;
    let created = request(&env, &policy, "30m").await;
    let (name, uid) = (created.name_any(), created.uid().unwrap());
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    wait_for_request(&requests, &name, "active", |r| {
        phase(r) == Some(Phase::Active)
    })
    .await;
    let entry = ledger_entry(&env, &uid).await.unwrap();
    let targets = entry.data.as_ref().unwrap()["targets"].clone();

    // A forged entry for a request that does not exist, naming the real grant: the sweep
    // would revoke it as an orphan, with the operator's own rights, if it trusted the entry.
    let ledger = Api::<ConfigMap>::namespaced(env.admin.clone(), LEDGER_NAMESPACE);
    let forged_uid = format!("00000000-0000-4000-8000-{}", random_suffix(12));
    let forged: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": format!("jit-grant-{forged_uid}"),
            "labels": {"app.kubernetes.io/managed-by": "jit-operator",
                       "jit.dev/request-uid": forged_uid, "jit.dev/provider": "aws"}
        },
        "data": {"targets": targets, "seal": "00".repeat(32)}
    }))
    .unwrap();
    ledger
        .create(&PostParams::default(), &forged)
        .await
        .unwrap();
    operator
        .lock()
        .unwrap()
        .wait_for_log("ignoring a grant ledger entry in the sweep", ACT_LIMIT);
    assert_eq!(held(Kind::Inline, &fixture, &uid).await, 1, "not detached");
    ledger
        .delete(&format!("jit-grant-{forged_uid}"), &DeleteParams::default())
        .await
        .unwrap();

    // The real entry edited: the revoke fails loudly instead of acting on it.
    let patch = json!({"data": {"targets": "[]"}});
    ledger
        .patch(
            &format!("jit-grant-{uid}"),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    annotate(
        &env.alice,
        &env.namespace,
        &name,
        annotations::REVOKE,
        "done",
    )
    .await
    .unwrap();
    let failing = wait_for_request(&requests, &name, "revocation failing", |r| {
        support::condition_true(r, "RevocationFailing")
    })
    .await;
    let condition = failing
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "RevocationFailing")
        .unwrap();
    assert!(
        condition
            .message
            .contains("was not written by the operator"),
        "{}",
        condition.message
    );
    assert_eq!(held(Kind::Inline, &fixture, &uid).await, 1);

    // Removed: the request ends, and says loudly that the operator lost track of the grant.
    ledger
        .delete(&format!("jit-grant-{uid}"), &DeleteParams::default())
        .await
        .unwrap();
    wait_for_request(&requests, &name, "revoked", |r| {
        phase(r) == Some(Phase::Revoked)
    })
    .await;
    let events = Api::<Event>::namespaced(env.admin.clone(), &env.namespace);
    let deadline = tokio::time::Instant::now() + ACT_LIMIT;
    loop {
        let found = events
            .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|event| event.reason.as_deref() == Some("GrantRecordMissing"));
        if let Some(event) = found {
            assert_eq!(event.type_.as_deref(), Some("Warning"));
            assert!(
                event
                    .message
                    .unwrap_or_default()
                    .contains("remove it by hand")
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no GrantRecordMissing Event"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
