//! Accounts' rooms and read state: memberships that survive disconnects and restarts, read
//! markers that move only forward, unread and mention counts exact after a restart, the terminal
//! client's counts, and two devices of one account sharing both.

use std::time::Duration;

use serde_json::{Value, json};

use crate::accounts::{accounts_config, register, server, sign_in, sign_in_once_free};
use crate::helpers::TestServer;

pub(crate) fn listed(welcome: &Value) -> Vec<String> {
    let mut rooms: Vec<String> = welcome["rooms"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| r["room"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    rooms.sort();
    rooms
}

/// Rooms joined stay joined: a disconnect is not a leave, `welcome` lists the account's rooms
/// after a reconnect and after a restart, and a `leave` forgets one.
#[tokio::test]
async fn memberships_survive_disconnects_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with(|c| accounts_config(c, &dir)).await;
    let (mut ann, w) = register(server.addr, "ann", "ann's password").await;
    assert_eq!(listed(&w), ["lobby"], "{w}");
    assert_eq!(room_state(&w, "lobby")["epoch"], w["epoch"], "{w}");
    for room in ["dev", "ops"] {
        let r = ann.request(json!({"type": "join", "room": room})).await;
        assert_eq!(r["type"], "room", "{r}");
    }
    ann.ws.close(None).await.ok();
    drop(ann);
    let w = sign_in_once_free(server.addr, "ann", "ann's password").await;
    assert_eq!(listed(&w), ["dev", "lobby", "ops"], "{w}");
    server.stop().await;

    // A restart (the membership writes are flushed on the way down).
    let server = TestServer::with(|c| accounts_config(c, &dir)).await;
    let (mut ann, w) = sign_in(server.addr, "ann", "ann's password").await;
    assert_eq!(listed(&w), ["dev", "lobby", "ops"], "{w}");
    let r = ann.request(json!({"type": "join", "room": "ops"})).await;
    assert_eq!(r["type"], "room", "{r}");
    let r = ann.request(json!({"type": "leave", "room": "ops"})).await;
    assert_eq!(r["type"], "ack", "{r}");
    ann.ws.close(None).await.ok();
    drop(ann);
    let w = sign_in_once_free(server.addr, "ann", "ann's password").await;
    assert_eq!(
        listed(&w),
        ["dev", "lobby"],
        "a leave forgets the room: {w}"
    );
    server.stop().await;
}

pub(crate) fn room_state<'a>(welcome: &'a Value, room: &str) -> &'a Value {
    welcome["rooms"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["room"] == room))
        .unwrap_or_else(|| panic!("{room} not listed: {welcome}"))
}

