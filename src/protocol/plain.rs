//! One-line renderings for plain-text sessions (the original project's format). Every field a
//! user chose passes through [`plain::one_line`], so nobody can start a line of their own on
//! someone else's terminal (a fake `[server]` notice) or reach it with escape sequences.

use std::borrow::Cow;

use super::{ServerMsg, Utf8Bytes};

/// `text` as part of one line: line breaks and other control characters become their visible
/// pictures (`␊`, `␛`, …), C1 controls `�`, and bidi overrides and isolates are dropped.
pub fn one_line(text: &str) -> Cow<'_, str> {
    let risky = |c: char| c.is_control() || is_bidi(c) || matches!(c, '\u{2028}' | '\u{2029}');
    if !text.chars().any(risky) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\0'..='\u{1f}' => out.push(char::from_u32(0x2400 + c as u32).unwrap_or('\u{fffd}')),
            '\u{7f}' => out.push('\u{2421}'),
            '\u{2028}' | '\u{2029}' => out.push('\u{2424}'),
            c if c.is_control() => out.push('\u{fffd}'),
            c if is_bidi(c) => {}
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn is_bidi(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{061c}')
}

/// The line a plain-text session sees for an event, if it sees one at all (typing: no).
pub fn event(msg: &ServerMsg<'_>) -> Option<Utf8Bytes> {
    let l = |s: &str| one_line(s).into_owned();
    Some(match msg {
        ServerMsg::Message(m) => message(&m.from, &l(&m.text), m.action),
        ServerMsg::Pm {
            from, text, action, ..
        } => pm(from, &l(text), *action),
        ServerMsg::Joined { name, .. } => format!("* {name} joined the chat").into(),
        ServerMsg::Left { name, .. } => format!("* {name} has left the chat").into(),
        ServerMsg::Presence {
            joined,
            left,
            unlisted,
            ..
        } => presence(joined.iter().map(|u| &*u.name), left, *unlisted),
        ServerMsg::Kicked {
            name, by, reason, ..
        } => format!("* {name} was kicked by {by} ({})", l(reason)).into(),
        ServerMsg::Notice { from, text } => notice(from, text),
        ServerMsg::Renamed { from, to } => format!("* {from} is now known as {to}").into(),
        ServerMsg::Edited { by, msg, text, .. } => {
            format!("* {by} edited message {msg}: {}", l(text)).into()
        }
        ServerMsg::Deleted { msg, .. } => format!("* message {msg} was deleted").into(),
        ServerMsg::Resync { room, .. } => {
            format!("* some messages in #{room} may have been lost").into()
        }
        _ => return None,
    })
}

/// `henry: hi`, or `* henry waves` for an action.
fn message(from: &str, text: &str, action: bool) -> Utf8Bytes {
    if action {
        format!("* {from} {text}").into()
    } else {
        format!("{from}: {text}").into()
    }
}
/// `[pm from alice] hi`.
fn pm(from: &str, text: &str, action: bool) -> Utf8Bytes {
    if action {
        format!("[pm from {from}] * {from} {text}").into()
    } else {
        format!("[pm from {from}] {text}").into()
    }
}
/// `[server] text`.
pub fn notice(from: &str, text: &str) -> Utf8Bytes {
    format!("[{from}] {}", one_line(text)).into()
}
/// `* alice, bob joined the chat; carol has left the chat (and 3 more came and went)`.
fn presence<'n>(
    joined: impl Iterator<Item = &'n str>,
    left: &[Cow<'_, str>],
    unlisted: usize,
) -> Utf8Bytes {
    let joined: Vec<&str> = joined.collect();
    let mut parts = Vec::new();
    if !joined.is_empty() {
        parts.push(format!("{} joined the chat", joined.join(", ")));
    }
    if !left.is_empty() {
        let left: Vec<&str> = left.iter().map(|n| &**n).collect();
        parts.push(format!("{} has left the chat", left.join(", ")));
    }
    let more = match (parts.is_empty(), unlisted) {
        (_, 0) => String::new(),
        (true, n) => format!("{n} came and went"),
        (false, n) => format!(" (and {n} more came and went)"),
    };
    format!("* {}{more}", parts.join("; ")).into()
}
/// `Online: alice, bob`.
pub fn online(names: &[&str]) -> String {
    format!("Online: {}", names.join(", "))
}
/// `error: ...`.
pub fn error(message: &str) -> Utf8Bytes {
    format!("error: {}", one_line(message)).into()
}
