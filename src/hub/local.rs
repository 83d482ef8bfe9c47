//! The single-process broker: a directory of users and rooms, each room's members, `seq` and
//! history ring, all in memory. Every call answers at once.
//!
//! Locks are `std::sync::Mutex`, never held across an `.await` (nothing here awaits), and taken in
//! one order only: the directory, then a room, then (inside delivery) a mailbox. Saying something
//! takes the directory lock only to find the room; the room's lock covers assigning the `seq`,
//! storing the message and queueing it to every member, so every member sees one room's messages
//! in `seq` order.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::{
    Answer, Broker, Delivery, Member, Outcome, Receipt, Refusal, RoomView, StoredMessage, Ticket,
    TypingTo,
};
use crate::config::Config;
use crate::connection::mailbox::Class;
use crate::metrics::Metrics;
use crate::protocol::{self, ChatMessage, ErrorCode, Role, ServerMsg, TypingState, b};

/// Limits the local broker enforces.
#[derive(Debug, Clone)]
pub struct HubLimits {
    /// Messages kept per room.
    pub history_size: usize,
    /// Messages included when joining.
    pub history_on_join: usize,
    /// Rooms that may exist at once.
    pub max_rooms: usize,
}

impl HubLimits {
    /// The limits a configuration sets.
    pub fn from_config(config: &Config) -> HubLimits {
        HubLimits {
            history_size: config.history.size,
            history_on_join: config.history.on_join,
            max_rooms: config.limits.max_rooms,
        }
    }
}

/// Users, rooms and history in this process.
#[derive(Debug)]
pub struct LocalBroker {
    directory: Mutex<Directory>,
    next_message_id: AtomicU64,
    limits: HubLimits,
    metrics: Metrics,
    delivery: Delivery,
}

#[derive(Debug, Default)]
struct Directory {
    /// Online users by folded name.
    users: HashMap<String, Member>,
    /// Rooms with members or history, by normalised name.
    rooms: HashMap<Arc<str>, Arc<Room>>,
}

#[derive(Debug)]
struct Room {
    name: Arc<str>,
    state: Mutex<RoomState>,
}

#[derive(Debug)]
struct RoomState {
    members: Vec<Member>,
    /// Last join, leave or message: the least recently active empty room is evicted first.
    last_active: Instant,
    seq: u64,
    /// Oldest first.
    history: VecDeque<Arc<StoredMessage>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock cannot leave the data half-updated in a way later callers
    // cannot handle (every update is a single insert/remove), so keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Directory {
    /// Forgets the empty room that has been idle longest; false if every room has members.
    fn evict_idle_room(&mut self) -> bool {
        let idle = self
            .rooms
            .iter()
            .filter_map(|(name, room)| {
                let state = lock(&room.state);
                state
                    .members
                    .is_empty()
                    .then(|| (state.last_active, name.clone()))
            })
            .min();
        match idle {
            Some((_, name)) => {
                self.rooms.remove(&name);
                true
            }
            None => false,
        }
    }

    /// Forgets `room` if it is empty and has nothing worth keeping.
    fn forget_if_unused(&mut self, room: &Arc<Room>) {
        let unused = {
            let state = lock(&room.state);
            state.members.is_empty() && state.history.is_empty()
        };
        if unused
            && self
                .rooms
                .get(&room.name)
                .is_some_and(|r| Arc::ptr_eq(r, room))
        {
            self.rooms.remove(&room.name);
        }
    }
}

impl LocalBroker {
    /// An empty chat.
    pub fn new(limits: HubLimits, metrics: &Metrics) -> LocalBroker {
        LocalBroker {
            directory: Mutex::new(Directory::default()),
            next_message_id: AtomicU64::new(1),
            limits,
            metrics: metrics.clone(),
            delivery: Delivery::new(metrics),
        }
    }

    fn room(&self, name: &str) -> Option<Arc<Room>> {
        lock(&self.directory).rooms.get(name).cloned()
    }

    fn gauges(&self, dir: &Directory) {
        self.metrics.users_online.set(dir.users.len() as i64);
        self.metrics.rooms.set(dir.rooms.len() as i64);
    }

    fn join_locked(
        &self,
        dir: &mut Directory,
        me: &Member,
        room: &str,
    ) -> Result<RoomView, Refusal> {
        let room = match dir.rooms.get(room) {
            Some(r) => r.clone(),
            None => {
                if dir.rooms.len() >= self.limits.max_rooms && !dir.evict_idle_room() {
                    return Err(Refusal::server_full());
                }
                let r = Arc::new(Room::new(room));
                dir.rooms.insert(r.name.clone(), r.clone());
                r
            }
        };
        let mut state = lock(&room.state);
        if !state.members.iter().any(|m| m.conn == me.conn) {
            state.last_active = Instant::now();
            let event = ServerMsg::Joined {
                room: b(&room.name),
                name: b(&me.name),
                role: me.role,
            };
            self.delivery
                .deliver(&state.members, &event, Class::Presence, None);
            state.members.push(me.clone());
        }
        let skip = state
            .history
            .len()
            .saturating_sub(self.limits.history_on_join);
        let view = RoomView {
            room: room.name.clone(),
            users: state.user_list(),
            history: state.history.iter().skip(skip).cloned().collect(),
        };
        drop(state);
        self.gauges(dir);
        Ok(view)
    }

