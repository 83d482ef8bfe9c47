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
    /// The account already has `auth.max_sessions_per_user` connections (none was closed).
    TooManySessions,
    /// The thing named (a session to log out) does not exist, or is not the sender's.
    NotFound,
}

impl ErrorCode {
    /// The code as it appears on the wire (`name_taken`).
    pub fn wire_name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
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

mod close;
mod event;
mod message;
mod names;
pub mod plain;
mod request;
#[cfg(test)]
mod tests;

pub use close::*;
pub use event::*;
pub use message::*;
pub use names::*;
pub use request::*;

/// For `skip_serializing_if`.
fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// For `skip_serializing_if`.
fn is_false(b: &bool) -> bool {
    !*b
}
