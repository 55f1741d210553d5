"""A Python patch runs in a child process of its own, started fresh (no inherited memory or connections).

The runner sends the child, on its stdin, the patch and the URI to use (never through the environment or
the command line); the child connects, loads the patch and says so, then waits for the runner's go (in a
real run the `running` record is written in between), runs it and sends back its comment or its error on a
pipe of their own. The runner then kills the child's whole process group and reaps it before it settles
the record: threads the patch left behind die with it and cannot write afterwards, and so do processes it
started in a session of their own (orphans.py), a timeout included.

A dry run is sealed: the child's environment holds only PATH, locale and time zone (no MONGO_URL, DB_* or
AWS secret), its URI is the read-only user's (MONGO_READONLY_URL) when one is set, the runner is made
non-dumpable, and where the kernel has Landlock (`seal.py`) the child can read only what Python, the
migrator package, the patch folder and the CA bundle need: not `.env`, secret files or /proc/<runner>.
A real run's child gets the runner's environment and no file restriction, as when patches ran in-process.

The child runs unbuffered (its output reaches the runner line by line, and is not lost when it is killed),
reads the protocol on a descriptor of its own with stdin on /dev/null (a patch reading stdin gets its end, not
the protocol). The patch shares the child's process, so it can write on the results pipe itself: the runner
takes no exit code and no error kind from the child, checks every message's shape, and takes as the outcome only
a message carrying the nonce it sent with go (which module-level code cannot know). Anything else is "its
process sent an unreadable result", of that patch. Every text from the child is scrubbed, made visible and
bounded here, with the runner's passwords. --patch-timeout bounds the load and the run.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

from migrator import interrupt, output
from migrator.mongo import seal
from migrator.mongo.connection import ca_files, servers
from migrator.mongo.homes import Home
from migrator.mongo.js_patch import _die_with_parent, _kill_group, mongosh_environment
from migrator.mongo.orphans import Orphans, uninterrupted
from migrator.mongo.patches import Patch, bounded
from migrator.targets import MongoTarget

PACKAGE = Path(__file__).resolve().parents[1]  # migrator/
GO = "go"  # and the nonce
READER_JOIN = 2.0  # seconds to drain the child's output after it is killed (its pipes close then)
MAX_MESSAGE = 64 << 20  # bytes of one message: the texts in it are bounded only after they are scrubbed here
UNREADABLE = "its process sent an unreadable result"
START_SECONDS = 60.0  # for the child's interpreter and the runner's own modules, before --patch-timeout's clock starts
CLOSED_GRACE = 1.0  # seconds for the process to exit once its results pipe ended (else the patch closed the pipe)
POLL = 0.2  # seconds between two looks at the patch's process where the kernel has no pidfd (before Linux 5.3)


def used(db, target: MongoTarget | None) -> bool:
    """Whether a patch runs in a child: against a server, yes; not for mongomock (tests without Go), whose
    database lives in this process only."""
    return target is not None and type(db).__module__.startswith("pymongo")


class PatchError(Exception):
    """The patch's own failure in the child, already described as one scrubbed line; `line`: where in the patch."""

    def __init__(self, text: str, line: int | None = None):
        super().__init__(text)
        self.line = line


class ChildTraceback(Exception):
    """The child's traceback, chained under the error so that -v shows where in the patch it failed."""


