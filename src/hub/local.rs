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
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use super::presence::PresenceBatch;
use super::{
    Answer, Broker, Delivery, Member, Outcome, Page, Receipt, Refusal, Resume, RoomView,
    StoredMessage, Ticket, TypingTo, lock, name_order,
};
use crate::config::{Config, ConfigError};
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
    /// Messages a resuming client may be behind by.
    pub resume_max: u64,
    /// Keep private messages too (names are owned: token mode).
    pub store_pms: bool,
    /// Names are owned (token mode): a name is whoever the token says, and look-alikes of
    /// online names are not refused (they are other accounts).
    pub owned_names: bool,
    /// Members listed in a view, and names listed per `presence` batch.
    pub users_per_page: usize,
    /// Rooms with more members than this batch their joins and leaves (0: every room).
    pub presence_batch_over: usize,
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
            resume_max: config.history.resume_max,
            store_pms: config.auth.mode == crate::config::AuthMode::Token,
            owned_names: config.auth.mode == crate::config::AuthMode::Token,
            users_per_page: config.limits.users_per_page,
            presence_batch_over: config.limits.presence_batch_over,
        }
    }
}

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

#[derive(Debug, Default)]
struct Directory {
    /// Online users by `protocol::name_key`.
    users: HashMap<String, Member>,
    /// The names online, by `protocol::look_alike`: a new name that looks like one of them is
    /// refused (open mode), without making them one identity.
    looks: HashMap<String, Vec<Arc<str>>>,
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
    /// The room's seq numbering: changes only when it restarts (a new room, or a reset store).
    epoch: Arc<str>,
    /// Joins and leaves not yet announced (see `LocalBroker::batch`); the room is in
    /// `presence_due`.
    batch: Option<Box<PresenceBatch>>,
}

impl Directory {
    /// `member` is online under `key` (its `protocol::name_key`).
    fn add_user(&mut self, key: String, member: Member) {
        self.looks
            .entry(protocol::look_alike(&member.name))
            .or_default()
            .push(member.name.clone());
        self.users.insert(key, member);
    }

    /// Takes the user under `key` offline.
    fn remove_user(&mut self, key: &str) -> Option<Member> {
        let member = self.users.remove(key)?;
        let looks = protocol::look_alike(&member.name);
        if let Some(names) = self.looks.get_mut(&looks) {
            if let Some(i) = names.iter().position(|n| *n == member.name) {
                names.swap_remove(i);
            }
            if names.is_empty() {
                self.looks.remove(&looks);
            }
        }
        Some(member)
    }

    /// Someone else online whose name looks like `name` (not `name` itself, in any case).
    fn look_alike_of(&self, name: &str) -> Option<Arc<str>> {
        let key = protocol::name_key(name);
        self.looks
            .get(&protocol::look_alike(name))?
            .iter()
            .find(|n| protocol::name_key(n) != key)
            .cloned()
    }

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

    /// A room as it starts now: numbered on from where the store left it, if it has a record;
    /// otherwise from 0 in the store's epoch (or a fresh one, without a store).
    fn new_room(&self, name: &str, creator: Option<IpAddr>) -> Room {
        let (epoch, seq) = match self.store.as_ref().and_then(|s| s.mark(name)) {
            Some(mark) => (mark.epoch, mark.last_seq),
            None => (self.store_epoch.clone().unwrap_or_else(new_epoch), 0),
        };
        Room::new(name, creator, epoch, seq)
    }

    /// Answers late from a store reader: `query` runs there, and `outcome` makes what it found
    /// into the outcome that goes to `me`.
    fn read_later(
        &self,
        ticket: Ticket,
        me: &Member,
        query: store::Query,
        outcome: impl FnOnce(store::Found) -> Outcome + Send + 'static,
    ) -> Answer {
        let Some(store) = &self.store else {
            return now(unavailable("history beyond memory needs storage.path"));
        };
        let me = me.clone();
        let search = matches!(query, store::Query::Search { .. });
        let queued = store.read(query, move |result| {
            let answer = match result {
                Ok(found) => outcome(found),
                Err(store::ReadError::TooBroad) => Refusal::new(
                    ErrorCode::BadRequest,
                    "that search matches too much to finish in time; add words, or search one room",
                )
                .into(),
                Err(store::ReadError::Failed(_)) => {
                    unavailable("could not read the history; try again").into()
                }
            };
            me.answer(ticket, answer);
        });
        if queued {
            Answer::Later
        } else if search {
            now(unavailable(
                "the server is busy searching; try again in a moment",
            ))
        } else {
            now(unavailable("the server is busy reading history; try again"))
        }
    }

