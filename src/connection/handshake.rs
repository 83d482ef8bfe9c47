//! Before a connection is a WebSocket: TLS, a peek at the request head (garbage gets 400, a plain
//! GET 426), the upgrade with the origin check, and the HTTP refusals at the connection limits.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;

use super::Sockets;
use super::transport::Transport;

/// How long refusals and closes wait for the peer.
pub(super) const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// TLS (when configured) and the WebSocket upgrade; an error carries its metric label.
pub(super) async fn upgrade(
    stream: TcpStream,
    sockets: &Sockets,
) -> Result<(WebSocketStream<Transport>, bool), (&'static str, String)> {
    let transport = match &sockets.tls {
        Some(tls) => match tls.acceptor().accept(stream).await {
            Ok(s) => {
                sockets
                    .metrics
                    .tls_handshakes
                    .with_label_values(&["ok"])
                    .inc();
                Transport::tls(s)
            }
            Err(e) => {
                sockets
                    .metrics
                    .tls_handshakes
                    .with_label_values(&["error"])
                    .inc();
                return Err(("tls", e.to_string()));
            }
        },
        None => match peek_request(&stream).await {
            Head::Upgrade => Transport::plain(stream),
            Head::NotGet => {
                reject(stream, "400 Bad Request", "", NOT_HTTP).await;
                return Err(("garbage", "not an HTTP GET upgrade request".into()));
            }
            Head::PlainGet => {
                reject(
                    stream,
                    "426 Upgrade Required",
                    "Upgrade: websocket\r\n",
                    NOT_UPGRADE,
                )
                .await;
                return Err((
                    "not_upgrade",
                    "an HTTP GET without Upgrade: websocket".into(),
                ));
            }
        },
    };
    let origins = &sockets.config.server.allowed_origins;
    let echo_path = sockets.config.diagnostics.echo_path.as_str();
    let mut echo = false;
    #[allow(clippy::result_large_err)] // the signature is tungstenite's Callback
    let check = |req: &Request, resp: Response| {
        echo = !echo_path.is_empty() && req.uri().path() == echo_path;
        check_origin(origins, req, resp)
    };
    let ws =
        tokio_tungstenite::accept_hdr_async_with_config(transport, check, Some(sockets.ws_config))
            .await
            .map_err(|e| match &e {
                WsError::Http(resp) if resp.status() == StatusCode::FORBIDDEN => {
                    ("origin", e.to_string())
                }
                _ => ("invalid", e.to_string()),
            })?;
    Ok((ws, echo))
}

/// What the peer's request looks like, from its first bytes (peeked, not consumed).
#[derive(Debug, PartialEq)]
enum Head {
    /// A GET asking for a WebSocket upgrade (or too long to tell: tungstenite decides).
    Upgrade,
    /// A well-formed GET without `Upgrade: websocket` (a browser opening `http://host:port/`).
    PlainGet,
    /// Not an HTTP GET at all (garbage, another protocol, junk before the request).
    NotGet,
}

/// How much of a request head is peeked at; longer heads are left to tungstenite's own checks.
const PEEK_LIMIT: usize = 4096;
const NOT_HTTP: &str =
    "this is a WebSocket server: send an HTTP GET request with Upgrade: websocket\n";
const NOT_UPGRADE: &str = "this is a chatd WebSocket chat server: connect with a WebSocket client, \
for example `chatctl --url ws://HOST:PORT connect NAME`\n";

/// Peeks at the request head until it can tell what it is (the handshake timeout bounds this).
async fn peek_request(stream: &TcpStream) -> Head {
    let mut head = vec![0u8; PEEK_LIMIT];
    let mut wait = Duration::from_millis(2);
    let mut seen = 0;
    loop {
        let n = match stream.peek(&mut head).await {
            Ok(0) | Err(_) => return Head::NotGet,
            Ok(n) => n,
        };
        let prefix = n.min(4);
        if head[..prefix] != b"GET "[..prefix] {
            return Head::NotGet;
        }
        if let Some(end) = head[..n].windows(4).position(|w| w == b"\r\n\r\n") {
            return classify_head(&head[..end]);
        }
        if n == PEEK_LIMIT {
            return Head::Upgrade;
        }
        if n == seen {
            // Nothing new since the last look: wait for more of the head.
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(100));
        }
        seen = n;
    }
}

