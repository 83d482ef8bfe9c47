//! What the server sends: [`ServerMsg`] and its parts, encoded once per event ([`encode`]) and
//! decoded by clients ([`decode`]).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{ChatMessage, ErrorCode, Role, TypingState, is_false, is_zero};

/// The current time as RFC 3339 UTC with milliseconds, e.g. `2026-11-25T18:51:42.123Z`.
pub fn timestamp() -> String {
    format_time(time::OffsetDateTime::now_utc())
}

/// Milliseconds since the Unix epoch, now (what stores and keys record as `…_ms`).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The timestamp of `ms` milliseconds since the Unix epoch, as [`timestamp`] writes them.
pub fn timestamp_at(ms: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format_time(at)
}

const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
);

fn format_time(at: time::OffsetDateTime) -> String {
    at.format(FORMAT)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}

/// Milliseconds since the Unix epoch of a timestamp [`timestamp`] wrote.
pub fn timestamp_ms(ts: &str) -> Option<i64> {
    let at = time::PrimitiveDateTime::parse(ts, FORMAT).ok()?;
    Some((at.assume_utc().unix_timestamp_nanos() / 1_000_000) as i64)
}

/// A user as shown in lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserInfo<'a> {
    /// Display name.
    pub name: Cow<'a, str>,
    /// Role.
    #[serde(default)]
    pub role: Role,
    /// Their standing in the room listed (`owner`, `op`, `voice`; absent: a member).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_role: Option<Cow<'a, str>>,
}

/// A room's settings, as `welcome`, `room` and `rooms` show them (absent: a public room with no
/// topic, as every room is on a server without accounts).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoomSettings<'a> {
    /// Its topic.
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub topic: Cow<'a, str>,
    /// `private` (not listed for non-members) or `public`; absent for a room nobody owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<Cow<'a, str>>,
    /// Joined only with an invite.
    #[serde(default, skip_serializing_if = "is_false")]
    pub invite_only: bool,
    /// Only ops and voiced members speak.
    #[serde(default, skip_serializing_if = "is_false")]
    pub moderated: bool,
    /// The owner, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Cow<'a, str>>,
}

/// One ban or mute, as `bans` lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BanInfo<'a> {
    /// The account (or, instead, `address`: a range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Cow<'a, str>>,
    /// An address range (admins' bans).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Cow<'a, str>>,
    /// `ban` or `mute`.
    pub kind: Cow<'a, str>,
    /// Who made it.
    pub by: Cow<'a, str>,
    /// Why.
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub reason: Cow<'a, str>,
    /// When.
    pub since: Cow<'a, str>,
    /// When it ends (absent: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Cow<'a, str>>,
}

/// One moderation action, as `audit` lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditInfo<'a> {
    /// Who.
    pub by: Cow<'a, str>,
    /// What (`ban`, `unban`, `mute`, `op`, `voice`, `member`, `invite`, `set`, `transfer`, …).
    pub action: Cow<'a, str>,
    /// On whom.
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub target: Cow<'a, str>,
    /// Why, or what was set.
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub reason: Cow<'a, str>,
    /// When.
    pub ts: Cow<'a, str>,
}

/// A room an account is a member of, as `welcome` lists them (accounts mode): the client joins
/// each (resuming where it was).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Membership<'a> {
    /// The room.
    pub room: Cow<'a, str>,
    /// The room's numbering (as in `room`), when the server knows it at `hello`.
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub epoch: Cow<'a, str>,
    /// The room's last stored seq.
    #[serde(default)]
    pub seq: u64,
    /// The last seq the account has read there.
    #[serde(default)]
    pub read: u64,
    /// Messages by others past `read` (at most 999).
    #[serde(default)]
    pub unread: u64,
    /// Those of them that mention the account (`@name`).
    #[serde(default)]
    pub mentions: u64,
}

/// One of the user's connections, as `sessions` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo<'a> {
    /// Its id (what `logout` takes).
    pub session: Cow<'a, str>,
    /// What the client called it at `hello`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Cow<'a, str>>,
    /// When it said hello.
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub since: Cow<'a, str>,
    /// The connection asking.
    #[serde(default, skip_serializing_if = "is_false")]
    pub current: bool,
}

/// One private conversation of the user, as the `welcome` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationInfo<'a> {
    /// The other person.
    pub with: Cow<'a, str>,
    /// The last message's id.
    pub last: u64,
    /// The last message id the user has read (or sent) there.
    pub read: u64,
    /// Messages from the other past `read` (at most 999).
    pub unread: u64,
}

