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
pub trait AccountsDb: Send {
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
    /// The rooms `key`'s account is a member of, in the order it joined them, at most `limit`.
    fn rooms(&mut self, key: &str, limit: usize) -> Result<Vec<String>, DbError>;
    /// Records joins (`true`) and leaves (`false`) of rooms by accounts, in one transaction, in
    /// order (a join and a leave of one room: the last wins).
    fn memberships(&mut self, changes: &[(String, String, bool)]) -> Result<(), DbError>;
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
