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

mod changes;
mod moderation;
mod plain;
pub(crate) use moderation::enforcer;
pub mod rate;
mod replies;
mod requests;
mod sign_in;
mod slots;
#[cfg(test)]
mod tests;
pub(crate) mod typing;

use std::net::IpAddr;
use std::sync::Arc;

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::auth::Verifier;
use crate::config::Config;
use crate::connection::mailbox::Mailbox;
use crate::connection::{Flow, Handler, Who, note};
use crate::hub::{self, Answer, Broker, ConnId, Member, Outcome, Refusal, Ticket, TypingTo};
use crate::metrics::Metrics;
use crate::protocol::{self, ClientMsg, CloseReason, ErrorCode, ServerMsg, TypingState, b};
pub(crate) use rate::Rates;
use rate::TokenBucket;
use replies::error_frame;
use requests::hello_required;
use slots::Slots;
use typing::{TypingTarget, TypingTimings, TypingTracker};

/// What every chat session shares (no socket state).
#[derive(Debug)]
pub(crate) struct Chat {
    /// Users, rooms, history and fan-out.
    pub broker: Arc<dyn Broker>,
    /// The validated configuration.
    pub config: Arc<Config>,
    /// What is counted, for `/metrics`.
    pub metrics: Metrics,
    /// Token verification, in `auth.mode = "token"` (and in accounts mode with a secret).
    pub auth: Option<Verifier>,
    /// Passwords and registration, in `auth.mode = "accounts"`.
    pub accounts: Option<Arc<crate::accounts::Accounts>>,
    /// The typing relay periods.
    pub typing: TypingTimings,
    /// The sessions' rate limits (`limits`).
    pub rates: Rates,
    /// Outgoing webhooks, when endpoints are configured.
    pub webhooks: Option<Arc<crate::webhooks::Webhooks>>,
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
    /// A password on its way to the accounts service; then a hello to `room`.
    SignIn {
        room: Arc<str>,
        resume: Option<crate::hub::Resume>,
    },
    /// `added`: the room was not in the session's list before this join.
    Join {
        room: Arc<str>,
        added: bool,
    },
    Leave,
    /// `say` in this room (with its text when a webhook wants it).
    Say(Arc<str>, Option<Box<Said>>),
    /// `pm` (with its text when a webhook wants it).
    Pm(Option<Box<Said>>),
    /// `read` (answered by the accounts service).
    Read,
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
    Sessions,
    Logout,
    /// `read` with `with` (answered by the accounts service).
    ReadPm,
    /// A moderation request (answered by the accounts service).
    Moderate,
    /// Leaving a room one was banned from (no reply: the client was told).
    Expelled,
    /// A PM nobody was online to get, with the accounts service to be kept.
    Kept,
    /// A reply or a change to a message (asked again if the broker reads the message first).
    Change(Box<changes::Redo>),
}

/// A message's text and whether it is an action, kept until its ack for the webhooks.
#[derive(Debug)]
pub(crate) struct Said {
    text: Box<str>,
    action: bool,
}

/// What a sign-in found waiting: the conversations the welcome lists, and the PMs sent after it.
type Inbox = (
    Vec<protocol::ConversationInfo<'static>>,
    Vec<crate::store::Pm>,
);

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
    /// A password is being checked (or an account made): another hello waits for it.
    signing_in: bool,
    /// What a hello brought that the welcome uses up (boxed: only a connection saying hello
    /// has it).
    pending: Option<Box<Pending>>,
    /// The rooms the account is a member of (where rooms can be owned: an invite-only room
    /// lets its members back in, a private one is listed for them).
    kept: Vec<Arc<str>>,
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
    /// Requests in flight and replies waiting for them, oldest first.
    slots: Slots,
    /// The size of the request being dispatched.
    request_bytes: usize,
    next_ticket: Ticket,
    /// What this connection sent and edited (made when first needed).
    authored: Option<Box<changes::Authored>>,
}
/// What a hello brought, until the welcome.
#[derive(Debug, Default)]
struct Pending {
    /// What the hello called this connection (tokens and accounts), until the name is taken.
    device: Option<Arc<str>>,
    /// The id (`jti`) of the token the hello carried, until the name is taken.
    token_id: Option<Box<str>>,
    /// The rooms the account is a member of, for the welcome (accounts mode).
    memberships: Vec<protocol::Membership<'static>>,
    /// The account's conversations and the PMs waiting for it, for the welcome (a sign-in with
    /// a store).
    inbox: Option<Box<Inbox>>,
}

