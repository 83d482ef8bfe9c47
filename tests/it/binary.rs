//! The real `chatd` binary: command line, configuration errors and exit codes, logging, and shutdown.

use std::collections::BTreeSet;
use std::time::Duration;

use chatd::Config;
use serde_json::json;

use crate::helpers::{Client, Daemon, chatd_command};

fn output(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = chatd_command()
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("run chatd");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn help_and_version() {
    let (code, out, _) = output(&["--help"], &[]);
    assert_eq!(code, Some(0));
    for word in ["check-config", "print-config", "--config", "--port", "78"] {
        assert!(out.contains(word), "--help lacks {word}:\n{out}");
    }
    // Each subcommand's help is its own (the token's text once sat under `cert`), and options
    // that mean nothing there are not offered.
    let (_, out, _) = output(&["--help"], &[]);
    let line = |cmd: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(cmd))
            .unwrap_or("")
    };
    assert!(line("cert ").contains("certificate"), "{out}");
    assert!(line("token ").contains("token"), "{out}");
    assert!(!line("cert ").contains("token"), "{out}");
    for sub in ["token", "cert", "check-config", "reload"] {
        let (code, help, _) = output(&[sub, "--help"], &[]);
        assert_eq!(code, Some(0));
        assert!(
            !help.contains("--port"),
            "chatd {sub} --help offers --port:\n{help}"
        );
    }
    let (code, out, _) = output(&["--version"], &[]);
    assert_eq!(code, Some(0));
    assert!(out.contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn embedded_defaults_listen_on_127_0_0_1_8000() {
    let out = crate::helpers::chatd_command_with_defaults()
        .arg("print-config")
        .output()
        .unwrap();
    let (code, out) = (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    );
    assert_eq!(code, Some(0));
    let config: Config = toml::from_str(&out).expect("print-config prints TOML");
    assert_eq!(config, Config::default());
    assert_eq!(config.listen_addr().to_string(), "127.0.0.1:8000");
    // History goes to chatd.db in the working directory, and print-config says where that is.
    let db = std::env::temp_dir().join("chatd.db");
    assert!(
        out.contains(&format!("# storage.path resolves to {}", db.display())),
        "{out}"
    );
    // Run for real on the default address when it is free on this machine.
    let free = |a: &str| std::net::TcpListener::bind(a).is_ok();
    if free("127.0.0.1:8000") && free("127.0.0.1:8002") {
        let mut child = chatd_command()
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // stdout is a pipe here, so lines are JSON events (on a terminal, the plain line).
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let event = std::io::BufRead::lines(stdout)
            .take(5)
            .map(|l| serde_json::from_str::<serde_json::Value>(&l.unwrap()).expect("JSON"))
            .find(|v| v["fields"]["addr"].is_string());
        let _ = child.kill();
        let _ = child.wait();
        let event = event.expect("the listening line");
        assert_eq!(
            event["fields"]["message"],
            "WebSocket server listening on 127.0.0.1:8000"
        );
        assert_eq!(event["fields"]["addr"], "127.0.0.1:8000");
    }
}

#[test]
fn bad_config_exits_78_naming_the_key() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("CHATD_SERVER__PORT", "abc")],
            "`server.port` must be an integer 0–65535, found the string \"abc\" (environment variable CHATD_SERVER__PORT)",
        ),
        (
            &[("CHATD_SERVER__PROT", "1")],
            "unknown key `server.prot`: did you mean `server.port`?",
        ),
        (
            &[("CHATD_LOG__LEVEL", "infoo")],
            "\"infoo\" in \"infoo\" is not a level: use one of trace, debug, info, warn, error, off, or target=level (did you mean \"info\"?)",
        ),
        (
            &[("CHATD_LIMITS__MAX_MESSAGE_BYTES", "10")],
            "limits.max_message_bytes",
        ),
        (
            &[("CHATD_SERVER__HANDSHAKE_TIMEOUT_SECS", "-1")],
            "server.handshake_timeout_secs",
        ),
        (&[("CHATD_SERVER__HOST", "not-an-ip")], "server.host"),
        (
            &[("CHATD_LOG__FORMAT", "xml")],
            "`log.format` must be one of `auto`, `human`, `json`, found the string \"xml\"",
        ),
        (&[("CHATD_HISTORY__ON_JOIN", "500")], "history.on_join"),
    ];
    for (env, key) in cases {
        for cmd in [&["check-config"][..], &[][..]] {
            let (code, _, err) = output(cmd, env);
            assert_eq!(code, Some(78), "{env:?} {cmd:?}: {err}");
            assert!(
                err.contains(key),
                "{env:?}: error does not name {key}: {err}"
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    let toml_cases = [
        (
            "[server]\nport = 1\n[limits]\nmax_mesage_bytes = 5\n",
            "unknown key `limits.max_mesage_bytes`: did you mean `limits.max_message_bytes`? (FILE line 4)",
        ),
        (
            "# chatd\n[server]\nport = \"8000\"\n",
            "`server.port` must be an integer 0–65535, found the string \"8000\" (FILE line 3)",
        ),
        (
            "[srever]\nport = 1\n",
            "unknown section `srever`: did you mean `server`? (FILE line 1)",
        ),
        (
            "[history]\nsize = 1.5\n",
            "`history.size` must be a whole number (0 or more), found 1.5 (FILE line 2)",
        ),
        (
            "[server]\nallowed_origins = \"https://a.example\"\n",
            "`server.allowed_origins` must be a list, such as [\"a\", \"b\"], found the string \"https://a.example\" (FILE line 2)",
        ),
        (
            "[server\nport = 1\n",
            "TOML parse error at line 1, column 8",
        ),
    ];
    for (text, want) in toml_cases {
        std::fs::write(&file, text).unwrap();
        let (code, _, err) = output(&["--config", file.to_str().unwrap(), "check-config"], &[]);
        assert_eq!(code, Some(78), "{text}");
        let want = want.replace("FILE", file.to_str().unwrap());
        assert!(err.contains(&want), "{text}:\n{err}\nwant: {want}");
    }
    // check-config says which file it read.
    std::fs::write(&file, "[server]\nport = 1\n").unwrap();
    let (code, out, _) = output(&["--config", file.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains(&format!(
            "configuration OK (file: {})",
            file.canonicalize().unwrap().display()
        )),
        "{out}"
    );
    let (code, out, _) = output(&["check-config"], &[]);
    assert_eq!(code, Some(0));
    assert!(out.contains("no config file"), "{out}");
    let (code, _, err) = output(
        &["check-config"],
        &[("CHATD_CONFIG", "/nonexistent/chat.toml")],
    );
    assert_eq!(code, Some(78));
    assert!(err.contains("/nonexistent/chat.toml"), "{err}");
}

/// A rule about one part of the configuration binds only when that part is used: a single node
/// with 20 MB messages (the Autobahn run) is fine; the same limit in a cluster is refused,
/// because the cluster keeps history in Redis within `cluster.history_bytes`.
#[test]
fn cluster_rules_bind_only_a_cluster() {
    // What scripts/autobahn.sh sets for its "large" run.
    let big = [
        ("CHATD_LIMITS__MAX_MESSAGE_BYTES", "20000000"),
        ("CHATD_LIMITS__OUTBOUND_QUEUE_BYTES", "80000000"),
        ("CHATD_STORAGE__QUEUE_BYTES", "80000000"),
    ];
    let (code, out, err) = output(&["check-config"], &big);
    assert_eq!(code, Some(0), "{out}{err}");
    let mut cluster = big.to_vec();
    cluster.push(("CHATD_CLUSTER__REDIS_URL", "redis://127.0.0.1:1/0"));
    let (code, _, err) = output(&["check-config"], &cluster);
    assert_eq!(code, Some(78));
    assert!(err.contains("cluster.history_bytes"), "{err}");
}

#[test]
fn layers_apply_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chat.toml");
    std::fs::write(
        &file,
        "[server]\nport = 1111\nworkers = 2\n[history]\nsize = 7\non_join = 7\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let (code, out, err) = output(
        &["--config", path, "--port", "3333", "print-config"],
        &[("CHATD_SERVER__WORKERS", "3"), ("CHATD_HISTORY__SIZE", "9")],
    );
    assert_eq!(code, Some(0), "{err}");
    let c: Config = toml::from_str(&out).unwrap();
    assert_eq!(c.server.port, 3333); // CLI beats everything
    assert_eq!(c.server.workers, 3); // env beats file
    assert_eq!(c.history.size, 9);
    assert_eq!(c.history.on_join, 7); // file beats defaults
    let (code, out, _) = output(&["check-config"], &[("CHATD_CONFIG", path)]);
    assert_eq!(code, Some(0));
    assert!(out.contains("OK"));
}

/// The repo's chat.toml is valid, documents every key, and its values are the real defaults.
#[test]
fn shipped_chat_toml_documents_every_default() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/chat.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let parsed = Config::from_toml_str(&text).expect("chat.toml is valid");
    assert_eq!(
        parsed,
        Config::default(),
        "chat.toml values differ from the built-in defaults"
    );
    fn keys(v: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
        if let toml::Value::Table(t) = v {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(key.clone());
                keys(v, &key, out);
            }
        }
    }
    let (mut shipped, mut all) = (BTreeSet::new(), BTreeSet::new());
    keys(&toml::from_str(&text).unwrap(), "", &mut shipped);
    keys(
        &toml::Value::try_from(Config::default()).unwrap(),
        "",
        &mut all,
    );
    assert_eq!(
        shipped, all,
        "chat.toml must list exactly the configuration keys"
    );
}

