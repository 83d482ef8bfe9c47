//! How received events read, one display line each, and how text is made safe to show.
//!
//! [`sanitize`] is the only way received text reaches a terminal. Times shown are the message's own
//! `ts` in local time when it has one (history shows when things were said, not when they were
//! displayed), with the date when it is not today.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Local, NaiveDate};

mod rooms;
mod sanitize;
#[cfg(test)]
mod tests;

pub use sanitize::{escape_json_for_terminal, hidden_at, sanitize};

use crate::protocol::{ChatMessage, ServerMsg, TypingState, UserInfo};

/// One display line: an optional coloured name and the already-sanitised text around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// What kind of line, for styling.
    pub kind: LineKind,
    /// Text before the name.
    pub prefix: String,
    /// A name, coloured by name when colour is on.
    pub name: Option<String>,
    /// Text after the name.
    pub rest: String,
}

/// Kinds of display lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// A room message.
    Message,
    /// A message that mentions this user.
    Mention,
    /// This user's own message, acknowledged by the server.
    Own,
    /// This user's own message, not yet acknowledged.
    Pending,
    /// This user's own message, refused (the error follows it).
    Refused,
    /// A private message.
    Pm,
    /// Join/leave.
    Presence,
    /// Server notice.
    Notice,
    /// Information about the session (welcome, who, rooms, connection state).
    Info,
    /// A message from history.
    History,
    /// An error.
    Error,
}

impl Line {
    /// A line; `name` is sanitised here, `prefix` and `rest` must already be.
    pub fn new(
        kind: LineKind,
        prefix: impl Into<String>,
        name: Option<&str>,
        rest: impl Into<String>,
    ) -> Line {
        Line {
            kind,
            prefix: prefix.into(),
            name: name.map(sanitize),
            rest: rest.into(),
        }
    }

    /// A line of local text with no name.
    pub fn info(kind: LineKind, text: impl Into<String>) -> Line {
        Line::new(kind, text, None, "")
    }

    /// The line without colour.
    pub fn plain(&self) -> String {
        format!(
            "{}{}{}",
            self.prefix,
            self.name.as_deref().unwrap_or(""),
            self.rest
        )
    }
}

/// Local time, for stamping lines.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    now: DateTime<Local>,
}

impl Clock {
    /// The clock as it reads now.
    pub fn now() -> Clock {
        Clock { now: Local::now() }
    }

    /// A clock reading `now` (tests).
    pub fn at(now: DateTime<Local>) -> Clock {
        Clock { now }
    }

    /// Today's local date.
    pub fn today(&self) -> NaiveDate {
        self.now.date_naive()
    }

    /// The local date of a server timestamp, if it parses.
    pub fn date_of(ts: &str) -> Option<NaiveDate> {
        DateTime::parse_from_rfc3339(ts)
            .ok()
            .map(|t| t.with_timezone(&Local).date_naive())
    }

    /// `HH:MM:SS` for a server timestamp (or now, without one), with the date in front when it
    /// is not today.
    pub fn stamp(&self, ts: Option<&str>) -> String {
        let at = ts
            .and_then(|ts| DateTime::parse_from_rfc3339(ts).ok())
            .map_or(self.now, |t| t.with_timezone(&Local));
        if at.date_naive() == self.today() {
            at.format("%H:%M:%S").to_string()
        } else {
            at.format("%Y-%m-%d %H:%M:%S").to_string()
        }
    }
}

