//! The outbox: one ConfigMap per request in the operator's namespace holding its audit events
//! until every channel acknowledged them. Events are written here (sealed) after the status
//! that records their transition and before anyone is told; it outlives the request, so a
//! deleted request's last events are still delivered.
//!
//! Keys: `event.NNNNNNNN` (a sealed record per transition ordinal), `recorded` (the next
//! ordinal to record), `delivered.CHANNEL` (the next ordinal that channel is owed), `gone`
//! (the request was deleted: nothing more is recorded). Each writer merges only its own keys,
//! so the recorder and the deliverer never conflict.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use serde::{Deserialize, Serialize};

use crate::{
    provider::{MANAGED_BY, MANAGED_BY_LABEL},
    seal::Sealer,
};

/// The label that marks outbox ConfigMaps.
pub const OUTBOX_LABEL: &str = "jit.dev/audit";
/// Its value.
pub const OUTBOX_VALUE: &str = "outbox";
/// The annotation naming the request (`namespace/name`).
const REQUEST_ANNOTATION: &str = "jit.dev/request";
const EVENT_PREFIX: &str = "event.";
const DELIVERED_PREFIX: &str = "delivered.";
const RECORDED: &str = "recorded";
const GONE: &str = "gone";

/// Why the outbox could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed.
    #[error("failed to {action} the audit outbox {name}")]
    Api {
        action: &'static str,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// Made and removed by others three times in a row while we wrote.
    #[error("the audit outbox {name} kept changing while it was written")]
    Contended { name: String },
}

/// One event waiting for its channels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The CloudEvent, structured JSON.
    pub event: serde_json::Value,
    /// The channels that get it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    /// The people it is for, for email channels: addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mail: Vec<String>,
}

/// A record as an outbox read keeps it: where it is and whom it is for, not its event. The
/// deliverer keeps every outbox of every live request; the event is read from the ConfigMap
/// the outbox was parsed from when it is sent.
#[derive(Clone, Debug)]
pub struct Kept {
    key: Box<str>,
    /// The channels that get it.
    pub to: Vec<String>,
    /// The people it is for, for email channels: addresses.
    pub mail: Vec<String>,
}

/// A stored record read without keeping its event (only checked to be there).
#[derive(Deserialize)]
struct Unparsed {
    #[serde(rename = "event")]
    _event: serde::de::IgnoredAny,
    #[serde(default)]
    to: Vec<String>,
    #[serde(default)]
    mail: Vec<String>,
}

/// A record as stored: its JSON text and the operator's seal over it.
#[derive(Serialize, Deserialize)]
struct Sealed {
    record: String,
    seal: String,
}

/// An outbox as read.
#[derive(Clone, Debug, Default)]
pub struct Outbox {
    /// The request's UID.
    pub uid: String,
    /// `namespace/name` of the request.
    pub request: String,
    /// The next ordinal to record.
    pub recorded: u64,
    /// Whether the request is gone (its `Deleted` event recorded).
    pub gone: bool,
    /// Records with a valid seal, by ordinal (as the deliverer holds it: those still owed).
    pub records: BTreeMap<u64, Kept>,
    /// The ConfigMap it was parsed from, which holds the records' events.
    source: Option<Arc<ConfigMap>>,
    /// Keys holding records without a valid seal: written by someone else, never delivered.
    pub forged: Vec<String>,
    /// The next ordinal each channel is owed.
    pub delivered: HashMap<String, u64>,
}

