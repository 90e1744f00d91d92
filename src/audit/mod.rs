//! The audit trail: every transition of a request becomes one CloudEvent, recorded durably in
//! its outbox after the status that holds the transition and before anyone is told, written
//! as a JSON line on stdout (and `--audit-file`), and delivered at least once, in order per
//! request, to the NotificationChannels its policy routes it to.

pub(crate) mod delivery;
pub(crate) mod event;
pub(crate) mod outbox;
pub(crate) mod render;
pub(crate) mod send;

use std::{
    collections::HashMap,
    io::Write,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
};

use kube::{Client, ResourceExt};
use tracing::warn;

use crate::{
    crd::v1alpha1::{AccessPolicy, AccessRequest, AccessRequestStatus, AuditEventType},
    seal::Sealer,
};

/// Why recording failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The outbox could not be read or written.
    #[error("failed to record audit events")]
    Outbox(#[from] outbox::Error),
    /// An event could not be built.
    #[error("failed to build an audit event")]
    Event(#[from] event::Error),
}

/// Writes the audit lines: stdout always, a file when asked.
struct Lines {
    file: Option<Mutex<std::fs::File>>,
}

impl Lines {
    fn write(&self, event: &serde_json::Value) {
        let line = format!("{event}\n");
        let mut stdout = std::io::stdout().lock();
        if let Err(error) = stdout.write_all(line.as_bytes()) {
            warn!(%error, "failed to write an audit line to stdout");
        }
        let _ = stdout.flush();
        if let Some(file) = &self.file {
            let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(error) = file.write_all(line.as_bytes()).and_then(|()| file.flush()) {
                warn!(%error, "failed to write an audit line to the audit file");
            }
        }
    }
}

/// Records requests' transitions in their outboxes.
pub struct Recorder {
    client: Client,
    store: outbox::Store,
    lines: Lines,
    /// Channels that hear every event of every policy (`--audit-channel`).
    everything: Vec<String>,
    /// The next ordinal recorded, per request UID, as last read or written.
    recorded: Mutex<HashMap<String, u64>>,
    /// Refusals whose outbox is being written, at most [`REFUSALS_IN_FLIGHT`].
    refusals: Arc<tokio::sync::Semaphore>,
}

/// `namespace/name` of a request, as its outbox names it.
fn path_of(request: &AccessRequest) -> String {
    format!(
        "{}/{}",
        request.namespace().unwrap_or_default(),
        request.name_any()
    )
}

/// A create that admission refused.
pub struct Refusal {
    /// The admission review's uid: each refusal is its own event.
    pub admission_uid: String,
    /// The object as it was sent.
    pub request: AccessRequest,
    /// Who asked, as the API server authenticated them.
    pub requester: String,
    /// The request's policy, when it was read.
    pub policy: Option<AccessPolicy>,
    /// Why it was refused, as the requester was told.
    pub why: String,
    /// When.
    pub time: jiff::Timestamp,
}

impl Refusal {
    fn uid(&self) -> String {
        format!("refused-{}", self.admission_uid)
    }

    /// The `Refused` event, with only what the API server authenticated as the requester
    /// (never a requester the object claims).
    fn event(&self) -> Option<serde_json::Value> {
        let uid = self.uid();
        let entry = crate::crd::v1alpha1::TimelineEntry {
            time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(self.time),
            event: AuditEventType::Refused.as_str().to_owned(),
            actor: Some(self.requester.clone()),
            message: Some(self.why.clone()),
        };
        let transition = event::Transition {
            kind: AuditEventType::Refused,
            ordinal: 0,
            entry: &entry,
        };
        let mut data = event::data_of(
            &self.request,
            &AccessRequestStatus::default(),
            self.policy.as_ref(),
            &transition,
            None,
        );
        data.requester = Some(self.requester.clone());
        data.request.uid.clone_from(&uid);
        match event::cloud_event(
            AuditEventType::Refused,
            &event::event_id(&uid, 0),
            self.time,
            &data,
        ) {
            Ok(event) => serde_json::to_value(&event).ok(),
            Err(error) => {
                warn!(error = %error, "failed to build the audit event of a refusal");
                None
            }
        }
    }
}

/// Refusals recorded for the channels at once; more are only on the audit lines.
const REFUSALS_IN_FLIGHT: usize = 32;

impl Recorder {
    /// A recorder writing outboxes into `namespace`, lines to stdout and `file`.
    pub fn new(
        client: Client,
        namespace: &str,
        sealer: Sealer,
        file: Option<&PathBuf>,
        everything: Vec<String>,
    ) -> std::io::Result<Self> {
        let file = file
            .map(|path| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
            })
            .transpose()?
            .map(Mutex::new);
        Ok(Self {
            store: outbox::Store::new(client.clone(), namespace, sealer),
            client,
            lines: Lines { file },
            everything,
            recorded: Mutex::default(),
            refusals: Arc::new(tokio::sync::Semaphore::new(REFUSALS_IN_FLIGHT)),
        })
    }

    /// Writes one event that has no outbox (an attributed call) as an audit line.
    pub(crate) fn write_line(&self, event: &serde_json::Value) {
        self.lines.write(event);
    }

    /// The outbox store.
    pub fn store(&self) -> &outbox::Store {
        &self.store
    }

    fn cached(&self, uid: &str) -> Option<u64> {
        self.recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(uid)
            .copied()
    }

    fn remember(&self, uid: &str, next: u64) {
        self.recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(uid.to_owned(), next);
    }

    /// Forgets a request that is gone.
    pub fn forget(&self, uid: &str) {
        self.recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(uid);
    }

    /// Records the transitions in `status` (the request's, as just written) that its outbox
    /// does not hold yet.
    /// `grants_last_30_days` counts, for the approvers' context, how often the subject had
    /// this role lately.
    pub async fn record(
        &self,
        request: &AccessRequest,
        status: &AccessRequestStatus,
        policy: Option<&AccessPolicy>,
        grants_last_30_days: impl FnOnce() -> usize,
    ) -> Result<(), Error> {
        let uid = request.uid().unwrap_or_default();
        let transitions = event::transitions(status);
        let Some(next) = transitions.last().map(|last| last.ordinal + 1) else {
            return Ok(());
        };
        let name = path_of(request);
        // How often the subject had this role lately: counted once, and only if a new
        // transition tells approvers.
        let mut count = Some(grants_last_30_days);
        let mut counted = None;
        let mut history = |recorded: u64| {
            transitions
                .iter()
                .any(|transition| {
                    transition.ordinal >= recorded
                        && matches!(
                            transition.kind,
                            AuditEventType::Requested | AuditEventType::Reminder
                        )
                })
                .then(|| *counted.get_or_insert_with(|| count.take().map_or(0, |count| count())))
        };
        let records_from = |recorded: u64, history: Option<usize>| {
            let mut records = Vec::new();
            for transition in transitions
                .iter()
                .filter(|transition| transition.ordinal >= recorded)
            {
                let event = event::event_json(request, status, policy, transition, history)?;
                records.push((
                    transition.ordinal,
                    outbox::Record {
                        event,
                        to: self.routes(policy, transition.kind),
                        mail: recipients(request, policy, transition.kind),
                    },
                ));
            }
            Ok::<_, Error>(records)
        };
        let recorded = match self.cached(&uid) {
            Some(recorded) => recorded,
            // Not seen by this process: almost always a new request, whose outbox does not
            // exist yet. Making it at once saves a read and a merge that fails; an outbox
            // that exists (a restart) is read, and only what it lacks is added.
            None => {
                let records = records_from(0, history(0))?;
                if self.store.create(&uid, &name, &records, next).await? {
                    self.recorded(&uid, &records, next);
                    return Ok(());
                }
                self.store
                    .read(&uid)
                    .await?
                    .map_or(0, |outbox| outbox.recorded)
            }
        };
        if recorded >= next {
            self.remember(&uid, recorded);
            return Ok(());
        }
        let records = records_from(recorded, history(recorded))?;
        self.store
            .append(&uid, &name, &records, next, false)
            .await?;
        self.recorded(&uid, &records, next);
        Ok(())
    }

    /// What follows records written to an outbox: their audit lines, and `next` remembered.
    fn recorded(&self, uid: &str, records: &[(u64, outbox::Record)], next: u64) {
        // Recorded, told to nobody yet.
        crate::failpoint::crash_point("audit-after-record");
        for (_, record) in records {
            self.lines.write(&record.event);
        }
        self.remember(uid, next);
    }

    /// Records a create that admission refused: a `Refused` event on the audit lines and,
    /// through an outbox of its own (already `gone`: nothing follows), to the channels that
    /// hear refusals. All of it happens in the background, a bounded number at a time, so
    /// admission never waits and a flood of refused creates cannot flood the operator;
    /// beyond the bound a refusal is only on the audit lines, and a warning says so.
    pub fn record_refused(self: &Arc<Self>, refusal: Refusal) {
        let Ok(permit) = self.refusals.clone().try_acquire_owned() else {
            warn!(refusal = %refusal.admission_uid, "too many refusals being recorded; this one is only on the audit lines");
            if let Some(event) = refusal.event() {
                self.lines.write(&event);
            }
            return;
        };
        let recorder = self.clone();
        tokio::spawn(async move {
            let mut refusal = refusal;
            if refusal.policy.is_none() {
                // The mutating webhook refuses before any policy is read.
                refusal.policy = kube::Api::<AccessPolicy>::all(recorder.client.clone())
                    .get_opt(&refusal.request.spec.policy)
                    .await
                    .ok()
                    .flatten();
            }
            let Some(event) = refusal.event() else {
                return;
            };
            recorder.lines.write(&event);
            let to = recorder.routes(refusal.policy.as_ref(), AuditEventType::Refused);
            if to.is_empty() {
                return;
            }
            let uid = refusal.uid();
            let name = path_of(&refusal.request);
            let record = outbox::Record {
                event,
                to,
                mail: Vec::new(),
            };
            if let Err(error) = recorder
                .store
                .append(&uid, &name, &[(0, record)], 1, true)
                .await
            {
                warn!(refusal = %uid, error = %crate::telemetry::error_chain(&error), "failed to record a refusal for the channels; it is on the audit lines");
            }
            drop(permit);
        });
    }

    /// Records that a request is gone: its `Deleted` event, built from its last recorded
    /// one, and the mark that nothing more comes.
    pub async fn record_deleted(
        &self,
        outbox: &outbox::Outbox,
        now: jiff::Timestamp,
    ) -> Result<(), Error> {
        let Some((last_ordinal, last)) = outbox.records.last_key_value() else {
            return Ok(self
                .store
                .append(&outbox.uid, &outbox.request, &[], outbox.recorded, true)
                .await?);
        };
        let ordinal = outbox.recorded;
        let mut records = Vec::new();
        if let Some(mut data) = outbox
            .record(*last_ordinal)
            .and_then(|last| event::data_in(&last.event))
        {
            data.actor = None;
            data.message = Some("the request object was deleted".to_owned());
            data.commands = None;
            data.grants_last_30_days = None;
            let id = event::event_id(&outbox.uid, ordinal);
            let event = event::cloud_event(AuditEventType::Deleted, &id, now, &data)?;
            let event = serde_json::to_value(&event).unwrap_or_default();
            records.push((
                ordinal,
                outbox::Record {
                    event,
                    to: last.to.clone(),
                    mail: last.mail.clone(),
                },
            ));
        }
        self.store
            .append(&outbox.uid, &outbox.request, &records, ordinal + 1, true)
            .await?;
        for (_, record) in &records {
            self.lines.write(&record.event);
        }
        self.forget(&outbox.uid);
        Ok(())
    }

    /// The channels that hear `kind` from `policy`, and those that hear everything.
    fn routes(&self, policy: Option<&AccessPolicy>, kind: AuditEventType) -> Vec<String> {
        let mut channels: Vec<String> = policy
            .and_then(|policy| policy.spec.notifications.as_ref())
            .map(|notifications| {
                notifications
                    .routes
                    .iter()
                    .filter(|route| route.hears(kind))
                    .map(|route| route.channel.clone())
                    .collect()
            })
            .unwrap_or_default();
        channels.extend(self.everything.iter().cloned());
        channels.sort();
        channels.dedup();
        channels
    }
}

