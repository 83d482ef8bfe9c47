//! chatctl's library: everything but the command line. `src/bin/chatctl.rs` parses arguments and
//! calls [`connect`], [`send`] or [`bench::run`].
//!
//! - [`chat`]: the connection loop behind `chatctl connect` (hello, conversation, reconnect with
//!   back-off), driving a [`Frontend`]: [`script`] for piped stdin, [`tui`] for a terminal.
//! - [`input`] (what a typed line means), [`render`] (how events read, and [`render::sanitize`],
//!   the only way received text reaches a terminal), [`editor`] (the input line), [`complete`]
//!   (Tab), [`pace`] (flood control): pure, unit-tested.
//! - [`tls`] (how `wss://` servers are verified) and [`bench`] (`chatctl bench`).
//!
//! The client speaks the protocol through `protocol`'s types, exactly as the server does.

pub mod bench;
pub mod changes;
mod chat;
pub mod complete;
pub mod editor;
pub mod input;
pub mod moderate;
pub mod pace;
pub mod password;
pub mod render;
pub mod script;
pub mod tls;
pub mod tui;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use chat::{Frontend, Options, Status, UiEvent, connect, send};

use crate::protocol::{ClientMsg, ErrorCode, Request, ServerMsg};
use render::sanitize;

/// The WebSocket to the server.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Exit code: every line acknowledged.
pub const EXIT_OK: u8 = 0;
/// Exit code: the server refused something (an error reply, name taken, unauthorized, kicked).
pub const EXIT_REFUSED: u8 = 1;
/// Exit code: bad command line.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: cannot connect, or the connection was lost for good.
pub const EXIT_CONNECT: u8 = 3;

/// How long to wait for the server to answer a hello or a `send`.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to connect: the URL, TLS trust for `wss://`, and the token for hello.
#[derive(Clone)]
pub struct Endpoint {
    /// `ws://` or `wss://` URL.
    pub url: String,
    /// TLS client configuration, for `wss://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Token for servers in token mode.
    pub token: Option<String>,
    /// The account's password, for servers in accounts mode.
    pub password: Option<String>,
    /// Register the account (with this invite, if any) instead of signing in; once registered,
    /// reconnects sign in.
    pub register: Option<Option<String>>,
    /// What `sessions` calls this connection.
    pub device: Option<String>,
}

impl Endpoint {
    /// The name is the user's own (a token or an account vouches for it): never swap it for
    /// another when it is taken.
    pub fn owns_name(&self) -> bool {
        self.token.is_some() || self.password.is_some()
    }
}

/// Exponential back-off with full jitter: attempt n waits a random time in `[0, min(cap, base·2ⁿ)]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Back-off from `base` doubling to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(fastrand::f64())
    }

    /// Start over after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Close codes after which the client must not reconnect: normal closure and policy violations
/// (kicked, abuse, auth failure).
pub fn is_terminal_close(code: u16) -> bool {
    matches!(code, 1000 | 1008)
}

/// Opens the WebSocket (TLS for `wss://`), with one readable line on failure.
pub async fn open(ep: &Endpoint) -> Result<Ws, String> {
    let url = &ep.url;
    let connector = ep.tls.clone().map(tokio_tungstenite::Connector::Rustls);
    let attempt =
        tokio_tungstenite::connect_async_tls_with_config(url.as_str(), None, true, connector);
    match tokio::time::timeout(REPLY_TIMEOUT, attempt).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(describe_connect_error(url, &e)),
        Err(_) => Err(format!("cannot connect to {url}: timed out")),
    }
}

/// What went wrong connecting, in words (never a Debug string).
pub fn describe_connect_error(url: &str, e: &WsError) -> String {
    if let WsError::Http(resp) = e {
        let body = resp
            .body()
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        return format!(
            "server refused the connection: HTTP {} {}",
            resp.status(),
            sanitize(body.trim())
        );
    }
    let text = e.to_string();
    let tls = url.starts_with("wss://");
    let why = if let Some(why) = tls_problem(&text) {
        why.to_string()
    } else if tls && (text.contains("InvalidContentType") || text.contains("CorruptMessage")) {
        "this is not a TLS server: use ws://".to_string()
    } else if !tls
        && (text.contains("HttpFormat")
            || text.contains("httparse")
            || text.contains("Invalid HTTP")
            || text.contains("invalid HTTP"))
    {
        "the server did not answer with HTTP (does it speak TLS? then use wss://)".to_string()
    } else if text.contains("Connection refused") {
        "connection refused (is chatd running there?)".to_string()
    } else if text.contains("Connection reset") && !tls {
        "the connection was reset (if the server speaks TLS, use wss://)".to_string()
    } else {
        sanitize(&text)
    };
    format!("cannot connect to {url}: {why}")
}

