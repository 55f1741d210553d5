"""Running a JavaScript patch with mongosh, bounded by --patch-timeout, in a process group of its own.

mongosh gets the URI (with its password) through the environment, not the command line, and
nothing else of the runner's environment. In a dry run the shim (dry_run_shim.js) makes every
write method throw before it reaches the server, mongosh runs under Landlock (seal.py: no `.env` or
secret file within reach) and the runner is non-dumpable. On a timeout, or when the runner is stopped,
the whole process group is killed (grandchildren too) and reading stops; a runner killed by SIGKILL
takes mongosh with it (PR_SET_PDEATHSIG, and the prelude exits once its parent changes).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from migrator import interrupt, output
from migrator.errors import USAGE, MigratorError
from migrator.mongo import seal
from migrator.mongo.homes import Home
from migrator.mongo.orphans import Orphans, uninterrupted
from migrator.mongo.patches import PATCH_NAME, PROJECT_ROOT, Patch, one_line
from migrator.mongo.python_patch import SAFE_ENVIRONMENT, register_environment_secrets
from migrator.source_files import read_bytes
from migrator.targets import MongoTarget

MONGOSH_VERSION = "2.12.0"
LOCAL_MONGOSH = PROJECT_ROOT / ".mongosh" / "node_modules" / ".bin" / "mongosh"
SHIM = Path(__file__).with_name("dry_run_shim.js")
SYNTAX_CHECK = Path(__file__).with_name("syntax_check.js")
SYNTAX_MARK = "\x1ehcm-syntax\x1e"
SYNTAX_CHECK_TIMEOUT = 60.0  # seconds: mongosh starts in about one
AFTER_EXIT_GRACE = 1.0  # seconds to read what mongosh's children still print after it exits


class JsPatchFailed(Exception):
    """mongosh ended with a non-zero exit (or was stopped)."""

    def __init__(self, code: int, last_line: str):
        super().__init__(f"mongosh exit {code}" + (f": {one_line(last_line)}" if last_line else ""))
        self.code = code


# DRY_RUN is a non-writable, non-configurable global; a patch can still shadow it (`let DRY_RUN = false`,
# eval), which is why dry runs rely on the shim, not on DRY_RUN. patchComment(text) sets the logged comment.
COMMENT_MARK = "\x1ehcm-comment\x1e"
# A sealed dry run has no UDP, so no DNS: the servers' names, looked up by the runner (HCM_PINNED), answer Node's
# dns.lookup, which the driver's connections use.
JS_PINNED = (
    ' (() => { const dns = require("dns"), pinned = JSON.parse(process.env.HCM_PINNED), lookup = dns.lookup;'
    ' dns.lookup = function (host, options, callback) {'
    ' if (typeof options === "function") { callback = options; options = {}; }'
    ' if (!pinned[host]) return lookup.call(this, host, options, callback);'
    ' const o = typeof options === "number" ? {family: options} : (options || {});'
    ' const found = pinned[host].filter((a) => !o.family || a.family === o.family);'
    ' process.nextTick(() => o.all ? callback(null, found) : found.length ? callback(null, found[0].address,'
    ' found[0].family) : callback(Object.assign(new Error("getaddrinfo ENOTFOUND " + host), {code: "ENOTFOUND"})));'
    ' }; })();'
)
JS_PRELUDE = (
    'Object.defineProperty(globalThis, "DRY_RUN", {{value: {dry}, writable: false, configurable: false, enumerable: true}});'
    ' Object.defineProperty(globalThis, "patchComment", {{value: (text) => print("' + COMMENT_MARK + '" + String(text).split(/\\r?\\n/).join(" | ")),'
    ' writable: false, configurable: false}});'
    # The backstop for PR_SET_PDEATHSIG: once the runner is gone (mongosh re-parented), stop before the next write.
    ' (() => {{ const runner = process.ppid; setInterval(() => {{ if (process.ppid !== runner) process.exit(137); }},'
    ' 500).unref(); }})();'
)


def run_js(patch: Patch, target: MongoTarget | None, dry_run: bool, echo: Callable[[str], None],
           timeout: float | None = None, client=None) -> str | None:
    """Run the patch with mongosh, streaming its output; the comment is what it passed to patchComment().

    The URI (with its password) reaches mongosh through the environment, not the command line, so
    it never shows in the process list; mongosh gets nothing else of the runner's environment
    (no DB_PASSWORD, AWS keys, MONGO_URL), a HOME of its own and telemetry off. With no target
    (tests) mongosh runs with no database. After `timeout` seconds mongosh is stopped.
    """
    prelude = JS_PRELUDE.format(dry="true" if dry_run else "false")
    register_environment_secrets()  # mongosh could read them from /proc/<runner pid>/environ
    with Home("hcm-mongosh-") as home:
        env = mongosh_environment(home)
        if target is not None and dry_run:
            prelude += JS_PINNED
            env["HCM_PINNED"] = _pinned(target, client)
        if target is not None:
            prelude += " db = connect(process.env.HCM_MONGO_URI);"
            env["HCM_MONGO_URI"] = target.shell_uri()
        shim = ["--file", str(SHIM)] if dry_run else []
        seal.non_dumpable()  # mongosh cannot read the runner's memory or /proc/<runner>/environ
        start = _sealed(patch, home, target, client) if dry_run else _die_with_parent
        command = [mongosh_path(), "--nodb", "--norc", "--quiet", "--eval", prelude + " void 0;", *shim,
                   "--file", private_copy(patch, home)]
        copy_helpers(patch, home)
        orphans = Orphans()  # what mongosh's children leave (a detached process) is killed when it ends
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True,  # its own process group: killed whole, children included
                                preexec_fn=start)
        orphans.reap(proc.pid)
        try:
            lines, comment, timed_out = _read(proc, echo, timeout)
        finally:
            interrupt.hold()  # its run ended: a signal from now waits for its cleanup and its record
            with uninterrupted():  # (a second SIGTERM here would leave mongosh's children running)
                _kill_group(proc)  # the pipe is left to the reader thread: closing it here would wait for its read
                proc.wait()
                orphans.end()
        if timed_out:
            raise JsPatchFailed(proc.returncode, f"stopped after {timeout:g} s (--patch-timeout / MONGO_PATCH_TIMEOUT)")
    if proc.returncode != 0:
        raise JsPatchFailed(proc.returncode, _js_error(lines))
    return comment


def _read(proc: subprocess.Popen, echo: Callable[[str], None], timeout: float | None):
    """mongosh's lines (echoed, scrubbed) until it and its children close the pipe, it exits (plus a
    grace for what is buffered), or the timeout; what is left in the pipe after that is not read."""
    lines: queue.Queue = queue.Queue()
    def read_all():  # lines end at \n only: a \r is shown (an escape), not a line break
        with io.TextIOWrapper(proc.stdout, encoding="utf-8", errors="backslashreplace", newline="\n") as stream:
            for line in stream:
                lines.put(line)
        lines.put(None)

    threading.Thread(target=read_all, daemon=True, name="mongosh-reader").start()
    deadline = time.monotonic() + timeout if timeout else None
    exited_at = None
    kept, comment = [], None
    while True:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return kept, comment, True
        if exited_at is None and proc.poll() is not None:
            exited_at = now
        if exited_at is not None and now - exited_at >= AFTER_EXIT_GRACE:
            return kept, comment, False
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        if line is None:
            return kept, comment, False
        line = output.scrub(line.rstrip("\n"))
        if line.startswith(COMMENT_MARK):
            comment = one_line(line[len(COMMENT_MARK):])
            continue
        echo(output.visible(line))  # its escape sequences and \r shown, not acted on by the terminal
        if line.strip():
            kept.append(line.strip())


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: the kernel SIGKILLs mongosh when the runner dies, even by SIGKILL (its own session
    keeps it out of the runner's group, so nothing else would). Linux only; elsewhere the prelude's check remains."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _sealed(patch: Patch, home: str, target: MongoTarget | None, client) -> Callable[[], None]:
    """A dry run's mongosh under Landlock (seal.py): it reads only mongosh, Node, the shim, the patch folder and the
    CA bundles, and writes only its own HOME, so `.env` and secret files are out of its reach as they are for Python
    patches; TCP only to the servers' ports, no signal to a process outside (a real run's runner)."""
    from migrator.mongo.connection import ca_files, ports

    seal.check_folder(patch.path.parent)
    mongosh = Path(mongosh_path()).resolve()
    modules = next((p for p in mongosh.parents if p.name == "node_modules"), mongosh.parent.parent)
    readable = [str(modules), str(SHIM.parent), str(patch.path.parent), *seal.SYSTEM_READABLE]
    readable += ca_files(target) if target is not None else []
    tcp = ports(target, client) if target is not None else set()
    srv = target is not None and target.uri.startswith("mongodb+srv:")  # the driver's SRV lookups need DNS

    def start():
        _die_with_parent()
        seal.restrict(readable, [home, *seal.SYSTEM_WRITABLE], tcp, datagrams=srv)
    return start


def _pinned(target: MongoTarget, client) -> str:
    """The servers' names and addresses for JS_PINNED, looked up here (the sealed mongosh has no DNS)."""
    from migrator.mongo.connection import servers

    known = seal.looked_up(host for host, _port in servers(target, client))
    return json.dumps({host: [{"address": a[4][0], "family": 6 if a[0] == socket.AF_INET6 else 4} for a in found]
                       for host, found in known.items()})


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def mongosh_environment(home: str) -> dict[str, str]:
    """All mongosh gets: PATH, locale and time zone, its own HOME/TMPDIR, telemetry off."""
    env = {k: v for k, v in os.environ.items() if k in SAFE_ENVIRONMENT and k not in ("HOME", "TMPDIR")}
    env.update(HOME=home, TMPDIR=home, MONGOSH_FORCE_DISABLE_TELEMETRY_FOR_TESTING="1")
    env.setdefault("PATH", os.defpath)
    return env


