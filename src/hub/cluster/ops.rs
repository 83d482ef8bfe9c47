//! One member's operations, carried out in order by one task per member, each answered within
//! `cluster.op_timeout_ms` of when it was asked for.
//!
//! - **In order**: a member's calls go into its queue and its task runs them one after the other
//!   (a `say` after a `join` finds the member in the room), while members run concurrently.
//! - **Deadlines from the request**: an operation must be answered within the deadline of when it
//!   was queued, not of when it started: behind a slow Redis, the operations waiting behind the
//!   first are answered `unavailable` when their own time is up, without being tried (so no
//!   answer comes seconds late).
//! - **What an error means**: `unavailable` means not done. A `say` or `pm` whose script was sent
//!   but not answered in time may have been carried out: it gets `unconfirmed` instead ("check
//!   history"), never `unavailable`.
//! - **Batched says**: consecutive `say`s of one member go to Redis as one pipeline, so a client
//!   that pipelines its messages costs one round trip per batch, not per message.
//! - **Bounded**: the queue is bounded in operations and bytes; the session stops reading a
//!   connection whose requests wait (back-pressure), so the bound is a safety net, not a refusal
//!   a client meets.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::envelope::Envelope;
use super::link::{Done, Fail};
use super::{Inner, Mine, lock};
use crate::hub::changes::{self, ChangeAsk};
use crate::hub::{ConnId, Member, Outcome, Page, Receipt, Refusal, Resume, Ticket};
use crate::memory::Shrink;
use crate::protocol::{self, ChatMessage, ErrorCode, ServerMsg, TypingState, b};
use crate::store::Admitted;

/// Operations one member may have queued (the session waits at 64; this leaves room for the
/// ones without replies: typing relays, the disconnect).
const QUEUE: usize = 256;
/// Bytes of request text one member may have queued.
const QUEUE_BYTES: usize = 4 << 20;
/// `say`s sent to Redis in one pipeline at most, and their bytes.
const SAY_BATCH: usize = 64;
const SAY_BATCH_BYTES: usize = 256 * 1024;

/// One member's operation, run in order by its task.
#[derive(Debug)]
pub(super) enum Op {
    Hello(Ticket, Arc<str>, Option<Resume>),
    Join(Ticket, Arc<str>, Option<Resume>),
    Leave(Ticket, Arc<str>),
    /// A room message (the last: the message it answers).
    Say(Ticket, Arc<str>, String, bool, Option<u64>),
    /// An edit, a delete or a reaction.
    Change(Ticket, Arc<str>, Box<ChangeAsk>),
    /// An edit or a delete of a PM, with someone.
    PmChange(Ticket, String, Box<ChangeAsk>),
    Pm(Ticket, String, String, bool),
    TypingRoom(Ticket, Arc<str>, TypingState),
    TypingUser(Ticket, String, TypingState),
    Who(Ticket, Arc<str>),
    Rooms(Ticket),
    History(Ticket, Arc<str>, Page),
    Kick(Ticket, String, String),
    Nick(Ticket, String),
    Announce(Ticket, String),
    Sessions(Ticket),
    Logout(Ticket, String),
    /// Banned from a room: leave it, the room told `kicked` (by, reason).
    LeaveKicked(Ticket, Arc<str>, String, String),
    /// Another node's admin kicked this member.
    Kicked(String),
    Disconnect(Vec<Arc<str>>),
    /// An event for the user's other connections (`Broker::to_own`).
    ToOwn(Box<ServerMsg<'static>>),
}

impl Op {
    fn ticket(&self) -> Option<Ticket> {
        use Op::*;
        match self {
            Hello(t, ..)
            | Join(t, ..)
            | Leave(t, ..)
            | Say(t, ..)
            | Change(t, ..)
            | PmChange(t, ..)
            | Pm(t, ..)
            | TypingRoom(t, ..)
            | TypingUser(t, ..)
            | Who(t, ..)
            | Rooms(t)
            | History(t, ..)
            | Kick(t, ..)
            | Nick(t, ..)
            | Announce(t, ..)
            | Sessions(t)
            | Logout(t, ..)
            | LeaveKicked(t, ..) => Some(*t),
            Kicked(..) | Disconnect(..) | ToOwn(..) => None,
        }
    }