#[test]
fn log_files_rotate_into_the_configured_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(
        &[],
        &[("CHATD_LOG__DIRECTORY", dir.path().to_str().unwrap())],
    );
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(name.starts_with("chatd.log."), "{name}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert!(first["fields"]["message"].is_string(), "{first}");
    assert!(text.contains("shutdown complete"), "{text}");
}

#[tokio::test]
async fn sigterm_delivers_accepted_messages_then_closes_1001_and_exits_0() {
    const MESSAGES: usize = 50;
    let mut d = Daemon::start(&[], &[("CHATD_LIMITS__RATE_PER_SEC", "0")]);
    let mut alice = Client::connect(d.addr).await;
    alice.hello("alice").await;
    let mut others = Vec::new();
    for name in ["bob", "carol", "dave"] {
        let mut c = Client::connect(d.addr).await;
        c.hello(name).await;
        others.push(c);
    }
    for i in 0..MESSAGES {
        alice
            .send(json!({"type": "say", "text": format!("m{i}")}))
            .await;
    }
    let mut acks = 0;
    while acks < MESSAGES {
        if alice.recv().await["type"] == "ack" {
            acks += 1;
        }
    }
    let signalled = std::time::Instant::now();
    d.signal("TERM");
    others.push(alice);
    for (i, c) in others.iter_mut().enumerate() {
        let sender = i == 3;
        let mut got = 0;
        loop {
            let v = c.recv().await;
            match v["type"].as_str() {
                Some("message") => {
                    assert_eq!(v["text"], format!("m{got}"));
                    got += 1;
                }
                Some("notice") => break,
                _ => {}
            }
        }
        let expected = if sender { 0 } else { MESSAGES };
        assert_eq!(
            got, expected,
            "messages acked before SIGTERM must be delivered"
        );
        let (code, reason) = c.closed().await;
        assert_eq!(code, 1001, "{reason}");
    }
    assert_eq!(d.wait_exit(Duration::from_secs(6)), Some(0));
    println!("shutdown with 4 clients took {:?}", signalled.elapsed());
    let logs: Vec<String> = d.lines.try_iter().collect();
    assert!(
        logs.iter()
            .any(|l| l.contains("shutdown started") && l.contains("\"connections\":4")),
        "{logs:?}"
    );
    assert!(
        logs.iter().any(|l| l.contains("shutdown complete")),
        "{logs:?}"
    );
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let mut d = Daemon::start(&[], &[("CHATD_SERVER__SHUTDOWN_GRACE_SECS", "30")]);
    // A client that never answers the close handshake holds shutdown open.
    let mut c = Client::connect(d.addr).await;
    c.hello("alice").await;
    d.signal("TERM");
    assert_eq!(c.expect("notice").await["from"], "server");
    // Don't answer the close: read nothing more. Then the second signal.
    d.signal("INT");
    assert_eq!(d.wait_exit(Duration::from_secs(5)), Some(130));
}

