//! Requests into broker calls: one function per request, each checking what the session can
//! check itself (names, rooms it is in, text sizes, rate limits) before the broker is asked.

use std::sync::Arc;

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::debug;

use super::replies::error_frame;
use super::typing::TypingTarget;
use super::{Kind, Mode, Session};
use crate::connection::{Flow, Who, note};
use crate::hub::{About, Member, Page, Refusal, Resume};
use crate::protocol::{
    self, Change, ClientMsg, CloseReason, ErrorCode, NameError, Request, Role, Target, TypingState,
    Where,
};

impl Session {
    /// A request over the rate limit: refused, and counted toward closing the connection.
    pub(super) fn rate_limited(
        &mut self,
        bucket: &'static str,
        id: Option<&str>,
        out: &mut Vec<Utf8Bytes>,
    ) -> Flow {
        self.chat
            .metrics
            .rate_limited
            .with_label_values(&[bucket])
            .inc();
        if !self.strikes.try_take(self.chat.rates.strikes) {
            note!(info, self.log_who(), "closing: sustained rate limit abuse");
            return Flow::Close(CloseReason::RateAbuse);
        }
        let refusal = Refusal::new(ErrorCode::RateLimited, "too many requests; slow down");
        self.refuse(refusal, id, out);
        Flow::Continue
    }

    /// Carries out one parsed request: before the welcome only a `hello` is taken. Each request
    /// either goes to the broker (taking `id` along for its reply) or is refused here.
    pub(super) fn dispatch(&mut self, request: Request, out: &mut Vec<Utf8Bytes>) {
        let Request { mut id, msg } = request;
        if !self.welcomed {
            return self.before_welcome(msg, id, out);
        }
        let Some(me) = self.me.clone() else { return };
        let result = match msg {
            ClientMsg::Hello { .. } | ClientMsg::Register { .. } => Err(Refusal::new(
                ErrorCode::AlreadyWelcomed,
                format!("you are already {}", me.name()),
            )),
            ClientMsg::Join { room, since, epoch } => {
                self.join(&room, resume(since, epoch), &mut id, out)
            }
            ClientMsg::Nick { name } => self.nick(&name, &mut id, out),
            ClientMsg::Read { room, seq } => self.read(&room, seq, &mut id, out),
            ClientMsg::ReadPm { with, msg } => self.read_pm(&with, msg, &mut id),
            ClientMsg::Leave { room } => self.leave(&room, &mut id, out),
            ClientMsg::Say {
                room,
                text,
                action,
                reply_to,
            } => self.say(room.as_deref(), &text, action, reply_to, &mut id, out),
            ClientMsg::Edit { at, msg, text } => {
                self.change_at(at, Change::Edit { msg }, text, &mut id, out)
            }
            ClientMsg::Delete { at, msg } => {
                self.change_at(at, Change::Delete { msg }, String::new(), &mut id, out)
            }
            ClientMsg::React {
                room,
                msg,
                emoji,
                on,
            } => {
                let react = Change::React {
                    msg,
                    emoji: emoji.into(),
                    on,
                };
                self.change_at(Where::Room(room), react, String::new(), &mut id, out)
            }
            ClientMsg::Pm { to, text, action } => self.pm(&to, &text, action, &mut id, out),
            ClientMsg::Typing { target, state } => self.typing(target, state, &mut id, out),
            ClientMsg::Rooms => {
                self.call(Kind::Rooms, id.take(), out, |b, t, me| b.rooms(t, me));
                Ok(())
            }
            ClientMsg::Who { room, after } => self.who(room.as_deref(), after, &mut id, out),
            ClientMsg::History {
                room,
                before,
                after,
                limit,
                with,
            } => {
                let max = self.chat.config.history.size.max(1);
                let page = Page {
                    before,
                    after,
                    limit: limit.unwrap_or(max).clamp(1, max),
                };
                match with {
                    Some(with) => self.conversation(&with, page, &mut id, out),
                    None => self.history(room.as_deref(), page, &mut id, out),
                }
            }
            ClientMsg::Search {
                query,
                room,
                limit,
                before,
            } => self.search(&query, room.as_deref(), limit, before, &mut id, out),
            ClientMsg::Kick { name, reason } => {
                require_admin(&me).and_then(|()| self.kick(&name, reason.as_deref(), &mut id, out))
            }
            ClientMsg::Announce { text } => {
                require_admin(&me).and_then(|()| self.announce(&text, &mut id, out))
            }
            msg @ (ClientMsg::RoomSet { .. }
            | ClientMsg::Role { .. }
            | ClientMsg::Transfer { .. }
            | ClientMsg::Invite { .. }
            | ClientMsg::Uninvite { .. }
            | ClientMsg::Ban { .. }
            | ClientMsg::Unban { .. }
            | ClientMsg::Mute { .. }
            | ClientMsg::Unmute { .. }
            | ClientMsg::Bans { .. }
            | ClientMsg::Audit { .. }) => self.moderate(msg, &mut id),
            ClientMsg::Sessions => self.sessions(&mut id, out),
            ClientMsg::Logout { session } => self.logout(&session, &mut id, out),
        };
        if let Err(r) = result {
            self.refuse(r, id.as_deref(), out);
        }
    }

