//! What the server says, shown: every event a connection gets, turned into lines, notes,
//! status and catch-up requests.

use std::time::Instant;

use super::{Chat, Frontend, HELD_BACK, MEMBERS_PER_ROOM, Outgoing, Pending};
use crate::client::render::{self, Clock, Line, LineKind, message_line};
use crate::protocol::{ChatMessage, ClientMsg, ServerMsg};

impl Chat {
    /// A frame from the server.
    pub(super) fn on_event(&mut self, msg: &ServerMsg<'_>, raw: &str, ui: &mut impl Frontend) {
        let json = ui.raw(raw);
        let clock = Clock::now();
        let answered = msg.reference().and_then(|r| self.pending.remove(r));
        match (msg, answered) {
            // A read marker chatctl moved itself, or a name still taken: nothing to show.
            (ServerMsg::Ack { .. } | ServerMsg::Error { .. }, Some(Pending::Read))
            | (ServerMsg::Error { .. }, Some(Pending::Reclaim)) => return,
            (
                ServerMsg::Ack {
                    name: Some(name), ..
                },
                Some(Pending::Reclaim),
            ) => {
                self.nick = name.to_string();
                self.reclaim_at = None;
                self.note(
                    ui,
                    LineKind::Info,
                    format!("{name} is free again: you are {name}"),
                );
                return;
            }
            (
                ServerMsg::Ack {
                    ts,
                    name,
                    seq,
                    offline,
                    id,
                    ..
                },
                Some(p),
            ) => {
                if let (Pending::Say { .. }, Some(id)) = (&p, id) {
                    self.last_own = Some(*id);
                }
                if let (Pending::Pm { to, .. }, true) = (&p, offline) {
                    self.note(
                        ui,
                        LineKind::Info,
                        format!("{to} is not connected: the message waits for them"),
                    );
                }
                if let Some(line) = self.own_line(&p, LineKind::Own, ts.as_deref())
                    && !json
                {
                    ui.show(line);
                }
                if let (Pending::Say { room, .. }, Some(seq)) = (&p, seq) {
                    self.saw(room, None, *seq);
                }
                match p {
                    Pending::Leave { room } => {
                        let now = match &self.current {
                            Some(r) => format!("your lines now go to #{r}"),
                            None => "you are in no room now: /join ROOM to talk".to_string(),
                        };
                        self.members.remove(&room);
                        self.note(ui, LineKind::Info, format!("you left #{room}; {now}"));
                    }
                    Pending::Moderate(what) if !what.is_empty() => {
                        self.note(ui, LineKind::Info, what);
                    }
                    Pending::Nick => {
                        if let Some(name) = name {
                            self.nick = name.to_string();
                            self.note(ui, LineKind::Info, format!("you are now known as {name}"));
                        }
                    }
                    _ => {}
                }
                return;
            }
            (ServerMsg::History { messages, more, .. }, Some(Pending::CatchUp { room })) => {
                for m in messages {
                    if let ServerMsg::Message(m) = m {
                        self.show_message(m, json, ui);
                    }
                }
                if *more {
                    self.catch_up(&room);
                } else {
                    self.caught_up(&room, json, ui);
                }
                return;
            }
            (ServerMsg::Error { .. }, Some(Pending::CatchUp { room })) => {
                // The rest is gone: say so and show what was held back.
                self.note(
                    ui,
                    LineKind::Error,
                    format!("some messages in #{room} could not be fetched"),
                );
                self.caught_up(&room, json, ui);
                return;
            }
            (ServerMsg::Error { .. }, Some(p)) => {
                self.errors += 1;
                let error = render::render(msg, &clock, &self.nick)
                    .into_iter()
                    .next()
                    .map(|l| l.plain())
                    .unwrap_or_default();
                match &p {
                    Pending::Join {
                        room,
                        added,
                        previous,
                    } => {
                        if *added {
                            self.rooms.retain(|r| r != room);
                        }
                        if self.current.as_deref() == Some(room) {
                            self.current = previous.clone();
                        }
                    }
                    Pending::Rejoin => {}
                    _ => {}
                }
                match self.own_line(&p, LineKind::Refused, None) {
                    Some(mut line) => {
                        line.rest = format!("{}  ✗ {error}", line.rest);
                        ui.note(line);
                    }
                    None => ui.note(Line::info(LineKind::Error, error)),
                }
                return;
            }
            _ => {}
        }
        match msg {
            ServerMsg::Welcome {
                room,
                users,
                epoch,
                seq,
                resumed,
                more,
                history,
                ..
            }
            | ServerMsg::Room {
                room,
                users,
                epoch,
                seq,
                resumed,
                more,
                history,
                ..
            } => {
                let mut names: Vec<String> = users.iter().map(|u| u.name.to_string()).collect();
                names.truncate(MEMBERS_PER_ROOM);
                self.members.insert(room.to_string(), names);
                if !self.rooms.iter().any(|r| r == room) {
                    self.rooms.push(room.to_string());
                }
                let had = self.seen.contains_key(&**room);
                match resumed {
                    Some(true) => {
                        // Exactly what was missed: shown as the conversation, not as history.
                        if !json
                            && let Some(line) =
                                render::render(msg, &clock, &self.nick).into_iter().next()
                        {
                            ui.show(line);
                        }
                        self.seen
                            .entry(room.to_string())
                            .or_insert_with(|| (epoch.to_string(), 0));
                        for m in history {
                            if let ServerMsg::Message(m) = m {
                                self.show_message(m, json, ui);
                            }
                        }
                        if *more {
                            self.catching_up.insert(room.to_string(), Vec::new());
                            self.catch_up(room);
                        }
                        return;
                    }
                    Some(false) if had => {
                        self.note(
                            ui,
                            LineKind::Error,
                            format!("messages in #{room} may have been missed while away (the server no longer has them all)"),
                        );
                    }
                    _ => {}
                }
                self.seen
                    .insert(room.to_string(), (epoch.to_string(), *seq));
            }
            ServerMsg::Joined { room, name, .. } => {
                let list = self.members.entry(room.to_string()).or_default();
                if list.len() < MEMBERS_PER_ROOM && !list.iter().any(|n| n == name) {
                    list.push(name.to_string());
                }
            }
            ServerMsg::Presence {
                room, joined, left, ..
            } => {
                let list = self.members.entry(room.to_string()).or_default();
                list.retain(|n| !left.iter().any(|l| l == n));
                for u in joined {
                    if list.len() < MEMBERS_PER_ROOM && !list.iter().any(|n| *n == u.name) {
                        list.push(u.name.to_string());
                    }
                }
            }
            ServerMsg::Left { room, name } | ServerMsg::Kicked { room, name, .. } => {
                if let Some(list) = self.members.get_mut(&**room) {
                    list.retain(|n| n != name);
                }
                // Banned from it: out of it here too (not rejoined after a reconnect).
                if matches!(msg, ServerMsg::Kicked { .. }) && name.eq_ignore_ascii_case(&self.nick)
                {
                    let room = super::room_key(room);
                    self.rooms.retain(|r| *r != room);
                    self.members.remove(&room);
                    if self.current.as_deref() == Some(&room) {
                        self.current = self.rooms.first().cloned();
                    }
                }
            }
            ServerMsg::Renamed { from, to } => {
                for list in self.members.values_mut() {
                    for n in list.iter_mut().filter(|n| **n == **from) {
                        *n = to.to_string();
                    }
                }
            }
            ServerMsg::Read {
                room,
                unread,
                mentions,
                ..
            } => {
                // Read on another device: the same counts here (a conversation's: nothing shown).
                if room.is_empty() {
                    return;
                }
                let room = room.to_string();
                self.unread.retain(|(r, _, _)| *r != room);
                if *unread > 0 && self.current.as_deref() != Some(&room) {
                    let count = (*unread).min(999) as usize;
                    self.unread.push((room, count, *mentions > 0));
                }
            }
            ServerMsg::Membership { room, state } => {
                // Joined or left on another device: the account's rooms are the same here.
                let room = super::room_key(room);
                let here = self.rooms.contains(&room);
                if state == "joined" && !here {
                    self.rooms.push(room.clone());
                    self.outbox.push_back(Outgoing {
                        msg: ClientMsg::Join {
                            room,
                            since: None,
                            epoch: None,
                        },
                        pending: Pending::Rejoin,
                        bytes: 0,
                    });
                } else if state == "left" && here {
                    self.rooms.retain(|r| *r != room);
                    if self.current.as_deref() == Some(&room) {
                        self.current = self.rooms.first().cloned();
                    }
                    self.outbox.push_back(Outgoing {
                        msg: ClientMsg::Leave { room: room.clone() },
                        pending: Pending::Leave { room },
                        bytes: 0,
                    });
                }
            }
            ServerMsg::Resync { room, epoch } => {
                // What is on screen may have holes: number afresh, and show the recent history
                // (after the line saying so).
                self.seen.insert(room.to_string(), (epoch.to_string(), 0));
                self.catching_up.remove(&**room);
                self.outbox.push_back(Outgoing {
                    msg: ClientMsg::History {
                        room: Some(room.to_string()),
                        before: None,
                        after: None,
                        limit: Some(20),
                        with: None,
                    },
                    pending: Pending::Other,
                    bytes: 0,
                });
            }
            ServerMsg::Rooms { rooms, .. } => {
                self.known_rooms = rooms
                    .iter()
                    .take(1000)
                    .map(|r| r.name.to_string())
                    .collect();
            }
            ServerMsg::Typing {
                from, room, state, ..
            } => {
                self.typing
                    .update(from, room.as_deref(), *state, Instant::now());
            }
            ServerMsg::Message(m) => {
                if let Some(held) = self.catching_up.get_mut(&*m.room)
                    && held.len() < HELD_BACK
                {
                    held.push(m.clone().into_owned());
                } else {
                    self.show_message(m, json, ui);
                }
                return;
            }
            ServerMsg::Pm { id, from, ts, .. } => {
                if !self.pm_arrived(*id, from) {
                    return;
                }
                self.typing.message_from(from, None);
                self.day_change(ts, ui);
                if self.opts.bell {
                    ui.bell();
                }
            }
            _ => {}
        }
        if json {
            return;
        }
        for line in render::render(msg, &clock, &self.nick) {
            match line.kind {
                LineKind::Error => ui.note(line),
                _ => ui.show(line),
            }
        }
    }

