//! One client's chat session: what each request means, given who the client is and where it is.
//!
//! A [`Session`] turns text frames into [`Broker`] calls and the calls' outcomes into replies. It
//! knows nothing about sockets: its connection task feeds it frames and writes out what it returns
//! (it is the connection's `Handler`). Outcomes come back at once or later, through the mailbox;
//! [`Session::apply`] is the one function that turns either kind into reply frames, and replies
//! leave in request order whatever order the outcomes arrive in. Local refusals (bad names, rate
//! limits, `hello_required`) queue behind earlier requests the same way.
//!
//! Dropping a session leaves every room and frees the name, whatever ended the connection.

mod plain;
pub(crate) mod rate;
pub(crate) mod typing;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::{debug, info};

use crate::auth::Verifier;
use crate::config::Config;
use crate::connection::mailbox::Mailbox;
use crate::connection::{Flow, Handler};
use crate::hub::{
    self, Answer, Broker, ConnId, Member, Outcome, Page, Receipt, Refusal, Resume, RoomView,
    StoredMessage, Ticket, TypingTo, name_order,
};
use crate::metrics::Metrics;
use crate::protocol::{
    self, ClientMsg, CloseReason, ErrorCode, NameError, Request, Role, RoomInfo, ServerInfo,
    ServerMsg, Target, TypingState, UserInfo, b,
};
use rate::TokenBucket;
use typing::{TypingTarget, TypingTimings, TypingTracker};

/// Requests one connection may have waiting for a late outcome, and their bytes: at either, the
/// connection reads no more until answers arrive (back-pressure through TCP, never a refusal).
/// Replies are bounded by requests in flight, so nothing grows without bound while a broker is
/// slow.
pub(crate) const MAX_IN_FLIGHT: usize = 64;
pub(crate) const MAX_IN_FLIGHT_BYTES: usize = 1 << 20;

/// What every chat session shares (no socket state).
#[derive(Debug)]
pub(crate) struct Chat {
    /// Users, rooms, history and fan-out.
    pub broker: Arc<dyn Broker>,
    /// The validated configuration.
    pub config: Arc<Config>,
    /// What is counted, for `/metrics`.
    pub metrics: Metrics,
    /// Token verification, in `auth.mode = "token"`.
    pub auth: Option<Verifier>,
    /// The typing relay periods.
    pub typing: TypingTimings,
}

/// How the client speaks: decided by its hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Json,
    Plain,
}

/// What a request in flight was, so its outcome can be turned into the right reply.
#[derive(Debug)]
enum Kind {
    Hello,
    /// `added`: the room was not in the session's list before this join.
    Join {
        room: Arc<str>,
        added: bool,
    },
    Leave,
    Say,
    Pm,
    Typing(TypingTarget),
    Who {
        after: Option<String>,
    },
    Rooms,
    /// `forward`: a page after a seq (catching up), which keeps its oldest messages when it must
    /// be cut; a page before keeps its newest.
    History {
        forward: bool,
    },
    Search,
    Kick {
        name: String,
    },
    Announce,
    Nick,
}

/// One request waiting for its outcome, or its reply waiting for earlier ones.
#[derive(Debug)]
struct InFlight {
    ticket: Ticket,
    kind: Kind,
    reference: Option<String>,
    /// The request's size, while its outcome is awaited.
    bytes: usize,
    /// The reply frames, once the outcome is known.
    reply: Option<Vec<Utf8Bytes>>,
}

/// One connection's chat state.
pub(crate) struct Session {
    chat: Arc<Chat>,
    conn: ConnId,
    ip: IpAddr,
    mailbox: Arc<Mailbox>,
    /// Set by a hello (its outcome may still be on its way: see `welcomed`).
    me: Option<Member>,
    /// The hello's outcome was a welcome.
    welcomed: bool,
    mode: Mode,
    /// The room given at hello: the default for `say`, `who` and `history`.
    home: Arc<str>,
    /// Rooms joined, or being joined (the broker orders our calls, so a `say` may follow a `join`).
    rooms: Vec<Arc<str>>,
    requests: TokenBucket,
    typing_rate: TokenBucket,
    strikes: TokenBucket,
    typing: TypingTracker,
    /// Set when a request must end the connection (after its reply is sent).
    closing: Option<CloseReason>,
    /// Requests whose replies cannot go out yet, oldest first.
    in_flight: VecDeque<InFlight>,
    /// Requests awaiting their outcome (not those only waiting behind others), and their bytes.
    awaiting: usize,
    awaiting_bytes: usize,
    /// The size of the request being dispatched.
    request_bytes: usize,
    next_ticket: Ticket,
}

