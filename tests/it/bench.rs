//! `chatctl bench` against the real binary and against fake Socket.IO nodes: no loss, a clean
//! exit on a closed pipe, clients spread over nodes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::Request;

use crate::helpers::{Daemon, chatctl_command};

#[test]
fn bench_runs_a_tiny_case_without_loss() {
    let d = Daemon::start(&[], &[("CHATD_LIMITS__RATE_PER_SEC", "0")]);
    for mode in [
        &[][..],
        &["--raw", "--name-line"][..],
        &["--rooms", "2", "--inflight", "4"][..],
        // Senders paced on the server's acks rather than on deliveries.
        &["--credit", "ack", "--inflight", "2"][..],
        // Lean clients from three loopback source addresses (the upgrade done by the bench).
        &["--lean", "--sources", "3"][..],
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
        let expected = if mode.contains(&"--rooms") {
            2 * 2 * 25
        } else {
            2 * 5 * 25
        };
        let report = bench_without_loss(&out, expected, &format!("{mode:?}"));
        assert!(report["latency_us"]["p50"].as_u64().unwrap() > 0);
    }
    // Raw servers send no acks: pacing on them is refused in words, not left to hang.
    let out = chatctl_command()
        .args(["--url", &format!("ws://{}", d.addr), "bench", "--raw"])
        .args(["--credit", "ack", "--clients", "2", "--senders", "1"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--credit ack needs the chatd protocol"),
        "{stderr}"
    );
}

/// `chatctl bench … | head -c0`: the report's reader is gone before it is written; that is not a
/// panic, and the exit code still says how the run went.
#[test]
fn bench_report_to_a_closed_pipe_exits_cleanly() {
    let d = Daemon::start(&[], &[("CHATD_LIMITS__RATE_PER_SEC", "0")]);
    let mut child = chatctl_command()
        .args(["--url", &format!("ws://{}", d.addr), "bench"])
        .args(["--clients", "3", "--senders", "1", "--messages", "5"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A `chatctl bench --json` run that exited 0 having delivered all `expected` messages, in order;
/// its report.
fn bench_without_loss(out: &std::process::Output, expected: u64, what: &str) -> serde_json::Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{what}: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["expected"], expected, "{what}: {report}");
    assert_eq!(report["received"], expected, "{what}: {report}");
    assert_eq!(report["out_of_order"], 0, "{what}: {report}");
    report
}

/// What two Socket.IO nodes on one Redis look like to their clients, faked: Engine.IO's `open`
/// packet, a ping the client must answer, the namespace join (`40`), and every `42` event relayed
/// to every other client of either node.
#[allow(clippy::result_large_err)] // tungstenite's handshake callback returns its own error type
async fn fake_socketio_nodes() -> (Vec<String>, Arc<[AtomicUsize; 2]>, Arc<AtomicUsize>) {
    type Peers = Arc<Mutex<Vec<(usize, mpsc::Sender<String>)>>>;
    let peers: Peers = Arc::default();
    let joined: Arc<[AtomicUsize; 2]> = Arc::default();
    let pongs = Arc::new(AtomicUsize::new(0));
    let mut urls = Vec::new();
    let next_id = Arc::new(AtomicUsize::new(0));
    for node in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("ws://{}/", listener.local_addr().unwrap()));
        let (peers, joined, pongs, next_id) = (
            peers.clone(),
            joined.clone(),
            pongs.clone(),
            next_id.clone(),
        );
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (peers, joined, pongs) = (peers.clone(), joined.clone(), pongs.clone());
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut path = String::new();
                    let mut ws = tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, res| {
                        path = req.uri().to_string();
                        Ok(res)
                    })
                    .await
                    .unwrap();
                    assert_eq!(path, "/socket.io/?EIO=4&transport=websocket");
                    ws.send(Message::text(r#"0{"sid":"s","pingInterval":25000}"#))
                        .await
                        .unwrap();
                    ws.send(Message::text("2")).await.unwrap();
                    let (tx, mut rx) = mpsc::channel::<String>(100_000);
                    loop {
                        tokio::select! {
                            frame = ws.next() => {
                                let Some(Ok(Message::Text(t))) = frame else { return };
                                match t.as_str() {
                                    "3" => { pongs.fetch_add(1, Ordering::Relaxed); }
                                    "40" => {
                                        peers.lock().unwrap().push((id, tx.clone()));
                                        joined[node].fetch_add(1, Ordering::Relaxed);
                                        ws.send(Message::text(r#"40{"sid":"n"}"#)).await.unwrap();
                                    }
                                    event if event.starts_with("42") => {
                                        for (other, to) in peers.lock().unwrap().iter() {
                                            if *other != id {
                                                to.try_send(event.to_string()).unwrap();
                                            }
                                        }
                                    }
                                    other => panic!("unexpected frame {other:?}"),
                                }
                            }
                            Some(event) = rx.recv() => {
                                if ws.send(Message::text(event)).await.is_err() { return }
                            }
                        }
                    }
                });
            }
        });
    }
    (urls, joined, pongs)
}

/// `--socketio` speaks Socket.IO to the Socket.IO peer, and `--node` spreads the clients
/// round-robin over the nodes of one service.
#[tokio::test]
async fn bench_speaks_socketio_and_spreads_clients_over_nodes() {
    let (urls, joined, pongs) = fake_socketio_nodes().await;
    let mut cmd = chatctl_command();
    cmd.args(["--url", &urls[0], "bench", "--socketio", "--node", &urls[1]])
        .args(["--clients", "6", "--senders", "2", "--messages", "25"])
        .args(["--json", "--duration", "20"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    bench_without_loss(&out, 2 * 5 * 25, "socketio");
    let per_node: Vec<usize> = joined.iter().map(|n| n.load(Ordering::Relaxed)).collect();
    assert_eq!(per_node, [3, 3], "clients spread over both nodes");
    assert_eq!(
        pongs.load(Ordering::Relaxed),
        6,
        "every client answered Engine.IO's ping"
    );
}
