//! How both databases' rows map to messages: roles by name, and changes to messages. A change
//! is a row of `messages` with `kind`,
//! `target` (and a reaction's `emoji` and `added`); the message it changes is kept in its current
//! state (`edited_ts`, `deleted` with its text gone), and who reacted with what in `reactions`.
//! A delete takes the text out of the search index in the same commit, an edit puts the new
//! text there; changes themselves are never indexed.

use std::borrow::Cow;
use std::collections::HashMap;

use super::Message;
use crate::protocol::{Change, Reacted, Role};

/// A role as the databases name it.
pub(super) fn role_name(role: Role) -> &'static str {
    match role {
        Role::User => "user",
        Role::Admin => "admin",
    }
}

/// A role from its name in a database.
pub(super) fn role_of(name: &str) -> Role {
    if name == "admin" {
        Role::Admin
    } else {
        Role::User
    }
}

/// A change's columns: kind, target, emoji, added.
pub(super) type ChangeColumns<'a> = (Option<&'a str>, Option<i64>, Option<&'a str>, Option<bool>);

/// What the change columns of `m` hold.
pub(super) fn columns(m: &Message) -> ChangeColumns<'_> {
    match m.change.as_deref() {
        None => (None, None, None, None),
        Some(c @ (Change::Edit { msg } | Change::Delete { msg })) => {
            (Some(c.kind()), Some(*msg as i64), None, None)
        }
        Some(c @ Change::React { msg, emoji, on }) => {
            (Some(c.kind()), Some(*msg as i64), Some(emoji), Some(*on))
        }
    }
}

/// The change the columns describe, if the row is one.
pub(super) fn change_of(
    kind: Option<&str>,
    target: Option<i64>,
    emoji: Option<String>,
    added: Option<bool>,
) -> Option<Box<Change<'static>>> {
    let msg = target? as u64;
    Some(Box::new(match kind? {
        "edit" => Change::Edit { msg },
        "delete" => Change::Delete { msg },
        "react" => Change::React {
            msg,
            emoji: Cow::Owned(emoji.unwrap_or_default()),
            on: added.unwrap_or(true),
        },
        _ => return None,
    }))
}

/// Puts reactions (`(msg, emoji, name)`, in the order they were made) on the messages of `rows`
/// they belong to.
pub(super) fn attach(rows: &mut [Message], reactions: impl Iterator<Item = (u64, String, String)>) {
    let at: HashMap<u64, usize> = rows.iter().enumerate().map(|(i, m)| (m.id, i)).collect();
    for (msg, emoji, name) in reactions {
        let Some(&i) = at.get(&msg) else { continue };
        let list = &mut rows[i].reactions;
        match list.iter_mut().find(|r| r.emoji == emoji) {
            Some(r) => r.users.push(Cow::Owned(name)),
            None => list.push(Reacted {
                emoji: Cow::Owned(emoji),
                users: vec![Cow::Owned(name)],
                ..Reacted::default()
            }),
        }
    }
    for m in rows.iter_mut() {
        for r in &mut m.reactions {
            r.count = r.users.len() as u32;
        }
    }
}

/// The seq range `rows` span, to read their reactions by (`None`: no messages that could have
/// any).
pub(super) fn id_span(rows: &[Message]) -> Option<(i64, i64)> {
    let mut ids = rows
        .iter()
        .filter(|m| m.change.is_none() && !m.deleted)
        .map(|m| m.id as i64);
    let first = ids.next()?;
    Some(ids.fold((first, first), |(lo, hi), id| (lo.min(id), hi.max(id))))
}
