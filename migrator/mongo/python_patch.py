"""Running a Python patch: load it, call run(db, dry_run), and hold it to its contract.

Loading and running happen with the patch's output scrubbed (print, sys.stderr, sys.__stderr__, and
so logging handlers created at import time), with the patch folder on sys.path (helpers beside
the patches import), and with os._exit turned into a failure. In a dry run both also happen
sealed: no secret in os.environ and no MongoClient of any kind can be built. A patch that leaves
a thread running fails: a patch must finish its work before returning.

Against a server this runs inside the patch's own child process (patch_child.py), where a dry run is
also sealed from the writer's credentials; in-process only for tests on an in-memory database. These
guards stop a careless patch; a deliberate one can get around them (gc.get_objects()), so only
MONGO_READONLY_URL, which the child connects as, makes its writes impossible.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
from types import ModuleType
from typing import Iterator

from migrator import output
from migrator.env import SECRET_NAME
from migrator.errors import USAGE, MigratorError, words
from migrator.mongo.patches import Patch, one_line

# What a patch may see of the environment in a dry run (and all mongosh ever gets).
SAFE_ENVIRONMENT = ("PATH", "HOME", "TMPDIR", "LANG", "LANGUAGE", "TZ", "LC_ALL", "LC_CTYPE", "LC_MESSAGES")
# Environment values masked in everything a patch prints (it could read them from /proc/self/environ).


class PatchExited(BaseException):
    """The patch called os._exit(): a failure of the patch, not the end of the runner."""

    def __init__(self, code):
        super().__init__(f"the patch called os._exit({code!r}) (a patch returns its comment; raise to fail)")


class StrayThreads(Exception):
    def __init__(self, threads: list[threading.Thread]):
        super().__init__(f"threads still running after run() returned: {', '.join(t.name for t in threads)}; "
                         "a patch must finish its work before returning (join its threads)")
        self.threads = threads


def load(patch: Patch, dry_run: bool) -> ModuleType:
    """Import the patch (its module-level code runs here); one line (exit 2) if it cannot be loaded."""
    with guarded(patch, dry_run):
        return _load(patch)


def run(patch: Patch, db, dry_run: bool, module: ModuleType | None = None) -> str | None:
    """Call run(db, dry_run) (loading the patch first unless given); in a dry run db is the read-only view."""
    from migrator.mongo.readonly import ReadOnlyDatabase

    with guarded(patch, dry_run):
        module = module or _load(patch)
        with _threads_started() as started:
            comment = module.run(ReadOnlyDatabase(db) if dry_run else db, dry_run)
        stray = [t for t in started if t.is_alive()]
        if stray:
            raise StrayThreads(stray)
    return None if comment is None else one_line(output.scrub(str(comment)))


class LoadFailed(MigratorError):
    """A patch that cannot be loaded (nothing ran, nothing was logged): `reason` and its file's `line` (if known)."""

    def __init__(self, patch: Patch, reason: str, line: int | None = None):
        where = f"{patch.path}:{line}" if line else str(patch.path)
        super().__init__(f"{where} cannot be loaded: {reason}; fix it (nothing ran, nothing was logged)", USAGE)
        self.reason, self.line = reason, line


def _load(patch: Patch) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"hcm_patch_{patch.id}", patch.path)
    module = importlib.util.module_from_spec(spec)
    try:  # compiled from the bytes hashed (Patch.source): no __pycache__ written beside it, none (planted or stale) read
        exec(compile(patch.source, str(patch.path), "exec", dont_inherit=True), module.__dict__)
    except (Exception, SystemExit, PatchExited) as exc:
        raise LoadFailed(patch, one_line(output.scrub(words(exc))), line_in(patch.path, exc)) from exc
    if not callable(getattr(module, "run", None)):
        raise LoadFailed(patch, "it defines no run(db, dry_run) (see `runner.py mongo new --py`)")
    return module


@contextlib.contextmanager
def guarded(patch: Patch, dry_run: bool) -> Iterator[None]:
    from migrator.mongo.readonly import gridfs_reads

    with output.patch_stderr(), _dunder_streams(), _on_path(str(patch.path.parent)), _no_os_exit(), \
            (sealed() if dry_run else contextlib.nullcontext()), \
            (gridfs_reads() if dry_run else contextlib.nullcontext()):
        yield


