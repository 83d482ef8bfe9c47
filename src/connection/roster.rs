//! Every running connection's mailbox, so that shutdown reaches each one through its mailbox.
//!
//! A connection task waits on its socket, its mailbox and its timer. Waiting on the server's
//! shutdown token as well would keep the token's waiter (72 bytes) in every task's state for its
//! whole life; instead the server rings each mailbox here once, when shutdown begins, and the
//! roster costs a connection one slab entry (16 bytes).

use std::sync::{Mutex, Weak};

use slab::Slab;

use super::mailbox::Mailbox;
use crate::sync::lock;

/// Below this many entries the slab keeps its room.
const KEEP: usize = 64;

#[derive(Debug, Default)]
pub(crate) struct Roster {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    mailboxes: Slab<Weak<Mailbox>>,
    /// Shutdown has begun: a connection that arrives now is told at once.
    closing: bool,
    /// The slab tries to give back room when it holds no more than this (see [`Roster::leave`]).
    shrink_at: usize,
}

/// A connection's place in the roster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seat(u32);

impl Roster {
    /// Enters a connection's mailbox; if shutdown has begun the mailbox is told now.
    pub(crate) fn enter(&self, mailbox: &std::sync::Arc<Mailbox>) -> Seat {
        let mut inner = lock(&self.inner);
        if inner.closing {
            mailbox.shut_down();
        }
        let key = inner.mailboxes.insert(std::sync::Arc::downgrade(mailbox));
        inner.shrink_at = inner.shrink_at.max(inner.mailboxes.len() / 4);
        // More than 4 billion connections at once are not served by one process.
        Seat(u32::try_from(key).unwrap_or(u32::MAX))
    }

    /// Gives up a connection's place.
    pub(crate) fn leave(&self, seat: Seat) {
        let mut inner = lock(&self.inner);
        let key = seat.0 as usize;
        if inner.mailboxes.contains(key) {
            inner.mailboxes.remove(key);
        }
        // A slab can only give back the vacant room after its last occupied entry, and finding
        // that is O(room): tried when a quarter is left, then each time what is left halves.
        let len = inner.mailboxes.len();
        if len <= inner.shrink_at && inner.mailboxes.capacity() > KEEP {
            inner.mailboxes.shrink_to_fit();
            inner.shrink_at = len / 2;
        }
    }

    /// Shutdown has begun: tells every connection's mailbox, and any that enters later.
    pub(crate) fn close_all(&self) {
        let mut inner = lock(&self.inner);
        inner.closing = true;
        for (_, mailbox) in &inner.mailboxes {
            if let Some(mailbox) = mailbox.upgrade() {
                mailbox.shut_down();
            }
        }
    }

    /// Connections in the roster.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.inner).mailboxes.len()
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        lock(&self.inner).mailboxes.capacity()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn mailbox() -> Arc<Mailbox> {
        Arc::new(Mailbox::new(
            8,
            1024,
            prometheus::IntCounter::new("x", "x").unwrap(),
        ))
    }

    #[test]
    fn shutdown_reaches_every_mailbox_in_the_roster_and_any_that_enters_later() {
        let roster = Roster::default();
        let early = mailbox();
        let gone = mailbox();
        roster.enter(&early);
        let seat = roster.enter(&gone);
        roster.leave(seat);
        roster.close_all();
        assert!(early.signals().shutdown);
        assert!(!gone.signals().shutdown, "left before shutdown");
        let late = mailbox();
        roster.enter(&late);
        assert!(late.signals().shutdown);
    }

    #[test]
    fn the_roster_gives_back_its_room_once_a_crowd_has_left() {
        let roster = Roster::default();
        let boxes: Vec<_> = (0..10_000).map(|_| mailbox()).collect();
        let seats: Vec<_> = boxes.iter().map(|m| roster.enter(m)).collect();
        assert!(roster.capacity() >= 10_000);
        // Everyone but the first few leaves, last in first.
        for seat in seats[10..].iter().rev() {
            roster.leave(*seat);
        }
        assert_eq!(roster.len(), 10);
        assert!(
            roster.capacity() <= 2 * KEEP,
            "room kept: {}",
            roster.capacity()
        );
    }
}
