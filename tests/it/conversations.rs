//! Private messages to someone who is away: kept (with a store, where names are owned) and
//! handed over at their next `hello` after the `welcome`, which lists their conversations with
//! what is unread; conversation read markers that move only forward and reach the user's other
//! connections; the same in token mode and across a cluster's nodes.

use std::time::Duration;

use serde_json::{Value, json};

use crate::accounts::{accounts_config, register, sign_in};
use crate::helpers::{Client, TestServer, token_for};
use chatd::config::{AuthMode, Secret};
use chatd::protocol::Role;

fn conversation<'a>(welcome: &'a Value, with: &str) -> &'a Value {
    welcome["conversations"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["with"] == with))
        .unwrap_or_else(|| panic!("no conversation with {with}: {welcome}"))
}

/// Closes `c` and waits until `watcher` (in the same room) sees its user leave.
async fn leave(c: Client, watcher: &mut Client) {
    let mut c = c;
    c.ws.close(None).await.ok();
    drop(c);
    watcher.expect("left").await;
}

#[tokio::test]
async fn a_pm_to_someone_away_waits_for_their_next_hello() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with(|c| accounts_config(c, &dir)).await;
    let (mut ann, _) = register(server.addr, "ann", "ann's password").await;
    let (mut ann_phone, w) = sign_in(server.addr, "ann", "ann's password").await;
    assert_eq!(w["sessions"], 2, "{w}");
    let (bob, _) = register(server.addr, "Bob", "bob's password").await;
    assert_eq!(ann.expect("joined").await["name"], "Bob");
    leave(bob, &mut ann).await;

    // Nobody of bob's is online: kept, and the ack says so; the sender's phone gets its copy.
    let ack = ann
        .request(json!({"type": "pm", "to": "bob", "text": "while you were away"}))
        .await;
    assert_eq!(
        (&ack["type"], &ack["offline"]),
        (&json!("ack"), &json!(true)),
        "{ack}"
    );
    let first = ack["id"].as_u64().unwrap();
    let copy = ann_phone.find(|v| v["type"] == "pm").await;
    assert_eq!(
        (&copy["to"], &copy["text"]),
        (&json!("Bob"), &json!("while you were away"))
    );
    let ack = ann
        .request(json!({"type": "pm", "to": "bob", "text": "and again"}))
        .await;
    let second = ack["id"].as_u64().unwrap();
    let e = ann
        .request(json!({"type": "pm", "to": "nobody", "text": "hello?"}))
        .await;
    assert_eq!(e["code"], "no_such_user", "no account, nothing kept: {e}");

    // Bob comes back: the welcome counts them, and they follow it, oldest first.
    let (mut bob, w) = sign_in(server.addr, "bob", "bob's password").await;
    let c = conversation(&w, "ann");
    assert_eq!(
        (&c["last"], &c["read"], &c["unread"]),
        (&json!(second), &json!(0), &json!(2)),
        "{w}"
    );
    for (id, text) in [(first, "while you were away"), (second, "and again")] {
        let pm = bob.expect("pm").await;
        assert_eq!(
            (&pm["id"], &pm["from"], &pm["text"]),
            (&json!(id), &json!("ann"), &json!(text))
        );
    }
    // His second device hears of what he read; a marker never moves back, nor past the end.
    let (mut bob_phone, w) = sign_in(server.addr, "bob", "bob's password").await;
    assert_eq!(conversation(&w, "ann")["unread"], 2, "not read yet: {w}");
    bob_phone.expect("pm").await;
    bob_phone.expect("pm").await;
    let r = bob
        .request(json!({"type": "read", "with": "ANN", "msg": first}))
        .await;
    assert_eq!(
        (&r["with"], &r["read"], &r["unread"]),
        (&json!("ann"), &json!(first), &json!(1)),
        "{r}"
    );
    let told = bob_phone.expect("read").await;
    assert_eq!(
        (&told["with"], &told["read"], &told["unread"]),
        (&json!("ann"), &json!(first), &json!(1)),
        "{told}"
    );
    let r = bob
        .request(json!({"type": "read", "with": "ann", "msg": 0}))
        .await;
    assert_eq!(r["read"], first, "only forward: {r}");
    let r = bob
        .request(json!({"type": "read", "with": "ann", "msg": 1u64 << 62}))
        .await;
    assert_eq!(
        (&r["read"], &r["unread"]),
        (&json!(second), &json!(0)),
        "cut to the last: {r}"
    );
    let e = bob
        .request(json!({"type": "read", "with": "nobody", "msg": 1}))
        .await;
    assert_eq!(e["code"], "no_such_user", "{e}");
    let e = bob.request(json!({"type": "read", "with": "ann"})).await;
    assert_eq!(e["code"], "bad_request", "{e}");
    server.stop().await;

    // After a restart: the conversation, read, and nothing handed over again; ann's side is
    // read up to what she wrote.
    let server = TestServer::with(|c| accounts_config(c, &dir)).await;
    let (mut bob, w) = sign_in(server.addr, "bob", "bob's password").await;
    let c = conversation(&w, "ann");
    assert_eq!(
        (&c["read"], &c["unread"]),
        (&json!(second), &json!(0)),
        "{w}"
    );
    let r = bob.request(json!({"type": "rooms"})).await;
    assert_eq!(r["type"], "rooms", "no PM came before this reply: {r}");
    let (_, w) = sign_in(server.addr, "ann", "ann's password").await;
    let c = conversation(&w, "Bob");
    assert_eq!(
        (&c["read"], &c["unread"]),
        (&json!(second), &json!(0)),
        "{w}"
    );
    server.stop().await;
}

