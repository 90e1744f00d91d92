//! Property tests of `decide` (proptest-state-machine): random sequences of approvals,
//! denials (by anyone, eligible or not), revokes, deletion, policy edits, clock jumps and
//! provider failures, each followed by reconciles applied as the driver would. After every
//! step: no grant outlives its expiry, final phases are never left, nobody is granted on
//! their own approval, expiry never moves, and every grant has a live request.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

use super::*;
use crate::{
    crd::v1alpha1::IntentAction,
    request_controller::{apply, outcome},
};
use crate::{
    crd::{ApiDuration, v1alpha1::annotations},
    fixtures::{self, at},
    provider::GrantState,
};

/// People who act: alice is the requester and subject; bob is an approver by name, carol by
/// group; mallory is nobody; dave becomes an approver only through a policy edit.
const PEOPLE: [(&str, &[&str]); 5] = [
    ("alice", &["devs"]),
    ("bob", &[]),
    ("carol", &["approvers"]),
    ("mallory", &[]),
    ("dave", &[]),
];

#[derive(Clone, Copy, Debug)]
enum PolicyEdit {
    /// The role is removed from the policy.
    RemoveRole,
    /// The policy is deleted.
    DeletePolicy,
    /// Approvals required set to this.
    Require(i32),
    /// The maximum drops to 30m.
    LowerMax,
    /// alice becomes an approver (her own approvals must still not count).
    AliceApproves,
    /// dave becomes an approver.
    DaveApproves,
    /// bob is no longer an approver.
    DropBob,
}

/// How the provider answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProviderMode {
    /// Everything works.
    Works,
    /// Grants and revokes fail, and may pass later (throttled, 5xx).
    Fails,
    /// Grants are refused for good (no permission); revokes work.
    RefusesGrants,
}

#[derive(Clone, Debug)]
enum Step {
    Approve(usize),
    Deny(usize),
    Revoke(usize),
    Delete,
    Edit(PolicyEdit),
    /// Seconds forward.
    Clock(u32),
    Provider(ProviderMode),
    Reconcile,
}

struct Model;

impl ReferenceStateMachine for Model {
    type State = ();
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Self::State> {
        Just(()).boxed()
    }

    fn transitions(_: &Self::State) -> BoxedStrategy<Self::Transition> {
        let person = 0..PEOPLE.len();
        let edit = prop_oneof![
            Just(PolicyEdit::RemoveRole),
            Just(PolicyEdit::DeletePolicy),
            (0..3i32).prop_map(PolicyEdit::Require),
            Just(PolicyEdit::LowerMax),
            Just(PolicyEdit::AliceApproves),
            Just(PolicyEdit::DaveApproves),
            Just(PolicyEdit::DropBob),
        ];
        prop_oneof![
            3 => person.clone().prop_map(Step::Approve),
            1 => person.clone().prop_map(Step::Deny),
            1 => person.prop_map(Step::Revoke),
            1 => Just(Step::Delete),
            1 => edit.prop_map(Step::Edit),
            2 => prop_oneof![0..120u32, 0..8000u32].prop_map(Step::Clock),
            1 => prop_oneof![
                Just(ProviderMode::Works),
                Just(ProviderMode::Fails),
                Just(ProviderMode::RefusesGrants),
            ]
            .prop_map(Step::Provider),
            6 => Just(Step::Reconcile),
        ]
        .boxed()
    }

    fn apply(state: Self::State, _: &Self::Transition) -> Self::State {
        state
    }
}

/// The world as the driver and the API server would leave it.
struct World {
    request: AccessRequest,
    policy: Option<AccessPolicy>,
    now: Timestamp,
    grant_exists: bool,
    gone: bool,
    provider: ProviderMode,
    first_final: Option<Phase>,
    expires_at: Option<Timestamp>,
}

fn person(index: usize) -> (&'static str, Vec<String>) {
    let (name, groups) = PEOPLE[index % PEOPLE.len()];
    (name, groups.iter().map(|group| group.to_string()).collect())
}

impl World {
    fn new() -> Self {
        let mut request = fixtures::request();
        request.status = None;
        Self {
            request,
            policy: Some(fixtures::policy()),
            now: at("2026-01-01T00:00:10Z"),
            grant_exists: false,
            gone: false,
            provider: ProviderMode::Works,
            first_final: None,
            expires_at: None,
        }
    }

    fn annotations(&mut self) -> &mut std::collections::BTreeMap<String, String> {
        self.request
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
    }

    fn decide(&mut self, index: usize, decision: Decision) {
        let (user, groups) = person(index);
        let mut records = super::decisions(&self.request).unwrap_or_default();
        if records.iter().any(|record| record.user == user) {
            return;
        }
        records.push(Approval {
            seal: None,
            user: user.into(),
            groups,
            decision,
            time: Time(self.now),
            comment: None,
        });
        let text = serde_json::to_string(&records).unwrap_or_default();
        self.annotations()
            .insert(annotations::DECISIONS.into(), text);
    }

