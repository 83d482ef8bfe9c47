//! The chat page chatd serves at `/` (HTTP level; `browser.rs` drives it in Chromium): its
//! headers, compression, revalidation, refusals, the metric, and `web.enabled = false`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{Daemon, SyncClient, http, metric};

/// A response: status, headers (lower-case names), body.
struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }
}

fn ask(addr: SocketAddr, request: &str) -> Reply {
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw)
        .expect("the server answers and closes");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    Reply {
        status,
        headers,
        body,
    }
}

fn get(addr: SocketAddr, path: &str, extra: &str) -> Reply {
    ask(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/html\r\n{extra}\r\n"),
    )
}

#[test]
fn the_page_is_served_with_a_strict_policy_compressed_and_revalidated() {
    let d = Daemon::start(&[], &[]);
    let page = get(d.addr, "/", "Accept-Encoding: gzip, deflate, br\r\n");
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(page.header("content-encoding"), "gzip");
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    assert_eq!(page.header("referrer-policy"), "no-referrer");
    assert_eq!(page.header("cache-control"), "no-cache");
    assert_eq!(page.header("vary"), "Accept-Encoding");
    assert_eq!(
        page.header("content-length"),
        page.body.len().to_string(),
        "the length is the compressed body's"
    );
    // Only the page's own script and style run; it may connect only back to this server.
    let csp = page.header("content-security-policy");
    assert!(
        csp.starts_with("default-src 'none'; script-src 'sha256-"),
        "{csp}"
    );
    assert!(
        csp.contains(&format!("connect-src 'self' ws://{};", d.addr)),
        "{csp}"
    );
    for loose in ["unsafe-inline", "unsafe-eval", "http:", "https:", "*"] {
        assert!(!csp.contains(loose), "{loose} in {csp}");
    }
    let mut html = String::new();
    flate2::read::GzDecoder::new(&page.body[..])
        .read_to_string(&mut html)
        .expect("valid gzip");
    assert!(html.starts_with("<!doctype html>"), "{html:.80}");
    assert!(html.contains("<title>chatd</title>"));
    // Nothing on the page comes from another origin.
    for external in [
        "src=\"http",
        "href=\"http",
        "src=\"//",
        "href=\"//",
        "@import",
    ] {
        assert!(!html.contains(external), "{external}");
    }

    // Uncompressed for a client that does not ask for gzip, the same document.
    let plain = get(d.addr, "/index.html", "");
    assert_eq!(plain.status, 200);
    assert!(!plain.headers.contains_key("content-encoding"));
    assert_eq!(String::from_utf8(plain.body).unwrap(), html);

    // A revalidation with the ETag gets 304 and no body; HEAD the headers only.
    let etag = page.header("etag");
    let again = get(d.addr, "/", &format!("If-None-Match: {etag}\r\n"));
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), etag);
    let head = ask(
        d.addr,
        &format!("HEAD / HTTP/1.1\r\nHost: {}\r\n\r\n", d.addr),
    );
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), html.len().to_string());

    // Other paths and methods are refused plainly, with the same protective headers.
    let missing = get(d.addr, "/favicon.ico", "");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("x-content-type-options"), "nosniff");
    let post = ask(
        d.addr,
        &format!(
            "POST / HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
            d.addr
        ),
    );
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), "GET, HEAD");

    // A WebSocket upgrade on the same path is chat, as always.
    let mut c = SyncClient::join(d.addr, "after_page");
    c.send(json!({"type": "rooms", "id": "r"}));
    c.recv_until(|v| v["ref"] == "r");

    let (_, metrics) = http(d.admin.unwrap(), "GET", "/metrics");
    for (status, want) in [("200", 3.0), ("304", 1.0), ("404", 1.0), ("405", 1.0)] {
        let series = format!(r#"chatd_web_responses_total{{status="{status}"}}"#);
        assert_eq!(metric(&metrics, &series), want, "{series}");
    }
}

#[test]
fn a_hostile_host_header_is_never_echoed_into_the_policy() {
    let d = Daemon::start(&[], &[]);
    let page = ask(
        d.addr,
        "GET / HTTP/1.1\r\nHost: evil.example; script-src *\r\n\r\n",
    );
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy");
    assert!(csp.contains("connect-src 'self';"), "{csp}");
    assert!(!csp.contains("evil"), "{csp}");
}

#[test]
fn with_the_web_client_off_a_browser_gets_426() {
    let d = Daemon::start(&[], &[("CHATD_WEB__ENABLED", "false")]);
    let reply = get(d.addr, "/", "");
    assert_eq!(reply.status, 426);
    assert_eq!(reply.header("upgrade"), "websocket");
    let missing = get(d.addr, "/anything", "");
    assert_eq!(missing.status, 426);
}