    /// Removes `me` from `room`, announcing `how` to those who stay; false if not a member.
    fn leave_locked(
        &self,
        dir: &mut Directory,
        me: &Member,
        room: &Arc<Room>,
        how: &ServerMsg<'_>,
        class: Class,
    ) -> bool {
        let mut state = lock(&room.state);
        if !state.remove_member(me.conn) {
            return false;
        }
        if state.members.is_empty() {
            // An empty room with history stays, so people who come back can read it.
            drop(state);
            dir.forget_if_unused(room);
            return true;
        }
        self.delivery.deliver(&state.members, how, class, None);
        true
    }

    /// A room `me` may look into: `no_such_room` or `not_in_room` otherwise.
    fn visible_room(&self, me: &Member, room: &str) -> Result<Arc<Room>, Refusal> {
        let Some(r) = self.room(room) else {
            return Err(Refusal::new(
                ErrorCode::NoSuchRoom,
                format!("there is no room #{room}"),
            ));
        };
        if !lock(&r.state).members.iter().any(|m| m.conn == me.conn) {
            return Err(Refusal::not_in_room(room));
        }
        Ok(r)
    }
}

fn now(outcome: impl Into<Outcome>) -> Answer {
    Answer::Now(outcome.into())
}

fn result(r: Result<Outcome, Refusal>) -> Answer {
    Answer::Now(r.unwrap_or_else(Outcome::Refused))
}

impl Broker for LocalBroker {
    fn hello(&self, _: Ticket, me: &Member, room: &str) -> Answer {
        let mut dir = lock(&self.directory);
        let key = protocol::fold_name(&me.name);
        if dir.users.contains_key(&key) {
            return now(Refusal::new(
                ErrorCode::NameTaken,
                format!("the name {:?} is taken", &*me.name),
            ));
        }
        let joined = self.join_locked(&mut dir, me, room);
        if joined.is_ok() {
            dir.users.insert(key, me.clone());
            self.gauges(&dir);
        }
        result(joined.map(Outcome::Welcome))
    }

    fn join(&self, _: Ticket, me: &Member, room: &str) -> Answer {
        let mut dir = lock(&self.directory);
        result(self.join_locked(&mut dir, me, room).map(Outcome::Joined))
    }

    fn leave(&self, _: Ticket, me: &Member, room: &str) -> Answer {
        let mut dir = lock(&self.directory);
        let left = dir.rooms.get(room).cloned().is_some_and(|r| {
            let event = ServerMsg::Left {
                room: b(&r.name),
                name: b(&me.name),
            };
            self.leave_locked(&mut dir, me, &r, &event, Class::Presence)
        });
        self.gauges(&dir);
        if left {
            now(Outcome::Left { room: room.into() })
        } else {
            now(Refusal::not_in_room(room))
        }
    }

    fn say(&self, _: Ticket, me: &Member, room: &str, text: &str, action: bool) -> Answer {
        let Some(room) = self.room(room) else {
            return now(Refusal::not_in_room(room));
        };
        let mut state = lock(&room.state);
        if !state.members.iter().any(|m| m.conn == me.conn) {
            return now(Refusal::not_in_room(&room.name));
        }
        state.seq += 1;
        state.last_active = Instant::now();
        let seq = state.seq;
        let id = self.next_message_id.fetch_add(1, Ordering::Relaxed);
        let ts: Arc<str> = protocol::timestamp().into();
        let message = ChatMessage {
            id,
            seq,
            ts: b(&ts),
            room: b(&room.name),
            from: b(&me.name),
            role: me.role,
            text: b(text),
            action,
        };
        self.delivery.deliver(
            &state.members,
            &ServerMsg::Message(message.borrowed()),
            Class::Chat,
            Some(me.conn),
        );
        if self.limits.history_size > 0 {
            if state.history.len() >= self.limits.history_size {
                state.history.pop_front();
            }
            state.history.push_back(Arc::new(message.into_owned()));
        }
        let recipients = state.members.len() - 1;
        drop(state);
        self.metrics.fanout_recipients.observe(recipients as f64);
        now(Outcome::Sent(Receipt {
            id,
            seq: Some(seq),
            ts,
            to: None,
        }))
    }

