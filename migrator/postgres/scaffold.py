"""`sql new`: the next numbered migration pair, from a template the DBA's review starts from."""

from __future__ import annotations

import re
from pathlib import Path

from migrator import source_files
from migrator.errors import USAGE, MigratorError
from migrator.postgres import flyway
from migrator.postgres.files import FILE_NAME, TEMPLATE_MARK

NEW_TEMPLATE = """\
-- {id}
--
{mark}
-- Runs in one transaction; for CREATE INDEX CONCURRENTLY add the directive
-- `-- transactional: false` as the first line.
-- Rolled back by {id}.rollback.sql.

"""

NEW_ROLLBACK_TEMPLATE = """\
-- Rollback of {id}: undoes it exactly, newest change first.

"""


def slug(name: str) -> str:
    """The name as a file name has it: lower case letters and digits, `_` between words."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def dropped_letters(name: str) -> list[str]:
    """The letters and digits of the name a file name cannot hold (ñ, é, Cyrillic...), each once."""
    return list(dict.fromkeys(c for c in name.lower() if c.isalnum() and not re.match(r"[a-z0-9]", c)))


def new(sql_dir: Path, name: str) -> tuple[Path, Path]:
    file_name = slug(name)
    if not file_name:
        dropped = dropped_letters(name)
        held = (f"holds only letters a file name cannot take ({' '.join(dropped)}: a-z, 0-9 and _ only)" if dropped
                else "has no letters or digits")
        raise MigratorError(f"migration name {name!r} {held}; e.g. `make new NAME=add_report_status`", USAGE)
    if flyway.is_flyway_folder(sql_dir):
        return flyway.new(sql_dir, file_name)
    if not sql_dir.is_dir():
        raise MigratorError(f"migrations folder {sql_dir} not found; run from the project root", USAGE)
    numbers = [int(m["number"]) for p in sql_dir.glob("*.sql") if (m := FILE_NAME.match(p.name))]
    number = f"{max(numbers, default=0) + 1:04d}_"
    source_files.check_new_name(number, file_name, ".rollback.sql")
    migration_id = f"{number}{file_name}"
    path = sql_dir / f"{migration_id}.sql"
    rollback = sql_dir / f"{migration_id}.rollback.sql"
    try:
        path.write_text(NEW_TEMPLATE.format(id=migration_id, mark=TEMPLATE_MARK), encoding="utf-8")
        rollback.write_text(NEW_ROLLBACK_TEMPLATE.format(id=migration_id), encoding="utf-8")
    except OSError as exc:
        raise MigratorError(f"cannot write {exc.filename or sql_dir} ({exc.strerror or exc}); fix the folder's "
                            "permissions", USAGE)
    return path, rollback
