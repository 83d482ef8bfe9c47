//! The session against a scripted broker: a `LocalBroker` whose outcomes the test holds back and
//! hands over when and in the order it likes, as a broker over a network would. What is checked
//! is what the client would see: the frames the session sends, in order.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus::IntCounter;
use serde_json::Value;

use super::*;
use crate::hub::{HubLimits, LocalBroker, Outcome, Page, Resume, lock};

/// Answers at once, or (while `hold` is set) later: each outcome is kept until the test lets it
/// go with [`Scripted::answer`].
#[derive(Debug)]
struct Scripted {
    inner: LocalBroker,
    hold: AtomicBool,
    held: Mutex<Vec<(Member, Ticket, Outcome)>>,
}

impl Scripted {
    fn new(config: &Config, metrics: &Metrics) -> Scripted {
        Scripted {
            inner: LocalBroker::new(HubLimits::from_config(config), metrics),
            hold: AtomicBool::new(false),
            held: Mutex::default(),
        }
    }

    fn hold(&self, on: bool) {
        self.hold.store(on, Ordering::SeqCst);
    }

    fn script(&self, ticket: Ticket, me: &Member, answer: Answer) -> Answer {
        let Answer::Now(outcome) = answer else {
            unreachable!("the local broker answers at once")
        };
        if !self.hold.load(Ordering::SeqCst) {
            return Answer::Now(outcome);
        }
        lock(&self.held).push((me.clone(), ticket, outcome));
        Answer::Later
    }

    /// Hands over the `i`th outcome still held (0 is the oldest).
    fn answer(&self, i: usize) {
        let (me, ticket, outcome) = lock(&self.held).remove(i);
        assert!(me.answer(ticket, outcome), "the session still waits");
    }

    fn held(&self) -> usize {
        lock(&self.held).len()
    }
}

