//! Behind a reverse proxy or load balancer (`server.trusted_proxies`): the client's address comes
//! from `X-Forwarded-For`/`Forwarded` or a PROXY protocol header, only from trusted peers, and
//! caps and logs use it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::helpers::{Daemon, http, metric};

/// Opens a WebSocket to `d`, after writing `preamble` (a PROXY header) on the raw socket, with
/// `headers` on the upgrade request. The HTTP status on refusal.
fn open(
    d: &Daemon,
    preamble: &[u8],
    headers: &[(&str, &str)],
) -> Result<tungstenite::WebSocket<TcpStream>, u16> {
    let mut tcp = TcpStream::connect(d.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(preamble).unwrap();
    let mut req = format!("ws://{}/", d.addr).into_client_request().unwrap();
    for (k, v) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        req.headers_mut()
            .append(name, tungstenite::http::HeaderValue::from_str(v).unwrap());
    }
    match tungstenite::client::client(req, tcp) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            Err(r.status().as_u16())
        }
        Err(e) => panic!("{e}"),
    }
}

fn hello(ws: &mut tungstenite::WebSocket<TcpStream>, name: &str) {
    ws.send(Message::text(
        json!({"type": "hello", "name": name}).to_string(),
    ))
    .unwrap();
    loop {
        if let Message::Text(t) = ws.read().unwrap()
            && t.contains("\"welcome\"")
        {
            return;
        }
    }
}

