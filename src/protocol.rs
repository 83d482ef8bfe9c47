//! The wire format, protocol v1: the only module that knows what a frame looks like.
//!
//! Clients send one JSON object per text frame ([`ClientMsg`], parsed by [`parse_request`]); the server
//! answers with [`ServerMsg`] values encoded once by [`encode`] and shared by every recipient. Plain-text
//! sessions (first frame not a JSON object) get the one-line renderings in [`plain`].
//! `docs/PROTOCOL.md` is the human version of this file.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::HelloRequired => "hello_required",
            ErrorCode::AlreadyWelcomed => "already_welcomed",
            ErrorCode::NameInvalid => "name_invalid",
            ErrorCode::NameTaken => "name_taken",
            ErrorCode::RoomInvalid => "room_invalid",
            ErrorCode::NoSuchRoom => "no_such_room",
            ErrorCode::NotInRoom => "not_in_room",
            ErrorCode::NoSuchUser => "no_such_user",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
        }
    }
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
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMsg {
    /// Pick a name and join a first room.
    Hello {
        /// Requested name.
        name: String,
        /// First room; `lobby` when absent.
        room: Option<String>,
        /// Signed token (required when the server runs with `auth.mode = "token"`).
        token: Option<String>,
    },
    /// Join a room.
    Join {
        /// Room name as given.
        room: String,
    },
    /// Leave a room.
    Leave {
        /// Room name as given.
        room: String,
    },
    /// Say something in a room.
    Say {
        /// Room; the `hello` room when absent.
        room: Option<String>,
        /// The message.
        text: String,
        /// A `/me` emote.
        action: bool,
    },
    /// Private message.
    Pm {
        /// Recipient name.
        to: String,
        /// The message.
        text: String,
        /// A `/me` emote.
        action: bool,
    },
    /// Typing indication for a room or a user.
    Typing {
        /// Where the typing happens.
        target: Target,
        /// The new state.
        state: TypingState,
    },
    /// List rooms.
    Rooms,
    /// List members of a room.
    Who {
        /// Room; the `hello` room when absent.
        room: Option<String>,
    },
    /// Disconnect a user (admins only).
    Kick {
        /// Who.
        name: String,
        /// Why (shown to everyone; cut to fit a close frame for the kicked user).
        reason: Option<String>,
    },
    /// A notice to everyone online (admins only).
    Announce {
        /// The notice.
        text: String,
    },
    /// Page back through a room's history.
    History {
        /// Room; the `hello` room when absent.
        room: Option<String>,
        /// Only messages with `seq` below this.
        before: Option<u64>,
        /// At most this many.
        limit: Option<usize>,
    },
}

impl ClientMsg {
    /// The request's `type`, as a bounded metric label.
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
        }
    }
}

/// Where a typing indication (or message) is aimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A room, by name as given.
    Room(String),
    /// A user, by name as given.
    User(String),
}

