#!/usr/bin/env python3
"""Accounts mode's costs (BENCHMARKS.md, "Accounts"): prints a markdown table.

    cargo build --release --bins
    python3 -m venv target/bench-venv && target/bench-venv/bin/pip install websockets
    target/bench-venv/bin/python scripts/bench-login.py [--seconds 10] [--signers 8]

Runs the release chatd in accounts mode on a fresh SQLite file, with the default Argon2id cost
(19,456 KiB, 2 passes) and one hashing thread, and measures:
1. Sign-ins: SIGNERS clients sign in over and over on fresh connections (a right password, then
   close) for SECONDS: sign-ins per second and their latency (p50, p99), then the same with
   wrong passwords (failure limits off, so every attempt is hashed).
2. Chat latency meanwhile: two signed-in clients in their own room ping-pong `say`s (one in
   flight); the round trip's p50 and p99 alone, and while the sign-ins of (1) run. Hashing runs
   on its own thread at a lowered priority: chat should not notice.
3. `welcome` for a member of ROOMS rooms with UNREAD unread messages in all: its size and the
   time from `hello` to `welcome`.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time

from websockets.sync.client import connect

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHATD = os.path.join(ROOT, "target", "release", "chatd")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(dbdir):
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "CHATD_AUTH__MODE": "accounts",
        "CHATD_STORAGE__PATH": os.path.join(dbdir, "chat.db"),
        "CHATD_AUTH__REGISTRATIONS_PER_ADDRESS": "0",
        "CHATD_AUTH__LOGIN_FAILURES_PER_NAME": "0",
        "CHATD_AUTH__LOGIN_FAILURES_PER_ADDRESS": "0",
        "CHATD_LIMITS__RATE_PER_SEC": "0",
        "CHATD_LIMITS__MAX_ROOMS_PER_USER": "200",
        "CHATD_SERVER__CONNECT_RATE_PER_IP": "0",
        "CHATD_SERVER__MAX_CONNECTIONS_PER_IP": "0",
        "CHATD_ADMIN__LISTEN": "",
        "CHATD_LOG__LEVEL": "warn",
    }
    proc = subprocess.Popen([CHATD, "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=dbdir)
    for line in proc.stdout:
        if "listening on" in line:
            return proc, f"ws://127.0.0.1:{port}/"
    raise RuntimeError(f"chatd exited {proc.wait()} before listening")


def request(ws, msg, until=None):
    msg = dict(msg, id="r")
    ws.send(json.dumps(msg))
    while True:
        reply = json.loads(ws.recv(timeout=60))
        if reply.get("ref") == "r":
            return reply


def hello(url, kind, name, password, room=None):
    ws = connect(url, max_size=None)
    msg = {"type": kind, "name": name, "password": password}
    if room:
        msg["room"] = room
    started = time.perf_counter()
    reply = request(ws, msg)
    return ws, reply, time.perf_counter() - started


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


def sign_ins(url, names, seconds, right):
    stop = time.perf_counter() + seconds
    times, lock = [], threading.Lock()

    def worker(name):
        while time.perf_counter() < stop:
            ws, reply, took = hello(url, "hello", name, "password " + name if right else "wrong password")
            ws.close()
            ok = reply.get("type") == "welcome" if right else reply.get("code") == "unauthorized"
            assert ok, reply
            with lock:
                times.append(took)

    threads = [threading.Thread(target=worker, args=(n,)) for n in names]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(times) / (time.perf_counter() - started), times


def ping_pong(url, seconds):
    a, _, _ = hello(url, "hello", "pinger", "password pinger", room="pingroom")
    b, _, _ = hello(url, "hello", "ponger", "password ponger", room="pingroom")
    rtts = []
    stop = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < stop:
        n += 1
        started = time.perf_counter()
        a.send(json.dumps({"type": "say", "room": "pingroom", "text": f"ping {n}", "id": f"p{n}"}))
        while True:
            m = json.loads(b.recv(timeout=30))
            if m.get("type") == "message" and m.get("text") == f"ping {n}":
                break
        rtts.append(time.perf_counter() - started)
        while json.loads(a.recv(timeout=30)).get("ref") != f"p{n}":
            pass
    a.close()
    b.close()
    return rtts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--signers", type=int, default=8)
    ap.add_argument("--rooms", type=int, default=100)
    ap.add_argument("--unread", type=int, default=10000)
    args = ap.parse_args()
    dbdir = tempfile.mkdtemp(prefix="chatd-bench-login-")
    proc, url = start(dbdir)
    rows = []
    try:
        names = [f"signer{i}" for i in range(args.signers)] + ["pinger", "ponger", "reader", "talker"]
        for name in names:
            ws, reply, _ = hello(url, "register", name, "password " + name)
            assert reply.get("type") == "welcome", reply
            ws.close()
        signers = names[: args.signers]
        rate, times = sign_ins(url, signers, args.seconds, True)
        rows.append(("sign-ins, right password, %d clients" % args.signers,
                     f"{rate:.1f}/s", f"{pct(times, .5) * 1e3:.1f} ms", f"{pct(times, .99) * 1e3:.1f} ms"))
        rate, times = sign_ins(url, signers, args.seconds, False)
        rows.append(("sign-ins, wrong password, %d clients" % args.signers,
                     f"{rate:.1f}/s", f"{pct(times, .5) * 1e3:.1f} ms", f"{pct(times, .99) * 1e3:.1f} ms"))
        idle = ping_pong(url, args.seconds)
        rows.append(("chat round trip, no sign-ins", f"{len(idle) / args.seconds:.0f}/s",
                     f"{pct(idle, .5) * 1e3:.2f} ms", f"{pct(idle, .99) * 1e3:.2f} ms"))
        result = {}
        flood = threading.Thread(target=lambda: result.update(sign=sign_ins(url, signers, args.seconds, True)))
        flood.start()
        busy = ping_pong(url, args.seconds)
        flood.join()
        rows.append(("chat round trip, during the sign-ins", f"{len(busy) / args.seconds:.0f}/s",
                     f"{pct(busy, .5) * 1e3:.2f} ms", f"{pct(busy, .99) * 1e3:.2f} ms"))
        rows.append(("(the sign-ins meanwhile)", f"{result['sign'][0]:.1f}/s",
                     f"{pct(result['sign'][1], .5) * 1e3:.1f} ms", f"{pct(result['sign'][1], .99) * 1e3:.1f} ms"))

        # A member of ROOMS rooms, UNREAD messages waiting in them.
        reader, _, _ = hello(url, "hello", "reader", "password reader")
        for r in range(args.rooms):
            assert request(reader, {"type": "join", "room": f"r{r}"})["type"] == "room"
        reader.close()
        talker, _, _ = hello(url, "hello", "talker", "password talker")
        per_room = args.unread // args.rooms
        for r in range(args.rooms):
            request(talker, {"type": "join", "room": f"r{r}"})
            for i in range(per_room):
                mention = " @reader" if i % 50 == 0 else ""
                talker.send(json.dumps({"type": "say", "room": f"r{r}", "text": f"news {i}{mention}"}))
        request(talker, {"type": "rooms"})
        talker.close()
        time.sleep(1)
        took_all = []
        for _ in range(5):
            ws, welcome, took = hello(url, "hello", "reader", "password reader")
            ws.close()
            took_all.append(took)
            time.sleep(0.2)
        size = len(json.dumps(welcome))
        unread = sum(r["unread"] for r in welcome["rooms"])
        mentions = sum(r["mentions"] for r in welcome["rooms"])
        rows.append((f"welcome, {len(welcome['rooms'])} rooms, {unread} unread, {mentions} mentions",
                     f"{size:,} bytes", f"{statistics.median(took_all) * 1e3:.1f} ms", f"{max(took_all) * 1e3:.1f} ms"))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(dbdir, ignore_errors=True)
    print("| measure | rate or size | p50 | p99 (max for welcome) |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
