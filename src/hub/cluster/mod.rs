//! The cluster broker: several chatd nodes act as one chat through Redis.
//!
//! Names, room membership, `seq`, recent history and fan-out live in Redis (`scripts` lists the
//! keys); each node keeps only its own members and the rooms they are in, for delivery. One
//! concern per module:
//! - `ops`: each member's operations in order, one task per member, every answer within
//!   `cluster.op_timeout_ms` of the request (`unavailable` when not done, `unconfirmed` when a
//!   message was sent but not confirmed), consecutive `say`s pipelined.
//! - `rooms`: joining without a hole, leaving, `who`, `rooms`, history pages, and presence
//!   batches for large rooms.
//! - `names`: claims (hello, nick), PMs and typing to a user, kicks, fences.
//! - `subscriber`: the one delivery path (pub/sub to [`Delivery::deliver`]), gap filling,
//!   `resync`, catching up after a lost subscription, and checks on what arrives.
//! - `liveness`: the heartbeat: refreshed claims and memberships, reaped ghosts.
//! - `envelope`: what nodes say to each other (versioned JSON); `link`: the connection, scripts,
//!   keys and health; `scripts`: the Lua, one atomic step each.
//!
//! Every task the broker starts (the subscriber, one per member, heartbeats, presence flushes)
//! is on its tracker; [`Broker::close`] stops them and waits.

mod changes;
mod envelope;
mod link;
mod liveness;
mod names;
mod ops;
mod rooms;
mod scripts;
mod stored;
mod subscriber;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use self::link::{Fail, Redis};
use self::ops::{Op, Queued};
use super::{
    Answer, Broker, ConnId, Delivery, HubLimits, Member, Page, Refusal, Resume, StoredMessage,
    Ticket, TypingTo, durable, lock, name_order,
};
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::protocol::{Role, TypingState};
use crate::store::{Store, StoreSettings};

/// The cluster broker (see the module docs).
#[derive(Debug)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

/// The node: what talks to Redis, what it holds locally, and its tasks.
#[derive(Debug)]
struct Inner {
    node: Arc<str>,
    redis: Redis,
    local: Mutex<Local>,
    /// Subscription changes for the subscriber task.
    subs: mpsc::Sender<Sub>,
    delivery: Delivery,
    metrics: Metrics,
    settings: Settings,
    /// Every task the broker starts; `close` waits for them.
    tasks: TaskTracker,
    /// Cancelled by `close`: the subscriber stops.
    stop: CancellationToken,
    /// The last heartbeat started (ms since the broker started), and whether one is running.
    last_beat: AtomicU64,
    beating: AtomicBool,
    /// A presence flush is running.
    flushing: AtomicBool,
    /// Rooms whose presence batch (in Redis) this node added to and flushes on its next tick.
    presence_due: Mutex<HashSet<Arc<str>>>,
    started: Instant,
    /// Woken when the last local member is gone (for `close`).
    idle: tokio::sync::Notify,
    /// Fences this node waits for (see [`Inner::fence`]), and PM confirmations: true once
    /// delivered, false if the recipient was not there.
    fences: Mutex<HashMap<u64, oneshot::Sender<bool>>>,
    next_fence: AtomicU64,
    /// The durable store every node shares (`storage.url`), if the cluster has one.
    store: Option<Arc<Store>>,
    /// How far a numbering Redis lost skips when seeded (`Store::restart_gap`).
    seed_gap: u64,
}

#[derive(Debug, Clone)]
struct Settings {
    op_timeout: Duration,
    name_ttl_ms: u64,
    presence_ttl_ms: u64,
    heartbeat_ms: u64,
    /// Messages each room's Redis stream keeps (`cluster.history_size`), and their bytes.
    history_size: usize,
    history_bytes: usize,
    room_ttl_secs: u64,
    /// The limits both brokers enforce (rooms, pages, resume, presence batching, owned names).
    hub: HubLimits,
    /// The largest envelope any chat event makes; a larger one from Redis is dropped.
    max_envelope: usize,
}

#[derive(Debug, Default)]
struct Local {
    members: HashMap<ConnId, Mine>,
    rooms: HashMap<Arc<str>, Here>,
}