    /// Answers a join with `view`, first topping its history up from the store when memory holds
    /// fewer than `history.on_join` messages of a room the store has older ones of (a stored
    /// room evicted from memory and joined again).
    fn with_stored_history(
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
    fn oldest_seq(&self, name: &str, state: &RoomState) -> u64 {
        let in_memory = state.history.front().map_or(state.seq + 1, |m| m.seq);
        match self.store.as_ref().and_then(|s| s.first_seq(name)) {
            Some(stored) => stored.min(in_memory),
            None => in_memory,
        }
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
        let room = Arc::new(self.new_room(name, Some(ip)));
        dir.rooms.insert(room.name.clone(), room.clone());
        *dir.created_by.entry(ip).or_default() += 1;
        Ok(room)
    }

    fn join_locked(
        &self,
        dir: &mut Directory,
        me: &Member,
        room: &str,
        resume: Option<&Resume>,
    ) -> Result<RoomView, Refusal> {
        let room = match dir.rooms.get(room) {
            Some(r) => r.clone(),
            None => self.create_room(dir, me, room)?,
        };
        let mut state = lock(&room.state);
        if !state.members.iter().any(|m| m.conn == me.conn) {
            state.last_active = Instant::now();
            if let Some(batch) = self.batch(&room, &mut state) {
                batch.join(&me.name, me.role, self.limits.users_per_page);
            } else {
                let event = ServerMsg::Joined {
                    room: b(&room.name),
                    name: b(&me.name),
                    role: me.role,
                };
                self.delivery
                    .deliver(&state.members, &event, Class::Presence, None);
            }
            state.members.push(me.clone());
        }
        let on_join = |state: &RoomState| {
            let skip = state
                .history
                .len()
                .saturating_sub(self.limits.history_on_join);
            state.history.iter().skip(skip).cloned().collect()
        };
        // Exactly what the client missed, when that is still known; otherwise the latest.
        let (history, resumed, more) = match resume {
            Some(r)
                if *r.epoch == *state.epoch
                    && r.since <= state.seq
                    && state.seq - r.since <= self.limits.resume_max =>
            {
                let in_memory = state.history.front().map_or(state.seq + 1, |m| m.seq);
                if in_memory <= r.since + 1 {
                    let missed = state.history.iter().filter(|m| m.seq > r.since);
                    (missed.cloned().collect(), Some(true), false)
                } else if self.oldest_seq(&room.name, &state) <= r.since + 1 {
                    // Stored, not in memory: the client pages forward with `history after`.
                    (Vec::new(), Some(true), true)
                } else {
                    (on_join(&state), Some(false), false)
                }
            }
            Some(_) => (on_join(&state), Some(false), false),
            None => (on_join(&state), None, false),
        };
        let view = RoomView {
            room: room.name.clone(),
            users: state.first_users(self.limits.users_per_page),
            user_count: state.members.len(),
            history,
            epoch: state.epoch.clone(),
            seq: state.seq,
            resumed,
            more,
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
            state.batch = None;
            drop(state);
            dir.forget_if_unused(room, self);
            return true;
        }
        if matches!(how, ServerMsg::Left { .. })
            && let Some(batch) = self.batch(room, &mut state)
        {
            batch.leave(&me.name, self.limits.users_per_page);
            return true;
        }
        // A kick is told at once; a join still batched is taken back.
        if let Some(batch) = &mut state.batch {
            batch.take_back(&me.name);
        }
        self.delivery.deliver(&state.members, how, class, None);
        true
    }

    /// The room's presence batch, started if the room is past `presence_batch_over`: `None`
    /// means joins and leaves are told one by one. Once a batch holds something, everything
    /// waits for it, so that members see changes in the order they happened.
    fn batch<'s>(
        &self,
        room: &Arc<Room>,
        state: &'s mut RoomState,
    ) -> Option<&'s mut PresenceBatch> {
        let over = self.limits.presence_batch_over;
        if state.batch.is_none() && over > 0 && state.members.len() <= over {
            return None;
        }
        if state.batch.is_none() {
            lock(&self.presence_due).push(Arc::downgrade(room));
        }
        Some(state.batch.get_or_insert_with(Box::default))
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
    fn hello(&self, ticket: Ticket, me: &Member, room: &str, resume: Option<&Resume>) -> Answer {
        let mut dir = lock(&self.directory);
        let key = protocol::name_key(&me.name);
        if dir.users.contains_key(&key) {
            return now(Refusal::name_taken(&me.name));
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
            }
            .into_owned(),
        );
        // Stored, or refused: never accepted and then lost.
        if let Some(store) = &self.store
            && let Err(why) = store.append(message.clone(), state.epoch.clone())
        {
            return now(unavailable(why.reason()));
        }
        state.seq = seq;
        state.last_active = Instant::now();
        self.delivery.deliver(
            &state.members,
            &ServerMsg::Message(message.borrowed()),
            Class::Chat,
            Some(me.conn),
        );
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

