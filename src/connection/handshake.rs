//! Before a connection is a WebSocket: TLS, the request head (see `http`: garbage gets 400, a plain
//! GET the chat page (`web`) or, with `web.enabled = false`, 426; a bad upgrade the status that
//! says why), the origin check, the 101, and the HTTP refusals at the connection limits.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::tls::TlsConn;
use super::transport::Transport;
use super::ws::Ws;
use super::{Admission, Sockets, http, proxy};

/// How long refusals and closes wait for the peer.
pub(super) const CLOSE_LINGER: Duration = Duration::from_secs(2);

const NOT_UPGRADE: &str = "this is a chatd WebSocket chat server: connect with a WebSocket client, \
for example `chatctl --url ws://HOST:PORT connect NAME`\n";

/// A connection's first request, answered.
// Returned once per connection and unpacked at once: a Box would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Opened {
    /// A WebSocket, whether it is the diagnostic echo, and the client's address.
    WebSocket(Ws, bool, IpAddr),
    /// A plain HTTP request for the chat page (or a 404/405), answered with this status.
    Page(u16),
    /// Refused at the limits once a proxy said who the client is (the metric label).
    Refused(&'static str),
}

/// TLS (when configured), the request head, and the WebSocket upgrade or the page; an error
/// carries its metric label. Every request that cannot become a WebSocket is answered with a
/// status.
pub(super) async fn upgrade(
    mut stream: TcpStream,
    peer: SocketAddr,
    sockets: &Sockets,
    held: &mut impl Admission,
) -> Result<Opened, (&'static str, String)> {
    let trusted = held.proxied();
    let mut client = peer.ip();
    if trusted && sockets.config.server.proxy_protocol {
        // Before TLS: a load balancer writes the header first, then relays the client's bytes.
        match proxy::read_header(&mut stream).await {
            Ok(Some(addr)) => client = addr.ip(),
            Ok(None) => {}
            Err(e) => return Err(("proxy", e)),
        }
    }
    let mut transport = match &sockets.tls {
        Some(tls) => match TlsConn::accept(stream, tls.config(), &sockets.handshakes).await {
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
        None => Transport::plain(stream),
    };
    let refused = |r: http::Refusal| (r.label, format!("HTTP {}: {}", r.status, r.body.trim()));
    let (head, rest) = match http::read_head(&mut transport).await {
        Ok(read) => read,
        Err(r) => {
            answer(&mut transport, &r).await;
            return Err(refused(r));
        }
    };
    if trusted && !sockets.config.server.proxy_protocol {
        client = proxy::client_from_headers(
            &sockets.trusted_proxies,
            peer.ip(),
            &head,
            sockets.config.server.forwarded_header,
        );
    }
    if trusted {
        if client != peer.ip() {
            tracing::Span::current().record("client", tracing::field::display(client));
        }
        if let Err(refusal) = held.admit(client) {
            tracing::debug!(%client, why = refusal.body.trim(), "refusing connection");
            answer(&mut transport, &refusal).await;
            return Ok(Opened::Refused(refusal.label));
        }
    }
    let tls = sockets.tls.is_some();
    if sockets.config.web.enabled
        && !http::wants_websocket(&head)
        && http::check_basics(&head).is_ok()
    {
        let header = |name| head.one(name).and_then(|v| std::str::from_utf8(v).ok());
        let response = crate::web::answer(&crate::web::Request {
            method: &head.method,
            path: &head.path,
            host: header("host"),
            accept_encoding: header("accept-encoding"),
            if_none_match: header("if-none-match"),
            tls,
        });
        let body: &[u8] = if response.send_body {
            &response.body
        } else {
            b""
        };
        let _ = timeout(CLOSE_LINGER, async {
            if http::respond_sized(
                &mut transport,
                response.status,
                &response.headers,
                body,
                response.body.len(),
            )
            .await
            .is_ok()
            {
                half_close_and_drain(&mut transport).await;
            }
        })
        .await;
        return Ok(Opened::Page(response.status));
    }
    let accept = http::check_basics(&head)
        .and_then(|()| {
            if http::wants_websocket(&head) {
                http::check_upgrade(&head)
            } else if head.method != "GET" && head.method != "HEAD" {
                Err(http::Refusal::new(405, "not_upgrade", NOT_UPGRADE)
                    .with_headers("Allow: GET, HEAD\r\n"))
            } else {
                Err(http::Refusal::new(426, "not_upgrade", NOT_UPGRADE)
                    .with_headers("Upgrade: websocket\r\n"))
            }
        })
        .and_then(|accept| {
            // Behind a trusted proxy that terminates TLS, the page was served over https: its
            // origin is https even though this listener is plain.
            let https = tls
                || (trusted
                    && head
                        .one("x-forwarded-proto")
                        .is_some_and(|p| p.eq_ignore_ascii_case(b"https")));
            check_origin(&sockets.config.server.allowed_origins, &head, https).map(|()| accept)
        });
    let accept = match accept {
        Ok(accept) => accept,
        Err(r) => {
            answer(&mut transport, &r).await;
            return Err(refused(r));
        }
    };
    let echo_path = sockets.config.diagnostics.echo_path.as_str();
    let echo = !echo_path.is_empty() && head.path == echo_path;
    http::switch_protocols(&mut transport, &accept)
        .await
        .map_err(|e| ("invalid", e.to_string()))?;
    let ws = Ws::from_partially_read(transport, rest, sockets.ws_config);
    Ok(Opened::WebSocket(ws, echo, client))
}

/// Answers a request with a refusal (if there is anything to answer), then closes without losing
/// the answer to a reset.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, r: &http::Refusal) {
    if r.status == 0 {
        return;
    }
    let headers = format!("{}Content-Type: text/plain; charset=utf-8\r\n", r.headers);
    let _ = timeout(CLOSE_LINGER, async {
        if http::respond(stream, r.status, &headers, r.body.as_bytes())
            .await
            .is_ok()
        {
            half_close_and_drain(stream).await;
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
/// exactly: scheme, host and port) may connect, and always the server's own origin (the chat
/// page it serves). Requests without `Origin` are not from a browser page and are allowed.
fn check_origin(allowed: &[String], head: &http::Head, tls: bool) -> Result<(), http::Refusal> {
    let Some(origin) = head.one("origin") else {
        return if head.all("origin").next().is_some() {
            Err(http::Refusal::new(
                400,
                "invalid",
                "more than one Origin header\n",
            ))
        } else {
            Ok(())
        };
    };
    // The page this server serves connects back to its own origin. That is taken from the Host
    // header only where no DNS name is involved (an IP address, `localhost`): a page on an
    // attacker's name that resolves to this server (DNS rebinding) sends a Host equal to its
    // own Origin, and must not pass. A page served under a name is allowed by listing it.
    let own = head.one("host").is_some_and(|host| {
        let scheme: &[u8] = if tls { b"https://" } else { b"http://" };
        origin.len() == scheme.len() + host.len()
            && origin.starts_with(scheme)
            && origin[scheme.len()..].eq_ignore_ascii_case(host)
            && host_is_not_a_name(host)
    });
    if own || allowed.is_empty() || allowed.iter().any(|a| a.as_bytes() == origin) {
        return Ok(());
    }
    Err(http::Refusal::new(403, "origin", "origin not allowed\n"))
}

/// Whether a Host header names this server without DNS: an IP address or `localhost`, with or
/// without a port.
fn host_is_not_a_name(host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let bare = match host.rsplit_once(':') {
        // `[v6]:port`, `v4:port`, `name:port`; a bare IPv6 address has colons but no brackets.
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') => {
            name
        }
        Some((name, port)) if name.ends_with(']') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    };
    let bare = bare.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost") || bare.parse::<std::net::IpAddr>().is_ok()
}

/// Answers a request over the connection limits with `status` and a one-line reason, then closes
/// (bounded by the handshake timeout).
pub(crate) async fn refuse(stream: TcpStream, sockets: &Sockets, refusal: &http::Refusal) {
    let tls = sockets.tls.as_ref().map(|t| t.config());
    let _ = timeout(sockets.config.server.handshake_timeout(), async {
        let mut transport = match tls {
            Some(config) => Transport::tls(
                TlsConn::accept(stream, config, &sockets.handshakes)
                    .await
                    .ok()?,
            ),
            None => Transport::plain(stream),
        };
        // Read the request first, so the refusal answers it.
        let _ = http::read_head(&mut transport).await;
        answer(&mut transport, refusal).await;
        Some(())
    })
    .await;
}
