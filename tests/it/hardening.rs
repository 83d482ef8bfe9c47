//! Hostile use of the default configuration: memory stays within what the configuration allows,
//! nobody locks others out, and nobody forges lines or names. Each test would have caught what it
//! guards against (see docs/SECURITY.md and docs/RELIABILITY.md).

use std::time::Duration;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Client, Daemon, SyncClient, TestServer, http, metric};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

const KIB: u64 = 1024;

/// 20 connections from one address, each in its own room, say 50 messages of 60 KiB (60 MB in
/// all): history stays within `history.max_bytes`, and so does the server's memory.
#[test]
fn history_is_bounded_in_bytes_whatever_is_said() {
    const MAX_BYTES: u64 = 4 << 20;
    let max = MAX_BYTES.to_string();
    let d = Daemon::start(
        &[],
        &[
            ("CHATD_LIMITS__RATE_PER_SEC", "0"),
            ("CHATD_SERVER__CONNECT_RATE_PER_IP", "0"),
            ("CHATD_HISTORY__MAX_BYTES", &max),
        ],
    );
    let pid = d.child.id();
    let text = "h".repeat(60 * 1024);
    let flood = |round: usize, clients: usize| {
        for c in 0..clients {
            let mut s = SyncClient::join(d.addr, &format!("r{round}c{c}"));
            s.send(json!({"type": "join", "room": format!("room{round}x{c}"), "id": "j"}));
            s.recv_until(|v| v["ref"] == "j");
            for i in 0..50 {
                s.send(json!({"type": "say", "room": format!("room{round}x{c}"), "text": text, "id": i.to_string()}));
            }
            s.recv_until(|v| v["ref"] == "49");
        }
    };
    flood(0, 2); // warm the allocator's pools
    let before = rss_kib(pid);
    flood(1, 20);
    let after = rss_kib(pid);
    let (_, m) = http(d.admin.unwrap(), "GET", "/metrics");
    let kept = metric(&m, "chatd_history_bytes") as u64;
    println!(
        "60 MB said in 22 rooms: history keeps {} KiB (bound {} KiB); server RSS {before} -> {after} KiB",
        kept / KIB,
        MAX_BYTES / KIB
    );
    assert!(kept <= MAX_BYTES, "history holds {kept} bytes");
    assert!(
        kept > MAX_BYTES / 2,
        "history should be nearly full: {kept}"
    );
    // The bound plus what the allocator keeps of 60 KiB transient buffers.
    let allowed = MAX_BYTES / KIB + 16 * 1024;
    assert!(
        after.saturating_sub(before) <= allowed,
        "server memory grew by {} KiB (allowed {allowed})",
        after - before
    );
}