/// A member connected to this node.
#[derive(Debug)]
struct Mine {
    member: Member,
    /// Its operations not started yet, in order, and their bytes (`Op::cost`); a task drains
    /// them while there are any (`running`), so an idle member holds no task and no channel.
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    running: bool,
    /// The claims this connection holds in Redis, as (key, value): its name, and in open mode
    /// its look-alike (empty until its hello took the name).
    claims: Vec<(String, String)>,
    /// The user's connections cluster-wide when its hello claimed the name (for the welcome).
    sessions: usize,
    rooms: Vec<Arc<str>>,
}

/// A room with members on this node.
#[derive(Debug, Default)]
struct Here {
    members: Vec<Member>,
    /// Joiners whose reply is not queued yet, with the events that arrived meanwhile.
    pending: Vec<Pending>,
    /// The last seq delivered here (`None`: not known yet).
    last_seq: Option<u64>,
    epoch: Arc<str>,
    /// The room's member count, cluster-wide, as last heard.
    count: usize,
}

#[derive(Debug)]
struct Pending {
    conn: ConnId,
    events: Vec<Arc<str>>,
    bytes: usize,
    overflowed: bool,
    /// The join script's marker arrived (see [`envelope::Envelope::mark`]).
    marked: bool,
}

#[derive(Debug)]
enum Sub {
    /// Subscribe to a room's channel (answered once subscribed).
    Room(Arc<str>, oneshot::Sender<bool>),
    /// Drop a room's channel if no local member needs it any more.
    Drop(Arc<str>),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn role_char(role: Role) -> char {
    match role {
        Role::Admin => 'a',
        Role::User => 'u',
    }
}

/// `node|conn|role|name`, as members and name claims are stored.
fn parse_entry(entry: &str) -> Option<(&str, ConnId, Role, &str)> {
    let mut parts = entry.splitn(4, '|');
    let node = parts.next()?;
    let conn = parts.next()?.parse().ok()?;
    let role = match parts.next()? {
        "a" => Role::Admin,
        _ => Role::User,
    };
    Some((node, conn, role, parts.next()?))
}

/// The seq of a stream entry id `{seq}-0`.
fn entry_seq(id: &str) -> u64 {
    id.split('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Stream entries as Redis returns them: `[id, [field, value]]`.
type Entries = Vec<(String, Vec<String>)>;

fn value_at<T: redis::FromRedisValue>(reply: &[redis::Value], i: usize) -> Option<T> {
    redis::from_redis_value_ref(reply.get(i)?).ok()
}

/// A stream entry's message (fields `["e", envelope]`).
fn stored(fields: &[String], max: usize) -> Option<StoredMessage> {
    envelope::Envelope::parse(fields.get(1)?, max)?.message()
}

/// Users as entries name them, sorted by name, once each (a user may be there on several
/// connections).
fn users_of<'a>(entries: impl Iterator<Item = &'a str>) -> Vec<(Arc<str>, Role)> {
    let mut users: Vec<(Arc<str>, Role)> = entries
        .filter_map(|e| parse_entry(e).map(|(_, _, role, name)| (name.into(), role)))
        .collect();
    users.sort_unstable_by(|(a, _), (b, _)| name_order(a, b));
    users.dedup_by(|b, a| a.0.eq_ignore_ascii_case(&b.0));
    users
}

/// The connection on this node an event skips (its cause), if it is one of ours.
fn except_conn(x: &str, node: &str) -> Option<ConnId> {
    let (n, conn) = x.rsplit_once('|')?;
    (n == node).then(|| conn.parse().ok()).flatten()
}

/// A fresh epoch for a room whose numbering starts now.
fn new_epoch() -> String {
    format!("{:016x}", fastrand::u64(..))
}

impl Inner {
    fn me_id(&self, me: &Member) -> String {
        format!("{}|{}", self.node, me.conn())
    }

    fn entry(&self, me: &Member) -> String {
        format!(
            "{}|{}|{}|{}",
            self.node,
            me.conn(),
            role_char(me.role()),
            me.name()
        )
    }
}

impl RedisBroker {
    /// A broker over the Redis at `cluster.redis_url`. Starts the subscriber task (on the current
    /// runtime); nothing waits for Redis here, so a node starts while Redis is down and is
    /// unready until it answers.
    pub fn from_config(config: &Config, metrics: &Metrics) -> Result<RedisBroker, ConfigError> {
        let c = &config.cluster;
        let password = if c.redis_password_file.is_empty() {
            None
        } else {
            let text =
                std::fs::read_to_string(&c.redis_password_file).map_err(|e| ConfigError::File {
                    key: "cluster.redis_password_file",
                    path: c.redis_password_file.clone(),
                    reason: crate::config::read_error(&e),
                })?;
            Some(text.trim_end_matches(['\r', '\n']).to_string())
        };
        let ca = if c.redis_ca_cert.is_empty() {
            None
        } else {
            Some(
                std::fs::read(&c.redis_ca_cert).map_err(|e| ConfigError::File {
                    key: "cluster.redis_ca_cert",
                    path: c.redis_ca_cert.clone(),
                    reason: crate::config::read_error(&e),
                })?,
            )
        };
        let client =
            link::client(c.redis_url.expose(), password.as_deref(), ca).map_err(|reason| {
                ConfigError::Invalid {
                    key: "cluster.redis_url",
                    reason,
                }
            })?;
        let node: Arc<str> = if c.node_id.is_empty() {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "node".into());
            format!("{host}-{}-{:04x}", std::process::id(), fastrand::u16(..)).into()
        } else {
            c.node_id.as_str().into()
        };
        info!(node = %node, redis = %c.redis_url, "cluster node");
        let store = match StoreSettings::from_config(config) {
            Some(settings) => Some(Arc::new(Store::open(settings, metrics)?.0)),
            None => {
                tracing::warn!(
                    "cluster without storage.url: history is what Redis streams hold (cluster.history_size per room), and search and private-message history answer `unavailable`; set storage.url to a PostgreSQL database to keep everything"
                );
                None
            }
        };
        let seed_gap = store.as_ref().map_or(0, |s| s.restart_gap());
        let (subs, rx) = mpsc::channel(1024);
        let inner = Arc::new(Inner {
            node,
            redis: Redis::new(
                client,
                &c.key_prefix,
                metrics,
                Duration::from_millis(c.op_timeout_ms),
            ),
            local: Mutex::new(Local::default()),
            subs,
            delivery: Delivery::new(metrics),
            metrics: metrics.clone(),
            settings: Settings {
                op_timeout: Duration::from_millis(c.op_timeout_ms),
                name_ttl_ms: c.name_ttl_secs * 1000,
                presence_ttl_ms: c.presence_ttl_secs * 1000,
                heartbeat_ms: c.heartbeat_secs * 1000,
                history_size: c.history_size,
                history_bytes: c.history_bytes,
                room_ttl_secs: c.room_ttl_secs,
                hub: HubLimits::from_config(config),
                max_envelope: 2 * config.limits.max_message_bytes + 16 * 1024,
            },
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            last_beat: AtomicU64::new(0),
            beating: AtomicBool::new(false),
            flushing: AtomicBool::new(false),
            presence_due: Mutex::new(HashSet::new()),
            started: Instant::now(),
            idle: tokio::sync::Notify::new(),
            fences: Mutex::new(HashMap::new()),
            next_fence: AtomicU64::new(1),
            store,
            seed_gap,
        });
        inner.tasks.spawn(subscriber::subscriber(inner.clone(), rx));
        Ok(RedisBroker { inner })
    }

    /// Queues `op` for `me` (its task runs while it has operations).
    fn queue(&self, me: &Member, op: Op) -> Answer {
        let queued = Queued {
            member: me.clone(),
            op,
            at: Instant::now(),
        };
        if self.inner.enqueue(me.conn(), queued) {
            Answer::Later
        } else {
            // The session stops reading a connection whose requests wait, so these bounds are
            // met only by a session that does not: refused, never grown.
            Answer::Now(
                Refusal::unavailable(
                    "the chat cluster is still working on your earlier requests; try again",
                )
                .into(),
            )
        }
    }

    /// Flushes the presence batches this node added to (one `presence` per large room, from
    /// every node's changes), in one pipeline, in a tracked task. What fails is tried again on
    /// the next tick.
    fn flush_presence(&self) {
        let inner = &self.inner;
        if inner.flushing.swap(true, Ordering::AcqRel) {
            return;
        }
        let rooms: Vec<Arc<str>> = lock(&inner.presence_due).drain().collect();
        if rooms.is_empty() {
            inner.flushing.store(false, Ordering::Release);
            return;
        }
        let inner = inner.clone();
        self.inner.tasks.spawn(async move {
            let sent =
                tokio::time::timeout(inner.settings.op_timeout, inner.flush_presence(&rooms)).await;
            let failed = match sent {
                Ok(Ok(())) => false,
                Ok(Err(fail)) => {
                    inner.redis.down(&fail, "presence").await;
                    true
                }
                Err(_) => {
                    inner.redis.down(&Fail::Timeout, "presence").await;
                    true
                }
            };
            if failed {
                lock(&inner.presence_due).extend(rooms);
            }
            inner.flushing.store(false, Ordering::Release);
        });
    }
}

impl Broker for RedisBroker {
    fn hello(&self, t: Ticket, me: &Member, room: &str, resume: Option<&Resume>) -> Answer {
        self.queue(me, Op::Hello(t, room.into(), resume.cloned()))
    }

