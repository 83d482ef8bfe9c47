//! A key's connection to the chat. An API request is carried out by a chat session like any
//! client's (`session::Session`), so every rule a client meets (private rooms, bans, mutes, rate
//! limits, text sizes) meets a key too, on either broker and store. Each key in use has one such
//! session, on a task of its own: it says hello as the key's account (as a token's hello does),
//! joins the rooms its requests name, and stays a member of them until it has been idle for
//! `api.idle_secs`. What the chat sends it besides replies (the rooms' messages) is dropped.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug};

use crate::connection::mailbox::Mailbox;
use crate::connection::{Flow, Handler};
use crate::protocol::Role;
use crate::session::{Chat, Session};
use crate::sync::lock;

/// Requests a key may have waiting for its session.
const QUEUE: usize = 64;

/// Who a key speaks as.
#[derive(Debug, Clone)]
pub(crate) struct Who {
    /// The key's public id (one session per key).
    pub key_id: String,
    /// The key's name, for `sessions` and the log.
    pub key_name: String,
    /// The name it speaks as.
    pub account: String,
    /// Its role (an account's own, with accounts).
    pub role: Role,
    /// The address of the request that started the session.
    pub ip: IpAddr,
}

/// One request for a key's session: a protocol request (without its `id`), the room it must be
/// a member of first, and where its reply goes.
struct Ask {
    request: Map<String, Value>,
    room: Option<Arc<str>>,
    reply: oneshot::Sender<Value>,
}

/// The key's session cannot take the request now (too many waiting, or shutting down).
#[derive(Debug)]
pub(crate) struct Busy;

