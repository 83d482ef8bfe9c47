//! Fan-out: the one place that pushes frames into other connections' mailboxes.
//!
//! An event is encoded once (JSON, framed for the wire) the first time a JSON recipient needs it,
//! and rendered once for plain-text sessions the first time one needs it; every recipient gets the
//! same shared bytes. Publishing never waits: a full mailbox is the recipient's problem (see
//! `mailbox`). Counted once per event, never per recipient.

use prometheus::IntCounter;

use super::{ConnId, Member};
use crate::connection::mailbox::{Class, Frame, Pushed};
use crate::metrics::Metrics;
use crate::protocol::{self, ServerMsg};

/// Delivers events to members' mailboxes and counts what it did.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    chat: IntCounter,
    presence: IntCounter,
    typing: IntCounter,
    presence_dropped: IntCounter,
    typing_dropped: IntCounter,
}

impl Delivery {
    pub(crate) fn new(metrics: &Metrics) -> Delivery {
        let events = |class| metrics.events_delivered.with_label_values(&[class]);
        let dropped = |class| metrics.deliveries_dropped.with_label_values(&[class]);
        Delivery {
            chat: metrics.messages_delivered.clone(),
            presence: events("presence"),
            typing: events("typing"),
            presence_dropped: dropped("presence"),
            typing_dropped: dropped("typing"),
        }
    }

    /// Queues `event` to every member of `to` except `except`: the JSON encoding to JSON
    /// sessions, the plain-text line (if the event has one) to plain ones, in the delivery class
    /// the event's kind has ([`class_of`]). Returns how many frames were queued.
    pub(crate) fn deliver<'m>(
        &self,
        to: impl IntoIterator<Item = &'m Member>,
        event: &ServerMsg<'_>,
        except: Option<ConnId>,
    ) -> u64 {
        let class = class_of(event);
        let mut json: Option<Frame> = None;
        let mut plain: Option<Option<Frame>> = None;
        let (mut queued, mut dropped) = (0, 0);
        for member in to {
            if Some(member.conn) == except {
                continue;
            }
            let frame = if member.plain {
                let line = plain
                    .get_or_insert_with(|| protocol::plain::event(event).map(|l| Frame::text(&l)));
                match line {
                    Some(frame) => &*frame,
                    None => continue,
                }
            } else {
                &*json.get_or_insert_with(|| Frame::build(|buf| protocol::encode_into(event, buf)))
            };
            // An overflow is the recipient's problem: its own task sees the mark and closes it.
            match member.mailbox.push(frame, class) {
                Pushed::Queued => queued += 1,
                Pushed::Dropped => dropped += 1,
                Pushed::Overflow | Pushed::Closed => {}
            }
        }
        let (delivered, lost) = match class {
            Class::Chat => (&self.chat, None),
            Class::Presence => (&self.presence, Some(&self.presence_dropped)),
            Class::Typing => (&self.typing, Some(&self.typing_dropped)),
        };
        delivered.inc_by(queued);
        if let Some(lost) = lost
            && dropped > 0
        {
            lost.inc_by(dropped);
        }
        queued
    }
}

/// How an event is treated when a recipient's queue fills: typing and presence (joins, leaves,
/// renames) are dropped first; everything else (messages, kicks, notices, resyncs) never silently.
fn class_of(event: &ServerMsg<'_>) -> Class {
    match event {
        ServerMsg::Typing { .. } => Class::Typing,
        ServerMsg::Joined { .. }
        | ServerMsg::Left { .. }
        | ServerMsg::Presence { .. }
        | ServerMsg::Renamed { .. } => Class::Presence,
        _ => Class::Chat,
    }
}
