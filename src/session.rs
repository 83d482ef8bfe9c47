//! One client's chat session: what each request means, given who the client is and where it is.
//!
//! A [`Session`] turns text frames into hub calls and replies. It knows nothing about sockets: its
//! connection task feeds it frames and writes out what it returns. Exactly one place here turns a
//! failure into what the client sees (`reject`); internal error text never reaches it.
//! Dropping a session leaves every room and frees the name, whatever ended the connection.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::{debug, info};

use crate::hub::{ConnId, HubError, JoinedRoom, Member, Room};
use crate::mailbox::{Class, Frame, Mailbox};
use crate::protocol::{
    self, ClientMsg, ErrorCode, NameError, Request, Role, RoomInfo, ServerInfo, ServerMsg, Target,
    TypingState, UserInfo, plain,
};
use crate::rate::TokenBucket;
use crate::server::Shared;
use crate::typing::{TypingTarget, TypingTracker};

/// Close codes the session may ask for (RFC 6455 §7.4.1).
pub mod close_code {
    /// Normal closure (`/exit`).
    pub const NORMAL: u16 = 1000;
    /// Going away: shutdown, or a silent peer.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// Invalid payload data (bad UTF-8).
    pub const INVALID_DATA: u16 = 1007;
    /// Policy violation: abuse, slow consumer, handshake timeout.
    pub const POLICY: u16 = 1008;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
    /// Try again later: server at capacity.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// What the connection should do after a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// Keep going.
    Continue,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

/// How the client speaks: decided by its successful hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Json,
    Plain,
}

/// A failed request, as the client will see it.
struct Rejection {
    code: ErrorCode,
    message: String,
}

fn reject(code: ErrorCode, message: impl Into<String>) -> Rejection {
    Rejection {
        code,
        message: message.into(),
    }
}

type Reply = Result<(), Rejection>;

/// One connection's chat state.
pub struct Session {
    shared: Arc<Shared>,
    conn: ConnId,
    peer: SocketAddr,
    mailbox: Arc<Mailbox>,
    /// Set by a successful hello.
    me: Option<Member>,
    mode: Mode,
    /// The room given at hello: the default for `say`, `who` and `history`.
    home: Arc<str>,
    rooms: Vec<Arc<Room>>,
    requests: TokenBucket,
    typing_rate: TokenBucket,
    strikes: TokenBucket,
    typing: TypingTracker,
    /// Set when a request must end the connection (after its reply is sent).
    closing: Option<(u16, &'static str)>,
}

impl Session {
    /// A session for a freshly upgraded connection.
    pub fn new(shared: Arc<Shared>, peer: SocketAddr) -> Session {
        let limits = &shared.config.limits;
        let requests = TokenBucket::new(limits.rate_burst, limits.rate_per_sec);
        let typing_rate = TokenBucket::new(limits.typing_burst, limits.typing_rate_per_sec);
        let typing = TypingTracker::new(limits.typing_timings());
        let strikes_rate = if limits.rate_per_sec > 0.0 || limits.typing_rate_per_sec > 0.0 {
            1.0
        } else {
            0.0
        };
        let strikes = TokenBucket::new(limits.abuse_strikes, strikes_rate);
        let mailbox = Arc::new(Mailbox::new(
            limits.outbound_queue,
            shared.metrics.bytes_sent.clone(),
        ));
        Session {
            conn: shared.hub.next_conn_id(),
            shared,
            peer,
            mailbox,
            me: None,
            mode: Mode::Json,
            home: Arc::from(protocol::DEFAULT_ROOM),
            rooms: Vec::new(),
            requests,
            typing_rate,
            strikes,
            typing,
            closing: None,
        }
    }

    /// Where other tasks queue frames for this client.
    pub fn mailbox(&self) -> &Arc<Mailbox> {
        &self.mailbox
    }

    /// Whether `hello` has succeeded.
    pub fn welcomed(&self) -> bool {
        self.me.is_some()
    }

    /// The user's name, once welcomed.
    pub fn user(&self) -> Option<&str> {
        self.me.as_ref().map(|m| &*m.name)
    }

    /// When the session next needs [`Session::on_timer`].
    pub fn next_deadline(&self) -> Option<Instant> {
        self.typing.next_expiry()
    }

