//! The end-to-end scenarios every cloud target passes, written once. Each `e2e_<cloud>` file
//! implements [`CloudUnderTest`] over its server (moto for AWS, the project's fakes of Google
//! and Azure) and runs these with [`cloud_scenarios!`]; what only one cloud does stays in its
//! own file.

use std::fmt::Debug;

use jit_operator::crd::v1alpha1::{AccessRequest, Phase, annotations};
use kube::{Api, ResourceExt};
use serde_json::Value;

use super::{
    Ending, TestEnv, annotate, end_request, eventually, failure_message, ledger_entry, phase,
    wait_for_request,
};

/// What a cloud does when the subject already holds the role, granted by someone else.
pub enum Standing {
    /// The request fails with a message holding all of these words, and theirs stays.
    Refused(Vec<String>),
    /// Ours is made beside theirs (it is told apart by the request), and theirs outlives ours.
    Beside,
}

/// A cloud as the scenarios see it: where to grant, what a policy for it looks like, and what
/// the cloud holds.
#[allow(async_fn_in_trait)]
pub trait CloudUnderTest: Sync {
    /// One kind of grant the cloud makes (AWS's five, Azure's direct and PIM).
    type Kind: Copy + Debug + Sync;
    /// A fresh place to grant on, made per scenario: IAM fixtures, a project, a resource group.
    type Place: Sync;
    /// What `status.grant.provider` says.
    const PROVIDER: &'static str;
    /// A duration short enough to watch the grant expire, long enough to see it granted.
    const SHORT: &'static str;

    /// Starts this test binary's operator for the cloud if it is not running.
    fn start_operator(&self);
    fn kinds(&self) -> Vec<Self::Kind>;
    /// Whether the cloud itself ends this kind of grant at `status.expiresAt`.
    fn cloud_enforced(&self, kind: Self::Kind) -> bool;
    async fn place(&self, kind: Self::Kind) -> Self::Place;
    /// A policy whose one role grants on `place` to alice, needing `approvals`.
    async fn policy(&self, env: &TestEnv, place: &Self::Place, approvals: u32) -> String;
    /// Alice requests the policy's role.
    async fn request(&self, env: &TestEnv, policy: &str, duration: &str) -> AccessRequest;
    /// How many grants of the place's role the cloud holds for the request.
    async fn held(&self, place: &Self::Place, uid: &str) -> usize;
    /// Checks, in the cloud's own terms, what it holds for an active request.
    async fn check_granted(&self, env: &TestEnv, place: &Self::Place, active: &AccessRequest);
    /// Checks, in the cloud's own terms, what is left once the request ended.
    async fn check_ended(&self, place: &Self::Place, ending: Ending);
    /// The kind whose grant an administrator removes by hand in the drift scenario.
    fn repairable(&self) -> Self::Kind;
    /// The grant as the cloud holds it, to compare before and after a repair.
    async fn snapshot(&self, place: &Self::Place, uid: &str) -> Value;
    /// Removes the grant as an administrator would, outside the operator.
    async fn remove_by_hand(&self, place: &Self::Place, uid: &str);
    /// The kinds an administrator can also grant by hand.
    fn standing_kinds(&self) -> Vec<Self::Kind>;
    /// Gives alice the place's role by hand; says what the operator will do about it.
    async fn hold_by_hand(&self, place: &Self::Place) -> Standing;
    /// Whether the access given by hand is still there.
    async fn held_by_hand(&self, place: &Self::Place) -> bool;
    /// A place, a policy naming a principal the cloud does not know, and the words of the
    /// cloud's refusal.
    async fn stranger(&self, env: &TestEnv) -> (Self::Place, String, Vec<String>);
    /// Checks that a refused grant left the place as it was.
    async fn check_untouched(&self, place: &Self::Place);
}

/// A cloud whose fake can fail on purpose and refuses places the operator may not touch.
#[allow(async_fn_in_trait)]
pub trait FaultyCloud: CloudUnderTest {
    type Fault;
    fn inject(&self, place: &Self::Place, faults: &[Self::Fault]);
    fn pending_faults(&self, place: &Self::Place) -> usize;
    /// Writes that took effect at the place.
    fn writes(&self, place: &Self::Place) -> usize;
    /// Failures a retry gets through: throttling, conflicts, server errors.
    fn transient_faults(&self) -> Vec<Self::Fault>;
    /// A write that takes effect but whose reply is lost.
    fn dropped_reply(&self) -> Self::Fault;
    /// Checks how the retries after [`Self::transient_faults`] went.
    fn check_retries(&self, place: &Self::Place);
    /// A policy for a place the operator may not touch, and the words of the cloud's refusal.
    async fn forbidden(&self, env: &TestEnv) -> (String, Vec<String>);
}

