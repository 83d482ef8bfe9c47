//! Hostile and unauthorised clients, against the real binaries: token authentication and its
//! failures, admin roles, origin checks, connection-rate caps, oversized upgrade requests, and
//! secrets that never reach output or logs.

use std::io::{Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::helpers::{Daemon, Proc, chatctl_command, chatd_command};
use crate::tls::{path, start_with};

pub(crate) const SECRET: &str = "test-secret-that-is-long-enough-0123456789";

pub(crate) fn token_env() -> Vec<(&'static str, String)> {
    vec![
        ("CHATD_AUTH__MODE", "token".to_string()),
        ("CHATD_AUTH__SECRET", SECRET.to_string()),
    ]
}

/// `chatd token ARGS…` with `secret`: the token it prints (only that).
pub(crate) fn mint(args: &[&str], secret: &str) -> String {
    let out = chatd_command()
        .arg("token")
        .args(args)
        .env("CHATD_AUTH__SECRET", secret)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        token.lines().count(),
        1,
        "only the token is printed: {token:?}"
    );
    token.trim().to_string()
}

/// A blocking client that sends a raw hello and reports what came back.
struct Raw {
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
}

impl Raw {
    fn connect(d: &Daemon) -> Raw {
        let (ws, _) = tungstenite::connect(format!("ws://{}/", d.addr)).unwrap();
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        Raw { ws }
    }
    fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).unwrap();
    }
    fn send_text(&mut self, s: &str) {
        self.ws.send(Message::text(s)).unwrap();
    }
    /// The next JSON frame, or the close code if the server closed.
    fn next(&mut self) -> Result<Value, (u16, String)> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    return Ok(
                        serde_json::from_str(t.as_str()).unwrap_or(json!({"line": t.as_str()}))
                    );
                }
                Ok(Message::Close(Some(f))) => return Err((f.code.into(), f.reason.to_string())),
                Ok(Message::Close(None)) => return Err((1005, String::new())),
                Ok(_) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }
    fn until(&mut self, kind: &str) -> Value {
        loop {
            let v = self
                .next()
                .unwrap_or_else(|c| panic!("closed {c:?} waiting for {kind}"));
            if v["type"] == kind {
                return v;
            }
        }
    }
    fn hello(d: &Daemon, name: &str, token: Option<&str>) -> (Raw, Value) {
        let mut c = Raw::connect(d);
        let mut hello = json!({"type": "hello", "name": name, "id": "h"});
        if let Some(t) = token {
            hello["token"] = json!(t);
        }
        c.send(hello);
        let reply = c.next().expect("a reply to hello");
        (c, reply)
    }
}

fn b64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn expect_unauthorized(d: &Daemon, name: &str, token: Option<&str>) {
    let (mut c, reply) = Raw::hello(d, name, token);
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "unauthorized", "{reply}");
    assert_eq!(reply["ref"], "h");
    assert_eq!(
        c.next().map(|v| v.to_string()),
        Err((1008, "unauthorized".to_string()))
    );
}

