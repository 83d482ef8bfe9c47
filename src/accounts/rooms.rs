//! Each account's rooms: memberships and read markers. Sessions note joins, leaves and reads
//! (`note`) into a bounded map, written in one transaction every [`WRITE_EVERY`] by the
//! accounts threads (the last change of each room counts; a marker only moves forward). What a
//! sign-in lists, and what a `read` answers, is what is stored with those changes applied, and
//! the unread count and mentions past each marker, from the store.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::warn;

use super::{Denied, RoomState, Work, with_db};
use crate::protocol;
use crate::store::accounts::{Noted, Unread};
use crate::sync::lock;

/// Membership changes that may wait to be written.
pub const MAX_NOTES: usize = 10_000;
/// How often waiting changes are written.
pub(super) const WRITE_EVERY: Duration = Duration::from_millis(500);

/// Changes not yet written, by (account key, room).
#[derive(Debug, Default)]
pub(super) struct Notes {
    changes: HashMap<(String, String), Change>,
    /// When they were last written.
    written: Option<Instant>,
}

/// What changed in one membership.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Change {
    /// Joined (the marker a new membership starts at: the room's seq then), or left.
    pub joined: Option<Joined>,
    /// Read up to here (moves only forward).
    pub read: Option<u64>,
}

/// A join or a leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Joined {
    /// Joined when the room was at this seq.
    At(u64),
    /// Left.
    Left,
}

impl Change {
    /// `self`, then `later`.
    fn then(self, later: Change) -> Change {
        Change {
            joined: later.joined.or(self.joined),
            // A leave forgets the marker; a marker moves only forward.
            read: match later.joined {
                Some(Joined::Left) => later.read,
                _ => self.read.max(later.read),
            },
        }
    }
}

/// Whether another join may be noted.
pub(super) fn has_room(work: &Work) -> bool {
    lock(&work.notes).changes.len() < MAX_NOTES
}

/// Notes a change; past [`MAX_NOTES`] a marker for a room not yet noted is dropped (a marker
/// behind costs a higher unread count, nothing more; joins are refused before they get here).
pub(super) fn note(work: &Work, key: &str, room: &str, change: Change) {
    let mut notes = lock(&work.notes);
    let id = (key.to_string(), room.to_string());
    if let Some(old) = notes.changes.get_mut(&id) {
        *old = old.then(change);
    } else if notes.changes.len() < MAX_NOTES || change.joined.is_some() {
        notes.changes.insert(id, change);
    }
}

/// Writes the changes waiting, if it is time (or `now`). On failure they wait for the next try,
/// merged under any newer ones.
pub(super) fn write_notes(work: &Work, now: bool) {
    let changes = {
        let mut notes = lock(&work.notes);
        let due = notes.written.is_none_or(|at| at.elapsed() >= WRITE_EVERY);
        if notes.changes.is_empty() || !(due || now) {
            return;
        }
        notes.written = Some(Instant::now());
        std::mem::take(&mut notes.changes)
    };
    let list: Vec<Noted> = changes
        .iter()
        .map(|((account, room), c)| Noted {
            account: account.clone(),
            room: room.clone(),
            joined: c.joined.map(|j| match j {
                Joined::At(seq) => Some(seq),
                Joined::Left => None,
            }),
            read: c.read,
        })
        .collect();
    if let Err(e) = with_db(work, |db| db.memberships(&list)) {
        warn!(error = %e, changes = list.len(), "accounts: cannot write memberships; trying again");
        let mut notes = lock(&work.notes);
        for (id, change) in changes {
            let merged = match notes.changes.get(&id) {
                Some(newer) => change.then(*newer),
                None => change,
            };
            notes.changes.insert(id, merged);
        }
    }
}

/// The rooms `key`'s account is a member of, with their markers: what is stored, with the
/// changes not yet written applied.
fn memberships(work: &Work, key: &str) -> Result<Vec<(String, u64)>, String> {
    let mut rooms = with_db(work, |db| db.rooms(key, work.max_rooms))?;
    let notes = lock(&work.notes);
    for ((k, room), change) in &notes.changes {
        if k != key {
            continue;
        }
        let at = rooms.iter().position(|(r, _)| r == room);
        match (change.joined, at) {
            (Some(Joined::Left), Some(i)) => {
                rooms.remove(i);
                continue;
            }
            (Some(Joined::At(seq)), None) => rooms.push((room.clone(), seq)),
            _ => {}
        }
        if let (Some(read), Some((_, marker))) =
            (change.read, rooms.iter_mut().find(|(r, _)| r == room))
        {
            *marker = (*marker).max(read);
        }
    }
    rooms.truncate(work.max_rooms);
    Ok(rooms)
}

/// A room's state for the account `key` (called `name`) with its marker at `read`.
fn state(work: &Work, key: &str, name: &str, room: &str, read: u64) -> Result<RoomState, String> {
    let Unread {
        epoch,
        head,
        count,
        mentioning,
    } = with_db(work, |db| db.unread(key, name, room, read))?;
    let mentions = mentioning
        .iter()
        .filter(|text| protocol::mentions_at(text, name))
        .count() as u64;
    Ok(RoomState {
        room: room.to_string(),
        read,
        unread: count,
        mentions,
        epoch,
        head,
    })
}

/// Every room of the account, with what is unread in each (a sign-in), counted once the store
/// has committed what was acknowledged before the request (the job waited for that).
pub(super) fn states(work: &Work, key: &str, name: &str) -> Result<Vec<RoomState>, String> {
    memberships(work, key)?
        .into_iter()
        .map(|(room, read)| state(work, key, name, &room, read))
        .collect()
}

/// The account `name` has read `room` up to `seq`: the marker moves forward (a lower `seq` is
/// answered with the stored marker; one past the room's head, once the store has had time to
/// commit what was said, is cut to it), and the room's state is the answer.
pub(super) fn read(work: &Work, name: &str, room: &str, seq: u64) -> Result<RoomState, Denied> {
    let key = protocol::name_key(name);
    let unavailable = |e: String| {
        warn!(error = %e, "accounts: cannot read the read state");
        Denied::Unavailable
    };
    let rooms = memberships(work, &key).map_err(unavailable)?;
    let Some((_, marker)) = rooms.iter().find(|(r, _)| r == room) else {
        return Err(Denied::NotMember);
    };
    let marker = *marker;
    let read = marker.max(seq);
    let mut state = state(work, &key, name, room, read).map_err(unavailable)?;
    if read > state.head && read > marker {
        // The job waited (without holding this thread) until what was acknowledged before it
        // was committed: past the room's last stored message, the marker stops there.
        let cut = state.head.max(marker);
        state = self::state(work, &key, name, room, cut).map_err(unavailable)?;
    }
    if state.read > marker {
        let change = Change {
            joined: None,
            read: Some(state.read),
        };
        note(work, &key, room, change);
    }
    Ok(state)
}