    /// A PM arrived: false if it was shown already (handed over again at a reconnect). One from
    /// someone else is read once shown, where the server keeps markers.
    fn pm_arrived(&mut self, id: u64, from: &str) -> bool {
        if !self.pms_shown.insert(id) {
            return false;
        }
        if self.pms_shown.len() > 1000 {
            self.pms_shown.pop_first();
        }
        if self.keeps_read && !from.eq_ignore_ascii_case(&self.nick) {
            self.outbox.push_back(Outgoing {
                msg: ClientMsg::ReadPm {
                    with: from.to_string(),
                    msg: id,
                },
                pending: Pending::Read,
                bytes: 0,
            });
        }
        true
    }

    /// Records that `room`'s messages up to `seq` have been shown (in `epoch`, if known).
    pub(super) fn saw(&mut self, room: &str, epoch: Option<&str>, seq: u64) {
        let entry = self
            .seen
            .entry(room.to_string())
            .or_insert_with(|| (epoch.unwrap_or_default().to_string(), 0));
        entry.1 = entry.1.max(seq);
    }

    /// Asks for the next page of `room`'s missed messages (first in line: before anything queued).
    pub(super) fn catch_up(&mut self, room: &str) {
        let after = self.seen.get(room).map_or(0, |(_, seq)| *seq);
        let msg = ClientMsg::History {
            room: Some(room.to_string()),
            before: None,
            after: Some(after),
            limit: None,
            with: None,
        };
        self.outbox.push_front(Outgoing {
            msg,
            pending: Pending::CatchUp {
                room: room.to_string(),
            },
            bytes: 0,
        });
    }