impl Outbox {
    /// Reads an outbox ConfigMap; `None` if it is not one.
    pub fn parse(config_map: &Arc<ConfigMap>, sealer: &Sealer) -> Option<Self> {
        let uid = config_map.name_any().strip_prefix(NAME_PREFIX)?.to_owned();
        let mut outbox = Self {
            request: config_map
                .annotations()
                .get(REQUEST_ANNOTATION)
                .cloned()
                .unwrap_or_default(),
            uid,
            source: Some(config_map.clone()),
            ..Self::default()
        };
        for (key, value) in config_map.data.iter().flatten() {
            if let Some(ordinal) = key.strip_prefix(EVENT_PREFIX) {
                let record = ordinal
                    .parse::<u64>()
                    .ok()
                    .and_then(|ordinal| {
                        Some((ordinal, serde_json::from_str::<Sealed>(value).ok()?))
                    })
                    .filter(|(ordinal, sealed)| {
                        sealer.verify_audit(&outbox.uid, *ordinal, &sealed.record, &sealed.seal)
                    })
                    .and_then(|(ordinal, sealed)| {
                        let record = serde_json::from_str::<Unparsed>(&sealed.record).ok()?;
                        Some((
                            ordinal,
                            Kept {
                                key: key.as_str().into(),
                                to: record.to,
                                mail: record.mail,
                            },
                        ))
                    });
                match record {
                    Some((ordinal, record)) => {
                        outbox.records.insert(ordinal, record);
                    }
                    None => outbox.forged.push(key.clone()),
                }
            } else if let Some(channel) = key.strip_prefix(DELIVERED_PREFIX) {
                if let Ok(next) = value.parse() {
                    outbox.delivered.insert(channel.to_owned(), next);
                }
            } else if key == RECORDED {
                outbox.recorded = value.parse().unwrap_or(0);
            } else if key == GONE {
                outbox.gone = value == "true";
            }
        }
        Some(outbox)
    }

    /// The outbox as the deliverer holds it between rounds: only the records some channel is
    /// still owed, with their text. The rest is never sent again (a `Deleted` record reads the
    /// outbox afresh), so holding every request's outbox costs a couple of hundred bytes each
    /// instead of every event it ever recorded (at 3,000 live requests, keeping every record's
    /// place was 1.2 KB a request: a B-tree node for three records).
    #[must_use]
    pub fn keeping_owed(mut self) -> Self {
        let delivered = &self.delivered;
        // Collected into a new map, not `retain`ed: a map emptied in place keeps its node.
        self.records = std::mem::take(&mut self.records)
            .into_iter()
            .filter(|(ordinal, kept)| {
                kept.to
                    .iter()
                    .any(|channel| *ordinal >= delivered.get(channel).copied().unwrap_or(0))
            })
            .collect();
        let data = self.source.take().and_then(|source| source.data.clone());
        let owed: BTreeMap<String, String> = self
            .records
            .values()
            .filter_map(|kept| {
                let text = data.as_ref()?.get(kept.key.as_ref())?;
                Some((kept.key.to_string(), text.clone()))
            })
            .collect();
        if !owed.is_empty() {
            self.source = Some(Arc::new(ConfigMap {
                data: Some(owed),
                ..ConfigMap::default()
            }));
        }
        self
    }

    /// The record at `ordinal`, its event read from the ConfigMap (whose seal `parse` checked).
    pub fn record(&self, ordinal: u64) -> Option<Record> {
        let kept = self.records.get(&ordinal)?;
        let text = self
            .source
            .as_ref()?
            .data
            .as_ref()?
            .get(kept.key.as_ref())?;
        let sealed = serde_json::from_str::<Sealed>(text).ok()?;
        serde_json::from_str(&sealed.record).ok()
    }

    /// The next record `channel` is owed, at or after ordinal `from`.
    pub fn next_for(&self, channel: &str, from: u64) -> Option<(u64, &Kept)> {
        self.records
            .range(from..)
            .find(|(_, record)| record.to.iter().any(|to| to == channel))
            .map(|(ordinal, record)| (*ordinal, record))
    }

    /// How many records `channel` is owed at or after ordinal `from`.
    pub fn owed(&self, channel: &str, from: u64) -> usize {
        self.records
            .range(from..)
            .filter(|(_, record)| record.to.iter().any(|to| to == channel))
            .count()
    }

    /// The channels any record goes to.
    pub fn channels(&self) -> Vec<String> {
        let mut channels: Vec<String> = self
            .records
            .values()
            .flat_map(|record| record.to.iter().cloned())
            .collect();
        channels.sort();
        channels.dedup();
        channels
    }
}

