//! The broker contract: what every `Broker` must do, as clients see it through the real server.
//!
//! Each test runs against every backend: `LocalBroker` (chatd's default) and `LateBroker`, a
//! double that answers every call late, from a background task, after a delay (as a broker that
//! talks to Redis does). A new broker joins `Backend` and passes the same tests. The last tests
//! are about late answers themselves: replies keep request order and their `ref`s, requests made
//! before a pending `welcome` get `hello_required`, and a connection that ends with requests
//! pending leaves nothing behind.

use std::sync::Arc;
use std::time::Duration;

use chatd::hub::{Answer, Broker, LocalBroker, Member, Outcome, Page, Resume, Ticket, TypingTo};
use chatd::protocol::{ErrorCode, TypingState};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Backend, Client, TestServer, token_for};

type Job = Box<dyn FnOnce(&LocalBroker) + Send>;

/// Answers every call late: calls queue (in order, for every caller) to one background task,
/// which waits a little, runs each on a `LocalBroker` and hands the outcome to the caller's
/// mailbox. An outcome that cannot be delivered is undone.
#[derive(Debug)]
pub struct LateBroker {
    jobs: mpsc::Sender<Job>,
    inner: Arc<LocalBroker>,
}

/// How long each call waits before it is carried out.
const DELAY: Duration = Duration::from_millis(2);

impl LateBroker {
    pub fn new(inner: LocalBroker) -> LateBroker {
        let (jobs, mut queue) = mpsc::channel::<Job>(10_000);
        let inner = Arc::new(inner);
        let worker = inner.clone();
        tokio::spawn(async move {
            while let Some(job) = queue.recv().await {
                tokio::time::sleep(DELAY).await;
                job(&worker);
            }
        });
        LateBroker { jobs, inner }
    }

    fn later(
        &self,
        ticket: Ticket,
        me: &Member,
        call: impl FnOnce(&LocalBroker, &Member) -> Answer + Send + 'static,
    ) -> Answer {
        let me = me.clone();
        let job: Job = Box::new(move |broker| {
            // What the local broker answers late itself (a store read) reaches the member as is.
            let Answer::Now(outcome) = call(broker, &me) else {
                return;
            };
            let undo = match &outcome {
                Outcome::Welcome(view) => Some((true, view.room.clone())),
                Outcome::Joined(view) => Some((false, view.room.clone())),
                _ => None,
            };
            if !me.answer(ticket, outcome) {
                match undo {
                    Some((true, room)) => broker.disconnect(&me, &[room]),
                    Some((false, room)) => {
                        let _ = broker.leave(0, &me, &room);
                    }
                    None => {}
                }
            }
        });
        match self.jobs.try_send(job) {
            Ok(()) => Answer::Later,
            Err(_) => Answer::Now(Outcome::Refused(chatd::hub::Refusal::new(
                ErrorCode::Unavailable,
                "the test broker is overloaded",
            ))),
        }
    }
}

