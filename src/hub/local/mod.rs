//! The single-process broker: a directory of users and rooms, each room's members, `seq` and
//! history ring, all in memory. Every call answers at once.
//!
//! Memory is bounded by configuration, whatever clients do: history is kept per room up to
//! `history.size` messages and `history.max_bytes_per_room` bytes, and in all rooms together up to
//! `history.max_bytes`, the oldest evicted first; rooms are capped in total (`limits.max_rooms`,
//! idle empty ones evicted) and per creating address (`limits.max_rooms_per_ip`), and the default
//! room always exists, so a `hello` never fails for lack of rooms.
//!
//! Locks are `std::sync::Mutex`, never held across an `.await` (nothing here awaits), and taken in
//! one order only: the directory, then a room, then (inside delivery) a mailbox. Saying something
//! takes the directory lock only to find the room; the room's lock covers assigning the `seq`,
//! storing the message and queueing it to every member, so every member sees one room's messages
//! in `seq` order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use super::{
    Answer, Broker, ConnId, Delivery, HubLimits, Member, Outcome, Page, Receipt, Refusal, Reply,
    Resume, Ticket, TypingTo, changes as change, lock,
};
use crate::config::{Config, ConfigError};
use crate::memory::Shrink;
use crate::metrics::Metrics;
use crate::protocol::{self, ChatMessage, ErrorCode, ServerMsg, TypingState, b};

mod changes;
mod history;
mod rooms;

use rooms::{Directory, LOADED, Room};

use crate::store::{self, Store, message_cost};

/// Users, rooms and history in this process.
#[derive(Debug)]
pub struct LocalBroker {
    directory: Mutex<Directory>,
    /// Every stored message in arrival order, as (room, id), for evicting the oldest across rooms.
    /// Entries for messages a room evicted itself stay until they reach the front (or a
    /// compaction), so this holds at most twice the stored messages plus a little.
    arrivals: Mutex<VecDeque<(Weak<Room>, u64)>>,
    /// Bytes and messages of history in all rooms.
    history_bytes: AtomicUsize,
    history_messages: AtomicUsize,
    next_message_id: AtomicU64,
    limits: HubLimits,
    metrics: Metrics,
    delivery: Delivery,
    /// Durable history, when `storage.path` is set.
    store: Option<Arc<Store>>,
    /// The store's epoch: rooms it has no record of start numbering in it.
    store_epoch: Option<Arc<str>>,
    /// Rooms holding a presence batch, each once: `tick` announces and clears them. Taken after a
    /// room's lock, never before one.
    presence_due: Mutex<Vec<Weak<Room>>>,
}

impl LocalBroker {
    /// An empty chat.
    pub fn new(limits: HubLimits, metrics: &Metrics) -> LocalBroker {
        LocalBroker::build(limits, metrics, None, store::Loaded::default())
    }

    /// The broker a configuration asks for: with durable history when `storage.path` is set
    /// (opened, migrated and loaded now; errors name `storage.path`).
    pub fn from_config(config: &Config, metrics: &Metrics) -> Result<LocalBroker, ConfigError> {
        let limits = HubLimits::from_config(config);
        match store::StoreSettings::from_config(config) {
            Some(settings) => {
                let (store, loaded) = Store::open(settings, metrics)?;
                Ok(LocalBroker::build(limits, metrics, Some(store), loaded))
            }
            None => Ok(LocalBroker::new(limits, metrics)),
        }
    }