    /// Relays `done` for typing states that went stale.
    pub fn on_timer(&mut self, now: Instant) {
        let Some(me) = &self.me else { return };
        for target in self.typing.expire(now) {
            self.relay_typing(me, &target, TypingState::Done);
        }
    }

    /// The frame telling this client the server is shutting down.
    pub fn shutdown_notice(&self) -> Utf8Bytes {
        const TEXT: &str = "server is shutting down";
        match self.mode {
            Mode::Plain if self.welcomed() => plain::notice(protocol::SERVER_NAME, TEXT),
            _ => protocol::encode(&ServerMsg::Notice {
                from: protocol::SERVER_NAME,
                text: TEXT,
            }),
        }
    }

    /// Handles one text frame; replies for this client are appended to `out`.
    pub fn handle_text(&mut self, text: &str, out: &mut Vec<Utf8Bytes>) -> Flow {
        let plain_line = match (self.me.is_some(), self.mode) {
            (true, mode) => mode == Mode::Plain,
            (false, _) => !protocol::looks_like_json_object(text),
        };
        let received = &self.shared.metrics.messages_received;
        if plain_line {
            received.with_label_values(&["plain"]).inc();
            return self.handle_line(text, out);
        }
        let request = match protocol::parse_request(text) {
            Ok(r) => r,
            Err(e) => {
                received.with_label_values(&["invalid"]).inc();
                if !self.requests.try_take() {
                    return self.rate_limited("request", e.id.as_deref(), out);
                }
                let code = if self.me.is_none() && e.code == ErrorCode::UnknownType {
                    ErrorCode::HelloRequired
                } else {
                    e.code
                };
                let message = if code == ErrorCode::HelloRequired {
                    "say hello first".to_string()
                } else {
                    e.message
                };
                out.push(error_frame(code, &message, e.id.as_deref()));
                return Flow::Continue;
            }
        };
        received.with_label_values(&[request.msg.kind()]).inc();
        let is_typing = matches!(request.msg, ClientMsg::Typing { .. });
        let (allowed, bucket) = if is_typing {
            (self.typing_rate.try_take(), "typing")
        } else {
            (self.requests.try_take(), "request")
        };
        if !allowed {
            return self.rate_limited(bucket, request.id.as_deref(), out);
        }
        let id = request.id.clone();
        if let Err(r) = self.dispatch(request, out) {
            out.push(error_frame(r.code, &r.message, id.as_deref()));
        }
        match self.closing {
            Some((code, reason)) => Flow::Close(code, reason),
            None => Flow::Continue,
        }
    }

    /// Handles a binary frame: chat is text only, so the client gets an error (not a disconnect).
    pub fn handle_binary(&mut self, out: &mut Vec<Utf8Bytes>) -> Flow {
        self.shared
            .metrics
            .messages_received
            .with_label_values(&["binary"])
            .inc();
        if !self.requests.try_take() {
            return self.rate_limited("request", None, out);
        }
        let message = "binary frames are not supported; send JSON text frames";
        out.push(match (self.me.is_some(), self.mode) {
            (true, Mode::Plain) => plain::error(message),
            _ => error_frame(ErrorCode::BadRequest, message, None),
        });
        Flow::Continue
    }

    /// Counts a ping against the request budget: pings are answered by the WebSocket layer, but a
    /// flood of them is abuse like any other (sustained → close 1008).
    pub fn on_ping(&mut self) -> Flow {
        if self.requests.try_take() {
            return Flow::Continue;
        }
        self.shared
            .metrics
            .rate_limited
            .with_label_values(&["ping"])
            .inc();
        if self.strikes.try_take() {
            Flow::Continue
        } else {
            info!(peer = %self.peer, user = self.user(), "closing: ping flood");
            Flow::Close(close_code::POLICY, "rate limit exceeded")
        }
    }