const NAME_PREFIX: &str = "jit-audit-";

/// Reads and writes outboxes.
#[derive(Clone)]
pub struct Store {
    api: Api<ConfigMap>,
    sealer: Sealer,
    namespace: String,
}

impl Store {
    /// Outboxes in `namespace`.
    pub fn new(client: Client, namespace: &str, sealer: Sealer) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            sealer,
            namespace: namespace.to_owned(),
        }
    }

    /// The namespace they live in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The sealer that checks them.
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    fn name(uid: &str) -> String {
        format!("{NAME_PREFIX}{uid}")
    }

    fn failed(action: &'static str, uid: &str) -> impl FnOnce(kube::Error) -> Error {
        let name = Self::name(uid);
        move |source| Error::Api {
            action,
            name,
            source: Box::new(source),
        }
    }

    /// The outbox of a request, if it has one.
    pub async fn read(&self, uid: &str) -> Result<Option<Outbox>, Error> {
        let found = self
            .api
            .get_opt(&Self::name(uid))
            .await
            .map_err(Self::failed("read", uid))?;
        Ok(found.and_then(|config_map| Outbox::parse(&Arc::new(config_map), &self.sealer)))
    }

    /// Makes the outbox of a request with its first records, `recorded` at `next`; `false`
    /// when it exists already (nothing is written then).
    pub async fn create(
        &self,
        uid: &str,
        request: &str,
        records: &[(u64, Record)],
        next: u64,
    ) -> Result<bool, Error> {
        let config_map = self.config_map(uid, request, self.data(uid, records, next, false));
        match self.api.create(&PostParams::default(), &config_map).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(Self::failed("create", uid)(error)),
        }
    }

    /// Adds records (by ordinal) and moves `recorded` on to `next`; marks the request gone
    /// when `gone`. Idempotent: a record written twice is the same key.
    pub async fn append(
        &self,
        uid: &str,
        request: &str,
        records: &[(u64, Record)],
        next: u64,
        gone: bool,
    ) -> Result<(), Error> {
        let data = self.data(uid, records, next, gone);
        self.merge(uid, request, data).await
    }

    /// The keys that hold `records`, `recorded` at `next`, and `gone` when it is.
    fn data(
        &self,
        uid: &str,
        records: &[(u64, Record)],
        next: u64,
        gone: bool,
    ) -> BTreeMap<String, String> {
        let mut data = BTreeMap::new();
        for (ordinal, record) in records {
            let text = serde_json::to_string(record).unwrap_or_default();
            let sealed = Sealed {
                seal: self.sealer.seal_audit(uid, *ordinal, &text),
                record: text,
            };
            data.insert(
                format!("{EVENT_PREFIX}{ordinal:08}"),
                serde_json::to_string(&sealed).unwrap_or_default(),
            );
        }
        data.insert(RECORDED.to_owned(), next.to_string());
        if gone {
            data.insert(GONE.to_owned(), "true".to_owned());
        }
        data
    }

    /// A new outbox holding `data`.
    fn config_map(&self, uid: &str, request: &str, data: BTreeMap<String, String>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(Self::name(uid)),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([
                    (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                    (OUTBOX_LABEL.to_owned(), OUTBOX_VALUE.to_owned()),
                ])),
                annotations: Some(BTreeMap::from([(
                    REQUEST_ANNOTATION.to_owned(),
                    request.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..ConfigMap::default()
        }
    }

    /// Records that `channel` got everything before `next`.
    pub async fn mark_delivered(&self, uid: &str, channel: &str, next: u64) -> Result<(), Error> {
        let data = BTreeMap::from([(format!("{DELIVERED_PREFIX}{channel}"), next.to_string())]);
        let patch = serde_json::json!({"data": data});
        match self
            .api
            .patch(
                &Self::name(uid),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            // Removed meanwhile: nothing is owed any more.
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => Err(Self::failed("update", uid)(error)),
        }
    }

    /// Removes an outbox whose events every channel has.
    pub async fn remove(&self, uid: &str) -> Result<(), Error> {
        match self
            .api
            .delete(&Self::name(uid), &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => Err(Self::failed("delete", uid)(error)),
        }
    }

    /// Merges `data` into the outbox, making it when it does not exist.
    async fn merge(
        &self,
        uid: &str,
        request: &str,
        data: BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let name = Self::name(uid);
        let patch = serde_json::json!({"data": &data});
        for _ in 0..3 {
            match self
                .api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(Self::failed("update", uid)(error)),
            }
            let config_map = self.config_map(uid, request, data.clone());
            match self.api.create(&PostParams::default(), &config_map).await {
                Ok(_) => return Ok(()),
                // Made meanwhile by another writer: merge into it.
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(error) => return Err(Self::failed("create", uid)(error)),
            }
        }
        Err(Error::Contended { name })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const UID: &str = "6f1c2d3e-0000-4000-8000-000000000001";

    fn sealed(sealer: &Sealer, ordinal: u64, to: &[&str]) -> (String, String) {
        let record = Record {
            event: serde_json::json!({"id": format!("event {ordinal}")}),
            to: to.iter().map(|channel| (*channel).to_owned()).collect(),
            mail: Vec::new(),
        };
        let text = serde_json::to_string(&record).unwrap();
        let sealed = Sealed {
            seal: sealer.seal_audit(UID, ordinal, &text),
            record: text,
        };
        (
            format!("{EVENT_PREFIX}{ordinal:08}"),
            serde_json::to_string(&sealed).unwrap(),
        )
    }

    fn outbox_of(data: BTreeMap<String, String>) -> Arc<ConfigMap> {
        Arc::new(ConfigMap {
            metadata: ObjectMeta {
                name: Some(Store::name(UID)),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..ConfigMap::default()
        })
    }

    #[test]
    fn the_deliverer_keeps_only_what_a_channel_is_still_owed() {
        let sealer = Sealer::new(b"the outbox tests' sealing key....");
        let mut data: BTreeMap<String, String> = [
            sealed(&sealer, 0, &["slack"]),
            sealed(&sealer, 1, &[]),
            sealed(&sealer, 2, &["slack", "mail"]),
            sealed(&sealer, 3, &["mail"]),
        ]
        .into_iter()
        .collect();
        data.insert(format!("{DELIVERED_PREFIX}slack"), "1".to_owned());
        data.insert(format!("{DELIVERED_PREFIX}mail"), "4".to_owned());
        data.insert(RECORDED.to_owned(), "4".to_owned());
        let config_map = outbox_of(data);

        let outbox = Outbox::parse(&config_map, &sealer).unwrap().keeping_owed();

        assert_eq!(
            outbox.records.keys().copied().collect::<Vec<_>>(),
            [2],
            "only the record a channel is still owed"
        );
        assert!(outbox.forged.is_empty());
        // Slack has had 0; it is owed 2. Mail has had everything. Nobody hears 1.
        assert_eq!(
            outbox.next_for("slack", 1).map(|(ordinal, _)| ordinal),
            Some(2)
        );
        assert_eq!(
            outbox.record(2).map(|record| record.event["id"].clone()),
            Some(serde_json::json!("event 2"))
        );
        for settled in [0, 1, 3] {
            assert!(outbox.record(settled).is_none(), "text of {settled} kept");
        }
        let kept = outbox.source.as_ref().unwrap().data.as_ref().unwrap();
        assert_eq!(kept.len(), 1, "only the owed record's text: {kept:?}");
    }

    #[test]
    fn an_outbox_nobody_is_owed_anything_from_keeps_no_text() {
        let sealer = Sealer::new(b"the outbox tests' sealing key....");
        let data: BTreeMap<String, String> = [sealed(&sealer, 0, &[]), sealed(&sealer, 1, &[])]
            .into_iter()
            .collect();
        let config_map = outbox_of(data);

        let outbox = Outbox::parse(&config_map, &sealer).unwrap().keeping_owed();

        assert!(outbox.records.is_empty());
        assert!(outbox.source.is_none());
        assert!(outbox.channels().is_empty());
    }
}
