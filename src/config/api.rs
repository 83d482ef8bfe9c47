//! `[api]`: the HTTP API (docs/API.md), on a listener of its own, off by default.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::validate::{at_least, invalid, within};
use super::{Config, ConfigError};

/// `[api]`: where the HTTP API listens and what it allows each key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Socket address of the API listener; empty (the default) disables it. TLS like the chat
    /// port when `tls.cert` is set.
    pub listen: String,
    /// The largest request body accepted (413 past it).
    pub max_body_bytes: usize,
    /// Requests per second each key may make, on average (429 with `Retry-After` past it).
    pub requests_per_sec: f64,
    /// Requests a key may make at once before the rate applies.
    pub burst: u32,
    /// How long a key stays connected to the chat after its last request (it is a member of
    /// the rooms it used meanwhile).
    pub idle_secs: u64,
    /// Time allowed to send a request's body, and for the chat to answer it.
    pub timeout_secs: f64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: String::new(),
            max_body_bytes: 64 * 1024,
            requests_per_sec: 5.0,
            burst: 20,
            idle_secs: 300,
            timeout_secs: 10.0,
        }
    }
}

impl ApiConfig {
    /// The API address, or `None` when disabled (validated by [`Config::validate`]).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

/// `[api]`'s rules: an address, sane limits, and a store to keep the keys in.
pub(super) fn validate(c: &Config) -> Result<(), ConfigError> {
    let a = &c.api;
    if a.listen.is_empty() {
        return Ok(());
    }
    if a.addr().is_none() {
        return Err(invalid(
            "api.listen",
            format!(
                "{:?} is not a socket address such as 127.0.0.1:8003",
                a.listen
            ),
        ));
    }
    within(
        "api.max_body_bytes",
        a.max_body_bytes as u64,
        1024..=16 * 1024 * 1024,
    )?;
    if !(a.requests_per_sec > 0.0 && a.requests_per_sec <= 1e6) {
        return Err(invalid(
            "api.requests_per_sec",
            "must be above 0 and at most 1000000",
        ));
    }
    at_least("api.burst", a.burst as usize, 1)?;
    within("api.idle_secs", a.idle_secs, 1..=86_400)?;
    if !(a.timeout_secs > 0.0 && a.timeout_secs <= 600.0) {
        return Err(invalid(
            "api.timeout_secs",
            "must be above 0 and at most 600",
        ));
    }
    super::validate::needs_store(c, "api.listen", "the API keeps its keys in", "API keys")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(c: &Config) -> Option<&'static str> {
        match validate(c) {
            Err(ConfigError::Invalid { key, .. }) => Some(key),
            _ => None,
        }
    }

    #[test]
    fn the_api_needs_an_address_limits_and_a_store() {
        let mut c = Config::default();
        assert_eq!(refused(&c), None, "off by default");
        c.api.listen = "nowhere".into();
        assert_eq!(refused(&c), Some("api.listen"));
        c.api.listen = "127.0.0.1:0".into();
        assert_eq!(refused(&c), None, "the default store keeps the keys");
        c.api.max_body_bytes = 10;
        assert_eq!(refused(&c), Some("api.max_body_bytes"));
        c.api.max_body_bytes = 4096;
        c.api.requests_per_sec = 0.0;
        assert_eq!(refused(&c), Some("api.requests_per_sec"));
        c.api.requests_per_sec = 1.0;
        c.storage.path = String::new();
        assert_eq!(refused(&c), Some("api.listen"), "no store, no keys");
    }
}
