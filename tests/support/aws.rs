//! AWS scenarios shared by the AWS test binaries: the operator granting in moto, IAM and
//! Identity Center fixtures, policies with an `aws` role, and what an administrator sees in
//! moto afterwards.

use std::sync::{Mutex, OnceLock};

use jit_operator::{crd::v1alpha1::AccessRequest, provider::aws::documents};
use serde_json::{Value, json};

use super::{
    TestEnv, alice_requests, create_policy,
    moto::{ACCOUNT, moto},
    operator::Operator,
    random_suffix,
};

/// The operator of this binary, granting in moto.
pub fn aws_operator() -> &'static Mutex<Operator> {
    static SHARED: OnceLock<Mutex<Operator>> = OnceLock::new();
    SHARED.get_or_init(|| Mutex::new(start_operator(&[])))
}

pub fn start_operator(extra: &[(&str, &str)]) -> Operator {
    let environment = moto().environment();
    let mut pairs: Vec<(&str, &str)> = environment
        .iter()
        .map(|(key, value)| (*key, value.as_str()))
        .collect();
    pairs.extend_from_slice(extra);
    Operator::start_with_args("jit-operator", &["--providers", "aws"], &pairs)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Inline,
    Managed,
    Group,
    AssumeRole,
    IdentityCenter,
}

/// The trust policy the test roles start with: someone else's statement that must survive.
pub fn original_trust() -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "Ec2",
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }],
    })
}

/// What one scenario made in moto, to look at afterwards.
pub struct Fixture {
    pub user: String,
    pub group: String,
    pub role: String,
    pub instance_arn: String,
    pub permission_set_arn: String,
    pub sso_user: String,
}

pub async fn fixture() -> Fixture {
    let iam = moto().iam().await;
    let suffix = random_suffix(8).to_lowercase();
    let user = format!("user-{suffix}");
    iam.create_user().user_name(&user).send().await.unwrap();
    let group = format!("group-{suffix}");
    iam.create_group().group_name(&group).send().await.unwrap();
    let role = format!("role-{suffix}");
    iam.create_role()
        .role_name(&role)
        .assume_role_policy_document(original_trust().to_string())
        .send()
        .await
        .unwrap();
    let instance_arn = format!("arn:aws:sso:::instance/ssoins-{suffix}");
    // In the real format; moto neither checks that it exists nor makes ARNs of this form.
    let permission_set_arn = format!("arn:aws:sso:::permissionSet/ssoins-{suffix}/ps-{suffix}");
    Fixture {
        user,
        group,
        role,
        instance_arn,
        permission_set_arn,
        sso_user: format!("sso-{suffix}"),
    }
}

/// The `aws` block of the role for this kind. The principal is mapped from alice, so that
/// each scenario has its own IAM user.
pub fn aws_block(kind: Kind, fixture: &Fixture) -> Value {
    let principal = format!("arn:aws:iam::{ACCOUNT}:user/{{{{mapping.awsUser}}}}");
    match kind {
        Kind::Inline => json!({"principal": principal, "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"},
                {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*",
                 "Condition": {"Bool": {"aws:SecureTransport": "true"}}},
            ],
        }}),
        Kind::Managed => {
            json!({"principal": principal, "policyArn": "arn:aws:iam::aws:policy/ReadOnlyAccess"})
        }
        Kind::Group => json!({"principal": principal, "groupName": fixture.group}),
        Kind::AssumeRole => json!({
            "principal": principal,
            "assumeRoleArn": format!("arn:aws:iam::{ACCOUNT}:role/{}", fixture.role),
        }),
        Kind::IdentityCenter => json!({"identityCenter": {
            "instanceArn": fixture.instance_arn,
            "permissionSetArn": fixture.permission_set_arn,
            "accountId": ACCOUNT,
            "principalType": "USER",
            "principalId": "{{mapping.ssoUserId}}",
        }}),
    }
}

pub async fn aws_policy(env: &TestEnv, kind: Kind, fixture: &Fixture, approvals: u32) -> String {
    create_policy(
        env,
        json!({
            "requesters": {"groups": ["devs"]},
            "approvers": {"groups": ["approvers"]},
            "approvalsRequired": approvals,
            "maxDuration": "1h",
            "roles": [{"name": "cloud", "aws": aws_block(kind, fixture)}],
            "identityMappings": [{
                "subject": "alice",
                "values": {"awsUser": fixture.user, "ssoUserId": fixture.sso_user},
            }],
        }),
    )
    .await
}

pub async fn request(env: &TestEnv, policy: &str, duration: &str) -> AccessRequest {
    alice_requests(
        env,
        &format!("aws-{}", random_suffix(6).to_lowercase()),
        json!({"policy": policy, "role": "cloud", "duration": duration,
               "reason": "INC-1234 cloud access"}),
    )
    .await
}

pub async fn inline_document(fixture: &Fixture, name: &str) -> Option<Value> {
    match moto()
        .iam()
        .await
        .get_user_policy()
        .user_name(&fixture.user)
        .policy_name(name)
        .send()
        .await
    {
        Ok(out) => Some(documents::decode(&out.policy_document).unwrap()),
        Err(error) => {
            assert_eq!(
                aws_sdk_iam::error::ProvideErrorMetadata::code(&error),
                Some("NoSuchEntity"),
                "{error:?}"
            );
            None
        }
    }
}

pub async fn trust(fixture: &Fixture) -> Value {
    let role = moto()
        .iam()
        .await
        .get_role()
        .role_name(&fixture.role)
        .send()
        .await
        .unwrap();
    documents::decode(&role.role.unwrap().assume_role_policy_document.unwrap()).unwrap()
}

pub async fn assignments(fixture: &Fixture) -> usize {
    moto()
        .sso()
        .await
        .list_account_assignments()
        .instance_arn(&fixture.instance_arn)
        .account_id(ACCOUNT)
        .permission_set_arn(&fixture.permission_set_arn)
        .send()
        .await
        .unwrap()
        .account_assignments()
        .iter()
        .filter(|assignment| assignment.principal_id() == Some(fixture.sso_user.as_str()))
        .count()
}

/// How many of this kind of grant exist in moto for the fixture's principal.
pub async fn held(kind: Kind, fixture: &Fixture, uid: &str) -> usize {
    let iam = moto().iam().await;
    match kind {
        Kind::Inline => usize::from(
            inline_document(fixture, &format!("jit-{uid}"))
                .await
                .is_some(),
        ),
        Kind::Managed => iam
            .list_attached_user_policies()
            .user_name(&fixture.user)
            .send()
            .await
            .unwrap()
            .attached_policies()
            .iter()
            .filter(|policy| policy.policy_arn() == Some("arn:aws:iam::aws:policy/ReadOnlyAccess"))
            .count(),
        Kind::Group => iam
            .list_groups_for_user()
            .user_name(&fixture.user)
            .send()
            .await
            .unwrap()
            .groups()
            .iter()
            .filter(|group| group.group_name() == fixture.group)
            .count(),
        Kind::AssumeRole => {
            let sid = format!("jit{}", uid.replace('-', ""));
            trust(fixture).await["Statement"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|statement| statement["Sid"] == sid.as_str())
                .count()
        }
        Kind::IdentityCenter => assignments(fixture).await,
    }
}