    /// A request over the rate limit: refused, and counted toward closing the connection.
    fn rate_limited(
        &mut self,
        bucket: &'static str,
        id: Option<&str>,
        out: &mut Vec<Utf8Bytes>,
    ) -> Flow {
        self.shared
            .metrics
            .rate_limited
            .with_label_values(&[bucket])
            .inc();
        if !self.strikes.try_take() {
            info!(peer = %self.peer, user = self.user(), "closing: sustained rate limit abuse");
            return Flow::Close(close_code::POLICY, "rate limit exceeded");
        }
        let message = "too many requests; slow down";
        out.push(match (self.me.is_some(), self.mode) {
            (true, Mode::Plain) => plain::error(message),
            _ => error_frame(ErrorCode::RateLimited, message, id),
        });
        Flow::Continue
    }

    fn dispatch(&mut self, request: Request, out: &mut Vec<Utf8Bytes>) -> Reply {
        let reference = request.id.as_deref();
        let Some(me) = self.me.clone() else {
            return match request.msg {
                ClientMsg::Hello { name, room, token } => {
                    let role = self.authenticate(&name, token.as_deref())?;
                    self.hello(&name, room.as_deref(), Mode::Json, role, reference, out)
                }
                _ => Err(reject(ErrorCode::HelloRequired, "say hello first")),
            };
        };
        match request.msg {
            ClientMsg::Hello { .. } => Err(reject(
                ErrorCode::AlreadyWelcomed,
                format!("you are already {}", me.name),
            )),
            ClientMsg::Join { room } => self.join(&me, &room, reference, out),
            ClientMsg::Kick { name, reason } => {
                require_admin(&me)?;
                let reason = reason
                    .as_deref()
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .unwrap_or("no reason given");
                let reason: String = reason.chars().take(200).collect();
                if protocol::validate_name(&name) == Err(NameError::Invalid) {
                    return Err(no_such_user(&name));
                }
                let kicked = self
                    .shared
                    .hub
                    .kick(&name, &me, &reason)
                    .ok_or_else(|| no_such_user(&name))?;
                info!(peer = %self.peer, user = %me.name, kicked = %kicked, "user kicked");
                out.push(bare_ack(reference, None));
                Ok(())
            }
            ClientMsg::Announce { text } => {
                require_admin(&me)?;
                check_text(&text)?;
                let json = protocol::encode(&ServerMsg::Notice {
                    from: &me.name,
                    text: &text,
                });
                self.shared
                    .hub
                    .broadcast_all(&json, &plain::notice(&me.name, &text));
                info!(peer = %self.peer, user = %me.name, "announcement sent");
                out.push(bare_ack(reference, None));
                Ok(())
            }
            ClientMsg::Leave { room } => {
                let room = self.my_room(Some(&room))?;
                self.leave(&me, &room);
                out.push(bare_ack(reference, Some(room.name())));
                Ok(())
            }
            ClientMsg::Say { room, text, action } => {
                let room = self.my_room(room.as_deref())?;
                check_text(&text)?;
                self.typing.clear(&TypingTarget::Room(room.clone()));
                let receipt = self
                    .shared
                    .hub
                    .say(&room, &me, &text, action)
                    .ok_or_else(|| {
                        reject(
                            ErrorCode::NotInRoom,
                            format!("you are not in #{}", room.name()),
                        )
                    })?;
                self.log_body(room.name(), &text);
                out.push(protocol::encode(&ServerMsg::Ack {
                    reference,
                    id: Some(receipt.id),
                    seq: receipt.seq,
                    ts: Some(&receipt.ts),
                    room: None,
                }));
                Ok(())
            }
            ClientMsg::Pm { to, text, action } => {
                check_text(&text)?;
                let (to_name, receipt) = self
                    .shared
                    .hub
                    .pm(&me, &to, &text, action)
                    .ok_or_else(|| no_such_user(&to))?;
                self.typing.clear(&TypingTarget::User(to_name));
                out.push(protocol::encode(&ServerMsg::Ack {
                    reference,
                    id: Some(receipt.id),
                    seq: None,
                    ts: Some(&receipt.ts),
                    room: None,
                }));
                Ok(())
            }
            ClientMsg::Typing { target, state } => {
                let target = match target {
                    Target::Room(room) => TypingTarget::Room(self.my_room(Some(&room))?),
                    Target::User(name) => TypingTarget::User(
                        self.shared
                            .hub
                            .user(&name)
                            .ok_or_else(|| no_such_user(&name))?
                            .name,
                    ),
                };
                if let Some(relay) = self.typing.update(target.clone(), state, Instant::now()) {
                    self.relay_typing(&me, &target, relay);
                }
                Ok(())
            }
            ClientMsg::Rooms => {
                let rooms = self.shared.hub.rooms();
                out.push(protocol::encode(&ServerMsg::Rooms {
                    rooms: rooms
                        .iter()
                        .map(|(name, members)| RoomInfo {
                            name,
                            members: *members,
                        })
                        .collect(),
                    reference,
                }));
                Ok(())
            }
            ClientMsg::Who { room } => {
                let room = self.visible_room(room.as_deref())?;
                let users = room.users();
                out.push(protocol::encode(&ServerMsg::Who {
                    room: room.name(),
                    users: user_infos(&users),
                    reference,
                }));
                Ok(())
            }
            ClientMsg::History {
                room,
                before,
                limit,
            } => {
                let room = self.visible_room(room.as_deref())?;
                let max = self.shared.config.history.size;
                let page = room.history_page(before, limit.unwrap_or(max).min(max));
                out.push(protocol::encode(&ServerMsg::History {
                    room: room.name(),
                    messages: protocol::raw_messages(&page),
                    reference,
                }));
                Ok(())
            }
        }
    }

