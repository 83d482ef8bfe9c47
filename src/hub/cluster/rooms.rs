//! Rooms on a cluster node: joining (without a hole: see below), leaving, who is in a room, the
//! list of rooms, history pages, and presence batches for large rooms.
//!
//! **Joining without a hole.** A joiner is added to the local room *pending* before the join
//! script runs: events for the room wait in its entry, and once its `welcome`/`room` is queued
//! they follow, minus what its history already holds. The script publishes a marker to this
//! node's own channel first; the subscriber sees, in the one order Redis publishes in, which
//! events came before the join (and so are in what the script returned).
//!
//! **Presence in large rooms.** A room with more than `limits.presence_batch_over` members does
//! not announce each join and leave: the join, leave and reap scripts queue them in the room's
//! batch in Redis (`P:pres:{room}`), in the order they happen on every node, and a node that
//! queued something flushes the batch on its next tick: one `presence` event (a join and a leave
//! of one member cancel; a page of names, the rest counted) with the room's count at that moment,
//! which is exactly what applying the batches in order gives. The first node to flush takes every
//! node's changes: members hear about one `presence` per room per tick, whatever the crowd and
//! however many nodes.

use std::sync::Arc;

use super::changes;
use super::envelope::Envelope;
use super::link::{Done, Fail};
use super::{Entries, Here, Inner, Local, Pending, Sub, lock, now_ms, value_at};
use crate::hub::{Member, Outcome, Page, Refusal, Resume, RoomView, StoredMessage, Ticket};
use crate::memory::Shrink;
use crate::protocol::{self, ServerMsg, b};

/// How long a room's presence batch waits in Redis for a flush at most (its node died before it
/// flushed): then it is dropped.
pub(super) const PRESENCE_WAITS_MS: u64 = 60_000;

impl Inner {
    pub(super) fn is_in(&self, me: &Member, room: &str) -> bool {
        lock(&self.local)
            .members
            .get(&me.conn())
            .is_some_and(|m| m.rooms.iter().any(|r| &**r == room))
    }

    /// `me`'s user's entry in a room's lex-ordered set of users: the lower-case name first (no
    /// node or connection: one entry per user however many connections are there).
    pub(super) fn names_entry(&self, me: &Member) -> String {
        format!(
            "{}|-|0|{}|{}",
            me.name().to_ascii_lowercase(),
            super::role_char(me.role()),
            me.name()
        )
    }

    /// A room's presence entry for a join (`+role|name`).
    pub(super) fn joins_entry(me: &Member) -> String {
        let role = match me.role() {
            protocol::Role::Admin => "admin",
            protocol::Role::User => "user",
        };
        format!("+{role}|{}", me.name())
    }

    /// This node queued a change in `room`'s presence batch: it flushes it on its next tick.
    fn presence_due(&self, room: &Arc<str>) {
        lock(&self.presence_due).insert(room.clone());
    }

