#!/usr/bin/env python3
"""Search as a denial of service (the promises issue, item 6): while connections keep sending
costly searches, how long does a bystander wait for a history page read from disk?

    cargo build --release --bins
    python3 -m venv target/bench-venv && target/bench-venv/bin/pip install websockets
    target/bench-venv/bin/python scripts/bench-search.py [--chatd BIN] [--messages 200000]
        [--searchers 20] [--seconds 20]

Fills a fresh database through chatd (pipelined `say`s of common English words, no rate limit),
then runs SEARCHERS connections, each sending a 32-word query of common words again as soon as
the previous one is answered (within the default per-connection rules: one search at a time),
and one bystander reading `history before=1000` (older than memory holds) in a loop. Prints the
bystander's read latency (p50, p99, max), searches answered and how (results, `bad_request`
too broad, `unavailable`, `rate_limited`), and the same reads with no searchers as the baseline.
"""
import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path

from websockets.sync.client import connect

warnings.filterwarnings("ignore", category=DeprecationWarning)

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the of and to in is it you that he was for on are with as his they be at one have this "
         "from or had by hot but some what there we can out other were all your when up use word").split()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def hello(url, name):
    ws = connect(url, open_timeout=10, max_size=None)
    ws.send(json.dumps({"type": "hello", "name": name, "id": "h"}))
    while json.loads(ws.recv(30)).get("ref") != "h":
        pass
    return ws


def request(ws, msg, rid):
    msg["id"] = rid
    ws.send(json.dumps(msg))
    while True:
        v = json.loads(ws.recv(120))
        if v.get("ref") == rid:
            return v


def fill(url, total):
    writers = 8
    per = total // writers

    def write(i):
        ws = hello(url, f"writer{i}")
        window = 200
        sent = acked = 0
        while acked < per:
            while sent < per and sent - acked < window:
                text = " ".join(random.choice(WORDS) for _ in range(16))
                ws.send(json.dumps({"type": "say", "text": text, "id": f"s{sent}"}))
                sent += 1
            v = json.loads(ws.recv(60))
            if str(v.get("ref", "")).startswith("s"):
                if v.get("type") != "ack":
                    raise SystemExit(f"fill refused: {v}")
                acked += 1
        ws.close()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def reads(url, seconds, stop=None):
    ws = hello(url, f"bystander{random.randrange(1 << 30)}")
    times = []
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline and not (stop and stop.is_set()):
        started = time.monotonic()
        v = request(ws, {"type": "history", "room": "lobby", "before": 1000, "limit": 50}, f"r{n}")
        times.append(time.monotonic() - started)
        if v.get("type") != "history":
            raise SystemExit(f"history read failed: {v}")
        n += 1
        time.sleep(0.05)
    ws.close()
    return times


def search_loop(url, i, stop, answers):
    ws = hello(url, f"searcher{i}")
    query = " ".join(WORDS[:32])
    n = 0
    while not stop.is_set():
        v = request(ws, {"type": "search", "query": query}, f"q{n}")
        kind = v.get("type") if v.get("type") != "error" else v.get("code")
        answers[kind] = answers.get(kind, 0) + 1
        n += 1
    ws.close()


def pct(times, q):
    s = sorted(times)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chatd", default=str(ROOT / "target/release/chatd"))
    p.add_argument("--messages", type=int, default=200_000)
    p.add_argument("--searchers", type=int, default=20)
    p.add_argument("--seconds", type=float, default=20)
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="bench-search-")
    port = free_port()
    env = dict(os.environ, CHATD_STORAGE__PATH=f"{work}/chatd.db", CHATD_LIMITS__RATE_PER_SEC="0",
               CHATD_LOG__LEVEL="warn", CHATD_SERVER__CONNECT_RATE_PER_IP="0")
    chatd = subprocess.Popen([args.chatd, "--port", str(port)], env=env, cwd=work,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"ws://127.0.0.1:{port}/"
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        started = time.monotonic()
        fill(url, args.messages)
        print(f"filled {args.messages:,} messages in {time.monotonic() - started:.1f} s")
        quiet = reads(url, 5)
        print(f"history before=1000, no searches: p50 {pct(quiet, .5):.1f} ms, p99 {pct(quiet, .99):.1f} ms, "
              f"max {max(quiet) * 1000:.1f} ms ({len(quiet)} reads)")
        stop, answers = threading.Event(), {}
        searchers = [threading.Thread(target=search_loop, args=(url, i, stop, answers))
                     for i in range(args.searchers)]
        for t in searchers:
            t.start()
        busy = reads(url, args.seconds)
        stop.set()
        for t in searchers:
            t.join(180)
        print(f"history before=1000, {args.searchers} searchers: p50 {pct(busy, .5):.1f} ms, "
              f"p99 {pct(busy, .99):.1f} ms, max {max(busy) * 1000:.1f} ms ({len(busy)} reads in {args.seconds:.0f} s)")
        print(f"search answers: {answers}")
    finally:
        chatd.terminate()
        chatd.wait(30)


if __name__ == "__main__":
    main()