impl Session {
    /// A session for a freshly upgraded connection.
    pub(crate) fn new(chat: Arc<Chat>, conn: ConnId, ip: IpAddr, mailbox: Arc<Mailbox>) -> Session {
        let limits = &chat.config.limits;
        let requests = TokenBucket::new(limits.rate_burst, limits.rate_per_sec);
        let typing_rate = TokenBucket::new(limits.typing_burst, limits.typing_rate_per_sec);
        let strikes_rate = if limits.rate_per_sec > 0.0 || limits.typing_rate_per_sec > 0.0 {
            1.0
        } else {
            0.0
        };
        let strikes = TokenBucket::new(limits.abuse_strikes, strikes_rate);
        let typing = TypingTracker::new(chat.typing);
        Session {
            chat,
            conn,
            ip,
            mailbox,
            me: None,
            welcomed: false,
            mode: Mode::Json,
            home: Arc::from(protocol::DEFAULT_ROOM),
            rooms: Vec::new(),
            requests,
            typing_rate,
            strikes,
            typing,
            closing: None,
            in_flight: VecDeque::new(),
            awaiting: 0,
            awaiting_bytes: 0,
            request_bytes: 0,
            next_ticket: 1,
        }
    }

    fn broker(&self) -> &dyn Broker {
        &*self.chat.broker
    }

    fn flow(&self) -> Flow {
        match self.closing {
            Some(reason) => Flow::Close(reason),
            None => Flow::Continue,
        }
    }

    /// Sends `frames` now, or after the replies to earlier requests.
    fn emit(&mut self, frames: Vec<Utf8Bytes>, out: &mut Vec<Utf8Bytes>) {
        if self.in_flight.is_empty() {
            out.extend(frames);
        } else {
            self.in_flight.push_back(InFlight {
                ticket: 0,
                kind: Kind::Rooms,
                reference: None,
                bytes: 0,
                reply: Some(frames),
            });
        }
    }

    /// An error reply, in the session's dialect.
    fn error(&self, refusal: &Refusal, reference: Option<&str>) -> Utf8Bytes {
        match self.mode {
            Mode::Plain if self.me.is_some() => protocol::plain::error(&refusal.message),
            _ => error_frame(refusal.code, &refusal.message, reference),
        }
    }

    fn refuse(&mut self, refusal: Refusal, reference: Option<&str>, out: &mut Vec<Utf8Bytes>) {
        let frame = self.error(&refusal, reference);
        self.emit(vec![frame], out);
    }

    /// Hands a request to the broker and deals with its answer (now, or when it arrives).
    fn call(
        &mut self,
        kind: Kind,
        reference: Option<String>,
        out: &mut Vec<Utf8Bytes>,
        ask: impl FnOnce(&dyn Broker, Ticket, &Member) -> Answer,
    ) {
        let ticket = self.next_ticket;
        let answer = match &self.me {
            Some(me) => ask(&*self.chat.broker, ticket, me),
            None => return,
        };
        self.next_ticket += 1;
        match answer {
            Answer::Now(outcome) => {
                let frames = self.apply(&kind, reference.as_deref(), outcome);
                self.emit(frames, out);
            }
            Answer::Later => {
                let bytes = self.request_bytes;
                self.awaiting += 1;
                self.awaiting_bytes += bytes;
                self.in_flight.push_back(InFlight {
                    ticket,
                    kind,
                    reference,
                    bytes,
                    reply: None,
                });
            }
        }
    }

