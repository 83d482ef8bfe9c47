#!/usr/bin/env python3
"""Runs chatd's deployments for real, as a user would: `docker compose` (single node, the TLS
overlay, the cluster profile) on a real Docker engine, and the systemd unit under a real systemd.

The engine is private to this test: its own dockerd (data root, exec root and socket under the
cache directory), stopped by pid at the end; never the system's. No image registry is reachable
here, so every image the Dockerfile and compose file name is first built as a stand-in: a Debian
bookworm root from debootstrap plus exactly the packages of the official image (tests/deploy/
standins/, each Dockerfile says what the official image holds), tagged with the official name.
Stand-ins are cached in the engine's data root, rebuilt only when their recipe changes.

Only what this machine cannot give is overridden (a generated compose file): published ports move
to free loopback ports, and `nofile` is capped at the host's hard limit. Everything else (images,
commands, volumes, environment) is the repository's own.

Usage: scripts/deploy-test.py [--keep-engine | --drop-cache] [--measure-rebuild] [--only STEP[,STEP]]
--drop-cache deletes the engine's data root at the end (CI: a fresh machine gains nothing from the
cached layers, and the rest of the run needs the disk).
Environment: CHATD_DEPLOY_CACHE (default ~/.cache/chatd-deploy), CHATD_DEPLOY_TESTS=skip (where a
Docker engine cannot run: say so and pass; CI never sets it).
Steps: engine, standins, build, single, overlays (TLS, tokens), cluster, systemd. Each prints `== name`, and a failure
prints `FAILED: name: why` with the logs that explain it, and exits 1.
"""

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


from deploy_support import (
    build_standins,
    CACHE,
    check,
    Client,
    Engine,
    ensure_venv,
    Failed,
    http_get,
    Lines,
    log,
    pem_to_der,
    PROJECT,
    Project,
    REPO,
    run,
    served_certificate,
    STANDIN_TAGS,
    texts_of,
    tls_context,
    wait_for,
)