impl Broker for LateBroker {
    fn hello(&self, t: Ticket, me: &Member, room: &str, resume: Option<&Resume>) -> Answer {
        let (room, resume) = (room.to_string(), resume.cloned());
        self.later(t, me, move |b, me| b.hello(t, me, &room, resume.as_ref()))
    }
    fn join(&self, t: Ticket, me: &Member, room: &str, resume: Option<&Resume>) -> Answer {
        let (room, resume) = (room.to_string(), resume.cloned());
        self.later(t, me, move |b, me| b.join(t, me, &room, resume.as_ref()))
    }
    fn leave(&self, t: Ticket, me: &Member, room: &str) -> Answer {
        let room = room.to_string();
        self.later(t, me, move |b, me| b.leave(t, me, &room))
    }
    fn say(
        &self,
        t: Ticket,
        me: &Member,
        room: &str,
        text: &str,
        action: bool,
        reply: Option<chatd::hub::Reply>,
    ) -> Answer {
        let (room, text) = (room.to_string(), text.to_string());
        self.later(t, me, move |b, me| {
            b.say(t, me, &room, &text, action, reply)
        })
    }
    fn change(
        &self,
        t: Ticket,
        me: &Member,
        room: &str,
        ask: &chatd::hub::changes::ChangeAsk,
        known: Option<chatd::hub::changes::Target>,
    ) -> Answer {
        let (room, ask) = (room.to_string(), ask.clone());
        self.later(t, me, move |b, me| b.change(t, me, &room, &ask, known))
    }
    fn change_pm(
        &self,
        t: Ticket,
        me: &Member,
        with: &str,
        ask: &chatd::hub::changes::ChangeAsk,
        known: Option<chatd::hub::changes::Target>,
    ) -> Answer {
        let (with, ask) = (with.to_string(), ask.clone());
        self.later(t, me, move |b, me| b.change_pm(t, me, &with, &ask, known))
    }
    fn pm(&self, t: Ticket, me: &Member, to: &str, text: &str, action: bool) -> Answer {
        let (to, text) = (to.to_string(), text.to_string());
        self.later(t, me, move |b, me| b.pm(t, me, &to, &text, action))
    }
    fn typing(&self, t: Ticket, me: &Member, to: TypingTo<'_>, state: TypingState) -> Answer {
        let (room, user) = match to {
            TypingTo::Room(r) => (Some(r.to_string()), None),
            TypingTo::User(u) => (None, Some(u.to_string())),
        };
        self.later(t, me, move |b, me| {
            let to = match (&room, &user) {
                (Some(r), _) => TypingTo::Room(r),
                (_, Some(u)) => TypingTo::User(u),
                _ => unreachable!(),
            };
            b.typing(t, me, to, state)
        })
    }
    fn who(&self, t: Ticket, me: &Member, room: &str) -> Answer {
        let room = room.to_string();
        self.later(t, me, move |b, me| b.who(t, me, &room))
    }
    fn rooms(&self, t: Ticket, me: &Member) -> Answer {
        self.later(t, me, move |b, me| b.rooms(t, me))
    }
    fn history(&self, t: Ticket, me: &Member, room: &str, page: Page) -> Answer {
        let room = room.to_string();
        self.later(t, me, move |b, me| b.history(t, me, &room, page))
    }
    fn conversation(
        &self,
        t: Ticket,
        me: &Member,
        with: &str,
        before: Option<u64>,
        n: usize,
    ) -> Answer {
        let with = with.to_string();
        self.later(t, me, move |b, me| b.conversation(t, me, &with, before, n))
    }
    fn search(
        &self,
        t: Ticket,
        me: &Member,
        rooms: &[Arc<str>],
        query: &str,
        before: Option<u64>,
        n: usize,
    ) -> Answer {
        let (rooms, query) = (rooms.to_vec(), query.to_string());
        self.later(t, me, move |b, me| {
            b.search(t, me, &rooms, &query, before, n)
        })
    }
    fn leave_kicked(&self, t: Ticket, me: &Member, room: &str, by: &str, why: &str) -> Answer {
        let (room, by, why) = (room.to_string(), by.to_string(), why.to_string());
        self.later(t, me, move |b, me| b.leave_kicked(t, me, &room, &by, &why))
    }
    fn local_members(&self, pick: &dyn Fn(&Member) -> bool) -> Vec<Member> {
        self.inner.local_members(pick)
    }
    fn tell_local(&self, room: &str, event: &chatd::protocol::ServerMsg<'_>) {
        self.inner.tell_local(room, event)
    }
    fn sessions(&self, t: Ticket, me: &Member) -> Answer {
        self.later(t, me, move |b, me| b.sessions(t, me))
    }
    fn logout(&self, t: Ticket, me: &Member, session: &str) -> Answer {
        let session = session.to_string();
        self.later(t, me, move |b, me| b.logout(t, me, &session))
    }
    fn ready(&self) -> bool {
        self.inner.ready()
    }
    fn tick(&self) {
        // At once, from the server's timer, beside calls still queued: a batch delivered to a
        // member whose welcome is on its way must not overtake it.
        self.inner.tick()
    }
    fn close(&self) {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        let job: Job = Box::new(move |broker| {
            broker.close();
            let _ = done.send(());
        });
        if self.jobs.try_send(job).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(10));
        }
    }
    fn kick(&self, t: Ticket, me: &Member, name: &str, reason: &str) -> Answer {
        let (name, reason) = (name.to_string(), reason.to_string());
        self.later(t, me, move |b, me| b.kick(t, me, &name, &reason))
    }
    fn nick(&self, t: Ticket, me: &Member, name: &str) -> Answer {
        let name = name.to_string();
        self.later(t, me, move |b, me| b.nick(t, me, &name))
    }
    fn announce(&self, t: Ticket, me: &Member, text: &str) -> Answer {
        let text = text.to_string();
        self.later(t, me, move |b, me| b.announce(t, me, &text))
    }
    fn to_own(&self, me: &Member, event: chatd::protocol::ServerMsg<'static>) {
        let me = me.clone();
        let job: Job = Box::new(move |broker| broker.to_own(&me, event));
        let _ = self.jobs.try_send(job);
    }
    fn disconnect(&self, me: &Member, rooms: &[Arc<str>]) {
        let (me, rooms) = (me.clone(), rooms.to_vec());
        let job: Job = Box::new(move |broker| broker.disconnect(&me, &rooms));
        // A full queue here would leak the name; the test broker's queue is far from full.
        let _ = self.jobs.try_send(job);
    }
}

