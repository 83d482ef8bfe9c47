//! Rooms that belong to someone, carried out on the accounts threads: who may change what
//! (checked against the policies in memory), the change and its audit entry written in one
//! transaction, the room reloaded, and what the reload changed handed to the chat
//! ([`Effect`]: expel, banish, tell the room). Every node reloads what changed from the store's
//! change log within a second ([`poll`]), so a ban on one node holds on all.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::policy::{Effect, MAX_INVITES, MAX_ROLES, MAX_SANCTIONS, Standing, is_range};
use super::{Denied, Work, now_ms, with_db};
use crate::protocol;
use crate::store::policy::{Audit, Change, Kind, RoomRole, SERVER, Sanction, Settings};

/// How often a node looks for changes other nodes made.
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// Longest topic.
pub const MAX_TOPIC_BYTES: usize = 300;
/// Longest reason (a longer one is cut).
pub const MAX_REASON_BYTES: usize = 200;
/// Audit entries one request lists.
pub const AUDIT_PAGE: usize = 100;

/// Who asks.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The account's name, as it spells it.
    pub name: String,
    /// A server admin.
    pub admin: bool,
}

impl Actor {
    fn key(&self) -> String {
        protocol::name_key(&self.name)
    }
}

/// What a ban or an unban is aimed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An account, by name.
    Name(String),
    /// An address range (admins only), as `addr::Cidr` reads it.
    Range(String),
}

/// One moderation request (or a room's first account claiming it). `room` is a room's name,
/// or for bans [`SERVER`] (`*`).
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub enum Action {
    /// The first account in a new room owns it.
    Claim { room: String },
    /// An invite used: the account joined on it.
    UseInvite { room: String },
    /// New settings (what is `None` stays).
    Set {
        room: String,
        topic: Option<String>,
        private: Option<bool>,
        invite_only: Option<bool>,
        moderated: Option<bool>,
    },
    /// An account's standing: op, voice or member.
    Role {
        room: String,
        name: String,
        standing: Standing,
    },
    /// A new owner.
    Transfer { room: String, to: String },
    /// An invite made or revoked.
    Invite {
        room: String,
        name: String,
        on: bool,
    },
    /// A ban or a mute (`until_ms`: `None` for good).
    Sanction {
        room: String,
        target: Target,
        kind: Kind,
        until_ms: Option<i64>,
        reason: String,
    },
    /// A ban or a mute lifted.
    Lift {
        room: String,
        target: Target,
        kind: Kind,
    },
    /// The room's bans and mutes.
    Bans { room: String },
    /// The room's audit log.
    Audit { room: String },
}

/// What a moderation request came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Moderated {
    /// Done (or nothing to do).
    Done,
    /// The room's bans and mutes in force.
    Bans(String, Vec<Sanction>),
    /// The room's newest audit entries.
    Audit(String, Vec<Audit>),
}

fn no(why: impl Into<String>) -> Denied {
    Denied::Forbidden(why.into())
}