    /// What the operation holds in memory while it waits, roughly: its text.
    pub fn cost(&self) -> usize {
        use Op::*;
        64 + match self {
            Say(_, _, text, ..) | Pm(_, _, text, _) | Announce(_, text) => text.len(),
            Change(_, _, ask) | PmChange(_, _, ask) => ask.text.len(),
            Kick(_, name, reason) => name.len() + reason.len(),
            Disconnect(rooms) => rooms.len() * 32,
            _ => 0,
        }
    }

    fn label(&self) -> &'static str {
        use Op::*;
        match self {
            Hello(..) => "hello",
            Join(..) => "join",
            Leave(..) => "leave",
            Say(..) => "say",
            Change(..) | PmChange(..) => "change",
            Pm(..) => "pm",
            TypingRoom(..) | TypingUser(..) => "typing",
            Who(..) => "who",
            Rooms(..) => "rooms",
            History(..) => "history",
            Kick(..) | Kicked(..) => "kick",
            Nick(..) => "nick",
            Announce(..) => "announce",
            Sessions(..) => "sessions",
            Logout(..) => "logout",
            LeaveKicked(..) => "leave",
            Disconnect(..) => "disconnect",
            ToOwn(..) => "own",
        }
    }

    /// Whether carrying it out may have changed something even if it failed midway: then a
    /// failure is `unconfirmed`, not `unavailable`.
    fn says_something(&self) -> bool {
        matches!(self, Op::Say(..) | Op::Pm(..) | Op::Announce(..))
    }
}

/// An operation and when it was asked for.
#[derive(Debug)]
pub(super) struct Queued {
    pub member: Member,
    pub op: Op,
    pub at: Instant,
}

/// `unavailable`: nothing was done.
pub(super) fn unavailable() -> Outcome {
    Refusal::unavailable("the chat cluster cannot reach its Redis right now; try again").into()
}

/// `unconfirmed`: it was sent, and may have been carried out.
pub(super) fn unconfirmed() -> Outcome {
    Refusal::new(
        ErrorCode::Unconfirmed,
        "the chat cluster did not confirm this in time; it may have been sent: check the history before sending it again",
    )
    .into()
}

/// What a member's task takes off its queue in one go.
enum Work {
    One(Queued),
    /// Consecutive `say`s, sent to Redis in one pipeline.
    Says(Vec<Queued>),
}

/// Runs one member's operations in order, each within its deadline, while it has any; then
/// ends (the next operation starts another). Each call brings the caller as the session knows
/// it (its name changes with a hello or a nick).
pub(super) async fn member_task(inner: Arc<Inner>, conn: ConnId) {
    loop {
        let work = {
            let mut local = lock(&inner.local);
            let Some(mine) = local.members.get_mut(&conn) else {
                return;
            };
            let Some(first) = mine.queue.pop_front() else {
                mine.running = false;
                if mine.queue.capacity() > 8 {
                    // A burst's worth of slots is not kept for an idle member.
                    mine.queue = VecDeque::new();
                }
                return;
            };
            mine.queued_bytes -= first.op.cost();
            if matches!(first.op, Op::Say(..)) {
                let mut batch = vec![first];
                let mut bytes = 0;
                while batch.len() < SAY_BATCH
                    && bytes < SAY_BATCH_BYTES
                    && mine
                        .queue
                        .front()
                        .is_some_and(|q| matches!(q.op, Op::Say(..)))
                {
                    let q = mine.queue.pop_front().expect("a say is at the front");
                    mine.queued_bytes -= q.op.cost();
                    bytes += q.op.cost();
                    batch.push(q);
                }
                Work::Says(batch)
            } else {
                Work::One(first)
            }
        };
        match work {
            Work::Says(batch) => inner.says(batch).await,
            Work::One(q) => {
                let last = matches!(q.op, Op::Disconnect(_) | Op::Kicked(..));
                inner.one(q).await;
                if last {
                    let mut local = lock(&inner.local);
                    local.members.remove(&conn);
                    local.members.shrink_if_sparse();
                    if local.members.is_empty() {
                        inner.idle.notify_waiters();
                    }
                    return;
                }
            }
        }
    }
}

