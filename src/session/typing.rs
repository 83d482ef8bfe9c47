//! One sender's typing indications: what to relay, what to throttle, what has gone stale.
//!
//! The rules (IRCv3 `+typing` semantics, enforced by the server so clients cannot flood):
//! - at most one `active` relayed per sender and target every throttle period (default 3 s);
//! - an `active` not refreshed within 6 s, or a `paused` within 30 s (the defaults), is ended by
//!   relaying `done`;
//! - leaving the room or disconnecting relays `done`; sending a message ends typing silently
//!   (clients clear it themselves when the message arrives).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::TypingState;

/// Default minimum time between two relayed `active` states for one target.
pub const ACTIVE_THROTTLE: Duration = Duration::from_secs(3);
/// Default time after which an unrefreshed `active` state is ended.
pub const ACTIVE_EXPIRY: Duration = Duration::from_secs(6);
/// Default time after which an unrefreshed `paused` state is ended.
pub const PAUSED_EXPIRY: Duration = Duration::from_secs(30);
/// Targets one sender may be typing to at once.
pub const MAX_TARGETS: usize = 32;

/// The three periods that govern typing relays (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TypingTimings {
    /// Minimum time between two relayed `active` states for one target.
    pub throttle: Duration,
    /// An `active` state not refreshed for this long is ended.
    pub active_expiry: Duration,
    /// A `paused` state not refreshed for this long is ended.
    pub paused_expiry: Duration,
}

impl Default for TypingTimings {
    fn default() -> Self {
        TypingTimings {
            throttle: ACTIVE_THROTTLE,
            active_expiry: ACTIVE_EXPIRY,
            paused_expiry: PAUSED_EXPIRY,
        }
    }
}

/// Where someone is typing.
#[derive(Debug, Clone)]
pub enum TypingTarget {
    /// In a room (normalised name).
    Room(Arc<str>),
    /// To a user, by display name.
    User(Arc<str>),
}

impl TypingTarget {
    fn same(&self, other: &TypingTarget) -> bool {
        match (self, other) {
            (TypingTarget::Room(a), TypingTarget::Room(b)) => a == b,
            (TypingTarget::User(a), TypingTarget::User(b)) => a.eq_ignore_ascii_case(b),
            _ => false,
        }
    }
}

#[derive(Debug)]
struct Entry {
    target: TypingTarget,
    state: TypingState,
    last_active_relay: Option<Instant>,
    expires: Instant,
}

/// The typing states one sender has open (the timings are the server's, passed in: every
/// connection has a tracker).
#[derive(Debug, Default)]
pub struct TypingTracker {
    entries: Vec<Entry>,
}

impl TypingTracker {
    /// Records a state the sender reported; returns the state to relay, if any.
    pub fn update(
        &mut self,
        timings: &TypingTimings,
        target: TypingTarget,
        state: TypingState,
        now: Instant,
    ) -> Option<TypingState> {
        let &TypingTimings {
            throttle,
            active_expiry,
            paused_expiry,
        } = timings;
        let pos = self.entries.iter().position(|e| e.target.same(&target));
        match (state, pos) {
            (TypingState::Done, None) => None,
            (TypingState::Done, Some(i)) => {
                self.entries.swap_remove(i);
                Some(TypingState::Done)
            }
            (TypingState::Active, Some(i)) => {
                let e = &mut self.entries[i];
                e.expires = now + active_expiry;
                let throttled = e.state == TypingState::Active
                    && e.last_active_relay
                        .is_some_and(|t| now.duration_since(t) < throttle);
                e.state = TypingState::Active;
                if throttled {
                    None
                } else {
                    e.last_active_relay = Some(now);
                    Some(TypingState::Active)
                }
            }
            (TypingState::Paused, Some(i)) => {
                let e = &mut self.entries[i];
                e.expires = now + paused_expiry;
                let changed = e.state != TypingState::Paused;
                e.state = TypingState::Paused;
                changed.then_some(TypingState::Paused)
            }
            // Past this many targets at once a sender is not typing to anyone new (bounded state).
            (_, None) if self.entries.len() >= MAX_TARGETS => None,
            (state, None) => {
                let (expires, last_active_relay) = match state {
                    TypingState::Active => (now + active_expiry, Some(now)),
                    _ => (now + paused_expiry, None),
                };
                self.entries.push(Entry {
                    target,
                    state,
                    last_active_relay,
                    expires,
                });
                Some(state)
            }
        }
    }

