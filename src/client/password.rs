//! Reading a password from the terminal without echoing it (`chatctl --ask-password`, and
//! `chatd user add` on a terminal).

use std::io::{BufRead, IsTerminal, Write};

/// Asks for a password on standard error and reads one line from the terminal with echo off
/// (restored afterwards, whatever happens). An error if standard input is not a terminal.
pub fn ask(prompt: &str) -> Result<String, String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err("standard input is not a terminal".into());
    }
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let fd = rustix::stdio::stdin();
    let saved = rustix::termios::tcgetattr(fd).map_err(|e| e.to_string())?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
    let _ = rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &quiet);
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let _ = rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &saved);
    eprintln!();
    read.map_err(|e| e.to_string())?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}