/// Read markers: kept by the server, only forward, clamped to what the room holds; `unread` and
/// `mentions` (`@name`) exact in the `welcome` after a restart; saying something reads the room.
#[tokio::test]
async fn read_markers_move_forward_and_unread_counts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with(|c| accounts_config(c, &dir)).await;
    let (mut ann, _) = register(server.addr, "ann", "ann's password").await;
    let (mut bob, _) = register(server.addr, "bob", "bob's password").await;
    ann.expect("joined").await;
    for text in ["one", "@ann two", "three"] {
        let r = bob.request(json!({"type": "say", "text": text})).await;
        assert_eq!(r["type"], "ack", "{r}");
    }
    for _ in 0..3 {
        ann.expect("message").await;
    }
    let r = ann
        .request(json!({"type": "read", "room": "lobby", "seq": 1}))
        .await;
    assert_eq!(
        (
            &r["type"],
            &r["room"],
            &r["read"],
            &r["unread"],
            &r["mentions"]
        ),
        (
            &json!("ack"),
            &json!("lobby"),
            &json!(1),
            &json!(2),
            &json!(1)
        ),
        "{r}"
    );
    let r = ann
        .request(json!({"type": "read", "room": "lobby", "seq": 0}))
        .await;
    assert_eq!(
        (&r["read"], &r["unread"]),
        (&json!(1), &json!(2)),
        "never back: {r}"
    );
    let r = ann
        .request(json!({"type": "read", "room": "#Lobby", "seq": 99}))
        .await;
    assert_eq!(
        (&r["read"], &r["unread"], &r["mentions"]),
        (&json!(3), &json!(0), &json!(0)),
        "clamped to the room's last message: {r}"
    );
    let r = ann
        .request(json!({"type": "read", "room": "dev", "seq": 1}))
        .await;
    assert_eq!(r["code"], "not_in_room", "{r}");
    let r = ann.request(json!({"type": "read", "room": "lobby"})).await;
    assert_eq!(r["code"], "bad_request", "{r}");
    ann.ws.close(None).await.ok();
    drop(ann);
    for (i, text) in ["four @ann", "five", "@annie is someone else"]
        .iter()
        .enumerate()
    {
        let id = format!("later{i}");
        bob.send(json!({"type": "say", "text": text, "id": id}))
            .await;
        let r = bob.find(|v| v["ref"] == id.as_str()).await;
        assert_eq!(r["type"], "ack", "{r}");
    }
    drop(bob);
    server.stop().await;

    let server = TestServer::with(|c| accounts_config(c, &dir)).await;
    let (mut ann, w) = sign_in(server.addr, "ann", "ann's password").await;
    let lobby = room_state(&w, "lobby");
    assert_eq!(
        (
            &lobby["seq"],
            &lobby["read"],
            &lobby["unread"],
            &lobby["mentions"]
        ),
        (&json!(6), &json!(3), &json!(3), &json!(1)),
        "{w}"
    );
    // Saying something reads the room up to it.
    let said = ann
        .request(json!({"type": "say", "text": "caught up"}))
        .await;
    assert_eq!(said["seq"], 7, "{said}");
    ann.ws.close(None).await.ok();
    drop(ann);
    let w = sign_in_once_free(server.addr, "ann", "ann's password").await;
    let lobby = room_state(&w, "lobby");
    assert_eq!(
        (&lobby["read"], &lobby["unread"]),
        (&json!(7), &json!(0)),
        "{w}"
    );
    server.stop().await;

    // Open mode keeps no markers.
    let open = TestServer::start().await;
    let mut guest = open.join("guest").await;
    let r = guest
        .request(json!({"type": "read", "room": "lobby", "seq": 1}))
        .await;
    assert_eq!(r["code"], "forbidden", "{r}");
    open.stop().await;
}

/// The terminal client shows the server's unread counts after connecting (`#dev(2!)`: two, one
/// mentioning you), and reading the room on screen moves the marker on the server.
#[cfg_attr(chatd_no_tmux, ignore = "needs tmux (apt install tmux)")]
#[test]
fn chatctl_shows_unread_counts_from_the_server_and_reads_the_room_on_screen() {
    use crate::chatctl::Tmux;
    use crate::helpers::{Daemon, SyncClient};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db").display().to_string();
    let env = crate::accounts::accounts_env(&db);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let d = Daemon::start(&[], &env);
    let account = |name: &str, register: bool| {
        let mut c = SyncClient::connect(d.addr);
        let kind = if register { "register" } else { "hello" };
        c.send(json!({"type": kind, "name": name, "password": format!("{name}'s password")}));
        let w = c.recv_until(|v| v["type"] == "welcome" || v["type"] == "error");
        assert_eq!(w["type"], "welcome", "{w}");
        c
    };
    let say = |c: &mut SyncClient, room: &str, text: &str| {
        c.send(json!({"type": "say", "room": room, "text": text, "id": text}));
        let ack = c.recv_until(|v| v["ref"] == text);
        assert_eq!(ack["type"], "ack", "{ack}");
    };
    let mut henry = account("henry", true);
    henry.send(json!({"type": "join", "room": "dev", "id": "j"}));
    henry.recv_until(|v| v["ref"] == "j");
    drop(henry);
    let mut bob = account("bob", true);
    bob.send(json!({"type": "join", "room": "dev", "id": "j"}));
    bob.recv_until(|v| v["ref"] == "j");
    say(&mut bob, "dev", "build is green");
    say(&mut bob, "dev", "@henry can you deploy?");

    let password = dir.path().join("password");
    std::fs::write(&password, "henry's password\n").unwrap();
    let tmux = Tmux {
        socket: format!("chatctl-accounts-{}", std::process::id()),
    };
    let cmd = format!(
        "NO_COLOR=1 {} --url ws://{} --password-file {} connect henry; echo EXIT=$?; sleep 30",
        env!("CARGO_BIN_EXE_chatctl"),
        d.addr,
        password.display()
    );
    tmux.start(20, &cmd);
    tmux.wait_for("the unread counts", |s| s.contains("Act: #dev(2!)"));
    tmux.keys(&["/room dev", "Enter"]);
    tmux.wait_for("the switch", |s| s.contains("now talking in #dev"));
    // The marker moved on the server: another sign-in (a phone, say) sees nothing unread.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let db = rusqlite::Connection::open(&db).unwrap();
        // Written within half a second (and the row may not be there yet either).
        let read: i64 = db
            .query_row(
                "SELECT read_seq FROM memberships WHERE account = 'henry' AND room = 'dev'",
                [],
                |r| r.get(0),
            )
            .unwrap_or(0);
        if read == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "marker at {read}");
        std::thread::sleep(Duration::from_millis(50));
    }
    tmux.keys(&["C-d"]);
    tmux.wait_for("a clean exit", |s| s.contains("EXIT=0"));
}