/// Runs each contract test against every backend (the cluster broker on a Redis of its own,
/// marked ignored, with the reason, where redis-server is not installed). Other modules use it
/// too (`sessions`): the tests are `async fn(Backend)` beside the invocation.
macro_rules! contract {
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
                #[tokio::test]
                async fn $test() { super::$test(super::Backend::Redis).await }
            )*
        }
    };
}

contract!(
    names_are_unique_and_freed_on_disconnect,
    rooms_presence_who_and_rooms,
    say_assigns_seq_and_keeps_history,
    private_messages,
    typing_reaches_the_room_and_the_user,
    admins_kick,
    announce_reaches_everyone,
    nick_renames_once_for_everyone_who_shares_a_room,
    replies_keep_request_order_and_refs,
    requests_before_the_welcome_get_hello_required,
    ending_with_requests_pending_leaves_nothing_behind,
    large_rooms_announce_joins_and_leaves_in_batches,
);

async fn server(backend: Backend) -> TestServer {
    TestServer::with_broker(backend, |c| c.limits.rate_per_sec = 0.0).await
}

async fn names_are_unique_and_freed_on_disconnect(backend: Backend) {
    let server = server(backend).await;
    let alice = server.join("Alice").await;
    let mut c = Client::connect(server.addr).await;
    let e = c.request(json!({"type": "hello", "name": "ALICE"})).await;
    assert_eq!(e["code"], "name_taken", "{e}");
    assert_eq!(
        c.request(json!({"type": "hello", "name": "bob"})).await["type"],
        "welcome"
    );
    drop(alice);
    // The name comes free once the server has seen the close.
    let mut again = Client::connect(server.addr).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let w = again
            .request(json!({"type": "hello", "name": "alice"}))
            .await;
        if w["type"] == "welcome" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "alice never freed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.send(json!({"type": "who", "id": "w"})).await;
    let who = c.find(|v| v["ref"] == "w").await;
    assert_eq!(
        who["users"],
        json!([{"name": "alice", "role": "user"}, {"name": "bob", "role": "user"}])
    );
}