    /// In token mode, the role a valid token grants `name`; a failure closes the connection (1008)
    /// after the `unauthorized` error, and the name is not taken. In open mode everyone is a user.
    fn authenticate(&mut self, name: &str, token: Option<&str>) -> Result<Role, Rejection> {
        let Some(verifier) = &self.shared.auth else {
            return Ok(Role::User);
        };
        verifier.verify(token, name).map_err(|e| {
            let shown: String = name.chars().take(protocol::MAX_NAME_BYTES).collect();
            info!(peer = %self.peer, user = %shown, error = %e, "hello refused: unauthorized");
            self.closing = Some((close_code::POLICY, "unauthorized"));
            reject(
                ErrorCode::Unauthorized,
                "a valid token for this name is required",
            )
        })
    }

    fn hello(
        &mut self,
        name: &str,
        room: Option<&str>,
        mode: Mode,
        role: Role,
        reference: Option<&str>,
        out: &mut Vec<Utf8Bytes>,
    ) -> Reply {
        match protocol::validate_name(name) {
            Ok(()) => {}
            Err(NameError::Invalid) => {
                return Err(reject(
                    ErrorCode::NameInvalid,
                    "names are 1-32 characters of A-Z a-z 0-9 _ . -",
                ));
            }
            Err(NameError::Reserved) => {
                return Err(reject(
                    ErrorCode::NameInvalid,
                    format!("the name {name:?} is reserved"),
                ));
            }
        }
        let room_name = normalize_room(room.unwrap_or(protocol::DEFAULT_ROOM))?;
        let member = Member {
            conn: self.conn,
            name: Arc::from(name),
            role,
            plain: mode == Mode::Plain,
            mailbox: self.mailbox.clone(),
        };
        let joined = self
            .shared
            .hub
            .hello(&member, &room_name)
            .map_err(|e| match e {
                HubError::NameTaken => {
                    reject(ErrorCode::NameTaken, format!("the name {name:?} is taken"))
                }
                HubError::TooManyRooms => {
                    reject(ErrorCode::TooManyRooms, "the server has too many rooms")
                }
            })?;
        info!(peer = %self.peer, user = name, room = %room_name, plain = member.plain, "user joined");
        self.mode = mode;
        self.home = joined.room.name().clone();
        self.rooms.push(joined.room.clone());
        self.me = Some(member);
        if mode == Mode::Plain {
            let names: Vec<&str> = joined.users.iter().map(|(n, _)| &**n).collect();
            out.push(format!("Welcome, {name}! {}", plain::online(&names)).into());
            return Ok(());
        }
        let config = &self.shared.config;
        out.push(protocol::encode(&ServerMsg::Welcome {
            name,
            room: joined.room.name(),
            users: user_infos(&joined.users),
            history: protocol::raw_messages(&joined.history),
            server: ServerInfo {
                version: env!("CARGO_PKG_VERSION"),
                max_message_bytes: config.limits.max_message_bytes,
                ping_interval_secs: config.server.ping_interval_secs,
            },
            reference,
        }));
        Ok(())
    }