#[test]
fn tokens_are_required_verified_and_bound_to_the_name() {
    let d = start_with(&token_env());
    let alice = mint(&["alice", "--role", "admin", "--ttl", "1h"], SECRET);
    assert_eq!(alice.split('.').count(), 3);

    expect_unauthorized(&d, "alice", None);
    expect_unauthorized(&d, "alice", Some("not.a.token"));
    // Signed with another secret (a forgery).
    let forged = mint(
        &["alice", "--role", "admin"],
        "some-other-secret-that-is-long-enough",
    );
    expect_unauthorized(&d, "alice", Some(&forged));
    // Someone else's token: refused, and the name is not taken.
    expect_unauthorized(&d, "bob", Some(&alice));
    // alg: none, and a token expired beyond the 60 s leeway.
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = b64url(
        json!({"sub": "alice", "role": "admin"})
            .to_string()
            .as_bytes(),
    );
    expect_unauthorized(&d, "alice", Some(&format!("{header}.{claims}.")));
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "exp": now() - 120}),
        &key,
    )
    .unwrap();
    expect_unauthorized(&d, "alice", Some(&expired));
    // Another HMAC algorithm with the right secret is still refused: only HS256.
    let hs384 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384),
        &json!({"sub": "alice"}),
        &key,
    )
    .unwrap();
    expect_unauthorized(&d, "alice", Some(&hs384));
    // Tokens that never expire, or live longer than auth.max_ttl (90 days), or are not valid
    // yet, are refused.
    for claims in [
        json!({"sub": "alice"}),
        json!({"sub": "alice", "exp": now() + 100 * 365 * 86_400}),
        json!({"sub": "alice", "exp": now() + 600, "nbf": now() + 300}),
    ] {
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &key,
        )
        .unwrap();
        expect_unauthorized(&d, "alice", Some(&token));
    }
    // chatd token refuses lifetimes past the maximum, and ones that overflow.
    for ttl in ["213503982334601d", "91d"] {
        let out = chatd_command()
            .args(["token", "alice", "--ttl", ttl])
            .env("CHATD_AUTH__MODE", "token")
            .env("CHATD_AUTH__SECRET", SECRET)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--ttl {ttl}");
        assert!(out.stdout.is_empty(), "no token for --ttl {ttl}");
    }
    // Within the leeway, tokens are accepted.
    let recent = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "carol", "exp": now() - 30}),
        &key,
    )
    .unwrap();
    let (_carol, w) = Raw::hello(&d, "carol", Some(&recent));
    assert_eq!(w["type"], "welcome", "{w}");

    let (_alice, w) = Raw::hello(&d, "alice", Some(&alice));
    assert_eq!(w["type"], "welcome", "{w}");
    let me = w["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "alice")
        .unwrap()
        .clone();
    assert_eq!(me["role"], "admin");
    // bob's name was never taken by the failed attempt.
    let bob = mint(&["bob"], SECRET);
    let (_bob, w) = Raw::hello(&d, "bob", Some(&bob));
    assert_eq!(w["type"], "welcome", "{w}");

    // Plain-text sessions cannot authenticate: refused with a line, then 1008.
    let mut plain = Raw::connect(&d);
    plain.send_text("henry");
    let line = plain.next().unwrap();
    assert!(line["line"].as_str().unwrap().contains("token"), "{line}");
    assert_eq!(
        plain.next().map(|v| v.to_string()),
        Err((1008, "token required".into()))
    );

    // chatctl passes --token (or CHATD_TOKEN).
    let out = chatctl_command()
        .args([
            "--url",
            &format!("ws://{}", d.addr),
            "send",
            "--name",
            "dave",
            "hi",
        ])
        .env("CHATD_TOKEN", mint(&["dave"], SECRET))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = chatctl_command()
        .args([
            "--url",
            &format!("ws://{}", d.addr),
            "--token",
            &forged,
            "send",
            "--name",
            "alice",
            "hi",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: unauthorized"));
}

#[test]
fn admins_kick_and_announce_others_may_not() {
    let d = start_with(&token_env());
    let (mut admin, _) = Raw::hello(
        &d,
        "root1",
        Some(&mint(&["root1", "--role", "admin"], SECRET)),
    );
    let (mut bob, _) = Raw::hello(&d, "bob", Some(&mint(&["bob"], SECRET)));
    let (mut carol, _) = Raw::hello(&d, "carol", Some(&mint(&["carol"], SECRET)));
    admin.until("joined");
    bob.send(json!({"type": "join", "room": "dev", "id": "j"}));
    bob.until("room");
    carol.send(json!({"type": "join", "room": "dev", "id": "j"}));
    carol.until("room");
    bob.until("joined");

    let who = {
        admin.send(json!({"type": "who", "id": "w"}));
        admin.until("who")
    };
    assert!(
        who["users"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "root1", "role": "admin"}))
    );

    for req in [
        json!({"type": "kick", "name": "carol", "id": "k"}),
        json!({"type": "announce", "text": "hi", "id": "a"}),
        // Names come from tokens: nobody may take another.
        json!({"type": "nick", "name": "root2", "id": "n"}),
    ] {
        bob.send(req);
        assert_eq!(bob.until("error")["code"], "forbidden");
    }
    admin.send(json!({"type": "kick", "name": "nobody", "id": "k0"}));
    assert_eq!(admin.until("error")["code"], "no_such_user");

    let reason = "é".repeat(100);
    admin.send(json!({"type": "kick", "name": "BOB", "reason": reason, "id": "k1"}));
    let ack = admin.until("ack");
    assert_eq!(ack["ref"], "k1");
    let (code, close_reason) = loop {
        match bob.next() {
            Ok(_) => continue,
            Err(c) => break c,
        }
    };
    assert_eq!(code, 1008);
    assert!(
        close_reason.starts_with("kicked: éé") && close_reason.len() <= 123,
        "{close_reason}"
    );
    // carol sees `kicked` (not `left`) in both rooms she shares with bob.
    let mut rooms = Vec::new();
    for _ in 0..2 {
        let k = carol.until("kicked");
        assert_eq!(
            (k["name"].as_str(), k["by"].as_str()),
            (Some("bob"), Some("root1"))
        );
        assert_eq!(k["reason"], reason.as_str());
        rooms.push(k["room"].as_str().unwrap().to_string());
    }
    rooms.sort();
    assert_eq!(rooms, ["dev", "lobby"]);
    carol.send(json!({"type": "who", "room": "dev", "id": "w2"}));
    assert_eq!(
        carol.until("who")["users"],
        json!([{"name": "carol", "role": "user"}])
    );

    admin.send(json!({"type": "announce", "text": "maintenance at 5", "id": "a1"}));
    let notice = json!({"type": "notice", "from": "root1", "text": "maintenance at 5"});
    assert_eq!(carol.until("notice"), notice);
    // The sender gets the notice too, and an ack.
    let mut got = Vec::new();
    while got.len() < 2 {
        let v = admin.next().unwrap();
        if v["type"] == "notice" || v["type"] == "ack" {
            got.push(v);
        }
    }
    assert!(got.contains(&notice));
    assert!(got.iter().any(|v| v["type"] == "ack" && v["ref"] == "a1"));

    // chatctl's /announce and /kick.
    let mut cmd = chatctl_command();
    cmd.args([
        "--url",
        &format!("ws://{}", d.addr),
        "--token",
        &mint(&["root2", "--role", "admin"], SECRET),
    ])
    .args(["connect", "root2"]);
    let mut root2 = Proc::spawn(cmd);
    root2.expect_out("welcome, root2!");
    root2.write_line("/announce from chatctl");
    assert_eq!(carol.until("notice")["text"], "from chatctl");
    root2.write_line("/kick carol enough");
    root2.close_stdin();
    assert_eq!(root2.wait_exit(), Some(0));
    let closed = loop {
        if let Err(c) = carol.next() {
            break c;
        }
    };
    assert_eq!(closed, (1008, "kicked: enough".to_string()));
}