    /// Before the welcome: a `hello` (once), or `hello_required`.
    fn before_welcome(&mut self, msg: ClientMsg, id: Option<String>, out: &mut Vec<Utf8Bytes>) {
        if let ClientMsg::Hello { device, .. } | ClientMsg::Register { device, .. } = &msg
            && self.me.is_none()
            && !self.signing_in
        {
            match device.as_deref().map(valid_device).transpose() {
                Ok(device) => self.pending().device = device.filter(|d| !d.is_empty()),
                Err(r) => return self.refuse(r, id.as_deref(), out),
            }
        }
        match msg {
            ClientMsg::Hello {
                name,
                password: Some(password),
                room,
                token: None,
                since,
                epoch,
                ..
            } if self.me.is_none() && !self.signing_in => {
                let request = crate::accounts::Request::SignIn {
                    name,
                    password: password.0,
                };
                self.sign_in(request, room.as_deref(), resume(since, epoch), id, out);
            }
            ClientMsg::Register {
                name,
                password,
                invite,
                room,
                ..
            } if self.me.is_none() && !self.signing_in => {
                let request = crate::accounts::Request::Register {
                    name,
                    password: password.0,
                    invite,
                };
                self.sign_in(request, room.as_deref(), None, id, out);
            }
            ClientMsg::Hello {
                name,
                room,
                token,
                since,
                epoch,
                ..
            } if self.me.is_none() && !self.signing_in => {
                match self.authenticate(&name, token.as_deref()) {
                    // A token's account: its rooms and read state first (with a store).
                    Ok(role) if self.chat.accounts.is_some() => {
                        let request = crate::accounts::Request::Resume { name, role };
                        self.sign_in(request, room.as_deref(), resume(since, epoch), id, out);
                    }
                    Ok(role) => {
                        let resume = resume(since, epoch);
                        let joining = Joining {
                            room: room.as_deref(),
                            resume: resume.as_ref(),
                        };
                        self.hello(&name, joining, Mode::Json, role, id, out)
                    }
                    Err(r) => self.refuse(r, id.as_deref(), out),
                }
            }
            _ => self.refuse(hello_required(), id.as_deref(), out),
        }
    }

    /// `sessions` and `logout`: only where a user may have several connections.
    fn sessions(&mut self, id: &mut Option<String>, out: &mut Vec<Utf8Bytes>) -> Done {
        require_owned(&self.chat)?;
        self.call(Kind::Sessions, id.take(), out, |b, t, me| b.sessions(t, me));
        Ok(())
    }

    fn logout(&mut self, session: &str, id: &mut Option<String>, out: &mut Vec<Utf8Bytes>) -> Done {
        require_owned(&self.chat)?;
        self.call(Kind::Logout, id.take(), out, |b, t, me| {
            b.logout(t, me, session)
        });
        Ok(())
    }

