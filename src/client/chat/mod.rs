//! `chatctl connect` and `chatctl send`: one connection loop (connect, hello, converse, reconnect
//! with back-off), independent of how it is shown.
//!
//! What the user sends waits in an outbox and leaves paced under the rate the server advertised
//! ([`Pacer`]), so nothing is refused for flooding; rejoins after a reconnect go first. A line the
//! user sent shows once the server acknowledges it, with the ack's time; until then it is pending,
//! and a refused one shows with its error. If the name is taken at hello, `NAME2`, `NAME3` … are
//! tried (unless `--no-alt-nick`).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::complete::Known;
use super::input::{self, Input, parse_input, request_for, room_key};
use super::pace::Pacer;
use super::render::{Clock, Line, LineKind, TypingView, sanitize};
use super::{
    Backoff, EXIT_CONNECT, EXIT_OK, EXIT_REFUSED, Endpoint, HelloError, Ws, hello, hello_failure,
    is_terminal_close, open,
};
mod events;
mod own;
mod send;
#[cfg(test)]
mod tests;

use events::welcome_json;
pub use send::send;

use crate::protocol::{
    ChatMessage, ClientMsg, ErrorCode, Request, ServerInfo, ServerMsg, TypingState, decode,
};

/// Lines that may wait to be sent; past this, scripted input waits and typed lines are refused.
const OUTBOX_LINES: usize = 1000;
/// Bytes that may wait to be sent.
const OUTBOX_BYTES: usize = 1 << 20;
/// Alternative names tried when the name is taken.
const ALT_NICK_TRIES: usize = 5;
/// How often chatctl asks for its name back while going by another.
const RECLAIM_EVERY: Duration = Duration::from_secs(5);
/// How often a `read` is sent for the room on screen while messages arrive.
const READ_EVERY: Duration = Duration::from_secs(2);
/// Members remembered per room, for completion.
const MEMBERS_PER_ROOM: usize = 2000;

/// What `chatctl connect` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The name to use.
    pub name: String,
    /// The room to start in.
    pub room: String,
    /// Try `NAME2`, `NAME3` … when the name is taken.
    pub alt_nick: bool,
    /// Ring the terminal bell on a mention or a PM.
    pub bell: bool,
}

/// What the user did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UiEvent {
    /// A line typed (or one line of a paste).
    Line(String),
    /// A typing state to announce.
    Typing(TypingState),
    /// The user is done (stdin closed, Ctrl-D).
    Eof,
}

/// What a frontend shows besides the transcript: the prompt, the status row, pending lines.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Status {
    /// The room lines go to (`None`: in no room).
    pub room: Option<String>,
    /// Who is typing.
    pub typing: String,
    /// Rooms with unread messages: (room, count, mentioned).
    pub activity: Vec<(String, usize, bool)>,
    /// Lines waiting to be sent (paced).
    pub queued: usize,
    /// Own lines sent or waiting, not yet acknowledged (oldest first, at most a few).
    pub pending: Vec<Line>,
    /// What Tab can complete.
    pub known: Known,
    /// Connected now.
    pub connected: bool,
}

/// The terminal side of a chat: where input comes from and how output is shown.
pub trait Frontend {
    /// The next thing the user did. Must be cancel-safe (it races the socket in `select!`).
    fn next_input(&mut self) -> impl std::future::Future<Output = UiEvent>;
    /// Shows a line of the conversation (stdout in scripted mode).
    fn show(&mut self, line: Line);
    /// Shows a local note: connection state, hints, errors (stderr in scripted mode).
    fn note(&mut self, line: Line);
    /// Shows a received frame as it came (`--json`). True if the frontend shows raw frames, in
    /// which case formatted lines are not shown.
    fn raw(&mut self, _json: &str) -> bool {
        false
    }
    /// The status changed.
    fn update(&mut self, _status: &Status) {}
    /// Forgets local typing state (after a line is sent or the connection changes).
    fn typing_reset(&mut self) {}
    /// Rings the bell.
    fn bell(&mut self) {}
    /// Whether input may simply wait while the outbox is full (piped stdin may; a terminal's
    /// keys must keep being read).
    fn may_wait(&self) -> bool {
        false
    }
}

