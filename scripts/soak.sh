#!/usr/bin/env bash
# Soak: CLIENTS clients (rooms of 100) chatting at a steady rate for MINUTES minutes. Prints
# deliveries, end-to-end p99, server RSS and open fds every minute, and passes if nothing was lost
# and RSS and fds level off (minute MINUTES within 10% / 5 fds of minute 2; the send phase runs
# 30 s past the last report so teardown is not measured). Not part of `cargo test`
# (it takes MINUTES minutes). Usage: [CLIENTS=2000] [MINUTES=5] scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
CHATD=$(realpath "${CHATD:-target/release/chatd}")
CHATCTL=$(realpath "${CHATCTL:-target/release/chatctl}")
CLIENTS=${CLIENTS:-2000}
MINUTES=${MINUTES:-5}
ROOMS=$((CLIENTS / 100))
SENDERS=$((ROOMS * 2))
RATE=5
mkdir -p target
rm -f target/soak-chatd.db target/soak-chatd.db-wal target/soak-chatd.db-shm
port=$(free_port)
env -i PATH=/usr/bin:/bin \
    CHATD_LIMITS__RATE_PER_SEC=0 CHATD_SERVER__MAX_CONNECTIONS=0 CHATD_SERVER__MAX_CONNECTIONS_PER_IP=0 \
    CHATD_SERVER__CONNECT_RATE_PER_IP=0 CHATD_LIMITS__MAX_ROOMS_PER_IP=0 CHATD_ADMIN__LISTEN= CHATD_LOG__LEVEL=warn \
    CHATD_STORAGE__PATH=target/soak-chatd.db "$CHATD" --port "$port" > target/soak-chatd.log 2>&1 &
chatd=$!
trap 'kill $chatd 2>/dev/null || true' EXIT
wait_port "$port"
echo "soak: $CLIENTS clients in $ROOMS rooms, $SENDERS senders x $RATE msg/s, $MINUTES min"
"$CHATCTL" --url "ws://127.0.0.1:$port" bench --clients "$CLIENTS" --rooms "$ROOMS" --senders "$SENDERS" \
  --rate "$RATE" --messages $((RATE * (60 * MINUTES + 30))) --report-every 60 --pid "$chatd" \
  --duration $((60 * MINUTES + 120)) --json > target/soak-report.json
python3 - "$MINUTES" <<'PY'
import json, sys
r = json.load(open("target/soak-report.json"))
iv = r["intervals"]
print(f"total: {r['received']} of {r['expected']} deliveries, p99 {r['latency_us']['p99']/1000:.2f} ms, "
      f"max {r['latency_us']['max']/1000:.1f} ms")
for i in iv:
    print(f"  minute {i['at_secs']/60:.0f}: {i['deliveries']} deliveries, p99 {i['p99_us']/1000:.2f} ms, "
          f"RSS {i['rss_kib']} KiB, fds {i['fds']}")
ok = r["received"] == r["expected"] and r["out_of_order"] == 0
if len(iv) >= 3:
    ok = ok and iv[-1]["rss_kib"] <= iv[1]["rss_kib"] * 1.10 and abs(iv[-1]["fds"] - iv[1]["fds"]) <= 5
print("soak: PASS" if ok else "soak: FAIL")
sys.exit(0 if ok else 1)
PY
