//! Changes to messages: edits, deletes and reactions. Who may make one, and what it does to the
//! message it changes. Both brokers number a change in the room's order like a message, keep it
//! beside them, and put the changed message where the original was (in memory, in Redis, in the
//! store), so history, resume and gap fill give every client the same state; they share these
//! rules, so the same checks and the same words.

use std::borrow::Cow;
use std::sync::Arc;

use super::{Member, Refusal, StoredMessage};
use crate::protocol::{self, Change, ChatMessage, ErrorCode, Reacted, ServerMsg};

/// Distinct emoji one message may carry.
pub const MAX_EMOJI_PER_MESSAGE: usize = 20;

/// What a change asks for: the change, an edit's new text, and what the asker may do.
#[derive(Debug, Clone)]
pub struct ChangeAsk {
    /// The change.
    pub change: Change<'static>,
    /// An edit's new text (empty otherwise).
    pub text: String,
    /// The asker may delete anyone's message here (a room op or owner, or an admin).
    pub moderator: bool,
    /// How long after sending a message may be edited (ms; 0: forever).
    pub edit_window_ms: u64,
    /// Open mode: whether this connection sent the message (a name there is only one's own
    /// while one holds it). `None`: names are owned, so the author is whoever has the name.
    pub mine: Option<bool>,
}

/// A message a change names, read from the store when memory no longer holds it: the broker is
/// asked again with it (`Outcome::Target`).
pub type Target = Arc<StoredMessage>;

/// Whether `me` may make `ask` to `target` at `now_ms`.
pub fn check(
    target: &StoredMessage,
    ask: &ChangeAsk,
    me: &Member,
    now_ms: i64,
) -> Result<(), Refusal> {
    let id = target.id;
    if !is_live(target) {
        return Err(not_found(id));
    }
    let author = match ask.mine {
        Some(mine) => mine,
        None => protocol::name_key(&target.from) == protocol::name_key(me.name()),
    };
    match &ask.change {
        Change::Edit { .. } => {
            if !author {
                return Err(forbidden("you can only edit your own messages"));
            }
            let sent = protocol::timestamp_ms(&target.ts).unwrap_or(now_ms);
            let window = ask.edit_window_ms;
            if window > 0 && now_ms.saturating_sub(sent) > window as i64 {
                return Err(forbidden(format!(
                    "too late to edit message {id}: messages can be edited for {}",
                    span(window)
                )));
            }
        }
        Change::Delete { .. } if !author && !ask.moderator => {
            return Err(forbidden(
                "you can only delete your own messages (ops delete anyone's)",
            ));
        }
        Change::Delete { .. } | Change::React { .. } => {}
    }
    Ok(())
}

/// `target` as `change` leaves it, or `None` when it changes nothing (a reaction one already
/// made, or took back). Refused past the emoji a message may carry.
pub fn apply(
    target: &StoredMessage,
    change: &StoredMessage,
) -> Result<Option<StoredMessage>, Refusal> {
    let mut after = target.clone();
    match change.change.as_deref() {
        Some(Change::Edit { .. }) => {
            if after.text == change.text {
                return Ok(None);
            }
            after.text = change.text.clone();
            after.edited_ts = Some(change.ts.clone());
        }
        Some(Change::Delete { .. }) => {
            after.text = Cow::Borrowed("");
            after.deleted = true;
            after.reactions.clear();
        }
        Some(Change::React { emoji, on, .. }) => {
            if !react(&mut after.reactions, emoji, &change.from, *on)? {
                return Ok(None);
            }
        }
        None => return Ok(None),
    }
    Ok(Some(after))
}

/// Adds or takes back `user`'s `emoji`; whether anything changed.
pub fn react(
    reactions: &mut Vec<Reacted<'static>>,
    emoji: &str,
    user: &str,
    on: bool,
) -> Result<bool, Refusal> {
    let key = protocol::name_key(user);
    let same = |u: &Cow<str>| protocol::name_key(u) == key;
    let at = reactions.iter().position(|r| r.emoji == emoji);
    match (at, on) {
        (Some(i), true) => {
            let r = &mut reactions[i];
            if r.users.iter().any(same) {
                return Ok(false);
            }
            r.users.push(Cow::Owned(user.to_string()));
            r.count = r.users.len() as u32;
        }
        (None, true) => {
            if reactions.len() >= MAX_EMOJI_PER_MESSAGE {
                return Err(Refusal::new(
                    ErrorCode::BadRequest,
                    format!("a message carries at most {MAX_EMOJI_PER_MESSAGE} different emoji"),
                ));
            }
            reactions.push(Reacted {
                emoji: Cow::Owned(emoji.to_string()),
                count: 1,
                me: false,
                users: vec![Cow::Owned(user.to_string())],
            });
        }
        (Some(i), false) => {
            let r = &mut reactions[i];
            let before = r.users.len();
            r.users.retain(|u| !same(u));
            if r.users.len() == before {
                return Ok(false);
            }
            r.count = r.users.len() as u32;
            if r.users.is_empty() {
                reactions.remove(i);
            }
        }
        (None, false) => return Ok(false),
    }
    Ok(true)
}