class Child:
    """A patch's child process, loaded and waiting for go(); kill() it if the run does not go ahead."""

    def __init__(self, patch: Patch, target: MongoTarget, dry_run: bool, client=None):
        from migrator.mongo.python_patch import register_environment_secrets

        register_environment_secrets()  # the child's output is masked as the patch's always was
        seal.non_dumpable()  # before the child exists: it cannot read this process's memory or /proc files
        if dry_run:
            seal.check_folder(patch.path.parent)
        self.patch, self.dry_run = patch, dry_run
        self._home = Home("hcm-patch-")
        env = mongosh_environment(self._home.name) if dry_run else dict(os.environ)
        read, write = os.pipe()
        self._orphans = Orphans()  # what its processes leave (a daemon) comes to the runner, and is killed with it
        command = [sys.executable, "-I", "-u", "-c", f"import sys; sys.path.insert(0, {str(PACKAGE.parent)!r}); "
                   f"from migrator.mongo.patch_child import main; main({write})"]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, cwd=self._home.name, pass_fds=(write,),
                                     start_new_session=True, preexec_fn=_die_with_parent)
        self._orphans.reap(self.proc.pid)
        os.close(write)
        self._results = _Messages(read, self.proc)
        self.timeout = target.patch_timeout or None
        self._readers = [_echo(self.proc.stdout, False), _echo(self.proc.stderr, True)]
        try:  # (a name that cannot be looked up, a dead pipe: the child and its reaper end here too)
            options = target.client_options()
            if options.get("tlsCAFile"):  # the child's cwd is its HOME: a relative path would name another file
                options["tlsCAFile"] = os.path.abspath(options["tlsCAFile"])
            spec = {"id": patch.id, "path": os.path.abspath(patch.path), "uri": target.uri, "database": target.database,
                    "source": base64.b64encode(patch.source).decode(),  # the hashed bytes run, not the path's now
                    "options": options, "dry_run": dry_run, "home": self._home.name,
                    "servers": sorted(servers(target, client)) if dry_run else [], "ca_files": ca_files(target)}
            spec["pinned"] = seal.looked_up(host for host, _port in spec["servers"])  # no DNS in the seal
            self.proc.stdin.write(json.dumps(spec).encode() + b"\n")
            self.proc.stdin.flush()
            self._loaded()
        except BaseException:
            self.kill()
            raise

    def go(self) -> str | None:
        """Run the loaded patch; its comment (not yet cleaned), or its error. The child is dead when this returns."""
        nonce = secrets.token_hex(16)
        try:
            try:
                self.proc.stdin.write(f"{GO} {nonce}\n".encode())
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass  # the child is gone already: _outcome says so
            return self._outcome(nonce)
        finally:
            interrupt.hold()  # its run ended: a signal from now waits for its cleanup and its record
            self.kill()

    def kill(self) -> None:
        with uninterrupted():  # (a second SIGTERM here would leave its daemons running)
            _kill_group(self.proc)
            self.proc.wait()
            self._orphans.end()
            for reader in self._readers:
                reader.join(READER_JOIN)
            self._results.close()
            self._home.cleanup()

    def _loaded(self) -> None:
        """The child says it loaded the patch, or why it could not: either way one line naming the patch (exit 2,
        nothing ran, nothing logged), whatever the child wrote (its module-level code can write on the pipe)."""
        from migrator.mongo.python_patch import LoadFailed

        try:  # (a loaded machine's slow interpreter start is not the patch's time)
            said = self._next("before it was loaded", START_SECONDS)
            if said == {"started": True}:
                said = self._next("before it was loaded")
        except PatchError as exc:
            raise LoadFailed(self.patch, str(exc)) from exc
        if said == {"loaded": True} and not self._results.pending():
            return
        if _shaped(said, {"error": str, "text": str, "traceback": str, "line": (int, type(None))}) and \
                said["error"] == "load":
            raise LoadFailed(self.patch, clean(said["text"]), _line(said)) from _traceback(said)
        raise LoadFailed(self.patch, UNREADABLE)

    def _outcome(self, nonce: str) -> str | None:
        """run()'s comment, or its error as the patch's failure; only a message carrying `nonce` counts."""
        from migrator.mongo.readonly import DryRunWriteError

        said = self._next("before run() returned")
        if _shaped(said, {"nonce": str, "comment": (str, type(None))}) and said["nonce"] == nonce:
            return said["comment"]
        if not (_shaped(said, {"nonce": str, "error": str, "text": str, "traceback": str, "line": (int, type(None))})
                and said["nonce"] == nonce and said["error"] in ("failed", "write")):
            raise PatchError(UNREADABLE)
        if said["error"] == "write" and self.dry_run:
            raise DryRunWriteError(clean(said["text"])) from _traceback(said)
        raise PatchError(clean(said["text"]), _line(said)) from _traceback(said)

    def _next(self, when: str, seconds: float | None = None):
        """The child's next message (decoded JSON, or None when it is not JSON); PatchError when the child ended
        or --patch-timeout (else `seconds`) passed first (the child is killed then)."""
        bound = seconds or self.timeout
        deadline = time.monotonic() + bound if bound else None
        try:
            line = self._results.next(deadline)
        except TimeoutError:
            raise self._stopped(seconds) from None
        except OverflowError:
            return None
        if line is None:
            self._ended(when, deadline, seconds)
        try:
            return json.loads(line)
        except (ValueError, RecursionError):
            return None

    def _stopped(self, seconds: float | None) -> PatchError:
        """Its time is up: the child is killed, and the error says which bound."""
        _kill_group(self.proc)
        if seconds:
            return PatchError(f"its process did not start within {seconds:g} s (the machine is overloaded?); "
                              "nothing of the patch ran: run again")
        return PatchError(f"stopped after {self.timeout:g} s (--patch-timeout / MONGO_PATCH_TIMEOUT)")

    def _ended(self, when: str, deadline: float | None, seconds: float | None) -> None:
        """The results pipe ended: its process exits (which closes the pipe), or the patch closed the pipe and works on
        (os.closerange(3, N)), waited for within the same deadline all the same."""
        try:
            self.proc.wait(_left(deadline, CLOSED_GRACE))
            closed = self.proc.returncode == 0  # the child's own end: what it sent was lost, its pipe was closed
        except subprocess.TimeoutExpired:  # alive after its pipe ended: the patch closed it
            try:
                self.proc.wait(_left(deadline))
            except subprocess.TimeoutExpired:
                raise self._stopped(seconds) from None
            closed = True
        if closed:
            raise PatchError("the patch closed the runner's results pipe (a descriptor it did not open), so its "
                             f"outcome is unknown; its process ended (exit {self.proc.returncode})")
        raise PatchError(f"the patch's process ended (exit {self.proc.returncode}) {when}")