    fn leave(&mut self, room: &str, id: &mut Option<String>, out: &mut Vec<Utf8Bytes>) -> Done {
        let room = self.my_room(Some(room))?;
        let target = TypingTarget::Room(room.clone());
        if self.typing.end(&target) {
            self.relay_typing(&target, TypingState::Done);
        }
        self.rooms.retain(|r| *r != room);
        // Not a member any more: an invite-only room wants a new invite.
        self.kept.retain(|r| *r != room);
        self.call(Kind::Leave, id.take(), out, |b, t, me| {
            b.leave(t, me, &room)
        });
        Ok(())
    }

    fn say(
        &mut self,
        room: Option<&str>,
        text: &str,
        action: bool,
        reply_to: Option<u64>,
        id: &mut Option<String>,
        out: &mut Vec<Utf8Bytes>,
    ) -> Done {
        let room = self.my_room(room)?;
        check_text(text, self.chat.config.limits.max_message_bytes)?;
        self.may_speak(&room)?;
        self.typing.clear(&TypingTarget::Room(room.clone()));
        self.log_body(&room, text);
        if let Some(to) = reply_to {
            return self.say_reply(room, text, action, to, id, out);
        }
        let said = self.hooked(Some(&room), text, action);
        self.call(Kind::Say(room.clone(), said), id.take(), out, |b, t, me| {
            b.say(t, me, &room, text, action, None)
        });
        Ok(())
    }

    fn pm(
        &mut self,
        to: &str,
        text: &str,
        action: bool,
        id: &mut Option<String>,
        out: &mut Vec<Utf8Bytes>,
    ) -> Done {
        check_text(text, self.chat.config.limits.max_message_bytes)?;
        let said = self.hooked(None, text, action);
        self.call(Kind::Pm(said), id.take(), out, |b, t, me| {
            b.pm(t, me, to, text, action)
        });
        Ok(())
    }

    /// A typing state goes to the broker only when it changes what others see (the tracker
    /// throttles repeats); a refusal clears it.
    fn typing(
        &mut self,
        target: Target,
        state: TypingState,
        id: &mut Option<String>,
        out: &mut Vec<Utf8Bytes>,
    ) -> Done {
        let target = match target {
            Target::Room(room) => TypingTarget::Room(self.my_room(Some(&room))?),
            Target::User(name) => TypingTarget::User(valid_user(&name)?.into()),
        };
        if let Some(relay) =
            self.typing
                .update(&self.chat.typing, target.clone(), state, Instant::now())
        {
            self.call(Kind::Typing(target.clone()), id.take(), out, |b, t, me| {
                b.typing(t, me, target.to(), relay)
            });
        }
        Ok(())
    }

    fn who(
        &mut self,
        room: Option<&str>,
        after: Option<String>,
        id: &mut Option<String>,
        out: &mut Vec<Utf8Bytes>,
    ) -> Done {
        let room = self.named_room(room)?;
        let after = after.map(|a| a.chars().take(protocol::MAX_NAME_BYTES).collect());
        self.call(Kind::Who { after }, id.take(), out, |b, t, me| {
            b.who(t, me, &room)
        });
        Ok(())
    }

    /// A page of a private conversation (newest first, paging `before`).
    fn conversation(
        &mut self,
        with: &str,
        page: Page,
        id: &mut Option<String>,
        out: &mut Vec<Utf8Bytes>,
    ) -> Done {
        let with = valid_user(with)?;
        let kind = Kind::History { forward: false };
        self.call(kind, id.take(), out, |b, t, me| {
            b.conversation(t, me, with, page.before, page.limit)
        });
        Ok(())
    }

