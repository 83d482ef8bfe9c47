//! The wire format, protocol v1: the only module that knows what a frame looks like.
//!
//! Both directions are Rust types with serde derives, shared by the server and the client:
//! - [`ClientMsg`] (in a [`Request`]) is what clients send. The server parses it with
//!   [`parse_request`], whose errors name the field at fault; clients serialise it with
//!   [`Request::to_json`].
//! - [`ServerMsg`] is everything the server sends. Its string fields are [`Cow`]s: the server
//!   encodes borrowed values once per message ([`encode`]) and shares the bytes with every
//!   recipient; clients deserialise owned values ([`decode`]).
//!
//! Plain-text sessions (first frame not a JSON object) get the one-line renderings in [`plain`].
//! [`CloseReason`] lists every way the server ends a connection: its close code, its reason text and
//! its metric label. `docs/PROTOCOL.md` is the human version of this file.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Longest user or room name, in bytes (names are ASCII).
pub const MAX_NAME_BYTES: usize = 32;
/// Longest request `id` a client may send, in bytes.
pub const MAX_ID_BYTES: usize = 64;
/// Names nobody may take, compared case-insensitively.
pub const RESERVED_NAMES: &[&str] = &["server", "system", "admin"];
/// The room a `hello` without `room` joins.
pub const DEFAULT_ROOM: &str = "lobby";
/// The sender name used on server notices.
pub const SERVER_NAME: &str = "server";

/// Stable error codes sent in `error` frames. Clients branch on these, so they never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A request other than `hello` came before a successful `hello`.
    HelloRequired,
    /// `hello` on a connection that already has a name.
    AlreadyWelcomed,
    /// The name breaks the naming rules.
    NameInvalid,
    /// Someone else has the name (case-insensitively).
    NameTaken,
    /// The room name breaks the naming rules.
    RoomInvalid,
    /// The room does not exist.
    NoSuchRoom,
    /// The request names a room the sender is not in.
    NotInRoom,
    /// Nobody by that name is online.
    NoSuchUser,
    /// The sender is in too many rooms, or the server has too many.
    TooManyRooms,
    /// Too many requests; this one was not carried out.
    RateLimited,
    /// The frame is not a valid request (bad JSON, missing or mistyped field, bad value).
    BadRequest,
    /// The `type` is not one this server knows.
    UnknownType,
    /// The token is missing, invalid, expired or for another name (the connection is closed).
    Unauthorized,
    /// Only admins may do this.
    Forbidden,
    /// The server cannot carry this out right now (a backend is down or behind): nothing was
    /// done, and retrying later may succeed.
    Unavailable,
    /// A message was handed on but its acceptance was not confirmed in time (a cluster's Redis
    /// slowed down): it may have been said. Check the history before sending it again.
    Unconfirmed,
}

/// A user's role, carried on messages and in user lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An ordinary user.
    #[default]
    User,
    /// May kick users and announce.
    Admin,
}

/// A typing state, with IRCv3 `+typing` semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TypingState {
    /// Typing now.
    Active,
    /// Text entered but not being typed.
    Paused,
    /// Stopped (cleared the input or sent).
    Done,
}

/// One request from a client, after validation of its shape (not of its meaning).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientMsg {
    /// Pick a name and join a first room.
    Hello {
        /// Requested name.
        name: String,
        /// First room; `lobby` when absent.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        /// Signed token (required when the server runs with `auth.mode = "token"`).
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Resume the room from after this `seq` (with `epoch`).
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        /// The room's `epoch` the `since` belongs to.
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
    },
    /// Join a room.
    Join {
        /// Room name as given.
        room: String,
        /// Resume the room from after this `seq` (with `epoch`).
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        /// The room's `epoch` the `since` belongs to.
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
    },
    /// Leave a room.
    Leave {
        /// Room name as given.
        room: String,
    },
    /// Say something in a room.
    Say {
        /// Room; the `hello` room when absent.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        /// The message.
        text: String,
        /// A `/me` emote.
        #[serde(skip_serializing_if = "is_false")]
        action: bool,
    },
    /// Private message.
    Pm {
        /// Recipient name.
        to: String,
        /// The message.
        text: String,
        /// A `/me` emote.
        #[serde(skip_serializing_if = "is_false")]
        action: bool,
    },
    /// Typing indication for a room or a user.
    Typing {
        /// Where the typing happens.
        #[serde(flatten)]
        target: Target,
        /// The new state.
        state: TypingState,
    },
    /// List rooms.
    Rooms,
    /// List members of a room, a page at a time.
    Who {
        /// Room; the `hello` room when absent.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        /// Only members whose name sorts after this one (the last name of the previous page).
        #[serde(skip_serializing_if = "Option::is_none")]
        after: Option<String>,
    },
    /// Disconnect a user (admins only).
    Kick {
        /// Who.
        name: String,
        /// Why (shown to everyone; cut to fit a close frame for the kicked user).
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A notice to everyone online (admins only).
    Announce {
        /// The notice.
        text: String,
    },
    /// Change one's name.
    Nick {
        /// The new name.
        name: String,
    },
    /// Page through a room's history (back with `before`, forward with `after`), or the private
    /// conversation `with` someone.
    History {
        /// Room; the `hello` room when absent.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        /// Only messages with `seq` below this (with `with`: message `id` below this).
        #[serde(skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        /// Only messages with `seq` above this, the oldest of them.
        #[serde(skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
        /// At most this many.
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
        /// The private conversation with this user instead of a room.
        #[serde(skip_serializing_if = "Option::is_none")]
        with: Option<String>,
    },
    /// Full-text search in the rooms one is in (or one of them).
    Search {
        /// Words to find.
        query: String,
        /// Only this room.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        /// At most this many.
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
        /// Only messages with an `id` below this (paging back).
        #[serde(skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
    },
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl ClientMsg {
    /// Every request type, as [`ClientMsg::kind`] names it (the labels of
    /// `chatd_messages_received_total`).
    pub const KINDS: &'static [&'static str] = &[
        "hello", "join", "leave", "say", "pm", "typing", "rooms", "who", "history", "kick",
        "announce", "nick", "search",
    ];

    /// The request's `type`, as the wire names it (a bounded metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMsg::Hello { .. } => "hello",
            ClientMsg::Join { .. } => "join",
            ClientMsg::Leave { .. } => "leave",
            ClientMsg::Say { .. } => "say",
            ClientMsg::Pm { .. } => "pm",
            ClientMsg::Typing { .. } => "typing",
            ClientMsg::Rooms => "rooms",
            ClientMsg::Who { .. } => "who",
            ClientMsg::History { .. } => "history",
            ClientMsg::Kick { .. } => "kick",
            ClientMsg::Announce { .. } => "announce",
            ClientMsg::Nick { .. } => "nick",
            ClientMsg::Search { .. } => "search",
        }
    }
}

