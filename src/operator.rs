//! Start-up and shutdown: connect, check the CRDs are installed, serve health endpoints, run
//! the controllers, and stop cleanly on SIGINT or SIGTERM.

use kube::{Api, Client, api::ListParams};
use tokio::sync::watch;
use tracing::info;

use crate::{
    cli::Args,
    crd::v1alpha1::{AccessPolicy, AccessRequest},
    request_controller, server,
};

/// Why the operator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No kubeconfig or in-cluster configuration could be loaded.
    #[error("failed to configure a kubernetes client")]
    Configure(#[source] kube::Error),
    /// A CRD is missing or the operator may not list its objects.
    #[error("failed to list {kind} objects")]
    CrdMissing {
        /// The kind that could not be listed.
        kind: &'static str,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The health server failed.
    #[error("health server failed")]
    Server(#[from] server::Error),
    /// Waiting for a shutdown signal failed.
    #[error("failed to install signal handlers")]
    Signal(#[source] std::io::Error),
}

impl Error {
    /// What an operator of the operator should do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            Self::Configure(_) => "set KUBECONFIG or run inside a cluster",
            Self::CrdMissing { .. } => {
                "install the CRDs (kubectl apply --server-side -f crds/) and check the operator's RBAC"
            }
            Self::Server(_) => "choose another --health-addr",
            Self::Signal(_) => "",
        }
    }
}

/// Runs the operator until SIGINT or SIGTERM.
pub async fn run(args: Args) -> Result<(), Error> {
    let client = Client::try_default().await.map_err(Error::Configure)?;
    check_crds(&client).await?;

    let readiness = server::Readiness::default();
    let health = server::HealthServer::bind(args.health_addr, readiness.clone()).await?;
    let health_addr = health.local_addr()?;

    let (stop_sender, stop_receiver) = watch::channel(false);
    let stopped = move || {
        let mut receiver = stop_receiver.clone();
        async move {
            // An error means the sender is gone, which is also a reason to stop.
            let _ = receiver.wait_for(|stop| *stop).await;
        }
    };

    let controller = tokio::spawn(request_controller::run(client, stopped()));
    let server = tokio::spawn(health.serve(stopped()));
    readiness.set_ready();
    info!(health_addr = %health_addr, "operator ready");

    let signal_result = wait_for_signal().await;
    info!("shutting down");
    let _ = stop_sender.send(true);
    let _ = controller.await;
    if let Ok(result) = server.await {
        result?;
    }
    signal_result
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

async fn wait_for_signal() -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.map_err(Error::Signal),
        _ = terminate.recv() => Ok(()),
    }
}
