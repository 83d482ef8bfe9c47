//! The hub: who is online, which rooms exist, and the one place messages fan out.
//!
//! Connection tasks call the hub synchronously; nothing here awaits, so no lock is ever held across an
//! `.await`. Locks are taken in one order only: the directory (users and rooms), then a room. Saying
//! something in a room takes only that room's lock, because a session keeps an `Arc<Room>` for each
//! room it is in. Every broadcast is encoded once and the same bytes are queued to every recipient's
//! [`Mailbox`]; publishing never waits on a recipient.
//!
//! A cross-node broker would sit behind this type's methods; connection code only sees these calls.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::mailbox::{Class, Frame, Mailbox};
use crate::metrics::{Fanout, Metrics};
use crate::protocol::{self, Role, ServerMsg};

/// Identifies one connection for the life of the process.
pub type ConnId = u64;

/// One online user as the hub and rooms see them.
#[derive(Debug, Clone)]
pub struct Member {
    /// The connection this user is on.
    pub conn: ConnId,
    /// Display name (case preserved).
    pub name: Arc<str>,
    /// Role.
    pub role: Role,
    /// A plain-text session: gets one-line renderings, never JSON.
    pub plain: bool,
    /// Where frames for this user go.
    pub mailbox: Arc<Mailbox>,
}

/// Limits the hub enforces.
#[derive(Debug, Clone)]
pub struct HubLimits {
    /// Messages kept per room.
    pub history_size: usize,
    /// Messages included when joining.
    pub history_on_join: usize,
    /// Rooms that may exist at once.
    pub max_rooms: usize,
}

/// Shared state of the chat.
#[derive(Debug)]
pub struct Hub {
    directory: Mutex<Directory>,
    next_message_id: AtomicU64,
    next_conn_id: AtomicU64,
    limits: HubLimits,
    metrics: Metrics,
}

#[derive(Debug, Default)]
struct Directory {
    /// Online users by folded name.
    users: HashMap<String, Member>,
    /// Rooms with members or history, by normalised name.
    rooms: HashMap<Arc<str>, Arc<Room>>,
}

/// A room: its members and recent history.
#[derive(Debug)]
pub struct Room {
    name: Arc<str>,
    state: Mutex<RoomState>,
}

#[derive(Debug)]
struct RoomState {
    members: Vec<Member>,
    /// Last join, leave or message: the least recently active empty room is evicted first.
    last_active: Instant,
    plain_members: usize,
    seq: u64,
    /// (seq, encoded `message` frame), oldest first.
    history: VecDeque<(u64, Utf8Bytes)>,
    history_size: usize,
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
}

/// Why a `hello` or `join` could not be carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubError {
    /// The name is in use (case-insensitively).
    NameTaken,
    /// The server already has `max_rooms` rooms.
    TooManyRooms,
}

/// What a joiner sees of a room.
#[derive(Debug)]
pub struct JoinedRoom {
    /// The room, to keep for later requests.
    pub room: Arc<Room>,
    /// Members including the joiner, sorted by name.
    pub users: Vec<(Arc<str>, Role)>,
    /// Most recent message frames, oldest first.
    pub history: Vec<Utf8Bytes>,
    /// The joiner was already a member (nothing was announced).
    pub already_member: bool,
}

