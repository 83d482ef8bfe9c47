//! Signing in with a password and registering (`auth.mode = "accounts"`). The password goes to
//! the accounts service's threads (`crate::accounts`), never checked on the chat thread; its
//! answer comes back through the mailbox like a broker's late outcome, in the hello's place among
//! the replies, and a signed-in account then says hello to the broker under its own name.

use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::slots::Answered;
use super::{Kind, Mode, Session};
use crate::accounts::{Denied, Done, Reply, Request, RoomState};
use crate::hub::{Answer, Late, Outcome, Refusal, Resume};
use crate::protocol::{self, ErrorCode};
use crate::store::accounts::Conversation;

impl Session {
    /// Hands a sign-in or a registration to the accounts service; the hello's reply waits for
    /// its answer.
    pub(super) fn sign_in(
        &mut self,
        request: Request,
        room: Option<&str>,
        resume: Option<Resume>,
        id: Option<String>,
        out: &mut Vec<Utf8Bytes>,
    ) {
        let Some(accounts) = self.chat.accounts.clone() else {
            let r = Refusal::new(
                ErrorCode::Forbidden,
                "this server has no accounts: say hello with a name (or a token)",
            );
            return self.refuse(r, id.as_deref(), out);
        };
        let name = match &request {
            Request::SignIn { name, .. }
            | Request::Register { name, .. }
            | Request::Resume { name, .. } => name.clone(),
            _ => return,
        };
        if let Request::Register { .. } | Request::Resume { .. } = &request
            && let Some(r) = super::requests::name_refusal(&name)
        {
            return self.refuse(r, id.as_deref(), out);
        }
        let room = match super::requests::normalize_room(room.unwrap_or(protocol::DEFAULT_ROOM)) {
            Ok(room) => room,
            Err(r) => return self.refuse(r, id.as_deref(), out),
        };
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let mailbox = self.mailbox.clone();
        let asked = name.clone();
        let reply = late(mailbox, ticket, asked);
        let token = match &request {
            Request::Resume { role, .. } => Some(*role),
            _ => None,
        };
        match accounts.submit(request, self.ip, reply) {
            Ok(()) => {
                self.signing_in = true;
                let kind = Kind::SignIn { room, resume };
                self.slots.wait(ticket, kind, id, self.request_bytes);
            }
            // A token vouched for the name already: too busy to list its rooms is no reason to
            // refuse it (a crowd reconnecting at once), so it is welcomed without them.
            Err(_) if token.is_some() => {
                let joining = super::requests::Joining {
                    room: Some(&room),
                    resume: resume.as_ref(),
                };
                let role = token.unwrap_or_default();
                self.hello(&name, joining, Mode::Json, role, id, out);
            }
            Err(denied) => self.refuse(refusal(&denied, &name), id.as_deref(), out),
        }
    }

    /// A hello for `name` that someone else vouched for (an HTTP API key): the path a token's
    /// hello takes, so server bans, rooms one may not enter and, with accounts, the account's
    /// memberships apply as they would to the account's own client. `device` is what
    /// `sessions` shows of it.
    pub(crate) fn hello_vouched(
        &mut self,
        name: String,
        room: &str,
        role: protocol::Role,
        device: Arc<str>,
        id: String,
        out: &mut Vec<Utf8Bytes>,
    ) {
        self.pending().device = Some(device);
        if self.chat.accounts.is_some() {
            let request = Request::Resume { name, role };
            return self.sign_in(request, Some(room), None, Some(id), out);
        }
        let joining = super::requests::Joining {
            room: Some(room),
            resume: None,
        };
        self.hello(&name, joining, Mode::Json, role, Some(id), out);
    }