fn user_names(users: &[UserInfo<'_>]) -> String {
    let names: Vec<String> = users.iter().map(rooms::shown_name).collect();
    names.join(", ")
}

/// Whether `text` mentions `name` as a word (case-insensitively).
pub fn mentions(text: &str, name: &str) -> bool {
    if name.is_empty() {
        return false;
    }
    let is_word = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    let lower = text.to_ascii_lowercase();
    let name = name.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(&name) {
        let start = from + i;
        let end = start + name.len();
        let before = lower[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !is_word(c));
        let after = lower[end..]
            .chars()
            .next()
            .is_none_or(|c| !is_word(c) || c == '.' && lower[end + 1..].is_empty());
        if before && after {
            return true;
        }
        from = end;
    }
    false
}

/// Where a change happened: `#room`, or `[pm with NAME]`.
fn place(room: &str, with: &Option<std::borrow::Cow<'_, str>>) -> String {
    match with {
        Some(with) if room.is_empty() => format!("[pm with {}]", sanitize(with)),
        _ => format!("#{}", sanitize(room)),
    }
}

/// Whether lines show message ids (`chatctl --ids`): set once, at start.
static SHOW_IDS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Shows message ids (`[41] `) before their texts from now on.
pub fn show_ids(on: bool) {
    SHOW_IDS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// A room message as a line. `me` is this user's name (for mentions).
pub fn message_line(m: &ChatMessage<'_>, clock: &Clock, kind: LineKind, me: &str) -> Line {
    let time = clock.stamp(Some(&m.ts));
    let room = sanitize(&m.room);
    let mut text = sanitize(&m.text);
    if m.deleted {
        text = "(message deleted)".into();
    } else if m.edited_ts.is_some() {
        text.push_str(" (edited)");
    }
    if let Some(to) = m.reply_to {
        text = format!("[re: {to}] {text}");
    }
    for r in &m.reactions {
        text.push_str(&format!(" [{} {}]", sanitize(&r.emoji), r.count));
    }
    if m.id > 0 && SHOW_IDS.load(std::sync::atomic::Ordering::Relaxed) {
        text = format!("[{}] {text}", m.id);
    }
    let kind =
        if kind == LineKind::Message && !m.from.eq_ignore_ascii_case(me) && mentions(&m.text, me) {
            LineKind::Mention
        } else {
            kind
        };
    let tag = if kind == LineKind::History {
        "[history] "
    } else {
        ""
    };
    if m.action {
        Line::new(
            kind,
            format!("{time} {tag}#{room} * "),
            Some(&m.from),
            format!(" {text}"),
        )
    } else {
        Line::new(
            kind,
            format!("{time} {tag}#{room} <"),
            Some(&m.from),
            format!("> {text}"),
        )
    }
}

/// Names shown on one batched join or leave line; the rest are counted.
const PRESENCE_NAMES: usize = 8;

/// A large room's batch of joins and leaves: one line for who joined, one for who left, the room's
/// size on the last.
fn presence_lines(
    now: &str,
    room: &str,
    joined: &[UserInfo<'_>],
    left: &[Cow<'_, str>],
    unlisted: usize,
    user_count: usize,
) -> Vec<Line> {
    let list = |names: Vec<&str>, verb: &str| {
        let shown: Vec<String> = names
            .iter()
            .take(PRESENCE_NAMES)
            .map(|n| sanitize(n))
            .collect();
        match names.len().saturating_sub(PRESENCE_NAMES) {
            0 => format!("{} {verb}", shown.join(", ")),
            n => format!("{} and {n} others {verb}", shown.join(", ")),
        }
    };
    let room = sanitize(room);
    let mut lines = Vec::new();
    if !joined.is_empty() {
        let names = joined.iter().map(|u| &*u.name).collect();
        lines.push((format!("{now} #{room} --> "), list(names, "joined")));
    }
    if !left.is_empty() {
        let names = left.iter().map(|n| &**n).collect();
        lines.push((format!("{now} #{room} <-- "), list(names, "left")));
    }
    if unlisted > 0 {
        lines.push((
            format!("{now} #{room} -!- "),
            format!("{unlisted} more came and went"),
        ));
    }
    let last = lines.len().saturating_sub(1);
    lines
        .into_iter()
        .enumerate()
        .map(|(i, (prefix, mut rest))| {
            if i == last {
                rest.push_str(&format!(" ({user_count} here)"));
            }
            Line::new(LineKind::Presence, prefix, None, rest)
        })
        .collect()
}

/// Turns one server event into display lines (errors included). `me` is this user's name.
pub fn render(msg: &ServerMsg<'_>, clock: &Clock, me: &str) -> Vec<Line> {
    let now = clock.stamp(None);
    let one = |l: Line| vec![l];
    match msg {
        ServerMsg::Message(m) => one(message_line(m, clock, LineKind::Message, me)),
        ServerMsg::Edited {
            room,
            with,
            msg,
            text,
            by,
            ts,
            ..
        } => one(Line::new(
            LineKind::Message,
            format!("{} {} * ", clock.stamp(Some(ts)), place(room, with)),
            Some(by),
            format!(" edited {msg}: {}", sanitize(text)),
        )),
        ServerMsg::Deleted {
            room,
            with,
            msg,
            ts,
            ..
        } => one(Line::info(
            LineKind::Notice,
            format!(
                "{} {} -!- message {msg} deleted",
                clock.stamp(Some(ts)),
                place(room, with)
            ),
        )),
        ServerMsg::Reaction {
            room,
            msg,
            emoji,
            from,
            on,
            ts,
            ..
        } => one(Line::new(
            LineKind::Presence,
            format!("{} #{} * ", clock.stamp(Some(ts)), sanitize(room)),
            Some(from),
            if *on {
                format!(" reacted {} to {msg}", sanitize(emoji))
            } else {
                format!(" took back {} from {msg}", sanitize(emoji))
            },
        )),
        ServerMsg::Pm {
            ts,
            from,
            text,
            action,
            ..
        } => {
            let text = sanitize(text);
            let body = if *action {
                format!("* {} {text}", sanitize(from))
            } else {
                text
            };
            one(Line::new(
                LineKind::Pm,
                format!("{} [pm from ", clock.stamp(Some(ts))),
                Some(from),
                format!("] {body}"),
            ))
        }
        ServerMsg::Joined { room, name, .. } => one(Line::new(
            LineKind::Presence,
            format!("{now} #{} --> ", sanitize(room)),
            Some(name),
            " joined",
        )),
        ServerMsg::Left { room, name } => one(Line::new(
            LineKind::Presence,
            format!("{now} #{} <-- ", sanitize(room)),
            Some(name),
            " left",
        )),
        ServerMsg::Presence {
            room,
            joined,
            left,
            unlisted,
            user_count,
        } => presence_lines(&now, room, joined, left, *unlisted, *user_count),
        ServerMsg::Kicked {
            room,
            name,
            by,
            reason,
        } => one(Line::new(
            LineKind::Presence,
            format!("{now} #{} <-- ", sanitize(room)),
            Some(name),
            format!(" was kicked by {}: {}", sanitize(by), sanitize(reason)),
        )),
        ServerMsg::Renamed { from, to } => one(Line::new(
            LineKind::Presence,
            format!("{now} -!- "),
            Some(from),
            format!(" is now known as {}", sanitize(to)),
        )),
        ServerMsg::Resync { room, .. } => one(Line::info(
            LineKind::Notice,
            format!(
                "{now} #{} -!- some messages may have been lost; reloading recent history",
                sanitize(room)
            ),
        )),
        ServerMsg::Membership { room, state } => one(Line::info(
            LineKind::Info,
            format!(
                "{now} -!- {} #{} on another device",
                if state == "left" {
                    "you left"
                } else {
                    "you joined"
                },
                sanitize(room)
            ),
        )),
        ServerMsg::Read { .. } => Vec::new(),
        ServerMsg::Notice { from, text } => one(Line::new(
            LineKind::Notice,
            format!("{now} -!- notice from "),
            Some(from),
            format!(": {}", sanitize(text)),
        )),
        ServerMsg::Welcome {
            name,
            room,
            users,
            user_count,
            history,
            settings,
            ..
        } => {
            let mut lines = room_lines(
                clock,
                me,
                &format!("welcome, {}! ", sanitize(name)),
                room,
                (users, *user_count),
                history,
            );
            lines.splice(1..1, rooms::settings_line(&now, room, settings));
            lines
        }
        ServerMsg::Room {
            room,
            users,
            user_count,
            history,
            settings,
            ..
        } => {
            let mut lines = room_lines(clock, me, "", room, (users, *user_count), history);
            lines.splice(1..1, rooms::settings_line(&now, room, settings));
            lines
        }
        ServerMsg::RoomChanged {
            room,
            settings,
            name,
            room_role,
        } => rooms::changed(
            &now,
            room,
            settings.as_ref(),
            name.as_deref(),
            room_role.as_deref(),
        ),
        ServerMsg::Bans {
            room, bans, more, ..
        } => rooms::bans(&now, room, bans, *more),
        ServerMsg::Audit { room, entries, .. } => rooms::audit(&now, room, entries),
        ServerMsg::History { messages, .. } => {
            let lines = history_lines(messages, clock, me);
            if lines.is_empty() {
                one(Line::info(LineKind::Info, format!("{now} -!- no history")))
            } else {
                lines
            }
        }
        ServerMsg::Who {
            room,
            users,
            user_count,
            ..
        } => one(Line::info(
            LineKind::Info,
            format!(
                "{now} -!- #{}: {}{}",
                sanitize(room),
                user_names(users),
                and_more(users.len(), *user_count)
            ),
        )),
        ServerMsg::Rooms { rooms, .. } => {
            let rooms: Vec<String> = rooms
                .iter()
                .map(|r| {
                    let private = if r.private { ", private" } else { "" };
                    let topic = if r.topic.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", sanitize(&r.topic))
                    };
                    format!("#{} ({}{private}{topic})", sanitize(&r.name), r.members)
                })
                .collect();
            one(Line::info(
                LineKind::Info,
                format!("{now} -!- rooms: {}", rooms.join(", ")),
            ))
        }
        ServerMsg::Sessions { sessions, .. } => {
            let mut lines = vec![Line::info(
                LineKind::Info,
                format!(
                    "{now} -!- you are connected {} (/logout ID closes one):",
                    match sessions.len() {
                        1 => "once".to_string(),
                        n => format!("{n} times"),
                    }
                ),
            )];
            lines.extend(sessions.iter().map(|s| {
                let since = if s.since.is_empty() {
                    String::new()
                } else {
                    format!(" since {}", clock.stamp(Some(&s.since)))
                };
                Line::info(
                    LineKind::Info,
                    format!(
                        "{now} -!-   {}  {}{since}{}",
                        sanitize(&s.session),
                        sanitize(s.device.as_deref().unwrap_or("(no device name)")),
                        if s.current { "  (this one)" } else { "" }
                    ),
                )
            }));
            lines
        }
        ServerMsg::Error { code, message, .. } => one(Line::info(
            LineKind::Error,
            format!("error: {} ({})", sanitize(message), code.wire_name()),
        )),
        ServerMsg::Search {
            query, messages, ..
        } => {
            let mut lines = vec![Line::info(
                LineKind::Info,
                format!(
                    "{now} -!- {} found for \"{}\" (newest first)",
                    match messages.len() {
                        1 => "1 message".to_string(),
                        n => format!("{n} messages"),
                    },
                    sanitize(query)
                ),
            )];
            for m in messages {
                if let ServerMsg::Message(m) = m {
                    let mut line = message_line(m, clock, LineKind::History, me);
                    line.prefix = line.prefix.replacen("[history] ", "[found] ", 1);
                    lines.push(line);
                }
            }
            lines
        }
        ServerMsg::Ack { .. } | ServerMsg::Typing { .. } => Vec::new(),
    }
}

/// ` and 4,990 more` when a list shows only the first of `total`.
fn and_more(shown: usize, total: usize) -> String {
    if total > shown {
        format!(" and {} more", total - shown)
    } else {
        String::new()
    }
}

fn room_lines(
    clock: &Clock,
    me: &str,
    what: &str,
    room: &str,
    (users, total): (&[UserInfo<'_>], usize),
    history: &[ServerMsg<'_>],
) -> Vec<Line> {
    let mut lines = vec![Line::info(
        LineKind::Info,
        format!(
            "{} -!- {what}you are in #{} with: {}{}",
            clock.stamp(None),
            sanitize(room),
            user_names(users),
            and_more(users.len(), total)
        ),
    )];
    lines.extend(history_lines(history, clock, me));
    lines
}

fn history_lines(messages: &[ServerMsg<'_>], clock: &Clock, me: &str) -> Vec<Line> {
    messages
        .iter()
        .filter_map(|m| match m {
            ServerMsg::Message(m) => Some(message_line(m, clock, LineKind::History, me)),
            _ => None,
        })
        .collect()
}

/// Who is typing where, as seen by this client, with expiry.
#[derive(Debug, Default)]
pub struct TypingView {
    /// (from, place) → expiry; place is `#room` or `pm`.
    active: HashMap<(String, String), std::time::Instant>,
}

impl TypingView {
    /// How long an `active` is shown without a refresh.
    pub const SHOW_FOR: Duration = Duration::from_secs(6);
    /// Typing states remembered at most (a flood of names cannot grow this).
    const MAX_ENTRIES: usize = 64;

    /// Applies a `typing` event.
    pub fn update(
        &mut self,
        from: &str,
        room: Option<&str>,
        state: TypingState,
        now: std::time::Instant,
    ) {
        let from = sanitize(from);
        let place = match room {
            Some(r) => format!("#{}", sanitize(r)),
            None => "pm".to_string(),
        };
        if state == TypingState::Active {
            if self.active.len() >= Self::MAX_ENTRIES {
                self.expire(now);
            }
            if self.active.len() < Self::MAX_ENTRIES {
                self.active.insert((from, place), now + Self::SHOW_FOR);
            }
        } else {
            self.active.remove(&(from, place));
        }
    }

    /// A message from `from` ends their typing there.
    pub fn message_from(&mut self, from: &str, room: Option<&str>) {
        let place = room.map_or_else(|| "pm".to_string(), |r| format!("#{}", sanitize(r)));
        self.active.remove(&(sanitize(from), place));
    }

    /// Drops expired entries; true if anything changed.
    pub fn expire(&mut self, now: std::time::Instant) -> bool {
        let before = self.active.len();
        self.active.retain(|_, at| *at > now);
        before != self.active.len()
    }

    /// When the next entry expires.
    pub fn next_expiry(&self) -> Option<std::time::Instant> {
        self.active.values().min().copied()
    }

    /// Forgets everything (the connection changed).
    pub fn clear(&mut self) {
        self.active.clear();
    }

    /// The status text for the current room (and PMs): `alice is typing…`.
    pub fn status(&self, room: &str) -> String {
        let here = format!("#{room}");
        let mut names: Vec<&str> = self
            .active
            .keys()
            .filter(|(_, place)| *place == here || place == "pm")
            .map(|(from, _)| from.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        match names.as_slice() {
            [] => String::new(),
            [one] => format!("{one} is typing…"),
            [a, b] => format!("{a} and {b} are typing…"),
            [a, b, c] => format!("{a}, {b} and {c} are typing…"),
            _ => "several people are typing…".to_string(),
        }
    }
}