    fn join(&self, t: Ticket, me: &Member, room: &str, resume: Option<&Resume>) -> Answer {
        self.queue(me, Op::Join(t, room.into(), resume.cloned()))
    }

    fn leave(&self, t: Ticket, me: &Member, room: &str) -> Answer {
        self.queue(me, Op::Leave(t, room.into()))
    }

    fn say(
        &self,
        t: Ticket,
        me: &Member,
        room: &str,
        text: &str,
        action: bool,
        reply: Option<crate::hub::Reply>,
    ) -> Answer {
        let reply_to = reply.map(|r| r.to);
        self.queue(me, Op::Say(t, room.into(), text.into(), action, reply_to))
    }

    fn change(
        &self,
        t: Ticket,
        me: &Member,
        room: &str,
        ask: &crate::hub::changes::ChangeAsk,
        _: Option<crate::hub::changes::Target>,
    ) -> Answer {
        self.queue(me, Op::Change(t, room.into(), Box::new(ask.clone())))
    }

    fn change_pm(
        &self,
        t: Ticket,
        me: &Member,
        with: &str,
        ask: &crate::hub::changes::ChangeAsk,
        _: Option<crate::hub::changes::Target>,
    ) -> Answer {
        self.queue(me, Op::PmChange(t, with.into(), Box::new(ask.clone())))
    }

