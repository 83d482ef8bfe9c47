//! Typing indications: relay, throttle and expiry.
//!
//! The periods are shortened through config (throttle 0.5 s, active 1 s, paused 2 s) so these run in
//! real time: tokio's paused clock auto-advances while socket I/O is in flight, which makes it
//! unreliable with real connections. The default 3/6/30 s rules are unit-tested in `src/typing.rs`.

use std::time::Duration;

use serde_json::json;
use tokio::time::{Instant, sleep};

use crate::helpers::{Client, TestServer};

const THROTTLE: Duration = Duration::from_millis(500);
const ACTIVE: Duration = Duration::from_millis(1000);
const PAUSED: Duration = Duration::from_millis(2000);

async fn server() -> TestServer {
    TestServer::with(|c| {
        c.limits.typing_throttle_secs = THROTTLE.as_secs_f64();
        c.limits.typing_active_secs = ACTIVE.as_secs_f64();
        c.limits.typing_paused_secs = PAUSED.as_secs_f64();
    })
    .await
}

async fn pair() -> (TestServer, Client, Client) {
    let server = server().await;
    let mut alice = server.join("alice").await;
    let bob = server.join("bob").await;
    alice.expect("joined").await;
    (server, alice, bob)
}

/// Asserts `elapsed` is `expected` give or take scheduling slack.
fn about(elapsed: Duration, expected: Duration) {
    assert!(
        elapsed + Duration::from_millis(50) >= expected
            && elapsed < expected + Duration::from_millis(900),
        "took {elapsed:?}, expected about {expected:?}"
    );
}

fn typing(room: &str, state: &str) -> serde_json::Value {
    json!({"type": "typing", "room": room, "state": state})
}

#[tokio::test]
async fn relayed_to_others_and_throttled() {
    let (_s, mut alice, mut bob) = pair().await;
    alice.send(typing("lobby", "active")).await;
    assert_eq!(
        bob.recv().await,
        json!({"type": "typing", "from": "alice", "room": "lobby", "state": "active"})
    );
    let first = Instant::now();
    // A second `active` within the throttle period is not relayed...
    alice.send(typing("lobby", "active")).await;
    alice.sync().await;
    bob.sync().await;
    // ...but after it, it is.
    sleep(THROTTLE.saturating_sub(first.elapsed()) + Duration::from_millis(20)).await;
    alice.send(typing("lobby", "active")).await;
    assert_eq!(bob.expect("typing").await["state"], "active");
    alice.send(typing("lobby", "paused")).await;
    assert_eq!(bob.expect("typing").await["state"], "paused");
    alice.send(typing("lobby", "done")).await;
    assert_eq!(bob.expect("typing").await["state"], "done");
    // The sender never sees its own typing.
    alice.sync().await;
}

#[tokio::test]
async fn stale_active_and_paused_states_expire() {
    let (_s, mut alice, mut bob) = pair().await;
    let start = Instant::now();
    alice.send(typing("lobby", "active")).await;
    bob.expect("typing").await;
    let done = bob.expect("typing").await;
    assert_eq!(done["state"], "done");
    about(start.elapsed(), ACTIVE);

    let start = Instant::now();
    alice.send(typing("lobby", "paused")).await;
    assert_eq!(bob.expect("typing").await["state"], "paused");
    assert_eq!(bob.expect("typing").await["state"], "done");
    about(start.elapsed(), PAUSED);

    // A refreshed `active` lives on past the expiry of the first one.
    let start = Instant::now();
    alice.send(typing("lobby", "active")).await;
    bob.expect("typing").await;
    sleep(ACTIVE / 2).await;
    alice.send(typing("lobby", "active")).await;
    assert_eq!(bob.expect("typing").await["state"], "active");
    assert_eq!(bob.expect("typing").await["state"], "done");
    about(start.elapsed(), ACTIVE / 2 + ACTIVE);
}

#[tokio::test]
async fn a_message_ends_typing_silently() {
    let (_s, mut alice, mut bob) = pair().await;
    alice.send(typing("lobby", "active")).await;
    bob.expect("typing").await;
    alice
        .request(json!({"type": "say", "text": "done typing"}))
        .await;
    bob.expect("message").await;
    sleep(ACTIVE + Duration::from_millis(200)).await;
    // No `done` was relayed after the message, even once the expiry passed.
    bob.sync().await;
}

#[tokio::test]
async fn private_typing_goes_to_the_target_only() {
    let server = server().await;
    let mut alice = server.join("alice").await;
    let mut bob = server.join("bob").await;
    let mut carol = server.join("carol").await;
    alice.expect("joined").await;
    alice.expect("joined").await;
    bob.expect("joined").await;
    alice
        .send(json!({"type": "typing", "to": "Bob", "state": "active"}))
        .await;
    assert_eq!(
        bob.recv().await,
        json!({"type": "typing", "from": "alice", "to": "bob", "state": "active"})
    );
    carol.sync().await;
    let e = alice
        .request(json!({"type": "typing", "to": "nobody", "state": "active"}))
        .await;
    assert_eq!(e["code"], "no_such_user");
    let e = alice
        .request(json!({"type": "typing", "room": "elsewhere", "state": "active"}))
        .await;
    assert_eq!(e["code"], "not_in_room");
    let e = alice
        .request(json!({"type": "typing", "room": "lobby", "state": "dancing"}))
        .await;
    assert_eq!(e["code"], "bad_request");
}

#[tokio::test]
async fn leaving_and_disconnecting_relay_done() {
    let (server, mut alice, mut bob) = pair().await;
    alice.request(json!({"type": "join", "room": "dev"})).await;
    bob.request(json!({"type": "join", "room": "dev"})).await;
    alice.expect("joined").await;
    alice.send(typing("dev", "active")).await;
    assert_eq!(bob.expect("typing").await["room"], "dev");
    alice.request(json!({"type": "leave", "room": "dev"})).await;
    let done = bob.expect("typing").await;
    assert_eq!(
        (done["room"].as_str(), done["state"].as_str()),
        (Some("dev"), Some("done"))
    );
    assert_eq!(bob.expect("left").await["room"], "dev");

    alice.send(typing("lobby", "active")).await;
    bob.expect("typing").await;
    drop(alice);
    let done = bob.expect("typing").await;
    assert_eq!(
        (done["room"].as_str(), done["state"].as_str()),
        (Some("lobby"), Some("done"))
    );
    assert_eq!(bob.expect("left").await["name"], "alice");
    drop(server);
}
