//! The console client's logic, independent of the terminal: what a typed line means, how received
//! events read as one line each, how text is made safe to display, and when to retry a connection.
//!
//! `src/bin/chatctl.rs` owns the terminal and the socket and calls into this module.

pub mod bench;
pub mod tls;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

/// What one line typed by the user asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Nothing to do (blank line).
    Empty,
    /// Say in the current room.
    Say {
        /// The text.
        text: String,
        /// A `/me` emote.
        action: bool,
    },
    /// `/msg NAME text`.
    Pm {
        /// Recipient.
        to: String,
        /// The text.
        text: String,
    },
    /// `/join ROOM`.
    Join(String),
    /// `/leave [ROOM]`.
    Leave(Option<String>),
    /// `/room ROOM`: switch where lines go.
    Room(String),
    /// `/rooms`.
    Rooms,
    /// `/who [ROOM]`.
    Who(Option<String>),
    /// `/history [N]`.
    History(Option<usize>),
    /// `/kick NAME [reason]` (admins).
    Kick {
        /// Who.
        name: String,
        /// Why.
        reason: Option<String>,
    },
    /// `/announce text` (admins).
    Announce(String),
    /// `/help`.
    Help,
    /// `/exit`, `/quit`.
    Exit,
    /// A command used wrongly, or unknown: the hint to show.
    Hint(String),
}

/// The `/help` text.
pub const HELP: &str = "\
commands:
  /msg NAME text   private message (also /pm)
  /me action       emote in the current room
  /join ROOM       join a room (and make it current)
  /leave [ROOM]    leave a room (default: the current one)
  /room ROOM       switch the room your lines go to
  /rooms           list rooms
  /who [ROOM]      who is in a room
  /history [N]     the last N messages of the current room
  /kick NAME [why] disconnect a user (admins)
  /announce text   a notice to everyone online (admins)
  /help            this help
  /exit            quit (also /quit, Ctrl-D)";

/// Parses one typed line.
pub fn parse_input(line: &str) -> Input {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Input::Empty;
    }
    let Some(command) = line.strip_prefix('/') else {
        return Input::Say {
            text: line.to_string(),
            action: false,
        };
    };
    let (verb, rest) = command
        .split_once(char::is_whitespace)
        .unwrap_or((command, ""));
    let rest = rest.trim();
    let arg = (!rest.is_empty()).then(|| rest.to_string());
    match verb {
        "msg" | "pm" => match rest.split_once(char::is_whitespace) {
            Some((to, text)) if !text.trim().is_empty() => Input::Pm {
                to: to.to_string(),
                text: text.trim().to_string(),
            },
            _ => Input::Hint(format!("usage: /{verb} NAME text")),
        },
        "me" => match arg {
            Some(text) => Input::Say { text, action: true },
            None => Input::Hint("usage: /me action".into()),
        },
        "join" => arg.map_or_else(|| Input::Hint("usage: /join ROOM".into()), Input::Join),
        "room" => arg.map_or_else(|| Input::Hint("usage: /room ROOM".into()), Input::Room),
        "leave" => Input::Leave(arg),
        "rooms" => Input::Rooms,
        "who" => Input::Who(arg),
        "history" => match arg.map(|a| a.parse::<usize>()) {
            None => Input::History(None),
            Some(Ok(n)) if n > 0 => Input::History(Some(n)),
            Some(_) => Input::Hint("usage: /history [N], N a positive number".into()),
        },
        "kick" => match rest.split_once(char::is_whitespace) {
            Some((name, reason)) => Input::Kick {
                name: name.to_string(),
                reason: Some(reason.trim().to_string()),
            },
            None if !rest.is_empty() => Input::Kick {
                name: rest.to_string(),
                reason: None,
            },
            None => Input::Hint("usage: /kick NAME [reason]".into()),
        },
        "announce" => arg.map_or_else(
            || Input::Hint("usage: /announce text".into()),
            Input::Announce,
        ),
        "help" | "?" => Input::Help,
        "exit" | "quit" => Input::Exit,
        _ => Input::Hint(format!("unknown command /{verb}; /help lists the commands")),
    }
}