def _left(deadline: float | None, at_most: float | None = None) -> float | None:
    """Seconds until `deadline` (None: no bound), at most `at_most`."""
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    return at_most if left is None else left if at_most is None else min(left, at_most)


def clean(text: str) -> str:
    from migrator.mongo import log

    return log.clean(text)  # the child knows no password of the runner's (its URI's included)


def _shaped(said, fields: dict) -> bool:
    """A message with exactly these fields, each of its type (a bool is not an int)."""
    return isinstance(said, dict) and said.keys() == fields.keys() and all(
        isinstance(said[k], kind) and not isinstance(said[k], bool) for k, kind in fields.items())


def _line(said: dict) -> int | None:
    return said["line"] if isinstance(said["line"], int) and said["line"] > 0 else None


def _traceback(said: dict) -> ChildTraceback:
    """The child's traceback, for -v: scrubbed and bounded like every text from it."""
    return ChildTraceback(bounded(output.scrub(said["traceback"])))


class _Messages:
    """The results pipe: one JSON message a line, read with a deadline and at most MAX_MESSAGE bytes a line.

    The pipe ends when the patch's process exits, or when it ends: a process it forked (os.fork, multiprocessing)
    holds the pipe's write end and would keep the runner waiting for an end that never comes, had its process died
    without a result (the OOM killer, a segfault). What the process wrote before it exited is in the pipe then."""

    def __init__(self, fd: int, proc: subprocess.Popen):
        self.fd, self.proc, self.buffer, self.scanned, self.ended = fd, proc, bytearray(), 0, False
        try:
            self.pidfd = os.pidfd_open(proc.pid)  # readable once the process exits: no polling
        except (AttributeError, OSError):
            self.pidfd = None
        self.exited = False

    def next(self, deadline: float | None) -> bytes | None:
        """The next line; None at the end of the pipe; TimeoutError after `deadline`; OverflowError if too long."""
        while True:
            end = self.buffer.find(b"\n", self.scanned)
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[:end + 1]
                self.scanned = 0
                return line
            self.scanned = len(self.buffer)
            if self.ended:
                line, self.buffer[:] = bytes(self.buffer), b""
                return line or None  # a last line without its newline is read (and found unreadable)
            if len(self.buffer) > MAX_MESSAGE:
                raise OverflowError(len(self.buffer))
            if not (self._ready(0) if self.exited else self._wait(deadline)):
                self.ended = True  # the process exited and the pipe holds nothing more of it
                continue
            chunk = os.read(self.fd, 1 << 16)
            self.ended = not chunk
            self.buffer += chunk

    def _wait(self, deadline: float | None) -> bool:
        """Until the pipe has something (True), the patch's process exited (what is in the pipe), or `deadline`."""
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            step = left if self.pidfd is not None else POLL if left is None else min(POLL, left)
            ready = select.select([self.fd, *([self.pidfd] if self.pidfd is not None else [])], [], [], step)[0]
            if self.fd in ready:
                return True
            if self.proc.poll() is not None:
                self.exited = True
                return self._ready(0)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError

    def _ready(self, wait: float) -> bool:
        return bool(select.select([self.fd], [], [], wait)[0])

    def pending(self) -> bool:
        """Whether more than one message came (before go, only one can be the child's own)."""
        return bool(self.buffer) or bool(select.select([self.fd], [], [], 0)[0])

    def close(self) -> None:
        for fd in (self.fd, self.pidfd):
            if fd is not None and fd >= 0:
                os.close(fd)
        self.fd, self.pidfd = -1, None