async fn rooms_presence_who_and_rooms(backend: Backend) {
    let server = server(backend).await;
    let mut alice = server.join("alice").await;
    let mut bob = server.join("bob").await;
    assert_eq!(alice.expect("joined").await["name"], "bob");
    let r = alice.request(json!({"type": "join", "room": "Rust"})).await;
    assert_eq!(
        (r["type"].as_str(), r["room"].as_str()),
        (Some("room"), Some("rust"))
    );
    let r = bob.request(json!({"type": "join", "room": "#rust"})).await;
    assert_eq!(r["users"].as_array().unwrap().len(), 2);
    assert_eq!(
        alice.expect("joined").await,
        json!({"type": "joined", "room": "rust", "name": "bob", "role": "user"})
    );
    let rooms = bob.request(json!({"type": "rooms"})).await;
    assert_eq!(
        rooms["rooms"],
        json!([{"name": "lobby", "members": 2}, {"name": "rust", "members": 2}])
    );
    let ack = bob.request(json!({"type": "leave", "room": "rust"})).await;
    assert_eq!(
        (ack["type"].as_str(), ack["room"].as_str()),
        (Some("ack"), Some("rust"))
    );
    assert_eq!(
        alice.expect("left").await,
        json!({"type": "left", "room": "rust", "name": "bob"})
    );
    let e = bob.request(json!({"type": "who", "room": "rust"})).await;
    assert_eq!(e["code"], "not_in_room");
    let e = bob.request(json!({"type": "who", "room": "nowhere"})).await;
    assert_eq!(e["code"], "no_such_room");
    let who = alice.request(json!({"type": "who", "room": "rust"})).await;
    assert_eq!(who["users"], json!([{"name": "alice", "role": "user"}]));
}

/// Past `presence_batch_over` members, a room's joins and leaves reach its members as `presence`
/// events (leaves, then joins, with the exact `user_count`) instead of one event per person;
/// applying them in order gives exactly the room's members, however the crowd's arrivals and
/// departures fell into batches. Once the room is small again and its batch is out, `joined` and
/// `left` are told one by one again.
async fn large_rooms_announce_joins_and_leaves_in_batches(backend: Backend) {
    let server = TestServer::with_broker(backend, |c| {
        c.limits.rate_per_sec = 0.0;
        c.limits.presence_batch_over = 2;
        c.limits.presence_batch_ms = 20;
    })
    .await;
    let mut alice = server.join("alice").await;
    let bob = server.join("bob").await;
    let carol = server.join("carol").await;
    assert_eq!(alice.expect("joined").await["name"], "bob");
    assert_eq!(alice.expect("joined").await["name"], "carol");
    let mut crowd = Vec::new();
    for i in 0..20 {
        crowd.push(server.join(&format!("u{i:02}")).await);
    }
    let gone: Vec<_> = crowd.drain(..5).collect();
    drop(gone);
    let mut want: Vec<String> = ["alice", "bob", "carol"].map(String::from).to_vec();
    want.extend((5..20).map(|i| format!("u{i:02}")));
    let mut seen: Vec<String> = ["alice", "bob", "carol"].map(String::from).to_vec();
    let mut batches = 0;
    loop {
        let e = alice.recv().await;
        match e["type"].as_str() {
            Some("presence") => {
                batches += 1;
                assert_eq!(e["room"], "lobby", "{e}");
                for n in e["left"].as_array().into_iter().flatten() {
                    seen.retain(|s| s != n);
                }
                for u in e["joined"].as_array().into_iter().flatten() {
                    assert_eq!(u["role"], "user", "{e}");
                    seen.push(u["name"].as_str().unwrap().to_string());
                }
                assert!(e.get("unlisted").is_none(), "a page holds them all: {e}");
                seen.sort();
                assert_eq!(e["user_count"], seen.len(), "the members so far: {seen:?}");
                if seen == want {
                    break;
                }
            }
            Some("joined" | "left") => panic!("a large room tells joins in batches: {e}"),
            _ => {}
        }
    }
    assert!(batches <= 25, "{batches} batches for 25 joins and leaves");
    let who = alice.request(json!({"type": "who"})).await;
    assert_eq!(who["user_count"], want.len());
    // Small again: once the last batch is out, one by one. The last leave (carol's, or a
    // straggler's from the crowd) is in the last batch, or, if that batch went out first and
    // left a room of three, told on its own after it: never ahead of the others.
    drop(crowd);
    drop(carol);
    loop {
        let e = alice.recv().await;
        match e["type"].as_str() {
            Some("presence") => {
                for n in e["left"].as_array().into_iter().flatten() {
                    seen.retain(|s| s != n);
                }
                assert_eq!(e["user_count"], seen.len(), "the members so far: {seen:?}");
                if e["user_count"] == 2 {
                    break;
                }
            }
            Some("left") => {
                seen.retain(|s| e["name"] != s.as_str());
                assert_eq!(seen, ["alice", "bob"], "a leave overtook its batch: {e}");
                break;
            }
            _ => {}
        }
    }
    drop(bob);
    assert_eq!(
        alice.expect("left").await,
        json!({"type": "left", "room": "lobby", "name": "bob"})
    );
}