    fn pm(&self, _: Ticket, me: &Member, to: &str, text: &str, action: bool) -> Answer {
        let target = lock(&self.directory)
            .users
            .get(&protocol::name_key(to))
            .cloned();
        let Some(target) = target else {
            return now(Refusal::no_such_user(to));
        };
        let id = self.next_message_id.fetch_add(1, Ordering::Relaxed);
        let ts: Arc<str> = protocol::timestamp().into();
        if self.limits.store_pms
            && let Some(store) = &self.store
        {
            let pm = store::Pm {
                id,
                ts: ts.to_string(),
                from: me.name.to_string(),
                to: target.name.to_string(),
                role: me.role,
                text: text.to_string(),
                action,
            };
            if let Err(why) = store.append_pm(pm) {
                return now(unavailable(why.reason()));
            }
        }
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
                    .get(&protocol::name_key(name))
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

    fn history(&self, ticket: Ticket, me: &Member, room: &str, page: Page) -> Answer {
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
                _ => unavailable("could not read the history; try again").into(),
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

    fn conversation(
        &self,
        ticket: Ticket,
        me: &Member,
        with: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Answer {
        if !self.limits.store_pms || self.store.is_none() {
            return now(unavailable(
                "private messages are not kept on this server (only with storage and tokens)",
            ));
        }
        let query = store::Query::Pms {
            pair: store::pm_pair(&me.name, with),
            before,
            limit,
        };
        let with: Arc<str> = with.into();
        self.read_later(ticket, me, query, move |found| match found {
            store::Found::Pms(messages, more) => Outcome::Conversation {
                with,
                messages,
                more,
            },
            _ => unavailable("could not read the conversation; try again").into(),
        })
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
        if self.store.is_none() {
            return now(unavailable(
                "search needs durable history (storage.path), which this server does not keep",
            ));
        }
        let asked: Arc<str> = query.into();
        let query = store::Query::Search {
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            query: query.to_string(),
            before,
            limit,
        };
        self.read_later(ticket, me, query, move |found| match found {
            store::Found::Search(messages, more) => Outcome::Found {
                query: asked,
                messages: messages.into_iter().map(Arc::new).collect(),
                more,
            },
            _ => unavailable("could not search; try again").into(),
        })
    }

    fn ready(&self) -> bool {
        self.store.as_ref().is_none_or(|s| s.healthy())
    }

    fn close(&self) {
        if let Some(store) = &self.store {
            store.close(std::time::Duration::from_secs(10));
        }
    }

    fn tick(&self) {
        let due = std::mem::take(&mut *lock(&self.presence_due));
        for room in due.iter().filter_map(Weak::upgrade) {
            let mut state = lock(&room.state);
            let Some(batch) = state.batch.take().filter(|b| !b.is_empty()) else {
                continue;
            };
            let event = ServerMsg::Presence {
                room: b(&room.name),
                joined: batch
                    .joined
                    .iter()
                    .map(|(name, role)| protocol::UserInfo {
                        name: b(name),
                        role: *role,
                    })
                    .collect(),
                left: batch.left.iter().map(|n| b(n)).collect(),
                unlisted: batch.unlisted,
                user_count: state.members.len(),
            };
            self.delivery
                .deliver(&state.members, &event, Class::Presence, None);
        }
    }

    fn kick(&self, _: Ticket, me: &Member, name: &str, reason: &str) -> Answer {
        let mut dir = lock(&self.directory);
        let Some(target) = dir.remove_user(&protocol::name_key(name)) else {
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
        let (old, new) = (protocol::name_key(&me.name), protocol::name_key(name));
        if dir.users.get(&new).is_some_and(|m| m.conn != me.conn) {
            return now(Refusal::name_taken(name));
        }
        if let Some(other) = dir
            .look_alike_of(name)
            .filter(|o| protocol::name_key(o) != old)
        {
            return now(Refusal::looks_like(name, &other));
        }
        let renamed = me.renamed(name.into());
        dir.remove_user(&old);
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
        let key = protocol::name_key(&me.name);
        if dir.users.get(&key).is_some_and(|m| m.conn == me.conn) {
            dir.remove_user(&key);
        }
        self.gauges(&dir);
    }
}

/// The creator of rooms loaded from the store: no client's address.
const LOADED: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

fn unavailable(why: &str) -> Refusal {
    Refusal::new(ErrorCode::Unavailable, why)
}

/// A fresh epoch for a room whose seq numbering starts now.
fn new_epoch() -> Arc<str> {
    format!("{:016x}", fastrand::u64(..)).into()
}

impl Room {
    fn new(name: &str, creator: Option<IpAddr>, epoch: Arc<str>, seq: u64) -> Room {
        Room {
            name: name.into(),
            creator,
            state: Mutex::new(RoomState {
                members: Vec::new(),
                last_active: Instant::now(),
                seq,
                history: VecDeque::new(),
                history_bytes: 0,
                epoch,
                batch: None,
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

    /// The first `page` members by name, without sorting the whole room.
    fn first_users(&self, page: usize) -> Vec<(Arc<str>, Role)> {
        let mut first: Vec<&Member> = self.members.iter().collect();
        if first.len() > page {
            first.select_nth_unstable_by(page, |a, b| name_order(&a.name, &b.name));
            first.truncate(page);
        }
        let mut users: Vec<_> = first.iter().map(|m| (m.name.clone(), m.role)).collect();
        sort_by_name(&mut users);
        users
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
    users.sort_unstable_by(|(a, _), (b, _)| name_order(a, b));
}
