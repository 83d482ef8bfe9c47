#!/usr/bin/env python3
"""The PostgreSQL store's benchmarks (BENCHMARKS.md, "PostgreSQL"): prints a markdown table.

    cargo build --release --bins --example store_bench
    python3 -m venv target/bench-venv && target/bench-venv/bin/pip install websockets
    target/bench-venv/bin/python scripts/bench-postgres.py [--rounds 3] [--search-messages 1000000]

Runs a private PostgreSQL (Debian's, initdb into a temporary directory, a free loopback port,
default durability: fsync and synchronous_commit on), then:
1. The writer alone (examples/store_bench.rs): 200,000 chat-like messages of 100 bytes in 100
   rooms, committed, against PostgreSQL and against SQLite.
2. `say` end to end into each store: 100 senders, each alone with one receiver in its own room,
   16 messages in flight each (the same run as bench-store.py's).
3. Search latency on SEARCH_MESSAGES stored messages in 1,000 rooms, both stores: one client in
   10 rooms sends 300 one- and two-word searches (words from the fill's vocabulary, common and
   rare alike), one at a time; p50, p99, and how many were "too broad" (past the 250 ms budget).
Fan-out with the store on and off: bench-compare.py --servers chatd-postgres,chatd-memory (one
node) and bench-cluster.py fanout --storage-url (two nodes); see BENCHMARKS.md for the commands.
"""
import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