    fn build(
        limits: HubLimits,
        metrics: &Metrics,
        store: Option<Store>,
        loaded: store::Loaded,
    ) -> LocalBroker {
        let mut broker = LocalBroker {
            store: store.map(Arc::new),
            store_epoch: (!loaded.epoch.is_empty()).then(|| loaded.epoch.as_str().into()),
            directory: Mutex::new(Directory::default()),
            arrivals: Mutex::new(VecDeque::new()),
            presence_due: Mutex::new(Vec::new()),
            history_bytes: AtomicUsize::new(0),
            history_messages: AtomicUsize::new(0),
            next_message_id: AtomicU64::new(loaded.next_id.max(1)),
            limits,
            metrics: metrics.clone(),
            delivery: Delivery::new(metrics),
        };
        let mut directory = Directory::default();
        let lobby = Arc::new(broker.new_room(protocol::DEFAULT_ROOM, None));
        directory.rooms.insert(lobby.name.clone(), lobby);
        let (mut bytes, mut messages) = (0, 0);
        for saved in loaded.rooms {
            // Loaded rooms belong to no address: evictable, but nobody's budget.
            let room = match directory.rooms.get(saved.name.as_str()) {
                Some(lobby) => lobby.clone(),
                None => Arc::new(broker.new_room(&saved.name, Some(LOADED))),
            };
            {
                let mut state = lock(&room.state);
                for m in saved.recent {
                    let cost = message_cost(&m);
                    state.history_bytes += cost;
                    bytes += cost;
                    messages += 1;
                    state.history.push_back(Arc::new(m));
                }
            }
            directory.rooms.insert(room.name.clone(), room);
        }
        broker.directory = Mutex::new(directory);
        broker.history_bytes = AtomicUsize::new(bytes);
        broker.history_messages = AtomicUsize::new(messages);
        broker.gauges(&lock(&broker.directory));
        broker
    }

    /// `me` out of `room`, the others told `left` (or with `kicked`, by whom and why, that it
    /// was banned) if it was the user's last connection there: `Left`, or `not_in_room`.
    fn leave_with(&self, me: &Member, room: &str, kicked: Option<(&str, &str)>) -> Answer {
        let mut dir = lock(&self.directory);
        let left = dir.rooms.get(room).cloned().is_some_and(|r| {
            let event = match kicked {
                Some((by, reason)) => ServerMsg::Kicked {
                    room: b(&r.name),
                    name: b(&me.name),
                    by: b(by),
                    reason: b(reason),
                },
                None => ServerMsg::Left {
                    room: b(&r.name),
                    name: b(&me.name),
                },
            };
            self.leave_locked(&mut dir, me, &r, &event)
        });
        self.gauges(&dir);
        if left {
            now(Outcome::Left { room: room.into() })
        } else {
            now(Refusal::not_in_room(room))
        }
    }
}

pub(super) fn now(outcome: impl Into<Outcome>) -> Answer {
    Answer::Now(outcome.into())
}

fn result(r: Result<Outcome, Refusal>) -> Answer {
    Answer::Now(r.unwrap_or_else(Outcome::Refused))
}

impl Broker for LocalBroker {
    fn hello(&self, ticket: Ticket, me: &Member, room: &str, resume: Option<&Resume>) -> Answer {
        let mut dir = lock(&self.directory);
        let key = protocol::name_key(&me.name);
        let sessions = dir.users.get(key.as_str()).map_or(0, |s| s.len());
        if sessions > 0 && !self.limits.owned_names {
            return now(Refusal::name_taken(&me.name));
        }
        if sessions >= self.limits.max_sessions {
            return now(Refusal::too_many_sessions(self.limits.max_sessions));
        }
        // Where names are owned (tokens), the token decided who this is; elsewhere a name that
        // would pass for someone online is refused.
        if !self.limits.owned_names
            && let Some(other) = dir.look_alike_of(&me.name)
        {
            return now(Refusal::looks_like(&me.name, &other));
        }
        // A hello never fails for lack of rooms: it lands in the default room instead.
        let joined = match self.join_locked(&mut dir, me, room, resume) {
            Err(r) if r.code == ErrorCode::TooManyRooms => {
                self.join_locked(&mut dir, me, protocol::DEFAULT_ROOM, None)
            }
            other => other,
        };
        if joined.is_ok() {
            dir.add_user(key, me.clone());
            self.gauges(&dir);
        }
        drop(dir);
        match joined {
            Ok(view) => self.with_stored_history(ticket, me, view, Outcome::Welcome),
            Err(refusal) => now(refusal),
        }
    }

    fn join(&self, ticket: Ticket, me: &Member, room: &str, resume: Option<&Resume>) -> Answer {
        let mut dir = lock(&self.directory);
        let joined = self.join_locked(&mut dir, me, room, resume);
        drop(dir);
        match joined {
            Ok(view) => self.with_stored_history(ticket, me, view, Outcome::Joined),
            Err(refusal) => now(refusal),
        }
    }

    fn leave(&self, _: Ticket, me: &Member, room: &str) -> Answer {
        self.leave_with(me, room, None)
    }

