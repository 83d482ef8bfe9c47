//! The node's one delivery path: its pub/sub connection, subscribed to its own channel, the
//! cluster-wide one and every room with members here, handing what arrives to
//! `Delivery::deliver` (the sender's own node gets its messages back the same way, so every
//! member sees the order Redis assigned).
//!
//! **No silent holes.** Each node remembers the last seq it delivered per room; a gap is filled
//! from the room's stream, and if the stream no longer holds it (or the epoch changed: Redis
//! forgot the room, or restarted empty) members get `resync`. After a lost subscription the node
//! catches every room up before it says it is ready again.
//!
//! **What Redis says is checked** (anyone who can publish to Redis can write to these channels;
//! docs/SECURITY.md): an envelope larger than any chat event can make, or one that does not
//! parse, is dropped; a room message numbered far past anything this node has seen is checked
//! against the room's real seq before it moves this node's numbering, so one forged envelope
//! cannot silence a room.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::warn;

use super::envelope::Envelope;
use super::link::{Fail, next_backoff};
use super::{Entries, Here, Inner, Sub, entry_seq, except_conn, lock, now_ms};
use crate::hub::Member;
use crate::protocol::{self, ServerMsg, b};

/// Events (and bytes of them) one pending joiner may collect before its reply; past that it
/// gets `resync` instead of the rest.
const PENDING_MAX: usize = 1024;
const PENDING_BYTES: usize = 1 << 20;
/// The largest gap a node fills from a stream in one read; past it, members get `resync`.
pub(super) const FILL_MAX: u64 = 1000;

impl Inner {
    pub(super) fn resync_to(&self, members: &[Member], room: &str, epoch: &str) {
        self.metrics.resyncs.inc();
        let event = ServerMsg::Resync {
            room: b(room),
            epoch: b(epoch),
        };
        self.delivery.deliver(members, &event, None);
    }

    fn dropped(&self, reason: &'static str) {
        self.metrics
            .envelopes_dropped
            .with_label_values(&[reason])
            .inc();
    }

    /// Delivers an event that arrived on `room`'s channel to the members here (pending joiners
    /// keep it for later).
    fn deliver_room(&self, here: &mut Here, raw: &Arc<str>, env: &Envelope<'_>) {
        let Some(event) = &env.e else { return };
        for p in &mut here.pending {
            if p.events.len() < PENDING_MAX && p.bytes + raw.len() <= PENDING_BYTES {
                p.bytes += raw.len();
                p.events.push(raw.clone());
            } else {
                p.overflowed = true;
            }
        }
        if let ServerMsg::Presence { user_count, .. } = event {
            here.count = *user_count;
        }
        let except = except_conn(&env.x, &self.node);
        if let ServerMsg::Typing { from, .. } = event
            && self.settings.hub.owned_names
        {
            // Never to the typer's own other connections.
            let others = here
                .members
                .iter()
                .filter(|m| !m.name().eq_ignore_ascii_case(from));
            self.delivery.deliver(others, event, except);
            return;
        }
        self.delivery.deliver(&here.members, event, except);
    }

    /// A message from a room's channel or stream, in seq order: delivered once, gaps filled
    /// from the stream first.
    async fn on_room(&self, room: &str, raw: Arc<str>) {
        let Some(env) = Envelope::parse(&raw, self.settings.max_envelope) else {
            self.dropped("malformed");
            return;
        };
        if env.t > 0 {
            let lag = now_ms().saturating_sub(env.t);
            self.metrics.pubsub_lag_seconds.observe(lag as f64 / 1000.0);
        }
        if env.seq == 0 {
            let mut local = lock(&self.local);
            if let Some(here) = local.rooms.get_mut(room) {
                self.deliver_room(here, &raw, &env);
            }
            return;
        }
        let (gap, suspicious) = {
            let mut local = lock(&self.local);
            let Some(here) = local.rooms.get_mut(room) else {
                return;
            };
            let new_epoch = !here.epoch.is_empty() && *here.epoch != *env.epoch;
            match here.last_seq {
                Some(last) if !new_epoch && env.seq <= last => return,
                Some(last) if !new_epoch && env.seq > last + 1 => {
                    (Some(last + 1), env.seq > last + FILL_MAX)
                }
                _ => (None, new_epoch),
            }
        };
        if suspicious && !self.plausible(room, &env).await {
            self.dropped("implausible");
            return;
        }
        {
            let mut local = lock(&self.local);
            if let Some(here) = local.rooms.get_mut(room)
                && !here.epoch.is_empty()
                && *here.epoch != *env.epoch
            {
                // Redis forgot the room (or restarted empty): numbering starts again.
                let members = here.members.clone();
                self.resync_to(&members, room, &env.epoch);
                here.epoch = (*env.epoch).into();
                here.last_seq = Some(env.seq - 1);
            }
        }
        if let Some(from) = gap {
            self.fill(room, from, env.seq - 1).await;
        }
        let mut local = lock(&self.local);
        if let Some(here) = local.rooms.get_mut(room) {
            if here.last_seq.is_some_and(|l| env.seq <= l) {
                return;
            }
            if here.epoch.is_empty() {
                here.epoch = (*env.epoch).into();
            }
            self.deliver_room(here, &raw, &env);
            here.last_seq = Some(env.seq);
        }
    }