impl Inner {
    /// Queues an operation for connection `conn`, starting its task if none runs. False (not
    /// queued) past the member's bounds, which a disconnect or a kick never meets: those free
    /// names and rooms.
    pub(super) fn enqueue(self: &Arc<Self>, conn: ConnId, q: Queued) -> bool {
        let cost = q.op.cost();
        let always = matches!(q.op, Op::Disconnect(_) | Op::Kicked(_));
        let mut local = lock(&self.local);
        let mine = local.members.entry(conn).or_insert_with(|| Mine {
            member: q.member.clone(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            running: false,
            claims: Vec::new(),
            sessions: 1,
            rooms: Vec::new(),
        });
        if !always && (mine.queue.len() >= QUEUE || mine.queued_bytes + cost > QUEUE_BYTES) {
            return false;
        }
        mine.queued_bytes += cost;
        mine.queue.push_back(q);
        if !mine.running {
            mine.running = true;
            drop(local);
            self.tasks.spawn(member_task(self.clone(), conn));
        }
        true
    }
}

impl Inner {
    /// Carries out one operation under its deadline and answers it.
    async fn one(&self, q: Queued) {
        let Queued { mut member, op, at } = q;
        let deadline = at + self.settings.op_timeout;
        let ticket = op.ticket();
        let label = op.label();
        let room = match &op {
            Op::Hello(_, room, _) | Op::Join(_, room, _) => Some(room.clone()),
            _ => None,
        };
        let hello = matches!(op, Op::Hello(..));
        // Typing in a room is a hint that may be dropped (like typing to a lagging client): no
        // error line for it when Redis is away.
        let hint = matches!(op, Op::TypingRoom(..));
        let risky = op.says_something();
        if Instant::now() >= deadline && !matches!(op, Op::Disconnect(_) | Op::Kicked(_)) {
            // Its time ran out while it waited (Redis was slow for those before it): answered,
            // not tried.
            if let Some(ticket) = ticket {
                member.answer(
                    ticket,
                    if hint {
                        Outcome::Relayed
                    } else {
                        unavailable()
                    },
                );
            }
            return;
        }
        let sent = AtomicBool::new(false);
        let started = Instant::now();
        // A disconnect frees names and rooms: it gets the full deadline whenever it runs.
        let deadline = if matches!(op, Op::Disconnect(_)) {
            started + self.settings.op_timeout
        } else {
            deadline
        };
        let result =
            tokio::time::timeout_at(deadline.into(), self.run(&mut member, op, &sent, deadline))
                .await;
        self.metrics
            .redis_op_seconds
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
        let failed = match result {
            Ok(Ok(())) => {
                self.redis.set_up(true);
                false
            }
            Ok(Err(fail)) => {
                self.redis.down(&fail, label).await;
                true
            }
            Err(_) => {
                self.redis.down(&Fail::Timeout, label).await;
                true
            }
        };
        if failed {
            if let Some(room) = &room {
                self.abandon(&member, room, hello).await;
            }
            if let Some(ticket) = ticket {
                let outcome = if hint {
                    Outcome::Relayed
                } else if risky && sent.load(Ordering::Relaxed) {
                    unconfirmed()
                } else {
                    unavailable()
                };
                member.answer(ticket, outcome);
            }
        }
    }

