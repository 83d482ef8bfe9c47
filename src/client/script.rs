//! The scripted frontend: lines from stdin, one line per event on stdout, notes and errors on
//! stderr. Used when stdin is not a terminal, or with `--plain`.

use std::io::Write;

use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use super::chat::{Frontend, UiEvent};
use super::render::{Line, escape_json_for_terminal};
use super::tui::{styled, use_color};

/// Lines read ahead of the chat; when it stops asking (its outbox is full), reading stops too.
const READ_AHEAD: usize = 64;

/// Lines from stdin, events to stdout.
pub struct Script {
    lines: mpsc::Receiver<String>,
    json: bool,
    color: bool,
}

impl Script {
    /// Starts reading stdin. `json`: print every received frame raw instead of formatted lines.
    pub fn new(json: bool, no_color: bool) -> Script {
        let (tx, lines) = mpsc::channel(READ_AHEAD);
        tokio::spawn(async move {
            let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(line)) = stdin.next_line().await {
                if tx.send(line).await.is_err() {
                    return;
                }
            }
        });
        Script {
            lines,
            json,
            color: use_color(no_color),
        }
    }

    /// A frontend that only reports (for `chatctl send`): nothing to read.
    pub fn quiet() -> Script {
        let (_, lines) = mpsc::channel(1);
        Script {
            lines,
            json: false,
            color: false,
        }
    }
}

impl Frontend for Script {
    async fn next_input(&mut self) -> UiEvent {
        match self.lines.recv().await {
            Some(line) => UiEvent::Line(line),
            None => UiEvent::Eof,
        }
    }

    fn show(&mut self, line: Line) {
        if self.json {
            return;
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", styled(&line, self.color));
        let _ = out.flush();
    }

    fn note(&mut self, line: Line) {
        eprintln!("{}", line.plain());
    }

    fn raw(&mut self, json: &str) -> bool {
        if self.json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", escape_json_for_terminal(json));
            let _ = out.flush();
        }
        self.json
    }

    fn may_wait(&self) -> bool {
        true
    }
}