/// Who an event is for, as people: approvers for what waits on them, the requester (and the
/// subject) for decisions and grants, the subject for the expiry warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    Approvers,
    Requester,
    Subject,
    /// Security and audit only: no person in particular.
    Nobody,
}

impl Audience {
    /// The audience of an event type.
    pub const fn of(kind: AuditEventType) -> Self {
        match kind {
            AuditEventType::Requested | AuditEventType::Reminder => Self::Approvers,
            AuditEventType::Approval
            | AuditEventType::Denial
            | AuditEventType::Approved
            | AuditEventType::Denied
            | AuditEventType::Granted
            | AuditEventType::Expired
            | AuditEventType::Revoked
            | AuditEventType::Failed
            | AuditEventType::Deleted => Self::Requester,
            AuditEventType::ExpiringSoon => Self::Subject,
            AuditEventType::Refused
            | AuditEventType::GrantRepaired
            | AuditEventType::RevocationFailing
            | AuditEventType::RevocationRecovered
            | AuditEventType::Activity => Self::Nobody,
        }
    }
}

/// The email addresses of the people an event is for: each one's `email` identity mapping in
/// the policy, or the username itself when it is an address.
pub fn recipients(
    request: &AccessRequest,
    policy: Option<&AccessPolicy>,
    kind: AuditEventType,
) -> Vec<String> {
    let requester = request.spec.requester_name().map(str::to_owned);
    let subject = Some(event::subject_of(request)).filter(|subject| !subject.is_empty());
    let people: Vec<String> = match Audience::of(kind) {
        Audience::Approvers => policy
            .map(|policy| policy.spec.approvers.users.clone())
            .unwrap_or_default(),
        Audience::Requester => requester.into_iter().chain(subject).collect(),
        Audience::Subject => subject.into_iter().collect(),
        Audience::Nobody => Vec::new(),
    };
    let mut addresses: Vec<String> = people
        .iter()
        .filter_map(|person| address_of(person, policy))
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}

