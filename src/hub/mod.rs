//! The hub: the broker seam between chat sessions and the shared state of the chat.
//!
//! A session turns each request into one call on a [`Broker`]: who is online, which rooms exist,
//! each room's members, sequence numbers and history, and fan-out are the broker's business. Calls
//! never wait. Each carries the caller's identity (a [`Member`]) and a [`Ticket`] naming the
//! request, and returns either the [`Outcome`] at once ([`Answer::Now`]) or [`Answer::Later`], in
//! which case the broker hands the outcome to [`Member::answer`] when it has it (after a round trip
//! to Redis, say). Late outcomes travel through the caller's mailbox as control entries and wake its
//! connection task; the session turns immediate and late outcomes into replies in one place, in
//! request order.
//!
//! The contract every broker keeps (and the contract tests in `tests/it/broker.rs` check):
//! - one caller's calls take effect in the order they are made (a `say` after a `join` finds the
//!   caller in the room, even if neither has been answered yet);
//! - a late outcome that cannot be delivered (the caller is gone) leaves nothing behind: a name it
//!   claimed is released, a room it joined is left;
//! - frames for other connections are pushed only through [`Delivery::deliver`], one encoding per
//!   event, so every broker fans out the same way (a cluster broker calls it for events that
//!   arrive from other nodes).
//!
//! [`LocalBroker`] is the single-process broker. This module knows no JSON: events are
//! [`ServerMsg`] values, and `protocol` encodes them.

pub mod changes;
mod cluster;
mod delivery;
mod durable;
mod limits;
mod local;
mod presence;

use std::any::Any;
use std::net::IpAddr;
use std::sync::Arc;

pub use crate::store::Pm;
pub use cluster::RedisBroker;
pub(crate) use delivery::Delivery;
pub use limits::HubLimits;
pub use local::LocalBroker;

use crate::connection::mailbox::Mailbox;
use crate::protocol::{ChatMessage, ErrorCode, Role, ServerMsg, TypingState};

pub(crate) use crate::sync::lock;

/// Identifies one connection for the life of the process.
pub type ConnId = u64;