// ---- hostile clients ---------------------------------------------------------------------------

fn upgrade_with_origin(d: &Daemon, origin: Option<&str>) -> Result<(), u16> {
    let mut req = format!("ws://{}/", d.addr).into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    match tungstenite::connect(req) {
        Ok(_) => Ok(()),
        Err(tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn only_allowed_browser_origins_may_connect() {
    let d = start_with(&[(
        "CHATD_SERVER__ALLOWED_ORIGINS",
        r#"["https://chat.example"]"#.to_string(),
    )]);
    assert_eq!(
        upgrade_with_origin(&d, Some("https://chat.example")),
        Ok(())
    );
    assert_eq!(
        upgrade_with_origin(&d, None),
        Ok(()),
        "non-browser clients send no Origin"
    );
    for bad in [
        "https://evil.example",
        "http://chat.example",
        "https://chat.example:8443",
        "null",
    ] {
        assert_eq!(upgrade_with_origin(&d, Some(bad)), Err(403), "{bad}");
    }
    // The chat page the server serves itself is always allowed: its origin is this Host over
    // the scheme the server speaks (http here; https is refused on a plain listener).
    let own = format!("http://{}", d.addr);
    assert_eq!(upgrade_with_origin(&d, Some(&own)), Ok(()), "{own}");
    let own_tls = format!("https://{}", d.addr);
    assert_eq!(upgrade_with_origin(&d, Some(&own_tls)), Err(403));
    // Promises issue, item 10: a page on a name that resolves to this server (DNS rebinding)
    // sends a Host equal to its Origin; only a listed origin passes by name.
    let rebound = format!("rebind.evil.example:{}", d.addr.port());
    let mut req = format!("ws://{}/", d.addr).into_client_request().unwrap();
    req.headers_mut().insert("Host", rebound.parse().unwrap());
    req.headers_mut()
        .insert("Origin", format!("http://{rebound}").parse().unwrap());
    match tungstenite::connect(req) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 403),
        other => panic!("a rebound page connected: {:?}", other.map(|_| ())),
    }
    let localhost = format!("http://localhost:{}", d.addr.port());
    let mut req = format!("ws://{}/", d.addr).into_client_request().unwrap();
    req.headers_mut().insert(
        "Host",
        format!("localhost:{}", d.addr.port()).parse().unwrap(),
    );
    req.headers_mut()
        .insert("Origin", localhost.parse().unwrap());
    assert!(tungstenite::connect(req).is_ok(), "{localhost}");
    // Without the setting every origin is allowed.
    let open = Daemon::start(&[], &[]);
    assert_eq!(
        upgrade_with_origin(&open, Some("https://anything.example")),
        Ok(())
    );
}

#[test]
fn connection_rate_per_ip_is_capped() {
    let d = start_with(&[
        ("CHATD_SERVER__CONNECT_RATE_PER_IP", "0.5".to_string()),
        ("CHATD_SERVER__CONNECT_BURST_PER_IP", "3".to_string()),
    ]);
    let mut kept = Vec::new();
    for _ in 0..3 {
        kept.push(
            tungstenite::connect(format!("ws://{}/", d.addr))
                .expect("within the burst")
                .0,
        );
    }
    match tungstenite::connect(format!("ws://{}/", d.addr)) {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 429);
            let body =
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).to_string();
            assert!(body.contains("slow down"), "{body}");
        }
        other => panic!("expected HTTP 429, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn huge_upgrade_requests_are_cut_off() {
    let d = Daemon::start(&[], &[]);
    let mut tcp = std::net::TcpStream::connect(d.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut request = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    while request.len() < 200 * 1024 {
        request.push_str(
            "X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        );
    }
    // The server stops reading (and closes) long before 200 KiB of headers.
    let _ = tcp.write_all(request.as_bytes());
    let mut buf = Vec::new();
    match tcp.read_to_end(&mut buf) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the server did not hang up on a 200 KiB request head: {e}"),
    }
    assert!(
        !String::from_utf8_lossy(&buf).contains("101"),
        "the upgrade must not succeed"
    );
    // The server is unharmed.
    let (mut c, w) = Raw::hello(&d, "after", None);
    assert_eq!(w["type"], "welcome");
    c.send(json!({"type": "rooms", "id": "r"}));
    assert_eq!(c.until("rooms")["ref"], "r");
}

#[test]
fn the_secret_and_tokens_never_reach_output_or_logs() {
    let out = chatd_command()
        .arg("print-config")
        .env("CHATD_AUTH__MODE", "token")
        .env("CHATD_AUTH__SECRET", SECRET)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(r#"secret = "***""#), "{text}");
    assert!(!text.contains(SECRET));

    let mut env = token_env();
    env.push(("CHATD_LOG__LEVEL", "debug".to_string()));
    let mut d = start_with(&env);
    let good = mint(&["alice"], SECRET);
    let (alice, w) = Raw::hello(&d, "alice", Some(&good));
    assert_eq!(w["type"], "welcome");
    expect_unauthorized(&d, "bob", Some(&good));
    drop(alice);
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
    let logs: Vec<String> = d.lines.try_iter().collect();
    assert!(
        logs.iter().any(|l| l.contains("unauthorized")),
        "the refusal is logged"
    );
    for line in &logs {
        assert!(
            !line.contains(SECRET) && !line.contains(&good),
            "secret or token in a log line: {line}"
        );
    }
}

/// `chatd token --secret-file`: mints with a file the configuration does not name (the root-only
/// secret systemd hands the service), whatever `auth.secret_file` says.
#[test]
fn token_secret_file_overrides_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let out = chatd_command()
        .args(["token", "alice", "--secret-file", path(&secret_file)])
        .env("CHATD_AUTH__MODE", "token")
        .env(
            "CHATD_AUTH__SECRET_FILE",
            "/run/credentials/chatd.service/nowhere",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let d = start_with(&token_env());
    let (_c, reply) = Raw::hello(&d, "alice", Some(&token));
    assert_eq!(reply["type"], "welcome", "{reply}");
}