/// Strips everything that could control a terminal from text received from the network: C0 and C1
/// control characters, ANSI escape sequences (CSI, OSC, and the rest), DEL, and Unicode bidi
/// overrides and isolates. Tabs and newlines become spaces so every event stays on one line.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates up to a final byte in @..~
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC, DCS, SOS, PM, APC: a string ended by BEL or ST (ESC \)
                Some(']' | 'P' | 'X' | '^' | '_') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' || c == '\u{9c}' {
                            break;
                        }
                        if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                // Two-character escapes (ESC c, ESC 7, ...): drop both.
                _ => {}
            },
            '\t' | '\n' | '\r' => out.push(' '),
            c if c.is_control() => {}
            '\u{200e}'
            | '\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{061c}' => {}
            c => out.push(c),
        }
    }
    out
}

/// Escapes the characters JSON leaves raw but a terminal may act on (C1 controls, bidi controls),
/// so `--json` output is as safe as the formatted output. Valid JSON in, valid JSON out.
pub fn escape_json_for_terminal(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        let risky = c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{061c}');
        if risky {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Exponential back-off with full jitter: attempt n waits a random time in `[0, min(cap, base·2ⁿ)]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Back-off from `base` doubling to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(fastrand::f64())
    }

    /// Start over after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Error codes after which retrying the same hello cannot help.
pub fn is_terminal_error(code: &str) -> bool {
    matches!(
        code,
        "name_taken" | "name_invalid" | "unauthorized" | "forbidden" | "room_invalid"
    )
}

/// Close codes after which the client must not reconnect: normal closure and policy violations
/// (kicked, abuse, auth failure).
pub fn is_terminal_close(code: u16) -> bool {
    matches!(code, 1000 | 1008)
}

/// How a received event is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    /// Not shown (acks, typing: handled elsewhere).
    Nothing,
    /// One or more display lines, each with the name to colour (if any).
    Lines(Vec<Line>),
    /// An error for standard error.
    Error(String),
}

/// One display line: an optional coloured sender and the already-sanitised text around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// What kind of line, for styling.
    pub kind: LineKind,
    /// Text before the name.
    pub prefix: String,
    /// The sender, coloured by name when colour is on.
    pub name: Option<String>,
    /// Text after the name.
    pub rest: String,
}

/// Kinds of display lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// A room message.
    Message,
    /// A private message.
    Pm,
    /// Join/leave.
    Presence,
    /// Server notice.
    Notice,
    /// Information about the session (welcome, who, rooms).
    Info,
    /// A message from history.
    History,
}

impl Line {
    fn new(
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

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

fn user_names(users: &Value) -> String {
    let names: Vec<String> = users
        .as_array()
        .map(|a| {
            a.iter()
                .map(|u| {
                    let name = sanitize(s(u, "name"));
                    if u["role"] == "admin" {
                        format!("{name}(admin)")
                    } else {
                        name
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    names.join(", ")
}

fn message_line(m: &Value, time: &str, kind: LineKind) -> Line {
    let room = sanitize(s(m, "room"));
    let text = sanitize(s(m, "text"));
    let tag = if kind == LineKind::History {
        "[history] "
    } else {
        ""
    };
    if m["action"] == true {
        Line::new(
            kind,
            format!("{time} {tag}#{room} * "),
            Some(s(m, "from")),
            format!(" {text}"),
        )
    } else {
        Line::new(
            kind,
            format!("{time} {tag}#{room} <"),
            Some(s(m, "from")),
            format!("> {text}"),
        )
    }
}

/// Turns one server event into display lines. `time` is the local time to show.
pub fn render(v: &Value, time: &str) -> Shown {
    let one = |l: Line| Shown::Lines(vec![l]);
    match s(v, "type") {
        "message" => one(message_line(v, time, LineKind::Message)),
        "pm" => {
            let text = sanitize(s(v, "text"));
            let body = if v["action"] == true {
                format!("* {} {text}", sanitize(s(v, "from")))
            } else {
                text
            };
            one(Line::new(
                LineKind::Pm,
                format!("{time} [pm from "),
                Some(s(v, "from")),
                format!("] {body}"),
            ))
        }
        "joined" => one(Line::new(
            LineKind::Presence,
            format!("{time} #{} --> ", sanitize(s(v, "room"))),
            Some(s(v, "name")),
            " joined",
        )),
        "left" => one(Line::new(
            LineKind::Presence,
            format!("{time} #{} <-- ", sanitize(s(v, "room"))),
            Some(s(v, "name")),
            " left",
        )),
        "kicked" => one(Line::new(
            LineKind::Presence,
            format!("{time} #{} <-- ", sanitize(s(v, "room"))),
            Some(s(v, "name")),
            format!(
                " was kicked by {}: {}",
                sanitize(s(v, "by")),
                sanitize(s(v, "reason"))
            ),
        )),
        "notice" => one(Line::new(
            LineKind::Notice,
            format!("{time} -!- notice from "),
            Some(s(v, "from")),
            format!(": {}", sanitize(s(v, "text"))),
        )),
        "welcome" | "room" => {
            let room = sanitize(s(v, "room"));
            let what = if s(v, "type") == "welcome" {
                format!("welcome, {}! ", sanitize(s(v, "name")))
            } else {
                String::new()
            };
            let mut lines = vec![Line::new(
                LineKind::Info,
                format!(
                    "{time} -!- {what}you are in #{room} with: {}",
                    user_names(&v["users"])
                ),
                None,
                "",
            )];
            lines.extend(history_lines(&v["history"], time));
            Shown::Lines(lines)
        }
        "history" => {
            let lines = history_lines(&v["messages"], time);
            if lines.is_empty() {
                one(Line::new(
                    LineKind::Info,
                    format!("{time} -!- no history"),
                    None,
                    "",
                ))
            } else {
                Shown::Lines(lines)
            }
        }
        "who" => one(Line::new(
            LineKind::Info,
            format!(
                "{time} -!- #{}: {}",
                sanitize(s(v, "room")),
                user_names(&v["users"])
            ),
            None,
            "",
        )),
        "rooms" => {
            let rooms: Vec<String> = v["rooms"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| {
                            format!(
                                "#{} ({})",
                                sanitize(s(r, "name")),
                                r["members"].as_u64().unwrap_or(0)
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            one(Line::new(
                LineKind::Info,
                format!("{time} -!- rooms: {}", rooms.join(", ")),
                None,
                "",
            ))
        }
        "error" => Shown::Error(format!(
            "error: {} ({})",
            sanitize(s(v, "message")),
            sanitize(s(v, "code"))
        )),
        _ => Shown::Nothing,
    }
}

fn history_lines(messages: &Value, time: &str) -> Vec<Line> {
    messages
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| message_line(m, time, LineKind::History))
                .collect()
        })
        .unwrap_or_default()
}

/// The request a typed line sends, with its id; `None` for lines handled locally.
pub fn request_for(input: &Input, room: &str, id: u64) -> Option<Value> {
    let id = id.to_string();
    Some(match input {
        Input::Say { text, action } => {
            let mut v = json!({"type": "say", "room": room, "text": text, "id": id});
            if *action {
                v["action"] = json!(true);
            }
            v
        }
        Input::Pm { to, text } => json!({"type": "pm", "to": to, "text": text, "id": id}),
        Input::Join(r) => json!({"type": "join", "room": r, "id": id}),
        Input::Leave(r) => json!({"type": "leave", "room": r.as_deref().unwrap_or(room), "id": id}),
        Input::Rooms => json!({"type": "rooms", "id": id}),
        Input::Who(r) => json!({"type": "who", "room": r.as_deref().unwrap_or(room), "id": id}),
        Input::History(n) => {
            json!({"type": "history", "room": room, "limit": n.unwrap_or(20), "id": id})
        }
        Input::Kick { name, reason } => {
            json!({"type": "kick", "name": name, "reason": reason, "id": id})
        }
        Input::Announce(text) => json!({"type": "announce", "text": text, "id": id}),
        Input::Empty | Input::Room(_) | Input::Help | Input::Exit | Input::Hint(_) => return None,
    })
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

    /// Applies a `typing` event; `pm` is true for typing aimed at this user.
    pub fn update(&mut self, v: &Value, now: std::time::Instant) {
        let from = sanitize(s(v, "from"));
        let place = match v["room"].as_str() {
            Some(r) => format!("#{}", sanitize(r)),
            None => "pm".to_string(),
        };
        if v["state"] == "active" {
            self.active.insert((from, place), now + Self::SHOW_FOR);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_strips_escapes_controls_and_bidi() {
        assert_eq!(sanitize("a\u{1b}]0;pwned\u{7}b"), "ab");
        assert_eq!(sanitize("a\u{1b}[2Jb"), "ab");
        assert_eq!(sanitize("a\u{1b}[38;5;1mred\u{1b}[0m"), "ared");
        assert_eq!(
            sanitize("x\u{1b}]8;;http://e\u{1b}\\link\u{1b}]8;;\u{1b}\\y"),
            "xlinky"
        );
        assert_eq!(
            sanitize("bell\u{7} nul\u{0} del\u{7f} c1\u{9b}31m"),
            "bell nul del c131m"
        );
        assert_eq!(sanitize("evil\u{202e}txt.exe\u{2066}"), "eviltxt.exe");
        assert_eq!(sanitize("two\nlines\ttab"), "two lines tab");
        assert_eq!(sanitize("héllo wörld ✓"), "héllo wörld ✓");
        assert_eq!(sanitize("trailing\u{1b}"), "trailing");
    }

    #[test]
    fn json_escape_keeps_json_valid() {
        let raw = "{\"text\":\"a\u{9b}b\u{202e}c\"}";
        let escaped = escape_json_for_terminal(raw);
        assert!(!escaped.contains('\u{9b}') && !escaped.contains('\u{202e}'));
        let v: Value = serde_json::from_str(&escaped).unwrap();
        assert_eq!(v["text"], "a\u{9b}b\u{202e}c");
    }

    #[test]
    fn parses_commands() {
        assert_eq!(parse_input("  "), Input::Empty);
        assert_eq!(
            parse_input("hi"),
            Input::Say {
                text: "hi".into(),
                action: false
            }
        );
        assert_eq!(
            parse_input("/me waves"),
            Input::Say {
                text: "waves".into(),
                action: true
            }
        );
        assert_eq!(
            parse_input("/msg bob hi there"),
            Input::Pm {
                to: "bob".into(),
                text: "hi there".into()
            }
        );
        assert_eq!(
            parse_input("/pm bob hi"),
            Input::Pm {
                to: "bob".into(),
                text: "hi".into()
            }
        );
        assert!(matches!(parse_input("/msg bob"), Input::Hint(_)));
        assert_eq!(parse_input("/join #rust"), Input::Join("#rust".into()));
        assert_eq!(parse_input("/leave"), Input::Leave(None));
        assert_eq!(parse_input("/who lobby"), Input::Who(Some("lobby".into())));
        assert_eq!(parse_input("/history 5"), Input::History(Some(5)));
        assert!(matches!(parse_input("/history x"), Input::Hint(_)));
        assert_eq!(parse_input("/quit"), Input::Exit);
        assert_eq!(
            parse_input("/kick bob spamming links"),
            Input::Kick {
                name: "bob".into(),
                reason: Some("spamming links".into())
            }
        );
        assert_eq!(
            parse_input("/kick bob"),
            Input::Kick {
                name: "bob".into(),
                reason: None
            }
        );
        assert_eq!(
            parse_input("/announce maintenance at 5"),
            Input::Announce("maintenance at 5".into())
        );
        assert!(matches!(parse_input("/dance"), Input::Hint(h) if h.contains("/help")));
    }

    #[test]
    fn backoff_grows_to_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(20));
        for n in 0..10 {
            let d = b.next_delay();
            let ceiling = Duration::from_millis(500 * (1 << n)).min(Duration::from_secs(20));
            assert!(d <= ceiling, "attempt {n}: {d:?} > {ceiling:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(500));
    }

    #[test]
    fn renders_events_safely() {
        let m =
            json!({"type":"message","room":"lobby","from":"alice","text":"hi\u{1b}[2J","seq":1});
        let Shown::Lines(lines) = render(&m, "12:00") else {
            panic!()
        };
        assert_eq!(lines[0].plain(), "12:00 #lobby <alice> hi");
        let w = json!({"type":"welcome","name":"bob","room":"lobby","users":[{"name":"alice","role":"admin"}],
            "history":[{"type":"message","room":"lobby","from":"alice","text":"old","action":true}]});
        let Shown::Lines(lines) = render(&w, "12:00") else {
            panic!()
        };
        assert!(lines[0].plain().contains("alice(admin)"));
        assert_eq!(lines[1].plain(), "12:00 [history] #lobby * alice old");
        assert_eq!(render(&json!({"type":"ack"}), "t"), Shown::Nothing);
    }

    #[test]
    fn typing_view_lists_names() {
        let mut t = TypingView::default();
        let now = std::time::Instant::now();
        for who in ["bob", "alice"] {
            t.update(
                &json!({"type":"typing","from":who,"room":"lobby","state":"active"}),
                now,
            );
        }
        t.update(
            &json!({"type":"typing","from":"carol","room":"dev","state":"active"}),
            now,
        );
        assert_eq!(t.status("lobby"), "alice and bob are typing…");
        t.message_from("bob", Some("lobby"));
        assert_eq!(t.status("lobby"), "alice is typing…");
        assert!(t.expire(now + TypingView::SHOW_FOR));
        assert_eq!(t.status("lobby"), "");
    }
}