/// Two devices of one account: each hears the other's lines; a `read` on one reaches the other
/// (`{"type":"read",...}`, counts and all); joining or leaving a room on one tells the other
/// (`membership`); the others see the account once.
#[tokio::test]
async fn two_devices_of_one_account_share_read_state_and_rooms() {
    let (server, _dir, _) = server(|c| c.limits.rate_per_sec = 0.0).await;
    let (mut phone, w) = register(server.addr, "ann", "ann's password").await;
    assert_eq!(w["sessions"], 1, "{w}");
    let (mut laptop, w) = sign_in(server.addr, "ann", "ann's password").await;
    assert_eq!(
        (&w["type"], &w["sessions"]),
        (&json!("welcome"), &json!(2)),
        "{w}"
    );
    let (mut bob, w) = register(server.addr, "bob", "bob's password").await;
    assert_eq!(names_of(&w["users"]), ["ann", "bob"], "ann once: {w}");
    for text in ["hello @ann", "anyone?"] {
        let r = bob.request(json!({"type": "say", "text": text})).await;
        assert_eq!(r["type"], "ack", "{r}");
    }
    for c in [&mut phone, &mut laptop] {
        c.find(|v| v["type"] == "message" && v["text"] == "anyone?")
            .await;
    }
    let r = phone
        .request(json!({"type": "read", "room": "lobby", "seq": 1}))
        .await;
    assert_eq!(
        (&r["unread"], &r["mentions"]),
        (&json!(1), &json!(0)),
        "{r}"
    );
    let seen = laptop.find(|v| v["type"] == "read").await;
    assert_eq!(
        seen,
        json!({"type": "read", "room": "lobby", "read": 1, "unread": 1, "mentions": 0})
    );
    let r = phone
        .request(json!({"type": "read", "room": "lobby", "seq": 2}))
        .await;
    assert_eq!(r["unread"], 0, "{r}");
    let seen = laptop.find(|v| v["type"] == "read").await;
    assert_eq!(
        (&seen["read"], &seen["unread"]),
        (&json!(2), &json!(0)),
        "also at 0"
    );

    let r = phone.request(json!({"type": "join", "room": "dev"})).await;
    assert_eq!(r["type"], "room", "{r}");
    let m = laptop.find(|v| v["type"] == "membership").await;
    assert_eq!(
        m,
        json!({"type": "membership", "room": "dev", "state": "joined"})
    );
    let r = phone.request(json!({"type": "leave", "room": "dev"})).await;
    assert_eq!(r["type"], "ack", "{r}");
    let m = laptop.find(|v| v["type"] == "membership").await;
    assert_eq!(m["state"], "left", "{m}");
    // Bob never saw a second `joined` for ann, nor her reads.
    let r = bob.request(json!({"type": "who"})).await;
    assert_eq!(names_of(&r["users"]), ["ann", "bob"], "{r}");
    server.stop().await;
}

