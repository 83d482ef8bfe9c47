//! One person, several connections (tokens and accounts): every broker, as clients see it. A
//! user's second device is welcomed (`sessions: 2`) without a `joined` for the others, is listed
//! once, hears what the first says and gets every PM (and a copy of the ones it sends), never
//! sees its own typing; the user leaves when the last connection does; a kick closes them all;
//! past `auth.max_sessions_per_user`, `too_many_sessions` (nobody is closed to make room).

use serde_json::{Value, json};

use crate::helpers::{Backend, Client, TestServer, token_for};
use chatd::config::{AuthMode, Secret};
use chatd::protocol::Role;

const SECRET: &str = "sessions-test-secret-0123456789abcdef0123";

contract!(
    two_connections_of_one_user_are_one_person,
    past_the_most_connections_a_hello_is_refused,
    a_kick_closes_every_connection_of_the_user,
    sessions_are_listed_and_one_is_logged_out_from_another,
);

async fn server(backend: Backend, most: usize) -> TestServer {
    TestServer::with_broker(backend, |c| {
        c.auth.mode = AuthMode::Token;
        c.auth.secret = Secret::new(SECRET);
        c.auth.max_sessions_per_user = most;
        c.limits.rate_per_sec = 0.0;
    })
    .await
}

async fn hello(server: &TestServer, name: &str, role: Role) -> (Client, Value) {
    let mut c = Client::connect(server.addr).await;
    let token = token_for(SECRET, name, role);
    let w = c
        .request(json!({"type": "hello", "name": name, "token": token}))
        .await;
    (c, w)
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect()
}

