//! The requests one session has in flight, in the order they were made: each slot is a request
//! still waiting for its outcome, or a reply ready to go out once every earlier slot has gone.
//! This is what keeps replies in request order whatever order a broker answers in.

use std::collections::VecDeque;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::Kind;
use crate::hub::Ticket;

/// Requests one connection may have waiting for a late outcome, and their bytes: at either, the
/// connection reads no more until answers arrive (back-pressure through TCP, never a refusal).
/// Replies are bounded by requests in flight, so nothing grows without bound while a broker is
/// slow.
pub(crate) const MAX_IN_FLIGHT: usize = 64;
pub(crate) const MAX_IN_FLIGHT_BYTES: usize = 1 << 20;

/// One request in order.
#[derive(Debug)]
enum Slot {
    /// Its outcome has not come back yet.
    Waiting {
        ticket: Ticket,
        kind: Kind,
        reference: Option<String>,
        /// The request's size, counted against [`MAX_IN_FLIGHT_BYTES`].
        bytes: usize,
    },
    /// Its reply, waiting for earlier slots to go.
    Ready(Vec<Utf8Bytes>),
}

/// A request whose outcome has arrived, taken out of its slot to be turned into a reply.
#[derive(Debug)]
pub(super) struct Answered {
    pub at: usize,
    pub kind: Kind,
    pub reference: Option<String>,
}

/// The in-flight queue, oldest first.
#[derive(Debug, Default)]
pub(super) struct Slots {
    queue: VecDeque<Slot>,
    /// Slots still `Waiting`, and their bytes.
    waiting: usize,
    waiting_bytes: usize,
}

impl Slots {
    /// Frames that may go now if nothing is ahead of them, or else once everything ahead has.
    pub(super) fn send(&mut self, frames: Vec<Utf8Bytes>, out: &mut Vec<Utf8Bytes>) {
        if self.queue.is_empty() {
            out.extend(frames);
        } else {
            self.queue.push_back(Slot::Ready(frames));
        }
    }

    /// A request whose outcome will come later.
    pub(super) fn wait(
        &mut self,
        ticket: Ticket,
        kind: Kind,
        reference: Option<String>,
        bytes: usize,
    ) {
        self.waiting += 1;
        self.waiting_bytes += bytes;
        self.queue.push_back(Slot::Waiting {
            ticket,
            kind,
            reference,
            bytes,
        });
    }

    /// The waiting request `ticket` names, now that its outcome is here; `None` for an answer
    /// nobody waits for (a relay, a duplicate). Hand its reply to [`Slots::fill`].
    pub(super) fn answered(&mut self, ticket: Ticket) -> Option<Answered> {
        let at = self
            .queue
            .iter()
            .position(|s| matches!(s, Slot::Waiting { ticket: t, .. } if *t == ticket))?;
        let Slot::Waiting {
            kind,
            reference,
            bytes,
            ..
        } = std::mem::replace(&mut self.queue[at], Slot::Ready(Vec::new()))
        else {
            unreachable!("found as waiting");
        };
        self.waiting -= 1;
        self.waiting_bytes -= bytes;
        Some(Answered {
            at,
            kind,
            reference,
        })
    }

    /// The reply to an answered request.
    pub(super) fn fill(&mut self, answered: Answered, frames: Vec<Utf8Bytes>) {
        self.queue[answered.at] = Slot::Ready(frames);
    }

    /// The request at `at` (answered) waits again, for another outcome: a sign-in that now says
    /// hello to the broker keeps its place.
    pub(super) fn rewait(
        &mut self,
        at: usize,
        ticket: Ticket,
        kind: Kind,
        reference: Option<String>,
    ) {
        self.waiting += 1;
        self.queue[at] = Slot::Waiting {
            ticket,
            kind,
            reference,
            bytes: 0,
        };
    }

    /// Sends every reply at the front of the queue that is ready.
    pub(super) fn release(&mut self, out: &mut Vec<Utf8Bytes>) {
        while let Some(Slot::Ready(_)) = self.queue.front() {
            if let Some(Slot::Ready(frames)) = self.queue.pop_front() {
                out.extend(frames);
            }
        }
        if self.queue.is_empty() && self.queue.capacity() > 0 {
            // An idle connection keeps nothing here (a hello answered later, as in a cluster or
            // with accounts, would leave its slot's room otherwise).
            self.queue = VecDeque::new();
        }
    }

    /// Some reply is ready but waits behind a request still unanswered.
    pub(super) fn replies_waiting(&self) -> bool {
        self.queue.iter().any(|s| matches!(s, Slot::Ready(_)))
    }

    /// Fewer requests (and bytes) wait than the session allows.
    pub(super) fn has_room(&self) -> bool {
        self.waiting < MAX_IN_FLIGHT && self.waiting_bytes < MAX_IN_FLIGHT_BYTES
    }

    /// Some waiting request is of this kind.
    pub(super) fn awaits(&self, kind: impl Fn(&Kind) -> bool) -> bool {
        self.queue
            .iter()
            .any(|s| matches!(s, Slot::Waiting { kind: k, .. } if kind(k)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(texts: &[&str]) -> Vec<Utf8Bytes> {
        texts
            .iter()
            .map(|t| Utf8Bytes::from(t.to_string()))
            .collect()
    }

    #[test]
    fn replies_leave_in_request_order_whatever_order_answers_come_in() {
        let mut slots = Slots::default();
        let mut out = Vec::new();
        slots.send(frames(&["first"]), &mut out);
        assert_eq!(out, frames(&["first"]), "nothing ahead: goes at once");
        slots.wait(1, Kind::Rooms, Some("a".into()), 10);
        slots.send(frames(&["local refusal"]), &mut out);
        slots.wait(2, Kind::Rooms, Some("b".into()), 10);
        let second = slots.answered(2).expect("2 waits");
        assert_eq!(second.reference.as_deref(), Some("b"));
        slots.fill(second, frames(&["b"]));
        slots.release(&mut out);
        assert_eq!(out.len(), 1, "b waits behind a");
        assert!(slots.replies_waiting());
        let first = slots.answered(1).expect("1 waits");
        slots.fill(first, frames(&["a"]));
        slots.release(&mut out);
        assert_eq!(out, frames(&["first", "a", "local refusal", "b"]));
        assert!(!slots.replies_waiting());
        assert!(slots.answered(1).is_none(), "an answer is taken once");
    }

    #[test]
    fn a_full_queue_has_no_room_until_answers_arrive() {
        let mut slots = Slots::default();
        for t in 0..MAX_IN_FLIGHT as Ticket {
            assert!(slots.has_room());
            slots.wait(t, Kind::Rooms, None, 1);
        }
        assert!(!slots.has_room());
        let a = slots.answered(5).expect("5 waits");
        slots.fill(a, Vec::new());
        assert!(slots.has_room(), "one answered: room for one more");

        let mut big = Slots::default();
        big.wait(1, Kind::Rooms, None, MAX_IN_FLIGHT_BYTES);
        assert!(!big.has_room(), "bounded in bytes too");
    }
}