/// How a connection ended.
enum Ended {
    /// The user is done (stdin closed, /exit, Ctrl-D).
    User,
    /// The server closed with this code and reason.
    Closed(u16, String),
    /// The connection broke.
    Lost(String),
}

/// A request sent or waiting, and what its answer means.
#[derive(Debug, Clone)]
enum Pending {
    Say {
        room: String,
        text: String,
        action: bool,
    },
    Pm {
        to: String,
        text: String,
    },
    /// `/join`: the room was added (undone on error), the room current before.
    Join {
        room: String,
        added: bool,
        previous: Option<String>,
    },
    /// A join chatctl sends itself after a reconnect.
    Rejoin,
    /// A `read` chatctl sends itself for the room on screen (accounts mode).
    Read,
    /// A `nick` back to the name asked for, once it is free again (open mode).
    Reclaim,
    /// A page of messages missed in `room` while away (`history` with `after`).
    CatchUp {
        room: String,
    },
    Leave {
        room: String,
    },
    Nick,
    /// A moderation command: what to say once it is done.
    Moderate(String),
    Other,
}

struct Outgoing {
    msg: ClientMsg,
    pending: Pending,
    bytes: usize,
}

struct Chat {
    opts: Options,
    /// The id of our last message (what `/edit` and `/delete` change by default).
    last_own: Option<u64>,
    /// The name the server knows us by now.
    nick: String,
    /// Rooms we are in, the first being the hello room.
    rooms: Vec<String>,
    /// Where lines go.
    current: Option<String>,
    members: HashMap<String, Vec<String>>,
    known_rooms: Vec<String>,
    unread: Vec<(String, usize, bool)>,
    /// The server keeps read markers (its welcome listed the account's rooms).
    keeps_read: bool,
    /// The last `read` sent per room: the seq, and when.
    read_sent: HashMap<String, (u64, Instant)>,
    /// The newest PM ids shown (a PM handed over again after a reconnect is shown once).
    pms_shown: std::collections::BTreeSet<u64>,
    /// Going by another name than the one asked for (it was taken): when to ask for it again.
    reclaim_at: Option<Instant>,
    /// Sent, not yet answered, by request id.
    pending: HashMap<String, Pending>,
    /// Waiting to be sent, in order.
    outbox: VecDeque<Outgoing>,
    outbox_bytes: usize,
    pacer: Pacer,
    typing_pacer: Pacer,
    next_id: u64,
    errors: usize,
    eof: bool,
    typing: TypingView,
    last_day: NaiveDate,
    connected: bool,
    /// Per room: the epoch and the last seq shown (what a reconnect resumes from).
    seen: HashMap<String, (String, u64)>,
    /// Rooms catching up after a reconnect, with the live messages held back meanwhile.
    catching_up: HashMap<String, Vec<ChatMessage<'static>>>,
}

/// Live messages held back per room while its missed ones are fetched.
const HELD_BACK: usize = 2000;

