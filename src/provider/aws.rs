//! The AWS provider: inline policies that AWS stops honouring at the expiry, managed-policy
//! attachments, group memberships, the right to assume a role (through its trust policy, with
//! the subject's live sessions ended on revoke) and IAM Identity Center account assignments.
//! Credentials, region and endpoint come from the SDK's standard chain (`AWS_*` variables,
//! IRSA web identity, instance profile), so an emulator needs no special flag. What the
//! holder did is read from CloudTrail (`trail`).

pub mod documents;
mod trail;

use std::time::Duration;

use async_trait::async_trait;
use aws_config::{BehaviorVersion, retry::RetryConfig};
use aws_sdk_iam::{
    config::http::HttpResponse,
    error::{ProvideErrorMetadata, SdkError},
};
use aws_sdk_ssoadmin::types::{PrincipalType, StatusValues, TargetType};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    ActivityLog, Error, Failure, GrantSpec, GrantState, RequestRef,
    cloud::{Cloud, Replacement},
    identity::Identity,
};
use crate::{
    crd::v1alpha1::{
        ActivityLookup, ActivityMatch, ActivitySource, AwsTarget, IdentityCenterPrincipalType,
    },
    target::Target,
};
/// Attempts per AWS call; the SDK backs off between them on throttling, 5xx and dropped
/// connections.
const MAX_ATTEMPTS: u32 = 5;
/// How long to wait for an Identity Center assignment to finish provisioning.
const PROVISIONING_LIMIT: Duration = Duration::from_secs(60);

/// The kind of IAM identity an ARN names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKind {
    /// An IAM user.
    User,
    /// An IAM role.
    Role,
    /// An IAM group.
    Group,
}

/// An IAM user, role or group, by ARN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// What it is.
    pub kind: PrincipalKind,
    /// Its name (the ARN's last path segment), as the IAM API takes it.
    pub name: String,
    /// Its ARN.
    pub arn: String,
}

impl Principal {
    /// Parses `arn:PARTITION:iam::ACCOUNT:(user|role|group)/[PATH/]NAME`.
    pub fn parse(arn: &str) -> Result<Self, String> {
        let refuse = |why: &str| format!("{arn:?} is not an IAM user, role or group ARN: {why}");
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let [prefix, partition, service, region, account, resource] = parts[..] else {
            return Err(refuse("expected arn:PARTITION:iam::ACCOUNT:KIND/NAME"));
        };
        if prefix != "arn"
            || !partition.starts_with("aws")
            || service != "iam"
            || !region.is_empty()
        {
            return Err(refuse("expected arn:PARTITION:iam::ACCOUNT:KIND/NAME"));
        }
        if account.len() != 12 || !account.chars().all(|c| c.is_ascii_digit()) {
            return Err(refuse("the account must be 12 digits"));
        }
        let Some((kind, path)) = resource.split_once('/') else {
            return Err(refuse("no name"));
        };
        let kind = match kind {
            "user" => PrincipalKind::User,
            "role" => PrincipalKind::Role,
            "group" => PrincipalKind::Group,
            _ => return Err(refuse("only user, role and group can receive a grant")),
        };
        let name = path.rsplit('/').next().unwrap_or_default();
        let valid = |c: char| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c);
        if name.is_empty() || name.len() > 128 || !name.chars().all(valid) {
            return Err(refuse("the name is not a valid IAM name"));
        }
        Ok(Self {
            kind,
            name: name.to_owned(),
            arn: arn.to_owned(),
        })
    }
}

/// One grant as made in AWS: what the ledger records and revoke undoes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum AwsGrant {
    /// An inline policy named from the grant key.
    InlinePolicy {
        /// On whom.
        principal: Principal,
        /// Its name.
        policy_name: String,
    },
    /// A managed policy attachment.
    ManagedPolicy {
        /// On whom.
        principal: Principal,
        /// The policy.
        policy_arn: String,
    },
    /// A user in a group.
    GroupMembership {
        /// The user.
        user_name: String,
        /// The group.
        group_name: String,
    },
    /// A statement in a role's trust policy.
    AssumeRole {
        /// The role.
        role_name: String,
        /// The statement's Sid.
        sid: String,
        /// Who may assume it.
        principal: String,
        /// The source identity sessions must carry.
        source_identity: String,
    },
    /// An Identity Center account assignment.
    IdentityCenter {
        /// The instance.
        instance_arn: String,
        /// The permission set.
        permission_set_arn: String,
        /// The account.
        account_id: String,
        /// USER or GROUP.
        principal_type: IdentityCenterPrincipalType,
        /// The user or group ID.
        principal_id: String,
    },
}