    fn leave_kicked(&self, _: Ticket, me: &Member, room: &str, by: &str, reason: &str) -> Answer {
        self.leave_with(me, room, Some((by, reason)))
    }

    fn local_members(&self, pick: &dyn Fn(&Member) -> bool) -> Vec<Member> {
        let dir = lock(&self.directory);
        let all = dir.users.values().flatten();
        all.filter(|m| pick(m)).cloned().collect()
    }

    fn tell_local(&self, room: &str, event: &ServerMsg<'_>) {
        let Some(room) = self.room(room) else { return };
        let members = lock(&room.state).members.clone();
        self.delivery.deliver(&members, event, None);
    }

    fn say(
        &self,
        ticket: Ticket,
        me: &Member,
        room: &str,
        text: &str,
        action: bool,
        reply: Option<Reply>,
    ) -> Answer {
        let Some(room) = self.room(room) else {
            return now(Refusal::not_in_room(room));
        };
        let mut state = lock(&room.state);
        if !state.members.iter().any(|m| m.conn == me.conn) {
            return now(Refusal::not_in_room(&room.name));
        }
        if let Some(answer) = self.check_reply(ticket, me, &mut state, &room, reply) {
            return answer;
        }
        let seq = state.seq + 1;
        let id = self.next_message_id.fetch_add(1, Ordering::Relaxed);
        let ts: Arc<str> = protocol::timestamp().into();
        let message = Arc::new(
            ChatMessage {
                id,
                seq,
                ts: b(&ts),
                room: b(&room.name),
                from: b(&me.name),
                role: me.role,
                text: b(text),
                action,
                reply_to: reply.map(|r| r.to),
                ..ChatMessage::default()
            }
            .into_owned(),
        );
        // Stored, or refused: never accepted and then lost.
        if let Some(store) = &self.store
            && let Err(why) = store.append(message.clone(), state.epoch.clone())
        {
            return now(Refusal::unavailable(why.reason()));
        }
        state.seq = seq;
        state.last_active = Instant::now();
        self.delivery
            .deliver(&state.members, &message.event(), Some(me.conn));
        self.store(&mut state, message);
        let recipients = state.members.len() - 1;
        drop(state);
        self.bound_history(&room, id);
        self.metrics.fanout_recipients.observe(recipients as f64);
        now(Outcome::Sent(Receipt {
            id,
            seq: Some(seq),
            ts,
            to: None,
        }))
    }

    fn change(
        &self,
        ticket: Ticket,
        me: &Member,
        room: &str,
        ask: &change::ChangeAsk,
        known: Option<change::Target>,
    ) -> Answer {
        self.change_message(ticket, me, room, ask, known)
    }

    fn change_pm(
        &self,
        ticket: Ticket,
        me: &Member,
        with: &str,
        ask: &change::ChangeAsk,
        known: Option<change::Target>,
    ) -> Answer {
        self.change_pm_message(ticket, me, with, ask, known)
    }

    fn pm(&self, _: Ticket, me: &Member, to: &str, text: &str, action: bool) -> Answer {
        // Every connection of the recipient, and the sender's other ones (their copy).
        let (targets, mine) = {
            let dir = lock(&self.directory);
            (dir.sessions(to).to_vec(), dir.other_sessions(me))
        };
        let Some(target) = targets.first() else {
            // Kept for their next hello if they have an account (the accounts service checks).
            if self.limits.store_pms && self.store.is_some() {
                return now(Outcome::Unreached(Box::new(store::Pm {
                    id: self.next_message_id.fetch_add(1, Ordering::Relaxed),
                    ts: protocol::timestamp(),
                    from: me.name.to_string(),
                    to: to.to_string(),
                    role: me.role,
                    text: text.to_string(),
                    action,
                    ..Default::default()
                })));
            }
            return now(Refusal::no_such_user(to));
        };
        let to_name = target.name.clone();
        let id = self.next_message_id.fetch_add(1, Ordering::Relaxed);
        let ts: Arc<str> = protocol::timestamp().into();
        if self.limits.store_pms
            && let Some(store) = &self.store
        {
            let pm = store::Pm {
                id,
                ts: ts.to_string(),
                from: me.name.to_string(),
                to: to_name.to_string(),
                role: me.role,
                text: text.to_string(),
                action,
                ..Default::default()
            };
            if let Err(why) = store.append_pm(pm) {
                return now(Refusal::unavailable(why.reason()));
            }
        }
        let event = ServerMsg::Pm {
            id,
            ts: b(&ts),
            from: b(&me.name),
            role: me.role,
            to: b(&to_name),
            text: b(text),
            action,
            edited_ts: None,
            deleted: false,
        };
        self.delivery
            .deliver(targets.iter().chain(&mine), &event, Some(me.conn));
        now(Outcome::Sent(Receipt {
            id,
            seq: None,
            ts,
            to: Some(to_name),
        }))
    }