    fn history(
        &mut self,
        room: Option<&str>,
        page: Page,
        id: &mut Option<String>,
        out: &mut Vec<Utf8Bytes>,
    ) -> Done {
        if page.before.is_some() && page.after.is_some() {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                "history pages one way: give before or after, not both",
            ));
        }
        let room = self.named_room(room)?;
        let kind = Kind::History {
            forward: page.after.is_some(),
        };
        self.call(kind, id.take(), out, |b, t, me| {
            b.history(t, me, &room, page)
        });
        Ok(())
    }

    fn search(
        &mut self,
        query: &str,
        room: Option<&str>,
        limit: Option<usize>,
        before: Option<u64>,
        id: &mut Option<String>,
        out: &mut Vec<Utf8Bytes>,
    ) -> Done {
        let query = query.trim();
        if query.is_empty() || query.chars().count() > MAX_QUERY_CHARS {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!("a search needs 1 to {MAX_QUERY_CHARS} characters"),
            ));
        }
        if let Err(words) = protocol::search_words(query) {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!(
                    "a search may have at most {} words (this one has {words}); every word must match",
                    protocol::MAX_SEARCH_WORDS
                ),
            ));
        }
        // One search at a time per connection: searches share one thread on the server.
        if self.slots.awaits(|k| matches!(k, Kind::Search)) {
            return Err(Refusal::new(
                ErrorCode::RateLimited,
                "one search at a time: wait for the answer to the last one",
            ));
        }
        let rooms = match room {
            Some(room) => vec![self.my_room(Some(room))?],
            None if self.rooms.is_empty() => {
                return Err(Refusal::new(ErrorCode::NotInRoom, "you are in no room"));
            }
            None => self.rooms.clone(),
        };
        let limit = limit.unwrap_or(20).clamp(1, 100);
        self.call(Kind::Search, id.take(), out, |b, t, me| {
            b.search(t, me, &rooms, query, before, limit)
        });
        Ok(())
    }

    fn kick(
        &mut self,
        name: &str,
        reason: Option<&str>,
        id: &mut Option<String>,
        out: &mut Vec<Utf8Bytes>,
    ) -> Done {
        let reason = reason
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .unwrap_or("no reason given");
        let reason: String = reason.chars().take(200).collect();
        let name = valid_user(name)?;
        let kind = Kind::Kick {
            name: name.to_string(),
        };
        self.call(kind, id.take(), out, |b, t, me| {
            b.kick(t, me, name, &reason)
        });
        Ok(())
    }

    fn announce(&mut self, text: &str, id: &mut Option<String>, out: &mut Vec<Utf8Bytes>) -> Done {
        check_text(text, self.chat.config.limits.max_message_bytes)?;
        self.call(Kind::Announce, id.take(), out, |b, t, me| {
            b.announce(t, me, text)
        });
        Ok(())
    }

    /// In token mode, the role a valid token grants `name`; a failure closes the connection (1008)
    /// after the `unauthorized` error, and the name is not taken. In open mode everyone is a user.
    fn authenticate(&mut self, name: &str, token: Option<&str>) -> Result<Role, Refusal> {
        let accounts = self.chat.config.auth.mode == crate::config::AuthMode::Accounts;
        let verifier = match &self.chat.auth {
            Some(verifier) if token.is_some() || !accounts => verifier,
            _ if accounts => {
                return Err(Refusal::new(
                    ErrorCode::Unauthorized,
                    "this server has accounts: sign in with your password, or register",
                ));
            }
            _ => return Ok(Role::User),
        };
        let verified = verifier.verify_token(token, name).map(|(role, jti)| {
            self.pending().token_id = jti.map(String::into_boxed_str);
            role
        });
        verified.map_err(|e| {
            let shown: String = name.chars().take(protocol::MAX_NAME_BYTES).collect();
            note!(info, Who { user: Some(&shown), ..self.log_who() }, error = %e, "hello refused: unauthorized");
            self.closing = Some(CloseReason::Unauthorized);
            Refusal::new(
                ErrorCode::Unauthorized,
                "a valid token for this name is required",
            )
        })
    }

    pub(super) fn hello(
        &mut self,
        name: &str,
        joining: Joining<'_>,
        mode: Mode,
        role: Role,
        reference: Option<String>,
        out: &mut Vec<Utf8Bytes>,
    ) {
        let refusal = name_refusal(name).or_else(|| self.admitted(name, self.token_id()).err());
        let requested = joining.room.unwrap_or(protocol::DEFAULT_ROOM);
        let room = match (refusal, normalize_room(requested)) {
            // A room the user may not enter: the welcome says where they landed instead.
            (None, Ok(room)) if self.may_enter(&room, name, role).is_err() => {
                protocol::DEFAULT_ROOM.into()
            }
            (None, Ok(room)) => room,
            (Some(r), _) | (None, Err(r)) => {
                let frame = match mode {
                    Mode::Json => error_frame(r.code, &r.message, reference.as_deref()),
                    Mode::Plain => format!("{}; send another name", r.message).into(),
                };
                return self.emit(vec![frame], out);
            }
        };
        self.take_name(name.into(), role, mode, &room);
        let resume = joining.resume;
        self.call(Kind::Hello, reference, out, |b, t, me| {
            b.hello(t, me, &room, resume)
        });
    }

    /// The connection is `name` from now on (its hello goes to the broker next), in `room`.
    pub(super) fn take_name(&mut self, name: Arc<str>, role: Role, mode: Mode, room: &Arc<str>) {
        self.mode = mode;
        let mut me = Member::new(
            self.conn,
            name,
            role,
            mode == Mode::Plain,
            self.ip,
            self.mailbox.clone(),
        );
        if self.chat.config.auth.mode.owned_names() {
            let pending = self.pending();
            me = me.with_about(About {
                device: pending.device.take(),
                since: protocol::timestamp().into(),
                jti: pending.token_id.take(),
            });
        }
        self.me = Some(me);
        self.rooms.push(room.clone());
    }

    /// `nick`: names follow the hello's rules; in token mode names come from tokens.
    pub(super) fn nick(
        &mut self,
        name: &str,
        id: &mut Option<String>,
        out: &mut Vec<Utf8Bytes>,
    ) -> Done {
        if self.chat.config.auth.mode.owned_names() {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "names are owned on this server (tokens or accounts)",
            ));
        }
        if let Some(r) = name_refusal(name) {
            return Err(r);
        }
        self.call(Kind::Nick, id.take(), out, |b, t, me| b.nick(t, me, name));
        Ok(())
    }

    fn join(
        &mut self,
        room: &str,
        resume: Option<Resume>,
        id: &mut Option<String>,
        out: &mut Vec<Utf8Bytes>,
    ) -> Done {
        let room = normalize_room(room)?;
        let added = !self.rooms.contains(&room);
        if added && let Some(me) = &self.me {
            self.may_enter(&room, me.name(), me.role())?;
        }
        if added
            && let Some(accounts) = &self.chat.accounts
            && !accounts.can_note_join()
        {
            return Err(Refusal::unavailable(
                "the server cannot record room memberships right now; try again",
            ));
        }
        if added {
            let cap = self.chat.config.limits.max_rooms_per_user;
            if self.rooms.len() >= cap {
                return Err(Refusal::new(
                    ErrorCode::TooManyRooms,
                    format!("you are in {} rooms, the most allowed", self.rooms.len()),
                ));
            }
            self.rooms.push(room.clone());
        }
        let kind = Kind::Join {
            room: room.clone(),
            added,
        };
        self.call(kind, id.take(), out, |b, t, me| {
            b.join(t, me, &room, resume.as_ref())
        });
        Ok(())
    }

    /// A room the client is in: `room` as given, or the hello room.
    pub(super) fn my_room(&self, room: Option<&str>) -> Result<Arc<str>, Refusal> {
        let name = self.named_room(room)?;
        self.rooms
            .iter()
            .find(|r| r[..] == name[..])
            .cloned()
            .ok_or_else(|| Refusal::not_in_room(&name))
    }

    /// The room a request names (normalised), or the hello room.
    fn named_room(&self, room: Option<&str>) -> Result<Arc<str>, Refusal> {
        match room {
            Some(r) => normalize_room(r),
            None => Ok(self.home.clone()),
        }
    }

    /// Relays a typing state nobody asked about (expiry, leaving): no reply.
    pub(super) fn relay_typing(&self, target: &TypingTarget, state: TypingState) {
        if let Some(me) = &self.me {
            let _ = self.broker().typing(0, me, target.to(), state);
        }
    }

    pub(super) fn log_body(&self, room: &str, text: &str) {
        if self.chat.config.log.message_bodies {
            debug!(room, text, "message");
        }
    }
}