    fn join(
        &mut self,
        me: &Member,
        room: &str,
        reference: Option<&str>,
        out: &mut Vec<Utf8Bytes>,
    ) -> Reply {
        let name = normalize_room(room)?;
        let already = self.rooms.iter().any(|r| **r.name() == *name);
        if !already && self.rooms.len() >= self.shared.config.limits.max_rooms_per_user {
            return Err(reject(
                ErrorCode::TooManyRooms,
                format!("you are in {} rooms, the most allowed", self.rooms.len()),
            ));
        }
        let JoinedRoom {
            room,
            users,
            history,
            already_member,
        } = self
            .shared
            .hub
            .join(me, &name)
            .map_err(|_| reject(ErrorCode::TooManyRooms, "the server has too many rooms"))?;
        if !already_member {
            debug!(peer = %self.peer, user = %me.name, room = %name, "joined room");
            self.rooms.push(room.clone());
        }
        out.push(protocol::encode(&ServerMsg::Room {
            room: room.name(),
            users: user_infos(&users),
            history: protocol::raw_messages(&history),
            reference,
        }));
        Ok(())
    }

    fn leave(&mut self, me: &Member, room: &Arc<Room>) {
        let target = TypingTarget::Room(room.clone());
        if self.typing.end(&target) {
            self.relay_typing(me, &target, TypingState::Done);
        }
        self.shared.hub.leave(me, room);
        self.rooms.retain(|r| !Arc::ptr_eq(r, room));
        debug!(peer = %self.peer, user = %me.name, room = %room.name(), "left room");
    }

    /// A room the client is in: `room` as given, or the hello room.
    fn my_room(&self, room: Option<&str>) -> Result<Arc<Room>, Rejection> {
        let name = match room {
            Some(r) => normalize_room(r)?,
            None => self.home.to_string(),
        };
        self.rooms
            .iter()
            .find(|r| **r.name() == *name)
            .cloned()
            .ok_or_else(|| reject(ErrorCode::NotInRoom, format!("you are not in #{name}")))
    }

    /// A room the client may look into: it must exist, and the client must be in it.
    fn visible_room(&self, room: Option<&str>) -> Result<Arc<Room>, Rejection> {
        let name = match room {
            Some(r) => normalize_room(r)?,
            None => self.home.to_string(),
        };
        if self.shared.hub.room(&name).is_none() {
            return Err(reject(
                ErrorCode::NoSuchRoom,
                format!("there is no room #{name}"),
            ));
        }
        self.my_room(Some(&name))
    }

    fn relay_typing(&self, me: &Member, target: &TypingTarget, state: TypingState) {
        match target {
            TypingTarget::Room(room) => {
                let frame = protocol::encode(&ServerMsg::Typing {
                    from: &me.name,
                    room: Some(room.name()),
                    to: None,
                    state,
                });
                room.publish_json(frame, Class::Typing, self.conn, &self.shared.metrics);
            }
            TypingTarget::User(name) => {
                let Some(target) = self.shared.hub.user(name) else {
                    return;
                };
                if target.plain {
                    return;
                }
                let frame = protocol::encode(&ServerMsg::Typing {
                    from: &me.name,
                    room: None,
                    to: Some(&target.name),
                    state,
                });
                let pushed = target.mailbox.push(&Frame::text(&frame), Class::Typing);
                self.shared.metrics.record_push(Class::Typing, pushed);
            }
        }
    }