/// A room as shown by `rooms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomInfo<'a> {
    /// Room name.
    pub name: Cow<'a, str>,
    /// Members now.
    pub members: usize,
    /// Its topic.
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub topic: Cow<'a, str>,
    /// Not listed for others (shown to its members).
    #[serde(default, skip_serializing_if = "is_false")]
    pub private: bool,
}

/// Facts about the server sent in `welcome`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo<'a> {
    /// chatd version.
    pub version: Cow<'a, str>,
    /// Largest message a client may send.
    pub max_message_bytes: usize,
    /// Seconds between server pings (0: none).
    pub ping_interval_secs: f64,
    /// Requests per second the server sustains per connection (0: unlimited); beyond it
    /// requests get `rate_limited`, and sustained abuse closes the connection.
    #[serde(default)]
    pub rate_per_sec: f64,
    /// Requests a connection may send in a burst.
    #[serde(default)]
    pub rate_burst: u32,
    /// Typing updates per second per connection, counted apart (0: unlimited).
    #[serde(default)]
    pub typing_rate_per_sec: f64,
    /// Typing updates in a burst.
    #[serde(default)]
    pub typing_burst: u32,
}

/// Everything the server sends, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
#[allow(missing_docs)] // field meanings are documented in docs/PROTOCOL.md
pub enum ServerMsg<'a> {
    /// Reply to a successful `hello`.
    Welcome {
        name: Cow<'a, str>,
        room: Cow<'a, str>,
        /// The first page of members (sorted by name).
        users: Vec<UserInfo<'a>>,
        /// How many members the room has.
        #[serde(default)]
        user_count: usize,
        /// `message` objects, oldest first.
        history: Vec<ServerMsg<'a>>,
        /// The room's seq numbering (changes only when it restarts).
        #[serde(default)]
        epoch: Cow<'a, str>,
        /// The room's latest `seq`.
        #[serde(default)]
        seq: u64,
        /// Whether `history` resumes exactly after the `since` asked for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resumed: Option<bool>,
        /// More of the resumed messages follow: `history` with `after`.
        #[serde(default, skip_serializing_if = "is_false")]
        more: bool,
        /// The rooms the account is a member of (accounts mode), the hello's among them.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        rooms: Vec<Membership<'a>>,
        /// The user's connections now, this one included (tokens and accounts: one person may
        /// be connected several times; open mode: 1).
        #[serde(default, skip_serializing_if = "is_zero")]
        sessions: usize,
        /// The user's most recent private conversations (tokens and accounts, with a store).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        conversations: Vec<ConversationInfo<'a>>,
        /// The room's settings (owned rooms).
        #[serde(flatten, default)]
        settings: RoomSettings<'a>,
        /// This connection, as `sessions` and `logout` name it (tokens and accounts).
        #[serde(default, skip_serializing_if = "str::is_empty")]
        session: Cow<'a, str>,
        server: ServerInfo<'a>,
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Cow<'a, str>>,
    },
    /// Reply to `join`.
    Room {
        room: Cow<'a, str>,
        users: Vec<UserInfo<'a>>,
        #[serde(default)]
        user_count: usize,
        history: Vec<ServerMsg<'a>>,
        #[serde(default)]
        epoch: Cow<'a, str>,
        #[serde(default)]
        seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resumed: Option<bool>,
        #[serde(default, skip_serializing_if = "is_false")]
        more: bool,
        /// The room's settings (owned rooms).
        #[serde(flatten, default)]
        settings: RoomSettings<'a>,
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Cow<'a, str>>,
    },
    /// Reply to `rooms`.
    Rooms {
        rooms: Vec<RoomInfo<'a>>,
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Cow<'a, str>>,
    },
    /// Reply to `bans`: a room's bans and mutes in force.
    Bans {
        room: Cow<'a, str>,
        bans: Vec<BanInfo<'a>>,
        /// More than fit in one reply (the newest are listed).
        #[serde(default, skip_serializing_if = "is_false")]
        more: bool,
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Cow<'a, str>>,
    },
    /// Reply to `audit`: a room's newest moderation actions, newest first.
    Audit {
        room: Cow<'a, str>,
        entries: Vec<AuditInfo<'a>>,
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Cow<'a, str>>,
    },
    /// Reply to `sessions`: the user's connections, oldest first.
    Sessions {
        sessions: Vec<SessionInfo<'a>>,
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Cow<'a, str>>,
    },
    /// Reply to `who`.
    Who {
        room: Cow<'a, str>,
        users: Vec<UserInfo<'a>>,
        #[serde(default)]
        user_count: usize,
        /// More members follow: ask again with `after` set to the last name.
        #[serde(default, skip_serializing_if = "is_false")]
        more: bool,
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Cow<'a, str>>,
    },
    /// Reply to `history`.
    History {
        #[serde(default, skip_serializing_if = "str::is_empty")]
        room: Cow<'a, str>,
        /// For a private conversation: the other user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        with: Option<Cow<'a, str>>,
        messages: Vec<ServerMsg<'a>>,
        /// Older messages exist: ask again with `before` set to the first `seq`.
        #[serde(default, skip_serializing_if = "is_false")]
        more: bool,
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Cow<'a, str>>,
    },
    /// Reply to `search`: matches, newest first.
    Search {
        query: Cow<'a, str>,
        messages: Vec<ServerMsg<'a>>,
        /// Older matches exist: ask again with `before` set to the last `id`.
        #[serde(default, skip_serializing_if = "is_false")]
        more: bool,
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Cow<'a, str>>,
    },
    /// Reply to `say`, `pm`, `leave`, `nick`, `kick` and `announce`.
    Ack {
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Cow<'a, str>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ts: Option<Cow<'a, str>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<Cow<'a, str>>,
        /// The new name, for `nick`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<Cow<'a, str>>,
        /// For `read` of a conversation: the other person.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        with: Option<Cow<'a, str>>,
        /// For a `pm` to someone with no live connection: kept for their next `hello`.
        #[serde(default, skip_serializing_if = "is_false")]
        offline: bool,
        /// For `read`: the marker now, and what is unread past it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        read: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unread: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mentions: Option<u64>,
    },
    /// A request failed.
    Error {
        code: ErrorCode,
        message: Cow<'a, str>,
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Cow<'a, str>>,
    },
    /// A room message.
    Message(ChatMessage<'a>),
    /// Message `msg` was edited: its text is now `text` (numbered in the room's order; a PM's:
    /// `with` the other one of the conversation, no room, no seq).
    Edited {
        #[serde(default, skip_serializing_if = "str::is_empty")]
        room: Cow<'a, str>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        with: Option<Cow<'a, str>>,
        #[serde(default, skip_serializing_if = "no_number")]
        seq: u64,
        #[serde(default, skip_serializing_if = "no_number")]
        id: u64,
        msg: u64,
        text: Cow<'a, str>,
        by: Cow<'a, str>,
        ts: Cow<'a, str>,
    },
    /// Message `msg` was deleted: show a tombstone (a PM's: `with`, as for `Edited`).
    Deleted {
        #[serde(default, skip_serializing_if = "str::is_empty")]
        room: Cow<'a, str>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        with: Option<Cow<'a, str>>,
        #[serde(default, skip_serializing_if = "no_number")]
        seq: u64,
        #[serde(default, skip_serializing_if = "no_number")]
        id: u64,
        msg: u64,
        by: Cow<'a, str>,
        ts: Cow<'a, str>,
    },
    /// `from` reacted to message `msg` with `emoji` (`on`), or took it back.
    Reaction {
        room: Cow<'a, str>,
        seq: u64,
        #[serde(default)]
        id: u64,
        msg: u64,
        emoji: Cow<'a, str>,
        from: Cow<'a, str>,
        on: bool,
        ts: Cow<'a, str>,
    },
    /// A private message.
    Pm {
        id: u64,
        ts: Cow<'a, str>,
        from: Cow<'a, str>,
        #[serde(default)]
        role: Role,
        to: Cow<'a, str>,
        text: Cow<'a, str>,
        #[serde(default, skip_serializing_if = "is_false")]
        action: bool,
        /// When it was last edited.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        edited_ts: Option<Cow<'a, str>>,
        /// Deleted by its sender (a tombstone: `text` is empty).
        #[serde(default, skip_serializing_if = "is_false")]
        deleted: bool,
    },
    /// Someone joined a room.
    Joined {
        room: Cow<'a, str>,
        name: Cow<'a, str>,
        #[serde(default)]
        role: Role,
    },
    /// Someone left a room.
    Left {
        room: Cow<'a, str>,
        name: Cow<'a, str>,
    },
    /// A large room's joins and leaves since the last one (instead of `joined`/`left` each):
    /// apply `left`, then `joined`.
    Presence {
        room: Cow<'a, str>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        joined: Vec<UserInfo<'a>>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        left: Vec<Cow<'a, str>>,
        /// Joins and leaves not listed (past a page of each).
        #[serde(default, skip_serializing_if = "is_zero")]
        unlisted: usize,
        user_count: usize,
    },
    /// Someone in one of your rooms changed their name (sent once, however many rooms you share).
    Renamed {
        from: Cow<'a, str>,
        to: Cow<'a, str>,
    },
    /// An admin removed someone (sent instead of `left`).
    Kicked {
        room: Cow<'a, str>,
        name: Cow<'a, str>,
        by: Cow<'a, str>,
        reason: Cow<'a, str>,
    },
    /// Someone's typing state changed.
    Typing {
        from: Cow<'a, str>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<Cow<'a, str>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<Cow<'a, str>>,
        state: TypingState,
    },
    /// The account read `room` on another of its connections (accounts mode): the marker and
    /// what is unread past it now.
    Read {
        #[serde(default, skip_serializing_if = "str::is_empty")]
        room: Cow<'a, str>,
        /// Instead of `room`: the private conversation with this user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        with: Option<Cow<'a, str>>,
        read: u64,
        unread: u64,
        #[serde(default)]
        mentions: u64,
    },
    /// A room's settings changed (all of them given), or someone's standing there (`name`
    /// and `room_role`).
    #[serde(rename = "room_changed")]
    RoomChanged {
        room: Cow<'a, str>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        settings: Option<RoomSettings<'a>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<Cow<'a, str>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room_role: Option<Cow<'a, str>>,
    },
    /// The account joined or left `room` on another of its connections (accounts mode).
    Membership {
        room: Cow<'a, str>,
        /// `joined` or `left`.
        state: Cow<'a, str>,
    },
    /// A server-wide notice (shutdown, announcements).
    Notice {
        from: Cow<'a, str>,
        text: Cow<'a, str>,
    },
    /// Messages in `room` may have been lost (a cluster's Redis restarted or dropped them): what
    /// the client shows is no longer contiguous. Reload recent history; numbering is now `epoch`.
    Resync {
        room: Cow<'a, str>,
        epoch: Cow<'a, str>,
    },
}

