//! Registers the admission webhooks with the API server when the operator serves them itself
//! (a local control plane): a `url:` clientConfig and the CA bundle. The operator's own
//! requests are excluded by a matchCondition, so its writes never depend on the webhook.

use k8s_openapi::{
    ByteString,
    api::admissionregistration::v1::{
        MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations,
        ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};

use crate::provider::{MANAGED_BY, MANAGED_BY_LABEL};

/// The name of both webhook configurations.
pub const CONFIGURATION_NAME: &str = "jit-operator";
/// The mutating webhook's path.
pub const MUTATE_PATH: &str = "/mutate";
/// The validating webhook's path.
pub const VALIDATE_PATH: &str = "/validate";
/// The policy validating webhook's path.
pub const VALIDATE_POLICY_PATH: &str = "/validate-policy";
const FIELD_MANAGER: &str = "jit-operator";

/// Why registration failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused a configuration.
    #[error("failed to register the {0} webhook configuration")]
    Apply(&'static str, #[source] kube::Error),
}

fn rules(resources: &[&str], operations: &[&str]) -> Option<Vec<RuleWithOperations>> {
    scoped_rules(resources, operations, "Namespaced")
}

fn scoped_rules(
    resources: &[&str],
    operations: &[&str],
    scope: &str,
) -> Option<Vec<RuleWithOperations>> {
    Some(vec![RuleWithOperations {
        api_groups: Some(vec![crate::crd::GROUP.into()]),
        api_versions: Some(vec!["v1alpha1".into()]),
        operations: Some(
            operations
                .iter()
                .map(|operation| operation.to_string())
                .collect(),
        ),
        resources: Some(
            resources
                .iter()
                .map(|resource| resource.to_string())
                .collect(),
        ),
        scope: Some(scope.into()),
    }])
}

fn not_the_operator(operator: &str) -> Option<Vec<MatchCondition>> {
    // CEL string literal: the username is quoted as JSON, which CEL accepts.
    let quoted = serde_json::Value::String(operator.to_owned()).to_string();
    Some(vec![MatchCondition {
        name: "not-the-operator".into(),
        expression: format!("request.userInfo.username != {quoted}"),
    }])
}

fn metadata() -> ObjectMeta {
    ObjectMeta {
        name: Some(CONFIGURATION_NAME.into()),
        labels: Some([(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned())].into()),
        ..ObjectMeta::default()
    }
}

fn client_config(base_url: &str, path: &str, ca_pem: &str) -> WebhookClientConfig {
    WebhookClientConfig {
        url: Some(format!("{base_url}{path}")),
        ca_bundle: Some(ByteString(ca_pem.as_bytes().to_vec())),
        service: None,
    }
}

/// The mutating configuration: stamps requesters and records decisions.
pub fn mutating(base_url: &str, ca_pem: &str, operator: &str) -> MutatingWebhookConfiguration {
    MutatingWebhookConfiguration {
        metadata: metadata(),
        webhooks: Some(vec![MutatingWebhook {
            name: "mutate.accessrequests.jit.dev".into(),
            client_config: client_config(base_url, MUTATE_PATH, ca_pem),
            rules: rules(&["accessrequests"], &["CREATE", "UPDATE"]),
            failure_policy: Some("Fail".into()),
            side_effects: "None".into(),
            admission_review_versions: vec!["v1".into()],
            match_conditions: not_the_operator(operator),
            timeout_seconds: Some(10),
            reinvocation_policy: Some("Never".into()),
            ..MutatingWebhook::default()
        }]),
    }
}

/// The validating configuration: refuses what users may not do, status writes included.
pub fn validating(base_url: &str, ca_pem: &str, operator: &str) -> ValidatingWebhookConfiguration {
    ValidatingWebhookConfiguration {
        metadata: metadata(),
        webhooks: Some(vec![
            ValidatingWebhook {
                name: "validate.accessrequests.jit.dev".into(),
                client_config: client_config(base_url, VALIDATE_PATH, ca_pem),
                // DELETE too: deleting a request revokes its grant, so not everyone may.
                rules: rules(
                    &["accessrequests", "accessrequests/status"],
                    &["CREATE", "UPDATE", "DELETE"],
                ),
                failure_policy: Some("Fail".into()),
                side_effects: "None".into(),
                admission_review_versions: vec!["v1".into()],
                match_conditions: not_the_operator(operator),
                timeout_seconds: Some(10),
                ..ValidatingWebhook::default()
            },
            ValidatingWebhook {
                name: "validate.accesspolicies.jit.dev".into(),
                client_config: client_config(base_url, VALIDATE_POLICY_PATH, ca_pem),
                rules: scoped_rules(&["accesspolicies"], &["CREATE", "UPDATE"], "Cluster"),
                // Fail open, unlike the request webhooks: the operator checks the same limits
                // before it evaluates anything, and a policy must stay fixable while it is down.
                failure_policy: Some("Ignore".into()),
                side_effects: "None".into(),
                admission_review_versions: vec!["v1".into()],
                match_conditions: not_the_operator(operator),
                timeout_seconds: Some(10),
                ..ValidatingWebhook::default()
            },
        ]),
    }
}

/// Creates or updates both configurations.
pub async fn register(
    client: &Client,
    base_url: &str,
    ca_pem: &str,
    operator: &str,
) -> Result<(), Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(
            CONFIGURATION_NAME,
            &params,
            &Patch::Apply(&mutating(base_url, ca_pem, operator)),
        )
        .await
        .map_err(|error| Error::Apply("mutating", error))?;
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .patch(
            CONFIGURATION_NAME,
            &params,
            &Patch::Apply(&validating(base_url, ca_pem, operator)),
        )
        .await
        .map_err(|error| Error::Apply("validating", error))?;
    Ok(())
}
