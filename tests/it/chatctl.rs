//! The real `chatctl` binary against the real `chatd`: scripted chat, `send`, safe display,
//! reconnect, and the interactive terminal (driven through tmux).

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{Daemon, Proc, SyncClient, chatctl_command, code_and_stderr};

fn connect(d: &Daemon, name: &str, extra: &[&str]) -> Proc {
    let mut cmd = chatctl_command();
    cmd.args(["--url", &format!("ws://{}", d.addr), "connect", name])
        .args(extra);
    Proc::spawn(cmd)
}

fn send(d: &Daemon, args: &[&str]) -> (Option<i32>, String) {
    code_and_stderr(
        chatctl_command()
            .args(["--url", &format!("ws://{}", d.addr), "send"])
            .args(args),
    )
}

#[test]
fn two_scripted_clients_chat_pm_and_join_rooms() {
    let d = Daemon::start(&[], &[]);
    let mut alice = connect(&d, "alice", &[]);
    alice.expect_out("welcome, alice! you are in #lobby with: alice");

    let mut bob = connect(&d, "bob", &[]);
    for line in [
        "hello alice",
        "/join #rust",
        "in rust",
        "/me waves in rust",
        "/msg alice psst",
        "/room lobby",
        "/who",
    ] {
        bob.write_line(line);
    }
    bob.close_stdin();
    assert_eq!(bob.wait_exit(), Some(0), "bob: every line acknowledged");
    let bob_out = bob.rest_of_stdout().join("\n");
    assert!(bob_out.contains("you are in #rust with: bob"), "{bob_out}");
    assert!(bob_out.contains("#lobby: alice, bob"), "{bob_out}");

    alice.expect_out("#lobby --> bob joined");
    alice.expect_out("#lobby <bob> hello alice");
    alice.expect_out("[pm from bob] psst");
    alice.expect_out("#lobby <-- bob left");
    // alice was not in #rust: she reads it from history after joining.
    alice.write_line("/join rust");
    alice.expect_out("you are in #rust with: alice");
    alice.expect_out("[history] #rust <bob> in rust");
    alice.expect_out("[history] #rust * bob waves in rust");
    alice.close_stdin();
    assert_eq!(alice.wait_exit(), Some(0));
    assert!(
        !alice
            .seen
            .iter()
            .any(|l| l.contains("stdout") && l.contains("#rust <bob>") && !l.contains("[history]"))
    );
}

#[test]
fn scripted_errors_exit_1_and_go_to_stderr() {
    let d = Daemon::start(&[], &[]);
    let mut c = connect(&d, "carol", &[]);
    c.write_line("/msg nobody hi");
    c.write_line("/dance");
    c.close_stdin();
    // The hint is local (immediate); the error comes back from the server.
    c.expect_err("unknown command /dance");
    c.expect_err("error: nobody called \"nobody\" is online (no_such_user)");
    assert_eq!(c.wait_exit(), Some(1));
}

#[test]
fn send_exits_0_on_ack_and_nonzero_otherwise() {
    let d = Daemon::start(&[], &[]);
    let mut watcher = SyncClient::join(d.addr, "watcher");
    let (code, err) = send(&d, &["--name", "bot", "deploy finished"]);
    assert_eq!(code, Some(0), "{err}");
    let m = watcher.recv_until(|v| v["type"] == "message");
    assert_eq!(
        (m["from"].as_str(), m["text"].as_str()),
        (Some("bot"), Some("deploy finished"))
    );

    let (code, _) = send(&d, &["--name", "bot", "--to", "watcher", "psst"]);
    assert_eq!(code, Some(0));
    assert_eq!(watcher.recv_until(|v| v["type"] == "pm")["text"], "psst");

    let (code, err) = send(&d, &["--name", "bot", "--to", "ghost", "hi"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim(),
        "error: nobody called \"ghost\" is online (no_such_user)"
    );
    let (code, err) = send(&d, &["--name", "bot", "--room", "nowhere", "hi"]);
    assert_eq!(
        code,
        Some(0),
        "saying in a named room joins it at hello: {err}"
    );
    let (code, err) = send(&d, &["--name", "WATCHER", "hi"]);
    assert_eq!(code, Some(1));
    assert_eq!(err.trim(), "error: name \"WATCHER\" is taken");
    assert!(
        !err.contains("panicked") && !err.contains("Error {"),
        "{err}"
    );

    // No server at all: exit 3 with one clear line.
    let out = chatctl_command()
        .args(["--url", "ws://127.0.0.1:9", "send", "--name", "x", "y"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: cannot connect to ws://127.0.0.1:9") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn received_text_cannot_control_the_terminal() {
    let d = Daemon::start(&[], &[]);
    let mut alice = connect(&d, "alice", &[]);
    alice.expect_out("welcome, alice!");
    let mut raw = connect(&d, "raw", &["--json"]);
    raw.expect_out("\"type\":\"welcome\"");
    let evil = "\u{1b}]0;pwned\u{7}title \u{1b}[2Jclear \u{9b}31mred \u{202e}gnp.exe";
    let (code, _) = send(&d, &["--name", "mallory", evil]);
    assert_eq!(code, Some(0));
    let line = alice.expect_out("<mallory>");
    assert_eq!(
        line.split_once(' ').unwrap().1,
        "#lobby <mallory> title clear 31mred gnp.exe"
    );
    let json_line = raw.expect_out("\"type\":\"message\"");
    for bad in ['\u{1b}', '\u{7}', '\u{9b}', '\u{202e}'] {
        assert!(
            !line.contains(bad) && !json_line.contains(bad),
            "{bad:?} reached the terminal"
        );
    }
    let v: serde_json::Value = serde_json::from_str(&json_line).unwrap();
    assert_eq!(v["text"], evil, "--json keeps the exact text, escaped");
}

#[test]
fn reconnects_after_a_server_restart_and_rejoins_rooms() {
    let mut d = Daemon::start(&[], &[]);
    let port = d.addr.port();
    let mut alice = connect(&d, "alice", &[]);
    alice.expect_out("welcome, alice!");
    alice.write_line("/join dev");
    alice.expect_out("you are in #dev with: alice");

    d.signal("TERM");
    alice.expect_out("notice from server: server is shutting down");
    alice.expect_err("connection lost: server closed the connection (1001");
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));

    let d2 = Daemon::start_at(port, &[], &[]);
    alice.expect_err(&format!("reconnected to ws://{} as alice", d2.addr));
    alice.expect_out("welcome, alice! you are in #lobby with: alice");
    alice.expect_out("you are in #dev with: alice");
    alice.write_line("/room lobby");
    alice.expect_err("now talking in #lobby");
    alice.write_line("still here");
    let mut bob = SyncClient::join(d2.addr, "bob");
    bob.send(json!({"type": "history", "room": "lobby", "id": "h"}));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // The line may still be in flight: page history until it shows (bounded).
    loop {
        let h = bob.recv_until(|v| v["type"] == "history");
        if h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["text"] == "still here")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "alice's line never arrived: {h}"
        );
        std::thread::sleep(Duration::from_millis(50));
        bob.send(json!({"type": "history", "room": "lobby", "id": "h"}));
    }
    alice.close_stdin();
    assert_eq!(alice.wait_exit(), Some(0));
}

