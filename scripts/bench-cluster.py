#!/usr/bin/env python3
"""Cluster benchmarks: chatd nodes on one Redis against Socket.IO + its Redis adapter on the same
number of nodes, side by side, in alternating rounds, each round on a fresh Redis and fresh
nodes; medians printed (BENCHMARKS.md, "Cluster under load", quotes them).

    cargo build --release --bins
    scripts/bench-cluster.py fanout --nodes 2 --clients 100 --messages 1000 [--busy] [--rounds 3]
    scripts/bench-cluster.py storm --nodes 3 --clients 2000 [--rounds 3]   # chatd only, + 1 node
    scripts/bench-cluster.py room --nodes 3 --clients 10000                # memory and frames
    scripts/bench-cluster.py fanout ... --only chatd     # skip Socket.IO (or --only socketio)
    scripts/bench-cluster.py fanout ... --baseline /tmp/chatd-before   # A/B: adds chatd-base

fanout: 10 senders, one message in flight each (chatctl bench), everyone in one room.
storm: every client connects and says hello at once into `lobby`, no messages; connections+hello
  per second, refusals (any refused hello fails the run), and Redis CPU per join (its utime+stime
  across the storm / clients). Beside it, one chatd node without Redis.
room: a room of CLIENTS across the nodes: RSS growth per connection on each node, and the
  frames the crowd's joins cost (chatd_events_delivered_total summed over the nodes).
--busy: a CPU hog (a busy loop) runs on one core during the measurement, as other work would.
"""
import argparse
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release"
PEER = ROOT.parent / "shared" / "peers" / "socketio-redis"
# --storage-url: the nodes' PostgreSQL (an empty schema each start).
STORAGE_URL = None


def psql():
    """Debian keeps psql in a versioned directory (and links it onto the PATH)."""
    import glob
    import shutil
    return shutil.which("psql") or sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"))[-1]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def wait_port(port, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def cpu_secs(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def metric_sum(port, name):
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Cluster:
    """A private Redis and N nodes of chatd or Socket.IO; stopped by pid."""

    def __init__(self, kind, nodes, binary=None):
        self.kind, self.procs, self.ports, self.admins = kind, [], [], []
        try:
            self.start(nodes, binary or BIN / "chatd")
        except BaseException:
            self.stop()
            raise

    def start(self, nodes, binary):
        kind = self.kind
        if STORAGE_URL and kind == "chatd":
            subprocess.run([psql(), STORAGE_URL, "-qc", "DROP SCHEMA public CASCADE; CREATE SCHEMA public"],
                           check=True, capture_output=True)
        self.dir = tempfile.mkdtemp(prefix="bench-cluster-")
        self.redis_port = free_port() if nodes else None
        if nodes:
            self.spawn(["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                        "--save", "", "--appendonly", "no", "--dir", self.dir, "--loglevel", "warning"])
            self.redis = self.procs[-1]
            wait_port(self.redis_port)
        for i in range(max(nodes, 1)):
            port = free_port()
            if kind == "chatd":
                admin = free_port()
                env = dict(os.environ, CHATD_LIMITS__RATE_PER_SEC="0", CHATD_LIMITS__TYPING_RATE_PER_SEC="0",
                           CHATD_STORAGE__PATH="", CHATD_SERVER__MAX_CONNECTIONS="0",
                           CHATD_SERVER__MAX_CONNECTIONS_PER_IP="0", CHATD_SERVER__CONNECT_RATE_PER_IP="0",
                           CHATD_LIMITS__MAX_ROOMS_PER_IP="0", CHATD_ADMIN__LISTEN=f"127.0.0.1:{admin}",
                           CHATD_LOG__LEVEL="warn")
                if nodes:
                    env.update(CHATD_CLUSTER__REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/",
                               CHATD_CLUSTER__NODE_ID=chr(ord("a") + i))
                if STORAGE_URL:
                    env.update(CHATD_STORAGE__URL=STORAGE_URL)
                self.spawn([str(binary), "--port", str(port)], env=env)
                self.admins.append(admin)
            else:
                self.spawn([str(PEER / "start.sh"), str(port), f"redis://127.0.0.1:{self.redis_port}"])
            self.ports.append(port)
        for port in self.ports:
            wait_port(port, 120)
        for admin in self.admins:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2).status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("a chatd node never became ready")
                time.sleep(0.05)

    def spawn(self, cmd, env=None):
        # In a directory of its own: the repository's chat.toml is not read (a baseline binary
        # may not know its keys).
        self.procs.append(subprocess.Popen(cmd, env=env, cwd=self.dir, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL, preexec_fn=raise_nofile))

    @property
    def nodes(self):
        return [p for p in self.procs if not (self.redis_port and p is self.redis)]

    def urls(self):
        path = "/" if self.kind == "chatd" else "/socket.io/?EIO=4&transport=websocket"
        return [f"ws://127.0.0.1:{p}{path}" for p in self.ports]

    def bench(self, *args, timeout=900):
        urls = self.urls()
        cmd = [str(BIN / "chatctl"), "--url", urls[0], "bench", "--json"]
        for u in urls[1:]:
            cmd += ["--node", u]
        if self.kind == "socketio":
            cmd.append("--socketio")
        out = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                             preexec_fn=raise_nofile)
        if out.returncode != 0:
            return None, out.stderr.strip().splitlines()[-1:] or ["failed"]
        return json.loads(out.stdout.strip().splitlines()[-1]), None

    def stop(self):
        for p in reversed(self.procs):
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