    /// `read`: the account has read `room` up to `seq`. Answered by the accounts service with
    /// the marker and what is unread past it.
    pub(super) fn read(
        &mut self,
        room: &str,
        seq: u64,
        id: &mut Option<String>,
        out: &mut Vec<Utf8Bytes>,
    ) -> Result<(), Refusal> {
        let (Some(accounts), Some(me)) = (self.chat.accounts.clone(), self.me.clone()) else {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "read markers are kept for accounts (auth.mode = \"accounts\")",
            ));
        };
        let room = super::requests::normalize_room(room)?;
        if !self.rooms.contains(&room) {
            return Err(Refusal::not_in_room(&room));
        }
        let _ = out;
        let request = Request::Read {
            name: me.name().to_string(),
            room: room.to_string(),
            seq,
        };
        self.ask_accounts(&accounts, request, &room, Kind::Read, id.take())
    }

    /// Hands `request` to the accounts service; its answer (or refusal, about `about`) is the
    /// reply, in this request's place among the replies.
    pub(super) fn ask_accounts(
        &mut self,
        accounts: &crate::accounts::Accounts,
        request: Request,
        about: &str,
        kind: Kind,
        id: Option<String>,
    ) -> Result<(), Refusal> {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let reply = late(self.mailbox.clone(), ticket, about.to_string());
        accounts
            .submit(request, self.ip, reply)
            .map_err(|denied| refusal(&denied, about))?;
        self.slots.wait(ticket, kind, id, self.request_bytes);
        Ok(())
    }

    /// `read` with `with`: the user has read its conversation with `with` up to message `msg`.
    pub(super) fn read_pm(
        &mut self,
        with: &str,
        msg: u64,
        id: &mut Option<String>,
    ) -> Result<(), Refusal> {
        let (Some(accounts), Some(me)) = (self.chat.accounts.clone(), self.me.clone()) else {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "read markers are kept where names are owned (tokens or accounts) with a store",
            ));
        };
        let with = super::requests::valid_user(with)?;
        let request = Request::ReadPm {
            name: me.name().to_string(),
            with: with.to_string(),
            msg,
        };
        self.ask_accounts(&accounts, request, with, Kind::ReadPm, id.take())
    }

    /// A PM nobody was online to get: handed to the accounts service, which keeps it if its
    /// recipient has an account. `at` is the PM's place among the replies when it already has
    /// one (the broker answered late); otherwise the reply takes a place now. False when it
    /// could not be handed over (the refusal is the reply).
    pub(super) fn keep_pm(
        &mut self,
        pm: Box<crate::store::Pm>,
        reference: Option<String>,
        at: Option<usize>,
    ) -> Option<Utf8Bytes> {
        let to = pm.to.clone();
        let Some(accounts) = self.chat.accounts.clone() else {
            return Some(self.error(&Refusal::no_such_user(&to), reference.as_deref()));
        };
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let reply = late(self.mailbox.clone(), ticket, to.clone());
        match accounts.submit(Request::Keep(pm), self.ip, reply) {
            Ok(()) => {
                match at {
                    Some(at) => self.slots.rewait(at, ticket, Kind::Kept, reference),
                    None => self
                        .slots
                        .wait(ticket, Kind::Kept, reference, self.request_bytes),
                }
                None
            }
            Err(denied) => Some(self.error(&refusal(&denied, &to), reference.as_deref())),
        }
    }

    /// The accounts service answered: a signed-in account says hello to the broker (its reply
    /// keeps the sign-in's place), a refusal is the reply.
    pub(super) fn signed_in(&mut self, answered: Answered, outcome: Outcome) {
        self.signing_in = false;
        let Answered {
            at,
            kind,
            reference,
        } = answered;
        let Kind::SignIn { room, resume } = kind else {
            return;
        };
        let (name, role) = match outcome {
            Outcome::SignedIn {
                name,
                role,
                rooms,
                conversations,
                waiting,
            } => {
                self.kept = rooms
                    .iter()
                    .map(|m| std::sync::Arc::from(&*m.room))
                    .collect();
                let pending = self.pending();
                pending.memberships = rooms;
                if !(conversations.is_empty() && waiting.is_empty()) {
                    pending.inbox = Some(Box::new((conversations, waiting)));
                }
                (name, role)
            }
            Outcome::Refused(r) => {
                let frame = self.error(&r, reference.as_deref());
                let answered = Answered {
                    at,
                    kind: Kind::Hello,
                    reference,
                };
                return self.slots.fill(answered, vec![frame]);
            }
            _ => return,
        };
        // Banned from the server, or a revoked token: refused; a room the account may not enter:
        // the welcome says where it landed instead.
        if let Err(r) = self.admitted(&name, self.token_id()) {
            let frame = self.error(&r, reference.as_deref());
            let answered = Answered {
                at,
                kind: Kind::Hello,
                reference,
            };
            return self.slots.fill(answered, vec![frame]);
        }
        let room = match self.may_enter(&room, &name, role) {
            Ok(()) => room,
            Err(_) => protocol::DEFAULT_ROOM.into(),
        };
        self.take_name(name, role, Mode::Json, &room);
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let Some(me) = &self.me else { return };
        let answer = self.chat.broker.hello(ticket, me, &room, resume.as_ref());
        match answer {
            Answer::Now(outcome) => {
                let Err(deferred) = self.claim_first(Kind::Hello, outcome, reference, Some(at))
                else {
                    return;
                };
                let (kind, outcome, reference) = *deferred;
                let frames = self.apply(&kind, reference.as_deref(), outcome);
                let answered = Answered {
                    at,
                    kind,
                    reference,
                };
                self.slots.fill(answered, frames);
            }
            Answer::Later => self.slots.rewait(at, ticket, Kind::Hello, reference),
        }
    }
}