/// Carries out `action` for `actor`: checked, written with its audit entry, reloaded.
pub(super) fn serve(work: &Work, actor: &Actor, action: Action) -> Result<Moderated, Denied> {
    let unavailable = |e: String| {
        warn!(error = %e, "moderation: the store failed");
        Denied::Unavailable
    };
    let now = now_ms();
    let (change, audit) = match plan(work, actor, action, now)? {
        Plan::Write(change, audit) => (*change, audit.map(|a| *a)),
        Plan::Answer(answer) => return Ok(answer),
        Plan::List(room, Kind::Ban) => {
            let p = work.policies.room(&room).unwrap_or_default();
            let live = p
                .sanctions
                .into_iter()
                .filter(|s| s.kind != Kind::Revoke && s.until_ms.is_none_or(|u| u > now))
                .collect();
            return Ok(Moderated::Bans(room, live));
        }
        Plan::List(room, _) => {
            let log = with_db(work, |db| db.audit_log(&room, AUDIT_PAGE)).map_err(unavailable)?;
            return Ok(Moderated::Audit(room, log));
        }
    };
    let room = change.room().to_string();
    let changed = with_db(work, |db| db.apply(&change, audit.as_ref())).map_err(unavailable)?;
    if let (true, Some(a)) = (changed, &audit) {
        info!(room = %a.room, by = %a.actor, action = %a.action, target = %a.target, reason = %a.reason, "moderation");
        let hook = crate::sync::lock(&work.moderated).clone();
        if let Some(hook) = hook {
            hook(a);
        }
    }
    if let Change::Sanction(s) = &change
        && s.kind == Kind::Ban
        && s.room != SERVER
        && !is_range(&s.target)
    {
        // A ban ends the membership: the room does not come back at the next sign-in.
        super::rooms::note(
            work,
            &s.target,
            &s.room,
            super::rooms::Change {
                joined: Some(super::rooms::Joined::Left),
                read: None,
            },
        );
    }
    // A claim is told by the reply to the join that made the room (held back until now), not
    // by events that would come before it.
    let quiet = matches!(change, Change::Claim { .. });
    reload(work, &room, !quiet).map_err(unavailable)?;
    Ok(Moderated::Done)
}

/// A change to write, with its audit entry.
fn write(change: Change, audit: Option<Audit>) -> Plan {
    Plan::Write(Box::new(change), audit.map(Box::new))
}

enum Plan {
    Write(Box<Change>, Option<Box<Audit>>),
    Answer(Moderated),
    /// Bans (`Kind::Ban`) or the audit log (any other kind) of the room.
    List(String, Kind),
}

