//! What clients send: [`ClientMsg`] in a [`Request`], parsed by [`parse_request`], whose errors
//! name the field at fault.

use serde::{Deserialize, Serialize};

use super::{ErrorCode, MAX_ID_BYTES, MAX_NAME_BYTES, TypingState, is_false};

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
        /// The account's password (`auth.mode = "accounts"`).
        #[serde(skip_serializing_if = "Option::is_none")]
        password: Option<Password>,
        /// Resume the room from after this `seq` (with `epoch`).
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        /// The room's `epoch` the `since` belongs to.
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        /// What the connection is ("phone", "laptop"; at most 32 characters), shown in
        /// `sessions`.
        #[serde(skip_serializing_if = "Option::is_none")]
        device: Option<String>,
    },
    /// Make an account and sign in as it (`auth.mode = "accounts"`): a hello for a new name.
    Register {
        /// The name wanted.
        name: String,
        /// Its password.
        password: Password,
        /// An invite code, where registration needs one.
        #[serde(skip_serializing_if = "Option::is_none")]
        invite: Option<String>,
        /// First room; `lobby` when absent.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        /// As for `hello`.
        #[serde(skip_serializing_if = "Option::is_none")]
        device: Option<String>,
    },
    /// The sender has read its private conversation `with` someone up to message `msg`.
    #[serde(rename = "read")]
    ReadPm {
        /// The other person.
        with: String,
        /// The last message id read.
        msg: u64,
    },
    /// Change a room's settings (its ops; `visibility`: its owner).
    #[serde(rename = "room_set")]
    RoomSet {
        /// The room.
        room: String,
        /// A new topic (empty: none).
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        /// `public` or `private`.
        #[serde(skip_serializing_if = "Option::is_none")]
        visibility: Option<String>,
        /// Joined only with an invite.
        #[serde(skip_serializing_if = "Option::is_none")]
        invite_only: Option<bool>,
        /// Only ops and voiced members speak.
        #[serde(skip_serializing_if = "Option::is_none")]
        moderated: Option<bool>,
    },
    /// Give someone a standing in a room: `op`, `voice` or `member`.
    Role {
        /// The room.
        room: String,
        /// Whom.
        name: String,
        /// The standing.
        role: String,
    },
    /// Give a room to another account (its owner).
    Transfer {
        /// The room.
        room: String,
        /// The new owner.
        to: String,
    },
    /// Let an account into an invite-only room (its ops).
    Invite {
        /// The room.
        room: String,
        /// Whom.
        name: String,
    },
    /// Take an invite back.
    Uninvite {
        /// The room.
        room: String,
        /// Whom.
        name: String,
    },
    /// Ban an account (or, admins, an address range) from a room, or with `"*"` the server.
    Ban {
        /// The room, or `*`.
        room: String,
        /// Whom.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Or an address range (admins).
        #[serde(skip_serializing_if = "Option::is_none")]
        address: Option<String>,
        /// For how long ("7d"); absent: for good.
        #[serde(skip_serializing_if = "Option::is_none")]
        duration: Option<String>,
        /// Why.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Lift a ban.
    Unban {
        /// The room, or `*`.
        room: String,
        /// Whom.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Or an address range.
        #[serde(skip_serializing_if = "Option::is_none")]
        address: Option<String>,
    },
    /// Keep an account from speaking in a room.
    Mute {
        /// The room.
        room: String,
        /// Whom.
        name: String,
        /// For how long; absent: until unmuted.
        #[serde(skip_serializing_if = "Option::is_none")]
        duration: Option<String>,
        /// Why.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Lift a mute.
    Unmute {
        /// The room.
        room: String,
        /// Whom.
        name: String,
    },
    /// A room's bans and mutes (its ops).
    Bans {
        /// The room, or `*`.
        room: String,
    },
    /// A room's moderation log (its ops).
    Audit {
        /// The room, or `*`.
        room: String,
    },
    /// List the user's connections (tokens and accounts).
    Sessions,
    /// Close one of the user's connections (`session` from `sessions` or a `welcome`).
    Logout {
        /// The connection.
        session: String,
    },
    /// The sender has read `room` up to `seq` (accounts mode): its marker moves forward.
    Read {
        /// The room.
        room: String,
        /// The last seq read.
        seq: u64,
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
        /// The message (id) this one answers, in the same room.
        #[serde(skip_serializing_if = "Option::is_none")]
        reply_to: Option<u64>,
    },
    /// Change the text of one's own message `msg` in `room` (or of a PM, `with` someone).
    Edit {
        /// The room, or the other one of a conversation.
        #[serde(flatten)]
        at: Where,
        /// The message's id.
        msg: u64,
        /// Its new text.
        text: String,
    },
    /// Delete message `msg` in `room` (one's own; an op or an admin anyone's), or one's own PM
    /// `with` someone.
    Delete {
        /// The room, or the other one of a conversation.
        #[serde(flatten)]
        at: Where,
        /// The message's id.
        msg: u64,
    },
    /// React to message `msg` in `room` with `emoji`, or (`on: false`) take it back.
    React {
        /// The room.
        room: String,
        /// The message's id.
        msg: u64,
        /// One emoji (a grapheme cluster) or a `:short_name:`.
        emoji: String,
        /// Add (true) or take back.
        on: bool,
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

impl ClientMsg {
    /// Every request type, as [`ClientMsg::kind`] names it (the labels of
    /// `chatd_messages_received_total`).
    pub const KINDS: &'static [&'static str] = &[
        "hello", "register", "read", "join", "leave", "say", "pm", "typing", "rooms", "who",
        "history", "kick", "announce", "nick", "search", "sessions", "logout", "room_set", "role",
        "transfer", "invite", "uninvite", "ban", "unban", "mute", "unmute", "bans", "audit",
        "edit", "delete", "react",
    ];

    /// The request's `type`, as the wire names it (a bounded metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMsg::Hello { .. } => "hello",
            ClientMsg::Register { .. } => "register",
            ClientMsg::Read { .. } | ClientMsg::ReadPm { .. } => "read",
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
            ClientMsg::Sessions => "sessions",
            ClientMsg::Logout { .. } => "logout",
            ClientMsg::RoomSet { .. } => "room_set",
            ClientMsg::Role { .. } => "role",
            ClientMsg::Transfer { .. } => "transfer",
            ClientMsg::Invite { .. } => "invite",
            ClientMsg::Uninvite { .. } => "uninvite",
            ClientMsg::Ban { .. } => "ban",
            ClientMsg::Unban { .. } => "unban",
            ClientMsg::Mute { .. } => "mute",
            ClientMsg::Unmute { .. } => "unmute",
            ClientMsg::Bans { .. } => "bans",
            ClientMsg::Audit { .. } => "audit",
            ClientMsg::Edit { .. } => "edit",
            ClientMsg::Delete { .. } => "delete",
            ClientMsg::React { .. } => "react",
        }
    }
}

