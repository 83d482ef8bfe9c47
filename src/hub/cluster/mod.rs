//! The cluster broker: several chatd nodes act as one chat through Redis.
//!
//! Names, room membership, `seq`, history and fan-out live in Redis (see `scripts` for the keys);
//! each node keeps only its own members and the rooms they are in, for delivery. The rules:
//! - **One caller, one queue.** Every member has a small bounded queue of operations drained by
//!   one task, so one member's calls take effect in order while members run concurrently. Every
//!   call answers late, through the member's mailbox.
//! - **Deadlines.** Every Redis round trip runs under `cluster.op_timeout_ms`; past it (or on any
//!   error) the request gets `unavailable`, the node counts Redis as down (`/readyz` 503,
//!   `chatd_redis_up` 0) and the next call reconnects. The client library's own reconnect is not
//!   relied on to bound anything.
//! - **One delivery path.** Events reach members only from the node's subscriber task, which reads
//!   the channels of the rooms with local members, the node's own channel (PMs, typing to a user,
//!   kicks) and the cluster-wide channel (notices, renames), and hands them to
//!   [`Delivery::deliver`]. The sender's own node gets its messages back the same way, so every
//!   member sees the order Redis assigned.
//! - **No silent holes.** `say` is one script (seq, stream, publish). Each node remembers the last
//!   seq it delivered per room; a gap is filled from the room's stream, and if the stream no longer
//!   holds it (or the epoch changed: Redis restarted empty) members get `resync`.
//! - **Joining without a hole.** A joiner is added to the local room *pending* before the join
//!   script runs: events for the room wait in its entry, and once its `welcome`/`room` is queued
//!   they follow, minus the messages its history already holds.
//! - **Liveness.** A heartbeat (every `heartbeat_secs`, on the server's tick) refreshes this
//!   node's name claims and memberships, re-asserting what a restarted Redis lost, and reaps
//!   members whose node stopped refreshing them: one `left` per ghost, from whichever node removed
//!   it.
//!
//! Single-node features left out here: search and private conversation history (`unavailable`),
//! large-room presence batching (every join and leave is announced).

mod scripts;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::{
    Answer, Broker, ConnId, Delivery, Member, Outcome, Page, Receipt, Refusal, Resume, RoomView,
    StoredMessage, Ticket, TypingTo, name_order,
};
use crate::config::{Config, ConfigError};
use crate::connection::mailbox::Class;
use crate::metrics::Metrics;
use crate::protocol::{self, ChatMessage, ErrorCode, Role, ServerMsg, TypingState, b};

/// Operations one member may have waiting; past that, requests get `unavailable` at once.
const QUEUE: usize = 64;
/// Events (and bytes of them) one pending joiner may collect before its reply; past that it
/// gets `resync` instead of the rest.
const PENDING_MAX: usize = 1024;
const PENDING_BYTES: usize = 1 << 20;
/// Bytes of request text one member may have waiting in its queue.
const QUEUE_BYTES: usize = 256 * 1024;
/// The largest gap a node fills from a stream in one read; past it, members get `resync`.
const FILL_MAX: u64 = 1000;
/// Memberships and names refreshed per Redis round trip.
const CHUNK: usize = 500;

/// The cluster broker (see the module docs).
#[derive(Debug)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node: Arc<str>,
    prefix: String,
    client: redis::Client,
    /// The command connection, made again after any failure.
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    local: Mutex<Local>,
    /// Subscription changes for the subscriber task.
    subs: mpsc::Sender<Sub>,
    delivery: Delivery,
    metrics: Metrics,
    up: AtomicBool,
    /// The subscriber holds its subscriptions (events reach this node).
    subscribed: AtomicBool,
    settings: Settings,
    scripts: Scripts,
    /// The last heartbeat started (ms since the broker started), and whether one is running.
    last_beat: AtomicU64,
    beating: AtomicBool,
    started: Instant,
    /// Woken when the last local member is gone (for `close`).
    idle: tokio::sync::Notify,
    /// Fences this node sent itself and waits for (see [`Inner::fence`]).
    fences: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next_fence: AtomicU64,
}

#[derive(Debug, Clone)]
struct Settings {
    op_timeout: Duration,
    name_ttl_ms: u64,
    presence_ttl_ms: u64,
    heartbeat_ms: u64,
    history_size: usize,
    on_join: usize,
    resume_max: u64,
    users_per_page: usize,
    max_rooms: usize,
    max_rooms_per_ip: usize,
    /// Names come from tokens: no look-alike claims (see `protocol::look_alike`).
    owned_names: bool,
}

#[derive(Debug)]
struct Scripts {
    say: redis::Script,
    join: redis::Script,
    leave: redis::Script,
    reap: redis::Script,
    rooms: redis::Script,
    refresh: redis::Script,
    release: redis::Script,
    kick: redis::Script,
    claim: redis::Script,
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
    ops: mpsc::Sender<(Member, Op)>,
    /// Bytes of request text waiting in `ops`.
    waiting: Arc<AtomicUsize>,
    /// The claims this connection holds in Redis, as (key, value): its name, and in open mode
    /// its look-alike (empty until its hello took the name).
    claims: Vec<(String, String)>,
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
}

#[derive(Debug)]
struct Pending {
    conn: ConnId,
    events: Vec<Arc<str>>,
    bytes: usize,
    overflowed: bool,
    /// The join script's marker arrived (see [`Envelope::mark`]).
    marked: bool,
}

#[derive(Debug)]
enum Sub {
    /// Subscribe to a room's channel (answered once subscribed).
    Room(Arc<str>, oneshot::Sender<bool>),
    /// Drop a room's channel if no local member needs it any more.
    Drop(Arc<str>),
}