/// Receipt for a message the hub accepted.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// Server-assigned message id.
    pub id: u64,
    /// Per-room sequence number (`None` for PMs).
    pub seq: Option<u64>,
    /// Server timestamp.
    pub ts: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a hub lock cannot leave the data half-updated in a way later callers
    // cannot handle (every update is a single insert/remove), so keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// An empty hub.
    pub fn new(limits: HubLimits, metrics: Metrics) -> Hub {
        Hub {
            directory: Mutex::new(Directory::default()),
            next_message_id: AtomicU64::new(1),
            next_conn_id: AtomicU64::new(1),
            limits,
            metrics,
        }
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes `member.name` and joins `room` in one step; on failure nothing is taken.
    pub fn hello(&self, member: &Member, room: &str) -> Result<JoinedRoom, HubError> {
        let mut dir = lock(&self.directory);
        let key = protocol::fold_name(&member.name);
        if dir.users.contains_key(&key) {
            return Err(HubError::NameTaken);
        }
        let joined = self.join_locked(&mut dir, member, room)?;
        dir.users.insert(key, member.clone());
        self.metrics.users_online.set(dir.users.len() as i64);
        Ok(joined)
    }

    /// Joins `room` (creating it), announcing the joiner to the other members.
    pub fn join(&self, member: &Member, room: &str) -> Result<JoinedRoom, HubError> {
        let mut dir = lock(&self.directory);
        self.join_locked(&mut dir, member, room)
    }

    fn join_locked(
        &self,
        dir: &mut Directory,
        member: &Member,
        room: &str,
    ) -> Result<JoinedRoom, HubError> {
        let room = match dir.rooms.get(room) {
            Some(r) => r.clone(),
            None => {
                if dir.rooms.len() >= self.limits.max_rooms && !dir.evict_idle_room() {
                    return Err(HubError::TooManyRooms);
                }
                let r = Arc::new(Room::new(room, self.limits.history_size));
                dir.rooms.insert(r.name.clone(), r.clone());
                r
            }
        };
        let mut state = lock(&room.state);
        let already_member = state.members.iter().any(|m| m.conn == member.conn);
        if !already_member {
            state.last_active = Instant::now();
            let json = protocol::encode(&ServerMsg::Joined {
                room: &room.name,
                name: &member.name,
                role: member.role,
            });
            let fanout = state.publish(
                json,
                || Some(protocol::plain::joined(&member.name)),
                Class::Presence,
                member.conn,
            );
            self.metrics.record(Class::Presence, fanout);
            state.members.push(member.clone());
            if member.plain {
                state.plain_members += 1;
            }
        }
        let users = state.user_list();
        let skip = state
            .history
            .len()
            .saturating_sub(self.limits.history_on_join);
        let history = state
            .history
            .iter()
            .skip(skip)
            .map(|(_, f)| f.clone())
            .collect();
        drop(state);
        self.metrics.rooms.set(dir.rooms.len() as i64);
        Ok(JoinedRoom {
            room,
            users,
            history,
            already_member,
        })
    }

    /// Leaves a room, announcing it to the remaining members; an empty room is forgotten.
    pub fn leave(&self, member: &Member, room: &Arc<Room>) {
        let mut dir = lock(&self.directory);
        self.leave_locked(&mut dir, member, room);
        self.metrics.rooms.set(dir.rooms.len() as i64);
    }

    fn leave_locked(&self, dir: &mut Directory, member: &Member, room: &Arc<Room>) {
        let mut state = lock(&room.state);
        if !state.remove_member(member.conn) {
            return;
        }
        if state.members.is_empty() {
            // An empty room with history stays, so people who come back can read it; one
            // without history has nothing worth keeping.
            let forget = state.history.is_empty();
            drop(state);
            if forget
                && dir
                    .rooms
                    .get(&room.name)
                    .is_some_and(|r| Arc::ptr_eq(r, room))
            {
                dir.rooms.remove(&room.name);
            }
            return;
        }
        let json = protocol::encode(&ServerMsg::Left {
            room: &room.name,
            name: &member.name,
        });
        let fanout = state.publish(
            json,
            || Some(protocol::plain::left(&member.name)),
            Class::Presence,
            member.conn,
        );
        self.metrics.record(Class::Presence, fanout);
    }

    /// Removes a user from every room and frees the name.
    pub fn disconnect(&self, member: &Member, rooms: &[Arc<Room>]) {
        let mut dir = lock(&self.directory);
        for room in rooms {
            self.leave_locked(&mut dir, member, room);
        }
        let key = protocol::fold_name(&member.name);
        if dir.users.get(&key).is_some_and(|m| m.conn == member.conn) {
            dir.users.remove(&key);
        }
        self.metrics.users_online.set(dir.users.len() as i64);
        self.metrics.rooms.set(dir.rooms.len() as i64);
    }

    /// Says `text` in `room` from `from`: stored in history and queued to every other member.
    /// `None` if `from` is not a member.
    pub fn say(&self, room: &Room, from: &Member, text: &str, action: bool) -> Option<Receipt> {
        let mut state = lock(&room.state);
        if !state.members.iter().any(|m| m.conn == from.conn) {
            return None;
        }
        state.seq += 1;
        state.last_active = Instant::now();
        let seq = state.seq;
        let id = self.next_message_id.fetch_add(1, Ordering::Relaxed);
        let ts = protocol::timestamp();
        let json = protocol::encode(&ServerMsg::Message {
            id,
            seq,
            ts: &ts,
            room: &room.name,
            from: &from.name,
            role: from.role,
            text,
            action,
        });
        if state.history_size > 0 {
            if state.history.len() == state.history_size {
                state.history.pop_front();
            }
            state.history.push_back((seq, json.clone()));
        }
        let fanout = state.publish(
            json,
            || Some(protocol::plain::message(&from.name, text, action)),
            Class::Chat,
            from.conn,
        );
        let recipients = state.members.len() - 1;
        drop(state);
        self.metrics.record(Class::Chat, fanout);
        self.metrics.fanout_recipients.observe(recipients as f64);
        Some(Receipt {
            id,
            seq: Some(seq),
            ts,
        })
    }

    /// Sends a private message; returns the recipient's display name with the receipt.
    pub fn pm(
        &self,
        from: &Member,
        to: &str,
        text: &str,
        action: bool,
    ) -> Option<(Arc<str>, Receipt)> {
        let target = self.user(to)?;
        let id = self.next_message_id.fetch_add(1, Ordering::Relaxed);
        let ts = protocol::timestamp();
        let frame = if target.plain {
            protocol::plain::pm(&from.name, text, action)
        } else {
            protocol::encode(&ServerMsg::Pm {
                id,
                ts: &ts,
                from: &from.name,
                role: from.role,
                to: &target.name,
                text,
                action,
            })
        };
        self.metrics.record_push(
            Class::Chat,
            target.mailbox.push(&Frame::text(&frame), Class::Chat),
        );
        Some((target.name, Receipt { id, seq: None, ts }))
    }

    /// Removes `name` from every room (announcing `kicked` instead of `left`), frees the name, and
    /// tells their connection to close. Returns their display name, or `None` if nobody is online
    /// under that name.
    pub fn kick(&self, name: &str, by: &Member, reason: &str) -> Option<Arc<str>> {
        let mut dir = lock(&self.directory);
        let key = protocol::fold_name(name);
        let target = dir.users.remove(&key)?;
        let mut forget = Vec::new();
        for room in dir.rooms.values() {
            let mut state = lock(&room.state);
            if !state.remove_member(target.conn) {
                continue;
            }
            if state.members.is_empty() {
                if state.history.is_empty() {
                    forget.push(room.name.clone());
                }
                continue;
            }
            let json = protocol::encode(&ServerMsg::Kicked {
                room: &room.name,
                name: &target.name,
                by: &by.name,
                reason,
            });
            let fanout = state.publish(
                json,
                || Some(protocol::plain::kicked(&target.name, &by.name, reason)),
                Class::Chat,
                target.conn,
            );
            self.metrics.record(Class::Chat, fanout);
        }
        for name in forget {
            dir.rooms.remove(&name);
        }
        self.metrics.users_online.set(dir.users.len() as i64);
        self.metrics.rooms.set(dir.rooms.len() as i64);
        drop(dir);
        target.mailbox.kick(reason.to_string());
        Some(target.name)
    }

    /// The online user with this name (case-insensitively).
    pub fn user(&self, name: &str) -> Option<Member> {
        lock(&self.directory)
            .users
            .get(&protocol::fold_name(name))
            .cloned()
    }

    /// The room with this normalised name, if it exists.
    pub fn room(&self, name: &str) -> Option<Arc<Room>> {
        lock(&self.directory).rooms.get(name).cloned()
    }

    /// Every room with its member count, sorted by name.
    pub fn rooms(&self) -> Vec<(Arc<str>, usize)> {
        let dir = lock(&self.directory);
        let mut rooms: Vec<_> = dir
            .rooms
            .values()
            .map(|r| (r.name.clone(), lock(&r.state).members.len()))
            .collect();
        drop(dir);
        rooms.sort();
        rooms
    }

    /// Queues one frame to every online user (JSON and plain renderings).
    pub fn broadcast_all(&self, json: &Utf8Bytes, plain: &Utf8Bytes) {
        let (json, plain) = (Frame::text(json), Frame::text(plain));
        let dir = lock(&self.directory);
        let mut fanout = Fanout::default();
        for m in dir.users.values() {
            let frame = if m.plain { &plain } else { &json };
            fanout.add(m.mailbox.push(frame, Class::Chat));
        }
        drop(dir);
        self.metrics.record(Class::Chat, fanout);
    }
}

