//! Start-up and shutdown: connect, learn the operator's own identity, check its permissions
//! and the CRDs, serve the admission webhooks and the health and metrics endpoints, lead (or
//! wait to), run the controller and the sweep, and stop cleanly on SIGINT or SIGTERM.

use std::sync::Arc;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::{
    admission::{self, register, server::WebhookServer},
    certificate,
    cli::Args,
    crd::v1alpha1::{AccessPolicy, AccessRequest},
    health_metrics, leader,
    metrics::Metrics,
    permissions,
    provider::{self, Providers},
    request_controller,
    seal::Sealer,
    sweep,
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
    /// The operator lacks a permission, or could not ask.
    #[error(transparent)]
    Permissions(#[from] permissions::Error),
    /// A cloud provider could not be set up.
    #[error("failed to set up a provider")]
    Provider(#[source] provider::Error),
    /// The health and metrics server failed.
    #[error("health server failed")]
    Server(#[from] health_metrics::Error),
    /// The webhook certificate could not be made, read, kept or installed.
    #[error("webhook certificate failed")]
    Certificate(#[from] certificate::Error),
    /// The webhook server could not start.
    #[error("webhook server failed")]
    Webhook(#[from] admission::server::Error),
    /// The audit webhook (session activity) could not start.
    #[error("audit webhook server failed")]
    Activity(#[from] crate::activity::server::Error),
    /// The session activity thread could not start.
    #[error(transparent)]
    ActivityThread(#[from] crate::activity::thread::Error),
    /// The session activity thread stopped before its webhook served.
    #[error("the session activity thread stopped before serving")]
    ActivityStopped,
    /// The webhook configurations could not be registered.
    #[error("webhook registration failed")]
    Register(#[from] register::Error),
    /// Waiting for a shutdown signal failed.
    #[error("failed to install signal handlers")]
    Signal(#[source] std::io::Error),
    /// Leader election could not start.
    #[error("leader election failed")]
    Election(#[from] leader::Error),
    /// The audit file could not be opened for appending.
    #[error("failed to open the audit file")]
    AuditFile(#[source] std::io::Error),
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
            Self::Permissions(error) => error.hint(),
            Self::Server(_) | Self::Webhook(_) => "choose another --health-addr or --webhook-addr",
            Self::Activity(_) => {
                "check --activity-addr (free), --activity-cert-dir (tls.crt, tls.key) and --activity-token-file (readable, not empty)"
            }
            Self::ActivityThread(_) | Self::ActivityStopped => {
                "the operator could not run a thread of its own: check the container's process and thread limits"
            }
            Self::Certificate(_) => {
                "check --webhook-cert-dir, or that the operator may create and update its --webhook-secret and patch its webhook configurations (the chart's Role and ClusterRole)"
            }
            Self::Register(_) => {
                "the operator needs RBAC on admissionregistration.k8s.io webhook configurations to register them"
            }
            Self::Signal(_) => "",
            Self::AuditFile(_) => "check --audit-file: its directory must exist and be writable",
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

/// Tells every task to stop, and hands each a future that completes when it should.
#[derive(Clone)]
struct Stop {
    sender: watch::Sender<bool>,
}

impl Stop {
    fn new() -> Self {
        Self {
            sender: watch::channel(false).0,
        }
    }

    /// A future that completes once `stop` is called (or the sender is gone).
    fn stopped(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut receiver = self.sender.subscribe();
        async move {
            let _ = receiver.wait_for(|stop| *stop).await;
        }
    }

    fn stop(&self) {
        // Stored even with no receiver left, so a task that subscribes later sees it.
        self.sender.send_replace(true);
    }
}

/// Runs the operator until SIGINT or SIGTERM.
pub async fn run(args: Args) -> Result<(), Error> {
    let client = Client::try_default().await.map_err(Error::Configure)?;
    let identity = own_username(&client).await?;
    // Permissions first: without `list`, the CRD check could not tell a missing CRD from a
    // missing right.
    permissions::check(&client, &args).await?;
    check_crds(&client).await?;
    let sealer = Sealer::load_or_create(&client, &args.namespace, &args.seal_secret).await?;
    let providers = Providers::from_settings(&client, &provider_settings(&args), &sealer)
        .await
        .map_err(Error::Provider)?;
    let stop = Stop::new();
    let metrics = Metrics::shared();
    // Every replica records (its webhook's refusals); only the leader delivers.
    let recorder = Arc::new(
        crate::audit::Recorder::new(
            client.clone(),
            &args.namespace,
            sealer.clone(),
            args.audit_file.as_ref(),
            args.audit_channels.clone(),
        )
        .map_err(Error::AuditFile)?,
    );
    let (webhook_addr, webhook_task) = serve_webhook(
        &client, &args, &identity, &metrics, &sealer, &recorder, &stop,
    )
    .await?;
    // Every replica offers the actions it attributes to the channels that asked for them.
    let fanout = crate::activity::channels::start(
        client.clone(),
        args.namespace.clone(),
        metrics.clone(),
        stop.stopped(),
    );
    let activity_task = serve_activity(&client, &args, &metrics, &recorder, &fanout, &stop).await?;
    let webhook_task = tokio::spawn(async move {
        let _ = webhook_task.await;
        if let Some(activity) = activity_task {
            let _ = activity.await;
        }
    });
    let readiness = health_metrics::Readiness::default();
    readiness.set_webhook_serving();
    let health =
        health_metrics::HealthServer::bind(args.health_addr, readiness.clone(), metrics.clone())
            .await?;
    let health_addr = health.local_addr()?;
    let server = tokio::spawn(health.serve(stop.stopped()));

    let instance = std::env::var("POD_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| format!("{identity}-{}", std::process::id()));
    let mut signal = Box::pin(wait_for_signal());
    let mut election = None;
    if args.leader_elect {
        readiness.set_following(true);
        info!(health_addr = %health_addr, webhook_addr = %webhook_addr, identity = %identity, instance = %instance, "operator ready; waiting to lead");
        let mut joined = leader::Election::join(client.clone(), lease(&args, &instance)).await?;
        tokio::select! {
            () = joined.acquired() => {}
            result = &mut signal => {
                info!("shutting down before leading");
                return stop_serving(stop, joined, server, webhook_task, result).await;
            }
        }
        readiness.set_following(false);
        election = Some(joined);
    }

    let context = Arc::new(
        request_controller::Context::new(
            client,
            providers,
            Some(instance.clone()),
            args.resync_interval,
            metrics.clone(),
            sealer,
        )
        .with_audit(recorder)
        .with_retention(args.retain_ended),
    );
    let sweeper = tokio::spawn(sweep::run(
        context.client.clone(),
        context.providers.clone(),
        args.resync_interval,
        metrics,
        stop.stopped(),
    ));
    // Cloud grants' activity, read from the clouds' logs; nothing to read without a cloud.
    let clouds_enabled = context
        .providers
        .all()
        .any(|provider| provider.target() != crate::target::Target::Kubernetes);
    let cloud_activity = clouds_enabled.then(|| {
        tokio::spawn(crate::activity::cloud::run(
            context.client.clone(),
            context.providers.clone(),
            crate::activity::cloud::Settings {
                interval: args.cloud_activity_interval,
                delay: args.cloud_activity_delay,
            },
            context.metrics.clone(),
            context.audit.clone(),
            fanout.clone(),
            stop.stopped(),
        ))
    });
    let synced = readiness.clone();
    let controller = tokio::spawn(request_controller::run(
        context,
        stop.stopped(),
        move || {
            synced.set_caches_synced();
            info!(health_addr = %health_addr, webhook_addr = %webhook_addr, identity = %identity, instance = %instance, "operator ready");
        },
    ));

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
    stop.stop();
    let stopping = async {
        let _ = controller.await;
        debug!("controller stopped");
        let _ = sweeper.await;
        if let Some(cloud_activity) = cloud_activity {
            let _ = cloud_activity.await;
        }
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

/// Serves the admission webhooks with their certificate (kept in a Secret by the operator,
/// read from cert-manager's files, or made now and registered with a local API server).
async fn serve_webhook(
    client: &Client,
    args: &Args,
    identity: &str,
    metrics: &Arc<Metrics>,
    sealer: &Sealer,
    recorder: &Arc<crate::audit::Recorder>,
    stop: &Stop,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), Error> {
    let source = match (&args.webhook_secret, &args.webhook_cert_dir) {
        (Some(secret), _) => certificate::Source::Secret(certificate::SecretSettings {
            namespace: args.namespace.clone(),
            secret: secret.clone(),
            service: args.webhook_service.clone(),
            configuration: args.webhook_configuration.clone(),
        }),
        (None, Some(directory)) => certificate::Source::Directory(directory.clone()),
        (None, None) => certificate::Source::Ephemeral(args.webhook_addr.ip()),
    };
    let (serving, ca_pem) =
        certificate::serve(client, source, args.resync_interval, || stop.stopped()).await?;
    let webhook = WebhookServer::bind(
        args.webhook_addr,
        serving,
        client.clone(),
        identity,
        metrics.clone(),
        admission::Administrators {
            users: args.admin_users.clone(),
            groups: args.admin_groups.clone(),
        },
        sealer.clone(),
    )
    .await?
    .with_audit(recorder.clone());
    let address = webhook.local_addr()?;
    let task = tokio::spawn(webhook.serve(stop.stopped()));
    if args.register_webhooks {
        let url = format!("https://{address}");
        register::register(client, &url, &ca_pem, identity).await?;
        info!(%url, "registered admission webhooks");
    }
    Ok((address, task))
}

/// Serves the API server's audit webhook and records session activity, when
/// `--activity-addr` asks for it. Every replica does: the API server posts to any. Both run
/// on a thread of their own at a lower CPU priority ([`crate::activity::thread`]).
async fn serve_activity(
    client: &Client,
    args: &Args,
    metrics: &Arc<Metrics>,
    audit: &Arc<crate::audit::Recorder>,
    fanout: &crate::activity::channels::Fanout,
    stop: &Stop,
) -> Result<Option<tokio::task::JoinHandle<()>>, Error> {
    let (Some(address), Some(directory), Some(token_file)) = (
        args.activity_addr,
        args.activity_cert_dir.clone(),
        args.activity_token_file.clone(),
    ) else {
        return Ok(None);
    };
    let (client, metrics, audit, fanout, stop) = (
        client.clone(),
        metrics.clone(),
        audit.clone(),
        fanout.clone(),
        stop.clone(),
    );
    let resync = args.resync_interval;
    let (bound, serving) = tokio::sync::oneshot::channel();
    let finished = crate::activity::thread::spawn(move || async move {
        let started = async {
            let (certificate, _) = certificate::serve(
                &client,
                certificate::Source::Directory(directory),
                resync,
                || stop.stopped(),
            )
            .await?;
            let (recorder, lines) = crate::activity::recorder::Recorder::new(metrics.clone());
            let server = crate::activity::server::AuditServer::bind(
                address,
                certificate,
                &token_file,
                recorder.clone(),
                metrics,
            )
            .await?;
            Ok::<_, Error>((server.local_addr()?, server, recorder, lines))
        };
        let (server, recorder, lines) = match started.await {
            Ok((address, server, recorder, lines)) => {
                if bound.send(Ok(address)).is_err() {
                    return;
                }
                (server, recorder, lines)
            }
            Err(error) => {
                let _ = bound.send(Err(error));
                return;
            }
        };
        let recording = recorder.run(
            client,
            lines,
            move |attribution: &crate::activity::Attribution, event: &serde_json::Value| {
                audit.write_line(event);
                fanout.offer(&attribution.policy, event);
            },
            stop.stopped(),
        );
        tokio::join!(server.serve(stop.stopped()), recording);
    })?;
    let address = serving.await.map_err(|_| Error::ActivityStopped)??;
    info!(%address, path = crate::activity::server::AUDIT_PATH, "serving the audit webhook");
    Ok(Some(tokio::spawn(async move {
        let _ = finished.await;
    })))
}

/// The leader election settings `args` ask for.
fn lease(args: &Args, instance: &str) -> leader::Settings {
    leader::Settings {
        namespace: args
            .leader_election_namespace
            .clone()
            .unwrap_or_else(|| args.namespace.clone()),
        name: LEASE_NAME.to_owned(),
        identity: instance.to_owned(),
        duration: args.leader_election_lease_duration,
    }
}

/// The Lease replicas elect their leader with.
const LEASE_NAME: &str = "jit-operator";

/// Stops a replica that never led: its servers, and its place in the election.
async fn stop_serving(
    stop: Stop,
    election: leader::Election,
    server: tokio::task::JoinHandle<Result<(), health_metrics::Error>>,
    webhook: tokio::task::JoinHandle<()>,
    outcome: Result<(), Error>,
) -> Result<(), Error> {
    stop.stop();
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

/// What `--providers` and the cloud flags set up.
fn provider_settings(args: &Args) -> provider::Settings {
    provider::Settings {
        enabled: args.providers.clone(),
        namespace: args.namespace.clone(),
        gcp_endpoint: args.gcp_endpoint.clone(),
        gcp_logging_endpoint: args.gcp_logging_endpoint.clone(),
        gcp_credentials: args.gcp_credentials,
        azure: provider::azure::Settings {
            endpoint: args.azure_endpoint.clone(),
            audience: args.azure_audience.clone(),
            ca_file: args.azure_ca_file.clone(),
        },
    }
}

async fn wait_for_signal() -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.map_err(Error::Signal),
        _ = terminate.recv() => Ok(()),
    }
}