impl ServerMsg<'_> {
    /// The `ref` of a direct reply.
    pub fn reference(&self) -> Option<&str> {
        match self {
            ServerMsg::Welcome { reference, .. }
            | ServerMsg::Room { reference, .. }
            | ServerMsg::Rooms { reference, .. }
            | ServerMsg::Who { reference, .. }
            | ServerMsg::Sessions { reference, .. }
            | ServerMsg::Bans { reference, .. }
            | ServerMsg::Audit { reference, .. }
            | ServerMsg::History { reference, .. }
            | ServerMsg::Search { reference, .. }
            | ServerMsg::Ack { reference, .. }
            | ServerMsg::Error { reference, .. } => reference.as_deref(),
            _ => None,
        }
    }
}

/// A PM's change has no seq nor id of its own.
fn no_number(n: &u64) -> bool {
    *n == 0
}

/// Shorthand for a borrowed field.
pub fn b(s: &str) -> Cow<'_, str> {
    Cow::Borrowed(s)
}

/// Encodes a message once, into a frame payload that recipients share.
pub fn encode(msg: &ServerMsg<'_>) -> Utf8Bytes {
    // Serialising these types cannot fail: every map key is a string and no Serialize impl errors.
    let json = serde_json::to_string(msg).unwrap_or_else(|_| String::from("{}"));
    Utf8Bytes::from(json)
}

/// How many bytes `s` takes as a JSON string, quotes included (what `encode` writes for it).
pub fn json_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// Appends a message's encoding to `buf` (a frame being built around it).
pub fn encode_into(msg: &ServerMsg<'_>, buf: &mut Vec<u8>) {
    // As for `encode`: writing these types into a Vec cannot fail.
    let _ = serde_json::to_writer(buf, msg);
}

/// Decodes a frame from the server (clients). Unknown `type`s are an error: skip them.
pub fn decode(text: &str) -> Result<ServerMsg<'static>, serde_json::Error> {
    serde_json::from_str(text)
}