    fn edit(&mut self, edit: PolicyEdit) {
        let Some(policy) = self.policy.as_mut() else {
            return;
        };
        let spec = &mut policy.spec;
        match edit {
            PolicyEdit::RemoveRole => spec.roles.retain(|role| role.name != "view"),
            PolicyEdit::DeletePolicy => self.policy = None,
            PolicyEdit::Require(count) => spec.approvals_required = count,
            PolicyEdit::LowerMax => spec.max_duration = ApiDuration::parse("30m").unwrap(),
            PolicyEdit::AliceApproves => spec.approvers.users.push("alice".into()),
            PolicyEdit::DaveApproves => spec.approvers.users.push("dave".into()),
            PolicyEdit::DropBob => spec.approvers.users.retain(|user| user != "bob"),
        }
    }

    /// One reconcile, applied the way the driver applies a plan.
    fn reconcile(&mut self) {
        if self.gone {
            return;
        }
        let active = self.request.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active);
        let observed = Observed {
            request: self.request.clone(),
            policy: self.policy.clone(),
            grant: active.then_some(if self.grant_exists {
                GrantState::Present
            } else {
                GrantState::Missing
            }),
            unverified: None,
            // Every record here is admission's (the forgeries are unit-tested apart).
            decisions: crate::request_controller::decide::decisions(&self.request)
                .unwrap_or_default(),
            forged: Vec::new(),
            window_sealed: true,
            policy_unreadable: None,
            policy_cached: false,
        };
        let before = self.request.status.clone().unwrap_or_default();
        let plan = decide(&observed, self.now);
        if plan.finalizer == FinalizerChange::Add {
            self.request.metadata.finalizers = Some(vec![FINALIZER.into()]);
        }
        // As the driver: the intent written, the effect applied, then `outcome`.
        let uid = self.request.metadata.uid.clone().unwrap_or_default();
        let written = match &plan.effect {
            Effect::None => before.clone(),
            Effect::Grant { .. } => {
                outcome::with_intent(&before, &plan, IntentAction::Grant, &uid, self.now)
            }
            Effect::Revoke => {
                outcome::with_intent(&before, &plan, IntentAction::Revoke, &uid, self.now)
            }
        };
        let failed = |grant: bool| {
            let cause = crate::provider::Error::cloud(
                crate::target::Target::Aws,
                "act",
                "throttled",
                crate::provider::Failure::Throttled { retry_after: None },
            );
            if grant {
                apply::Error::Grant(cause)
            } else {
                apply::Error::Revoke(cause)
            }
        };
        let result: Result<apply::Applied, apply::Error> = match (&plan.effect, self.provider) {
            (Effect::None, _) => Ok(apply::Applied::default()),
            (Effect::Grant { .. }, ProviderMode::Fails) => Err(failed(true)),
            (Effect::Revoke, ProviderMode::Fails) => Err(failed(false)),
            (Effect::Grant { .. }, ProviderMode::RefusesGrants) => {
                // apply revokes what a refused grant may have left.
                self.grant_exists = false;
                Err(apply::Error::Grant(crate::provider::Error::Invalid {
                    message: "forbidden".into(),
                }))
            }
            (Effect::Grant { .. }, ProviderMode::Works) => {
                self.grant_exists = true;
                Ok(apply::Applied {
                    grant: Some(crate::provider::GrantRecord {
                        target: crate::target::Target::Kubernetes,
                        reference: "RoleBinding team/jit".into(),
                        cloud_enforced_expiry: false,
                        activity_lookup: None,
                    }),
                    unaccounted: None,
                })
            }
            (Effect::Revoke, ProviderMode::Works | ProviderMode::RefusesGrants) => {
                self.grant_exists = false;
                Ok(apply::Applied::default())
            }
        };
        let done = outcome::outcome(plan, &written, result.as_ref(), &uid, self.now);
        self.check_transition(&before, &done.status);
        self.request.status = Some(done.status.clone());
        if done.release {
            self.request.metadata.finalizers = None;
            if self.request.metadata.deletion_timestamp.is_some() {
                self.gone = true;
            }
        }
        let revoke_failing = crate::request_controller::conditions::is_true(
            &done.status.conditions,
            crate::request_controller::conditions::REVOCATION_FAILING,
        );
        if revoke_failing {
            // Loud, and retried by its backoff: the grant may outlive its time meanwhile.
            return;
        }
        // After a reconcile that went through, a grant exists only for an active request
        // whose time is not up.
        if self.grant_exists {
            let status = self.request.status.clone().unwrap_or_default();
            assert_eq!(
                status.phase,
                Some(Phase::Active),
                "a grant without an active request"
            );
            let expires_at = status.expires_at.map(|time| time.0);
            assert!(
                expires_at.is_some_and(|expires_at| self.now < expires_at),
                "a grant outlives its expiry {expires_at:?} at {}",
                self.now
            );
        }
    }

    /// Checks one status change against the model's own reading of the policy.
    fn check_transition(&mut self, before: &AccessRequestStatus, after: &AccessRequestStatus) {
        if let Some(phase) = self.first_final {
            assert_eq!(after.phase, Some(phase), "left the final phase {phase:?}");
        }
        if let Some(phase) = after.phase.filter(|phase| phase.is_final()) {
            self.first_final.get_or_insert(phase);
        }
        let expires_at = after.expires_at.as_ref().map(|time| time.0);
        // A refused grant clears the window it never used; nothing else moves it.
        let refused = after.phase == Some(Phase::Failed) && before.phase != Some(Phase::Active);
        if let Some(earlier) = self.expires_at.filter(|_| !refused) {
            assert_eq!(expires_at, Some(earlier), "expiresAt moved");
        }
        if self.expires_at.is_none() {
            self.expires_at = expires_at;
        }
        let became_active =
            before.phase != Some(Phase::Active) && after.phase == Some(Phase::Active);
        if became_active {
            let Some(policy) = &self.policy else {
                panic!("granted without a policy");
            };
            let required = policy
                .spec
                .roles
                .iter()
                .find(|role| role.name == "view")
                .map(|role| {
                    role.approvals_required
                        .unwrap_or(policy.spec.approvals_required)
                })
                .unwrap_or_else(|| panic!("granted a role the policy no longer offers"));
            // The model's own count: approvals by listed approvers other than alice.
            let records = super::decisions(&self.request).unwrap_or_default();
            let eligible = records
                .iter()
                .filter(|record| record.decision == Decision::Approved && record.user != "alice")
                .filter(|record| {
                    policy.spec.approvers.users.contains(&record.user)
                        || record
                            .groups
                            .iter()
                            .any(|group| policy.spec.approvers.groups.contains(group))
                })
                .count();
            let denied = records.iter().any(|record| {
                record.decision == Decision::Denied
                    && record.user != "alice"
                    && (policy.spec.approvers.users.contains(&record.user)
                        || record
                            .groups
                            .iter()
                            .any(|group| policy.spec.approvers.groups.contains(group)))
            });
            assert!(!denied, "granted despite a denial");
            assert!(
                eligible as i32 >= required,
                "granted with {eligible} eligible approvals of {required} (alice never counts)"
            );
        }
    }
}

