//! The browser chat client, served at `GET /` on the chat port (plain and TLS) when `web.enabled`.
//!
//! One HTML document with its style and script inlined, so the first render needs one request
//! (then the WebSocket). The sources (`index.html`, `app.css`, `kit.js` + `unread.js` + `rooms.js` + `changes.js` + `signin.js` + `app.js`) are embedded in the
//! binary; the document is assembled once, with the SHA-256 of its one `<style>` and one
//! `<script>` in the `Content-Security-Policy`: nothing else inline runs, nothing loads from
//! another origin, and the page may connect only to this origin's `ws://`/`wss://`. It is sent
//! gzip-compressed when the browser accepts it, with an `ETag` (a revalidation gets 304).
//!
//! This module answers HTTP requests described by [`Request`]; `connection` reads and writes them.

use std::borrow::Cow;
use std::io::Write as _;
use std::sync::OnceLock;

use base64::Engine as _;
use sha2::{Digest, Sha256};

const TEMPLATE: &str = include_str!("index.html");
const STYLE: &str = include_str!("app.css");
/// The page's one script: the kit (text and time helpers), what is unread, rooms that belong to
/// someone, the sign-in form, then the client.
const SCRIPT: &str = concat!(
    include_str!("kit.js"),
    include_str!("unread.js"),
    include_str!("rooms.js"),
    include_str!("changes.js"),
    include_str!("signin.js"),
    include_str!("app.js")
);

/// The assembled page.
pub struct Page {
    html: Vec<u8>,
    gzip: Vec<u8>,
    etag: String,
    script_hash: String,
    style_hash: String,
}

fn sha256_base64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
}

/// The page, assembled on first use.
pub fn page() -> &'static Page {
    static PAGE: OnceLock<Page> = OnceLock::new();
    PAGE.get_or_init(|| {
        let html = TEMPLATE
            .replacen("/*@STYLE@*/", STYLE, 1)
            .replacen("/*@SCRIPT@*/", SCRIPT, 1);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        // Writing to a Vec cannot fail.
        let _ = gz.write_all(html.as_bytes());
        let gzip = gz.finish().unwrap_or_default();
        let digest = Sha256::digest(html.as_bytes());
        let etag = format!(
            "\"{}\"",
            digest[..12]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        Page {
            etag,
            script_hash: sha256_base64(SCRIPT),
            style_hash: sha256_base64(STYLE),
            html: html.into_bytes(),
            gzip,
        }
    })
}

impl Page {
    /// The uncompressed document.
    pub fn html(&self) -> &[u8] {
        &self.html
    }

    /// The policy: only the page's own style and script, connections only to this origin.
    fn csp(&self, host: Option<&str>, tls: bool) -> String {
        // `'self'` covers ws:/wss: of the same host in current browsers; the explicit source is
        // for older ones. A Host that is not a plain host[:port] is left out (never echoed).
        let origin = host
            .filter(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
            })
            .map(|h| format!(" {}://{h}", if tls { "wss" } else { "ws" }))
            .unwrap_or_default();
        format!(
            "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; \
             connect-src 'self'{origin}; img-src data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
            self.script_hash, self.style_hash
        )
    }
}

/// What [`answer`] needs of an HTTP request that is not a WebSocket upgrade.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `HEAD`, …
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The `Host` header.
    pub host: Option<&'a str>,
    /// The `Accept-Encoding` header.
    pub accept_encoding: Option<&'a str>,
    /// The `If-None-Match` header.
    pub if_none_match: Option<&'a str>,
    /// Whether it came over TLS.
    pub tls: bool,
}

/// An HTTP response: status, header lines (each ending in CRLF, without `Content-Length`), body,
/// and whether the body is sent (not for `HEAD`).
#[derive(Debug)]
pub struct Response {
    /// The status.
    pub status: u16,
    /// Header lines.
    pub headers: String,
    /// The body (its length is the `Content-Length` even when it is not sent).
    pub body: Cow<'static, [u8]>,
    /// False for `HEAD`.
    pub send_body: bool,
}

/// Headers every response from the chat port carries.
const COMMON: &str = "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n";

fn text(status: u16, extra: &str, body: &'static str) -> Response {
    Response {
        status,
        headers: format!(
            "{COMMON}{extra}Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n"
        ),
        body: Cow::Borrowed(body.as_bytes()),
        send_body: true,
    }
}

/// Whether an `Accept-Encoding` value accepts gzip (`q=0` refuses it).
fn accepts_gzip(accept: &str) -> bool {
    accept.split(',').any(|item| {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .filter_map(|q| q.trim().parse::<f32>().ok())
            .next()
            .unwrap_or(1.0);
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && q > 0.0
    })
}

