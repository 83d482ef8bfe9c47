//! The interactive frontend: a raw-mode terminal where the conversation scrolls above a few fixed
//! rows (own lines waiting for their ack, a status row, and the `[#room] > ` input line) that
//! incoming messages never disturb.
//!
//! Bracketed paste is on: a paste arrives as one event. A paste of more than a few lines asks once
//! before sending (like irssi's paste check); the lines then leave paced like any others.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crossterm::cursor::{MoveToColumn, MoveUp};
use crossterm::event::{
    DisableBracketedPaste, EnableBracketedPaste, Event, EventStream, KeyCode, KeyEvent,
    KeyEventKind, KeyModifiers,
};
use crossterm::style::{Color, Stylize};
use crossterm::terminal::{self, Clear, ClearType};
use crossterm::{execute, queue};
use futures_util::StreamExt;
use unicode_width::UnicodeWidthStr;

use super::chat::{Frontend, Status, UiEvent};
use super::complete::Completer;
use super::editor::Editor;
use super::input::{Input, parse_input};
use super::render::{Line, LineKind};
use crate::protocol::TypingState;

/// Typing: resend `active` at most this often (the server relays one per 3 s).
const TYPING_REFRESH: Duration = Duration::from_secs(3);
/// Typing: no keystroke for this long turns `active` into `paused`.
const TYPING_PAUSE_AFTER: Duration = Duration::from_secs(5);
/// A paste of more lines than this asks before it is sent.
const PASTE_ASK_LINES: usize = 3;
/// The largest paste accepted, in lines and bytes.
const PASTE_MAX_LINES: usize = 1000;
const PASTE_MAX_BYTES: usize = 1 << 20;

/// Whether to colour output: on a terminal, unless the user said no (`NO_COLOR`, which the
/// binary reads: only `src/bin/` reads the environment).
pub fn use_color(no_color: bool) -> bool {
    std::io::stdout().is_terminal() && !no_color
}

/// A stable colour per name.
fn name_color(name: &str) -> Color {
    const PALETTE: [Color; 6] = [
        Color::Red,
        Color::Green,
        Color::Yellow,
        Color::Blue,
        Color::Magenta,
        Color::Cyan,
    ];
    let hash = name.bytes().fold(2166136261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16777619)
    });
    PALETTE[hash as usize % PALETTE.len()]
}

/// A line with colours (or without, when `color` is off).
pub fn styled(line: &Line, color: bool) -> String {
    if !color {
        return line.plain();
    }
    let name = line
        .name
        .as_deref()
        .map(|n| n.with(name_color(n)).bold().to_string())
        .unwrap_or_default();
    let (prefix, rest) = (line.prefix.clone(), line.rest.clone());
    let (prefix, rest) = match line.kind {
        LineKind::Pm => (prefix.magenta().to_string(), rest.magenta().to_string()),
        LineKind::Notice => (prefix.yellow().to_string(), rest.yellow().to_string()),
        LineKind::Mention => (
            prefix.dark_grey().to_string(),
            rest.yellow().bold().to_string(),
        ),
        LineKind::Pending => (prefix.dark_grey().to_string(), rest.dark_grey().to_string()),
        LineKind::Refused | LineKind::Error => (prefix.red().to_string(), rest.red().to_string()),
        LineKind::Presence | LineKind::History | LineKind::Info => {
            (prefix.dark_grey().to_string(), rest.dark_grey().to_string())
        }
        LineKind::Message | LineKind::Own => (prefix.dark_grey().to_string(), rest),
    };
    format!("{prefix}{name}{rest}")
}

/// Cuts `text` to `width` display columns.
fn fit(text: &str, width: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let mut buf = [0u8; 4];
        if out.width() + c.encode_utf8(&mut buf).width() > width {
            break;
        }
        out.push(c);
    }
    out
}

/// The raw-mode terminal.
pub struct Tui {
    events: EventStream,
    editor: Editor,
    completer: Completer,
    status: Status,
    color: bool,
    /// Rows below the scrollback now drawn (pending lines, status, input).
    rows: usize,
    /// A paste waiting for "send N lines? [y/N]".
    confirm: Option<Vec<String>>,
    /// Events to hand out before reading more keys (the lines of a paste).
    queued: VecDeque<UiEvent>,
    /// Typing we announced: when `active` was last sent, and the last keystroke.
    typing_sent: Option<Instant>,
    typing_paused: bool,
    last_key: Instant,
}

impl Tui {
    /// Takes over the terminal (raw mode, bracketed paste).
    pub fn new(no_color: bool) -> std::io::Result<Tui> {
        terminal::enable_raw_mode()?;
        let _ = execute!(std::io::stdout(), EnableBracketedPaste);
        let mut tui = Tui {
            events: EventStream::new(),
            editor: Editor::new(),
            completer: Completer::default(),
            status: Status::default(),
            color: use_color(no_color),
            rows: 1,
            confirm: None,
            queued: VecDeque::new(),
            typing_sent: None,
            typing_paused: false,
            last_key: Instant::now(),
        };
        tui.redraw();
        Ok(tui)
    }

