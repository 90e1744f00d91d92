//! The custom resources the operator serves, one module per API version, and their CRDs.

pub mod duration;
pub mod v1alpha1;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use duration::{ApiDuration, DurationError};

/// The API group of every resource here.
pub const GROUP: &str = "jit.dev";

/// Every CRD the operator needs, in the order they are written out and installed.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        v1alpha1::AccessPolicy::crd(),
        v1alpha1::AccessRequest::crd(),
        v1alpha1::NotificationChannel::crd(),
    ]
}

/// The file name `make crds` writes a CRD to, e.g. `accesspolicies.jit.dev.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}
