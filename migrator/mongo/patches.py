"""Patch files in mongo/: `NNNN_name.py` (pymongo) and `NNNN_name.js` (mongosh).

A patch's id is its file name without extension. Ids compare by number and name, so the seed's
log records (`001_close_expired_enrollments`) match `0001_close_expired_enrollments`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from migrator import output
from migrator.errors import USAGE, MigratorError
from migrator.settings import MongoTarget

PATCH_NAME = re.compile(r"^(?P<number>\d+)_(?P<name>[A-Za-z0-9_]+)$")
KINDS = {".py": "py", ".js": "js"}
PROJECT_ROOT = Path(__file__).resolve().parents[2]
MONGOSH_VERSION = "2.12.0"
LOCAL_MONGOSH = PROJECT_ROOT / ".mongosh" / "node_modules" / ".bin" / "mongosh"


def patch_key(patch_id: str) -> tuple[int, str] | str:
    """What makes two ids the same patch: the number (without its zero padding) and the name.

    Old scripts logged `001_close-expired-enrollments.py` too: the suffix, hyphens and case do not count.
    """
    spelled = re.sub(r"\.(py|js)$", "", patch_id.strip(), flags=re.IGNORECASE).replace("-", "_").lower()
    match = PATCH_NAME.match(spelled)
    return (int(match.group("number")), match.group("name")) if match else patch_id


@dataclass(frozen=True)
class Patch:
    id: str
    path: Path
    kind: str

    @property
    def key(self):
        return patch_key(self.id)

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(mongo_dir: Path) -> list[Patch]:
    if not mongo_dir.is_dir():
        raise MigratorError(f"patch folder {mongo_dir} not found; run from the project root or pass --mongo-dir", USAGE)
    patches: dict[tuple, Patch] = {}
    for path in sorted(mongo_dir.iterdir()):
        if path.suffix not in KINDS or not path.is_file() or not path.name[:1].isdigit():
            continue  # README.md, __init__.py, helpers: not patches
        match = PATCH_NAME.match(path.stem)
        if not match:  # looks like a patch, but is not named like one: refuse before reading anything
            raise MigratorError(
                f"{path}: not a valid patch name; patches are NNNN_name.py or NNNN_name.js (digits, an underscore, "
                "then letters, digits and underscores); rename it, or move it out of the patch folder", USAGE)
        patch = Patch(path.stem, path, KINDS[path.suffix])
        number = int(match.group("number"))
        clash = next((p for k, p in patches.items() if k[0] == number), None)
        if clash:
            raise MigratorError(
                f"{clash.path} and {path} share the number {match.group('number')}; "
                "renumber one (`runner.py mongo new` picks the next free number)", USAGE)
        patches[patch.key] = patch
    return sorted(patches.values(), key=lambda p: p.key)


def select(patches: list[Patch], names: list[str]) -> list[Patch]:
    """Patches named by id, by number and name in any padding, or by file name; in the order given."""
    by_key = {p.key: p for p in patches}
    chosen, unknown = [], []
    for name in names:
        patch = by_key.get(patch_key(Path(name).stem)) or next((p for p in patches if p.id.split("_")[0] == name), None)
        (chosen.append(patch) if patch else unknown.append(name))
    if unknown:
        known = ", ".join(p.id for p in patches) or "none"
        raise MigratorError(f"unknown patch {', '.join(unknown)} (patches: {known})", USAGE)
    return chosen


# --- running -------------------------------------------------------------------------------


def run_python(patch: Patch, db, dry_run: bool) -> str | None:
    """Import the patch and call run(db, dry_run); in a dry run db is the read-only view."""
    from migrator.mongo.readonly import ReadOnlyDatabase

    spec = importlib.util.spec_from_file_location(f"hcm_patch_{patch.id}", patch.path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise MigratorError(f"{patch.path} cannot be loaded: {exc.__class__.__name__}: {exc}", USAGE) from exc
    run = getattr(module, "run", None)
    if not callable(run):
        raise MigratorError(f"{patch.path} defines no run(db, dry_run); see `runner.py mongo new --py`", USAGE)
    with output.patch_stderr(), (_sealed() if dry_run else contextlib.nullcontext()):
        comment = run(ReadOnlyDatabase(db) if dry_run else db, dry_run)
    return None if comment is None else output.scrub(str(comment))


# What a patch may see of the environment in a dry run (and all mongosh ever gets).
SAFE_ENVIRONMENT = ("PATH", "HOME", "TMPDIR", "LANG", "LANGUAGE", "TZ", "LC_ALL", "LC_CTYPE", "LC_MESSAGES")


@contextlib.contextmanager
def _sealed():
    """A dry run: no MONGO_URL, password or AWS key in os.environ, and no new MongoClient to write through."""
    import pymongo
    import pymongo.mongo_client

    def refused(*_args, **_kwargs):
        from migrator.mongo.readonly import DryRunWriteError

        raise DryRunWriteError("a new MongoClient is not allowed in a dry run; use the db you are given")

    saved = dict(os.environ)
    clients = pymongo.MongoClient, pymongo.mongo_client.MongoClient
    os.environ.clear()
    os.environ.update({k: v for k, v in saved.items() if k in SAFE_ENVIRONMENT})
    pymongo.MongoClient = pymongo.mongo_client.MongoClient = refused
    try:
        yield
    finally:
        pymongo.MongoClient, pymongo.mongo_client.MongoClient = clients
        os.environ.clear()
        os.environ.update(saved)


class JsPatchFailed(Exception):
    """mongosh ended with a non-zero exit (or was stopped)."""

    def __init__(self, code: int, last_line: str):
        super().__init__(f"mongosh exit {code}" + (f": {last_line}" if last_line else ""))
        self.code = code


# DRY_RUN cannot be changed by the patch: a non-writable, non-configurable global (a `var DRY_RUN =
# false` is ignored, `let`/`const DRY_RUN` is a SyntaxError). patchComment(text) sets the logged comment.
COMMENT_MARK = "\x1ehcm-comment\x1e"
JS_PRELUDE = (
    'Object.defineProperty(globalThis, "DRY_RUN", {{value: {dry}, writable: false, configurable: false, enumerable: true}});'
    ' Object.defineProperty(globalThis, "patchComment", {{value: (text) => print("' + COMMENT_MARK + '" + String(text)),'
    ' writable: false, configurable: false}});'
)


def run_js(patch: Patch, target: MongoTarget | None, dry_run: bool, echo: Callable[[str], None],
           timeout: float | None = None) -> str | None:
    """Run the patch with mongosh, streaming its output; the comment is what it passed to patchComment().

    The URI (with its password) reaches mongosh through the environment, not the command line, so
    it never shows in the process list; mongosh gets nothing else of the runner's environment
    (no DB_PASSWORD, AWS keys, MONGO_URL), a HOME of its own and telemetry off. With no target
    (tests) mongosh runs with no database. After `timeout` seconds mongosh is stopped.
    """
    prelude = JS_PRELUDE.format(dry="true" if dry_run else "false")
    with tempfile.TemporaryDirectory(prefix="hcm-mongosh-") as home:
        env = mongosh_environment(home)
        if target is not None:
            prelude += " db = connect(process.env.HCM_MONGO_URI);"
            env["HCM_MONGO_URI"] = target.shell_uri()
        command = [mongosh_path(), "--nodb", "--norc", "--quiet", "--eval", prelude + " void 0;", "--file", str(patch.path)]
        lines: list[str] = []
        comment = None
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
            timed_out = threading.Event()
            timer = threading.Timer(timeout, lambda: (timed_out.set(), proc.kill())) if timeout else None
            try:
                if timer:
                    timer.start()
                for line in proc.stdout:
                    line = line.rstrip("\n")
                    if line.startswith(COMMENT_MARK):
                        comment = line[len(COMMENT_MARK):]
                        continue
                    echo(line)
                    if line.strip():
                        lines.append(line.strip())
                proc.wait()
            except BaseException:  # SIGTERM to the runner, a failed echo: mongosh does not outlive it
                proc.kill()
                raise
            finally:
                if timer:
                    timer.cancel()
        if timed_out.is_set():
            raise JsPatchFailed(proc.returncode, f"stopped after {timeout:g} s (--patch-timeout / MONGO_PATCH_TIMEOUT)")
    if proc.returncode != 0:
        raise JsPatchFailed(proc.returncode, _js_error(lines))
    return comment


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


def mongosh_path() -> str:
    chosen = os.environ.get("MONGOSH")
    if chosen and not Path(chosen).is_file():
        raise MigratorError(f"mongosh not found at {chosen} (MONGOSH); fix MONGOSH or unset it", USAGE)
    found = chosen or (str(LOCAL_MONGOSH) if LOCAL_MONGOSH.exists() else shutil.which("mongosh"))
    if not found:
        raise MigratorError(
            f"mongosh not found, needed for JavaScript patches; run `make mongosh` (npm, mongosh@{MONGOSH_VERSION}) "
            "or set MONGOSH to its path")
    return found


# --- new patches ---------------------------------------------------------------------------

PY_TEMPLATE = '''"""{id}: what this patch changes, and why.

