//! Replies and changes to messages (edit, delete, react), the session's side: what it checks
//! without the broker (the text, the emoji, muting, how often one message is edited), what it
//! tells the broker about the asker (a room op? in open mode, the one who sent it?), and the
//! second ask when the broker first had to read the message from the store (`Outcome::Target`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::requests::{Done, check_text};
use super::{Kind, Session};
use crate::accounts::policy::Standing;
use crate::connection::note;
use crate::hub::changes::{ChangeAsk, Target};
use crate::hub::{Answer, Outcome, Refusal, Reply};
use crate::protocol::{self, Change, ErrorCode, Role, Where};

/// Message ids a connection remembers sending (open mode: what it may edit and delete).
const REMEMBERED: usize = 256;
/// Messages whose edits a connection counts at once.
const COUNTED: usize = 16;

/// A request that names a message, kept until its answer (asked again with the message if the
/// broker had to read it first).
#[derive(Debug)]
pub(super) enum Redo {
    Say {
        room: Arc<str>,
        text: String,
        action: bool,
        reply_to: u64,
    },
    Change {
        room: Arc<str>,
        ask: ChangeAsk,
    },
    PmChange {
        with: Arc<str>,
        ask: ChangeAsk,
    },
}

/// What a connection wrote and edited, made when it first says something.
#[derive(Debug, Default)]
pub(super) struct Authored {
    /// Ids of messages it sent, newest last.
    sent: VecDeque<u64>,
    /// Edits per message in the current minute: (message, minute began, edits).
    edits: Vec<(u64, Instant, u32)>,
}

impl Session {
    /// Notes that this connection sent message `id` (open mode: it may change it).
    pub(super) fn authored(&mut self, id: u64) {
        if self.chat.config.auth.mode.owned_names() {
            return;
        }
        let a = self.authored.get_or_insert_with(Box::default);
        if a.sent.len() == REMEMBERED {
            a.sent.pop_front();
        }
        a.sent.push_back(id);
    }

    /// A `say` answering message `reply_to`.
    pub(super) fn say_reply(
        &mut self,
        room: Arc<str>,
        text: &str,
        action: bool,
        reply_to: u64,
        id: &mut Option<String>,
        out: &mut Vec<Utf8Bytes>,
    ) -> Done {
        let redo = Redo::Say {
            room,
            text: text.to_string(),
            action,
            reply_to,
        };
        self.ask(redo, None, id.take(), None, out);
        Ok(())
    }

    /// `edit`, `delete` or `react` in a room, or `edit` and `delete` of a PM.
    pub(super) fn change_at(
        &mut self,
        at: Where,
        change: Change<'static>,
        text: String,
        id: &mut Option<String>,
        out: &mut Vec<Utf8Bytes>,
    ) -> Done {
        let (room, with): (Option<Arc<str>>, Option<Arc<str>>) = match at {
            Where::Room(room) => (Some(self.my_room(Some(&room))?), None),
            Where::With(with) => (None, Some(super::requests::valid_user(&with)?.into())),
        };
        let chat = self.chat.clone();
        let limits = &chat.config.limits;
        match &change {
            Change::Edit { msg } => {
                check_text(&text, limits.max_message_bytes)?;
                if let Some(room) = &room {
                    self.may_speak(room)?;
                }
                self.count_edit(*msg)?;
            }
            Change::React { emoji, .. } => {
                protocol::valid_emoji(emoji)
                    .map_err(|why| Refusal::new(ErrorCode::BadRequest, why))?;
                if let Some(room) = &room {
                    self.may_speak(room)?;
                }
            }
            Change::Delete { .. } => {}
        }
        // A PM is its sender's alone (and kept only where names are owned).
        let mine = match &self.authored {
            _ if chat.config.auth.mode.owned_names() || room.is_none() => None,
            Some(a) => Some(a.sent.contains(&change.target())),
            None => Some(false),
        };
        let moderator = room.as_ref().is_some_and(|r| self.moderator(r));
        let ask = ChangeAsk {
            change,
            text,
            moderator,
            edit_window_ms: limits.edit_window_secs.saturating_mul(1000),
            mine,
        };
        let redo = match (room, with) {
            (Some(room), _) => Redo::Change { room, ask },
            (None, with) => Redo::PmChange {
                with: with.unwrap_or_default(),
                ask,
            },
        };
        self.ask(redo, None, id.take(), None, out);
        Ok(())
    }

    /// Whether the user may delete anyone's message in `room`: an admin, or its owner or an op.
    fn moderator(&self, room: &str) -> bool {
        let Some(me) = &self.me else { return false };
        if me.role() == Role::Admin {
            return true;
        }
        self.policies()
            .is_some_and(|p| p.standing(room, &protocol::name_key(me.name())) >= Standing::Op)
    }

