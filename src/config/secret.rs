//! Values that must not be shown: a token secret, and a Redis or PostgreSQL URL with a password. Their
//! `Debug`, `Display` and serialisation (`print-config`, logs) write `***`.

use serde::{Deserialize, Serialize};

/// A Redis or PostgreSQL URL whose password (`redis://user:password@host`) is never shown: `Debug`, `Display`
/// and serialisation (`print-config`) write `***` in its place.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// A URL.
    pub fn new(url: impl Into<String>) -> SecretUrl {
        SecretUrl(url.into())
    }

    /// The URL itself, password included: for connecting, never for output.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no URL is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The URL with its password (if any) written as `***`.
    pub fn redacted(&self) -> String {
        let url = &self.0;
        let Some((scheme, rest)) = url.split_once("://") else {
            return url.clone();
        };
        let Some((userinfo, host)) = rest.rsplit_once('@') else {
            return url.clone();
        };
        let user = userinfo.split_once(':').map_or("", |(u, _)| u);
        if userinfo.contains(':') {
            format!("{scheme}://{user}:***@{host}")
        } else {
            // `redis://password@host` is read as a password by some clients: hide it too.
            format!("{scheme}://***@{host}")
        }
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// A secret string: `Debug` and serialisation show `***`, never the value.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(if self.0.is_empty() { "" } else { "***" })
    }
}

/// Shortest accepted token secret, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;
