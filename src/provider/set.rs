//! The providers the operator runs with: built from the command line (the one place each
//! target is set up), and the one place that picks the provider for a role.

use std::{collections::BTreeMap, sync::Arc};

use kube::Client;
use tracing::{info, warn};

use super::{
    Error, Provider,
    aws::Aws,
    azure::{self, Azure},
    cloud::CloudProvider,
    gcp::{self, Gcp},
    kubernetes::KubernetesProvider,
    ledger::Ledger,
};
use crate::{crd::v1alpha1::PolicyRole, seal::Sealer, target::Target};

/// How to set up the providers (from the command line).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The targets to grant in besides Kubernetes (`--providers`).
    pub enabled: Vec<Target>,
    /// Where the grant ledger lives (`--namespace`).
    pub namespace: String,
    /// Google's Resource Manager endpoint, when not the public one.
    pub gcp_endpoint: Option<String>,
    /// Google's Cloud Logging endpoint, when not the public one.
    pub gcp_logging_endpoint: Option<String>,
    /// How to authenticate to Google.
    pub gcp_credentials: gcp::Credentials,
    /// Where Azure is and how to reach it.
    pub azure: azure::Settings,
}

/// The providers the operator runs with, one per enabled target.
#[derive(Clone)]
pub struct Providers {
    enabled: BTreeMap<Target, Arc<dyn Provider>>,
}

impl Providers {
    /// These providers, each under the target it names.
    pub fn new(providers: impl IntoIterator<Item = Arc<dyn Provider>>) -> Self {
        Self {
            enabled: providers
                .into_iter()
                .map(|provider| (provider.target(), provider))
                .collect(),
        }
    }

    /// The providers `settings` enables (Kubernetes always), cloud ones recording their
    /// grants in a ledger sealed by `sealer`.
    pub async fn from_settings(
        client: &Client,
        settings: &Settings,
        sealer: &Sealer,
    ) -> Result<Self, Error> {
        let mut providers: Vec<Arc<dyn Provider>> =
            vec![Arc::new(KubernetesProvider::new(client.clone()))];
        let ledger =
            |target| Ledger::new(client.clone(), &settings.namespace, target, sealer.clone());
        for target in Target::ALL {
            if !settings.enabled.contains(&target) {
                continue;
            }
            let provider: Arc<dyn Provider> = match target {
                // Always on, made above.
                Target::Kubernetes => continue,
                Target::Aws => Arc::new(CloudProvider::new(
                    Aws::from_environment().await,
                    ledger(target),
                )),
                Target::Gcp => {
                    if settings.gcp_credentials == gcp::Credentials::Anonymous {
                        warn!("gcp: anonymous credentials; only an emulator accepts them");
                    }
                    let cloud = Gcp::new(
                        settings.gcp_endpoint.as_deref(),
                        settings.gcp_logging_endpoint.as_deref(),
                        settings.gcp_credentials,
                    )
                    .await?;
                    Arc::new(CloudProvider::new(cloud, ledger(target)))
                }
                Target::Azure => Arc::new(CloudProvider::new(
                    Azure::new(&settings.azure)?,
                    ledger(target),
                )),
            };
            info!(provider = %target, namespace = %settings.namespace, "provider enabled");
            providers.push(provider);
        }
        Ok(Self::new(providers))
    }

    /// The provider that grants this role.
    pub fn for_role(&self, role: &PolicyRole) -> Result<Arc<dyn Provider>, Error> {
        let target = role.target().ok_or_else(|| Error::NoTarget {
            role: role.name.clone(),
        })?;
        self.enabled
            .get(&target)
            .cloned()
            .ok_or_else(|| Error::Disabled {
                role: role.name.clone(),
                target,
            })
    }

    /// The provider of the target `status.grant.provider` names, when it runs here.
    pub fn named(&self, name: &str) -> Option<Arc<dyn Provider>> {
        self.enabled.get(&Target::parse(name)?).cloned()
    }

    /// Every provider, for revoking a request whose role can no longer be looked up.
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Provider>> {
        self.enabled.values()
    }
}
