//! A webhook receiver: checks each delivery's signature (HMAC-SHA256 of `TIMESTAMP.BODY` with
//! the endpoint's secret, compared in constant time) and its age (refusing replays older than
//! five minutes), skips events it has seen (by `id`: a retried delivery repeats them), and
//! prints the rest.
//!
//!     WEBHOOK_SECRET='at least 16 bytes' cargo run --example webhook_receiver -- 127.0.0.1:9000
//!
//! with, in chat.toml (a receiver on loopback needs allow_private):
//!
//!     [webhooks]
//!     allow_private = true
//!     [[webhooks.endpoints]]
//!     url = "http://127.0.0.1:9000/"
//!     secret = "at least 16 bytes"
//!     events = ["message", "mention", "join", "leave"]

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use subtle::ConstantTimeEq;

/// Ids seen lately (a bounded window: deliveries are retried within the sender's retry window).
struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let secret = std::env::var("WEBHOOK_SECRET").map_err(|_| "set WEBHOOK_SECRET")?;
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("listening on http://{addr}/");
    let seen = Arc::new(Mutex::new(Seen {
        ids: HashSet::new(),
        order: VecDeque::new(),
    }));
    loop {
        let (stream, _) = listener.accept().await?;
        let (secret, seen) = (secret.clone(), seen.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (secret, seen) = (secret.clone(), seen.clone());
                async move { Ok::<_, Infallible>(receive(request, &secret, &seen).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn receive(
    request: Request<hyper::body::Incoming>,
    secret: &str,
    seen: &Mutex<Seen>,
) -> Response<Full<Bytes>> {
    let answer = |status: StatusCode| {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = status;
        r
    };
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (timestamp, signature) = (header("x-chatd-timestamp"), header("x-chatd-signature"));
    let Ok(body) = request.into_body().collect().await.map(|b| b.to_bytes()) else {
        return answer(StatusCode::BAD_REQUEST);
    };
    let expected = format!(
        "sha256={}",
        chatd::webhooks::signature(secret.as_bytes(), &timestamp, &body)
    );
    if !bool::from(expected.as_bytes().ct_eq(signature.as_bytes())) {
        eprintln!("refused: bad signature");
        return answer(StatusCode::UNAUTHORIZED);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let sent: u64 = timestamp.parse().unwrap_or(0);
    if now.abs_diff(sent) > 300 {
        eprintln!("refused: a stale delivery (a replay?)");
        return answer(StatusCode::UNAUTHORIZED);
    }
    let Ok(delivery) = serde_json::from_slice::<Value>(&body) else {
        return answer(StatusCode::BAD_REQUEST);
    };
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    for event in delivery["events"].as_array().into_iter().flatten() {
        let id = event["id"].as_str().unwrap_or("").to_string();
        if !seen.ids.insert(id.clone()) {
            continue; // a retry repeats what was delivered already
        }
        seen.order.push_back(id);
        if seen.order.len() > 100_000
            && let Some(old) = seen.order.pop_front()
        {
            seen.ids.remove(&old);
        }
        println!("{event}");
    }
    answer(StatusCode::OK)
}
