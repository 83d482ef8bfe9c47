//! `/edit`, `/delete`, `/reply` and `/react`: changes to messages typed in chatctl, and the
//! requests they become (an edit or a delete without an id means one's last message).

use crate::protocol::{ClientMsg, Where};

/// A change typed by the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeCmd {
    /// `/edit [ID] text`.
    Edit {
        /// The message (default: one's last).
        msg: Option<u64>,
        /// Its new text.
        text: String,
    },
    /// `/delete [ID]`.
    Delete(Option<u64>),
    /// `/reply ID text`.
    Reply {
        /// The message answered.
        msg: u64,
        /// The answer.
        text: String,
    },
    /// `/react ID EMOJI` (or `/unreact`).
    React {
        /// The message.
        msg: u64,
        /// The emoji.
        emoji: String,
        /// Add (`/react`) or take back (`/unreact`).
        on: bool,
    },
}

/// The commands, for `/help`.
pub const COMMANDS: &[(&str, &str, &str)] = &[
    (
        "/edit",
        "[ID] text",
        "change your message (default: your last)",
    ),
    (
        "/delete",
        "[ID]",
        "delete your message (default: your last)",
    ),
    ("/reply", "ID text", "answer a message"),
    (
        "/react",
        "ID EMOJI",
        "react to a message (/unreact takes it back)",
    ),
];

/// What `/verb rest` asks for, if it is one of these commands (`Err`: how to use it).
pub fn parse(verb: &str, rest: &str) -> Option<Result<ChangeCmd, String>> {
    let rest = rest.trim();
    let (first, tail) = match rest.split_once(char::is_whitespace) {
        Some((a, b)) => (a, b.trim()),
        None => (rest, ""),
    };
    let id = first.trim_start_matches('#').parse::<u64>().ok();
    Some(match verb {
        "edit" => match (id, tail) {
            (Some(msg), t) if !t.is_empty() => Ok(ChangeCmd::Edit {
                msg: Some(msg),
                text: t.to_string(),
            }),
            _ if !rest.is_empty() => Ok(ChangeCmd::Edit {
                msg: None,
                text: rest.to_string(),
            }),
            _ => Err("usage: /edit [ID] text".into()),
        },
        "delete" => match (rest.is_empty(), id) {
            (true, _) => Ok(ChangeCmd::Delete(None)),
            (false, Some(msg)) if tail.is_empty() => Ok(ChangeCmd::Delete(Some(msg))),
            _ => Err("usage: /delete [ID]".into()),
        },
        "reply" => match id {
            Some(msg) if !tail.is_empty() => Ok(ChangeCmd::Reply {
                msg,
                text: tail.to_string(),
            }),
            _ => Err("usage: /reply ID text".into()),
        },
        "react" | "unreact" => match id {
            Some(msg) if !tail.is_empty() && !tail.contains(char::is_whitespace) => {
                Ok(ChangeCmd::React {
                    msg,
                    emoji: tail.to_string(),
                    on: verb == "react",
                })
            }
            _ => Err(format!("usage: /{verb} ID EMOJI")),
        },
        _ => return None,
    })
}

/// What to say once the server acknowledged `cmd` (a reply shows as one's own line instead).
pub fn done(cmd: &ChangeCmd) -> String {
    match cmd {
        ChangeCmd::Edit { msg: Some(id), .. } => format!("message {id} edited"),
        ChangeCmd::Edit { msg: None, .. } => "your last message was edited".into(),
        ChangeCmd::Delete(Some(id)) => format!("message {id} deleted"),
        ChangeCmd::Delete(None) => "your last message was deleted".into(),
        ChangeCmd::Reply { .. } => String::new(),
        ChangeCmd::React {
            msg,
            emoji,
            on: true,
        } => format!("you reacted {emoji} to message {msg}"),
        ChangeCmd::React {
            msg,
            emoji,
            on: false,
        } => {
            format!("you took back {emoji} from message {msg}")
        }
    }
}

/// The request `cmd` becomes in `room`; `last` is one's last message there, if any.
pub fn request(cmd: &ChangeCmd, room: &str, last: Option<u64>) -> Result<ClientMsg, String> {
    let room = room.to_string();
    let mine = |msg: Option<u64>| {
        msg.or(last)
            .ok_or_else(|| "you have said nothing here yet: give the message's id".to_string())
    };
    Ok(match cmd {
        ChangeCmd::Edit { msg, text } => ClientMsg::Edit {
            at: Where::Room(room),
            msg: mine(*msg)?,
            text: text.clone(),
        },
        ChangeCmd::Delete(msg) => ClientMsg::Delete {
            at: Where::Room(room),
            msg: mine(*msg)?,
        },
        ChangeCmd::Reply { msg, text } => ClientMsg::Say {
            room: Some(room),
            text: text.clone(),
            action: false,
            reply_to: Some(*msg),
        },
        ChangeCmd::React { msg, emoji, on } => ClientMsg::React {
            room,
            msg: *msg,
            emoji: emoji.clone(),
            on: *on,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_with_and_without_ids() {
        let p = |verb, rest| parse(verb, rest).unwrap();
        assert_eq!(
            p("edit", "41 fixed it"),
            Ok(ChangeCmd::Edit {
                msg: Some(41),
                text: "fixed it".into()
            })
        );
        assert_eq!(
            p("edit", "fixed it"),
            Ok(ChangeCmd::Edit {
                msg: None,
                text: "fixed it".into()
            })
        );
        assert_eq!(p("delete", ""), Ok(ChangeCmd::Delete(None)));
        assert_eq!(p("delete", "#7"), Ok(ChangeCmd::Delete(Some(7))));
        assert!(p("delete", "seven").is_err());
        assert!(p("reply", "7").is_err());
        assert_eq!(
            p("unreact", "7 👍"),
            Ok(ChangeCmd::React {
                msg: 7,
                emoji: "👍".into(),
                on: false
            })
        );
        assert!(parse("say", "x").is_none());
        let e = request(&ChangeCmd::Delete(None), "lobby", None).unwrap_err();
        assert!(e.contains("give the message's id"), "{e}");
        assert_eq!(
            request(&ChangeCmd::Delete(None), "lobby", Some(9)),
            Ok(ClientMsg::Delete {
                at: Where::Room("lobby".into()),
                msg: 9
            })
        );
    }
}
