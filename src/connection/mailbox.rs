//! A connection's outbound queue: everything that goes to one client's socket after the upgrade,
//! in wire order, and the rules for who writes it.
//!
//! Publishers never wait: [`Mailbox::push`] either queues a shared, already-encoded frame or refuses it.
//! The policy for a client that does not keep up is written here and nowhere else:
//! - typing and presence frames are dropped once the queue is half full (they are cheap to lose);
//! - a chat frame that finds the queue full marks the client a slow consumer; its connection task
//!   sees the mark on its next wake-up and disconnects it (close 1008), so no publisher ever waits
//!   and memory per client stays bounded by the capacity.
//!
//! Who writes (see ARCHITECTURE.md, "Write path"):
//! - On a plain TCP socket the mailbox is *direct*: a frame pushed to an idle queue marks the
//!   mailbox dirty with the server's [`Flusher`], one task that writes every dirty queue with one
//!   vectored write each. It runs after the tasks that are already runnable, so every frame
//!   published in the meantime shares that write (like uWebSockets' corking), and no per-recipient
//!   task is woken. When the socket is full the flusher leaves the rest to the connection task,
//!   which waits for the socket under its write timeout.
//! - Over TLS, and on a multi-threaded runtime (no flusher there; see `server::Shared::flusher`),
//!   the connection task drains the queue itself when woken.
//! - The connection's own replies and tungstenite's control frames (pings, pongs, close) are queued
//!   behind what is already there, so frames never interleave.
//!
//! Every write happens under the mailbox lock and only at a frame boundary or at the unwritten rest
//! of the frame at the head of the queue, so frames written by different tasks cannot interleave.
//! A broadcast is framed once ([`Frame`]: WebSocket header and payload in one shared buffer), so a
//! recipient with one frame queued costs one plain `send`.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use prometheus::IntCounter;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::bell::Bell;

/// How much losing a frame matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Chat messages, PMs, replies and notices: never dropped silently.
    Chat,
    /// Joined/left events: dropped first under pressure.
    Presence,
    /// Typing indications: dropped first under pressure.
    Typing,
}

/// What [`Mailbox::push`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued for delivery.
    Queued,
    /// Dropped because the queue is under pressure (typing/presence only).
    Dropped,
    /// The queue is full: the recipient is now marked a slow consumer.
    Overflow,
    /// The recipient is gone.
    Closed,
}

/// Mailboxes the flusher writes before it lets other tasks run. Small: a message read while a
/// round goes on reaches the mailboxes not yet written in this round instead of waiting for the
/// next, which cuts the saturated tail and lets later writes carry more frames (4 beat 2, 8, 16,
/// 32 and 128 in alternating A/B runs; see BENCHMARKS.md).
const YIELD_EVERY: usize = 4;

/// Frames written per vectored write.
const WRITE_BATCH: usize = 64;

/// A complete server-to-client WebSocket text frame (header and payload), shared by every recipient.
#[derive(Debug, Clone)]
pub struct Frame(Bytes);

impl Frame {
    /// Frames a text message (FIN, opcode 1, unmasked: server to client).
    pub fn text(payload: &str) -> Frame {
        Frame::build(|buf| buf.extend_from_slice(payload.as_bytes()))
    }

    /// Frames the text payload `write` appends to a buffer, without copying it: room for the
    /// longest header is kept in front, and the frame starts where its header does.
    pub fn build(write: impl FnOnce(&mut Vec<u8>)) -> Frame {
        let mut buf = Vec::with_capacity(128);
        buf.resize(MAX_HEADER, 0);
        write(&mut buf);
        let mut head = [0u8; MAX_HEADER];
        let head_len = header(OPCODE_TEXT, buf.len() - MAX_HEADER, &mut head);
        let start = MAX_HEADER - head_len;
        buf[start..MAX_HEADER].copy_from_slice(&head[..head_len]);
        Frame(Bytes::from(buf).slice(start..))
    }
}

