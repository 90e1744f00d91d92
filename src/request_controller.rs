//! The AccessRequest controller driver. For now it observes requests and logs what it sees;
//! the grant loop (observe, decide, apply, status) builds on this.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use kube::{
    Api, Client, ResourceExt,
    core::DeserializeGuard,
    runtime::{Controller, controller::Action, watcher},
};
use tracing::{info, instrument, warn};

use crate::crd::v1alpha1::AccessRequest;

/// The controller's name, as it appears in logs and, later, Events.
pub const CONTROLLER_NAME: &str = "accessrequest-controller";

/// Why reconciling one request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {}

/// What every reconcile can reach.
pub struct Context {
    /// The operator's own client.
    pub client: Client,
}

/// Runs the controller until `shutdown` completes.
pub async fn run(client: Client, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    // Watching through DeserializeGuard keeps one malformed object from stopping the watch.
    let requests = Api::<DeserializeGuard<AccessRequest>>::all(client.clone());
    let context = Arc::new(Context { client });
    Controller::new(requests, watcher::Config::default().any_semantic())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(error = %crate::telemetry::error_chain(&error), "reconcile failed");
            }
        })
        .await;
}

#[instrument(skip_all, fields(request = %guarded.name_any(), namespace = guarded.namespace()))]
async fn reconcile(
    guarded: Arc<DeserializeGuard<AccessRequest>>,
    _context: Arc<Context>,
) -> Result<Action, Error> {
    match &guarded.0 {
        Ok(request) => info!(
            policy = %request.spec.policy,
            role = %request.spec.role,
            phase = ?request.status.as_ref().and_then(|status| status.phase),
            "observed access request"
        ),
        Err(invalid) => {
            warn!(error = %invalid.error, "ignoring access request that does not parse")
        }
    }
    Ok(Action::await_change())
}

fn error_policy(
    _request: Arc<DeserializeGuard<AccessRequest>>,
    _error: &Error,
    _context: Arc<Context>,
) -> Action {
    Action::requeue(Duration::from_secs(30))
}