    /// Carries out consecutive `say`s of one member in one pipeline, and answers each.
    async fn says(&self, batch: Vec<Queued>) {
        let now = Instant::now();
        let deadline = batch[0].at + self.settings.op_timeout;
        let answer_all = |outcome: fn() -> Outcome, batch: &[Queued]| {
            for q in batch {
                if let Op::Say(ticket, ..) = q.op {
                    q.member.answer(ticket, outcome());
                }
            }
        };
        if now >= deadline {
            answer_all(unavailable, &batch);
            return;
        }
        // Refusals first (not in the room, checked here as each says it; the store cannot take
        // it), then the rest.
        let mut to_send = Vec::with_capacity(batch.len());
        for q in batch {
            let Op::Say(ticket, room, text, _, reply_to) = &q.op else {
                continue;
            };
            if !self.is_in(&q.member, room) {
                q.member.answer(*ticket, Refusal::not_in_room(room).into());
            } else if let Some(to) = reply_to
                && !matches!(self.answerable(room, *to).await, Ok(true))
            {
                q.member.answer(*ticket, changes::not_found(*to).into());
            } else if let Err(refusal) = self.admits(text.len() + q.member.name().len()) {
                q.member.answer(*ticket, refusal.into());
            } else {
                to_send.push(q);
            }
        }
        if to_send.is_empty() {
            return;
        }
        let sent = AtomicBool::new(false);
        let started = Instant::now();
        let result =
            tokio::time::timeout_at(deadline.into(), self.say_seeded(&to_send, &sent)).await;
        self.metrics
            .redis_op_seconds
            .with_label_values(&["say"])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(receipts)) => {
                self.redis.set_up(true);
                for (q, receipt) in to_send.iter().zip(receipts) {
                    if let Op::Say(ticket, ..) = q.op {
                        q.member.answer(ticket, Outcome::Sent(receipt));
                    }
                }
            }
            Ok(Err(fail)) => {
                self.redis.down(&fail, "say").await;
                let outcome = if sent.load(Ordering::Relaxed) {
                    unconfirmed
                } else {
                    unavailable
                };
                answer_all(outcome, &to_send);
            }
            Err(_) => {
                self.redis.down(&Fail::Timeout, "say").await;
                let outcome = if sent.load(Ordering::Relaxed) {
                    unconfirmed
                } else {
                    unavailable
                };
                answer_all(outcome, &to_send);
            }
        }
    }

    /// The say scripts for `says`, seeding the numbering first where Redis lost it (then those
    /// run again); each numbered message goes to the store. The receipts in order.
    async fn say_seeded(&self, says: &[Queued], sent: &AtomicBool) -> Result<Vec<Receipt>, Fail> {
        let all: Vec<&Queued> = says.iter().collect();
        let mut numbered = self.say_pipeline(&all, sent).await?;
        let unseeded: Vec<usize> = (0..numbered.len())
            .filter(|&i| numbered[i].0.id == 0)
            .collect();
        if !unseeded.is_empty() {
            let mut rooms: Vec<&str> = unseeded
                .iter()
                .filter_map(|&i| match &says[i].op {
                    Op::Say(_, room, ..) => Some(&**room),
                    _ => None,
                })
                .collect();
            rooms.sort_unstable();
            rooms.dedup();
            for room in rooms {
                self.seed(Some(room)).await?;
            }
            let again: Vec<&Queued> = unseeded.iter().map(|&i| &says[i]).collect();
            let retried = self.say_pipeline(&again, sent).await?;
            for (i, r) in unseeded.into_iter().zip(retried) {
                numbered[i] = r;
            }
        }
        let mut receipts = Vec::with_capacity(numbered.len());
        for (q, (receipt, epoch)) in says.iter().zip(numbered) {
            if receipt.id == 0 {
                return Err(Fail::Store("the numbering could not be seeded".into()));
            }
            if let Op::Say(_, room, text, action, reply_to) = &q.op {
                let msg = ChatMessage {
                    id: receipt.id,
                    seq: receipt.seq.unwrap_or_default(),
                    ts: receipt.ts.to_string().into(),
                    room: room.to_string().into(),
                    from: q.member.name().to_string().into(),
                    role: q.member.role(),
                    text: text.to_string().into(),
                    action: *action,
                    reply_to: *reply_to,
                    ..ChatMessage::default()
                };
                self.keep(Admitted::Message(Arc::new(msg), epoch.into()));
            }
            receipts.push(receipt);
        }
        Ok(receipts)
    }

    /// One pipeline of say scripts; the receipts in order, with the room's epoch (id 0: the
    /// numbering must be seeded first).
    async fn say_pipeline(
        &self,
        says: &[&Queued],
        sent: &AtomicBool,
    ) -> Result<Vec<(Receipt, String)>, Fail> {
        let redis = &self.redis;
        let mut pipe = redis::pipe();
        pipe.load_script(&redis.scripts.say).ignore();
        let mut stamps = Vec::with_capacity(says.len());
        for q in says {
            let Op::Say(_, room, text, action, reply_to) = &q.op else {
                continue;
            };
            let ts: Arc<str> = protocol::timestamp().into();
            let x = self.me_id(&q.member);
            let message = ChatMessage {
                id: 0,
                seq: 0,
                ts: b(&ts),
                room: b(room),
                from: b(q.member.name()),
                role: q.member.role(),
                text: b(text),
                action: *action,
                reply_to: *reply_to,
                ..ChatMessage::default()
            };
            let env = Envelope::new(&x, ServerMsg::Message(message)).json();
            let mut call = redis.scripts.say.prepare_invoke();
            self.numbering_keys(&mut call, room);
            call.arg(super::new_epoch())
                .arg(self.settings.history_size)
                .arg(self.settings.history_bytes)
                .arg(&env[1..])
                .arg(redis.room_channel(room))
                .arg(self.durable());
            pipe.invoke_script(&call);
            stamps.push(ts);
        }
        let mut conn = redis.conn().await?;
        sent.store(true, Ordering::Relaxed);
        let replies: Vec<(u64, u64, String)> = pipe.query_async(&mut conn).await?;
        Ok(replies
            .into_iter()
            .zip(stamps)
            .map(|((id, seq, epoch), ts)| {
                let receipt = Receipt {
                    id,
                    seq: Some(seq),
                    ts,
                    to: None,
                };
                (receipt, epoch)
            })
            .collect())
    }

    async fn run(&self, me: &mut Member, op: Op, sent: &AtomicBool, deadline: Instant) -> Done {
        match op {
            Op::Hello(t, room, resume) => self.hello(me, t, &room, resume.as_ref()).await,
            Op::Join(t, room, resume) => self
                .join(me, t, &room, resume.as_ref(), false)
                .await
                .map(|_| ()),
            Op::Leave(t, room) => {
                let outcome = if self.leave(me, &room, None).await? {
                    Outcome::Left { room }
                } else {
                    Refusal::not_in_room(&room).into()
                };
                me.answer(t, outcome);
                Ok(())
            }
            Op::Say(..) => unreachable!("says go through Inner::says"),
            Op::Change(t, room, ask) => {
                let outcome = self.change(me, &room, &ask).await?;
                me.answer(t, outcome);
                Ok(())
            }
            Op::PmChange(t, with, ask) => {
                let outcome = self.change_pm(me, &with, &ask).await?;
                me.answer(t, outcome);
                Ok(())
            }
            Op::Pm(t, to, text, action) => {
                let outcome = self.pm(me, &to, &text, action, sent, deadline).await?;
                me.answer(t, outcome);
                Ok(())
            }
            Op::TypingRoom(t, room, state) => {
                if self.is_in(me, &room) {
                    let x = self.me_id(me);
                    let event = ServerMsg::Typing {
                        from: b(me.name()),
                        room: Some(b(&room)),
                        to: None,
                        state,
                    };
                    let env = Envelope::new(&x, event).json();
                    self.redis
                        .publish(&self.redis.room_channel(&room), &env)
                        .await?;
                }
                me.answer(t, Outcome::Relayed);
                Ok(())
            }
            Op::TypingUser(t, to, state) => {
                let outcome = self.typing_to(me, &to, state).await?;
                me.answer(t, outcome);
                Ok(())
            }
            Op::Who(t, room) => {
                let outcome = if self.is_in(me, &room) {
                    self.who(&room).await?
                } else {
                    self.not_here(&room).await?
                };
                me.answer(t, outcome);
                Ok(())
            }
            Op::Rooms(t) => {
                let outcome = self.rooms().await?;
                me.answer(t, outcome);
                Ok(())
            }
            Op::History(t, room, page) => {
                let outcome = if self.is_in(me, &room) {
                    self.history(&room, page).await?
                } else {
                    self.not_here(&room).await?
                };
                me.answer(t, outcome);
                Ok(())
            }
            Op::Kick(t, name, reason) => {
                let outcome = self.kick(me, &name, &reason).await?;
                me.answer(t, outcome);
                Ok(())
            }
            Op::Kicked(reason) => {
                self.kicked(me, &reason);
                Ok(())
            }
            Op::Nick(t, name) => self.nick(me, t, &name).await,
            Op::Announce(t, text) => {
                let x = self.me_id(me);
                let event = ServerMsg::Notice {
                    from: b(me.name()),
                    text: b(&text),
                };
                sent.store(true, Ordering::Relaxed);
                self.redis
                    .publish(&self.redis.all_channel(), &Envelope::new(&x, event).json())
                    .await?;
                // The notice reaches the admin (and everyone here) before the ack.
                self.fence().await?;
                me.answer(t, Outcome::Done);
                Ok(())
            }
            Op::LeaveKicked(t, room, by, reason) => {
                let kicked = ServerMsg::Kicked {
                    room: b(&room),
                    name: b(me.name()),
                    by: b(&by),
                    reason: b(&reason),
                };
                let outcome = if self.leave(me, &room, Some(kicked)).await? {
                    Outcome::Left { room }
                } else {
                    Refusal::not_in_room(&room).into()
                };
                me.answer(t, outcome);
                Ok(())
            }
            Op::Sessions(t) => {
                let outcome = self.sessions(me).await?;
                me.answer(t, outcome);
                Ok(())
            }
            Op::Logout(t, session) => {
                let outcome = self.logout(me, &session).await?;
                me.answer(t, outcome);
                Ok(())
            }
            Op::ToOwn(event) => self.to_own(me, *event).await,
            Op::Disconnect(rooms) => {
                // The name first: whoever sees the `left` may take it at once.
                self.release(me).await?;
                for room in &rooms {
                    self.leave(me, room, None).await?;
                }
                Ok(())
            }
        }
    }
}