/// Where a typing indication is aimed: `"room": R` or `"to": U` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Target {
    /// A room, by name as given.
    #[serde(rename = "room")]
    Room(String),
    /// A user, by name as given.
    #[serde(rename = "to")]
    User(String),
}

/// A parsed request and its optional correlation id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Request {
    /// The client's `id`, returned as `ref` on direct replies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What was asked.
    #[serde(flatten)]
    pub msg: ClientMsg,
}

impl Request {
    /// A request with an id.
    pub fn new(id: impl Into<String>, msg: ClientMsg) -> Request {
        Request {
            id: Some(id.into()),
            msg,
        }
    }

    /// The request as a text frame's payload.
    pub fn to_json(&self) -> String {
        // Serialising these types cannot fail: every key is a string.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A request that could not be parsed, with what to tell the client.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestError {
    /// The client's `id`, when it could be read.
    pub id: Option<String>,
    /// The error code to send.
    pub code: ErrorCode,
    /// Human-readable explanation (about the client's input only).
    pub message: String,
}

/// Every field any request may carry; which ones a type needs is checked after.
#[derive(Deserialize)]
struct RawRequest {
    #[serde(rename = "type")]
    kind: Option<String>,
    id: Option<String>,
    name: Option<String>,
    room: Option<String>,
    text: Option<String>,
    to: Option<String>,
    state: Option<TypingState>,
    action: Option<bool>,
    before: Option<u64>,
    limit: Option<usize>,
    token: Option<String>,
    reason: Option<String>,
    after: Option<serde_json::Value>,
    since: Option<u64>,
    epoch: Option<String>,
    with: Option<String>,
    query: Option<String>,
}

/// Only the `id`, for answering requests that failed to parse as a whole.
#[derive(Deserialize)]
struct IdOnly {
    id: Option<String>,
}

/// Whether a text frame is a JSON object (and so a protocol request rather than a plain-text line).
pub fn looks_like_json_object(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

/// Parses one text frame into a request.
pub fn parse_request(text: &str) -> Result<Request, RequestError> {
    let raw: RawRequest = serde_json::from_str(text).map_err(|e| {
        let id = serde_json::from_str::<IdOnly>(text)
            .ok()
            .and_then(|r| r.id)
            .filter(|id| id.len() <= MAX_ID_BYTES);
        RequestError {
            id,
            code: ErrorCode::BadRequest,
            message: format!("malformed request: {e}"),
        }
    })?;
    let id = raw.id.clone();
    if let Some(id) = &id
        && id.len() > MAX_ID_BYTES
    {
        return Err(RequestError {
            id: None,
            code: ErrorCode::BadRequest,
            message: format!("id is longer than {MAX_ID_BYTES} bytes"),
        });
    }
    let fail = |code, message: String| RequestError {
        id: id.clone(),
        code,
        message,
    };
    let Some(kind) = raw.kind.as_deref() else {
        return Err(fail(ErrorCode::BadRequest, "missing field `type`".into()));
    };
    // Sequence numbers and ids stay below 2^63 (what databases store): a larger one names
    // nothing, and is refused rather than silently matching nothing.
    let after_seq = raw.after.as_ref().and_then(serde_json::Value::as_u64);
    for (field, value) in [
        ("since", raw.since),
        ("before", raw.before),
        ("after", after_seq),
    ] {
        if value.is_some_and(|v| v > i64::MAX as u64) {
            return Err(fail(
                ErrorCode::BadRequest,
                format!("`{field}` must be below 2^63"),
            ));
        }
    }
    let need = |field: Option<String>, name: &str| {
        field.ok_or_else(|| {
            fail(
                ErrorCode::BadRequest,
                format!("`{kind}` needs field `{name}`"),
            )
        })
    };
    let msg = match kind {
        "hello" => ClientMsg::Hello {
            name: need(raw.name, "name")?,
            room: raw.room,
            token: raw.token,
            since: raw.since,
            epoch: raw.epoch,
        },
        "kick" => ClientMsg::Kick {
            name: need(raw.name, "name")?,
            reason: raw.reason,
        },
        "announce" => ClientMsg::Announce {
            text: need(raw.text, "text")?,
        },
        "nick" => ClientMsg::Nick {
            name: need(raw.name, "name")?,
        },
        "join" => ClientMsg::Join {
            room: need(raw.room, "room")?,
            since: raw.since,
            epoch: raw.epoch,
        },
        "leave" => ClientMsg::Leave {
            room: need(raw.room, "room")?,
        },
        "say" => ClientMsg::Say {
            room: raw.room,
            text: need(raw.text, "text")?,
            action: raw.action.unwrap_or(false),
        },
        "pm" => ClientMsg::Pm {
            to: need(raw.to, "to")?,
            text: need(raw.text, "text")?,
            action: raw.action.unwrap_or(false),
        },
        "typing" => {
            let target = match (raw.room, raw.to) {
                (Some(room), None) => Target::Room(room),
                (None, Some(to)) => Target::User(to),
                _ => {
                    return Err(fail(
                        ErrorCode::BadRequest,
                        "`typing` needs exactly one of `room` and `to`".into(),
                    ));
                }
            };
            let state = raw.state.ok_or_else(|| {
                fail(ErrorCode::BadRequest, "`typing` needs field `state`".into())
            })?;
            ClientMsg::Typing { target, state }
        }
        "rooms" => ClientMsg::Rooms,
        "who" => ClientMsg::Who {
            room: raw.room,
            after: match raw.after {
                None => None,
                Some(serde_json::Value::String(s)) => Some(s),
                Some(_) => {
                    return Err(fail(
                        ErrorCode::BadRequest,
                        "`who` field `after` must be a name".into(),
                    ));
                }
            },
        },
        "history" => ClientMsg::History {
            room: raw.room,
            before: raw.before,
            after: match raw.after {
                None => None,
                Some(v) => Some(v.as_u64().ok_or_else(|| {
                    fail(
                        ErrorCode::BadRequest,
                        "`history` field `after` must be a seq".into(),
                    )
                })?),
            },
            limit: raw.limit,
            with: raw.with,
        },
        "search" => ClientMsg::Search {
            query: need(raw.query, "query")?,
            room: raw.room,
            limit: raw.limit,
            before: raw.before,
        },
        other => {
            let shown: String = other.chars().take(MAX_NAME_BYTES).collect();
            return Err(fail(
                ErrorCode::UnknownType,
                format!("unknown request type {shown:?}"),
            ));
        }
    };
    Ok(Request { id, msg })
}

/// Why a name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// Empty, too long, or a character outside `[A-Za-z0-9_.-]`.
    Invalid,
    /// One of [`RESERVED_NAMES`].
    Reserved,
}

/// Checks a user name against the rules: 1-32 of `[A-Za-z0-9_.-]` with at least one letter or
/// digit, and not one of [`RESERVED_NAMES`] nor a [`look_alike`] of one, so `Server_`, `adm1n`
/// and `sys.tem` are reserved too.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    check_chars(name).ok_or(NameError::Invalid)?;
    if !name.bytes().any(|b| b.is_ascii_alphanumeric()) {
        return Err(NameError::Invalid);
    }
    let looks = look_alike(name);
    if RESERVED_NAMES.iter().any(|r| look_alike(r) == looks) {
        return Err(NameError::Reserved);
    }
    Ok(())
}