/// A new connection id, unique in this process (the HTTP API's sessions take theirs here too).
pub fn next_conn() -> ConnId {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Names one request of one connection, so a late outcome finds its way back to it.
pub type Ticket = u64;

/// A stored room message.
pub type StoredMessage = ChatMessage<'static>;

/// A connection as the hub sees it: who it is, and where frames for it go.
#[derive(Debug, Clone)]
pub struct Member {
    conn: ConnId,
    name: Arc<str>,
    role: Role,
    plain: bool,
    /// The client's address, as per-address budgets count it (`addr::address_key`).
    ip: IpAddr,
    mailbox: Arc<Mailbox>,
    /// What `sessions` shows of this connection (tokens and accounts).
    about: Option<Arc<About>>,
}

/// What `sessions` shows of a connection besides its id: the device it named at `hello`, and
/// when that was.
#[derive(Debug)]
pub struct About {
    /// At most 32 characters.
    pub device: Option<Arc<str>>,
    /// A timestamp (`protocol::timestamp`).
    pub since: Arc<str>,
    /// The id (`jti`) of the token it signed in with, if any (a revocation closes it).
    pub jti: Option<Box<str>>,
}

/// One of a user's connections, as `sessions` lists it.
#[derive(Debug, Clone)]
pub struct SessionView {
    /// Its id (the local broker's connection number; a cluster's `node|conn`).
    pub id: String,
    /// The device it named.
    pub device: Option<Arc<str>>,
    /// When it said hello (empty when a cluster's Redis lost it).
    pub since: Arc<str>,
    /// The connection asking.
    pub current: bool,
}

impl Member {
    pub(crate) fn new(
        conn: ConnId,
        name: Arc<str>,
        role: Role,
        plain: bool,
        ip: IpAddr,
        mailbox: Arc<Mailbox>,
    ) -> Member {
        Member {
            conn,
            name,
            role,
            plain,
            ip: crate::addr::address_key(ip),
            mailbox,
            about: None,
        }
    }

    /// The same member, described for `sessions`.
    pub(crate) fn with_about(mut self, about: About) -> Member {
        self.about = Some(Arc::new(about));
        self
    }

    /// What `sessions` shows of it.
    pub fn about(&self) -> Option<&About> {
        self.about.as_deref()
    }

    /// How `sessions` shows this connection, named `id`.
    pub(crate) fn view(&self, id: String, current: bool) -> SessionView {
        let about = self.about();
        SessionView {
            id,
            device: about.and_then(|a| a.device.clone()),
            since: about.map_or_else(|| "".into(), |a| a.since.clone()),
            current,
        }
    }

    /// Closes the connection as logged out (1008), after what is queued for it.
    pub(crate) fn log_out(&self) {
        self.mailbox.log_out();
    }

    /// Whether it was logged out (closing: `sessions` no longer lists it).
    pub(crate) fn logged_out(&self) -> bool {
        self.mailbox.logged_out()
    }

    /// The connection.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// Display name (case preserved).
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// A plain-text session: gets one-line renderings, never JSON.
    pub fn plain(&self) -> bool {
        self.plain
    }

    /// The address per-address budgets count this member under.
    pub fn address(&self) -> IpAddr {
        self.ip
    }

    /// Hands a late outcome to this member's session. False if the connection is gone, in which
    /// case the broker must undo what the request did.
    pub fn answer(&self, ticket: Ticket, outcome: Outcome) -> bool {
        self.mailbox
            .push_control(Box::new(Late { ticket, outcome }))
    }

    /// The same connection under another name.
    pub(crate) fn renamed(&self, name: Arc<str>) -> Member {
        Member {
            name,
            ..self.clone()
        }
    }

    /// Tells the connection to close (kicked), after what is queued for it.
    pub(crate) fn kick(&self, reason: String) {
        self.mailbox.kick(reason);
    }
}

/// A late outcome on its way through a mailbox.
pub(crate) struct Late {
    pub ticket: Ticket,
    pub outcome: Outcome,
}

/// Takes the late outcomes waiting in a mailbox, oldest first.
pub(crate) fn take_late(mailbox: &Mailbox) -> Vec<Late> {
    mailbox
        .take_controls()
        .into_iter()
        .filter_map(|entry| (entry as Box<dyn Any>).downcast::<Late>().ok())
        .map(|late| *late)
        .collect()
}

/// What a broker call returns.
#[derive(Debug)]
pub enum Answer {
    /// The outcome is known now.
    Now(Outcome),
    /// The outcome will arrive through [`Member::answer`].
    Later,
}

/// The outcome of one request.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// `hello` succeeded: the name is taken and the first room joined.
    Welcome(RoomView),
    /// `join` succeeded.
    Joined(RoomView),
    /// `leave` succeeded.
    Left {
        /// The room left.
        room: Arc<str>,
    },
    /// A message was accepted.
    Sent(Receipt),
    /// The message a change or a reply names, read from the store: ask again with it.
    Target(changes::Target),
    /// Typing was relayed (no reply).
    Relayed,
    /// The members of a room.
    Who {
        /// The room.
        room: Arc<str>,
        /// Members, sorted by name.
        users: Vec<(Arc<str>, Role)>,
    },
    /// Every room, with its member count, sorted by name.
    Rooms(Vec<(Arc<str>, usize)>),
    /// A page of a room's history, oldest first.
    History {
        /// The room.
        room: Arc<str>,
        /// The messages.
        messages: Vec<Arc<StoredMessage>>,
        /// More messages exist in the direction paged.
        more: bool,
    },
    /// A page of a private conversation, oldest first.
    Conversation {
        /// The other user, as asked for.
        with: Arc<str>,
        /// The messages.
        messages: Vec<crate::store::Pm>,
        /// Older messages exist.
        more: bool,
    },
    /// Search results, newest first.
    Found {
        /// The query.
        query: Arc<str>,
        /// Matching messages.
        messages: Vec<Arc<StoredMessage>>,
        /// Older matches exist.
        more: bool,
    },
    /// `nick` succeeded: the caller is now called `name`.
    Renamed {
        /// The new name.
        name: Arc<str>,
    },
    /// The user's connections, oldest first.
    Sessions(Vec<SessionView>),
    /// Done, nothing to report (kick, announce).
    Done,
    /// Not a broker's: the accounts service signed the caller in as `name` (the session then
    /// says hello to the broker).
    SignedIn {
        /// The account's name, as its owner spells it.
        name: Arc<str>,
        /// Its role.
        role: Role,
        /// The rooms it is a member of, with what is unread in each.
        rooms: Vec<crate::protocol::Membership<'static>>,
        /// Its most recent private conversations.
        conversations: Vec<crate::protocol::ConversationInfo<'static>>,
        /// What others wrote to it there that it has not read (sent after the welcome).
        waiting: Vec<Pm>,
    },
    /// Not a broker's: the accounts service moved a read marker (`read`).
    ReadState(crate::protocol::Membership<'static>),
    /// Not a broker's: the accounts service moved a conversation's marker (`read` with `with`).
    PmRead(crate::protocol::ConversationInfo<'static>),
    /// A PM whose recipient has no live connection (with a store, where names are owned):
    /// numbered, not delivered; the session hands it to the accounts service to keep.
    Unreached(Box<Pm>),
    /// Not a broker's: the accounts service kept the PM for its recipient's next `hello`.
    Kept(Box<Pm>),
    /// Not a broker's: banned from `room` (told through [`EXPELLED`]): the session leaves it.
    Expelled {
        /// The room.
        room: Arc<str>,
        /// Who banned.
        by: Arc<str>,
        /// Why.
        reason: Arc<str>,
    },
    /// Not a broker's: what a moderation request came to.
    Moderated(crate::accounts::moderation::Moderated),
    /// Refused: the client sees this error.
    Refused(Refusal),
}

/// The ticket of an [`Outcome::Expelled`]: no request asked for it.
pub const EXPELLED: Ticket = Ticket::MAX;

/// What a joiner sees of a room.
#[derive(Debug, Clone)]
pub struct RoomView {
    /// The room's normalised name.
    pub room: Arc<str>,
    /// The first members by name (at most `limits.users_per_page`), the joiner among them if
    /// they sort there.
    pub users: Vec<(Arc<str>, Role)>,
    /// All members, the joiner included.
    pub user_count: usize,
    /// Messages, oldest first: the most recent, or (resumed) those after `since`.
    pub history: Vec<Arc<StoredMessage>>,
    /// The room's seq numbering.
    pub epoch: Arc<str>,
    /// The room's latest seq.
    pub seq: u64,
    /// For a `hello`: the user's connections now, this one included (1 in open mode).
    pub sessions: usize,
    /// Whether `history` resumes exactly after the `since` asked for (`None`: none asked).
    pub resumed: Option<bool>,
    /// More resumed messages exist than `history` holds (page with `after`).
    pub more: bool,
}

/// A client resuming a room: it has everything up to `since` in `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The last seq the client has.
    pub since: u64,
    /// The room's epoch that seq belongs to.
    pub epoch: String,
}

/// Which page of a room's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Messages with seq below this (the newest of them).
    pub before: Option<u64>,
    /// Messages with seq above this (the oldest of them); wins over `before`.
    pub after: Option<u64>,
    /// At most this many.
    pub limit: usize,
}