async fn two_connections_of_one_user_are_one_person(backend: Backend) {
    let server = server(backend, 8).await;
    let (mut bob, _) = hello(&server, "bob", Role::User).await;
    let (mut phone, w) = hello(&server, "ann", Role::User).await;
    assert_eq!(
        (&w["type"], &w["sessions"]),
        (&json!("welcome"), &json!(1)),
        "{w}"
    );
    assert_eq!(bob.expect("joined").await["name"], "ann");
    let (mut laptop, w) = hello(&server, "ann", Role::User).await;
    assert_eq!(
        (&w["type"], &w["sessions"]),
        (&json!("welcome"), &json!(2)),
        "{w}"
    );
    assert_eq!(names(&w["users"]), ["ann", "bob"], "listed once: {w}");
    assert_eq!(w["user_count"], 2, "{w}");
    let who = bob.request(json!({"type": "who"})).await;
    assert_eq!(names(&who["users"]), ["ann", "bob"], "{who}");
    let rooms = bob.request(json!({"type": "rooms"})).await;
    assert_eq!(
        rooms["rooms"][0]["members"], 2,
        "users, not connections: {rooms}"
    );

    // What one connection says, the other hears; the others hear it once.
    let ack = phone
        .request(json!({"type": "say", "text": "from my phone"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let m = laptop.expect("message").await;
    assert_eq!(
        (&m["from"], &m["text"]),
        (&json!("ann"), &json!("from my phone"))
    );
    assert_eq!(
        bob.expect("message").await["text"],
        "from my phone",
        "no `joined` before it"
    );

    // A PM reaches every connection of the recipient, and the sender's other one.
    let ack = bob
        .request(json!({"type": "pm", "to": "ann", "text": "psst"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    for c in [&mut phone, &mut laptop] {
        let pm = c.expect("pm").await;
        assert_eq!((&pm["from"], &pm["text"]), (&json!("bob"), &json!("psst")));
    }
    let ack = phone
        .request(json!({"type": "pm", "to": "bob", "text": "hi bob"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(bob.expect("pm").await["text"], "hi bob");
    let copy = laptop.expect("pm").await;
    assert_eq!(
        (&copy["from"], &copy["to"], &copy["text"]),
        (&json!("ann"), &json!("bob"), &json!("hi bob")),
        "the sender's other connection sees what it sent"
    );

    // Typing reaches the others, never one's own connections.
    phone
        .send(json!({"type": "typing", "room": "lobby", "state": "active"}))
        .await;
    assert_eq!(bob.expect("typing").await["from"], "ann");
    let ack = phone.request(json!({"type": "say", "text": "typed"})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(
        laptop.expect("message").await["text"],
        "typed",
        "no typing of its own before the message"
    );
    assert_eq!(bob.expect("message").await["text"], "typed");

    // The user leaves with the last connection.
    laptop.ws.close(None).await.ok();
    laptop.closed().await;
    let ack = phone
        .request(json!({"type": "say", "text": "still here"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(
        bob.expect("message").await["text"],
        "still here",
        "no `left` while a connection stays"
    );
    phone.ws.close(None).await.ok();
    let left = bob.expect("left").await;
    assert_eq!(left["name"], "ann", "{left}");
    server.stop().await;
}

async fn past_the_most_connections_a_hello_is_refused(backend: Backend) {
    let server = server(backend, 2).await;
    let (mut one, _) = hello(&server, "ann", Role::User).await;
    let (_two, w) = hello(&server, "ann", Role::User).await;
    assert_eq!(w["type"], "welcome", "{w}");
    let (_, e) = hello(&server, "ANN", Role::User).await;
    assert_eq!(e["code"], "too_many_sessions", "{e}");
    let ack = one
        .request(json!({"type": "say", "text": "nobody was closed"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    server.stop().await;
}

async fn a_kick_closes_every_connection_of_the_user(backend: Backend) {
    let server = server(backend, 8).await;
    let (mut root, _) = hello(&server, "root", Role::Admin).await;
    let (mut one, _) = hello(&server, "ann", Role::User).await;
    let (mut two, _) = hello(&server, "ann", Role::User).await;
    assert_eq!(root.expect("joined").await["name"], "ann");
    root.send(json!({"type": "kick", "name": "ann", "reason": "spam", "id": "k"}))
        .await;
    let kicked = root.expect("kicked").await;
    assert_eq!(
        (&kicked["name"], &kicked["room"]),
        (&json!("ann"), &json!("lobby"))
    );
    assert_eq!(
        root.expect("ack").await["ref"],
        "k",
        "one `kicked`, then the ack"
    );
    for c in [&mut one, &mut two] {
        let (code, reason) = c.closed().await;
        assert_eq!((code, reason.as_str()), (1008, "kicked: spam"));
    }
    let who = root.request(json!({"type": "who"})).await;
    assert_eq!(names(&who["users"]), ["root"], "{who}");
    server.stop().await;
}

async fn sessions_are_listed_and_one_is_logged_out_from_another(backend: Backend) {
    let server = server(backend, 8).await;
    let device = |name: &str, device: &str| {
        let token = token_for(SECRET, name, Role::User);
        json!({"type": "hello", "name": name, "token": token, "device": device})
    };
    let mut phone = Client::connect(server.addr).await;
    let w = phone.request(device("ann", "phone")).await;
    let phone_id = w["session"]
        .as_str()
        .expect("welcome names the session")
        .to_string();
    let mut laptop = Client::connect(server.addr).await;
    let w = laptop.request(device("ann", "laptop")).await;
    let laptop_id = w["session"].as_str().unwrap().to_string();
    assert_ne!(phone_id, laptop_id);

    let list = laptop.request(json!({"type": "sessions"})).await;
    assert_eq!(list["type"], "sessions", "{list}");
    let shown: Vec<(&str, &str, bool)> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert!(s["since"].as_str().is_some_and(|t| t.ends_with('Z')), "{s}");
            (
                s["session"].as_str().unwrap(),
                s["device"].as_str().unwrap(),
                s["current"] == true,
            )
        })
        .collect();
    assert_eq!(
        shown,
        [(&*phone_id, "phone", false), (&*laptop_id, "laptop", true)],
        "oldest first, the asking one marked: {list}"
    );

    // Someone else cannot name ann's sessions; an unknown one is not found.
    let mut bob = Client::connect(server.addr).await;
    let token = token_for(SECRET, "bob", Role::User);
    let w = bob
        .request(json!({"type": "hello", "name": "bob", "token": token, "room": "elsewhere"}))
        .await;
    assert_eq!(w["type"], "welcome", "{w}");
    let e = bob
        .request(json!({"type": "logout", "session": phone_id}))
        .await;
    assert_eq!(e["code"], "not_found", "{e}");
    let e = laptop
        .request(json!({"type": "logout", "session": "nope"}))
        .await;
    assert_eq!(e["code"], "not_found", "{e}");

    // The laptop logs the phone out: it closes with 1008, the laptop stays.
    let ack = laptop
        .request(json!({"type": "logout", "session": phone_id}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(phone.closed().await, (1008, "logged out".to_string()));
    let list = laptop.request(json!({"type": "sessions"})).await;
    assert_eq!(list["sessions"].as_array().unwrap().len(), 1, "{list}");
    let ack = laptop
        .request(json!({"type": "say", "text": "still here"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");

    // A device name is short and printable.
    let mut long = Client::connect(server.addr).await;
    let e = long.request(device("ann", &"x".repeat(33))).await;
    assert_eq!(e["code"], "bad_request", "{e}");
    server.stop().await;
}

/// Across nodes: one user on two nodes is one person to a third; a PM reaches both; when the
/// node holding one connection dies, its ghost is reaped without a `left` (the user is still on
/// the other node), and the user leaves with the last connection.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_on_two_nodes_is_one_person_and_outlives_a_dead_node() {
    use crate::helpers::Daemon;
    use crate::redis_server::Redis;
    use std::time::Duration;
    let redis = Redis::start();
    let node = |id: &str| {
        let mut env = crate::cluster::node_env(&redis, id);
        env.push(("CHATD_AUTH__MODE".into(), "token".into()));
        env.push(("CHATD_AUTH__SECRET".into(), SECRET.into()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Daemon::start(&[], &env)
    };
    let a = node("a");
    let mut b = node("b");
    let connect = |d: &Daemon, name: &str, role| {
        let addr = d.addr;
        let token = token_for(SECRET, name, role);
        let name = name.to_string();
        async move {
            let mut c = Client::connect(addr).await;
            let w = c
                .request(json!({"type": "hello", "name": name, "token": token}))
                .await;
            (c, w)
        }
    };
    let (mut watcher, _) = connect(&a, "watcher", Role::User).await;
    let (mut on_a, w) = connect(&a, "ann", Role::User).await;
    assert_eq!(w["sessions"], 1, "{w}");
    assert_eq!(watcher.expect("joined").await["name"], "ann");
    let (mut on_b, w) = connect(&b, "ann", Role::User).await;
    assert_eq!(w["sessions"], 2, "{w}");
    assert_eq!(names(&w["users"]), ["ann", "watcher"], "{w}");
    let ack = watcher
        .request(json!({"type": "pm", "to": "ann", "text": "both?"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(c.expect("pm").await["text"], "both?");
    }
    let ack = on_b.request(json!({"type": "say", "text": "from b"})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(
        watcher.expect("message").await["text"],
        "from b",
        "no second `joined`"
    );
    assert_eq!(on_a.expect("message").await["text"], "from b");

    // A third connection, on node b: listed from node a, and logged out from there.
    let mut tablet = Client::connect(b.addr).await;
    let token = token_for(SECRET, "ann", Role::User);
    let w = tablet
        .request(json!({"type": "hello", "name": "ann", "token": token, "device": "tablet"}))
        .await;
    let tablet_id = w["session"].as_str().unwrap().to_string();
    let list = on_a.request(json!({"type": "sessions"})).await;
    let devices: Vec<&Value> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["device"])
        .collect();
    assert_eq!(devices.len(), 3, "{list}");
    assert!(
        list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["session"] == *tablet_id && s["device"] == "tablet"),
        "{list}"
    );
    let ack = on_a
        .request(json!({"type": "logout", "session": tablet_id}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(tablet.closed().await, (1008, "logged out".to_string()));

    // Node b dies: its connection of ann is a ghost, reaped (TTL 2 s + a sweep) without `left`.
    b.signal("KILL");
    b.wait_exit(Duration::from_secs(5));
    drop(on_b);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ack = on_a
            .request(json!({"type": "say", "text": "still here"}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let v = watcher
            .find(|v| v["type"] == "left" || v["type"] == "message")
            .await;
        assert_eq!(v["type"], "message", "ann is still on node a: {v}");
        let who = watcher.request(json!({"type": "who"})).await;
        if std::time::Instant::now() > deadline {
            assert_eq!(names(&who["users"]), ["ann", "watcher"], "{who}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    on_a.ws.close(None).await.ok();
    let left = watcher.find(|v| v["type"] == "left").await;
    assert_eq!(left["name"], "ann", "{left}");
    drop(a);
}
