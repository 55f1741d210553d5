"""Where the test suite's CPU goes: `pytest -p bench.cpu_profile` (issue 22's speed work; see bench/RESULTS.md).

Per test: wall time, this process's CPU and its reaped children's (resource.getrusage), the CPU of every child
process the test waited for by kind (runner.py, mongosh/node, java, pip, make, ...: os.wait4's rusage), the
servers' CPU (the worker's postmaster with its exited and live backends, FerretDB processes) and time.sleep's
total. Written per worker to $HCM_CPU_PROFILE/<worker>.json; bench/cpu_report.py sums them.
Child Python processes report the processes they start through bench/cpu_profile_child.py (a .pth hook in the
venv, `.venv/bin/python bench/cpu_profile.py install` / `uninstall`), keyed by the test that started them
(HCM_CPU_TEST). HCM_CPU_BASETEMP (pytest's --basetemp) lets it find the workers' postmasters; HCM_CPU_SKIP, a file
of node ids, leaves out tests already measured (a run in parts). Example, as bench/RESULTS.md's table was made:
  HCM_CPU_PROFILE=/tmp/prof HCM_CPU_BASETEMP=/tmp/pt .venv/bin/python -m pytest -p bench.cpu_profile \\
      --basetemp=/tmp/pt -n 4 --dist loadgroup && .venv/bin/python bench/cpu_report.py /tmp/prof
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

OUT = os.environ.get("HCM_CPU_PROFILE", "/tmp/hcm-cpu-profile")
TICK = os.sysconf("SC_CLK_TCK")


def kind(args) -> str:
    """A process's kind from its argv (a shell string is split on spaces)."""
    argv = args.split() if isinstance(args, (str, bytes)) else [os.fspath(a) for a in args]
    argv = [a.decode() if isinstance(a, bytes) else str(a) for a in argv]
    if not argv:
        return "?"
    prog = os.path.basename(argv[0])
    if prog.startswith("python"):
        rest = [a for a in argv[1:] if not a.startswith("-") or a in ("-m", "-c")]
        if rest[:1] == ["-m"] and len(rest) > 1:
            return "python -m " + rest[1].split(".")[0] + ("" if rest[1] in ("migrator", "pip", "venv") else "." + rest[1].split(".")[-1] if "." in rest[1] else "")
        if rest[:1] == ["-c"]:
            return "python -c"
        if rest:
            return "python " + os.path.basename(rest[0])
        return "python"
    if prog in ("node", "mongosh") or "mongosh" in " ".join(argv[:2]):
        return "mongosh/node"
    if prog in ("sh", "bash") and len(argv) > 2:
        return "sh: " + os.path.basename(argv[2].split()[0]) if argv[1] == "-c" else "sh " + os.path.basename(argv[1])
    return prog


class Waits:
    """os.wait4 in place of waitpid: the rusage of every child this process reaps, by kind."""

    def __init__(self):
        self.by_pid: dict[int, str] = {}
        self.cpu: dict[str, float] = {}
        self.count: dict[str, int] = {}

    def install(self):
        waits = self
        original_init = subprocess.Popen.__init__

        def init(self, args, *a, **kw):
            original_init(self, args, *a, **kw)
            k = kind(args)
            waits.by_pid[self.pid] = k
            waits.count[k] = waits.count.get(k, 0) + 1

        def waitpid(pid, flags):
            got, status, usage = os.wait4(pid, flags)
            if got:
                k = waits.by_pid.pop(got, "?")
                waits.cpu[k] = waits.cpu.get(k, 0.0) + usage.ru_utime + usage.ru_stime
            return got, status

        subprocess.Popen.__init__ = init
        poll = subprocess.Popen._internal_poll
        names = poll.__code__.co_varnames[:poll.__code__.co_argcount]
        defaults = list(poll.__defaults__)
        defaults[names.index("_waitpid") - (len(names) - len(defaults))] = waitpid
        poll.__defaults__ = tuple(defaults)
        subprocess.Popen._try_wait = lambda self, flags: _try_wait(self, flags, waitpid)

    def take(self):
        cpu, count = self.cpu, self.count
        self.cpu, self.count = {}, {}
        return cpu, count


def _try_wait(self, wait_flags, waitpid):
    try:
        return waitpid(self.pid, wait_flags)
    except ChildProcessError:
        return self.pid, 0


WAITS = Waits()


