#!/usr/bin/env bash
# Two chatd nodes on one fresh Redis (Debian's redis-server, no persistence), clients spread
# round-robin over both, measured with chatctl bench; the nodes and Redis are stopped after.
#
#   cargo build --release --bins
#   scripts/bench-cluster.sh CLIENTS MESSAGES [more chatctl bench options]
#   scripts/bench-cluster.sh 100 1000            # saturated: 10 senders, one message in flight
#   scripts/bench-cluster.sh 1000 20 --rate 2    # paced
#
# Node a's /metrics (the say script's round trips: chatd_redis_op_seconds{op="say"}) is saved
# to target/bench-cluster-node-a.metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
B=target/release
[ $# -ge 2 ] || { sed -n 2,11p "$0"; exit 2; }
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
RP=$(free_port); PA=$(free_port); PB=$(free_port); MA=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning >/dev/null &
REDIS=$!
pids=("$REDIS")
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
until redis-cli -p "$RP" ping >/dev/null 2>&1; do sleep 0.05; done
node() { # id port admin
  env CHATD_CLUSTER__REDIS_URL="redis://127.0.0.1:$RP/" CHATD_CLUSTER__NODE_ID="$1" \
    CHATD_LIMITS__RATE_PER_SEC=0 CHATD_LIMITS__TYPING_RATE_PER_SEC=0 CHATD_STORAGE__PATH= \
    CHATD_SERVER__MAX_CONNECTIONS=0 CHATD_SERVER__MAX_CONNECTIONS_PER_IP=0 \
    CHATD_SERVER__CONNECT_RATE_PER_IP=0 CHATD_LIMITS__MAX_ROOMS_PER_IP=0 \
    CHATD_ADMIN__LISTEN="$3" CHATD_LOG__LEVEL=warn "$B/chatd" --port "$2" >/dev/null &
  pids+=($!)
}
node a "$PA" "127.0.0.1:$MA"
node b "$PB" ""
until curl -sf "http://127.0.0.1:$MA/readyz" >/dev/null; do sleep 0.05; done
until curl -s -o /dev/null "http://127.0.0.1:$PB/"; do sleep 0.05; done
C=$1; M=$2; shift 2
"$B/chatctl" --url "ws://127.0.0.1:$PA/" bench --node "ws://127.0.0.1:$PB/" \
  --clients "$C" --senders 10 --messages "$M" "$@"
curl -s "http://127.0.0.1:$MA/metrics" > target/bench-cluster-node-a.metrics
