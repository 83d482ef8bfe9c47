//! A room message ([`ChatMessage`]) as it travels and is kept: its current state (edited,
//! deleted, reactions) and the changes to messages, numbered among them ([`Change`]).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::{Role, ServerMsg, b, is_false};

/// A room message, live or from history. A change to a message (an edit, a delete, a reaction)
/// is numbered in the room's order like a message and kept beside them: `change` says which
/// (it travels as its own event type, [`ChatMessage::event`]), and the fields after `action` are
/// a message's current state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage<'a> {
    /// Server-wide message number.
    pub id: u64,
    /// Per-room sequence number.
    pub seq: u64,
    /// When the server accepted it (RFC 3339 UTC, milliseconds).
    pub ts: Cow<'a, str>,
    /// The room.
    pub room: Cow<'a, str>,
    /// The sender.
    pub from: Cow<'a, str>,
    /// The sender's role.
    #[serde(default)]
    pub role: Role,
    /// The text (empty once deleted).
    pub text: Cow<'a, str>,
    /// A `/me` emote.
    #[serde(default, skip_serializing_if = "is_false")]
    pub action: bool,
    /// The message (id) this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    /// When it was last edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_ts: Option<Cow<'a, str>>,
    /// Deleted: a tombstone (id, seq, author, time), without its text.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
    /// Reactions, one entry per emoji.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<Reacted<'a>>,
    /// Not a message but a change to one.
    #[serde(skip)]
    pub change: Option<Box<Change<'a>>>,
}

/// One emoji's reactions to a message: who reacted (kept), how many and whether the one it is
/// shown to is among them (what the wire carries).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reacted<'a> {
    /// The emoji.
    pub emoji: Cow<'a, str>,
    /// How many reacted with it.
    #[serde(default)]
    pub count: u32,
    /// The one it is shown to is among them.
    #[serde(default)]
    pub me: bool,
    /// Who reacted, in order (never sent: `count` and `me` are).
    #[serde(skip)]
    pub users: Vec<Cow<'a, str>>,
}

/// A change to message `msg` of the same room.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)] // the variants say what they mean; `msg` is the message changed
pub enum Change<'a> {
    /// Its text became this change's `text`.
    Edit { msg: u64 },
    /// It was deleted.
    Delete { msg: u64 },
    /// `from` reacted with `emoji` (`on`), or took the reaction back.
    React {
        msg: u64,
        emoji: Cow<'a, str>,
        on: bool,
    },
}

impl Change<'_> {
    /// The message it changes.
    pub fn target(&self) -> u64 {
        match self {
            Change::Edit { msg } | Change::Delete { msg } | Change::React { msg, .. } => *msg,
        }
    }

    /// Its name in the store (`edit`, `delete`, `react`).
    pub fn kind(&self) -> &'static str {
        match self {
            Change::Edit { .. } => "edit",
            Change::Delete { .. } => "delete",
            Change::React { .. } => "react",
        }
    }

    fn into_owned(self) -> Change<'static> {
        match self {
            Change::Edit { msg } => Change::Edit { msg },
            Change::Delete { msg } => Change::Delete { msg },
            Change::React { msg, emoji, on } => Change::React {
                msg,
                emoji: Cow::Owned(emoji.into_owned()),
                on,
            },
        }
    }
}

impl<'a> Reacted<'a> {
    fn borrowed(&self) -> Reacted<'_> {
        Reacted {
            emoji: Cow::Borrowed(&self.emoji),
            count: self.count,
            me: self.me,
            users: self.users.iter().map(|u| Cow::Borrowed(&**u)).collect(),
        }
    }

    fn into_owned(self) -> Reacted<'static> {
        Reacted {
            emoji: Cow::Owned(self.emoji.into_owned()),
            count: self.count,
            me: self.me,
            users: self
                .users
                .into_iter()
                .map(|u| Cow::Owned(u.into_owned()))
                .collect(),
        }
    }
}