/// The message a `say` answers, and whether the store already showed it is there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reply {
    /// The message's id.
    pub to: u64,
    /// The store showed it is there (memory no longer holds it).
    pub found: bool,
}

/// Receipt for an accepted message (or change).
#[derive(Debug, Clone)]
pub struct Receipt {
    /// Server-assigned message id.
    pub id: u64,
    /// Per-room sequence number (`None` for PMs).
    pub seq: Option<u64>,
    /// Server timestamp.
    pub ts: Arc<str>,
    /// A PM's recipient, as they spell their name.
    pub to: Option<Arc<str>>,
}

/// A refused request: the error code and the message the client sees.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// Stable error code.
    pub code: ErrorCode,
    /// Human-readable message (about the client's request only).
    pub message: String,
}

impl Refusal {
    /// A refusal.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }

    /// `no_such_user` for `name`.
    pub fn no_such_user(name: &str) -> Refusal {
        let shown: String = name.chars().take(crate::protocol::MAX_NAME_BYTES).collect();
        Refusal::new(
            ErrorCode::NoSuchUser,
            format!("nobody called {shown:?} is online"),
        )
    }

    /// `not_found`: `logout` of a session the user does not have.
    pub fn no_such_session(id: &str) -> Refusal {
        let shown: String = id.chars().take(64).collect();
        Refusal::new(
            ErrorCode::NotFound,
            format!("you have no session {shown:?} (see `sessions`)"),
        )
    }

    /// `too_many_sessions`: the user has `max` connections already.
    pub fn too_many_sessions(max: usize) -> Refusal {
        Refusal::new(
            ErrorCode::TooManySessions,
            format!(
                "you are connected {max} times already (the most this server allows); close one first"
            ),
        )
    }

    /// `name_taken` for `name`.
    pub fn name_taken(name: &str) -> Refusal {
        Refusal::new(ErrorCode::NameTaken, format!("the name {name:?} is taken"))
    }

    /// `name_taken` for a name that would pass for `other`, who is online.
    pub fn looks_like(name: &str, other: &str) -> Refusal {
        Refusal::new(
            ErrorCode::NameTaken,
            format!("the name {name:?} looks too much like {other:?}, who is online"),
        )
    }