impl AwsGrant {
    /// Where it is, for people.
    pub fn reference(&self) -> String {
        match self {
            Self::InlinePolicy {
                principal,
                policy_name,
            } => format!("inline policy {policy_name} on {}", principal.arn),
            Self::ManagedPolicy {
                principal,
                policy_arn,
            } => format!("{policy_arn} attached to {}", principal.arn),
            Self::GroupMembership {
                user_name,
                group_name,
            } => format!("user {user_name} in group {group_name}"),
            Self::AssumeRole {
                role_name,
                sid,
                principal,
                ..
            } => format!("trust statement {sid} on role {role_name} for {principal}"),
            Self::IdentityCenter {
                permission_set_arn,
                account_id,
                principal_id,
                ..
            } => format!("{permission_set_arn} in account {account_id} for {principal_id}"),
        }
    }

    /// Whether AWS itself ends it at the expiry.
    pub fn cloud_enforced(&self) -> bool {
        matches!(self, Self::InlinePolicy { .. } | Self::AssumeRole { .. })
    }

    /// How CloudTrail names the holder: an IAM user by name, a role's sessions by the source
    /// identity they must carry. A policy on a role or a group, and an Identity Center
    /// assignment, are used by whoever holds the role or belongs to the group: nobody's
    /// actions in particular.
    pub fn activity_lookup(&self) -> Option<ActivityLookup> {
        let lookup = |matches, principal: &str, scope: Option<&str>| ActivityLookup {
            source: ActivitySource::AwsCloudTrail,
            matches,
            principal: principal.to_owned(),
            scope: scope.map(str::to_owned),
        };
        match self {
            Self::InlinePolicy { principal, .. } | Self::ManagedPolicy { principal, .. } => {
                (principal.kind == PrincipalKind::User)
                    .then(|| lookup(ActivityMatch::AwsUserName, &principal.name, None))
            }
            Self::GroupMembership { user_name, .. } => {
                Some(lookup(ActivityMatch::AwsUserName, user_name, None))
            }
            Self::AssumeRole {
                role_name,
                source_identity,
                ..
            } => Some(lookup(
                ActivityMatch::AwsSourceIdentity,
                source_identity,
                Some(role_name),
            )),
            Self::IdentityCenter { .. } => None,
        }
    }
}

/// The Sid of our trust statement: the grant key without its dashes (a Sid is alphanumeric).
pub fn statement_id(request: &RequestRef) -> String {
    request
        .key()
        .as_str()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect()
}

/// The name of the inline policy that ends a subject's sessions of a role.
fn session_revocation_name(source_identity: &str) -> String {
    format!("jit-revoked-{source_identity}")
}

/// Resolves a role's `aws` block for a subject into the grant to make. Pure.
pub fn resolve(
    target: &AwsTarget,
    identity: &Identity,
    request: &RequestRef,
) -> Result<AwsGrant, Error> {
    let invalid = |message: String| Error::Invalid { message };
    let render = |template: &str| identity.render(template).map_err(Error::Template);
    if let Some(center) = &target.identity_center {
        return Ok(AwsGrant::IdentityCenter {
            instance_arn: center.instance_arn.clone(),
            permission_set_arn: center.permission_set_arn.clone(),
            account_id: center.account_id.clone(),
            principal_type: center.principal_type,
            principal_id: render(&center.principal_id)?,
        });
    }
    let Some(principal) = &target.principal else {
        return Err(invalid("the aws role names no principal".into()));
    };
    let principal = Principal::parse(&render(principal)?).map_err(invalid)?;
    if target.policy_document.is_some() {
        return Ok(AwsGrant::InlinePolicy {
            principal,
            policy_name: request.key().as_str().to_owned(),
        });
    }
    if let Some(policy_arn) = &target.policy_arn {
        return Ok(AwsGrant::ManagedPolicy {
            principal,
            policy_arn: policy_arn.clone(),
        });
    }
    if let Some(group_name) = &target.group_name {
        if principal.kind != PrincipalKind::User {
            return Err(invalid(format!(
                "only a user can be added to group {group_name}, not {}",
                principal.arn
            )));
        }
        return Ok(AwsGrant::GroupMembership {
            user_name: principal.name,
            group_name: group_name.clone(),
        });
    }
    if let Some(role_arn) = &target.assume_role_arn {
        if principal.kind == PrincipalKind::Group {
            return Err(invalid(format!(
                "a group cannot assume a role: {}",
                principal.arn
            )));
        }
        let role = Principal::parse(role_arn).map_err(invalid)?;
        let source_identity = render(target.source_identity.as_deref().unwrap_or("{{username}}"))?;
        let valid = |c: char| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c);
        if !(2..=64).contains(&source_identity.len()) || !source_identity.chars().all(valid) {
            return Err(invalid(format!(
                "{source_identity:?} cannot be an STS source identity (2-64 of letters, digits and +=,.@_-); set sourceIdentity in the role"
            )));
        }
        return Ok(AwsGrant::AssumeRole {
            role_name: role.name,
            sid: statement_id(request),
            principal: principal.arn,
            source_identity,
        });
    }
    Err(invalid("the aws role names no kind of grant".into()))
}

