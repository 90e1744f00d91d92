//! The permission table: every right the operator uses, which the chart's ClusterRole and
//! Role and config/rbac grant exactly (a test keeps them equal), checked at start-up so that a
//! missing one stops the operator with its name rather than failing a request later.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::{Api, Client, api::PostParams};

use crate::cli::Args;

/// Why the permission check failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operator lacks a permission it needs.
    #[error("the operator may not {permission}")]
    Forbidden {
        /// The verb and resource, e.g. `patch accessrequests/status`.
        permission: String,
    },
    /// The operator lacks a permission it needs in its own namespace.
    #[error("the operator may not {permission}")]
    ForbiddenIn {
        /// The verb, resource and namespace.
        permission: String,
    },
    /// Asking the API server about permissions failed.
    #[error("failed to check the operator's permissions")]
    Check(#[source] kube::Error),
}

impl Error {
    /// What an operator of the operator should do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            Self::ForbiddenIn { .. } => {
                "create the namespace given by --namespace and bind the operator to the chart's Role there (config/rbac/: seal.yaml, ledger.yaml, operator-leader-election.yaml, webhook-certificate.yaml)"
            }
            Self::Forbidden { .. } | Self::Check(_) => {
                "bind the operator's identity to the chart's ClusterRole (config/rbac/operator.yaml, and webhook-certificate.yaml with --webhook-secret)"
            }
        }
    }
}

/// What the operator uses everywhere: (API group, resource with its subresource, verbs). The
/// chart's ClusterRole and config/rbac/operator.yaml grant exactly these (a test keeps them
/// equal), and start-up refuses to run without any one of them. Bindings are written with
/// server-side apply, which needs `create` when the object is new, `patch` otherwise.
pub const CLUSTER_PERMISSIONS: &[(&str, &str, &[&str])] = &[
    ("jit.dev", "accesspolicies", &["get", "list", "watch"]),
    (
        "jit.dev",
        "accessrequests",
        &["get", "list", "watch", "patch", "delete"],
    ),
    ("jit.dev", "accessrequests/status", &["patch"]),
    ("jit.dev", "accessrequests/finalizers", &["update"]),
    ("jit.dev", "notificationchannels", &["get", "list", "watch"]),
    ("jit.dev", "notificationchannels/status", &["patch"]),
    (
        "rbac.authorization.k8s.io",
        "rolebindings",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    (
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    (
        "rbac.authorization.k8s.io",
        "clusterroles",
        &["bind", "get"],
    ),
    ("authorization.k8s.io", "subjectaccessreviews", &["create"]),
    ("events.k8s.io", "events", &["create", "patch"]),
];

/// One permission to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needed {
    /// The API group.
    pub group: &'static str,
    /// The resource, with `/subresource` when there is one.
    pub resource: &'static str,
    /// The verb.
    pub verb: &'static str,
    /// The namespace, for namespaced grants.
    pub namespace: Option<String>,
    /// The object's name, for grants limited to one.
    pub name: Option<String>,
}

impl std::fmt::Display for Needed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if let Some(name) = &self.name {
            write!(f, " {name}")?;
        }
        if let Some(namespace) = &self.namespace {
            write!(f, " in namespace {namespace}")?;
        }
        Ok(())
    }
}

/// Everything the operator run with `args` will do, in the order start-up reports the first
/// missing one.
pub fn needed(args: &Args) -> Vec<Needed> {
    let mut all: Vec<Needed> = CLUSTER_PERMISSIONS
        .iter()
        .flat_map(|(group, resource, verbs)| {
            // `bind` is left out: administrators narrow it with resourceNames to the
            // ClusterRoles their policies name, which no check without a name could see. A
            // grant without it fails its request, saying so.
            verbs
                .iter()
                .filter(|verb| **verb != "bind")
                .map(|verb| Needed {
                    group,
                    resource,
                    verb,
                    namespace: None,
                    name: None,
                })
        })
        .collect();
    let mut add =
        |group, resource, verbs: &[&'static str], namespace: Option<&str>, name: Option<&str>| {
            all.extend(verbs.iter().map(|verb| Needed {
                group,
                resource,
                verb,
                namespace: namespace.map(str::to_owned),
                name: name.map(str::to_owned),
            }));
        };
    if args.leader_elect {
        let namespace = args
            .leader_election_namespace
            .as_deref()
            .unwrap_or(&args.namespace);
        add(
            "coordination.k8s.io",
            "leases",
            &["get", "create", "patch"],
            Some(namespace),
            None,
        );
    }
    // The sealing key, made once; it and the notification channels' Secrets are read.
    add(
        "",
        "secrets",
        &["create", "get"],
        Some(&args.namespace),
        None,
    );
    // The audit outboxes and the cloud grant ledger.
    add(
        "",
        "configmaps",
        CONFIG_MAP_VERBS,
        Some(&args.namespace),
        None,
    );
    if let Some(secret) = &args.webhook_secret {
        add(
            "",
            "secrets",
            &["get", "update"],
            Some(&args.namespace),
            Some(secret),
        );
        for kind in [
            "mutatingwebhookconfigurations",
            "validatingwebhookconfigurations",
        ] {
            add(
                "admissionregistration.k8s.io",
                kind,
                &["get", "patch"],
                None,
                Some(&args.webhook_configuration),
            );
        }
    }
    all
}

/// Refuses to run without any permission the operator will use, naming the first missing.
pub async fn check(client: &Client, args: &Args) -> Result<(), Error> {
    let needed = needed(args);
    // Asked all at once (start-up latency); the first missing one in the list is reported.
    let answers = futures::future::try_join_all(needed.iter().map(|permission| {
        let (resource, subresource) = match permission.resource.split_once('/') {
            Some((resource, subresource)) => (resource, Some(subresource.to_owned())),
            None => (permission.resource, None),
        };
        allowed(
            client,
            ResourceAttributes {
                group: Some(permission.group.to_owned()),
                resource: Some(resource.to_owned()),
                subresource,
                verb: Some(permission.verb.to_owned()),
                namespace: permission.namespace.clone(),
                name: permission.name.clone(),
                ..ResourceAttributes::default()
            },
        )
    }))
    .await?;
    match answers
        .into_iter()
        .zip(needed)
        .find(|(allowed, _)| !allowed)
    {
        Some((_, missing)) if missing.namespace.is_some() => Err(Error::ForbiddenIn {
            permission: missing.to_string(),
        }),
        Some((_, missing)) => Err(Error::Forbidden {
            permission: missing.to_string(),
        }),
        None => Ok(()),
    }
}

/// Whether the operator's own identity may do what `attributes` describe.
async fn allowed(client: &Client, attributes: ResourceAttributes) -> Result<bool, Error> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(attributes),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(Error::Check)?;
    Ok(answer.status.is_some_and(|status| status.allowed))
}

/// What the cloud grant ledger needs on ConfigMaps in the operator's namespace.
/// The audit outboxes (watched, merged into) and the grant ledger (replaced whole).
const CONFIG_MAP_VERBS: &[&str] = &[
    "get", "list", "watch", "create", "update", "patch", "delete",
];
