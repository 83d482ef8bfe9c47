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

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
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
    /// Bytes of history kept per room.
    pub history_bytes_per_room: usize,
    /// Bytes of history kept in all rooms together.
    pub history_bytes: usize,
    /// Rooms that may exist at once (the default room aside).
    pub max_rooms: usize,
    /// Rooms one address may have created that still exist.
    pub max_rooms_per_ip: usize,
}

impl HubLimits {
    /// The limits a configuration sets.
    pub fn from_config(config: &Config) -> HubLimits {
        HubLimits {
            history_size: config.history.size,
            history_on_join: config.history.on_join,
            history_bytes_per_room: config.history.max_bytes_per_room,
            history_bytes: config.history.max_bytes,
            max_rooms: config.limits.max_rooms,
            max_rooms_per_ip: config.limits.max_rooms_per_ip,
        }
    }
}

/// What a stored message costs, in bytes: its strings plus the fixed part of its record.
pub(crate) fn message_cost(m: &StoredMessage) -> usize {
    const FIXED: usize = 160;
    FIXED + m.text.len() + m.from.len() + m.room.len() + m.ts.len()
}

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
}

#[derive(Debug, Default)]
struct Directory {
    /// Online users by folded name.
    users: HashMap<String, Member>,
    /// Rooms with members or history, by normalised name.
    rooms: HashMap<Arc<str>, Arc<Room>>,
    /// Rooms that still exist, by the address that created them.
    created_by: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Room {
    name: Arc<str>,
    /// The address that created it (`None`: the default room, which always exists).
    creator: Option<IpAddr>,
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
    /// What `history` costs (`message_cost`).
    history_bytes: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock cannot leave the data half-updated in a way later callers
    // cannot handle (every update is a single insert/remove), so keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Directory {
    /// The empty room that has been idle longest, among those `creator` may evict (any, when
    /// `None`); the default room is never a candidate.
    fn idle_room(&self, creator: Option<IpAddr>) -> Option<Arc<Room>> {
        self.rooms
            .values()
            .filter(|room| room.creator.is_some() && (creator.is_none() || room.creator == creator))
            .filter_map(|room| {
                let state = lock(&room.state);
                state
                    .members
                    .is_empty()
                    .then(|| (state.last_active, room.clone()))
            })
            .min_by_key(|(at, _)| *at)
            .map(|(_, room)| room)
    }

    /// Forgets a room; its history goes with it.
    fn remove(&mut self, room: &Arc<Room>, broker: &LocalBroker) {
        if !self
            .rooms
            .get(&room.name)
            .is_some_and(|r| Arc::ptr_eq(r, room))
        {
            return;
        }
        self.rooms.remove(&room.name);
        if let Some(ip) = room.creator
            && let Some(n) = self.created_by.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.created_by.remove(&ip);
            }
        }
        let mut state = lock(&room.state);
        broker.forget_history(state.history_bytes, state.history.len());
        state.history = VecDeque::new();
        state.history_bytes = 0;
    }

    /// Forgets `room` if it is empty and has nothing worth keeping.
    fn forget_if_unused(&mut self, room: &Arc<Room>, broker: &LocalBroker) {
        let unused = room.creator.is_some() && {
            let state = lock(&room.state);
            state.members.is_empty() && state.history.is_empty()
        };
        if unused {
            self.remove(room, broker);
        }
    }
}

impl LocalBroker {
    /// An empty chat.
    pub fn new(limits: HubLimits, metrics: &Metrics) -> LocalBroker {
        let mut directory = Directory::default();
        let lobby = Arc::new(Room::new(protocol::DEFAULT_ROOM, None));
        directory.rooms.insert(lobby.name.clone(), lobby);
        let broker = LocalBroker {
            directory: Mutex::new(directory),
            arrivals: Mutex::new(VecDeque::new()),
            history_bytes: AtomicUsize::new(0),
            history_messages: AtomicUsize::new(0),
            next_message_id: AtomicU64::new(1),
            limits,
            metrics: metrics.clone(),
            delivery: Delivery::new(metrics),
        };
        broker.gauges(&lock(&broker.directory));
        broker
    }

    fn forget_history(&self, bytes: usize, messages: usize) {
        self.history_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.history_messages.fetch_sub(messages, Ordering::Relaxed);
    }

    /// Keeps `message` in `state`'s history, evicting the room's oldest past its bounds.
    fn store(&self, state: &mut RoomState, message: Arc<StoredMessage>) {
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
    fn bound_history(&self, room: &Arc<Room>, id: u64) {
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

    fn room(&self, name: &str) -> Option<Arc<Room>> {
        lock(&self.directory).rooms.get(name).cloned()
    }

    fn gauges(&self, dir: &Directory) {
        self.metrics.users_online.set(dir.users.len() as i64);
        self.metrics.rooms.set(dir.rooms.len() as i64);
        self.metrics
            .history_bytes
            .set(self.history_bytes.load(Ordering::Relaxed) as i64);
    }

    /// A new room `name`, created by `me`, within the caps: an idle empty room makes way at the
    /// server's cap; at the address's cap, only one of its own idle empty rooms can.
    fn create_room(
        &self,
        dir: &mut Directory,
        me: &Member,
        name: &str,
    ) -> Result<Arc<Room>, Refusal> {
        let ip = me.ip;
        let per_ip = self.limits.max_rooms_per_ip;
        if per_ip > 0 && dir.created_by.get(&ip).copied().unwrap_or(0) >= per_ip {
            match dir.idle_room(Some(ip)) {
                Some(old) => dir.remove(&old, self),
                None => {
                    return Err(Refusal::new(
                        ErrorCode::TooManyRooms,
                        format!(
                            "users from your address have created {} rooms, the most allowed",
                            self.limits.max_rooms_per_ip
                        ),
                    ));
                }
            }
        }
        if dir.rooms.len() >= self.limits.max_rooms {
            match dir.idle_room(None) {
                Some(old) => dir.remove(&old, self),
                None => return Err(Refusal::server_full()),
            }
        }
        let room = Arc::new(Room::new(name, Some(ip)));
        dir.rooms.insert(room.name.clone(), room.clone());
        *dir.created_by.entry(ip).or_default() += 1;
        Ok(room)
    }

    fn join_locked(
        &self,
        dir: &mut Directory,
        me: &Member,
        room: &str,
    ) -> Result<RoomView, Refusal> {
        let room = match dir.rooms.get(room) {
            Some(r) => r.clone(),
            None => self.create_room(dir, me, room)?,
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
            dir.forget_if_unused(room, self);
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
        // A hello never fails for lack of rooms: it lands in the default room instead.
        let joined = match self.join_locked(&mut dir, me, room) {
            Err(r) if r.code == ErrorCode::TooManyRooms => {
                self.join_locked(&mut dir, me, protocol::DEFAULT_ROOM)
            }
            other => other,
        };
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
        self.store(&mut state, Arc::new(message.into_owned()));
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
                more: from > 0,
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
    fn new(name: &str, creator: Option<IpAddr>) -> Room {
        Room {
            name: name.into(),
            creator,
            state: Mutex::new(RoomState {
                members: Vec::new(),
                last_active: Instant::now(),
                seq: 0,
                history: VecDeque::new(),
                history_bytes: 0,
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
