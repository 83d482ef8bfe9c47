//! A bot that needs no WebSocket: it posts a deploy message through chatd's HTTP API (with an
//! idempotency key, so a retry after a timeout never posts twice), then prints the room's last
//! messages.
//!
//!     chatd apikey create --name deploybot --scopes say,history:read --rooms deploys > key
//!     CHATD_API_KEY=$(cat key) cargo run --example deploy_bot -- http://127.0.0.1:8003 deploys "1.4.2 is live"

use std::time::Duration;

use serde_json::{Value, json};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(api), Some(room), Some(text)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: deploy_bot API_URL ROOM TEXT   (the key in CHATD_API_KEY)");
        std::process::exit(2);
    };
    let key = std::env::var("CHATD_API_KEY").map_err(|_| "set CHATD_API_KEY")?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()?;
    let messages = format!("{api}/v1/rooms/{room}/messages");
    // The same key on every try: however often it is retried, it is said once.
    let body = json!({"text": text, "idempotency_key": format!("deploy:{text}")});
    let mut delay = Duration::from_millis(500);
    let said: Value = loop {
        let tried = http
            .post(&messages)
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        match tried {
            Ok(r) if r.status().is_success() => break serde_json::from_slice(&r.bytes().await?)?,
            // Busy, rate-limited or timed out: wait as told (or back off), and retry.
            Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
                let wait = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .map_or(delay, Duration::from_secs);
                eprintln!("{}: retrying in {wait:?}", r.status());
                tokio::time::sleep(wait).await;
            }
            Ok(r) => {
                let status = r.status();
                let error: Value = serde_json::from_slice(&r.bytes().await?).unwrap_or_default();
                return Err(format!("{status}: {}", error["error"]["message"]).into());
            }
            Err(e) => {
                eprintln!("{e}: retrying in {delay:?}");
                tokio::time::sleep(delay).await;
            }
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    };
    println!(
        "said #{} (seq {}) at {}",
        said["id"], said["seq"], said["ts"]
    );
    let page = http
        .get(format!("{messages}?limit=5"))
        .bearer_auth(&key)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let page: Value = serde_json::from_slice(&page)?;
    for m in page["messages"].as_array().into_iter().flatten() {
        println!(
            "{} <{}> {}",
            m["ts"].as_str().unwrap_or(""),
            m["from"].as_str().unwrap_or(""),
            m["text"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