    /// Turns an outcome into this client's reply frames, updating the session on the way. Every
    /// outcome goes through here, immediate or late.
    fn apply(&mut self, kind: &Kind, reference: Option<&str>, outcome: Outcome) -> Vec<Utf8Bytes> {
        let json = self.mode == Mode::Json;
        let frame = match (kind, outcome) {
            (Kind::Hello, Outcome::Welcome(view)) => return vec![self.welcome(view, reference)],
            (Kind::Hello, Outcome::Refused(r)) => {
                self.me = None;
                self.rooms.clear();
                if json {
                    error_frame(r.code, &r.message, reference)
                } else {
                    format!("{}; send another name", r.message).into()
                }
            }
            (Kind::Join { .. }, Outcome::Joined(view)) => {
                debug!(room = %view.room, "joined room");
                let (users, history, more) = self.fit_view(&view);
                protocol::encode(&ServerMsg::Room {
                    room: b(&view.room),
                    users: user_infos(users),
                    user_count: view.user_count,
                    history: history_items(history),
                    epoch: b(&view.epoch),
                    seq: view.seq,
                    resumed: view.resumed,
                    more,
                    reference: reference.map(b),
                })
            }
            (Kind::Join { room, added }, Outcome::Refused(r)) => {
                if *added {
                    self.rooms.retain(|x| x != room);
                }
                self.error(&r, reference)
            }
            (Kind::Leave, Outcome::Left { room }) => {
                debug!(%room, "left room");
                ack(reference, None, Some(&room))
            }
            (Kind::Say | Kind::Pm, Outcome::Sent(receipt)) => {
                if let Some(to) = &receipt.to {
                    self.typing.clear(&TypingTarget::User(to.clone()));
                }
                if !json {
                    return Vec::new();
                }
                ack(reference, Some(&receipt), None)
            }
            (Kind::Typing(_), Outcome::Relayed) => return Vec::new(),
            (Kind::Typing(target), Outcome::Refused(r)) => {
                self.typing.clear(target);
                self.error(&r, reference)
            }
            (Kind::Who { after }, Outcome::Who { room, users }) => {
                let start = match after {
                    Some(after) => users.partition_point(|(n, _)| name_order(n, after).is_le()),
                    None => 0,
                };
                let page = &users[start..];
                let budget = self.reply_budget();
                let n = fit_users(page, budget, self.chat.config.limits.users_per_page);
                if !json {
                    let names: Vec<&str> = page[..n].iter().map(|(n, _)| &**n).collect();
                    let more = if n < page.len() {
                        format!(" (and {} more)", page.len() - n)
                    } else {
                        String::new()
                    };
                    return vec![format!("{}{more}", protocol::plain::online(&names)).into()];
                }
                protocol::encode(&ServerMsg::Who {
                    room: b(&room),
                    users: user_infos(&page[..n]),
                    user_count: users.len(),
                    more: n < page.len(),
                    reference: reference.map(b),
                })
            }
            (Kind::Rooms, Outcome::Rooms(rooms)) => protocol::encode(&ServerMsg::Rooms {
                rooms: rooms
                    .iter()
                    .map(|(name, members)| RoomInfo {
                        name: b(name),
                        members: *members,
                    })
                    .collect(),
                reference: reference.map(b),
            }),
            (
                Kind::History { forward },
                Outcome::History {
                    room,
                    messages,
                    more,
                },
            ) => {
                // A client catching up pages on after the last seq it got, so a page `after`
                // that does not fit keeps its oldest messages (and says more follow): cut from
                // the other end, the messages between would be skipped for good.
                let budget = self.reply_budget();
                let (kept, cut) = if *forward {
                    let end = fit_oldest(&messages, budget);
                    (&messages[..end], end < messages.len())
                } else {
                    let start = fit_newest(&messages, budget);
                    (&messages[start..], start > 0)
                };
                protocol::encode(&ServerMsg::History {
                    room: b(&room),
                    with: None,
                    messages: history_items(kept),
                    more: more || cut,
                    reference: reference.map(b),
                })
            }
            (
                Kind::History { .. },
                Outcome::Conversation {
                    with,
                    messages,
                    more,
                },
            ) => {
                let budget = self.reply_budget();
                let mut used = 0;
                let start = messages.len()
                    - messages
                        .iter()
                        .rev()
                        .take_while(|m| {
                            used += protocol::json_len(&m.text) + protocol::json_len(&m.from) + 120;
                            used <= budget
                        })
                        .count();
                protocol::encode(&ServerMsg::History {
                    room: b(""),
                    with: Some(b(&with)),
                    messages: messages[start..]
                        .iter()
                        .map(|m| ServerMsg::Pm {
                            id: m.id,
                            ts: b(&m.ts),
                            from: b(&m.from),
                            role: m.role,
                            to: b(&m.to),
                            text: b(&m.text),
                            action: m.action,
                        })
                        .collect(),
                    more: more || start > 0,
                    reference: reference.map(b),
                })
            }
            (
                Kind::Search,
                Outcome::Found {
                    query,
                    messages,
                    more,
                },
            ) => {
                let budget = self.reply_budget();
                let mut used = 0;
                let n = messages
                    .iter()
                    .take_while(|m| {
                        used += message_len(m);
                        used <= budget
                    })
                    .count();
                protocol::encode(&ServerMsg::Search {
                    query: b(&query),
                    messages: history_items(&messages[..n]),
                    more: more || n < messages.len(),
                    reference: reference.map(b),
                })
            }
            (Kind::Kick { name }, Outcome::Done) => {
                info!(kicked = %name, "user kicked");
                ack(reference, None, None)
            }
            (Kind::Nick, Outcome::Renamed { name }) => {
                let old = self.me.as_ref().map(|m| m.name().clone());
                info!(from = old.as_deref(), to = %name, "user renamed");
                tracing::Span::current().record("user", &*name);
                self.me = self.me.as_ref().map(|m| m.renamed(name.clone()));
                if !json {
                    return vec![format!("you are now known as {name}").into()];
                }
                protocol::encode(&ServerMsg::Ack {
                    reference: reference.map(b),
                    id: None,
                    seq: None,
                    ts: None,
                    room: None,
                    name: Some(b(&name)),
                })
            }
            (Kind::Announce, Outcome::Done) => {
                info!("announcement sent");
                ack(reference, None, None)
            }
            (_, Outcome::Refused(r)) => self.error(&r, reference),
            (kind, outcome) => {
                // A broker answered with the wrong kind of outcome: a bug, not the client's fault.
                tracing::error!(
                    ?kind,
                    ?outcome,
                    "broker answered with an unexpected outcome"
                );
                self.error(
                    &Refusal::new(ErrorCode::Unavailable, "the server could not do that"),
                    reference,
                )
            }
        };
        vec![frame]
    }