/// The HTTP client the SDK uses: rustls with ring, like the rest of the operator.
pub fn http_client() -> aws_sdk_iam::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// Calls the user, role or group flavour of an IAM operation on `principal`: the SDK has one
/// operation per kind, alike but for the name parameter. `$request` is the builder with the
/// principal's name set; `$result` is what `send` returned, handled in each arm because the
/// output types differ.
macro_rules! per_kind {
    ($iam:expr, $principal:expr, [$user:ident, $role:ident, $group:ident],
     |$request:ident| $build:expr, |$result:ident| $then:expr) => {{
        let name = $principal.name.as_str();
        match $principal.kind {
            PrincipalKind::User => {
                let $request = $iam.$user().user_name(name);
                let $result = $build.send().await;
                $then
            }
            PrincipalKind::Role => {
                let $request = $iam.$role().role_name(name);
                let $result = $build.send().await;
                $then
            }
            PrincipalKind::Group => {
                let $request = $iam.$group().group_name(name);
                let $result = $build.send().await;
                $then
            }
        }
    }};
}

/// Grants in AWS IAM and IAM Identity Center.
pub(crate) struct Aws {
    iam: aws_sdk_iam::Client,
    sso: aws_sdk_ssoadmin::Client,
    trail: aws_sdk_cloudtrail::Client,
}