impl Room {
    fn new(name: &str, history_size: usize) -> Room {
        Room {
            name: name.into(),
            state: Mutex::new(RoomState {
                members: Vec::new(),
                last_active: Instant::now(),
                plain_members: 0,
                seq: 0,
                history: VecDeque::new(),
                history_size,
            }),
        }
    }

    /// The room's normalised name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Members sorted by name.
    pub fn users(&self) -> Vec<(Arc<str>, Role)> {
        lock(&self.state).user_list()
    }

    /// Up to `limit` stored messages with `seq < before`, oldest first.
    pub fn history_page(&self, before: Option<u64>, limit: usize) -> Vec<Utf8Bytes> {
        let state = lock(&self.state);
        let upto = match before {
            Some(b) => state.history.partition_point(|(seq, _)| *seq < b),
            None => state.history.len(),
        };
        let from = upto.saturating_sub(limit);
        state
            .history
            .range(from..upto)
            .map(|(_, f)| f.clone())
            .collect()
    }

    /// Queues an already-encoded JSON frame to every member but `except` (plain sessions get nothing).
    pub fn publish_json(&self, json: Utf8Bytes, class: Class, except: ConnId, metrics: &Metrics) {
        let fanout = lock(&self.state).publish(json, || None, class, except);
        metrics.record(class, fanout);
    }
}

