//! The admin listener: `GET /metrics` (Prometheus text format), `GET /healthz` (the process is alive)
//! and `GET /readyz` (accepting chat connections; 503 from the moment shutdown begins). Anything else
//! is 404. Requests are tiny and bounded (8 KiB of headers, 5 s), one short task each.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::metrics::Metrics;

/// Longest request head accepted.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Time allowed to send a request and read the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What `/readyz` reports: not ready once shutdown began, or while a backend (the database) fails.
#[derive(Clone)]
pub(crate) struct Ready {
    /// Cancelled when shutdown begins.
    pub draining: CancellationToken,
    /// Whether the backends work.
    pub backends: std::sync::Arc<dyn Fn() -> bool + Send + Sync>,
}

/// Serves admin requests until `stop` is cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    draining: Ready,
    stop: CancellationToken,
) {
    let tracker = TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => break,
            res = listener.accept() => match res {
                Ok(conn) => conn,
                Err(e) => {
                    debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (metrics, draining) = (metrics.clone(), draining.clone());
        tracker.spawn(async move {
            let _ =
                tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &metrics, &draining)).await;
        });
    }
    tracker.close();
    tracker.wait().await;
}

async fn answer(mut stream: TcpStream, metrics: &Metrics, ready: &Ready) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
        if !plausible_request_line(&head) {
            // Binary junk, a TLS ClientHello: no HTTP request will follow, so say so now rather
            // than wait out the timeout.
            return respond(&mut stream, "400 Bad Request", "text/plain", "not HTTP\n").await;
        }
        if head.len() > MAX_REQUEST_BYTES {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request too large\n",
            )
            .await;
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    // Absolute form (`GET http://host:8002/metrics`, as proxies send it) names the same path.
    let target = ["http://", "https://"]
        .iter()
        .find_map(|scheme| target.strip_prefix(scheme.as_bytes()))
        .map(|rest| {
            let start = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
            &rest[start..]
        })
        .unwrap_or(target);
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let head_only = method == b"HEAD";
    if method != b"GET" && method != b"HEAD" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n",
        )
        .await;
    }
    let (status, content_type, body) = match path {
        b"/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        b"/healthz" => ("200 OK", "text/plain", "ok\n".into()),
        b"/readyz" if ready.draining.is_cancelled() => (
            "503 Service Unavailable",
            "text/plain",
            "shutting down\n".into(),
        ),
        b"/readyz" if !(ready.backends)() => (
            "503 Service Unavailable",
            "text/plain",
            "storage is failing (see the log and chatd_storage_errors_total)\n".into(),
        ),
        b"/readyz" => ("200 OK", "text/plain", "ready\n".into()),
        _ => ("404 Not Found", "text/plain", "not found\n".into()),
    };
    // HEAD: the same head, no body (RFC 9110 §9.3.2).
    let body = if head_only { String::new() } else { body };
    respond(&mut stream, status, content_type, &body).await
}

/// Whether `head` can still be the start of an HTTP request: a method of capital letters, then a
/// space (HTTP/1.x; methods are at most 16 characters here).
fn plausible_request_line(head: &[u8]) -> bool {
    let method_end = head.iter().position(|&b| b == b' ').unwrap_or(head.len());
    (method_end > 0 || head.is_empty())
        && method_end <= 16
        && head[..method_end].iter().all(u8::is_ascii_uppercase)
        && (method_end < head.len() || head.len() <= 16)
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    response.push_str(body);
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
