//! A connection's bounded outbound queue: what other tasks hand to one client.
//!
//! Publishers never wait: [`Mailbox::push`] either queues a shared, already-encoded frame or refuses it.
//! The policy for a client that does not keep up is written here and nowhere else:
//! - typing and presence frames are dropped once the queue is half full (they are cheap to lose);
//! - a chat frame that finds the queue full marks the client a slow consumer; its connection task
//!   sees the mark on its next wake-up and disconnects it (close 1008), so no publisher ever waits
//!   and memory per client stays bounded by the capacity.
//!
//! The connection task takes the whole queue at once ([`Mailbox::take`]) and writes it with one flush.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

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

/// A bounded queue of frames for one connection, plus the wake-up for its task.
#[derive(Debug)]
pub struct Mailbox {
    state: Mutex<State>,
    notify: Notify,
    capacity: usize,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Utf8Bytes>,
    overflowed: bool,
    closed: bool,
    /// An admin kicked this client, with this reason.
    kicked: Option<String>,
}

/// What the connection task took from its mailbox.
#[derive(Debug, Default)]
pub struct Batch {
    /// Frames to write, in order.
    pub frames: VecDeque<Utf8Bytes>,
    /// The client overflowed its queue and must be disconnected.
    pub overflowed: bool,
    /// The client was kicked, with this reason: close it (1008) after delivering `frames`.
    pub kicked: Option<String>,
}

impl Mailbox {
    /// An empty mailbox holding at most `capacity` frames. Allocates nothing until used.
    pub fn new(capacity: usize) -> Mailbox {
        Mailbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            capacity,
        }
    }

    /// Queues a frame for delivery without waiting, applying the slow-consumer policy.
    pub fn push(&self, frame: Utf8Bytes, class: Class) -> Pushed {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.closed {
            return Pushed::Closed;
        }
        if state.overflowed {
            return Pushed::Overflow;
        }
        let len = state.frames.len();
        let pushed = match class {
            Class::Presence | Class::Typing if len >= self.capacity / 2 => Pushed::Dropped,
            _ if len >= self.capacity => {
                state.overflowed = true;
                // Free the memory now: the client is going to be disconnected anyway.
                state.frames = VecDeque::new();
                Pushed::Overflow
            }
            _ => {
                state.frames.push_back(frame);
                Pushed::Queued
            }
        };
        let wake = len == 0 || pushed == Pushed::Overflow;
        drop(state);
        if wake {
            self.notify.notify_one();
        }
        pushed
    }

    /// Takes everything queued, leaving the mailbox empty (and unallocated).
    pub fn take(&self) -> Batch {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Batch {
            frames: std::mem::take(&mut state.frames),
            overflowed: state.overflowed,
            kicked: state.kicked.take(),
        }
    }

    /// Waits until something was pushed since the last wake-up.
    pub async fn ready(&self) {
        self.notify.notified().await
    }

    /// Tells the connection to close with `reason` once it has written what is queued.
    pub fn kick(&self, reason: String) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.kicked = Some(reason);
        drop(state);
        self.notify.notify_one();
    }

    /// Refuses all further frames: the connection is ending.
    pub fn close(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.closed = true;
        state.frames = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_soft_frames_before_chat_and_flags_overflow() {
        let m = Mailbox::new(4);
        assert_eq!(m.push("a".into(), Class::Chat), Pushed::Queued);
        assert_eq!(m.push("b".into(), Class::Typing), Pushed::Queued);
        assert_eq!(m.push("c".into(), Class::Presence), Pushed::Dropped);
        assert_eq!(m.push("c".into(), Class::Chat), Pushed::Queued);
        assert_eq!(m.push("d".into(), Class::Chat), Pushed::Queued);
        assert_eq!(m.push("e".into(), Class::Chat), Pushed::Overflow);
        let batch = m.take();
        assert!(batch.overflowed);
        assert!(batch.frames.is_empty());
        m.close();
        assert_eq!(m.push("f".into(), Class::Chat), Pushed::Closed);
    }

    #[test]
    fn take_returns_frames_in_order() {
        let m = Mailbox::new(8);
        for s in ["1", "2", "3"] {
            m.push(s.into(), Class::Chat);
        }
        let batch = m.take();
        let got: Vec<&str> = batch.frames.iter().map(|f| f.as_str()).collect();
        assert_eq!(got, ["1", "2", "3"]);
        assert!(!batch.overflowed);
        assert!(m.take().frames.is_empty());
    }
}