impl RoomState {
    /// Removes a connection from the members (a leave or a kick); false if it was not one.
    fn remove_member(&mut self, conn: ConnId) -> bool {
        let Some(pos) = self.members.iter().position(|m| m.conn == conn) else {
            return false;
        };
        if self.members.swap_remove(pos).plain {
            self.plain_members -= 1;
        }
        self.last_active = Instant::now();
        true
    }

    fn user_list(&self) -> Vec<(Arc<str>, Role)> {
        let mut users: Vec<_> = self
            .members
            .iter()
            .map(|m| (m.name.clone(), m.role))
            .collect();
        // Case-insensitive order without allocating a lowercase key per comparison.
        users.sort_unstable_by(|(a, _), (b, _)| {
            let fold = |c: u8| c.to_ascii_lowercase();
            a.bytes()
                .map(fold)
                .cmp(b.bytes().map(fold))
                .then_with(|| a.cmp(b))
        });
        users
    }

    /// Queues `json` to every JSON member and the plain rendering (made at most once, and only if a
    /// plain member exists) to every plain member, skipping `except`.
    fn publish(
        &self,
        json: Utf8Bytes,
        plain: impl FnOnce() -> Option<Utf8Bytes>,
        class: Class,
        except: ConnId,
    ) -> Fanout {
        let mut fanout = Fanout::default();
        let plain = if self.plain_members > 0 {
            plain().map(|p| Frame::text(&p))
        } else {
            None
        };
        let json = Frame::text(&json);
        for m in &self.members {
            if m.conn == except {
                continue;
            }
            let frame = match (m.plain, &plain) {
                (false, _) => &json,
                (true, Some(p)) => p,
                (true, None) => continue,
            };
            // An overflow is the recipient's problem: its own task sees the mark and disconnects it.
            fanout.add(m.mailbox.push(frame, class));
        }
        fanout
    }
}