    /// Announces the presence batches of `rooms`, in one round trip.
    pub(super) async fn flush_presence(&self, rooms: &[Arc<str>]) -> Done {
        let redis = &self.redis;
        let x = format!("{}|0", self.node);
        let head = Envelope::control(&x).json();
        // The envelope without its closing brace, then its event.
        let head = format!("{},\"e\":", &head[..head.len() - 1]);
        let mut pipe = redis::pipe();
        pipe.load_script(&redis.scripts.presence).ignore();
        for room in rooms {
            let mut call = redis.scripts.presence.prepare_invoke();
            call.key(redis.key("pres", room))
                .key(redis.key("names", room))
                .arg(&head)
                .arg(self.settings.hub.users_per_page)
                .arg(&**room)
                .arg(redis.room_channel(room));
            pipe.invoke_script(&call).ignore();
        }
        let mut conn = redis.conn().await?;
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Joins `room` and answers (welcome if `hello`). False, without answering, if a hello found
    /// the room could not be created.
    pub(super) async fn join(
        &self,
        me: &Member,
        t: Ticket,
        room: &str,
        resume: Option<&Resume>,
        hello: bool,
    ) -> Result<bool, Fail> {
        let room: Arc<str> = room.into();
        let again = self.is_in(me, &room);
        if !again {
            self.subscribe(&room).await?;
            let mut local = lock(&self.local);
            let here = local.rooms.entry(room.clone()).or_default();
            here.pending.push(Pending {
                conn: me.conn(),
                events: Vec::new(),
                bytes: 0,
                overflowed: false,
                marked: false,
            });
        }
        let redis = &self.redis;
        let x = self.me_id(me);
        let joined = Envelope::new(
            &x,
            ServerMsg::Joined {
                room: b(&room),
                name: b(me.name()),
                role: me.role(),
            },
        )
        .json();
        let default = &*room == protocol::DEFAULT_ROOM;
        let creator = if default {
            String::new()
        } else {
            me.address().to_string()
        };
        let (since, client_epoch) = resume.map_or((-1, ""), |r| (r.since as i64, &*r.epoch));
        let mut marker = Envelope::control(&x);
        marker.to = Some(me.conn());
        marker.rooms = vec![b(&room)];
        marker.mark = true;
        let marker = marker.json();
        let now = now_ms();
        let mut conn = redis.conn().await?;
        let mut seeded = false;
        let reply = loop {
            let reply: Vec<redis::Value> = redis
                .scripts
                .join
                .key(redis.key("members", &room))
                .key(redis.key("names", &room))
                .key(redis.global("rooms"))
                .key(redis.key("seq", &room))
                .key(redis.key("stream", &room))
                .key(redis.key("epoch", &room))
                .key(redis.global("created"))
                .key(redis.key("sbytes", &room))
                .key(redis.key("pres", &room))
                .key(redis.key("ucount", &room))
                .key(redis.key("over", &room))
                .key(redis.key("rx", &room))
                .arg(self.entry(me))
                .arg(now + self.settings.presence_ttl_ms)
                .arg(now)
                .arg(super::new_epoch())
                .arg(self.settings.hub.history_on_join)
                .arg(redis.room_channel(&room))
                .arg(if again { "" } else { joined.as_str() })
                .arg(&*room)
                .arg(&creator)
                .arg(self.settings.hub.max_rooms)
                .arg(self.settings.hub.max_rooms_per_ip)
                .arg(since)
                .arg(client_epoch)
                .arg(self.settings.hub.resume_max + 1)
                .arg(self.settings.hub.resume_max)
                .arg(redis.node_channel(&self.node))
                .arg(&marker)
                .arg(self.settings.hub.users_per_page)
                .arg(me.name().to_ascii_lowercase())
                .arg(self.settings.hub.presence_batch_over as i64)
                .arg(Self::joins_entry(me))
                .arg(PRESENCE_WAITS_MS)
                .arg(self.durable())
                .arg(self.names_entry(me))
                .invoke_async(&mut conn)
                .await?;
            if !seeded && value_at::<String>(&reply, 1).as_deref() == Some("seed") {
                self.seed(Some(&room)).await?;
                seeded = true;
                continue;
            }
            break reply;
        };
        let epoch: String = value_at(&reply, 0).unwrap_or_default();
        if epoch.is_empty() {
            let why: String = value_at(&reply, 1).unwrap_or_default();
            self.out_of_room(me, &room);
            if hello {
                return Ok(false);
            }
            let refusal = if why == "mine" {
                Refusal::too_many_rooms_created()
            } else {
                Refusal::server_full()
            };
            me.answer(t, refusal.into());
            return Ok(true);
        }
        let seq: u64 = value_at(&reply, 1).unwrap_or(0);
        let page: Vec<String> = value_at(&reply, 2).unwrap_or_default();
        let entries: Entries = value_at(&reply, 3).unwrap_or_default();
        let exact = value_at::<i64>(&reply, 4).unwrap_or(0) == 1;
        let count: usize = value_at(&reply, 5).unwrap_or(0);
        let batched = value_at::<i64>(&reply, 6).unwrap_or(0) == 1;
        // Changed messages in place of their entries, with their reactions (read in the script).
        let over: Vec<String> = value_at(&reply, 7).unwrap_or_default();
        let rx: Vec<String> = value_at(&reply, 8).unwrap_or_default();
        let mut history: Vec<Arc<StoredMessage>> =
            changes::merge(&entries, &over, &rx, self.settings.max_envelope)
                .into_iter()
                .map(Arc::new)
                .collect();
        let mut more = false;
        if exact {
            if history.len() as u64 > self.settings.hub.resume_max {
                history.truncate(self.settings.hub.resume_max as usize);
                more = true;
            }
        } else {
            let n = self.settings.hub.history_on_join;
            let extra = history.len().saturating_sub(n);
            history.drain(..extra);
        }
        let resumed = match resume {
            Some(r) if !exact => {
                // Past the stream: resumed if the store reaches back to it (the client pages
                // forward with `history after`), else the latest, topped up from the store.
                let reachable = *r.epoch == *epoch
                    && r.since <= seq
                    && seq - r.since <= self.settings.hub.resume_max
                    && self
                        .stored_from(&room)
                        .await
                        .is_some_and(|f| f <= r.since + 1);
                if reachable {
                    history.clear();
                    more = true;
                } else {
                    self.top_up(&room, &mut history, seq).await;
                }
                Some(reachable)
            }
            Some(_) => Some(true),
            None => {
                self.top_up(&room, &mut history, seq).await;
                None
            }
        };
        let last_seq = history.last().map_or(seq, |m| m.seq.max(seq));
        let users = super::users_of(
            page.iter()
                .filter_map(|e| e.split_once('|').map(|(_, e)| e)),
        );
        let view = RoomView {
            room: room.clone(),
            users,
            user_count: count,
            history,
            epoch: epoch.as_str().into(),
            seq: last_seq,
            sessions: lock(&self.local)
                .members
                .get(&me.conn())
                .map_or(1, |m| m.sessions),
            resumed,
            more,
        };
        let outcome = if hello {
            Outcome::Welcome(view)
        } else {
            Outcome::Joined(view)
        };
        if again {
            me.answer(t, outcome);
        } else if !self.activate(me, t, &room, outcome, &epoch, last_seq, count, batched) {
            // Gone before its reply: leave nothing behind.
            self.abandon(me, &room, hello).await;
        }
        Ok(true)
    }

    /// Queues a joiner's reply, then what arrived for it meanwhile, and makes it a member here.
    /// False if the connection is gone.
    #[allow(clippy::too_many_arguments)]
    fn activate(
        &self,
        me: &Member,
        t: Ticket,
        room: &Arc<str>,
        outcome: Outcome,
        epoch: &str,
        seq: u64,
        count: usize,
        batched: bool,
    ) -> bool {
        let mut local = lock(&self.local);
        let Local { members, rooms } = &mut *local;
        let Some(here) = rooms.get_mut(room) else {
            return false;
        };
        let Some(at) = here.pending.iter().position(|p| p.conn == me.conn()) else {
            return false;
        };
        let mut pending = here.pending.swap_remove(at);
        if !pending.marked {
            // The marker is still on its way: everything held came before the join.
            pending.events.clear();
            pending.overflowed = false;
        }
        if here.last_seq.is_none() || here.epoch.is_empty() {
            here.last_seq = Some(here.last_seq.unwrap_or(0).max(seq));
            here.epoch = epoch.into();
        }
        here.count = count;
        if !me.answer(t, outcome) {
            return false;
        }
        let x = self.me_id(me);
        if pending.overflowed {
            self.resync_to(std::slice::from_ref(me), room, &here.epoch);
        }
        let max = self.settings.max_envelope;
        for raw in &pending.events {
            let Some(env) = Envelope::parse(raw, max) else {
                continue;
            };
            if env.x == x || (env.seq > 0 && env.seq <= seq) {
                continue;
            }
            if let Some(event) = &env.e {
                self.delivery.deliver([me], event, None);
            }
        }
        here.members.push(me.clone());
        if batched {
            lock(&self.presence_due).insert(room.clone());
        }
        if let Some(mine) = members.get_mut(&me.conn()) {
            mine.rooms.push(room.clone());
        }
        true
    }

    /// A hello or join failed midway: take back what it may have done, best effort (what Redis
    /// keeps expires with its TTL anyway).
    pub(super) async fn abandon(&self, me: &Member, room: &str, hello: bool) {
        if self.is_in(me, room) {
            // A join of a room one was already in: nothing to take back.
            return;
        }
        self.out_of_room(me, room);
        let undo = async {
            self.leave_script(me, room, None).await?;
            if hello {
                self.release(me).await?;
            }
            Ok::<(), Fail>(())
        };
        let _ = tokio::time::timeout(self.settings.op_timeout, undo).await;
    }

    async fn subscribe(&self, room: &Arc<str>) -> Done {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.subs
            .send(Sub::Room(room.clone(), tx))
            .await
            .map_err(|_| Fail::Timeout)?;
        match rx.await {
            Ok(true) => Ok(()),
            _ => Err(Fail::Timeout),
        }
    }

    /// Leaves `room` (announcing `how`, or `left`); false if `me` was not in it here.
    pub(super) async fn leave(
        &self,
        me: &Member,
        room: &str,
        how: Option<ServerMsg<'_>>,
    ) -> Result<bool, Fail> {
        if !self.is_in(me, room) {
            return Ok(false);
        }
        if self.leave_script(me, room, how).await? {
            self.presence_due(&room.into());
        }
        self.forget(me, room);
        Ok(true)
    }

    /// Takes `me` out of `room` in Redis, announcing `how` (or `left`) if it was there, unless
    /// the room batches presence (true: the script queued the leave in the room's batch).
    pub(super) async fn leave_script(
        &self,
        me: &Member,
        room: &str,
        how: Option<ServerMsg<'_>>,
    ) -> Result<bool, Fail> {
        let redis = &self.redis;
        let x = self.me_id(me);
        let event = how.unwrap_or(ServerMsg::Left {
            room: b(room),
            name: b(me.name()),
        });
        let env = Envelope::new(&x, event).json();
        let mut conn = redis.conn().await?;
        let (_, batched): (i64, i64) = redis
            .scripts
            .leave
            .key(redis.key("members", room))
            .key(redis.key("names", room))
            .key(redis.global("rooms"))
            .key(redis.global("created"))
            .key(redis.key("seq", room))
            .key(redis.key("stream", room))
            .key(redis.key("epoch", room))
            .key(redis.key("sbytes", room))
            .key(redis.key("pres", room))
            .key(redis.key("ucount", room))
            .key(redis.key("over", room))
            .key(redis.key("rx", room))
            .arg(self.entry(me))
            .arg(redis.room_channel(room))
            .arg(env)
            .arg(room)
            .arg(me.name().to_ascii_lowercase())
            .arg(self.settings.hub.presence_batch_over as i64)
            .arg(self.settings.room_ttl_secs)
            .arg(format!("-{}", me.name()))
            .arg(PRESENCE_WAITS_MS)
            .invoke_async(&mut conn)
            .await?;
        Ok(batched == 1)
    }

    /// Takes `me` out of `room` here (dropping the room's channel once nobody here needs it).
    pub(super) fn forget(&self, me: &Member, room: &str) {
        let mut local = lock(&self.local);
        if let Some(mine) = local.members.get_mut(&me.conn()) {
            mine.rooms.retain(|r| &**r != room);
        }
        drop(local);
        self.out_of_room(me, room);
    }

    /// Takes `me` out of `room`'s local list, member or pending joiner; once nobody here is in
    /// the room (and no presence batch waits to go out), the room and its channel go.
    pub(super) fn out_of_room(&self, me: &Member, room: &str) {
        let mut local = lock(&self.local);
        let empty = local.rooms.get_mut(room).is_some_and(|here| {
            here.members.retain(|m| m.conn() != me.conn());
            here.members.shrink_if_sparse();
            here.pending.retain(|p| p.conn != me.conn());
            here.is_unused()
        });
        if empty {
            local.rooms.remove(room);
            local.rooms.shrink_if_sparse();
            drop(local);
            let _ = self.subs.try_send(Sub::Drop(room.into()));
        }
    }

    /// `not_in_room` for a room that exists (members or history), `no_such_room` otherwise.
    pub(super) async fn not_here(&self, room: &str) -> Result<Outcome, Fail> {
        let mut conn = self.redis.conn().await?;
        let exists: u64 = redis::cmd("EXISTS")
            .arg(self.redis.key("members", room))
            .arg(self.redis.key("seq", room))
            .query_async(&mut conn)
            .await?;
        Ok(if exists > 0 || room == protocol::DEFAULT_ROOM {
            Refusal::not_in_room(room)
        } else {
            Refusal::no_such_room(room)
        }
        .into())
    }

    pub(super) async fn who(&self, room: &Arc<str>) -> Result<Outcome, Fail> {
        let mut conn = self.redis.conn().await?;
        let live: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.redis.key("members", room))
            .arg(now_ms())
            .arg("+inf")
            .query_async(&mut conn)
            .await?;
        Ok(Outcome::Who {
            room: room.clone(),
            users: super::users_of(live.iter().map(String::as_str)),
        })
    }

