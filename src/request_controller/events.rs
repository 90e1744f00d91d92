//! The Events (events.k8s.io/v1) the controller publishes about requests. A notice repeated
//! within [`SERIES_WINDOW`] (same request, type, reason and note) is counted as a series on the
//! Event already written, as kube-runtime's `Recorder` does. Unlike it, a publish costs the same
//! however many Events were published lately (the `Recorder` rescans all it remembers on every
//! publish, under one lock: 50,000 at 10,000 requests), only what a series needs is remembered
//! rather than whole Events, and two notices with different notes (two approvers) stay two
//! Events rather than one with a count.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, PoisonError},
};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

/// How long a notice may be counted on the Event written for it, as kube-runtime's.
const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// Whether an Event is for people to act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum EventKind {
    Normal,
    Warning,
}

impl EventKind {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// Who publishes: the controller's name and this replica.
pub(crate) struct Publisher {
    client: Client,
    controller: String,
    instance: String,
    recent: Mutex<Recent>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SeriesKey {
    uid: String,
    kind: EventKind,
    reason: String,
    note: String,
}

/// A series as remembered: a hash of its key. Keys hold a request's UID and a whole note, and
/// six minutes of them at 10,000 requests are 50,000 series; a hash is eight bytes. Two
/// notices whose keys collide in 64 bits (about one chance in 10^10 among 50,000) would be
/// counted on one Event.
type SeriesId = u64;

impl SeriesKey {
    fn id(&self) -> SeriesId {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut hasher);
        hasher.finish()
    }
}

/// The Event a notice was written as, and how often it has been seen.
#[derive(Clone, Debug)]
struct Series {
    /// When its Event was created, in nanoseconds: with the request's name, the Event's name
    /// ([`event_name`]), so that a series holds nothing on the heap.
    created: i128,
    count: i32,
    last: Timestamp,
}

/// The name of the Event about `regarding` created at `created` (nanoseconds).
fn event_name(regarding: &ObjectReference, controller: &str, created: i128) -> String {
    format!(
        "{}.{created:x}",
        regarding.name.as_deref().unwrap_or(controller)
    )
}

/// The series of the last [`SERIES_WINDOW`], and their keys by when last seen (oldest first;
/// a key seen again is queued again, and its older entry is skipped when it comes up).
#[derive(Default)]
struct Recent {
    series: HashMap<SeriesId, Series>,
    by_time: VecDeque<(Timestamp, SeriesId)>,
}

impl Recent {
    fn forget_before(&mut self, cutoff: Timestamp) {
        while let Some((seen, _)) = self.by_time.front() {
            if *seen >= cutoff {
                break;
            }
            let Some((seen, id)) = self.by_time.pop_front() else {
                break;
            };
            if self
                .series
                .get(&id)
                .is_some_and(|series| series.last <= seen)
            {
                self.series.remove(&id);
            }
        }
    }

    fn remember(&mut self, id: SeriesId, series: Series) {
        self.by_time.push_back((series.last, id));
        self.series.insert(id, series);
    }
}

impl Publisher {
    /// A publisher writing as `controller` from `instance` (the controller's name when none).
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Self {
            client,
            controller: controller.to_owned(),
            instance: instance.unwrap_or_else(|| controller.to_owned()),
            recent: Mutex::default(),
        }
    }

    /// Publishes one notice about `regarding`: a new Event, or the next count of the series
    /// of the same notice.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        kind: EventKind,
        reason: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let namespace = regarding.namespace.clone().unwrap_or_default();
        let key = SeriesKey {
            uid: regarding.uid.clone().unwrap_or_default(),
            kind,
            reason: reason.to_owned(),
            note: note.to_owned(),
        };
        let repeat = {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            recent.forget_before(now - SERIES_WINDOW);
            recent.series.get(&key.id()).cloned()
        };
        let events = Api::<Event>::namespaced(self.client.clone(), &namespace);
        let series = match repeat {
            Some(series) => {
                let count = series.count + 1;
                let patch = json!({"series": {"count": count, "lastObservedTime": MicroTime(now)}});
                match events
                    .patch(
                        &event_name(regarding, &self.controller, series.created),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    Ok(_) => Series {
                        count,
                        last: now,
                        ..series
                    },
                    // Gone already (the API server keeps Events an hour by default): anew.
                    Err(kube::Error::Api(status)) if status.code == 404 => {
                        self.create(&events, regarding, &key, now).await?
                    }
                    Err(error) => return Err(error),
                }
            }
            None => self.create(&events, regarding, &key, now).await?,
        };
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remember(key.id(), series);
        Ok(())
    }

    async fn create(
        &self,
        events: &Api<Event>,
        regarding: &ObjectReference,
        key: &SeriesKey,
        now: Timestamp,
    ) -> Result<Series, kube::Error> {
        let created = now.as_nanosecond();
        let name = event_name(regarding, &self.controller, created);
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: regarding.namespace.clone(),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(key.reason.clone()),
            reason: Some(key.reason.clone()),
            note: Some(key.note.clone()),
            type_: Some(key.kind.as_str().to_owned()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        events.create(&PostParams::default(), &event).await?;
        Ok(Series {
            created,
            count: 1,
            last: now,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn key(note: &str) -> SeriesKey {
        SeriesKey {
            uid: "uid-1".into(),
            kind: EventKind::Warning,
            reason: "RevocationFailing".into(),
            note: note.into(),
        }
    }

    fn id(note: &str) -> SeriesId {
        key(note).id()
    }

    fn series(created: i128, last: Timestamp) -> Series {
        Series {
            created,
            count: 1,
            last,
        }
    }

    #[test]
    fn a_series_is_forgotten_once_last_seen_before_the_cutoff_and_not_before() {
        let at = |minutes: i64| {
            "2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap()
                + SignedDuration::from_mins(minutes)
        };
        let mut recent = Recent::default();
        recent.remember(id("a"), series(1, at(0)));
        recent.remember(id("b"), series(2, at(1)));
        // `a` seen again at 00:05.
        recent.remember(
            id("a"),
            Series {
                count: 2,
                ..series(1, at(5))
            },
        );
        recent.forget_before(at(0) + SignedDuration::from_secs(30));
        assert_eq!(
            recent.series[&id("a")].count,
            2,
            "its first sighting is not its last"
        );
        assert!(recent.series.contains_key(&id("b")));
        recent.forget_before(at(2));
        assert!(recent.series.contains_key(&id("a")));
        assert!(!recent.series.contains_key(&id("b")));
        recent.forget_before(at(6));
        assert!(recent.series.is_empty());
        assert!(
            recent.by_time.is_empty(),
            "nothing is kept once all is forgotten"
        );
    }

    #[test]
    fn notices_with_different_notes_are_different_series() {
        assert_ne!(key("approved by bob"), key("approved by carol"));
        assert_ne!(id("approved by bob"), id("approved by carol"));
    }
}
