"""Flyway folders as they are: `V<version>__<description>.sql`, `U<version>__*.sql` (its rollback) and
`R__<description>.sql` (repeatable), read from one or several locations (Flyway's `filesystem:a,filesystem:b`).

Each file is one yoyo migration whose id is its file name without `.sql` (what Flyway stores as `script`), so
every command works on these folders as on the runner's own. Flyway's order is kept: versions compared part by
part as integers (`1.10` after `1.9`, `1.0` equals `1`), whatever the digits mean (`20242109141800` is not a date
but a number), then the repeatables by description. Flyway's own history table (history.py) is the record.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from datetime import datetime, timezone
from pathlib import Path, PosixPath

from migrator import lazy_re, source_files
from migrator.errors import USAGE, MigratorError

# A description as Flyway takes it, minus what could break a line: ASCII letters, digits, space and
# `_ - . , ( ) + &`, and letters of any script (`créer`); empty too (`V9__.sql`). A name is printed in `plan`'s
# psql script (inside SQL comments) and in messages, so a quote, backslash or control character (a newline, a
# bidirectional override) never gets that far: the version is ASCII digits only (`\d` takes Arabic-Indic ones,
# which int() reads) and the name is anchored with \Z (`$` takes a trailing newline).
_DESCRIPTION = r"(?:[A-Za-z0-9 _.,()+&\-]|[^\x00-\x7f])*"
VERSIONED = lazy_re.compile(rf"(?P<kind>[VU])(?P<version>[0-9]+(?:[._][0-9]+)*)__(?P<description>{_DESCRIPTION})"
                       r"\.(?i:sql)\Z", re.ASCII)
REPEATABLE = re.compile(rf"(?P<kind>R)__(?P<description>{_DESCRIPTION})\.(?i:sql)\Z", re.ASCII)
# Flyway's SQL callbacks (beforeMigrate.sql, afterMigrate__grants.sql, ...): run by Flyway around its commands.
CALLBACK = lazy_re.compile(r"(?:before|after)[A-Za-z]*(?:__.*)?\.sql\Z|createSchema(?:__.*)?\.sql\Z", re.IGNORECASE)
LOOKS_LIKE = lazy_re.compile(r"^[VUR]\d*[._\d]*__")
RUNNER_NAME = lazy_re.compile(r"^\s*\d+_")
VALID_NAME = ("V<version>__<description>.sql, U<version>__<description>.sql or R__<description>.sql (version: digits "
              "separated by `.` or `_`; description: letters, digits, spaces, `_ - . , ( ) + &`; no quote, "
              "backslash or control character, since names are printed in plan's psql script)")


# The script Flyway records for each file check_names read: its path relative to its location (`seed/V2__a.sql`).
_SCRIPTS: dict[Path, str] = {}


class Locations(PosixPath):
    """The migrations folder given as Flyway locations: the first one, carrying all of them (`locations`), so
    every command that takes a folder takes several. Paths derived from it are plain ones (no `locations`)."""

    locations: list[Path]


def locations(value: str | Path) -> Path:
    """`--sql-dir` / SQL_DIR / FLYWAY_LOCATIONS as a folder: `filesystem:` prefixes dropped, commas separating
    several locations (merged in version order by check_names). A `classpath:` location cannot be read here."""
    # (each trimmed, a single one too: a ConfigMap's block scalar ends FLYWAY_LOCATIONS with a newline; a folder
    # that exists under the name as given is taken as it is)
    if Path(value).is_dir():
        return Path(value)
    parts = [p.strip() for p in str(value).split(",") if p.strip()] or [str(value)]
    paths = []
    for part in parts:
        if part.startswith("classpath:"):
            raise MigratorError(f"location {part}: a Java classpath cannot be read by this runner; give the folder as "
                                "filesystem:<path> (FLYWAY_LOCATIONS, SQL_DIR or --sql-dir)", USAGE)
        paths.append(Path(part.removeprefix("filesystem:")))
    if len(paths) == 1:
        return paths[0]
    folder = Locations(paths[0])
    folder.locations = paths
    return folder


def folders(sql_dir: Path) -> list[Path]:
    return list(getattr(sql_dir, "locations", None) or [sql_dir])


def version_key(version: str) -> tuple[int, ...]:
    """Flyway's comparison: integer parts, `_` as `.`, trailing zero parts dropped (`1.0` is `1`)."""
    parts = [int(p) for p in version.replace("_", ".").split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


VERSION = re.compile(r"[0-9]+(?:[._][0-9]+)*\Z", re.ASCII)


def by_version(migrations, text: str):
    """The versioned migration an ID given as a version names (`1.10`, `1_10`, `01.10.0`: Flyway's comparison),
    else None."""
    if not VERSION.match(text):
        return None
    key = version_key(text)
    return next((m for m in migrations if (v := version_of(m)) and version_key(v) == key), None)


def parse(name: str) -> re.Match | None:
    match = VERSIONED.match(name) or REPEATABLE.match(name)
    # beyond ASCII, letters (and their accents) only: never a bidirectional override or a line separator
    if match and all(c.isascii() or unicodedata.category(c)[0] in "LM" for c in match["description"]):
        return match
    return None


def version_of(migration) -> str | None:
    """The version Flyway records for a migration (`_` shown as `.`), None for a repeatable or a runner file."""
    match = parse(Path(migration.path).name)
    return match["version"].replace("_", ".") if match and match["kind"] == "V" else None


def description(name: str) -> str:
    """What Flyway records as the description: the part after `__`, `_` read as spaces."""
    return parse(name)["description"].replace("_", " ")


def is_repeatable(migration) -> bool:
    return Path(migration.path).name.startswith("R__")


# Flyway's placeholders (`${flyway:defaultSchema}`, `${name}`): Flyway replaces them anywhere in a file, and fails
# on one it has no value for; psql would read `:defaultSchema` as its own variable. Not substituted here.
PLACEHOLDER = lazy_re.compile(r"\$\{[^}\n]*\}")
PLACEHOLDER_SAID = (" is a Flyway placeholder, which the runner does not substitute; write the SQL without it (the "
                    "session's search_path is already the target schema: use unqualified names for "
                    "${flyway:defaultSchema}, current_user for ${flyway:user})")


def walk(folder: Path) -> list[Path]:
    """Every entry of a location and of its subfolders, as Flyway reads them (recursively; a link to a folder
    is not followed), in name order within each folder."""
    import os

    found = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        found += [Path(root) / name for name in sorted(names)]
    return found


def is_flyway_folder(sql_dir: Path) -> bool:
    """A folder holding any Flyway-named file, in it or a subfolder (the image's /flyway/sql/main), or several
    locations (which only Flyway folders have)."""
    if hasattr(sql_dir, "locations"):
        return True
    return sql_dir.is_dir() and any(LOOKS_LIKE.match(p.name) for p in walk(sql_dir))


def is_flyway(migrations) -> bool:
    return any(parse(Path(m.path).name) for m in migrations)


def check_names(sql_dir: Path) -> list[Path]:
    """The V and R files of every location, in Flyway's order (versions, then repeatables by description),
    after every name is checked: two files of one version, a misspelt name, a U file without its V file, and
    a folder mixing Flyway's names with the runner's are refused."""
    versions: dict[tuple[int, ...], Path] = {}
    undo: list[tuple[tuple[int, ...], Path]] = []
    repeatables: dict[str, Path] = {}
    seen: set[Path] = set()  # (one file reached through two locations, a folder and its subfolder: read once)
    for folder in folders(sql_dir):
        source_files.check_folder(folder)
        if not folder.is_dir():
            raise MigratorError(f"migrations folder {folder} not found; check --sql-dir / SQL_DIR / FLYWAY_LOCATIONS",
                                USAGE)
        for path in walk(folder):
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            shown = path.parent / ascii(path.name)[1:-1]
            match = parse(path.name)
            if match is None:
                if RUNNER_NAME.match(path.name):
                    example = next((p.name for p in walk(folder) if LOOKS_LIKE.match(p.name)), "")
                    raise MigratorError(f"{folder} mixes the runner's NNNN_name.sql files ({shown.name}) with Flyway's "
                                        f"V<version>__name.sql ({example}); keep one naming scheme per folder", USAGE)
                if CALLBACK.match(path.name):
                    raise MigratorError(f"{shown}: a Flyway callback (Flyway runs it around its own commands); the "
                                        "runner does not run callbacks: move its SQL into a migration (an R__ file "
                                        "runs again whenever it changes), or move it out of the folder", USAGE)
                if LOOKS_LIKE.match(path.name) or path.suffix.lower() in (".sql", ".py"):
                    raise MigratorError(f"{shown}: not a valid Flyway migration file name; rename it to {VALID_NAME}, "
                                        "or move it out of the folder", USAGE)
                continue
            source_files.check(path, folder)  # a regular file inside its folder (U files too): nothing opened it yet
            _SCRIPTS[path] = path.relative_to(folder).as_posix()  # what Flyway records: `seed/V2__a.sql`
            if match["kind"] == "R":
                key = match["description"].replace("_", " ")
                if key in repeatables:
                    raise MigratorError(f"{repeatables[key]} and {path} are one repeatable migration ({key}); "
                                        "delete or rename one", USAGE)
                repeatables[key] = path
                continue
            key = version_key(match["version"])
            if match["kind"] == "U":
                undo.append((key, path))
                continue
            if key in versions:
                raise MigratorError(f"{versions[key]} and {path} share the version {match['version']}; "
                                    "give one a new version (`runner.py sql new` writes a timestamp)", USAGE)
            versions[key] = path
    for key, path in undo:
        if key not in versions:
            raise MigratorError(f"{path}: an undo file without its migration V{VERSIONED.match(path.name)['version']}"
                                "__*.sql; rename it to match its migration, or delete it", USAGE)
    return [versions[k] for k in sorted(versions)] + [repeatables[k] for k in sorted(repeatables)]


def undo_path(path: Path) -> Path:
    """The `U<version>__*.sql` of a V file, in its folder (else the name a new one would have)."""
    key = version_key(VERSIONED.match(path.name)["version"])
    for candidate in sorted(path.parent.glob("U*__*.sql")):
        match = VERSIONED.match(candidate.name)
        if match and match["kind"] == "U" and version_key(match["version"]) == key:
            return candidate
    return path.with_name("U" + path.name[1:])


def script(path: Path) -> str:
    return _SCRIPTS.get(Path(path), Path(path).name)


def history_hash(table: str, migration_id: str) -> str:
    """yoyo's key of a Flyway file's mark: its id within its history (the Flyway table it belongs to)."""
    return hashlib.sha256(f"{table}\0{migration_id}".encode()).hexdigest()


def checksum(path: Path) -> int:
    """Flyway's checksum: CRC32 over the file's lines without their line ends (\\r\\n, \\r or \\n, as Java's
    readLine splits), a UTF-8 byte order mark dropped, as a signed 32-bit integer."""
    text = source_files.read_bytes(path).decode("utf-8", errors="replace").removeprefix("\ufeff")
    value = zlib.crc32(re.sub(r"\r\n|\r|\n", "", text).encode("utf-8"))
    return value - (1 << 32) if value >= 1 << 31 else value


NEW_TEMPLATE = """\
-- {name}
--
-- What this migration does and why, for the DBA who reviews it.
-- Runs in one transaction; for CREATE INDEX CONCURRENTLY add the directive
-- `-- transactional: false` as the first line. Rolled back by {undo}.

"""

NEW_UNDO_TEMPLATE = """\
-- Rollback of {name}: undoes it exactly, newest change first.

"""


def new(sql_dir: Path, slug: str, now: datetime | None = None) -> tuple[Path, Path]:
    """`V<UTC yyyyMMddHHmmss>__<slug>.sql` and its `U` file in the (first) location."""
    from datetime import timedelta

    taken = {version_key(m["version"]) for f in folders(sql_dir) if f.is_dir() for p in walk(f)
             if (m := VERSIONED.match(p.name))}
    moment = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    while version_key(moment.strftime("%Y%m%d%H%M%S")) in taken:  # three in one second: the next free one
        moment += timedelta(seconds=1)
    stamp = moment.strftime("%Y%m%d%H%M%S")
    folder = folders(sql_dir)[0]
    path = folder / f"V{stamp}__{slug}.sql"
    undo = folder / f"U{stamp}__{slug}.sql"
    path.write_text(NEW_TEMPLATE.format(name=path.name, undo=undo.name), encoding="utf-8")
    undo.write_text(NEW_UNDO_TEMPLATE.format(name=path.name), encoding="utf-8")
    return path, undo