/// A parsed request and its optional correlation id.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The client's `id`, returned as `ref` on direct replies.
    pub id: Option<String>,
    /// What was asked.
    pub msg: ClientMsg,
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
        },
        "kick" => ClientMsg::Kick {
            name: need(raw.name, "name")?,
            reason: raw.reason,
        },
        "announce" => ClientMsg::Announce {
            text: need(raw.text, "text")?,
        },
        "join" => ClientMsg::Join {
            room: need(raw.room, "room")?,
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
        "who" => ClientMsg::Who { room: raw.room },
        "history" => ClientMsg::History {
            room: raw.room,
            before: raw.before,
            limit: raw.limit,
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

/// Checks a user name against the rules: 1-32 of `[A-Za-z0-9_.-]`, not reserved.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    check_chars(name).ok_or(NameError::Invalid)?;
    if RESERVED_NAMES.iter().any(|r| r.eq_ignore_ascii_case(name)) {
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

/// The key under which a name is unique: names compare case-insensitively.
pub fn fold_name(name: &str) -> String {
    name.to_ascii_lowercase()
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
#[derive(Debug, Clone, Serialize)]
pub struct UserInfo<'a> {
    /// Display name.
    pub name: &'a str,
    /// Role.
    pub role: Role,
}

/// A room as shown by `rooms`.
#[derive(Debug, Clone, Serialize)]
pub struct RoomInfo<'a> {
    /// Room name.
    pub name: &'a str,
    /// Members now.
    pub members: usize,
}

/// Facts about the server sent in `welcome`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo<'a> {
    /// chatd version.
    pub version: &'a str,
    /// Largest message a client may send.
    pub max_message_bytes: usize,
    /// Seconds between server pings (0: none).
    pub ping_interval_secs: f64,
}

/// Everything the server sends, tagged by `type`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
#[allow(missing_docs)] // field meanings are documented in docs/PROTOCOL.md
pub enum ServerMsg<'a> {
    /// Reply to a successful `hello`.
    Welcome {
        name: &'a str,
        room: &'a str,
        users: Vec<UserInfo<'a>>,
        history: Vec<&'a RawValue>,
        server: ServerInfo<'a>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    /// Reply to `join`.
    Room {
        room: &'a str,
        users: Vec<UserInfo<'a>>,
        history: Vec<&'a RawValue>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    /// Reply to `rooms`.
    Rooms {
        rooms: Vec<RoomInfo<'a>>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    /// Reply to `who`.
    Who {
        room: &'a str,
        users: Vec<UserInfo<'a>>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    /// Reply to `history`.
    History {
        room: &'a str,
        messages: Vec<&'a RawValue>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    /// Reply to `say`, `pm` and `leave`.
    Ack {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ts: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
    },
    /// A request failed.
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    /// A room message.
    Message {
        id: u64,
        seq: u64,
        ts: &'a str,
        room: &'a str,
        from: &'a str,
        role: Role,
        text: &'a str,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        action: bool,
    },
    /// A private message.
    Pm {
        id: u64,
        ts: &'a str,
        from: &'a str,
        role: Role,
        to: &'a str,
        text: &'a str,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        action: bool,
    },
    /// Someone joined a room.
    Joined {
        room: &'a str,
        name: &'a str,
        role: Role,
    },
    /// Someone left a room.
    Left { room: &'a str, name: &'a str },
    /// An admin removed someone (sent instead of `left`).
    Kicked {
        room: &'a str,
        name: &'a str,
        by: &'a str,
        reason: &'a str,
    },
    /// Someone's typing state changed.
    Typing {
        from: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        to: Option<&'a str>,
        state: TypingState,
    },
    /// A server-wide notice (shutdown, announcements).
    Notice { from: &'a str, text: &'a str },
}

/// Encodes a message once, into a frame payload that recipients share.
pub fn encode(msg: &ServerMsg<'_>) -> Utf8Bytes {
    // Serialising these types cannot fail: every map key is a string and no Serialize impl errors.
    let json = serde_json::to_string(msg).unwrap_or_else(|_| String::from("{}"));
    Utf8Bytes::from(json)
}

/// Borrows stored message frames as raw JSON values, for splicing into `welcome`/`room`/`history`.
pub fn raw_messages(frames: &[Utf8Bytes]) -> Vec<&RawValue> {
    frames
        .iter()
        .filter_map(|f| serde_json::from_str::<&RawValue>(f.as_str()).ok())
        .collect()
}

/// One-line renderings for plain-text sessions (the original project's format).
pub mod plain {
    use super::Utf8Bytes;

    /// `henry: hi`, or `* henry waves` for an action.
    pub fn message(from: &str, text: &str, action: bool) -> Utf8Bytes {
        if action {
            format!("* {from} {text}").into()
        } else {
            format!("{from}: {text}").into()
        }
    }
    /// `[pm from alice] hi`.
    pub fn pm(from: &str, text: &str, action: bool) -> Utf8Bytes {
        if action {
            format!("[pm from {from}] * {from} {text}").into()
        } else {
            format!("[pm from {from}] {text}").into()
        }
    }
    /// `* alice joined the chat`.
    pub fn joined(name: &str) -> Utf8Bytes {
        format!("* {name} joined the chat").into()
    }
    /// `* bob was kicked by alice (spam)`.
    pub fn kicked(name: &str, by: &str, reason: &str) -> Utf8Bytes {
        format!("* {name} was kicked by {by} ({reason})").into()
    }
    /// `* alice has left the chat`.
    pub fn left(name: &str) -> Utf8Bytes {
        format!("* {name} has left the chat").into()
    }
    /// `[server] text`.
    pub fn notice(from: &str, text: &str) -> Utf8Bytes {
        format!("[{from}] {text}").into()
    }
    /// `Online: alice, bob`.
    pub fn online(names: &[&str]) -> String {
        format!("Online: {}", names.join(", "))
    }
    /// `error: ...`.
    pub fn error(message: &str) -> Utf8Bytes {
        format!("error: {message}").into()
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
                token: None
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
        assert_eq!(normalize_room("#Rust").as_deref(), Some("rust"));
        assert_eq!(normalize_room("#"), None);
    }

    #[test]
    fn timestamp_is_rfc3339_millis_utc() {
        let ts = timestamp();
        assert_eq!(ts.len(), 24, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T' && ts.as_bytes()[19] == b'.');
    }

    #[test]
    fn encodes_with_type_tag_and_ref() {
        let f = encode(&ServerMsg::Error {
            code: ErrorCode::NameTaken,
            message: "taken",
            reference: Some("7"),
        });
        let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "name_taken");
        assert_eq!(v["ref"], "7");
    }
}