def _js_error(lines: list[str]) -> str:
    """mongosh prints `Error: message` (or `SyntaxError: …` and a code frame); keep the message."""
    errors = [line for line in lines if re.match(r"^(Mongo\w*|Syntax|Type|Reference|Range)?Error\b", line)]
    return (errors or lines or [""])[-1]


def check(patch: Patch) -> None:
    """What must hold before a JS patch's `running` record is written: mongosh found, the file readable and
    compiling as mongosh would run it. One line (exit 2) otherwise: nothing ran, nothing was logged."""
    mongosh = mongosh_path()
    try:
        patch.source  # noqa: B018 (read once here: the bytes checked, hashed and run)
    except OSError as exc:
        raise MigratorError(f"{patch.path} cannot be read: {exc.strerror}; fix it (nothing ran, nothing was logged)",
                            USAGE) from exc
    problem = _syntax_problem(mongosh, patch)
    if problem:
        where = f"{patch.path}:{problem['line']}" if problem.get("line") else str(patch.path)
        message = one_line(output.scrub(f"{problem.get('name', 'Error')}: {problem.get('message', '')}"))
        raise MigratorError(f"{where}: {message}; fix it (nothing ran, nothing was logged)", USAGE)


def private_copy(patch: Patch, home: str) -> str:
    """The patch's bytes as checked and hashed (Patch.source), in its own HOME: mongosh runs exactly those, never
    what the path holds by then (a file swapped after the check, a FIFO)."""
    copy = Path(home) / patch.path.name
    copy.write_bytes(patch.source)
    return str(copy)