/// What travels on a channel and in a stream entry.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope<'a> {
    /// A room message's seq, id and epoch (set by the say script).
    #[serde(default, skip_serializing_if = "is_zero")]
    seq: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    id: u64,
    #[serde(default, skip_serializing_if = "str::is_empty")]
    epoch: Cow<'a, str>,
    /// When it was published (ms since the Unix epoch).
    t: u64,
    /// The connection that caused it (`node|conn`), which does not get it.
    x: Cow<'a, str>,
    /// On a node's channel: the connection it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<ConnId>,
    /// A rename: the rooms it concerns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rooms: Vec<Cow<'a, str>>,
    /// A kick for `to`: by whom, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kick: Option<(Cow<'a, str>, Cow<'a, str>)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<ServerMsg<'a>>,
    /// A marker a node sends itself: everything published before it has been delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fence: Option<u64>,
    /// A join script ran for `to` in `rooms[0]`: what its pending entry holds so far happened
    /// before, and the join's reply already reflects it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    mark: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl<'a> Envelope<'a> {
    fn new(x: &'a str, e: ServerMsg<'a>) -> Envelope<'a> {
        Envelope {
            seq: 0,
            id: 0,
            epoch: Cow::Borrowed(""),
            t: now_ms(),
            x: Cow::Borrowed(x),
            to: None,
            rooms: Vec::new(),
            kick: None,
            e: Some(e),
            fence: None,
            mark: false,
        }
    }

    /// An envelope that carries no event, only a control field (kick, fence, join marker).
    fn control(x: &'a str) -> Envelope<'a> {
        Envelope {
            e: None,
            ..Envelope::new(
                x,
                ServerMsg::Notice {
                    from: b(""),
                    text: b(""),
                },
            )
        }
    }

    fn json(&self) -> String {
        serde_json::to_string(self).expect("envelopes serialize")
    }

    /// Reads an envelope, numbering the room message it carries (the say script wrote the
    /// numbers into the envelope, not into the message).
    fn parse(raw: &'a str) -> Option<Envelope<'a>> {
        let mut env: Envelope<'a> = serde_json::from_str(raw).ok()?;
        if let Some(ServerMsg::Message(m)) = &mut env.e {
            m.id = env.id;
            m.seq = env.seq;
        }
        Some(env)
    }

    /// The room message it carries, numbered.
    fn message(self) -> Option<StoredMessage> {
        match self.e? {
            ServerMsg::Message(mut m) if self.seq > 0 => {
                m.id = self.id;
                m.seq = self.seq;
                Some(m.into_owned())
            }
            _ => None,
        }
    }
}

/// One member's operation, run in order by its task.
#[derive(Debug)]
enum Op {
    Hello(Ticket, Arc<str>, Option<Resume>),
    Join(Ticket, Arc<str>, Option<Resume>),
    Leave(Ticket, Arc<str>),
    Say(Ticket, Arc<str>, String, bool),
    Pm(Ticket, String, String, bool),
    TypingRoom(Ticket, Arc<str>, TypingState),
    TypingUser(Ticket, String, TypingState),
    Who(Ticket, Arc<str>),
    Rooms(Ticket),
    History(Ticket, Arc<str>, Page),
    Kick(Ticket, String, String),
    Nick(Ticket, String),
    Announce(Ticket, String),
    /// Another node's admin kicked this member.
    Kicked(String),
    Disconnect(Vec<Arc<str>>),
}

impl Op {
    fn ticket(&self) -> Option<Ticket> {
        use Op::*;
        match self {
            Hello(t, ..)
            | Join(t, ..)
            | Leave(t, ..)
            | Say(t, ..)
            | Pm(t, ..)
            | TypingRoom(t, ..)
            | TypingUser(t, ..)
            | Who(t, ..)
            | Rooms(t)
            | History(t, ..)
            | Kick(t, ..)
            | Nick(t, ..)
            | Announce(t, ..) => Some(*t),
            Kicked(..) | Disconnect(..) => None,
        }
    }

    /// What the operation holds in memory while it waits, roughly: its text.
    fn cost(&self) -> usize {
        use Op::*;
        64 + match self {
            Say(_, _, text, _) | Pm(_, _, text, _) | Announce(_, text) => text.len(),
            Kick(_, name, reason) => name.len() + reason.len(),
            Disconnect(rooms) => rooms.len() * 32,
            _ => 0,
        }
    }

    fn label(&self) -> &'static str {
        use Op::*;
        match self {
            Hello(..) => "hello",
            Join(..) => "join",
            Leave(..) => "leave",
            Say(..) => "say",
            Pm(..) => "pm",
            TypingRoom(..) | TypingUser(..) => "typing",
            Who(..) => "who",
            Rooms(..) => "rooms",
            History(..) => "history",
            Kick(..) | Kicked(..) => "kick",
            Nick(..) => "nick",
            Announce(..) => "announce",
            Disconnect(..) => "disconnect",
        }
    }
}

/// Why an operation failed: Redis did not answer in time, or answered with an error.
#[derive(Debug)]
enum Fail {
    Redis(redis::RedisError),
    Timeout,
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Redis(e) => write!(f, "{e}"),
            Fail::Timeout => write!(f, "no answer within cluster.op_timeout_ms"),
        }
    }
}

impl From<redis::RedisError> for Fail {
    fn from(e: redis::RedisError) -> Fail {
        Fail::Redis(e)
    }
}