/// The longest server-to-client frame header (64-bit length, no mask).
const MAX_HEADER: usize = 10;

/// First header bytes (FIN + opcode) of the frames the server frames itself.
pub const OPCODE_TEXT: u8 = 0x81;
/// A binary frame (the diagnostic echo).
pub const OPCODE_BINARY: u8 = 0x82;
/// A ping.
pub const OPCODE_PING: u8 = 0x89;

/// A bounded queue of outbound frames for one connection, plus the wake-up for its task.
#[derive(Debug)]
pub struct Mailbox {
    state: Mutex<State>,
    /// Wakes the one task that reads this mailbox.
    bell: Bell,
    /// (`u32`s, with `max_bytes`: every connection has a mailbox.)
    capacity: u32,
    /// Bytes that may wait, whatever the number of frames.
    max_bytes: u32,
    /// Bytes written to the socket (`chatd_sent_bytes_total`).
    sent: IntCounter,
}

#[derive(Debug, Default)]
struct State {
    /// Framed bytes in wire order.
    queue: VecDeque<Bytes>,
    /// Bytes in `queue`.
    bytes: usize,
    /// The head of `queue` is the unwritten rest of a frame: it must go out before anything else.
    partial: bool,
    /// Plain sockets: where the flusher writes.
    direct: Option<Direct>,
    /// Registered with the flusher and not yet written.
    dirty: bool,
    /// The socket did not take everything: the connection task drains the queue until it is empty.
    blocked: bool,
    /// A write failed: the socket is gone.
    failed: bool,
    overflowed: bool,
    /// No more frames are accepted: the connection is ending.
    closed: bool,
    /// An admin kicked this client, with this reason.
    kicked: Option<Box<str>>,
    /// The user closed this connection from another (`logout`).
    logged_out: bool,
    /// The server is shutting down.
    shutdown: bool,
    /// Entries for the connection's own task (late answers to its requests), opaque here.
    controls: Controls,
    /// While late answers wait for the connection's task: frames from this index on were queued
    /// after the first of them and wait too, so that what a late answer produces (a `welcome`, a
    /// `room`) goes out before anything pushed after it (the events of the room just joined). The
    /// connection's own frames are inserted here; [`Mailbox::release`] lifts it.
    hold: Option<usize>,
}

impl State {
    /// The flusher, while it writes this queue: a direct socket that has taken everything so far.
    fn flusher(&self) -> Option<&Arc<Flusher>> {
        match &self.direct {
            Some(direct) if !self.blocked && !self.failed => Some(&direct.flusher),
            _ => None,
        }
    }
}

/// Control entries, opaque to this module.
#[derive(Default)]
struct Controls(Vec<Control>);

impl std::fmt::Debug for Controls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} control entries", self.0.len())
    }
}

/// A control entry: something for the connection's task itself, not for the socket.
pub type Control = Box<dyn std::any::Any + Send>;

#[derive(Debug)]
struct Direct {
    tcp: Arc<TcpStream>,
    flusher: Arc<Flusher>,
}

/// What the connection task must act on, taken by [`Mailbox::signals`].
#[derive(Debug, Default)]
pub struct Signals {
    /// The client overflowed its queue and must be disconnected.
    pub overflowed: bool,
    /// A write failed: the socket is gone.
    pub failed: bool,
    /// The client was kicked ([`Mailbox::kick_reason`] says why): close it (1008) after what is
    /// queued.
    pub kicked: bool,
    /// The user logged this connection out from another: close it (1008).
    pub logged_out: bool,
    /// The server is shutting down: close (1001) after what is queued.
    pub shutdown: bool,
    /// Frames wait in the queue: the connection task must flush them.
    pub queued: bool,
    /// Control entries wait: the connection task must take them.
    pub controls: bool,
}