fn check_chars(name: &str) -> Option<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    ok.then_some(())
}

/// Who a name is: its ASCII lower case (names are ASCII). Two names with one key are one user
/// (`Alice` and `alice`); two with different keys are two users, however alike they look.
pub fn name_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// What a name looks like, for refusing a *new* name that would pass for someone else's: lower
/// case, the separators `_ . -` dropped, and look-alike letters and digits folded together (`0`/`o`,
/// `1`/`i`/`l`, `3`/`e`, `4`/`a`, `5`/`s`, `7`/`t`, `8`/`b`, `9`/`g`, `rn`/`m`, `vv`/`w`), so `aIice`,
/// `a.lice`, `_alice` and `a1ice` all look like `alice`, `5am` like `sam`, `8ob` like `bob`.
/// Never an identity: two accounts that look alike stay two accounts (see [`name_key`]).
pub fn look_alike(name: &str) -> String {
    let mapped: String = name
        .chars()
        .filter(|c| !matches!(c, '_' | '.' | '-'))
        .map(|c| match c.to_ascii_lowercase() {
            '0' => 'o',
            '1' | 'i' => 'l',
            '3' => 'e',
            '4' => 'a',
            '5' => 's',
            '7' => 't',
            '8' => 'b',
            '9' => 'g',
            c => c,
        })
        .collect();
    mapped.replace("rn", "m").replace("vv", "w")
}