    /// `room` has caught up: the live messages held back meanwhile follow.
    pub(super) fn caught_up(&mut self, room: &str, json: bool, ui: &mut impl Frontend) {
        for m in self.catching_up.remove(room).unwrap_or_default() {
            self.show_message(&m, json, ui);
        }
    }

    /// Shows a room message once: one already shown (by seq) is dropped.
    pub(super) fn show_message(&mut self, m: &ChatMessage<'_>, json: bool, ui: &mut impl Frontend) {
        if self
            .seen
            .get(&*m.room)
            .is_some_and(|(_, seq)| m.seq <= *seq)
        {
            return;
        }
        self.saw(&m.room, None, m.seq);
        self.typing.message_from(&m.from, Some(&m.room));
        self.day_change(&m.ts, ui);
        let mentioned = render::mentions(&m.text, &self.nick);
        if self.current.as_deref() != Some(&m.room) {
            let known = self.unread.len();
            match self.unread.iter_mut().find(|(r, _, _)| *r == *m.room) {
                Some(entry) => {
                    entry.1 += 1;
                    entry.2 |= mentioned;
                }
                None if known < 64 => self.unread.push((m.room.to_string(), 1, mentioned)),
                None => {}
            }
        }
        if mentioned && self.opts.bell {
            ui.bell();
        }
        if self.current.as_deref() == Some(&m.room) {
            self.mark_read(&m.room, false);
        }
        if !json {
            ui.show(message_line(
                m,
                &Clock::now(),
                LineKind::Message,
                &self.nick,
            ));
        }
    }

    /// A day-change line when a live message is the first of a new local day.
    pub(super) fn day_change(&mut self, ts: &str, ui: &mut impl Frontend) {
        let Some(day) = Clock::date_of(ts) else {
            return;
        };
        if day > self.last_day {
            self.last_day = day;
            ui.show(Line::info(
                LineKind::Info,
                format!("-!- Day changed to {}", day.format("%A, %-d %B %Y")),
            ));
        }
    }
}

/// The welcome as JSON, for `--json` output (the hello's reply was read before the loop).
pub(super) fn welcome_json(welcome: &ServerMsg<'_>) -> String {
    crate::protocol::encode(welcome).to_string()
}
