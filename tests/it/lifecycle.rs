//! Messages that change, as clients see them: edits, deletes, replies and reactions reach every
//! member as events numbered in the room's order, so a client that was away and resumes
//! converges; history pages show messages as they are now; search finds the new text and never
//! the old or the deleted; all of it survives a restart. On the single node with SQLite
//! (directly and answering late) and with PostgreSQL. A cluster refuses them clearly (not yet
//! built there).

use serde_json::{Value, json};

use crate::helpers::{Backend, Client, TestServer, ask, token_for};
use crate::postgres_server::Postgres;
use chatd::config::{AuthMode, Secret};
use chatd::protocol::Role;

const SECRET: &str = "lifecycle-test-secret-0123456789abcdef012345";

macro_rules! lifecycle_contract {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $test() { super::$test(super::Store::Sqlite).await })*
        }
        mod late {
            $(#[tokio::test] async fn $test() { super::$test(super::Store::SqliteLate).await })*
        }
        mod postgres {
            $(
                #[cfg_attr(chatd_no_postgres, ignore = "needs PostgreSQL (apt install postgresql)")]
                #[tokio::test]
                async fn $test() { super::$test(super::Store::Postgres).await }
            )*
        }
        mod redis {
            $(
                #[cfg_attr(chatd_no_redis, ignore = "needs redis-server (apt install redis-server)")]
                #[cfg_attr(chatd_no_postgres, ignore = "needs PostgreSQL (apt install postgresql)")]
                #[tokio::test]
                async fn $test() { super::$test(super::Store::Cluster).await }
            )*
        }
    };
}

lifecycle_contract!(
    edits_deletes_replies_and_reactions_reach_everyone_and_a_resumer,
    changes_survive_a_restart,
    who_may_change_what,
    a_message_only_the_store_holds_can_be_changed,
    pms_are_edited_and_deleted_by_their_sender,
);

#[derive(Clone, Copy, PartialEq, Debug)]
enum Store {
    Sqlite,
    SqliteLate,
    Postgres,
    /// A cluster node on PostgreSQL.
    Cluster,
}

/// A token-mode server with a store that outlives it (`restart`).
struct Chat {
    server: Option<TestServer>,
    store: Store,
    dir: tempfile::TempDir,
    pg: Option<Postgres>,
    history: usize,
}

impl Chat {
    async fn start(store: Store, history: usize) -> Chat {
        let mut chat = Chat {
            server: None,
            store,
            dir: tempfile::tempdir().unwrap(),
            pg: matches!(store, Store::Postgres | Store::Cluster).then(Postgres::start),
            history,
        };
        chat.server = Some(chat.boot().await);
        chat
    }

    async fn boot(&self) -> TestServer {
        let db = self.dir.path().join("chat.db").display().to_string();
        let url = self.pg.as_ref().map(|pg| pg.url.clone());
        let backend = match self.store {
            Store::SqliteLate => Backend::Late,
            Store::Cluster => Backend::Redis,
            _ => Backend::Local,
        };
        let history = self.history;
        TestServer::with_broker(backend, move |c| {
            c.auth.mode = AuthMode::Token;
            c.auth.secret = Secret::new(SECRET);
            c.limits.rate_per_sec = 0.0;
            c.history.size = history;
            c.history.on_join = history.min(50);
            match url {
                Some(url) => c.storage.url = chatd::config::SecretUrl::new(url),
                None => c.storage.path = db,
            }
        })
        .await
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.server.as_ref().unwrap().addr
    }

    async fn restart(&mut self) {
        self.server.take().unwrap().stop().await;
        self.server = Some(self.boot().await);
    }

    async fn hello(&self, name: &str, role: Role) -> (Client, Value) {
        let mut c = Client::connect(self.addr()).await;
        let token = token_for(SECRET, name, role);
        let w = c
            .request(json!({"type": "hello", "name": name, "token": token}))
            .await;
        assert_eq!(w["type"], "welcome", "{w}");
        (c, w)
    }
}

