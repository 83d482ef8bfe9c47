#!/bin/bash
# What webhooks cost the chat (BENCHMARKS.md, "Webhooks"): one node, 100 clients in one room,
# 10 senders; paced (10 msg/s each) and saturated (closed loop); 3 alternating rounds of three
# shapes: no webhook, a receiver that takes every delivery (200 at once), and one that accepts
# connections and never answers. Every message is an event for the endpoint.
#   cargo build --release --bins && scripts/bench-webhooks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT
free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
receiver() { # MODE PORT: "ok" answers 200 at once, "never" reads and never answers
  python3 - "$1" "$2" <<'PY' &
import socket, sys, threading
mode, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port)); s.listen(128)
def serve(c):
    buf = b""
    while True:
        data = c.recv(65536)
        if not data: return
        buf += data
        while b"\r\n\r\n" in buf:
            head, rest = buf.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"): length = int(line.split(b":")[1])
            if len(rest) < length: break
            buf = rest[length:]
            if mode == "ok": c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
}
run() { # SHAPE CASE ARGS...
  local shape=$1 case=$2; shift 2
  local port hook
  port=$(free); hook=$(free)
  cat > "$DIR/chat.toml" <<TOML
[webhooks]
allow_private = true
TOML
  if [ "$shape" != none ]; then
    receiver "$shape" "$hook"; rpid=$!
    cat >> "$DIR/chat.toml" <<TOML
[[webhooks.endpoints]]
name = "bench"
url = "http://127.0.0.1:$hook/"
secret = "bench-secret-0123456789"
events = ["message"]
TOML
  fi
  CHATD_CONFIG=$DIR/chat.toml CHATD_STORAGE__PATH= CHATD_LIMITS__RATE_PER_SEC=0 \
    CHATD_SERVER__MAX_CONNECTIONS_PER_IP=0 CHATD_SERVER__CONNECT_RATE_PER_IP=0 \
    CHATD_ADMIN__LISTEN=127.0.0.1:$(free) CHATD_LOG__LEVEL=warn \
    target/release/chatd --port "$port" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
  target/release/chatctl --url "ws://127.0.0.1:$port" bench --json --clients 100 --senders 10 "$@" |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print("%-5s %-9s deliveries/s=%7.0f p50=%5dus p99=%6dus max=%6dus received=%d/%d" % (sys.argv[1], sys.argv[2], r["deliveries_per_sec"], r["latency_us"]["p50"], r["latency_us"]["p99"], r["latency_us"]["max"], r["received"], r["expected"]))' "$shape" "$case"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  if [ "$shape" != none ]; then kill "$rpid"; wait "$rpid" 2>/dev/null || true; fi
}
for round in 1 2 3; do
  for shape in none ok never; do
    run "$shape" paced --rate 10 --messages 200
    run "$shape" saturated --messages 2000
  done
done