async fn say_assigns_seq_and_keeps_history(backend: Backend) {
    let server = TestServer::with_broker(backend, |c| {
        c.limits.rate_per_sec = 0.0;
        c.history.size = 5;
        c.history.on_join = 2;
    })
    .await;
    let mut alice = server.join("alice").await;
    let mut bob = server.join("bob").await;
    alice.expect("joined").await;
    for i in 1..=7u64 {
        let ack = alice
            .request(json!({"type": "say", "text": format!("m{i}")}))
            .await;
        assert_eq!(ack["seq"], i, "{ack}");
        let m = bob.expect("message").await;
        assert_eq!(
            (m["seq"].as_u64(), m["id"].clone()),
            (Some(i), ack["id"].clone())
        );
        assert_eq!(m["ts"], ack["ts"]);
    }
    let mut carol = Client::connect(server.addr).await;
    let w = carol.hello("carol").await;
    let seqs = |v: &Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(seqs(&w["history"]), [6, 7]);
    let page = carol
        .request(json!({"type": "history", "before": 7, "limit": 3}))
        .await;
    assert_eq!(seqs(&page["messages"]), [4, 5, 6]);
    let all = carol.request(json!({"type": "history"})).await;
    assert_eq!(
        seqs(&all["messages"]),
        [3, 4, 5, 6, 7],
        "only history.size kept"
    );
    let e = carol
        .request(json!({"type": "say", "room": "elsewhere", "text": "x"}))
        .await;
    assert_eq!(e["code"], "not_in_room");
}

async fn private_messages(backend: Backend) {
    let server = server(backend).await;
    let mut alice = server.join("alice").await;
    let mut bob = server.join("bob").await;
    alice.expect("joined").await;
    let ack = bob
        .request(json!({"type": "pm", "to": "ALICE", "text": "psst"}))
        .await;
    assert_eq!(ack["type"], "ack");
    let pm = alice.expect("pm").await;
    assert_eq!(
        (pm["from"].as_str(), pm["to"].as_str()),
        (Some("bob"), Some("alice"))
    );
    assert_eq!(pm["id"], ack["id"]);
    let e = bob
        .request(json!({"type": "pm", "to": "nobody", "text": "hi"}))
        .await;
    assert_eq!(e["code"], "no_such_user");
    alice.sync().await;
}

async fn typing_reaches_the_room_and_the_user(backend: Backend) {
    let server = server(backend).await;
    let mut alice = server.join("alice").await;
    let mut bob = server.join("bob").await;
    alice.expect("joined").await;
    alice
        .send(json!({"type": "typing", "room": "lobby", "state": "active"}))
        .await;
    assert_eq!(
        bob.expect("typing").await,
        json!({"type": "typing", "from": "alice", "room": "lobby", "state": "active"})
    );
    bob.send(json!({"type": "typing", "to": "alice", "state": "paused"}))
        .await;
    assert_eq!(
        alice.expect("typing").await,
        json!({"type": "typing", "from": "bob", "to": "alice", "state": "paused"})
    );
    let e = bob
        .request(json!({"type": "typing", "to": "ghost", "state": "active"}))
        .await;
    assert_eq!(e["code"], "no_such_user");
    // Leaving ends typing with `done` for those who stay.
    drop(alice);
    let done = bob.expect("typing").await;
    assert_eq!(
        (done["from"].as_str(), done["state"].as_str()),
        (Some("alice"), Some("done"))
    );
    assert_eq!(bob.expect("left").await["name"], "alice");
}

const SECRET: &str = "contract-secret-that-is-long-enough-0123456789";