def _procs():
    """{pid: (ppid, comm, utime+stime, cutime+cstime)} for every process (seconds)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        out[int(entry)] = (int(fields[1]), comm, (int(fields[11]) + int(fields[12])) / TICK,
                           (int(fields[13]) + int(fields[14])) / TICK)
    return out


def server_cpu(root: int) -> dict[str, float]:
    """CPU of the servers this worker started: postmasters (with exited backends) + live backends, FerretDB.
    A postmaster is pg_ctl's (re-parented): found by the worker's temporary folder in its command line."""
    procs = _procs()
    here = os.environ.get("HCM_CPU_BASETEMP", "")
    if here:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "")
        for pid, (ppid, comm, _own, _reaped) in procs.items():
            if comm == "postgres" and pid not in POSTMASTERS and procs.get(ppid, (0, ""))[1] != "postgres":
                try:
                    cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
                except OSError:
                    continue
                if here in cmdline and (not worker or f"/popen-{worker}/" in cmdline):
                    POSTMASTERS.add(pid)
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_rest) in procs.items():
        children.setdefault(ppid, []).append(pid)
    total = {"postgres": 0.0, "ferretdb": 0.0}

    def walk(pid, depth=0):
        for child in children.get(pid, []):
            _ppid, comm, own, reaped = procs[child]
            if comm == "postgres":
                total["postgres"] += own + reaped
                for backend in children.get(child, []):
                    total["postgres"] += procs[backend][2]
            elif comm.startswith("ferretdb"):
                total["ferretdb"] += own + reaped
            elif depth < 3:
                walk(child, depth + 1)

    walk(root)
    for pid in list(POSTMASTERS):
        if pid not in procs:
            POSTMASTERS.discard(pid)  # (its CPU up to now stays counted in the tests that ran while it lived)
            continue
        total["postgres"] += procs[pid][2] + procs[pid][3] + sum(procs[b][2] for b in children.get(pid, []))
    return total


POSTMASTERS: set[int] = set()


SLEPT = [0.0]
RECORDS: dict[str, dict] = {}
DATABASES = [0]


def pytest_collection_modifyitems(config, items):
    """HCM_CPU_SKIP: a file of node ids already measured (a run split in parts)."""
    skip = os.environ.get("HCM_CPU_SKIP")
    if skip:
        done = set(Path(skip).read_text().split())
        items[:] = [item for item in items if item.nodeid not in done]


def pytest_configure(config):
    if os.environ.get("HCM_CPU_PROFILE_OFF"):
        return
    WAITS.install()
    original_sleep = time.sleep

    def sleep(seconds):
        SLEPT[0] += seconds
        original_sleep(seconds)

    time.sleep = sleep
    conftest = sys.modules.get("conftest")
    if conftest is not None and hasattr(conftest, "_new_database"):
        original_new = conftest._new_database

        def new_database(*a, **kw):
            DATABASES[0] += 1
            return original_new(*a, **kw)

        conftest._new_database = new_database


def _sample():
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (time.monotonic(), own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime, server_cpu(os.getpid()))


def _protocol(item, nextitem):
    os.environ["HCM_CPU_TEST"] = item.nodeid
    WAITS.take()
    SLEPT[0], DATABASES[0] = 0.0, 0
    before, started = _sample(), time.time()
    yield
    after = _sample()
    cpu, count = WAITS.take()
    record = RECORDS[item.nodeid] = {
        "wall": round(after[0] - before[0], 3), "self": round(after[1] - before[1], 3),
        "children": round(after[2] - before[2], 3),
        "postgres": round(after[3]["postgres"] - before[3]["postgres"], 3),
        "ferretdb": round(after[3]["ferretdb"] - before[3]["ferretdb"], 3),
        "slept": round(SLEPT[0], 3), "databases": DATABASES[0],
        "kinds_cpu": {k: round(v, 3) for k, v in cpu.items()}, "kinds_count": count,
        "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"), "started": round(started, 3),  # (the run's tail)
    }
    Path(OUT).mkdir(parents=True, exist_ok=True)
    with open(Path(OUT, "tests.log"), "a") as log:  # (as it goes: an interrupted run keeps what it measured)
        log.write(json.dumps({"test": item.nodeid, **record}) + "\n")


if "pytest" in sys.modules:  # (not in the child processes, which only use WAITS and kind)
    import pytest

    pytest_runtest_protocol = pytest.hookimpl(hookwrapper=True)(_protocol)


def pytest_sessionfinish(session):
    if os.environ.get("HCM_CPU_PROFILE_OFF"):
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    Path(OUT).mkdir(parents=True, exist_ok=True)
    servers = server_cpu(os.getpid())
    Path(OUT, f"{worker}.json").write_text(json.dumps({"tests": RECORDS, "servers_at_end": servers}))


if __name__ == "__main__" and sys.argv[1:2] in (["install"], ["uninstall"]):
    import site

    target = Path(site.getsitepackages()[0], "hcm_cpu_profile.pth")  # (this interpreter's: run it with .venv's)
    if sys.argv[1] == "uninstall":
        target.unlink(missing_ok=True)
    else:
        here = Path(__file__).resolve()
        target.write_text(f"import os; os.environ.setdefault('HCM_CPU_PROFILE_PLUGIN', {str(here)!r}); "
                          f"exec(open({str(here.with_name('cpu_profile_child.py'))!r}).read()) "
                          "if os.environ.get('HCM_CPU_TEST') else None\n")
    print(sys.argv[1], target)