#[test]
fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
    let caps = [("CHATD_SERVER__MAX_CONNECTIONS_PER_IP", "2")];
    // Not trusted: whatever the header says, every connection is 127.0.0.1's.
    let d = Daemon::start(&[], &caps);
    let spoofs = ["203.0.113.1", "203.0.113.2", "203.0.113.3"];
    let mut kept = Vec::new();
    for (i, spoof) in spoofs.iter().enumerate() {
        let r = open(&d, b"", &[("X-Forwarded-For", spoof)]);
        if i < 2 {
            kept.push(r.expect("under the cap"));
        } else {
            assert_eq!(r.err(), Some(503), "a client cannot spoof its address");
        }
    }
    drop(kept);

    // Trusted (the test connects from 127.0.0.1, as a proxy on this host would): each client
    // is counted as itself, and one client is still capped.
    let d = Daemon::start(
        &[],
        &[
            caps[0],
            ("CHATD_SERVER__TRUSTED_PROXIES", r#"["127.0.0.1"]"#),
            ("CHATD_LOG__LEVEL", "info"),
        ],
    );
    let mut kept = Vec::new();
    for spoof in spoofs {
        kept.push(open(&d, b"", &[("X-Forwarded-For", spoof)]).expect("a different client"));
    }
    let same = [("X-Forwarded-For", "1.1.1.1, 198.51.100.7")];
    kept.push(open(&d, b"", &same).unwrap());
    kept.push(open(&d, b"", &[("X-Forwarded-For", "9.9.9.9, 198.51.100.7")]).unwrap());
    assert_eq!(
        open(&d, b"", &same).err(),
        Some(503),
        "the real client's cap"
    );
    // The logs name the real client.
    hello(&mut kept[0], "proxied");
    let joined = d.line("user joined");
    assert!(joined.contains("\"client\":\"203.0.113.1\""), "{joined}");
    // So does the line when they go, with their name (the session has let it go by then).
    drop(kept.remove(0));
    let left = d.line("user left");
    assert!(left.contains("\"client\":\"203.0.113.1\""), "{left}");
    assert!(left.contains("\"user\":\"proxied\""), "{left}");
    let (_, m) = http(d.admin.unwrap(), "GET", "/metrics");
    assert_eq!(
        metric(&m, r#"chatd_connections_refused_total{reason="per_ip"}"#),
        1.0
    );
}

#[test]
fn proxy_protocol_v1_and_v2_headers_give_the_client() {
    let d = Daemon::start(
        &[],
        &[
            ("CHATD_SERVER__MAX_CONNECTIONS_PER_IP", "1"),
            ("CHATD_SERVER__TRUSTED_PROXIES", r#"["127.0.0.0/8"]"#),
            ("CHATD_SERVER__PROXY_PROTOCOL", "true"),
        ],
    );
    let v1 = |ip: &str| format!("PROXY TCP4 {ip} 10.0.0.1 40000 8000\r\n").into_bytes();
    let v2 = |ip: [u8; 4]| {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0, 12]);
        h.extend_from_slice(&ip);
        h.extend_from_slice(&[10, 0, 0, 1, 0x9c, 0x40, 0x1f, 0x40]);
        h
    };
    let mut a = open(&d, &v1("192.0.2.1"), &[]).expect("v1");
    let _b = open(&d, &v2([192, 0, 2, 2]), &[]).expect("v2");
    let _c = open(&d, b"PROXY TCP6 2001:db8::5 2001:db8::1 1 2\r\n", &[]).expect("v1 TCP6");
    // The cap of one applies to each client, not to the balancer.
    assert_eq!(open(&d, &v1("192.0.2.1"), &[]).err(), Some(503));
    assert_eq!(open(&d, &v2([192, 0, 2, 2]), &[]).err(), Some(503));
    // A health check (LOCAL) counts as the balancer itself.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    let _health = open(&d, &local, &[]).expect("LOCAL");
    hello(&mut a, "balanced");

    // No header, or garbage: refused before anything else is read.
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"PROXY nonsense\r\n",
    ] {
        let mut tcp = TcpStream::connect(d.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tcp.write_all(junk).unwrap();
        let mut reply = Vec::new();
        let _ = tcp.read_to_end(&mut reply);
        assert!(reply.is_empty(), "{}", String::from_utf8_lossy(&reply));
    }
    let (_, m) = http(d.admin.unwrap(), "GET", "/metrics");
    assert_eq!(
        metric(&m, r#"chatd_handshake_failures_total{reason="proxy"}"#),
        2.0
    );
    assert_eq!(
        metric(&m, r#"chatd_connections_refused_total{reason="per_ip"}"#),
        2.0
    );
}

/// Behind a proxy that terminates TLS (nginx), the page the server serves has an https origin;
/// it passes the origin check only when a trusted proxy says so (`X-Forwarded-Proto: https`).
#[test]
fn the_page_behind_a_tls_terminating_proxy_keeps_its_own_origin() {
    let strict = (
        "CHATD_SERVER__ALLOWED_ORIGINS",
        r#"["https://elsewhere.example"]"#,
    );
    let trusted = Daemon::start(
        &[],
        &[
            strict,
            ("CHATD_SERVER__TRUSTED_PROXIES", r#"["127.0.0.1"]"#),
        ],
    );
    let untrusted = Daemon::start(&[], &[strict]);
    for (d, believed) in [(&trusted, true), (&untrusted, false)] {
        let origin = format!("https://{}", d.addr);
        let via_tls = [("Origin", origin.as_str()), ("X-Forwarded-Proto", "https")];
        let r = open(d, b"", &via_tls).map(|_| ());
        assert_eq!(r, if believed { Ok(()) } else { Err(403) });
        assert_eq!(
            open(d, b"", &[("Origin", origin.as_str())]).map(|_| ()),
            Err(403)
        );
        assert_eq!(
            open(
                d,
                b"",
                &[
                    ("Origin", "https://evil.example"),
                    ("X-Forwarded-Proto", "https")
                ]
            )
            .map(|_| ()),
            Err(403)
        );
    }
}

/// Promises issue, item 9: behind the documented nginx setup (it sets `X-Forwarded-For` and passes
/// other headers through), a client's own `Forwarded: for=X` once won: one client got past a cap
/// of 3 with 8 connections, and 3 connections claiming someone else's address locked that one
/// out. Only `server.forwarded_header` is read now.
#[test]
fn only_the_configured_forwarding_header_is_believed() {
    let d = Daemon::start(
        &[],
        &[
            ("CHATD_SERVER__MAX_CONNECTIONS_PER_IP", "3"),
            ("CHATD_SERVER__TRUSTED_PROXIES", r#"["127.0.0.1"]"#),
        ],
    );
    // One client (nginx appended its address, 198.51.100.7), each time claiming another.
    let mut kept = Vec::new();
    for i in 0..8 {
        let claim = format!("for=203.0.113.{i}");
        let r = open(
            &d,
            b"",
            &[("Forwarded", &claim), ("X-Forwarded-For", "198.51.100.7")],
        );
        if i < 3 {
            kept.push(r.expect("under the cap"));
        } else {
            assert_eq!(r.err(), Some(503), "connection {i} got past the cap");
        }
    }
    // Claiming the victim's address in `Forwarded` does not use up the victim's budget.
    let mut victims = Vec::new();
    for _ in 0..3 {
        victims
            .push(open(&d, b"", &[("X-Forwarded-For", "192.0.2.9")]).expect("the victim connects"));
    }
    drop(kept);
    drop(victims);
}
