//! The AccessRequest controller driver: for each request, observe (fresh reads), decide (pure),
//! apply (finalizer and provider effect), then write the status and publish Events.

pub mod apply;
pub mod decide;
pub mod observe;
pub mod status;

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{
        Controller,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::ObjectRef,
        watcher,
    },
};
use serde_json::json;
use tracing::{debug, error, info, instrument, warn};

use self::decide::{FinalizerChange, Notice, Severity};
use crate::{
    crd::v1alpha1::{AccessPolicy, AccessRequest, AccessRequestStatus, Phase, TimelineEntry},
    provider::Providers,
    telemetry::error_chain,
};

/// The controller's name, as Events report it.
pub const CONTROLLER_NAME: &str = "jit-operator";

/// Longest wait between retries of a failing step.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Why reconciling one request failed; each variant is the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the request or policy failed.
    #[error("failed to observe")]
    Observe(#[from] observe::Error),
    /// Changing the finalizer failed.
    #[error("failed to apply")]
    Apply(#[from] apply::Error),
    /// Writing the status failed.
    #[error("failed to write status")]
    Status(#[source] kube::Error),
}

impl Error {
    /// A short label for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Observe(_) => "observe",
            Self::Apply(_) => "apply",
            Self::Status(_) => "status",
        }
    }
}

/// What every reconcile can reach.
pub struct Context {
    /// The operator's own client.
    pub client: Client,
    /// Where grants are made.
    pub providers: Providers,
    /// Publishes Events.
    pub recorder: Recorder,
}

impl Context {
    /// A context publishing Events as `jit-operator` from `instance`.
    pub fn new(client: Client, providers: Providers, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER_NAME.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            providers,
        }
    }
}