    fn typing(&self, _: Ticket, me: &Member, to: TypingTo<'_>, state: TypingState) -> Answer {
        match to {
            TypingTo::Room(room) => {
                if let Some(r) = self.room(room) {
                    let event = ServerMsg::Typing {
                        from: b(&me.name),
                        room: Some(b(&r.name)),
                        to: None,
                        state,
                    };
                    let members = lock(&r.state);
                    // Never to one's own other connections (open mode has none: no compare).
                    let owned = self.limits.owned_names;
                    let others = members
                        .members
                        .iter()
                        .filter(|m| !owned || !m.name.eq_ignore_ascii_case(&me.name));
                    self.delivery.deliver(others, &event, Some(me.conn));
                }
                now(Outcome::Relayed)
            }
            TypingTo::User(name) => {
                let targets = lock(&self.directory).sessions(name).to_vec();
                let Some(target) = targets.first() else {
                    return now(Refusal::no_such_user(name));
                };
                let event = ServerMsg::Typing {
                    from: b(&me.name),
                    room: None,
                    to: Some(b(&target.name)),
                    state,
                };
                let others = targets
                    .iter()
                    .filter(|m| !m.name.eq_ignore_ascii_case(&me.name));
                self.delivery.deliver(others, &event, Some(me.conn));
                now(Outcome::Relayed)
            }
        }
    }

    fn who(&self, _: Ticket, me: &Member, room: &str) -> Answer {
        result(self.visible_room(me, room).map(|r| Outcome::Who {
            room: r.name.clone(),
            users: lock(&r.state).user_list(),
        }))
    }

    fn rooms(&self, _: Ticket, _: &Member) -> Answer {
        let dir = lock(&self.directory);
        let mut rooms: Vec<_> = dir
            .rooms
            .values()
            .map(|r| (r.name.clone(), lock(&r.state).user_count()))
            .collect();
        drop(dir);
        rooms.sort();
        now(Outcome::Rooms(rooms))
    }

    fn history(&self, ticket: Ticket, me: &Member, room: &str, page: Page) -> Answer {
        self.page(ticket, me, room, page)
    }

