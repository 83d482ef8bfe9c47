//! Token authentication: HS256 JWTs signed with `auth.secret`, checked by jsonwebtoken.
//!
//! A token is accepted only if its header says HS256 (anything else, `none` included, is refused),
//! its signature verifies, its `sub` equals the requested name exactly, its optional `role` is
//! `user` or `admin`, it has an `exp` that is not more than 60 s in the past nor further ahead than
//! `auth.max_ttl`, its `nbf` (if any) has come, and its `iss`/`aud` match when those are configured.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::protocol::Role;

/// `bytes` in lower-case hex (what the store keeps of hashes, and what signatures carry).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

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
    /// Not before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience: one, or a list (RFC 7519 §4.1.3 allows both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// The token's id (`chatd token revoke --jti` names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// A token's `aud`: one string or several.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Audience {
    /// `"aud": "chatd"`.
    One(String),
    /// `"aud": ["chatd", "other"]`.
    Many(Vec<String>),
}

/// What a token must satisfy beyond its signature.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The longest lifetime a token may have left.
    pub max_ttl: Duration,
    /// The required `iss`, if any.
    pub issuer: Option<String>,
    /// The required `aud`, if any.
    pub audience: Option<String>,
}

impl Rules {
    /// The rules `[auth]` sets (`max_ttl` was validated with the config).
    pub fn from_config(auth: &crate::config::AuthConfig) -> Rules {
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Rules {
            max_ttl: parse_ttl(&auth.max_ttl).unwrap_or(Duration::from_secs(90 * 86_400)),
            issuer: nonempty(&auth.issuer),
            audience: nonempty(&auth.audience),
        }
    }
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
    max_ttl: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier { key: *** }")
    }
}

impl Verifier {
    /// A verifier for tokens signed with `secret`, held to `rules`.
    pub fn new(secret: &Secret, rules: &Rules) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = EXP_LEEWAY_SECS;
        let mut required = vec!["sub", "exp"];
        if rules.issuer.is_some() {
            required.push("iss");
        }
        if rules.audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        if let Some(iss) = &rules.issuer {
            validation.set_issuer(&[iss]);
        }
        match &rules.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Verifier {
            key: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation,
            max_ttl: rules.max_ttl,
        }
    }

    /// The role a token grants to `name`.
    pub fn verify(&self, token: Option<&str>, name: &str) -> Result<Role, AuthError> {
        self.verify_token(token, name).map(|(role, _)| role)
    }

    /// The role a token grants to `name`, and the token's id (`jti`) if it has one.
    pub fn verify_token(
        &self,
        token: Option<&str>,
        name: &str,
    ) -> Result<(Role, Option<String>), AuthError> {
        let token = token.ok_or(AuthError::Missing)?;
        // RFC 7515 §4.1.11: a `crit` header lists extensions the recipient must understand or
        // refuse the token; chatd understands none.
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if let Some(crit) = header.crit {
            return Err(AuthError::Invalid(format!(
                "the token's crit header names extensions chatd does not understand: {crit:?}"
            )));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let now = unix_now().map_err(AuthError::Invalid)?;
        let left = data.claims.exp.unwrap_or(u64::MAX).saturating_sub(now);
        if left > self.max_ttl.as_secs() + EXP_LEEWAY_SECS {
            return Err(AuthError::Invalid(format!(
                "the token lives {left} s more, past auth.max_ttl"
            )));
        }
        if data.claims.sub != name {
            return Err(AuthError::WrongName);
        }
        let jti = data.claims.jti.filter(|j| j.len() <= 64);
        Ok((data.claims.role.unwrap_or_default(), jti))
    }
}

fn unix_now() -> Result<u64, String> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|e| e.to_string())
}

/// Mints a token for `name` with `role`, valid for `ttl` (at most `rules.max_ttl`).
pub fn mint(
    secret: &Secret,
    name: &str,
    role: Role,
    ttl: Duration,
    rules: &Rules,
) -> Result<String, String> {
    if ttl > rules.max_ttl {
        return Err(format!(
            "a lifetime of {} s is longer than auth.max_ttl ({} s)",
            ttl.as_secs(),
            rules.max_ttl.as_secs()
        ));
    }
    let now = unix_now()?;
    let exp = now
        .checked_add(ttl.as_secs())
        .ok_or_else(|| "that lifetime does not fit in a timestamp".to_string())?;
    let claims = Claims {
        sub: name.to_string(),
        role: Some(role),
        exp: Some(exp),
        iat: Some(now),
        nbf: None,
        iss: rules.issuer.clone(),
        aud: rules.audience.clone().map(Audience::One),
        jti: Some(token_id()),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )
    .map_err(|e| e.to_string())
}