async fn admins_kick(backend: Backend) {
    use chatd::config::{AuthMode, Secret};
    use chatd::protocol::Role;
    let server = TestServer::with_broker(backend, |c| {
        c.auth.mode = AuthMode::Token;
        c.auth.secret = Secret::new(SECRET);
    })
    .await;
    let hello = |name: &str, role| json!({"type": "hello", "name": name, "token": token_for(SECRET, name, role)});
    let mut root = Client::connect(server.addr).await;
    assert_eq!(
        root.request(hello("root", Role::Admin)).await["type"],
        "welcome"
    );
    let mut bob = Client::connect(server.addr).await;
    assert_eq!(
        bob.request(hello("bob", Role::User)).await["type"],
        "welcome"
    );
    root.expect("joined").await;
    let e = bob.request(json!({"type": "kick", "name": "root"})).await;
    assert_eq!(e["code"], "forbidden");
    // The room (root included) hears of the kick before root's ack.
    root.send(json!({"type": "kick", "name": "bob", "reason": "spam", "id": "k"}))
        .await;
    assert_eq!(
        root.expect("kicked").await,
        json!({"type": "kicked", "room": "lobby", "name": "bob", "by": "root", "reason": "spam"})
    );
    assert_eq!(root.expect("ack").await["ref"], "k");
    let (code, reason) = bob.closed().await;
    assert_eq!((code, reason.as_str()), (1008, "kicked: spam"));
    let e = root.request(json!({"type": "kick", "name": "bob"})).await;
    assert_eq!(e["code"], "no_such_user");
}

async fn announce_reaches_everyone(backend: Backend) {
    use chatd::config::{AuthMode, Secret};
    use chatd::protocol::Role;
    let server = TestServer::with_broker(backend, |c| {
        c.auth.mode = AuthMode::Token;
        c.auth.secret = Secret::new(SECRET);
    })
    .await;
    let hello = |name: &str, role| {
        let token = token_for(SECRET, name, role);
        json!({"type": "hello", "name": name, "room": name, "token": token})
    };
    let mut root = Client::connect(server.addr).await;
    root.request(hello("root", Role::Admin)).await;
    let mut bob = Client::connect(server.addr).await;
    bob.request(hello("bob", Role::User)).await;
    root.send(json!({"type": "announce", "text": "maintenance at 5", "id": "a"}))
        .await;
    let ack = root.find(|v| v["type"] == "ack").await;
    assert_eq!(ack["ref"], "a");
    for c in [&mut bob] {
        assert_eq!(
            c.expect("notice").await,
            json!({"type": "notice", "from": "root", "text": "maintenance at 5"})
        );
    }
}

async fn nick_renames_once_for_everyone_who_shares_a_room(backend: Backend) {
    let server = server(backend).await;
    let mut henry = server.join("henry").await;
    let mut alice = server.join("alice").await;
    let mut loner = Client::connect(server.addr).await;
    loner
        .request(json!({"type": "hello", "name": "loner", "room": "attic"}))
        .await;
    henry.expect("joined").await;
    for c in [&mut henry, &mut alice] {
        c.request(json!({"type": "join", "room": "rust"})).await;
    }
    henry.expect("joined").await;
    let ack = henry
        .request(json!({"type": "nick", "name": "Henry2"}))
        .await;
    assert_eq!(
        (ack["type"].as_str(), ack["name"].as_str()),
        (Some("ack"), Some("Henry2"))
    );
    assert_eq!(
        alice.expect("renamed").await,
        json!({"type": "renamed", "from": "henry", "to": "Henry2"})
    );
    alice.sync().await;
    loner.sync().await;
    // The new name is taken, the old one free; messages carry the new one.
    let mut c = Client::connect(server.addr).await;
    let hello = |name: &str| json!({"type": "hello", "name": name, "room": "elsewhere"});
    assert_eq!(c.request(hello("henry2")).await["code"], "name_taken");
    assert_eq!(c.request(hello("henry")).await["type"], "welcome");
    henry
        .request(json!({"type": "say", "room": "rust", "text": "hi"}))
        .await;
    assert_eq!(alice.expect("message").await["from"], "Henry2");
    let e = henry
        .request(json!({"type": "nick", "name": "alice"}))
        .await;
    assert_eq!(e["code"], "name_taken");
    let e = henry
        .request(json!({"type": "nick", "name": "no spaces"}))
        .await;
    assert_eq!(e["code"], "name_invalid");
    let who = alice.request(json!({"type": "who", "room": "rust"})).await;
    assert_eq!(
        who["users"],
        json!([{"name": "alice", "role": "user"}, {"name": "Henry2", "role": "user"}])
    );
}