/// rustls' certificate errors, in words.
fn tls_problem(text: &str) -> Option<&'static str> {
    let known: &[(&str, &str)] = &[
        (
            "CaUsedAsEndEntity",
            "the certificate is a CA certificate, not a server certificate (make one with `chatd cert`)",
        ),
        (
            "UnknownIssuer",
            "the certificate is not signed by a CA this client trusts (use --ca-cert FILE for a private CA)",
        ),
        (
            "NotValidForName",
            "the certificate is not valid for this host name (check the URL's host, or the certificate's names)",
        ),
        ("Expired", "the certificate has expired"),
        (
            "NotValidYet",
            "the certificate is not valid yet (check the clocks)",
        ),
        ("BadSignature", "the certificate's signature is invalid"),
        ("Revoked", "the certificate has been revoked"),
        (
            "UnsupportedCertVersion",
            "the certificate's format is not supported",
        ),
        (
            "InvalidPurpose",
            "the certificate may not be used by a server",
        ),
    ];
    known
        .iter()
        .find(|(needle, _)| text.contains(needle))
        .map(|(_, why)| *why)
}

/// Why a hello did not lead to a welcome.
#[derive(Debug)]
pub(crate) enum HelloError {
    /// The server answered with an error code.
    Refused { code: ErrorCode, message: String },
    /// Network or protocol trouble.
    Failed(String),
}

/// Says hello and waits for the welcome (returned) or the refusal. Other frames that arrive
/// meanwhile are skipped.
pub(crate) async fn hello(
    ws: &mut Ws,
    ep: &Endpoint,
    name: &str,
    room: &str,
    resume: Option<(u64, &str)>,
) -> Result<ServerMsg<'static>, HelloError> {
    let password = ep.password.clone().map(crate::protocol::Password);
    let msg = match (&ep.register, password) {
        (Some(invite), Some(password)) => ClientMsg::Register {
            name: name.to_string(),
            password,
            invite: invite.clone(),
            room: Some(room.to_string()),
            device: ep.device.clone(),
        },
        (_, password) => ClientMsg::Hello {
            name: name.to_string(),
            room: Some(room.to_string()),
            token: if password.is_some() {
                None
            } else {
                ep.token.clone()
            },
            password,
            since: resume.map(|(since, _)| since),
            epoch: resume.map(|(_, epoch)| epoch.to_string()),
            device: ep.device.clone(),
        },
    };
    let request = Request::new("hello", msg);
    ws.send(Message::text(request.to_json()))
        .await
        .map_err(|e| HelloError::Failed(e.to_string()))?;
    let wait = async {
        while let Some(frame) = ws.next().await {
            let text = match frame {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(f)) => {
                    let reason = f.map(|f| f.reason.to_string()).unwrap_or_default();
                    return Err(HelloError::Failed(format!(
                        "server closed the connection: {}",
                        sanitize(&reason)
                    )));
                }
                Ok(_) => continue,
                Err(e) => return Err(HelloError::Failed(e.to_string())),
            };
            match crate::protocol::decode(text.as_str()) {
                Ok(welcome @ ServerMsg::Welcome { .. }) => return Ok(welcome),
                Ok(ServerMsg::Error {
                    code,
                    message,
                    reference,
                }) if reference.as_deref() == Some("hello") => {
                    return Err(HelloError::Refused {
                        code,
                        message: sanitize(&message),
                    });
                }
                _ => {}
            }
        }
        Err(HelloError::Failed("connection closed".into()))
    };
    tokio::time::timeout(REPLY_TIMEOUT, wait)
        .await
        .unwrap_or_else(|_| Err(HelloError::Failed("no answer to hello".into())))
}

/// The line (and exit code) for a hello that failed.
pub(crate) fn hello_failure(ep: &Endpoint, name: &str, e: &HelloError) -> (String, u8) {
    match e {
        HelloError::Refused { code, message } => {
            let shown = sanitize(name);
            let line = match code {
                ErrorCode::NameTaken if ep.register.is_some() => {
                    format!("error: the account \"{shown}\" exists already")
                }
                ErrorCode::NameTaken if ep.owns_name() => format!(
                    "error: \"{shown}\" is online already on another connection (this server allows one at a time)"
                ),
                ErrorCode::NameTaken => format!("error: name \"{shown}\" is taken"),
                ErrorCode::Unauthorized if ep.password.is_some() => {
                    format!("error: unauthorized: {message}")
                }
                ErrorCode::NameInvalid => {
                    format!("error: name \"{shown}\" is not allowed: {message}")
                }
                ErrorCode::Unauthorized => format!(
                    "error: unauthorized: the server refused the token for \"{shown}\" ({message})"
                ),
                other => format!("error: {message} ({})", other.wire_name()),
            };
            (line, EXIT_REFUSED)
        }
        HelloError::Failed(why) => (format!("error: {why}"), EXIT_CONNECT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(20));
        for n in 0..10 {
            let d = b.next_delay();
            let ceiling = Duration::from_millis(500 * (1 << n)).min(Duration::from_secs(20));
            assert!(d <= ceiling, "attempt {n}: {d:?} > {ceiling:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(500));
    }

    #[test]
    fn tls_errors_read_as_words() {
        let e = "invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))";
        assert!(tls_problem(e).unwrap().contains("is a CA certificate"));
        let e = "invalid peer certificate: UnknownIssuer";
        assert!(tls_problem(e).unwrap().contains("--ca-cert"));
        assert_eq!(tls_problem("fine"), None);
    }
}
