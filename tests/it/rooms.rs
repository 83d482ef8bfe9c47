//! Rooms that belong to someone, as clients see them, on every broker and both stores (the
//! single node on SQLite, a cluster on PostgreSQL): owners and ops, topics, private and
//! invite-only rooms, bans and mutes that last and end on time, moderated rooms, the audit log,
//! server-wide bans; and across nodes, a ban made on one takes effect on the other.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Backend, Client, TestServer, ask, token_for};
use crate::postgres_server::Postgres;
use chatd::config::{AuthMode, Secret};
use chatd::protocol::Role;

const SECRET: &str = "rooms-test-secret-0123456789abcdef0123456789";

/// Runs a test on the single-process broker (directly and answering late) with SQLite, and on
/// the cluster broker with PostgreSQL.
macro_rules! rooms_contract {
    ($($test:ident),* $(,)?) => {
        mod local {
            $(#[tokio::test] async fn $test() { super::$test(super::Backend::Local).await })*
        }
        mod late {
            $(#[tokio::test] async fn $test() { super::$test(super::Backend::Late).await })*
        }
        mod redis {
            $(
                #[cfg_attr(chatd_no_redis, ignore = "needs redis-server (apt install redis-server)")]
                #[cfg_attr(chatd_no_postgres, ignore = "needs PostgreSQL (apt install postgresql)")]
                #[tokio::test]
                async fn $test() { super::$test(super::Backend::Redis).await }
            )*
        }
    };
}

rooms_contract!(
    owners_make_rooms_private_and_invite_only,
    a_ban_puts_every_session_out_and_ends_on_time,
    mutes_moderated_rooms_and_who_may_act_on_whom,
    a_server_wide_ban_closes_and_refuses_hello,
);

/// A token-mode server with a store (SQLite in `dir`, or PostgreSQL for the cluster).
struct Chat {
    server: TestServer,
    _dir: tempfile::TempDir,
    _pg: Option<Postgres>,
}

async fn chat(backend: Backend) -> Chat {
    let dir = tempfile::tempdir().unwrap();
    let pg = (backend == Backend::Redis).then(Postgres::start);
    let db = dir.path().join("chat.db").display().to_string();
    let url = pg.as_ref().map(|pg| pg.url.clone());
    let server = TestServer::with_broker(backend, |c| {
        c.auth.mode = AuthMode::Token;
        c.auth.secret = Secret::new(SECRET);
        c.limits.rate_per_sec = 0.0;
        match url {
            Some(url) => c.storage.url = chatd::config::SecretUrl::new(url),
            None => c.storage.path = db,
        }
    })
    .await;
    Chat {
        server,
        _dir: dir,
        _pg: pg,
    }
}

async fn hello(chat: &Chat, name: &str, role: Role, room: &str) -> (Client, Value) {
    let mut c = Client::connect(chat.server.addr).await;
    let token = token_for(SECRET, name, role);
    let w = c
        .request(json!({"type": "hello", "name": name, "token": token, "room": room}))
        .await;
    (c, w)
}

/// Sends `v` and returns its reply and the first event `pred` picks, in whichever order they
/// come (what the request causes may reach the asker before its reply).
async fn ask_and_see(
    c: &mut Client,
    mut v: Value,
    pred: impl Fn(&Value) -> bool,
) -> (Value, Value) {
    v["id"] = json!("both");
    c.send(v).await;
    let (mut reply, mut event) = (None, None);
    while reply.is_none() || event.is_none() {
        let frame = c.recv().await;
        if frame["ref"] == "both" {
            reply = Some(frame);
        } else if event.is_none() && pred(&frame) {
            event = Some(frame);
        }
    }
    (reply.unwrap(), event.unwrap())
}

/// Joins `room`, for a room new to everyone: the reply says the joiner owns it.
async fn create(c: &mut Client, name: &str, room: &str) {
    let r = ask(c, json!({"type": "join", "room": room})).await;
    assert_eq!(r["type"], "room", "{r}");
    assert_eq!(
        (&r["owner"], &r["visibility"], &r["users"][0]["room_role"]),
        (&json!(name), &json!("public"), &json!("owner")),
        "{r}"
    );
}

fn listed(rooms: &Value) -> Vec<&str> {
    rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect()
}

async fn owners_make_rooms_private_and_invite_only(backend: Backend) {
    let chat = chat(backend).await;
    let (mut ann, _) = hello(&chat, "ann", Role::User, "lobby").await;
    let (mut bob, _) = hello(&chat, "bob", Role::User, "lobby").await;
    create(&mut ann, "ann", "hiring").await;
    // The room's members are told (the one who asked too) before the ack.
    ann.send(json!({"type": "room_set", "room": "hiring", "topic": "who we hire", "visibility": "private", "invite_only": true, "id": "set"}))
        .await;
    let changed = ann
        .find(|v| v["type"] == "room_changed" && v["settings"].is_object())
        .await;
    let r = ann.find(|v| v["ref"] == "set").await;
    assert_eq!(r["type"], "ack", "{r}");
    assert_eq!(
        (
            &changed["settings"]["topic"],
            &changed["settings"]["visibility"],
            &changed["settings"]["invite_only"]
        ),
        (&json!("who we hire"), &json!("private"), &json!(true)),
        "{changed}"
    );
    let said = ask(
        &mut ann,
        json!({"type": "say", "room": "hiring", "text": "secret plans"}),
    )
    .await;
    assert_eq!(said["type"], "ack", "{said}");

    // bob: not listed, not admitted, no history, no search hit, no who.
    let rooms = ask(&mut bob, json!({"type": "rooms"})).await;
    assert!(!listed(&rooms).contains(&"hiring"), "{rooms}");
    let e = ask(&mut bob, json!({"type": "join", "room": "hiring"})).await;
    assert_eq!(e["code"], "forbidden", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("invite-only"),
        "{e}"
    );
    for request in [
        json!({"type": "history", "room": "hiring"}),
        json!({"type": "who", "room": "hiring"}),
        json!({"type": "typing", "room": "hiring", "state": "active"}),
    ] {
        let e = ask(&mut bob, request.clone()).await;
        assert_eq!(e["type"], "error", "{request} -> {e}");
    }
    let found = ask(&mut bob, json!({"type": "search", "query": "secret plans"})).await;
    if found["type"] == "search" {
        assert_eq!(found["messages"], json!([]), "{found}");
    }
    let e = ask(
        &mut bob,
        json!({"type": "room_set", "room": "hiring", "topic": "mine now"}),
    )
    .await;
    assert_eq!(e["code"], "forbidden", "{e}");

    // An invite admits exactly bob, once.
    let r = ask(
        &mut ann,
        json!({"type": "invite", "room": "hiring", "name": "bob"}),
    )
    .await;
    assert_eq!(r["type"], "ack", "{r}");
    let room = ask(&mut bob, json!({"type": "join", "room": "hiring"})).await;
    assert_eq!(room["type"], "room", "{room}");
    assert_eq!(
        (&room["topic"], &room["visibility"], &room["invite_only"]),
        (&json!("who we hire"), &json!("private"), &json!(true)),
        "{room}"
    );
    let ann_listed = room["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "ann")
        .unwrap();
    assert_eq!(ann_listed["room_role"], "owner", "{room}");
    let rooms = ask(&mut bob, json!({"type": "rooms"})).await;
    assert!(
        listed(&rooms).contains(&"hiring"),
        "a member sees it: {rooms}"
    );
    let found = ask(&mut bob, json!({"type": "search", "query": "secret plans"})).await;
    assert_eq!(
        found["messages"][0]["text"], "secret plans",
        "a member finds it: {found}"
    );
    let (mut carl, _) = hello(&chat, "carl", Role::User, "lobby").await;
    let e = ask(&mut carl, json!({"type": "join", "room": "hiring"})).await;
    assert_eq!(e["code"], "forbidden", "the invite was bob's: {e}");
    // A hello into it lands in the lobby instead.
    let (_, w) = hello(&chat, "carl", Role::User, "hiring").await;
    assert_eq!(w["room"], "lobby", "{w}");
    let r = ask(&mut bob, json!({"type": "leave", "room": "hiring"})).await;
    assert_eq!(r["type"], "ack", "{r}");
    let e = ask(&mut bob, json!({"type": "join", "room": "hiring"})).await;
    assert_eq!(e["code"], "forbidden", "the invite was used up: {e}");
    // Out of the private room, bob's search no longer reaches it (it did while he was in).
    let found = ask(&mut bob, json!({"type": "search", "query": "secret plans"})).await;
    if found["type"] == "search" {
        assert_eq!(found["messages"], json!([]), "{found}");
    }

    // The audit log has it, for ops only.
    let log = ask(&mut ann, json!({"type": "audit", "room": "hiring"})).await;
    let actions: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["invite", "set", "create"], "{log}");
    let e = ask(&mut carl, json!({"type": "audit", "room": "hiring"})).await;
    assert_eq!(e["code"], "forbidden", "{e}");
    chat.server.stop().await;
}

async fn a_ban_puts_every_session_out_and_ends_on_time(backend: Backend) {
    let chat = chat(backend).await;
    let (mut ann, _) = hello(&chat, "ann", Role::User, "lobby").await;
    create(&mut ann, "ann", "dev").await;
    let (mut phone, _) = hello(&chat, "bob", Role::User, "dev").await;
    let (mut laptop, _) = hello(&chat, "bob", Role::User, "dev").await;
    let said = ask(
        &mut ann,
        json!({"type": "say", "room": "dev", "text": "needle in dev"}),
    )
    .await;
    assert_eq!(said["type"], "ack", "{said}");
    let (r, seen) = ask_and_see(
        &mut ann,
        json!({"type": "ban", "room": "dev", "name": "bob", "duration": "3s", "reason": "spam"}),
        |v| v["type"] == "kicked" || v["type"] == "left",
    )
    .await;
    assert_eq!(r["type"], "ack", "{r}");
    for c in [&mut phone, &mut laptop] {
        let kicked = c
            .find(|v| v["type"] == "kicked" && v["name"] == "bob")
            .await;
        assert_eq!(
            (&kicked["room"], &kicked["by"], &kicked["reason"]),
            (&json!("dev"), &json!("ann"), &json!("spam")),
            "{kicked}"
        );
    }
    assert_eq!(
        (&seen["type"], &seen["name"]),
        (&json!("kicked"), &json!("bob")),
        "{seen}"
    );
    let e = ask(
        &mut phone,
        json!({"type": "say", "room": "dev", "text": "still?"}),
    )
    .await;
    assert_eq!(e["code"], "not_in_room", "{e}");
    let found = ask(&mut laptop, json!({"type": "search", "query": "needle"})).await;
    if found["type"] == "search" {
        assert_eq!(found["messages"], json!([]), "no longer a member: {found}");
    }
    let e = ask(&mut phone, json!({"type": "join", "room": "dev"})).await;
    assert_eq!(e["code"], "forbidden", "{e}");
    assert!(e["message"].as_str().unwrap().contains("spam"), "{e}");
    let bans = ask(&mut ann, json!({"type": "bans", "room": "dev"})).await;
    let list = bans["bans"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{bans}");
    assert_eq!(
        (&list[0]["name"], &list[0]["kind"], &list[0]["by"]),
        (&json!("bob"), &json!("ban"), &json!("ann"))
    );
    assert!(list[0]["until"].is_string(), "{bans}");
    let e = ask(&mut phone, json!({"type": "bans", "room": "dev"})).await;
    assert_eq!(e["code"], "forbidden", "{e}");

    // It ends on time, without a restart.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = ask(&mut phone, json!({"type": "join", "room": "dev"})).await;
        if r["type"] == "room" {
            break;
        }
        assert!(Instant::now() < deadline, "still banned: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    chat.server.stop().await;
}

async fn mutes_moderated_rooms_and_who_may_act_on_whom(backend: Backend) {
    let chat = chat(backend).await;
    let (mut ann, _) = hello(&chat, "ann", Role::User, "lobby").await;
    create(&mut ann, "ann", "ops").await;
    let (mut olga, _) = hello(&chat, "olga", Role::User, "ops").await;
    let (mut bob, _) = hello(&chat, "bob", Role::User, "ops").await;
    let r = ask(
        &mut ann,
        json!({"type": "role", "room": "ops", "name": "olga", "role": "op"}),
    )
    .await;
    assert_eq!(r["type"], "ack", "{r}");
    let op = bob
        .find(|v| v["type"] == "room_changed" && v["name"] == "olga")
        .await;
    assert_eq!(op["room_role"], "op", "{op}");

    // Who may act on whom: an op not on the owner, a member on nobody, ops not elsewhere.
    let e = ask(
        &mut olga,
        json!({"type": "ban", "room": "ops", "name": "ann"}),
    )
    .await;
    assert_eq!(e["code"], "forbidden", "{e}");
    let e = ask(
        &mut bob,
        json!({"type": "mute", "room": "ops", "name": "olga"}),
    )
    .await;
    assert_eq!(e["code"], "forbidden", "{e}");
    let e = ask(
        &mut olga,
        json!({"type": "role", "room": "ops", "name": "bob", "role": "op"}),
    )
    .await;
    assert_eq!(e["code"], "forbidden", "only the owner makes ops: {e}");
    let e = ask(
        &mut olga,
        json!({"type": "mute", "room": "lobby", "name": "bob"}),
    )
    .await;
    assert_eq!(e["code"], "forbidden", "not an op there: {e}");
    let e = ask(
        &mut olga,
        json!({"type": "mute", "room": "ops", "name": "bob", "duration": "soon"}),
    )
    .await;
    assert_eq!(e["code"], "bad_request", "{e}");

    // A mute: bob reads, may not speak, until it ends.
    let r = ask(
        &mut olga,
        json!({"type": "mute", "room": "ops", "name": "bob", "duration": "2s", "reason": "calm down"}),
    )
    .await;
    assert_eq!(r["type"], "ack", "{r}");
    let e = ask(
        &mut bob,
        json!({"type": "say", "room": "ops", "text": "hey"}),
    )
    .await;
    assert_eq!(e["code"], "forbidden", "{e}");
    assert!(e["message"].as_str().unwrap().contains("muted"), "{e}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = ask(
            &mut bob,
            json!({"type": "say", "room": "ops", "text": "back"}),
        )
        .await;
        if r["type"] == "ack" {
            break;
        }
        assert!(Instant::now() < deadline, "still muted: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Moderated: only ops and voices speak.
    let r = ask(
        &mut olga,
        json!({"type": "room_set", "room": "ops", "moderated": true}),
    )
    .await;
    assert_eq!(r["type"], "ack", "{r}");
    let e = ask(
        &mut bob,
        json!({"type": "say", "room": "ops", "text": "hello?"}),
    )
    .await;
    assert_eq!(e["code"], "forbidden", "{e}");
    let r = ask(
        &mut olga,
        json!({"type": "role", "room": "ops", "name": "bob", "role": "voice"}),
    )
    .await;
    assert_eq!(r["type"], "ack", "{r}");
    let r = ask(
        &mut bob,
        json!({"type": "say", "room": "ops", "text": "thanks"}),
    )
    .await;
    assert_eq!(r["type"], "ack", "{r}");
    let r = ask(
        &mut olga,
        json!({"type": "room_set", "room": "ops", "visibility": "private"}),
    )
    .await;
    assert_eq!(r["code"], "forbidden", "only the owner: {r}");

    // The owner gives the room away and stays an op.
    let r = ask(
        &mut ann,
        json!({"type": "transfer", "room": "ops", "to": "olga"}),
    )
    .await;
    assert_eq!(r["type"], "ack", "{r}");
    let who = bob
        .find(|v| v["type"] == "room_changed" && v["name"] == "ann")
        .await;
    assert_eq!(who["room_role"], "op", "{who}");
    chat.server.stop().await;
}

async fn a_server_wide_ban_closes_and_refuses_hello(backend: Backend) {
    let chat = chat(backend).await;
    let (mut root, _) = hello(&chat, "root", Role::Admin, "lobby").await;
    let (mut eve, _) = hello(&chat, "eve", Role::User, "lobby").await;
    let (mut ann, _) = hello(&chat, "ann", Role::User, "lobby").await;
    let e = ask(&mut ann, json!({"type": "ban", "room": "*", "name": "eve"})).await;
    assert_eq!(e["code"], "forbidden", "admins only: {e}");
    let e = ask(
        &mut ann,
        json!({"type": "ban", "room": "lobby", "address": "10.0.0.0/8"}),
    )
    .await;
    assert_eq!(e["code"], "forbidden", "admins only: {e}");
    let r = ask(
        &mut root,
        json!({"type": "ban", "room": "*", "name": "eve", "reason": "spam bot"}),
    )
    .await;
    assert_eq!(r["type"], "ack", "{r}");
    let (code, reason) = eve.closed().await;
    assert_eq!(code, 1008);
    assert!(reason.contains("banned"), "{reason}");
    let (_, e) = hello(&chat, "eve", Role::User, "lobby").await;
    assert_eq!(e["code"], "forbidden", "{e}");
    assert!(e["message"].as_str().unwrap().contains("spam bot"), "{e}");
    let r = ask(
        &mut root,
        json!({"type": "ban", "room": "*", "address": "10.0.0.0/8"}),
    )
    .await;
    assert_eq!(r["type"], "ack", "{r}");
    let bans = ask(&mut root, json!({"type": "bans", "room": "*"})).await;
    assert_eq!(bans["bans"].as_array().unwrap().len(), 2, "{bans}");
    let r = ask(
        &mut root,
        json!({"type": "unban", "room": "*", "name": "eve"}),
    )
    .await;
    assert_eq!(r["type"], "ack", "{r}");
    let (_, w) = hello(&chat, "eve", Role::User, "lobby").await;
    assert_eq!(w["type"], "welcome", "{w}");
    let _ = &mut ann;
    chat.server.stop().await;
}

/// A ban lasts across a restart (SQLite), and a cluster's other node enforces it within a
/// second.
#[tokio::test]
async fn a_ban_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db").display().to_string();
    let start = || {
        let db = db.clone();
        TestServer::with(move |c| {
            c.auth.mode = AuthMode::Token;
            c.auth.secret = Secret::new(SECRET);
            c.storage.path = db;
        })
    };
    let server = start().await;
    let hello = |addr, name: &str| {
        let token = token_for(SECRET, name, Role::User);
        let name = name.to_string();
        async move {
            let mut c = Client::connect(addr).await;
            let w = c
                .request(json!({"type": "hello", "name": name, "token": token}))
                .await;
            (c, w)
        }
    };
    let (mut ann, _) = hello(server.addr, "ann").await;
    create(&mut ann, "ann", "dev").await;
    let r = ask(
        &mut ann,
        json!({"type": "ban", "room": "dev", "name": "bob", "reason": "for good"}),
    )
    .await;
    assert_eq!(r["type"], "ack", "{r}");
    drop(ann);
    server.stop().await;
    let server = start().await;
    let (mut bob, _) = hello(server.addr, "bob").await;
    let e = ask(&mut bob, json!({"type": "join", "room": "dev"})).await;
    assert_eq!(e["code"], "forbidden", "{e}");
    server.stop().await;
}

#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[cfg_attr(
    chatd_no_postgres,
    ignore = "needs PostgreSQL (apt install postgresql)"
)]
#[tokio::test]
async fn a_ban_on_one_node_holds_on_the_other() {
    let pair = TestServer::pg_pair(|c| {
        c.auth.mode = AuthMode::Token;
        c.auth.secret = Secret::new(SECRET);
    })
    .await;
    let (a, b) = (&pair.a, &pair.b);
    let connect = |addr, name: &str, room: &str| {
        let token = token_for(SECRET, name, Role::User);
        let (name, room) = (name.to_string(), room.to_string());
        async move {
            let mut c = Client::connect(addr).await;
            let w = c
                .request(json!({"type": "hello", "name": name, "token": token, "room": room}))
                .await;
            (c, w)
        }
    };
    let (mut ann, _) = connect(a.addr, "ann", "lobby").await;
    create(&mut ann, "ann", "dev").await;
    let (mut bob, w) = connect(b.addr, "bob", "dev").await;
    assert_eq!(w["room"], "dev", "{w}");
    let r = ask(
        &mut ann,
        json!({"type": "ban", "room": "dev", "name": "bob"}),
    )
    .await;
    assert_eq!(r["type"], "ack", "{r}");
    let kicked = bob.find(|v| v["type"] == "kicked").await;
    assert_eq!(kicked["room"], "dev", "{kicked}");
    let e = ask(&mut bob, json!({"type": "join", "room": "dev"})).await;
    assert_eq!(e["code"], "forbidden", "{e}");
    pair.stop().await;
}

/// `chatd token` prints its token's id; `chatd token revoke` (by id, or by subject) refuses the
/// token from then on and closes the connections it signed in, on the running server.
#[test]
fn a_revoked_token_is_refused_and_its_connections_closed() {
    use crate::helpers::{Daemon, SyncClient, chatd_command};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db").display().to_string();
    let env = [
        ("CHATD_AUTH__MODE", "token"),
        ("CHATD_AUTH__SECRET", SECRET),
        ("CHATD_STORAGE__PATH", db.as_str()),
    ];
    let d = Daemon::start(&[], &env);
    let chatd = |args: &[&str]| {
        let mut cmd = chatd_command();
        cmd.args(args).envs(env);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8(out.stdout).unwrap().trim().to_string(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (token, said) = chatd(&["token", "ann"]);
    let jti = said
        .split_whitespace()
        .skip_while(|w| *w != "id")
        .nth(1)
        .expect("chatd token prints the token's id")
        .to_string();
    let (other, _) = chatd(&["token", "ann"]);
    let hello = |token: &str| {
        let mut c = SyncClient::connect(d.addr);
        c.send(json!({"type": "hello", "name": "ann", "token": token}));
        let w = c.recv_until(|v| v["type"] == "welcome" || v["type"] == "error");
        (c, w)
    };
    let (mut live, w) = hello(&token);
    assert_eq!(w["type"], "welcome", "{w}");
    chatd(&["token", "revoke", "--jti", &jti]);
    let (code, reason) = live.closed();
    assert_eq!((code, reason.as_str()), (1008, "kicked: token revoked"));
    let (_, e) = hello(&token);
    assert_eq!(e["code"], "unauthorized", "{e}");
    let (mut still, w) = hello(&other);
    assert_eq!(
        w["type"], "welcome",
        "another token of ann's still works: {w}"
    );
    chatd(&["token", "revoke", "--subject", "ann"]);
    let (code, _) = still.closed();
    assert_eq!(code, 1008);
    let (_, e) = hello(&other);
    assert_eq!(e["code"], "unauthorized", "{e}");
}

/// chatctl in a real terminal: the owner of a room sets its topic (shown under the room), makes
/// it private, bans someone (`/ban NAME 7d reason`) and lists the bans; the banned user's
/// chatctl says it was removed and cannot come back.
#[cfg_attr(chatd_no_tmux, ignore = "needs tmux (apt install tmux)")]
#[test]
fn chatctl_moderates_a_room_in_a_terminal() {
    use crate::chatctl::Tmux;
    use crate::helpers::{Daemon, SyncClient};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db").display().to_string();
    let env = crate::accounts::accounts_env(&db);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let d = Daemon::start(&[], &env);
    let mut bob = SyncClient::connect(d.addr);
    bob.send(json!({"type": "register", "name": "bob", "password": "bob's password"}));
    let w = bob.recv_until(|v| v["type"] == "welcome" || v["type"] == "error");
    assert_eq!(w["type"], "welcome", "{w}");
    let password = dir.path().join("password");
    std::fs::write(&password, "ann's password\n").unwrap();
    let tmux = Tmux {
        socket: format!("chatctl-rooms-{}", std::process::id()),
    };
    let cmd = format!(
        "NO_COLOR=1 {} --url ws://{} --password-file {} connect ann --register; echo EXIT=$?; sleep 30",
        env!("CARGO_BIN_EXE_chatctl"),
        d.addr,
        password.display()
    );
    tmux.start(24, &cmd);
    tmux.wait_for("the welcome", |s| s.contains("welcome, ann!"));
    tmux.keys(&["/join team", "Enter"]);
    tmux.wait_for("the room", |s| s.contains("you are in #team with: ~ann"));
    tmux.keys(&["/topic Ship it on Friday", "Enter"]);
    tmux.wait_for("the topic", |s| {
        s.contains("#team: topic: Ship it on Friday")
    });
    bob.send(json!({"type": "join", "room": "team", "id": "j"}));
    let room = bob.recv_until(|v| v["ref"] == "j");
    assert_eq!(room["topic"], "Ship it on Friday", "{room}");
    tmux.wait_for("bob", |s| s.contains("bob joined"));
    tmux.keys(&["/ban bob 7d spamming links", "Enter"]);
    tmux.wait_for("the ban", |s| {
        s.contains("bob was kicked by ann: spamming links")
    });
    let kicked = bob.recv_until(|v| v["type"] == "kicked");
    assert_eq!(kicked["reason"], "spamming links", "{kicked}");
    tmux.keys(&["/bans", "Enter"]);
    tmux.wait_for("the list", |s| s.contains("ban bob by ann, until"));
    tmux.keys(&["/private", "Enter"]);
    tmux.wait_for("private", |s| s.contains("[private, invite-only]"));
    bob.send(json!({"type": "join", "room": "team", "id": "j2"}));
    let e = bob.recv_until(|v| v["ref"] == "j2");
    assert_eq!(e["code"], "forbidden", "{e}");
    tmux.keys(&["C-d"]);
    tmux.wait_for("a clean exit", |s| s.contains("EXIT=0"));
}

/// What one op can pile up is bounded: 1,000 invites per room (then `forbidden`), reasons cut to
/// 200 bytes, topics of at most 300 bytes on one line.
#[tokio::test]
async fn what_an_op_piles_up_is_bounded() {
    let chat = chat(Backend::Local).await;
    let (mut ann, _) = hello(&chat, "ann", Role::User, "lobby").await;
    create(&mut ann, "ann", "big").await;
    for i in 0..1000 {
        let name = format!("guest{i}");
        ann.send(json!({"type": "invite", "room": "big", "name": name, "id": format!("i{i}")}))
            .await;
    }
    let mut acked = 0;
    while acked < 1000 {
        let v = ann.recv().await;
        if v["ref"].as_str().is_some_and(|r| r.starts_with('i')) {
            assert_eq!(v["type"], "ack", "{v}");
            acked += 1;
        }
    }
    let e = ask(
        &mut ann,
        json!({"type": "invite", "room": "big", "name": "one_more"}),
    )
    .await;
    assert_eq!(e["code"], "forbidden", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("1000 invites"),
        "{e}"
    );
    let long = "x".repeat(5000);
    let r = ask(
        &mut ann,
        json!({"type": "ban", "room": "big", "name": "troll", "reason": long}),
    )
    .await;
    assert_eq!(r["type"], "ack", "{r}");
    let bans = ask(&mut ann, json!({"type": "bans", "room": "big"})).await;
    assert_eq!(
        bans["bans"][0]["reason"].as_str().unwrap().len(),
        200,
        "cut"
    );
    let e = ask(
        &mut ann,
        json!({"type": "room_set", "room": "big", "topic": "y".repeat(301)}),
    )
    .await;
    assert_eq!(e["code"], "bad_request", "{e}");
    let e = ask(
        &mut ann,
        json!({"type": "room_set", "room": "big", "topic": "two\nlines"}),
    )
    .await;
    assert_eq!(e["code"], "bad_request", "{e}");
    chat.server.stop().await;
}

/// A chatctl banned from the room on screen says so and speaks in its next room from then on.
#[test]
fn chatctl_banned_from_a_room_moves_on() {
    use crate::helpers::{Daemon, Proc, SyncClient, chatctl_command};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db").display().to_string();
    let env = crate::accounts::accounts_env(&db);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let d = Daemon::start(&[], &env);
    let mut ann = SyncClient::connect(d.addr);
    ann.send(json!({"type": "register", "name": "ann", "password": "ann's password"}));
    ann.recv_until(|v| v["type"] == "welcome");
    ann.send(json!({"type": "join", "room": "dev", "id": "j"}));
    let room = ann.recv_until(|v| v["ref"] == "j");
    assert_eq!(room["owner"], "ann", "{room}");
    let password = dir.path().join("password");
    std::fs::write(&password, "bob's password\n").unwrap();
    let mut cmd = chatctl_command();
    cmd.env("NO_COLOR", "1")
        .args(["--url", &format!("ws://{}", d.addr)])
        .args(["--password-file", password.to_str().unwrap()])
        .args(["connect", "bob", "--register"]);
    let mut bob = Proc::spawn(cmd);
    bob.expect_out("welcome, bob!");
    bob.write_line("/join dev");
    bob.expect_out("you are in #dev with:");
    ann.send(json!({"type": "ban", "room": "dev", "name": "bob", "reason": "spam", "id": "b"}));
    let ack = ann.recv_until(|v| v["ref"] == "b");
    assert_eq!(ack["type"], "ack", "{ack}");
    bob.expect_out("bob was kicked by ann: spam");
    bob.write_line("still here");
    bob.expect_out("#lobby <bob> still here");
    bob.close_stdin();
    assert_eq!(bob.wait_exit(), Some(0));
}
