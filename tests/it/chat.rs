//! Protocol v1 as a user sees it: hello, rooms, messages, PMs, presence, history, errors.

use futures_util::SinkExt;
use serde_json::json;

use crate::helpers::{Client, TestServer};

#[tokio::test]
async fn welcome_lists_users_history_and_server_facts() {
    let server = TestServer::start().await;
    let mut alice = Client::connect(server.addr).await;
    alice
        .send(json!({"type": "hello", "name": "alice", "id": "h1"}))
        .await;
    let w = alice.expect("welcome").await;
    assert_eq!(w["name"], "alice");
    assert_eq!(w["room"], "lobby");
    assert_eq!(w["ref"], "h1");
    assert_eq!(w["users"], json!([{"name": "alice", "role": "user"}]));
    assert_eq!(w["history"], json!([]));
    assert_eq!(w["server"]["max_message_bytes"], 65536);
    assert_eq!(w["server"]["ping_interval_secs"], 30.0);
    assert_eq!(w["server"]["version"], env!("CARGO_PKG_VERSION"));
    // The limits a client must pace itself under.
    assert_eq!(w["server"]["rate_per_sec"], 10.0);
    assert_eq!(w["server"]["rate_burst"], 20);
    assert_eq!(w["server"]["typing_rate_per_sec"], 2.0);
    assert_eq!(w["server"]["typing_burst"], 10);

    let mut bob = Client::connect(server.addr).await;
    let w = bob.hello("bob").await;
    assert_eq!(
        w["users"],
        json!([{"name": "alice", "role": "user"}, {"name": "bob", "role": "user"}])
    );
    let joined = alice.expect("joined").await;
    assert_eq!(
        joined,
        json!({"type": "joined", "room": "lobby", "name": "bob", "role": "user"})
    );
    // The newcomer does not see its own joined event.
    bob.sync().await;
}

#[tokio::test]
async fn say_reaches_others_only_and_sender_gets_matching_ack() {
    let server = TestServer::start().await;
    let mut alice = server.join("alice").await;
    let mut bob = server.join("bob").await;
    let mut carol = server.join("carol").await;
    alice.expect("joined").await;
    alice.expect("joined").await;
    bob.expect("joined").await;

    let ack = alice
        .request(json!({"type": "say", "text": "hi all"}))
        .await;
    assert_eq!(ack["type"], "ack");
    for c in [&mut bob, &mut carol] {
        let m = c.expect("message").await;
        assert_eq!(m["from"], "alice");
        assert_eq!(m["role"], "user");
        assert_eq!(m["room"], "lobby");
        assert_eq!(m["text"], "hi all");
        assert_eq!(m["id"], ack["id"]);
        assert_eq!(m["seq"], ack["seq"]);
        assert_eq!(m["ts"], ack["ts"]);
        assert!(m.get("action").is_none());
    }
    assert_eq!(ack["seq"], 1);
    let ts = ack["ts"].as_str().unwrap();
    assert!(ts.ends_with('Z') && ts.len() == 24, "{ts}");
    // The sender never gets its own message.
    alice.sync().await;

    let ack2 = bob
        .request(json!({"type": "say", "room": "#Lobby", "text": "waves", "action": true}))
        .await;
    assert_eq!(ack2["seq"], 2);
    let m = alice.expect("message").await;
    assert_eq!(m["action"], true);
    assert_ne!(m["id"], ack["id"]);
}

#[tokio::test]
async fn names_are_validated_unique_and_retryable() {
    let server = TestServer::start().await;
    let _henry = server.join("Henry").await;
    let mut c = Client::connect(server.addr).await;
    for (name, code) in [
        ("henry", "name_taken"),
        ("HENRY", "name_taken"),
        ("", "name_invalid"),
        ("has space", "name_invalid"),
        ("émile", "name_invalid"),
        ("server", "name_invalid"),
        ("Admin", "name_invalid"),
        ("SYSTEM", "name_invalid"),
    ] {
        let e = c.request(json!({"type": "hello", "name": name})).await;
        assert_eq!(e["type"], "error", "{name}: {e}");
        assert_eq!(e["code"], code, "{name}: {e}");
        assert!(e["message"].as_str().unwrap().len() > 5);
    }
    let long = "x".repeat(33);
    let e = c.request(json!({"type": "hello", "name": long})).await;
    assert_eq!(e["code"], "name_invalid");
    // Same connection, a good name now works.
    let w = c
        .request(json!({"type": "hello", "name": "x".repeat(32)}))
        .await;
    assert_eq!(w["type"], "welcome");
    let again = c.request(json!({"type": "hello", "name": "other"})).await;
    assert_eq!(again["code"], "already_welcomed");
}

