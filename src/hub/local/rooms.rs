//! Rooms in the local broker: the directory of users and rooms, each room's members and state,
//! creating and evicting rooms under their caps, joining and leaving, and presence batches.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use super::LocalBroker;
use crate::hub::presence::PresenceBatch;
use crate::hub::{ConnId, Member, Refusal, Resume, RoomView, StoredMessage, lock, name_order};
use crate::memory::Shrink;
use crate::protocol::{self, Role, ServerMsg, b};

#[derive(Debug, Default)]
pub(super) struct Directory {
    /// Online users by `protocol::name_key`: each user's connections (one in open mode; with
    /// tokens or accounts up to `auth.max_sessions_per_user`), oldest first. Boxed key and
    /// list: every online user pays for a slot of the table, 32 bytes instead of 48, and a
    /// second connection of one user, which rebuilds the list, is rare.
    pub(super) users: HashMap<Box<str>, Box<[Member]>>,
    /// The names online, by `protocol::look_alike`: a new name that looks like one of them is
    /// refused (open mode), without making them one identity. (Boxed, as `users`.)
    pub(super) looks: HashMap<Box<str>, Box<[Arc<str>]>>,
    /// Rooms with members or history, by normalised name.
    pub(super) rooms: HashMap<Arc<str>, Arc<Room>>,
    /// Rooms that still exist, by the address that created them.
    pub(super) created_by: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
pub(super) struct Room {
    pub(super) name: Arc<str>,
    /// The address that created it (`None`: the default room, which always exists).
    pub(super) creator: Option<IpAddr>,
    pub(super) state: Mutex<RoomState>,
}

#[derive(Debug)]
pub(super) struct RoomState {
    pub(super) members: Vec<Member>,
    /// Last join, leave or message: the least recently active empty room is evicted first.
    pub(super) last_active: Instant,
    pub(super) seq: u64,
    /// Oldest first.
    pub(super) history: VecDeque<Arc<StoredMessage>>,
    /// What `history` costs (`message_cost`).
    pub(super) history_bytes: usize,
    /// Messages lately changed (or read from the store to be changed), as they are now, kept
    /// after `history` lets them go: a crowd reacting to one message finds it here, and the
    /// store is read once (see `changes.rs`; a few small ones only).
    pub(super) hot: Vec<Arc<StoredMessage>>,
    /// Messages being read from the store for a change, and who waits for each: a crowd asking
    /// for one message at once causes one read.
    pub(super) recalling: Vec<(u64, Vec<(Member, crate::hub::Ticket)>)>,
    /// The room's seq numbering: changes only when it restarts (a new room, or a reset store).
    pub(super) epoch: Arc<str>,
    /// Joins and leaves not yet announced (see `LocalBroker::batch`); the room is in
    /// `presence_due`.
    pub(super) batch: Option<Box<PresenceBatch>>,
    /// Members that are a second (third …) connection of a user already in the room: the room
    /// has `members.len() - extra` users.
    pub(super) extra: usize,
}

/// Appends to a boxed list (rebuilt: lists here hold one entry but rarely).
fn push<T>(list: &mut Box<[T]>, item: T) {
    // Made to size: boxing it then does not reallocate.
    let mut v = Vec::with_capacity(list.len() + 1);
    v.extend(std::mem::take(list).into_vec());
    v.push(item);
    *list = v.into_boxed_slice();
}

/// Removes the entry at `at` from a boxed list, keeping the order.
fn remove<T>(list: &mut Box<[T]>, at: usize) -> T {
    let mut v = std::mem::take(list).into_vec();
    let item = v.remove(at);
    *list = v.into_boxed_slice();
    item
}

impl Directory {
    /// `member` is online under `key` (its `protocol::name_key`): a user, or another connection
    /// of one.
    pub(super) fn add_user(&mut self, key: String, member: Member) {
        let sessions = self.users.entry(key.into_boxed_str()).or_default();
        if sessions.is_empty() {
            let names = self
                .looks
                .entry(protocol::look_alike(&member.name).into_boxed_str())
                .or_default();
            push(names, member.name.clone());
        }
        push(sessions, member);
    }

    /// Takes the connection `conn` of the user under `key` offline; the user goes offline with
    /// their last one.
    pub(super) fn remove_session(&mut self, key: &str, conn: ConnId) -> Option<Member> {
        let sessions = self.users.get_mut(key)?;
        let at = sessions.iter().position(|m| m.conn == conn)?;
        let member = remove(sessions, at);
        if sessions.is_empty() {
            self.users.remove(key);
            self.users.shrink_if_sparse();
            self.forget_look(&member.name);
        }
        Some(member)
    }

    /// Takes the user under `key` offline, every connection of theirs.
    pub(super) fn remove_user(&mut self, key: &str) -> Vec<Member> {
        let sessions = self.users.remove(key).unwrap_or_default().into_vec();
        self.users.shrink_if_sparse();
        if let Some(first) = sessions.first() {
            self.forget_look(&first.name.clone());
        }
        sessions
    }

