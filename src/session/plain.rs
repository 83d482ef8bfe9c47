//! The plain-text dialect: any WebSocket client that sends lines is a chat client. The first
//! accepted line is a name; later lines are said in the hello room, with a few `/` commands.

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{Kind, Mode, Session};
use crate::connection::Flow;
use crate::hub::Refusal;
use crate::protocol::{CloseReason, ErrorCode, Role};

const TOKEN_REQUIRED: &str = "this server requires a signed token: connect with a client that \
sends a JSON hello with a token (chatctl connect NAME --token TOKEN)";

const ACCOUNT_REQUIRED: &str = "this server has accounts: connect with a client that signs \
in with a password (chatctl connect NAME --password-file FILE, or the chat page)";

impl Session {
    /// A line from a plain-text client: its name until welcomed, then chat and `/` commands.
    pub(super) fn handle_line(&mut self, text: &str, out: &mut Vec<Utf8Bytes>) -> Flow {
        if !self.requests.try_take(self.chat.rates.requests) {
            return self.rate_limited("request", None, out);
        }
        let line = text.trim();
        if !self.welcomed {
            if self.chat.config.auth.mode == crate::config::AuthMode::Accounts {
                out.push(ACCOUNT_REQUIRED.into());
                return Flow::Close(CloseReason::TokenRequired);
            }
            if self.chat.auth.is_some() {
                out.push(TOKEN_REQUIRED.into());
                return Flow::Close(CloseReason::TokenRequired);
            }
            if self.me.is_some() {
                // A name is being checked; lines until then are not chat.
                let r = Refusal::new(ErrorCode::HelloRequired, "wait for the welcome");
                self.refuse(r, None, out);
            } else {
                let joining = super::requests::Joining {
                    room: None,
                    resume: None,
                };
                self.hello(line, joining, Mode::Plain, Role::User, None, out);
            }
            return self.flow();
        }
        if line.is_empty() {
            return Flow::Continue;
        }
        let Some(command) = line.strip_prefix('/') else {
            self.say_plain(line, false, out);
            return self.flow();
        };
        let (verb, rest) = command
            .split_once(char::is_whitespace)
            .unwrap_or((command, ""));
        let rest = rest.trim();
        match verb {
            "exit" | "quit" => return Flow::Close(CloseReason::Bye),
            "who" => {
                let room = self.home.clone();
                self.call(Kind::Who { after: None }, None, out, |b, t, me| {
                    b.who(t, me, &room)
                });
            }
            "msg" | "pm" => match rest.split_once(char::is_whitespace) {
                Some((to, body)) if !body.trim().is_empty() => {
                    let body = body.trim();
                    let said = self.hooked(None, body, false);
                    self.call(Kind::Pm(said), None, out, |b, t, me| {
                        b.pm(t, me, to, body, false)
                    });
                }
                _ => self.refuse(
                    Refusal::new(ErrorCode::BadRequest, "usage: /msg NAME text"),
                    None,
                    out,
                ),
            },
            "me" if !rest.is_empty() => self.say_plain(rest, true, out),
            "nick" if !rest.is_empty() => {
                if let Err(r) = self.nick(rest, &mut None, out) {
                    self.refuse(r, None, out);
                }
            }
            _ => self.refuse(
                Refusal::new(
                    ErrorCode::UnknownType,
                    format!(
                        "unknown command /{verb}; try /msg NAME text, /me action, /nick NAME, /who or /exit"
                    ),
                ),
                None,
                out,
            ),
        }
        self.flow()
    }

    fn say_plain(&mut self, text: &str, action: bool, out: &mut Vec<Utf8Bytes>) {
        let room = self.home.clone();
        if !self.rooms.contains(&room) {
            let r = Refusal::new(ErrorCode::NotInRoom, "you are not in a room");
            return self.refuse(r, None, out);
        }
        if let Err(r) = super::requests::check_text(text, self.chat.config.limits.max_message_bytes)
        {
            return self.refuse(r, None, out);
        }
        self.log_body(&room, text);
        let said = self.hooked(Some(&room), text, action);
        self.call(Kind::Say(room.clone(), said), None, out, |b, t, me| {
            b.say(t, me, &room, text, action, None)
        });
    }
}