fn plan(work: &Work, actor: &Actor, action: Action, now: i64) -> Result<Plan, Denied> {
    let p = &work.policies;
    let me = actor.key();
    let ts = protocol::timestamp();
    let entry = |room: &str, action: &str, target: &str, reason: &str| {
        Some(Audit {
            room: room.to_string(),
            actor: actor.name.clone(),
            action: action.to_string(),
            target: target.to_string(),
            reason: reason.to_string(),
            ts: ts.clone(),
        })
    };
    let standing = |room: &str| p.standing(room, &me);
    // Ops (or the owner, or an admin) of `room`, which must not be the server's.
    let op_of = |room: &str| -> Result<(), Denied> {
        if room == SERVER && !actor.admin {
            return Err(no("only server admins act server-wide"));
        }
        if actor.admin || standing(room) >= Standing::Op {
            Ok(())
        } else {
            Err(no(format!("only the ops of #{room} may do that")))
        }
    };
    Ok(match action {
        Action::Claim { room } => {
            if p.settings(&room).is_some() || room == protocol::DEFAULT_ROOM {
                return Ok(Plan::Answer(Moderated::Done));
            }
            let audit = entry(&room, "create", "", "");
            write(Change::Claim { room, owner: me }, audit)
        }
        Action::UseInvite { room } => write(
            Change::Invite {
                room,
                account: me,
                on: false,
            },
            None,
        ),
        Action::Set {
            room,
            topic,
            private,
            invite_only,
            moderated,
        } => {
            op_of(&room)?;
            let old = p.settings(&room);
            if old.is_none() && !actor.admin {
                return Err(no(format!(
                    "#{room} has no owner: only server admins set it up"
                )));
            }
            if private.is_some() && !actor.admin && standing(&room) < Standing::Owner {
                return Err(no(format!(
                    "only the owner of #{room} makes it private or public"
                )));
            }
            if topic.as_ref().is_some_and(|t| t.len() > MAX_TOPIC_BYTES) {
                return Err(Denied::Invalid(format!(
                    "a topic is at most {MAX_TOPIC_BYTES} bytes"
                )));
            }
            let old = old.unwrap_or_default();
            let new = Settings {
                owner: old.owner.clone(),
                topic: topic.clone().unwrap_or(old.topic.clone()),
                private: private.unwrap_or(old.private),
                invite_only: invite_only.unwrap_or(old.invite_only),
                moderated: moderated.unwrap_or(old.moderated),
            };
            let what = [
                topic.map(|t| format!("topic={t}")),
                private.map(|v| format!("private={v}")),
                invite_only.map(|v| format!("invite_only={v}")),
                moderated.map(|v| format!("moderated={v}")),
            ];
            let what: Vec<String> = what.into_iter().flatten().collect();
            let audit = entry(&room, "set", "", &what.join(" "));
            write(
                Change::Set {
                    room,
                    settings: new,
                },
                audit,
            )
        }
        Action::Role {
            room,
            name,
            standing: to,
        } => {
            op_of(&room)?;
            let key = protocol::name_key(&name);
            let theirs = p.standing(&room, &key);
            if theirs == Standing::Owner {
                return Err(no(format!("{name} owns #{room}: `transfer` changes that")));
            }
            let needs_owner = to == Standing::Op || theirs == Standing::Op;
            if needs_owner && !actor.admin && standing(&room) < Standing::Owner {
                return Err(no(format!(
                    "only the owner of #{room} makes or unmakes ops"
                )));
            }
            let role = match to {
                Standing::Op => Some(RoomRole::Op),
                Standing::Voice => Some(RoomRole::Voice),
                _ => None,
            };
            if role.is_some()
                && p.room(&room)
                    .is_some_and(|r| r.roles.len() >= MAX_ROLES && !r.roles.contains_key(&key))
            {
                return Err(no(format!(
                    "#{room} has {MAX_ROLES} ops and voices already"
                )));
            }
            let audit = entry(&room, to.as_str(), &name, "");
            write(
                Change::Role {
                    room,
                    account: key,
                    role,
                },
                audit,
            )
        }
        Action::Transfer { room, to } => {
            if !actor.admin && standing(&room) < Standing::Owner {
                return Err(no(format!("only the owner of #{room} gives it away")));
            }
            let key = protocol::name_key(&to);
            let exists = with_db(work, |db| db.find(&key)).map_err(|_| Denied::Unavailable)?;
            if exists.is_none() {
                return Err(Denied::NoSuchUser);
            }
            let audit = entry(&room, "transfer", &to, "");
            write(Change::Transfer { room, to: key }, audit)
        }
        Action::Invite { room, name, on } => {
            op_of(&room)?;
            let key = protocol::name_key(&name);
            if on
                && p.room(&room)
                    .is_some_and(|r| r.invites.len() >= MAX_INVITES && !r.invites.contains(&key))
            {
                return Err(no(format!(
                    "#{room} has {MAX_INVITES} invites waiting: revoke some first"
                )));
            }
            let audit = entry(&room, if on { "invite" } else { "uninvite" }, &name, "");
            write(
                Change::Invite {
                    room,
                    account: key,
                    on,
                },
                audit,
            )
        }
        Action::Sanction {
            room,
            target,
            kind,
            until_ms,
            reason,
        } => {
            op_of(&room)?;
            let target = aimed(work, actor, &room, &target)?;
            if p.room(&room).is_some_and(|r| {
                r.sanctions_in_force(now) >= MAX_SANCTIONS
                    && !r
                        .sanctions
                        .iter()
                        .any(|s| s.target == target && s.kind == kind)
            }) {
                return Err(no(format!(
                    "#{room} holds {MAX_SANCTIONS} bans and mutes: lift some first"
                )));
            }
            let reason = cut(&reason, MAX_REASON_BYTES);
            let sanction = Sanction {
                room: room.clone(),
                target: target.clone(),
                kind,
                by: actor.name.clone(),
                reason: reason.clone(),
                created: ts.clone(),
                until_ms,
            };
            let until = until_ms.map_or(String::new(), |u| {
                format!(" (for {})", super::policy::left(u - now))
            });
            let audit = entry(&room, kind.as_str(), &target, &format!("{reason}{until}"));
            write(Change::Sanction(sanction), audit)
        }
        Action::Lift { room, target, kind } => {
            op_of(&room)?;
            let target = aimed(work, actor, &room, &target)?;
            let action = format!("un{}", kind.as_str());
            let audit = entry(&room, &action, &target, "");
            write(Change::Lift { room, target, kind }, audit)
        }
        Action::Bans { room } => {
            op_of(&room)?;
            Plan::List(room, Kind::Ban)
        }
        Action::Audit { room } => {
            op_of(&room)?;
            Plan::List(room, Kind::Mute)
        }
    })
}