async fn say(c: &mut Client, text: &str) -> u64 {
    let ack = ask(c, json!({"type": "say", "room": "lobby", "text": text})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ack["id"].as_u64().unwrap()
}

/// The history page of `lobby` as `c` sees it.
async fn page(c: &mut Client) -> Vec<Value> {
    let h = ask(c, json!({"type": "history", "room": "lobby", "limit": 100})).await;
    assert_eq!(h["type"], "history", "{h}");
    h["messages"].as_array().unwrap().clone()
}

fn message(page: &[Value], id: u64) -> &Value {
    page.iter()
        .find(|m| m["type"] == "message" && m["id"] == id)
        .unwrap_or_else(|| panic!("no message {id} in {page:?}"))
}

async fn search(c: &mut Client, words: &str) -> Vec<String> {
    let r = ask(c, json!({"type": "search", "query": words})).await;
    assert_eq!(r["type"], "search", "{r}");
    r["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect()
}

async fn edits_deletes_replies_and_reactions_reach_everyone_and_a_resumer(store: Store) {
    let chat = Chat::start(store, 200).await;
    let (mut ann, _) = chat.hello("ann", Role::User).await;
    let (mut bob, _) = chat.hello("bob", Role::User).await;
    let (mut cat, w) = chat.hello("cat", Role::User).await;
    let epoch = w["epoch"].as_str().unwrap().to_string();
    let typo = say(&mut ann, "shipping the relaese today").await;
    let secret = say(&mut ann, "oops my password is hunter2swordfish").await;
    let seen = cat
        .find(|v| v["type"] == "message" && v["id"] == secret)
        .await;
    let since = seen["seq"].as_u64().unwrap();
    cat.ws.close(None).await.ok();
    drop(cat);

    // An edit reaches everyone, numbered in the room's order.
    let ack = ask(
        &mut ann,
        json!({"type": "edit", "room": "lobby", "msg": typo, "text": "shipping the release today"}),
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let edited = bob.find(|v| v["type"] == "edited").await;
    assert_eq!(
        (
            &edited["msg"],
            &edited["text"],
            &edited["by"],
            &edited["seq"]
        ),
        (
            &json!(typo),
            &json!("shipping the release today"),
            &json!("ann"),
            &ack["seq"]
        ),
        "{edited}"
    );
    // A delete takes a pasted secret back.
    let ack = ask(
        &mut ann,
        json!({"type": "delete", "room": "lobby", "msg": secret}),
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let deleted = bob.find(|v| v["type"] == "deleted").await;
    assert_eq!(
        (&deleted["msg"], &deleted["by"]),
        (&json!(secret), &json!("ann"))
    );
    assert!(deleted.get("text").is_none(), "{deleted}");
    // Reactions toggle; the same one twice is one.
    for (who, emoji) in [("bob", "👍"), ("ann", "👍"), ("ann", ":ship_it:")] {
        let c = if who == "ann" { &mut ann } else { &mut bob };
        let r = ask(
            c,
            json!({"type": "react", "room": "lobby", "msg": typo, "emoji": emoji, "on": true}),
        )
        .await;
        assert!(r["seq"].is_u64(), "a reaction is numbered: {r}");
        if who == "bob" {
            let r = ann.find(|v| v["type"] == "reaction").await;
            assert_eq!(
                (&r["emoji"], &r["on"], &r["msg"], &r["from"]),
                (&json!("👍"), &json!(true), &json!(typo), &json!("bob"))
            );
        }
    }
    let again = ask(
        &mut bob,
        json!({"type": "react", "room": "lobby", "msg": typo, "emoji": "👍", "on": true}),
    )
    .await;
    assert!(
        again["seq"].is_null(),
        "nothing changed, nothing numbered: {again}"
    );
    let off = ask(
        &mut ann,
        json!({"type": "react", "room": "lobby", "msg": typo, "emoji": ":ship_it:", "on": false}),
    )
    .await;
    assert!(off["seq"].is_u64(), "{off}");
    // A reply names a message of the room.
    let reply = ask(
        &mut bob,
        json!({"type": "say", "room": "lobby", "text": "great", "reply_to": typo}),
    )
    .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    let seen = ann
        .find(|v| v["type"] == "message" && v["text"] == "great")
        .await;
    assert_eq!(seen["reply_to"], typo, "{seen}");
    for bad in [
        json!({"type": "say", "room": "lobby", "text": "?", "reply_to": 987_654_321}),
        json!({"type": "edit", "room": "lobby", "msg": 987_654_321, "text": "x"}),
        json!({"type": "react", "room": "lobby", "msg": secret, "emoji": "👍"}),
    ] {
        let e = ask(&mut bob, bad.clone()).await;
        assert_eq!(e["code"], "not_found", "{bad} -> {e}");
    }
    for bad in [
        json!({"type": "react", "room": "lobby", "msg": typo, "emoji": "thumbs up"}),
        json!({"type": "react", "room": "lobby", "msg": typo, "emoji": "x".repeat(80)}),
        json!({"type": "edit", "room": "lobby", "text": "no msg"}),
    ] {
        let e = ask(&mut bob, bad.clone()).await;
        assert_eq!(e["code"], "bad_request", "{bad} -> {e}");
    }

    // History shows messages as they are now, and the changes after them.
    let page_bob = page(&mut bob).await;
    let m = message(&page_bob, typo);
    assert_eq!(m["text"], "shipping the release today", "{m}");
    assert!(m["edited_ts"].is_string(), "{m}");
    assert_eq!(
        m["reactions"],
        json!([{"emoji": "👍", "count": 2, "me": true}]),
        "{m}"
    );
    let gone = message(&page_bob, secret);
    assert_eq!(
        (&gone["deleted"], &gone["text"]),
        (&json!(true), &json!("")),
        "{gone}"
    );
    let kinds: Vec<&str> = page_bob
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    for kind in ["edited", "deleted", "reaction"] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }
    assert!(
        !page_bob.iter().any(|m| m.to_string().contains("hunter2")),
        "the deleted text is nowhere in history: {page_bob:?}"
    );
    // Search finds the new text, never the old or the deleted.
    assert_eq!(
        search(&mut bob, "release").await,
        ["shipping the release today"]
    );
    assert!(search(&mut bob, "relaese").await.is_empty());
    assert!(search(&mut bob, "hunter2swordfish").await.is_empty());

    // Cat was away: resuming brings the changes, in order, and nothing of the secret.
    let mut cat = Client::connect(chat.addr()).await;
    let token = token_for(SECRET, "cat", Role::User);
    let w = cat
        .request(
            json!({"type": "hello", "name": "cat", "token": token, "since": since, "epoch": epoch}),
        )
        .await;
    assert_eq!(w["resumed"], true, "{w}");
    let missed: Vec<&Value> = w["history"].as_array().unwrap().iter().collect();
    let kinds: Vec<&str> = missed.iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "edited", "deleted", "reaction", "reaction", "reaction", "reaction", "message"
        ],
        "{w}"
    );
    assert!(!w.to_string().contains("hunter2"), "{w}");
    chat.server.unwrap().stop().await;
}

async fn changes_survive_a_restart(store: Store) {
    let mut chat = Chat::start(store, 200).await;
    let (mut ann, _) = chat.hello("ann", Role::User).await;
    let (mut bob, _) = chat.hello("bob", Role::User).await;
    let kept = say(&mut ann, "first draft").await;
    let gone = say(&mut ann, "delete me, secretpassphrase").await;
    for (who, m) in [
        (
            "ann",
            json!({"type": "edit", "room": "lobby", "msg": kept, "text": "final words"}),
        ),
        (
            "ann",
            json!({"type": "delete", "room": "lobby", "msg": gone}),
        ),
        (
            "ann",
            json!({"type": "react", "room": "lobby", "msg": kept, "emoji": "🎉"}),
        ),
        (
            "bob",
            json!({"type": "react", "room": "lobby", "msg": kept, "emoji": "🎉"}),
        ),
        (
            "bob",
            json!({"type": "react", "room": "lobby", "msg": kept, "emoji": "👀"}),
        ),
        (
            "bob",
            json!({"type": "react", "room": "lobby", "msg": kept, "emoji": "👀", "on": false}),
        ),
    ] {
        let c = if who == "ann" { &mut ann } else { &mut bob };
        let r = ask(c, m.clone()).await;
        assert_eq!(r["type"], "ack", "{m} -> {r}");
    }
    drop((ann, bob));
    chat.restart().await;
    let (mut ann, _) = chat.hello("ann", Role::User).await;
    let p = page(&mut ann).await;
    let m = message(&p, kept);
    assert_eq!(m["text"], "final words", "{m}");
    assert_eq!(
        m["reactions"],
        json!([{"emoji": "🎉", "count": 2, "me": true}]),
        "{m}"
    );
    let g = message(&p, gone);
    assert_eq!(
        (&g["deleted"], &g["text"]),
        (&json!(true), &json!("")),
        "{g}"
    );
    assert!(
        !p.iter().any(|m| m.to_string().contains("secretpassphrase")),
        "{p:?}"
    );
    assert_eq!(search(&mut ann, "final").await, ["final words"]);
    assert!(search(&mut ann, "draft").await.is_empty());
    assert!(search(&mut ann, "secretpassphrase").await.is_empty());
    // Changes go on where they left off.
    let r = ask(
        &mut ann,
        json!({"type": "react", "room": "lobby", "msg": kept, "emoji": "🎉", "on": false}),
    )
    .await;
    assert!(r["seq"].is_u64(), "{r}");
    let p = page(&mut ann).await;
    assert_eq!(
        message(&p, kept)["reactions"],
        json!([{"emoji": "🎉", "count": 1, "me": false}])
    );
    chat.server.unwrap().stop().await;
}

async fn who_may_change_what(store: Store) {
    let chat = Chat::start(store, 200).await;
    let (mut ann, _) = chat.hello("ann", Role::User).await;
    let (mut bob, _) = chat.hello("bob", Role::User).await;
    let (mut root, _) = chat.hello("root", Role::Admin).await;
    let anns = say(&mut ann, "ann wrote this").await;
    for m in [
        json!({"type": "edit", "room": "lobby", "msg": anns, "text": "bob was here"}),
        json!({"type": "delete", "room": "lobby", "msg": anns}),
    ] {
        let e = ask(&mut bob, m.clone()).await;
        assert_eq!(e["code"], "forbidden", "{m} -> {e}");
    }
    let e = ask(
        &mut root,
        json!({"type": "edit", "room": "lobby", "msg": anns, "text": "x"}),
    )
    .await;
    assert_eq!(
        e["code"], "forbidden",
        "an admin deletes, but edits only their own: {e}"
    );
    let r = ask(
        &mut root,
        json!({"type": "delete", "room": "lobby", "msg": anns}),
    )
    .await;
    assert_eq!(r["type"], "ack", "an admin deletes anyone's: {r}");
    let d = ann.find(|v| v["type"] == "deleted").await;
    assert_eq!(d["by"], "root");
    // A room's op deletes in their room.
    let r = ask(&mut ann, json!({"type": "join", "room": "crew"})).await;
    assert_eq!(r["owner"], "ann", "{r}");
    let r = ask(&mut bob, json!({"type": "join", "room": "crew"})).await;
    assert_eq!(r["type"], "room", "{r}");
    let ack = ask(
        &mut bob,
        json!({"type": "say", "room": "crew", "text": "spam spam"}),
    )
    .await;
    let r = ask(
        &mut ann,
        json!({"type": "delete", "room": "crew", "msg": ack["id"]}),
    )
    .await;
    assert_eq!(r["type"], "ack", "the owner deletes in her room: {r}");
    // Not in the room: not_in_room; a message of another room: not_found.
    let e = ask(
        &mut root,
        json!({"type": "delete", "room": "crew", "msg": ack["id"]}),
    )
    .await;
    assert_eq!(e["code"], "not_in_room", "{e}");
    let e = ask(
        &mut bob,
        json!({"type": "say", "room": "crew", "text": "re", "reply_to": anns + 1_000}),
    )
    .await;
    assert_eq!(e["code"], "not_found", "{e}");
    // Editing a deleted message: not_found.
    let e = ask(
        &mut ann,
        json!({"type": "edit", "room": "lobby", "msg": anns, "text": "back"}),
    )
    .await;
    assert_eq!(e["code"], "not_found", "{e}");
    chat.server.unwrap().stop().await;
}

/// With three messages in memory, the first of six is only in the store: changing it and
/// answering it read it from there first.
async fn a_message_only_the_store_holds_can_be_changed(store: Store) {
    let chat = Chat::start(store, 3).await;
    let (mut ann, _) = chat.hello("ann", Role::User).await;
    let (mut bob, _) = chat.hello("bob", Role::User).await;
    let old = say(&mut ann, "an old typo heer").await;
    for i in 0..5 {
        say(&mut ann, &format!("later {i}")).await;
    }
    let r = ask(
        &mut ann,
        json!({"type": "edit", "room": "lobby", "msg": old, "text": "an old typo here"}),
    )
    .await;
    assert_eq!(r["type"], "ack", "{r}");
    let e = bob.find(|v| v["type"] == "edited").await;
    assert_eq!(
        (&e["msg"], &e["text"]),
        (&json!(old), &json!("an old typo here"))
    );
    let r = ask(
        &mut bob,
        json!({"type": "say", "room": "lobby", "text": "old news", "reply_to": old}),
    )
    .await;
    assert_eq!(r["type"], "ack", "{r}");
    let r = ask(
        &mut bob,
        json!({"type": "react", "room": "lobby", "msg": old, "emoji": "👍"}),
    )
    .await;
    assert!(r["seq"].is_u64(), "{r}");
    let e = ask(
        &mut bob,
        json!({"type": "edit", "room": "lobby", "msg": old, "text": "mine now"}),
    )
    .await;
    assert_eq!(e["code"], "forbidden", "{e}");
    let h = ask(
        &mut bob,
        json!({"type": "history", "room": "lobby", "before": 2, "limit": 5}),
    )
    .await;
    let m = &h["messages"][0];
    assert_eq!(
        (&m["id"], &m["text"]),
        (&json!(old), &json!("an old typo here")),
        "{h}"
    );
    assert_eq!(
        m["reactions"],
        json!([{"emoji": "👍", "count": 1, "me": true}]),
        "{h}"
    );
    chat.server.unwrap().stop().await;
}

/// A PM's sender edits and deletes it: the recipient and the sender's other connection are
/// told (each `with` the other one), and the conversation's history shows it as it is now.
async fn pms_are_edited_and_deleted_by_their_sender(store: Store) {
    let chat = Chat::start(store, 200).await;
    let (mut ann, _) = chat.hello("ann", Role::User).await;
    let (mut ann2, _) = chat.hello("ann", Role::User).await;
    let (mut bob, _) = chat.hello("bob", Role::User).await;
    let pm = ask(
        &mut ann,
        json!({"type": "pm", "to": "bob", "text": "meet at 5"}),
    )
    .await;
    let id = pm["id"].as_u64().unwrap();
    bob.find(|v| v["type"] == "pm" && v["id"] == id).await;
    let r = ask(
        &mut ann,
        json!({"type": "edit", "with": "bob", "msg": id, "text": "meet at 6"}),
    )
    .await;
    assert_eq!(r["type"], "ack", "{r}");
    let e = bob.find(|v| v["type"] == "edited").await;
    assert_eq!(
        (&e["with"], &e["msg"], &e["text"], &e["by"]),
        (
            &json!("ann"),
            &json!(id),
            &json!("meet at 6"),
            &json!("ann")
        ),
        "{e}"
    );
    assert!(e.get("room").is_none() && e.get("seq").is_none(), "{e}");
    let mine = ann2.find(|v| v["type"] == "edited").await;
    assert_eq!(mine["with"], "bob", "{mine}");
    for m in [
        json!({"type": "edit", "with": "ann", "msg": id, "text": "no"}),
        json!({"type": "delete", "with": "ann", "msg": id}),
    ] {
        let e = ask(&mut bob, m.clone()).await;
        assert_eq!(e["code"], "forbidden", "{m} -> {e}");
    }
    let e = ask(
        &mut bob,
        json!({"type": "delete", "with": "cat", "msg": id}),
    )
    .await;
    assert_eq!(e["code"], "not_found", "not their conversation: {e}");
    let h = ask(&mut bob, json!({"type": "history", "with": "ann"})).await;
    let m = &h["messages"][0];
    assert_eq!(
        (&m["text"], &m["id"]),
        (&json!("meet at 6"), &json!(id)),
        "{h}"
    );
    assert!(m["edited_ts"].is_string(), "{h}");
    let r = ask(
        &mut ann,
        json!({"type": "delete", "with": "bob", "msg": id}),
    )
    .await;
    assert_eq!(r["type"], "ack", "{r}");
    let d = bob.find(|v| v["type"] == "deleted").await;
    assert_eq!((&d["with"], &d["msg"]), (&json!("ann"), &json!(id)));
    let h = ask(&mut bob, json!({"type": "history", "with": "ann"})).await;
    let m = &h["messages"][0];
    assert_eq!(
        (&m["deleted"], &m["text"]),
        (&json!(true), &json!("")),
        "{h}"
    );
    let e = ask(
        &mut ann,
        json!({"type": "edit", "with": "bob", "msg": id, "text": "back"}),
    )
    .await;
    assert_eq!(e["code"], "not_found", "{e}");
    chat.server.unwrap().stop().await;
}

/// Two nodes of a cluster: what changes on one reaches the other's clients live, and a client
/// of the second that was away resumes into the same state.
#[cfg_attr(
    chatd_no_redis,
    ignore = "needs redis-server (apt install redis-server)"
)]
#[cfg_attr(
    chatd_no_postgres,
    ignore = "needs PostgreSQL (apt install postgresql)"
)]
#[tokio::test]
async fn a_change_on_one_node_reaches_the_other() {
    let pair = TestServer::pg_pair(|c| {
        c.auth.mode = AuthMode::Token;
        c.auth.secret = Secret::new(SECRET);
        c.limits.rate_per_sec = 0.0;
    })
    .await;
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
    let (mut ann, _) = hello(pair.a.addr, "ann").await;
    let (mut bob, w) = hello(pair.b.addr, "bob").await;
    let epoch = w["epoch"].as_str().unwrap().to_string();
    let id = say(&mut ann, "wrong thing said").await;
    let m = bob.find(|v| v["type"] == "message" && v["id"] == id).await;
    let since = m["seq"].as_u64().unwrap();
    let r = ask(
        &mut ann,
        json!({"type": "edit", "room": "lobby", "msg": id, "text": "right thing said"}),
    )
    .await;
    assert_eq!(r["type"], "ack", "{r}");
    let e = bob.find(|v| v["type"] == "edited").await;
    assert_eq!(e["text"], "right thing said");
    let r = ask(
        &mut bob,
        json!({"type": "react", "room": "lobby", "msg": id, "emoji": "👍"}),
    )
    .await;
    assert!(r["seq"].is_u64(), "{r}");
    let e = ann.find(|v| v["type"] == "reaction").await;
    assert_eq!((&e["from"], &e["emoji"]), (&json!("bob"), &json!("👍")));
    drop(bob);
    let r = ask(
        &mut ann,
        json!({"type": "react", "room": "lobby", "msg": id, "emoji": "🎉"}),
    )
    .await;
    assert!(r["seq"].is_u64(), "{r}");
    // Bob comes back to node b: what he missed, then the message as it is now in a page.
    let mut bob = Client::connect(pair.b.addr).await;
    let token = token_for(SECRET, "bob", Role::User);
    let w = bob
        .request(
            json!({"type": "hello", "name": "bob", "token": token, "since": since, "epoch": epoch}),
        )
        .await;
    let kinds: Vec<&str> = w["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["edited", "reaction", "reaction"], "{w}");
    let p = page(&mut bob).await;
    let m = message(&p, id);
    assert_eq!(m["text"], "right thing said", "{m}");
    assert_eq!(
        m["reactions"],
        json!([{"emoji": "👍", "count": 1, "me": true}, {"emoji": "🎉", "count": 1, "me": false}]),
        "{m}"
    );
    pair.stop().await;
}

/// chatctl in a real terminal (`--ids`): a message's id shows, `/edit` changes one's last
/// message, `/react` and `/delete` name one by its id, and what others change shows as lines.
#[cfg_attr(chatd_no_tmux, ignore = "needs tmux (apt install tmux)")]
#[test]
fn chatctl_edits_reacts_and_deletes_in_a_terminal() {
    use crate::chatctl::Tmux;
    use crate::helpers::{Daemon, SyncClient};
    let d = Daemon::start(&[], &[]);
    let mut bob = SyncClient::connect(d.addr);
    bob.send(json!({"type": "hello", "name": "bob"}));
    bob.recv_until(|v| v["type"] == "welcome");
    let tmux = Tmux {
        socket: format!("chatctl-lifecycle-{}", std::process::id()),
    };
    let cmd = format!(
        "NO_COLOR=1 {} --ids --url ws://{} connect ann; echo EXIT=$?; sleep 30",
        env!("CARGO_BIN_EXE_chatctl"),
        d.addr,
    );
    tmux.start(24, &cmd);
    tmux.wait_for("the welcome", |s| s.contains("welcome, ann!"));
    bob.send(json!({"type": "say", "text": "hello from bob", "id": "s"}));
    let ack = bob.recv_until(|v| v["ref"] == "s");
    let bobs = ack["id"].as_u64().unwrap();
    tmux.wait_for("bob's message with its id", |s| {
        s.contains(&format!("<bob> [{bobs}] hello from bob"))
    });
    tmux.keys(&["helo wrold", "Enter"]);
    let said = bob.recv_until(|v| v["type"] == "message" && v["from"] == "ann");
    tmux.keys(&["/edit hello world", "Enter"]);
    let edited = bob.recv_until(|v| v["type"] == "edited");
    assert_eq!(
        (&edited["msg"], &edited["text"]),
        (&said["id"], &json!("hello world")),
        "{edited}"
    );
    tmux.wait_for("the edit acknowledged", |s| {
        s.contains("your last message was edited")
    });
    tmux.keys(&[&format!("/react {bobs} :ship_it:"), "Enter"]);
    let r = bob.recv_until(|v| v["type"] == "reaction");
    assert_eq!(
        (&r["msg"], &r["emoji"]),
        (&json!(bobs), &json!(":ship_it:"))
    );
    tmux.wait_for("the reaction", |s| {
        s.contains(&format!("you reacted :ship_it: to message {bobs}"))
    });
    // What bob changes shows in ann's terminal.
    bob.send(
        json!({"type": "edit", "room": "lobby", "msg": bobs, "text": "hello from bob!", "id": "e"}),
    );
    bob.recv_until(|v| v["ref"] == "e");
    tmux.wait_for("bob's edit", |s| {
        s.contains(&format!("* bob edited {bobs}: hello from bob!"))
    });
    bob.send(json!({"type": "delete", "room": "lobby", "msg": bobs, "id": "d"}));
    bob.recv_until(|v| v["ref"] == "d");
    tmux.wait_for("bob's delete", |s| {
        s.contains(&format!("-!- message {bobs} deleted"))
    });
    tmux.keys(&["/delete 999999", "Enter"]);
    tmux.wait_for("a refusal", |s| {
        s.contains("there is no message 999999 here")
    });
    tmux.keys(&["C-d"]);
    tmux.wait_for("an exit", |s| s.contains("EXIT="));
}
