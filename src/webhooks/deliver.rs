//! One endpoint's deliveries: batches of up to `webhooks.batch_max_events` events (or what
//! arrived within `webhooks.batch_max_ms`), POSTed as `{"events": [...]}` and signed with
//! HMAC-SHA256 over `TIMESTAMP.BODY` (`X-Chatd-Timestamp`, `X-Chatd-Signature: sha256=HEX`).
//! A 5xx, 408, 429, timeout or refused connection is retried with exponential back-off and
//! jitter until `webhooks.retry_window_secs` has passed since the first try, then dropped and
//! counted; any other refusal (4xx) is counted as failed at once. The HTTP client never follows
//! redirects, ignores proxy variables, and resolves names through [`Guard`], which refuses
//! private addresses unless `webhooks.allow_private` is set (server-side request forgery: a
//! name that resolves to 127.0.0.1 or 169.254.169.254 is refused like the address itself).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use sha2::Sha256;
use tokio::time::{Instant, sleep, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Endpoint;
use crate::config::WebhooksConfig;
use crate::sync::lock;

/// The longest pause between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The HTTP client every endpoint shares.
pub(super) fn client(config: &WebhooksConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs_f64(config.timeout_secs))
        .connect_timeout(Duration::from_secs_f64(config.timeout_secs))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_max_idle_per_host(2)
        .user_agent(concat!("chatd/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(Guard {
            allow_private: config.allow_private,
        }))
        .build()
        .unwrap_or_default()
}

/// Name resolution that keeps private addresses out.
#[derive(Debug)]
struct Guard {
    allow_private: bool,
}

impl Resolve for Guard {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let kept: Vec<SocketAddr> = found
                .filter(|a| allow || !crate::addr::is_private(a.ip()))
                .collect();
            if kept.is_empty() {
                let why =
                    format!("{host} resolves to no public address (webhooks.allow_private is off)");
                return Err(why.into());
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

/// How one try went.
enum Tried {
    Delivered,
    /// Worth another try.
    Retry,
    /// The endpoint refused it for good.
    Refused,
}

/// `HMAC-SHA256(secret, "{timestamp}.{body}")`, hex: what `X-Chatd-Signature` carries after
/// `sha256=` (a receiver computes the same and compares in constant time).
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    crate::auth::hex(&mac.finalize().into_bytes())
}

/// Delivers `endpoint`'s queue until `stop`; then tries once more what it holds.
pub(super) async fn run(
    endpoint: Arc<Endpoint>,
    client: reqwest::Client,
    config: WebhooksConfig,
    stop: CancellationToken,
) {
    let batch_wait = Duration::from_millis(config.batch_max_ms);
    let window = Duration::from_secs(config.retry_window_secs);
    loop {
        // Wait for a first event, then for the batch to fill or its time to pass.
        if lock(&endpoint.queue).events.is_empty() {
            tokio::select! {
                () = stop.cancelled() => break,
                () = endpoint.notify.notified() => continue,
            }
        }
        let due = Instant::now() + batch_wait;
        while lock(&endpoint.queue).events.len() < config.batch_max_events {
            tokio::select! {
                () = stop.cancelled() => break,
                r = timeout_at(due, endpoint.notify.notified()) => if r.is_err() { break },
            }
        }
        let (body, n) = take_batch(&endpoint, config.batch_max_events);
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            match send(&endpoint, &client, &body).await {
                Tried::Delivered => {
                    endpoint.count("delivered", n);
                    break;
                }
                Tried::Refused => {
                    endpoint.count("failed", n);
                    break;
                }
                Tried::Retry if stop.is_cancelled() || started.elapsed() >= window => {
                    warn!(endpoint = %endpoint.label, events = n, "webhook: giving up on a delivery");
                    endpoint.count("failed", n);
                    break;
                }
                Tried::Retry => {}
            }
            let backoff = Duration::from_secs(1 << attempt.min(9)).min(MAX_BACKOFF);
            let jittered = backoff.mul_f64(0.5 + fastrand::f64());
            attempt += 1;
            tokio::select! {
                () = stop.cancelled() => {}
                () = sleep(jittered) => {}
            }
        }
        if stop.is_cancelled() {
            break;
        }
    }
    // Shutting down: one try for what is left, then it is counted as dropped.
    let left = lock(&endpoint.queue).events.len();
    if left > 0 {
        let (body, n) = take_batch(&endpoint, left);
        match send(&endpoint, &client, &body).await {
            Tried::Delivered => endpoint.count("delivered", n),
            _ => endpoint.count("dropped", n),
        }
    }
}

/// Takes up to `max` events off the queue: the delivery's body, and how many.
fn take_batch(endpoint: &Endpoint, max: usize) -> (String, u64) {
    let mut queue = lock(&endpoint.queue);
    let n = queue.events.len().min(max);
    let mut body = String::from("{\"events\":[");
    let mut taken = 0;
    for (i, event) in queue.events.drain(..n).enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&event);
        taken += event.len();
    }
    body.push_str("]}");
    queue.bytes -= taken;
    let bytes = queue.bytes;
    drop(queue);
    endpoint
        .queued
        .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    (body, n as u64)
}

/// One try.
async fn send(endpoint: &Endpoint, client: &reqwest::Client, body: &str) -> Tried {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .to_string();
    let secret = endpoint.config.secret.expose().as_bytes();
    let signature = signature(secret, &timestamp, body.as_bytes());
    let started = std::time::Instant::now();
    let sent = client
        .post(&endpoint.config.url)
        .header("content-type", "application/json")
        .header("x-chatd-timestamp", &timestamp)
        .header("x-chatd-signature", format!("sha256={signature}"))
        .header("x-chatd-webhook", &endpoint.label)
        .body(body.to_string())
        .send()
        .await;
    let metrics = &endpoint.metrics;
    let label = endpoint.label.as_str();
    let (status, tried) = match sent {
        Ok(response) => {
            let code = response.status();
            metrics
                .webhook_seconds
                .with_label_values(&[label])
                .observe(started.elapsed().as_secs_f64());
            let tried = if code.is_success() {
                Tried::Delivered
            } else if code.is_server_error() || code.as_u16() == 408 || code.as_u16() == 429 {
                Tried::Retry
            } else {
                debug!(endpoint = %label, status = %code, "webhook refused");
                Tried::Refused
            };
            let class = match code.as_u16() {
                200..=299 => "2xx",
                400..=499 => "4xx",
                500..=599 => "5xx",
                _ => "error",
            };
            (class, tried)
        }
        Err(e) if e.is_timeout() => ("timeout", Tried::Retry),
        Err(e) => {
            debug!(endpoint = %label, error = %e, "webhook delivery failed");
            ("error", Tried::Retry)
        }
    };
    metrics
        .webhook_requests
        .with_label_values(&[label, status])
        .inc();
    tried
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_and_body() {
        // Computed independently: hmac.new(secret, b'1700000000.' + body, sha256) in Python.
        let sig = signature(b"0123456789abcdef", "1700000000", b"{\"events\":[]}");
        assert_eq!(
            sig,
            "1f1c43683e76ee83b09613ab56fa5bdd3ce55f3ee41db00a92e22eea0376899e"
        );
    }
}
