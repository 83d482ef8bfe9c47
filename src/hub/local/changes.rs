//! Changes to messages in the local broker: the message is found in the room's ring (or read
//! from the store and asked for again), the change numbered, kept and delivered like a message,
//! and the ring's copy of the message replaced by its changed state.

use std::sync::Arc;

use super::rooms::{Room, RoomState};
use super::{LocalBroker, now};
use crate::hub::changes::{self, ChangeAsk, Target};
use crate::hub::{Answer, Member, Outcome, Receipt, Refusal, Reply, StoredMessage, Ticket, lock};
use crate::protocol;
use crate::store::{self, message_cost};

/// Distinct messages a room may be reading from the store for changes at once.
const RECALLING: usize = 16;
/// Messages a room keeps hot (`RoomState::hot`), and the most one of them may cost.
const HOT: usize = 4;
const HOT_COST: usize = 16 * 1024;

/// Where a message is: in the ring (at this index), among the hot ones, only in the store, or
/// nowhere.
enum Place {
    Ring(usize),
    Hot(usize),
    Stored,
    Nowhere,
}

impl LocalBroker {
    fn place(&self, state: &RoomState, id: u64) -> Place {
        if let Ok(i) = state.history.binary_search_by_key(&id, |m| m.id) {
            return Place::Ring(i);
        }
        if let Some(i) = state.hot.iter().position(|m| m.id == id) {
            return Place::Hot(i);
        }
        if self.store.is_some() && state.history.front().is_none_or(|m| id < m.id) {
            Place::Stored
        } else {
            Place::Nowhere
        }
    }

    /// Keeps `m` hot (the newest of a few), if it is small; its bytes count in the room's
    /// history and in all history (so the global bound covers them, and an evicted room gives
    /// them back).
    fn keep_hot(&self, state: &mut RoomState, m: &Arc<StoredMessage>) {
        if let Some(i) = state.hot.iter().position(|h| h.id == m.id) {
            let old = state.hot.remove(i);
            self.unhot(state, &old);
        }
        let cost = message_cost(m);
        if cost > HOT_COST {
            return;
        }
        if state.hot.len() == HOT {
            let old = state.hot.remove(0);
            self.unhot(state, &old);
        }
        state.hot.push(m.clone());
        state.history_bytes += cost;
        self.history_bytes
            .fetch_add(cost, std::sync::atomic::Ordering::Relaxed);
    }

    fn unhot(&self, state: &mut RoomState, old: &StoredMessage) {
        let cost = message_cost(old);
        state.history_bytes -= cost;
        self.forget_history(cost, 0);
    }

    /// Reads message `id` of `room` from the store and answers it as `Target` (to everyone who
    /// asks for it meanwhile too: one read), keeping it hot.
    fn read_target(
        &self,
        ticket: Ticket,
        me: &Member,
        room: &Arc<Room>,
        state: &mut RoomState,
        id: u64,
    ) -> Answer {
        let waiter = (me.clone(), ticket);
        if let Some((_, waiting)) = state.recalling.iter_mut().find(|(i, _)| *i == id) {
            waiting.push(waiter);
            return Answer::Later;
        }
        let Some(store) = &self.store else {
            return now(changes::not_found(id));
        };
        if state.recalling.len() >= RECALLING {
            return now(Refusal::unavailable(
                "the server is busy reading history; try again",
            ));
        }
        state.recalling.push((id, vec![waiter]));
        let query = store::Query::Message {
            room: room.name.to_string(),
            id,
        };
        let from = room.clone();
        let queued = store.read(query, move |found| {
            let outcome = match found {
                Ok(store::Found::Message(Some(m))) if changes::is_live(&m) => {
                    Outcome::Target(Arc::new(m))
                }
                Ok(store::Found::Message(_)) => changes::not_found(id).into(),
                _ => Refusal::unavailable("could not read the message; try again").into(),
            };
            // The one who asks again with it keeps it hot (`change_message`).
            let mut state = lock(&from.state);
            let at = state.recalling.iter().position(|(i, _)| *i == id);
            for (member, ticket) in at.map(|i| state.recalling.remove(i).1).unwrap_or_default() {
                member.answer(ticket, outcome.clone());
            }
        });
        if queued {
            Answer::Later
        } else {
            state.recalling.retain(|(i, _)| *i != id);
            now(Refusal::unavailable(
                "the server is busy reading history; try again",
            ))
        }
    }

