"""Patch files in mongo/: `NNNN_name.py` (pymongo) and `NNNN_name.js` (mongosh).

A patch's id is its file name without extension. Ids compare by number and name, so the seed's
log records (`001_close_expired_enrollments`) match `0001_close_expired_enrollments`.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from migrator import source_files
from migrator.errors import USAGE, MigratorError

PATCH_NAME = re.compile(r"(?P<number>[0-9]+)_(?P<name>[A-Za-z0-9_]+)\Z")
KINDS = {".py": "py", ".js": "js"}
PROJECT_ROOT = Path(__file__).resolve().parents[2]


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

    @functools.cached_property
    def source(self) -> bytes:
        """The file's bytes, read once: what is checked, hashed, recorded and run (js_patch.py) are the same, even
        if the file is replaced meanwhile."""
        return source_files.read_bytes(self.path)

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.source).hexdigest()


def one_line(text: str) -> str:
    """Text from outside (an exception, a comment) as one line: its lines joined by " | "."""
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())


# What a record keeps and a line prints of a patch's text (comment, error, traceback): a record must stay far
# below the server's 16 MB document limit, or the settle fails and the patch stays `running`.
MAX_TEXT = 64 * 1024


def bounded(text: str, limit: int = MAX_TEXT) -> str:
    """Outside text cut to at most `limit` characters, saying so and how long it was (bounded twice: the same)."""
    if len(text) <= limit:
        return text
    note = f" ... (truncated, {len(text.encode('utf-8', 'replace'))} bytes)"
    return text[:limit - len(note)] + note


def discover(mongo_dir: Path) -> list[Patch]:
    if not mongo_dir.is_dir():
        raise MigratorError(f"patch folder {mongo_dir} not found; run from the project root or pass --mongo-dir", USAGE)
    patches: dict[tuple, Patch] = {}
    for path in sorted(mongo_dir.iterdir()):
        if path.suffix.lower().strip() not in KINDS or not path.name[:1].isdigit():  # `.js\n` too: refused below
            continue  # README.md, __init__.py, helpers: not patches
        _refuse_odd(path)  # looks like a patch: it must be one, or the command stops
        match = PATCH_NAME.match(path.stem)
        patch = Patch(path.stem, path, KINDS[path.suffix])
        number = int(match.group("number"))
        clash = next((p for k, p in patches.items() if k[0] == number), None)
        if clash:
            raise MigratorError(
                f"{clash.path} and {path} share the number {match.group('number')}; "
                "renumber one (`runner.py mongo new` picks the next free number)", USAGE)
        patches[patch.key] = patch
    return sorted(patches.values(), key=lambda p: p.key)


def _refuse_odd(path: Path) -> None:
    """A name that looks like a patch's: a readable regular file inside the folder named NNNN_name.py/.js
    (ASCII digits, lower-case suffix), or one line that stops the command before anything is read or run."""
    source_files.check(path, path.parent)
    if path.suffix not in KINDS:
        raise MigratorError(f"{source_files.shown(path)}: looks like a patch but has the suffix "
                            f"{source_files.shown(path.suffix)}; patches end in lower-case "
                            ".py or .js: rename it, or move it out of the patch folder", USAGE)
    if not PATCH_NAME.match(path.stem):
        raise MigratorError(
            f"{source_files.shown(path)}: not a valid patch name; patches are NNNN_name.py or NNNN_name.js (ASCII "
            "digits, an underscore, then letters, digits and underscores); rename it, or move it out of the patch "
            "folder", USAGE)


def select(patches: list[Patch], names: list[str]) -> list[Patch]:
    """Patches named by id, by number (any padding), by number and name, or by file name; in the order
    given, each once."""
    by_key = {p.key: p for p in patches}
    chosen, unknown = [], []
    for name in names:
        stem = Path(name).stem if Path(name).suffix.lower() in KINDS else Path(name).name
        patch = by_key.get(patch_key(stem))
        if patch is None and re.fullmatch(r"[0-9]+", stem):
            patch = next((p for p in patches if p.key[0] == int(stem)), None)
        if patch is None:
            unknown.append(name)
        elif patch not in chosen:
            chosen.append(patch)
    if unknown:
        known = ", ".join(p.id for p in patches) or "none"
        raise MigratorError(f"unknown patch {', '.join(unknown)} (patches: {known})", USAGE)
    return chosen


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
    number = f"{max(numbers, default=0) + 1:04d}_"
    source_files.check_new_name(number, slug, f".{kind}")
    patch_id = f"{number}{slug}"
    path = mongo_dir / f"{patch_id}.{kind}"
    try:
        path.write_text((PY_TEMPLATE if kind == "py" else JS_TEMPLATE).format(id=patch_id), encoding="utf-8")
    except OSError as exc:
        raise MigratorError(f"cannot write {path} ({exc.strerror or exc}); fix the folder's permissions", USAGE)
    return path