#[tokio::test]
async fn requests_before_hello_get_hello_required() {
    let server = TestServer::start().await;
    let mut c = Client::connect(server.addr).await;
    for req in [
        json!({"type": "say", "text": "hi"}),
        json!({"type": "rooms"}),
        json!({"type": "join", "room": "x"}),
        json!({"type": "dance"}),
    ] {
        let e = c.request(req).await;
        assert_eq!(e["code"], "hello_required", "{e}");
    }
}

#[tokio::test]
async fn malformed_frames_get_errors_not_disconnects() {
    let server = TestServer::start().await;
    let mut c = server.join("alice").await;
    c.send_text("{this is not json").await;
    let e = c.expect("error").await;
    assert_eq!(e["code"], "bad_request");
    let e = c.request(json!({"type": "frobnicate"})).await;
    assert_eq!(e["code"], "unknown_type");
    let e = c.request(json!({"type": "say"})).await;
    assert_eq!(e["code"], "bad_request");
    assert!(e["message"].as_str().unwrap().contains("text"), "{e}");
    let e = c.request(json!({"type": "say", "text": 42})).await;
    assert_eq!(e["code"], "bad_request");
    let e = c.request(json!({"type": "say", "text": "   "})).await;
    assert_eq!(e["code"], "bad_request");
    c.send_text("[1,2,3]").await;
    assert_eq!(c.expect("error").await["code"], "bad_request");
    c.ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![
        1, 2, 3,
    ]))
    .await
    .unwrap();
    assert_eq!(c.expect("error").await["code"], "bad_request");
    let long_id = "i".repeat(65);
    c.send(json!({"type": "rooms", "id": long_id})).await;
    let e = c.expect("error").await;
    assert_eq!(e["code"], "bad_request");
    assert!(e.get("ref").is_none());
    // Still connected and working.
    c.sync().await;
}

#[tokio::test]
async fn private_messages_and_their_errors() {
    let server = TestServer::start().await;
    let mut alice = server.join("alice").await;
    let mut bob = server.join("bob").await;
    alice.expect("joined").await;
    let ack = bob
        .request(json!({"type": "pm", "to": "ALICE", "text": "psst"}))
        .await;
    assert_eq!(ack["type"], "ack");
    assert!(ack.get("seq").is_none());
    let pm = alice.expect("pm").await;
    assert_eq!(pm["from"], "bob");
    assert_eq!(pm["to"], "alice");
    assert_eq!(pm["text"], "psst");
    assert_eq!(pm["role"], "user");
    assert_eq!(pm["id"], ack["id"]);
    assert_eq!(pm["ts"], ack["ts"]);
    assert!(pm.get("seq").is_none());
    let e = bob
        .request(json!({"type": "pm", "to": "nobody", "text": "hi"}))
        .await;
    assert_eq!(e["code"], "no_such_user");
    let e = bob
        .request(json!({"type": "pm", "to": "bad name!", "text": "hi"}))
        .await;
    assert_eq!(e["code"], "no_such_user");
    // Nobody else saw the PM.
    alice.sync().await;
}