class Hog:
    """A busy loop on one core, as other work on the machine would be."""

    def __enter__(self):
        self.p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        return self

    def __exit__(self, *exc):
        self.p.kill()
        self.p.wait()


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, unit=""):
    if v is None:
        return "-"
    if abs(v) >= 10000:
        return f"{v / 1000:,.0f}k{unit}"
    return f"{v:,.2f}{unit}"


def fanout(args):
    kinds = [k for k in ("chatd", "socketio") if args.only in (None, k)]
    if args.baseline:
        kinds.insert(1, "chatd-base")
    results = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in (kinds if r % 2 == 0 else kinds[::-1]):
            c = Cluster("socketio" if kind == "socketio" else "chatd", args.nodes,
                        args.baseline if kind == "chatd-base" else None)
            try:
                with Hog() if args.busy else _null():
                    rep, err = c.bench("--clients", args.clients, "--senders", 10,
                                       "--messages", args.messages)
            finally:
                c.stop()
            if rep is None:
                print(f"  round {r + 1} {kind}: FAILED {err}")
                results[kind].append(None)
                continue
            lost = rep["expected"] - rep["received"]
            results[kind].append(rep)
            print(f"  round {r + 1} {kind}: {rep['deliveries_per_sec']:,.0f}/s p50 "
                  f"{rep['latency_us']['p50'] / 1000:.2f} ms p99 {rep['latency_us']['p99'] / 1000:.2f} ms "
                  f"lost {lost} out of order {rep['out_of_order']}")
    print(f"fanout: {args.nodes} nodes, {args.clients} clients, 10 senders x {args.messages}"
          f"{', busy core' if args.busy else ''}, {args.rounds} rounds (medians)")
    for kind, reps in results.items():
        ok = [x for x in reps if x]
        print(f"  {kind}: {fmt(med([x['deliveries_per_sec'] for x in ok]))}/s "
              f"(range {fmt(min((x['deliveries_per_sec'] for x in ok), default=None))}-"
              f"{fmt(max((x['deliveries_per_sec'] for x in ok), default=None))}), "
              f"p50 {fmt(med([x['latency_us']['p50'] / 1000 for x in ok]), ' ms')}, "
              f"p99 {fmt(med([x['latency_us']['p99'] / 1000 for x in ok]), ' ms')} "
              f"(range {fmt(min((x['latency_us']['p99'] / 1000 for x in ok), default=None))}-"
              f"{fmt(max((x['latency_us']['p99'] / 1000 for x in ok), default=None))}), "
              f"lost {sum(x['expected'] - x['received'] for x in ok)}, failed rounds {reps.count(None)}")
    for other in ("socketio", "chatd-base"):
        if "chatd" in results and results.get(other):
            a = med([x["deliveries_per_sec"] for x in results["chatd"] if x])
            b = med([x["deliveries_per_sec"] for x in results[other] if x])
            if a and b:
                print(f"  ratio chatd / {other}: {a / b:.2f}x")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def storm(args):
    rows = {"cluster": [], "single": []}
    for r in range(args.rounds):
        for shape in (("cluster", "single") if r % 2 == 0 else ("single", "cluster")):
            c = Cluster("chatd", args.nodes if shape == "cluster" else 0)
            try:
                redis_cpu = cpu_secs(c.redis.pid) if shape == "cluster" else None
                with Hog() if args.busy else _null():
                    rep, err = c.bench("--clients", args.clients, "--senders", 1, "--messages", 0)
                if shape == "cluster":
                    redis_cpu = cpu_secs(c.redis.pid) - redis_cpu
            finally:
                c.stop()
            if rep is None:
                print(f"  round {r + 1} {shape}: FAILED (a refusal fails the run) {err}")
                rows[shape].append(None)
                continue
            rows[shape].append((rep["handshakes_per_sec"], redis_cpu))
            extra = f", Redis CPU {redis_cpu * 1e6 / args.clients:.0f} µs per join" if redis_cpu else ""
            print(f"  round {r + 1} {shape}: {rep['handshakes_per_sec']:,.0f} connections+hello/s{extra}")
    print(f"storm: {args.clients} clients at once into lobby, {args.rounds} rounds (medians)"
          f"{', busy core' if args.busy else ''}")
    for shape, rs in rows.items():
        ok = [x for x in rs if x]
        line = f"  {shape} ({args.nodes if shape == 'cluster' else 1} node{'s' if shape == 'cluster' else ''}): "
        line += f"{fmt(med([x[0] for x in ok]))}/s, refused rounds {rs.count(None)}"
        if shape == "cluster" and ok:
            line += f", Redis CPU per join {med([x[1] for x in ok]) * 1e6 / args.clients:.0f} µs"
        print(line)


