//! What the bench says on the wire: hand-encoded frames, payloads that carry their sender,
//! sequence number and send time, Socket.IO's framing, and the server process's RSS and CPU.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

use super::BenchOptions;

/// The first source address of `--sources` (127.1.0.0: clear of 127.0.0.1, where servers listen).
const FIRST_SOURCE: u32 = 0x7f01_0000;

/// Client `i`'s WebSocket connection to `url`: from its source address when `opts.sources` is
/// set, with small buffers (a load generator with thousands of connections should not be the
/// bottleneck; smaller still with `lean`).
async fn connect(url: &str, i: usize, opts: &BenchOptions) -> anyhow::Result<Ws> {
    let config = if opts.lean {
        WebSocketConfig::default()
            .read_buffer_size(256)
            .write_buffer_size(0)
    } else {
        WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(16 * 1024)
    };
    let connector = opts.tls.clone().map(tokio_tungstenite::Connector::Rustls);
    if opts.sources == 0 {
        let (ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(url, Some(config), true, connector)
                .await?;
        return Ok(ws);
    }
    let parsed = url::Url::parse(url).context("the URL")?;
    let server: SocketAddr = parsed
        .socket_addrs(|| None)
        .context("the URL's address")?
        .into_iter()
        .find(|a| a.ip().is_loopback() && a.is_ipv4())
        .context("--sources needs a server on 127.0.0.0/8")?;
    let source = Ipv4Addr::from(FIRST_SOURCE + (i as u32 % opts.sources));
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.into(), 0))?;
    let tcp = socket.connect(server).await?;
    tcp.set_nodelay(true)?;
    if opts.lean && parsed.scheme() == "ws" {
        return lean_upgrade(tcp, &parsed, config).await;
    }
    let (ws, _) =
        tokio_tungstenite::client_async_tls_with_config(url, tcp, Some(config), connector).await?;
    Ok(ws)
}

/// The client's upgrade by hand, with a small buffer: tungstenite's client handshake reads into
/// a 4 KiB buffer that then stays with the connection as its frame buffer.
async fn lean_upgrade(
    mut tcp: TcpStream,
    url: &url::Url,
    config: WebSocketConfig,
) -> anyhow::Result<Ws> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};
    let key = generate_key();
    let host = url.host_str().unwrap_or("127.0.0.1");
    let port = url.port_or_known_default().unwrap_or(80);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        url.path()
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    let end = loop {
        let n = tcp.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "the server closed the connection during the upgrade");
        head.extend_from_slice(&chunk[..n]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        anyhow::ensure!(head.len() < 8192, "the upgrade's answer is too long");
    };
    let text = String::from_utf8_lossy(&head[..end]);
    let status = text.lines().next().unwrap_or_default();
    anyhow::ensure!(
        status.starts_with("HTTP/1.1 101"),
        "the upgrade was refused: {status}"
    );
    let accept = derive_accept_key(key.as_bytes());
    let accepted = text.lines().any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == accept
        })
    });
    anyhow::ensure!(
        accepted,
        "the upgrade's answer has no or the wrong Sec-WebSocket-Accept"
    );
    let rest = head[end..].to_vec();
    Ok(WebSocketStream::from_partially_read(
        MaybeTlsStream::Plain(tcp),
        rest,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        Some(config),
    )
    .await)
}