#[tokio::test]
async fn rooms_join_leave_who_and_presence() {
    let server = TestServer::start().await;
    let mut alice = server.join("alice").await;
    let mut bob = server.join("bob").await;
    alice.expect("joined").await;

    let r = alice
        .request(json!({"type": "join", "room": "#Rust"}))
        .await;
    assert_eq!(r["type"], "room");
    assert_eq!(r["room"], "rust");
    assert_eq!(r["users"], json!([{"name": "alice", "role": "user"}]));
    let r = bob.request(json!({"type": "join", "room": "rust"})).await;
    assert_eq!(r["users"].as_array().unwrap().len(), 2);
    assert_eq!(alice.expect("joined").await["room"], "rust");

    let rooms = alice.request(json!({"type": "rooms"})).await;
    assert_eq!(
        rooms["rooms"],
        json!([{"name": "lobby", "members": 2}, {"name": "rust", "members": 2}])
    );
    let who = alice.request(json!({"type": "who", "room": "rust"})).await;
    assert_eq!(
        who["users"],
        json!([{"name": "alice", "role": "user"}, {"name": "bob", "role": "user"}])
    );
    assert_eq!(who["room"], "rust");

    // Messages stay in their room.
    bob.request(json!({"type": "say", "room": "rust", "text": "in rust"}))
        .await;
    let m = alice.expect("message").await;
    assert_eq!(
        (m["room"].as_str(), m["seq"].as_u64()),
        (Some("rust"), Some(1))
    );

    let ack = bob.request(json!({"type": "leave", "room": "rust"})).await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(
        alice.expect("left").await,
        json!({"type": "left", "room": "rust", "name": "bob"})
    );
    let e = bob
        .request(json!({"type": "say", "room": "rust", "text": "x"}))
        .await;
    assert_eq!(e["code"], "not_in_room");
    let e = bob.request(json!({"type": "who", "room": "rust"})).await;
    assert_eq!(e["code"], "not_in_room");
    let e = bob.request(json!({"type": "who", "room": "nowhere"})).await;
    assert_eq!(e["code"], "no_such_room");
    let e = bob.request(json!({"type": "leave", "room": "rust"})).await;
    assert_eq!(e["code"], "not_in_room");
    let e = bob
        .request(json!({"type": "join", "room": "no spaces"}))
        .await;
    assert_eq!(e["code"], "room_invalid");

    // Disconnecting leaves every room.
    drop(bob);
    let left = alice.expect("left").await;
    assert_eq!(left["name"], "bob");
    assert_eq!(left["room"], "lobby");
    let who = alice.request(json!({"type": "who"})).await;
    assert_eq!(who["users"], json!([{"name": "alice", "role": "user"}]));
    // The name is free again.
    let mut bob2 = Client::connect(server.addr).await;
    assert_eq!(bob2.hello("BOB").await["type"], "welcome");
}

#[tokio::test]
async fn room_cap_per_connection() {
    let server = TestServer::with(|c| c.limits.max_rooms_per_user = 3).await;
    let mut a = server.join("alice").await;
    assert_eq!(
        a.request(json!({"type": "join", "room": "r1"})).await["type"],
        "room"
    );
    assert_eq!(
        a.request(json!({"type": "join", "room": "r2"})).await["type"],
        "room"
    );
    let e = a.request(json!({"type": "join", "room": "r3"})).await;
    assert_eq!(e["code"], "too_many_rooms");
    // Re-joining a room you are in is not a new room.
    assert_eq!(
        a.request(json!({"type": "join", "room": "r2"})).await["type"],
        "room"
    );
}

#[tokio::test]
async fn history_on_join_and_paging() {
    let server = TestServer::with(|c| {
        c.history.size = 10;
        c.history.on_join = 3;
        c.limits.rate_per_sec = 0.0;
    })
    .await;
    let mut alice = server.join("alice").await;
    for i in 1..=12 {
        let ack = alice
            .request(json!({"type": "say", "text": format!("m{i}")}))
            .await;
        assert_eq!(ack["seq"], i);
    }
    let mut bob = Client::connect(server.addr).await;
    let w = bob.hello("bob").await;
    alice.expect("joined").await;
    let texts: Vec<_> = w["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(texts, [json!("m10"), json!("m11"), json!("m12")]);
    assert_eq!(w["history"][0]["type"], "message");
    assert_eq!(w["history"][0]["from"], "alice");

    let page = bob
        .request(json!({"type": "history", "before": 10, "limit": 4}))
        .await;
    assert_eq!(page["type"], "history");
    assert_eq!(page["room"], "lobby");
    let seqs: Vec<_> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [6, 7, 8, 9]);
    // Only the last 10 are kept.
    let page = bob
        .request(json!({"type": "history", "room": "lobby", "limit": 100}))
        .await;
    let seqs: Vec<_> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (3..=12).collect::<Vec<_>>());
    let e = bob
        .request(json!({"type": "history", "room": "elsewhere"}))
        .await;
    assert_eq!(e["code"], "no_such_room");

    // Joining a room also brings its history.
    alice.request(json!({"type": "join", "room": "dev"})).await;
    alice
        .request(json!({"type": "say", "room": "dev", "text": "dev1"}))
        .await;
    let r = bob.request(json!({"type": "join", "room": "dev"})).await;
    assert_eq!(r["history"][0]["text"], "dev1");
    let e = bob
        .request(json!({"type": "history", "room": "dev", "before": 1}))
        .await;
    assert_eq!(e["messages"], json!([]));
}

