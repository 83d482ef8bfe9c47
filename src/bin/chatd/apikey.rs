//! `chatd apikey`: keys for the HTTP API, made, listed and revoked on the store the
//! configuration names (SQLite's file or PostgreSQL), whether chatd runs or not.

use std::process::ExitCode;

use chatd::api::keys;
use chatd::config::{AuthMode, Config};
use chatd::protocol::now_ms;
use chatd::store::keys::ApiKey;
use clap::Subcommand;

use super::config_error;

/// What `chatd apikey` does.
#[derive(Subcommand, Debug)]
pub(crate) enum ApikeyCommand {
    /// Make a key; prints it (once: only a hash is kept) and nothing else.
    Create {
        /// What to call the key (unique); also the name it speaks as, unless --user says.
        #[arg(long)]
        name: String,
        /// What it may do, comma-separated: say, pm, history:read, search, presence:read,
        /// announce, kick.
        #[arg(long)]
        scopes: String,
        /// The only rooms it may use, comma-separated (default: every room).
        #[arg(long)]
        rooms: Option<String>,
        /// The name (with accounts: the account) it speaks and reads as.
        #[arg(long)]
        user: Option<String>,
        /// How long it is valid: 90d, 12h, 15m (default: until revoked).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// List the keys (never the keys themselves).
    List,
    /// Revoke a key, by name or id: refused from its next request on.
    Revoke {
        /// The key's name or id.
        name: String,
    },
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("chatd: apikey: {e}");
    ExitCode::FAILURE
}

fn usage(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("chatd: apikey: {e}");
    ExitCode::from(2)
}

/// `chatd apikey ...`.
pub(crate) fn apikey(config: &Config, command: ApikeyCommand) -> ExitCode {
    let Some(settings) = chatd::store::StoreSettings::from_config(config) else {
        return fail("API keys are kept in the store: set storage.path (or storage.url)");
    };
    let mut db = match chatd::store::accounts::open(&settings) {
        Ok(db) => db,
        Err(e) => return config_error(&e),
    };
    match command {
        ApikeyCommand::Create {
            name,
            scopes,
            rooms,
            user,
            ttl,
        } => {
            let scopes = match keys::parse_scopes(&scopes) {
                Ok(scopes) => scopes,
                Err(e) => return usage(format!("--scopes: {e}")),
            };
            let mut kept = Vec::new();
            for room in rooms.iter().flat_map(|r| r.split(',')).map(str::trim) {
                match chatd::protocol::normalize_room(room) {
                    Some(room) => kept.push(room),
                    None => return usage(format!("--rooms: {room:?} is not a room name")),
                }
            }
            let account = user.unwrap_or_else(|| name.clone());
            if name.trim().is_empty() || name.len() > 64 {
                return usage("--name must be 1-64 bytes");
            }
            if chatd::protocol::validate_name(&account).is_err() {
                return usage(format!("{account:?} is not a valid user name"));
            }
            let expires_ms = match ttl.as_deref().map(chatd::auth::parse_ttl).transpose() {
                Ok(ttl) => ttl.map(|t| now_ms().saturating_add(t.as_millis() as i64)),
                Err(e) => return usage(format!("--ttl {e}")),
            };
            if config.auth.mode == AuthMode::Accounts {
                // A bot is an account: one without a password (it cannot sign in with one).
                let key = chatd::protocol::name_key(&account);
                let known = db.find(&key).map(|a| a.is_some());
                if matches!(known, Ok(false))
                    && let Err(e) = db.remember(&key, &account, chatd::protocol::Role::User)
                {
                    return fail(e);
                }
            }
            let (id, key) = keys::mint();
            let row = ApiKey {
                id,
                name: name.clone(),
                account: account.clone(),
                hash: keys::hash(&key),
                scopes,
                rooms: kept,
                created_ms: now_ms(),
                expires_ms,
                revoked: false,
            };
            match db.add_key(&row) {
                Ok(true) => {
                    println!("{key}");
                    eprintln!(
                        "chatd: API key {name:?} speaks as {account:?} with {}; shown once, keep it secret",
                        row.scopes.join(",")
                    );
                    ExitCode::SUCCESS
                }
                Ok(false) => fail(format!("a key named {name:?} exists already")),
                Err(e) => fail(e),
            }
        }
        ApikeyCommand::List => match db.keys() {
            Ok(keys) => {
                println!("NAME\tID\tUSER\tSCOPES\tROOMS\tEXPIRES\tSTATE");
                let now = now_ms();
                for k in keys {
                    let state = match (k.revoked, k.expires_ms) {
                        (true, _) => "revoked",
                        (false, Some(at)) if at <= now => "expired",
                        _ => "active",
                    };
                    let expires = k
                        .expires_ms
                        .map_or("never".into(), chatd::protocol::timestamp_at);
                    let rooms = if k.rooms.is_empty() {
                        "*".into()
                    } else {
                        k.rooms.join(",")
                    };
                    println!(
                        "{}\t{}\t{}\t{}\t{rooms}\t{expires}\t{state}",
                        k.name,
                        k.id,
                        k.account,
                        k.scopes.join(",")
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        ApikeyCommand::Revoke { name } => match db.revoke_key(&name) {
            Ok(true) => {
                eprintln!("chatd: revoked the API key {name:?}: refused from its next request on");
                ExitCode::SUCCESS
            }
            Ok(false) => fail(format!("there is no API key {name:?}")),
            Err(e) => fail(e),
        },
    }
}
