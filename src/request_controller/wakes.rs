//! Which changes of a request, seen through the watch, wake the controller: not one that
//! leaves everything it reads as it was, and not one the controller made itself.
//!
//! Every write of a reconcile (its intent, its status, its finalizer) comes back through the
//! watch. Left to wake the controller, each could: another reconcile after a grant, revoke or
//! denial, with a fresh read of the request (and of its policy), queued beside the expiries
//! that were due. Whatever that look would find, the reconcile that wrote it had decided
//! already, and scheduled its next look itself.
//!
//! A change is the controller's own when its resourceVersion is one that a write of the
//! controller returned: the API server gives each change of an object its own, so a change
//! anyone else made, before or after, has another and wakes it as ever (and the controller
//! reads the request fresh then). The watch often reports a write before its response
//! arrives, so that it cannot be told apart yet: it wakes the controller, which runs once the
//! reconcile that wrote it is done; at that point every version that woke it is compared with
//! what that reconcile wrote, and if all were its own, what it decided (when to look again)
//! holds and nothing is read. Anything else that woke it in between (a change of anyone
//! else, its policy, its grant at the target, its timer) means a fresh look, as before.
//! Only the last few versions of a request are kept; a version is forgotten once seen.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// The versions kept per request: a reconcile writes at most four times (finalizer, intent,
/// status, release).
const KEPT: usize = 4;

/// What the controller knows of each request's changes, by `namespace/name`.
#[derive(Default)]
pub(crate) struct Wakes {
    requests: Mutex<HashMap<String, Seen>>,
}

#[derive(Default)]
struct Seen {
    /// The hash of what the controller reads of the last change seen.
    relevant: Option<u64>,
    /// The versions the controller's own writes returned, not yet seen through the watch.
    own: VecDeque<String>,
    /// The versions of the changes that woke the controller since its last reconcile began.
    woke: Vec<String>,
    /// Whether something else woke it since then: a change it could not attribute, its
    /// policy, its grant changed at the target.
    woke_otherwise: bool,
    /// When the last reconcile that went through asked to look again (`None`: only on a
    /// change).
    next: Option<Option<Instant>>,
}

impl Seen {
    /// Gives back the room of the versions once all were seen: most requests sit between
    /// changes with none, and 10,000 empty queues held 1.1 MB.
    fn forget_own_room(&mut self) {
        if self.own.is_empty() {
            self.own = VecDeque::new();
        }
    }
}

impl Wakes {
    /// Notes that a write of the controller returned `version` for the request `key`.
    pub(crate) fn wrote(&self, key: &str, version: Option<&str>) {
        let Some(version) = version else {
            return;
        };
        self.with(key, |seen| {
            if seen.own.len() == KEPT {
                seen.own.pop_front();
            }
            seen.own.push_back(version.to_owned());
        });
    }

    /// Whether a change of the request `key` to `version`, whose relevant content hashes to
    /// `relevant` (`None` when it cannot be read), wakes the controller. Remembers it either
    /// way, so that the next change is compared with this one.
    pub(crate) fn wakes(&self, key: &str, version: Option<&str>, relevant: Option<u64>) -> bool {
        self.with(key, |seen| {
            let own = version.and_then(|version| seen.own.iter().position(|own| own == version));
            if let Some(own) = own {
                seen.own.remove(own);
                seen.forget_own_room();
            }
            let changed = relevant.is_none() || seen.relevant != relevant;
            seen.relevant = relevant;
            let wakes = changed && own.is_none();
            if wakes {
                match version {
                    Some(version) if seen.woke.len() < KEPT => seen.woke.push(version.to_owned()),
                    _ => seen.woke_otherwise = true,
                }
            }
            wakes
        })
    }

    /// Notes that something other than a change of the request itself wakes the controller
    /// for it (its policy changed, its grant changed at the target).
    pub(crate) fn woken_otherwise(&self, key: &str) {
        self.with(key, |seen| seen.woke_otherwise = true);
    }

    /// Notes, as a reconcile of `key` ends well, when it asked to look again.
    pub(crate) fn looked(&self, key: &str, again: Option<Duration>, now: Instant) {
        self.with(key, |seen| seen.next = Some(again.map(|after| now + after)));
    }

    /// As a reconcile of `key` begins: when all that woke the controller since the last one
    /// began were changes that reconcile wrote itself (their event raced its response, so
    /// the watch could not tell), what that reconcile asked for still holds: how long until
    /// it looks again (`Some(None)`: only on a change). `None` when it must look now: woken by
    /// anyone else, by its timer, or after a reconcile that failed.
    pub(crate) fn begin(&self, key: &str, now: Instant) -> Option<Option<Duration>> {
        self.with(key, |seen| {
            let woke = std::mem::take(&mut seen.woke);
            let otherwise = std::mem::take(&mut seen.woke_otherwise);
            let next = seen.next.take()?;
            if otherwise || woke.is_empty() {
                return None;
            }
            for version in &woke {
                let own = seen.own.iter().position(|own| own == version)?;
                seen.own.remove(own);
            }
            seen.forget_own_room();
            let still = match next {
                None => None,
                Some(at) if at > now => Some(at - now),
                Some(_) => return None,
            };
            // Still what holds, for another of its writes the watch may report late.
            seen.next = Some(next);
            Some(still)
        })
    }