type Done = Result<(), Fail>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn unavailable() -> Outcome {
    Refusal::new(
        ErrorCode::Unavailable,
        "the chat cluster cannot reach its Redis right now; try again",
    )
    .into()
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

impl RedisBroker {
    /// A broker over the Redis at `cluster.redis_url`. Starts the subscriber task (on the current
    /// runtime); nothing waits for Redis here, so a node starts while Redis is down and is
    /// unready until it answers.
    pub fn from_config(config: &Config, metrics: &Metrics) -> Result<RedisBroker, ConfigError> {
        let c = &config.cluster;
        let client =
            redis::Client::open(c.redis_url.as_str()).map_err(|e| ConfigError::Invalid {
                key: "cluster.redis_url",
                reason: e.to_string(),
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
        let (subs, rx) = mpsc::channel(1024);
        let script = redis::Script::new;
        let inner = Arc::new(Inner {
            node,
            prefix: c.key_prefix.clone(),
            client,
            conn: tokio::sync::Mutex::new(None),
            local: Mutex::new(Local::default()),
            subs,
            delivery: Delivery::new(metrics),
            metrics: metrics.clone(),
            up: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            settings: Settings {
                op_timeout: Duration::from_millis(c.op_timeout_ms),
                name_ttl_ms: c.name_ttl_secs * 1000,
                presence_ttl_ms: c.presence_ttl_secs * 1000,
                heartbeat_ms: c.heartbeat_secs * 1000,
                history_size: c.history_size,
                on_join: config.history.on_join,
                resume_max: config.history.resume_max,
                users_per_page: config.limits.users_per_page,
                max_rooms: config.limits.max_rooms,
                max_rooms_per_ip: config.limits.max_rooms_per_ip,
                owned_names: config.auth.mode == crate::config::AuthMode::Token,
            },
            scripts: Scripts {
                say: script(scripts::SAY),
                join: script(scripts::JOIN),
                leave: script(scripts::LEAVE),
                reap: script(scripts::REAP),
                rooms: script(scripts::ROOMS),
                refresh: script(scripts::REFRESH_NAMES),
                release: script(scripts::RELEASE),
                kick: script(scripts::KICK),
                claim: script(scripts::CLAIM),
            },
            last_beat: AtomicU64::new(0),
            beating: AtomicBool::new(false),
            started: Instant::now(),
            idle: tokio::sync::Notify::new(),
            fences: Mutex::new(HashMap::new()),
            next_fence: AtomicU64::new(1),
        });
        metrics.redis_up.set(0);
        tokio::spawn(subscriber(inner.clone(), rx));
        Ok(RedisBroker { inner })
    }

    /// Queues `op` for `me`'s task (started by its first call).
    fn queue(&self, me: &Member, op: Op) -> Answer {
        let inner = &self.inner;
        let (ops, waiting) = {
            let mut local = lock(&inner.local);
            let mine = local.members.entry(me.conn()).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let waiting = Arc::new(AtomicUsize::new(0));
                tokio::spawn(member_task(inner.clone(), me.conn(), rx, waiting.clone()));
                Mine {
                    member: me.clone(),
                    ops: tx,
                    waiting,
                    claims: Vec::new(),
                    rooms: Vec::new(),
                }
            });
            (mine.ops.clone(), mine.waiting.clone())
        };
        let cost = op.cost();
        let disconnect = matches!(op, Op::Disconnect(_));
        if !disconnect && waiting.load(Ordering::Relaxed) + cost > QUEUE_BYTES {
            return Answer::Now(
                Refusal::new(
                    ErrorCode::Unavailable,
                    "too many requests are waiting for the chat cluster; try again",
                )
                .into(),
            );
        }
        waiting.fetch_add(cost, Ordering::Relaxed);
        match ops.try_send((me.clone(), op)) {
            Ok(()) => Answer::Later,
            Err(mpsc::error::TrySendError::Full((me, Op::Disconnect(rooms)))) => {
                // Never dropped: it frees the name and the rooms.
                tokio::spawn(async move { ops.send((me, Op::Disconnect(rooms))).await });
                Answer::Later
            }
            Err(_) => {
                waiting.fetch_sub(cost, Ordering::Relaxed);
                Answer::Now(
                    Refusal::new(
                        ErrorCode::Unavailable,
                        "too many requests are waiting for the chat cluster; try again",
                    )
                    .into(),
                )
            }
        }
    }
}

/// Runs one member's operations in order, each under the deadline.
/// Each call brings the caller as the session knows it (its name changes with a hello or a nick).
async fn member_task(
    inner: Arc<Inner>,
    conn: ConnId,
    mut ops: mpsc::Receiver<(Member, Op)>,
    waiting: Arc<AtomicUsize>,
) {
    while let Some((mut me, op)) = ops.recv().await {
        waiting.fetch_sub(op.cost(), Ordering::Relaxed);
        let ticket = op.ticket();
        let label = op.label();
        let last = matches!(op, Op::Disconnect(_) | Op::Kicked(..));
        let room = match &op {
            Op::Hello(_, room, _) | Op::Join(_, room, _) => Some(room.clone()),
            _ => None,
        };
        let hello = matches!(op, Op::Hello(..));
        // Typing in a room is a hint that may be dropped (like typing to a lagging client): no
        // error line for it when Redis is away.
        let hint = matches!(op, Op::TypingRoom(..));
        let started = Instant::now();
        let result = tokio::time::timeout(inner.settings.op_timeout, inner.run(&mut me, op)).await;
        inner
            .metrics
            .redis_op_seconds
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
        let failed = match result {
            Ok(Ok(())) => {
                inner.set_up(true);
                false
            }
            Ok(Err(fail)) => {
                inner.down(&fail, label).await;
                true
            }
            Err(_) => {
                inner.down(&Fail::Timeout, label).await;
                true
            }
        };
        if failed {
            if let Some(room) = &room {
                inner.abandon(&me, room, hello).await;
            }
            if let Some(ticket) = ticket {
                me.answer(
                    ticket,
                    if hint {
                        Outcome::Relayed
                    } else {
                        unavailable()
                    },
                );
            }
        }
        if last {
            break;
        }
    }
    let mut local = lock(&inner.local);
    local.members.remove(&conn);
    if local.members.is_empty() {
        inner.idle.notify_waiters();
    }
}

impl Inner {
    fn key(&self, what: &str, name: &str) -> String {
        format!("{}:{what}:{name}", self.prefix)
    }

    /// A cluster-wide key or channel: `rooms`, `created`, `epoch`, `msgid`, `all`.
    fn global(&self, what: &str) -> String {
        format!("{}:{what}", self.prefix)
    }

    fn room_channel(&self, room: &str) -> String {
        self.key("r", room)
    }

    fn node_channel(&self, node: &str) -> String {
        self.key("n", node)
    }

    fn all_channel(&self) -> String {
        self.global("all")
    }

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

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        self.metrics.redis_up.set(i64::from(up));
    }

    /// Redis failed: count it down, and make the next call reconnect.
    async fn down(&self, fail: &Fail, op: &str) {
        if self.up.load(Ordering::Relaxed) {
            warn!(op, error = %fail, "cluster: Redis did not answer; requests get `unavailable`");
        }
        self.set_up(false);
        *self.conn.lock().await = None;
    }

    async fn conn(&self) -> Result<MultiplexedConnection, Fail> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self.client.get_multiplexed_async_connection().await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn run(&self, me: &mut Member, op: Op) -> Done {
        match op {
            Op::Hello(t, room, resume) => self.hello(me, t, &room, resume.as_ref()).await,
            Op::Join(t, room, resume) => self
                .join(me, t, &room, resume.as_ref(), false)
                .await
                .map(|_| ()),
            Op::Leave(t, room) => {
                let outcome = if self.leave(me, &room, None).await? {
                    Outcome::Left { room }
                } else {
                    Refusal::not_in_room(&room).into()
                };
                me.answer(t, outcome);
                Ok(())
            }
            Op::Say(t, room, text, action) => {
                let outcome = self.say(me, &room, &text, action).await?;
                me.answer(t, outcome);
                Ok(())
            }
            Op::Pm(t, to, text, action) => {
                let outcome = self.pm(me, &to, &text, action).await?;
                me.answer(t, outcome);
                Ok(())
            }
            Op::TypingRoom(t, room, state) => {
                if self.is_in(me, &room) {
                    let x = self.me_id(me);
                    let event = ServerMsg::Typing {
                        from: b(me.name()),
                        room: Some(b(&room)),
                        to: None,
                        state,
                    };
                    let env = Envelope::new(&x, event).json();
                    self.publish(&self.room_channel(&room), &env).await?;
                }
                me.answer(t, Outcome::Relayed);
                Ok(())
            }
            Op::TypingUser(t, to, state) => {
                let outcome = match self.owner(&to).await? {
                    None => Refusal::no_such_user(&to).into(),
                    Some((node, conn, _, name)) => {
                        let x = self.me_id(me);
                        let event = ServerMsg::Typing {
                            from: b(me.name()),
                            room: None,
                            to: Some(b(&name)),
                            state,
                        };
                        let mut env = Envelope::new(&x, event);
                        env.to = Some(conn);
                        self.publish(&self.node_channel(&node), &env.json()).await?;
                        Outcome::Relayed
                    }
                };
                me.answer(t, outcome);
                Ok(())
            }
            Op::Who(t, room) => {
                let outcome = if self.is_in(me, &room) {
                    let mut conn = self.conn().await?;
                    let live: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                        .arg(self.key("members", &room))
                        .arg(now_ms())
                        .arg("+inf")
                        .query_async(&mut conn)
                        .await?;
                    Outcome::Who {
                        room: room.clone(),
                        users: users_of(&live),
                    }
                } else {
                    self.not_here(&room).await?
                };
                me.answer(t, outcome);
                Ok(())
            }
            Op::Rooms(t) => {
                let mut conn = self.conn().await?;
                let flat: Vec<redis::Value> = self
                    .scripts
                    .rooms
                    .key(self.global("rooms"))
                    .arg(now_ms())
                    .arg(&self.prefix)
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
                me.answer(t, Outcome::Rooms(rooms));
                Ok(())
            }
            Op::History(t, room, page) => {
                let outcome = if self.is_in(me, &room) {
                    self.history(&room, page).await?
                } else {
                    self.not_here(&room).await?
                };
                me.answer(t, outcome);
                Ok(())
            }
            Op::Kick(t, name, reason) => {
                let outcome = self.kick(me, &name, &reason).await?;
                me.answer(t, outcome);
                Ok(())
            }
            Op::Kicked(reason) => {
                self.kicked(me, &reason);
                Ok(())
            }
            Op::Nick(t, name) => self.nick(me, t, &name).await,
            Op::Announce(t, text) => {
                let x = self.me_id(me);
                let event = ServerMsg::Notice {
                    from: b(me.name()),
                    text: b(&text),
                };
                self.publish(&self.all_channel(), &Envelope::new(&x, event).json())
                    .await?;
                // The notice reaches the admin (and everyone here) before the ack.
                self.fence().await?;
                me.answer(t, Outcome::Done);
                Ok(())
            }
            Op::Disconnect(rooms) => {
                // The name first: whoever sees the `left` may take it at once.
                self.release(me).await?;
                for room in &rooms {
                    self.leave(me, room, None).await?;
                }
                Ok(())
            }
        }
    }

    fn is_in(&self, me: &Member, room: &str) -> bool {
        lock(&self.local)
            .members
            .get(&me.conn())
            .is_some_and(|m| m.rooms.iter().any(|r| &**r == room))
    }

    /// `not_in_room` for a room that exists (members or history), `no_such_room` otherwise.
    async fn not_here(&self, room: &str) -> Result<Outcome, Fail> {
        let mut conn = self.conn().await?;
        let exists: u64 = redis::cmd("EXISTS")
            .arg(self.key("members", room))
            .arg(self.key("seq", room))
            .query_async(&mut conn)
            .await?;
        Ok(if exists > 0 || room == protocol::DEFAULT_ROOM {
            Refusal::not_in_room(room)
        } else {
            Refusal::new(ErrorCode::NoSuchRoom, format!("there is no room #{room}"))
        }
        .into())
    }

    async fn publish(&self, channel: &str, payload: &str) -> Done {
        let mut conn = self.conn().await?;
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Claims `name` for `me` (its key, and in open mode its look-alike), or re-writes the claims
    /// `me` holds on it. `Err(refusal)` if someone else holds it, or a name like it.
    async fn claim(
        &self,
        me: &Member,
        name: &str,
    ) -> Result<Result<Vec<(String, String)>, Refusal>, Fail> {
        let key = self.key("name", &protocol::name_key(name));
        let value = self.entry(&me.renamed(name.into()));
        let like = if self.settings.owned_names {
            String::new()
        } else {
            self.key("like", &protocol::look_alike(name))
        };
        let like_value = format!("{}|{}", self.me_id(me), name);
        let mut conn = self.conn().await?;
        let held: String = self
            .scripts
            .claim
            .key(&key)
            .key(if like.is_empty() { &key } else { &like })
            .arg(&value)
            .arg(if like.is_empty() { "" } else { &like_value })
            .arg(self.settings.name_ttl_ms)
            .arg(self.me_id(me))
            .invoke_async(&mut conn)
            .await?;
        if held == "taken" {
            return Ok(Err(Refusal::name_taken(name)));
        }
        if let Some(other) = held.strip_prefix("like|") {
            return Ok(Err(Refusal::looks_like(name, other)));
        }
        let mut claims = vec![(key, value)];
        if !like.is_empty() {
            claims.push((like, like_value));
        }
        Ok(Ok(claims))
    }

    /// Who holds `name`: (node, conn, role, name as they spell it).
    async fn owner(&self, name: &str) -> Result<Option<(String, ConnId, Role, String)>, Fail> {
        let mut conn = self.conn().await?;
        let value: Option<String> = redis::cmd("GET")
            .arg(self.key("name", &protocol::name_key(name)))
            .query_async(&mut conn)
            .await?;
        Ok(value.and_then(|v| {
            parse_entry(&v).map(|(n, c, r, name)| (n.to_string(), c, r, name.to_string()))
        }))
    }

    async fn hello(&self, me: &Member, t: Ticket, room: &str, resume: Option<&Resume>) -> Done {
        let claims = match self.claim(me, me.name()).await? {
            Ok(claims) => claims,
            Err(refusal) => {
                me.answer(t, refusal.into());
                return Ok(());
            }
        };
        if let Some(mine) = lock(&self.local).members.get_mut(&me.conn()) {
            mine.claims = claims;
        }
        // A hello never fails for lack of rooms: it lands in the default room instead.
        if !self.join(me, t, room, resume, true).await? {
            self.join(me, t, protocol::DEFAULT_ROOM, None, true).await?;
        }
        Ok(())
    }

    /// Joins `room` and answers (welcome if `hello`). False, without answering, if a hello found
    /// the room could not be created.
    async fn join(
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
        let mut conn = self.conn().await?;
        let reply: Vec<redis::Value> = self
            .scripts
            .join
            .key(self.key("members", &room))
            .key(self.global("rooms"))
            .key(self.key("seq", &room))
            .key(self.key("stream", &room))
            .key(self.global("epoch"))
            .key(self.global("created"))
            .arg(self.entry(me))
            .arg(now + self.settings.presence_ttl_ms)
            .arg(now)
            .arg(new_epoch())
            .arg(self.settings.on_join)
            .arg(self.room_channel(&room))
            .arg(if again { String::new() } else { joined })
            .arg(&*room)
            .arg(&creator)
            .arg(self.settings.max_rooms)
            .arg(self.settings.max_rooms_per_ip)
            .arg(since)
            .arg(client_epoch)
            .arg(self.settings.resume_max + 1)
            .arg(self.settings.resume_max)
            .arg(self.node_channel(&self.node))
            .arg(marker)
            .invoke_async(&mut conn)
            .await?;
        let epoch: String = value_at(&reply, 0).unwrap_or_default();
        if epoch.is_empty() {
            let why: String = value_at(&reply, 1).unwrap_or_default();
            self.out_of_room(me, &room);
            if hello {
                return Ok(false);
            }
            let refusal = if why == "mine" {
                Refusal::new(
                    ErrorCode::TooManyRooms,
                    "you have created too many rooms; leave some first",
                )
            } else {
                Refusal::server_full()
            };
            me.answer(t, refusal.into());
            return Ok(true);
        }
        let seq: u64 = value_at(&reply, 1).unwrap_or(0);
        let live: Vec<String> = value_at(&reply, 2).unwrap_or_default();
        let entries: Entries = value_at(&reply, 3).unwrap_or_default();
        let exact = value_at::<i64>(&reply, 4).unwrap_or(0) == 1;
        let mut history: Vec<Arc<StoredMessage>> = entries
            .iter()
            .filter_map(|(_, fields)| stored(fields))
            .map(Arc::new)
            .collect();
        let mut more = false;
        if exact {
            if history.len() as u64 > self.settings.resume_max {
                history.truncate(self.settings.resume_max as usize);
                more = true;
            }
        } else {
            history.reverse();
        }
        let last_seq = history.last().map_or(seq, |m| m.seq.max(seq));
        let mut users = users_of(&live);
        let user_count = users.len();
        users.truncate(self.settings.users_per_page);
        let view = RoomView {
            room: room.clone(),
            users,
            user_count,
            history,
            epoch: epoch.as_str().into(),
            seq: last_seq,
            resumed: resume.map(|_| exact),
            more,
        };
        let outcome = if hello {
            Outcome::Welcome(view)
        } else {
            Outcome::Joined(view)
        };
        if again {
            me.answer(t, outcome);
        } else if !self.activate(me, t, &room, outcome, &epoch, last_seq) {
            // Gone before its reply: leave nothing behind.
            self.abandon(me, &room, hello).await;
        }
        Ok(true)
    }

    /// Queues a joiner's reply, then what arrived for it meanwhile, and makes it a member here.
    /// False if the connection is gone.
    fn activate(
        &self,
        me: &Member,
        t: Ticket,
        room: &Arc<str>,
        outcome: Outcome,
        epoch: &str,
        seq: u64,
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
        if !me.answer(t, outcome) {
            return false;
        }
        let x = self.me_id(me);
        if pending.overflowed {
            self.resync_to(std::slice::from_ref(me), room, &here.epoch);
        }
        for raw in &pending.events {
            let Some(env) = Envelope::parse(raw) else {
                continue;
            };
            if env.x == x || (env.seq > 0 && env.seq <= seq) {
                continue;
            }
            if let Some(event) = &env.e {
                self.delivery.deliver([me], event, class_of(event), None);
            }
        }
        here.members.push(me.clone());
        if let Some(mine) = members.get_mut(&me.conn()) {
            mine.rooms.push(room.clone());
        }
        true
    }

    /// A hello or join failed midway: take back what it may have done, best effort (what Redis
    /// keeps expires with its TTL anyway).
    async fn abandon(&self, me: &Member, room: &str, hello: bool) {
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
        let (tx, rx) = oneshot::channel();
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
    async fn leave(
        &self,
        me: &Member,
        room: &str,
        how: Option<ServerMsg<'_>>,
    ) -> Result<bool, Fail> {
        if !self.is_in(me, room) {
            return Ok(false);
        }
        self.leave_script(me, room, how).await?;
        self.forget(me, room);
        Ok(true)
    }

    /// Takes `me` out of `room` in Redis, announcing `how` (or `left`) if it was there.
    async fn leave_script(&self, me: &Member, room: &str, how: Option<ServerMsg<'_>>) -> Done {
        let x = self.me_id(me);
        let event = how.unwrap_or(ServerMsg::Left {
            room: b(room),
            name: b(me.name()),
        });
        let env = Envelope::new(&x, event).json();
        let mut conn = self.conn().await?;
        self.scripts
            .leave
            .key(self.key("members", room))
            .key(self.global("rooms"))
            .key(self.global("created"))
            .arg(self.entry(me))
            .arg(self.room_channel(room))
            .arg(env)
            .arg(room)
            .invoke_async::<i64>(&mut conn)
            .await?;
        Ok(())
    }

    /// Takes `me` out of `room` here (dropping the room's channel once nobody here needs it).
    fn forget(&self, me: &Member, room: &str) {
        let mut local = lock(&self.local);
        if let Some(mine) = local.members.get_mut(&me.conn()) {
            mine.rooms.retain(|r| &**r != room);
        }
        drop(local);
        self.out_of_room(me, room);
    }

    /// Takes `me` out of `room`'s local list, member or pending joiner; once nobody here is in
    /// the room, the room and its channel go.
    fn out_of_room(&self, me: &Member, room: &str) {
        let mut local = lock(&self.local);
        let empty = local.rooms.get_mut(room).is_some_and(|here| {
            here.members.retain(|m| m.conn() != me.conn());
            here.pending.retain(|p| p.conn != me.conn());
            here.members.is_empty() && here.pending.is_empty()
        });
        if empty {
            local.rooms.remove(room);
            drop(local);
            let _ = self.subs.try_send(Sub::Drop(room.into()));
        }
    }

    /// Frees `me`'s name if it still holds it.
    async fn release(&self, me: &Member) -> Done {
        let claims = lock(&self.local)
            .members
            .get_mut(&me.conn())
            .map(|m| std::mem::take(&mut m.claims))
            .unwrap_or_default();
        self.release_claims(&claims).await
    }

    /// Frees `claims` where they still hold what this connection wrote.
    async fn release_claims(&self, claims: &[(String, String)]) -> Done {
        if claims.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        for (key, value) in claims {
            self.scripts
                .release
                .key(key)
                .arg(value)
                .invoke_async::<i64>(&mut conn)
                .await?;
        }
        Ok(())
    }

    async fn say(
        &self,
        me: &Member,
        room: &str,
        text: &str,
        action: bool,
    ) -> Result<Outcome, Fail> {
        if !self.is_in(me, room) {
            return Ok(Refusal::not_in_room(room).into());
        }
        let ts: Arc<str> = protocol::timestamp().into();
        let x = self.me_id(me);
        let message = ChatMessage {
            id: 0,
            seq: 0,
            ts: b(&ts),
            room: b(room),
            from: b(me.name()),
            role: me.role(),
            text: b(text),
            action,
        };
        let env = Envelope::new(&x, ServerMsg::Message(message)).json();
        let mut conn = self.conn().await?;
        let (id, seq, _epoch): (u64, u64, String) = self
            .scripts
            .say
            .key(self.global("epoch"))
            .key(self.global("msgid"))
            .key(self.key("seq", room))
            .key(self.key("stream", room))
            .arg(new_epoch())
            .arg(self.settings.history_size)
            .arg(&env[1..])
            .arg(self.room_channel(room))
            .invoke_async(&mut conn)
            .await?;
        Ok(Outcome::Sent(Receipt {
            id,
            seq: Some(seq),
            ts,
            to: None,
        }))
    }

    async fn pm(&self, me: &Member, to: &str, text: &str, action: bool) -> Result<Outcome, Fail> {
        let Some((node, conn_id, _, name)) = self.owner(to).await? else {
            return Ok(Refusal::no_such_user(to).into());
        };
        let mut conn = self.conn().await?;
        let id: u64 = redis::cmd("INCR")
            .arg(self.global("msgid"))
            .query_async(&mut conn)
            .await?;
        let ts: Arc<str> = protocol::timestamp().into();
        let x = self.me_id(me);
        let event = ServerMsg::Pm {
            id,
            ts: b(&ts),
            from: b(me.name()),
            role: me.role(),
            to: b(&name),
            text: b(text),
            action,
        };
        let mut env = Envelope::new(&x, event);
        env.to = Some(conn_id);
        self.publish(&self.node_channel(&node), &env.json()).await?;
        Ok(Outcome::Sent(Receipt {
            id,
            seq: None,
            ts,
            to: Some(name.into()),
        }))
    }

    async fn history(&self, room: &str, page: Page) -> Result<Outcome, Fail> {
        let mut conn = self.conn().await?;
        let key = self.key("stream", room);
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
        let more = entries.len() > page.limit;
        entries.truncate(page.limit);
        if !forward {
            entries.reverse();
        }
        Ok(Outcome::History {
            room: room.into(),
            messages: entries
                .iter()
                .filter_map(|(_, f)| stored(f))
                .map(Arc::new)
                .collect(),
            more,
        })
    }

    /// Takes `name` out of every room (`kicked` to those who stay) and frees the name, then
    /// tells its node to close the connection. The reply waits until this node has delivered
    /// the `kicked` events, so an admin in the room sees the kick before the ack.
    async fn kick(&self, me: &Member, name: &str, reason: &str) -> Result<Outcome, Fail> {
        let key = self.key("name", &protocol::name_key(name));
        let mut conn = self.conn().await?;
        let value: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        let Some((node, target, target_name)) = value.as_deref().and_then(|v| {
            parse_entry(v).map(|(n, c, _, name)| (n.to_string(), c, name.to_string()))
        }) else {
            return Ok(Refusal::no_such_user(name).into());
        };
        let x = format!("{node}|{target}");
        let event = ServerMsg::Kicked {
            room: b("@@ROOM@@"),
            name: b(&target_name),
            by: b(me.name()),
            reason: b(reason),
        };
        let template = Envelope::new(&x, event).json();
        self.scripts
            .kick
            .key(self.global("rooms"))
            .key(self.global("created"))
            .key(&key)
            .arg(value.as_deref().unwrap_or_default())
            .arg(&self.prefix)
            .arg(template)
            .invoke_async::<i64>(&mut conn)
            .await?;
        let mut order = Envelope::control(&x);
        order.to = Some(target);
        order.kick = Some((b(me.name()), b(reason)));
        self.publish(&self.node_channel(&node), &order.json())
            .await?;
        self.fence().await?;
        Ok(Outcome::Done)
    }

    /// Waits until this node's subscriber has delivered everything published before now.
    /// Redis hands one subscriber its messages in publish order, whatever the channel.
    async fn fence(&self) -> Done {
        let n = self.next_fence.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.fences).insert(n, tx);
        let mut env = Envelope::control("");
        env.fence = Some(n);
        let published = self
            .publish(&self.node_channel(&self.node), &env.json())
            .await;
        let arrived = match published {
            Ok(()) => rx.await.is_ok(),
            Err(_) => false,
        };
        lock(&self.fences).remove(&n);
        if arrived { Ok(()) } else { Err(Fail::Timeout) }
    }

    /// An admin (on any node) kicked `me`, which Redis no longer lists anywhere: forget it here
    /// and close the connection.
    fn kicked(&self, me: &Member, reason: &str) {
        let rooms = lock(&self.local)
            .members
            .get_mut(&me.conn())
            .map(|m| {
                m.claims.clear();
                m.rooms.clone()
            })
            .unwrap_or_default();
        for room in &rooms {
            self.forget(me, room);
        }
        me.kick(reason.to_string());
    }

    async fn nick(&self, me: &mut Member, t: Ticket, name: &str) -> Done {
        let renamed = me.renamed(name.into());
        // A change of case re-writes one's own claims; a new name must be free.
        let claims = match self.claim(me, name).await? {
            Ok(claims) => claims,
            Err(refusal) => {
                me.answer(t, refusal.into());
                return Ok(());
            }
        };
        let old = lock(&self.local)
            .members
            .get_mut(&me.conn())
            .map(|m| std::mem::take(&mut m.claims))
            .unwrap_or_default();
        let stale: Vec<_> = old
            .into_iter()
            .filter(|(k, _)| !claims.iter().any(|(nk, _)| nk == k))
            .collect();
        self.release_claims(&stale).await?;
        let mut conn = self.conn().await?;
        let rooms = {
            let mut local = lock(&self.local);
            let Local { members, rooms } = &mut *local;
            let mine = members.get_mut(&me.conn());
            let list = mine.as_ref().map(|m| m.rooms.clone()).unwrap_or_default();
            if let Some(mine) = mine {
                mine.member = renamed.clone();
                mine.claims = claims;
            }
            for room in &list {
                if let Some(here) = rooms.get_mut(room) {
                    for m in here.members.iter_mut().filter(|m| m.conn() == me.conn()) {
                        *m = renamed.clone();
                    }
                }
            }
            list
        };
        let mut pipe = redis::pipe();
        for room in &rooms {
            pipe.cmd("ZREM")
                .arg(self.key("members", room))
                .arg(self.entry(me))
                .ignore()
                .cmd("ZADD")
                .arg(self.key("members", room))
                .arg(now_ms() + self.settings.presence_ttl_ms)
                .arg(self.entry(&renamed))
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        let x = self.me_id(me);
        let mut env = Envelope::new(
            &x,
            ServerMsg::Renamed {
                from: b(me.name()),
                to: b(name),
            },
        );
        env.rooms = rooms.iter().map(|r| b(r)).collect();
        self.publish(&self.all_channel(), &env.json()).await?;
        *me = renamed;
        me.answer(
            t,
            Outcome::Renamed {
                name: me.name().clone(),
            },
        );
        Ok(())
    }

    fn resync_to(&self, members: &[Member], room: &str, epoch: &str) {
        self.metrics.resyncs.inc();
        let event = ServerMsg::Resync {
            room: b(room),
            epoch: b(epoch),
        };
        self.delivery.deliver(members, &event, Class::Chat, None);
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
        let except = except_conn(&env.x, &self.node);
        self.delivery
            .deliver(&here.members, event, class_of(event), except);
    }

    /// A message from a room's channel or stream, in seq order: delivered once, gaps filled
    /// from the stream first.
    async fn on_room(&self, room: &str, raw: Arc<str>) {
        let Some(env) = Envelope::parse(&raw) else {
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
        let gap = {
            let mut local = lock(&self.local);
            let Some(here) = local.rooms.get_mut(room) else {
                return;
            };
            if !here.epoch.is_empty() && *here.epoch != *env.epoch {
                // Redis restarted empty: numbering starts again.
                let members = here.members.clone();
                self.resync_to(&members, room, &env.epoch);
                here.epoch = (*env.epoch).into();
                here.last_seq = Some(env.seq - 1);
            }
            match here.last_seq {
                Some(last) if env.seq <= last => return,
                Some(last) if env.seq > last + 1 => Some(last + 1),
                _ => None,
            }
        };
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

    /// Delivers `from..=to` of `room` from its stream; what the stream no longer holds (or an
    /// error) becomes a `resync`.
    async fn fill(&self, room: &str, from: u64, to: u64) {
        let read = async {
            let mut conn = self.conn().await?;
            let entries: Entries = redis::cmd("XRANGE")
                .arg(self.key("stream", room))
                .arg(from)
                .arg(to)
                .arg("COUNT")
                .arg(FILL_MAX)
                .query_async(&mut conn)
                .await?;
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
            if let Some(env) = Envelope::parse(&raw) {
                self.deliver_room(here, &raw, &env);
                self.metrics.gaps_repaired.inc();
            }
        }
        here.last_seq = Some(to);
    }

    /// An envelope on this node's channel (for one connection) or the cluster-wide one.
    fn on_direct(&self, raw: &str) {
        let Some(env) = Envelope::parse(raw) else {
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
                let _ = done.send(());
            }
            return;
        }
        let local = lock(&self.local);
        match (env.to, &env.kick, &env.e) {
            (Some(conn), Some((_, reason)), _) => {
                if let Some(mine) = local.members.get(&conn) {
                    let _ = mine
                        .ops
                        .try_send((mine.member.clone(), Op::Kicked(reason.to_string())));
                }
            }
            (Some(conn), None, Some(event)) => {
                if let Some(mine) = local.members.get(&conn) {
                    self.delivery.deliver(
                        [&mine.member],
                        event,
                        class_of(event),
                        except_conn(&env.x, &self.node),
                    );
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
                self.delivery
                    .deliver(audience, event, Class::Presence, None);
            }
            (None, _, Some(event)) => {
                let named = local.members.values().filter(|m| !m.claims.is_empty());
                self.delivery
                    .deliver(named.map(|m| &m.member), event, class_of(event), None);
            }
            _ => {}
        }
    }

    /// Refreshes this node's claims and memberships and reaps dead nodes' members.
    async fn heartbeat(&self) -> Done {
        let (names, memberships) = {
            let local = lock(&self.local);
            let names: Vec<(String, String)> = local
                .members
                .values()
                .flat_map(|m| m.claims.iter().cloned())
                .collect();
            let mut memberships = Vec::new();
            for (room, here) in &local.rooms {
                for m in &here.members {
                    memberships.push((room.clone(), self.entry(m)));
                }
            }
            (names, memberships)
        };
        let mut conn = self.conn().await?;
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        for chunk in names.chunks(CHUNK) {
            let mut call = self.scripts.refresh.prepare_invoke();
            call.arg(self.settings.name_ttl_ms);
            for (key, value) in chunk {
                call.key(key).arg(value);
            }
            let lost: Vec<usize> = call.invoke_async(&mut conn).await?;
            for i in lost {
                warn!(name = %chunk[i - 1].0, "cluster: another node holds a name this node claimed");
            }
        }
        let expiry = now_ms() + self.settings.presence_ttl_ms;
        for chunk in memberships.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            for (room, entry) in chunk {
                pipe.cmd("ZADD")
                    .arg(self.key("members", room))
                    .arg(expiry)
                    .arg(entry)
                    .ignore()
                    .cmd("HSETNX")
                    .arg(self.global("rooms"))
                    .arg(&**room)
                    .arg("")
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
        }
        let ghosts: Vec<String> = self
            .scripts
            .reap
            .key(self.global("rooms"))
            .key(self.global("created"))
            .arg(now_ms())
            .arg(&self.prefix)
            .invoke_async(&mut conn)
            .await?;
        for pair in ghosts.chunks(2) {
            let [room, entry] = pair else { continue };
            let Some((node, conn_id, _, name)) = parse_entry(entry) else {
                continue;
            };
            self.metrics.ghosts_reaped.inc();
            let x = format!("{node}|{conn_id}");
            let env = Envelope::new(
                &x,
                ServerMsg::Left {
                    room: b(room),
                    name: b(name),
                },
            );
            self.publish(&self.room_channel(room), &env.json()).await?;
        }
        Ok(())
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
                let mut conn = self.conn().await?;
                // A Redis restarted empty has no epoch yet: the first to look starts one.
                let (seq, now_epoch): (Option<u64>, Option<String>) = redis::pipe()
                    .cmd("GET")
                    .arg(self.key("seq", &room))
                    .cmd("SET")
                    .arg(self.global("epoch"))
                    .arg(new_epoch())
                    .arg("NX")
                    .arg("GET")
                    .query_async(&mut conn)
                    .await?;
                let now_epoch = match now_epoch {
                    Some(e) => Some(e),
                    None => {
                        redis::cmd("GET")
                            .arg(self.global("epoch"))
                            .query_async(&mut conn)
                            .await?
                    }
                };
                Ok::<_, Fail>((seq.unwrap_or(0), now_epoch.unwrap_or_default()))
            };
            let Ok(Ok((seq, now_epoch))) =
                tokio::time::timeout(self.settings.op_timeout, read).await
            else {
                *self.conn.lock().await = None;
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

/// The connection on this node an event skips (its cause), if it is one of ours.
fn except_conn(x: &str, node: &str) -> Option<ConnId> {
    let (n, conn) = x.rsplit_once('|')?;
    (n == node).then(|| conn.parse().ok()).flatten()
}

fn class_of(event: &ServerMsg<'_>) -> Class {
    match event {
        ServerMsg::Typing { .. } => Class::Typing,
        ServerMsg::Joined { .. }
        | ServerMsg::Left { .. }
        | ServerMsg::Presence { .. }
        | ServerMsg::Renamed { .. } => Class::Presence,
        _ => Class::Chat,
    }
}

fn value_at<T: redis::FromRedisValue>(reply: &[redis::Value], i: usize) -> Option<T> {
    redis::from_redis_value_ref(reply.get(i)?).ok()
}

/// A stream entry's message (fields `["e", envelope]`).
fn stored(fields: &[String]) -> Option<StoredMessage> {
    Envelope::parse(fields.get(1)?)?.message()
}

fn users_of(live: &[String]) -> Vec<(Arc<str>, Role)> {
    let mut users: Vec<(Arc<str>, Role)> = live
        .iter()
        .filter_map(|e| parse_entry(e).map(|(_, _, role, name)| (name.into(), role)))
        .collect();
    users.sort_unstable_by(|(a, _), (b, _)| name_order(a, b));
    users
}

fn empty_history(room: &str) -> Outcome {
    Outcome::History {
        room: room.into(),
        messages: Vec::new(),
        more: false,
    }
}

fn new_epoch() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// The node's one pub/sub connection: subscribes to its own channel, the cluster-wide one and
/// every room with local members; reconnects with back-off (at most 1 s) and resubscribes, then
/// fills what it missed.
async fn subscriber(inner: Arc<Inner>, mut subs: mpsc::Receiver<Sub>) {
    let mut backoff = Duration::from_millis(50);
    let node_channel = inner.node_channel(&inner.node);
    let all_channel = inner.all_channel();
    let room_prefix = format!("{}:r:", inner.prefix);
    let deadline = inner.settings.op_timeout;
    let mut waiting: Vec<(Arc<str>, oneshot::Sender<bool>)> = Vec::new();
    loop {
        let pubsub = match tokio::time::timeout(deadline, inner.client.get_async_pubsub()).await {
            Ok(Ok(p)) => Some(p),
            _ => None,
        };
        if let Some(pubsub) = pubsub {
            let (mut sink, mut stream) = pubsub.split();
            let mut subscribed: std::collections::HashSet<Arc<str>> = Default::default();
            let rooms: Vec<Arc<str>> = lock(&inner.local).rooms.keys().cloned().collect();
            let mut channels = vec![node_channel.clone(), all_channel.clone()];
            channels.extend(rooms.iter().map(|r| inner.room_channel(r)));
            let ok = matches!(
                tokio::time::timeout(deadline, sink.subscribe(&channels)).await,
                Ok(Ok(()))
            );
            if ok {
                backoff = Duration::from_millis(50);
                subscribed.extend(rooms);
                for (room, done) in waiting.drain(..) {
                    let ok = subscribed.contains(&room)
                        || matches!(
                            tokio::time::timeout(
                                deadline,
                                sink.subscribe(inner.room_channel(&room))
                            )
                            .await,
                            Ok(Ok(()))
                        );
                    if ok {
                        subscribed.insert(room);
                    }
                    let _ = done.send(ok);
                }
                // The command connection may be the one that just died with the subscription:
                // catch up over a new one. A room that cannot be caught up (Redis went away again)
                // means starting over, not a node that says it is ready with a hole in it.
                *inner.conn.lock().await = None;
                if !inner.catch_up().await {
                    warn!("cluster: could not catch up after resubscribing; trying again");
                    continue_after_backoff(&inner, &mut subs, &mut backoff).await;
                    continue;
                }
                inner.subscribed.store(true, Ordering::Relaxed);
                // A connection that died without a word is found within a second (plus the
                // deadline): the subscription's health is what /readyz and `say` go by.
                let mut ping = tokio::time::interval(Duration::from_secs(1));
                ping.tick().await;
                loop {
                    tokio::select! {
                        msg = stream.next() => {
                            let Some(msg) = msg else { break };
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
                                        tokio::time::timeout(deadline, sink.subscribe(inner.room_channel(&room))).await,
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
                                    && tokio::time::timeout(deadline, sink.unsubscribe(inner.room_channel(&room))).await.is_err()
                                {
                                    break;
                                }
                            }
                        },
                        _ = ping.tick() => {
                            // A subscribed connection answers PING with `["pong", ""]` (RESP2),
                            // not `PONG`: any answer proves it alive.
                            let alive = tokio::time::timeout(deadline, sink.ping::<redis::Value>()).await;
                            if !matches!(alive, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
            }
            warn!("cluster: lost the Redis subscription; reconnecting");
            inner.metrics.resubscribes.inc();
        }
        if !continue_after_backoff(&inner, &mut subs, &mut backoff).await {
            return;
        }
    }
}

/// The subscriber lost (or could not make) its subscription: not ready until it has one again.
/// Waits the back-off (requests for subscriptions meanwhile fail) and doubles it, up to 1 s.
/// False when the broker is gone.
async fn continue_after_backoff(
    inner: &Inner,
    subs: &mut mpsc::Receiver<Sub>,
    backoff: &mut Duration,
) -> bool {
    inner.subscribed.store(false, Ordering::Relaxed);
    inner.set_up(false);
    let pause = tokio::time::sleep(*backoff);
    tokio::pin!(pause);
    loop {
        tokio::select! {
            _ = &mut pause => break,
            sub = subs.recv() => match sub {
                None => return false,
                Some(Sub::Room(_, done)) => { let _ = done.send(false); }
                Some(Sub::Drop(_)) => {}
            },
        }
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(1));
    true
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

    fn say(&self, t: Ticket, me: &Member, room: &str, text: &str, action: bool) -> Answer {
        self.queue(me, Op::Say(t, room.into(), text.into(), action))
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

    fn conversation(&self, _: Ticket, _: &Member, _: &str, _: Option<u64>, _: usize) -> Answer {
        Answer::Now(
            Refusal::new(
                ErrorCode::Unavailable,
                "private messages are not kept in a cluster",
            )
            .into(),
        )
    }

    fn search(
        &self,
        _: Ticket,
        _: &Member,
        _: &[Arc<str>],
        _: &str,
        _: Option<u64>,
        _: usize,
    ) -> Answer {
        Answer::Now(
            Refusal::new(
                ErrorCode::Unavailable,
                "search needs durable history on one node; a cluster keeps history in Redis, which cannot search it",
            )
            .into(),
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

    fn disconnect(&self, me: &Member, rooms: &[Arc<str>]) {
        self.queue(me, Op::Disconnect(rooms.to_vec()));
    }

    fn ready(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed) && self.inner.subscribed.load(Ordering::Relaxed)
    }

    fn tick(&self) {
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
        tokio::spawn(async move {
            let beat = tokio::time::timeout(inner.settings.op_timeout * 4, inner.heartbeat()).await;
            match beat {
                Ok(Ok(())) => inner.set_up(true),
                Ok(Err(fail)) => inner.down(&fail, "heartbeat").await,
                Err(_) => inner.down(&Fail::Timeout, "heartbeat").await,
            }
            inner.beating.store(false, Ordering::Release);
        });
    }

    fn close(&self) {
        // Every connection has closed: wait (a little) for their leaves and name releases.
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
        });
    }
}