/// Words a search may have (each must match).
pub const MAX_SEARCH_WORDS: usize = 32;

/// The words a search looks for, as the index's tokenizer (unicode61) cuts them: runs of letters
/// and digits. `Err` with the count when there are more than [`MAX_SEARCH_WORDS`].
pub fn search_words(query: &str) -> Result<Vec<&str>, usize> {
    let words: Vec<&str> = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    if words.len() > MAX_SEARCH_WORDS {
        return Err(words.len());
    }
    Ok(words)
}

/// Whether a character shows nothing by itself: controls, zero-width and other format
/// characters, fillers and blanks that render as empty space. A message made only of these (and
/// whitespace) says nothing and is refused.
pub fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00ad}' | '\u{034f}' | '\u{061c}' | '\u{115f}' | '\u{1160}' | '\u{17b4}'
            | '\u{17b5}' | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{2800}' | '\u{3164}'
            | '\u{fe00}'..='\u{fe0f}' | '\u{feff}' | '\u{ffa0}' | '\u{fff9}'..='\u{fffb}'
            | '\u{1d173}'..='\u{1d17a}' | '\u{e0000}'..='\u{e0fff}')
}

/// Whether `text` has anything visible in it.
pub fn has_visible_text(text: &str) -> bool {
    text.chars().any(|c| !c.is_whitespace() && !is_invisible(c))
}

/// Normalises a room name: an optional leading `#` is dropped, the rest follows the name rules
/// (reserved words aside) and is lower-cased, so `#Rust` and `rust` are one room.
pub fn normalize_room(room: &str) -> Option<String> {
    let bare = room.strip_prefix('#').unwrap_or(room);
    check_chars(bare)?;
    Some(bare.to_ascii_lowercase())
}

/// The current time as RFC 3339 UTC with milliseconds, e.g. `2026-11-25T18:51:42.123Z`.
pub fn timestamp() -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(FORMAT)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}

/// A user as shown in lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserInfo<'a> {
    /// Display name.
    pub name: Cow<'a, str>,
    /// Role.
    #[serde(default)]
    pub role: Role,
}

/// A room as shown by `rooms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomInfo<'a> {
    /// Room name.
    pub name: Cow<'a, str>,
    /// Members now.
    pub members: usize,
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

/// A room message, live or from history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage<'a> {
    /// Server-wide message number.
    pub id: u64,
    /// Per-room sequence number.
    pub seq: u64,
    /// When the server accepted it (RFC 3339 UTC, milliseconds).
    pub ts: Cow<'a, str>,
    /// The room.
    pub room: Cow<'a, str>,
    /// The sender.
    pub from: Cow<'a, str>,
    /// The sender's role.
    #[serde(default)]
    pub role: Role,
    /// The text.
    pub text: Cow<'a, str>,
    /// A `/me` emote.
    #[serde(default, skip_serializing_if = "is_false")]
    pub action: bool,
}

impl ChatMessage<'_> {
    /// The same message borrowing from this one (no copies), e.g. to list stored messages.
    pub fn borrowed(&self) -> ChatMessage<'_> {
        ChatMessage {
            id: self.id,
            seq: self.seq,
            ts: Cow::Borrowed(&self.ts),
            room: Cow::Borrowed(&self.room),
            from: Cow::Borrowed(&self.from),
            role: self.role,
            text: Cow::Borrowed(&self.text),
            action: self.action,
        }
    }

    /// An owned copy, to keep.
    pub fn into_owned(self) -> ChatMessage<'static> {
        ChatMessage {
            id: self.id,
            seq: self.seq,
            ts: Cow::Owned(self.ts.into_owned()),
            room: Cow::Owned(self.room.into_owned()),
            from: Cow::Owned(self.from.into_owned()),
            role: self.role,
            text: Cow::Owned(self.text.into_owned()),
            action: self.action,
        }
    }
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
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Cow<'a, str>>,
    },
    /// Reply to `rooms`.
    Rooms {
        rooms: Vec<RoomInfo<'a>>,
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
            | ServerMsg::History { reference, .. }
            | ServerMsg::Search { reference, .. }
            | ServerMsg::Ack { reference, .. }
            | ServerMsg::Error { reference, .. } => reference.as_deref(),
            _ => None,
        }
    }
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

/// How a connection ends, as the peer and the metrics see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A plain-text client typed `/exit` (1000).
    Bye,
    /// The client started the close handshake; its code is echoed.
    ClientClosed,
    /// The server is shutting down (1001, after a `notice`).
    Shutdown,
    /// Silent for two ping intervals (1001).
    PingTimeout,
    /// The socket broke or the peer vanished without a close frame.
    Gone,
    /// A WebSocket protocol violation (1002).
    Protocol,
    /// A text frame that is not UTF-8 (1007).
    InvalidUtf8,
    /// A message over `limits.max_message_bytes` (1009).
    TooBig,
    /// A frame over `limits.max_message_bytes` (1009).
    FrameTooBig,
    /// Sustained rate-limit abuse, requests or pings (1008).
    RateAbuse,
    /// A missing or invalid token in token mode (1008).
    Unauthorized,
    /// A plain-text session on a token-mode server (1008).
    TokenRequired,
    /// The outbound queue overflowed, or too many requests waited for answers (1008).
    SlowConsumer,
    /// Writes blocked past the write timeout: dropped without a close frame.
    WriteStalled,
    /// No `hello` within the handshake timeout (1008).
    HelloTimeout,
    /// An admin kicked the user (1008, `kicked: <reason>`).
    Kicked,
}

