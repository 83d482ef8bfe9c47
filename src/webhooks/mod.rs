//! Outgoing webhooks (`[[webhooks.endpoints]]`, docs/API.md): what happens in the chat, POSTed
//! to other programs as signed JSON batches.
//!
//! Sessions (on the node where each thing happens, so a cluster sends each event once) call
//! [`Webhooks::message`], [`Webhooks::pm`], [`Webhooks::joined`], [`Webhooks::left`]; the
//! accounts service calls [`Webhooks::room_changed`]. Each call only checks which endpoints want
//! the event, encodes it once and queues it (never waiting, never on the network): each
//! endpoint has a queue bounded in bytes (the oldest dropped first, counted) and a task of its
//! own that batches, signs, sends and retries (`deliver`). Joins and leaves are coalesced per
//! user and room: a user's second connection is no join, and a leave followed by a rejoin
//! within `webhooks.leave_grace_ms` (a reload, a reconnect) sends nothing.

mod deliver;

pub use deliver::signature;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{WebhookEndpoint, WebhooksConfig};
use crate::metrics::Metrics;
use crate::protocol;
use crate::sync::lock;

/// Users-in-rooms tracked for coalescing joins and leaves; past it they are sent as they come.
const MAX_TRACKED: usize = 100_000;

/// The webhooks service: the endpoints and their queues.
#[derive(Debug)]
pub struct Webhooks {
    endpoints: Vec<Arc<Endpoint>>,
    presence: Mutex<HashMap<(Arc<str>, String), Present>>,
    grace: Duration,
    /// Event ids: this process's prefix and a counter.
    prefix: String,
    next: AtomicU64,
    tracker: TaskTracker,
    stop: CancellationToken,
}

/// One user in one room, on this node.
#[derive(Debug, Default)]
struct Present {
    /// Their connections in the room.
    conns: u32,
    /// Left: the leave goes out at this time unless they come back first.
    leaving: Option<(Instant, String)>,
}

/// One endpoint: its settings and its queue.
#[derive(Debug)]
struct Endpoint {
    config: WebhookEndpoint,
    label: String,
    queue: Mutex<Queue>,
    notify: Notify,
    max_bytes: usize,
    metrics: Metrics,
    /// `chatd_webhook_events_total{result="dropped"}` and the queue's gauge, resolved once
    /// (they move with every event).
    dropped: prometheus::IntCounter,
    queued: prometheus::IntGauge,
}

/// Encoded events waiting, oldest first, and their bytes.
#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<Arc<str>>,
    bytes: usize,
}

impl Endpoint {
    fn wants(&self, kind: &str, room: Option<&str>) -> bool {
        self.config.events.iter().any(|e| e == kind)
            && (self.config.rooms.is_empty()
                || room
                    .is_some_and(|r| self.config.rooms.iter().any(|x| x.eq_ignore_ascii_case(r))))
    }

    /// Queues `event`, dropping the oldest past the byte bound.
    fn push(&self, event: Arc<str>) {
        let mut queue = lock(&self.queue);
        queue.bytes += event.len();
        queue.events.push_back(event);
        let mut dropped = 0;
        while queue.bytes > self.max_bytes
            && let Some(old) = queue.events.pop_front()
        {
            queue.bytes -= old.len();
            dropped += 1;
        }
        let bytes = queue.bytes;
        drop(queue);
        self.dropped.inc_by(dropped);
        self.queued.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.notify.notify_one();
    }

    fn count(&self, result: &str, n: u64) {
        self.metrics
            .webhook_events
            .with_label_values(&[&self.label, result])
            .inc_by(n);
    }
}

