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


# A two-part name a.b is schema.relation only where a relation is named; in an expression (a select list, WHERE,
# ON of a JOIN) it is table_or_alias.column, and a.b(...) there is a function call. A three-part name is
# schema.table.column anywhere.
_RELATION_WORDS = {"from", "join", "into", "update", "table", "references", "view", "exists", "only", "index",
                   "sequence", "truncate", "lock", "of", "to", "type", "function", "procedure", "routine", "domain",
                   "::", "on", "using"}
_FROM_IN_CALLS = {"extract", "substring", "substr", "trim", "overlay", "position"}  # extract(year FROM pb.at)
_WORDS = re.compile(r'"(?:[^"]|"")*"|[A-Za-z_][\w$]*|::|\S')
_ITEM = re.compile(r'"(?:[^"]|"")*"|[A-Za-z_][\w$]*|\.')
_ITEM_SHAPE = re.compile(r"N(?:\.N)*(?:A?N)?")  # a relation in a list: name[.name] [AS] [alias]


def _in_relation_position(before: str) -> bool:
    """Whether a name right after `before` (the statement so far, comments and strings blanked) names a relation."""
    words = [w.lower() for w in _WORDS.findall(before.rsplit(";", 1)[-1])]
    i = len(words) - 1
    while i >= 0:
        word = words[i]
        if word == "(" and i and words[i - 1] == "inherits" or word == "like" and i and words[i - 1] in ("(", ","):
            return True  # INHERITS (pb.t1), CREATE TABLE t (LIKE pb.t1)
        if word in _RELATION_WORDS:
            return _relation_word(words, i)
        if word != ",":
            return False
        # a list: a relation position when its items are relations (FROM a x, pb.t2; DROP TABLE a, pb.b)
        start = i
        while start and _ITEM.fullmatch(words[start - 1]) and words[start - 1] not in _RELATION_WORDS:
            start -= 1
        shape = "".join("." if w == "." else "A" if w == "as" else "N" for w in words[start:i])
        if not _ITEM_SHAPE.fullmatch(shape):
            return False  # e.g. GROUP BY a, pb.b: not a relation's item
        i = start - 1
    return False


def _relation_word(words: list[str], i: int) -> bool:
    word, previous = words[i], words[i - 1] if i else ""
    if word == "from":
        if previous == "distinct":  # IS DISTINCT FROM
            return False
        depth = 0
        for j in range(i - 1, -1, -1):  # the innermost open parenthesis: a call such as extract(... FROM x)?
            depth += {")": 1, "(": -1}.get(words[j], 0)
            if depth < 0:
                return not (j and words[j - 1] in _FROM_IN_CALLS)
        return True
    if word in ("on", "using"):
        # ON after JOIN ... / USING (MERGE, JOIN) is a condition; ON of an index, trigger, grant, policy a relation
        latest = next((w for w in reversed(words[:i]) if w in ("join", "using", "on", "merge", "delete")), "")
        return latest in ("merge", "delete") if word == "using" else latest not in ("join", "using")
    return True


def tenant_findings(migrations, schemas: list[str]) -> list[Finding]:
    """Over tenant schemas, a name qualified with public or a tenant's schema bypasses the tenant's
    search_path: every tenant would share (or miss) that object. pg_catalog and other schemas (an
    extension's) are fine, and so is a function call such as public.uuid_generate_v4() (extensions
    live in public, which stays on every tenant's search_path), and so is alias.column. What the runner
    refuses in tenant mode (search_path, SET SCHEMA, an extension without SCHEMA) is a finding too."""
    from migrator.postgres import files

    names = "|".join(re.escape(s) for s in ["public", *schemas])
    part = r'\s*\.\s*("?[A-Za-z_][\w$]*"?)'
    qualified = re.compile(rf'(?<![\w."$])"?({names})"?{part}(?:{part})?(?![.\w$"])', re.IGNORECASE)
    found = []
    for migration in migrations:
        for path in (Path(migration.path), _rollback_of(Path(migration.path))):
            if not path.is_file():
                continue
            found += [Finding(str(path), line, 1, "tenant-outside", problem, "")
                      for line, problem in files.tenant_problems(path)]
            text = _NOT_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), path.read_text(encoding="utf-8-sig"))
            for match in qualified.finditer(text):
                if match.group(3) is None and not _in_relation_position(text[max(0, match.start() - 2000):match.start()]):
                    continue  # alias.column, or a function call
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