    fn pm(&self, t: Ticket, me: &Member, to: &str, text: &str, action: bool) -> Answer {
        self.queue(me, Op::Pm(t, to.into(), text.into(), action))
    }

    fn typing(&self, t: Ticket, me: &Member, to: TypingTo<'_>, state: TypingState) -> Answer {
        match to {
            TypingTo::Room(room) => self.queue(me, Op::TypingRoom(t, room.into(), state)),
            TypingTo::User(name) => self.queue(me, Op::TypingUser(t, name.into(), state)),
        }
    }

    fn who(&self, t: Ticket, me: &Member, room: &str) -> Answer {
        self.queue(me, Op::Who(t, room.into()))
    }

    fn rooms(&self, t: Ticket, me: &Member) -> Answer {
        self.queue(me, Op::Rooms(t))
    }

    fn history(&self, t: Ticket, me: &Member, room: &str, page: Page) -> Answer {
        self.queue(me, Op::History(t, room.into(), page))
    }

    fn leave_kicked(&self, t: Ticket, me: &Member, room: &str, by: &str, reason: &str) -> Answer {
        self.queue(
            me,
            Op::LeaveKicked(t, room.into(), by.into(), reason.into()),
        )
    }

    fn local_members(&self, pick: &dyn Fn(&Member) -> bool) -> Vec<Member> {
        let local = lock(&self.inner.local);
        let all = local.members.values().map(|m| &m.member);
        all.filter(|m| pick(m)).cloned().collect()
    }