impl Broker for Scripted {
    fn hello(&self, t: Ticket, me: &Member, room: &str, resume: Option<&Resume>) -> Answer {
        self.script(t, me, self.inner.hello(t, me, room, resume))
    }
    fn join(&self, t: Ticket, me: &Member, room: &str, resume: Option<&Resume>) -> Answer {
        self.script(t, me, self.inner.join(t, me, room, resume))
    }
    fn leave(&self, t: Ticket, me: &Member, room: &str) -> Answer {
        self.script(t, me, self.inner.leave(t, me, room))
    }
    fn say(
        &self,
        t: Ticket,
        me: &Member,
        room: &str,
        text: &str,
        action: bool,
        reply: Option<crate::hub::Reply>,
    ) -> Answer {
        self.script(t, me, self.inner.say(t, me, room, text, action, reply))
    }
    fn change(
        &self,
        t: Ticket,
        me: &Member,
        room: &str,
        ask: &crate::hub::changes::ChangeAsk,
        known: Option<crate::hub::changes::Target>,
    ) -> Answer {
        self.script(t, me, self.inner.change(t, me, room, ask, known))
    }
    fn change_pm(
        &self,
        t: Ticket,
        me: &Member,
        with: &str,
        ask: &crate::hub::changes::ChangeAsk,
        known: Option<crate::hub::changes::Target>,
    ) -> Answer {
        self.script(t, me, self.inner.change_pm(t, me, with, ask, known))
    }
    fn pm(&self, t: Ticket, me: &Member, to: &str, text: &str, action: bool) -> Answer {
        self.script(t, me, self.inner.pm(t, me, to, text, action))
    }
    fn typing(&self, t: Ticket, me: &Member, to: TypingTo<'_>, state: TypingState) -> Answer {
        self.script(t, me, self.inner.typing(t, me, to, state))
    }
    fn who(&self, t: Ticket, me: &Member, room: &str) -> Answer {
        self.script(t, me, self.inner.who(t, me, room))
    }
    fn rooms(&self, t: Ticket, me: &Member) -> Answer {
        self.script(t, me, self.inner.rooms(t, me))
    }
    fn history(&self, t: Ticket, me: &Member, room: &str, page: Page) -> Answer {
        self.script(t, me, self.inner.history(t, me, room, page))
    }
    fn conversation(
        &self,
        t: Ticket,
        me: &Member,
        with: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Answer {
        self.script(t, me, self.inner.conversation(t, me, with, before, limit))
    }
    fn search(
        &self,
        t: Ticket,
        me: &Member,
        rooms: &[Arc<str>],
        query: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Answer {
        let answer = self.inner.search(t, me, rooms, query, before, limit);
        self.script(t, me, answer)
    }
    fn kick(&self, t: Ticket, me: &Member, name: &str, reason: &str) -> Answer {
        self.script(t, me, self.inner.kick(t, me, name, reason))
    }
    fn nick(&self, t: Ticket, me: &Member, name: &str) -> Answer {
        self.script(t, me, self.inner.nick(t, me, name))
    }
    fn announce(&self, t: Ticket, me: &Member, text: &str) -> Answer {
        self.script(t, me, self.inner.announce(t, me, text))
    }
    fn leave_kicked(&self, t: Ticket, me: &Member, room: &str, by: &str, why: &str) -> Answer {
        self.script(t, me, self.inner.leave_kicked(t, me, room, by, why))
    }
    fn local_members(&self, pick: &dyn Fn(&Member) -> bool) -> Vec<Member> {
        self.inner.local_members(pick)
    }
    fn tell_local(&self, room: &str, event: &crate::protocol::ServerMsg<'_>) {
        self.inner.tell_local(room, event)
    }
    fn sessions(&self, t: Ticket, me: &Member) -> Answer {
        self.script(t, me, self.inner.sessions(t, me))
    }
    fn logout(&self, t: Ticket, me: &Member, session: &str) -> Answer {
        self.script(t, me, self.inner.logout(t, me, session))
    }
    fn to_own(&self, me: &Member, event: crate::protocol::ServerMsg<'static>) {
        self.inner.to_own(me, event)
    }
    fn disconnect(&self, me: &Member, rooms: &[Arc<str>]) {
        self.inner.disconnect(me, rooms)
    }
}

/// A session over a scripted broker; `send` returns the frames the client gets at once.
struct Harness {
    broker: Arc<Scripted>,
    session: Session,
    next_conn: ConnId,
}

impl Harness {
    fn new() -> Harness {
        let mut config = Config::default();
        config.limits.rate_per_sec = 0.0; // no rate limit: the tests pipeline
        config.storage.path = String::new();
        let metrics = Metrics::new();
        let broker = Arc::new(Scripted::new(&config, &metrics));
        let rates = Rates::new(&config.limits);
        let chat = Arc::new(Chat {
            broker: broker.clone(),
            config: Arc::new(config),
            metrics,
            auth: None,
            accounts: None,
            typing: TypingTimings::default(),
            rates,
            webhooks: None,
        });
        let session = new_session(&chat, 1);
        Harness {
            broker,
            session,
            next_conn: 2,
        }
    }

    /// Another client of the same chat.
    fn other(&mut self) -> Session {
        self.next_conn += 1;
        new_session(&self.session.chat, self.next_conn)
    }

    fn send(&mut self, text: &str) -> Vec<Value> {
        send(&mut self.session, text)
    }

    /// Hands over the `i`th held outcome and returns what the session then sends.
    fn answer(&mut self, i: usize) -> Vec<Value> {
        self.broker.answer(i);
        let mut out = Vec::new();
        let _ = self.session.on_controls(&mut out);
        decode(out)
    }
}

fn new_session(chat: &Arc<Chat>, conn: ConnId) -> Session {
    let sent = IntCounter::new("sent", "bytes").expect("counter");
    let mailbox = Arc::new(Mailbox::new(256, 1 << 20, sent));
    Session::new(chat.clone(), conn, IpAddr::V4(Ipv4Addr::LOCALHOST), mailbox)
}

fn send(session: &mut Session, text: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let _ = session.on_text(text, &mut out);
    decode(out)
}

fn decode(frames: Vec<Utf8Bytes>) -> Vec<Value> {
    frames
        .iter()
        .map(|f| serde_json::from_str(f).expect("a JSON frame"))
        .collect()
}

/// `type` and `ref` of each frame: what a client matches replies by.
fn shape(frames: &[Value]) -> Vec<(String, String)> {
    frames
        .iter()
        .map(|f| {
            let text = |k: &str| f[k].as_str().unwrap_or_default().to_string();
            (text("type"), text("ref"))
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn replies_leave_in_request_order_whatever_order_outcomes_arrive_in() {
    let mut h = Harness::new();
    let welcome = h.send(r#"{"type":"hello","name":"henry"}"#);
    assert_eq!(shape(&welcome), pairs(&[("welcome", "")]));

    h.broker.hold(true);
    assert!(
        h.send(r#"{"type":"join","room":"ops","id":"1"}"#)
            .is_empty()
    );
    assert!(h.send(r#"{"type":"say","text":"hi","id":"2"}"#).is_empty());
    assert!(h.send(r#"{"type":"who","id":"3"}"#).is_empty());
    // Refused by the session itself, so at once; but its reply still waits its turn.
    assert!(h.send(r#"{"type":"fly","id":"4"}"#).is_empty());
    assert!(h.send(r#"{"type":"rooms","id":"5"}"#).is_empty());
    assert_eq!(h.broker.held(), 4);

    // The broker answers the last request first, then the first, then the rest.
    assert!(
        h.answer(3).is_empty(),
        "rooms waits behind join, say and who"
    );
    let first = h.answer(0);
    assert_eq!(shape(&first), pairs(&[("room", "1")]));
    assert!(h.answer(1).is_empty(), "who waits behind say");
    let rest = h.answer(0);
    assert_eq!(
        shape(&rest),
        pairs(&[("ack", "2"), ("who", "3"), ("error", "4"), ("rooms", "5")])
    );
    assert_eq!(rest[2]["code"], "unknown_type");
    assert!(!h.session.replies_waiting());
}

#[test]
fn an_immediate_answer_waits_behind_a_late_one() {
    let mut h = Harness::new();
    h.send(r#"{"type":"hello","name":"henry"}"#);
    h.broker.hold(true);
    assert!(
        h.send(r#"{"type":"join","room":"ops","id":"j"}"#)
            .is_empty()
    );
    h.broker.hold(false);
    assert!(
        h.send(r#"{"type":"say","room":"ops","text":"hi","id":"s"}"#)
            .is_empty(),
        "the ack is ready but the join's reply is not"
    );
    assert!(h.session.replies_waiting());
    assert_eq!(shape(&h.answer(0)), pairs(&[("room", "j"), ("ack", "s")]));
}

#[test]
fn a_full_in_flight_queue_stops_reading_until_answers_arrive() {
    let mut h = Harness::new();
    h.send(r#"{"type":"hello","name":"henry"}"#);
    h.broker.hold(true);
    for i in 0..slots::MAX_IN_FLIGHT {
        assert!(h.session.accepts_input(), "request {i}");
        h.send(&format!(r#"{{"type":"rooms","id":"{i}"}}"#));
    }
    assert!(!h.session.accepts_input(), "64 in flight: read no more");
    assert_eq!(shape(&h.answer(0)), pairs(&[("rooms", "0")]));
    assert!(h.session.accepts_input(), "one answered: read again");
}

#[test]
fn requests_before_a_late_welcome_wait_for_it_and_a_taken_nick_keeps_the_name() {
    let mut h = Harness::new();
    h.broker.hold(true);
    assert!(
        h.send(r#"{"type":"hello","name":"henry","id":"h"}"#)
            .is_empty()
    );
    // Before the welcome arrives, requests are refused (in order, after it).
    assert!(h.send(r#"{"type":"rooms","id":"r"}"#).is_empty());
    let out = h.answer(0);
    assert_eq!(shape(&out), pairs(&[("welcome", "h"), ("error", "r")]));
    assert_eq!(out[0]["name"], "henry");
    assert_eq!(out[1]["code"], "hello_required");

    // Someone else takes a name; a nick to it is refused and the session keeps its own.
    h.broker.hold(false);
    let mut other = h.other();
    send(&mut other, r#"{"type":"hello","name":"ivy"}"#);
    let nick = h.send(r#"{"type":"nick","name":"ivy","id":"n"}"#);
    assert_eq!(nick[0]["code"], "name_taken");
    let who = h.send(r#"{"type":"who","id":"w"}"#);
    let names: Vec<&str> = who[0]["users"]
        .as_array()
        .expect("users")
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert_eq!(names, ["henry", "ivy"]);
}

#[test]
fn dropping_a_session_leaves_its_rooms_and_frees_its_name() {
    let mut h = Harness::new();
    let mut other = h.other();
    send(&mut other, r#"{"type":"hello","name":"ivy"}"#);
    send(&mut other, r#"{"type":"join","room":"ops"}"#);
    drop(other);
    h.send(r#"{"type":"hello","name":"henry"}"#);
    let who = h.send(r#"{"type":"who","id":"w"}"#);
    assert_eq!(who[0]["user_count"], 1, "ivy left the lobby: {who:?}");
    let again = h.send(r#"{"type":"nick","name":"ivy","id":"n"}"#);
    assert_eq!(shape(&again), pairs(&[("ack", "n")]), "the name is free");
}

#[test]
fn checks_the_session_makes_itself_never_reach_the_broker() {
    let mut h = Harness::new();
    h.send(r#"{"type":"hello","name":"henry"}"#);
    h.broker.hold(true);
    let cases = [
        (
            r#"{"type":"say","room":"elsewhere","text":"x","id":"1"}"#,
            "not_in_room",
        ),
        (r#"{"type":"say","text":"   ","id":"2"}"#, "bad_request"),
        (
            r#"{"type":"join","room":"no spaces","id":"3"}"#,
            "room_invalid",
        ),
        (r#"{"type":"kick","name":"ivy","id":"4"}"#, "forbidden"),
        (
            r#"{"type":"history","before":5,"after":1,"id":"5"}"#,
            "bad_request",
        ),
        (r#"{"type":"search","query":"","id":"6"}"#, "bad_request"),
        (
            r#"{"type":"hello","name":"again","id":"7"}"#,
            "already_welcomed",
        ),
    ];
    for (request, code) in cases {
        let out = h.send(request);
        assert_eq!(out.len(), 1, "{request}");
        assert_eq!(out[0]["code"], code, "{request}: {out:?}");
    }
    assert_eq!(h.broker.held(), 0);
}