    /// `not_in_room` for `room`.
    pub fn not_in_room(room: &str) -> Refusal {
        Refusal::new(ErrorCode::NotInRoom, format!("you are not in #{room}"))
    }

    /// `unavailable`: the server cannot do it now (nothing was done); retrying may work.
    pub fn unavailable(why: impl Into<String>) -> Refusal {
        Refusal::new(ErrorCode::Unavailable, why)
    }

    /// `no_such_room` for `room`.
    pub fn no_such_room(room: &str) -> Refusal {
        Refusal::new(ErrorCode::NoSuchRoom, format!("there is no room #{room}"))
    }

    /// `too_many_rooms` for an address that created its share of rooms.
    pub fn too_many_rooms_created() -> Refusal {
        Refusal::new(
            ErrorCode::TooManyRooms,
            "users from your address have created too many rooms; leave some first",
        )
    }

    /// `too_many_rooms` at the server's cap.
    pub fn server_full() -> Refusal {
        Refusal::new(ErrorCode::TooManyRooms, "the server has too many rooms")
    }
}

impl From<Refusal> for Outcome {
    fn from(r: Refusal) -> Outcome {
        Outcome::Refused(r)
    }
}

/// Where a typing indication goes.
#[derive(Debug, Clone, Copy)]
pub enum TypingTo<'a> {
    /// A room (normalised name) the sender is in.
    Room(&'a str),
    /// A user, by name as given.
    User(&'a str),
}

/// The shared state of the chat, behind one seam. See the module docs for the contract.
///
/// Room names are normalised (`protocol::normalize_room`) and texts checked by the session before a
/// call; the broker checks what only it can know (names taken, membership, caps).
pub trait Broker: Send + Sync + std::fmt::Debug {
    /// Claims `me.name()` (unique as `protocol::name_key` keys it; in open mode not a
    /// `protocol::look_alike` of a name online either) and joins `room`, in one
    /// step: on failure nothing is taken. A room that cannot be created gives the default room.
    /// With `resume`, the view holds what the client missed (see [`RoomView`]). `Welcome`, or
    /// `name_taken`.
    fn hello(&self, ticket: Ticket, me: &Member, room: &str, resume: Option<&Resume>) -> Answer;
    /// Joins `room` (creating it), announcing `joined` to the others. `Joined`, or
    /// `too_many_rooms`. Joining a room one is in announces nothing.
    fn join(&self, ticket: Ticket, me: &Member, room: &str, resume: Option<&Resume>) -> Answer;
    /// Leaves `room`, announcing `left`. `Left`, or `not_in_room`.
    fn leave(&self, ticket: Ticket, me: &Member, room: &str) -> Answer;
    /// Says `text` in `room`: it gets the room's next `seq`, is kept in history and reaches every
    /// other member. `Sent` with the seq, or `not_in_room`.
    /// With `reply`, it answers a message of the same room (`not_found` if there is none; one
    /// only the store holds is read first and answered as `Target`, and the session asks again
    /// with `found`).
    fn say(
        &self,
        ticket: Ticket,
        me: &Member,
        room: &str,
        text: &str,
        action: bool,
        reply: Option<Reply>,
    ) -> Answer;
    /// Changes a message of `room` (see [`changes`]): the change is numbered like a message,
    /// reaches every member and is kept; the message is kept changed. `Sent` (without a seq when
    /// it changed nothing), `not_found`, `forbidden`; a message only the store holds is read
    /// first and answered as `Target`, and the session asks again with it as `known`.
    fn change(
        &self,
        ticket: Ticket,
        me: &Member,
        room: &str,
        ask: &changes::ChangeAsk,
        known: Option<changes::Target>,
    ) -> Answer;
    /// Edits or deletes `me`'s PM `ask` names, in the conversation `with` someone (kept in the
    /// store: read first and answered as `Target`, then asked again with it as `known`). Both
    /// sides' connections get the event. `Sent` (no seq), `not_found`, `forbidden`.
    fn change_pm(
        &self,
        ticket: Ticket,
        me: &Member,
        with: &str,
        ask: &changes::ChangeAsk,
        known: Option<changes::Target>,
    ) -> Answer;
    /// A private message. `Sent` (no seq), or `no_such_user`.
    fn pm(&self, ticket: Ticket, me: &Member, to: &str, text: &str, action: bool) -> Answer;
    /// Relays a typing state (throttling is the session's job). `Relayed`, or `no_such_user`.
    fn typing(&self, ticket: Ticket, me: &Member, to: TypingTo<'_>, state: TypingState) -> Answer;
    /// The members of `room`. `Who`, or `no_such_room` / `not_in_room`.
    fn who(&self, ticket: Ticket, me: &Member, room: &str) -> Answer;
    /// Every room. `Rooms`.
    fn rooms(&self, ticket: Ticket, me: &Member) -> Answer;
    /// A page of `room`'s history, from memory or from the store. `History`, or `no_such_room` /
    /// `not_in_room` / `unavailable`.
    fn history(&self, ticket: Ticket, me: &Member, room: &str, page: Page) -> Answer;
    /// A page of `me`'s private conversation `with` someone (ids below `before`).
    /// `Conversation`, or `unavailable` where PMs are not kept.
    fn conversation(
        &self,
        ticket: Ticket,
        me: &Member,
        with: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Answer;
    /// Full-text search in `rooms` (the session checked `me` is in them), newest first, ids
    /// below `before`. `Found`, or `unavailable` without durable history.
    fn search(
        &self,
        ticket: Ticket,
        me: &Member,
        rooms: &[Arc<str>],
        query: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Answer;
    /// Removes `name` from every room (announcing `kicked`), frees the name and closes their
    /// connection. `Done`, or `no_such_user`. Only admins get here.
    fn kick(&self, ticket: Ticket, me: &Member, name: &str, reason: &str) -> Answer;
    /// Renames `me` to `name` (valid, checked by the session), unique like a hello's; everyone
    /// sharing a room with `me` gets one `renamed`. `Renamed`, or `name_taken`. Later calls come
    /// with the new name.
    fn nick(&self, ticket: Ticket, me: &Member, name: &str) -> Answer;
    /// A `notice` from `me` to everyone online. `Done`. Only admins get here.
    fn announce(&self, ticket: Ticket, me: &Member, text: &str) -> Answer;
    /// Takes `me` out of `room` as banned: the room sees `kicked` (by `by`, for `reason`)
    /// instead of `left` when it was the user's last connection there. `Left`, or
    /// `not_in_room`.
    fn leave_kicked(
        &self,
        ticket: Ticket,
        me: &Member,
        room: &str,
        by: &str,
        reason: &str,
    ) -> Answer;
    /// This node's connections that `pick` picks (a user's, or those from an address range).
    fn local_members(&self, pick: &dyn Fn(&Member) -> bool) -> Vec<Member>;
    /// Hands `event` to this node's connections in `room`.
    fn tell_local(&self, room: &str, event: &ServerMsg<'_>);
    /// `me`'s user's connections, oldest first: `Sessions`.
    fn sessions(&self, ticket: Ticket, me: &Member) -> Answer;
    /// Closes `me`'s user's connection `session` (1008 `logged out`), `me` itself included:
    /// `Done`, or `not_found`.
    fn logout(&self, ticket: Ticket, me: &Member, session: &str) -> Answer;
    /// How `sessions` and `logout` name `me`.
    fn session_id(&self, me: &Member) -> String {
        me.conn().to_string()
    }
    /// Hands `event` to `me`'s user's other connections (with tokens or accounts a user may have
    /// several): what one device did that the others should show (a read marker, a membership).
    /// Best effort, in order with `me`'s other calls; no answer.
    fn to_own(&self, me: &Member, event: ServerMsg<'static>);
    /// The connection ended: leave `rooms` (announcing `left`) and free the name if `me` holds it.
    /// Called once per connection that said hello (or tried to), after its other calls.
    fn disconnect(&self, me: &Member, rooms: &[Arc<str>]);
    /// The durable store the broker keeps history in, if any (the accounts service reads unread
    /// counts beside it, and waits for its commits).
    fn store(&self) -> Option<Arc<crate::store::Store>> {
        None
    }
    /// Whether the broker can do its work (`/readyz`): its backends answer.
    fn ready(&self) -> bool {
        true
    }
    /// Called every `limits.presence_batch_ms`: tell large rooms who joined and left since the
    /// last tick (one `presence` event each).
    fn tick(&self) {}
    /// The server is stopping and every connection has closed: make what was accepted durable.
    fn close(&self) {}
}

/// The order members are listed in: by name case-insensitively (ASCII folding, no allocation),
/// ties broken by the exact bytes. `who` pages with `after` in this order.
pub(crate) fn name_order(a: &str, b: &str) -> std::cmp::Ordering {
    let fold = |c: u8| c.to_ascii_lowercase();
    a.bytes()
        .map(fold)
        .cmp(b.bytes().map(fold))
        .then_with(|| a.cmp(b))
}
