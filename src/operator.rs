//! Start-up and shutdown: connect, learn the operator's own identity, check the CRDs, serve
//! the admission webhooks and health endpoints, run the controller, and stop cleanly on
//! SIGINT or SIGTERM.

use std::sync::Arc;

use k8s_openapi::api::{
    authentication::v1::SelfSubjectReview,
    authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::{
    admission::{self, certs, register, server::WebhookServer, tls},
    cli::Args,
    crd::v1alpha1::{AccessPolicy, AccessRequest},
    leader,
    metrics::Metrics,
    provider::Providers,
    request_controller,
    seal::Sealer,
    server, sweep,
};

/// Why the operator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key that seals decision records and grant windows could not be had.
    #[error(transparent)]
    Seal(#[from] crate::seal::Error),
    /// No kubeconfig or in-cluster configuration could be loaded.
    #[error("failed to configure a kubernetes client")]
    Configure(#[source] kube::Error),
    /// The operator could not learn who it is.
    #[error("failed to learn the operator's own identity")]
    Identity(#[source] kube::Error),
    /// A CRD is missing or the operator may not list its objects.
    #[error("failed to list {kind} objects")]
    CrdMissing {
        /// The kind that could not be listed.
        kind: &'static str,
        /// Why.
        #[source]
        source: kube::Error,
    },
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
    /// A cloud provider could not be set up.
    #[error("failed to set up a provider")]
    Provider(#[source] crate::provider::Error),
    /// Asking the API server about permissions failed.
    #[error("failed to check the operator's permissions")]
    PermissionCheck(#[source] kube::Error),
    /// The health server failed.
    #[error("health server failed")]
    Server(#[from] server::Error),
    /// The webhook certificate could not be made.
    #[error("webhook certificate failed")]
    Certificate(#[from] certs::Error),
    /// The webhook certificate could not be read, kept or installed.
    #[error("webhook certificate failed")]
    ServingCertificate(#[from] tls::Error),
    /// The webhook server could not start.
    #[error("webhook server failed")]
    Webhook(#[from] admission::server::Error),
    /// The webhook configurations could not be registered.
    #[error("webhook registration failed")]
    Register(#[from] register::Error),
    /// Waiting for a shutdown signal failed.
    #[error("failed to install signal handlers")]
    Signal(#[source] std::io::Error),
    /// Leader election could not start.
    #[error("leader election failed")]
    Election(#[from] leader::Error),
    /// This replica led and can no longer be sure it does.
    #[error("lost the leader lease")]
    LostLeadership,
}

impl Error {
    /// What an operator of the operator should do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            Self::Seal(_) => {
                "the operator must be able to create, then read, its --seal-secret in --namespace (config/rbac/seal.yaml, the chart's Role)"
            }
            Self::Configure(_) => "set KUBECONFIG or run inside a cluster",
            Self::Identity(_) => {
                "check that the API server is reachable and the credentials are valid"
            }
            Self::CrdMissing { .. } => {
                "install the CRDs (kubectl apply --server-side -f crds/) and check the operator's RBAC (config/rbac/)"
            }
            Self::ForbiddenIn { .. } => {
                "create the namespace given by --namespace and bind the operator to the chart's Role there (config/rbac/: seal.yaml, ledger.yaml, operator-leader-election.yaml, webhook-certificate.yaml)"
            }
            Self::Forbidden { .. } | Self::PermissionCheck(_) => {
                "bind the operator's identity to the chart's ClusterRole (config/rbac/operator.yaml, and webhook-certificate.yaml with --webhook-secret)"
            }
            Self::Server(_) | Self::Webhook(_) => "choose another --health-addr or --webhook-addr",
            Self::Certificate(_) => "",
            Self::ServingCertificate(_) => {
                "check --webhook-cert-dir, or that the operator may create and update its --webhook-secret and patch its webhook configurations (the chart's Role and ClusterRole)"
            }
            Self::Register(_) => {
                "the operator needs RBAC on admissionregistration.k8s.io webhook configurations to register them"
            }
            Self::Signal(_) => "",
            Self::Election(_) => {
                "the operator needs get, create and patch on coordination.k8s.io leases in its namespace (config/rbac/operator-leader-election.yaml)"
            }
            Self::LostLeadership => {
                "another replica leads now; this one restarts as a follower (check the API server's reachability if it repeats)"
            }
            Self::Provider(_) => {
                "check the provider's credentials (GOOGLE_APPLICATION_CREDENTIALS, AZURE_*, workload identity) and --gcp-endpoint, --azure-endpoint, --azure-ca-file"
            }
        }
    }
}

/// Runs the operator until SIGINT or SIGTERM.
pub async fn run(args: Args) -> Result<(), Error> {
    let client = Client::try_default().await.map_err(Error::Configure)?;
    let identity = own_username(&client).await?;
    // Permissions first: without `list`, the CRD check could not tell a missing CRD from a
    // missing right.
    check_permissions(&client, &args).await?;
    check_crds(&client).await?;
    let sealer = Sealer::load_or_create(&client, &args.namespace, &args.seal_secret).await?;
    let providers = Providers::from_args(&client, &args, &sealer)
        .await
        .map_err(Error::Provider)?;

    let (stop_sender, stop_receiver) = watch::channel(false);
    let stopped = move || {
        let mut receiver = stop_receiver.clone();
        async move {
            // An error means the sender is gone, which is also a reason to stop.
            let _ = receiver.wait_for(|stop| *stop).await;
        }
    };

    let metrics = Metrics::shared();
    // The webhook's certificate: kept in a Secret by the operator, read from cert-manager's
    // files, or (local control planes) made now and registered with the API server.
    let secret_settings = args
        .webhook_secret
        .as_ref()
        .map(|secret| tls::SecretSettings {
            namespace: args.namespace.clone(),
            secret: secret.clone(),
            service: args.webhook_service.clone(),
            configuration: args.webhook_configuration.clone(),
        });
    let serving = match (&secret_settings, &args.webhook_cert_dir) {
        (Some(settings), _) => {
            let identity = tls::ensure_secret(&client, settings, jiff::Timestamp::now()).await?;
            tls::install_ca_bundle(&client, settings, &identity.ca_pem).await?;
            identity
        }
        (None, Some(directory)) => tls::read_directory(directory)?,
        (None, None) => certs::generate(args.webhook_addr.ip())?,
    };
    let ca_pem = serving.ca_pem.clone();
    let presented = serving
        .chain
        .first()
        .map(|der| der.to_vec())
        .unwrap_or_default();
    let certificate = tls::Reloadable::new(serving)?;
    if let Some(settings) = secret_settings {
        tokio::spawn(tls::follow_secret(
            client.clone(),
            settings,
            certificate.clone(),
            presented,
            args.resync_interval,
            stopped(),
        ));
    } else if let Some(directory) = &args.webhook_cert_dir {
        tokio::spawn(tls::follow_directory(
            directory.clone(),
            certificate.clone(),
            args.resync_interval,
            stopped(),
        ));
    }
    let webhook = WebhookServer::bind(
        args.webhook_addr,
        certificate,
        client.clone(),
        &identity,
        metrics.clone(),
        crate::admission::Administrators {
            users: args.admin_users.clone(),
            groups: args.admin_groups.clone(),
        },
        sealer.clone(),
    )
    .await?;
    let webhook_addr = webhook.local_addr()?;
    let webhook_task = tokio::spawn(webhook.serve(stopped()));
    if args.register_webhooks {
        register::register(
            &client,
            &format!("https://{webhook_addr}"),
            &ca_pem,
            &identity,
        )
        .await?;
        info!(url = %format!("https://{webhook_addr}"), "registered admission webhooks");
    }

    let readiness = server::Readiness::default();
    readiness.set_webhook_serving();
    let health =
        server::HealthServer::bind(args.health_addr, readiness.clone(), metrics.clone()).await?;
    let health_addr = health.local_addr()?;
    let server = tokio::spawn(health.serve(stopped()));

    let instance = std::env::var("POD_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| format!("{identity}-{}", std::process::id()));
    let mut signal = Box::pin(wait_for_signal());
    let mut election = None;
    if args.leader_elect {
        readiness.set_following(true);
        info!(health_addr = %health_addr, webhook_addr = %webhook_addr, identity = %identity, instance = %instance, "operator ready; waiting to lead");
        let settings = leader::Settings {
            namespace: args
                .leader_election_namespace
                .clone()
                .unwrap_or_else(|| args.namespace.clone()),
            name: LEASE_NAME.to_owned(),
            identity: instance.clone(),
            duration: args.leader_election_lease_duration,
        };
        let mut joined = leader::Election::join(client.clone(), settings).await?;
        tokio::select! {
            () = joined.acquired() => {}
            result = &mut signal => {
                info!("shutting down before leading");
                return stop_serving(stop_sender, joined, server, webhook_task, result).await;
            }
        }
        readiness.set_following(false);
        election = Some(joined);
    }

    let context = Arc::new(request_controller::Context::new(
        client,
        providers,
        Some(instance.clone()),
        args.resync_interval,
        metrics.clone(),
        sealer,
    ));
    let sweeper = tokio::spawn(sweep::run(
        context.client.clone(),
        context.providers.clone(),
        args.resync_interval,
        metrics,
        stopped(),
    ));
    let synced = readiness.clone();
    let announce = (identity.clone(), instance.clone());
    let controller = tokio::spawn(request_controller::run(context, stopped(), move || {
        synced.set_caches_synced();
        let (identity, instance) = announce;
        info!(health_addr = %health_addr, webhook_addr = %webhook_addr, identity = %identity, instance = %instance, "operator ready");
    }));

    let lost = async {
        match election.as_mut() {
            Some(election) => election.lost().await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        result = &mut signal => {
            info!("shutting down");
            result
        }
        () = lost => {
            // Another replica may lead any moment now: stop acting at once; the Deployment
            // restarts this one as a follower.
            error!("lost the leader lease; stopping so that only the new leader acts");
            Err(Error::LostLeadership)
        }
    };
    // Stop taking work: not ready (load balancers drain the webhook), then, after the
    // delay, every task stops; running reconciles finish, interrupted ones are resumed from
    // status by the next leader.
    readiness.set_stopping();
    if outcome.is_ok() && !args.shutdown_delay.is_zero() {
        debug!(delay = ?args.shutdown_delay, "draining before stopping");
        tokio::time::sleep(args.shutdown_delay).await;
    }
    let _ = stop_sender.send(true);
    let stopping = async {
        let _ = controller.await;
        debug!("controller stopped");
        let _ = sweeper.await;
        let _ = webhook_task.await;
        server.await
    };
    match tokio::time::timeout(SHUTDOWN_GRACE, stopping).await {
        Ok(Ok(result)) => result?,
        Ok(Err(_)) => {}
        Err(_) => warn!(grace = ?SHUTDOWN_GRACE, "shutdown took too long; exiting anyway"),
    }
    if let Some(election) = election {
        election.leave().await;
    }
    outcome
}

/// The Lease replicas elect their leader with.
const LEASE_NAME: &str = "jit-operator";

/// Stops a replica that never led: its servers, and its place in the election.
async fn stop_serving(
    stop: watch::Sender<bool>,
    election: leader::Election,
    server: tokio::task::JoinHandle<Result<(), server::Error>>,
    webhook: tokio::task::JoinHandle<()>,
    outcome: Result<(), Error>,
) -> Result<(), Error> {
    let _ = stop.send(true);
    election.leave().await;
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        let _ = webhook.await;
        server.await
    })
    .await;
    outcome
}

/// How long a graceful shutdown may take.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Who the API server says the operator is; admission exempts exactly this user.
async fn own_username(client: &Client) -> Result<String, Error> {
    let review = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(Error::Identity)?;
    Ok(review
        .status
        .and_then(|status| status.user_info)
        .and_then(|user| user.username)
        .unwrap_or_default())
}

async fn check_crds(client: &Client) -> Result<(), Error> {
    let one = ListParams::default().limit(1);
    Api::<AccessPolicy>::all(client.clone())
        .list_metadata(&one)
        .await
        .map_err(|source| Error::CrdMissing {
            kind: "AccessPolicy",
            source,
        })?;
    Api::<AccessRequest>::all(client.clone())
        .list_metadata(&one)
        .await
        .map_err(|source| Error::CrdMissing {
            kind: "AccessRequest",
            source,
        })?;
    Ok(())
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
        &["get", "list", "watch", "patch"],
    ),
    ("jit.dev", "accessrequests/status", &["patch"]),
    ("jit.dev", "accessrequests/finalizers", &["update"]),
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
    // The sealing key: made once, read by every replica.
    add("", "secrets", &["create"], Some(&args.namespace), None);
    add(
        "",
        "secrets",
        &["get"],
        Some(&args.namespace),
        Some(&args.seal_secret),
    );
    let cloud = args.providers.iter().any(|target| target.keeps_ledger());
    if cloud {
        add("", "configmaps", LEDGER_VERBS, Some(&args.namespace), None);
    }
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
async fn check_permissions(client: &Client, args: &Args) -> Result<(), Error> {
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
        .map_err(Error::PermissionCheck)?;
    Ok(answer.status.is_some_and(|status| status.allowed))
}

/// What the cloud grant ledger needs on ConfigMaps in the operator's namespace.
const LEDGER_VERBS: &[&str] = &["get", "list", "create", "update", "delete"];

async fn wait_for_signal() -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.map_err(Error::Signal),
        _ = terminate.recv() => Ok(()),
    }
}
