//! API keys: what one looks like (`chatd_ID_SECRET`), what it may do (scopes, rooms), how it is
//! checked (SHA-256 of the whole key against the stored hash, in constant time). The store keeps
//! them (`store::keys`).

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::keys::ApiKey;

/// Every scope a key can have, and what it allows.
pub const SCOPES: &[(&str, &str)] = &[
    ("say", "post messages into rooms"),
    ("pm", "send private messages"),
    ("history:read", "read rooms' history"),
    ("search", "search messages"),
    ("presence:read", "list rooms and their members"),
    (
        "announce",
        "announce to everyone (the account must be an admin)",
    ),
    ("kick", "disconnect a user (the account must be an admin)"),
    (
        "moderate",
        "rooms' settings, bans, mutes and invites (as the account's standing allows)",
    ),
];

/// The prefix every key starts with (so a leaked one is recognisable, as GitHub's are).
const PREFIX: &str = "chatd_";

/// A new key: its public id and the whole key (shown once, never stored).
pub fn mint() -> (String, String) {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    use base64::Engine;
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut id);
    OsRng.fill_bytes(&mut secret);
    let id = crate::auth::hex(&id);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let key = format!("{PREFIX}{id}_{secret}");
    (id, key)
}

/// What is stored of `key`: SHA-256, in hex (a key is 256 random bits: no stretching needed).
pub fn hash(key: &str) -> String {
    crate::auth::hex(&Sha256::digest(key.as_bytes()))
}

/// The public id `key` names, if it has the shape of a key.
pub fn id_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let plausible = id.len() == 12
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && (32..=64).contains(&secret.len());
    plausible.then_some(id)
}

/// Whether `key` is the one `stored` keeps, still valid at `now_ms`. The hash comparison takes
/// the same time whatever it finds.
pub fn matches(stored: &ApiKey, key: &str, now_ms: i64) -> bool {
    let same: bool = hash(key).as_bytes().ct_eq(stored.hash.as_bytes()).into();
    same && !stored.revoked && stored.expires_ms.is_none_or(|at| now_ms < at)
}

/// Checks a scope list given on the command line.
pub fn parse_scopes(text: &str) -> Result<Vec<String>, String> {
    let scopes: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if scopes.is_empty() {
        return Err("give at least one scope".into());
    }
    for scope in &scopes {
        if !SCOPES.iter().any(|(name, _)| name == scope) {
            let known: Vec<&str> = SCOPES.iter().map(|(name, _)| *name).collect();
            return Err(format!(
                "unknown scope {scope:?}; the scopes are {}",
                known.join(", ")
            ));
        }
    }
    Ok(scopes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(key: &str) -> ApiKey {
        ApiKey {
            id: id_of(key).unwrap().into(),
            name: "bot".into(),
            account: "bot".into(),
            hash: hash(key),
            scopes: vec!["say".into()],
            rooms: vec![],
            created_ms: 0,
            expires_ms: Some(100),
            revoked: false,
        }
    }

    #[test]
    fn a_key_matches_only_itself_while_valid() {
        let (id, key) = mint();
        assert_eq!(id_of(&key), Some(id.as_str()));
        let row = stored(&key);
        assert!(matches(&row, &key, 99));
        assert!(!matches(&row, &key, 100), "expired");
        let (_, other) = mint();
        assert!(!matches(&row, &other, 0));
        let revoked = ApiKey {
            revoked: true,
            ..row
        };
        assert!(!matches(&revoked, &key, 0));
        assert_eq!(id_of("chatd_zz_short"), None);
        assert_eq!(id_of("Bearer nonsense"), None);
    }

    #[test]
    fn scopes_are_checked() {
        assert_eq!(
            parse_scopes("say, history:read").unwrap(),
            ["say", "history:read"]
        );
        assert!(parse_scopes("say,root").unwrap_err().contains("\"root\""));
        assert!(parse_scopes("").is_err());
    }
}