impl CloseReason {
    /// The close code sent, or `None` when no close frame is sent (or the peer's is echoed).
    pub fn code(self) -> Option<u16> {
        use CloseReason::*;
        match self {
            Bye => Some(1000),
            Shutdown | PingTimeout => Some(1001),
            Protocol => Some(1002),
            InvalidUtf8 => Some(1007),
            RateAbuse | Unauthorized | TokenRequired | SlowConsumer | HelloTimeout | Kicked => {
                Some(1008)
            }
            TooBig | FrameTooBig => Some(1009),
            ClientClosed | Gone | WriteStalled => None,
        }
    }

    /// The close frame's reason text (a kick adds its own reason after `kicked: `).
    pub fn text(self) -> &'static str {
        use CloseReason::*;
        match self {
            Bye => "bye",
            ClientClosed | Gone | WriteStalled => "",
            Shutdown => "server shutting down",
            PingTimeout => "ping timeout",
            Protocol => "protocol error",
            InvalidUtf8 => "invalid UTF-8",
            TooBig => "message too big",
            FrameTooBig => "frame too big",
            RateAbuse => "rate limit exceeded",
            Unauthorized => "unauthorized",
            TokenRequired => "token required",
            SlowConsumer => "slow consumer: outbound queue full",
            HelloTimeout => "handshake timeout: no hello",
            Kicked => "kicked",
        }
    }

    /// The `reason` label of `chatd_connections_closed_total`.
    pub fn label(self) -> &'static str {
        use CloseReason::*;
        match self {
            Bye | ClientClosed => "client",
            Shutdown => "shutdown",
            PingTimeout => "ping_timeout",
            Gone => "gone",
            Protocol => "protocol_error",
            InvalidUtf8 => "invalid_utf8",
            TooBig | FrameTooBig => "too_big",
            RateAbuse => "rate_abuse",
            Unauthorized | TokenRequired => "unauthorized",
            SlowConsumer | WriteStalled => "slow_consumer",
            HelloTimeout => "hello_timeout",
            Kicked => "kicked",
        }
    }

    /// Every label value, for pre-creating the metric's series.
    pub const LABELS: &[&str] = &[
        "client",
        "shutdown",
        "ping_timeout",
        "gone",
        "protocol_error",
        "invalid_utf8",
        "too_big",
        "rate_abuse",
        "unauthorized",
        "slow_consumer",
        "hello_timeout",
        "kicked",
    ];
}

/// One-line renderings for plain-text sessions (the original project's format). Every field a
/// user chose passes through [`plain::one_line`], so nobody can start a line of their own on
/// someone else's terminal (a fake `[server]` notice) or reach it with escape sequences.
pub mod plain {
    use std::borrow::Cow;

    use super::{ServerMsg, Utf8Bytes};

