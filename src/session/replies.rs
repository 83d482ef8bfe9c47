//! Outcomes into reply frames: [`Session::apply`] is the one function every outcome, immediate
//! or late, goes through, and each reply is cut to fit the client's frame limit.

use std::borrow::Cow;
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::debug;

use super::typing::TypingTarget;
use super::{Kind, Mode, Session};
use crate::connection::{Who, note};
use crate::hub::{Outcome, Receipt, Refusal, RoomView, StoredMessage, name_order};
use crate::protocol::{self, ErrorCode, Role, RoomInfo, ServerInfo, ServerMsg, b};

impl Session {
    /// Turns an outcome into this client's reply frames, updating the session on the way. Every
    /// outcome goes through here, immediate or late.
    pub(super) fn apply(
        &mut self,
        kind: &Kind,
        reference: Option<&str>,
        outcome: Outcome,
    ) -> Vec<Utf8Bytes> {
        let json = self.mode == Mode::Json;
        let frame = match (kind, outcome) {
            (Kind::Hello, Outcome::Welcome(view)) => {
                if let (Some(hooks), Some(me)) = (&self.chat.webhooks, &self.me) {
                    hooks.joined(&view.room, me.name());
                }
                let inbox = self.pending.as_mut().and_then(|p| p.inbox.take());
                let (conversations, waiting) = match inbox {
                    Some(inbox) => *inbox,
                    None => Default::default(),
                };
                let mut frames = vec![self.welcome(view, conversations, reference)];
                // The hello is done with: a welcomed connection keeps nothing of it.
                self.pending = None;
                // What others wrote while the user was away, after the welcome.
                frames.extend(waiting.iter().map(|pm| protocol::encode(&pm_event(pm))));
                return frames;
            }
            (Kind::Hello, Outcome::Refused(r)) => {
                self.me = None;
                self.rooms.clear();
                if json {
                    error_frame(r.code, &r.message, reference)
                } else {
                    format!("{}; send another name", r.message).into()
                }
            }
            (Kind::Join { added, .. }, Outcome::Joined(view)) => {
                debug!(room = %view.room, "joined room");
                if let (true, Some(hooks), Some(me)) = (*added, &self.chat.webhooks, &self.me) {
                    hooks.joined(&view.room, me.name());
                }
                if let Some((accounts, key)) = self.account() {
                    accounts.note_join(&key, &view.room, view.seq);
                    if *added {
                        self.tell_own(ServerMsg::Membership {
                            room: view.room.to_string().into(),
                            state: "joined".into(),
                        });
                    }
                }
                self.entered(&view);
                let (users, history, more) = self.fit_view(&view);
                protocol::encode(&ServerMsg::Room {
                    room: b(&view.room),
                    users: self.users_in(&view.room, users),
                    user_count: view.user_count,
                    history: history_items(history, self.viewer()),
                    epoch: b(&view.epoch),
                    seq: view.seq,
                    resumed: view.resumed,
                    more,
                    settings: self.room_settings(&view.room),
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
                if let (Some(hooks), Some(me)) = (&self.chat.webhooks, &self.me) {
                    hooks.left(&room, me.name());
                }
                if let Some((accounts, key)) = self.account() {
                    accounts.note_leave(&key, &room);
                    self.tell_own(ServerMsg::Membership {
                        room: room.to_string().into(),
                        state: "left".into(),
                    });
                }
                ack(reference, None, Some(&room))
            }
            (Kind::Change(redo), outcome) => return self.changed(redo, reference, outcome),
            (Kind::Say(room, said), Outcome::Sent(receipt)) => {
                self.authored(receipt.id);
                if let (Some(said), Some(hooks), Some(me)) = (said, &self.chat.webhooks, &self.me) {
                    let ts = &receipt.ts;
                    let (id, seq) = (receipt.id, receipt.seq);
                    hooks.message(room, me.name(), &said.text, said.action, id, seq, ts, None);
                }
                // Saying something reads the room up to it.
                if let (Some((accounts, key)), Some(seq)) = (self.account(), receipt.seq) {
                    accounts.note_read(&key, room, seq);
                }
                if !json {
                    return Vec::new();
                }
                ack(reference, Some(&receipt), None)
            }
            (Kind::Read, Outcome::ReadState(state)) => {
                // The user's other connections show the same counts.
                self.tell_own(ServerMsg::Read {
                    room: state.room.to_string().into(),
                    with: None,
                    read: state.read,
                    unread: state.unread,
                    mentions: state.mentions,
                });
                protocol::encode(&ServerMsg::Ack {
                    reference: reference.map(b),
                    id: None,
                    seq: None,
                    ts: None,
                    room: Some(b(&state.room)),
                    name: None,
                    with: None,
                    offline: false,
                    read: Some(state.read),
                    unread: Some(state.unread),
                    mentions: Some(state.mentions),
                })
            }
            (Kind::Pm(said), Outcome::Sent(receipt)) => {
                if let (Some(said), Some(hooks), Some(me), Some(to)) =
                    (said, &self.chat.webhooks, &self.me, &receipt.to)
                {
                    let (text, action) = (&said.text, said.action);
                    hooks.pm(me.name(), to, text, action, receipt.id, &receipt.ts);
                }
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
                    users: self.users_in(&room, &page[..n]),
                    user_count: users.len(),
                    more: n < page.len(),
                    reference: reference.map(b),
                })
            }
            (Kind::Rooms, Outcome::Rooms(rooms)) => protocol::encode(&ServerMsg::Rooms {
                // A private room is listed for its members only.
                rooms: rooms
                    .iter()
                    .filter(|(name, _)| self.listed(name))
                    .map(|(name, members)| {
                        let settings = self.room_settings(name);
                        RoomInfo {
                            name: b(name),
                            members: *members,
                            private: settings.visibility.as_deref() == Some("private"),
                            topic: settings.topic,
                        }
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
                    messages: history_items(kept, self.viewer()),
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
                    messages: messages[start..].iter().map(pm_event).collect(),
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
                    messages: history_items(&messages[..n], self.viewer()),
                    more: more || n < messages.len(),
                    reference: reference.map(b),
                })
            }
            (Kind::Kick { name }, Outcome::Done) => {
                note!(info, self.log_who(), kicked = %name, "user kicked");
                ack(reference, None, None)
            }
            (Kind::Nick, Outcome::Renamed { name }) => {
                let old = self.me.as_ref().map(|m| m.name().clone());
                note!(info, self.log_who(), from = old.as_deref(), to = %name, "user renamed");
                tracing::Span::current().record("user", &*name);
                self.me = self.me.as_ref().map(|m| m.renamed(name.clone()));
                // For the webhooks the old name left every room and the new one came in.
                if let (Some(hooks), Some(old)) = (&self.chat.webhooks, &old) {
                    for room in &self.rooms {
                        hooks.left(room, old);
                        hooks.joined(room, &name);
                    }
                }
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
                    with: None,
                    offline: false,
                    read: None,
                    unread: None,
                    mentions: None,
                })
            }
            (Kind::Announce, Outcome::Done) => {
                note!(info, self.log_who(), "announcement sent");
                ack(reference, None, None)
            }
            (Kind::Kept, Outcome::Kept(pm)) => {
                self.typing.clear(&TypingTarget::User(Arc::from(&*pm.to)));
                // The sender's other connections show what it sent, as for any PM.
                self.tell_own(ServerMsg::Pm {
                    id: pm.id,
                    ts: pm.ts.clone().into(),
                    from: pm.from.clone().into(),
                    role: pm.role,
                    to: pm.to.clone().into(),
                    text: pm.text.clone().into(),
                    action: pm.action,
                    edited_ts: None,
                    deleted: false,
                });
                protocol::encode(&ServerMsg::Ack {
                    reference: reference.map(b),
                    id: Some(pm.id),
                    seq: None,
                    ts: Some(b(&pm.ts)),
                    room: None,
                    name: None,
                    with: None,
                    offline: true,
                    read: None,
                    unread: None,
                    mentions: None,
                })
            }
            (Kind::ReadPm, Outcome::PmRead(c)) => {
                self.tell_own(ServerMsg::Read {
                    room: "".into(),
                    with: Some(c.with.clone()),
                    read: c.read,
                    unread: c.unread,
                    mentions: 0,
                });
                protocol::encode(&ServerMsg::Ack {
                    reference: reference.map(b),
                    id: None,
                    seq: None,
                    ts: None,
                    room: None,
                    name: None,
                    with: Some(c.with),
                    offline: false,
                    read: Some(c.read),
                    unread: Some(c.unread),
                    mentions: None,
                })
            }
            (Kind::Expelled, _) => return Vec::new(),
            (Kind::Moderate, Outcome::Moderated(m)) => self.moderated(m, reference),
            (Kind::Sessions, Outcome::Sessions(list)) => {
                // At most `auth.max_sessions_per_user` (and a cluster's few stale), each small.
                let sessions = list
                    .iter()
                    .map(|s| protocol::SessionInfo {
                        session: b(&s.id),
                        device: s.device.as_deref().map(b),
                        since: b(&s.since),
                        current: s.current,
                    })
                    .collect();
                protocol::encode(&ServerMsg::Sessions {
                    sessions,
                    reference: reference.map(b),
                })
            }
            (Kind::Logout, Outcome::Done) => {
                note!(info, self.log_who(), "session logged out");
                ack(reference, None, None)
            }
            (_, Outcome::Refused(r)) => self.error(&r, reference),
            (kind, outcome) => {
                // A broker answered with the wrong kind of outcome: a bug, not the client's fault.
                note!(
                    error,
                    self.log_who(),
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
    pub(super) fn reply_budget(&self) -> usize {
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

    pub(super) fn welcome(
        &mut self,
        view: RoomView,
        conversations: Vec<protocol::ConversationInfo<'static>>,
        reference: Option<&str>,
    ) -> Utf8Bytes {
        self.welcomed = true;
        self.home = view.room.clone();
        // The hello's room may have been full: the welcome says where the user landed.
        self.rooms = vec![view.room.clone()];
        let (name, plain) = match &self.me {
            Some(me) => (me.name().clone(), me.plain()),
            None => (Arc::from(""), false),
        };
        tracing::Span::current().record("user", &*name);
        note!(info, Who { user: Some(&name), ..self.log_who() }, room = %view.room, plain, "user joined");
        if plain {
            let names: Vec<&str> = view.users.iter().map(|(n, _)| &**n).collect();
            let more = match view.user_count.saturating_sub(names.len()) {
                0 => String::new(),
                n => format!(" (and {n} more)"),
            };
            return format!("Welcome, {name}! {}{more}", protocol::plain::online(&names)).into();
        }
        let (users, history, more) = self.fit_view(&view);
        let rooms = self.membership_list(&view);
        self.kept = rooms.iter().map(|m| Arc::from(&*m.room)).collect();
        self.entered(&view);
        let session = match &self.me {
            Some(me) if self.chat.config.auth.mode.owned_names() => self.chat.broker.session_id(me),
            _ => String::new(),
        };
        let config = &self.chat.config;
        protocol::encode(&ServerMsg::Welcome {
            name: b(&name),
            room: b(&view.room),
            users: self.users_in(&view.room, users),
            user_count: view.user_count,
            history: history_items(history, self.viewer()),
            epoch: b(&view.epoch),
            seq: view.seq,
            resumed: view.resumed,
            more,
            rooms,
            conversations,
            settings: self.room_settings(&view.room),
            sessions: view.sessions,
            session: session.into(),
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
}

impl Session {
    /// The welcome's list of memberships (accounts mode): the hello's room first (a new
    /// membership when it was not listed, read up to where it is now), then the others.
    fn membership_list(&mut self, view: &RoomView) -> Vec<protocol::Membership<'static>> {
        let Some((accounts, key)) = self.account() else {
            return Vec::new();
        };
        accounts.note_join(&key, &view.room, view.seq);
        let mut rooms = self
            .pending
            .as_mut()
            .map(|p| std::mem::take(&mut p.memberships))
            .unwrap_or_default();
        match rooms.iter().position(|m| *m.room == *view.room) {
            Some(at) => {
                let mut home = rooms.remove(at);
                home.epoch = Cow::Owned(view.epoch.to_string());
                rooms.insert(0, home);
            }
            None => rooms.insert(
                0,
                protocol::Membership {
                    room: Cow::Owned(view.room.to_string()),
                    epoch: Cow::Owned(view.epoch.to_string()),
                    seq: view.seq,
                    read: view.seq,
                    unread: 0,
                    mentions: 0,
                },
            ),
        }
        rooms
    }
}

/// Longest error message sent: a message never echoes more than a short prefix of what it is
/// about (a 60 KB bad value does not come back as a 120 KB error).
const MAX_ERROR_MESSAGE_BYTES: usize = 200;

pub(super) fn error_frame(code: ErrorCode, message: &str, reference: Option<&str>) -> Utf8Bytes {
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
pub(super) fn ack(
    reference: Option<&str>,
    receipt: Option<&Receipt>,
    room: Option<&str>,
) -> Utf8Bytes {
    protocol::encode(&ServerMsg::Ack {
        reference: reference.map(b),
        id: receipt.map(|r| r.id),
        seq: receipt.and_then(|r| r.seq),
        ts: receipt.map(|r| b(&r.ts)),
        room: room.map(b),
        name: None,
        with: None,
        offline: false,
        read: None,
        unread: None,
        mentions: None,
    })
}

/// A stored PM as the `pm` event (in a conversation's history, or handed over after a welcome).
fn pm_event(pm: &crate::store::Pm) -> ServerMsg<'_> {
    ServerMsg::Pm {
        id: pm.id,
        ts: b(&pm.ts),
        from: b(&pm.from),
        role: pm.role,
        to: b(&pm.to),
        text: b(&pm.text),
        action: pm.action,
        edited_ts: pm.edited_ts.as_deref().map(b),
        deleted: pm.deleted,
    }
}

impl Session {
    /// Who reactions are shown to.
    fn viewer(&self) -> &str {
        self.me.as_ref().map_or("", |m| &**m.name())
    }
}

/// Messages (and changes) as the events a page lists, reactions as `viewer` sees them.
fn history_items<'m>(messages: &'m [Arc<StoredMessage>], viewer: &str) -> Vec<ServerMsg<'m>> {
    messages
        .iter()
        .map(|m| match m.change {
            None if !m.reactions.is_empty() => ServerMsg::Message(m.seen_by(viewer)),
            _ => m.event(),
        })
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
    let reactions: usize = m
        .reactions
        .iter()
        .map(|r| protocol::json_len(&r.emoji) + 40)
        .sum();
    let edited = m.edited_ts.as_deref().map_or(0, |t| t.len() + 16);
    protocol::json_len(&m.text)
        + protocol::json_len(&m.from)
        + protocol::json_len(&m.room)
        + protocol::json_len(&m.ts)
        + 150
        + reactions
        + edited
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
