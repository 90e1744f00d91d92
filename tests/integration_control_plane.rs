//! The local control plane itself: it is the upstream kube-apiserver at the pinned version,
//! each test user authenticates as themselves with their groups, and RBAC is enforced.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use jit_operator::crd::v1alpha1::AccessPolicy;
use k8s_openapi::api::{authentication::v1::SelfSubjectReview, core::v1::Secret};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use support::{TestEnv, USERS};

#[tokio::test]
async fn each_user_authenticates_as_themselves_with_their_groups() {
    let env = TestEnv::new().await;
    for (user, groups) in USERS {
        let review = Api::<SelfSubjectReview>::all(env.client(user).clone())
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await
            .unwrap_or_else(|error| panic!("{user} could not review themselves: {error}"));
        let info = review
            .status
            .and_then(|status| status.user_info)
            .expect("user info");
        assert_eq!(info.username.as_deref(), Some(user));
        assert_eq!(info.uid.as_deref(), Some(format!("uid-{user}").as_str()));
        let mut expected: Vec<String> = groups.iter().map(|group| group.to_string()).collect();
        expected.push("system:authenticated".into());
        let mut actual = info.groups.unwrap_or_default();
        actual.sort();
        expected.sort();
        assert_eq!(actual, expected, "groups of {user}");
    }
}

#[tokio::test]
async fn rbac_is_enforced() {
    let env = TestEnv::new().await;
    let secrets = ListParams::default();
    Api::<Secret>::namespaced(env.admin.clone(), "kube-system")
        .list(&secrets)
        .await
        .expect("system:masters may list secrets");
    for user in ["alice", "bob", "carol", "mallory"] {
        match Api::<Secret>::namespaced(env.client(user).clone(), "kube-system")
            .list(&secrets)
            .await
        {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{user}: {status:?}"),
            other => panic!("{user} listed secrets without being granted to: {other:?}"),
        }
    }
    // Everyone authenticated may read policies (config/dev/bindings.yaml), so that admission,
    // not RBAC, is what decides who may request.
    Api::<AccessPolicy>::all(env.mallory.clone())
        .list(&ListParams::default())
        .await
        .expect("authenticated users may read policies");
}

#[tokio::test]
async fn the_api_server_reports_the_pinned_upstream_version() {
    let env = TestEnv::new().await;
    let version = env.admin.apiserver_version().await.expect("version");
    let go_mod = std::fs::read_to_string(support::repo_root().join("tests/control-plane/go.mod"))
        .expect("go.mod");
    let pinned = go_mod
        .lines()
        .find_map(|line| line.trim().strip_prefix("k8s.io/kubernetes "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("k8s.io/kubernetes is required in go.mod");
    assert_eq!(version.git_version, pinned);
    let mut numbers = pinned.trim_start_matches('v').split('.');
    assert_eq!(Some(version.major.as_str()), numbers.next());
    assert_eq!(Some(version.minor.as_str()), numbers.next());
}