/// Runs the controller until `shutdown` completes.
pub async fn run(
    context: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    // Watching through DeserializeGuard keeps one malformed object from stopping the watch.
    let requests = Api::<DeserializeGuard<AccessRequest>>::all(context.client.clone());
    let policies = Api::<AccessPolicy>::all(context.client.clone());
    let controller = Controller::new(requests, watcher::Config::default().any_semantic());
    let store = controller.store();
    controller
        // A policy edit may decide pending requests (fewer approvals needed, or none allowed).
        .watches(policies, watcher::Config::default(), move |policy| {
            let name = policy.name_any();
            store
                .state()
                .into_iter()
                .filter(|guarded| {
                    guarded
                        .0
                        .as_ref()
                        .is_ok_and(|request| request.spec.policy == name)
                })
                .map(|guarded| ObjectRef::from_obj(guarded.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                debug!(error = %error_chain(&error), "reconcile did not complete");
            }
        })
        .await;
}

#[instrument(skip_all, fields(request = %guarded.name_any(), namespace = guarded.namespace()))]
async fn reconcile(
    guarded: Arc<DeserializeGuard<AccessRequest>>,
    context: Arc<Context>,
) -> Result<Action, Error> {
    if let Err(invalid) = &guarded.0 {
        warn!(error = %invalid.error, "ignoring access request that does not parse");
        return Ok(Action::await_change());
    }
    let namespace = guarded.namespace().unwrap_or_default();
    let name = guarded.name_any();

    // Observe: client required.
    let Some(observed) = observe::observe(&context.client, &namespace, &name).await? else {
        return Ok(Action::await_change());
    };
    let request = &observed.request;
    let now = Timestamp::now();

    // Decide: no client.
    let plan = decide::decide(&observed, now);
    let phase = request.status.as_ref().and_then(|status| status.phase);
    if phase != plan.status.phase || plan.effect != decide::Effect::None {
        info!(?phase, next = ?plan.status.phase, effect = ?plan.effect, "observed access request");
    } else {
        debug!(?phase, "observed access request; nothing to do");
    }

    // Apply: client required.
    let api = Api::<AccessRequest>::namespaced(context.client.clone(), &namespace);
    if plan.finalizer == FinalizerChange::Add {
        apply::set_finalizer(&api, request, true).await?;
    }
    let applied = match apply::effect(&context.providers, request, &plan.effect).await {
        Ok(applied) => applied,
        Err(error) => return record_failure(&context, &api, request, &plan, error, now).await,
    };

    // Status: from what was applied.
    let status = status::after_success(plan.status, &applied);
    write_status(&api, request, &status).await?;
    publish(&context, request, &plan.notices).await;
    if plan.finalizer == FinalizerChange::Remove {
        apply::set_finalizer(&api, request, false).await?;
    }
    Ok(Action::requeue(plan.requeue_after))
}

async fn write_status(
    api: &Api<AccessRequest>,
    request: &AccessRequest,
    status: &AccessRequestStatus,
) -> Result<(), Error> {
    let current = request.status.clone().unwrap_or_default();
    if !status::differs(&current, status) {
        return Ok(());
    }
    api.patch_status(
        &request.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await
    .map(|_| ())
    .map_err(Error::Status)
}

/// Shows a failed grant or revoke on the request and schedules the retry. A grant refused for
/// good (no permission, no such namespace) fails the request instead.
async fn record_failure(
    context: &Context,
    api: &Api<AccessRequest>,
    request: &AccessRequest,
    plan: &decide::Plan,
    error: apply::Error,
    now: Timestamp,
) -> Result<Action, Error> {
    let message = error_chain(&error);
    let generation = request.metadata.generation;
    let (status, notice) = match &error {
        apply::Error::Grant(cause) if !cause.is_retryable() => {
            warn!(error = %message, "grant refused; failing the request");
            let status = refused_grant(plan.status.clone(), &message, now);
            let notice = Notice {
                severity: Severity::Warning,
                reason: "Failed".into(),
                note: format!("could not grant: {message}"),
            };
            write_status(api, request, &status).await?;
            publish(context, request, &[notice]).await;
            return Ok(Action::requeue(decide::RESYNC));
        }
        apply::Error::Grant(_) => (
            status::after_failure(
                request.status.as_ref(),
                status::GRANT_FAILING,
                "GrantFailed",
                &message,
                now,
                generation,
            ),
            Notice {
                severity: Severity::Warning,
                reason: "GrantFailing".into(),
                note: format!("grant failed, will retry: {message}"),
            },
        ),
        _ => {
            error!(error = %message, "revocation failed; retrying");
            (
                status::after_failure(
                    request.status.as_ref(),
                    status::REVOCATION_FAILING,
                    "RevokeFailed",
                    &message,
                    now,
                    generation,
                ),
                Notice {
                    severity: Severity::Warning,
                    reason: "RevocationFailing".into(),
                    note: format!("revocation failed, will retry until it succeeds: {message}"),
                },
            )
        }
    };
    let backoff = backoff(status.failures);
    write_status(api, request, &status).await?;
    publish(context, request, &[notice]).await;
    Ok(Action::requeue(backoff))
}

/// The status of a request whose approved grant was refused for good.
fn refused_grant(
    mut status: AccessRequestStatus,
    message: &str,
    now: Timestamp,
) -> AccessRequestStatus {
    status.phase = Some(Phase::Failed);
    status.granted_at = None;
    status.expires_at = None;
    status.grant = None;
    status.message = Some(format!("could not grant: {message}"));
    status.timeline.retain(|entry| entry.event != "Granted");
    status.timeline.push(TimelineEntry {
        time: Time(now),
        event: "Failed".into(),
        actor: None,
        message: Some(message.to_owned()),
    });
    status::set_condition(
        &mut status.conditions,
        decide::GRANTED,
        status::ConditionStatus::False,
        "GrantFailed",
        message,
        now,
        status.observed_generation,
    );
    status
}

/// Exponential backoff from the failure count: 0.5s, 1s, 2s, ... up to five minutes.
fn backoff(failures: i32) -> Duration {
    let exponent = failures.saturating_sub(1).clamp(0, 16).unsigned_abs();
    Duration::from_millis(500u64.saturating_mul(1u64 << exponent)).min(MAX_BACKOFF)
}

async fn publish(context: &Context, request: &AccessRequest, notices: &[Notice]) {
    let reference = request.object_ref(&());
    for notice in notices {
        let event = Event {
            type_: match notice.severity {
                Severity::Normal => EventType::Normal,
                Severity::Warning => EventType::Warning,
            },
            reason: notice.reason.clone(),
            note: Some(notice.note.clone()),
            action: notice.reason.clone(),
            secondary: None,
        };
        if let Err(error) = context.recorder.publish(&event, &reference).await {
            warn!(error = %error_chain(&error), reason = %notice.reason, "failed to publish event");
        }
    }
}

fn error_policy(
    _request: Arc<DeserializeGuard<AccessRequest>>,
    error: &Error,
    _context: Arc<Context>,
) -> Action {
    warn!(error = %error_chain(error), category = error.category(), "reconcile failed; retrying");
    // Conflicts and API hiccups: the next reconcile reads everything fresh.
    Action::requeue(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(5), Duration::from_secs(8));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn a_refused_grant_fails_the_request_and_clears_the_grant() {
        let now = crate::fixtures::at("2026-01-01T00:00:00Z");
        let status = AccessRequestStatus {
            phase: Some(Phase::Active),
            granted_at: Some(Time(now)),
            expires_at: Some(Time(now)),
            timeline: vec![TimelineEntry {
                time: Time(now),
                event: "Granted".into(),
                actor: None,
                message: None,
            }],
            ..AccessRequestStatus::default()
        };
        let failed = refused_grant(status, "forbidden", now);
        assert_eq!(failed.phase, Some(Phase::Failed));
        assert_eq!(failed.expires_at, None);
        assert_eq!(failed.timeline.len(), 1);
        assert_eq!(failed.timeline[0].event, "Failed");
        assert_eq!(failed.conditions[0].reason, "GrantFailed");
    }
}