    fn tell_local(&self, room: &str, event: &crate::protocol::ServerMsg<'_>) {
        let local = lock(&self.inner.local);
        if let Some(here) = local.rooms.get(room) {
            self.inner.delivery.deliver(&here.members, event, None);
        }
    }

    fn sessions(&self, t: Ticket, me: &Member) -> Answer {
        self.queue(me, Op::Sessions(t))
    }

    fn logout(&self, t: Ticket, me: &Member, session: &str) -> Answer {
        self.queue(me, Op::Logout(t, session.into()))
    }

    fn session_id(&self, me: &Member) -> String {
        self.inner.me_id(me)
    }

    fn conversation(
        &self,
        t: Ticket,
        me: &Member,
        with: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Answer {
        let inner = &self.inner;
        let store = inner
            .store
            .as_deref()
            .filter(|_| inner.settings.hub.store_pms);
        if store.is_none() {
            return Answer::Now(
                Refusal::unavailable(
                    "private messages are kept in a cluster only with storage.url and tokens",
                )
                .into(),
            );
        }
        durable::conversation(store, t, me, with, before, limit)
    }

    fn search(
        &self,
        t: Ticket,
        me: &Member,
        rooms: &[Arc<str>],
        query: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Answer {
        durable::search(
            self.inner.store.as_deref(),
            t,
            me,
            rooms,
            query,
            before,
            limit,
        )
    }

    fn kick(&self, t: Ticket, me: &Member, name: &str, reason: &str) -> Answer {
        self.queue(me, Op::Kick(t, name.into(), reason.into()))
    }

    fn nick(&self, t: Ticket, me: &Member, name: &str) -> Answer {
        self.queue(me, Op::Nick(t, name.into()))
    }

    fn announce(&self, t: Ticket, me: &Member, text: &str) -> Answer {
        self.queue(me, Op::Announce(t, text.into()))
    }

    fn to_own(&self, me: &Member, event: crate::protocol::ServerMsg<'static>) {
        self.queue(me, Op::ToOwn(Box::new(event)));
    }

    fn disconnect(&self, me: &Member, rooms: &[Arc<str>]) {
        self.queue(me, Op::Disconnect(rooms.to_vec()));
    }

    fn ready(&self) -> bool {
        self.inner.redis.ready() && self.inner.store.as_ref().is_none_or(|s| s.healthy())
    }

    fn store(&self) -> Option<Arc<Store>> {
        self.inner.store.clone()
    }

    fn tick(&self) {
        self.flush_presence();
        let inner = &self.inner;
        let now = inner.started.elapsed().as_millis() as u64;
        let last = inner.last_beat.load(Ordering::Relaxed);
        if (last != 0 && now - last < inner.settings.heartbeat_ms)
            || inner.beating.swap(true, Ordering::AcqRel)
        {
            return;
        }
        inner.last_beat.store(now.max(1), Ordering::Relaxed);
        let inner = inner.clone();
        self.inner.tasks.spawn(async move {
            let started = std::time::Instant::now();
            let beat = tokio::time::timeout(inner.settings.op_timeout * 4, inner.heartbeat()).await;
            inner
                .metrics
                .redis_op_seconds
                .with_label_values(&["heartbeat"])
                .observe(started.elapsed().as_secs_f64());
            match beat {
                Ok(Ok(())) => inner.redis.set_up(true),
                Ok(Err(fail)) => inner.redis.down(&fail, "heartbeat").await,
                Err(_) => inner.redis.down(&Fail::Timeout, "heartbeat").await,
            }
            inner.beating.store(false, Ordering::Release);
        });
    }

    fn close(&self) {
        // Every connection has closed: wait (a little) for their leaves and name releases, then
        // stop the subscriber and wait for every task.
        let inner = self.inner.clone();
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.block_on(async move {
            let wait = async {
                loop {
                    let idle = inner.idle.notified();
                    if lock(&inner.local).members.is_empty() {
                        return;
                    }
                    idle.await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
            inner.stop.cancel();
            inner.tasks.close();
            let _ = tokio::time::timeout(Duration::from_secs(5), inner.tasks.wait()).await;
        });
        if let Some(store) = &self.inner.store {
            store.close(Duration::from_secs(10));
        }
    }
}
