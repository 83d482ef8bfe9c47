#!/usr/bin/env bash
# RFC 6455 conformance with Autobahn|Testsuite (wstest -m fuzzingclient) against chatd's diagnostic
# echo endpoint, which runs over the same connection code, limits and close-code mapping as chat.
#
#   run 1 "large":      cases 1-10 with limits.max_message_bytes = 20 MB (enough for the 9.* cases)
#   run 2 "production": cases 1-10 with the default 64 KiB limit; every case whose message is larger
#                       must end with the server's close 1009
#
# Writes autobahn/summary.json (committed) and fails if any case is worse than
# autobahn/expected.json allows. Usage: scripts/autobahn.sh [path/to/chatd]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
CHATD=$(realpath "${1:-target/release/chatd}")
VENV=$(realpath -m "${AUTOBAHN_VENV:-target/autobahn-venv}")
WORK=target/autobahn
mkdir -p "$WORK" autobahn

if [ ! -x "$VENV/bin/wstest" ]; then
  echo "-- installing autobahntestsuite (Python 2.7) into $VENV"
  export PYENV_VERSION=2.7.18
  python2.7 -m pip install -q virtualenv==20.15.1
  python2.7 -m virtualenv -q "$VENV"
  "$VENV/bin/pip" install -q autobahntestsuite
  unset PYENV_VERSION
fi

run() {
  local name=$1 limit=$2 port
  port=$(free_port)
  echo "-- run $name: limits.max_message_bytes=$limit on port $port"
  # exec: $! must be chatd itself, or the TERM below stops only the subshell and chatd lingers.
  (cd "$WORK" && exec env -i PATH=/usr/bin:/bin \
      CHATD_DIAGNOSTICS__ECHO_PATH=/echo \
      CHATD_LIMITS__MAX_MESSAGE_BYTES="$limit" \
      CHATD_LIMITS__OUTBOUND_QUEUE_BYTES=$((4 * limit)) \
      CHATD_STORAGE__QUEUE_BYTES=$((4 * limit)) \
      CHATD_STORAGE__PATH= \
      CHATD_SERVER__MAX_CONNECTIONS_PER_IP=0 \
      CHATD_SERVER__CONNECT_RATE_PER_IP=0 \
      CHATD_ADMIN__LISTEN= \
      CHATD_LOG__LEVEL=warn \
      "$CHATD" --port "$port" > "chatd-$name.log" 2>&1) &
  local pid=$!
  wait_port "$port" 200 "$pid" || { cat "$WORK/chatd-$name.log"; exit 1; }
  cat > "$WORK/fuzzingclient-$name.json" <<EOF
{
  "outdir": "./reports-$name",
  "servers": [{"agent": "chatd", "url": "ws://127.0.0.1:$port/echo"}],
  "cases": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "8.*", "9.*", "10.*"],
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
EOF
  (cd "$WORK" && timeout 1800 "$VENV/bin/wstest" -m fuzzingclient -s "fuzzingclient-$name.json" > "wstest-$name.log" 2>&1) || {
    kill "$pid" 2>/dev/null; tail -20 "$WORK/wstest-$name.log"; exit 1;
  }
  kill -TERM "$pid"
  wait "$pid" || true
}

run large 20000000
run production 65536

python3 - <<'PY'
import json, sys
def load(name):
    return json.load(open(f"target/autobahn/reports-{name}/index.json"))["chatd"]
large, prod = load("large"), load("production")
def key(c):
    return [int(x) for x in c.split(".")]
summary = {"large": {}, "production": {}}
for run, cases in (("large", large), ("production", prod)):
    for case in sorted(cases, key=key):
        r = cases[case]
        summary[run][case] = {"behavior": r["behavior"], "behaviorClose": r["behaviorClose"],
                              "remoteCloseCode": r.get("remoteCloseCode")}
counts = {}
for run in summary:
    for r in summary[run].values():
        counts.setdefault(run, {}).setdefault(r["behavior"], 0)
        counts[run][r["behavior"]] += 1
summary["counts"] = counts
json.dump(summary, open("autobahn/summary.json", "w"), indent=1, sort_keys=True)
print("counts:", json.dumps(counts))

expected = json.load(open("autobahn/expected.json"))
rank = {"OK": 0, "INFORMATIONAL": 1, "NON-STRICT": 2, "UNIMPLEMENTED": 3, "WRONG CODE": 4, "UNCLEAN": 5, "FAILED": 6}
problems = []
# Large limits: OK everywhere except where tungstenite's own baseline allows otherwise.
for case, r in summary["large"].items():
    allowed = expected["large_allowed"].get(case, "OK")
    if rank.get(r["behavior"], 9) > rank[allowed]:
        problems.append(f"large {case}: {r['behavior']} (allowed: {allowed})")
    if rank.get(r["behaviorClose"], 9) > rank["INFORMATIONAL"]:
        problems.append(f"large {case}: close behaviour {r['behaviorClose']}")
# Production limits: whatever fits behaves as in the large run; oversize cases end in 1009.
for case in expected["oversize_cases"]:
    code = summary["production"].get(case, {}).get("remoteCloseCode")
    if code != 1009:
        problems.append(f"production {case}: closed with {code}, expected 1009")
for case, r in summary["production"].items():
    if case in expected["oversize_cases"]:
        continue
    allowed = expected["large_allowed"].get(case, "OK")
    if rank.get(r["behavior"], 9) > rank[allowed]:
        problems.append(f"production {case}: {r['behavior']} (allowed: {allowed})")
if problems:
    print("Autobahn regressions:\n  " + "\n  ".join(problems))
    sys.exit(1)
print("autobahn: all cases within the expected results")
PY