class Deploy:
    def __init__(self, engine, work, figures, measure_rebuild):
        self.measure_rebuild = measure_rebuild
        self.engine = engine
        self.work = work
        self.project = Project(engine, work)
        self.figures = figures
        self.chatctl = None

    def host_chatctl(self):
        """chatctl as the image built it, copied out (the host needs no Rust toolchain)."""
        if not self.chatctl:
            out = self.work / "bin"
            out.mkdir(exist_ok=True)
            cid = self.engine.docker("create", "chatd:local").stdout.strip()
            for b in ("chatd", "chatctl"):
                self.engine.docker("cp", f"{cid}:/usr/local/bin/{b}", str(out / b))
            self.engine.docker("rm", cid)
            self.chatctl = out / "chatctl"
        return self.chatctl

    def step_build(self):
        p = self.project
        p.write_override()
        started = time.monotonic()
        p.compose("build", timeout=3600)
        self.figures["docker compose build"] = f"{time.monotonic() - started:.0f} s"
        size = self.engine.docker("image", "inspect", "--format", "{{.Size}}", "chatd:local").stdout.strip()
        self.figures["image size"] = f"{int(size) / 1e6:.1f} MB"
        if not self.measure_rebuild:
            self.host_chatctl()
            return
        # A one-line source edit rebuilds only chatd itself (the dependencies have their layer).
        lib = p.dir / "src" / "lib.rs"
        original = lib.read_text()
        lib.write_text(original + "\n// deploy-test: a one-line edit\n")
        started = time.monotonic()
        p.compose("build", timeout=3600)
        self.figures["build after a one-line edit"] = f"{time.monotonic() - started:.0f} s"
        lib.write_text(original)
        p.compose("build", timeout=3600)
        self.host_chatctl()

    def step_single(self):
        p = self.project
        log("  -- up: chatd healthy, Prometheus beside it")
        started = time.monotonic()
        p.compose("up", "-d")
        p.wait_healthy("chatd")
        self.figures["single node healthy after up"] = f"{time.monotonic() - started:.0f} s"
        chat = f"ws://127.0.0.1:{p.port('chatd', 8000)}"

        log("  -- a line through the published port")
        alice = Client(chat, "alice")
        bob = Client(chat, "bob")
        nonce = f"kept across down and up {time.time_ns()}"
        ack = alice.say(nonce)
        check(ack.get("type") == "ack", f"say was not acknowledged: {ack}")
        bob.sees(nonce)

        log("  -- chatctl inside the container (docker compose exec chatd chatctl connect)")
        out = p.compose("exec", "-T", "chatd", "chatctl", "connect", "carol",
                        input="hello from inside the container\n", timeout=60)
        check("hello from inside the container" in out.stdout, f"chatctl printed: {out.stdout} {out.stderr}")
        bob.sees("hello from inside the container")

        log("  -- the page on GET /, /metrics on the admin port")
        status, body = http_get(f"http://127.0.0.1:{p.port('chatd', 8000)}/")
        check(status == 200 and "<html" in body.lower(), f"GET / gave {status}")
        status, metrics = http_get(f"http://127.0.0.1:{p.port('chatd', 8002)}/metrics")
        check(status == 200 and "chatd_connections_open" in metrics, f"/metrics gave {status}")
        check(re.search(r'chatd_messages_received_total\{type="say"\} [1-9]', metrics), "say not counted")

        log("  -- Prometheus scrapes chatd, and only what runs")
        prom = f"http://127.0.0.1:{p.port('prometheus', 9090)}"

        def targets():
            status, body = http_get(f"{prom}/api/v1/targets")
            active = json.loads(body)["data"]["activeTargets"] if status == 200 else []
            return active if active and all(t["health"] == "up" for t in active) else None

        active = wait_for("every Prometheus target up", targets, 60, 2)
        check({t["labels"]["instance"] for t in active} == {"chatd:8002"},
              f"the single-node Prometheus scrapes {[t['labels']['instance'] for t in active]}")
        status, body = http_get(f"{prom}/api/v1/rules")
        names = {r["name"] for g in json.loads(body)["data"]["groups"] for r in g["rules"]}
        check({"ChatdDown", "ChatdRedisDown", "ChatdCertificateExpiring"} <= names, f"rules: {names}")

        log("  -- docker compose stop chatd: close 1001 for a client, exit 0")
        started = time.monotonic()
        stopper = threading.Thread(target=lambda: p.compose("stop", "chatd"))
        stopper.start()
        from websockets.exceptions import ConnectionClosed
        code = None
        try:
            while True:
                bob.recv(20)
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else None
        except TimeoutError:
            pass
        closed_after = time.monotonic() - started
        stopper.join()
        check(code == 1001, f"the client got close {code}, not 1001")
        exit_code = self.engine.docker("inspect", "--format", "{{.State.ExitCode}}", p.container("chatd")).stdout.strip()
        check(exit_code == "0", f"chatd exited {exit_code} on docker compose stop")
        self.figures["close 1001 after docker compose stop"] = f"{closed_after:.2f} s"
        alice.close()

        log("  -- down and up: history kept (named volume)")
        p.compose("down")
        p.compose("up", "-d")
        p.wait_healthy("chatd")
        dave = Client(chat, "dave")
        history = [m.get("text") for m in dave.welcome.get("history", [])]
        check(nonce in history, f"history after down + up: {history[-5:]}")
        dave.close()

        log("  -- Prometheus keeps its data across down and up (named volume)")
        # After a scrape, Prometheus has samples; after down + up the old series are still there.
        def scraped_before():
            status, body = http_get(f"{prom}/api/v1/query?query=count_over_time(up[1h])")
            result = json.loads(body)["data"]["result"] if status == 200 else []
            return result and float(result[0]["value"][1]) >= 2
        wait_for("Prometheus samples from before down + up", scraped_before, 60, 2)
        p.compose("down")

    def step_overlays(self):
        p = self.project
        log("  -- chatd cert (from the image) into deploy/certs, key for uid 65532")
        certs = p.dir / "deploy" / "certs"
        certs.mkdir(exist_ok=True)
        make = ["run", "--rm", "--user", "0", "-v", f"{certs}:/out", "--entrypoint", "/usr/local/bin/chatd",
                "chatd:local", "cert", "--host", "localhost", "--host", "127.0.0.1", "--out", "/out"]
        self.engine.docker(*make)
        os.chown(certs / "key.pem", 65532, 65532)
        os.chmod(certs / "key.pem", 0o400)
        files = ("docker-compose.yml", "deploy/compose.tls.yml")
        p.compose("up", "-d", files=files)
        p.wait_healthy("chatd")
        ca = certs / "ca.pem"
        wss = f"wss://localhost:{p.port('chatd', 8443)}"
        ws = f"ws://127.0.0.1:{p.port('chatd', 8000)}"
        log("  -- wss:// and ws:// are one chat")
        secure = Client(wss, "erin", ssl_context=tls_context(ca))
        plain = Client(ws, "frank")
        secure.say("said over wss")
        plain.sees("said over wss")
        log("  -- a renewed certificate is served after docker compose kill -s HUP")
        before = served_certificate("127.0.0.1", p.port("chatd", 8443), ca)
        check(before == pem_to_der((certs / "cert.pem").read_text()), "the served certificate is not cert.pem")
        os.chmod(certs / "key.pem", 0o600)
        self.engine.docker(*make, "--force")
        os.chown(certs / "key.pem", 65532, 65532)
        os.chmod(certs / "key.pem", 0o400)
        p.compose("kill", "-s", "HUP", "chatd", files=files)
        renewed = pem_to_der((certs / "cert.pem").read_text())
        wait_for("the renewed certificate served",
                 lambda: served_certificate("127.0.0.1", p.port("chatd", 8443), ca) == renewed, 15)
        check(renewed != before, "chatd cert --force made the same certificate")
        secure.say("still here after the reload")
        plain.sees("still here after the reload")
        secure.close()
        plain.close()
        p.compose("down", files=files)

        log("  -- token mode: a compose secret, a token minted by docker compose exec chatd chatd token")
        secrets = p.dir / "deploy" / "secrets"
        secrets.mkdir(exist_ok=True)
        secret = secrets / "token-secret"
        secret.write_text(os.urandom(36).hex() + "\n")
        os.chown(secret, 65532, 65532)
        os.chmod(secret, 0o400)
        files = ("docker-compose.yml", "deploy/compose.tokens.yml")
        p.compose("up", "-d", files=files)
        p.wait_healthy("chatd")
        token = p.compose("exec", "-T", "chatd", "chatd", "token", "gina", files=files).stdout.strip()
        check(token.count(".") == 2, f"chatd token printed {token!r}")
        gina = Client(ws, "gina", token=token)
        gina.say("signed in with a token")
        from websockets.sync.client import connect
        with connect(ws, open_timeout=10) as anon:
            anon.send(json.dumps({"type": "hello", "name": "gina", "id": "h"}))
            reply = json.loads(anon.recv(10))
            check(reply.get("code") == "unauthorized", f"a hello without a token got {reply}")
        gina.close()
        p.compose("down", files=files)

    def step_cluster(self):
        p = self.project
        cluster = ("cluster",)
        log("  -- up with the cluster profile: both nodes healthy")
        started = time.monotonic()
        p.compose("up", "-d", profiles=cluster)
        p.wait_healthy("chatd-a", "chatd-b", "redis", "postgres")
        self.figures["cluster healthy after up"] = f"{time.monotonic() - started:.0f} s"
        balancer = f"ws://127.0.0.1:{p.port('balancer', 8100)}"
        chatctl = str(self.host_chatctl())

        log("  -- a line said on chatd-a reaches a client on chatd-b")
        on_b = Lines([p.compose_bin, "-p", PROJECT, "-f", "docker-compose.yml", "-f", p.override.name,
                      "--profile", "cluster", "exec", "-T", "chatd-b", "chatctl", "--json", "connect", "bea"],
                     env=self.engine.env, cwd=p.dir)
        on_b.wait_line(lambda l: '"welcome"' in l, "bea's welcome on chatd-b")
        out = p.compose("exec", "-T", "chatd-a", "chatctl", "connect", "abe", input="across the nodes\n",
                        profiles=cluster, timeout=60)
        check("across the nodes" in out.stdout, f"chatctl on chatd-a printed {out.stdout} {out.stderr}")
        on_b.wait_line(lambda l: "across the nodes" in l, "the line from chatd-a on chatd-b")

        def stored(where):
            out = p.compose("exec", "-T", "postgres", "psql", "-U", "chatd", "-d", "chatd", "-Atc",
                            f"SELECT count(*) FROM messages WHERE {where}", profiles=cluster)
            return int(out.stdout.strip() or 0)
        log("  -- what chatd-a acknowledged is in the cluster's PostgreSQL")
        wait_for("the line from chatd-a in PostgreSQL", lambda: stored("text = 'across the nodes'") == 1, 30, 0.5)

        log("  -- the balancer routes clients to ready nodes")
        via = [Lines([chatctl, "--url", balancer, "--json", "connect", f"viewer{i}"]) for i in range(4)]
        for i, v in enumerate(via):
            v.wait_line(lambda l: '"welcome"' in l, f"viewer{i}'s welcome through the balancer")
        members = p.compose("exec", "-T", "redis", "sh", "-c",
                            "REDISCLI_AUTH=$(cat /acl/admin-password) redis-cli ZRANGE chatd:members:lobby 0 -1",
                            profiles=cluster).stdout.split()
        log("  -- the cluster's Redis refuses anyone without the password")
        refused = p.compose("exec", "-T", "redis", "redis-cli", "GET", "chatd:msgid", profiles=cluster, ok=False)
        check("NOAUTH" in refused.stdout + refused.stderr, f"redis-cli without a password got {refused.stdout}")
        as_node = p.compose("exec", "-T", "redis", "sh", "-c",
                            "REDISCLI_AUTH=$(cat /acl/admin-password) redis-cli ACL DRYRUN chatd FLUSHALL",
                            profiles=cluster).stdout
        check("no permissions" in as_node, f"the nodes' user may FLUSHALL: {as_node}")
        nodes = {m.split("|")[0] for m in members if m.split("|")[-1].startswith("viewer")}
        check(nodes == {"chatd-a", "chatd-b"}, f"the balancer put the viewers on {nodes}")
        log("  -- Prometheus for the cluster scrapes both nodes")
        prom = f"http://127.0.0.1:{p.port('prometheus-cluster', 9090)}"

        def targets_up():
            status, body = http_get(f"{prom}/api/v1/targets")
            active = json.loads(body)["data"]["activeTargets"] if status == 200 else []
            return len(active) == 2 and all(t["health"] == "up" for t in active)
        wait_for("both cluster targets up", targets_up, 60, 2)

        log("  -- docker compose kill chatd-a: its clients resume on chatd-b without a gap")
        sender = Lines([p.compose_bin, "-p", PROJECT, "-f", "docker-compose.yml", "-f", p.override.name,
                        "--profile", "cluster", "exec", "-T", "chatd-b", "chatctl", "connect", "counter"],
                       env=self.engine.env, cwd=p.dir)
        sender.wait_line(lambda l: "lobby" in l or "counter" in l, "the counter's first line", 20)
        total = 60
        for n in range(1, total + 1):
            sender.send(f"n{n}")
            if n == 20:
                p.compose("kill", "chatd-a", profiles=cluster)
                killed = time.monotonic()
            time.sleep(0.1)
        sender.wait_line(lambda l: l.endswith(f"n{total}"), "the counter's last line acknowledged", 30)
        want = [f"n{n}" for n in range(1, total + 1)]
        for i, v in enumerate(via):
            def complete(v=v):
                got = [t for t in texts_of(v.lines) if t and re.fullmatch(r"n\d+", t)]
                return got if set(want) <= set(got) else None
            got = wait_for(f"viewer{i} has n1..n{total}", complete, 60, 0.5)
            dups = sorted({t for t in got if got.count(t) > 1})
            check(not dups, f"viewer{i} got these twice: {dups}")
            check(got == want, f"viewer{i} got them out of order: {got}")
        self.figures["resumed after docker compose kill chatd-a"] = f"{time.monotonic() - killed:.1f} s"
        log("  -- every acknowledged line of the counter is stored, none twice")
        wait_for("n1..n60 in PostgreSQL", lambda: stored("text ~ '^n[0-9]+$'") == total, 30, 0.5)

        log("  -- ChatdDown fires for the killed node")
        def alert():
            status, body = http_get(f"{prom}/api/v1/alerts")
            alerts = json.loads(body)["data"]["alerts"] if status == 200 else []
            return [a for a in alerts if a["labels"]["alertname"] == "ChatdDown"
                    and a["labels"].get("instance") == "chatd-a:8002"]
        wait_for("ChatdDown for chatd-a (pending or firing)", alert, 60, 2)
        sender.stop()
        for v in via:
            v.stop()
        on_b.stop()
        p.compose("start", "chatd-a", profiles=cluster)
        p.wait_healthy("chatd-a")

        log("  -- Redis stops: both nodes answer `unavailable` (or `unconfirmed`); it starts: both recover")
        probes = {}
        for node in ("chatd-a", "chatd-b"):
            probes[node] = Lines([p.compose_bin, "-p", PROJECT, "-f", "docker-compose.yml", "-f", p.override.name,
                                  "--profile", "cluster", "exec", "-T", node, "chatctl", "--json", "connect",
                                  f"probe-{node[-1]}"], env=self.engine.env, cwd=p.dir)
            probes[node].wait_line(lambda l: '"welcome"' in l, f"probe on {node} welcomed")
        p.compose("stop", "redis", profiles=cluster)
        for node, probe in probes.items():
            probe.send(f"while redis is away {node}")
            # `unconfirmed` when the line was already on its way to the Redis that went away.
            probe.wait_line(lambda l: '"unavailable"' in l or '"unconfirmed"' in l,
                            f"`unavailable` or `unconfirmed` on {node} while Redis is stopped", 30)
        p.compose("start", "redis", profiles=cluster)
        p.wait_healthy("chatd-a", "chatd-b", timeout=60)
        for node, probe in probes.items():
            def acked(node=node, probe=probe):
                probe.send(f"redis is back {node} {time.monotonic_ns()}")
                time.sleep(1)
                return any('"ack"' in l and '"seq"' in l for l in probe.lines)
            wait_for(f"{node} acknowledges again after Redis is back", acked, 40, 0.1)
            probe.stop()
        p.compose("down", profiles=cluster)

    def step_systemd(self):
        chatd_bin = self.work / "bin" / "chatd"
        self.host_chatctl()
        name = "chatd-deploy-systemd"
        self.engine.docker("rm", "-f", name, ok=False, quiet=True)
        log("  -- a minimal Debian host booted with systemd as PID 1")
        self.engine.docker(
            "run", "-d", "--name", name, "--cap-add", "SYS_ADMIN",
            "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
            "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run", "--tmpfs", "/run/lock",
            STANDIN_TAGS["systemd-host"])

        def sh(script, ok=True, timeout=120):
            return self.engine.docker("exec", name, "sh", "-ec", script, ok=ok, timeout=timeout)

        def state():
            return sh("systemctl is-system-running || true").stdout.strip()
        wait_for("systemd running", lambda: state() in ("running", "degraded"), 60)
        # Docker mounts the container's /run (a tmpfs) private; on a host systemd's /run propagates
        # mounts, and LoadCredential= needs that (its ramfs is made in a child namespace and moved
        # into /run/credentials). Not a change to the unit: the container made like a host.
        sh("mount --make-rshared /run")
        try:
            self._systemd(name, sh, chatd_bin)
        except Failed:
            log(sh("journalctl -u chatd --no-pager -n 60 || true", ok=False).stdout)
            raise
        finally:
            self.engine.docker("rm", "-f", name, ok=False, quiet=True)

    def _systemd(self, name, sh, chatd_bin):
        log("  -- installed as deploy/README.md says")
        src = "/root/chatd"
        self.engine.docker("cp", str(self.project.dir), f"{name}:{src}")
        sh(f"mkdir -p {src}/target/release")
        for b in ("chatd", "chatctl"):
            self.engine.docker("cp", str(self.work / "bin" / b), f"{name}:{src}/target/release/{b}")
        # Nested user namespaces cannot be made in this container: the one test-only relaxation.
        sh(f"install -D -m 0644 {src}/tests/deploy/systemd-test-only.conf "
           "/etc/systemd/system/chatd.service.d/zz-test-only.conf")
        readme = (REPO / "deploy" / "README.md").read_text()
        block = re.search(r"## systemd\n```sh\n(.*?)```", readme, re.S)
        check(block, "deploy/README.md has no systemd block")
        steps = [l for l in block.group(1).splitlines() if l.strip() and not l.startswith("#")]
        for line in steps:
            line = re.sub(r"\s+#.*$", "", line).replace("sudo ", "")
            if line.startswith("cargo build"):
                continue  # the image built the binaries
            sh(f"cd {src} && {line}", timeout=120)
        check(sh("systemctl is-active chatd", ok=False).stdout.strip() == "active", "chatd is not active")
        check(sh("command -v chatctl").stdout.strip(), "chatctl is not installed")

        log("  -- chat with chatctl on the host")
        out = sh("printf 'hello from systemd\\n' | chatctl connect henry")
        check("hello from systemd" in out.stdout, f"chatctl printed {out.stdout}")
        journal = sh("journalctl -u chatd -o cat --no-pager").stdout.splitlines()
        records = [l for l in journal if l.startswith("{")]
        check(records and all(json.loads(l) for l in records), f"journal lines: {journal[-5:]}")
        check(any("user" in json.dumps(json.loads(l)) for l in records), "no JSON log line about a user")

        log("  -- tokens and TLS from root-only files: the credentials drop-in")
        sh("chatd cert --host localhost --out /etc/chatd >/dev/null && chmod 0600 /etc/chatd/key.pem "
           "&& head -c 48 /dev/urandom | base64 > /etc/chatd/secret && chmod 0600 /etc/chatd/secret "
           "&& sed -i 's/^mode = \"open\"/mode = \"token\"/' /etc/chatd/chat.toml")
        check("mode = \"token\"" in sh("cat /etc/chatd/chat.toml").stdout, "could not turn on tokens")
        recipe = (REPO / "deploy" / "chatd.service.d" / "credentials.conf").read_text()
        for line in re.findall(r"^#   (sudo .*)$", recipe, re.M):
            sh(f"cd {src} && {line.replace('sudo ', '')}")
        check(sh("systemctl is-active chatd", ok=False).stdout.strip() == "active", "chatd with credentials is not active")
        token = sh("chatd --config /etc/chatd/chat.toml token henry --secret-file /etc/chatd/secret").stdout.strip()
        out = sh(f"chatctl --url wss://localhost:8000 --ca-cert /etc/chatd/ca.pem --token {token} "
                 "send --name henry 'over wss with a token'")
        check(out.returncode == 0, f"chatctl over wss: {out.stdout} {out.stderr}")
        denied = sh("chatctl --url wss://localhost:8000 --ca-cert /etc/chatd/ca.pem send --name henry 'no token'",
                    ok=False)
        check(denied.returncode != 0, "a hello without a token was accepted in token mode")

        log("  -- systemctl reload: chatd stays up and serves the renewed certificate")
        pid = self.engine.docker("inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
        main_pid = sh("systemctl show -p MainPID --value chatd").stdout.strip()

        def served():
            probe = ("import socket,ssl;c=ssl.create_default_context(cafile='/proc/%s/root/etc/chatd/ca.pem');"
                     "s=c.wrap_socket(socket.create_connection(('127.0.0.1',8000),timeout=5),server_hostname='localhost');"
                     "print(ssl.DER_cert_to_PEM_cert(s.getpeercert(True)))" % pid)
            return run(["nsenter", "-t", pid, "-n", sys.executable, "-c", probe]).stdout.strip()
        before = served()
        check(before.strip() == sh("cat /etc/chatd/cert.pem").stdout.strip(), "served certificate is not cert.pem")
        sh("chatd cert --host localhost --out /etc/chatd --force >/dev/null && chmod 0600 /etc/chatd/key.pem")
        reload = sh("systemctl reload chatd", ok=False)
        check(reload.returncode == 0, f"systemctl reload chatd failed: {reload.stderr}")
        renewed = sh("cat /etc/chatd/cert.pem").stdout.strip()
        check(renewed != before, "chatd cert --force made the same certificate")
        wait_for("the renewed certificate served after reload", lambda: served() == renewed, 15)
        check(sh("systemctl show -p MainPID --value chatd").stdout.strip() == main_pid, "reload restarted chatd")

        log("  -- stop is clean; a restart keeps history")
        sh("systemctl stop chatd")
        result = sh("systemctl show -p Result --value chatd").stdout.strip()
        status = sh("systemctl show -p ExecMainStatus --value chatd").stdout.strip()
        check(result == "success" and status == "0", f"stop: Result={result} ExecMainStatus={status}")
        sh("systemctl start chatd")
        out = sh(f"chatctl --url wss://localhost:8000 --ca-cert /etc/chatd/ca.pem --token {token} --json "
                 "connect henry </dev/null")
        check("hello from systemd" in out.stdout and "over wss with a token" in out.stdout,
              f"history after a restart: {out.stdout[-500:]}")

        log("  -- a configuration error is not restarted in a loop")
        sh("cp /etc/chatd/chat.toml /etc/chatd/chat.toml.good && echo 'bogus = 1' >> /etc/chatd/chat.toml")
        sh("systemctl restart chatd", ok=False)
        time.sleep(6)  # three RestartSec periods: a loop would have restarted meanwhile
        starts = sh("systemctl show -p NRestarts --value chatd").stdout.strip()
        active = sh("systemctl is-active chatd", ok=False).stdout.strip()
        check(active == "failed" and starts == "0", f"after a config error: {active}, {starts} restarts")
        check("bogus" in sh("journalctl -u chatd -o cat --no-pager -n 20").stdout, "the journal does not name the key")
        sh("mv /etc/chatd/chat.toml.good /etc/chatd/chat.toml && systemctl reset-failed chatd && systemctl start chatd")
        check(sh("systemctl is-active chatd", ok=False).stdout.strip() == "active", "chatd did not start again")


STEPS = ["engine", "standins", "build", "single", "overlays", "cluster", "systemd"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated steps (engine and standins always run)")
    parser.add_argument("--keep-engine", action="store_true", help="leave dockerd running")
    parser.add_argument("--drop-cache", action="store_true",
                        help="delete the engine's images and build cache at the end (frees gigabytes)")
    parser.add_argument("--measure-rebuild", action="store_true",
                        help="also time a rebuild after a one-line source edit")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("deploy-test: run as root (it starts its own dockerd)")
    ensure_venv()
    wanted = set(STEPS) if not args.only else {"engine", "standins", "build", *args.only.split(",")}
    figures = {}
    engine = Engine()
    current = "engine"
    started = time.monotonic()
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE))
    deploy = None
    try:
        log("== engine: a private dockerd")
        started_engine = engine.start()
        if started_engine is not True:
            msg = f"deploy-test: dockerd cannot start on this machine:\n{started_engine}"
            if os.environ.get("CHATD_DEPLOY_TESTS") == "skip":
                log(f"SKIPPED (CHATD_DEPLOY_TESTS=skip): {msg}")
                return 0
            log(f"FAILED: engine: {msg}\n(set CHATD_DEPLOY_TESTS=skip to skip where no engine can run)")
            return 1
        for current in STEPS[1:]:
            if current not in wanted:
                continue
            log(f"== {current}")
            t = time.monotonic()
            if current == "standins":
                build_standins(engine)
            else:
                if deploy is None:
                    deploy = Deploy(engine, work, figures, args.measure_rebuild)
                getattr(deploy, f"step_{current}")()
            log(f"   ok ({time.monotonic() - t:.0f} s)")
        log(f"== all passed in {time.monotonic() - started:.0f} s")
        for k, v in figures.items():
            log(f"   {k}: {v}")
        return 0
    except (Failed, subprocess.TimeoutExpired) as e:
        log(f"FAILED: {current}: {e}")
        if deploy is not None:
            with contextlib.suppress(Exception):
                log(deploy.project.logs())
        return 1
    finally:
        if deploy is not None:
            with contextlib.suppress(Exception):
                deploy.project.compose("down", "-v", "--remove-orphans", profiles=("cluster",),
                                       files=("docker-compose.yml", "deploy/compose.tls.yml",
                                              "deploy/compose.tokens.yml"), ok=False)
        if not args.keep_engine:
            engine.stop()
            if args.drop_cache:
                engine.drop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
