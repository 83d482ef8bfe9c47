//! Rooms that belong to someone, as stored: each owned room's settings (owner, topic, private,
//! invite-only, moderated), its roles (ops, voice), its invites, and the sanctions (bans, mutes;
//! under the room `*`, server-wide bans, address bans and revoked tokens), with an audit log of
//! moderation and a change log (`version`) the nodes of a cluster poll to stay in step. Kept in
//! the store's database beside the accounts, through one contract ([`PolicyDb`]) that both
//! SQLite and PostgreSQL implement. This module stores; the accounts service decides who may.

use super::accounts::DbError;

/// The room name under which server-wide sanctions are kept.
pub const SERVER: &str = "*";

/// A role in one room besides `member` (the owner is the room's own column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoomRole {
    /// May moderate: topic, settings, invites, voice, bans and mutes.
    Op,
    /// May speak in a moderated room.
    Voice,
}

impl RoomRole {
    /// As stored, and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RoomRole::Op => "op",
            RoomRole::Voice => "voice",
        }
    }

    /// From its stored text.
    pub fn parse(text: &str) -> Option<RoomRole> {
        match text {
            "op" => Some(RoomRole::Op),
            "voice" => Some(RoomRole::Voice),
            _ => None,
        }
    }
}

/// What a sanction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Out of the room (or, under [`SERVER`], the server), and kept out.
    Ban,
    /// Reads, may not speak.
    Mute,
    /// A token no longer accepted (under [`SERVER`]; the target is `jti:ID` or `sub:NAME`).
    Revoke,
}

impl Kind {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ban => "ban",
            Kind::Mute => "mute",
            Kind::Revoke => "revoke",
        }
    }

    /// From its stored text.
    pub fn parse(text: &str) -> Option<Kind> {
        match text {
            "ban" => Some(Kind::Ban),
            "mute" => Some(Kind::Mute),
            "revoke" => Some(Kind::Revoke),
            _ => None,
        }
    }
}

/// One ban, mute or revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sanction {
    /// The room, or [`SERVER`].
    pub room: String,
    /// An account's key, an address range (`203.0.113.0/24`), or for a revocation `jti:ID` /
    /// `sub:NAME`.
    pub target: String,
    /// What it does.
    pub kind: Kind,
    /// Who did it (an account's name, or `chatd` for the command line).
    pub by: String,
    /// Why (at most 200 bytes).
    pub reason: String,
    /// When it was made (RFC 3339 UTC).
    pub created: String,
    /// When it ends (Unix milliseconds); `None`: never.
    pub until_ms: Option<i64>,
}

/// An owned room's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// The owner's key (`None`: ownerless, its settings made by an admin).
    pub owner: Option<String>,
    /// The topic (at most 300 bytes; empty: none).
    pub topic: String,
    /// Not listed for non-members.
    pub private: bool,
    /// Joined only with an invite (or by members, ops, admins).
    pub invite_only: bool,
    /// Only ops (and voice) may speak.
    pub moderated: bool,
}

/// Everything stored about one room (or, for [`SERVER`], the server-wide sanctions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomRecord {
    /// Its settings, if the room is owned (or was set by an admin).
    pub settings: Option<Settings>,
    /// Accounts with a role, by key.
    pub roles: Vec<(String, RoomRole)>,
    /// Accounts invited (keys).
    pub invites: Vec<String>,
    /// Bans and mutes (and under [`SERVER`], revocations), expired ones included.
    pub sanctions: Vec<Sanction>,
}

/// One change of a room's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new room's first account owns it: only if nobody does yet.
    Claim {
        /// The room.
        room: String,
        /// The account's key.
        owner: String,
    },
    /// New settings (the owner unchanged; a room without settings gets them, ownerless).
    Set {
        /// The room.
        room: String,
        /// The settings as they are to be (owner aside).
        settings: Settings,
    },
    /// A role given (`Some`) or taken back (`None`).
    Role {
        /// The room.
        room: String,
        /// The account's key.
        account: String,
        /// The role.
        role: Option<RoomRole>,
    },
    /// The room's new owner; the old one stays an op.
    Transfer {
        /// The room.
        room: String,
        /// The new owner's key.
        to: String,
    },
    /// An invite made (`true`) or revoked or used (`false`).
    Invite {
        /// The room.
        room: String,
        /// The account's key.
        account: String,
        /// Made or gone.
        on: bool,
    },
    /// A sanction made (replacing one of the same kind on the same target).
    Sanction(Sanction),
    /// A sanction lifted.
    Lift {
        /// The room (or [`SERVER`]).
        room: String,
        /// Its target.
        target: String,
        /// Its kind.
        kind: Kind,
    },
}

impl Change {
    /// The room it concerns.
    pub fn room(&self) -> &str {
        match self {
            Change::Claim { room, .. }
            | Change::Set { room, .. }
            | Change::Role { room, .. }
            | Change::Transfer { room, .. }
            | Change::Invite { room, .. }
            | Change::Lift { room, .. } => room,
            Change::Sanction(s) => &s.room,
        }
    }
}

/// One moderation action, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// The room (or [`SERVER`]).
    pub room: String,
    /// Who (an account's name, or `chatd` for the command line).
    pub actor: String,
    /// What (`ban`, `unban`, `mute`, `op`, `topic`, …).
    pub action: String,
    /// On whom or what (empty for a setting).
    pub target: String,
    /// Why, or the new value.
    pub reason: String,
    /// When (RFC 3339 UTC).
    pub ts: String,
}

/// What rooms' policies a database holds, and the change log that keeps nodes in step.
pub trait PolicyDb: Send {
    /// The latest change's number (0: none yet).
    fn policy_version(&mut self) -> Result<u64, DbError>;
    /// The rooms changed after `version`, and the latest change's number.
    fn changed_since(&mut self, version: u64) -> Result<(Vec<String>, u64), DbError>;
    /// Every room with a stored policy (settings, roles, invites or sanctions), [`SERVER`]
    /// among them if it has any.
    fn policy_rooms(&mut self) -> Result<Vec<String>, DbError>;
    /// Everything stored about `room`.
    fn room_record(&mut self, room: &str) -> Result<RoomRecord, DbError>;
    /// Makes `change`, with its audit entry, in one transaction that logs the change; false
    /// when there was nothing to do (a claim of an owned room, a lift of nothing).
    fn apply(&mut self, change: &Change, audit: Option<&Audit>) -> Result<bool, DbError>;
    /// The newest `limit` audit entries of `room`, newest first.
    fn audit_log(&mut self, room: &str, limit: usize) -> Result<Vec<Audit>, DbError>;
}

/// Audit entries kept per room (older ones are deleted as new ones come).
pub const AUDIT_KEPT: i64 = 1000;
/// Change-log entries kept (a node that fell further behind reloads everything).
pub const CHANGES_KEPT: i64 = 10_000;
