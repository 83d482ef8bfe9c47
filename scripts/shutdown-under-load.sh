#!/usr/bin/env bash
# Shutdown under load: CLIENTS clients in one room, 10 senders at RATE msg/s each, then SIGTERM.
# Passes if every client receives close 1001, every message chatd acknowledged reached every other
# member and is in the database afterwards, and chatd exits 0 within its grace period. Usage: scripts/shutdown-under-load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
CHATD=$(realpath "${CHATD:-target/release/chatd}")
CHATCTL=$(realpath "${CHATCTL:-target/release/chatctl}")
CLIENTS=${CLIENTS:-1000}
RATE=${RATE:-50}
GRACE=10
mkdir -p target
DB=target/shutdown-chatd.db
rm -f "$DB" "$DB-wal" "$DB-shm"
port=$(free_port)
admin=$(free_port)
# chatd is this shell's direct child, so the TERM below reaches it (./chat.toml holds the defaults).
env -i PATH=/usr/bin:/bin \
    CHATD_LIMITS__RATE_PER_SEC=0 CHATD_SERVER__MAX_CONNECTIONS=0 CHATD_SERVER__MAX_CONNECTIONS_PER_IP=0 \
    CHATD_SERVER__CONNECT_RATE_PER_IP=0 CHATD_LIMITS__MAX_ROOMS_PER_IP=0 CHATD_SERVER__SHUTDOWN_GRACE_SECS=$GRACE \
    CHATD_ADMIN__LISTEN=127.0.0.1:$admin CHATD_LOG__LEVEL=info CHATD_STORAGE__PATH="$DB" \
    "$CHATD" --port "$port" > target/shutdown-chatd.log 2>&1 &
chatd=$!
wait_port "$port"
"$CHATCTL" --url "ws://127.0.0.1:$port" bench --clients "$CLIENTS" --senders 10 --rate "$RATE" \
  --messages 100000 --until-close --json --duration 120 > target/shutdown-report.json &
bench=$!
users() { python3 -c "
import urllib.request
for line in urllib.request.urlopen('http://127.0.0.1:$admin/metrics', timeout=5).read().decode().splitlines():
    if line.startswith('chatd_users_online '): print(int(float(line.split()[1])))"; }
for _ in $(seq 600); do
  [ "$(users)" = "$CLIENTS" ] && break
  sleep 0.1
done
[ "$(users)" = "$CLIENTS" ] || { echo "clients never all connected"; kill $chatd $bench; exit 1; }
sleep 2   # the load runs: messages are in flight when the signal arrives
start=$(date +%s.%N)
kill -TERM "$chatd"
set +e
wait "$chatd"; chatd_rc=$?
end=$(date +%s.%N)
wait "$bench"; bench_rc=$?
set -e
python3 - "$chatd_rc" "$bench_rc" "$start" "$end" "$CLIENTS" "$GRACE" "$DB" <<'PY'
import json, sqlite3, sys
chatd_rc, bench_rc, start, end, clients, grace = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
r = json.load(open("target/shutdown-report.json"))
c = r["shutdown"]
took = end - start
stored = sqlite3.connect(sys.argv[7]).execute("SELECT count(*) FROM messages").fetchone()[0]
print(f"stored: {stored} messages in the database after the stop ({c['acked']} acked)")
print(f"shutdown under load: {clients} clients, {c['acked']} messages acked, "
      f"{r['received']} deliveries; close 1001: {c['closed_1001']}, other: {c['closed_other']}, "
      f"dropped: {c['dropped']}; acked but not delivered to all: {c['acked_not_delivered']}; "
      f"chatd exited {chatd_rc} after {took:.2f} s (grace {grace:.0f} s)")
ok = (chatd_rc == 0 and took < grace and c["closed_1001"] == clients and c["acked_not_delivered"] == 0
      and c["acked"] > 0 and stored >= c["acked"])
sys.exit(0 if ok else 1)
PY