    /// `text` as part of one line: line breaks and other control characters become their visible
    /// pictures (`␊`, `␛`, …), C1 controls `�`, and bidi overrides and isolates are dropped.
    pub fn one_line(text: &str) -> Cow<'_, str> {
        let risky = |c: char| c.is_control() || is_bidi(c) || matches!(c, '\u{2028}' | '\u{2029}');
        if !text.chars().any(risky) {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len() + 8);
        for c in text.chars() {
            match c {
                '\0'..='\u{1f}' => {
                    out.push(char::from_u32(0x2400 + c as u32).unwrap_or('\u{fffd}'))
                }
                '\u{7f}' => out.push('\u{2421}'),
                '\u{2028}' | '\u{2029}' => out.push('\u{2424}'),
                c if c.is_control() => out.push('\u{fffd}'),
                c if is_bidi(c) => {}
                c => out.push(c),
            }
        }
        Cow::Owned(out)
    }

    fn is_bidi(c: char) -> bool {
        matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{061c}')
    }

    /// The line a plain-text session sees for an event, if it sees one at all (typing: no).
    pub fn event(msg: &ServerMsg<'_>) -> Option<Utf8Bytes> {
        let l = |s: &str| one_line(s).into_owned();
        Some(match msg {
            ServerMsg::Message(m) => message(&m.from, &l(&m.text), m.action),
            ServerMsg::Pm {
                from, text, action, ..
            } => pm(from, &l(text), *action),
            ServerMsg::Joined { name, .. } => format!("* {name} joined the chat").into(),
            ServerMsg::Left { name, .. } => format!("* {name} has left the chat").into(),
            ServerMsg::Presence {
                joined,
                left,
                unlisted,
                ..
            } => presence(joined.iter().map(|u| &*u.name), left, *unlisted),
            ServerMsg::Kicked {
                name, by, reason, ..
            } => format!("* {name} was kicked by {by} ({})", l(reason)).into(),
            ServerMsg::Notice { from, text } => notice(from, text),
            ServerMsg::Renamed { from, to } => format!("* {from} is now known as {to}").into(),
            ServerMsg::Resync { room, .. } => {
                format!("* some messages in #{room} may have been lost").into()
            }
            _ => return None,
        })
    }

    /// `henry: hi`, or `* henry waves` for an action.
    fn message(from: &str, text: &str, action: bool) -> Utf8Bytes {
        if action {
            format!("* {from} {text}").into()
        } else {
            format!("{from}: {text}").into()
        }
    }
    /// `[pm from alice] hi`.
    fn pm(from: &str, text: &str, action: bool) -> Utf8Bytes {
        if action {
            format!("[pm from {from}] * {from} {text}").into()
        } else {
            format!("[pm from {from}] {text}").into()
        }
    }
    /// `[server] text`.
    pub fn notice(from: &str, text: &str) -> Utf8Bytes {
        format!("[{from}] {}", one_line(text)).into()
    }
    /// `* alice, bob joined the chat; carol has left the chat (and 3 more came and went)`.
    fn presence<'n>(
        joined: impl Iterator<Item = &'n str>,
        left: &[Cow<'_, str>],
        unlisted: usize,
    ) -> Utf8Bytes {
        let joined: Vec<&str> = joined.collect();
        let mut parts = Vec::new();
        if !joined.is_empty() {
            parts.push(format!("{} joined the chat", joined.join(", ")));
        }
        if !left.is_empty() {
            let left: Vec<&str> = left.iter().map(|n| &**n).collect();
            parts.push(format!("{} has left the chat", left.join(", ")));
        }
        let more = match (parts.is_empty(), unlisted) {
            (_, 0) => String::new(),
            (true, n) => format!("{n} came and went"),
            (false, n) => format!(" (and {n} more came and went)"),
        };
        format!("* {}{more}", parts.join("; ")).into()
    }
    /// `Online: alice, bob`.
    pub fn online(names: &[&str]) -> String {
        format!("Online: {}", names.join(", "))
    }
    /// `error: ...`.
    pub fn error(message: &str) -> Utf8Bytes {
        format!("error: {}", one_line(message)).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_request_type() {
        let r = parse_request(r#"{"type":"hello","name":"henry","id":"1"}"#).unwrap();
        assert_eq!(r.id.as_deref(), Some("1"));
        assert_eq!(
            r.msg,
            ClientMsg::Hello {
                name: "henry".into(),
                room: None,
                token: None,
                since: None,
                epoch: None,
            }
        );
        let r = parse_request(r#"{"type":"typing","to":"bob","state":"paused"}"#).unwrap();
        assert_eq!(
            r.msg,
            ClientMsg::Typing {
                target: Target::User("bob".into()),
                state: TypingState::Paused
            }
        );
        assert_eq!(
            parse_request(r#"{"type":"rooms"}"#).unwrap().msg,
            ClientMsg::Rooms
        );
    }

    /// What a client serialises is what the server parses, for every request type.
    #[test]
    fn client_requests_round_trip_through_the_server_parser() {
        let all = [
            ClientMsg::Hello {
                name: "henry".into(),
                room: Some("rust".into()),
                token: Some("t".into()),
                since: Some(41),
                epoch: Some("e1".into()),
            },
            ClientMsg::Join {
                room: "a".into(),
                since: None,
                epoch: None,
            },
            ClientMsg::Search {
                query: "cats dogs".into(),
                room: None,
                limit: Some(5),
                before: Some(90),
            },
            ClientMsg::Leave { room: "a".into() },
            ClientMsg::Say {
                room: None,
                text: "hi \"there\"\n".into(),
                action: true,
            },
            ClientMsg::Pm {
                to: "bob".into(),
                text: "psst".into(),
                action: false,
            },
            ClientMsg::Typing {
                target: Target::Room("lobby".into()),
                state: TypingState::Active,
            },
            ClientMsg::Typing {
                target: Target::User("bob".into()),
                state: TypingState::Done,
            },
            ClientMsg::Rooms,
            ClientMsg::Who {
                room: None,
                after: Some("bob".into()),
            },
            ClientMsg::Kick {
                name: "bob".into(),
                reason: Some("spam".into()),
            },
            ClientMsg::Announce { text: "hi".into() },
            ClientMsg::Nick { name: "h2".into() },
            ClientMsg::History {
                room: Some("lobby".into()),
                before: Some(7),
                after: None,
                limit: Some(5),
                with: None,
            },
            ClientMsg::History {
                room: None,
                before: None,
                after: Some(3),
                limit: None,
                with: Some("alice".into()),
            },
        ];
        let mut kinds = std::collections::BTreeSet::new();
        for msg in all {
            // Every type is counted under its own label in chatd_messages_received_total.
            assert!(ClientMsg::KINDS.contains(&msg.kind()), "{}", msg.kind());
            kinds.insert(msg.kind());
            let request = Request::new("42", msg);
            let json = request.to_json();
            assert!(
                json.contains(&format!(r#""type":"{}""#, request.msg.kind())),
                "{json}"
            );
            assert_eq!(parse_request(&json), Ok(request), "{json}");
        }
        assert_eq!(
            kinds.len(),
            ClientMsg::KINDS.len(),
            "a request type is not tested here"
        );
        let anonymous = Request {
            id: None,
            msg: ClientMsg::Rooms,
        };
        assert_eq!(anonymous.to_json(), r#"{"type":"rooms"}"#);
    }

    /// What the server encodes is what a client decodes, for every event and reply.
    #[test]
    fn server_messages_round_trip_through_the_client_decoder() {
        let m = ChatMessage {
            id: 3,
            seq: 2,
            ts: b("2026-11-25T18:51:42.123Z"),
            room: b("lobby"),
            from: b("alice"),
            role: Role::Admin,
            text: b("hi"),
            action: true,
        };
        let user = UserInfo {
            name: b("alice"),
            role: Role::User,
        };
        let all = [
            ServerMsg::Welcome {
                name: b("alice"),
                room: b("lobby"),
                users: vec![user.clone()],
                user_count: 1,
                history: vec![ServerMsg::Message(m.clone())],
                epoch: b("e1"),
                seq: 2,
                resumed: Some(true),
                more: true,
                server: ServerInfo {
                    version: b("0.1.0"),
                    max_message_bytes: 65536,
                    ping_interval_secs: 30.0,
                    rate_per_sec: 10.0,
                    rate_burst: 20,
                    typing_rate_per_sec: 2.0,
                    typing_burst: 10,
                },
                reference: Some(b("1")),
            },
            ServerMsg::Room {
                room: b("rust"),
                users: vec![user.clone()],
                user_count: 3,
                history: vec![],
                epoch: b("e2"),
                seq: 0,
                resumed: None,
                more: false,
                reference: None,
            },
            ServerMsg::Rooms {
                rooms: vec![RoomInfo {
                    name: b("lobby"),
                    members: 2,
                }],
                reference: Some(b("x")),
            },
            ServerMsg::Who {
                room: b("lobby"),
                users: vec![user],
                user_count: 9,
                more: true,
                reference: None,
            },
            ServerMsg::History {
                room: b("lobby"),
                with: None,
                messages: vec![ServerMsg::Message(m.clone())],
                more: true,
                reference: None,
            },
            ServerMsg::Search {
                query: b("hi"),
                messages: vec![ServerMsg::Message(m.clone())],
                more: false,
                reference: Some(b("s")),
            },
            ServerMsg::Ack {
                reference: Some(b("6")),
                id: Some(17),
                seq: Some(4),
                ts: Some(b("t")),
                room: None,
                name: None,
            },
            ServerMsg::Renamed {
                from: b("a"),
                to: b("b"),
            },
            ServerMsg::Presence {
                room: b("r"),
                joined: vec![UserInfo {
                    name: b("n"),
                    role: Role::Admin,
                }],
                left: vec![b("m")],
                unlisted: 3,
                user_count: 250,
            },
            ServerMsg::Error {
                code: ErrorCode::NameTaken,
                message: b("taken"),
                reference: Some(b("7")),
            },
            ServerMsg::Message(m),
            ServerMsg::Pm {
                id: 1,
                ts: b("t"),
                from: b("a"),
                role: Role::User,
                to: b("b"),
                text: b("psst"),
                action: false,
            },
            ServerMsg::Joined {
                room: b("r"),
                name: b("n"),
                role: Role::User,
            },
            ServerMsg::Left {
                room: b("r"),
                name: b("n"),
            },
            ServerMsg::Kicked {
                room: b("r"),
                name: b("n"),
                by: b("root"),
                reason: b("spam"),
            },
            ServerMsg::Typing {
                from: b("a"),
                room: Some(b("r")),
                to: None,
                state: TypingState::Paused,
            },
            ServerMsg::Notice {
                from: b("server"),
                text: b("bye"),
            },
        ];
        for msg in all {
            let json = encode(&msg);
            assert_eq!(decode(json.as_str()).unwrap(), msg, "{json}");
        }
    }

    #[test]
    fn errors_keep_the_id_and_name_the_field() {
        let e = parse_request(r#"{"type":"say","id":"x"}"#).unwrap_err();
        assert_eq!(
            (e.code, e.id.as_deref()),
            (ErrorCode::BadRequest, Some("x"))
        );
        assert!(e.message.contains("`text`"), "{}", e.message);
        let e = parse_request(r#"{"type":"dance","id":"y"}"#).unwrap_err();
        assert_eq!(
            (e.code, e.id.as_deref()),
            (ErrorCode::UnknownType, Some("y"))
        );
        let e = parse_request(r#"{"type":"say","text":5,"id":"z"}"#).unwrap_err();
        assert_eq!(
            (e.code, e.id.as_deref()),
            (ErrorCode::BadRequest, Some("z"))
        );
        let e = parse_request("{not json").unwrap_err();
        assert_eq!((e.code, e.id), (ErrorCode::BadRequest, None));
        let long = "a".repeat(65);
        let e = parse_request(&format!(r#"{{"type":"rooms","id":"{long}"}}"#)).unwrap_err();
        assert_eq!((e.code, e.id), (ErrorCode::BadRequest, None));
    }

    #[test]
    fn name_rules() {
        assert!(validate_name("henry_1.x-Y").is_ok());
        assert_eq!(validate_name(""), Err(NameError::Invalid));
        assert_eq!(validate_name(&"a".repeat(33)), Err(NameError::Invalid));
        assert!(validate_name(&"a".repeat(32)).is_ok());
        assert_eq!(validate_name("hé"), Err(NameError::Invalid));
        assert_eq!(validate_name("a b"), Err(NameError::Invalid));
        assert_eq!(validate_name("Server"), Err(NameError::Reserved));
        assert_eq!(validate_name("ADMIN"), Err(NameError::Reserved));
        // Look-alikes and separators do not get around the reserved names.
        for name in ["server_", "admin.", "adm1n", "sys-tem", "5erver_x"] {
            let reserved = validate_name(name) == Err(NameError::Reserved);
            assert_eq!(reserved, name != "5erver_x", "{name}");
        }
        // Names say something.
        for name in ["...", "_-_", "."] {
            assert_eq!(validate_name(name), Err(NameError::Invalid), "{name}");
        }
        // Look-alikes look alike, but are different names.
        for (a, b) in [
            ("alice", "aIice"),
            ("alice", "alice."),
            ("alice", "a.lice"),
            ("alice", "_alice"),
            ("Il1", "lI1"),
            ("rn", "m"),
            ("b0b", "bob"),
            ("vvill", "will"),
            ("will", "wiii"),
            ("sam", "5am"),
            ("bob", "8ob"),
            ("ian", "lan"),
            ("tom", "torn"),
            ("leo", "le0"),
        ] {
            assert_eq!(look_alike(a), look_alike(b), "{a} / {b}");
            assert_ne!(name_key(a), name_key(b), "{a} / {b} are two people");
        }
        assert_eq!(name_key("Alice"), name_key("alice"));
        assert_ne!(look_alike("henry"), look_alike("henri"));
        assert_eq!(normalize_room("#Rust").as_deref(), Some("rust"));
        assert_eq!(normalize_room("#"), None);
    }

    #[test]
    fn a_presence_batch_is_one_plain_line() {
        let user = |n: &'static str| UserInfo {
            name: b(n),
            role: Role::User,
        };
        let line = plain::event(&ServerMsg::Presence {
            room: b("lobby"),
            joined: vec![user("ann"), user("bob")],
            left: vec![b("cat")],
            unlisted: 4,
            user_count: 300,
        })
        .unwrap();
        assert_eq!(
            line.as_str(),
            "* ann, bob joined the chat; cat has left the chat (and 4 more came and went)"
        );
    }

    #[test]
    fn plain_lines_cannot_be_forged_or_escape() {
        let evil = "hi\n[server] log in again at http://evil.example\u{1b}]0;x\u{7}\u{202e}gnp";
        let m = ChatMessage {
            id: 1,
            seq: 1,
            ts: b("t"),
            room: b("lobby"),
            from: b("mallory"),
            role: Role::User,
            text: b(evil),
            action: false,
        };
        let line = plain::event(&ServerMsg::Message(m)).unwrap();
        assert_eq!(
            line.as_str(),
            "mallory: hi\u{240a}[server] log in again at http://evil.example\u{241b}]0;x\u{2407}gnp"
        );
        assert!(!line.as_str().chars().any(|c| c.is_control()));
        assert_eq!(plain::one_line("plain"), "plain");
    }

    #[test]
    fn invisible_text_says_nothing() {
        for text in [
            "\u{200b}\u{200b}",
            " \u{3164} ",
            "\u{2800}",
            "\0\u{feff}",
            "\u{e0041}",
        ] {
            assert!(!has_visible_text(text), "{text:?}");
        }
        assert!(has_visible_text("\u{200b}hi"));
        assert!(has_visible_text("🙂"));
    }

    #[test]
    fn json_len_is_what_serde_writes() {
        for s in [
            "plain",
            "q\"uote\\",
            "nl\n\t\r",
            "\u{1}\u{1f}",
            "é🙂",
            "\u{7f}",
        ] {
            assert_eq!(
                json_len(s),
                serde_json::to_string(s).unwrap().len(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn timestamp_is_rfc3339_millis_utc() {
        let ts = timestamp();
        assert_eq!(ts.len(), 24, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T' && ts.as_bytes()[19] == b'.');
    }

    #[test]
    fn close_reasons_have_codes_and_known_labels() {
        use CloseReason::*;
        for r in [
            Bye,
            ClientClosed,
            Shutdown,
            PingTimeout,
            Gone,
            Protocol,
            InvalidUtf8,
            TooBig,
            FrameTooBig,
            RateAbuse,
            Unauthorized,
            TokenRequired,
            SlowConsumer,
            WriteStalled,
            HelloTimeout,
            Kicked,
        ] {
            assert!(CloseReason::LABELS.contains(&r.label()), "{r:?}");
        }
        assert_eq!(Unauthorized.label(), "unauthorized");
        assert_eq!(TokenRequired.code(), Some(1008));
    }
}