    /// A line from a plain-text client: its name until welcomed, then chat and `/` commands.
    fn handle_line(&mut self, text: &str, out: &mut Vec<Utf8Bytes>) -> Flow {
        if !self.requests.try_take() {
            return self.rate_limited("request", None, out);
        }
        let line = text.trim();
        let Some(me) = self.me.clone() else {
            if self.shared.auth.is_some() {
                out.push(
                    "this server requires a signed token: connect with a client that sends a JSON hello \
                     with a token (chatctl connect NAME --token TOKEN)"
                        .into(),
                );
                return Flow::Close(close_code::POLICY, "token required");
            }
            if let Err(r) = self.hello(line, None, Mode::Plain, Role::User, None, out) {
                out.push(format!("{}; send another name", r.message).into());
            }
            return Flow::Continue;
        };
        if line.is_empty() {
            return Flow::Continue;
        }
        let result = if let Some(command) = line.strip_prefix('/') {
            let (verb, rest) = command
                .split_once(char::is_whitespace)
                .unwrap_or((command, ""));
            let rest = rest.trim();
            match verb {
                "exit" | "quit" => return Flow::Close(close_code::NORMAL, "bye"),
                "who" => {
                    let users = self.my_room(None).map(|r| r.users()).unwrap_or_default();
                    let names: Vec<&str> = users.iter().map(|(n, _)| &**n).collect();
                    out.push(plain::online(&names).into());
                    Ok(())
                }
                "msg" | "pm" => match rest.split_once(char::is_whitespace) {
                    Some((to, body)) if !body.trim().is_empty() => self
                        .shared
                        .hub
                        .pm(&me, to, body.trim(), false)
                        .map(|_| ())
                        .ok_or_else(|| no_such_user(to)),
                    _ => Err(reject(ErrorCode::BadRequest, "usage: /msg NAME text")),
                },
                "me" if !rest.is_empty() => self.say_plain(&me, rest, true),
                _ => Err(reject(
                    ErrorCode::UnknownType,
                    format!(
                        "unknown command /{verb}; try /msg NAME text, /me action, /who or /exit"
                    ),
                )),
            }
        } else {
            self.say_plain(&me, line, false)
        };
        if let Err(r) = result {
            out.push(plain::error(&r.message));
        }
        Flow::Continue
    }

    fn say_plain(&mut self, me: &Member, text: &str, action: bool) -> Reply {
        let room = self.my_room(None)?;
        self.shared
            .hub
            .say(&room, me, text, action)
            .map(|_| self.log_body(room.name(), text))
            .ok_or_else(|| reject(ErrorCode::NotInRoom, "you are not in a room"))
    }

    fn log_body(&self, room: &str, text: &str) {
        if self.shared.config.log.message_bodies {
            debug!(user = self.user(), room, text, "message");
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.mailbox.close();
        let Some(me) = self.me.take() else { return };
        for target in self.typing.drain() {
            self.relay_typing(&me, &target, TypingState::Done);
        }
        self.shared.hub.disconnect(&me, &self.rooms);
        info!(peer = %self.peer, user = %me.name, "user left");
    }
}

fn error_frame(code: ErrorCode, message: &str, reference: Option<&str>) -> Utf8Bytes {
    protocol::encode(&ServerMsg::Error {
        code,
        message,
        reference,
    })
}

fn normalize_room(room: &str) -> Result<String, Rejection> {
    protocol::normalize_room(room).ok_or_else(|| {
        reject(
            ErrorCode::RoomInvalid,
            "room names are 1-32 characters of A-Z a-z 0-9 _ . - (a leading # is ignored)",
        )
    })
}

fn no_such_user(name: &str) -> Rejection {
    let shown: String = name.chars().take(protocol::MAX_NAME_BYTES).collect();
    reject(
        ErrorCode::NoSuchUser,
        format!("nobody called {shown:?} is online"),
    )
}

/// An `ack` with nothing but the request's `ref` (and the room, for `leave`).
fn bare_ack(reference: Option<&str>, room: Option<&str>) -> Utf8Bytes {
    protocol::encode(&ServerMsg::Ack {
        reference,
        id: None,
        seq: None,
        ts: None,
        room,
    })
}

fn require_admin(me: &Member) -> Reply {
    if me.role == Role::Admin {
        Ok(())
    } else {
        Err(reject(ErrorCode::Forbidden, "only admins may do that"))
    }
}

fn check_text(text: &str) -> Reply {
    if text.trim().is_empty() {
        return Err(reject(ErrorCode::BadRequest, "text must not be empty"));
    }
    Ok(())
}

fn user_infos(users: &[(Arc<str>, Role)]) -> Vec<UserInfo<'_>> {
    users
        .iter()
        .map(|(name, role)| UserInfo { name, role: *role })
        .collect()
}
