//! What follows a revoke (its audit record, its Events, its finalizer's release), held back
//! while expiry revokes are running late, so that a burst of expiries is met by revokes alone.
//!
//! A revoke of a grant whose time is up costs the API server seven requests: the read, the
//! intent, the binding's DELETE, the outcome written to status, then the audit record, the
//! Events and the release. The last three change nothing anyone holds. When expiries come due
//! faster than the API server takes all seven (at 10,000 live grants on two cores, 75 a second
//! against about 68), every revoke waits behind the bookkeeping of the ones before it. While
//! revokes are behind, a revoke's followups wait here instead, and are let through once
//! revokes keep up again and none is about to come due, or after [`HELD_AT_MOST`] whatever
//! happens; [`IN_FLIGHT`] at a time, so that the next revoke never queues behind more than
//! that.
//!
//! Nothing is lost by waiting: the audit record is made from the status that holds the
//! transitions (it is idempotent), and the release follows the record as before. Only the
//! Events waiting here are lost if the operator stops in that time; the status, the audit
//! record and the release are made by the first look after it starts.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use super::notice::Notice;

/// A revoke that starts later than this after its grant's end is late.
const LATE: Duration = Duration::from_millis(250);

/// How many late revokes within [`WINDOW`] mean revokes are behind: a burst, not one revoke
/// made late by a restart or a slow call.
const BEHIND_AFTER: usize = 16;

/// How far back late revokes count: also how long revokes count as behind after the last
/// late one, so that a burst is not taken as over the moment holding its followups has let
/// the revokes catch up.
const WINDOW: Duration = Duration::from_secs(10);

/// The longest a revoke's followups wait, however far behind revokes are: the audit record
/// tells people the access ended, and it must not wait for ever under a load that lasts.
/// Longer than a burst of expiries takes to clear (10,000 at once: about two minutes here).
pub(crate) const HELD_AT_MOST: Duration = Duration::from_secs(300);

/// How soon a grant's end counts as a revoke about to come due.
pub(crate) const COMING: Duration = Duration::from_secs(1);

/// How long past its end a grant still counts as a revoke coming: longer than that, its
/// revoke is failing and backing off, not waiting its turn in a burst.
pub(crate) const OVERDUE_NOT_COMING: Duration = Duration::from_secs(30);

/// Followups let through and not yet done, at most: as many as the controller runs at once,
/// so that thousands held through a burst never queue in front of the next revoke.
pub(crate) const IN_FLIGHT: usize = 16;

/// How long a followup let through counts as in flight when its look never takes it (the
/// request gone from the cache): it does not hold up the others for longer.
const IN_FLIGHT_AT_MOST: Duration = Duration::from_secs(5);

/// How often the held followups are looked at.
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// The followups held back, and how late the recent revokes were.
#[derive(Default)]
pub(crate) struct Followups {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// When each late revoke of the last [`WINDOW`] began.
    late: VecDeque<Instant>,
    /// The Events of each request whose followups wait, by `namespace/name`.
    held: HashMap<String, Held>,
    /// The requests whose followups wait, oldest first (each once).
    order: VecDeque<String>,
    /// The requests whose followups were let through and not yet taken, and when.
    in_flight: VecDeque<(Instant, String)>,
}

struct Held {
    notices: Vec<Notice>,
    since: Instant,
}

impl Followups {
    /// Notes that a revoke of a grant whose time is up began `late_by` after its end.
    pub(crate) fn revoke_began(&self, late_by: Duration, now: Instant) {
        if late_by <= LATE {
            return;
        }
        let mut state = self.lock();
        state.forget_late_before(now);
        state.late.push_back(now);
    }

    /// Whether expiry revokes are behind now.
    pub(crate) fn behind(&self, now: Instant) -> bool {
        let mut state = self.lock();
        state.forget_late_before(now);
        state.late.len() >= BEHIND_AFTER
    }

    /// Holds the followups of the revoke of `key`, whose Events are `notices`.
    pub(crate) fn hold(&self, key: &str, notices: Vec<Notice>, now: Instant) {
        let mut state = self.lock();
        match state.held.get_mut(key) {
            Some(held) => held.notices.extend(notices),
            None => {
                state.held.insert(
                    key.to_owned(),
                    Held {
                        notices,
                        since: now,
                    },
                );
                state.order.push_back(key.to_owned());
            }
        }
    }

    /// The requests whose followups may go ahead now, the oldest first, while fewer than
    /// [`IN_FLIGHT`] are: when revokes keep up and none is `coming` due, or when the oldest
    /// has waited [`HELD_AT_MOST`]. Each is returned once; its Events stay here until its look
    /// takes them.
    pub(crate) fn due(&self, now: Instant, coming: bool) -> Vec<String> {
        let mut state = self.lock();
        state.forget_late_before(now);
        let State {
            held, in_flight, ..
        } = &mut *state;
        in_flight.retain(|(since, key)| {
            now.duration_since(*since) < IN_FLIGHT_AT_MOST && held.contains_key(key)
        });
        let clear = state.late.len() < BEHIND_AFTER && !coming;
        let mut due = Vec::new();
        while state.in_flight.len() + due.len() < IN_FLIGHT {
            let Some(key) = state.order.front() else {
                break;
            };
            let overdue = state
                .held
                .get(key)
                .is_none_or(|held| now.duration_since(held.since) >= HELD_AT_MOST);
            if !(clear || overdue) {
                break;
            }
            if let Some(key) = state.order.pop_front() {
                due.push(key);
            }
        }
        state
            .in_flight
            .extend(due.iter().map(|key| (now, key.clone())));
        due
    }