/// tmux on a private socket, so tests never touch a user's sessions.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux");
        String::from_utf8_lossy(&out.stdout).to_string()
    }
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "chat"])
    }
    /// Polls the screen until `pred` holds (bounded).
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "screen never showed {what}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    fn keys(&self, keys: &[&str]) {
        self.run(&[&["send-keys", "-t", "chat"], keys].concat());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

fn last_line(screen: &str) -> &str {
    screen
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

#[test]
fn interactive_prompt_survives_incoming_messages_and_sends_typing() {
    if Command::new("tmux").arg("-V").output().is_err() {
        panic!("tmux is required for the interactive test (.ci/run installs it)");
    }
    let d = Daemon::start(&[], &[]);
    let mut alice = SyncClient::join(d.addr, "alice");
    let tmux = Tmux {
        socket: format!("chatctl-test-{}", std::process::id()),
    };
    let cmd = format!(
        "NO_COLOR=1 {} --url ws://{} connect henry; echo EXIT=$?; sleep 30",
        env!("CARGO_BIN_EXE_chatctl"),
        d.addr
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "chat",
        "-x",
        "100",
        "-y",
        "20",
        &cmd,
    ]);
    tmux.wait_for("the welcome", |s| s.contains("welcome, henry!"));
    assert_eq!(alice.recv_until(|v| v["type"] == "joined")["name"], "henry");

    // Typing part of a line sends `typing active` to the room.
    tmux.keys(&["hel"]);
    let t = alice.recv_until(|v| v["type"] == "typing");
    assert_eq!(
        t,
        json!({"type": "typing", "from": "henry", "room": "lobby", "state": "active"})
    );

    // Someone else typing shows on the status row; a message arrives above the prompt, and the
    // half-typed line stays intact at the bottom.
    alice.send(json!({"type": "typing", "room": "lobby", "state": "active"}));
    tmux.wait_for("the typing status", |s| s.contains("alice is typing…"));
    alice.send(json!({"type": "say", "text": "incoming!"}));
    let screen = tmux.wait_for("alice's message", |s| s.contains("<alice> incoming!"));
    assert_eq!(
        last_line(&screen),
        "[#lobby] > hel",
        "prompt was disturbed:\n{screen}"
    );
    assert!(
        !screen.contains("alice is typing…"),
        "a message clears its sender's typing:\n{screen}"
    );

    // Finish the line: it is sent as a message.
    tmux.keys(&["lo", "Enter"]);
    let m = alice.recv_until(|v| v["type"] == "message");
    assert_eq!(
        (m["from"].as_str(), m["text"].as_str()),
        (Some("henry"), Some("hello"))
    );
    // History with the arrow key, then a command.
    tmux.keys(&["Up"]);
    tmux.wait_for("history recall", |s| last_line(s) == "[#lobby] > hello");
    tmux.keys(&["C-u", "/who", "Enter"]);
    tmux.wait_for("the who reply", |s| s.contains("#lobby: alice, henry"));
    tmux.keys(&["C-d"]);
    tmux.wait_for("a clean exit", |s| s.contains("EXIT=0"));
    assert_eq!(alice.recv_until(|v| v["type"] == "left")["name"], "henry");
}

#[test]
fn bench_runs_a_tiny_case_without_loss() {
    let d = Daemon::start(&[], &[("CHATD_LIMITS__RATE_PER_SEC", "0")]);
    for mode in [
        &[][..],
        &["--raw", "--name-line"][..],
        &["--rooms", "2", "--inflight", "4"][..],
    ] {
        let out = chatctl_command()
            .args([
                "--url",
                &format!("ws://{}", d.addr),
                "bench",
                "--clients",
                "6",
                "--senders",
                "2",
            ])
            .args(["--messages", "25", "--json", "--duration", "20"])
            .args(mode)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{mode:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let expected = if mode.contains(&"--rooms") {
            2 * 2 * 25
        } else {
            2 * 5 * 25
        };
        assert_eq!(report["expected"], expected, "{mode:?}: {report}");
        assert_eq!(report["received"], expected, "{mode:?}: {report}");
        assert_eq!(report["out_of_order"], 0);
        assert!(report["latency_us"]["p50"].as_u64().unwrap() > 0);
    }
}