def copy_helpers(patch: Patch, home: str) -> None:
    """The folder's other .js files (helpers, not patches) beside the private copy, so that `load(__dirname +
    "/helper.js")`, mongosh's idiom for a helper beside the script, finds them. Read as the runner reads a patch: one
    it cannot read so (a link out of the folder, a FIFO) is left out (loading it fails as not found)."""
    for path in sorted(patch.path.parent.glob("*.js")):
        if not PATCH_NAME.match(path.stem):
            with contextlib.suppress(OSError, MigratorError):
                (Path(home) / path.name).write_bytes(read_bytes(path))


def _syntax_problem(mongosh: str, patch: Patch) -> dict | None:
    """mongosh's rewriter, then V8, compile the file without running it: None, or the error. Plain node loads the
    rewriter mongosh would (a third of a mongosh start's CPU); a mongosh that is not a node script checks it itself."""
    node = _node_of(mongosh)
    result = _run_check(mongosh, patch, node) if node else None
    if not node or (result and "unsupported" in result):  # no rewriter beside it: mongosh's --exposeAsyncRewriter
        result = _run_check(mongosh, patch, None)
    if result and "unsupported" in result:
        raise _cannot_check(mongosh, patch, result["unsupported"])
    return result


def _node_of(mongosh: str) -> str | None:
    """The node that runs mongosh (`#!/usr/bin/env node` on the PATH it gets, or a named node), if it is a script."""
    try:
        with open(Path(mongosh).resolve(), "rb") as script:
            first = script.readline(200).decode("utf-8", "replace").split()
    except OSError:
        return None
    if first[:2] == ["#!/usr/bin/env", "node"] and len(first) == 2:
        return shutil.which("node", path=mongosh_environment("")["PATH"])  # the PATH mongosh gets
    if len(first) == 1 and first[0].startswith("#!") and Path(first[0][2:]).name == "node":
        return first[0][2:]
    return None