impl Session {
    /// Who this session is, for its log lines at `info` and above (`connection::note!`); also
    /// its `Handler::who` (not called `who` here: that is the `who` request's method).
    fn log_who(&self) -> Who<'_> {
        Who {
            conn: Some(self.conn),
            client: Some(self.ip),
            user: self.me.as_ref().map(|m| &**m.name()),
        }
    }

    /// What the hello under way brought (made on first use).
    fn pending(&mut self) -> &mut Pending {
        self.pending.get_or_insert_with(Box::default)
    }

    /// The id of the token the hello under way carried.
    fn token_id(&self) -> Option<&str> {
        self.pending.as_ref()?.token_id.as_deref()
    }

    /// The text of a message for the webhooks, when one wants it (`room`: a room's; `None`: a
    /// PM).
    fn hooked(&self, room: Option<&str>, text: &str, action: bool) -> Option<Box<Said>> {
        let hooks = self.chat.webhooks.as_ref()?;
        let wanted = match room {
            Some(room) => hooks.wants_messages(room),
            None => hooks.wants_pms(),
        };
        wanted.then(|| {
            Box::new(Said {
                text: text.into(),
                action,
            })
        })
    }

    /// A session for a freshly upgraded connection.
    pub(crate) fn new(chat: Arc<Chat>, conn: ConnId, ip: IpAddr, mailbox: Arc<Mailbox>) -> Session {
        Session {
            chat,
            conn,
            ip,
            mailbox,
            me: None,
            welcomed: false,
            signing_in: false,
            pending: None,
            kept: Vec::new(),
            mode: Mode::Json,
            home: Arc::from(protocol::DEFAULT_ROOM),
            rooms: Vec::new(),
            requests: TokenBucket::new(),
            typing_rate: TokenBucket::new(),
            strikes: TokenBucket::new(),
            typing: TypingTracker::default(),
            closing: None,
            slots: Slots::default(),
            request_bytes: 0,
            next_ticket: 1,
            authored: None,
        }
    }

    fn broker(&self) -> &dyn Broker {
        &*self.chat.broker
    }

    /// Hands `event` to this user's other connections (through the broker).
    fn tell_own(&self, event: ServerMsg<'static>) {
        if let Some(me) = &self.me {
            self.chat.broker.to_own(me, event);
        }
    }

    /// The accounts service and this session's account key (accounts mode, after hello).
    fn account(&self) -> Option<(&crate::accounts::Accounts, String)> {
        let accounts = self.chat.accounts.as_deref()?;
        Some((accounts, protocol::name_key(self.me.as_ref()?.name())))
    }

    fn flow(&self) -> Flow {
        match self.closing {
            Some(reason) => Flow::Close(reason),
            None => Flow::Continue,
        }
    }

    /// Sends `frames` now, or after the replies to earlier requests.
    fn emit(&mut self, frames: Vec<Utf8Bytes>, out: &mut Vec<Utf8Bytes>) {
        self.slots.send(frames, out);
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
            Answer::Now(Outcome::Unreached(pm)) => {
                if let Some(frame) = self.keep_pm(pm, reference, None) {
                    self.emit(vec![frame], out);
                }
            }
            Answer::Now(outcome) => {
                if let Err(deferred) = self.claim_first(kind, outcome, reference, None) {
                    let (kind, outcome, reference) = *deferred;
                    let frames = self.apply(&kind, reference.as_deref(), outcome);
                    self.emit(frames, out);
                }
            }
            Answer::Later => self.slots.wait(ticket, kind, reference, self.request_bytes),
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
                if !self.requests.try_take(self.chat.rates.requests) {
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
            (self.typing_rate.try_take(self.chat.rates.typing), "typing")
        } else {
            (self.requests.try_take(self.chat.rates.requests), "request")
        };
        if !allowed {
            return self.rate_limited(bucket, request.id.as_deref(), out);
        }
        self.dispatch(request, out);
        self.flow()
    }

    /// Chat is text only: a binary frame gets an error (not a disconnect).
    fn on_binary(&mut self, _: &[u8], out: &mut Vec<Utf8Bytes>) -> Flow {
        self.chat.metrics.received("binary").inc();
        if !self.requests.try_take(self.chat.rates.requests) {
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
        if self.requests.try_take(self.chat.rates.requests) {
            return Flow::Continue;
        }
        self.chat
            .metrics
            .rate_limited
            .with_label_values(&["ping"])
            .inc();
        if self.strikes.try_take(self.chat.rates.strikes) {
            Flow::Continue
        } else {
            note!(info, self.log_who(), "closing: ping flood");
            Flow::Close(CloseReason::RateAbuse)
        }
    }

    fn on_controls(&mut self, out: &mut Vec<Utf8Bytes>) -> Flow {
        for late in hub::take_late(&self.mailbox) {
            if let (hub::EXPELLED, Outcome::Expelled { room, by, reason }) =
                (late.ticket, &late.outcome)
            {
                self.expelled(room, by, reason, out);
                continue;
            }
            let Some(answered) = self.slots.answered(late.ticket) else {
                continue; // an answer nobody waits for (a relay, a duplicate)
            };
            if matches!(answered.kind, Kind::SignIn { .. }) {
                self.signed_in(answered, late.outcome);
                continue;
            }
            let outcome = match late.outcome {
                Outcome::Target(target) => {
                    let (at, reference) = (answered.at, answered.reference);
                    self.retarget(answered.kind, target, reference, at, out);
                    continue;
                }
                Outcome::Unreached(pm) => {
                    let at = answered.at;
                    let reference = answered.reference.clone();
                    if let Some(frame) = self.keep_pm(pm, reference, Some(at)) {
                        self.slots.fill(answered, vec![frame]);
                    }
                    continue;
                }
                outcome => outcome,
            };
            let at = answered.at;
            let Err(deferred) =
                self.claim_first(answered.kind, outcome, answered.reference, Some(at))
            else {
                continue;
            };
            let (kind, outcome, reference) = *deferred;
            let frames = self.apply(&kind, reference.as_deref(), outcome);
            let answered = slots::Answered {
                at,
                kind,
                reference,
            };
            self.slots.fill(answered, frames);
        }
        self.slots.release(out);
        self.flow()
    }

    fn replies_waiting(&self) -> bool {
        self.slots.replies_waiting()
    }

    fn accepts_input(&self) -> bool {
        self.slots.has_room()
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

    fn who(&self) -> Who<'_> {
        self.log_who()
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
            // `me` is taken by now: the name is given here.
            let who = Who {
                user: Some(me.name()),
                ..self.log_who()
            };
            note!(info, who, "user left");
            if let Some(hooks) = &self.chat.webhooks {
                for room in &self.rooms {
                    hooks.left(room, me.name());
                }
            }
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
