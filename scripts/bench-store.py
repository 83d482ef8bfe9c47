#!/usr/bin/env python3
"""Durable history benchmarks (BENCHMARKS.md, "Durable history"): prints a markdown table.

    cargo build --release --bins --example store_bench
    python3 scripts/bench-store.py [--rounds 3]

1. The writer alone (examples/store_bench.rs): 200,000 chat-like messages of 100 bytes in 100
   rooms, committed; then the search index catching up; bytes on disk per message.
2. `say` into the store end to end: 100 senders, each alone with one receiver in its own room,
   16 messages in flight each, against chatd with the database and with history in memory only.
3. Startup with 1,000,000 stored messages in 1,000 rooms: from exec to the listening line.
Fan-out with the store on and off is bench-compare.py's A/B mode (see BENCHMARKS.md).
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time

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
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def writer(tmp, messages, rooms):
    path = os.path.join(tmp, f"writer-{messages}-{rooms}.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    out = subprocess.run([STORE_BENCH, path, str(messages), str(rooms)], capture_output=True, text=True,
                         check=True)
    return path, json.loads(out.stdout)


def start(db):
    port = free_port()
    env = dict(ENV, CHATD_STORAGE__PATH=db)
    began = time.monotonic()
    proc = subprocess.Popen([CHATD, "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=tempfile.gettempdir())
    for line in proc.stdout:
        if "listening on" in line:
            return proc, port, time.monotonic() - began
    raise RuntimeError(f"chatd exited {proc.wait()} before listening")


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def stop(proc):
    proc.terminate()
    proc.wait(timeout=30)


def say_throughput(db):
    proc, port, _ = start(db)
    try:
        out = subprocess.run([CHATCTL, "--url", f"ws://127.0.0.1:{port}", "bench", "--json", "--pid", str(proc.pid),
                              "--clients", "200", "--rooms", "100", "--senders", "100", "--inflight", "16",
                              "--messages", "2000"], capture_output=True, text=True, timeout=300)
        report = json.loads(out.stdout)
    finally:
        stop(proc)
    assert report["received"] == report["expected"], report
    return report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    opts = ap.parse_args()
    med = statistics.median
    with tempfile.TemporaryDirectory(prefix="chatd-bench-store-") as tmp:
        runs = [writer(tmp, 200_000, 100)[1] for _ in range(opts.rounds)]
        for r in runs:
            print(f"writer: {r['messages_per_sec']:,.0f} messages/s committed, {r['writer_us_per_message']:.1f} us/message;"
                  f" indexed after {r['indexed_secs']:.2f} s (+{r['index_us_per_message']:.1f} us/message);"
                  f" {r['bytes_per_message']:.0f} bytes/message", flush=True)
        says = {}
        for variant in ("store", "memory"):
            says[variant] = []
            for _ in range(opts.rounds):
                db = os.path.join(tmp, "say.db") if variant == "store" else ""
                for suffix in ("", "-wal", "-shm"):
                    if db and os.path.exists(db + suffix):
                        os.remove(db + suffix)
                rep = say_throughput(db)
                says[variant].append(rep)
                print(f"say {variant}: {rep['deliveries_per_sec']:,.0f} messages/s, p99 "
                      f"{rep['latency_us']['p99'] / 1000:.1f} ms", flush=True)
        big, fill = writer(tmp, 1_000_000, 1_000)
        print(f"filled {fill['messages']:,} messages in {fill['rooms']} rooms: {fill['file_bytes'] / 2**20:.0f} MiB", flush=True)
        starts = []
        for _ in range(opts.rounds):
            proc, _, took = start(big)
            rss = rss_kib(proc.pid)
            stop(proc)
            starts.append((took, rss))
            print(f"startup: {took:.3f} s, RSS {rss / 1024:.1f} MiB", flush=True)

    print()
    print("| measure | result |")
    print("|---|---|")
    print(f"| writer alone: messages committed per second (200,000 × 100 B, 100 rooms) | "
          f"**{med(r['messages_per_sec'] for r in runs):,.0f}/s** ({med(r['writer_us_per_message'] for r in runs):.1f} µs CPU each) |")
    print(f"| search index catching up (after the commits) | all indexed {med(r['indexed_secs'] for r in runs):.1f} s "
          f"after the first message (+{med(r['index_us_per_message'] for r in runs):.1f} µs CPU each) |")
    print(f"| `say` end to end, store on (100 senders, 16 in flight) | "
          f"**{med(r['deliveries_per_sec'] for r in says['store']):,.0f} messages/s**, p99 "
          f"{med(r['latency_us']['p99'] for r in says['store']) / 1000:.1f} ms |")
    print(f"| `say` end to end, memory only | {med(r['deliveries_per_sec'] for r in says['memory']):,.0f} messages/s, "
          f"p99 {med(r['latency_us']['p99'] for r in says['memory']) / 1000:.1f} ms |")
    print(f"| startup with 1,000,000 messages in 1,000 rooms ({fill['file_bytes'] / 2**20:.0f} MiB) | "
          f"**{med(t for t, _ in starts):.2f} s** to listening, RSS {med(r for _, r in starts) / 1024:.0f} MiB |")
    print(f"| bytes on disk per message (100-byte text, with indexes and search) | "
          f"**{med(r['bytes_per_message'] for r in runs):.0f}** |")


if __name__ == "__main__":
    main()