/// A request carried out (or handed to the broker), or refused here with this refusal.
pub(super) type Done = Result<(), Refusal>;

/// A user name that could exist (otherwise: `no_such_user`, as for a name nobody has).
pub(super) fn valid_user(name: &str) -> Result<&str, Refusal> {
    match protocol::validate_name(name) {
        Err(NameError::Invalid) => Err(Refusal::no_such_user(name)),
        _ => Ok(name),
    }
}

/// Longest search query, in characters.
const MAX_QUERY_CHARS: usize = 200;

/// Where a hello goes: its room, and what the client already has of it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Joining<'a> {
    pub room: Option<&'a str>,
    pub resume: Option<&'a Resume>,
}

/// A resume request, when the client sent both halves.
fn resume(since: Option<u64>, epoch: Option<String>) -> Option<Resume> {
    Some(Resume {
        since: since?,
        epoch: epoch?,
    })
}

/// Why a name may not be taken, if it may not.
pub(super) fn name_refusal(name: &str) -> Option<Refusal> {
    match protocol::validate_name(name) {
        Ok(()) => None,
        Err(NameError::Invalid) => Some(Refusal::new(
            ErrorCode::NameInvalid,
            "names are 1-32 characters of A-Z a-z 0-9 _ . -",
        )),
        Err(NameError::Reserved) => Some(Refusal::new(
            ErrorCode::NameInvalid,
            format!("the name {name:?} is reserved"),
        )),
    }
}