    fn width() -> usize {
        terminal::size()
            .map(|(w, _)| w as usize)
            .unwrap_or(80)
            .max(12)
    }

    /// Clears the rows below the scrollback, leaving the cursor where the first of them was.
    fn clear_bottom(&self, out: &mut impl Write) {
        let _ = queue!(out, MoveToColumn(0));
        if self.rows > 1 {
            let _ = queue!(out, MoveUp((self.rows - 1) as u16));
        }
        let _ = queue!(out, Clear(ClearType::FromCursorDown));
    }

    fn prompt(&self) -> String {
        if self.confirm.is_some() {
            return String::new();
        }
        match (&self.status.room, self.status.connected) {
            (_, false) => "[offline] > ".to_string(),
            (Some(room), true) => format!("[#{room}] > "),
            (None, true) => "[no room] > ".to_string(),
        }
    }

    fn status_row(&self) -> String {
        let mut parts = Vec::new();
        if !self.status.typing.is_empty() {
            parts.push(self.status.typing.clone());
        }
        if !self.status.activity.is_empty() {
            let act: Vec<String> = self
                .status
                .activity
                .iter()
                .map(|(room, n, mention)| {
                    format!("#{room}({n}{})", if *mention { "!" } else { "" })
                })
                .collect();
            parts.push(format!("Act: {}", act.join(" ")));
        }
        if self.status.queued > 0 {
            parts.push(format!("{} queued", self.status.queued));
        }
        parts.join(" | ")
    }

    /// Redraws the rows below the scrollback.
    fn redraw(&mut self) {
        let mut out = std::io::stdout();
        let width = Self::width();
        self.clear_bottom(&mut out);
        for line in &self.status.pending {
            let text = fit(&line.plain(), width - 1);
            let text = if self.color {
                text.dark_grey().to_string()
            } else {
                text
            };
            let _ = write!(out, "{text}\r\n");
        }
        let status = fit(&self.status_row(), width - 1);
        let status = if self.color {
            status.dark_grey().italic().to_string()
        } else {
            status
        };
        let _ = write!(out, "{status}\r\n");
        let (prompt, view) = match &self.confirm {
            Some(lines) => {
                let ask = format!("paste {} lines? [y/N] ", lines.len());
                (
                    ask,
                    super::editor::View {
                        text: String::new(),
                        cursor: 0,
                    },
                )
            }
            None => {
                let prompt = self.prompt();
                let view = self.editor.view(width.saturating_sub(prompt.width() + 1));
                (prompt, view)
            }
        };
        let _ = write!(out, "{prompt}{}", view.text);
        let _ = queue!(out, MoveToColumn((prompt.width() + view.cursor) as u16));
        let _ = out.flush();
        self.rows = self.status.pending.len() + 2;
    }

    fn print(&mut self, text: &str) {
        let mut out = std::io::stdout();
        self.clear_bottom(&mut out);
        let _ = write!(out, "{text}\r\n");
        self.rows = 1;
        self.redraw();
    }

    /// A paste: a few lines are sent as typed, more ask first; a single line goes into the editor.
    fn on_paste(&mut self, text: &str) -> Option<UiEvent> {
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
        let rest = lines.pop().unwrap_or_default();
        lines.retain(|l| !l.trim().is_empty());
        if lines.is_empty() {
            self.editor.insert(&rest);
            self.redraw();
            return self.typing_changed();
        }
        if lines.len() > PASTE_MAX_LINES || text.len() > PASTE_MAX_BYTES {
            let n = lines.len();
            self.print(&format!(
                "-!- that paste is too large ({n} lines); paste at most {PASTE_MAX_LINES} lines"
            ));
            return None;
        }
        // The line being typed is the paste's first line's beginning.
        if !self.editor.is_empty() {
            let first = format!("{}{}", self.editor.take(), lines[0]);
            lines[0] = first;
        }
        if !rest.is_empty() {
            self.editor.insert(&rest);
        }
        if lines.len() > PASTE_ASK_LINES {
            self.confirm = Some(lines);
            self.redraw();
            return None;
        }
        self.queued.extend(lines.into_iter().map(UiEvent::Line));
        self.redraw();
        self.queued.pop_front()
    }

