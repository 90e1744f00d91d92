//! Crash safety of the Azure provider: the operator aborts right after the Azure call, before
//! it records the grant in status; the next operator adopts the role assignment or PIM
//! schedule instead of making it a second time, and still revokes it. A binary of its own: it
//! runs its own operators, and no other operator may act on its requests meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use jit_operator::crd::v1alpha1::{AccessRequest, Phase};
use kube::{Api, ResourceExt};
use support::{
    ACT_LIMIT, Ending, TestEnv,
    azure::{azure_fake, azure_policy, held, request, start_operator},
    end_request, phase, wait_for_request,
};

#[tokio::test]
async fn a_grant_repeated_after_a_crash_adopts_instead_of_duplicating() {
    let env = TestEnv::new().await;
    let fake = azure_fake();
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    for mode in ["direct", "pim"] {
        let scope = fake.resource_group(None);
        let policy = azure_policy(&env, &scope, mode, &fake.user(), 0).await;
        let mut crashing = start_operator(&[("FAILPOINTS", "grant-after-effect=return")]);
        let created = request(&env, &policy, "30m").await;
        crashing.wait_for_exit(ACT_LIMIT);
        drop(crashing);
        assert_eq!(held(&scope, mode), 1, "{mode}: made before the crash");
        let current = requests.get(&created.name_any()).await.unwrap();
        assert_ne!(
            phase(&current),
            Some(Phase::Active),
            "{mode}: the crash came before status"
        );

        let restarted = start_operator(&[]);
        wait_for_request(&requests, &created.name_any(), "active", |r| {
            phase(r) == Some(Phase::Active)
        })
        .await;
        assert_eq!(held(&scope, mode), 1, "{mode}: adopted, not duplicated");
        assert_eq!(fake.writes(&scope), 1, "{mode}: nothing written again");
        end_request(&env, &created.name_any(), Ending::Revoke).await;
        assert_eq!(held(&scope, mode), 0, "{mode}: revoked");
        drop(restarted);
    }
}