/// Answers a plain HTTP request: the page at `/`, 404 elsewhere, 405 for other methods.
pub fn answer(req: &Request<'_>) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        return text(
            405,
            "Allow: GET, HEAD\r\n",
            "only GET and HEAD are served here\n",
        );
    }
    if req.path != "/" && req.path != "/index.html" {
        return text(404, "", "not found: the chat is at /\n");
    }
    let page = page();
    let mut headers = format!(
        "{COMMON}Content-Type: text/html; charset=utf-8\r\nContent-Security-Policy: {}\r\n\
         X-Frame-Options: DENY\r\nCache-Control: no-cache\r\nETag: {}\r\nVary: Accept-Encoding\r\n",
        page.csp(req.host, req.tls),
        page.etag
    );
    let fresh = req.if_none_match.is_some_and(|tags| {
        tags.split(',')
            .any(|t| t.trim().trim_start_matches("W/") == page.etag || t.trim() == "*")
    });
    if fresh {
        return Response {
            status: 304,
            headers,
            body: Cow::Borrowed(b""),
            send_body: false,
        };
    }
    let gzip = req.accept_encoding.is_some_and(accepts_gzip);
    if gzip {
        headers.push_str("Content-Encoding: gzip\r\n");
    }
    Response {
        status: 200,
        headers,
        body: Cow::Borrowed(if gzip { &page.gzip } else { &page.html }),
        send_body: req.method == "GET",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Request<'_> {
        Request {
            method: "GET",
            path,
            host: Some("127.0.0.1:8000"),
            accept_encoding: None,
            if_none_match: None,
            tls: false,
        }
    }

    #[test]
    fn the_page_is_one_small_document_with_its_style_and_script_inlined() {
        let html = std::str::from_utf8(page().html()).unwrap();
        assert!(html.len() < 100_000, "the page is {} bytes", html.len());
        assert!(!html.contains("/*@STYLE@*/") && !html.contains("/*@SCRIPT@*/"));
        assert_eq!(
            html.matches("<script>").count(),
            1,
            "exactly the one allowed script"
        );
        assert_eq!(html.matches("<style>").count(), 1);
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "no other origin"
        );
    }

    #[test]
    fn the_policy_allows_only_the_pages_own_script_and_this_origin() {
        let r = answer(&get("/"));
        assert_eq!(r.status, 200);
        let csp = r
            .headers
            .lines()
            .find_map(|l| l.strip_prefix("Content-Security-Policy: "))
            .unwrap();
        assert!(csp.contains(&format!("script-src 'sha256-{}'", sha256_base64(SCRIPT))));
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert!(
            csp.contains("connect-src 'self' ws://127.0.0.1:8000;"),
            "{csp}"
        );
        let tls = answer(&Request {
            tls: true,
            ..get("/")
        });
        assert!(
            tls.headers
                .contains("connect-src 'self' wss://127.0.0.1:8000;")
        );
        let odd = answer(&Request {
            host: Some("evil\"; script-src *"),
            ..get("/")
        });
        assert!(
            odd.headers.contains("connect-src 'self';"),
            "{}",
            odd.headers
        );
    }

    #[test]
    fn gzip_when_accepted_and_304_when_fresh() {
        let plain = answer(&get("/"));
        assert!(!plain.headers.contains("Content-Encoding"));
        let gz = answer(&Request {
            accept_encoding: Some("br, gzip;q=0.8"),
            ..get("/")
        });
        assert!(gz.headers.contains("Content-Encoding: gzip\r\n"));
        assert!(gz.body.len() < plain.body.len() / 2);
        let refused = answer(&Request {
            accept_encoding: Some("gzip;q=0"),
            ..get("/")
        });
        assert!(!refused.headers.contains("Content-Encoding"));
        let etag = page().etag.clone();
        let fresh = answer(&Request {
            if_none_match: Some(&etag),
            ..get("/")
        });
        assert_eq!((fresh.status, fresh.body.len()), (304, 0));
    }

    #[test]
    fn other_paths_and_methods_are_refused() {
        assert_eq!(answer(&get("/admin")).status, 404);
        assert_eq!(answer(&get("/index.html")).status, 200);
        let post = answer(&Request {
            method: "POST",
            ..get("/")
        });
        assert_eq!(post.status, 405);
        assert!(post.headers.contains("Allow: GET, HEAD"));
        let head = answer(&Request {
            method: "HEAD",
            ..get("/")
        });
        assert_eq!((head.status, head.send_body), (200, false));
        assert_eq!(head.body.len(), page().html().len());
    }
}