/// Every key's session.
#[derive(Debug)]
pub(crate) struct Links {
    chat: Arc<Chat>,
    idle: Duration,
    map: Mutex<HashMap<String, mpsc::Sender<Ask>>>,
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Links {
    pub(crate) fn new(chat: Arc<Chat>, idle: Duration) -> Links {
        Links {
            chat,
            idle,
            map: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
        }
    }

    /// Hands `request` to `who`'s session (started if it has none), a member of `room` first;
    /// the reply (a protocol reply or error, as JSON) comes on the receiver.
    pub(crate) fn ask(
        &self,
        who: &Who,
        room: Option<Arc<str>>,
        request: Map<String, Value>,
    ) -> Result<oneshot::Receiver<Value>, Busy> {
        if self.stop.is_cancelled() {
            return Err(Busy);
        }
        let (reply, answer) = oneshot::channel();
        let ask = Ask {
            request,
            room,
            reply,
        };
        let mut map = lock(&self.map);
        map.retain(|_, tx| !tx.is_closed());
        let tx = match map.get(&who.key_id) {
            Some(tx) => tx.clone(),
            None => {
                let (tx, rx) = mpsc::channel(QUEUE);
                let home = ask.room.clone();
                let link = run(self.chat.clone(), who.clone(), home, rx, self.idle);
                let span = tracing::debug_span!("api", key = %who.key_name);
                let stop = self.stop.clone();
                self.tracker.spawn(
                    async move {
                        tokio::select! {
                            () = stop.cancelled() => {}
                            () = link => {}
                        }
                    }
                    .instrument(span),
                );
                map.insert(who.key_id.clone(), tx.clone());
                tx
            }
        };
        tx.try_send(ask).map_err(|_| Busy)?;
        Ok(answer)
    }

    /// Ends every key's session (each leaves its rooms) and waits for them.
    pub(crate) async fn close(&self) {
        self.stop.cancel();
        lock(&self.map).clear();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// What the session's replies are waiting for, by request id.
enum Waiter {
    /// An API request.
    Ask(oneshot::Sender<Value>),
    /// A join made for the request with this id: its failure is that request's answer.
    Join { room: Arc<str>, for_id: u64 },
}

/// The session of one key, until it has been idle for `idle` or is ended (kicked, banned,
/// logged out, shut down).
async fn run(
    chat: Arc<Chat>,
    who: Who,
    home: Option<Arc<str>>,
    mut asks: mpsc::Receiver<Ask>,
    idle: Duration,
) {
    let limits = &chat.config.limits;
    let mailbox = Arc::new(Mailbox::new(
        limits.outbound_queue,
        limits.outbound_queue_bytes,
        chat.metrics.bytes_sent.clone(),
    ));
    let conn = crate::hub::next_conn();
    let mut session = Session::new(chat.clone(), conn, who.ip, mailbox.clone());
    let mut out: Vec<Utf8Bytes> = Vec::new();
    let home = home.unwrap_or_else(|| crate::protocol::DEFAULT_ROOM.into());
    let device: Arc<str> = format!("api:{}", who.key_name).into();
    session.hello_vouched(
        who.account.clone(),
        &home,
        who.role,
        device,
        "0".into(),
        &mut out,
    );
    // The hello's refusal (a ban, a name taken), if it was refused.
    let mut refused: Option<Value> = None;
    let mut rooms: HashSet<Arc<str>> = HashSet::new();
    let mut waiting: HashMap<u64, Waiter> = HashMap::new();
    let mut next_id = 1u64;
    let mut last_active = Instant::now();
    let mut flow = Flow::Continue;
    loop {
        for frame in out.drain(..) {
            let Ok(Value::Object(reply)) = serde_json::from_str::<Value>(&frame) else {
                continue;
            };
            let reference = reply.get("ref").and_then(Value::as_str).unwrap_or("");
            if reference == "0" {
                if reply.get("type").and_then(Value::as_str) == Some("welcome") {
                    if let Some(room) = reply.get("room").and_then(Value::as_str) {
                        rooms.insert(room.into());
                    }
                } else {
                    refused = Some(Value::Object(reply));
                }
                continue;
            }
            let Some(id) = reference.parse::<u64>().ok() else {
                continue;
            };
            let failed = reply.get("type").and_then(Value::as_str) == Some("error");
            match waiting.remove(&id) {
                Some(Waiter::Ask(tx)) => {
                    let _ = tx.send(Value::Object(reply));
                }
                Some(Waiter::Join { room, for_id }) if failed => {
                    if let Some(Waiter::Ask(tx)) = waiting.remove(&for_id) {
                        let _ = tx.send(Value::Object(reply));
                    }
                    rooms.remove(&room);
                }
                _ => {}
            }
        }
        // Refused: every request waiting gets the refusal.
        if let Some(refusal) = refused {
            debug!(reply = ?refusal, "api session refused");
            asks.close();
            while let Ok(ask) = asks.try_recv() {
                let _ = ask.reply.send(refusal.clone());
            }
            return;
        }
        if let Flow::Close(reason) = flow {
            debug!(?reason, "api session closed");
            return;
        }
        if !session.replies_waiting() {
            mailbox.release();
        }
        // Whatever the chat sent besides replies (the rooms' messages) is not for anyone.
        let _ = mailbox.write_queued(|slices| Ok(slices.iter().map(|s| s.len()).sum()));
        let timer = session.next_deadline();
        let ready = session.welcomed() && session.accepts_input();
        tokio::select! {
            () = mailbox.ready() => {
                let signals = mailbox.signals();
                if signals.overflowed || signals.failed || signals.logged_out
                    || signals.kicked
                {
                    debug!("api session ended by the chat");
                    return;
                }
                if signals.controls {
                    flow = session.on_controls(&mut out);
                }
            }
            ask = asks.recv(), if ready => {
                let Some(ask) = ask else { return };
                let id = next_id;
                next_id += 2;
                if let Some(room) = ask.room.filter(|r| !rooms.contains(r)) {
                    let join = json!({"type": "join", "room": &*room, "id": (id + 1).to_string()});
                    flow = session.on_text(&join.to_string(), &mut out);
                    waiting.insert(id + 1, Waiter::Join { room: room.clone(), for_id: id });
                    rooms.insert(room);
                }
                let mut request = ask.request;
                request.insert("id".into(), Value::String(id.to_string()));
                waiting.insert(id, Waiter::Ask(ask.reply));
                if matches!(flow, Flow::Continue) {
                    flow = session.on_text(&Value::Object(request).to_string(), &mut out);
                }
            }
            () = sleep_until(timer.unwrap_or(last_active + idle)), if timer.is_some() => {
                session.on_timer(Instant::now());
            }
            () = sleep_until(last_active + idle), if waiting.is_empty() => {
                debug!("api session idle: leaving");
                return;
            }
        }
        if !waiting.is_empty() {
            last_active = Instant::now();
        }
    }
}