/// `chatctl connect`: chats until the user is done; returns the exit code.
pub async fn connect<F: Frontend>(ep: &Endpoint, opts: Options, ui: &mut F) -> u8 {
    // Registering happens once: reconnects sign in to the account it made.
    let mut ep = ep.clone();
    let room = room_key(&opts.room);
    let mut chat = Chat {
        nick: opts.name.clone(),
        rooms: vec![room.clone()],
        current: Some(room),
        members: HashMap::new(),
        known_rooms: Vec::new(),
        unread: Vec::new(),
        keeps_read: false,
        read_sent: HashMap::new(),
        pms_shown: Default::default(),
        reclaim_at: None,
        pending: HashMap::new(),
        outbox: VecDeque::new(),
        outbox_bytes: 0,
        pacer: Pacer::unlimited(),
        typing_pacer: Pacer::unlimited(),
        next_id: 1,
        errors: 0,
        last_own: None,
        eof: false,
        typing: TypingView::default(),
        last_day: Clock::now().today(),
        connected: false,
        seen: HashMap::new(),
        catching_up: HashMap::new(),
        opts,
    };
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(20));
    let mut held = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
    let mut connected_once = false;
    loop {
        let ep = &mut ep;
        let mut ws = match open(ep).await {
            Ok(ws) => ws,
            Err(e) if !connected_once => {
                ui.note(Line::info(LineKind::Error, format!("error: {e}")));
                return EXIT_CONNECT;
            }
            Err(e) => {
                if !chat.wait_to_retry(ui, &mut backoff, &e).await {
                    return chat.exit_code();
                }
                continue;
            }
        };
        let welcome = match chat.hello(&mut ws, ep, ui).await {
            Ok(w) => w,
            Err(HelloError::Failed(e)) if connected_once => {
                if !chat.wait_to_retry(ui, &mut backoff, &e).await {
                    return chat.exit_code();
                }
                continue;
            }
            // Our own name, still held by the connection that dropped: the server lets it go
            // once it notices (a missed ping), so wait for that rather than take another name.
            Err(HelloError::Refused {
                code: ErrorCode::NameTaken,
                ..
            }) if connected_once && ep.owns_name() => {
                let why = format!(
                    "{} is still held by the connection that dropped; the server frees it when it notices",
                    chat.nick
                );
                // The server lets go within two ping intervals: retry steadily, not ever later.
                if !chat.wait_to_retry(ui, &mut held, &why).await {
                    return chat.exit_code();
                }
                continue;
            }
            Err(e) => {
                let (line, code) = hello_failure(ep, &chat.nick, &e);
                ui.note(Line::info(LineKind::Error, line));
                return code;
            }
        };
        if connected_once {
            let now = Clock::now().stamp(None);
            ui.note(Line::info(
                LineKind::Info,
                format!("{now} -!- reconnected to {} as {}", ep.url, chat.nick),
            ));
        }
        connected_once = true;
        ep.register = None;
        backoff.reset();
        held.reset();
        chat.welcomed(&welcome, ui);
        let end = chat.converse(&mut ws, ui).await;
        chat.connected = false;
        ui.update(&chat.status());
        match end {
            Ended::User => {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                return chat.exit_code();
            }
            Ended::Closed(code, reason) if is_terminal_close(code) => {
                let reason = sanitize(&reason);
                ui.note(Line::info(
                    LineKind::Error,
                    format!("error: the server closed the connection ({code}): {reason}"),
                ));
                return if code == 1000 {
                    chat.exit_code()
                } else {
                    EXIT_REFUSED
                };
            }
            Ended::Closed(code, reason) => {
                let why = format!(
                    "server closed the connection ({code}: {})",
                    sanitize(&reason)
                );
                chat.lost_pending(ui);
                if !chat.wait_to_retry(ui, &mut backoff, &why).await {
                    return chat.exit_code();
                }
            }
            Ended::Lost(why) => {
                chat.lost_pending(ui);
                if !chat.wait_to_retry(ui, &mut backoff, &why).await {
                    return chat.exit_code();
                }
            }
        }
    }
}

/// The next name to try when `name` is taken: `name2`, then `name3` and on (a number is never a
/// look-alike of the name without it, where `name_` is, and the server refuses look-alikes of
/// names online), the name cut short to keep within the length names may have.
fn alt_nick(name: &str) -> String {
    let stem = name.trim_end_matches(|c: char| c.is_ascii_digit());
    let next = match name[stem.len()..].parse::<u32>() {
        Ok(n) if !stem.is_empty() => n + 1,
        _ => 2,
    };
    let base = if stem.is_empty() { name } else { stem };
    let suffix = next.to_string();
    let keep = base
        .len()
        .min(crate::protocol::MAX_NAME_BYTES - suffix.len());
    format!("{}{suffix}", &base[..keep])
}

impl Chat {
    fn note(&self, ui: &mut impl Frontend, kind: LineKind, text: impl AsRef<str>) {
        let now = Clock::now().stamp(None);
        ui.note(Line::info(kind, format!("{now} -!- {}", text.as_ref())));
    }

    fn take_id(&mut self) -> String {
        let id = self.next_id.to_string();
        self.next_id += 1;
        id
    }

    fn exit_code(&self) -> u8 {
        if self.errors > 0 {
            EXIT_REFUSED
        } else {
            EXIT_OK
        }
    }