impl Mailbox {
    /// An empty mailbox holding at most `capacity` frames and `max_bytes` bytes. Allocates nothing
    /// until used.
    pub fn new(capacity: usize, max_bytes: usize, sent: IntCounter) -> Mailbox {
        Mailbox {
            state: Mutex::new(State::default()),
            bell: Bell::default(),
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
            max_bytes: u32::try_from(max_bytes).unwrap_or(u32::MAX),
            sent,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Lets the server's flusher write queued frames straight to this plain socket.
    pub fn go_direct(&self, tcp: Arc<TcpStream>, flusher: Arc<Flusher>) {
        self.lock().direct = Some(Direct { tcp, flusher });
    }

    /// Queues a frame for delivery without waiting, applying the slow-consumer policy.
    pub fn push(self: &Arc<Self>, frame: &Frame, class: Class) -> Pushed {
        let mut state = self.lock();
        if state.closed {
            return Pushed::Closed;
        }
        if state.overflowed {
            return Pushed::Overflow;
        }
        let mut len = state.queue.len();
        let mut bytes = state.bytes + frame.0.len();
        let mut wake_task = false;
        let soft = matches!(class, Class::Presence | Class::Typing);
        let (cap, max) = if soft {
            (self.capacity as usize / 2, self.max_bytes as usize / 2)
        } else {
            (self.capacity as usize, self.max_bytes as usize)
        };
        if (len >= cap || bytes > max) && state.flusher().is_some() {
            // The flusher has not reached this socket yet: write what waits now, so that only a
            // client whose socket stops taking bytes is a slow consumer, never one the flusher
            // was merely late for.
            wake_task = self.write_direct(&mut state);
            len = state.queue.len();
            bytes = state.bytes + frame.0.len();
        }
        let pushed = match class {
            _ if soft && (len >= cap || bytes > max) => Pushed::Dropped,
            _ if len >= cap || bytes > max => {
                state.overflowed = true;
                // Free the memory now: the client is going to be disconnected anyway.
                discard(&mut state);
                Pushed::Overflow
            }
            _ => {
                state.queue.push_back(frame.0.clone());
                state.bytes = bytes;
                Pushed::Queued
            }
        };
        wake_task |= pushed == Pushed::Overflow;
        if pushed == Pushed::Queued && !state.blocked {
            match &state.direct {
                Some(direct) if !state.dirty => {
                    // Lock order: mailbox, then the flusher's list (the flusher never holds both).
                    direct.flusher.mark(self.clone());
                    state.dirty = true;
                }
                Some(_) => {}
                None => wake_task = len == 0,
            }
        }
        drop(state);
        if wake_task {
            self.bell.ring();
        }
        pushed
    }

    /// Queues one of the connection's own replies behind everything queued. On a direct socket the
    /// flusher writes it, after the frames published before it (see [`Mailbox::flusher_writes`]).
    pub fn reply(self: &Arc<Self>, payload: &str) {
        self.queue_own(Frame::text(payload).0, true);
    }

    /// Frames `payload` with the header byte `first` (an `OPCODE_*`) and queues it behind
    /// everything queued, like a reply: pings, and the diagnostic echo.
    pub fn queue_frame(self: &Arc<Self>, first: u8, payload: &[u8]) {
        let mut head = [0u8; MAX_HEADER];
        let n = header(first, payload.len(), &mut head);
        let mut frame = Vec::with_capacity(n + payload.len());
        frame.extend_from_slice(&head[..n]);
        frame.extend_from_slice(payload);
        self.queue_own(Bytes::from(frame), true);
    }

    /// Queues bytes tungstenite wrote (control frames), behind everything queued; the transport
    /// writes them at once.
    pub fn queue_raw(self: &Arc<Self>, bytes: &[u8]) {
        self.queue_own(Bytes::copy_from_slice(bytes), false);
    }

    /// The connection's own frames count toward the byte budget like any other: a client that
    /// floods requests and never reads their replies is a slow consumer too.
    fn queue_own(self: &Arc<Self>, frame: Bytes, to_flusher: bool) {
        let mut state = self.lock();
        if state.bytes + frame.len() > self.max_bytes as usize && !state.closed {
            state.overflowed = true;
            discard(&mut state);
            drop(state);
            self.bell.ring();
            return;
        }
        state.bytes += frame.len();
        match state.hold {
            Some(at) => {
                state.queue.insert(at, frame);
                state.hold = Some(at + 1);
            }
            None => state.queue.push_back(frame),
        }
        if to_flusher {
            self.mark_for_flusher(&mut state);
        }
    }

    /// Registers the queue with the flusher if the flusher writes it and it is not registered yet.
    fn mark_for_flusher(self: &Arc<Self>, state: &mut State) {
        if !state.dirty
            && let Some(flusher) = state.flusher()
        {
            // Lock order: mailbox, then the flusher's list (the flusher never holds both).
            flusher.mark(self.clone());
            state.dirty = true;
        }
    }

    /// Whether the flusher writes what is queued (a direct socket that took everything so far), so
    /// the connection task need not. A reply then leaves in the flusher's round, behind the frames
    /// other recipients got from the same request: a `say`'s ack reaches its sender no earlier
    /// than the message reaches the room, and a sender pacing itself on acks cannot run ahead of
    /// the fan-out (which is what made the saturated tail long).
    pub fn flusher_writes(&self) -> bool {
        self.lock().flusher().is_some()
    }

    /// Whether anything waits to be written.
    #[cfg(test)]
    pub fn has_queued(&self) -> bool {
        !self.lock().queue.is_empty()
    }

    /// Writes the queue with `write` (a vectored write that does not wait) until it is empty or the
    /// write fails; `WouldBlock` means the socket is full, and the connection task owns the rest.
    pub fn write_queued(
        &self,
        mut write: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<()> {
        let mut state = self.lock();
        let state = &mut *state;
        let result = write_out(state, &self.sent, &mut write);
        state.blocked = result.is_err();
        result
    }

    /// The flusher's turn: write what is queued straight to the socket. A full socket is handed to
    /// the connection task; a failed one is reported to it.
    fn flush_direct(&self) {
        let mut guard = self.lock();
        guard.dirty = false;
        if self.write_direct(&mut guard) {
            drop(guard);
            self.bell.ring();
        }
    }

    /// Writes what is queued straight to a direct socket that has taken everything so far; true
    /// if the connection task must now take over (the socket is full, or gone).
    fn write_direct(&self, state: &mut State) -> bool {
        if state.blocked || state.failed {
            return false;
        }
        let Some(direct) = state.direct.as_ref().map(|d| d.tcp.clone()) else {
            return false;
        };
        match write_out(state, &self.sent, &mut |s| write_plain(&direct, s)) {
            Ok(()) => return false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => state.blocked = true,
            Err(_) => state.failed = true,
        }
        true
    }

    /// Takes what the connection task must act on.
    pub fn signals(&self) -> Signals {
        let state = self.lock();
        Signals {
            overflowed: state.overflowed,
            failed: state.failed,
            kicked: state.kicked.is_some(),
            logged_out: state.logged_out,
            shutdown: state.shutdown,
            queued: !state.queue.is_empty(),
            controls: !state.controls.0.is_empty(),
        }
    }

    /// Whether the client overflowed its queue (and must be disconnected).
    pub fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    /// Waits until the connection task has something to act on.
    pub fn ready(&self) -> impl Future<Output = ()> + '_ {
        // A future of one reference: a connection task waits on this beside its socket for its
        // whole life, and a `Notify`'s waiter would cost it 72 bytes more.
        std::future::poll_fn(|cx| self.bell.poll_rung(cx))
    }

    /// Queues a control entry for the connection's task and wakes it. False if the connection has
    /// ended. At most `capacity` entries wait: beyond that the client is a slow consumer.
    pub fn push_control(&self, entry: Control) -> bool {
        let mut state = self.lock();
        if state.closed {
            return false;
        }
        if state.controls.0.len() >= self.capacity as usize {
            state.overflowed = true;
        } else {
            state.controls.0.push(entry);
            if state.hold.is_none() {
                state.hold = Some(state.queue.len());
            }
        }
        drop(state);
        self.bell.ring();
        true
    }

    /// Takes the waiting control entries, oldest first.
    pub fn take_controls(&self) -> Vec<Control> {
        std::mem::take(&mut self.lock().controls.0)
    }

    /// The connection's task has queued what the late answers it took produced: the frames held
    /// behind them may go (unless more answers arrived meanwhile).
    pub fn release(self: &Arc<Self>) {
        let mut state = self.lock();
        if state.hold.is_none() || !state.controls.0.is_empty() {
            return;
        }
        state.hold = None;
        if !state.queue.is_empty() {
            self.mark_for_flusher(&mut state);
        }
    }

    /// Tells the connection to close with `reason` once it has written what is queued.
    pub fn kick(&self, reason: String) {
        self.lock().kicked = Some(reason.into());
        self.bell.ring();
    }

    /// Why the client was kicked, if it was.
    pub fn kick_reason(&self) -> Option<String> {
        self.lock().kicked.as_deref().map(String::from)
    }

    /// Tells the connection to close as logged out once it has written what is queued.
    pub fn log_out(&self) {
        self.lock().logged_out = true;
        self.bell.ring();
    }

    /// Tells the connection that the server is shutting down (see `roster`).
    pub fn shut_down(&self) {
        self.lock().shutdown = true;
        self.bell.ring();
    }

    /// Whether the connection was logged out (it is closing).
    pub fn logged_out(&self) -> bool {
        self.lock().logged_out
    }

    /// Refuses all further frames but keeps what is queued: the connection is closing, and only its
    /// close frame may follow.
    pub fn seal(&self) {
        self.lock().closed = true;
    }

    /// Drops every queued frame that has not started going out (a slow consumer is being closed).
    pub fn discard(&self) {
        discard(&mut self.lock());
    }

    /// Refuses all further frames and frees the queue: the connection has ended.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.queue = VecDeque::new();
        state.bytes = 0;
        state.direct = None;
        state.controls = Controls::default();
        state.hold = None;
    }
}

fn discard(state: &mut State) {
    let keep = usize::from(state.partial).min(state.queue.len());
    state.queue.truncate(keep);
    state.queue.shrink_to_fit();
    state.bytes = state.queue.iter().map(Bytes::len).sum();
    state.hold = state.hold.map(|at| at.min(keep));
}

/// A frame's header (FIN and the opcode in `first`, unmasked: server to client) for a payload of
/// `len` bytes.
fn header(first: u8, len: usize, head: &mut [u8; 10]) -> usize {
    head[0] = first;
    if len < 126 {
        head[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        head[1] = 126;
        head[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        head[1] = 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// One non-blocking write to a plain socket: `send` for one frame, `writev` for several.
pub(crate) fn write_plain(tcp: &TcpStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    match slices {
        [one] => tcp.try_write(one),
        _ => tcp.try_write_vectored(slices),
    }
}

/// Writes queued frames in batches until the queue is empty or `write` fails.
fn write_out(
    state: &mut State,
    sent: &IntCounter,
    write: &mut dyn FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
) -> io::Result<()> {
    let State {
        queue,
        partial,
        bytes,
        hold,
        ..
    } = state;
    let mut total = 0u64;
    let result = loop {
        // Held frames wait (see `State::hold`).
        let writable = hold.unwrap_or(queue.len());
        if writable == 0 {
            break Ok(());
        }
        let mut slices = [IoSlice::new(&[]); WRITE_BATCH];
        let n = writable.min(WRITE_BATCH);
        for (slice, frame) in slices.iter_mut().zip(queue.iter()) {
            *slice = IoSlice::new(frame);
        }
        let mut written = match write(&slices[..n]) {
            Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => written,
            Err(e) => break Err(e),
        };
        total += written as u64;
        // Pop what went out whole; keep the rest of a frame cut short at the head.
        while let Some(frame) = queue.front_mut() {
            if written < frame.len() {
                if written > 0 {
                    *frame = frame.slice(written..);
                    *partial = true;
                }
                break;
            }
            written -= frame.len();
            queue.pop_front();
            *partial = false;
            if let Some(at) = hold {
                *at -= 1;
            }
        }
    };
    if queue.is_empty() && queue.capacity() > 0 {
        // An idle connection keeps no queue memory (the old mailbox freed its batch the same way).
        *queue = VecDeque::new();
    }
    *bytes -= total as usize;
    sent.inc_by(total);
    result
}

/// Writes dirty mailboxes of plain sockets: one task per server, so every frame published while it
/// waited to run goes out in one write per recipient.
#[derive(Debug, Default)]
pub struct Flusher {
    dirty: Mutex<Vec<Arc<Mailbox>>>,
    notify: Notify,
}

impl Flusher {
    fn mark(&self, mailbox: Arc<Mailbox>) {
        let mut dirty = crate::sync::lock(&self.dirty);
        let first = dirty.is_empty();
        dirty.push(mailbox);
        drop(dirty);
        if first {
            self.notify.notify_one();
        }
    }

    /// Writes dirty mailboxes as they come, forever (the server aborts it after the connections).
    pub async fn run(&self) {
        let mut batch = Vec::new();
        loop {
            self.notify.notified().await;
            std::mem::swap(&mut batch, &mut *crate::sync::lock(&self.dirty));
            for (i, mailbox) in batch.drain(..).enumerate() {
                mailbox.flush_direct();
                if i % YIELD_EVERY == YIELD_EVERY - 1 {
                    // Let the runtime read sockets meanwhile: new messages join the queues not
                    // yet written, and publishers are not held up behind a round.
                    tokio::task::yield_now().await;
                }
            }
            if batch.capacity() > 4096 {
                batch = Vec::new();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(capacity: usize) -> Arc<Mailbox> {
        Arc::new(Mailbox::new(
            capacity,
            1 << 20,
            IntCounter::new("sent", "bytes").expect("counter"),
        ))
    }

    /// What the mailbox writes to a socket that takes at most `chunk` bytes per write and is full
    /// after `writes` writes.
    fn drain(m: &Mailbox, chunk: usize, writes: usize) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut calls = 0;
        let _ = m.write_queued(|slices| {
            calls += 1;
            if calls > writes {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let before = wire.len();
            for s in slices {
                let room = chunk - (wire.len() - before);
                wire.extend_from_slice(&s[..s.len().min(room)]);
                if wire.len() - before == chunk {
                    break;
                }
            }
            Ok(wire.len() - before)
        });
        wire
    }

    #[test]
    fn drops_soft_frames_before_chat_and_flags_overflow() {
        let m = mailbox(4);
        assert_eq!(m.push(&Frame::text("a"), Class::Chat), Pushed::Queued);
        assert_eq!(m.push(&Frame::text("b"), Class::Typing), Pushed::Queued);
        assert_eq!(m.push(&Frame::text("c"), Class::Presence), Pushed::Dropped);
        assert_eq!(m.push(&Frame::text("c"), Class::Chat), Pushed::Queued);
        assert_eq!(m.push(&Frame::text("d"), Class::Chat), Pushed::Queued);
        assert_eq!(m.push(&Frame::text("e"), Class::Chat), Pushed::Overflow);
        assert!(m.signals().overflowed);
        assert!(!m.has_queued());
        m.close();
        assert_eq!(m.push(&Frame::text("f"), Class::Chat), Pushed::Closed);
    }

    #[test]
    fn frames_go_out_whole_and_in_order_whatever_the_socket_takes() {
        let long = "x".repeat(300);
        let mut expected = Vec::new();
        for payload in ["1", long.as_str(), "three"] {
            expected.extend_from_slice(&Frame::text(payload).0);
        }
        expected.extend_from_slice(&[0x89, 0]); // a ping tungstenite queued
        for chunk in [1, 3, 7, 64, 100_000] {
            let m = mailbox(8);
            m.push(&Frame::text("1"), Class::Chat);
            m.push(&Frame::text(&long), Class::Chat);
            m.reply("three");
            m.queue_raw(&[0x89, 0]);
            let mut wire = Vec::new();
            while m.has_queued() {
                wire.extend(drain(&m, chunk, 1));
            }
            assert_eq!(wire, expected, "socket taking {chunk} bytes per write");
        }
    }

    /// A late answer goes out before what was pushed after it (a joined room's events wait for
    /// the `room` reply), and after what was pushed before it, whatever the socket takes.
    #[test]
    fn frames_pushed_after_a_late_answer_wait_for_its_reply() {
        let expected: Vec<u8> = ["before", "reply", "after", "later"]
            .iter()
            .flat_map(|p| Frame::text(p).0.to_vec())
            .collect();
        for chunk in [1, 5, 100_000] {
            let m = mailbox(8);
            m.push(&Frame::text("before"), Class::Chat);
            assert!(m.push_control(Box::new(())));
            m.push(&Frame::text("after"), Class::Chat);
            let mut wire = Vec::new();
            for _ in 0..100 {
                wire.extend(drain(&m, chunk, 1));
            }
            assert_eq!(
                wire,
                Frame::text("before").0.to_vec(),
                "held while the answer waits"
            );
            assert_eq!(m.take_controls().len(), 1);
            m.push(&Frame::text("later"), Class::Chat);
            m.reply("reply");
            m.release();
            while m.has_queued() {
                wire.extend(drain(&m, chunk, 1));
            }
            assert_eq!(wire, expected, "socket taking {chunk} bytes per write");
        }
    }

    #[test]
    fn headers_use_the_shortest_length_encoding() {
        let mut head = [0u8; 10];
        assert_eq!(header(OPCODE_TEXT, 125, &mut head), 2);
        assert_eq!(head[..2], [0x81, 125]);
        assert_eq!(header(OPCODE_TEXT, 126, &mut head), 4);
        assert_eq!(head[..4], [0x81, 126, 0, 126]);
        assert_eq!(header(OPCODE_TEXT, 70_000, &mut head), 10);
        assert_eq!(head[..10], [0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    #[test]
    fn the_byte_budget_counts_every_frame_whatever_their_number() {
        let m = Arc::new(Mailbox::new(
            1000,
            1000,
            IntCounter::new("sent", "bytes").expect("counter"),
        ));
        let big = "x".repeat(300);
        assert_eq!(m.push(&Frame::text(&big), Class::Chat), Pushed::Queued);
        // Soft frames stop at half the bytes.
        assert_eq!(m.push(&Frame::text(&big), Class::Typing), Pushed::Dropped);
        assert_eq!(m.push(&Frame::text(&big), Class::Chat), Pushed::Queued);
        m.reply(&big);
        assert!(!m.signals().overflowed);
        // Control frames and replies count too: this one does not fit.
        m.queue_raw(&[0x89; 200]);
        assert!(m.signals().overflowed);
        assert!(
            !m.has_queued(),
            "an overflowing client's queue is freed at once"
        );
    }

    #[test]
    fn a_slow_consumer_keeps_only_the_frame_it_is_in_the_middle_of() {
        let m = mailbox(3);
        m.push(&Frame::text("abcdef"), Class::Chat);
        m.push(&Frame::text("second"), Class::Chat);
        let first = drain(&m, 3, 1);
        assert_eq!(first, [0x81, 6, b'a']);
        m.discard();
        let rest = drain(&m, 100, 10);
        assert_eq!(rest, b"bcdef");
    }
}