`runner.py mongo apply {id}` shows what it would do (a dry run: db is read-only);
add --run to apply it. The returned string is logged in applied_patches.
"""


def run(db, dry_run):
    raise NotImplementedError("{id}: write this patch, then delete this line")
    todo = list(db["collection"].find({{"field": "old value"}}, {{"_id": 1}}))
    print(f"{{len(todo)}} documents to change")
    if dry_run:
        return f"would change {{len(todo)}} documents"
    result = db["collection"].update_many({{"_id": {{"$in": [d["_id"] for d in todo]}}}}, {{"$set": {{"field": "new value"}}}})
    return f"changed {{result.modified_count}} of {{len(todo)}} documents"
'''

JS_TEMPLATE = '''// {id}: what this patch changes, and why.
//
// Run by mongosh with `db` connected and DRY_RUN defined: true unless `runner.py mongo apply --run`.
// Only read while DRY_RUN is true (it cannot be changed). patchComment(text) sets the comment logged in
// applied_patches; throw an Error to fail (the run stops and is logged as failed).

throw new Error("{id}: write this patch, then delete this line");
const todo = db.getCollection("collection").countDocuments({{ field: "old value" }});
if (DRY_RUN) {{
  patchComment(`would change ${{todo}} documents`);
}} else {{
  const result = db.getCollection("collection").updateMany({{ field: "old value" }}, {{ $set: {{ field: "new value" }} }});
  patchComment(`changed ${{result.modifiedCount}} of ${{todo}} documents`);
}}
'''


def new(mongo_dir: Path, name: str, kind: str) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if not slug:
        raise MigratorError(f"patch name {name!r} has no letters or digits; e.g. close_orphan_enrollments", USAGE)
    numbers = [p.key[0] for p in discover(mongo_dir)]
    patch_id = f"{max(numbers, default=0) + 1:04d}_{slug}"
    path = mongo_dir / f"{patch_id}.{kind}"
    path.write_text((PY_TEMPLATE if kind == "py" else JS_TEMPLATE).format(id=patch_id), encoding="utf-8")
    return path