    /// What a reply may take: the client's own frame limit, less room for its envelope.
    fn reply_budget(&self) -> usize {
        self.chat
            .config
            .limits
            .max_message_bytes
            .saturating_sub(REPLY_ENVELOPE)
    }

    /// The users and history of a `welcome` or `room` that fit in one reply: a page of users (at
    /// most half the budget) and, in the rest, the newest messages, or for a resume the oldest
    /// missed ones (contiguous after `since`; the flag says more follow).
    fn fit_view<'v>(
        &self,
        view: &'v RoomView,
    ) -> (&'v [UserEntry], &'v [Arc<StoredMessage>], bool) {
        let budget = self.reply_budget();
        let n = fit_users(
            &view.users,
            budget / 2,
            self.chat.config.limits.users_per_page,
        );
        let used: usize = view.users[..n].iter().map(|(u, _)| user_len(u)).sum();
        let rest = budget - used;
        if view.resumed == Some(true) {
            let end = fit_oldest(&view.history, rest);
            let more = view.more || end < view.history.len();
            return (&view.users[..n], &view.history[..end], more);
        }
        let start = fit_newest(&view.history, rest);
        (&view.users[..n], &view.history[start..], false)
    }

    fn welcome(&mut self, view: RoomView, reference: Option<&str>) -> Utf8Bytes {
        self.welcomed = true;
        self.home = view.room.clone();
        // The hello's room may have been full: the welcome says where the user landed.
        self.rooms = vec![view.room.clone()];
        let (name, plain) = match &self.me {
            Some(me) => (me.name().clone(), me.plain()),
            None => (Arc::from(""), false),
        };
        tracing::Span::current().record("user", &*name);
        info!(user = %name, room = %view.room, plain, "user joined");
        if plain {
            let names: Vec<&str> = view.users.iter().map(|(n, _)| &**n).collect();
            let more = match view.user_count.saturating_sub(names.len()) {
                0 => String::new(),
                n => format!(" (and {n} more)"),
            };
            return format!("Welcome, {name}! {}{more}", protocol::plain::online(&names)).into();
        }
        let config = &self.chat.config;
        let (users, history, more) = self.fit_view(&view);
        protocol::encode(&ServerMsg::Welcome {
            name: b(&name),
            room: b(&view.room),
            users: user_infos(users),
            user_count: view.user_count,
            history: history_items(history),
            epoch: b(&view.epoch),
            seq: view.seq,
            resumed: view.resumed,
            more,
            server: ServerInfo {
                version: b(env!("CARGO_PKG_VERSION")),
                max_message_bytes: config.limits.max_message_bytes,
                ping_interval_secs: config.server.ping_interval_secs,
                rate_per_sec: config.limits.rate_per_sec,
                rate_burst: config.limits.rate_burst,
                typing_rate_per_sec: config.limits.typing_rate_per_sec,
                typing_burst: config.limits.typing_burst,
            },
            reference: reference.map(b),
        })
    }

    /// A request over the rate limit: refused, and counted toward closing the connection.
    fn rate_limited(
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
        if !self.strikes.try_take() {
            info!("closing: sustained rate limit abuse");
            return Flow::Close(CloseReason::RateAbuse);
        }
        let refusal = Refusal::new(ErrorCode::RateLimited, "too many requests; slow down");
        self.refuse(refusal, id, out);
        Flow::Continue
    }

    fn dispatch(&mut self, request: Request, out: &mut Vec<Utf8Bytes>) {
        let reference = request.id;
        if !self.welcomed {
            return match request.msg {
                ClientMsg::Hello {
                    name,
                    room,
                    token,
                    since,
                    epoch,
                } if self.me.is_none() => match self.authenticate(&name, token.as_deref()) {
                    Ok(role) => {
                        let resume = resume(since, epoch);
                        let joining = Joining {
                            room: room.as_deref(),
                            resume: resume.as_ref(),
                        };
                        self.hello(&name, joining, Mode::Json, role, reference, out)
                    }
                    Err(r) => self.refuse(r, reference.as_deref(), out),
                },
                _ => self.refuse(hello_required(), reference.as_deref(), out),
            };
        }
        let Some(me) = self.me.clone() else { return };
        let reference_str = reference.as_deref();
        match request.msg {
            ClientMsg::Hello { .. } => self.refuse(
                Refusal::new(
                    ErrorCode::AlreadyWelcomed,
                    format!("you are already {}", me.name()),
                ),
                reference_str,
                out,
            ),
            ClientMsg::Join { room, since, epoch } => {
                self.join(&room, resume(since, epoch), reference, out)
            }
            ClientMsg::Leave { room } => match self.my_room(Some(&room)) {
                Ok(room) => {
                    let target = TypingTarget::Room(room.clone());
                    if self.typing.end(&target) {
                        self.relay_typing(&target, TypingState::Done);
                    }
                    self.rooms.retain(|r| *r != room);
                    self.call(Kind::Leave, reference, out, |b, t, me| {
                        b.leave(t, me, &room)
                    });
                }
                Err(r) => self.refuse(r, reference_str, out),
            },
            ClientMsg::Say { room, text, action } => {
                let room = match self.my_room(room.as_deref()) {
                    Ok(room) => room,
                    Err(r) => return self.refuse(r, reference_str, out),
                };
                if let Err(r) = check_text(&text, self.chat.config.limits.max_message_bytes) {
                    return self.refuse(r, reference_str, out);
                }
                self.typing.clear(&TypingTarget::Room(room.clone()));
                self.log_body(&room, &text);
                self.call(Kind::Say, reference, out, |b, t, me| {
                    b.say(t, me, &room, &text, action)
                });
            }
            ClientMsg::Pm { to, text, action } => {
                if let Err(r) = check_text(&text, self.chat.config.limits.max_message_bytes) {
                    return self.refuse(r, reference_str, out);
                }
                self.call(Kind::Pm, reference, out, |b, t, me| {
                    b.pm(t, me, &to, &text, action)
                });
            }
            ClientMsg::Typing { target, state } => {
                let target = match target {
                    Target::Room(room) => match self.my_room(Some(&room)) {
                        Ok(room) => TypingTarget::Room(room),
                        Err(r) => return self.refuse(r, reference_str, out),
                    },
                    Target::User(name) => {
                        if protocol::validate_name(&name) == Err(NameError::Invalid) {
                            return self.refuse(Refusal::no_such_user(&name), reference_str, out);
                        }
                        TypingTarget::User(name.into())
                    }
                };
                if let Some(relay) = self.typing.update(target.clone(), state, Instant::now()) {
                    self.call(Kind::Typing(target.clone()), reference, out, |b, t, me| {
                        b.typing(t, me, target.to(), relay)
                    });
                }
            }
            ClientMsg::Rooms => self.call(Kind::Rooms, reference, out, |b, t, me| b.rooms(t, me)),
            ClientMsg::Who { room, after } => match self.named_room(room.as_deref()) {
                Ok(room) => {
                    let after = after.map(|a| a.chars().take(protocol::MAX_NAME_BYTES).collect());
                    self.call(Kind::Who { after }, reference, out, |b, t, me| {
                        b.who(t, me, &room)
                    })
                }
                Err(r) => self.refuse(r, reference_str, out),
            },
            ClientMsg::History {
                room,
                before,
                after,
                limit,
                with,
            } => {
                let max = self.chat.config.history.size.max(1);
                let limit = limit.unwrap_or(max).clamp(1, max);
                if let Some(with) = with {
                    if protocol::validate_name(&with) == Err(NameError::Invalid) {
                        return self.refuse(Refusal::no_such_user(&with), reference_str, out);
                    }
                    let kind = Kind::History { forward: false };
                    return self.call(kind, reference, out, |b, t, me| {
                        b.conversation(t, me, &with, before, limit)
                    });
                }
                if before.is_some() && after.is_some() {
                    let r = Refusal::new(
                        ErrorCode::BadRequest,
                        "history pages one way: give before or after, not both",
                    );
                    return self.refuse(r, reference_str, out);
                }
                match self.named_room(room.as_deref()) {
                    Ok(room) => {
                        let page = Page {
                            before,
                            after,
                            limit,
                        };
                        let kind = Kind::History {
                            forward: after.is_some(),
                        };
                        self.call(kind, reference, out, |b, t, me| {
                            b.history(t, me, &room, page)
                        })
                    }
                    Err(r) => self.refuse(r, reference_str, out),
                }
            }
            ClientMsg::Search {
                query,
                room,
                limit,
                before,
            } => {
                let query = query.trim();
                if query.is_empty() || query.chars().count() > MAX_QUERY_CHARS {
                    let r = Refusal::new(
                        ErrorCode::BadRequest,
                        format!("a search needs 1 to {MAX_QUERY_CHARS} characters"),
                    );
                    return self.refuse(r, reference_str, out);
                }
                if let Err(words) = protocol::search_words(query) {
                    let r = Refusal::new(
                        ErrorCode::BadRequest,
                        format!(
                            "a search may have at most {} words (this one has {words}); every word must match",
                            protocol::MAX_SEARCH_WORDS
                        ),
                    );
                    return self.refuse(r, reference_str, out);
                }
                // One search at a time per connection: searches share one thread on the server.
                if self
                    .in_flight
                    .iter()
                    .any(|f| matches!(f.kind, Kind::Search) && f.reply.is_none())
                {
                    let r = Refusal::new(
                        ErrorCode::RateLimited,
                        "one search at a time: wait for the answer to the last one",
                    );
                    return self.refuse(r, reference_str, out);
                }
                let rooms = match room {
                    Some(room) => match self.my_room(Some(&room)) {
                        Ok(room) => vec![room],
                        Err(r) => return self.refuse(r, reference_str, out),
                    },
                    None if self.rooms.is_empty() => {
                        let r = Refusal::new(ErrorCode::NotInRoom, "you are in no room");
                        return self.refuse(r, reference_str, out);
                    }
                    None => self.rooms.clone(),
                };
                let limit = limit.unwrap_or(20).clamp(1, 100);
                self.call(Kind::Search, reference, out, |b, t, me| {
                    b.search(t, me, &rooms, query, before, limit)
                });
            }
            ClientMsg::Kick { name, reason } => {
                if let Err(r) = require_admin(&me) {
                    return self.refuse(r, reference_str, out);
                }
                let reason = reason
                    .as_deref()
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .unwrap_or("no reason given");
                let reason: String = reason.chars().take(200).collect();
                if protocol::validate_name(&name) == Err(NameError::Invalid) {
                    return self.refuse(Refusal::no_such_user(&name), reference_str, out);
                }
                let kind = Kind::Kick { name: name.clone() };
                self.call(kind, reference, out, |b, t, me| {
                    b.kick(t, me, &name, &reason)
                });
            }
            ClientMsg::Nick { name } => self.nick(&name, reference, out),
            ClientMsg::Announce { text } => {
                if let Err(r) = require_admin(&me)
                    .and_then(|()| check_text(&text, self.chat.config.limits.max_message_bytes))
                {
                    return self.refuse(r, reference_str, out);
                }
                self.call(Kind::Announce, reference, out, |b, t, me| {
                    b.announce(t, me, &text)
                });
            }
        }
    }

    /// In token mode, the role a valid token grants `name`; a failure closes the connection (1008)
    /// after the `unauthorized` error, and the name is not taken. In open mode everyone is a user.
    fn authenticate(&mut self, name: &str, token: Option<&str>) -> Result<Role, Refusal> {
        let Some(verifier) = &self.chat.auth else {
            return Ok(Role::User);
        };
        verifier.verify(token, name).map_err(|e| {
            let shown: String = name.chars().take(protocol::MAX_NAME_BYTES).collect();
            info!(user = %shown, error = %e, "hello refused: unauthorized");
            self.closing = Some(CloseReason::Unauthorized);
            Refusal::new(
                ErrorCode::Unauthorized,
                "a valid token for this name is required",
            )
        })
    }

    fn hello(
        &mut self,
        name: &str,
        joining: Joining<'_>,
        mode: Mode,
        role: Role,
        reference: Option<String>,
        out: &mut Vec<Utf8Bytes>,
    ) {
        let refusal = name_refusal(name);
        let requested = joining.room.unwrap_or(protocol::DEFAULT_ROOM);
        let room = match (refusal, normalize_room(requested)) {
            (None, Ok(room)) => room,
            (Some(r), _) | (None, Err(r)) => {
                let frame = match mode {
                    Mode::Json => error_frame(r.code, &r.message, reference.as_deref()),
                    Mode::Plain => format!("{}; send another name", r.message).into(),
                };
                return self.emit(vec![frame], out);
            }
        };
        self.mode = mode;
        self.me = Some(Member::new(
            self.conn,
            Arc::from(name),
            role,
            mode == Mode::Plain,
            self.ip,
            self.mailbox.clone(),
        ));
        self.rooms.push(room.clone());
        let resume = joining.resume;
        self.call(Kind::Hello, reference, out, |b, t, me| {
            b.hello(t, me, &room, resume)
        });
    }

    /// `nick`: names follow the hello's rules; in token mode names come from tokens.
    fn nick(&mut self, name: &str, reference: Option<String>, out: &mut Vec<Utf8Bytes>) {
        let refusal = if self.chat.auth.is_some() {
            Some(Refusal::new(
                ErrorCode::Forbidden,
                "names come from tokens on this server",
            ))
        } else {
            name_refusal(name)
        };
        if let Some(r) = refusal {
            return self.refuse(r, reference.as_deref(), out);
        }
        self.call(Kind::Nick, reference, out, |b, t, me| b.nick(t, me, name));
    }

    fn join(
        &mut self,
        room: &str,
        resume: Option<Resume>,
        reference: Option<String>,
        out: &mut Vec<Utf8Bytes>,
    ) {
        let room = match normalize_room(room) {
            Ok(room) => room,
            Err(r) => return self.refuse(r, reference.as_deref(), out),
        };
        let added = !self.rooms.contains(&room);
        if added {
            let cap = self.chat.config.limits.max_rooms_per_user;
            if self.rooms.len() >= cap {
                let r = Refusal::new(
                    ErrorCode::TooManyRooms,
                    format!("you are in {} rooms, the most allowed", self.rooms.len()),
                );
                return self.refuse(r, reference.as_deref(), out);
            }
            self.rooms.push(room.clone());
        }
        let kind = Kind::Join {
            room: room.clone(),
            added,
        };
        self.call(kind, reference, out, |b, t, me| {
            b.join(t, me, &room, resume.as_ref())
        });
    }

    /// A room the client is in: `room` as given, or the hello room.
    fn my_room(&self, room: Option<&str>) -> Result<Arc<str>, Refusal> {
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
    fn relay_typing(&self, target: &TypingTarget, state: TypingState) {
        if let Some(me) = &self.me {
            let _ = self.broker().typing(0, me, target.to(), state);
        }
    }

    fn log_body(&self, room: &str, text: &str) {
        if self.chat.config.log.message_bodies {
            debug!(room, text, "message");
        }
    }

    /// Sends what has become sendable: replies at the front of the queue whose outcomes are in.
    fn release(&mut self, out: &mut Vec<Utf8Bytes>) {
        while self.in_flight.front().is_some_and(|f| f.reply.is_some()) {
            if let Some(done) = self.in_flight.pop_front() {
                out.extend(done.reply.unwrap_or_default());
            }
        }
    }
}