/// A hello, encoded by hand: bench names and rooms need no escaping (the test below checks the
/// server parses it as the protocol's hello).
pub(super) fn hello_frame(name: &str, room: &str, token: Option<&str>) -> String {
    match token {
        Some(token) => {
            format!(r#"{{"type":"hello","name":"{name}","room":"{room}","token":"{token}"}}"#)
        }
        None => format!(r#"{{"type":"hello","name":"{name}","room":"{room}"}}"#),
    }
}

/// A say, encoded by hand on the hot path: payloads are `~`, digits, `:` and `x`, which need no
/// escaping (tested against the server's parser below).
pub(super) fn say_frame(room: &str, text: &str) -> String {
    format!(r#"{{"type":"say","room":"{room}","text":"{text}"}}"#)
}

/// `~sender:seq:sent_us~` padded with `x` to `size` bytes.
pub(super) fn payload(sender: usize, seq: u64, sent_us: u64, size: usize) -> String {
    let mut s = format!("~{sender}:{seq}:{sent_us}~");
    while s.len() < size {
        s.push('x');
    }
    s
}

/// Client `i`'s connection, ready to chat: on its node, with hello answered (chatd), the name line
/// sent (`name_line`) or Socket.IO's namespace joined.
pub(super) async fn open(
    i: usize,
    opts: &BenchOptions,
    name: &str,
    room: &str,
) -> anyhow::Result<Ws> {
    let url = &opts.urls[i % opts.urls.len()];
    if opts.socketio {
        let url = format!(
            "{}/socket.io/?EIO=4&transport=websocket",
            url.trim_end_matches('/')
        );
        let mut ws = connect(&url, i, opts).await?;
        socketio_join(&mut ws).await?;
        return Ok(ws);
    }
    let mut ws = connect(url, i, opts).await?;
    if opts.raw {
        if opts.name_line {
            ws.send(Message::text(name)).await?;
        }
        return Ok(ws);
    }
    let token = match &opts.secret {
        Some(secret) => {
            let rules = crate::auth::Rules::from_config(&crate::config::AuthConfig::default());
            let ttl = std::time::Duration::from_secs(3600);
            let role = crate::protocol::Role::User;
            Some(crate::auth::mint(secret, name, role, ttl, &rules).map_err(anyhow::Error::msg)?)
        }
        None => None,
    };
    ws.send(Message::text(hello_frame(name, room, token.as_deref())))
        .await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains(r#""type":"welcome""#) => {
                // A server at its room limits lands a hello in its default room instead.
                anyhow::ensure!(
                    t.contains(&format!(r#""room":"{room}""#)),
                    "client {i} was not let into #{room} (the server's room limits?)"
                );
                return Ok(ws);
            }
            Some(Ok(Message::Text(t))) if t.contains(r#""type":"error""#) => {
                anyhow::bail!("hello refused: {t}")
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("closed during hello"),
        }
    }
}

/// Engine.IO's ping (the server's heartbeat) and the pong it wants back within its timeout.
pub(super) const SOCKETIO_PING: &str = "2";
pub(super) const SOCKETIO_PONG: &str = "3";

/// Joins Socket.IO's default namespace (`40`) and waits until the server confirms it (`40{…}`),
/// after its Engine.IO `open` packet (`0{…}`): from then on the socket gets the room's events.
pub(super) async fn socketio_join(ws: &mut Ws) -> anyhow::Result<()> {
    ws.send(Message::text("40")).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.starts_with("40") => return Ok(()),
            Some(Ok(Message::Text(t))) if t.starts_with("44") => {
                anyhow::bail!("Socket.IO refused the connection: {t}")
            }
            Some(Ok(Message::Text(t))) if t == SOCKETIO_PING => {
                ws.send(Message::text(SOCKETIO_PONG)).await?
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("closed while joining Socket.IO's namespace"),
        }
    }
}

/// A Socket.IO event `m` carrying `text` (the payload needs no JSON escaping: `~`, digits, `:`,
/// `x`).
pub(super) fn socketio_event(text: &str) -> String {
    format!(r#"42["m","{text}"]"#)
}

/// Finds the payload header anywhere in a frame (JSON, a plain `name: text` line, or raw).
pub(super) fn parse_payload(frame: &str) -> Option<(usize, u64, u64)> {
    let start = frame.find('~')? + 1;
    let len = frame[start..].find('~')?;
    let mut parts = frame[start..start + len].split(':');
    let s = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let t = parts.next()?.parse().ok()?;
    Some((s, seq, t))
}

pub(super) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of a process, in seconds (Linux clock ticks are 100 Hz).
pub(super) fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