impl<'a> ChatMessage<'a> {
    /// The same message borrowing from this one (no copies), e.g. to list stored messages.
    pub fn borrowed(&self) -> ChatMessage<'_> {
        ChatMessage {
            id: self.id,
            seq: self.seq,
            ts: Cow::Borrowed(&self.ts),
            room: Cow::Borrowed(&self.room),
            from: Cow::Borrowed(&self.from),
            role: self.role,
            text: Cow::Borrowed(&self.text),
            action: self.action,
            reply_to: self.reply_to,
            edited_ts: self.edited_ts.as_deref().map(Cow::Borrowed),
            deleted: self.deleted,
            reactions: self.reactions.iter().map(Reacted::borrowed).collect(),
            change: self.change.as_ref().map(|c| {
                Box::new(match &**c {
                    Change::Edit { msg } => Change::Edit { msg: *msg },
                    Change::Delete { msg } => Change::Delete { msg: *msg },
                    Change::React { msg, emoji, on } => Change::React {
                        msg: *msg,
                        emoji: Cow::Borrowed(emoji),
                        on: *on,
                    },
                })
            }),
        }
    }

    /// An owned copy, to keep.
    pub fn into_owned(self) -> ChatMessage<'static> {
        ChatMessage {
            id: self.id,
            seq: self.seq,
            ts: Cow::Owned(self.ts.into_owned()),
            room: Cow::Owned(self.room.into_owned()),
            from: Cow::Owned(self.from.into_owned()),
            role: self.role,
            text: Cow::Owned(self.text.into_owned()),
            action: self.action,
            reply_to: self.reply_to,
            edited_ts: self.edited_ts.map(|t| Cow::Owned(t.into_owned())),
            deleted: self.deleted,
            reactions: self
                .reactions
                .into_iter()
                .map(Reacted::into_owned)
                .collect(),
            change: self.change.map(|c| Box::new(c.into_owned())),
        }
    }

    /// How it travels: a `message`, or the change it is (`edited`, `deleted`, `reaction`).
    pub fn event(&self) -> ServerMsg<'_> {
        let Some(change) = &self.change else {
            return ServerMsg::Message(self.borrowed());
        };
        let (room, ts, by) = (b(&self.room), b(&self.ts), b(&self.from));
        let (id, seq) = (self.id, self.seq);
        match &**change {
            Change::Edit { msg } => ServerMsg::Edited {
                room,
                with: None,
                seq,
                id,
                msg: *msg,
                text: b(&self.text),
                by,
                ts,
            },
            Change::Delete { msg } => ServerMsg::Deleted {
                room,
                with: None,
                seq,
                id,
                msg: *msg,
                by,
                ts,
            },
            Change::React { msg, emoji, on } => ServerMsg::Reaction {
                room,
                seq,
                id,
                msg: *msg,
                emoji: b(emoji),
                from: by,
                on: *on,
                ts,
            },
        }
    }

    /// The message (or change) an event carries, if it carries one.
    pub fn from_event(event: ServerMsg<'a>) -> Option<ChatMessage<'a>> {
        let change = |room, seq, id, ts, from, text, change| ChatMessage {
            id,
            seq,
            ts,
            room,
            from,
            text,
            change: Some(Box::new(change)),
            ..ChatMessage::default()
        };
        Some(match event {
            ServerMsg::Message(m) => m,
            ServerMsg::Edited {
                room,
                seq,
                id,
                msg,
                text,
                by,
                ts,
                ..
            } => change(room, seq, id, ts, by, text, Change::Edit { msg }),
            ServerMsg::Deleted {
                room,
                seq,
                id,
                msg,
                by,
                ts,
                ..
            } => change(room, seq, id, ts, by, b(""), Change::Delete { msg }),
            ServerMsg::Reaction {
                room,
                seq,
                id,
                msg,
                emoji,
                from,
                on,
                ts,
            } => change(
                room,
                seq,
                id,
                ts,
                from,
                b(""),
                Change::React { msg, emoji, on },
            ),
            _ => return None,
        })
    }

    /// Numbers it (the cluster's say script gives a message its id and seq).
    pub fn numbered(&mut self, id: u64, seq: u64) {
        self.id = id;
        self.seq = seq;
    }

    /// As `viewer` sees it: whether they are among each emoji's reactors (kept as names or as
    /// their keys).
    pub fn seen_by(&self, viewer: &str) -> ChatMessage<'_> {
        let key = super::name_key(viewer);
        let mut m = self.borrowed();
        for r in &mut m.reactions {
            r.me = r.users.iter().any(|u| super::name_key(u) == key);
        }
        m
    }
}
