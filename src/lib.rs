//! jit-operator: just-in-time privileged access for Kubernetes and the clouds. A request asks
//! for one role of one policy for a bounded time; the operator grants it when the policy is
//! satisfied and takes it away when the time is up.

#![deny(missing_docs)]

pub mod admission;
pub mod certificate;
pub mod cli;
pub mod crd;
pub mod health_metrics;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod permissions;
pub mod policy;
pub mod provider;
pub mod request_controller;
pub mod seal;
pub mod subject;
pub mod sweep;
pub mod target;
pub mod telemetry;

#[cfg(test)]
pub mod fixtures;