/// One `#[tokio::test]` per named scenario, over the given cloud. (Only the cloud test
/// binaries use it; the others compile this module too.)
#[allow(unused_macros)]
macro_rules! cloud_scenarios {
    ($cloud:expr; $($scenario:ident),+ $(,)?) => {$(
        #[tokio::test]
        async fn $scenario() {
            support::clouds::$scenario(&$cloud).await;
        }
    )+};
}
#[allow(unused_imports)]
pub(crate) use cloud_scenarios;

fn requests(env: &TestEnv) -> Api<AccessRequest> {
    Api::namespaced(env.admin.clone(), &env.namespace)
}

async fn until_active(env: &TestEnv, name: &str) -> AccessRequest {
    wait_for_request(&requests(env), name, "active", |r| {
        phase(r) == Some(Phase::Active)
    })
    .await
}

fn assert_says(message: &str, words: &[String], what: &str) {
    for word in words {
        assert!(message.contains(word.as_str()), "{what}: {message}");
    }
}

/// Every kind, approved by bob, then ended by expiry, revoke and delete; checks the cloud and
/// the ledger at each step.
pub async fn every_kind_is_granted_on_approval_and_gone_after_expiry_revoke_and_delete<
    C: CloudUnderTest,
>(
    cloud: &C,
) {
    let env = TestEnv::new().await;
    cloud.start_operator();
    let cases = cloud.kinds().into_iter().flat_map(|kind| {
        [Ending::Expiry, Ending::Revoke, Ending::Delete].map(move |ending| (kind, ending))
    });
    futures::future::join_all(cases.map(|(kind, ending)| lifecycle(cloud, &env, kind, ending)))
        .await;
}

async fn lifecycle<C: CloudUnderTest>(cloud: &C, env: &TestEnv, kind: C::Kind, ending: Ending) {
    let what = format!("{kind:?}/{ending:?}");
    let place = cloud.place(kind).await;
    let policy = cloud.policy(env, &place, 1).await;
    let duration = if ending == Ending::Expiry {
        C::SHORT
    } else {
        "30m"
    };
    let created = cloud.request(env, &policy, duration).await;
    let (name, uid) = (created.name_any(), created.uid().unwrap());
    assert_eq!(
        cloud.held(&place, &uid).await,
        0,
        "{what}: nothing before approval"
    );

    annotate(&env.bob, &env.namespace, &name, annotations::APPROVE, "ok")
        .await
        .unwrap();
    let active = until_active(env, &name).await;
    assert_eq!(cloud.held(&place, &uid).await, 1, "{what}: granted once");
    let grant = active.status.as_ref().unwrap().grant.as_ref().unwrap();
    assert_eq!(grant.provider, C::PROVIDER, "{what}");
    assert_eq!(
        grant.cloud_enforced_expiry,
        cloud.cloud_enforced(kind),
        "{what}: whether the cloud ends it by itself"
    );
    assert!(
        ledger_entry(env, &uid).await.is_some(),
        "{what}: recorded in the ledger"
    );
    cloud.check_granted(env, &place, &active).await;

    end_request(env, &name, ending).await;
    assert_eq!(
        cloud.held(&place, &uid).await,
        0,
        "{what}: gone after the end"
    );
    assert!(
        ledger_entry(env, &uid).await.is_none(),
        "{what}: ledger entry removed"
    );
    cloud.check_ended(&place, ending).await;
}

/// Grants with no approval needed and waits until active; returns the request's name and uid.
async fn granted<C: CloudUnderTest>(
    cloud: &C,
    env: &TestEnv,
    place: &C::Place,
    duration: &str,
) -> (String, String) {
    let policy = cloud.policy(env, place, 0).await;
    let created = cloud.request(env, &policy, duration).await;
    until_active(env, &created.name_any()).await;
    (created.name_any(), created.uid().unwrap())
}

/// An administrator removes the grant by hand: the drift check puts back exactly what was
/// granted, and the timeline says so.
pub async fn a_grant_removed_by_hand_is_restored<C: CloudUnderTest>(cloud: &C) {
    let env = TestEnv::new().await;
    cloud.start_operator();
    let place = cloud.place(cloud.repairable()).await;
    let (name, uid) = granted(cloud, &env, &place, "30m").await;
    let before = cloud.snapshot(&place, &uid).await;
    cloud.remove_by_hand(&place, &uid).await;
    let (place_ref, uid_ref, before_ref) = (&place, &uid, &before);
    eventually(
        "the drift check restores the grant as it was",
        || async move { (cloud.snapshot(place_ref, uid_ref).await == *before_ref).then_some(()) },
    )
    .await;
    assert_repaired(&env, &name).await;
}