/// Under systemd or compose (stdout not a terminal, JSON logs) every line chatd prints, the
/// startup lines included, is one JSON object, so `jq` and log pipelines read it from line 1.
#[test]
fn json_stdout_parses_line_by_line() {
    let mut d = Daemon::start(&[], &[("CHATD_LOG__LEVEL", "debug")]);
    let mut lines = d.startup.clone();
    {
        let mut c = crate::helpers::SyncClient::join(d.addr, "jq");
        c.send(json!({"type": "say", "room": "lobby", "text": "hi", "id": "1"}));
        c.recv_until(|v| v["ref"] == "1");
    }
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
    lines.extend(d.lines.try_iter());
    assert!(lines.len() >= 4, "{lines:?}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        assert!(v["fields"]["message"].is_string(), "{line}");
    }
    let text: Vec<String> = lines.iter().map(|l| crate::helpers::line_text(l)).collect();
    assert!(
        text.iter()
            .any(|t| t == "no config file: the defaults and CHATD_* variables"),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.starts_with("Admin endpoints on http://")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|t| t.contains("shutdown complete")),
        "{text:?}"
    );
}

/// Every key of the configuration, given a value of the wrong type in a file, is refused in
/// the operator's terms: the key, what it must be, what was found, and the file and line.
#[test]
fn every_key_with_a_wrong_type_gets_a_readable_error() {
    let defaults = toml::Value::try_from(Config::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chat.toml");
    let mut checked = 0;
    for (section, table) in defaults.as_table().unwrap() {
        for (key, value) in table.as_table().unwrap() {
            // A value of another type than the default's.
            let wrong = match value {
                toml::Value::String(_) => "[1, 2]",
                toml::Value::Array(_) => "\"not a list\"",
                toml::Value::Boolean(_) => "\"maybe\"",
                _ => "\"a string\"",
            };
            std::fs::write(&file, format!("# chatd\n[{section}]\n{key} = {wrong}\n")).unwrap();
            // (Nothing from the environment: the test helpers' CHATD_STORAGE__PATH would win.)
            let out = crate::helpers::chatd_command_with_defaults()
                .args(["--config", file.to_str().unwrap(), "check-config"])
                .output()
                .unwrap();
            let (code, err) = (out.status.code(), String::from_utf8_lossy(&out.stderr));
            assert_eq!(code, Some(78), "{section}.{key} = {wrong}: {err}");
            let at = format!("`{section}.{key}` must be ");
            let place = format!("({} line 3)", file.display());
            assert!(
                err.contains(&at) && err.contains(&place),
                "{section}.{key} = {wrong}: {err}"
            );
            assert!(
                !err.contains("default.") && !err.contains("expected u"),
                "{err}"
            );
            checked += 1;
        }
    }
    assert!(checked > 60, "{checked} keys");
}