from websockets.sync.client import connect

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHATD = os.path.join(ROOT, "target", "release", "chatd")
CHATCTL = os.path.join(ROOT, "target", "release", "chatctl")
STORE_BENCH = os.path.join(ROOT, "target", "release", "examples", "store_bench")
ENV = {
    "PATH": "/usr/bin:/bin",
    "CHATD_LIMITS__RATE_PER_SEC": "0",
    "CHATD_SERVER__MAX_CONNECTIONS": "0",
    "CHATD_SERVER__MAX_CONNECTIONS_PER_IP": "0",
    "CHATD_SERVER__CONNECT_RATE_PER_IP": "0",
    "CHATD_LIMITS__MAX_ROOMS_PER_IP": "0",
    "CHATD_ADMIN__LISTEN": "",
    "CHATD_LOG__LEVEL": "warn",
    "CHATD_STORAGE__PATH": "",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin():
    for d in sorted(os.listdir("/usr/lib/postgresql"), reverse=True):
        b = os.path.join("/usr/lib/postgresql", d, "bin")
        if os.path.exists(os.path.join(b, "initdb")):
            return b
    raise SystemExit("PostgreSQL is not installed (apt install postgresql)")


class Postgres:
    """A private server, as the tests run it (but with fsync on)."""

    def __init__(self, tmp):
        self.bin, self.port = pg_bin(), free_port()
        self.dir = tempfile.mkdtemp(dir=tmp)
        as_pg = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"] if os.getuid() == 0 else []
        if as_pg:
            shutil.chown(self.dir, "postgres", "postgres")
        data = os.path.join(self.dir, "data")
        subprocess.run(as_pg + [f"{self.bin}/initdb", "--auth=trust", "--username=chatd", "-D", data],
                       check=True, capture_output=True)
        self.proc = subprocess.Popen(as_pg + [f"{self.bin}/postgres", "-D", data, "-p", str(self.port), "-k", self.dir,
                                              "-c", "listen_addresses=127.0.0.1", "-c", "shared_buffers=256MB"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in self.proc.stderr:
            if "ready to accept connections" in line:
                break
        self.n = 0

    def database(self):
        """A fresh database's URL."""
        self.n += 1
        name = f"bench{self.n}"
        subprocess.run([f"{self.bin}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "chatd", "-d", "postgres",
                        "-qc", f"CREATE DATABASE {name}"], check=True)
        return f"postgres://chatd@127.0.0.1:{self.port}/{name}"

    def stop(self):
        subprocess.run(["kill", "-INT", str(self.proc.pid)])
        self.proc.wait(timeout=60)


def writer(target, messages, rooms):
    out = subprocess.run([STORE_BENCH, target, str(messages), str(rooms)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def start(env):
    port = free_port()
    proc = subprocess.Popen([CHATD, "--port", str(port)], env=dict(ENV, **env), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=tempfile.gettempdir())
    for line in proc.stdout:
        if "listening on" in line:
            return proc, port
    raise RuntimeError(f"chatd exited {proc.wait()} before listening")


def stop(proc):
    proc.terminate()
    proc.wait(timeout=60)


def say_throughput(env):
    proc, port = start(env)
    try:
        out = subprocess.run([CHATCTL, "--url", f"ws://127.0.0.1:{port}", "bench", "--json", "--pid", str(proc.pid),
                              "--clients", "200", "--rooms", "100", "--senders", "100", "--inflight", "16",
                              "--messages", "2000"], capture_output=True, text=True, timeout=600)
        report = json.loads(out.stdout)
    finally:
        stop(proc)
    # A store that cannot keep up refuses (`unavailable`) rather than lose: those are counted.
    assert report["received"] + report["refused_deliveries"] == report["expected"], report
    return report


def vocabulary():
    # store_bench's words: a prefix by index, then the index.
    return [f"{['de', 'fri', 'lu', 're', 'me', 'co', 'bu', 'gr'][i % 8]}{i}" for i in range(5000)]


def search_latency(env, queries):
    proc, port = start(env)
    try:
        with connect(f"ws://127.0.0.1:{port}/", max_size=None, open_timeout=30) as ws:
            ws.send(json.dumps({"type": "hello", "name": "seeker", "id": "h"}))
            while json.loads(ws.recv()).get("ref") != "h":
                pass
            for r in range(10):
                ws.send(json.dumps({"type": "join", "room": f"room{r}", "id": f"j{r}"}))
                while json.loads(ws.recv()).get("ref") != f"j{r}":
                    pass
            took, broad, found = [], 0, 0
            for i, q in enumerate(queries):
                began = time.perf_counter()
                ws.send(json.dumps({"type": "search", "query": q, "id": f"s{i}"}))
                while True:
                    v = json.loads(ws.recv())
                    if v.get("ref") == f"s{i}":
                        break
                took.append(time.perf_counter() - began)
                if v["type"] == "search":
                    found += bool(v["messages"])
                elif v.get("code") == "bad_request":
                    broad += 1
                else:
                    raise RuntimeError(f"search {q!r}: {v}")
    finally:
        stop(proc)
    took.sort()
    return {"p50_ms": took[len(took) // 2] * 1000, "p99_ms": took[int(len(took) * 0.99)] * 1000,
            "too_broad": broad, "with_results": found, "queries": len(queries)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--search-messages", type=int, default=1_000_000)
    opts = ap.parse_args()
    med = statistics.median
    with tempfile.TemporaryDirectory(prefix="chatd-bench-pg-") as tmp:
        os.chmod(tmp, 0o755)
        pg = Postgres(tmp)
        try:
            writers = {"postgres": [], "sqlite": []}
            for r in range(opts.rounds):
                writers["postgres"].append(writer(pg.database(), 200_000, 100))
                writers["sqlite"].append(writer(os.path.join(tmp, f"w{r}.db"), 200_000, 100))
                for k in writers:
                    w = writers[k][-1]
                    print(f"writer {k}: {w['messages_per_sec']:,.0f} messages/s, {w['writer_us_per_message']:.1f} us CPU "
                          f"each, {w['bytes_per_message']:.0f} B/message", flush=True)
            says = {"postgres": [], "sqlite": [], "memory": []}
            for r in range(opts.rounds):
                for k, env in (("postgres", {"CHATD_STORAGE__URL": pg.database()}),
                               ("sqlite", {"CHATD_STORAGE__PATH": os.path.join(tmp, f"s{r}.db")}),
                               ("memory", {})):
                    rep = say_throughput(env)
                    says[k].append(rep)
                    print(f"say {k}: {rep['deliveries_per_sec']:,.0f} messages/s, p99 "
                          f"{rep['latency_us']['p99'] / 1000:.1f} ms, {rep['refused']:,} refused", flush=True)
            n = opts.search_messages
            rng = random.Random(7)
            words = vocabulary()
            queries = []
            for _ in range(300):
                pick = lambda: words[int(rng.random() ** 3 * len(words))]
                queries.append(pick() if rng.random() < 0.5 else f"{pick()} {pick()}")
            searches = {}
            for k in ("postgres", "sqlite"):
                target = pg.database() if k == "postgres" else os.path.join(tmp, "search.db")
                fill = writer(target, n, 1000)
                print(f"filled {k}: {n:,} messages, {fill['file_bytes'] / 2**20:.0f} MiB", flush=True)
                env = {"CHATD_STORAGE__URL": target} if k == "postgres" else {"CHATD_STORAGE__PATH": target}
                searches[k] = search_latency(env, queries)
                print(f"search {k}: {searches[k]}", flush=True)
        finally:
            pg.stop()

    print()
    print("| measure | PostgreSQL | SQLite |")
    print("|---|---|---|")
    w = writers
    print(f"| writer alone: messages committed/s (200,000 × 100 B, 100 rooms) | "
          f"**{med(r['messages_per_sec'] for r in w['postgres']):,.0f}/s** ({med(r['writer_us_per_message'] for r in w['postgres']):.1f} µs CPU each) | "
          f"{med(r['messages_per_sec'] for r in w['sqlite']):,.0f}/s ({med(r['writer_us_per_message'] for r in w['sqlite']):.1f} µs) |")
    print(f"| bytes per message (tables and indexes) | {med(r['bytes_per_message'] for r in w['postgres']):.0f} | "
          f"{med(r['bytes_per_message'] for r in w['sqlite']):.0f} |")
    print(f"| `say` end to end (100 senders, 16 in flight); memory only: "
          f"{med(r['deliveries_per_sec'] for r in says['memory']):,.0f}/s | "
          f"**{med(r['deliveries_per_sec'] for r in says['postgres']):,.0f}/s**, p99 {med(r['latency_us']['p99'] for r in says['postgres']) / 1000:.1f} ms, "
          f"{med(r['refused'] for r in says['postgres']):,} of 200,000 refused | "
          f"{med(r['deliveries_per_sec'] for r in says['sqlite']):,.0f}/s, p99 {med(r['latency_us']['p99'] for r in says['sqlite']) / 1000:.1f} ms, "
          f"{med(r['refused'] for r in says['sqlite']):,} refused |")
    s = searches
    print(f"| search on {n:,} messages in 1,000 rooms, one client in 10 rooms, 300 queries: p50 / p99 | "
          f"**{s['postgres']['p50_ms']:.1f} / {s['postgres']['p99_ms']:.1f} ms** ({s['postgres']['too_broad']} too broad) | "
          f"{s['sqlite']['p50_ms']:.1f} / {s['sqlite']['p99_ms']:.1f} ms ({s['sqlite']['too_broad']} too broad) |")


if __name__ == "__main__":
    main()
