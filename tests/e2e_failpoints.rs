//! Crash-safety: the operator (built with the `failpoints` feature) is made to abort between
//! each pair of steps of a grant and a revoke, then restarted without failpoints. Whatever the
//! moment of the crash, the end state is exactly what status describes: one binding for an
//! active request, none for an ended or deleted one, and no intent left open.
//!
//! Crash points (`<grant|revoke>-<step>`): `before-effect` (intent written, provider not yet
//! called), `after-effect` (provider done, status not yet written), `after-status` (status
//! written, finalizer not yet removed), `after-finalizer` (finalizer removed).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use jit_operator::crd::v1alpha1::{AccessRequest, IntentAction, Phase};
use kube::{Api, ResourceExt, api::DeleteParams};
use support::{
    ACT_LIMIT, TestEnv, bindings_of, condition_true, operator::Operator, phase, random_suffix,
    request_view, view_policy, wait_for_request,
};

/// How the request is ended in a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// It stays active.
    None,
    /// Its time runs out.
    Expiry,
    /// It is deleted while active.
    Delete,
}

struct Scenario {
    failpoint: &'static str,
    ending: Ending,
}

async fn create_request(env: &TestEnv, duration: &str) -> AccessRequest {
    let policy = view_policy(env, 0).await;
    request_view(
        env,
        &format!("crash-{}", random_suffix(6)),
        &policy,
        duration,
    )
    .await
}

async fn run(scenario: &Scenario) {
    let env = TestEnv::new().await;
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    let mut crashing = Operator::start_with(
        "jit-operator",
        &[("FAILPOINTS", &format!("{}=return", scenario.failpoint))],
    );
    let duration = if scenario.ending == Ending::Expiry {
        "3s"
    } else {
        "30m"
    };
    let created = create_request(&env, duration).await;
    let name = created.name_any();
    let uid = created.uid().unwrap();

    if scenario.ending == Ending::Delete {
        wait_for_request(&requests, &name, "granted", |r| {
            condition_true(r, "Granted")
        })
        .await;
        requests
            .delete(&name, &DeleteParams::default())
            .await
            .unwrap();
    }
    crashing.wait_for_exit(ACT_LIMIT);
    let log = std::fs::read_to_string(&crashing.log).unwrap();
    assert!(
        log.contains(&format!("\"failpoint\":\"{}\"", scenario.failpoint)),
        "{}: the operator exited, but not at its failpoint; see {}",
        scenario.failpoint,
        crashing.log.display()
    );
    drop(crashing);

    // What the crash left behind.
    let left = requests.get_opt(&name).await.unwrap();
    let status = left
        .as_ref()
        .and_then(|request| request.status.clone())
        .unwrap_or_default();
    let intent = status.intent.as_ref().map(|intent| intent.action);
    match scenario.failpoint {
        "grant-before-effect" => {
            assert_eq!(
                intent,
                Some(IntentAction::Grant),
                "intent recorded before the grant"
            );
            assert_eq!(
                bindings_of(&env, &uid).await.len(),
                0,
                "nothing granted yet"
            );
        }
        "grant-after-effect" => {
            assert_eq!(intent, Some(IntentAction::Grant));
            assert_ne!(status.phase, Some(Phase::Active), "status not yet written");
            assert_eq!(bindings_of(&env, &uid).await.len(), 1, "the grant was made");
        }
        "grant-after-status" => {
            assert_eq!(intent, None);
            assert_eq!(status.phase, Some(Phase::Active));
        }
        "revoke-before-effect" => {
            assert_eq!(
                intent,
                Some(IntentAction::Revoke),
                "intent recorded before the revoke"
            );
            assert_eq!(bindings_of(&env, &uid).await.len(), 1, "not yet revoked");
        }
        "revoke-after-effect" => {
            assert_eq!(intent, Some(IntentAction::Revoke));
            assert_eq!(bindings_of(&env, &uid).await.len(), 0, "revoked");
            assert_eq!(status.phase, Some(Phase::Active), "status not yet written");
        }
        "revoke-after-status" => {
            assert!(status.phase.is_some_and(Phase::is_final));
            assert!(
                left.as_ref().is_some_and(|r| !r.finalizers().is_empty()),
                "finalizer still held"
            );
        }
        "revoke-after-finalizer" => {}
        other => panic!("unknown failpoint {other}"),
    }

    // Restart without failpoints: it converges to exactly what status says.
    let _operator = Operator::start("jit-operator");
    match scenario.ending {
        Ending::None => {
            let active = wait_for_request(&requests, &name, "granted with no open intent", |r| {
                condition_true(r, "Granted")
                    && r.status.as_ref().is_some_and(|s| s.intent.is_none())
            })
            .await;
            assert_eq!(phase(&active), Some(Phase::Active));
            assert_eq!(
                bindings_of(&env, &uid).await.len(),
                1,
                "{}: exactly one grant",
                scenario.failpoint
            );
        }
        Ending::Expiry => {
            let expired = wait_for_request(&requests, &name, "expired and released", |r| {
                phase(r) == Some(Phase::Expired) && r.finalizers().is_empty()
            })
            .await;
            assert!(expired.status.unwrap().intent.is_none());
            assert_eq!(
                bindings_of(&env, &uid).await.len(),
                0,
                "{}: no grant",
                scenario.failpoint
            );
        }
        Ending::Delete => {
            let gone = async {
                while requests.get_opt(&name).await.unwrap().is_some() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            tokio::time::timeout(ACT_LIMIT, gone)
                .await
                .unwrap_or_else(|_| panic!("{}: request not deleted", scenario.failpoint));
            assert_eq!(
                bindings_of(&env, &uid).await.len(),
                0,
                "{}: no grant",
                scenario.failpoint
            );
        }
    }
}

/// One test, scenarios in turn: each needs the cluster's only operator to itself.
#[tokio::test]
async fn a_crash_between_any_two_steps_leaves_exactly_what_status_says() {
    let scenarios = [
        Scenario {
            failpoint: "grant-before-effect",
            ending: Ending::None,
        },
        Scenario {
            failpoint: "grant-after-effect",
            ending: Ending::None,
        },
        Scenario {
            failpoint: "grant-after-status",
            ending: Ending::None,
        },
        Scenario {
            failpoint: "revoke-before-effect",
            ending: Ending::Expiry,
        },
        Scenario {
            failpoint: "revoke-after-effect",
            ending: Ending::Expiry,
        },
        Scenario {
            failpoint: "revoke-after-status",
            ending: Ending::Expiry,
        },
        Scenario {
            failpoint: "revoke-before-effect",
            ending: Ending::Delete,
        },
        Scenario {
            failpoint: "revoke-after-effect",
            ending: Ending::Delete,
        },
        Scenario {
            failpoint: "revoke-after-status",
            ending: Ending::Delete,
        },
        Scenario {
            failpoint: "revoke-after-finalizer",
            ending: Ending::Delete,
        },
    ];
    for scenario in &scenarios {
        eprintln!("failpoint {} ({:?})", scenario.failpoint, scenario.ending);
        run(scenario).await;
    }
}
