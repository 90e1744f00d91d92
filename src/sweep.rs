//! The orphan sweep: revokes every managed grant whose request no longer exists or has ended,
//! at start-up and every resync. Only grants carrying the operator's managed-by marker are
//! looked at; a request that is pending keeps its grant (its reconcile decides).

use std::{collections::HashMap, sync::Arc, time::Duration};

use kube::{Api, Client, ResourceExt, api::ListParams};
use tracing::{info, warn};

use crate::{
    crd::v1alpha1::AccessRequest,
    metrics::Metrics,
    provider::{self, Providers, RequestRef},
    telemetry::error_chain,
};

/// Why a sweep failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Listing requests failed.
    #[error("failed to list access requests")]
    ListRequests(#[source] kube::Error),
    /// A provider failed to list or revoke.
    #[error("failed to sweep {target} grants")]
    Provider {
        /// The target.
        target: crate::target::Target,
        /// Why.
        #[source]
        source: provider::Error,
    },
}

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Managed grants looked at.
    pub examined: usize,
    /// Request UIDs whose grants were revoked.
    pub swept: Vec<String>,
    /// Request UIDs whose grants could not be revoked this time.
    pub failed: Vec<String>,
}

/// Whether a request with this UID may hold a grant: it exists and has not ended.
fn is_live(requests: &HashMap<String, bool>, uid: &str) -> bool {
    requests.get(uid).copied().unwrap_or(false)
}

/// Sweeps once.
pub async fn sweep_once(client: &Client, providers: &Providers) -> Result<Report, Error> {
    let mut report = Report::default();
    for provider in providers.all() {
        // Grants first, then requests: a request listed later cannot be missing for a grant
        // made before, since grants are made only for existing requests.
        let managed = provider
            .list_managed()
            .await
            .map_err(|source| Error::Provider {
                target: provider.target(),
                source,
            })?;
        if managed.is_empty() {
            continue;
        }
        let requests = live_requests(client).await?;
        for uid in managed {
            report.examined += 1;
            if is_live(&requests, &uid)
                || report.swept.contains(&uid)
                || report.failed.contains(&uid)
            {
                continue;
            }
            let orphan = RequestRef {
                uid: uid.clone(),
                namespace: String::new(),
                name: String::new(),
            };
            // One entry that cannot be revoked must not stop the sweep of the others.
            match provider.revoke(&orphan).await {
                Ok(()) => {
                    warn!(provider = %provider.target(), request_uid = %uid, "revoked an orphaned grant");
                    report.swept.push(uid);
                }
                Err(error) => {
                    warn!(provider = %provider.target(), request_uid = %uid, error = %error_chain(&error), "failed to revoke an orphaned grant; will retry");
                    report.failed.push(uid);
                }
            }
        }
    }
    Ok(report)
}

/// Requests listed at once: a sweep holds one page of them, not every request (the whole
/// list at 3,000 requests was the operator's largest allocation).
const PAGE: u32 = 250;

/// Whether each request may hold a grant (it exists and has not ended), by UID; read a page
/// at a time from one consistent list.
async fn live_requests(client: &Client) -> Result<HashMap<String, bool>, Error> {
    let api = Api::<AccessRequest>::all(client.clone());
    let mut live = HashMap::new();
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = api.list(&params).await.map_err(Error::ListRequests)?;
        for request in &page.items {
            let ended = request
                .status
                .as_ref()
                .and_then(|status| status.phase)
                .is_some_and(|phase| phase.is_final());
            if let Some(uid) = request.uid() {
                live.insert(uid, !ended);
            }
        }
        match page.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(live),
        }
    }
}

/// Sweeps now and then every `interval` until `shutdown` completes.
pub async fn run(
    client: Client,
    providers: Providers,
    interval: Duration,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut ticks = tokio::time::interval(interval);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticks.tick() => {}
        }
        match sweep_once(&client, &providers).await {
            Ok(report) if !report.swept.is_empty() => {
                metrics.orphans_swept.inc_by(report.swept.len() as u64);
                info!(
                    examined = report.examined,
                    swept = report.swept.len(),
                    "orphan sweep done"
                );
            }
            Ok(_) => {}
            Err(error) => warn!(error = %error_chain(&error), "orphan sweep failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_existing_open_requests_are_live() {
        let requests = HashMap::from([("open".to_string(), true), ("ended".to_string(), false)]);
        assert!(is_live(&requests, "open"));
        assert!(!is_live(&requests, "ended"));
        assert!(!is_live(&requests, "gone"));
    }
}
