//! Leader election: only the replica holding the `coordination.k8s.io` Lease reconciles and
//! sweeps; every replica serves the webhook. A leader that can no longer confirm its Lease
//! steps down before the Lease can pass to another replica, so two never act at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Why leader election could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Lease could not be created or read.
    #[error("failed to set up the leader election lease {namespace}/{name}")]
    Setup {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: LeaseManagerError,
    },
}

/// How leader election is set up.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a Lease holds without renewal; a new leader takes over at most this long
    /// (plus one poll) after the old one died.
    pub duration: Duration,
}

impl Settings {
    /// How long before the Lease runs out the leader renews it.
    fn grace(&self) -> Duration {
        (self.duration / 3).max(Duration::from_secs(1))
    }
}

/// A running election: whether this replica leads now.
pub struct Election {
    leading: watch::Receiver<bool>,
    /// When this replica last became the leader: itself a confirmation of the Lease.
    leading_since: Instant,
    confirmed: watch::Receiver<Instant>,
    settings: Settings,
    lease_task: tokio::task::JoinHandle<()>,
    watchdog: tokio::task::JoinHandle<()>,
}

impl Election {
    /// Joins the election for `settings.name`.
    pub async fn join(client: Client, settings: Settings) -> Result<Self, Error> {
        let setup = |source| Error::Setup {
            namespace: settings.namespace.clone(),
            name: settings.name.clone(),
            source,
        };
        let manager = LeaseManagerBuilder::new(client.clone(), &settings.name)
            .with_namespace(&settings.namespace)
            .with_identity(&settings.identity)
            .with_duration(settings.duration.as_secs())
            .with_grace(settings.grace().as_secs())
            .with_field_manager("jit-operator-leader-election")
            .build()
            .await
            .map_err(setup)?;
        let (leading, handle) = manager.watch().await;
        let lease_task = tokio::spawn(async move {
            match handle.await {
                Ok(Ok(_)) => debug!("left the leader election"),
                Ok(Err(error)) => warn!(%error, "leader election stopped"),
                Err(error) => warn!(%error, "leader election task failed"),
            }
        });
        let (confirm, confirmed) = watch::channel(Instant::now());
        let watchdog = tokio::spawn(confirm_holding(
            Api::namespaced(client, &settings.namespace),
            settings.clone(),
            confirm,
        ));
        Ok(Self {
            leading,
            leading_since: Instant::now(),
            confirmed,
            settings,
            lease_task,
            watchdog,
        })
    }

    /// Waits until this replica leads.
    pub async fn acquired(&mut self) {
        // An error means the election task ended; waiting forever is then right (the
        // operator stops on a signal).
        if self.leading.wait_for(|leading| *leading).await.is_err() {
            std::future::pending::<()>().await;
        }
        self.leading_since = Instant::now();
        info!(identity = %self.settings.identity, lease = %self.settings.name, "became the leader");
    }

    /// Completes when this replica no longer leads, or can no longer be sure it does: the
    /// Lease passed to another, or it went unconfirmed for longer than it holds minus the
    /// renewal margin.
    pub async fn lost(&mut self) {
        let deadline = self.settings.duration.saturating_sub(self.settings.grace());
        loop {
            let last = (*self.confirmed.borrow()).max(self.leading_since);
            let since = last.elapsed();
            if since >= deadline {
                warn!(unconfirmed_for = ?since, "cannot confirm the leader lease");
                return;
            }
            tokio::select! {
                changed = self.leading.changed() => {
                    if changed.is_err() || !*self.leading.borrow() {
                        return;
                    }
                }
                _ = self.confirmed.changed() => {}
                () = tokio::time::sleep(deadline - since) => {}
            }
        }
    }

    /// Leaves the election, releasing the Lease if held so that another replica takes over
    /// at once.
    pub async fn leave(self) {
        self.watchdog.abort();
        drop(self.leading);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.lease_task).await;
    }
}

/// Reads the Lease now and then and reports when it last showed this replica holding it,
/// unexpired. A leader cut off from the API server sees no confirmation and steps down.
async fn confirm_holding(api: Api<Lease>, settings: Settings, confirm: watch::Sender<Instant>) {
    let every = settings.grace();
    loop {
        let asked = Instant::now();
        match api.get_opt(&settings.name).await {
            Ok(Some(lease)) if holds(&lease, &settings.identity) => {
                // The renewal read may have taken a while: count from when we asked.
                let _ = confirm.send(asked);
            }
            Ok(_) => {}
            Err(error) => debug!(%error, "could not read the leader lease"),
        }
        tokio::time::sleep(every).await;
    }
}

fn holds(lease: &Lease, identity: &str) -> bool {
    let Some(spec) = &lease.spec else {
        return false;
    };
    if spec.holder_identity.as_deref() != Some(identity) {
        return false;
    }
    let (Some(renewed), Some(seconds)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return false;
    };
    renewed.0 + jiff::SignedDuration::from_secs(i64::from(seconds)) > jiff::Timestamp::now()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{
        api::coordination::v1::LeaseSpec, apimachinery::pkg::apis::meta::v1::MicroTime,
    };

    fn lease(holder: &str, renewed_ago: i64, duration: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(
                    jiff::Timestamp::now() - jiff::SignedDuration::from_secs(renewed_ago),
                )),
                lease_duration_seconds: Some(duration),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn a_lease_is_held_only_by_its_holder_and_only_until_it_runs_out() {
        assert!(holds(&lease("a", 1, 15), "a"));
        assert!(!holds(&lease("b", 1, 15), "a"));
        assert!(!holds(&lease("a", 16, 15), "a"));
        assert!(!holds(&Lease::default(), "a"));
    }
}
