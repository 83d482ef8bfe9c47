//! Every connection rule and its close code, including hostile clients that speak raw bytes.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::helpers::{Client, TestServer, WAIT};

/// A client below the WebSocket library: raw TCP, a hand-written upgrade, raw frames.
struct RawClient {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    async fn upgrade(addr: std::net::SocketAddr) -> RawClient {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(
            b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        let mut c = RawClient {
            tcp,
            buf: Vec::new(),
        };
        let head = c.read_until_blank_line().await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        c
    }

    async fn read_until_blank_line(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                self.buf.drain(..end + 4);
                return head;
            }
            self.fill().await.expect("connection closed during upgrade");
        }
    }

    async fn fill(&mut self) -> Option<()> {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("read timed out")
            .ok()?;
        if n == 0 {
            return None;
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Some(())
    }

    /// A masked client frame.
    async fn send_frame(&mut self, first: u8, payload: &[u8]) {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![first];
        assert!(payload.len() < 126);
        f.push(0x80 | payload.len() as u8);
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&f).await.unwrap();
    }

    /// Reads server frames until a close frame; returns its code (None if TCP closed first).
    async fn close_code(&mut self) -> Option<u16> {
        loop {
            while self.buf.len() >= 4 {
                let (head, len) = match self.buf[1] & 0x7f {
                    126 => (4, u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize),
                    127 => panic!("test server frames are under 64 KiB"),
                    n => (2, n as usize),
                };
                if self.buf.len() < head + len {
                    break;
                }
                let opcode = self.buf[0] & 0x0f;
                let payload: Vec<u8> = self.buf[head..head + len].to_vec();
                self.buf.drain(..head + len);
                if opcode == 0x8 {
                    return Some(u16::from_be_bytes([payload[0], payload[1]]));
                }
            }
            self.fill().await?;
        }
    }
}

#[tokio::test]
async fn oversized_message_gets_1009() {
    let server = TestServer::with(|c| c.limits.max_message_bytes = 4096).await;
    let mut c = server.join("alice").await;
    let big = "x".repeat(5000);
    c.send(json!({"type": "say", "text": big})).await;
    assert_eq!(c.closed().await.0, 1009);
    // The server still serves others.
    server.join("bob").await.sync().await;
}

#[tokio::test]
async fn invalid_utf8_gets_1007() {
    let server = TestServer::start().await;
    let mut c = server.join("alice").await;
    let frame = Frame::message(vec![0xff, 0xfe, b'h', b'i'], OpCode::Data(Data::Text), true);
    c.ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(c.closed().await.0, 1007);
}

#[tokio::test]
async fn unmasked_client_frames_get_1002() {
    let server = TestServer::start().await;
    let mut raw = RawClient::upgrade(server.addr).await;
    // FIN + text, no mask bit.
    raw.tcp.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    assert_eq!(raw.close_code().await, Some(1002));
}

#[tokio::test]
async fn reserved_bits_and_opcodes_get_1002() {
    let server = TestServer::start().await;
    let mut raw = RawClient::upgrade(server.addr).await;
    raw.send_frame(0x80 | 0x40 | 0x1, b"hi").await; // RSV1 set
    assert_eq!(raw.close_code().await, Some(1002));
    let mut raw = RawClient::upgrade(server.addr).await;
    raw.send_frame(0x80 | 0x3, b"hi").await; // reserved data opcode
    assert_eq!(raw.close_code().await, Some(1002));
}

#[tokio::test]
async fn rate_limit_rejects_then_closes_abusers() {
    let server = TestServer::with(|c| {
        c.limits.rate_burst = 5;
        c.limits.rate_per_sec = 0.5;
        c.limits.abuse_strikes = 3;
    })
    .await;
    let mut alice = server.join("alice").await;
    let mut bob = server.join("bob").await;
    alice.expect("joined").await;
    // hello took one token; four more requests fit in the burst.
    for i in 0..4 {
        let ack = bob
            .request(json!({"type": "say", "text": format!("m{i}")}))
            .await;
        assert_eq!(ack["type"], "ack");
    }
    let e = bob
        .request(json!({"type": "say", "text": "too fast"}))
        .await;
    assert_eq!(e["code"], "rate_limited");
    // Typing has its own budget.
    bob.send(json!({"type": "typing", "room": "lobby", "state": "active"}))
        .await;
    for i in 0..4 {
        assert_eq!(alice.expect("message").await["text"], format!("m{i}"));
    }
    assert_eq!(alice.expect("typing").await["from"], "bob");
    // The rejected message was not delivered.
    alice.sync().await;
    let e = bob.request(json!({"type": "say", "text": "again"})).await;
    assert_eq!(e["code"], "rate_limited");
    let e = bob.request(json!({"type": "say", "text": "again"})).await;
    assert_eq!(e["code"], "rate_limited");
    bob.send(json!({"type": "say", "text": "abuse"})).await;
    assert_eq!(bob.closed().await.0, 1008);
}