    /// Whether a room message that moves this node's numbering far (a new epoch, or a seq far
    /// past the last) agrees with what Redis holds for the room; a forged one does not.
    async fn plausible(&self, room: &str, env: &Envelope<'_>) -> bool {
        let read = async {
            let mut conn = self.redis.conn().await?;
            let (seq, epoch): (Option<u64>, Option<String>) = redis::pipe()
                .cmd("GET")
                .arg(self.redis.key("seq", room))
                .cmd("GET")
                .arg(self.redis.key("epoch", room))
                .query_async(&mut conn)
                .await?;
            Ok::<_, Fail>((seq.unwrap_or(0), epoch.unwrap_or_default()))
        };
        match tokio::time::timeout(self.settings.op_timeout, read).await {
            Ok(Ok((seq, epoch))) => env.seq <= seq && *env.epoch == *epoch,
            // Redis cannot say: the gap fill that follows will find out, or resync.
            _ => true,
        }
    }

    /// Delivers `from..=to` of `room` from its stream; what the stream no longer holds (or an
    /// error) becomes a `resync`.
    async fn fill(&self, room: &str, from: u64, to: u64) {
        let read = async {
            let mut conn = self.redis.conn().await?;
            let mut entries: Entries = redis::cmd("XRANGE")
                .arg(self.redis.key("stream", room))
                .arg(from)
                .arg(to)
                .arg("COUNT")
                .arg(FILL_MAX)
                .query_async(&mut conn)
                .await?;
            // A changed message's entry left the stream: its current state stands in for it.
            let (over, _) = self.state(room, from, to).await?;
            for raw in over {
                let seq = Envelope::parse(&raw, self.settings.max_envelope).map(|e| e.seq);
                if let Some(seq) = seq {
                    entries.push((format!("{seq}-0"), vec!["e".into(), raw]));
                }
            }
            entries.sort_by_key(|(id, _)| entry_seq(id));
            Ok::<Entries, Fail>(entries)
        };
        // A gap too large to hold in memory at once is a resync, like one the stream lost.
        let entries = if to - from < FILL_MAX {
            match tokio::time::timeout(self.settings.op_timeout, read).await {
                Ok(Ok(entries)) => entries,
                _ => Vec::new(),
            }
        } else {
            Vec::new()
        };
        let max = self.settings.max_envelope;
        let mut local = lock(&self.local);
        let Some(here) = local.rooms.get_mut(room) else {
            return;
        };
        let complete = entries.first().is_some_and(|(id, _)| entry_seq(id) == from)
            && entries.len() as u64 == to - from + 1;
        if !complete {
            let members = here.members.clone();
            let epoch = here.epoch.clone();
            self.resync_to(&members, room, &epoch);
        }
        for (id, fields) in &entries {
            let seq = entry_seq(id);
            if here.last_seq.is_some_and(|l| seq <= l) {
                continue;
            }
            let Some(raw) = fields.get(1) else { continue };
            let raw: Arc<str> = raw.as_str().into();
            if let Some(env) = Envelope::parse(&raw, max) {
                self.deliver_room(here, &raw, &env);
                self.metrics.gaps_repaired.inc();
            }
        }
        here.last_seq = Some(to);
    }