impl Webhooks {
    /// The service for `config`'s endpoints (`None` without any), its delivery tasks started.
    pub fn start(config: &WebhooksConfig, metrics: &Metrics) -> Option<Arc<Webhooks>> {
        if config.endpoints.is_empty() {
            return None;
        }
        let client = deliver::client(config);
        let endpoints: Vec<Arc<Endpoint>> = config
            .endpoints
            .iter()
            .map(|e| {
                let label = e.label();
                for result in ["delivered", "failed", "dropped"] {
                    metrics.webhook_events.with_label_values(&[&label, result]);
                }
                Arc::new(Endpoint {
                    config: e.clone(),
                    dropped: metrics
                        .webhook_events
                        .with_label_values(&[&label, "dropped"]),
                    queued: metrics.webhook_queue_bytes.with_label_values(&[&label]),
                    label,
                    queue: Mutex::new(Queue::default()),
                    notify: Notify::new(),
                    max_bytes: config.queue_bytes,
                    metrics: metrics.clone(),
                })
            })
            .collect();
        let hooks = Arc::new(Webhooks {
            endpoints,
            presence: Mutex::new(HashMap::new()),
            grace: Duration::from_millis(config.leave_grace_ms),
            prefix: format!("{:08x}", fastrand::u32(..)),
            next: AtomicU64::new(1),
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
        });
        for endpoint in &hooks.endpoints {
            let run = deliver::run(
                endpoint.clone(),
                client.clone(),
                config.clone(),
                hooks.stop.clone(),
            );
            hooks.tracker.spawn(run);
        }
        let beat = hooks.clone();
        hooks.tracker.spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    () = beat.stop.cancelled() => break,
                    _ = every.tick() => beat.expire(Instant::now()),
                }
            }
        });
        Some(hooks)
    }

    fn wanted(&self, kind: &str, room: Option<&str>) -> bool {
        self.endpoints.iter().any(|e| e.wants(kind, room))
    }

    /// Encodes an event once and queues it for every endpoint that wants it.
    fn emit(&self, kind: &str, room: Option<&str>, id: String, mut body: Value) {
        body["id"] = json!(id);
        body["type"] = json!(kind);
        if body.get("ts").is_none() {
            body["ts"] = json!(protocol::timestamp());
        }
        let event: Arc<str> = body.to_string().into();
        for endpoint in self.endpoints.iter().filter(|e| e.wants(kind, room)) {
            endpoint.push(event.clone());
        }
    }

    fn fresh_id(&self, kind: &str) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{kind}-{}-{n}", self.prefix)
    }

    /// Whether a room message would go anywhere (so a session keeps its text until the ack).
    pub fn wants_messages(&self, room: &str) -> bool {
        self.wanted("message", Some(room)) || self.wanted("mention", Some(room))
    }

    /// Whether PMs would go anywhere.
    pub fn wants_pms(&self) -> bool {
        self.wanted("pm", None)
    }

    /// A room message was said (`message`), and one `mention` per name it `@`-mentions.
    #[allow(clippy::too_many_arguments)]
    pub fn message(
        &self,
        room: &str,
        from: &str,
        text: &str,
        action: bool,
        id: u64,
        seq: Option<u64>,
        ts: &str,
        reply_to: Option<u64>,
    ) {
        let message = json!({
            "id": id, "seq": seq, "ts": ts, "room": room, "from": from, "text": text,
            "action": action, "reply_to": reply_to,
        });
        if self.wanted("message", Some(room)) {
            let body = json!({"room": room, "ts": ts, "message": message.clone()});
            self.emit("message", Some(room), format!("message-{id}"), body);
        }
        if self.wanted("mention", Some(room)) {
            for name in mentioned(text) {
                let body =
                    json!({"room": room, "ts": ts, "mentioned": name, "message": message.clone()});
                let key = protocol::name_key(&name);
                self.emit("mention", Some(room), format!("mention-{id}-{key}"), body);
            }
        }
    }

    /// A private message was sent.
    pub fn pm(&self, from: &str, to: &str, text: &str, action: bool, id: u64, ts: &str) {
        if self.wanted("pm", None) {
            let body = json!({"ts": ts, "message": {
                "id": id, "ts": ts, "from": from, "to": to, "text": text, "action": action,
            }});
            self.emit("pm", None, format!("pm-{id}"), body);
        }
    }

    /// One of `name`'s connections is in `room` now.
    pub fn joined(&self, room: &str, name: &str) {
        if !self.wanted("join", Some(room)) && !self.wanted("leave", Some(room)) {
            return;
        }
        let key = (Arc::<str>::from(room), protocol::name_key(name));
        let mut presence = lock(&self.presence);
        if presence.len() >= MAX_TRACKED && !presence.contains_key(&key) {
            drop(presence);
            return self.presence_event("join", room, name);
        }
        let entry = presence.entry(key).or_default();
        entry.conns += 1;
        // Back within the grace period: neither the leave nor this join goes out.
        let back = entry.leaving.take().is_some();
        if entry.conns == 1 && !back {
            drop(presence);
            self.presence_event("join", room, name);
        }
    }

    /// One of `name`'s connections left `room` (or closed).
    pub fn left(&self, room: &str, name: &str) {
        if !self.wanted("join", Some(room)) && !self.wanted("leave", Some(room)) {
            return;
        }
        let key = (Arc::<str>::from(room), protocol::name_key(name));
        let mut presence = lock(&self.presence);
        let Some(entry) = presence.get_mut(&key) else {
            // Never seen in: a join still on its way when the connection ended (nothing to
            // tell), or one sent untracked while the table was full (its leave goes the same way).
            if presence.len() >= MAX_TRACKED {
                drop(presence);
                self.presence_event("leave", room, name);
            }
            return;
        };
        entry.conns = entry.conns.saturating_sub(1);
        if entry.conns == 0 {
            if self.grace.is_zero() {
                presence.remove(&key);
                drop(presence);
                return self.presence_event("leave", room, name);
            }
            entry.leaving = Some((Instant::now() + self.grace, name.to_string()));
        }
    }

    /// Sends the leaves whose grace period is over.
    fn expire(&self, now: Instant) {
        let mut gone = Vec::new();
        lock(&self.presence).retain(|(room, _), p| match &p.leaving {
            Some((at, name)) if *at <= now => {
                gone.push((room.clone(), name.clone()));
                false
            }
            _ => p.conns > 0 || p.leaving.is_some(),
        });
        for (room, name) in gone {
            self.presence_event("leave", &room, &name);
        }
    }

    fn presence_event(&self, kind: &str, room: &str, name: &str) {
        if self.wanted(kind, Some(room)) {
            let body = json!({"room": room, "user": name});
            self.emit(kind, Some(room), self.fresh_id(kind), body);
        }
    }

    /// A room's settings, roles or sanctions changed (its audit entry).
    pub fn room_changed(&self, room: &str, by: &str, action: &str, target: &str, ts: &str) {
        if self.wanted("room_changed", Some(room)) {
            let body =
                json!({"room": room, "by": by, "action": action, "target": target, "ts": ts});
            self.emit(
                "room_changed",
                Some(room),
                self.fresh_id("room_changed"),
                body,
            );
        }
    }

    /// Sends the leaves still in their grace period, lets every endpoint try once more what it
    /// holds (within its timeout), and waits for the tasks.
    pub async fn close(&self) {
        self.expire(Instant::now() + self.grace + Duration::from_secs(1));
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// The names `text` mentions as `@name`, each once, at most 20.
fn mentioned(text: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (i, _) in text.match_indices('@') {
        let name: String = text[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            .collect();
        let name = name.trim_end_matches('.').to_string();
        if !name.is_empty()
            && protocol::validate_name(&name).is_ok()
            && protocol::mentions_at(text, &name)
            && !names.iter().any(|n| n.eq_ignore_ascii_case(&name))
            && names.len() < 20
        {
            names.push(name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_found_once_each() {
        assert_eq!(mentioned("hi @ann and @Bob, @ann again."), ["ann", "Bob"]);
        assert!(mentioned("mail me at x@example.com").is_empty());
        assert_eq!(mentioned("@carol."), ["carol"]);
    }
}