impl Handler for Session {
    fn mailbox(&self) -> &Arc<Mailbox> {
        &self.mailbox
    }

    fn on_text(&mut self, text: &str, out: &mut Vec<Utf8Bytes>) -> Flow {
        self.request_bytes = text.len();
        let plain_line = match (self.me.is_some(), self.mode) {
            (true, mode) => mode == Mode::Plain,
            (false, _) => !protocol::looks_like_json_object(text),
        };
        let metrics = &self.chat.metrics;
        if plain_line {
            metrics.received("plain").inc();
            return self.handle_line(text, out);
        }
        let request = match protocol::parse_request(text) {
            Ok(r) => r,
            Err(e) => {
                metrics.received("invalid").inc();
                if !self.requests.try_take() {
                    return self.rate_limited("request", e.id.as_deref(), out);
                }
                let refusal = if !self.welcomed && e.code == ErrorCode::UnknownType {
                    hello_required()
                } else {
                    Refusal::new(e.code, e.message)
                };
                self.refuse(refusal, e.id.as_deref(), out);
                return Flow::Continue;
            }
        };
        metrics.received(request.msg.kind()).inc();
        let (allowed, bucket) = if matches!(request.msg, ClientMsg::Typing { .. }) {
            (self.typing_rate.try_take(), "typing")
        } else {
            (self.requests.try_take(), "request")
        };
        if !allowed {
            return self.rate_limited(bucket, request.id.as_deref(), out);
        }
        self.dispatch(request, out);
        self.flow()
    }