    pub(super) async fn rooms(&self) -> Result<Outcome, Fail> {
        let redis = &self.redis;
        let mut conn = redis.conn().await?;
        let flat: Vec<redis::Value> = redis
            .scripts
            .rooms
            .key(redis.global("rooms"))
            .arg(now_ms())
            .arg(redis.prefix())
            .invoke_async(&mut conn)
            .await?;
        let mut rooms: Vec<(Arc<str>, usize)> = flat
            .chunks(2)
            .filter_map(|pair| {
                let name: String = redis::from_redis_value_ref(&pair[0]).ok()?;
                let count: usize = redis::from_redis_value_ref(pair.get(1)?).ok()?;
                Some((name.into(), count))
            })
            .collect();
        if !rooms.iter().any(|(r, _)| &**r == protocol::DEFAULT_ROOM) {
            rooms.push((protocol::DEFAULT_ROOM.into(), 0));
        }
        rooms.sort();
        Ok(Outcome::Rooms(rooms))
    }

    pub(super) async fn history(&self, room: &str, page: Page) -> Result<Outcome, Fail> {
        let mut conn = self.redis.conn().await?;
        let key = self.redis.key("stream", room);
        let count = page.limit + 1;
        let (mut entries, forward): (Entries, bool) = match page.after {
            Some(after) => (
                redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(after + 1)
                    .arg("+")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut conn)
                    .await?,
                true,
            ),
            None => {
                let end = match page.before {
                    Some(0) | Some(1) => return Ok(empty_history(room)),
                    Some(before) => format!("{}", before - 1),
                    None => "+".into(),
                };
                (
                    redis::cmd("XREVRANGE")
                        .arg(&key)
                        .arg(end)
                        .arg("-")
                        .arg("COUNT")
                        .arg(count)
                        .query_async(&mut conn)
                        .await?,
                    false,
                )
            }
        };
        let full = entries.len() > page.limit;
        entries.truncate(page.limit);
        if !forward {
            entries.reverse();
        }
        // Changed messages and reactions in the span the page covers.
        let top = page.before.map_or(i64::MAX as u64, |b| b.saturating_sub(1));
        let (lo, hi) = match (page.after, changes::span(&entries)) {
            (Some(after), Some((_, hi))) if full => (after + 1, hi),
            (Some(after), _) => (after + 1, i64::MAX as u64),
            (None, Some((lo, _))) if full => (lo, top),
            (None, _) => (0, top),
        };
        let (over, rx) = self.state(room, lo, hi).await?;
        let max = self.settings.max_envelope;
        let mut merged = changes::merge(&entries, &over, &rx, max);
        let mut more = full || merged.len() > page.limit;
        let extra = merged.len().saturating_sub(page.limit);
        if forward {
            merged.truncate(page.limit);
        } else {
            merged.drain(..extra);
        }
        let mut messages: Vec<Arc<StoredMessage>> = merged.into_iter().map(Arc::new).collect();
        self.continue_page(room, &page, &mut messages, &mut more)
            .await?;
        Ok(Outcome::History {
            room: room.into(),
            messages,
            more,
        })
    }
}

impl Here {
    /// Nobody here is in it or joining it.
    pub(super) fn is_unused(&self) -> bool {
        self.members.is_empty() && self.pending.is_empty()
    }
}

fn empty_history(room: &str) -> Outcome {
    Outcome::History {
        room: room.into(),
        messages: Vec::new(),
        more: false,
    }
}