struct DecideUnderTest;

impl StateMachineTest for DecideUnderTest {
    type SystemUnderTest = World;
    type Reference = Model;

    fn init_test(_: &()) -> World {
        World::new()
    }

    fn apply(mut world: World, _: &(), step: Step) -> World {
        match step {
            Step::Approve(index) => world.decide(index, Decision::Approved),
            Step::Deny(index) => world.decide(index, Decision::Denied),
            Step::Revoke(index) => {
                let (user, _) = person(index);
                let record =
                    serde_json::to_string(&fixtures::revocation(user, "2026-01-01T00:00:00Z"))
                        .unwrap_or_default();
                world
                    .annotations()
                    .entry(annotations::REVOCATION.into())
                    .or_insert(record);
            }
            Step::Delete => {
                if world
                    .request
                    .metadata
                    .finalizers
                    .as_ref()
                    .is_some_and(|f| !f.is_empty())
                {
                    world.request.metadata.deletion_timestamp = Some(Time(world.now));
                } else {
                    // Without the finalizer the API server deletes it at once.
                    world.gone = true;
                }
            }
            Step::Edit(edit) => world.edit(edit),
            Step::Clock(seconds) => {
                world.now = world
                    .now
                    .checked_add(SignedDuration::from_secs(i64::from(seconds)))
                    .unwrap_or(world.now);
            }
            Step::Provider(mode) => world.provider = mode,
            Step::Reconcile => world.reconcile(),
        }
        world
    }

    fn check_invariants(world: &World, _: &()) {
        assert!(
            !(world.gone && world.grant_exists),
            "a grant outlived its request"
        );
    }

    fn teardown(mut world: World, _: ()) {
        // With the provider back, the operator settles everything: time runs out, and what
        // holds a grant gives it up by its expiry.
        world.provider = ProviderMode::Works;
        for _ in 0..4 {
            world.reconcile();
        }
        // Past the expiry, and past any backoff a failing revoke is waiting out.
        let settled = |time: Timestamp| {
            time.checked_add(crate::retry::MAX_BACKOFF + Duration::from_secs(1))
                .unwrap_or(time)
        };
        if let Some(expires_at) = world.expires_at {
            world.now = settled(expires_at.max(world.now));
        } else {
            world.now = world
                .now
                .checked_add(Duration::from_secs(2 * 3600))
                .unwrap_or(world.now);
        }
        for _ in 0..4 {
            world.reconcile();
        }
        assert!(!world.grant_exists, "a grant survived past its expiry");
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn decide_keeps_its_promises(sequential 1..60 => DecideUnderTest);
}