fn address_of(person: &str, policy: Option<&AccessPolicy>) -> Option<String> {
    let mapped = policy.and_then(|policy| {
        policy
            .spec
            .identity_mappings
            .iter()
            .find(|mapping| mapping.subject == person)
            .and_then(|mapping| mapping.values.get("email"))
            .cloned()
    });
    mapped.or_else(|| is_address(person).then(|| person.to_owned()))
}

/// Whether `text` looks like an email address (one `@` with something on each side, a dot in
/// the domain, no spaces).
pub fn is_address(text: &str) -> bool {
    match text.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.contains('@')
                && !text.contains(char::is_whitespace)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::{crd::v1alpha1::IdentityMapping, fixtures};

    #[test]
    fn approvers_are_mailed_at_their_mapped_address_or_their_username() {
        let mut policy = fixtures::policy();
        policy.spec.approvers.users = vec!["bob".into(), "carol@example.com".into(), "dave".into()];
        policy.spec.identity_mappings = vec![IdentityMapping {
            subject: "bob".into(),
            values: [("email".to_owned(), "bob@example.com".to_owned())].into(),
        }];
        let request = fixtures::pending_request();
        assert_eq!(
            recipients(&request, Some(&policy), AuditEventType::Requested),
            ["bob@example.com", "carol@example.com"],
            "dave has neither"
        );
        assert!(recipients(&request, Some(&policy), AuditEventType::GrantRepaired).is_empty());
    }

    #[test]
    fn the_requester_hears_decisions_and_the_subject_the_expiry_warning() {
        let mut policy = fixtures::policy();
        policy.spec.identity_mappings = vec![IdentityMapping {
            subject: "alice".into(),
            values: [("email".to_owned(), "alice@example.com".to_owned())].into(),
        }];
        let request = fixtures::active_request();
        for kind in [AuditEventType::Granted, AuditEventType::ExpiringSoon] {
            assert_eq!(
                recipients(&request, Some(&policy), kind),
                ["alice@example.com"],
                "{kind:?}"
            );
        }
    }

    #[test]
    fn addresses_are_told_from_usernames() {
        assert!(is_address("alice@example.com"));
        for text in [
            "alice",
            "alice@",
            "@example.com",
            "a b@example.com",
            "alice@localhost",
        ] {
            assert!(!is_address(text), "{text}");
        }
    }
}
