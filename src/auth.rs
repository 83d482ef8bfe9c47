//! Token authentication: HS256 JWTs signed with `auth.secret`, checked by jsonwebtoken.
//!
//! A token is accepted only if its header says HS256 (anything else, `none` included, is refused),
//! its signature verifies, its `sub` equals the requested name exactly, its optional `role` is
//! `user` or `admin`, and its `exp`, when present, is not more than 60 s in the past.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::protocol::Role;

/// Seconds an expired token is still honoured (clock skew).
pub const EXP_LEEWAY_SECS: u64 = 60;

/// The claims chatd reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user name the token is for.
    pub sub: String,
    /// `user` (default) or `admin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Expiry, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// Why a token was refused. Shown to the client only as `unauthorized`; the detail is logged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No token in the hello.
    #[error("no token")]
    Missing,
    /// Bad signature, algorithm, encoding, claims or expiry.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token is for another name.
    #[error("token is for another name")]
    WrongName,
}

/// Verifies tokens with one secret.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier { key: *** }")
    }
}

impl Verifier {
    /// A verifier for tokens signed with `secret`.
    pub fn new(secret: &Secret) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = EXP_LEEWAY_SECS;
        validation.set_required_spec_claims(&["sub"]);
        validation.validate_exp = true;
        Verifier {
            key: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation,
        }
    }

    /// The role a token grants to `name`.
    pub fn verify(&self, token: Option<&str>, name: &str) -> Result<Role, AuthError> {
        let token = token.ok_or(AuthError::Missing)?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        if data.claims.sub != name {
            return Err(AuthError::WrongName);
        }
        Ok(data.claims.role.unwrap_or_default())
    }
}

/// Mints a token for `name` with `role`, valid for `ttl`.
pub fn mint(secret: &Secret, name: &str, role: Role, ttl: Duration) -> Result<String, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let claims = Claims {
        sub: name.to_string(),
        role: Some(role),
        exp: Some(now + ttl.as_secs()),
        iat: Some(now),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )
    .map_err(|e| e.to_string())
}

/// Parses a time-to-live such as `30d`, `12h`, `15m`, `90s` or `3600`.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30d, 12h, 15m or 90s"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(secs)
        .filter(|&s| s > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is not a positive duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new("0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn minted_tokens_verify_for_their_name_only() {
        let v = Verifier::new(&secret());
        let t = mint(&secret(), "alice", Role::Admin, Duration::from_secs(60)).unwrap();
        assert_eq!(v.verify(Some(&t), "alice"), Ok(Role::Admin));
        assert_eq!(v.verify(Some(&t), "Alice"), Err(AuthError::WrongName));
        assert_eq!(v.verify(None, "alice"), Err(AuthError::Missing));
        let other = mint(
            &Secret::new("another secret that is long enough!!"),
            "alice",
            Role::User,
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(matches!(
            v.verify(Some(&other), "alice"),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("3600"), Ok(Duration::from_secs(3600)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("5y").is_err());
        assert!(parse_ttl("abc").is_err());
    }
}
