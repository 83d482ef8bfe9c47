//! Managing accounts offline (`chatd user`, `chatd invite`), on the store the configuration
//! names, while chatd runs or not.

use std::time::Duration;

use super::{Hasher, check_password, hasher, invite_hash, now_ms, settings};
use crate::config::{Config, ConfigError};
use crate::protocol::{self, Role};
use crate::store::accounts::{Account, AccountsDb, Change, Created};

/// A handle on the configured store's accounts.
pub struct Admin {
    db: Box<dyn AccountsDb>,
    hasher: Hasher,
    min_chars: usize,
}

impl Admin {
    /// Opens the accounts of the store `config` names.
    pub fn open(config: &Config) -> Result<Admin, ConfigError> {
        Ok(Admin {
            db: crate::store::accounts::open(&settings(config)?)?,
            hasher: hasher(config)?,
            min_chars: config.auth.password_min_chars,
        })
    }

    /// Makes the account `name` (a valid name) with `password` and `role`.
    pub fn add(&mut self, name: &str, password: &str, role: Role) -> Result<(), String> {
        check_password(password, self.min_chars)?;
        let account = Account {
            name: name.to_string(),
            hash: self.hasher.hash(password)?,
            role,
            disabled: false,
        };
        match self
            .db
            .create(&protocol::name_key(name), &account, None, now_ms())?
        {
            Created::Created => Ok(()),
            _ => Err(format!("the account {name:?} exists already")),
        }
    }

    /// Applies `change` to `name`'s account.
    pub fn change(&mut self, name: &str, change: Change) -> Result<(), String> {
        if self.db.update(&protocol::name_key(name), &change)? {
            Ok(())
        } else {
            Err(format!("there is no account {name:?}"))
        }
    }

    /// A new password for `name`.
    pub fn passwd(&mut self, name: &str, password: &str) -> Result<(), String> {
        check_password(password, self.min_chars)?;
        let hash = self.hasher.hash(password)?;
        self.change(name, Change::Password(hash))
    }

    /// A new invite good for `uses` registrations within `ttl`; the code, shown once.
    pub fn invite(&mut self, uses: u32, ttl: Duration) -> Result<String, String> {
        use argon2::password_hash::rand_core::{OsRng, RngCore};
        let mut bytes = [0u8; 15];
        OsRng.fill_bytes(&mut bytes);
        let code = crate::auth::hex(&bytes);
        let expires = now_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        self.db.add_invite(&invite_hash(&code), uses, expires)?;
        Ok(code)
    }

    /// Revokes tokens: `jti:ID` (one token) or `sub:NAME` (every token of that subject), from
    /// now on and for the connections they signed in (each node closes them within a second).
    pub fn revoke(&mut self, target: &str) -> Result<bool, String> {
        use crate::store::policy::{Audit, Change, Kind, SERVER, Sanction};
        let ts = protocol::timestamp();
        let sanction = Sanction {
            room: SERVER.into(),
            target: target.to_string(),
            kind: Kind::Revoke,
            by: "chatd".into(),
            reason: "revoked".into(),
            created: ts.clone(),
            until_ms: None,
        };
        let audit = Audit {
            room: SERVER.into(),
            actor: "chatd".into(),
            action: "revoke".into(),
            target: target.to_string(),
            reason: String::new(),
            ts,
        };
        self.db.apply(&Change::Sanction(sanction), Some(&audit))
    }

    /// The account `name`, if there is one.
    pub fn find(&mut self, name: &str) -> Result<Option<Account>, String> {
        self.db.find(&protocol::name_key(name))
    }
}