    /// Hello, trying alternative names while the name is taken.
    async fn hello(
        &mut self,
        ws: &mut Ws,
        ep: &Endpoint,
        ui: &mut impl Frontend,
    ) -> Result<ServerMsg<'static>, HelloError> {
        let home = self.rooms[0].clone();
        let resume = self.seen.get(&home).cloned();
        let mut tries = 0;
        loop {
            let resume = resume.as_ref().map(|(epoch, seq)| (*seq, epoch.as_str()));
            match hello(ws, ep, &self.nick, &home, resume).await {
                Err(HelloError::Refused {
                    code: ErrorCode::NameTaken,
                    ..
                }) if self.opts.alt_nick && !ep.owns_name() && tries < ALT_NICK_TRIES => {
                    tries += 1;
                    let next = alt_nick(&self.nick);
                    self.note(
                        ui,
                        LineKind::Info,
                        format!("the name {} is taken; trying {next}", self.nick),
                    );
                    self.nick = next;
                }
                other => return other,
            }
        }
    }

    /// Welcomed: paces under the advertised rates, shows the welcome, rejoins the other rooms.
    fn welcomed(&mut self, welcome: &ServerMsg<'_>, ui: &mut impl Frontend) {
        self.connected = true;
        self.typing.clear();
        ui.typing_reset();
        if let ServerMsg::Welcome {
            server,
            room,
            rooms,
            ..
        } = welcome
        {
            let ServerInfo {
                rate_per_sec,
                rate_burst,
                typing_rate_per_sec,
                typing_burst,
                ..
            } = server;
            self.pacer = Pacer::under(*rate_per_sec, *rate_burst);
            self.typing_pacer = Pacer::under(*typing_rate_per_sec, *typing_burst);
            if self.current.as_deref() == Some(&self.rooms[0]) {
                self.current = Some(room.to_string());
            }
            self.rooms[0] = room.to_string();
            // The account's rooms, kept by the server with what is unread in each: joined on this
            // device too, their counts in the status row.
            self.keeps_read = !rooms.is_empty();
            for member in rooms {
                let key = room_key(&member.room);
                if member.unread > 0
                    && self.current.as_deref() != Some(&key)
                    && !self.unread.iter().any(|(r, _, _)| *r == key)
                {
                    let count = member.unread.min(999) as usize;
                    self.unread.push((key.clone(), count, member.mentions > 0));
                }
                if !self.rooms.contains(&key) {
                    self.rooms.push(key);
                }
            }
        }
        self.on_event(welcome, &welcome_json(welcome), ui);
        // Under another name because ours was taken (our own dropped connection, say): ask for
        // it back now and then, once the server has let it go.
        self.reclaim_at = (self.nick != self.opts.name).then(|| Instant::now() + RECLAIM_EVERY);
        // Rejoin the other rooms first, before anything the user queued, from where we were.
        for room in self.rooms.iter().skip(1).rev() {
            let seen = self.seen.get(room);
            let msg = ClientMsg::Join {
                room: room.clone(),
                since: seen.map(|(_, seq)| *seq),
                epoch: seen.map(|(epoch, _)| epoch.clone()),
            };
            self.outbox.push_front(Outgoing {
                bytes: 0,
                msg,
                pending: Pending::Rejoin,
            });
        }
        ui.update(&self.status());
    }

    /// Waits out one back-off delay, still listening to the user; false if they quit meanwhile.
    async fn wait_to_retry(
        &mut self,
        ui: &mut impl Frontend,
        backoff: &mut Backoff,
        why: &str,
    ) -> bool {
        let delay = backoff.next_delay();
        self.note(
            ui,
            LineKind::Info,
            format!(
                "connection lost: {why}; reconnecting in {:.1} s",
                delay.as_secs_f64()
            ),
        );
        let until = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                ev = ui.next_input(), if !self.eof => match ev {
                    UiEvent::Eof => {
                        self.eof = true;
                        if self.outbox.is_empty() {
                            return false;
                        }
                    }
                    UiEvent::Line(l) if parse_input(&l) == Input::Exit => return false,
                    UiEvent::Line(l) => {
                        // Kept, and sent once connected again.
                        self.on_line(&l, ui);
                    }
                    UiEvent::Typing(_) => {}
                },
            }
        }
    }

    /// Tells the server (accounts mode) that `room`, on screen, is read up to the last message
    /// seen there: at once when asked to (a switch of room), else at most every 2 s.
    fn mark_read(&mut self, room: &str, now: bool) {
        if !self.keeps_read || !self.connected {
            return;
        }
        let Some((_, seq)) = self.seen.get(room) else {
            return;
        };
        let seq = *seq;
        let due = self
            .read_sent
            .get(room)
            .is_none_or(|(sent, at)| seq > *sent && (now || at.elapsed() >= READ_EVERY));
        if !due || seq == 0 {
            return;
        }
        self.read_sent
            .insert(room.to_string(), (seq, Instant::now()));
        self.outbox.push_back(Outgoing {
            msg: ClientMsg::Read {
                room: room.to_string(),
                seq,
            },
            pending: Pending::Read,
            bytes: 0,
        });
    }

    /// Requests sent and never answered are counted as failures (they may or may not have been
    /// carried out).
    fn lost_pending(&mut self, ui: &mut impl Frontend) {
        let unanswered = self
            .pending
            .values()
            .filter(|p| !matches!(p, Pending::Rejoin | Pending::Read | Pending::Reclaim))
            .count();
        if unanswered > 0 {
            self.note(
                ui,
                LineKind::Error,
                format!("{unanswered} request(s) got no answer before the connection dropped"),
            );
            self.errors += unanswered;
        }
        self.pending.clear();
    }

    /// One conversation, until the user is done or the connection ends.
    async fn converse(&mut self, ws: &mut Ws, ui: &mut impl Frontend) -> Ended {
        loop {
            if self.eof && self.pending.is_empty() && self.outbox.is_empty() {
                return Ended::User;
            }
            let send_at = (!self.outbox.is_empty()).then(|| self.pacer.ready_at());
            let expiry = self
                .typing
                .next_expiry()
                .map(tokio::time::Instant::from_std);
            let full = self.outbox.len() >= OUTBOX_LINES || self.outbox_bytes >= OUTBOX_BYTES;
            let read_input = !(self.eof || full && ui.may_wait());
            let far = tokio::time::Instant::now() + Duration::from_secs(3600);
            let reclaim = self.reclaim_at.map(tokio::time::Instant::from_std);
            tokio::select! {
                ev = ui.next_input(), if read_input => match ev {
                    UiEvent::Eof => self.eof = true,
                    UiEvent::Typing(state) => {
                        if let Some(room) = self.current.clone()
                            && self.typing_pacer.try_take()
                        {
                            let req = Request { id: None, msg: input::typing(&room, state) };
                            if let Err(e) = ws.send(Message::text(req.to_json())).await {
                                return Ended::Lost(e.to_string());
                            }
                        }
                    }
                    UiEvent::Line(line) => {
                        if let Some(end) = self.on_line(&line, ui) {
                            return end;
                        }
                    }
                },
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(t))) => {
                        match decode(t.as_str()) {
                            Ok(msg) => self.on_event(&msg, t.as_str(), ui),
                            Err(_) => {
                                // A type this client does not know: show it raw, or skip it.
                                ui.raw(t.as_str());
                            }
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        // Answer the close, then report why.
                        let _ = tokio::time::timeout(Duration::from_secs(1), ws.flush()).await;
                        let (code, reason) = f
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        return Ended::Closed(code, reason);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Ended::Lost(e.to_string()),
                    None => return Ended::Lost("connection closed".into()),
                },
                _ = tokio::time::sleep_until(send_at.unwrap_or(far)), if send_at.is_some() => {
                    if let Err(e) = self.send_next(ws).await {
                        return Ended::Lost(e);
                    }
                }
                _ = tokio::time::sleep_until(expiry.unwrap_or(far)), if expiry.is_some() => {
                    self.typing.expire(Instant::now());
                }
                _ = tokio::time::sleep_until(reclaim.unwrap_or(far)), if reclaim.is_some() => {
                    self.reclaim_at = Some(Instant::now() + RECLAIM_EVERY);
                    self.outbox.push_back(Outgoing {
                        msg: ClientMsg::Nick { name: self.opts.name.clone() },
                        pending: Pending::Reclaim,
                        bytes: 0,
                    });
                }
            }
            ui.update(&self.status());
        }
    }

    /// Sends the oldest waiting request, if the pacer allows it now.
    async fn send_next(&mut self, ws: &mut Ws) -> Result<(), String> {
        if !self.pacer.try_take() {
            return Ok(());
        }
        let Some(out) = self.outbox.pop_front() else {
            return Ok(());
        };
        self.outbox_bytes -= out.bytes;
        let id = self.take_id();
        let request = Request::new(id.clone(), out.msg);
        self.pending.insert(id, out.pending);
        ws.send(Message::text(request.to_json()))
            .await
            .map_err(|e| e.to_string())
    }

    fn queue(&mut self, msg: ClientMsg, pending: Pending, ui: &mut impl Frontend) {
        let bytes = match &msg {
            ClientMsg::Say { text, .. } | ClientMsg::Pm { text, .. } => text.len(),
            _ => 64,
        };
        if self.outbox.len() >= OUTBOX_LINES || self.outbox_bytes + bytes > OUTBOX_BYTES {
            self.errors += 1;
            self.note(
                ui,
                LineKind::Error,
                format!(
                    "{} lines are already waiting to be sent; this one was dropped",
                    self.outbox.len()
                ),
            );
            return;
        }
        self.outbox_bytes += bytes;
        self.outbox.push_back(Outgoing {
            msg,
            pending,
            bytes,
        });
    }

    /// A line typed (or read from stdin).
    fn on_line(&mut self, line: &str, ui: &mut impl Frontend) -> Option<Ended> {
        let input = parse_input(line);
        let room = self.current.clone();
        match &input {
            Input::Empty => return None,
            Input::Exit => return Some(Ended::User),
            Input::Help => {
                for l in input::help() {
                    ui.note(Line::info(LineKind::Info, l));
                }
                return None;
            }
            Input::Hint(h) => {
                // A line that could not be sent counts against the exit code, like an error reply.
                self.note(ui, LineKind::Error, h);
                self.errors += 1;
                return None;
            }
            Input::Room(r) => {
                let r = room_key(r);
                if self.rooms.contains(&r) {
                    self.unread.retain(|(room, _, _)| *room != r);
                    self.note(ui, LineKind::Info, format!("now talking in #{r}"));
                    self.current = Some(r.clone());
                    self.mark_read(&r, true);
                } else {
                    self.note(
                        ui,
                        LineKind::Info,
                        format!("you are not in #{r}; /join {r} first"),
                    );
                }
                return None;
            }
            Input::Say { .. } | Input::Leave(None) | Input::History(_) if room.is_none() => {
                self.errors += 1;
                self.note(
                    ui,
                    LineKind::Error,
                    "you are in no room: /join ROOM to talk somewhere",
                );
                return None;
            }
            _ => {}
        }
        let here = room.clone().unwrap_or_default();
        let msg = match &input {
            Input::Change(c) => match crate::client::changes::request(c, &here, self.last_own) {
                Ok(msg) => msg,
                Err(hint) => {
                    self.note(ui, LineKind::Error, hint);
                    self.errors += 1;
                    return None;
                }
            },
            _ => request_for(&input, &here)?,
        };
        let pending = match &input {
            Input::Say { text, action } => Pending::Say {
                room: here,
                text: text.clone(),
                action: *action,
            },
            Input::Pm { to, text } => Pending::Pm {
                to: to.clone(),
                text: text.clone(),
            },
            Input::Join(r) => {
                // Lines typed after /join go to the new room, even before the server answers,
                // and a reconnect rejoins it.
                let r = room_key(r);
                let added = !self.rooms.contains(&r);
                if added {
                    self.rooms.push(r.clone());
                }
                let previous = self.current.replace(r.clone());
                self.unread.retain(|(room, _, _)| *room != r);
                Pending::Join {
                    room: r,
                    added,
                    previous,
                }
            }
            Input::Leave(r) => {
                let r = room_key(r.as_deref().unwrap_or(&here));
                self.rooms.retain(|x| *x != r);
                if self.current.as_deref() == Some(&r) {
                    self.current = self.rooms.first().cloned();
                }
                Pending::Leave { room: r }
            }
            Input::Nick(_) => Pending::Nick,
            Input::Change(crate::client::changes::ChangeCmd::Reply { text, .. }) => Pending::Say {
                room: here,
                text: text.clone(),
                action: false,
            },
            Input::Change(c) => Pending::Moderate(crate::client::changes::done(c)),
            Input::Moderate(m) => Pending::Moderate(crate::client::moderate::done(m, &here)),
            _ => Pending::Other,
        };
        if matches!(input, Input::Say { .. }) {
            ui.typing_reset();
        }
        self.queue(msg, pending, ui);
        None
    }
}
