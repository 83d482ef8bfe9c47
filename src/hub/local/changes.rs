//! Changes to messages in the local broker: the message is found in the room's ring (or read
//! from the store and asked for again), the change numbered, kept and delivered like a message,
//! and the ring's copy of the message replaced by its changed state.

use std::sync::Arc;

use super::rooms::RoomState;
use super::{LocalBroker, now};
use crate::hub::changes::{self, ChangeAsk, Target};
use crate::hub::{Answer, Member, Outcome, Receipt, Refusal, Reply, StoredMessage, Ticket, lock};
use crate::protocol;
use crate::store::{self, message_cost};

/// Where a message is: in the ring (at this index), only in the store, or nowhere.
enum Place {
    Ring(usize),
    Stored,
    Nowhere,
}

impl LocalBroker {
    fn place(&self, state: &RoomState, id: u64) -> Place {
        match state.history.binary_search_by_key(&id, |m| m.id) {
            Ok(i) => Place::Ring(i),
            Err(_) if self.store.is_some() && state.history.front().is_none_or(|m| id < m.id) => {
                Place::Stored
            }
            Err(_) => Place::Nowhere,
        }
    }

    /// Reads message `id` of `room` from the store and answers it as `Target`.
    fn read_target(&self, ticket: Ticket, me: &Member, room: &str, id: u64) -> Answer {
        let query = store::Query::Message {
            room: room.to_string(),
            id,
        };
        self.read_later(ticket, me, query, move |found| match found {
            store::Found::Message(Some(m)) if m.change.is_none() && !m.deleted => {
                Outcome::Target(Arc::new(m))
            }
            store::Found::Message(_) => changes::not_found(id).into(),
            _ => Refusal::unavailable("could not read the message; try again").into(),
        })
    }

    /// Whether a `say` in `room` may answer `reply`: `Ok(None)` when it may, or the answer to
    /// give instead (`not_found`, or a read of the store first).
    pub(super) fn check_reply(
        &self,
        ticket: Ticket,
        me: &Member,
        state: &RoomState,
        room: &str,
        reply: Option<Reply>,
    ) -> Option<Answer> {
        let reply = reply.filter(|r| !r.found)?;
        match self.place(state, reply.to) {
            Place::Ring(i) => {
                let m = &state.history[i];
                (m.change.is_some() || m.deleted).then(|| now(changes::not_found(reply.to)))
            }
            Place::Stored => Some(self.read_target(ticket, me, room, reply.to)),
            Place::Nowhere => Some(now(changes::not_found(reply.to))),
        }
    }

    /// `Broker::change`.
    pub(super) fn change_message(
        &self,
        ticket: Ticket,
        me: &Member,
        room: &str,
        ask: &ChangeAsk,
        known: Option<Target>,
    ) -> Answer {
        let Some(r) = self.room(room) else {
            return now(Refusal::not_in_room(room));
        };
        let mut state = lock(&r.state);
        if !state.members.iter().any(|m| m.conn == me.conn) {
            return now(Refusal::not_in_room(&r.name));
        }
        let id = ask.change.target();
        let (target, at) = match self.place(&state, id) {
            Place::Ring(i) => (state.history[i].clone(), Some(i)),
            Place::Stored => match known {
                Some(known) if known.id == id && *known.room == *r.name => (known, None),
                _ => {
                    drop(state);
                    return self.read_target(ticket, me, &r.name, id);
                }
            },
            Place::Nowhere => return now(changes::not_found(id)),
        };
        if let Err(refusal) = changes::check(&target, ask, me, crate::store::now_millis()) {
            return now(refusal);
        }
        let seq = state.seq + 1;
        let ts = protocol::timestamp();
        let mut change = changes::numbered(ask, me, &r.name, 0, seq, &ts);
        let changed = match changes::apply(&target, &change) {
            Ok(Some(changed)) => changed,
            Ok(None) => return now(unchanged(id, &target.ts)),
            Err(refusal) => return now(refusal),
        };
        let change_id = self
            .next_message_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        change.id = change_id;
        let change = Arc::new(change);
        if let Some(store) = &self.store
            && let Err(why) = store.append(change.clone(), state.epoch.clone())
        {
            return now(Refusal::unavailable(why.reason()));
        }
        state.seq = seq;
        self.delivery
            .deliver(&state.members, &change.event(), Some(me.conn));
        if let Some(i) = at {
            self.replace(&mut state, i, changed);
        }
        if matches!(ask.change, protocol::Change::Delete { .. }) {
            for i in 0..state.history.len() {
                if let Some(blank) = changes::blank_edit_of(&state.history[i], id) {
                    self.replace(&mut state, i, blank);
                }
            }
        }
        self.store(&mut state, change);
        drop(state);
        self.bound_history(&r, change_id);
        now(Outcome::Sent(Receipt {
            id: change_id,
            seq: Some(seq),
            ts: ts.into(),
            to: None,
        }))
    }

    /// Puts `changed` at `i` of the ring, keeping its byte count true.
    fn replace(&self, state: &mut RoomState, i: usize, changed: StoredMessage) {
        let old = message_cost(&state.history[i]);
        let new = message_cost(&changed);
        state.history[i] = Arc::new(changed);
        state.history_bytes = state.history_bytes + new - old;
        if new >= old {
            self.history_bytes
                .fetch_add(new - old, std::sync::atomic::Ordering::Relaxed);
        } else {
            self.forget_history(old - new, 0);
        }
    }
}

/// A change that changed nothing: acknowledged without a seq.
fn unchanged(id: u64, ts: &str) -> Outcome {
    Outcome::Sent(Receipt {
        id,
        seq: None,
        ts: ts.into(),
        to: None,
    })
}
