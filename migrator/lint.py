"""SQL lint for DBA review: squawk over the migrations, with the project's `.squawk.toml`.

Each file is linted the way the runner will run it: transactional files as inside a transaction
(so an index on a table created in the same file is fine), `-- transactional: false` files as
outside one (so CREATE INDEX CONCURRENTLY is fine).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from migrator.errors import MigratorError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG = PROJECT_ROOT / ".squawk.toml"


@dataclass
class Finding:
    path: str
    line: int
    column: int
    rule: str
    message: str
    help: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.rule}: {self.message}" + (f" ({self.help})" if self.help else "")


def squawk_path() -> str | None:
    """squawk from the squawk-cli wheel: beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "squawk"
    return str(beside) if beside.exists() else shutil.which("squawk")


def lint(migrations) -> list[Finding]:
    """Findings for the given yoyo migrations' files; raises MigratorError if squawk is missing or fails."""
    squawk = squawk_path()
    if squawk is None:
        raise MigratorError("squawk not found: run `make install` (requirements-dev.txt brings squawk-cli)")
    findings = runner_findings(migrations)
    for transactional in (True, False):
        files = [str(m.path) for m in migrations if m.use_transactions == transactional]
        if files:
            mode = "--assume-in-transaction" if transactional else "--no-assume-in-transaction"
            findings += _run(squawk, [mode, *files])
    return sorted(findings, key=lambda f: (f.path, f.line, f.column))


def runner_findings(migrations) -> list[Finding]:
    """What the runner itself would refuse (psql meta-commands, COPY FROM stdin, transaction control or
    CONCURRENTLY in a transactional file...), found without a database."""
    from migrator.postgres import files

    return [Finding(str(m.path), line, 1, "runner", message, "")
            for m in migrations for line, message in files.problems(Path(m.path), in_transaction=m.use_transactions)]


# Comments and string literals, blanked before looking for schema-qualified names (line numbers kept).
_NOT_CODE = re.compile(r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'", re.DOTALL)


# Before these words a qualified name is a relation even when a parenthesis follows (a column list).
_RELATION_WORDS = re.compile(r"(?:table|into|on|references|from|join|update|view|exists|only|index)\s*$", re.IGNORECASE)


def tenant_findings(migrations, schemas: list[str]) -> list[Finding]:
    """Over tenant schemas, a name qualified with public or a tenant's schema bypasses the tenant's
    search_path: every tenant would share (or miss) that object. pg_catalog and other schemas (an
    extension's) are fine, and so is a function call such as public.uuid_generate_v4() (extensions
    live in public, which stays on every tenant's search_path). What the runner refuses in tenant
    mode (search_path, SET SCHEMA, an extension without SCHEMA) is a finding too."""
    from migrator.postgres import files

    names = "|".join(re.escape(s) for s in ["public", *schemas])
    qualified = re.compile(rf'(?<![\w."$])"?({names})"?\s*\.\s*("?[A-Za-z_][\w$]*"?)(?![.\w$"])', re.IGNORECASE)
    found = []
    for migration in migrations:
        for path in (Path(migration.path), _rollback_of(Path(migration.path))):
            if not path.is_file():
                continue
            found += [Finding(str(path), line, 1, "tenant-outside", problem, "")
                      for line, problem in files.tenant_problems(path)]
            text = _NOT_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), path.read_text(encoding="utf-8-sig"))
            for match in qualified.finditer(text):
                if text[match.end():].lstrip().startswith("(") and not _RELATION_WORDS.search(text[:match.start()]):
                    continue  # a function call
                line = text.count("\n", 0, match.start()) + 1
                column = match.start() - text.rfind("\n", 0, match.start())
                found.append(Finding(str(path), line, column, "tenant-schema",
                                     f"{match.group(0)} names schema {match.group(1)}, bypassing each tenant's schema",
                                     "write the name unqualified: each tenant's search_path finds it"))
    return found


def _rollback_of(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".sql") + ".rollback.sql")


def _run(squawk: str, args: list[str]) -> list[Finding]:
    done = subprocess.run([squawk, "--config", str(CONFIG), "--reporter", "json", *args], capture_output=True, text=True)
    try:
        raw = json.loads(done.stdout or "[]")
    except ValueError:
        raise MigratorError(f"squawk failed (exit {done.returncode}): {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    # squawk counts lines and columns from 0; editors and psql count from 1.
    return [Finding(r["file"], r["line"] + 1, r["column"] + 1, r["rule_name"], r["message"], r.get("help") or "") for r in raw]