    fn pm(&self, _: Ticket, me: &Member, to: &str, text: &str, action: bool) -> Answer {
        let target = lock(&self.directory)
            .users
            .get(&protocol::fold_name(to))
            .cloned();
        let Some(target) = target else {
            return now(Refusal::no_such_user(to));
        };
        let id = self.next_message_id.fetch_add(1, Ordering::Relaxed);
        let ts: Arc<str> = protocol::timestamp().into();
        let event = ServerMsg::Pm {
            id,
            ts: b(&ts),
            from: b(&me.name),
            role: me.role,
            to: b(&target.name),
            text: b(text),
            action,
        };
        self.delivery
            .deliver([&target], &event, Class::Chat, Some(me.conn));
        now(Outcome::Sent(Receipt {
            id,
            seq: None,
            ts,
            to: Some(target.name.clone()),
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
                    self.delivery
                        .deliver(&members.members, &event, Class::Typing, Some(me.conn));
                }
                now(Outcome::Relayed)
            }
            TypingTo::User(name) => {
                let target = lock(&self.directory)
                    .users
                    .get(&protocol::fold_name(name))
                    .cloned();
                let Some(target) = target else {
                    return now(Refusal::no_such_user(name));
                };
                let event = ServerMsg::Typing {
                    from: b(&me.name),
                    room: None,
                    to: Some(b(&target.name)),
                    state,
                };
                self.delivery
                    .deliver([&target], &event, Class::Typing, Some(me.conn));
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
            .map(|r| (r.name.clone(), lock(&r.state).members.len()))
            .collect();
        drop(dir);
        rooms.sort();
        now(Outcome::Rooms(rooms))
    }

    fn history(
        &self,
        _: Ticket,
        me: &Member,
        room: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Answer {
        result(self.visible_room(me, room).map(|r| {
            let state = lock(&r.state);
            let upto = match before {
                Some(b) => state.history.partition_point(|m| m.seq < b),
                None => state.history.len(),
            };
            let from = upto.saturating_sub(limit);
            Outcome::History {
                room: r.name.clone(),
                messages: state.history.range(from..upto).cloned().collect(),
            }
        }))
    }

    fn kick(&self, _: Ticket, me: &Member, name: &str, reason: &str) -> Answer {
        let mut dir = lock(&self.directory);
        let Some(target) = dir.users.remove(&protocol::fold_name(name)) else {
            return now(Refusal::no_such_user(name));
        };
        let rooms: Vec<Arc<Room>> = dir.rooms.values().cloned().collect();
        for room in rooms {
            let event = ServerMsg::Kicked {
                room: b(&room.name),
                name: b(&target.name),
                by: b(&me.name),
                reason: b(reason),
            };
            self.leave_locked(&mut dir, &target, &room, &event, Class::Chat);
        }
        self.gauges(&dir);
        drop(dir);
        target.kick(reason.to_string());
        now(Outcome::Done)
    }

    fn nick(&self, _: Ticket, me: &Member, name: &str) -> Answer {
        let mut dir = lock(&self.directory);
        let (old, new) = (protocol::fold_name(&me.name), protocol::fold_name(name));
        if dir.users.get(&new).is_some_and(|m| m.conn != me.conn) {
            return now(Refusal::new(
                ErrorCode::NameTaken,
                format!("the name {name:?} is taken"),
            ));
        }
        let renamed = me.renamed(name.into());
        dir.users.remove(&old);
        dir.users.insert(new, renamed.clone());
        // Everyone who shares a room hears it once.
        let mut audience: Vec<Member> = Vec::new();
        for room in dir.rooms.values() {
            let mut state = lock(&room.state);
            let Some(pos) = state.members.iter().position(|m| m.conn == me.conn) else {
                continue;
            };
            state.members[pos] = renamed.clone();
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
        self.delivery
            .deliver(&audience, &event, Class::Presence, None);
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
            .deliver(dir.users.values(), &event, Class::Chat, None);
        now(Outcome::Done)
    }

    fn disconnect(&self, me: &Member, rooms: &[Arc<str>]) {
        let mut dir = lock(&self.directory);
        for name in rooms {
            if let Some(room) = dir.rooms.get(name).cloned() {
                let event = ServerMsg::Left {
                    room: b(&room.name),
                    name: b(&me.name),
                };
                self.leave_locked(&mut dir, me, &room, &event, Class::Presence);
            }
        }
        let key = protocol::fold_name(&me.name);
        if dir.users.get(&key).is_some_and(|m| m.conn == me.conn) {
            dir.users.remove(&key);
        }
        self.gauges(&dir);
    }
}

impl Room {
    fn new(name: &str) -> Room {
        Room {
            name: name.into(),
            state: Mutex::new(RoomState {
                members: Vec::new(),
                last_active: Instant::now(),
                seq: 0,
                history: VecDeque::new(),
            }),
        }
    }
}

impl RoomState {
    /// Removes a connection from the members (a leave or a kick); false if it was not one.
    fn remove_member(&mut self, conn: super::ConnId) -> bool {
        let Some(pos) = self.members.iter().position(|m| m.conn == conn) else {
            return false;
        };
        self.members.swap_remove(pos);
        self.last_active = Instant::now();
        true
    }

    fn user_list(&self) -> Vec<(Arc<str>, Role)> {
        let mut users: Vec<_> = self
            .members
            .iter()
            .map(|m| (m.name.clone(), m.role))
            .collect();
        sort_by_name(&mut users);
        users
    }
}

/// Case-insensitive name order without allocating a lowercase key per comparison.
pub(crate) fn sort_by_name(users: &mut [(Arc<str>, Role)]) {
    users.sort_unstable_by(|(a, _), (b, _)| {
        let fold = |c: u8| c.to_ascii_lowercase();
        a.bytes()
            .map(fold)
            .cmp(b.bytes().map(fold))
            .then_with(|| a.cmp(b))
    });
}
