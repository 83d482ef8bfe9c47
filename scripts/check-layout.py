#!/usr/bin/env python3
"""Checks the layout ARCHITECTURE.md promises, and prints the module graph; exits 1 on a violation:
- no import circles between the top-level modules of src/ (a folder is one module), and the
  absences it states (connection/ never names the hub, the ground floor names nothing above it);
- JSON only at the boundaries: `serde_json` only in protocol/, the cluster's envelope
  (hub/cluster/envelope.rs), the HTTP API (api/) and outgoing webhooks (webhooks/), besides tests
  and src/bin/;
- the environment is read only in src/bin/;
- tasks and threads have owners: `tokio::spawn` only in client/ (chatctl's own tasks) and src/bin/;
  daemon tasks go on a tracker (`….spawn` on a TaskTracker/JoinSet) in server/, hub/cluster/, api/
  and webhooks/;
  OS threads only in store/ and accounts/ (joined by their owners' `close`); `spawn_blocking` only where its handle is awaited (listed below);
- locks are taken through `crate::sync` (a poisoned lock is still used), nowhere by hand;
- no source file over 800 lines, except the ones listed in LONG_FILES with a reason.

    python3 scripts/check-layout.py
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
# What each module may not name (beyond "no circles").
GROUND = ["config", "protocol", "metrics", "auth", "telemetry", "addr", "sync"]
FORBIDDEN = {
    "connection": ["hub", "session", "server", "client"],
    "hub": ["session", "server", "client"],
    "session": ["server", "client"],
    "client": ["server", "session", "hub", "connection"],
}
for g in GROUND:
    FORBIDDEN[g] = [m for m in ["connection", "hub", "session", "server", "client"]]


def module_of(path):
    rel = os.path.relpath(path, ROOT)
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first


# Files allowed past 800 lines, and why (also listed in ARCHITECTURE.md).
LONG_FILES = {}
MAX_LINES = 800
SPAWN_BLOCKING_AWAITED = {"connection/tls.rs", "server/tls.rs", "server/mod.rs"}


def library_code(text):
    """The text without its inline test module (`#[cfg(test)] mod tests { … }`, always last):
    test code may use anything. A `#[cfg(test)] mod tests;` line only declares one."""
    text = re.sub(r"#\[cfg\(test\)\]\s*mod \w+;", "", text)
    return re.split(r"#\[cfg\(test\)\]\s*mod \w+ \{", text)[0]


def absences():
    """The rules about what code may do where; returns the violations."""
    bad = []
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, ROOT)
            if rel.startswith("bin" + os.sep) or f == "tests.rs":
                continue
            code = library_code(open(path).read())
            # Comments say what they like.
            code = "\n".join(l.split("//")[0] for l in code.split("\n"))
            top = module_of(path)

            def say(what):
                bad.append(f"src/{rel}: {what}")

            if "serde_json" in code and top not in ("protocol", "api", "webhooks") and rel != "hub/cluster/envelope.rs":
                say("names serde_json (JSON belongs to protocol/, the cluster's envelope, api/ and webhooks/)")
            if re.search(r"\bstd::env\b|\benv::var", code):
                say("reads the environment (only src/bin/ does)")
            if "tokio::spawn(" in code and top != "client":
                say("tokio::spawn outside a tracker (spawn on the owner's TaskTracker)")
            if re.search(r"thread::spawn|thread::Builder", code) and top not in ("store", "accounts"):
                say("starts an OS thread (only the store and the accounts service have threads)")
            if "spawn_blocking" in code and rel not in SPAWN_BLOCKING_AWAITED:
                say("spawn_blocking where its handle is not known to be awaited")
            if re.search(r"\.spawn\(", code) and top not in ("server", "hub", "store", "client", "accounts", "api", "webhooks"):
                say("spawns a task outside server/, hub/cluster/, store/, api/ and webhooks/")
            if re.search(r"\.spawn\(", code) and top == "hub" and not rel.startswith("hub/cluster"):
                say("spawns a task in hub/ outside the cluster broker")
            if "into_inner())" in code and rel != "sync.rs":
                say("takes a lock by hand (use crate::sync::lock/read/write)")
    return bad


def long_files():
    """Source files over MAX_LINES lines that LONG_FILES does not excuse."""
    repo = os.path.dirname(ROOT)
    bad = []
    for top in ["src", "tests", "scripts", "fuzz/fuzz_targets"]:
        for dirpath, dirs, files in os.walk(os.path.join(repo, top)):
            dirs[:] = [d for d in dirs if d not in ("node_modules", "target")]
            for f in files:
                if not f.endswith((".rs", ".py", ".sh", ".js", ".mjs", ".css", ".html")):
                    continue
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, repo)
                n = sum(1 for _ in open(path, errors="replace"))
                if n > MAX_LINES and rel not in LONG_FILES:
                    bad.append(f"{rel}: {n} lines (split it by concept, or list it in LONG_FILES with why)")
    return bad


def main():
    graph = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            if os.path.relpath(path, ROOT).startswith("bin"):
                continue
            me = module_of(path)
            if me == "lib":
                continue
            if f == "tests.rs":
                continue
            # Only the library's own code: test modules may reach across for fixtures.
            text = library_code(open(path).read())
            for used in re.findall(r"crate::([a-z_]+)", text):
                if used != me:
                    graph.setdefault(me, set()).add(used)
            graph.setdefault(me, set())
    bad = []
    for m, deps in sorted(graph.items()):
        print(f"{m:12} -> {', '.join(sorted(deps)) or '(nothing)'}")
        for d in deps:
            if d in FORBIDDEN.get(m, []):
                bad.append(f"{m} names {d}")
    # Circles: depth-first search over the module graph.
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                bad.append("circle: " + " -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    bad += absences()
    bad += long_files()
    for b in bad:
        print("layout violation:", b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