    /// Counts an edit of `msg`: refused past `limits.edits_per_minute` in a minute.
    fn count_edit(&mut self, msg: u64) -> Done {
        let most = self.chat.config.limits.edits_per_minute;
        let a = self.authored.get_or_insert_with(Box::default);
        let now = Instant::now();
        a.edits
            .retain(|(_, began, _)| now.duration_since(*began) < Duration::from_secs(60));
        let full = a.edits.len() >= COUNTED;
        match a.edits.iter_mut().find(|(m, ..)| *m == msg) {
            Some((_, _, n)) if most > 0 && *n >= most => Err(Refusal::new(
                ErrorCode::RateLimited,
                format!("message {msg} was edited {most} times this minute; wait a little"),
            )),
            Some((_, _, n)) => {
                *n += 1;
                Ok(())
            }
            None if full => Err(Refusal::new(
                ErrorCode::RateLimited,
                "too many messages edited this minute; wait a little",
            )),
            None => {
                a.edits.push((msg, now, 1));
                Ok(())
            }
        }
    }

    /// Asks the broker for `redo` (with the message it names, once read). `at`: its place
    /// among the replies when it already has one.
    pub(super) fn ask(
        &mut self,
        redo: Redo,
        known: Option<Target>,
        reference: Option<String>,
        at: Option<usize>,
        out: &mut Vec<Utf8Bytes>,
    ) {
        let ticket = self.next_ticket;
        let Some(me) = self.me.clone() else { return };
        self.next_ticket += 1;
        let broker = self.chat.broker.clone();
        let asked_with = known.is_some();
        let answer = match &redo {
            Redo::Say {
                room,
                text,
                action,
                reply_to,
            } => {
                let reply = Reply {
                    to: *reply_to,
                    found: known.is_some(),
                };
                broker.say(ticket, &me, room, text, *action, Some(reply))
            }
            Redo::Change { room, ask } => broker.change(ticket, &me, room, ask, known),
            Redo::PmChange { with, ask } => broker.change_pm(ticket, &me, with, ask, known),
        };
        let kind = Kind::Change(Box::new(redo));
        match (answer, at) {
            (Answer::Now(Outcome::Target(_)), _) if asked_with => {
                // Asked with the message and still not found: it is gone.
                let r = crate::hub::changes::not_found(0);
                let frames = vec![self.error(&r, reference.as_deref())];
                match at {
                    Some(at) => self.slots.fill(
                        super::slots::Answered {
                            at,
                            kind,
                            reference,
                        },
                        frames,
                    ),
                    None => self.emit(frames, out),
                }
            }
            (Answer::Now(Outcome::Target(target)), _) => {
                let Kind::Change(redo) = kind else { return };
                self.ask(*redo, Some(target), reference, at, out);
            }
            (Answer::Now(outcome), None) => {
                let frames = self.apply(&kind, reference.as_deref(), outcome);
                self.emit(frames, out);
            }
            (Answer::Now(outcome), Some(at)) => {
                let frames = self.apply(&kind, reference.as_deref(), outcome);
                self.slots.fill(
                    super::slots::Answered {
                        at,
                        kind,
                        reference,
                    },
                    frames,
                );
            }
            (Answer::Later, None) => self.slots.wait(ticket, kind, reference, self.request_bytes),
            (Answer::Later, Some(at)) => self.slots.rewait(at, ticket, kind, reference),
        }
    }

    /// The broker read the message a request names from the store: ask again with it.
    pub(super) fn retarget(
        &mut self,
        kind: Kind,
        target: Target,
        reference: Option<String>,
        at: usize,
        out: &mut Vec<Utf8Bytes>,
    ) {
        if let Kind::Change(redo) = kind {
            self.ask(*redo, Some(target), reference, Some(at), out);
        }
    }

    /// The reply to a reply or a change.
    pub(super) fn changed(
        &mut self,
        redo: &Redo,
        reference: Option<&str>,
        outcome: Outcome,
    ) -> Vec<Utf8Bytes> {
        match outcome {
            Outcome::Sent(receipt) => {
                if let Redo::Say {
                    room,
                    text,
                    action,
                    reply_to,
                } = redo
                {
                    self.authored(receipt.id);
                    if let (Some(hooks), Some(me)) = (&self.chat.webhooks, &self.me) {
                        let (id, seq, ts) = (receipt.id, receipt.seq, &receipt.ts);
                        let to = Some(*reply_to);
                        hooks.message(room, me.name(), text, *action, id, seq, ts, to);
                    }
                    if let (Some((accounts, key)), Some(seq)) = (self.account(), receipt.seq) {
                        accounts.note_read(&key, room, seq);
                    }
                }
                if self.mode != super::Mode::Json {
                    return Vec::new();
                }
                vec![super::replies::ack(reference, Some(&receipt), None)]
            }
            Outcome::Refused(r) => vec![self.error(&r, reference)],
            other => {
                note!(
                    warn,
                    self.log_who(),
                    ?other,
                    "unexpected outcome for a change"
                );
                Vec::new()
            }
        }
    }
}