    /// Chat is text only: a binary frame gets an error (not a disconnect).
    fn on_binary(&mut self, out: &mut Vec<Utf8Bytes>) -> Flow {
        self.chat.metrics.received("binary").inc();
        if !self.requests.try_take() {
            return self.rate_limited("request", None, out);
        }
        let refusal = Refusal::new(
            ErrorCode::BadRequest,
            "binary frames are not supported; send JSON text frames",
        );
        self.refuse(refusal, None, out);
        Flow::Continue
    }

    /// Counts a ping against the request budget: pings are answered by the WebSocket layer, but a
    /// flood of them is abuse like any other (sustained → close 1008).
    fn on_ping(&mut self) -> Flow {
        if self.requests.try_take() {
            return Flow::Continue;
        }
        self.chat
            .metrics
            .rate_limited
            .with_label_values(&["ping"])
            .inc();
        if self.strikes.try_take() {
            Flow::Continue
        } else {
            info!("closing: ping flood");
            Flow::Close(CloseReason::RateAbuse)
        }
    }

    fn on_controls(&mut self, out: &mut Vec<Utf8Bytes>) -> Flow {
        for late in hub::take_late(&self.mailbox) {
            let Some(pos) = self
                .in_flight
                .iter()
                .position(|f| f.ticket == late.ticket && f.reply.is_none())
            else {
                continue; // an answer nobody waits for (a relay, a duplicate)
            };
            let kind = std::mem::replace(&mut self.in_flight[pos].kind, Kind::Rooms);
            let reference = self.in_flight[pos].reference.take();
            self.awaiting -= 1;
            self.awaiting_bytes -= std::mem::take(&mut self.in_flight[pos].bytes);
            let frames = self.apply(&kind, reference.as_deref(), late.outcome);
            self.in_flight[pos].reply = Some(frames);
        }
        self.release(out);
        self.flow()
    }

