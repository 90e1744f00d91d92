//! Step 1, client required: read the request and its policy fresh from the API server, not
//! from the watch cache, so that a decision to grant rests on what is true now.

use kube::{Api, Client};

use super::decide::Observed;
use crate::crd::v1alpha1::{AccessPolicy, AccessRequest};

/// Why observing failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the request failed.
    #[error("failed to read the request")]
    ReadRequest(#[source] kube::Error),
    /// Reading the policy failed.
    #[error("failed to read policy {policy}")]
    ReadPolicy {
        /// The policy.
        policy: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

/// Reads the request and its policy; `None` when the request is gone.
pub async fn observe(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<Observed>, Error> {
    let requests = Api::<AccessRequest>::namespaced(client.clone(), namespace);
    let Some(request) = requests.get_opt(name).await.map_err(Error::ReadRequest)? else {
        return Ok(None);
    };
    let policy = Api::<AccessPolicy>::all(client.clone())
        .get_opt(&request.spec.policy)
        .await
        .map_err(|source| Error::ReadPolicy {
            policy: request.spec.policy.clone(),
            source,
        })?;
    Ok(Some(Observed { request, policy }))
}