    fn conversation(
        &self,
        ticket: Ticket,
        me: &Member,
        with: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Answer {
        let store = self.store.as_deref().filter(|_| self.limits.store_pms);
        crate::hub::durable::conversation(store, ticket, me, with, before, limit)
    }

    fn search(
        &self,
        ticket: Ticket,
        me: &Member,
        rooms: &[Arc<str>],
        query: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Answer {
        crate::hub::durable::search(
            self.store.as_deref(),
            ticket,
            me,
            rooms,
            query,
            before,
            limit,
        )
    }

    fn ready(&self) -> bool {
        self.store.as_ref().is_none_or(|s| s.healthy())
    }

    fn store(&self) -> Option<Arc<Store>> {
        self.store.clone()
    }

    fn close(&self) {
        if let Some(store) = &self.store {
            store.close(std::time::Duration::from_secs(10));
        }
    }

    fn tick(&self) {
        self.announce_presence();
    }

    fn kick(&self, _: Ticket, me: &Member, name: &str, reason: &str) -> Answer {
        let mut dir = lock(&self.directory);
        let targets = dir.remove_user(&protocol::name_key(name));
        let Some(target) = targets.first().cloned() else {
            return now(Refusal::no_such_user(name));
        };
        let conns: Vec<ConnId> = targets.iter().map(|m| m.conn).collect();
        let rooms: Vec<Arc<Room>> = dir.rooms.values().cloned().collect();
        for room in rooms {
            // Every connection out of the room, one `kicked` to those who stay.
            let mut state = lock(&room.state);
            let before = state.members.len();
            state.members.retain(|m| !conns.contains(&m.conn));
            state.members.shrink_if_sparse();
            let removed = before - state.members.len();
            if removed == 0 {
                continue;
            }
            state.extra -= removed - 1;
            state.last_active = Instant::now();
            if let Some(batch) = &mut state.batch {
                batch.take_back(&target.name);
            }
            let event = ServerMsg::Kicked {
                room: b(&room.name),
                name: b(&target.name),
                by: b(&me.name),
                reason: b(reason),
            };
            self.delivery.deliver(&state.members, &event, None);
            let empty = state.members.is_empty();
            if empty {
                state.batch = None;
            }
            drop(state);
            if empty {
                dir.forget_if_unused(&room, self);
            }
        }
        self.gauges(&dir);
        drop(dir);
        for session in targets {
            session.kick(reason.to_string());
        }
        now(Outcome::Done)
    }

    fn nick(&self, _: Ticket, me: &Member, name: &str) -> Answer {
        let mut dir = lock(&self.directory);
        let (old, new) = (protocol::name_key(&me.name), protocol::name_key(name));
        if dir
            .users
            .get(new.as_str())
            .is_some_and(|s| s.iter().any(|m| m.conn != me.conn))
        {
            return now(Refusal::name_taken(name));
        }
        if let Some(other) = dir
            .look_alike_of(name)
            .filter(|o| protocol::name_key(o) != old)
        {
            return now(Refusal::looks_like(name, &other));
        }
        let renamed = me.renamed(name.into());
        dir.remove_session(&old, me.conn);
        dir.add_user(new, renamed.clone());
        // Everyone who shares a room hears it once.
        let mut audience: Vec<Member> = Vec::new();
        for room in dir.rooms.values() {
            let mut state = lock(&room.state);
            let Some(pos) = state.members.iter().position(|m| m.conn == me.conn) else {
                continue;
            };
            state.members[pos] = renamed.clone();
            if let Some(batch) = &mut state.batch {
                batch.renamed(&me.name, &renamed.name);
            }
            for m in &state.members {
                if m.conn != me.conn && !audience.iter().any(|a| a.conn == m.conn) {
                    audience.push(m.clone());
                }
            }
        }
        drop(dir);
        let event = ServerMsg::Renamed {
            from: b(&me.name),
            to: b(name),
        };
        self.delivery.deliver(&audience, &event, None);
        now(Outcome::Renamed {
            name: renamed.name.clone(),
        })
    }

    fn announce(&self, _: Ticket, me: &Member, text: &str) -> Answer {
        let event = ServerMsg::Notice {
            from: b(&me.name),
            text: b(text),
        };
        let dir = lock(&self.directory);
        self.delivery
            .deliver(dir.users.values().flatten(), &event, None);
        now(Outcome::Done)
    }

    fn sessions(&self, _: Ticket, me: &Member) -> Answer {
        let dir = lock(&self.directory);
        let live = dir.sessions(&me.name).iter().filter(|m| !m.logged_out());
        let list = live.map(|m| m.view(m.conn.to_string(), m.conn == me.conn));
        now(Outcome::Sessions(list.collect()))
    }

    fn logout(&self, _: Ticket, me: &Member, session: &str) -> Answer {
        let dir = lock(&self.directory);
        let mut live = dir.sessions(&me.name).iter().filter(|m| !m.logged_out());
        match live.find(|m| m.conn.to_string() == session) {
            Some(target) => {
                target.log_out();
                now(Outcome::Done)
            }
            None => now(Refusal::no_such_session(session)),
        }
    }

    fn to_own(&self, me: &Member, event: ServerMsg<'static>) {
        let mine = lock(&self.directory).other_sessions(me);
        self.delivery.deliver(&mine, &event, None);
    }

    fn disconnect(&self, me: &Member, rooms: &[Arc<str>]) {
        let mut dir = lock(&self.directory);
        for name in rooms {
            if let Some(room) = dir.rooms.get(name).cloned() {
                let event = ServerMsg::Left {
                    room: b(&room.name),
                    name: b(&me.name),
                };
                self.leave_locked(&mut dir, me, &room, &event);
            }
        }
        dir.remove_session(&protocol::name_key(&me.name), me.conn);
        self.gauges(&dir);
    }
}
