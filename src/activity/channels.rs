//! Attributed actions to the NotificationChannels that asked for them: a policy route that
//! lists `Activity`, on a `cloudevents` or `webhook` channel, receives each action of that
//! policy's grants as a `dev.jit.activity.v1` event, in batches (CloudEvents batched mode,
//! `application/cloudevents-batch+json`; a JSON array for a webhook). Slack, Teams and email
//! are for people and never get one event per call.
//!
//! Best effort, unlike the transitions' outbox: the JSON-lines audit log is the record of
//! every action; a channel that is down for long loses the actions it missed, and each one
//! lost is counted (`jit_activity_dropped_total{outcome="channel"}`). The queue is bounded,
//! so that a flood never grows the operator.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{Future, StreamExt};
use kube::{
    Api, Client,
    core::DeserializeGuard,
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::{
    audit::send::{self, ChannelSecret},
    crd::v1alpha1::{AccessPolicy, AuditEventType, ChannelType, NotificationChannel},
    metrics::{ChannelLabels, Metrics},
};

/// Actions waiting to be sent, across channels; past it new ones are dropped and counted.
const QUEUE: usize = 10_000;
/// The most events in one POST.
const BATCH: usize = 500;
/// How long an action waits for others to share its POST.
const LINGER: Duration = Duration::from_secs(1);
/// Attempts at one batch before its events are dropped.
const ATTEMPTS: u32 = 3;

/// One action for the channels of a policy.
struct Offered {
    policy: String,
    event: Value,
}

/// Where attributed actions are offered; cheap to clone.
#[derive(Clone)]
pub(crate) struct Fanout {
    sender: mpsc::Sender<Offered>,
    metrics: Arc<Metrics>,
}

impl Fanout {
    /// Offers the event of one action of a grant of `policy`; never blocks.
    pub(crate) fn offer(&self, policy: &str, event: &Value) {
        let offered = Offered {
            policy: policy.to_owned(),
            event: event.clone(),
        };
        if self.sender.try_send(offered).is_err() {
            Metrics::count(&self.metrics.activity_dropped, "channel", 1);
        }
    }
}

/// The channels (by name) a policy's routes send activity to. Pure.
pub(crate) fn routed(policy: &AccessPolicy) -> Vec<String> {
    policy
        .spec
        .notifications
        .as_ref()
        .map(|notifications| {
            notifications
                .routes
                .iter()
                .filter(|route| route.hears(AuditEventType::Activity))
                .map(|route| route.channel.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// The body and content type of a batch for a channel of `kind`; `None` for channels meant
/// for people. Pure.
pub(crate) fn batch_body(kind: ChannelType, events: &[Value]) -> Option<(&'static str, Value)> {
    let body = Value::Array(events.to_vec());
    match kind {
        ChannelType::CloudEvents => Some(("application/cloudevents-batch+json", body)),
        ChannelType::Webhook => Some(("application/json", body)),
        ChannelType::Slack | ChannelType::MsTeams | ChannelType::Email => None,
    }
}

/// Starts the fan-out: watches policies and channels, and sends until `stop` completes.
/// `namespace` is where channels' Secrets are.
pub(crate) fn start(
    client: Client,
    namespace: String,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Fanout {
    let (sender, receiver) = mpsc::channel(QUEUE);
    let fanout = Fanout {
        sender,
        metrics: metrics.clone(),
    };
    tokio::spawn(run(client, namespace, metrics, receiver, stop));
    fanout
}

async fn run(
    client: Client,
    namespace: String,
    metrics: Arc<Metrics>,
    mut receiver: mpsc::Receiver<Offered>,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let (policies, policy_writer) = reflector::store::<DeserializeGuard<AccessPolicy>>();
    let (channels, channel_writer) = reflector::store::<DeserializeGuard<NotificationChannel>>();
    let watch_policies = watcher(
        Api::<DeserializeGuard<AccessPolicy>>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(policy_writer)
    .touched_objects()
    .for_each(|_| async {});
    let watch_channels = watcher(
        Api::<DeserializeGuard<NotificationChannel>>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(channel_writer)
    .touched_objects()
    .for_each(|_| async {});
    let watches = tokio::spawn(async move {
        tokio::join!(watch_policies, watch_channels);
    });
    let mut secrets: HashMap<String, (Instant, ChannelSecret, reqwest::Client)> = HashMap::new();
    futures::pin_mut!(stop);
    loop {
        // Wait for one action, then for others to join it for up to LINGER.
        let first = tokio::select! {
            () = &mut stop => break,
            offered = receiver.recv() => match offered {
                Some(offered) => offered,
                None => break,
            },
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(offered)) => batch.push(offered),
                _ => break,
            }
        }
        let mut by_channel: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for offered in batch {
            let Some(policy) = policies
                .get(&reflector::ObjectRef::new(&offered.policy))
                .and_then(|guarded| guarded.0.as_ref().ok().cloned())
            else {
                continue;
            };
            for channel in routed(&policy) {
                by_channel
                    .entry(channel)
                    .or_default()
                    .push(offered.event.clone());
            }
        }
        for (name, events) in by_channel {
            let Some(channel) = channels
                .get(&reflector::ObjectRef::new(&name))
                .and_then(|guarded| guarded.0.as_ref().ok().cloned())
            else {
                // A route to a channel that does not exist: admission refuses it, so it was
                // deleted since; nothing to send to.
                continue;
            };
            let Some((content_type, body)) = batch_body(channel.spec.type_, &events) else {
                continue;
            };
            let count = events.len() as u64;
            let secret = match secrets.get(&name) {
                Some((read, secret, http)) if read.elapsed() < send::SECRET_TTL => {
                    Ok((secret.clone(), http.clone()))
                }
                _ => send::credentials(&client, &namespace, &channel.spec)
                    .await
                    .map_err(|(_, message)| message),
            };
            let (secret, http) = match secret {
                Ok(pair) => pair,
                Err(message) => {
                    warn!(channel = %name, %message, "cannot send activity to the channel");
                    Metrics::count(&metrics.activity_dropped, "channel", count);
                    continue;
                }
            };
            secrets.insert(name.clone(), (Instant::now(), secret.clone(), http.clone()));
            let mut attempt = 0;
            loop {
                attempt += 1;
                match send::post(&http, &secret, content_type, &body).await {
                    Ok(()) => {
                        metrics
                            .activity_sent
                            .get_or_create(&ChannelLabels {
                                channel: name.clone(),
                            })
                            .inc_by(count);
                        break;
                    }
                    Err(error) if attempt < ATTEMPTS => {
                        let pause = error
                            .retry_after()
                            .unwrap_or(Duration::from_secs(u64::from(attempt)))
                            .min(Duration::from_secs(5));
                        debug!(channel = %name, %error, attempt, "activity batch not taken; retrying");
                        tokio::time::sleep(pause).await;
                    }
                    Err(error) => {
                        warn!(channel = %name, %error, dropped = count, "activity batch not taken; dropped");
                        Metrics::count(&metrics.activity_dropped, "channel", count);
                        break;
                    }
                }
            }
        }
    }
    watches.abort();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn only_routes_that_list_activity_hear_it() {
        let policy: AccessPolicy = serde_json::from_value(json!({
            "apiVersion": "jit.dev/v1alpha1", "kind": "AccessPolicy",
            "metadata": {"name": "p"},
            "spec": {
                "requesters": {"groups": ["devs"]},
                "approvers": {"groups": ["approvers"]},
                "maxDuration": "1h",
                "roles": [{"name": "view", "kubernetes": {"clusterRole": "view", "namespace": "team"}}],
                "notifications": {"routes": [
                    {"channel": "everything"},
                    {"channel": "siem", "events": ["Granted", "Activity"]},
                    {"channel": "decisions", "events": ["Approved"]},
                ]},
            },
        }))
        .unwrap();
        assert_eq!(routed(&policy), ["siem"]);
    }

    #[test]
    fn batches_are_cloudevents_batched_mode_or_a_json_array_and_never_for_people() {
        let events = [json!({"id": "1"}), json!({"id": "2"})];
        let (kind, body) = batch_body(ChannelType::CloudEvents, &events).unwrap();
        assert_eq!(kind, "application/cloudevents-batch+json");
        assert_eq!(body, json!([{"id": "1"}, {"id": "2"}]));
        assert_eq!(
            batch_body(ChannelType::Webhook, &events).unwrap().0,
            "application/json"
        );
        for people in [ChannelType::Slack, ChannelType::MsTeams, ChannelType::Email] {
            assert_eq!(batch_body(people, &events), None);
        }
    }
}