    /// The Events held for `key`, once: its look publishes them.
    pub(crate) fn take(&self, key: &str) -> Vec<Notice> {
        let mut state = self.lock();
        let Some(held) = state.held.remove(key) else {
            return Vec::new();
        };
        // Its look may come before its turn (someone changed it): its place goes too.
        if let Some(at) = state.order.iter().position(|waiting| waiting == key) {
            state.order.remove(at);
        }
        held.notices
    }

    /// How many requests' followups wait.
    pub(crate) fn waiting(&self) -> usize {
        self.lock().held.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn forget_late_before(&mut self, now: Instant) {
        while self
            .late
            .front()
            .is_some_and(|began| now.duration_since(*began) > WINDOW)
        {
            self.late.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request_controller::notice::Reason;

    fn late_revokes(followups: &Followups, count: usize, now: Instant) {
        for _ in 0..count {
            followups.revoke_began(Duration::from_secs(1), now);
        }
    }

    #[test]
    fn revokes_are_behind_only_after_a_burst_of_late_ones() {
        let followups = Followups::default();
        let now = Instant::now();
        // On time, however many.
        for _ in 0..100 {
            followups.revoke_began(Duration::from_millis(200), now);
        }
        assert!(!followups.behind(now));
        late_revokes(&followups, BEHIND_AFTER - 1, now);
        assert!(!followups.behind(now), "a few late revokes are not a burst");
        late_revokes(&followups, 1, now);
        assert!(followups.behind(now));
        assert!(
            !followups.behind(now + WINDOW + Duration::from_millis(1)),
            "late revokes older than the window do not count"
        );
    }

    #[test]
    fn held_followups_wait_while_behind_and_go_a_few_at_a_time_after() {
        let followups = Followups::default();
        let now = Instant::now();
        late_revokes(&followups, BEHIND_AFTER, now);
        for index in 0..20 {
            followups.hold(
                &format!("team/r{index}"),
                vec![Notice::new(Reason::Expired, "expired")],
                now,
            );
        }
        assert_eq!(followups.waiting(), 20);
        assert!(followups.due(now, false).is_empty(), "nothing while behind");
        let later = now + WINDOW + Duration::from_millis(1);
        assert!(
            followups.due(later, true).is_empty(),
            "nothing while revokes are coming due"
        );
        let first = followups.due(later, false);
        assert_eq!(first.len(), IN_FLIGHT);
        assert_eq!(first[0], "team/r0", "oldest first");
        assert!(
            followups.due(later, false).is_empty(),
            "no more while as many are in flight"
        );
        // Still held until their looks take the Events; each one taken makes room for one.
        assert_eq!(followups.waiting(), 20);
        assert_eq!(followups.take("team/r0").len(), 1);
        assert!(followups.take("team/r0").is_empty(), "taken once");
        assert_eq!(followups.waiting(), 19);
        let second = followups.due(later, false);
        assert_eq!(second, vec![format!("team/r{IN_FLIGHT}")], "each once");
        // A look that never comes does not hold the rest up for long.
        let stuck = later + IN_FLIGHT_AT_MOST;
        assert_eq!(followups.due(stuck, false).len(), 20 - IN_FLIGHT - 1);
    }

    #[test]
    fn followups_held_too_long_go_even_while_behind_as_few_at_a_time() {
        let followups = Followups::default();
        let now = Instant::now();
        for index in 0..=IN_FLIGHT {
            followups.hold(&format!("team/old{index}"), Vec::new(), now);
        }
        let much_later = now + HELD_AT_MOST;
        followups.hold("team/new", Vec::new(), much_later);
        late_revokes(&followups, BEHIND_AFTER, much_later);
        assert_eq!(followups.due(much_later, true).len(), IN_FLIGHT);
        followups.take("team/old0");
        assert_eq!(
            followups.due(much_later, true),
            vec![format!("team/old{IN_FLIGHT}")]
        );
        followups.take("team/old1");
        assert!(
            followups.due(much_later, true).is_empty(),
            "not the new one"
        );
    }

    #[test]
    fn a_look_before_its_turn_takes_its_place_too() {
        let followups = Followups::default();
        let now = Instant::now();
        followups.hold("team/a", Vec::new(), now);
        followups.hold("team/b", Vec::new(), now);
        followups.take("team/a");
        assert_eq!(followups.due(now, false), vec!["team/b".to_owned()]);
    }
}