/// Where the accounts service's answer to `ticket` goes: this session's mailbox, as a late
/// outcome. A connection gone meanwhile needs nothing undone (an account it made stays).
fn late(
    mailbox: std::sync::Arc<crate::connection::mailbox::Mailbox>,
    ticket: crate::hub::Ticket,
    about: String,
) -> Reply {
    Box::new(move |result: Result<Done, Denied>| {
        let outcome = match result {
            Ok(Done::SignedIn(signed)) => Outcome::SignedIn {
                name: signed.name.into(),
                role: signed.role,
                rooms: signed.rooms.into_iter().map(membership).collect(),
                conversations: signed.conversations.into_iter().map(conversation).collect(),
                waiting: signed.waiting,
            },
            Ok(Done::Read(state)) => Outcome::ReadState(membership(state)),
            Ok(Done::ReadPm(c)) => Outcome::PmRead(conversation(c)),
            Ok(Done::Kept(pm)) => Outcome::Kept(pm),
            Ok(Done::Moderated(m)) => Outcome::Moderated(m),
            Err(denied) => Outcome::Refused(refusal(&denied, &about)),
        };
        mailbox.push_control(Box::new(Late { ticket, outcome }));
    })
}

fn conversation(c: Conversation) -> protocol::ConversationInfo<'static> {
    protocol::ConversationInfo {
        with: c.with.into(),
        last: c.last,
        read: c.read,
        unread: c.unread,
    }
}

fn membership(state: RoomState) -> protocol::Membership<'static> {
    protocol::Membership {
        room: state.room.into(),
        epoch: state.epoch.into(),
        seq: state.head,
        read: state.read,
        unread: state.unread,
        mentions: state.mentions,
    }
}

/// What the client is told when the accounts service says no.
pub(super) fn refusal(denied: &Denied, name: &str) -> Refusal {
    match denied {
        Denied::Unauthorized => Refusal::new(ErrorCode::Unauthorized, "wrong name or password"),
        Denied::RateLimited(wait) => Refusal::new(
            ErrorCode::RateLimited,
            format!(
                "too many attempts; try again in {} s",
                wait.as_secs().max(1)
            ),
        ),
        Denied::Unavailable => Refusal::unavailable("accounts are busy; try again in a moment"),
        Denied::Taken => Refusal::name_taken(name),
        Denied::BadInvite => Refusal::new(
            ErrorCode::Forbidden,
            "that invite is unknown, used up or expired",
        ),
        Denied::Closed(why) => Refusal::new(ErrorCode::Forbidden, *why),
        Denied::BadPassword(why) => Refusal::new(ErrorCode::BadRequest, why.clone()),
        Denied::NotMember => Refusal::not_in_room(name),
        Denied::Forbidden(why) => Refusal::new(ErrorCode::Forbidden, why.clone()),
        Denied::Invalid(why) => Refusal::new(ErrorCode::BadRequest, why.clone()),
        Denied::NoSuchUser => Refusal::new(
            ErrorCode::NoSuchUser,
            format!("nobody has the name {:?} here", name),
        ),
    }
}
