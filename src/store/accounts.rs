//! Accounts (`auth.mode = "accounts"`): who owns which name, their password hash, role and
//! whether they may sign in, and the invites registration may require. Kept in the same database
//! as history (SQLite's file or PostgreSQL), through one contract ([`AccountsDb`]) that both
//! implement, so a cluster's nodes share them and `chatd user` works on the store chatd runs on,
//! while it runs.
//!
//! This module stores; it never hashes or checks a password (the accounts service does, on
//! its own threads). Names are keyed by `protocol::name_key`, as everywhere else.

use crate::config::ConfigError;
use crate::protocol::Role;

pub(super) use super::role_name as role_text;
use super::{Place, StoreSettings};

/// One account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The name as its owner spells it.
    pub name: String,
    /// The password's Argon2id hash, as a PHC string (`$argon2id$v=19$m=...`).
    pub hash: String,
    /// `user` or `admin`.
    pub role: Role,
    /// A disabled account cannot sign in.
    pub disabled: bool,
}

/// What [`AccountsDb::create`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The account exists now (and the invite, if one was given, has one use fewer).
    Created,
    /// Someone owns the name already: nothing was done.
    Taken,
    /// The invite is unknown, used up or expired: nothing was done.
    BadInvite,
}

/// A database error, as text for the log (never shown to a client).
pub type DbError = String;

/// What a database must do to keep accounts. Every method is one transaction.
pub trait AccountsDb: super::policy::PolicyDb + super::keys::KeysDb + Send {
    /// The account under `key` (`protocol::name_key`), if there is one.
    fn find(&mut self, key: &str) -> Result<Option<Account>, DbError>;
    /// Creates `account` under `key`, spending one use of the invite whose hash is `invite`
    /// (valid until `now_ms`) when one is given, both or neither.
    fn create(
        &mut self,
        key: &str,
        account: &Account,
        invite: Option<&str>,
        now_ms: i64,
    ) -> Result<Created, DbError>;
    /// Changes what `key`'s account has (its hash, role or whether it is disabled); false if
    /// there is no such account.
    fn update(&mut self, key: &str, change: &Change) -> Result<bool, DbError>;
    /// Records an invite (by its hash) good for `uses` sign-ups until `expires_ms`.
    fn add_invite(&mut self, hash: &str, uses: u32, expires_ms: i64) -> Result<(), DbError>;
    /// How many accounts exist.
    fn count(&mut self) -> Result<u64, DbError>;
    /// The rooms `key`'s account is a member of, in the order it joined them, at most `limit`,
    /// each with its read marker.
    fn rooms(&mut self, key: &str, limit: usize) -> Result<Vec<(String, u64)>, DbError>;
    /// Records what changed in accounts' memberships, in one transaction: joins, leaves, and
    /// read markers (which only move forward).
    fn memberships(&mut self, changes: &[Noted]) -> Result<(), DbError>;
    /// What `room` holds past `read` that someone other than `key` said: the room's last stored
    /// seq, and up to [`UNREAD_CAP`] messages past `read`, with their texts where they contain
    /// `@`-`name` (case-insensitively; the caller checks the word boundary).
    fn unread(&mut self, key: &str, name: &str, room: &str, read: u64) -> Result<Unread, DbError>;
    /// Keeps a token's subject as an account without a password (token mode), if `key` has
    /// none: someone PMs can be kept for while they are away. A password sign-in never matches
    /// it (its hash is empty) until `chatd user passwd` gives it one.
    fn remember(&mut self, key: &str, name: &str, role: Role) -> Result<(), DbError>;
    /// `key`'s private conversations, the most recent first, at most `limit`: with whom, the
    /// last message, the marker and what is unread past it (see [`Conversation`]).
    fn conversations(&mut self, key: &str, limit: usize) -> Result<Vec<Conversation>, DbError>;
    /// The conversation of `key` with `with` (both keys), or `None` if they have none.
    fn conversation(&mut self, key: &str, with: &str) -> Result<Option<Conversation>, DbError>;
    /// Moves `key`'s marker in its conversation with `with` forward to `id` (never back).
    fn read_pm(&mut self, key: &str, with: &str, id: u64) -> Result<(), DbError>;
    /// What others wrote to `key` in its conversation with `with` past `after`, the newest
    /// `limit` of them, oldest first.
    fn unread_pms(
        &mut self,
        key: &str,
        with: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<super::Pm>, DbError>;
}

/// One private conversation of an account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conversation {
    /// The other person, as they spell their name (in the last message).
    pub with: String,
    /// The last message's id.
    pub last: u64,
    /// The account's marker: the later of what it marked read and the last message it sent.
    pub read: u64,
    /// Messages from the other past `read`, at most [`UNREAD_CAP`].
    pub unread: u64,
}

/// The other name of a conversation's `pair` (two keys joined by a space) for `key`.
pub(super) fn other_of<'a>(pair: &'a str, key: &str) -> &'a str {
    match pair.split_once(' ') {
        Some((a, b)) if a == key => b,
        Some((a, _)) => a,
        None => pair,
    }
}

/// The most unread messages counted (a client shows "999+").
pub const UNREAD_CAP: u64 = 999;

/// A change to one account's membership of one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Noted {
    /// The account (`accounts.key`).
    pub account: String,
    /// The room.
    pub room: String,
    /// Joined (`Some(Some(seq))`: a new membership's marker starts at `seq`; an existing one
    /// keeps its own) or left (`Some(None)`).
    pub joined: Option<Option<u64>>,
    /// Read up to this seq (the stored marker moves only forward).
    pub read: Option<u64>,
}

/// What [`AccountsDb::unread`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unread {
    /// The room's numbering, as the store knows it (empty: the room has none stored).
    pub epoch: String,
    /// The room's last stored seq (0: nothing stored).
    pub head: u64,
    /// Messages by others past the marker, at most [`UNREAD_CAP`].
    pub count: u64,
    /// The texts of those that contain the `@`-name, at most [`UNREAD_CAP`].
    pub mentioning: Vec<String>,
}

/// `name` as a LIKE pattern for `@name` anywhere, with `\` escaping LIKE's wildcards.
pub(super) fn mention_pattern(name: &str) -> String {
    let mut pattern = String::from("%@");
    for c in name.to_ascii_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// One change to an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new password hash.
    Password(String),
    /// A new role.
    Role(Role),
    /// Disabled (true) or enabled again.
    Disabled(bool),
}

/// Opens the accounts of the database `settings` names (creating or migrating its schema, as
/// the store does): a connection of its own, for the accounts threads or for `chatd user`.
pub fn open(settings: &StoreSettings) -> Result<Box<dyn AccountsDb>, ConfigError> {
    match &settings.place {
        Place::File(path) => super::sqlite::accounts(path, settings),
        Place::Postgres(pg) => super::postgres::accounts(pg),
    }
}