#[tokio::test]
async fn connection_caps_refuse_with_503() {
    let server = TestServer::with(|c| c.server.max_connections = 2).await;
    let _a = Client::connect(server.addr).await;
    let _b = Client::connect(server.addr).await;
    match tokio_tungstenite::connect_async(server.url()).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            let body =
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).to_string();
            assert!(body.contains("capacity"), "{body}");
        }
        other => panic!("expected HTTP 503, got {other:?}"),
    }
    drop(_a);
    // The slot frees once the server sees the close; poll with a deadline.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if tokio_tungstenite::connect_async(server.url()).await.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::task::yield_now().await;
    }

    let server = TestServer::with(|c| c.server.max_connections_per_ip = 1).await;
    let _a = Client::connect(server.addr).await;
    match tokio_tungstenite::connect_async(server.url()).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected HTTP 503, got {other:?}"),
    }
}

#[tokio::test]
async fn hello_and_upgrade_must_finish_within_the_handshake_timeout() {
    let server = TestServer::with(|c| c.server.handshake_timeout_secs = 0.3).await;
    // Upgraded but never says hello: close 1008.
    let mut silent = Client::connect(server.addr).await;
    let started = std::time::Instant::now();
    assert_eq!(silent.closed().await.0, 1008);
    assert!(started.elapsed() < Duration::from_secs(3));
    // Slowloris: half an upgrade request, then nothing. The server hangs up.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .expect("server kept the slowloris open");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // A normal client meanwhile is served.
    server.join("prompt").await.sync().await;
}

#[tokio::test]
async fn silent_peers_are_closed_and_responsive_ones_kept() {
    let server = TestServer::with(|c| c.server.ping_interval_secs = 0.2).await;
    // The raw client never answers pings.
    let mut raw = RawClient::upgrade(server.addr).await;
    raw.send_frame(0x81, br#"{"type":"hello","name":"mute"}"#)
        .await;
    let started = std::time::Instant::now();
    assert_eq!(raw.close_code().await, Some(1001));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_secs(3),
        "{waited:?}"
    );

    // A real client answers pings (the library replies as it reads) and stays.
    let mut alive = server.join("alive").await;
    let until = tokio::time::Instant::now() + Duration::from_millis(1000);
    let mut pings = 0;
    while let Ok(frame) = tokio::time::timeout_at(until, alive.ws.next()).await {
        match frame {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 3, "only {pings} pings in 1 s at a 0.2 s interval");
    alive.sync().await;
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_without_holding_up_others() {
    const MESSAGES: usize = 300;
    let server = TestServer::with(|c| {
        c.limits.rate_per_sec = 0.0;
        c.limits.outbound_queue = 64;
        c.server.write_timeout_secs = 2.0;
    })
    .await;
    let mut alice = server.join("alice").await;
    let mut slow = server.join("slow").await;
    let mut carol = server.join("carol").await;
    alice.expect("joined").await;
    alice.expect("joined").await;
    slow.expect("joined").await;
    // From here on `slow` never reads.

    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < MESSAGES {
            let m = carol.recv().await;
            if m["type"] == "message" {
                got += 1;
            }
        }
        (carol, got)
    });
    let body = "y".repeat(30_000);
    for _ in 0..MESSAGES {
        alice.send(json!({"type": "say", "text": body})).await;
    }
    let mut acks = 0;
    while acks < MESSAGES {
        if alice.recv().await["type"] == "ack" {
            acks += 1;
        }
    }
    let (mut carol, got) = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("the fast reader was held up")
        .unwrap();
    assert_eq!(got, MESSAGES);
    println!("slow consumer test: {MESSAGES} x 30 KB delivered to the fast reader");

    // The slow consumer is disconnected, so it leaves the room.
    let left = tokio::time::timeout(Duration::from_secs(15), carol.find(|v| v["type"] == "left"))
        .await
        .expect("slow consumer was never disconnected");
    assert_eq!(left["name"], "slow");
    let who = carol.request(json!({"type": "who"})).await;
    assert_eq!(who["users"].as_array().unwrap().len(), 2, "{who}");
    drop(slow);
}

#[tokio::test]
async fn the_diagnostic_echo_endpoint_echoes_under_the_same_limits() {
    // Off by default: /echo is just another path to the chat.
    let server = TestServer::start().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/echo", server.addr))
        .await
        .unwrap();
    ws.send(Message::text(r#"{"type":"rooms"}"#)).await.unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert!(
        reply.to_text().unwrap().contains("hello_required"),
        "{reply:?}"
    );

    let server = TestServer::with(|c| {
        c.diagnostics.echo_path = "/echo".into();
        c.limits.max_message_bytes = 4096;
    })
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/echo", server.addr))
        .await
        .unwrap();
    for m in [
        Message::text("plain text, not a hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
    ] {
        ws.send(m.clone()).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), m);
    }
    ws.send(Message::text("x".repeat(5000))).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
    // The chat still answers on other paths.
    server.join("alice").await.sync().await;
}