/// The stored target of a ban or mute: an account's key (not one who outranks the actor in
/// the room, nor an admin unless the actor is one), or a range (admins only).
fn aimed(work: &Work, actor: &Actor, room: &str, target: &Target) -> Result<String, Denied> {
    match target {
        Target::Range(range) => {
            if !actor.admin {
                return Err(no("only server admins ban address ranges"));
            }
            crate::addr::Cidr::parse(range).map_err(Denied::Invalid)?;
            Ok(range.clone())
        }
        Target::Name(name) => {
            let key = protocol::name_key(name);
            if key == actor.key() {
                return Err(no("not yourself"));
            }
            let theirs = work.policies.standing(room, &key);
            let mine = work.policies.standing(room, &actor.key());
            if !actor.admin && theirs >= mine {
                return Err(no(format!(
                    "{name} is {} of #{room}: out of your reach",
                    theirs.as_str()
                )));
            }
            let account = with_db(work, |db| db.find(&key)).map_err(|_| Denied::Unavailable)?;
            if account.is_some_and(|a| a.role == protocol::Role::Admin) && !actor.admin {
                return Err(no(format!("{name} is a server admin")));
            }
            Ok(key)
        }
    }
}

fn cut(text: &str, most: usize) -> String {
    let mut end = text.len().min(most);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Replaces `room`'s policy with what the store holds and (with `tell`) hands what changed to
/// the chat.
pub(super) fn reload(work: &Work, room: &str, tell: bool) -> Result<(), String> {
    let record = with_db(work, |db| db.room_record(room))?;
    let effects = work.policies.replace(room, record, now_ms());
    if tell {
        act(work, effects);
    }
    Ok(())
}

fn act(work: &Work, effects: Vec<Effect>) {
    if effects.is_empty() {
        return;
    }
    let hook = crate::sync::lock(&work.effects).clone();
    if let Some(hook) = hook {
        hook(effects);
    }
}

/// Loads every room's policy (at start).
pub(super) fn load(work: &Work) -> Result<usize, String> {
    let version = with_db(work, |db| db.policy_version())?;
    let rooms = with_db(work, |db| db.policy_rooms())?;
    for room in &rooms {
        let record = with_db(work, |db| db.room_record(room))?;
        work.policies.replace(room, record, now_ms());
    }
    work.policies.set_version(version);
    Ok(rooms.len())
}

/// Reloads what other nodes changed, at most every [`POLL_EVERY`] (one thread at a time).
pub(super) fn poll(work: &Work) {
    let Ok(mut last) = work.polled.try_lock() else {
        return;
    };
    if last.is_some_and(|at| at.elapsed() < POLL_EVERY) {
        return;
    }
    *last = Some(Instant::now());
    let since = work.policies.version();
    let changed = with_db(work, |db| db.changed_since(since));
    match changed {
        Ok((rooms, latest)) if latest > since => {
            for room in rooms {
                if let Err(e) = reload(work, &room, true) {
                    warn!(error = %e, room, "moderation: cannot reload a room's policy");
                    return;
                }
            }
            work.policies.set_version(latest);
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "moderation: cannot read the change log"),
    }
}

/// "7d", "12h", "30m", "45s", "2w": at most a year.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || format!("{text:?} is not a duration: a number and s, m, h, d or w (\"7d\")");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    let total = n.checked_mul(secs).ok_or_else(bad)?;
    if total == 0 || total > 366 * 86_400 {
        return Err(format!("{text:?}: a duration is from 1s to a year"));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_checked() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("0m").is_err());
        assert!(parse_duration("2y").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert!(parse_duration("400d").is_err());
    }
}