    /// Whether a `say` in `room` may answer `reply`: `Ok(None)` when it may, or the answer to
    /// give instead (`not_found`, or a read of the store first).
    pub(super) fn check_reply(
        &self,
        ticket: Ticket,
        me: &Member,
        state: &mut RoomState,
        room: &Arc<Room>,
        reply: Option<Reply>,
    ) -> Option<Answer> {
        let reply = reply.filter(|r| !r.found)?;
        let gone = |m: &StoredMessage| !changes::is_live(m);
        match self.place(state, reply.to) {
            Place::Ring(i) => gone(&state.history[i]).then(|| now(changes::not_found(reply.to))),
            Place::Hot(i) => gone(&state.hot[i]).then(|| now(changes::not_found(reply.to))),
            Place::Stored => Some(self.read_target(ticket, me, room, state, reply.to)),
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
            Place::Hot(i) => (state.hot[i].clone(), None),
            Place::Stored => match known {
                Some(known) if known.id == id && *known.room == *r.name => (known, None),
                _ => return self.read_target(ticket, me, &r, &mut state, id),
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
            Ok(None) => return now(changes::acknowledged(id, &target.ts)),
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
        let changed = Arc::new(changed);
        if let Some(i) = at {
            self.replace(&mut state, i, changed.clone());
        }
        self.keep_hot(&mut state, &changed);
        if matches!(ask.change, protocol::Change::Delete { .. }) {
            for i in 0..state.history.len() {
                if let Some(blank) = changes::blank_edit_of(&state.history[i], id) {
                    self.replace(&mut state, i, Arc::new(blank));
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

    /// `Broker::change_pm`.
    pub(super) fn change_pm_message(
        &self,
        ticket: Ticket,
        me: &Member,
        with: &str,
        ask: &ChangeAsk,
        known: Option<Target>,
    ) -> Answer {
        let Some(store) = self.store.as_ref().filter(|_| self.limits.store_pms) else {
            return now(changes::pms_not_kept());
        };
        let id = ask.change.target();
        let Some(target) = known.filter(|k| k.id == id) else {
            let query = store::Query::Pm {
                pair: store::pm_pair(&me.name, with),
                id,
            };
            return self.read_later(ticket, me, query, move |found| match found {
                store::Found::Pm(Some(pm)) => Outcome::Target(Arc::new(changes::pm_target(&pm))),
                store::Found::Pm(None) => changes::not_found(id).into(),
                _ => Refusal::unavailable("could not read the message; try again").into(),
            });
        };
        if let Err(refusal) = changes::check(&target, ask, me, crate::store::now_millis()) {
            return now(refusal);
        }
        let ts = protocol::timestamp();
        let (row, theirs, mine) = changes::pm_change(&target, ask, me, with, &ts);
        if let Err(why) = store.append_pm_change(row) {
            return now(Refusal::unavailable(why.reason()));
        }
        let (them, others) = {
            let dir = lock(&self.directory);
            (dir.sessions(with).to_vec(), dir.other_sessions(me))
        };
        self.delivery.deliver(&them, &theirs, None);
        self.delivery.deliver(&others, &mine, None);
        now(changes::acknowledged(id, &ts))
    }

    /// Puts `changed` at `i` of the ring, keeping its byte count true.
    fn replace(&self, state: &mut RoomState, i: usize, changed: Arc<StoredMessage>) {
        let old = message_cost(&state.history[i]);
        let new = message_cost(&changed);
        state.history[i] = changed;
        state.history_bytes = state.history_bytes + new - old;
        if new >= old {
            self.history_bytes
                .fetch_add(new - old, std::sync::atomic::Ordering::Relaxed);
        } else {
            self.forget_history(old - new, 0);
        }
    }
}