    /// Forgets the target without relaying (the sender sent a message there).
    pub fn clear(&mut self, target: &TypingTarget) {
        self.entries.retain(|e| !e.target.same(target));
    }

    /// Ends typing at a target (the sender left it); true when `done` must be relayed.
    pub fn end(&mut self, target: &TypingTarget) -> bool {
        let before = self.entries.len();
        self.clear(target);
        self.entries.len() != before
    }

    /// When the next state goes stale.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.entries.iter().map(|e| e.expires).min()
    }

    /// Removes the states that are stale at `now`; each needs a `done` relayed.
    pub fn expire(&mut self, now: Instant) -> Vec<TypingTarget> {
        let mut stale = Vec::new();
        self.entries.retain(|e| {
            let keep = e.expires > now;
            if !keep {
                stale.push(e.target.clone());
            }
            keep
        });
        stale
    }

    /// Removes every open state (the sender is leaving); each needs a `done` relayed.
    pub fn drain(&mut self) -> Vec<TypingTarget> {
        self.entries.drain(..).map(|e| e.target).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: &str) -> TypingTarget {
        TypingTarget::User(n.into())
    }

    #[tokio::test(start_paused = true)]
    async fn throttles_active_and_expires() {
        let mut t = TypingTracker::default();
        let start = Instant::now();
        assert_eq!(
            t.update(
                &TypingTimings::default(),
                user("bob"),
                TypingState::Active,
                start
            ),
            Some(TypingState::Active)
        );
        assert_eq!(
            t.update(
                &TypingTimings::default(),
                user("BOB"),
                TypingState::Active,
                start + Duration::from_secs(2)
            ),
            None
        );
        assert_eq!(
            t.update(
                &TypingTimings::default(),
                user("bob"),
                TypingState::Active,
                start + Duration::from_secs(3)
            ),
            Some(TypingState::Active)
        );
        assert_eq!(t.next_expiry(), Some(start + Duration::from_secs(9)));
        assert!(t.expire(start + Duration::from_secs(8)).is_empty());
        assert_eq!(t.expire(start + Duration::from_secs(9)).len(), 1);
        assert_eq!(t.next_expiry(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn paused_relays_on_change_and_done_only_when_open() {
        let mut t = TypingTracker::default();
        let now = Instant::now();
        assert_eq!(
            t.update(&TypingTimings::default(), user("a"), TypingState::Done, now),
            None
        );
        assert_eq!(
            t.update(
                &TypingTimings::default(),
                user("a"),
                TypingState::Active,
                now
            ),
            Some(TypingState::Active)
        );
        assert_eq!(
            t.update(
                &TypingTimings::default(),
                user("a"),
                TypingState::Paused,
                now
            ),
            Some(TypingState::Paused)
        );
        assert_eq!(
            t.update(
                &TypingTimings::default(),
                user("a"),
                TypingState::Paused,
                now
            ),
            None
        );
        assert_eq!(t.next_expiry(), Some(now + PAUSED_EXPIRY));
        assert_eq!(
            t.update(&TypingTimings::default(), user("a"), TypingState::Done, now),
            Some(TypingState::Done)
        );
        t.update(
            &TypingTimings::default(),
            user("a"),
            TypingState::Active,
            now,
        );
        t.clear(&user("a"));
        assert!(!t.end(&user("a")));
    }
}