/// A password on its way to the server: never shown by `Debug`, so no log line can hold it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
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

/// Where a message that changes is: a room, or a private conversation (with whom).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Where {
    /// A room, by name as given.
    #[serde(rename = "room")]
    Room(String),
    /// The other one of a conversation.
    #[serde(rename = "with")]
    With(String),
}

impl Where {
    /// The room, else the conversation (the parser checked there is exactly one).
    fn of(room: Option<String>, with: Option<String>) -> Where {
        match (room, with) {
            (Some(room), _) => Where::Room(room),
            (None, with) => Where::With(with.unwrap_or_default()),
        }
    }
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
    password: Option<Password>,
    invite: Option<String>,
    reason: Option<String>,
    after: Option<serde_json::Value>,
    since: Option<u64>,
    seq: Option<u64>,
    epoch: Option<String>,
    with: Option<String>,
    query: Option<String>,
    device: Option<String>,
    session: Option<String>,
    msg: Option<u64>,
    topic: Option<String>,
    visibility: Option<String>,
    invite_only: Option<bool>,
    moderated: Option<bool>,
    role: Option<String>,
    duration: Option<String>,
    address: Option<String>,
    reply_to: Option<u64>,
    emoji: Option<String>,
    on: Option<bool>,
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
        ("seq", raw.seq),
        ("msg", raw.msg),
        ("reply_to", raw.reply_to),
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
            password: raw.password,
            since: raw.since,
            epoch: raw.epoch,
            device: raw.device,
        },
        "room_set" => ClientMsg::RoomSet {
            room: need(raw.room, "room")?,
            topic: raw.topic,
            visibility: raw.visibility,
            invite_only: raw.invite_only,
            moderated: raw.moderated,
        },
        "role" => ClientMsg::Role {
            room: need(raw.room, "room")?,
            name: need(raw.name, "name")?,
            role: need(raw.role, "role")?,
        },
        "transfer" => ClientMsg::Transfer {
            room: need(raw.room, "room")?,
            to: need(raw.to, "to")?,
        },
        "invite" => ClientMsg::Invite {
            room: need(raw.room, "room")?,
            name: need(raw.name, "name")?,
        },
        "uninvite" => ClientMsg::Uninvite {
            room: need(raw.room, "room")?,
            name: need(raw.name, "name")?,
        },
        "ban" | "unban" if raw.name.is_some() == raw.address.is_some() => {
            return Err(fail(
                ErrorCode::BadRequest,
                format!("`{kind}` needs exactly one of `name` and `address`"),
            ));
        }
        "ban" => ClientMsg::Ban {
            room: need(raw.room, "room")?,
            name: raw.name,
            address: raw.address,
            duration: raw.duration,
            reason: raw.reason,
        },
        "unban" => ClientMsg::Unban {
            room: need(raw.room, "room")?,
            name: raw.name,
            address: raw.address,
        },
        "mute" => ClientMsg::Mute {
            room: need(raw.room, "room")?,
            name: need(raw.name, "name")?,
            duration: raw.duration,
            reason: raw.reason,
        },
        "unmute" => ClientMsg::Unmute {
            room: need(raw.room, "room")?,
            name: need(raw.name, "name")?,
        },
        "bans" => ClientMsg::Bans {
            room: need(raw.room, "room")?,
        },
        "audit" => ClientMsg::Audit {
            room: need(raw.room, "room")?,
        },
        "sessions" => ClientMsg::Sessions,
        "logout" => ClientMsg::Logout {
            session: need(raw.session, "session")?,
        },
        "read" if raw.with.is_some() => ClientMsg::ReadPm {
            with: need(raw.with, "with")?,
            msg: raw
                .msg
                .ok_or_else(|| fail(ErrorCode::BadRequest, "`read` needs field `msg`".into()))?,
        },
        "read" => ClientMsg::Read {
            room: need(raw.room, "room")?,
            seq: raw
                .seq
                .ok_or_else(|| fail(ErrorCode::BadRequest, "`read` needs field `seq`".into()))?,
        },
        "register" => ClientMsg::Register {
            name: need(raw.name, "name")?,
            password: raw.password.ok_or_else(|| {
                fail(
                    ErrorCode::BadRequest,
                    "`register` needs field `password`".into(),
                )
            })?,
            invite: raw.invite,
            room: raw.room,
            device: raw.device,
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
            reply_to: raw.reply_to,
        },
        "edit" | "delete" | "react" if raw.msg.is_none() => {
            return Err(fail(
                ErrorCode::BadRequest,
                format!("`{kind}` needs field `msg`"),
            ));
        }
        "edit" | "delete" if raw.room.is_some() == raw.with.is_some() => {
            return Err(fail(
                ErrorCode::BadRequest,
                format!("`{kind}` needs exactly one of `room` and `with`"),
            ));
        }
        "edit" => ClientMsg::Edit {
            at: Where::of(raw.room, raw.with),
            msg: raw.msg.unwrap_or_default(),
            text: need(raw.text, "text")?,
        },
        "delete" => ClientMsg::Delete {
            at: Where::of(raw.room, raw.with),
            msg: raw.msg.unwrap_or_default(),
        },
        "react" => ClientMsg::React {
            room: need(raw.room, "room")?,
            msg: raw.msg.unwrap_or_default(),
            emoji: need(raw.emoji, "emoji")?,
            on: raw.on.unwrap_or(true),
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