/// Token lifetimes are written like every other duration in the configuration.
pub use crate::config::parse_ttl;

/// A new token id: 128 random bits in hex (unique, not secret: the signature is the secret).
fn token_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new("0123456789abcdef0123456789abcdef")
    }

    fn rules() -> Rules {
        Rules {
            max_ttl: Duration::from_secs(3600),
            issuer: None,
            audience: None,
        }
    }

    fn sign(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret().expose().as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn tokens_need_a_bounded_expiry_and_honour_nbf_iss_aud() {
        let v = Verifier::new(&secret(), &rules());
        let now = unix_now().unwrap();
        // No exp, or one further ahead than max_ttl: refused.
        let forever = sign(serde_json::json!({"sub": "alice"}));
        assert!(matches!(
            v.verify(Some(&forever), "alice"),
            Err(AuthError::Invalid(_))
        ));
        let far = sign(serde_json::json!({"sub": "alice", "exp": now + 100 * 365 * 86_400}));
        assert!(matches!(
            v.verify(Some(&far), "alice"),
            Err(AuthError::Invalid(_))
        ));
        let soon = sign(serde_json::json!({"sub": "alice", "exp": now + 600}));
        assert_eq!(v.verify(Some(&soon), "alice"), Ok(Role::User));
        let later = sign(serde_json::json!({"sub": "alice", "exp": now + 600, "nbf": now + 300}));
        assert!(matches!(
            v.verify(Some(&later), "alice"),
            Err(AuthError::Invalid(_))
        ));
        let strict = Rules {
            issuer: Some("chat.example".into()),
            audience: Some("chatd".into()),
            ..rules()
        };
        let v = Verifier::new(&secret(), &strict);
        assert!(
            v.verify(Some(&soon), "alice").is_err(),
            "iss and aud are required"
        );
        let minted = mint(
            &secret(),
            "alice",
            Role::User,
            Duration::from_secs(60),
            &strict,
        )
        .unwrap();
        assert_eq!(v.verify(Some(&minted), "alice"), Ok(Role::User));
        // Minting cannot exceed the maximum, nor overflow.
        assert!(
            mint(
                &secret(),
                "a",
                Role::User,
                Duration::from_secs(7200),
                &rules()
            )
            .is_err()
        );
        assert!(parse_ttl("213503982334601d").is_err());
        assert!(parse_ttl("36601d").is_err());
    }

    /// Promises issue, item 14: a `crit` header is refused (RFC 7515 §4.1.11); `aud` may be a
    /// list (RFC 7519 §4.1.3), accepted when it holds the configured audience.
    #[test]
    fn crit_headers_are_refused_and_audience_lists_accepted() {
        let now = unix_now().unwrap();
        let claims = serde_json::json!({"sub": "alice", "exp": now + 600});
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(vec!["exp-ext".into()]);
        let critical = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(secret().expose().as_bytes()),
        )
        .unwrap();
        let v = Verifier::new(&secret(), &rules());
        assert!(matches!(
            v.verify(Some(&critical), "alice"),
            Err(AuthError::Invalid(e)) if e.contains("crit")
        ));
        let strict = Rules {
            audience: Some("chatd".into()),
            ..rules()
        };
        let v = Verifier::new(&secret(), &strict);
        let listed =
            sign(serde_json::json!({"sub": "alice", "exp": now + 600, "aud": ["web", "chatd"]}));
        assert_eq!(v.verify(Some(&listed), "alice"), Ok(Role::User));
        let elsewhere =
            sign(serde_json::json!({"sub": "alice", "exp": now + 600, "aud": ["web", "api"]}));
        assert!(v.verify(Some(&elsewhere), "alice").is_err());
        let single = sign(serde_json::json!({"sub": "alice", "exp": now + 600, "aud": "chatd"}));
        assert_eq!(v.verify(Some(&single), "alice"), Ok(Role::User));
    }

    #[test]
    fn minted_tokens_verify_for_their_name_only() {
        let v = Verifier::new(&secret(), &rules());
        let t = mint(
            &secret(),
            "alice",
            Role::Admin,
            Duration::from_secs(60),
            &rules(),
        )
        .unwrap();
        assert_eq!(v.verify(Some(&t), "alice"), Ok(Role::Admin));
        assert_eq!(v.verify(Some(&t), "Alice"), Err(AuthError::WrongName));
        assert_eq!(v.verify(None, "alice"), Err(AuthError::Missing));
        let other = mint(
            &Secret::new("another secret that is long enough!!"),
            "alice",
            Role::User,
            Duration::from_secs(60),
            &rules(),
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