const SECRET: &str = "conversations-test-secret-0123456789abcdef";

/// Token mode: a token's subject is an account once it has said hello, so PMs wait for it too.
#[tokio::test]
async fn in_token_mode_a_pm_waits_for_a_subject_seen_before() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with(|c| {
        c.auth.mode = AuthMode::Token;
        c.auth.secret = Secret::new(SECRET);
        c.storage.path = dir.path().join("chat.db").display().to_string();
    })
    .await;
    let hello = |name: &str| json!({"type": "hello", "name": name, "token": token_for(SECRET, name, Role::User)});
    let mut dora = Client::connect(server.addr).await;
    assert_eq!(dora.request(hello("dora")).await["type"], "welcome");
    let mut carl = Client::connect(server.addr).await;
    assert_eq!(carl.request(hello("carl")).await["type"], "welcome");
    dora.expect("joined").await;
    leave(carl, &mut dora).await;
    let ack = dora
        .request(json!({"type": "pm", "to": "carl", "text": "call me"}))
        .await;
    assert_eq!(ack["offline"], true, "{ack}");
    let e = dora
        .request(json!({"type": "pm", "to": "never_seen", "text": "hi"}))
        .await;
    assert_eq!(e["code"], "no_such_user", "{e}");
    let mut carl = Client::connect(server.addr).await;
    let w = carl.request(hello("carl")).await;
    assert_eq!(conversation(&w, "dora")["unread"], 1, "{w}");
    assert_eq!(carl.expect("pm").await["text"], "call me");
    // A password never opens an account a token made.
    let mut eve = Client::connect(server.addr).await;
    let e = eve
        .request(json!({"type": "hello", "name": "carl", "password": ""}))
        .await;
    assert_eq!(e["type"], "error", "{e}");
    server.stop().await;
}

/// In a cluster with PostgreSQL: kept by the node the sender is on, handed over by another.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[cfg_attr(
    chatd_no_postgres,
    ignore = "needs PostgreSQL (apt install postgresql)"
)]
#[tokio::test]
async fn across_nodes_a_pm_waits_in_postgresql() {
    let pair = TestServer::pg_pair(crate::accounts::cheap_accounts).await;
    let (a, b) = (&pair.a, &pair.b);
    let (mut ann, _) = register(a.addr, "ann", "ann's password").await;
    let (bob, _) = register(b.addr, "bob", "bob's password").await;
    assert_eq!(ann.expect("joined").await["name"], "bob");
    leave(bob, &mut ann).await;
    // The node that held bob lets go of him within its heartbeat.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let ack = loop {
        let ack = ann
            .request(json!({"type": "pm", "to": "bob", "text": "see you"}))
            .await;
        if ack["offline"] == true || std::time::Instant::now() > deadline {
            break ack;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ack["offline"], true, "{ack}");
    // Node a's store commits it within its commit interval; node b reads it from there.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut bob = loop {
        let (mut bob, w) = sign_in(b.addr, "bob", "bob's password").await;
        if w["conversations"].is_array() || std::time::Instant::now() > deadline {
            assert_eq!(conversation(&w, "ann")["unread"], 1, "{w}");
            break bob;
        }
        bob.ws.close(None).await.ok();
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pm = bob
        .find(|v| v["type"] == "pm" && v["id"] == ack["id"])
        .await;
    assert_eq!(pm["text"], "see you");
    pair.stop().await;
}
