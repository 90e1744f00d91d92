//! Which changes of a request, seen through the watch, wake the controller: not one that
//! leaves everything it reads as it was, and not one the controller made itself.
//!
//! Every write of a reconcile (its intent, its status, its finalizer) comes back through the
//! watch. Left to wake the controller, each did: a second reconcile after every grant,
//! revoke and denial, with a fresh read of the request and of its policy and a look at the
//! grant just made, queued before the expiries that were due (a third of the API server's
//! work in the revoke half at 3,000 grants). Whatever that look would find, the reconcile that
//! wrote it had decided already, and scheduled its next look itself.
//!
//! A change is the controller's own when its resourceVersion is one that a write of the
//! controller returned: the API server gives each change of an object its own, so a change
//! anyone else made, before or after, has another and wakes it as ever (and the controller
//! reads the request fresh then). Only the versions of the last few writes of a request are
//! kept, and a version is forgotten once seen: a write whose change the watch reported
//! before it was noted here wakes the controller once, which is all it ever did.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, PoisonError},
};

/// The versions kept per request: a reconcile writes at most four times (finalizer, intent,
/// status, release).
const KEPT: usize = 4;

/// What the controller knows of each request's changes: `namespace/name` to the hash of what
/// it reads of the last change seen, and the versions its own writes returned, not yet seen.
#[derive(Default)]
pub(crate) struct Wakes {
    requests: Mutex<HashMap<String, Seen>>,
}

#[derive(Default)]
struct Seen {
    relevant: Option<u64>,
    own: VecDeque<String>,
}

impl Wakes {
    /// Notes that a write of the controller returned `version` for the request `key`.
    pub(crate) fn wrote(&self, key: &str, version: Option<&str>) {
        let Some(version) = version else {
            return;
        };
        let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = requests.entry(key.to_owned()).or_default();
        if seen.own.len() == KEPT {
            seen.own.pop_front();
        }
        seen.own.push_back(version.to_owned());
    }

    /// Whether a change of the request `key` to `version`, whose relevant content hashes to
    /// `relevant` (`None` when it cannot be read), wakes the controller. Remembers it either
    /// way, so that the next change is compared with this one.
    pub(crate) fn wakes(&self, key: &str, version: Option<&str>, relevant: Option<u64>) -> bool {
        let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = requests.entry(key.to_owned()).or_default();
        let own = version.and_then(|version| seen.own.iter().position(|own| own == version));
        if let Some(own) = own {
            seen.own.remove(own);
        }
        let changed = relevant.is_none() || seen.relevant != relevant;
        seen.relevant = relevant;
        changed && own.is_none()
    }

    /// Forgets a request that is gone.
    pub(crate) fn forget(&self, key: &str) {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controllers_own_change_does_not_wake_it_and_anyone_elses_does() {
        let wakes = Wakes::default();
        assert!(wakes.wakes("team/a", Some("1"), Some(10)), "new");
        assert!(
            !wakes.wakes("team/a", Some("2"), Some(10)),
            "nothing read changed"
        );
        wakes.wrote("team/a", Some("3"));
        wakes.wrote("team/a", Some("5"));
        assert!(
            !wakes.wakes("team/a", Some("3"), Some(11)),
            "its own intent"
        );
        assert!(
            wakes.wakes("team/a", Some("4"), Some(12)),
            "an approver's change between two of its writes"
        );
        assert!(
            !wakes.wakes("team/a", Some("5"), Some(13)),
            "its own status"
        );
        // Seen once, forgotten: the same version again (a relist) compares by content.
        assert!(!wakes.wakes("team/a", Some("5"), Some(13)));
        assert!(wakes.wakes("team/a", Some("6"), Some(14)), "a later change");
        // One that cannot be read always wakes it.
        assert!(wakes.wakes("team/a", Some("7"), None));
    }

    #[test]
    fn a_write_seen_before_it_was_noted_wakes_it_once_and_what_is_kept_stays_bounded() {
        let wakes = Wakes::default();
        assert!(wakes.wakes("team/a", Some("2"), Some(1)));
        wakes.wrote("team/a", Some("2"));
        for version in 3..20 {
            wakes.wrote("team/a", Some(&version.to_string()));
        }
        let kept = wakes
            .requests
            .lock()
            .unwrap()
            .get("team/a")
            .map(|seen| seen.own.len());
        assert_eq!(kept, Some(KEPT));
        assert!(
            wakes.wakes("team/a", Some("2"), Some(2)),
            "an old version no longer kept is anyone's"
        );
        wakes.forget("team/a");
        assert!(wakes.requests.lock().unwrap().is_empty());
        // Another request is its own.
        wakes.wrote("team/b", Some("9"));
        assert!(wakes.wakes("team/c", Some("9"), Some(1)));
    }
}