pub(super) fn hello_required() -> Refusal {
    Refusal::new(ErrorCode::HelloRequired, "say hello first")
}

pub(super) fn normalize_room(room: &str) -> Result<Arc<str>, Refusal> {
    protocol::normalize_room(room)
        .map(Arc::from)
        .ok_or_else(|| {
            Refusal::new(
                ErrorCode::RoomInvalid,
                "room names are 1-32 characters of A-Z a-z 0-9 _ . - (a leading # is ignored)",
            )
        })
}

fn require_admin(me: &Member) -> Result<(), Refusal> {
    if me.role() == Role::Admin {
        Ok(())
    } else {
        Err(Refusal::new(
            ErrorCode::Forbidden,
            "only admins may do that",
        ))
    }
}

/// What an event carrying a text adds around it, at most: type, ids, seq, timestamp, a room and
/// a name of 32 characters each, role, flags (about 230 bytes; rounded up).
const TEXT_ENVELOPE: usize = 384;

/// A text that may be said: something visible in it, and small enough that the event carrying it
/// to others fits in the frames clients are promised (`max_message_bytes`). That is checked on the
/// text as JSON encodes it: a request of 65,529 bytes of `\"` is 32,764 quotes, each two bytes
/// again in the event.
pub(super) fn check_text(text: &str, max_frame: usize) -> Result<(), Refusal> {
    let encoded = protocol::json_len(text);
    if encoded + TEXT_ENVELOPE > max_frame {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            format!(
                "the text is {encoded} bytes once encoded (quotes, backslashes and control characters take two to six bytes each); at most {} fit in a message",
                max_frame.saturating_sub(TEXT_ENVELOPE)
            ),
        ));
    }
    if text.trim().is_empty() {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            "text must not be empty",
        ));
    }
    if !protocol::has_visible_text(text) {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            "text must have something visible in it",
        ));
    }
    Ok(())
}

/// `sessions` and `logout` mean something only where names are owned (tokens, accounts).
fn require_owned(chat: &super::Chat) -> Done {
    if chat.config.auth.mode.owned_names() {
        Ok(())
    } else {
        Err(Refusal::new(
            ErrorCode::Forbidden,
            "a name has one connection on this server (open mode)",
        ))
    }
}

/// A `device` as the client named it: at most 32 characters, no control characters.
fn valid_device(device: &str) -> Result<Arc<str>, Refusal> {
    let device = device.trim();
    if device.chars().count() > MAX_DEVICE_CHARS || device.chars().any(char::is_control) {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            format!(
                "`device` is at most {MAX_DEVICE_CHARS} characters, none of them control characters"
            ),
        ));
    }
    Ok(device.into())
}

/// The longest `device` a `hello` may carry.
const MAX_DEVICE_CHARS: usize = 32;
