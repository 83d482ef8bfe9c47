//! What the user sees of their own side: lines waiting for the server's ack, lines acknowledged
//! (formatted like everyone else's), and the status row.

use super::{Chat, Pending, Status};
use crate::client::complete::Known;
use crate::client::render::{Clock, Line, LineKind, message_line, sanitize};
use crate::protocol::{ChatMessage, b};

impl Chat {
    pub(super) fn status(&self) -> Status {
        let mut pending: Vec<Line> = self
            .pending_lines()
            .into_iter()
            .map(|(l, _)| l)
            .take(3)
            .collect();
        let shown = pending.len();
        let waiting = self.pending.len() + self.outbox.len();
        if waiting > shown && shown > 0 {
            pending.push(Line::info(
                LineKind::Pending,
                format!("… and {} more", waiting - shown),
            ));
        }
        let nicks = self
            .current
            .as_ref()
            .and_then(|r| self.members.get(r))
            .cloned()
            .unwrap_or_default();
        let mut rooms = self.known_rooms.clone();
        rooms.extend(self.rooms.iter().cloned());
        Status {
            room: self.current.clone(),
            typing: self
                .current
                .as_deref()
                .map(|r| self.typing.status(r))
                .unwrap_or_default(),
            activity: self.unread.clone(),
            queued: self.outbox.len(),
            pending,
            known: Known { nicks, rooms },
            connected: self.connected,
        }
    }

    /// Own lines not yet acknowledged: sent ones first, then queued ones.
    pub(super) fn pending_lines(&self) -> Vec<(Line, u64)> {
        let mut sent: Vec<(u64, &Pending)> = self
            .pending
            .iter()
            .map(|(id, p)| (id.parse().unwrap_or(0), p))
            .collect();
        sent.sort_by_key(|(id, _)| *id);
        let queued = self.outbox.iter().map(|o| (u64::MAX, &o.pending));
        sent.into_iter()
            .chain(queued)
            .filter_map(|(id, p)| self.own_line(p, LineKind::Pending, None).map(|l| (l, id)))
            .collect()
    }

    /// How one of our own lines reads: `<henry> hi`, `* henry waves`, `[pm to alice] psst`.
    pub(super) fn own_line(&self, p: &Pending, kind: LineKind, ts: Option<&str>) -> Option<Line> {
        let clock = Clock::now();
        let time = match kind {
            LineKind::Pending => "  …     ".to_string(),
            _ => clock.stamp(ts),
        };
        Some(match p {
            Pending::Say { room, text, action } => {
                let m = ChatMessage {
                    id: 0,
                    seq: 0,
                    ts: b(ts.unwrap_or("")),
                    room: b(room),
                    from: b(&self.nick),
                    role: Default::default(),
                    text: b(text),
                    action: *action,
                    ..ChatMessage::default()
                };
                let mut line = message_line(&m, &clock, kind, &self.nick);
                // message_line stamps with the message's time; pending lines have none yet.
                if let Some(rest) = line.prefix.find(" #").map(|i| line.prefix[i..].to_string()) {
                    line.prefix = format!("{time}{rest}");
                }
                line
            }
            Pending::Pm { to, text } => Line::new(
                kind,
                format!("{time} [pm to {}] ", sanitize(to)),
                None,
                sanitize(text),
            ),
            _ => return None,
        })
    }
}
