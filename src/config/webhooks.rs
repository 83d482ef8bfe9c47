//! `[webhooks]`: signed HTTP POSTs of what happens in the chat to other programs (docs/API.md,
//! "Outgoing webhooks"), configured by the operator, off until an endpoint is listed.

use serde::{Deserialize, Serialize};

use super::validate::{invalid, within};
use super::{Config, ConfigError, Secret};

/// The events an endpoint may ask for.
pub const WEBHOOK_EVENTS: &[&str] = &["message", "mention", "pm", "join", "leave", "room_changed"];
/// Endpoints at most (each is a metric label and a task).
pub const MAX_ENDPOINTS: usize = 32;

/// `[webhooks]`: what every endpoint shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Allow endpoints on loopback, private and link-local addresses (off: such URLs are
    /// refused, and so is a host name that resolves to one, against server-side request forgery).
    pub allow_private: bool,
    /// Events per delivery at most.
    pub batch_max_events: usize,
    /// How long an event may wait for others to share its delivery (ms).
    pub batch_max_ms: u64,
    /// Time allowed for an endpoint to answer one delivery.
    pub timeout_secs: f64,
    /// How long a delivery is retried (5xx, 429, timeouts, refused connections) before it is
    /// dropped and counted.
    pub retry_window_secs: u64,
    /// Bytes of events waiting per endpoint; past it the oldest are dropped and counted.
    pub queue_bytes: usize,
    /// A leave followed by a rejoin within this long sends nothing (reconnects, reloads) (ms).
    pub leave_grace_ms: u64,
    /// The endpoints.
    pub endpoints: Vec<WebhookEndpoint>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            allow_private: false,
            batch_max_events: 100,
            batch_max_ms: 1000,
            timeout_secs: 10.0,
            retry_window_secs: 3600,
            queue_bytes: 1 << 20,
            leave_grace_ms: 5000,
            endpoints: Vec::new(),
        }
    }
}

/// `[[webhooks.endpoints]]`: one receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpoint {
    /// Its name, in the log and the metrics (default: the URL's host).
    #[serde(default)]
    pub name: String,
    /// Where deliveries are POSTed (`https://` or `http://`).
    pub url: String,
    /// The key deliveries are signed with (HMAC-SHA256); at least 16 bytes.
    pub secret: Secret,
    /// Which events it gets (see [`WEBHOOK_EVENTS`]).
    pub events: Vec<String>,
    /// Only these rooms' events (PMs are not a room's); empty: every room.
    #[serde(default)]
    pub rooms: Vec<String>,
}

impl WebhookEndpoint {
    /// The name it goes by: its own, or the URL's host.
    pub fn label(&self) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        url::Url::parse(&self.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_else(|| self.url.clone())
    }
}

/// `[webhooks]`'s rules.
pub(super) fn validate(c: &Config) -> Result<(), ConfigError> {
    let w = &c.webhooks;
    within(
        "webhooks.batch_max_events",
        w.batch_max_events as u64,
        1..=1000,
    )?;
    within("webhooks.batch_max_ms", w.batch_max_ms, 1..=60_000)?;
    if !(w.timeout_secs > 0.0 && w.timeout_secs <= 60.0) {
        return Err(invalid(
            "webhooks.timeout_secs",
            "must be above 0 and at most 60",
        ));
    }
    within(
        "webhooks.retry_window_secs",
        w.retry_window_secs,
        0..=7 * 86_400,
    )?;
    within(
        "webhooks.queue_bytes",
        w.queue_bytes as u64,
        64 * 1024..=1 << 30,
    )?;
    within("webhooks.leave_grace_ms", w.leave_grace_ms, 0..=600_000)?;
    if w.endpoints.len() > MAX_ENDPOINTS {
        return Err(invalid(
            "webhooks.endpoints",
            format!("at most {MAX_ENDPOINTS} endpoints"),
        ));
    }
    let mut labels = Vec::new();
    for (i, e) in w.endpoints.iter().enumerate() {
        let at = |what: String| format!("endpoint {} ({}): {what}", i + 1, e.url);
        let url = url::Url::parse(&e.url)
            .map_err(|err| invalid("webhooks.endpoints.url", at(format!("not a URL: {err}"))))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(invalid(
                "webhooks.endpoints.url",
                at("must be an http:// or https:// URL with a host".into()),
            ));
        }
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
            _ => None,
        };
        if !w.allow_private && literal.is_some_and(crate::addr::is_private) {
            return Err(invalid(
                "webhooks.endpoints.url",
                at(
                    "a loopback or private address (set webhooks.allow_private = true to allow it)"
                        .into(),
                ),
            ));
        }
        if e.secret.expose().len() < 16 {
            return Err(invalid(
                "webhooks.endpoints.secret",
                at("must be at least 16 bytes".into()),
            ));
        }
        if e.events.is_empty() {
            return Err(invalid(
                "webhooks.endpoints.events",
                at(format!("name some of {}", WEBHOOK_EVENTS.join(", "))),
            ));
        }
        if let Some(bad) = e
            .events
            .iter()
            .find(|ev| !WEBHOOK_EVENTS.contains(&ev.as_str()))
        {
            return Err(invalid(
                "webhooks.endpoints.events",
                at(format!(
                    "{bad:?} is not one of {}",
                    WEBHOOK_EVENTS.join(", ")
                )),
            ));
        }
        if let Some(bad) = e
            .rooms
            .iter()
            .find(|r| crate::protocol::normalize_room(r).is_none())
        {
            return Err(invalid(
                "webhooks.endpoints.rooms",
                at(format!("{bad:?} is not a room name")),
            ));
        }
        let label = e.label();
        if labels.contains(&label) {
            return Err(invalid(
                "webhooks.endpoints.name",
                at(format!(
                    "{label:?} names another endpoint too: give each a name"
                )),
            ));
        }
        labels.push(label);
    }
    Ok(())
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

    fn endpoint(url: &str) -> WebhookEndpoint {
        WebhookEndpoint {
            name: String::new(),
            url: url.into(),
            secret: Secret::new("0123456789abcdef"),
            events: vec!["message".into()],
            rooms: vec![],
        }
    }

    #[test]
    fn endpoints_are_checked_and_private_addresses_refused() {
        let mut c = Config::default();
        assert_eq!(refused(&c), None);
        c.webhooks.endpoints = vec![endpoint("https://hooks.example.com/chat")];
        assert_eq!(refused(&c), None);
        c.webhooks.endpoints = vec![endpoint("ftp://hooks.example.com/")];
        assert_eq!(refused(&c), Some("webhooks.endpoints.url"));
        for private in [
            "http://127.0.0.1:9000/",
            "http://[::1]/",
            "http://169.254.169.254/",
        ] {
            c.webhooks.endpoints = vec![endpoint(private)];
            assert_eq!(refused(&c), Some("webhooks.endpoints.url"), "{private}");
        }
        c.webhooks.allow_private = true;
        assert_eq!(refused(&c), None, "allowed");
        c.webhooks.endpoints[0].events = vec!["everything".into()];
        assert_eq!(refused(&c), Some("webhooks.endpoints.events"));
        c.webhooks.endpoints[0].events = vec!["join".into()];
        c.webhooks.endpoints[0].secret = Secret::new("short");
        assert_eq!(refused(&c), Some("webhooks.endpoints.secret"));
        c.webhooks.endpoints = vec![
            endpoint("http://a.example/x"),
            endpoint("http://a.example/y"),
        ];
        assert_eq!(
            refused(&c),
            Some("webhooks.endpoints.name"),
            "two of one label"
        );
    }
}
