//! jit-operator: just-in-time privileged access for Kubernetes and the clouds. A request asks
//! for one role of one policy for a bounded time; the operator grants it when the policy is
//! satisfied and takes it away when the time is up.

#![deny(missing_docs)]

pub(crate) mod activity;
pub(crate) mod admission;
pub(crate) mod audit;
pub mod certificate;
pub mod cli;
pub mod crd;
pub(crate) mod failpoint;
pub(crate) mod health_metrics;
pub(crate) mod https;
pub mod kubectl_jit;
pub(crate) mod leader;
pub(crate) mod metrics;
pub mod operator;
pub(crate) mod permissions;
pub(crate) mod policy;
pub mod provider;
pub(crate) mod request_controller;
pub(crate) mod retention;
pub(crate) mod retry;
pub(crate) mod seal;
pub(crate) mod subject;
pub(crate) mod sweep;
pub mod target;
pub mod telemetry;

#[cfg(test)]
pub mod fixtures;
