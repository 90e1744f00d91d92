//! The places a role can grant in (a leaf: it imports nothing of the crate). The CRD's "exactly one target" rule, the `--providers` flag,
//! the metrics labels, the provider set, the ledger and the start-up checks all read this one
//! enum: a new target is one more variant here and one module in `provider/`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A place roles are granted in.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Kubernetes RBAC; always enabled.
    Kubernetes,
    /// AWS IAM and IAM Identity Center, with the SDK's standard credentials, region and
    /// endpoint (`AWS_REGION`, `AWS_ENDPOINT_URL`, IRSA, instance profile).
    Aws,
    /// Google Cloud IAM, with Application Default Credentials (workload identity in GKE).
    Gcp,
    /// Azure RBAC and PIM, with workload identity, a client secret or the managed identity
    /// (the standard `AZURE_*` variables).
    Azure,
}

impl Target {
    /// Every target, in the order people read them.
    pub const ALL: [Self; 4] = [Self::Kubernetes, Self::Aws, Self::Gcp, Self::Azure];

    /// The name: the role's block in a policy, `status.grant.provider`, the metrics label and
    /// the `--providers` value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Kubernetes => "kubernetes",
            Self::Aws => "aws",
            Self::Gcp => "gcp",
            Self::Azure => "azure",
        }
    }

    /// The target of this name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|target| target.as_str() == name)
    }

    /// Whether grants here are recorded in the grant ledger before they are made: a cloud
    /// cannot be searched for what the operator granted (Kubernetes objects carry labels).
    pub const fn keeps_ledger(self) -> bool {
        !matches!(self, Self::Kubernetes)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_the_flag_and_serde() {
        for target in Target::ALL {
            assert_eq!(Target::parse(target.as_str()), Some(target));
            let flag = <Target as clap::ValueEnum>::from_str(target.as_str(), false);
            assert_eq!(flag, Ok(target));
            assert_eq!(
                serde_json::to_value(target).ok(),
                Some(serde_json::json!(target.as_str()))
            );
        }
        assert_eq!(Target::parse("none"), None);
    }
}
