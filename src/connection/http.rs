//! The HTTP/1.1 request head that opens every connection, read and answered here: a WebSocket
//! upgrade is checked (RFC 6455 §4.2.1) and accepted, anything else gets a status a client can
//! understand (RFC 6455 §4.2.2, RFC 9110, RFC 9112), over `ws://` and `wss://` alike.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest request head accepted (request line and headers), in bytes.
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The most header fields accepted.
pub(crate) const MAX_HEADERS: usize = 64;

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct Head {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    /// Every value of header `name` (case-insensitive).
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The value of header `name` if it appears exactly once.
    pub fn one<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        let mut all = self.all(name);
        let first = all.next()?;
        all.next().is_none().then_some(first)
    }

    /// Whether a comma-separated header `name` lists `token` (case-insensitive).
    pub fn lists(&self, name: &str, token: &str) -> bool {
        self.all(name).any(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    }
}

/// A request chatd answers with an HTTP status instead of a WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub status: u16,
    /// Extra header lines, each ending in CRLF.
    pub headers: &'static str,
    pub body: String,
    /// The `reason` label of `chatd_handshake_failures_total`.
    pub label: &'static str,
}

impl Refusal {
    pub fn new(status: u16, label: &'static str, body: impl Into<String>) -> Refusal {
        Refusal {
            status,
            headers: "",
            body: body.into(),
            label,
        }
    }

    pub fn with_headers(mut self, headers: &'static str) -> Refusal {
        self.headers = headers;
        self
    }
}

/// The reason phrase for a status chatd sends.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

const NOT_HTTP: &str =
    "this is a WebSocket server: send an HTTP/1.1 GET request with Upgrade: websocket\n";

/// Reads a request head; returns it with the bytes that followed it (the start of the first
/// WebSocket frame, if the client did not wait). Garbage, an oversized head and a closed
/// connection are refusals (`status` 0: nothing to answer).
pub(crate) async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Head, Vec<u8>), Refusal> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| Refusal::new(0, "invalid", ""))?;
        if n == 0 {
            return Err(Refusal::new(0, "invalid", ""));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let head = Head {
                    method: req.method.unwrap_or_default().to_string(),
                    path: req
                        .path
                        .unwrap_or("/")
                        .split('?')
                        .next()
                        .unwrap_or("/")
                        .to_string(),
                    version: req.version.unwrap_or(1),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| (h.name.to_string(), h.value.to_vec()))
                        .collect(),
                };
                return Ok((head, buf[len..].to_vec()));
            }
            Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD_BYTES => {}
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                return Err(Refusal::new(
                    431,
                    "too_large",
                    format!(
                        "request head too large: at most {MAX_HEAD_BYTES} bytes and {MAX_HEADERS} header fields\n"
                    ),
                ));
            }
            Err(_) => return Err(Refusal::new(400, "garbage", NOT_HTTP)),
        }
    }
}

/// Checks what every request must have: a method HTTP knows, HTTP/1.1 and exactly one `Host`
/// (RFC 9112 §3.2).
pub(crate) fn check_basics(head: &Head) -> Result<(), Refusal> {
    const METHODS: &[&str] = &[
        "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    if !METHODS.contains(&head.method.as_str()) {
        // Junk before a request, or another protocol that happens to parse.
        return Err(Refusal::new(400, "garbage", NOT_HTTP));
    }
    if head.version != 1 {
        return Err(Refusal::new(
            505,
            "invalid",
            "chatd speaks HTTP/1.1 (WebSocket needs it)\n",
        ));
    }
    match head.all("host").count() {
        1 => Ok(()),
        0 => Err(Refusal::new(400, "invalid", "missing Host header\n")),
        _ => Err(Refusal::new(400, "invalid", "more than one Host header\n")),
    }
}

/// Whether the request asks for a WebSocket (it has `Upgrade: websocket`).
pub(crate) fn wants_websocket(head: &Head) -> bool {
    head.lists("upgrade", "websocket")
}

/// Checks a WebSocket upgrade request (RFC 6455 §4.2.1) and returns the `Sec-WebSocket-Accept`
/// value to answer with.
pub(crate) fn check_upgrade(head: &Head) -> Result<String, Refusal> {
    if head.method != "GET" {
        return Err(
            Refusal::new(405, "invalid", "a WebSocket upgrade must be a GET\n")
                .with_headers("Allow: GET\r\n"),
        );
    }
    if !head.lists("connection", "upgrade") {
        return Err(Refusal::new(
            400,
            "invalid",
            "an upgrade needs Connection: Upgrade\n",
        ));
    }
    if head.one("sec-websocket-version") != Some(b"13") {
        return Err(
            Refusal::new(426, "invalid", "this server speaks WebSocket version 13\n")
                .with_headers("Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n"),
        );
    }
    let key = head
        .one("sec-websocket-key")
        .filter(|k| is_websocket_key(k))
        .ok_or_else(|| {
            Refusal::new(
                400,
                "invalid",
                "missing or malformed Sec-WebSocket-Key (16 bytes, base64)\n",
            )
        })?;
    Ok(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key))
}