    /// Forgets a request that is gone.
    pub(crate) fn forget(&self, key: &str) {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    fn with<T>(&self, key: &str, f: impl FnOnce(&mut Seen) -> T) -> T {
        let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        match requests.get_mut(key) {
            Some(seen) => f(seen),
            None => f(requests.entry(key.to_owned()).or_default()),
        }
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
    fn own_changes_seen_before_they_were_noted_keep_what_the_reconcile_asked_for() {
        let wakes = Wakes::default();
        let now = Instant::now();
        let key = "team/a";
        assert!(wakes.wakes(key, Some("1"), Some(1)));
        assert_eq!(wakes.begin(key, now), None, "the first look");
        // The reconcile writes 2 and 3; the watch reports both before it has noted them.
        assert!(wakes.wakes(key, Some("2"), Some(2)));
        assert!(wakes.wakes(key, Some("3"), Some(3)));
        wakes.wrote(key, Some("2"));
        wakes.wrote(key, Some("3"));
        wakes.looked(key, Some(Duration::from_secs(300)), now);
        let later = now + Duration::from_secs(1);
        assert_eq!(
            wakes.begin(key, later),
            Some(Some(Duration::from_secs(299))),
            "woken by its own writes alone: the timer it set still holds"
        );
        // Then its timer: a look.
        assert_eq!(wakes.begin(key, now + Duration::from_secs(300)), None);
    }

    #[test]
    fn anything_else_that_woke_it_calls_for_a_look() {
        let now = Instant::now();
        let key = "team/a";
        let ended = |wakes: &Wakes| {
            wakes.wakes(key, Some("1"), Some(1));
            wakes.begin(key, now);
            wakes.wakes(key, Some("2"), Some(2));
            wakes.wrote(key, Some("2"));
            wakes.looked(key, None, now);
        };
        // Only its own write: an ended request stays waiting for a change.
        let wakes = Wakes::default();
        ended(&wakes);
        assert_eq!(wakes.begin(key, now), Some(None));
        // Someone else's change beside its own.
        let wakes = Wakes::default();
        ended(&wakes);
        assert!(wakes.wakes(key, Some("3"), Some(3)));
        assert_eq!(wakes.begin(key, now), None);
        // Its policy or its grant at the target.
        let wakes = Wakes::default();
        ended(&wakes);
        wakes.woken_otherwise(key);
        assert_eq!(wakes.begin(key, now), None);
        // A change whose version it cannot read.
        let wakes = Wakes::default();
        ended(&wakes);
        assert!(wakes.wakes(key, None, Some(3)));
        assert_eq!(wakes.begin(key, now), None);
        // A reconcile whose write raced its response and that then failed (nothing noted
        // as it ended), or noted a timer that is due by now.
        let raced = || {
            let wakes = Wakes::default();
            wakes.wakes(key, Some("1"), Some(1));
            wakes.begin(key, now);
            wakes.wakes(key, Some("2"), Some(2));
            wakes.wrote(key, Some("2"));
            wakes
        };
        assert_eq!(raced().begin(key, now), None);
        let due = raced();
        due.looked(key, Some(Duration::from_secs(1)), now);
        assert_eq!(due.begin(key, now + Duration::from_secs(2)), None);
    }

    #[test]
    fn what_is_kept_stays_bounded_and_goes_with_the_request() {
        let wakes = Wakes::default();
        for version in 3..20 {
            wakes.wrote("team/a", Some(&version.to_string()));
        }
        for version in 30..40 {
            wakes.wakes("team/a", Some(&version.to_string()), Some(version));
        }
        {
            let requests = wakes.requests.lock().unwrap();
            let seen = requests.get("team/a").unwrap();
            assert_eq!(seen.own.len(), KEPT);
            assert_eq!(seen.woke.len(), KEPT);
            assert!(
                seen.woke_otherwise,
                "more than it keeps: treated as anyone's"
            );
        }
        assert!(
            wakes.wakes("team/a", Some("3"), Some(1)),
            "an old version no longer kept is anyone's"
        );
        wakes.forget("team/a");
        assert!(wakes.requests.lock().unwrap().is_empty());
        // Another request is its own.
        wakes.wrote("team/b", Some("9"));
        assert!(wakes.wakes("team/c", Some("9"), Some(1)));
    }
}
