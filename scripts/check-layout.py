#!/usr/bin/env python3
"""Checks the layout ARCHITECTURE.md promises: no import circles between the top-level modules of
src/ (a folder is one module), and the absences it states (connection/ never names the hub, the
ground floor names nothing above it). Prints the module graph; exits 1 on a violation.

    python3 scripts/check-layout.py
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
# What each module may not name (beyond "no circles").
GROUND = ["config", "protocol", "metrics", "auth", "telemetry", "addr"]
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
            text = open(path).read()
            # Only the library's own code: test modules may reach across for fixtures.
            text = text.split("#[cfg(test)]")[0]
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
    for b in bad:
        print("layout violation:", b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