    /// An envelope on this node's channel (for one connection) or the cluster-wide one.
    fn on_direct(self: &Arc<Self>, raw: &str) {
        let Some(env) = Envelope::parse(raw, self.settings.max_envelope) else {
            self.dropped("malformed");
            return;
        };
        if env.mark {
            let mut local = lock(&self.local);
            let pending = env
                .rooms
                .first()
                .and_then(|room| local.rooms.get_mut(&**room));
            if let Some(p) = pending
                .into_iter()
                .flat_map(|here| here.pending.iter_mut())
                .find(|p| Some(p.conn) == env.to)
            {
                p.events.clear();
                p.bytes = 0;
                p.overflowed = false;
                p.marked = true;
            }
            return;
        }
        if let Some(fence) = env.fence {
            if let Some(done) = lock(&self.fences).remove(&fence) {
                let _ = done.send(!env.absent);
            }
            return;
        }
        let local = lock(&self.local);
        if let (Some(conn), Some(key)) = (env.to, &env.logout) {
            if let Some(mine) = local.members.get(&conn)
                && protocol::name_key(mine.member.name()) == **key
            {
                mine.member.log_out();
            }
            return;
        }
        match (env.to, &env.kick, &env.e) {
            (Some(conn), Some((_, reason)), _) => {
                if let Some(mine) = local.members.get(&conn) {
                    let q = super::ops::Queued {
                        member: mine.member.clone(),
                        op: super::ops::Op::Kicked(reason.to_string()),
                        at: std::time::Instant::now(),
                    };
                    drop(local);
                    self.enqueue(conn, q);
                }
            }
            (Some(conn), None, Some(event)) => {
                let mine = local.members.get(&conn);
                if let Some(mine) = mine {
                    self.delivery
                        .deliver([&mine.member], event, except_conn(&env.x, &self.node));
                }
                if let Some(n) = env.confirm {
                    self.confirm(&env.x, n, mine.is_some());
                }
            }
            (None, _, Some(event @ ServerMsg::Renamed { .. })) => {
                let except = except_conn(&env.x, &self.node);
                let mut audience: Vec<&Member> = Vec::new();
                for room in &env.rooms {
                    let Some(here) = local.rooms.get(&**room) else {
                        continue;
                    };
                    for m in &here.members {
                        if Some(m.conn()) != except
                            && !audience.iter().any(|a| a.conn() == m.conn())
                        {
                            audience.push(m);
                        }
                    }
                }
                self.delivery.deliver(audience, event, None);
            }
            (None, _, Some(event)) => {
                let named = local.members.values().filter(|m| !m.claims.is_empty());
                self.delivery.deliver(named.map(|m| &m.member), event, None);
            }
            _ => {}
        }
    }

    /// After the subscriber (re)subscribed: deliver what each room missed meanwhile. False if
    /// Redis did not answer for some room (the subscriber then starts over).
    async fn catch_up(&self) -> bool {
        let rooms: Vec<(Arc<str>, Option<u64>, Arc<str>)> = lock(&self.local)
            .rooms
            .iter()
            .map(|(r, h)| (r.clone(), h.last_seq, h.epoch.clone()))
            .collect();
        for (room, last, epoch) in rooms {
            let Some(last) = last else { continue };
            let read = async {
                let mut conn = self.redis.conn().await?;
                // A room Redis forgot has no epoch yet: the first to look starts one.
                let (seq, now_epoch): (Option<u64>, Option<String>) = redis::pipe()
                    .cmd("GET")
                    .arg(self.redis.key("seq", &room))
                    .cmd("SET")
                    .arg(self.redis.key("epoch", &room))
                    .arg(super::new_epoch())
                    .arg("NX")
                    .arg("GET")
                    .query_async(&mut conn)
                    .await?;
                let now_epoch = match now_epoch {
                    Some(e) => Some(e),
                    None => {
                        redis::cmd("GET")
                            .arg(self.redis.key("epoch", &room))
                            .query_async(&mut conn)
                            .await?
                    }
                };
                Ok::<_, Fail>((seq.unwrap_or(0), now_epoch.unwrap_or_default()))
            };
            let Ok(Ok((seq, now_epoch))) =
                tokio::time::timeout(self.settings.op_timeout, read).await
            else {
                self.redis.reconnect().await;
                return false;
            };
            if !epoch.is_empty() && *epoch != *now_epoch {
                let mut local = lock(&self.local);
                if let Some(here) = local.rooms.get_mut(&room) {
                    let members = here.members.clone();
                    self.resync_to(&members, &room, &now_epoch);
                    here.epoch = now_epoch.as_str().into();
                    here.last_seq = Some(seq);
                }
            } else if seq > last {
                self.fill(&room, last + 1, seq).await;
            }
        }
        true
    }
}