/// Requests pipelined without waiting: every reply comes back in request order with its own
/// `ref`, however the broker's answers (and local refusals) interleave.
async fn replies_keep_request_order_and_refs(backend: Backend) {
    let server = server(backend).await;
    let mut alice = server.join("alice").await;
    let requests = [
        json!({"type": "join", "room": "dev"}),
        json!({"type": "say", "room": "dev", "text": "first"}),
        json!({"type": "say", "room": "nowhere", "text": "refused here"}),
        json!({"type": "who", "room": "dev"}),
        json!({"type": "pm", "to": "ghost", "text": "refused there"}),
        json!({"type": "frobnicate"}),
        json!({"type": "rooms"}),
        json!({"type": "say", "room": "dev", "text": "second"}),
        json!({"type": "history", "room": "dev"}),
        json!({"type": "leave", "room": "dev"}),
    ];
    let expected = [
        "room", "ack", "error", "who", "error", "error", "rooms", "ack", "history", "ack",
    ];
    for (i, mut r) in requests.into_iter().enumerate() {
        r["id"] = json!(format!("r{i}"));
        alice.send(r).await;
    }
    for (i, kind) in expected.iter().enumerate() {
        let reply = alice.recv().await;
        assert_eq!(reply["ref"], format!("r{i}"), "reply {i}: {reply}");
        assert_eq!(reply["type"], *kind, "reply {i}: {reply}");
    }
    alice.sync().await;
}

/// A request sent right behind a `hello` finds no welcome yet: with a late broker it gets
/// `hello_required`, after the welcome.
async fn requests_before_the_welcome_get_hello_required(backend: Backend) {
    let server = server(backend).await;
    let mut c = Client::connect(server.addr).await;
    // Both in one write, so the server reads them together.
    for r in [
        json!({"type": "hello", "name": "eager", "id": "h"}),
        json!({"type": "say", "text": "too soon", "id": "s"}),
    ] {
        c.ws.feed(Message::text(r.to_string())).await.unwrap();
    }
    c.ws.flush().await.unwrap();
    let w = c.recv().await;
    assert_eq!(
        (w["type"].as_str(), w["ref"].as_str()),
        (Some("welcome"), Some("h"))
    );
    let reply = c.recv().await;
    assert_eq!(reply["ref"], "s");
    match backend {
        Backend::Local => assert_eq!(reply["type"], "ack", "{reply}"),
        Backend::Late | Backend::Redis => {
            assert_eq!(reply["code"], "hello_required", "{reply}")
        }
    }
}

/// Hanging up with a hello, a join and a message still unanswered leaves no name, no member and
/// no message behind.
async fn ending_with_requests_pending_leaves_nothing_behind(backend: Backend) {
    let server = server(backend).await;
    let mut watcher = server.join("watcher").await;
    for round in 0..5 {
        let mut c = Client::connect(server.addr).await;
        c.send(json!({"type": "hello", "name": "ghost", "room": "lobby"}))
            .await;
        c.send(json!({"type": "join", "room": "attic"})).await;
        drop(c);
        // Whatever got through is undone: the name comes free, nobody stays in either room.
        let mut next = Client::connect(server.addr).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let w = next
                .request(json!({"type": "hello", "name": "ghost"}))
                .await;
            if w["type"] == "welcome" {
                break;
            }
            assert_eq!(w["code"], "name_taken", "round {round}: {w}");
            assert!(tokio::time::Instant::now() < deadline, "ghost never freed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let who = next.request(json!({"type": "who"})).await;
        let names: Vec<&str> = who["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["ghost", "watcher"], "round {round}");
        let rooms = next.request(json!({"type": "rooms"})).await;
        assert!(
            !rooms["rooms"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["name"] == "attic"),
            "round {round}: {rooms}"
        );
        drop(next);
    }
    assert_eq!(watcher.expect("joined").await["name"], "ghost");
}