def _echo(pipe, err: bool) -> threading.Thread:
    """Copy the child's stdout or stderr through output's patch stream (masked; json: patch_output events). Lines
    end at \n only: a \r reaches the stream, which shows it as an escape (as any other byte the patch printed)."""
    to = output.patch_stream(err)
    stream = io.TextIOWrapper(pipe, encoding="utf-8", errors="backslashreplace", newline="\n")

    def copy():
        with stream:
            for line in stream:  # whole lines as they come; a last line without a newline at the child's end
                to.write(line)
                to.flush()

    thread = threading.Thread(target=copy, daemon=True, name="patch-output")
    thread.start()
    return thread


def readable(patch_folder: Path, ca_files: list[str]) -> list[str]:
    """What a sealed child may read: Python and its packages (never the project root or above it), the
    migrator package, the patch folder, the CA bundle, and the system folders."""
    root = PACKAGE.parent
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path}
    kept = [p for p in paths if p and os.path.isabs(p) and not (root == Path(p) or root.is_relative_to(p))]
    return [*kept, str(PACKAGE), str(patch_folder), *ca_files, *seal.SYSTEM_READABLE]


def main(results_fd: int) -> None:
    """The child: load, say so, wait for go, run, say how it went."""
    results = os.fdopen(results_fd, "w", encoding="utf-8")

    def send(**message):
        results.write(json.dumps(message) + "\n")
        results.flush()

    protocol = _protocol_off_stdin()
    spec = json.loads(protocol.readline())
    patch = Patch(spec["id"], Path(spec["path"]), "py")
    patch.__dict__["source"] = base64.b64decode(spec["source"])  # (cached_property's slot) the bytes the runner hashed
    nonce = None
    try:
        import pymongo

        from migrator.mongo import python_patch

        send(started=True)  # --patch-timeout counts from here: loading the patch, then running it
        if spec["dry_run"]:
            seal.pin_names(spec["pinned"])
            seal.restrict(readable(patch.path.parent, spec["ca_files"]),
                          [spec["home"], *seal.SYSTEM_WRITABLE], [port for _host, port in spec["servers"]],
                          datagrams=spec["uri"].startswith("mongodb+srv:"))
        client = pymongo.MongoClient(spec.pop("uri"), **spec["options"])
        module = python_patch.load(patch, spec["dry_run"])
        send(loaded=True)
        word, _, nonce = protocol.readline().strip().partition(" ")
        if word != GO:
            return
        comment = python_patch.run(patch, client[spec["database"]], spec["dry_run"], module)
        sys.stdout.flush()
        sys.stderr.flush()
        outcome = {"comment": comment}
    except BaseException as exc:  # everything the patch can raise, sys.exit included: described, then sent
        outcome = _described(exc, patch.path, loaded=nonce is not None)
    seal.end_descendants()  # sealed: processes it started in a session of their own end too (else: documented)
    try:
        send(**outcome) if nonce is None else send(nonce=nonce, **outcome)
    except OSError:
        pass  # the patch closed the pipe (os.closerange): the runner says so, not this process's traceback
    os._exit(0)  # nothing else runs here: not the patch's threads, not atexit


def _protocol_off_stdin():
    """The runner's pipe on a private descriptor, and stdin on /dev/null: a patch that reads stdin gets its end at
    once rather than waiting on the protocol (and the runner on it) forever."""
    protocol = os.fdopen(os.dup(0), "r", encoding="utf-8")  # os.dup: not inherited by what the patch starts
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = open(0, "r", closefd=False)
    return protocol


def _described(exc: BaseException, patch_path: Path, loaded: bool) -> dict:
    """The message for an error: before go, why the patch cannot be loaded; after, run()'s failure."""
    import traceback

    from migrator.mongo.python_patch import LoadFailed, describe, line_in
    from migrator.mongo.readonly import DryRunWriteError

    sys.stdout.flush()
    sys.stderr.flush()
    said = {"text": describe(exc), "traceback": "".join(traceback.format_exception(exc)), "line": line_in(patch_path, exc)}
    if not loaded:
        return {**said, "error": "load", **({"text": exc.reason, "line": exc.line} if isinstance(exc, LoadFailed) else {})}
    if isinstance(exc, DryRunWriteError):
        return {**said, "error": "write", "text": str(exc)}
    return {**said, "error": "failed"}