    fn replies_waiting(&self) -> bool {
        self.in_flight.iter().any(|f| f.reply.is_some())
    }

    fn accepts_input(&self) -> bool {
        self.awaiting < MAX_IN_FLIGHT && self.awaiting_bytes < MAX_IN_FLIGHT_BYTES
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.typing.next_expiry()
    }

    /// Relays `done` for typing states that went stale.
    fn on_timer(&mut self, now: Instant) {
        for target in self.typing.expire(now) {
            self.relay_typing(&target, TypingState::Done);
        }
    }

    fn welcomed(&self) -> bool {
        self.welcomed
    }

    fn shutdown_notice(&self) -> Utf8Bytes {
        const TEXT: &str = "server is shutting down";
        match self.mode {
            Mode::Plain if self.welcomed => protocol::plain::notice(protocol::SERVER_NAME, TEXT),
            _ => protocol::encode(&ServerMsg::Notice {
                from: b(protocol::SERVER_NAME),
                text: b(TEXT),
            }),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.mailbox.close();
        let Some(me) = self.me.take() else { return };
        for target in self.typing.drain() {
            let _ = self.broker().typing(0, &me, target.to(), TypingState::Done);
        }
        self.broker().disconnect(&me, &self.rooms);
        if self.welcomed {
            info!(user = %me.name(), "user left");
        }
    }
}

impl TypingTarget {
    fn to(&self) -> TypingTo<'_> {
        match self {
            TypingTarget::Room(room) => TypingTo::Room(room),
            TypingTarget::User(name) => TypingTo::User(name),
        }
    }
}