def room(args):
    c = Cluster("chatd", args.nodes)
    try:
        before = [rss_kib(p.pid) for p in c.nodes]
        events = sum(metric_sum(a, "chatd_events_delivered_total") for a in c.admins)
        # Connected and held (--until-close) while RSS and the metrics are read, then stopped.
        urls = c.urls()
        cmd = [str(BIN / "chatctl"), "--url", urls[0], "bench", "--json", "--clients", str(args.clients),
               "--senders", "1", "--messages", "0", "--until-close", "--duration", "600"]
        for u in urls[1:]:
            cmd += ["--node", u]
        load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=raise_nofile)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            online = sum(metric_sum(a, "chatd_users_online") for a in c.admins)
            if online >= args.clients:
                break
            if load.poll() is not None:
                raise SystemExit(f"bench ended early: {load.stderr.read()}")
            time.sleep(0.2)
        time.sleep(1.0)  # the last presence batches go out
        after = [rss_kib(p.pid) for p in c.nodes]
        cost = sum(metric_sum(a, "chatd_events_delivered_total") for a in c.admins) - events
        load.send_signal(signal.SIGTERM)
        load.wait(30)
        print(f"room: {args.clients} clients in lobby across {args.nodes} nodes")
        share = args.clients / args.nodes
        for i, (b, a) in enumerate(zip(before, after)):
            print(f"  node {chr(ord('a') + i)}: RSS {b / 1024:.1f} -> {a / 1024:.1f} MiB, "
                  f"{(a - b) / share:.2f} KiB per connection")
        print(f"  frames the crowd's joins cost (events delivered, all nodes): {cost:,.0f} "
              f"({cost / args.clients:.1f} per joiner; one per pair would be {args.clients * (args.clients - 1) / 2:,.0f})")
    finally:
        c.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["fanout", "storm", "room"])
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--busy", action="store_true")
    p.add_argument("--only", choices=["chatd", "socketio"])
    p.add_argument("--baseline", help="another chatd binary, measured as chatd-base")
    p.add_argument("--storage-url", help="the nodes keep everything in this PostgreSQL (emptied first)")
    args = p.parse_args()
    global STORAGE_URL
    STORAGE_URL = args.storage_url
    raise_nofile()
    if not (BIN / "chatd").exists():
        raise SystemExit("cargo build --release --bins first")
    {"fanout": fanout, "storm": storm, "room": room}[args.what](args)


if __name__ == "__main__":
    main()
