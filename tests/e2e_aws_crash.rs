//! Crash safety of the AWS provider: the operator aborts right after the AWS call, before it
//! records the grant in status; the next operator adopts what is there instead of making it a
//! second time, and still revokes it. A binary of its own: it runs its own operators, and no
//! other operator may act on its requests meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use jit_operator::crd::v1alpha1::{AccessRequest, Phase};
use kube::{Api, ResourceExt};
use support::{
    ACT_LIMIT, Ending, TestEnv,
    aws::{Kind, aws_policy, fixture, held, request, start_operator},
    end_request, phase, wait_for_request,
};

/// The operator crashes right after the AWS call and before recording it; the next one
/// adopts what is there instead of making it twice, and revokes it at the end.
#[tokio::test]
async fn a_grant_repeated_after_a_crash_adopts_instead_of_duplicating() {
    let env = TestEnv::new().await;
    for kind in [Kind::IdentityCenter, Kind::AssumeRole, Kind::Inline] {
        let fixture = fixture().await;
        let policy = aws_policy(&env, kind, &fixture, 0).await;
        let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
        let mut crashing = start_operator(&[("FAILPOINTS", "grant-after-effect=return")]);
        let created = request(&env, &policy, "30m").await;
        let uid = created.uid().unwrap();
        crashing.wait_for_exit(ACT_LIMIT);
        drop(crashing);
        assert_eq!(
            held(kind, &fixture, &uid).await,
            1,
            "{kind:?}: made before the crash"
        );
        let current = requests.get(&created.name_any()).await.unwrap();
        assert_ne!(
            phase(&current),
            Some(Phase::Active),
            "{kind:?}: the crash came before status"
        );

        let restarted = start_operator(&[]);
        wait_for_request(&requests, &created.name_any(), "active", |r| {
            phase(r) == Some(Phase::Active)
        })
        .await;
        assert_eq!(
            held(kind, &fixture, &uid).await,
            1,
            "{kind:?}: adopted, not duplicated"
        );
        end_request(&env, &created.name_any(), Ending::Revoke).await;
        assert_eq!(held(kind, &fixture, &uid).await, 0, "{kind:?}: revoked");
        drop(restarted);
    }
}