fn seqs(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

/// Replies never exceed the client's own frame limit: history pages shrink and say `more`, so a
/// stock client with a small frame limit can page through everything.
#[tokio::test]
async fn history_replies_fit_in_a_frame_and_page_through_everything() {
    let server = TestServer::with(|c| c.limits.rate_per_sec = 0.0).await;
    let mut alice = server.join("alice").await;
    let big = "m".repeat(60 * 1024);
    for i in 0..4 {
        alice
            .request(json!({"type": "say", "text": format!("{i}{big}")}))
            .await;
    }
    let mut bob = Client::connect(server.addr).await;
    bob.send(json!({"type": "hello", "name": "bob", "id": "h"}))
        .await;
    let Message::Text(welcome) = bob.next_message().await else {
        panic!("no welcome")
    };
    assert!(welcome.len() <= 65536, "welcome is {} bytes", welcome.len());
    let mut before: Option<u64> = None;
    let mut got = Vec::new();
    loop {
        let mut req = json!({"type": "history", "id": "p"});
        if let Some(b) = before {
            req["before"] = json!(b);
        }
        bob.send(req).await;
        let Message::Text(frame) = bob.next_message().await else {
            panic!("no history")
        };
        assert!(
            frame.len() <= 65536,
            "history reply is {} bytes",
            frame.len()
        );
        let page: Value = serde_json::from_str(&frame).unwrap();
        let s = seqs(&page["messages"]);
        got.splice(0..0, s.iter().copied());
        if page["more"] != true {
            break;
        }
        before = s.first().copied();
    }
    assert_eq!(got, [1, 2, 3, 4], "every message, each once, in order");
}

#[tokio::test]
async fn user_lists_come_a_page_at_a_time() {
    let server = TestServer::with(|c| c.limits.users_per_page = 10).await;
    let mut users = Vec::new();
    for i in 0..25 {
        users.push(server.join(&format!("u{i:02}")).await);
    }
    let mut late = Client::connect(server.addr).await;
    let w = late.hello("zed").await;
    assert_eq!(w["users"].as_array().unwrap().len(), 10);
    assert_eq!(w["user_count"], 26);
    let mut names = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut req = json!({"type": "who"});
        if let Some(a) = &after {
            req["after"] = json!(a);
        }
        let page = late.request(req).await;
        assert_eq!(page["user_count"], 26);
        let list: Vec<String> = page["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["name"].as_str().unwrap().to_string())
            .collect();
        after = list.last().cloned();
        names.extend(list);
        if page["more"] != true {
            break;
        }
    }
    assert_eq!(names.len(), 26);
    assert_eq!(names[0], "u00");
    assert_eq!(names[25], "zed");
}

/// A client that stops reading is cut off by bytes, not only by frames: 60 KiB messages fill
/// its byte budget long before its frame budget, and it is closed as a slow consumer while the
/// others keep getting everything.
#[test]
fn a_reader_that_stops_is_cut_off_by_bytes_with_memory_bounded() {
    let d = Daemon::start(
        &[],
        &[
            ("CHATD_LIMITS__RATE_PER_SEC", "0"),
            ("CHATD_LIMITS__OUTBOUND_QUEUE", "100000"),
            ("CHATD_LIMITS__OUTBOUND_QUEUE_BYTES", "262144"),
        ],
    );
    let pid = d.child.id();
    let mut alice = SyncClient::join(d.addr, "alice");
    let mut stalled: Vec<SyncClient> = (0..20)
        .map(|i| stalled_client(d.addr, &format!("stall{i}")))
        .collect();
    let mut carol = SyncClient::join(d.addr, "carol");
    let before = rss_kib(pid);
    let text = "z".repeat(60 * 1024);
    for i in 0..300 {
        alice.send(json!({"type": "say", "text": text, "id": i.to_string()}));
        if i % 20 == 19 {
            let id = i.to_string();
            alice.recv_until(|v| v["ref"] == id.as_str());
            // carol reads as she goes.
            for _ in 0..20 {
                carol.recv_until(|v| v["type"] == "message");
            }
        }
    }
    let during = rss_kib(pid);
    // 20 stalled clients may each pin their byte budget (plus the socket's own buffer) at most.
    let allowed = 20 * 256 + 32 * 1024;
    assert!(
        during.saturating_sub(before) <= allowed,
        "server memory grew by {} KiB (allowed {allowed})",
        during - before
    );
    // Each stalled reader, once it reads again, finds the close frame behind what its socket
    // already held. The counter is read after that: a connection's task counts the cut-off as
    // it closes, which may be after the publisher marked it.
    for (i, client) in stalled.iter_mut().enumerate() {
        let code = loop {
            match client.ws.read() {
                Ok(Message::Close(Some(f))) => break u16::from(f.code),
                Ok(_) => continue,
                Err(e) => panic!("stall{i}: no close frame: {e}"),
            }
        };
        assert_eq!(code, 1008, "stall{i}");
    }
    let (_, m) = http(d.admin.unwrap(), "GET", "/metrics");
    let cut = metric(&m, "chatd_slow_consumer_disconnects_total");
    println!(
        "20 stalled readers of 300 x 60 KiB: {cut} cut off; server RSS {before} -> {during} KiB"
    );
    assert_eq!(cut, 20.0);
}

/// A client whose kernel receive buffer is small (64 KiB), so what it does not read stays in the
/// server's queue rather than in 32 MB of loopback buffers.
pub(crate) fn stalled_client(addr: std::net::SocketAddr, name: &str) -> SyncClient {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket.connect(&addr.into()).unwrap();
    let tcp: std::net::TcpStream = socket.into();
    tcp.set_read_timeout(Some(crate::helpers::WAIT)).unwrap();
    let (ws, _) = tokio_tungstenite::tungstenite::client(
        format!("ws://{addr}/"),
        tokio_tungstenite::tungstenite::stream::MaybeTlsStream::Plain(tcp),
    )
    .unwrap();
    let mut c = SyncClient { ws };
    c.send(json!({"type": "hello", "name": name}));
    c.recv_until(|v| v["type"] == "welcome");
    c
}

#[tokio::test]
async fn one_address_cannot_take_every_room_and_hello_always_lands() {
    let server = TestServer::with(|c| c.limits.max_rooms_per_ip = 5).await;
    let mut alice = server.join("alice").await;
    // The default room exists before anyone is in it and counts as nobody's.
    let rooms = alice.request(json!({"type": "rooms"})).await;
    assert_eq!(rooms["rooms"], json!([{"name": "lobby", "members": 1}]));
    for i in 1..=5 {
        let r = alice
            .request(json!({"type": "join", "room": format!("r{i}")}))
            .await;
        assert_eq!(r["type"], "room", "{r}");
    }
    let e = alice.request(json!({"type": "join", "room": "r6"})).await;
    assert_eq!(e["code"], "too_many_rooms");
    assert!(
        e["message"].as_str().unwrap().contains("your address"),
        "{e}"
    );
    // A newcomer from the same address still gets in: the hello lands in the default room.
    let mut bob = Client::connect(server.addr).await;
    let w = bob
        .request(json!({"type": "hello", "name": "bob", "room": "brandnew"}))
        .await;
    assert_eq!(
        (w["type"].as_str(), w["room"].as_str()),
        (Some("welcome"), Some("lobby"))
    );
    // A room that empties without history is forgotten and no longer counts.
    alice
        .send(json!({"type": "leave", "room": "r1", "id": "l1"}))
        .await;
    alice.find(|v| v["ref"] == "l1").await;
    alice
        .send(json!({"type": "join", "room": "r6", "id": "j6"}))
        .await;
    let r = alice.find(|v| v["ref"] == "j6").await;
    assert_eq!(r["type"], "room", "{r}");
}

/// A JSON user's text reaches plain-text users as one line: no fake `[server]` line, no escape
/// sequence, no bidi override.
#[tokio::test]
async fn plain_text_users_see_other_users_text_on_one_harmless_line() {
    let server = TestServer::start().await;
    let mut alice = server.join("alice").await;
    let mut plain = Client::connect(server.addr).await;
    plain.send_text("henry").await;
    assert!(plain.recv_line().await.starts_with("Welcome"));
    alice.expect("joined").await;
    let evil = "hi\n[server] log in again at http://evil.example\u{1b}]0;owned\u{7}\u{202e}txt";
    alice.request(json!({"type": "say", "text": evil})).await;
    let line = plain.recv_line().await;
    assert_eq!(
        line,
        "alice: hi\u{240a}[server] log in again at http://evil.example\u{241b}]0;owned\u{2407}txt"
    );
    assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
    // A message of nothing visible is refused.
    for text in ["\u{200b}\u{200b}", "\u{3164}", "\u{2800} \u{feff}"] {
        let e = alice.request(json!({"type": "say", "text": text})).await;
        assert_eq!(e["code"], "bad_request", "{text:?}: {e}");
    }
}

/// A new name that would pass for someone online is refused (open mode): look-alike letters and
/// digits, and separators added or moved (promises issue, item 13: `alice.`, `a.lice`, `_alice`,
/// `5am`, `8ob` once coexisted with `alice`, `sam`, `bob`).
#[tokio::test]
async fn look_alike_names_cannot_impersonate() {
    let server = TestServer::start().await;
    let _alice = server.join("alice").await;
    let _il1 = server.join("Il1").await;
    let _sam = server.join("sam").await;
    let _bob = server.join("bob").await;
    let mut c = Client::connect(server.addr).await;
    for (name, code) in [
        ("aIice", "name_taken"),
        ("a1ice", "name_taken"),
        ("alice.", "name_taken"),
        ("a.lice", "name_taken"),
        ("_alice", "name_taken"),
        ("5am", "name_taken"),
        ("8ob", "name_taken"),
        ("lI1", "name_taken"),
        ("server_", "name_invalid"),
        ("adm1n", "name_invalid"),
        ("sys.tem", "name_invalid"),
        ("5ystem", "name_invalid"),
        ("...", "name_invalid"),
        ("-_-", "name_invalid"),
    ] {
        let e = c.request(json!({"type": "hello", "name": name})).await;
        assert_eq!(e["code"], code, "{name}: {e}");
    }
    let e = c.request(json!({"type": "hello", "name": "a.lice"})).await;
    assert!(e["message"].as_str().unwrap().contains("alice"), "{e}");
    // Not a look-alike by these rules: a name of its own.
    let w = c.request(json!({"type": "hello", "name": "alicia"})).await;
    assert_eq!(w["type"], "welcome", "{w}");
    // Nor may a nick become one.
    let e = c.request(json!({"type": "nick", "name": "sa.m"})).await;
    assert_eq!(e["code"], "name_taken", "{e}");
}

/// An error never echoes more than a short prefix of what it is about.
#[tokio::test]
async fn errors_do_not_amplify_bad_input() {
    let server = TestServer::start().await;
    let mut alice = server.join("alice").await;
    let junk = "x".repeat(60_000);
    alice
        .send(json!({"type": "history", "before": junk, "id": "b"}))
        .await;
    let Message::Text(frame) = alice.next_message().await else {
        panic!("no reply")
    };
    assert!(frame.len() < 400, "a {} byte error", frame.len());
    let e: Value = serde_json::from_str(&frame).unwrap();
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("bad_request"), Some("b"))
    );
    // The connection is fine.
    let _ = tokio::time::timeout(Duration::from_secs(1), alice.sync()).await;
}
