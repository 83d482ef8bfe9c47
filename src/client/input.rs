//! What a typed line means: a message, or a `/` command, and the request it becomes.

use crate::protocol::{ClientMsg, Target, TypingState};

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
    /// `/nick NAME`.
    Nick(String),
    /// `/search words`.
    Search(String),
    /// `/sessions`: one's connections.
    Sessions,
    /// `/logout ID`: close one of them.
    Logout(String),
    /// A moderation command (`/topic`, `/ban` …) for the room on screen.
    Moderate(super::moderate::Moderate),
    /// `/edit`, `/delete`, `/reply`, `/react` in the room on screen.
    Change(super::changes::ChangeCmd),
    /// `/help`.
    Help,
    /// `/exit`, `/quit`.
    Exit,
    /// A command used wrongly, or unknown: the hint to show.
    Hint(String),
}

/// The commands, for `/help` and completion: (command, arguments, what it does).
pub const COMMANDS: &[(&str, &str, &str)] = &[
    ("/msg", "NAME text", "private message (also /pm)"),
    ("/me", "action", "emote in the current room"),
    ("/join", "ROOM", "join a room (and make it current)"),
    (
        "/leave",
        "[ROOM]",
        "leave a room (default: the current one)",
    ),
    ("/room", "ROOM", "switch the room your lines go to"),
    ("/rooms", "", "list rooms"),
    ("/who", "[ROOM]", "who is in a room"),
    ("/history", "[N]", "the last N messages of the current room"),
    ("/nick", "NAME", "change your name"),
    ("/search", "words", "find messages in your rooms"),
    ("/sessions", "", "your connections (tokens, accounts)"),
    ("/logout", "ID", "close one of your connections"),
    ("/kick", "NAME [why]", "disconnect a user (admins)"),
    ("/announce", "text", "a notice to everyone online (admins)"),
    ("/help", "", "this help"),
    ("/exit", "", "quit (also /quit, Ctrl-D)"),
];

/// The `/help` text, one line per command.
pub fn help() -> Vec<String> {
    let mut lines = vec!["commands:".to_string()];
    let all = COMMANDS.iter().chain(super::changes::COMMANDS);
    for (cmd, args, what) in all.chain(super::moderate::COMMANDS) {
        let usage = format!("{cmd} {args}");
        lines.push(format!("  {usage:<17}{what}"));
    }
    lines
}

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
        "nick" => match arg {
            Some(name) if !name.contains(char::is_whitespace) => Input::Nick(name),
            _ => Input::Hint("usage: /nick NAME".into()),
        },
        "search" => arg.map_or_else(|| Input::Hint("usage: /search words".into()), Input::Search),
        "sessions" => Input::Sessions,
        "logout" => match arg {
            Some(id) if !id.contains(char::is_whitespace) => Input::Logout(id),
            _ => Input::Hint("usage: /logout ID (see /sessions)".into()),
        },
        verb if super::changes::parse(verb, rest).is_some() => {
            match super::changes::parse(verb, rest) {
                Some(Ok(c)) => Input::Change(c),
                Some(Err(hint)) => Input::Hint(hint),
                None => Input::Empty,
            }
        }
        verb if super::moderate::parse(verb, rest).is_some() => {
            match super::moderate::parse(verb, rest) {
                Some(Ok(m)) => Input::Moderate(m),
                Some(Err(hint)) => Input::Hint(hint),
                None => Input::Empty,
            }
        }
        "help" | "?" => Input::Help,
        "exit" | "quit" => Input::Exit,
        _ => Input::Hint(format!("unknown command /{verb}; /help lists the commands")),
    }
}

/// A room name as the server will see it: without `#`, lower case.
pub fn room_key(room: &str) -> String {
    room.trim_start_matches('#').to_ascii_lowercase()
}

/// The request a typed line sends; `None` for lines handled locally.
pub fn request_for(input: &Input, room: &str) -> Option<ClientMsg> {
    Some(match input {
        Input::Say { text, action } => ClientMsg::Say {
            room: Some(room.to_string()),
            text: text.clone(),
            action: *action,
            reply_to: None,
        },
        Input::Pm { to, text } => ClientMsg::Pm {
            to: to.clone(),
            text: text.clone(),
            action: false,
        },
        Input::Join(r) => ClientMsg::Join {
            room: r.clone(),
            since: None,
            epoch: None,
        },
        Input::Leave(r) => ClientMsg::Leave {
            room: r.clone().unwrap_or_else(|| room.to_string()),
        },
        Input::Rooms => ClientMsg::Rooms,
        Input::Who(r) => ClientMsg::Who {
            room: Some(r.clone().unwrap_or_else(|| room.to_string())),
            after: None,
        },
        Input::History(n) => ClientMsg::History {
            room: Some(room.to_string()),
            before: None,
            after: None,
            limit: Some(n.unwrap_or(20)),
            with: None,
        },
        Input::Kick { name, reason } => ClientMsg::Kick {
            name: name.clone(),
            reason: reason.clone(),
        },
        Input::Announce(text) => ClientMsg::Announce { text: text.clone() },
        Input::Nick(name) => ClientMsg::Nick { name: name.clone() },
        Input::Search(query) => ClientMsg::Search {
            query: query.clone(),
            room: None,
            limit: Some(20),
            before: None,
        },
        Input::Sessions => ClientMsg::Sessions,
        Input::Moderate(m) => super::moderate::request(m, room),
        Input::Change(c) => super::changes::request(c, room, None).ok()?,
        Input::Logout(id) => ClientMsg::Logout {
            session: id.clone(),
        },
        Input::Empty | Input::Room(_) | Input::Help | Input::Exit | Input::Hint(_) => return None,
    })
}

/// A typing announcement for the current room.
pub fn typing(room: &str, state: TypingState) -> ClientMsg {
    ClientMsg::Typing {
        target: Target::Room(room.to_string()),
        state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(parse_input("/nick henry2"), Input::Nick("henry2".into()));
        assert!(matches!(parse_input("/nick"), Input::Hint(_)));
        assert_eq!(parse_input("/sessions"), Input::Sessions);
        assert_eq!(parse_input("/logout 17"), Input::Logout("17".into()));
        assert!(matches!(parse_input("/logout"), Input::Hint(_)));
    }

    #[test]
    fn requests_are_the_protocol_types() {
        let say = request_for(&parse_input("/me waves"), "rust").unwrap();
        assert_eq!(
            say,
            ClientMsg::Say {
                room: Some("rust".into()),
                text: "waves".into(),
                action: true,
                reply_to: None,
            }
        );
        assert_eq!(
            request_for(&parse_input("/leave"), "rust"),
            Some(ClientMsg::Leave {
                room: "rust".into()
            })
        );
        assert_eq!(request_for(&parse_input("/help"), "rust"), None);
    }
}