/// A key is 16 random bytes in base64: 22 characters and `==`.
fn is_websocket_key(key: &[u8]) -> bool {
    let key = key.trim_ascii();
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/'))
}

/// Writes a whole response.
pub(crate) async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    headers: &str,
    body: &[u8],
) -> std::io::Result<()> {
    respond_sized(stream, status, headers, body, body.len()).await
}

/// Writes a response whose `Content-Length` is `length` (a `HEAD` sends no body, a 304 none).
pub(crate) async fn respond_sized<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    headers: &str,
    body: &[u8],
    length: usize,
) -> std::io::Result<()> {
    // One write: a client that reads the head may take only what arrived with it.
    let length = if status == 304 {
        String::new()
    } else {
        format!("Content-Length: {length}\r\n")
    };
    let mut response = format!(
        "HTTP/1.1 {status} {}\r\n{headers}{length}Connection: close\r\n\r\n",
        reason(status),
    )
    .into_bytes();
    response.extend_from_slice(body);
    stream.write_all(&response).await?;
    stream.flush().await
}

/// Writes the 101 that completes an upgrade.
pub(crate) async fn switch_protocols<S: AsyncWrite + Unpin>(
    stream: &mut S,
    accept: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(raw: &[u8]) -> Result<(Head, Vec<u8>), Refusal> {
        let mut r = raw;
        read_head(&mut r).await
    }

    fn upgrade(extra: &str) -> String {
        format!(
            "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n{extra}\r\n"
        )
    }

    const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    #[tokio::test]
    async fn a_good_upgrade_is_accepted_with_the_rfc_accept_key() {
        let raw = upgrade(&format!("{KEY}Sec-WebSocket-Version: 13\r\n"));
        let (head, rest) = parse(format!("{raw}\u{81}").as_bytes()).await.unwrap();
        assert!(check_basics(&head).is_ok() && wants_websocket(&head));
        // RFC 6455 §1.3's example.
        assert_eq!(
            check_upgrade(&head).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(head.path, "/chat");
        assert_eq!(rest, "\u{81}".as_bytes(), "bytes after the head are kept");
    }

    #[tokio::test]
    async fn bad_upgrades_get_the_status_that_says_why() {
        let cases = [
            (upgrade(&format!("{KEY}Sec-WebSocket-Version: 8\r\n")), 426),
            (upgrade("Sec-WebSocket-Version: 13\r\n"), 400),
            (
                upgrade("Sec-WebSocket-Key: short==\r\nSec-WebSocket-Version: 13\r\n"),
                400,
            ),
        ];
        for (raw, status) in cases {
            let (head, _) = parse(raw.as_bytes()).await.unwrap();
            assert_eq!(check_upgrade(&head).unwrap_err().status, status, "{raw}");
        }
        let refusal = check_upgrade(
            &parse(upgrade(&format!("{KEY}Sec-WebSocket-Version: 7\r\n")).as_bytes())
                .await
                .unwrap()
                .0,
        )
        .unwrap_err();
        assert!(refusal.headers.contains("Sec-WebSocket-Version: 13"));
        let no_host = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(
            check_basics(&parse(no_host).await.unwrap().0)
                .unwrap_err()
                .status,
            400
        );
        let two_hosts = b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
        assert_eq!(
            check_basics(&parse(two_hosts).await.unwrap().0)
                .unwrap_err()
                .status,
            400
        );
        let old = b"GET / HTTP/1.0\r\nHost: a\r\n\r\n";
        assert_eq!(
            check_basics(&parse(old).await.unwrap().0)
                .unwrap_err()
                .status,
            505
        );
    }

    #[tokio::test]
    async fn oversized_heads_and_garbage_are_refused() {
        let cookie = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nCookie: {}\r\n\r\n",
            "c".repeat(64 * 1024)
        );
        assert_eq!(parse(cookie.as_bytes()).await.unwrap_err().status, 431);
        let many: String = (0..130).map(|i| format!("X-H{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        assert_eq!(parse(many.as_bytes()).await.unwrap_err().status, 431);
        assert_eq!(
            parse(b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
                .await
                .unwrap_err()
                .status,
            400
        );
    }

    #[tokio::test]
    async fn bare_lf_heads_are_read_not_waited_on() {
        let (head, _) = parse(b"GET / HTTP/1.1\nHost: x\n\n").await.unwrap();
        assert_eq!(head.path, "/");
    }
}