/// Longest search query, in characters.
const MAX_QUERY_CHARS: usize = 200;

/// Where a hello goes: its room, and what the client already has of it.
#[derive(Debug, Clone, Copy)]
struct Joining<'a> {
    room: Option<&'a str>,
    resume: Option<&'a Resume>,
}

/// A resume request, when the client sent both halves.
fn resume(since: Option<u64>, epoch: Option<String>) -> Option<Resume> {
    Some(Resume {
        since: since?,
        epoch: epoch?,
    })
}

/// Why a name may not be taken, if it may not.
fn name_refusal(name: &str) -> Option<Refusal> {
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

fn hello_required() -> Refusal {
    Refusal::new(ErrorCode::HelloRequired, "say hello first")
}

/// Longest error message sent: a message never echoes more than a short prefix of what it is
/// about (a 60 KB bad value does not come back as a 120 KB error).
const MAX_ERROR_MESSAGE_BYTES: usize = 200;

fn error_frame(code: ErrorCode, message: &str, reference: Option<&str>) -> Utf8Bytes {
    let message = if message.len() > MAX_ERROR_MESSAGE_BYTES {
        let mut end = MAX_ERROR_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        Cow::Owned(format!("{}…", &message[..end]))
    } else {
        Cow::Borrowed(message)
    };
    protocol::encode(&ServerMsg::Error {
        code,
        message,
        reference: reference.map(b),
    })
}

/// An `ack`: a receipt's `id`/`seq`/`ts`, or the room (for `leave`), or nothing but the `ref`.
fn ack(reference: Option<&str>, receipt: Option<&Receipt>, room: Option<&str>) -> Utf8Bytes {
    protocol::encode(&ServerMsg::Ack {
        reference: reference.map(b),
        id: receipt.map(|r| r.id),
        seq: receipt.and_then(|r| r.seq),
        ts: receipt.map(|r| b(&r.ts)),
        room: room.map(b),
        name: None,
    })
}

fn normalize_room(room: &str) -> Result<Arc<str>, Refusal> {
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
fn check_text(text: &str, max_frame: usize) -> Result<(), Refusal> {
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

fn user_infos(users: &[(Arc<str>, Role)]) -> Vec<UserInfo<'_>> {
    users
        .iter()
        .map(|(name, role)| UserInfo {
            name: b(name),
            role: *role,
        })
        .collect()
}

fn history_items(messages: &[Arc<StoredMessage>]) -> Vec<ServerMsg<'_>> {
    messages
        .iter()
        .map(|m| ServerMsg::Message(m.borrowed()))
        .collect()
}

/// A member as a broker lists them.
type UserEntry = (Arc<str>, Role);

/// Room a reply keeps for everything but its list (type, room, counts, `ref`, flags).
const REPLY_ENVELOPE: usize = 512;

/// A user's bytes in a list, at most.
fn user_len(name: &str) -> usize {
    protocol::json_len(name) + 28
}

/// A stored message's bytes in a list, at most.
fn message_len(m: &StoredMessage) -> usize {
    protocol::json_len(&m.text)
        + protocol::json_len(&m.from)
        + protocol::json_len(&m.room)
        + protocol::json_len(&m.ts)
        + 110
}

/// Where the newest messages that fit in `budget` bytes start. A lone message larger than the
/// budget is still sent (it fit in a frame when it was said).
fn fit_newest(messages: &[Arc<StoredMessage>], budget: usize) -> usize {
    let mut used = 0;
    let mut start = messages.len();
    while start > 0 {
        let cost = message_len(&messages[start - 1]);
        if used + cost > budget && start < messages.len() {
            break;
        }
        used += cost;
        start -= 1;
    }
    start
}

/// How many of the oldest messages fit in `budget` bytes (at least one: a lone message larger
/// than the budget fit in a frame when it was said).
fn fit_oldest(messages: &[Arc<StoredMessage>], budget: usize) -> usize {
    let mut used = 0;
    let mut end = 0;
    while end < messages.len() {
        let cost = message_len(&messages[end]);
        if used + cost > budget && end > 0 {
            break;
        }
        used += cost;
        end += 1;
    }
    end
}

/// How many of the first `users` fit in `budget` bytes, at most `page`.
fn fit_users(users: &[(Arc<str>, Role)], budget: usize, page: usize) -> usize {
    let mut used = 0;
    users
        .iter()
        .take(page)
        .take_while(|(name, _)| {
            used += user_len(name);
            used <= budget
        })
        .count()
}