#[tokio::test]
async fn shutdown_notifies_closes_1001_and_reports() {
    let server = TestServer::with(|c| c.server.shutdown_grace_secs = 2.0).await;
    let mut alice = server.join("alice").await;
    let mut plain = Client::connect(server.addr).await;
    plain.send_text("henry").await;
    assert!(plain.recv_line().await.starts_with("Welcome"));
    alice.expect("joined").await;
    let stopping = tokio::spawn(server.stop());
    let notice = alice.expect("notice").await;
    assert_eq!(notice["from"], "server");
    assert_eq!(alice.closed().await.0, 1001);
    assert_eq!(plain.recv_line().await, "[server] server is shutting down");
    assert_eq!(plain.closed().await.0, 1001);
    let report = stopping.await.unwrap();
    assert_eq!(report.connections_at_start, 2);
    assert_eq!(report.connections_remaining, 0);
}

#[tokio::test]
async fn empty_rooms_keep_history_until_evicted_at_the_cap() {
    let server = TestServer::with(|c| c.limits.max_rooms = 3).await;
    let mut alice = server.join("alice").await;
    alice
        .request(json!({"type": "join", "room": "quiet"}))
        .await;
    alice
        .request(json!({"type": "say", "room": "quiet", "text": "anyone?"}))
        .await;
    alice
        .request(json!({"type": "leave", "room": "quiet"}))
        .await;
    // Nobody is in #quiet, but it is listed and its history waits for the next visitor.
    let rooms = alice.request(json!({"type": "rooms"})).await;
    assert_eq!(
        rooms["rooms"],
        json!([{"name": "lobby", "members": 1}, {"name": "quiet", "members": 0}])
    );
    let r = alice
        .request(json!({"type": "join", "room": "quiet"}))
        .await;
    assert_eq!(r["history"][0]["text"], "anyone?");
    alice
        .request(json!({"type": "leave", "room": "quiet"}))
        .await;
    // A room left without history is forgotten at once.
    alice
        .request(json!({"type": "join", "room": "silent"}))
        .await;
    alice
        .request(json!({"type": "leave", "room": "silent"}))
        .await;
    assert_eq!(
        alice.request(json!({"type": "rooms"})).await["rooms"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // At the cap, the idle empty room makes way; rooms with members never do.
    assert_eq!(
        alice.request(json!({"type": "join", "room": "r2"})).await["type"],
        "room"
    );
    assert_eq!(
        alice.request(json!({"type": "join", "room": "r3"})).await["type"],
        "room"
    );
    let rooms = alice.request(json!({"type": "rooms"})).await;
    let names: Vec<_> = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(names, [json!("lobby"), json!("r2"), json!("r3")]);
    let e = alice.request(json!({"type": "join", "room": "r4"})).await;
    assert_eq!(e["code"], "too_many_rooms");
}

#[tokio::test]
async fn a_client_that_closes_gets_the_close_handshake_completed() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let server = TestServer::start().await;
    let mut alice = server.join("alice").await;
    alice
        .ws
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .expect("close sent");
    // The server answers with its own close frame (echoing the code), not a dropped socket.
    let (code, _) = alice.closed().await;
    assert_eq!(code, 1000);
    let mut bob = server.join("bob").await;
    let who = bob.request(json!({"type": "who"})).await;
    assert_eq!(who["users"], json!([{"name": "bob", "role": "user"}]));
}

/// On several worker threads there is no flusher: each connection task writes its own mailbox.
/// Many messages from several senders at once must still arrive complete and in room order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_threaded_server_delivers_everything_in_order() {
    let server = TestServer::with(|c| c.limits.rate_per_sec = 0.0).await;
    let mut readers = Vec::new();
    for i in 0..4 {
        readers.push(server.join(&format!("reader{i}")).await);
    }
    let mut writers = Vec::new();
    for i in 0..3 {
        writers.push(server.join(&format!("writer{i}")).await);
    }
    const EACH: usize = 50;
    let sends = writers.into_iter().enumerate().map(|(w, mut c)| {
        tokio::spawn(async move {
            for n in 0..EACH {
                c.send(json!({"type": "say", "text": format!("w{w} n{n}")}))
                    .await;
            }
            c
        })
    });
    let _writers: Vec<_> = futures_util::future::join_all(sends).await;
    for r in &mut readers {
        let mut last_seq = 0;
        let mut next = [0usize; 3];
        while next.iter().sum::<usize>() < 3 * EACH {
            let m = r.find(|v| v["type"] == "message").await;
            let seq = m["seq"].as_u64().unwrap();
            assert!(seq > last_seq, "room order: {seq} after {last_seq}");
            last_seq = seq;
            let text = m["text"].as_str().unwrap();
            let (w, n) = text[1..].split_once(" n").unwrap();
            let w: usize = w.parse().unwrap();
            assert_eq!(n.parse::<usize>().unwrap(), next[w], "per-sender order");
            next[w] += 1;
        }
    }
}
