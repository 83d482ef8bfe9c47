#!/bin/bash
# Fan-out with one connection per user against three (BENCHMARKS.md, "Accounts"): token mode,
# one node, history in memory, 10 senders in one room, closed loop; 3 alternating rounds of each,
# at 1,000 and at 100 clients.
#   cargo build --release --bins && scripts/bench-sessions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SECRET=$(mktemp)
trap 'rm -f "$SECRET"' EXIT
echo "bench-secret-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$SECRET"
for clients in 1000 100; do
  for round in 1 2 3; do
    for spu in 1 3; do
      port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
      CHATD_AUTH__MODE=token CHATD_AUTH__SECRET_FILE=$SECRET CHATD_STORAGE__PATH= \
        CHATD_LIMITS__RATE_PER_SEC=0 CHATD_SERVER__MAX_CONNECTIONS=0 \
        CHATD_SERVER__MAX_CONNECTIONS_PER_IP=0 CHATD_SERVER__CONNECT_RATE_PER_IP=0 \
        CHATD_ADMIN__LISTEN= CHATD_LOG__LEVEL=warn target/release/chatd --port "$port" >/dev/null 2>&1 &
      pid=$!
      for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
      msgs=$([ "$clients" = 1000 ] && echo 150 || echo 2000)
      target/release/chatctl --url "ws://127.0.0.1:$port" bench --json --secret-file "$SECRET" \
        --sessions-per-user "$spu" --clients "$clients" --senders 10 --messages "$msgs" |
        python3 -c 'import json,sys; r=json.load(sys.stdin); print("clients=%s spu=%s deliveries/s=%.0f p50=%dus p99=%dus received=%d/%d" % (sys.argv[1], sys.argv[2], r["deliveries_per_sec"], r["latency_us"]["p50"], r["latency_us"]["p99"], r["received"], r["expected"]))' "$clients" "$spu"
      kill "$pid"; wait "$pid" 2>/dev/null || true
    done
  done
done