    fn forget_look(&mut self, name: &Arc<str>) {
        let looks = protocol::look_alike(name);
        if let Some(names) = self.looks.get_mut(looks.as_str()) {
            if let Some(i) = names.iter().position(|n| n == name) {
                remove(names, i);
            }
            if names.is_empty() {
                self.looks.remove(looks.as_str());
                self.looks.shrink_if_sparse();
            }
        }
    }

    /// The connections of the user called `name`, oldest first (none: not online).
    pub(super) fn sessions(&self, name: &str) -> &[Member] {
        self.users
            .get(protocol::name_key(name).as_str())
            .map_or(&[], |s| s)
    }

    /// The other connections of `me`'s user (none in open mode).
    pub(super) fn other_sessions(&self, me: &Member) -> Vec<Member> {
        let all = self.sessions(&me.name);
        all.iter().filter(|m| m.conn != me.conn).cloned().collect()
    }

    /// The other connections of `me`'s user, by id.
    pub(super) fn others(&self, me: &Member) -> Vec<ConnId> {
        let all = self.sessions(&me.name);
        all.iter()
            .map(|m| m.conn)
            .filter(|c| *c != me.conn)
            .collect()
    }

    /// Someone else online whose name looks like `name` (not `name` itself, in any case).
    pub(super) fn look_alike_of(&self, name: &str) -> Option<Arc<str>> {
        let key = protocol::name_key(name);
        self.looks
            .get(protocol::look_alike(name).as_str())?
            .iter()
            .find(|n| protocol::name_key(n) != key)
            .cloned()
    }

    /// The empty room that has been idle longest, among those `creator` may evict (any, when
    /// `None`); the default room is never a candidate.
    pub(super) fn idle_room(&self, creator: Option<IpAddr>) -> Option<Arc<Room>> {
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
    pub(super) fn remove(&mut self, room: &Arc<Room>, broker: &LocalBroker) {
        if !self
            .rooms
            .get(&room.name)
            .is_some_and(|r| Arc::ptr_eq(r, room))
        {
            return;
        }
        self.rooms.remove(&room.name);
        self.rooms.shrink_if_sparse();
        if let Some(ip) = room.creator
            && let Some(n) = self.created_by.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.created_by.remove(&ip);
                self.created_by.shrink_if_sparse();
            }
        }
        let mut state = lock(&room.state);
        broker.forget_history(state.history_bytes, state.history.len());
        state.history = VecDeque::new();
        state.hot = Vec::new();
        state.history_bytes = 0;
    }

    /// Forgets `room` if it is empty and has nothing worth keeping.
    pub(super) fn forget_if_unused(&mut self, room: &Arc<Room>, broker: &LocalBroker) {
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
    /// A room as it starts now: numbered on from where the store left it, if it has a record;
    /// otherwise from 0 in the store's epoch (or a fresh one, without a store).
    pub(super) fn new_room(&self, name: &str, creator: Option<IpAddr>) -> Room {
        let (epoch, seq) = match self.store.as_ref().and_then(|s| s.mark(name)) {
            Some(mark) => (mark.epoch, mark.last_seq),
            None => (self.store_epoch.clone().unwrap_or_else(new_epoch), 0),
        };
        Room::new(name, creator, epoch, seq)
    }

    pub(super) fn room(&self, name: &str) -> Option<Arc<Room>> {
        lock(&self.directory).rooms.get(name).cloned()
    }

    pub(super) fn gauges(&self, dir: &Directory) {
        self.metrics.users_online.set(dir.users.len() as i64);
        self.metrics.rooms.set(dir.rooms.len() as i64);
        self.metrics
            .history_bytes
            .set(self.history_bytes.load(Ordering::Relaxed) as i64);
    }

    /// A new room `name`, created by `me`, within the caps: an idle empty room makes way at the
    /// server's cap; at the address's cap, only one of its own idle empty rooms can.
    pub(super) fn create_room(
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
                    return Err(Refusal::too_many_rooms_created());
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

    pub(super) fn join_locked(
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
        let others = dir.others(me);
        let mut state = lock(&room.state);
        if !state.members.iter().any(|m| m.conn == me.conn) {
            state.last_active = Instant::now();
            if state.has_any(&others) {
                // Another connection of this user is here: not news to the others.
                state.extra += 1;
            } else if let Some(batch) = self.batch(&room, &mut state) {
                batch.join(&me.name, me.role, self.limits.users_per_page);
            } else {
                let event = ServerMsg::Joined {
                    room: b(&room.name),
                    name: b(&me.name),
                    role: me.role,
                };
                self.delivery.deliver(&state.members, &event, None);
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
            user_count: state.user_count(),
            history,
            epoch: state.epoch.clone(),
            seq: state.seq,
            sessions: others.len() + 1,
            resumed,
            more,
        };
        drop(state);
        self.gauges(dir);
        Ok(view)
    }

    /// Removes `me` from `room`, announcing `how` to those who stay; false if not a member.
    pub(super) fn leave_locked(
        &self,
        dir: &mut Directory,
        me: &Member,
        room: &Arc<Room>,
        how: &ServerMsg<'_>,
    ) -> bool {
        let others = dir.others(me);
        let mut state = lock(&room.state);
        if !state.remove_member(me.conn) {
            return false;
        }
        if state.has_any(&others) {
            // The user is still here on another connection.
            state.extra -= 1;
            return true;
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
        self.delivery.deliver(&state.members, how, None);
        true
    }

    /// The room's presence batch, started if the room is past `presence_batch_over`: `None`
    /// means joins and leaves are told one by one. Once a batch holds something, everything
    /// waits for it, so that members see changes in the order they happened.
    pub(super) fn batch<'s>(
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
    pub(super) fn visible_room(&self, me: &Member, room: &str) -> Result<Arc<Room>, Refusal> {
        let Some(r) = self.room(room) else {
            return Err(Refusal::no_such_room(room));
        };
        if !lock(&r.state).members.iter().any(|m| m.conn == me.conn) {
            return Err(Refusal::not_in_room(room));
        }
        Ok(r)
    }

    /// Announces the presence batches gathered since the last tick (`Broker::tick`).
    pub(super) fn announce_presence(&self) {
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
                        room_role: None,
                    })
                    .collect(),
                left: batch.left.iter().map(|n| b(n)).collect(),
                unlisted: batch.unlisted,
                user_count: state.user_count(),
            };
            self.delivery.deliver(&state.members, &event, None);
        }
    }
}