/// Checks that the request's timeline says its grant was repaired.
pub async fn assert_repaired(env: &TestEnv, name: &str) {
    let repaired = requests(env).get(name).await.unwrap();
    assert!(
        repaired
            .status
            .unwrap()
            .timeline
            .iter()
            .any(|entry| entry.event == "Repaired"),
        "the timeline says the grant was repaired"
    );
}

/// Access the subject holds already, granted by someone else, is never taken over: ending
/// our grant never ends theirs.
pub async fn access_someone_else_holds_is_left_alone<C: CloudUnderTest>(cloud: &C) {
    let env = TestEnv::new().await;
    cloud.start_operator();
    for kind in cloud.standing_kinds() {
        let place = cloud.place(kind).await;
        let standing = cloud.hold_by_hand(&place).await;
        let policy = cloud.policy(&env, &place, 0).await;
        let created = cloud.request(&env, &policy, "10m").await;
        let name = created.name_any();
        match standing {
            Standing::Refused(words) => {
                let message = failure_message(&env, &name).await;
                assert_says(&message, &words, &format!("{kind:?}"));
            }
            Standing::Beside => {
                until_active(&env, &name).await;
                let uid = created.uid().unwrap();
                assert_eq!(cloud.held(&place, &uid).await, 1, "{kind:?}: ours made");
                end_request(&env, &name, Ending::Revoke).await;
                assert_eq!(cloud.held(&place, &uid).await, 0, "{kind:?}: ours gone");
            }
        }
        assert!(
            cloud.held_by_hand(&place).await,
            "{kind:?}: theirs is still there"
        );
    }
}

/// The cloud refuses the principal: the request fails with the cloud's own words, nothing is
/// granted and nothing stays in the ledger.
pub async fn a_principal_the_cloud_does_not_know_fails_the_request_with_its_words<
    C: CloudUnderTest,
>(
    cloud: &C,
) {
    let env = TestEnv::new().await;
    cloud.start_operator();
    let (place, policy, words) = cloud.stranger(&env).await;
    let created = cloud.request(&env, &policy, "10m").await;
    let message = failure_message(&env, &created.name_any()).await;
    assert_says(&message, &words, "the refusal");
    assert!(
        ledger_entry(&env, &created.uid().unwrap()).await.is_none(),
        "a refused attempt is forgotten"
    );
    cloud.check_untouched(&place).await;
}

/// The operator may not touch the place: the request fails with the cloud's own words.
pub async fn a_place_the_operator_may_not_touch_fails_the_request_with_the_clouds_words<
    C: FaultyCloud,
>(
    cloud: &C,
) {
    let env = TestEnv::new().await;
    cloud.start_operator();
    let (policy, words) = cloud.forbidden(&env).await;
    let created = cloud.request(&env, &policy, "10m").await;
    let message = failure_message(&env, &created.name_any()).await;
    assert_says(&message, &words, "the refusal");
}

/// Grants each kind with `faults` queued, and checks every fault was met and the grant was
/// made once, with one write.
async fn granted_through<C: FaultyCloud>(
    cloud: &C,
    env: &TestEnv,
    faults: impl Fn() -> Vec<C::Fault>,
) -> Vec<C::Place> {
    let mut places = Vec::new();
    for kind in cloud.kinds() {
        let place = cloud.place(kind).await;
        cloud.inject(&place, &faults());
        let (_, uid) = granted(cloud, env, &place, "30m").await;
        assert_eq!(cloud.pending_faults(&place), 0, "{kind:?}: every fault met");
        assert_eq!(cloud.held(&place, &uid).await, 1, "{kind:?}: one grant");
        assert_eq!(cloud.writes(&place), 1, "{kind:?}: written once");
        places.push(place);
    }
    places
}

/// Throttling, conflicts and server errors are retried until the grant is made, once.
pub async fn throttling_conflicts_and_server_errors_are_retried<C: FaultyCloud>(cloud: &C) {
    let env = TestEnv::new().await;
    cloud.start_operator();
    for place in granted_through(cloud, &env, || cloud.transient_faults()).await {
        cloud.check_retries(&place);
    }
}

/// A write took effect but its reply was lost: the retry reads it back and adopts it, and
/// writes nothing more.
pub async fn a_retry_after_a_dropped_reply_adopts_instead_of_duplicating<C: FaultyCloud>(
    cloud: &C,
) {
    let env = TestEnv::new().await;
    cloud.start_operator();
    granted_through(cloud, &env, || vec![cloud.dropped_reply()]).await;
}
