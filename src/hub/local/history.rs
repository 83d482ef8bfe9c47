//! History in the local broker: each room's ring in memory under its byte and count limits (and
//! the total across rooms), and the reads that memory cannot answer, handed to the store and
//! answered late.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::rooms::{Room, RoomState};
use super::{LocalBroker, now};
use crate::hub::{
    Answer, Member, Outcome, Page, Refusal, RoomView, StoredMessage, Ticket, durable, lock,
};
use crate::store::{self, message_cost};

impl LocalBroker {
    /// Answers late from a store reader (see [`durable::read_later`]).
    pub(super) fn read_later(
        &self,
        ticket: Ticket,
        me: &Member,
        query: store::Query,
        outcome: impl FnOnce(store::Found) -> Outcome + Send + 'static,
    ) -> Answer {
        durable::read_later(self.store.as_deref(), ticket, me, query, outcome)
    }

    /// Answers a join with `view`, first topping its history up from the store when memory holds
    /// fewer than `history.on_join` messages of a room the store has older ones of (a stored
    /// room evicted from memory and joined again).
    pub(super) fn with_stored_history(
        &self,
        ticket: Ticket,
        me: &Member,
        mut view: RoomView,
        wrap: fn(RoomView) -> Outcome,
    ) -> Answer {
        let want = self.limits.history_on_join;
        let first = view.history.first().map_or(view.seq + 1, |m| m.seq);
        let stored = self.store.as_ref().and_then(|s| s.first_seq(&view.room));
        let short = view.resumed != Some(true) && view.history.len() < want;
        if !short || stored.is_none_or(|s| s >= first) {
            return now(wrap(view));
        }
        let (Some(store), room) = (&self.store, view.room.to_string()) else {
            return now(wrap(view));
        };
        let missing = want - view.history.len();
        // The join stands whatever the read does: without it the view goes as it is.
        let fallback = view.clone();
        let me2 = me.clone();
        let query = store::Query::Page {
            room,
            before: Some(first),
            after: None,
            limit: missing,
        };
        let queued = store.read(query, move |found| {
            if let Ok(store::Found::Page(older, _)) = found {
                let mut history: Vec<_> = older.into_iter().map(Arc::new).collect();
                history.append(&mut view.history);
                view.history = history;
            }
            me2.answer(ticket, wrap(view));
        });
        if queued {
            Answer::Later
        } else {
            now(wrap(fallback))
        }
    }

    /// Where a room's history starts, in memory and in the store (its oldest seq anywhere).
    pub(super) fn oldest_seq(&self, name: &str, state: &RoomState) -> u64 {
        let in_memory = state.history.front().map_or(state.seq + 1, |m| m.seq);
        match self.store.as_ref().and_then(|s| s.first_seq(name)) {
            Some(stored) => stored.min(in_memory),
            None => in_memory,
        }
    }

    pub(super) fn forget_history(&self, bytes: usize, messages: usize) {
        self.history_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.history_messages.fetch_sub(messages, Ordering::Relaxed);
    }

    /// Keeps `message` in `state`'s history, evicting the room's oldest past its bounds.
    pub(super) fn store(&self, state: &mut RoomState, message: Arc<StoredMessage>) {
        let limits = &self.limits;
        if limits.history_size == 0 {
            return;
        }
        let cost = message_cost(&message);
        state.history_bytes += cost;
        state.history.push_back(message);
        self.history_bytes.fetch_add(cost, Ordering::Relaxed);
        self.history_messages.fetch_add(1, Ordering::Relaxed);
        while state.history.len() > limits.history_size
            || state.history_bytes > limits.history_bytes_per_room
        {
            let Some(old) = state.history.pop_front() else {
                break;
            };
            let cost = message_cost(&old);
            state.history_bytes -= cost;
            self.forget_history(cost, 1);
        }
    }

    /// Records that `room` stored message `id`, then evicts the oldest messages of any room while
    /// all history together is over its bound. Called without any room lock held.
    pub(super) fn bound_history(&self, room: &Arc<Room>, id: u64) {
        let mut arrivals = lock(&self.arrivals);
        arrivals.push_back((Arc::downgrade(room), id));
        while self.history_bytes.load(Ordering::Relaxed) > self.limits.history_bytes {
            let Some((weak, id)) = arrivals.pop_front() else {
                break;
            };
            let Some(room) = weak.upgrade() else { continue };
            let mut state = lock(&room.state);
            if state.history.front().is_some_and(|m| m.id == id)
                && let Some(old) = state.history.pop_front()
            {
                let cost = message_cost(&old);
                state.history_bytes -= cost;
                self.forget_history(cost, 1);
            }
        }
        // Drop entries whose messages are gone, once they outnumber the live ones.
        if arrivals.len() > 2 * self.history_messages.load(Ordering::Relaxed) + 1024 {
            arrivals.retain(|(weak, id)| {
                weak.upgrade().is_some_and(|room| {
                    lock(&room.state)
                        .history
                        .front()
                        .is_some_and(|m| m.id <= *id)
                })
            });
        }
        drop(arrivals);
        self.metrics
            .history_bytes
            .set(self.history_bytes.load(Ordering::Relaxed) as i64);
    }

    /// `Broker::history`: a page from memory, or from the store when memory does not reach.
    pub(super) fn page(&self, ticket: Ticket, me: &Member, room: &str, page: Page) -> Answer {
        let r = match self.visible_room(me, room) {
            Ok(r) => r,
            Err(refusal) => return now(refusal),
        };
        let state = lock(&r.state);
        let oldest = self.oldest_seq(&r.name, &state);
        let in_memory = state.history.front().map_or(state.seq + 1, |m| m.seq);
        let name = r.name.clone();
        let from_store = |before, after| {
            let query = store::Query::Page {
                room: name.to_string(),
                before,
                after,
                limit: page.limit,
            };
            let room = name.clone();
            let outcome = move |found| match found {
                store::Found::Page(messages, more) => Outcome::History {
                    room,
                    messages: messages.into_iter().map(Arc::new).collect(),
                    more,
                },
                _ => Refusal::unavailable("could not read the history; try again").into(),
            };
            (query, outcome)
        };
        match page.after {
            Some(after) if in_memory > after + 1 && oldest <= after + 1 && self.store.is_some() => {
                drop(state);
                let (query, outcome) = from_store(None, Some(after));
                self.read_later(ticket, me, query, outcome)
            }
            Some(after) => {
                let start = state.history.partition_point(|m| m.seq <= after);
                let end = (start + page.limit).min(state.history.len());
                now(Outcome::History {
                    room: name,
                    messages: state.history.range(start..end).cloned().collect(),
                    more: end < state.history.len(),
                })
            }
            None => {
                let upto = match page.before {
                    Some(b) => state.history.partition_point(|m| m.seq < b),
                    None => state.history.len(),
                };
                let from = upto.saturating_sub(page.limit);
                let first = state.history.get(from).map_or(in_memory, |m| m.seq);
                let short = upto - from < page.limit;
                if short && oldest < first && self.store.is_some() {
                    // Older messages are stored but not in memory.
                    drop(state);
                    let (query, outcome) = from_store(page.before, None);
                    return self.read_later(ticket, me, query, outcome);
                }
                now(Outcome::History {
                    room: name,
                    messages: state.history.range(from..upto).cloned().collect(),
                    more: oldest < first,
                })
            }
        }
    }
}