/// The change `me` makes, numbered `id`, `seq` in `room` at `ts`.
pub fn numbered(
    ask: &ChangeAsk,
    me: &Member,
    room: &str,
    id: u64,
    seq: u64,
    ts: &str,
) -> StoredMessage {
    ChatMessage {
        id,
        seq,
        ts: Cow::Owned(ts.to_string()),
        room: Cow::Owned(room.to_string()),
        from: Cow::Owned(me.name().to_string()),
        role: me.role(),
        text: Cow::Owned(ask.text.clone()),
        change: Some(Box::new(ask.change.clone())),
        ..ChatMessage::default()
    }
}

/// An edit that a delete made moot keeps no text (the text the delete took away, or older).
pub fn blank_edit_of(entry: &StoredMessage, deleted: u64) -> Option<StoredMessage> {
    match entry.change.as_deref() {
        Some(Change::Edit { msg }) if *msg == deleted && !entry.text.is_empty() => {
            let mut blank = entry.clone();
            blank.text = Cow::Borrowed("");
            Some(blank)
        }
        _ => None,
    }
}

/// A stored PM as a change sees it (the room left empty).
pub fn pm_target(pm: &crate::store::Pm) -> StoredMessage {
    ChatMessage {
        id: pm.id,
        ts: Cow::Owned(pm.ts.clone()),
        from: Cow::Owned(pm.from.clone()),
        role: pm.role,
        text: Cow::Owned(pm.text.clone()),
        action: pm.action,
        edited_ts: pm.edited_ts.clone().map(Cow::Owned),
        deleted: pm.deleted,
        ..ChatMessage::default()
    }
}

/// What `me`'s change `ask` to their PM `target` (`with` someone; checked) makes at `ts`: the
/// row to store, the event for the other one, and the event for `me`'s other connections.
pub fn pm_change(
    target: &StoredMessage,
    ask: &ChangeAsk,
    me: &Member,
    with: &str,
    ts: &str,
) -> (crate::store::Pm, ServerMsg<'static>, ServerMsg<'static>) {
    let delete = matches!(ask.change, Change::Delete { .. });
    let row = crate::store::Pm {
        id: target.id,
        ts: target.ts.to_string(),
        from: me.name().to_string(),
        role: target.role,
        text: if delete {
            String::new()
        } else {
            ask.text.clone()
        },
        action: target.action,
        edited_ts: if delete {
            target.edited_ts.as_deref().map(str::to_string)
        } else {
            Some(ts.to_string())
        },
        deleted: delete,
        ..crate::store::Pm::default()
    };
    let event = |other: &str| {
        let (with, by, ts) = (
            Some(Cow::Owned(other.to_string())),
            Cow::Owned(me.name().to_string()),
            Cow::Owned(ts.to_string()),
        );
        let room = Cow::Borrowed("");
        if delete {
            ServerMsg::Deleted {
                room,
                with,
                seq: 0,
                id: 0,
                msg: target.id,
                by,
                ts,
            }
        } else {
            ServerMsg::Edited {
                room,
                with,
                seq: 0,
                id: 0,
                msg: target.id,
                text: Cow::Owned(ask.text.clone()),
                by,
                ts,
            }
        }
    };
    (row, event(me.name()), event(with))
}

/// Where PMs are not kept, none can be changed.
pub fn pms_not_kept() -> Refusal {
    Refusal::new(
        ErrorCode::NotFound,
        "private messages are not kept on this server, so they cannot be changed",
    )
}

/// Whether `m` is a message one may change or answer: not a change itself, nor deleted.
pub fn is_live(m: &StoredMessage) -> bool {
    m.change.is_none() && !m.deleted
}

/// The answer to a change with no seq of its own: a PM's, or one that changed nothing.
pub fn acknowledged(id: u64, ts: &str) -> super::Outcome {
    super::Outcome::Sent(super::Receipt {
        id,
        seq: None,
        ts: ts.into(),
        to: None,
    })
}

/// No message `id` one may change or answer here.
pub fn not_found(id: u64) -> Refusal {
    Refusal::new(
        ErrorCode::NotFound,
        format!("there is no message {id} here"),
    )
}

fn forbidden(why: impl Into<String>) -> Refusal {
    Refusal::new(ErrorCode::Forbidden, why)
}

fn span(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        86_400 => "a day".into(),
        3600 => "an hour".into(),
        s if s % 86_400 == 0 => format!("{} days", s / 86_400),
        s if s % 3600 == 0 => format!("{} hours", s / 3600),
        s if s % 60 == 0 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}
