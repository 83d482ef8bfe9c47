#!/usr/bin/env python3
"""Side-by-side benchmark: chatd and the peer servers in ../shared/peers, same tool, same cases.

Every run starts a fresh server, drives it with `chatctl bench --json`, and stops it. Servers are
visited in a rotating order each round; tables report the median of the rounds. Results go to
bench/results.json, the tables into BENCHMARKS.md between the GENERATED markers, and the scaling
curve to bench/scaling.svg.

    cargo build --release --bins
    python3 scripts/bench-compare.py [--rounds 5] [--peers uws-js,node-ws,python-websockets,websocat]
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS_DIR = os.path.join(os.path.dirname(ROOT), "shared", "peers")
CHATD = os.path.join(ROOT, "target", "release", "chatd")
CHATCTL = os.path.join(ROOT, "target", "release", "chatctl")
# Limits a load test must lift: every chatd limit can be raised or switched off.
CHATD_ENV = {
    "CHATD_LIMITS__RATE_PER_SEC": "0",
    "CHATD_LIMITS__TYPING_RATE_PER_SEC": "0",
    "CHATD_SERVER__MAX_CONNECTIONS": "0",
    "CHATD_SERVER__MAX_CONNECTIONS_PER_IP": "0",
    "CHATD_SERVER__CONNECT_RATE_PER_IP": "0",
    "CHATD_LIMITS__MAX_ROOMS_PER_IP": "0",
    "CHATD_ADMIN__LISTEN": "",
    "CHATD_LOG__LEVEL": "warn",
}

CASES = {
    # name: (chatctl bench arguments, what the table calls it)
    "fanout100": (["--clients", "100", "--senders", "10", "--messages", "1000"], "100 clients, 10 senders"),
    "fanout1000": (["--clients", "1000", "--senders", "10", "--messages", "150"], "1,000 clients, 10 senders"),
    "paced1000": (["--clients", "1000", "--senders", "10", "--rate", "2", "--messages", "20"],
                  "1,000 clients, 10 senders x 2 msg/s"),
    # Senders pace themselves on chatd's acks (the next message goes once the last is acknowledged),
    # so the server alone decides how far a sender may run ahead of the fan-out: the harshest
    # closed loop. chatd's protocol only (peers send no acks).
    "ack100": (["--clients", "100", "--senders", "10", "--messages", "1000", "--credit", "ack"],
               "100 clients, 10 senders, paced on acks"),
    "ack1000": (["--clients", "1000", "--senders", "10", "--messages", "150", "--credit", "ack"],
                "1,000 clients, 10 senders, paced on acks"),
}
# Cases only servers speaking chatd's protocol can run.
ACK_CASES = ("ack100", "ack1000")
PROTOCOL_SERVERS = ("chatd", "chatd-base", "chatd-memory", "chatd-postgres")
# Connection rate: 1,000 clients connect (and, for chatd, say hello) and nothing is sent.
CONNECT = ["--clients", "1000", "--senders", "1", "--messages", "0"]
# chatd's users join rooms, and every join is announced to the room: "rooms of 10" spreads them over
# 100 rooms (what a chat service usually looks like), "one room" puts all 1,000 in one.
CONNECT_ROOMS = ["--rooms", "100"]
TLS_PEERS = {"node-ws-tls": "node-ws", "uws-js-tls": "uws-js"}
# --pin: the server on CPU 0 and the load generator on CPU 1, so they never share a core.
PIN = False


def psql():
    """Debian keeps psql in a versioned directory (and links it onto the PATH)."""
    import glob
    import shutil
    return shutil.which("psql") or sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"))[-1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, limit=120):
    deadline = time.time() + limit
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


class Server:
    """A server under test: `chatd` (protocol; history stored in a fresh database), `chatd-memory`
    (history in memory only), `chatd-plain` (its plain-text mode) or a peer."""

    def __init__(self, name, workers=1, tls=None, env=None):
        self.name, self.workers, self.tls, self.env = name, workers, tls, env or {}

    @property
    def raw_args(self):
        if self.name in PROTOCOL_SERVERS:
            return []
        if self.name == "chatd-plain":
            return ["--raw", "--name-line"]
        return ["--raw"]

    def start(self):
        self.port = free_port()
        env = dict(os.environ)
        if self.name in TLS_PEERS:
            # The Node peers over TLS (bench/peer-tls.js), with the modules their plain runs installed.
            peer = TLS_PEERS[self.name]
            env["NODE_PATH"] = os.path.join(os.environ.get("PEERS_HOME", os.path.join(
                os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "chatd-peers")), peer, "node_modules")
            cmd = ["node", os.path.join(ROOT, "bench", "peer-tls.js"), peer, str(self.port),
                   self.tls["cert"], self.tls["key"]]
        elif self.name.startswith("chatd"):
            env.update(CHATD_ENV)
            env.update(self.env)
            env["CHATD_SERVER__WORKERS"] = str(self.workers)
            if self.tls:
                env["CHATD_TLS__CERT"], env["CHATD_TLS__KEY"] = self.tls["cert"], self.tls["key"]
            binary = os.environ.get("BENCH_BASELINE_CHATD", CHATD) if self.name == "chatd-base" else CHATD
            cmd = [binary, "--port", str(self.port)]
            # Each run its own database (the default keeps history on disk), removed at stop.
            self.scratch = tempfile.mkdtemp(prefix="chatd-bench-")
            env["CHATD_STORAGE__PATH"] = "" if self.name == "chatd-memory" else os.path.join(self.scratch, "chatd.db")
            if self.name == "chatd-postgres":
                # $BENCH_POSTGRES_URL: a database of its own, emptied before each run.
                url = os.environ["BENCH_POSTGRES_URL"]
                subprocess.run([psql(), url, "-qc", "DROP SCHEMA public CASCADE; CREATE SCHEMA public"], check=True,
                               capture_output=True)
                env["CHATD_STORAGE__URL"] = url
        else:
            cmd = ["bash", os.path.join(PEERS_DIR, self.name, "start.sh"), str(self.port)]
        # Run from a scratch directory: chatd reads ./chat.toml when present, and a benchmark must
        # measure the embedded defaults plus CHATD_ENV, not whatever config sits in the checkout.
        if PIN:
            cmd = ["taskset", "-c", "0"] + cmd
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True, cwd=tempfile.gettempdir())
        wait_port(self.port, self.proc)
        return self

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        if getattr(self, "scratch", None):
            shutil.rmtree(self.scratch, ignore_errors=True)


def bench(server, args, timeout=300):
    url = f"wss://localhost:{server.port}/" if server.tls else f"ws://127.0.0.1:{server.port}/"
    trust = ["--ca-cert", server.tls["ca"]] if server.tls else []
    cmd = [CHATCTL, "--url", url] + trust + ["bench", "--json", "--pid", str(server.proc.pid),
           "--duration", str(timeout - 10)] + server.raw_args + args
    if PIN:
        cmd = ["taskset", "-c", "1"] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not out.stdout.strip():
        raise RuntimeError(f"{server.name} {args}: {out.stderr.strip()}")
    report = json.loads(out.stdout)
    report["cmd"] = " ".join(["chatctl"] + cmd[1:3] + server.raw_args + args)
    report["lost"] = report["expected"] - report["received"]
    return report


def make_certs():
    """A throwaway CA and a localhost certificate, made with the openssl CLI."""
    d = tempfile.mkdtemp(prefix="chatd-bench-tls-")
    f = {k: os.path.join(d, f"{k}.pem") for k in ("ca", "cakey", "cert", "key", "csr")}
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f["cakey"], "-out", f["ca"], "-days", "2", "-subj", "/CN=chatd bench CA")
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f["key"], "-out", f["csr"], "-subj", "/CN=localhost")
    ext = os.path.join(d, "ext.cnf")
    open(ext, "w").write("subjectAltName=DNS:localhost\n")
    run("openssl", "x509", "-req", "-in", f["csr"], "-CA", f["ca"], "-CAkey", f["cakey"], "-CAcreateserial",
        "-out", f["cert"], "-days", "2", "-extfile", ext)
    return f


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def settled_rss(pid, limit=15.0, steady=1.5):
    """The server's RSS once the clients have gone: read until it has not changed for `steady`
    seconds (the server closes their connections after the load generator exits, and its
    allocator gives pages back over about a second)."""
    last, since, deadline = rss_kib(pid), time.time(), time.time() + limit
    while time.time() < deadline and time.time() - since < steady:
        time.sleep(0.25)
        now = rss_kib(pid)
        if now != last:
            last, since = now, time.time()
    return last


def run_one(name, args, workers=1, tls=None, env=None):
    server = Server(name, workers, tls, env).start()
    try:
        report = bench(server, args)
        report["rss_after_leave_kib"] = settled_rss(server.proc.pid)
        return report
    finally:
        server.stop()


# Idle memory shapes: chatd's users in rooms of 10, rooms of 100, or all in the default room.
SHAPES = {"chatd-rooms10": 10, "chatd-rooms100": 100, "chatd-1room": None}


def idle_args(shape, n):
    size = SHAPES.get(shape)
    return ["--clients", str(n), "--senders", "1", "--messages", "0"] + (
        ["--rooms", str(n // size)] if size else [])


def idle_memory(n, servers, rounds):
    """Idle memory for n connections, every chatd server in every shape and each peer, alternating
    rounds: {label: [reports]} (label: `chatd-rooms10`, `chatd-base-1room`, `uws-js`, ...)."""
    runs = {}
    for s in servers:
        for shape in (SHAPES if s.startswith("chatd") else [None]):
            label = s + shape[len("chatd"):] if shape else s
            runs[label] = (s, shape, [])
    for r, label in alternating(list(runs), rounds):
        server, shape, reps = runs[label]
        # At the default log level: what a connection costs depends on it (a span per
        # connection is kept when its level is enabled), and `warn` would flatter it.
        rep = run_one(server, idle_args(shape, n), env={"CHATD_LOG__LEVEL": "info"})
        reps.append(rep)
        print(f"round {r+1} idle{n} {label:22} {rep['server']['rss_per_connection_kib']:6.2f} KiB/conn, "
              f"{rep['handshakes_per_sec']:>8,.0f} conn/s, after leave {rep['rss_after_leave_kib']/1024:.1f} MiB "
              f"({rep['rss_after_leave_kib'] / rep['server']['rss_before_kib']:.3f}× the start)",
              flush=True)
    return {label: reps for label, (_, _, reps) in runs.items()}


def connect_rates(rounds, peers, tls):
    """Handshakes(+hello)/s for 1,000 clients: chatd in rooms of 10 and in one room, and each peer;
    alternating rounds. Returns {server: [reports]}."""
    runs = {"chatd-rooms": [], "chatd-1room": []} | {p: [] for p in peers}
    for r, s in alternating(list(runs), rounds):
        if s.startswith("chatd"):
            args = CONNECT + (CONNECT_ROOMS if s == "chatd-rooms" else [])
            rep = run_one("chatd", args, tls=tls)
        else:
            rep = run_one(s, CONNECT, tls=tls)
        runs[s].append(rep)
        print(f"round {r+1} {'wss' if tls else 'ws'} connect {s:18} {rep['handshakes_per_sec']:>10,.0f}/s",
              flush=True)
    return runs


def alternating(names, rounds):
    """(round, name) for every name in every round, starting one name later each round, so no server
    always runs first (or right after the same neighbour)."""
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            yield r, name


def run_case(case, servers, rounds):
    """One throughput case for every server in alternating rounds: {server: [reports]}."""
    if case in ACK_CASES:
        servers = [s for s in servers if s in PROTOCOL_SERVERS]
    runs = {s: [] for s in servers}
    for r, s in alternating(servers, rounds):
        rep = run_one(s, CASES[case][0])
        runs[s].append(rep)
        print(f"round {r+1} {case:10} {s:18} {rep['deliveries_per_sec']:>12,.0f}/s p99 "
              f"{rep['latency_us']['p99']:>7} us lost {rep['lost']}", flush=True)
    return runs


def median(values):
    return statistics.median(values) if values else float("nan")


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}"


def fmt(n):
    return f"{n:,.0f}"


def svg_plot(points, path):
    """A dependency-free line chart: deliveries/s (left axis) and p99 latency (right axis)."""
    w, h, pad = 640, 360, 60
    xs = [p[0] for p in points]
    thr = [p[1] for p in points]
    p99 = [p[2] / 1000 for p in points]
    import math
    lx = lambda x: pad + (math.log10(x) - math.log10(min(xs))) / (math.log10(max(xs)) - math.log10(min(xs))) * (w - 2 * pad)
    ymax_t, ymax_l = max(thr) * 1.15, max(p99) * 1.15
    yt = lambda v: h - pad - v / ymax_t * (h - 2 * pad)
    yl = lambda v: h - pad - v / ymax_l * (h - 2 * pad)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{w/2}" y="20" text-anchor="middle" font-size="14">chatd: one room, 10 senders, inflight 1</text>',
             f'<line x1="{pad}" y1="{h-pad}" x2="{w-pad}" y2="{h-pad}" stroke="black"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h-pad}" stroke="#1f77b4"/>',
             f'<line x1="{w-pad}" y1="{pad}" x2="{w-pad}" y2="{h-pad}" stroke="#d62728"/>',
             f'<text x="{w/2}" y="{h-15}" text-anchor="middle">clients in the room (log scale)</text>',
             f'<text x="15" y="{h/2}" transform="rotate(-90 15 {h/2})" text-anchor="middle" fill="#1f77b4">deliveries/s</text>',
             f'<text x="{w-12}" y="{h/2}" transform="rotate(90 {w-12} {h/2})" text-anchor="middle" fill="#d62728">p99 latency (ms)</text>']
    for x in xs:
        parts.append(f'<text x="{lx(x)}" y="{h-pad+16}" text-anchor="middle">{x:,}</text>')
    for i in range(5):
        v = ymax_t * i / 4
        parts.append(f'<text x="{pad-5}" y="{yt(v)+4}" text-anchor="end" fill="#1f77b4">{v/1e6:.1f}M</text>')
        v = ymax_l * i / 4
        parts.append(f'<text x="{w-pad+5}" y="{yl(v)+4}" fill="#d62728">{v:.1f}</text>')
    parts.append('<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="' +
                 " ".join(f"{lx(x)},{yt(t)}" for x, t in zip(xs, thr)) + '"/>')
    parts.append('<polyline fill="none" stroke="#d62728" stroke-width="2" stroke-dasharray="5,3" points="' +
                 " ".join(f"{lx(x)},{yl(l)}" for x, l in zip(xs, p99)) + '"/>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--peers", default="uws-js,node-ws,python-websockets,websocat")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--cases", help="only these throughput cases (of " + ",".join(CASES) + ", connect, or idleN: "
                    "idle memory of N connections in every room shape): print medians, write nothing (A/B checks)")
    ap.add_argument("--servers", default="chatd,chatd-plain",
                    help="chatd variants to run; chatd-base runs the binary in $BENCH_BASELINE_CHATD")
    ap.add_argument("--pin", action="store_true",
                    help="run the server on CPU 0 and chatctl bench on CPU 1 (taskset)")
    opts = ap.parse_args()
    global PIN
    PIN = opts.pin
    if opts.cases:
        return quick([c for c in opts.cases.split(",") if c], opts)
    peers = [p for p in opts.peers.split(",") if p]
    servers = ["chatd", "chatd-plain"] + peers
    results = {"date": datetime.date.today().isoformat(), "machine": machine(), "rounds": opts.rounds,
               "throughput": {}, "memory": {}, "scaling": [], "workers": {}}

    for case in CASES:
        results["throughput"][case] = run_case(case, servers, opts.rounds)

    results["connect"] = connect_rates(opts.rounds, [p for p in peers if p != "websocat"], tls=None)
    # Over wss://, against the Node peers served over TLS by bench/peer-tls.js.
    certs = make_certs()
    tls_peers = [t for t, p in TLS_PEERS.items() if p in peers]
    results["wss_connect"] = connect_rates(opts.rounds, tls_peers, tls=certs)

    if not opts.skip_memory:
        for n in (5000, 10000):
            results["memory"][str(n)] = idle_memory(n, ["chatd"] + peers, max(1, opts.rounds // 2 + 1))

    if not opts.skip_scaling:
        points = [(10, ["--messages", "20000"]), (100, ["--messages", "2000"]), (1000, ["--messages", "300"]),
                  (5000, ["--messages", "60"])]
        for clients, extra in points:
            reps = [run_one("chatd", ["--clients", str(clients), "--senders", "10"] + extra) for _ in range(3)]
            results["scaling"].append({"clients": clients, "rooms": 1, "runs": reps})
            print(f"scaling {clients} {median([r['deliveries_per_sec'] for r in reps]):,.0f}/s", flush=True)
        reps = [run_one("chatd", ["--clients", "1000", "--senders", "10", "--rooms", "100", "--messages", "20000"])
                for _ in range(3)]
        results["scaling"].append({"clients": 1000, "rooms": 100, "runs": reps})
        for workers in (1, 2):
            reps = [run_one("chatd", CASES["fanout1000"][0], workers) for _ in range(3)]
            results["workers"][str(workers)] = reps
            print(f"workers {workers} {median([r['deliveries_per_sec'] for r in reps]):,.0f}/s", flush=True)

    os.makedirs(os.path.join(ROOT, "bench"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    write_markdown(results, servers, peers)


def quick(cases, opts):
    """Only the named throughput cases, medians printed, nothing written: for A/B checks."""
    servers = [s for s in opts.servers.split(",") if s] + [p for p in opts.peers.split(",") if p]
    for case in cases:
        if case.startswith("idle"):
            runs = idle_memory(int(case[len("idle"):]), servers, opts.rounds)
            for label, reps in runs.items():
                kib = median([r["server"]["rss_per_connection_kib"] for r in reps])
                rate = median([r["handshakes_per_sec"] for r in reps])
                after = median([r["rss_after_leave_kib"] for r in reps]) / 1024
                ratio = median([r["rss_after_leave_kib"] / r["server"]["rss_before_kib"] for r in reps])
                print(f"median {case:10} {label:22} {kib:6.2f} KiB/conn {rate:>8,.0f} conn/s "
                      f"after leave {after:.1f} MiB ({ratio:.3f}× the start)", flush=True)
            continue
        if case == "connect":
            runs = connect_rates(opts.rounds, [p for p in opts.peers.split(",") if p], tls=None)
            for label, reps in runs.items():
                rate = median([r["handshakes_per_sec"] for r in reps])
                print(f"median connect    {label:22} {rate:>8,.0f} handshakes+hello/s", flush=True)
            continue
        runs = run_case(case, servers, opts.rounds)
        for s in runs:
            dps = median([r["deliveries_per_sec"] for r in runs[s]])
            p99 = median([r["latency_us"]["p99"] for r in runs[s]]) / 1000
            print(f"median {case:10} {s:18} {dps:>12,.0f}/s p99 {p99:.2f} ms", flush=True)


def write_markdown(results, servers, peers):
    lines = [f"Measured {results['date']} on {results['machine']}; median of {results['rounds']} alternating "
             f"rounds, each run against a freshly started server; load generator and server share the cores.", ""]
    t = results["throughput"]
    lines += ["| server | " + " | ".join(CASES[c][1] + " (deliveries/s)" for c in ("fanout100", "fanout1000")) +
              " | vs uWS.js | p99 at 1,000 paced (ms) | lost |",
              "|---|---|---|---|---|---|"]
    uws = {c: median([r["deliveries_per_sec"] for r in t[c].get("uws-js", [])]) for c in ("fanout100", "fanout1000")}
    for s in servers:
        d = {c: median([r["deliveries_per_sec"] for r in t[c][s]]) for c in ("fanout100", "fanout1000")}
        ratio = " / ".join(f"{d[c]/uws[c]:.2f}x" if uws[c] == uws[c] else "-" for c in ("fanout100", "fanout1000"))
        p99 = median([r["latency_us"]["p99"] for r in t["paced1000"][s]]) / 1000
        lost = sum(r["lost"] for c in t for r in t[c].get(s, []))
        lines.append(f"| {s} | {fmt(d['fanout100'])} | {fmt(d['fanout1000'])} | {ratio} | {p99:.2f} | {lost} |")
    if results.get("connect"):
        labels = {"chatd-rooms": "chatd (rooms of 10)", "chatd-1room": "chatd (one room of 1,000)",
                  "node-ws-tls": "node-ws", "uws-js-tls": "uws-js"}
        lines += ["", "Connection rate: 1,000 clients connect at once (chatd: and say `hello`, get `welcome`, and "
                  "are announced to their room), median of the rounds. wss:// is TLS 1.3 with an ECDSA P-256 "
                  "certificate; the Node peers serve it through `bench/peer-tls.js`.", "",
                  "| server | ws:// handshakes+hello/s | wss:// handshakes+hello/s |", "|---|---|---|"]
        plain, tls = results["connect"], results.get("wss_connect", {})
        tls_by_peer = {TLS_PEERS.get(k, k): v for k, v in tls.items()}
        for s in plain:
            cells = [median([r["handshakes_per_sec"] for r in runs]) if runs else float("nan")
                     for runs in (plain[s], tls_by_peer.get(s, []))]
            lines.append(f"| {labels.get(s, s)} | " + " | ".join(fmt(c) if c == c else "-" for c in cells) + " |")
    lines += ["", "Saturated tail: the same closed loops (each sender keeps one message in flight until every "
              "receiver has it), p50 / p99 in ms; and chatd with senders pacing themselves on acks instead "
              "(`--credit ack`: a sender may run as far ahead of the fan-out as the server lets it).", "",
              "| server | 100 clients p50 / p99 | 1,000 clients p50 / p99 | paced on acks, 100: deliveries/s, p99 "
              "| paced on acks, 1,000: deliveries/s, p99 |", "|---|---|---|---|---|"]
    for s in servers:
        cells = []
        for c in ("fanout100", "fanout1000"):
            p50 = median([r["latency_us"]["p50"] for r in t[c][s]]) / 1000
            p99 = median([r["latency_us"]["p99"] for r in t[c][s]]) / 1000
            cells.append(f"{p50:.2f} / {p99:.2f}")
        for c in ACK_CASES:
            runs = t.get(c, {}).get(s, [])
            cells.append(f"{fmt(median([r['deliveries_per_sec'] for r in runs]))}, "
                         f"{median([r['latency_us']['p99'] for r in runs]) / 1000:.2f} ms" if runs else "-")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Every round of every case, as `deliveries/s` (sorted):")
    lines.append("")
    for c in ("fanout100", "fanout1000"):
        for s in servers:
            vals = sorted(r["deliveries_per_sec"] for r in t[c][s])
            lines.append(f"- {c} {s}: " + ", ".join(fmt(v) for v in vals))
    lines += ["", "Paced p99 (ms) in every round, sorted:", ""]
    for s in servers:
        vals = sorted(r["latency_us"]["p99"] / 1000 for r in t["paced1000"][s])
        lines.append(f"- paced1000 {s}: " + ", ".join(f"{v:.2f}" for v in vals))
    if results["memory"]:
        lines += ["", "Idle memory: server RSS growth per connection once every client is connected (chatd: after "
                  "`hello`, in rooms of 10, rooms of 100, or all in `lobby`; peers: after the upgrade), the "
                  "connection rate of that run, and the server's RSS once every client has gone; medians.", "",
                  "| server | 5,000: KiB/conn | conn/s | RSS after (MiB) | 10,000: KiB/conn | conn/s | RSS after (MiB) |",
                  "|---|---|---|---|---|---|---|"]
        labels = {"chatd-rooms10": "chatd (rooms of 10)", "chatd-rooms100": "chatd (rooms of 100)",
                  "chatd-1room": "chatd (everyone in lobby)"}
        for s in list(labels) + peers:
            cells = []
            for n in ("5000", "10000"):
                reps = results["memory"].get(n, {}).get(s) or []
                if not reps:
                    cells += ["-"] * 3
                    continue
                cells += [f"{median([r['server']['rss_per_connection_kib'] for r in reps]):.2f}",
                          fmt(median([r["handshakes_per_sec"] for r in reps])),
                          f"{median([r['rss_after_leave_kib'] for r in reps]) / 1024:.1f}"]
            lines.append(f"| {labels.get(s, s)} | " + " | ".join(cells) + " |")
    if results["scaling"]:
        lines += ["", "Scaling (chatd protocol, 10 senders, inflight 1, median of 3):", "",
                  "| clients | rooms | deliveries/s | p50 (ms) | p99 (ms) | server CPU us/delivery |", "|---|---|---|---|---|---|"]
        points = []
        for sc in results["scaling"]:
            runs = sc["runs"]
            dps = median([r["deliveries_per_sec"] for r in runs])
            p50 = median([r["latency_us"]["p50"] for r in runs]) / 1000
            p99 = median([r["latency_us"]["p99"] for r in runs]) / 1000
            cpu = median([r["server"]["cpu_us_per_delivery"] for r in runs])
            lines.append(f"| {sc['clients']:,} | {sc['rooms']} | {fmt(dps)} | {p50:.2f} | {p99:.2f} | {cpu:.2f} |")
            if sc["rooms"] == 1:
                points.append((sc["clients"], dps, p99 * 1000))
        svg_plot(points, os.path.join(ROOT, "bench", "scaling.svg"))
        lines += ["", "![scaling](bench/scaling.svg)"]
    if results["workers"]:
        lines += ["", "Runtime workers (`server.workers`), 1,000 clients / 10 senders, median of 3:", ""]
        for w, reps in results["workers"].items():
            lines.append(f"- workers = {w}: {fmt(median([r['deliveries_per_sec'] for r in reps]))} deliveries/s, "
                         f"p99 {median([r['latency_us']['p99'] for r in reps])/1000:.1f} ms")
    path = os.path.join(ROOT, "BENCHMARKS.md")
    text = open(path).read() if os.path.exists(path) else "<!-- GENERATED -->\n<!-- /GENERATED -->\n"
    begin, end = "<!-- GENERATED -->", "<!-- /GENERATED -->"
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    with open(path, "w") as f:
        f.write(head + begin + "\n" + "\n".join(lines) + "\n" + end + tail)
    print("wrote BENCHMARKS.md and bench/results.json")


if __name__ == "__main__":
    sys.exit(main())