@contextlib.contextmanager
def _threads_started() -> Iterator[list[threading.Thread]]:
    """The threads the patch starts (from this thread, or from a thread it started)."""
    started: list[threading.Thread] = []
    ours = {threading.current_thread()}
    real = threading.Thread.start

    def start(thread, *args, **kwargs):
        if threading.current_thread() in ours:
            started.append(thread)
            ours.add(thread)
        return real(thread, *args, **kwargs)

    threading.Thread.start = start
    try:
        yield started
    finally:
        threading.Thread.start = real


@contextlib.contextmanager
def _dunder_streams() -> Iterator[None]:
    """sys.__stderr__/__stdout__ through the masking too (sys.stderr is already redirected)."""
    saved = sys.__stderr__, sys.__stdout__
    sys.__stderr__, sys.__stdout__ = sys.stderr, sys.stdout
    try:
        yield
    finally:
        sys.__stderr__, sys.__stdout__ = saved


@contextlib.contextmanager
def _on_path(folder: str) -> Iterator[None]:
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)


@contextlib.contextmanager
def _no_os_exit() -> Iterator[None]:
    real = os._exit

    def refused(code=0):
        raise PatchExited(code)

    os._exit = refused
    try:
        yield
    finally:
        os._exit = real


def register_environment_secrets() -> None:
    """Mask secret-looking environment values in a patch's output: it can read /proc/<pid>/environ."""
    for name, value in os.environ.items():
        if SECRET_NAME.search(name):
            output.register_secret(value)


def client_classes() -> list[type]:
    """Every MongoClient class pymongo exposes (aliases are the same class objects)."""
    import pymongo
    from pymongo.asynchronous.mongo_client import AsyncMongoClient
    from pymongo.synchronous.mongo_client import MongoClient

    found = [MongoClient, AsyncMongoClient, pymongo.MongoClient, getattr(pymongo, "AsyncMongoClient", None)]
    return list({c for c in found if isinstance(c, type)})


@contextlib.contextmanager
def sealed() -> Iterator[None]:
    """A dry run: no MONGO_URL, password or AWS key in os.environ, and no MongoClient can be built.

    If the patch left threads running, the seal stays on until they end: the runner stops anyway,
    and those threads must not find a client or a secret.
    """
    import pymongo
    import pymongo.mongo_client

    def refused(*_args, **_kwargs):
        from migrator.mongo.readonly import DryRunWriteError

        raise DryRunWriteError("a new MongoClient is not allowed in a dry run; use the db you are given")

    saved = dict(os.environ)
    register_environment_secrets()
    classes = {c: c.__dict__.get("__init__") for c in client_classes()}
    names = pymongo.MongoClient, pymongo.mongo_client.MongoClient  # mongomock (tests) replaces these names
    os.environ.clear()
    os.environ.update({k: v for k, v in saved.items() if k in SAFE_ENVIRONMENT})
    for cls in classes:
        cls.__init__ = refused
    pymongo.MongoClient = pymongo.mongo_client.MongoClient = refused

    def lift(wait_for=()):
        for thread in wait_for:
            thread.join()
        for cls, init in classes.items():
            if init is None:
                del cls.__init__
            else:
                cls.__init__ = init
        pymongo.MongoClient, pymongo.mongo_client.MongoClient = names
        os.environ.clear()
        os.environ.update(saved)

    try:
        yield
    except StrayThreads as exc:
        threading.Thread(target=lift, args=(exc.threads,), name="hcm-lift-seal", daemon=True).start()
        raise
    except BaseException:
        lift()
        raise
    else:
        lift()


def describe(exc: BaseException) -> str:
    """A patch's exception as one scrubbed line (its text comes from outside the runner)."""
    if isinstance(exc, SystemExit):
        text = f"the patch called sys.exit({exc.code!r}) (a patch returns its comment; raise to fail)"
    elif isinstance(exc, PatchExited):
        text = str(exc)
    else:
        text = words(exc)
    return one_line(output.scrub(text))


def line_in(patch_path, exc: BaseException) -> int | None:
    """The patch file's line the error came through (its deepest frame there; a SyntaxError's own line), so that
    the one error line points at it without -v; None when the patch's code is not on the traceback."""
    import traceback

    path = os.path.abspath(patch_path)
    if isinstance(exc, SyntaxError) and exc.filename and os.path.abspath(exc.filename) == path:
        return exc.lineno
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if os.path.abspath(f.filename) == path]
    return lines[-1] if lines else None


def located(patch: Patch, exc: BaseException | None, line: int | None = None) -> str:
    """`path:line` of a patch's error (`path` when its line is unknown)."""
    line = line or (line_in(patch.path, exc) if exc is not None else None)
    return f"{patch.path}:{line}" if line else str(patch.path)