def _run_check(mongosh: str, patch: Patch, node: str | None) -> dict | None:
    with Home("hcm-mongosh-") as home:
        env = mongosh_environment(home)
        env["HCM_PATCH_FILE"] = private_copy(patch, home)
        if node:
            env["HCM_MONGOSH"] = str(Path(mongosh).resolve())
            command = [node, str(SYNTAX_CHECK)]
        else:
            command = [mongosh, "--nodb", "--norc", "--quiet", "--exposeAsyncRewriter", "--file", str(SYNTAX_CHECK)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=SYNTAX_CHECK_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise _cannot_check(mongosh, patch, str(exc)) from exc
    marked = [line for line in done.stdout.split("\n") if line.startswith(SYNTAX_MARK)]  # not splitlines(): \x1e splits
    if done.returncode != 0 or not marked:
        said = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        raise _cannot_check(mongosh, patch, _js_error(said) or f"exit {done.returncode}")
    return json.loads(marked[-1][len(SYNTAX_MARK):])


def _cannot_check(mongosh: str, patch: Patch, why: str) -> MigratorError:
    return MigratorError(f"{mongosh} could not check the syntax of {patch.path}: {one_line(output.scrub(why))}; use "
                         f"mongosh {MONGOSH_VERSION} (`make mongosh`) or fix MONGOSH (nothing ran, nothing was logged)",
                         USAGE)


def mongosh_path() -> str:
    chosen = os.environ.get("MONGOSH")
    if chosen and not Path(chosen).is_file():
        raise MigratorError(f"mongosh not found at {chosen} (MONGOSH); fix MONGOSH or unset it", USAGE)
    found = chosen or (str(LOCAL_MONGOSH) if LOCAL_MONGOSH.exists() else shutil.which("mongosh"))
    if not found:
        raise MigratorError(
            f"mongosh not found, needed for JavaScript patches; run `make mongosh` (npm, mongosh@{MONGOSH_VERSION}) "
            "or set MONGOSH to its path", USAGE)
    return found