/// The creator of rooms loaded from the store: no client's address.
pub(super) const LOADED: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// A fresh epoch for a room whose seq numbering starts now.
pub(super) fn new_epoch() -> Arc<str> {
    format!("{:016x}", fastrand::u64(..)).into()
}

impl Room {
    pub(super) fn new(name: &str, creator: Option<IpAddr>, epoch: Arc<str>, seq: u64) -> Room {
        Room {
            name: name.into(),
            creator,
            state: Mutex::new(RoomState {
                members: Vec::new(),
                last_active: Instant::now(),
                seq,
                history: VecDeque::new(),
                history_bytes: 0,
                hot: Vec::new(),
                recalling: Vec::new(),
                epoch,
                batch: None,
                extra: 0,
            }),
        }
    }
}

impl RoomState {
    /// Removes a connection from the members (a leave or a kick); false if it was not one.
    pub(super) fn remove_member(&mut self, conn: crate::hub::ConnId) -> bool {
        let Some(pos) = self.members.iter().position(|m| m.conn == conn) else {
            return false;
        };
        self.members.swap_remove(pos);
        self.members.shrink_if_sparse();
        self.last_active = Instant::now();
        true
    }

    /// The users in the room (a user connected twice counts once).
    pub(super) fn user_count(&self) -> usize {
        self.members.len() - self.extra
    }

    /// Whether any of `conns` is a member.
    pub(super) fn has_any(&self, conns: &[ConnId]) -> bool {
        !conns.is_empty() && self.members.iter().any(|m| conns.contains(&m.conn))
    }

    /// The first `page` users by name, without sorting the whole room.
    pub(super) fn first_users(&self, page: usize) -> Vec<(Arc<str>, Role)> {
        let mut first: Vec<&Member> = self.members.iter().collect();
        // Enough members to hold `page` users, however many connections some have.
        let enough = page + self.extra;
        if first.len() > enough {
            first.select_nth_unstable_by(enough, |a, b| name_order(&a.name, &b.name));
            first.truncate(enough);
        }
        let mut users: Vec<_> = first.iter().map(|m| (m.name.clone(), m.role)).collect();
        sort_by_name(&mut users);
        dedup_users(&mut users);
        users.truncate(page);
        users
    }

    pub(super) fn user_list(&self) -> Vec<(Arc<str>, Role)> {
        let mut users: Vec<_> = self
            .members
            .iter()
            .map(|m| (m.name.clone(), m.role))
            .collect();
        sort_by_name(&mut users);
        dedup_users(&mut users);
        users
    }
}

/// One entry per user in a list sorted by name (a user's connections sort together).
fn dedup_users(users: &mut Vec<(Arc<str>, Role)>) {
    users.dedup_by(|b, a| a.0.eq_ignore_ascii_case(&b.0));
}

/// Case-insensitive name order without allocating a lowercase key per comparison.
pub(crate) fn sort_by_name(users: &mut [(Arc<str>, Role)]) {
    users.sort_unstable_by(|(a, _), (b, _)| name_order(a, b));
}