impl Aws {
    /// The clients with the SDK's standard configuration.
    pub(crate) async fn from_environment() -> Self {
        let config = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client())
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
            .load()
            .await;
        Self {
            iam: aws_sdk_iam::Client::new(&config),
            sso: aws_sdk_ssoadmin::Client::new(&config),
            trail: aws_sdk_cloudtrail::Client::new(&config),
        }
    }

    fn target<'a>(grant: &'a GrantSpec<'_>) -> Result<&'a AwsTarget, Error> {
        grant.role.aws.as_ref().ok_or_else(|| Error::NoTarget {
            role: grant.role.name.clone(),
        })
    }

    /// The inline policy document for this grant, with the expiry in every statement.
    fn inline_document(target: &AwsTarget, expires_at: Timestamp) -> Result<Value, Error> {
        let document = target
            .policy_document
            .as_ref()
            .ok_or_else(|| Error::Invalid {
                message: "the aws role has no policyDocument".into(),
            })?;
        documents::with_expiry(document, expires_at).map_err(|error| Error::Invalid {
            message: error.to_string(),
        })
    }

    /// Whether the grant is already there, as made by anyone.
    async fn exists(&self, grant: &AwsGrant) -> Result<bool, Error> {
        match grant {
            AwsGrant::ManagedPolicy {
                principal,
                policy_arn,
            } => Ok(self
                .attached_policies(principal)
                .await?
                .contains(policy_arn)),
            AwsGrant::GroupMembership {
                user_name,
                group_name,
            } => Ok(self.groups_of(user_name).await?.contains(group_name)),
            AwsGrant::IdentityCenter { .. } => self.assignment_exists(grant).await,
            // Named by our grant key: nobody else makes these.
            AwsGrant::InlinePolicy { .. } | AwsGrant::AssumeRole { .. } => Ok(false),
        }
    }

    async fn make_grant(
        &self,
        grant: &AwsGrant,
        target: &AwsTarget,
        expires_at: Timestamp,
    ) -> Result<(), Error> {
        match grant {
            AwsGrant::InlinePolicy {
                principal,
                policy_name,
            } => {
                let document = Self::inline_document(target, expires_at)?.to_string();
                self.put_inline(principal, policy_name, &document).await
            }
            AwsGrant::ManagedPolicy {
                principal,
                policy_arn,
            } => per_kind!(
                self.iam,
                principal,
                [attach_user_policy, attach_role_policy, attach_group_policy],
                |request| request.policy_arn(policy_arn),
                |result| result
                    .map(|_| ())
                    .map_err(|error| cloud("attach a policy", error))
            ),
            AwsGrant::GroupMembership {
                user_name,
                group_name,
            } => self
                .iam
                .add_user_to_group()
                .user_name(user_name)
                .group_name(group_name)
                .send()
                .await
                .map(|_| ())
                .map_err(|error| cloud("add a user to a group", error)),
            AwsGrant::AssumeRole {
                role_name,
                sid,
                principal,
                source_identity,
            } => {
                let trust = self.trust_policy(role_name).await?;
                let edited = documents::with_trust_statement(
                    &trust,
                    sid,
                    principal,
                    source_identity,
                    expires_at,
                )
                .map_err(|error| Error::Invalid {
                    message: format!("the trust policy of role {role_name}: {error}"),
                })?;
                if edited != trust {
                    self.iam
                        .update_assume_role_policy()
                        .role_name(role_name)
                        .policy_document(edited.to_string())
                        .send()
                        .await
                        .map_err(|error| cloud("update a trust policy", error))?;
                }
                Ok(())
            }
            AwsGrant::IdentityCenter { .. } => self.assign(grant).await,
        }
    }

    async fn put_inline(
        &self,
        principal: &Principal,
        policy_name: &str,
        document: &str,
    ) -> Result<(), Error> {
        per_kind!(
            self.iam,
            principal,
            [put_user_policy, put_role_policy, put_group_policy],
            |request| request.policy_name(policy_name).policy_document(document),
            |result| result
                .map(|_| ())
                .map_err(|error| cloud("put an inline policy", error))
        )
    }

    /// The inline policy's document; `None` when it (or its principal) is gone.
    async fn inline_policy(
        &self,
        principal: &Principal,
        policy_name: &str,
    ) -> Result<Option<Value>, Error> {
        let action = "read an inline policy";
        let document = per_kind!(
            self.iam,
            principal,
            [get_user_policy, get_role_policy, get_group_policy],
            |request| request.policy_name(policy_name),
            |result| gone_is_none(result, action)?.map(|out| out.policy_document)
        );
        document
            .map(|text| {
                documents::decode(&text).map_err(|error| Error::Invalid {
                    message: error.to_string(),
                })
            })
            .transpose()
    }

    async fn delete_inline(&self, principal: &Principal, policy_name: &str) -> Result<(), Error> {
        per_kind!(
            self.iam,
            principal,
            [delete_user_policy, delete_role_policy, delete_group_policy],
            |request| request.policy_name(policy_name),
            |result| gone_is_none(result, "delete an inline policy").map(|_| ())
        )
    }

    async fn attached_policies(&self, principal: &Principal) -> Result<Vec<String>, Error> {
        let attached = per_kind!(
            self.iam,
            principal,
            [
                list_attached_user_policies,
                list_attached_role_policies,
                list_attached_group_policies
            ],
            |request| request.max_items(1000),
            |result| gone_is_none(result, "list attached policies")?
                .map(|out| out.attached_policies.unwrap_or_default())
        );
        Ok(attached
            .unwrap_or_default()
            .into_iter()
            .filter_map(|policy| policy.policy_arn)
            .collect())
    }

    async fn groups_of(&self, user_name: &str) -> Result<Vec<String>, Error> {
        let groups = gone_is_none(
            self.iam
                .list_groups_for_user()
                .user_name(user_name)
                .max_items(1000)
                .send()
                .await,
            "list a user's groups",
        )?;
        Ok(groups
            .map(|out| {
                out.groups
                    .into_iter()
                    .map(|group| group.group_name)
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn trust_policy(&self, role_name: &str) -> Result<Value, Error> {
        let role = self
            .iam
            .get_role()
            .role_name(role_name)
            .send()
            .await
            .map_err(|error| cloud("read a role", error))?;
        let text = role
            .role
            .and_then(|role| role.assume_role_policy_document)
            .unwrap_or_default();
        documents::decode(&text).map_err(|error| Error::Invalid {
            message: format!("the trust policy of role {role_name}: {error}"),
        })
    }

    async fn assignment_exists(&self, grant: &AwsGrant) -> Result<bool, Error> {
        let AwsGrant::IdentityCenter {
            instance_arn,
            permission_set_arn,
            account_id,
            principal_type,
            principal_id,
        } = grant
        else {
            return Ok(false);
        };
        let mut pages = self
            .sso
            .list_account_assignments()
            .instance_arn(instance_arn)
            .account_id(account_id)
            .permission_set_arn(permission_set_arn)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|error| cloud("list account assignments", error))?;
            if page.account_assignments().iter().any(|assignment| {
                assignment.principal_id() == Some(principal_id.as_str())
                    && assignment.principal_type() == Some(&sso_principal_type(*principal_type))
            }) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn assign(&self, grant: &AwsGrant) -> Result<(), Error> {
        let AwsGrant::IdentityCenter {
            instance_arn,
            permission_set_arn,
            account_id,
            principal_type,
            principal_id,
        } = grant
        else {
            return Ok(());
        };
        // Creating an assignment that exists would start a second provisioning; adopt it.
        if self.assignment_exists(grant).await? {
            return Ok(());
        }
        let created = self
            .sso
            .create_account_assignment()
            .instance_arn(instance_arn)
            .target_id(account_id)
            .target_type(TargetType::AwsAccount)
            .permission_set_arn(permission_set_arn)
            .principal_type(sso_principal_type(*principal_type))
            .principal_id(principal_id)
            .send()
            .await
            .map_err(|error| cloud("create an account assignment", error))?;
        let status = created.account_assignment_creation_status;
        self.await_provisioning(instance_arn, status, true).await
    }

    async fn unassign(&self, grant: &AwsGrant) -> Result<(), Error> {
        let AwsGrant::IdentityCenter {
            instance_arn,
            permission_set_arn,
            account_id,
            principal_type,
            principal_id,
        } = grant
        else {
            return Ok(());
        };
        if !self.assignment_exists(grant).await? {
            return Ok(());
        }
        let deleted = self
            .sso
            .delete_account_assignment()
            .instance_arn(instance_arn)
            .target_id(account_id)
            .target_type(TargetType::AwsAccount)
            .permission_set_arn(permission_set_arn)
            .principal_type(sso_principal_type(*principal_type))
            .principal_id(principal_id)
            .send()
            .await;
        match deleted {
            Ok(out) => {
                self.await_provisioning(instance_arn, out.account_assignment_deletion_status, false)
                    .await
            }
            Err(error) if is_gone(&error) => Ok(()),
            Err(error) => Err(cloud("delete an account assignment", error)),
        }
    }

    /// Polls an assignment's creation or deletion until it succeeds or fails.
    async fn await_provisioning(
        &self,
        instance_arn: &str,
        mut status: Option<aws_sdk_ssoadmin::types::AccountAssignmentOperationStatus>,
        creating: bool,
    ) -> Result<(), Error> {
        let what = if creating { "creation" } else { "deletion" };
        let deadline = tokio::time::Instant::now() + PROVISIONING_LIMIT;
        let mut pause = Duration::from_millis(200);
        loop {
            let Some(current) = status.take() else {
                return Err(retryable(format!(
                    "the assignment {what} reported no status"
                )));
            };
            match current.status() {
                Some(StatusValues::Succeeded) => return Ok(()),
                Some(StatusValues::Failed) => {
                    // A failed deletion is tried again: revocation never gives up.
                    return Err(Error::cloud(
                        Target::Aws,
                        format!("finish the account assignment {what}"),
                        current
                            .failure_reason()
                            .unwrap_or("failed without a reason"),
                        if creating {
                            Failure::Refused
                        } else {
                            Failure::Transient
                        },
                    ));
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(retryable(format!(
                    "the account assignment {what} is still in progress after {}s",
                    PROVISIONING_LIMIT.as_secs()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
            let Some(id) = current.request_id() else {
                return Err(retryable(format!(
                    "the assignment {what} has no request id"
                )));
            };
            status = if creating {
                self.sso
                    .describe_account_assignment_creation_status()
                    .instance_arn(instance_arn)
                    .account_assignment_creation_request_id(id)
                    .send()
                    .await
                    .map_err(|error| cloud("read an assignment's status", error))?
                    .account_assignment_creation_status
            } else {
                self.sso
                    .describe_account_assignment_deletion_status()
                    .instance_arn(instance_arn)
                    .account_assignment_deletion_request_id(id)
                    .send()
                    .await
                    .map_err(|error| cloud("read an assignment's status", error))?
                    .account_assignment_deletion_status
            };
        }
    }

    async fn remove_grant(&self, grant: &AwsGrant, now: Timestamp) -> Result<(), Error> {
        match grant {
            AwsGrant::InlinePolicy {
                principal,
                policy_name,
            } => self.delete_inline(principal, policy_name).await,
            AwsGrant::ManagedPolicy {
                principal,
                policy_arn,
            } => per_kind!(
                self.iam,
                principal,
                [detach_user_policy, detach_role_policy, detach_group_policy],
                |request| request.policy_arn(policy_arn),
                |result| gone_is_none(result, "detach a policy").map(|_| ())
            ),
            AwsGrant::GroupMembership {
                user_name,
                group_name,
            } => gone_is_none(
                self.iam
                    .remove_user_from_group()
                    .user_name(user_name)
                    .group_name(group_name)
                    .send()
                    .await,
                "remove a user from a group",
            )
            .map(|_| ()),
            AwsGrant::AssumeRole {
                role_name,
                sid,
                source_identity,
                ..
            } => {
                let trust = match self.iam.get_role().role_name(role_name).send().await {
                    Ok(out) => out.role.and_then(|role| role.assume_role_policy_document),
                    Err(error) if is_gone(&error) => return Ok(()),
                    Err(error) => return Err(cloud("read a role", error)),
                };
                let trust = documents::decode(&trust.unwrap_or_default()).map_err(|error| {
                    Error::Invalid {
                        message: format!("the trust policy of role {role_name}: {error}"),
                    }
                })?;
                if let Some(edited) =
                    documents::without_trust_statement(&trust, sid).map_err(|error| {
                        Error::Invalid {
                            message: format!("the trust policy of role {role_name}: {error}"),
                        }
                    })?
                {
                    self.iam
                        .update_assume_role_policy()
                        .role_name(role_name)
                        .policy_document(edited.to_string())
                        .send()
                        .await
                        .map_err(|error| cloud("update a trust policy", error))?;
                }
                // No new sessions can start now; end the ones already issued.
                let deny = documents::session_revocation(source_identity, now).to_string();
                gone_is_none(
                    self.iam
                        .put_role_policy()
                        .role_name(role_name)
                        .policy_name(session_revocation_name(source_identity))
                        .policy_document(deny)
                        .send()
                        .await,
                    "put the session revocation policy",
                )
                .map(|_| ())
            }
            AwsGrant::IdentityCenter { .. } => self.unassign(grant).await,
        }
    }

    async fn state_of(
        &self,
        grant: &AwsGrant,
        target: &AwsTarget,
        expires_at: Timestamp,
    ) -> Result<GrantState, Error> {
        match grant {
            AwsGrant::InlinePolicy {
                principal,
                policy_name,
            } => {
                let Some(found) = self.inline_policy(principal, policy_name).await? else {
                    return Ok(GrantState::Missing);
                };
                if found == Self::inline_document(target, expires_at)? {
                    Ok(GrantState::Present)
                } else {
                    Ok(GrantState::Drifted(format!(
                        "inline policy {policy_name} on {} was changed",
                        principal.arn
                    )))
                }
            }
            AwsGrant::AssumeRole {
                role_name,
                sid,
                principal,
                source_identity,
            } => {
                let trust = self.trust_policy(role_name).await?;
                let found =
                    documents::statement_with_sid(&trust, sid).map_err(|error| Error::Invalid {
                        message: error.to_string(),
                    })?;
                match found {
                    None => Ok(GrantState::Missing),
                    Some(statement)
                        if statement
                            == documents::trust_statement(
                                sid,
                                principal,
                                source_identity,
                                expires_at,
                            ) =>
                    {
                        Ok(GrantState::Present)
                    }
                    Some(_) => Ok(GrantState::Drifted(format!(
                        "trust statement {sid} on role {role_name} was changed"
                    ))),
                }
            }
            _ => Ok(if self.exists(grant).await? {
                GrantState::Present
            } else {
                GrantState::Missing
            }),
        }
    }
}

#[async_trait]
impl Cloud for Aws {
    type Grant = AwsGrant;
    const TARGET: Target = Target::Aws;
    // A principal may hold the old and the new grant at once: add the new one first, so that
    // a policy edit never leaves the subject without access in between.
    const REPLACEMENT: Replacement = Replacement::GrantFirst;

    fn resolve(&self, spec: &GrantSpec<'_>) -> Result<AwsGrant, Error> {
        let target = Self::target(spec)?;
        let made = resolve(target, spec.identity, spec.request)?;
        if target.policy_document.is_some() {
            // Refuse a malformed document before anything is recorded.
            Self::inline_document(target, spec.expires_at)?;
        }
        Ok(made)
    }

    fn reference(grant: &AwsGrant) -> String {
        grant.reference()
    }

    fn cloud_enforced(grant: &AwsGrant) -> bool {
        grant.cloud_enforced()
    }

    fn activity_lookup(grant: &AwsGrant) -> Option<ActivityLookup> {
        grant.activity_lookup()
    }

    async fn activity(
        &self,
        lookup: &ActivityLookup,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Option<ActivityLog>, Error> {
        trail::read(&self.trail, lookup, from, to).await.map(Some)
    }

    async fn held_elsewhere(&self, grant: &AwsGrant) -> Result<bool, Error> {
        self.exists(grant).await
    }

    async fn make(&self, grant: &AwsGrant, spec: &GrantSpec<'_>) -> Result<(), Error> {
        self.make_grant(grant, Self::target(spec)?, spec.expires_at)
            .await
    }

    async fn remove(&self, grant: &AwsGrant, now: Timestamp) -> Result<(), Error> {
        self.remove_grant(grant, now).await
    }

    async fn state(&self, grant: &AwsGrant, spec: &GrantSpec<'_>) -> Result<GrantState, Error> {
        self.state_of(grant, Self::target(spec)?, spec.expires_at)
            .await
    }
}

fn sso_principal_type(kind: IdentityCenterPrincipalType) -> PrincipalType {
    match kind {
        IdentityCenterPrincipalType::User => PrincipalType::User,
        IdentityCenterPrincipalType::Group => PrincipalType::Group,
    }
}

fn retryable(message: String) -> Error {
    Error::cloud(Target::Aws, "provision", message, Failure::Transient)
}

/// Error codes that mean "slow down".
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
];

/// Error codes that mean "try again later".
const RETRYABLE_CODES: &[&str] = &[
    "ServiceFailure",
    "ServiceUnavailable",
    "InternalFailure",
    "InternalServerException",
    "ConcurrentModification",
    "ConflictException",
];

/// Whether an error says the thing (or its principal) does not exist.
fn is_gone<E: ProvideErrorMetadata, R>(error: &SdkError<E, R>) -> bool {
    matches!(
        error.code(),
        Some("NoSuchEntity" | "ResourceNotFoundException")
    )
}

/// The result, with "it is not there" as `None`: what revoke and read want.
fn gone_is_none<T, E>(
    result: Result<T, SdkError<E, HttpResponse>>,
    action: &str,
) -> Result<Option<T>, Error>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match result {
        Ok(out) => Ok(Some(out)),
        Err(error) if is_gone(&error) => Ok(None),
        Err(error) => Err(cloud(action, error)),
    }
}

/// An SDK error as the provider reports it: AWS's code and message, never the request.
fn cloud<E>(action: &str, error: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (message, failure) = match &error {
        SdkError::ServiceError(service) => {
            let code = error.code().unwrap_or("Unknown");
            let text = error.message().unwrap_or("no message");
            let raw = service.raw();
            let status = raw.status().as_u16();
            let failure = if is_gone(&error) {
                Failure::NotFound
            } else if status == 429 || THROTTLING_CODES.contains(&code) {
                Failure::Throttled {
                    retry_after: raw
                        .headers()
                        .get("retry-after")
                        .and_then(super::retry_after_seconds),
                }
            } else if raw.status().is_server_error() || RETRYABLE_CODES.contains(&code) {
                Failure::Transient
            } else {
                Failure::Refused
            };
            (format!("{code}: {text}"), failure)
        }
        SdkError::ConstructionFailure(_) => {
            (crate::telemetry::error_chain(&error), Failure::Refused)
        }
        // Timeouts, dropped connections and replies that do not parse: try again.
        _ => (crate::telemetry::error_chain(&error), Failure::Transient),
    };
    Error::cloud(Target::Aws, action, message, failure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{crd::v1alpha1::IdentityCenterTarget, subject::Subject};
    use serde_json::json;

    fn request() -> RequestRef {
        RequestRef {
            uid: "0b6e-41".into(),
            namespace: "team".into(),
            name: "fix".into(),
        }
    }

    fn target(extra: Value) -> AwsTarget {
        let mut block = json!({"principal": "arn:aws:iam::123456789012:user/{{username}}"});
        if let (Some(block), Some(extra)) = (block.as_object_mut(), extra.as_object()) {
            block.extend(extra.clone());
        }
        serde_json::from_value(block).unwrap()
    }

    fn alice() -> Identity {
        Identity::bare(Subject::User("alice".into()))
    }

    #[test]
    fn principals_parse_by_kind_and_keep_only_the_name() {
        let user = Principal::parse("arn:aws:iam::123456789012:user/engineering/alice").unwrap();
        assert_eq!(
            (user.kind, user.name.as_str()),
            (PrincipalKind::User, "alice")
        );
        let role = Principal::parse("arn:aws-us-gov:iam::123456789012:role/ops").unwrap();
        assert_eq!(role.kind, PrincipalKind::Role);
        for arn in [
            "arn:aws:iam::123456789012:policy/x",
            "arn:aws:s3:::bucket",
            "arn:aws:iam::12345:user/alice",
            "arn:aws:iam::123456789012:user/",
            "arn:aws:iam::123456789012:user/a*",
            "user/alice",
        ] {
            assert!(Principal::parse(arn).is_err(), "{arn}");
        }
    }

    #[test]
    fn each_kind_resolves_to_its_grant() {
        let inline = resolve(
            &target(json!({"policyDocument": {"Statement": []}})),
            &alice(),
            &request(),
        )
        .unwrap();
        assert_eq!(
            inline,
            AwsGrant::InlinePolicy {
                principal: Principal::parse("arn:aws:iam::123456789012:user/alice").unwrap(),
                policy_name: "jit-0b6e-41".into(),
            }
        );
        let group = resolve(
            &target(json!({"groupName": "readers"})),
            &alice(),
            &request(),
        )
        .unwrap();
        assert_eq!(
            group,
            AwsGrant::GroupMembership {
                user_name: "alice".into(),
                group_name: "readers".into()
            }
        );
        let assume = resolve(
            &target(json!({"assumeRoleArn": "arn:aws:iam::123456789012:role/prod-admin"})),
            &alice(),
            &request(),
        )
        .unwrap();
        assert_eq!(
            assume,
            AwsGrant::AssumeRole {
                role_name: "prod-admin".into(),
                sid: "jit0b6e41".into(),
                principal: "arn:aws:iam::123456789012:user/alice".into(),
                source_identity: "alice".into(),
            }
        );
        assert!(assume.cloud_enforced() && inline.cloud_enforced() && !group.cloud_enforced());
    }

    #[test]
    fn cloudtrail_is_searched_for_the_user_or_the_sessions_source_identity() {
        let by_user = |grant: &AwsGrant| {
            grant
                .activity_lookup()
                .map(|lookup| (lookup.matches, lookup.principal, lookup.scope))
        };
        let user = Principal::parse("arn:aws:iam::123456789012:user/alice").unwrap();
        let inline = AwsGrant::InlinePolicy {
            principal: user.clone(),
            policy_name: "jit-1".into(),
        };
        assert_eq!(
            by_user(&inline),
            Some((ActivityMatch::AwsUserName, "alice".into(), None))
        );
        let member = AwsGrant::GroupMembership {
            user_name: "alice".into(),
            group_name: "readers".into(),
        };
        assert_eq!(
            by_user(&member),
            Some((ActivityMatch::AwsUserName, "alice".into(), None))
        );
        let assume = AwsGrant::AssumeRole {
            role_name: "prod-admin".into(),
            sid: "jit1".into(),
            principal: user.arn.clone(),
            source_identity: "alice".into(),
        };
        assert_eq!(
            by_user(&assume),
            Some((
                ActivityMatch::AwsSourceIdentity,
                "alice".into(),
                Some("prod-admin".into())
            ))
        );
        // Shared by whoever holds the role or is in the group: nobody's actions in particular.
        let on_role = AwsGrant::ManagedPolicy {
            principal: Principal::parse("arn:aws:iam::123456789012:role/ops").unwrap(),
            policy_arn: "arn:aws:iam::aws:policy/ReadOnlyAccess".into(),
        };
        assert_eq!(by_user(&on_role), None);
    }

    #[test]
    fn identity_center_principals_come_from_the_mapping() {
        let block = AwsTarget {
            principal: None,
            policy_document: None,
            policy_arn: None,
            group_name: None,
            assume_role_arn: None,
            source_identity: None,
            identity_center: Some(IdentityCenterTarget {
                instance_arn: "arn:aws:sso:::instance/ssoins-1".into(),
                permission_set_arn: "arn:aws:sso:::permissionSet/ssoins-1/ps-1".into(),
                account_id: "123456789012".into(),
                principal_type: IdentityCenterPrincipalType::User,
                principal_id: "{{mapping.ssoUserId}}".into(),
            }),
        };
        let unmapped = resolve(&block, &alice(), &request()).unwrap_err();
        assert!(
            unmapped.to_string().contains("mapping.ssoUserId"),
            "{unmapped}"
        );
        let mut mapped = alice();
        mapped.mapping.insert("ssoUserId".into(), "9067-abc".into());
        let AwsGrant::IdentityCenter { principal_id, .. } =
            resolve(&block, &mapped, &request()).unwrap()
        else {
            panic!("not an assignment");
        };
        assert_eq!(principal_id, "9067-abc");
    }

    #[test]
    fn impossible_combinations_are_refused_with_a_reason() {
        let group_principal = AwsTarget {
            principal: Some("arn:aws:iam::123456789012:group/ops".into()),
            ..target(json!({"assumeRoleArn": "arn:aws:iam::123456789012:role/x"}))
        };
        assert!(
            resolve(&group_principal, &alice(), &request())
                .unwrap_err()
                .to_string()
                .contains("a group cannot assume")
        );
        let role_in_group = AwsTarget {
            principal: Some("arn:aws:iam::123456789012:role/ci".into()),
            ..target(json!({"groupName": "readers"}))
        };
        assert!(
            resolve(&role_in_group, &alice(), &request())
                .unwrap_err()
                .to_string()
                .contains("only a user")
        );
        let account = Identity::bare(Subject::parse("system:serviceaccount:ci:deploy").unwrap());
        let colon = target(json!({"assumeRoleArn": "arn:aws:iam::123456789012:role/x"}));
        let refused = resolve(
            &AwsTarget {
                principal: Some("arn:aws:iam::123456789012:role/ci".into()),
                ..colon
            },
            &account,
            &request(),
        )
        .unwrap_err();
        assert!(refused.to_string().contains("source identity"), "{refused}");
    }

    fn refusal(code: &str, status: u16) -> Error {
        let metadata = aws_sdk_iam::error::ErrorMetadata::builder()
            .code(code)
            .message("from aws")
            .build();
        let error = aws_sdk_iam::operation::put_user_policy::PutUserPolicyError::generic(metadata);
        let raw = HttpResponse::new(
            status.try_into().unwrap(),
            aws_smithy_types::body::SdkBody::empty(),
        );
        cloud("put an inline policy", SdkError::service_error(error, raw))
    }

    #[test]
    fn throttling_and_server_errors_are_retried_and_refusals_are_not() {
        assert!(refusal("Throttling", 400).is_retryable());
        assert!(refusal("ServiceFailure", 500).is_retryable());
        assert!(refusal("SomethingNew", 503).is_retryable());
        assert!(refusal("TooManyRequestsException", 429).is_retryable());
        assert!(refusal("Throttling", 400).is_throttled());
        assert!(!refusal("ServiceFailure", 500).is_throttled());
        assert!(refusal("NoSuchEntity", 404).is_not_found());
        assert!(!refusal("AccessDenied", 403).is_not_found());
        for code in [
            "NoSuchEntity",
            "AccessDenied",
            "MalformedPolicyDocument",
            "LimitExceeded",
        ] {
            let error = refusal(code, 400);
            assert!(!error.is_retryable(), "{code}");
            assert_eq!(
                error.to_string(),
                format!("aws: failed to put an inline policy: {code}: from aws")
            );
        }
    }

    #[test]
    fn ledger_records_round_trip() {
        let grant = AwsGrant::ManagedPolicy {
            principal: Principal::parse("arn:aws:iam::123456789012:role/ci").unwrap(),
            policy_arn: "arn:aws:iam::aws:policy/ReadOnlyAccess".into(),
        };
        let text = serde_json::to_value(&grant).unwrap();
        assert_eq!(text["kind"], "managedPolicy");
        assert_eq!(text["policyArn"], "arn:aws:iam::aws:policy/ReadOnlyAccess");
        assert_eq!(serde_json::from_value::<AwsGrant>(text).unwrap(), grant);
    }
}
