//! Private conversations of an account: what a sign-in lists of them (`conversations`, and the
//! messages others left while the account was away), their read markers, and keeping a PM for
//! an account with no live connection. Read and written through the store's `AccountsDb`, on
//! the accounts threads.

use tracing::warn;

use super::{Denied, Work, with_db};
use crate::protocol;
use crate::store::Pm;
use crate::store::accounts::Conversation;

/// The most conversations a sign-in lists (the most recent).
pub const MAX_CONVERSATIONS: usize = 50;
/// The most unread PMs a sign-in hands over (the newest), and their most bytes of text.
pub const MAX_WAITING: usize = 100;
const MAX_WAITING_BYTES: usize = 32 * 1024;

/// `key`'s most recent conversations, and the newest of what others wrote in them past the
/// markers (oldest first), bounded in count and bytes; the rest is paged with `history`.
pub(super) fn waiting(work: &Work, key: &str) -> Result<(Vec<Conversation>, Vec<Pm>), String> {
    let conversations = with_db(work, |db| db.conversations(key, MAX_CONVERSATIONS))?;
    let (mut pms, mut bytes) = (Vec::new(), 0);
    for c in conversations.iter().filter(|c| c.unread > 0) {
        let room = MAX_WAITING.saturating_sub(pms.len());
        if room == 0 || bytes >= MAX_WAITING_BYTES {
            break;
        }
        let with = protocol::name_key(&c.with);
        let mut these = with_db(work, |db| db.unread_pms(key, &with, c.read, room))?;
        // The newest first when the budget runs out.
        let mut kept = Vec::new();
        while let Some(pm) = these.pop() {
            bytes += pm.text.len() + 64;
            if bytes > MAX_WAITING_BYTES {
                break;
            }
            kept.push(pm);
        }
        kept.reverse();
        pms.extend(kept);
    }
    pms.sort_by_key(|pm| pm.id);
    Ok((conversations, pms))
}

/// A PM for someone with no live connection: kept if they have an account (with its name as
/// they spell it), refused as `no_such_user` otherwise.
pub(super) fn keep(work: &Work, mut pm: Pm) -> Result<Pm, Denied> {
    let key = protocol::name_key(&pm.to);
    let found = with_db(work, |db| db.find(&key)).map_err(|e| {
        warn!(error = %e, "accounts: cannot read the account");
        Denied::Unavailable
    })?;
    match found {
        Some(account) if !account.disabled => {
            pm.to = account.name;
            let store = work.store.as_ref().ok_or(Denied::Unavailable)?;
            store.append_pm(pm.clone()).map_err(|why| {
                warn!(reason = why.reason(), "accounts: cannot keep a PM");
                Denied::Unavailable
            })?;
            Ok(pm)
        }
        _ => Err(Denied::NoSuchUser),
    }
}

/// The account `name` has read its conversation with `with` up to message `msg`: the marker
/// moves forward (cut to the conversation's last message), and the conversation is the answer.
pub(super) fn read(work: &Work, name: &str, with: &str, msg: u64) -> Result<Conversation, Denied> {
    let (key, other) = (protocol::name_key(name), protocol::name_key(with));
    let unavailable = |e: String| {
        warn!(error = %e, "accounts: cannot read a conversation");
        Denied::Unavailable
    };
    let Some(now) = with_db(work, |db| db.conversation(&key, &other)).map_err(unavailable)? else {
        return Err(Denied::NoSuchUser);
    };
    let to = msg.min(now.last);
    if to <= now.read {
        return Ok(now);
    }
    with_db(work, |db| {
        db.read_pm(&key, &other, to)?;
        db.conversation(&key, &other)
    })
    .map_err(unavailable)?
    .ok_or(Denied::Unavailable)
}