/// The node's one pub/sub connection: subscribes to its own channel, the cluster-wide one and
/// every room with local members; reconnects with back-off (at most 1 s) and resubscribes, then
/// fills what it missed. Ends when the broker closes.
pub(super) async fn subscriber(inner: Arc<Inner>, mut subs: mpsc::Receiver<Sub>) {
    let mut backoff = Duration::from_millis(50);
    let redis = &inner.redis;
    let node_channel = redis.node_channel(&inner.node);
    let all_channel = redis.all_channel();
    let room_prefix = format!("{}:r:", redis.prefix());
    let deadline = inner.settings.op_timeout;
    loop {
        let pubsub = tokio::select! {
            _ = inner.stop.cancelled() => return,
            p = tokio::time::timeout(deadline, redis.client.get_async_pubsub()) => match p {
                Ok(Ok(p)) => Some(p),
                _ => None,
            },
        };
        if let Some(pubsub) = pubsub {
            let (mut sink, mut stream) = pubsub.split();
            let mut subscribed: HashSet<Arc<str>> = HashSet::new();
            let rooms: Vec<Arc<str>> = lock(&inner.local).rooms.keys().cloned().collect();
            let mut channels = vec![node_channel.clone(), all_channel.clone()];
            channels.extend(rooms.iter().map(|r| redis.room_channel(r)));
            let ok = matches!(
                tokio::time::timeout(deadline, sink.subscribe(&channels)).await,
                Ok(Ok(()))
            );
            if ok {
                backoff = Duration::from_millis(50);
                subscribed.extend(rooms);
                // The command connection may be the one that just died with the subscription:
                // catch up over a new one. A room that cannot be caught up (Redis went away
                // again) means starting over, not a node that says it is ready with a hole.
                redis.reconnect().await;
                if !inner.catch_up().await {
                    warn!("cluster: could not catch up after resubscribing; trying again");
                    if !pause(&inner, &mut subs, &mut backoff).await {
                        return;
                    }
                    continue;
                }
                redis.subscribed.store(true, Ordering::Relaxed);
                // A subscription that died without a word is found within a second (plus the
                // deadline): every half second the node publishes a beat to its own channel (over
                // the command connection, from a task of its own: nothing here waits for Redis),
                // and a subscription that hears nothing, not even those, for a second and a
                // deadline is dead. Its health is what /readyz and `say` go by.
                let mut beat = tokio::time::interval(Duration::from_millis(500));
                beat.tick().await;
                let mut heard = tokio::time::Instant::now();
                loop {
                    tokio::select! {
                        _ = inner.stop.cancelled() => return,
                        msg = stream.next() => {
                            let Some(msg) = msg else { break };
                            heard = tokio::time::Instant::now();
                            let channel = msg.get_channel_name().to_string();
                            let Ok(payload) = msg.get_payload::<String>() else { continue };
                            if let Some(room) = channel.strip_prefix(&room_prefix) {
                                inner.on_room(room, payload.into()).await;
                            } else {
                                inner.on_direct(&payload);
                            }
                        }
                        sub = subs.recv() => match sub {
                            None => return,
                            Some(Sub::Room(room, done)) => {
                                let ok = subscribed.contains(&room)
                                    || matches!(
                                        tokio::time::timeout(deadline, sink.subscribe(redis.room_channel(&room))).await,
                                        Ok(Ok(()))
                                    );
                                if ok {
                                    subscribed.insert(room);
                                } else {
                                    let _ = done.send(false);
                                    break;
                                }
                                let _ = done.send(true);
                            }
                            Some(Sub::Drop(room)) => {
                                if !lock(&inner.local).rooms.contains_key(&room)
                                    && subscribed.remove(&room)
                                    && tokio::time::timeout(deadline, sink.unsubscribe(redis.room_channel(&room))).await.is_err()
                                {
                                    break;
                                }
                            }
                        },
                        _ = beat.tick() => {
                            if heard.elapsed() > Duration::from_secs(1) + deadline {
                                break;
                            }
                            let inner = inner.clone();
                            let channel = node_channel.clone();
                            inner.tasks.clone().spawn(async move {
                                let beat = Envelope::control("").json();
                                let _ = tokio::time::timeout(
                                    inner.settings.op_timeout,
                                    inner.redis.publish(&channel, &beat),
                                )
                                .await;
                            });
                        }
                    }
                }
            }
            warn!("cluster: lost the Redis subscription; reconnecting");
            inner.metrics.resubscribes.inc();
        }
        if !pause(&inner, &mut subs, &mut backoff).await {
            return;
        }
    }
}

/// The subscriber lost (or could not make) its subscription: not ready until it has one again.
/// Waits the back-off (requests for subscriptions meanwhile fail) and doubles it, up to 1 s.
/// False when the broker is closing.
async fn pause(inner: &Inner, subs: &mut mpsc::Receiver<Sub>, backoff: &mut Duration) -> bool {
    inner.redis.subscribed.store(false, Ordering::Relaxed);
    inner.redis.set_up(false);
    let wait = tokio::time::sleep(*backoff);
    tokio::pin!(wait);
    loop {
        tokio::select! {
            _ = inner.stop.cancelled() => return false,
            _ = &mut wait => break,
            sub = subs.recv() => match sub {
                None => return false,
                Some(Sub::Room(_, done)) => { let _ = done.send(false); }
                Some(Sub::Drop(_)) => {}
            },
        }
    }
    *backoff = next_backoff(*backoff);
    true
}