    /// Applies a key; returns an event for the chat when the key produced one.
    fn on_key(&mut self, key: KeyEvent) -> Option<UiEvent> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        if let Some(lines) = self.confirm.take() {
            if matches!(key.code, KeyCode::Char('y' | 'Y')) {
                self.queued.extend(lines.into_iter().map(UiEvent::Line));
            } else {
                self.print("-!- paste not sent");
            }
            self.redraw();
            return self.queued.pop_front();
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        let before = self.editor.text().to_string();
        if key.code != KeyCode::Tab {
            self.completer.reset();
        }
        let e = &mut self.editor;
        match key.code {
            KeyCode::Char('d') if ctrl && e.is_empty() => return Some(UiEvent::Eof),
            KeyCode::Char('c') if ctrl => {
                if e.is_empty() {
                    return Some(UiEvent::Eof);
                }
                e.clear();
            }
            KeyCode::Char('a') if ctrl => e.home(),
            KeyCode::Char('e') if ctrl => e.end(),
            KeyCode::Char('u') if ctrl => e.delete_to_start(),
            KeyCode::Char('k') if ctrl => e.delete_to_end(),
            KeyCode::Char('w') if ctrl => e.delete_word_back(),
            KeyCode::Char('b') if alt => e.word_left(),
            KeyCode::Char('f') if alt => e.word_right(),
            KeyCode::Left if ctrl || alt => e.word_left(),
            KeyCode::Right if ctrl || alt => e.word_right(),
            KeyCode::Char(c) if !ctrl => {
                let mut buf = [0u8; 4];
                e.insert(c.encode_utf8(&mut buf));
            }
            KeyCode::Backspace => e.backspace(),
            KeyCode::Delete => e.delete(),
            KeyCode::Left => e.left(),
            KeyCode::Right => e.right(),
            KeyCode::Home => e.home(),
            KeyCode::End => e.end(),
            KeyCode::Up => e.history_back(),
            KeyCode::Down => e.history_forward(),
            KeyCode::Tab => {
                let known = self.status.known.clone();
                self.completer.tab(&mut self.editor, &known);
            }
            KeyCode::Enter => {
                let line = self.editor.take();
                self.redraw();
                // A message ends typing by itself; anything else sent after typing needs `done`.
                let was_typing = self.typing_sent.take().is_some();
                let is_message = matches!(parse_input(&line), Input::Say { .. });
                if was_typing && !is_message {
                    self.queued.push_back(UiEvent::Line(line));
                    return Some(UiEvent::Typing(TypingState::Done));
                }
                return Some(UiEvent::Line(line));
            }
            _ => {}
        }
        self.redraw();
        if self.editor.text() != before {
            return self.typing_changed();
        }
        None
    }

    /// After an edit: announce `active` (throttled) while a message is being typed, `done` when
    /// the line is cleared or becomes a command.
    fn typing_changed(&mut self) -> Option<UiEvent> {
        self.last_key = Instant::now();
        let line = self.editor.text();
        let composing = !line.trim().is_empty() && !line.starts_with('/');
        match (composing, self.typing_sent) {
            (true, Some(t)) if !self.typing_paused && t.elapsed() < TYPING_REFRESH => None,
            (true, _) => {
                self.typing_sent = Some(Instant::now());
                self.typing_paused = false;
                Some(UiEvent::Typing(TypingState::Active))
            }
            (false, Some(_)) => {
                self.typing_sent = None;
                Some(UiEvent::Typing(TypingState::Done))
            }
            (false, None) => None,
        }
    }
}

impl Frontend for Tui {
    async fn next_input(&mut self) -> UiEvent {
        if let Some(ev) = self.queued.pop_front() {
            return ev;
        }
        loop {
            let pause_at = (self.typing_sent.is_some() && !self.typing_paused)
                .then(|| tokio::time::Instant::from_std(self.last_key + TYPING_PAUSE_AFTER));
            let far = tokio::time::Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                ev = self.events.next() => match ev {
                    Some(Ok(Event::Key(key))) => {
                        if let Some(ev) = self.on_key(key) {
                            return ev;
                        }
                    }
                    Some(Ok(Event::Paste(text))) => {
                        if let Some(ev) = self.on_paste(&text) {
                            return ev;
                        }
                    }
                    Some(Ok(Event::Resize(..))) => self.redraw(),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return UiEvent::Eof,
                },
                _ = tokio::time::sleep_until(pause_at.unwrap_or(far)), if pause_at.is_some() => {
                    self.typing_paused = true;
                    return UiEvent::Typing(TypingState::Paused);
                }
            }
        }
    }

    fn show(&mut self, line: Line) {
        let text = styled(&line, self.color);
        self.print(&text);
    }

    fn note(&mut self, line: Line) {
        let text = styled(&line, self.color);
        self.print(&text);
    }

    fn update(&mut self, status: &Status) {
        if *status != self.status {
            self.status = status.clone();
            self.redraw();
        }
    }

    fn typing_reset(&mut self) {
        self.typing_sent = None;
        self.typing_paused = false;
    }

    fn bell(&mut self) {
        let mut out = std::io::stdout();
        let _ = out.write_all(b"\x07");
        let _ = out.flush();
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        let mut out = std::io::stdout();
        self.clear_bottom(&mut out);
        let _ = execute!(out, DisableBracketedPaste);
        let _ = out.flush();
        let _ = terminal::disable_raw_mode();
    }
}