/// Whether a complete GET request head asks for a WebSocket upgrade.
fn classify_head(head: &[u8]) -> Head {
    let upgrade = head.split(|&b| b == b'\n').skip(1).any(|line| {
        let line = String::from_utf8_lossy(line).to_ascii_lowercase();
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim() == "upgrade" && value.split(',').any(|v| v.trim() == "websocket")
        })
    });
    if upgrade {
        Head::Upgrade
    } else {
        Head::PlainGet
    }
}

/// Answers a request that cannot become a WebSocket with `status`, any extra `headers` (each
/// ending in CRLF) and `body`, then closes without losing the answer to a reset.
async fn reject(mut stream: TcpStream, status: &str, headers: &str, body: &str) {
    use tokio::io::AsyncWriteExt;
    let response = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = timeout(CLOSE_LINGER, async {
        if stream.write_all(response.as_bytes()).await.is_ok() {
            half_close_and_drain(&mut stream).await;
        }
    })
    .await;
}

/// Half-closes and discards whatever the peer still sends until it closes too. Dropping a socket
/// with unread input sends a TCP reset, which can destroy our last words (an HTTP refusal, a close
/// frame) in the peer's receive buffer before it reads them. Callers bound this in time.
pub(super) async fn half_close_and_drain<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// Browser clients send `Origin`; when `server.allowed_origins` is set, only those (compared
/// exactly: scheme, host and port) may connect. Requests without `Origin` are not from a browser
/// page and are allowed.
#[allow(clippy::result_large_err)] // the signature is tungstenite's Callback
fn check_origin(
    allowed: &[String],
    req: &Request,
    resp: Response,
) -> Result<Response, ErrorResponse> {
    let Some(origin) = req.headers().get("origin") else {
        return Ok(resp);
    };
    if allowed.is_empty() || allowed.iter().any(|a| a.as_bytes() == origin.as_bytes()) {
        return Ok(resp);
    }
    let mut refusal = ErrorResponse::new(Some("origin not allowed\n".to_string()));
    *refusal.status_mut() = StatusCode::FORBIDDEN;
    Err(refusal)
}

/// Answers an upgrade request over the connection limits with `status` and a one-line reason,
/// then closes (bounded by the handshake timeout).
pub(crate) async fn refuse(stream: TcpStream, sockets: &Sockets, status: u16, why: &'static str) {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    #[allow(clippy::result_large_err)] // the closure's signature is tungstenite's Callback
    let reply = |_: &Request, _: Response| -> Result<Response, ErrorResponse> {
        let mut resp = ErrorResponse::new(Some(format!("{why}\n")));
        *resp.status_mut() = status;
        Err(resp)
    };
    let tls = sockets.tls.as_ref().map(|t| t.acceptor());
    let _ = timeout(sockets.config.server.handshake_timeout(), async {
        let transport = match tls {
            Some(acceptor) => Transport::tls(acceptor.accept(stream).await.ok()?),
            None => Transport::plain(stream),
        };
        tokio_tungstenite::accept_hdr_async(transport, reply)
            .await
            .ok()
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::{Head, classify_head};

    #[test]
    fn a_get_is_an_upgrade_only_with_upgrade_websocket() {
        let browser =
            b"GET / HTTP/1.1\r\nHost: chat:8000\r\nAccept: text/html\r\nConnection: keep-alive";
        assert_eq!(classify_head(browser), Head::PlainGet);
        let ws = b"GET /chat HTTP/1.1\r\nHost: x\r\nupgrade:  WebSocket \r\nConnection: Upgrade";
        assert_eq!(classify_head(ws), Head::Upgrade);
        let listed = b"GET / HTTP/1.1\r\nUpgrade: h2c, websocket\r\n";
        assert_eq!(classify_head(listed), Head::Upgrade);
        // The request line does not count as a header.
        assert_eq!(
            classify_head(b"GET /upgrade:websocket HTTP/1.1"),
            Head::PlainGet
        );
        assert_eq!(
            classify_head(b"GET / HTTP/1.1\r\nX-Upgrade: websocket"),
            Head::PlainGet
        );
    }
}