fn names_of(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect()
}

const SECRET: &str = "read-state-token-secret-0123456789abcdef";

/// Token mode (signed with [`SECRET`]) on an SQLite file in a directory of its own.
async fn token_server(edit: impl FnOnce(&mut chatd::Config)) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db").display().to_string();
    let server = TestServer::with(|c| {
        c.auth.mode = chatd::config::AuthMode::Token;
        c.auth.secret = chatd::config::Secret::new(SECRET);
        c.storage.path = db;
        edit(c);
    })
    .await;
    (server, dir)
}

/// Token mode with a store: a token's subject is an account too, with rooms that stay joined and
/// read markers; registering or a password is refused (names come from tokens).
#[tokio::test]
async fn with_tokens_and_a_store_rooms_and_read_state_are_kept_too() {
    use crate::helpers::{Client, token_for};
    use chatd::protocol::Role;
    let (server, _dir) = token_server(|_| {}).await;
    let hello = |name: &str| {
        let token = token_for(SECRET, name, Role::User);
        json!({"type": "hello", "name": name, "token": token})
    };
    let mut kim = Client::connect(server.addr).await;
    let w = kim.request(hello("kim")).await;
    assert_eq!(listed(&w), ["lobby"], "{w}");
    let r = kim.request(json!({"type": "join", "room": "ops"})).await;
    assert_eq!(r["type"], "room", "{r}");
    let r = kim
        .request(json!({"type": "register", "name": "kim", "password": "long enough"}))
        .await;
    assert_eq!(r["code"], "already_welcomed", "{r}");
    let mut other = Client::connect(server.addr).await;
    let r = other
        .request(json!({"type": "register", "name": "zed", "password": "long enough"}))
        .await;
    assert_eq!(r["code"], "forbidden", "{r}");
    let mut lee = Client::connect(server.addr).await;
    assert_eq!(lee.request(hello("lee")).await["type"], "welcome");
    let r = lee.request(json!({"type": "join", "room": "ops"})).await;
    assert_eq!(r["type"], "room", "{r}");
    let r = lee
        .request(json!({"type": "say", "room": "ops", "text": "@kim ping"}))
        .await;
    assert_eq!(r["type"], "ack", "{r}");
    kim.ws.close(None).await.ok();
    drop(kim);
    // A new connection (the token is the same account): the rooms and what is unread.
    let mut again = Client::connect(server.addr).await;
    let w = again.request(hello("kim")).await;
    assert_eq!(listed(&w), ["lobby", "ops"], "{w}");
    let ops = room_state(&w, "ops");
    assert_eq!(
        (&ops["unread"], &ops["mentions"]),
        (&json!(1), &json!(1)),
        "{w}"
    );
    server.stop().await;
}

/// A crowd of token holders connecting at once (a restart, say) is welcomed whole: past what the
/// accounts service can list rooms for at once, a token's hello goes on without the list rather
/// than be refused.
#[tokio::test]
async fn a_crowd_of_token_holders_is_welcomed_even_past_the_accounts_queue() {
    use crate::helpers::{Client, token_for};
    use chatd::protocol::Role;
    let (server, _dir) = token_server(|c| {
        c.server.connect_rate_per_ip = 0.0;
        c.server.max_connections_per_ip = 0;
        c.limits.presence_batch_over = 50;
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..300 {
        let mut c = Client::connect(server.addr).await;
        let name = format!("crowd{i}");
        let token = token_for(SECRET, &name, Role::User);
        c.send(json!({"type": "hello", "name": name, "token": token, "id": "h"}))
            .await;
        clients.push(c);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let w = c.find(|v| v["ref"] == "h").await;
        assert_eq!(w["type"], "welcome", "crowd{i}: {w}");
    }
    server.stop().await;
}
