"""The migration files: names checked before anything reads them, headers read cheaply, bodies
split (and checked) only for the files a command will run.

Each file becomes one yoyo Migration whose single step runs the file's statements in order, as
`psql -1 -f` sends them: no savepoint per statement (yoyo's .sql loader makes one per statement,
which runs out of shared memory at ~20,000 statements), no statement or token limit.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import TYPE_CHECKING

from migrator import lazy_re, source_files
from migrator.errors import USAGE, MigratorError
from migrator.output import visible
from migrator.postgres import flyway, psql_reading, server_statements, two_phase
from migrator.postgres.psql_tokens import IDENTIFIER, TAG_CHAR, START as TAG_START

if TYPE_CHECKING:  # (the splitter: loaded where a file is split, never by a no-op's names and headers)
    from migrator.postgres.splitter import Statement

# Checked on every name before any file is opened: a name is printed in `plan` (inside SQL) and in
# messages, so a newline or quote in it must never get that far. ASCII only, to the very end (`\d` takes
# Arabic-Indic digits, `$` a trailing newline), as the Mongo side.
FILE_NAME = re.compile(r"(?P<number>[0-9]+)_(?P<name>[A-Za-z0-9_]+)(?P<rollback>\.rollback)?\.sql\Z", re.ASCII)
# Digits (any script's) and `_` at the start: meant as a migration, so any other spelling of it is refused.
LOOKS_LIKE_MIGRATION = lazy_re.compile(r"^\s*\d+_")
VALID_NAME = ("NNNN_name.sql or NNNN_name.rollback.sql (ASCII digits 0-9, `_`, then ASCII letters, digits and `_`, "
              "nothing after .sql)")
DIRECTIVE = lazy_re.compile(r"^\s*--\s*(transactional|depends)\s*:\s*(.*?)\s*$")
COMMENT_OR_BLANK = lazy_re.compile(r"^\s*(--.*)?$")
BOM = "\ufeff"

# The first word(s) of statements that end or open a transaction: in a transactional file they would
# commit part of it (psql -1 only warns), so such a file is refused before anything runs.
TRANSACTION_CONTROL = lazy_re.compile(r"(?:begin|start\s+transaction|commit|end|rollback(?!\s+(?:work\s+|transaction\s+)?to\b)|"
                                      r"abort)\b", re.IGNORECASE)  # (PREPARE TRANSACTION: two_phase, in any file)
# Statements PostgreSQL refuses inside a transaction block (SQLSTATE 25001).
OUTSIDE_TRANSACTION = lazy_re.compile(
    r"(?:create\s+(?:unique\s+)?index\s+concurrently|drop\s+index\s+concurrently|reindex\b.*\bconcurrently|"
    r"vacuum\b|create\s+database\b|drop\s+database\b|alter\s+system\b|create\s+tablespace\b|"
    r"drop\s+tablespace\b|cluster\s*;|create\s+subscription\b|drop\s+subscription\b)", re.IGNORECASE | re.DOTALL)


def check_names(sql_dir: Path) -> list[Path]:
    """The migration files (not rollbacks) in number order, after every name is checked.

    Numbers are compared as integers (`9_a` runs before `10_b`; `1_a` and `0001_b` share a number). Anything like a
    migration but not exactly one (`0002_B.SQL`, `0003_c.sql.orig`, a lone rollback) is refused, never skipped.
    """
    if flyway.is_flyway_folder(sql_dir):
        return flyway.check_names(sql_dir)
    source_files.check_folder(sql_dir)
    if not sql_dir.is_dir():
        raise MigratorError(f"migrations folder {sql_dir} not found; run from the project root or pass --sql-dir", USAGE)
    migrations, rollbacks, numbers = [], [], {}
    for path in sorted(sql_dir.iterdir()):
        shown = sql_dir / ascii(path.name)[1:-1]
        if path.suffix.lower() == ".py":
            raise MigratorError(f"{shown}: the runner applies .sql migrations only (a yoyo Python migration would "
                                "run unreviewed code); write it as SQL or move it out", USAGE)
        match = FILE_NAME.match(path.name)
        if not match and path.is_dir() and (nested := source_files.first_below(path, _nested)):
            # a migration there is never silently skipped (the runner's folder is flat), nor one in a folder a
            # link names (inside or out); other files (a shared snippet an NNNN file links to) stay allowed
            link = f" (a link to {source_files.shown(path.resolve())})" if path.is_symlink() else ""
            fix = "remove the link, or copy the file in (renumbered)" if link else "move it up (renumbered) or out"
            raise MigratorError(f"{source_files.shown(nested)}: a migration in a subfolder of {sql_dir}{link}; the "
                                f"runner reads only the NNNN_name.sql files directly in its folder: {fix}", USAGE)
        if not match:
            if LOOKS_LIKE_MIGRATION.match(path.name) or path.suffix.lower() == ".sql":
                raise MigratorError(f"{shown}: not a valid migration file name; rename it to {VALID_NAME}, "
                                    "or move it out of the folder", USAGE)
            continue
        source_files.check(path, sql_dir)  # a regular file inside the folder: nothing opened it yet
        if match["rollback"]:
            rollbacks.append(path)
            continue
        number = int(match["number"])
        if number in numbers:
            raise MigratorError(f"{numbers[number]} and {path} share the number {number}; "
                                "renumber one (`runner.py sql new` picks the next free number)", USAGE)
        numbers[number] = path
        migrations.append(path)
    ids = {p.name[: -len(".sql")] for p in migrations}
    for path in rollbacks:
        if path.name[: -len(".rollback.sql")] not in ids:
            raise MigratorError(f"{path}: a rollback without its migration {path.name.replace('.rollback', '')}; "
                                "rename it to match its migration, or delete it", USAGE)
    return sorted(migrations, key=lambda p: (int(FILE_NAME.match(p.name)["number"]), p.name))


def _nested(name: str) -> bool:
    return bool(LOOKS_LIKE_MIGRATION.match(name) or flyway.parse(name))


def read_text(path: Path) -> str:
    """The file as psql reads it, minus a UTF-8 byte order mark (editors on Windows add one)."""
    try:
        text = source_files.read_bytes(path).decode("utf-8")
    except OSError as exc:
        raise MigratorError(f"{path} cannot be read ({exc.strerror or exc}); fix the file or its permissions", USAGE)
    except UnicodeDecodeError as exc:
        raise MigratorError(
            f"{path} is not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); save it as UTF-8", USAGE)
    return text[1:] if text.startswith(BOM) else text


def read_directives(path: Path) -> dict[str, tuple[str, int]]:
    """yoyo's `-- transactional:` / `-- depends:` directives from the leading comments, with their line.

    Read as every read after the folder check is (source_files.read_bytes: a file swapped for a link or a FIFO
    since is refused in one line); only its leading comment lines are looked at.
    """
    directives: dict[str, tuple[str, int]] = {}
    try:
        text = source_files.read_bytes(path).decode("utf-8", errors="replace")
        with io.StringIO(text, newline=None) as handle:  # (universal newlines, as the text-mode open was)
            for number, line in enumerate(handle, 1):
                line = line.removeprefix(BOM) if number == 1 else line
                match = DIRECTIVE.match(line)
                if match:
                    key, value = match.groups()
                    previous = directives.get(key, ("", number))[0]
                    directives[key] = (f"{previous} {value}".strip(), number)
                elif not COMMENT_OR_BLANK.match(line):
                    break
    except OSError as exc:
        raise MigratorError(f"{path} cannot be read ({exc.strerror or exc}); fix the file or its permissions", USAGE)
    return directives


def transactional(path: Path, directives: dict[str, tuple[str, int]]) -> bool:
    value, line = directives.get("transactional", ("true", 0))
    if value.lower() not in ("true", "false"):
        raise MigratorError(f"{path}:{line}: `-- transactional: {value}` must be true or false", USAGE)
    return value.lower() == "true"


# A line of the template `sql new` writes (scaffold.py): a file holding it and no statement was never filled in.
TEMPLATE_MARK = "-- What this migration does and why, for the DBA who reviews it."
ROLLBACK_TEMPLATE_MARK = ": undoes it exactly, newest change first."  # the rollback (or U file) template's
UNFILLED = ("is still the template `make new` wrote: add its SQL (and its rollback's), or delete the pair "
            "(nothing was run)")
UNFILLED_ROLLBACK = "is still the template `make new` wrote: rolling it back would fail until its SQL is added"


def unfilled(path: Path) -> bool:
    """The file (a migration or its rollback) is `sql new`'s template, never filled in (status and plan name it)."""
    from migrator.postgres.splitter import SplitError, split

    text = read_text(path)
    try:
        return (TEMPLATE_MARK in text or ROLLBACK_TEMPLATE_MARK in text) and not split(text)
    except SplitError:
        return False


def statements(path: Path, *, in_transaction: bool) -> list[Statement]:
    """The file's statements, refusing what cannot run (each refusal names file:line and what to do)."""
    found, found_problems = _split_and_check(path, in_transaction)
    if found_problems:
        line, message = found_problems[0]
        raise MigratorError(f"{path}:{line}: {message} (nothing was run)" if line else f"{path} {message}", USAGE)
    return found


def problems(path: Path, *, in_transaction: bool) -> list[tuple[int, str]]:
    """(line, message) of everything in the file that cannot run as it is (for `sql lint`)."""
    return _split_and_check(path, in_transaction)[1]


def _split_and_check(path: Path, in_transaction: bool) -> tuple[list[Statement], list[tuple[int, str]]]:
    from migrator.postgres.splitter import SplitError, newlines, split

    text = read_text(path)
    placeholder = flyway.PLACEHOLDER.search(text) if flyway.parse(path.name) else None
    if placeholder:
        return [], [(newlines(text, 0, placeholder.start()) + 1, visible(placeholder.group()) + flyway.PLACEHOLDER_SAID)]
    try:
        found = split(text)
    except SplitError as exc:
        return [], [(exc.line, exc.message)]
    if not found and TEMPLATE_MARK in text:  # in a Flyway folder too: its `sql new` writes the same line
        return [], [(0, UNFILLED)]
    if not found and not flyway.parse(path.name):  # (a Flyway file may: Flyway applies and records it, empty)
        return [], [(0, "holds no SQL statement; add its SQL or delete the file (nothing was run)")]
    check = in_transaction_problem if in_transaction else (lambda s: two_phase.problem(s.text))
    return found, server_statements.problems(found, check)  # (each statement the server parses out of a text)


def in_transaction_problem(statement: Statement) -> str | None:
    """Why a statement cannot run inside the one transaction of a transactional file, or None."""
    head = statement.text[:200]
    if refused := two_phase.problem(statement.text):  # (in any file: PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED)
        return refused
    if TRANSACTION_CONTROL.match(head):
        word = head.split(None, 1)[0].rstrip(";").upper()
        return (f"{word} controls the transaction, but the runner already runs this file in one transaction "
                "(as psql -1 does); a COMMIT here would commit half the file. Remove BEGIN/COMMIT, or make "
                "`-- transactional: false` the first line to run the statements one by one")
    if OUTSIDE_TRANSACTION.match(statement.text):
        what = " ".join(head.split()[:4]).rstrip(";")
        return (f"`{what}` cannot run inside a transaction block, and this file runs in one; "
                "put it in its own migration whose first line is `-- transactional: false`")
    return None


# --- tenant schemas -------------------------------------------------------------------------

# A tenant's migration runs with search_path = its schema, public; what points elsewhere can only mean another
# tenant's schema or public, so it is refused before anything runs (a single-schema run, e.g. a pg_dump baseline
# setting search_path, is not concerned). For search_path the rule is any mention of it, not a list of ways to
# set it: in code, a quoted identifier or a string (E'', U&'', adjacent literals, a DO or function body), not in
# a comment. The one exception is a function's own clause that keeps the tenant's path (FROM CURRENT,
# pg_catalog / pg_temp / ''). What no text check can see ('search' || '_path') the runner catches as the
# migration runs (postgres.migration.SearchPathGuard).
# Cheap first look (file, then statement): "search_path" spelled without "search" needs an escape (\ or UESCAPE).
_TENANT_HINT = lazy_re.compile(r"search|\\|uescape|\bschema\b|create\s+extension", re.IGNORECASE)
_SET_SCHEMA = lazy_re.compile(r"^alter\s+(?!extension\b)[^;]*\bset\s+schema\b", re.IGNORECASE)
_CREATE_EXTENSION = lazy_re.compile(r"^create\s+extension\b", re.IGNORECASE)
_WITH_SCHEMA = lazy_re.compile(r"\bschema\s+\S", re.IGNORECASE)
_COMMENTS = lazy_re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
_ROUTINE = lazy_re.compile(r"(?:create\s+(?:or\s+replace\s+)?(?:function|procedure)|alter\s+(?:function|procedure|routine))\b",
                      re.IGNORECASE)
_TOKEN = lazy_re.compile(rf"""--[^\n]*|/\*.*?\*/|\$(?P<tag>{TAG_START}{TAG_CHAR}*|)\$(?P<body>.*?)\$(?P=tag)\$"""
                    r"""|[Ee]'(?:[^'\\]|\\.|'')*'|[Uu]&'(?:[^']|'')*'|[Uu]&"(?:[^"]|"")*"|'(?:[^']|'')*'"""
                    rf"""|"(?:[^"]|"")*"|{IDENTIFIER}|\S""", re.DOTALL)
_E_ESCAPE = lazy_re.compile(r"\\(x[0-9A-Fa-f]{1,2}|[0-7]{1,3}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)", re.DOTALL)
_C_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HARMLESS_PATH = {"pg_catalog", "pg_temp", ""}  # '' is PostgreSQL's documented safe form: pg_catalog, pg_temp

_MENTIONS = ("sets search_path (or may: it names it), which in a tenant's migration can only send what follows "
             "into another schema (each tenant's session starts with search_path = its schema, public); remove it "
             "and write names unqualified, or give a function SET search_path FROM CURRENT")
_SETS_SCHEMA = ("sets search_path (SET SCHEMA 'x' is PostgreSQL's other spelling of SET search_path TO x), which "
                + _MENTIONS.split(", which ", 1)[1])
_BODY_MENTIONS = ("names search_path in a function's body: a body that sets search_path when called (even to "
                  "restore it) changes the calling session's path too, another tenant's migration or the "
                  "application; give the function SET search_path FROM CURRENT instead and leave search_path "
                  "out of its body")


def tenant_problems(path: Path) -> list[tuple[int, str]]:
    """(line, message) of each statement that would reach outside a tenant's schema (cheap when none)."""
    from migrator.postgres.splitter import SplitError, newlines, split

    text = read_text(path)
    if not _TENANT_HINT.search(text):
        return []
    try:
        found = server_statements.judged(split(text))  # (a text psql sends as one may hold several)
    except SplitError:
        return []  # the file's own check says what is wrong with it
    problems = []
    for statement in (s for s in found if _TENANT_HINT.search(s.text)):
        at, problem = tenant_problem(statement.text)
        if problem:
            problems.append((statement.line + newlines(statement.text, 0, at), problem))
    return problems


def tenant_problem(statement: str) -> tuple[int, str | None]:
    """(offset in the statement, problem) of what reaches outside the tenant's schema; (0, None)."""
    tokens = _tokens(statement)
    code = " ".join({"string": "''", "dollar": "''", "ident": '""'}.get(kind, value)
                    for _, kind, value, _ in tokens if kind != "inner")
    routine = bool(_ROUTINE.match(code))
    at, problem, allowed = _routine_search_path(tokens) if routine else (0, None, -1)
    if problem:
        return at, problem
    for at, kind, value, depth in tokens:
        if kind != "dollar" and "search_path" in value.lower() and at != allowed:
            return at, (_BODY_MENTIONS if routine and (kind == "string" or depth) else _MENTIONS)
    at = _set_schema_statement(tokens, bodies=routine or code.startswith("do "))
    if at is not None:
        return at, _SETS_SCHEMA
    if _SET_SCHEMA.match(code):
        return 0, ("moves an object with SET SCHEMA out of the tenant's schema into another; keep tenant objects in "
                   "the tenant's schema (extensions belong in public: CREATE EXTENSION ... SCHEMA public)")
    if _CREATE_EXTENSION.match(code) and not _WITH_SCHEMA.search(code):
        return 0, ("creates an extension without SCHEMA, so it lands in the first tenant's schema and the others "
                   "cannot use it; write CREATE EXTENSION IF NOT EXISTS name SCHEMA public")
    return 0, None


def _set_schema_statement(tokens, bodies: bool) -> int | None:
    """Where `SET [SESSION | LOCAL] SCHEMA 'x'` (SET search_path's other spelling: a string follows) is, at the top
    level or, with `bodies` (a DO or a routine), inside a dollar-quoted body, where any SET SCHEMA (an ALTER's too)
    leaves the tenant's schema; elsewhere a dollar-quoted text is a literal."""
    for i, (at, kind, value, depth) in enumerate(tokens):
        if value != "set" or kind not in ("code", "inner") or (kind == "inner" and not bodies):
            continue
        rest = tokens[i + 1:i + 4]
        skip = 1 if rest and rest[0][2] in ("session", "local") else 0
        if len(rest) <= skip + 1 or rest[skip][2] != "schema" or rest[skip + 1][2] == "=":
            continue  # `UPDATE t SET schema = 'x'`: a column named schema
        if kind == "inner" or rest[skip + 1][1] == "string":
            return at
    return None


def _tokens(text: str, base: int = 0, depth: int = 0) -> list[tuple[int, str, str, int]]:
    """(offset, kind, value, depth) of the statement's tokens, comments left out: a string's value decoded
    (kind "string"; adjacent literals split by a newline joined, as PostgreSQL joins them), a quoted
    identifier's unquoted (kind "ident"), an unquoted word's folded; a dollar-quoted body (kind "dollar") then
    the tokens inside it (kind "inner", depth + 1), since a DO or function body is code."""
    raw = [m for m in _TOKEN.finditer(text) if not m.group().startswith(("--", "/*"))]
    tokens: list[tuple[int, str, str, int]] = []
    i = 0
    while i < len(raw):
        match, token = raw[i], raw[i].group()
        at = base + match.start()
        if match["body"] is not None:
            tokens.append((at, "dollar", match["body"], depth))
            tokens += [(a, "inner", v, d) for a, _, v, d in _tokens(match["body"], base + match.start("body"),
                                                                    depth + 1)]
        elif token[0] in "'Ee" and token[-1] == "'" or token[:3].upper() == "U&'":
            value = _string_value(token, raw[i + 2].group() if _uescape(raw, i) else None)
            i += 2 if _uescape(raw, i) else 0
            while i + 1 < len(raw) and raw[i + 1].group()[:1] == "'" and "\n" in text[raw[i].end():raw[i + 1].start()]:
                i += 1
                value += _string_value(raw[i].group(), None)
            tokens.append((at, "string", value, depth))
        else:
            kind = "ident" if token[:1] == '"' or token[:3].upper() == 'U&"' else "code"
            tokens.append((at, kind, _name(token, raw[i + 2].group() if _uescape(raw, i) else None), depth))
            i += 2 if _uescape(raw, i) else 0
        i += 1
    return tokens


def _uescape(raw, i: int) -> bool:
    return (raw[i].group()[:2].upper() == "U&" and i + 2 < len(raw) and raw[i + 1].group().lower() == "uescape"
            and raw[i + 2].group()[:1] == "'")


def _string_value(token: str, uescape: str | None) -> str:
    if token[:2].upper() == "U&":
        return _unicode_escapes(token[3:-1].replace("''", "'"), uescape)
    if token[0] in "Ee":
        return _E_ESCAPE.sub(_e_escape, token[2:-1].replace("''", "'"))
    return token[1:-1].replace("''", "'")


def _e_escape(match) -> str:
    escape = match.group(1)
    try:
        if escape[0] == "x" and len(escape) > 1:
            return chr(int(escape[1:], 16))
        if escape[0] in "01234567":
            return chr(int(escape, 8))
        if escape[0] in "uU" and len(escape) > 1:
            return chr(int(escape[1:], 16))
    except (ValueError, OverflowError):
        return ""
    return _C_ESCAPES.get(escape, escape)


def _unicode_escapes(text: str, uescape: str | None) -> str:
    """U&'...' / U&"..." content: escape char (\\ unless UESCAPE 'c') then 4 hex digits, + and 6, or itself."""
    escape = re.escape(uescape[1:-1] if uescape else "\\")
    return re.sub(rf"{escape}(?:\+([0-9A-Fa-f]{{6}})|([0-9A-Fa-f]{{4}})|({escape}))",
                  lambda m: m.group(3) or _safe_chr(m.group(1) or m.group(2)), text)


def _safe_chr(hex_digits: str) -> str:
    try:
        return chr(int(hex_digits, 16))
    except (ValueError, OverflowError):
        return ""


def _name(token: str, uescape: str | None = None) -> str:
    """An identifier or string token as the value it names: unquoted ones fold to lower case."""
    if token[:1] == '"':
        return token[1:-1].replace('""', '"')
    if token[:3].upper() == 'U&"':
        return _unicode_escapes(token[3:-1].replace('""', '"'), uescape)
    if token[:1] == "'" or token[:2] in ("E'", "e'") or token[:3].upper() == "U&'":
        return _string_value(token, uescape)
    return token.lower()


# A function's own `SET search_path` (CREATE FUNCTION/PROCEDURE, ALTER FUNCTION/PROCEDURE/ROUTINE) replaces the
# tenant's search_path whenever it is called: naming any schema but pg_catalog / pg_temp (or DEFAULT, which is
# "$user", public) makes every tenant's copy read that schema. FROM CURRENT captures the creating session's
# (the tenant's) search_path, and RESET leaves the caller's: both fine.
def _routine_search_path(tokens) -> tuple[int, str | None, int]:
    """(offset, problem, offset of the allowed clause's search_path) of a routine's own search_path clause."""
    top = [(at, kind, value) for at, kind, value, depth in tokens if kind != "inner"]
    for i, (at, kind, value) in enumerate(top):
        if kind != "code" or value not in ("set", "reset") or i + 1 >= len(top) or top[i + 1][2] != "search_path":
            continue
        clause = top[i + 1][0]
        how = top[i + 2][2] if i + 2 < len(top) else ""
        if value == "reset" or how not in ("=", "to"):
            return 0, None, clause  # FROM CURRENT / RESET: the tenant's own search_path
        values, j = [], i + 3
        while j < len(top):  # a list: value, value, ... (what follows the last is not a comma)
            values.append(top[j][2])
            if j + 1 >= len(top) or top[j + 1][2] != ",":
                break
            j += 2
        others = ['DEFAULT ("$user", public)' if v == "default" else v for v in values if v not in _HARMLESS_PATH]
        if not others:
            return 0, None, clause
        return at, (f"gives a function its own SET search_path naming {', '.join(others)}, so every tenant's copy "
                    "would use that schema, not its own; write SET search_path FROM CURRENT (it captures the "
                    "tenant's search_path, its schema then public, when the migration creates the function), or "
                    "SET search_path = pg_catalog, pg_temp with names qualified"), clause
    return 0, None, -1


FRESH_SESSION = "\\connect -reuse-previous=on"
RESTRICT_LINES = lazy_re.compile(r"^\\(?:un)?restrict[ \t]+[A-Za-z0-9]+[ \t]*(?=\r?$)", re.MULTILINE)


def plan_text(path: Path, in_transaction: bool, schema: str | None = None) -> str:
    """The file exactly as psql would run it inside the runner's transaction (a `;` added when the
    last statement has none, so the COMMIT that follows stays a statement of its own). For a tenant's
    schema each fresh session first gets the search_path the runner gives it, so `plan | psql` lands
    every schema's section in its schema."""
    from migrator.postgres.splitter import split

    body = read_text(path).rstrip("\n")
    found = split(body) if body.strip() else []
    if found and not found[-1].terminated:
        body += "\n;"
    # A new session for each file, as the runner gives each (psql's \connect, reusing every connection
    # setting): what one file SETs must not reach the next. The only meta-command in plan output; a
    # migration file itself may hold none, so this line can never come from a file.
    session = FRESH_SESSION + (f'\nSET search_path TO "{schema}", public;' if schema else "")
    # pg_dump's \restrict lines are meta-commands (the runner skips them): plan leaves them out, so its own
    # \connect is the only meta-command psql reads. The folder's name may hold a line break: made visible.
    body = RESTRICT_LINES.sub("", body)
    if not body.isascii() and psql_reading.check(body):
        body += "\n" + psql_reading.CLOSER
    if not in_transaction:
        return f"-- {visible(str(path))} (not transactional)\n{session}\n{body}\n"
    return f"-- {visible(str(path))}\n{session}\nBEGIN;\n{body}\nCOMMIT;\n"


def rollback_path(migration) -> Path:
    if flyway.VERSIONED.match(Path(migration.path).name):
        return flyway.undo_path(Path(migration.path))
    return Path(migration.path).with_name(Path(migration.path).name.replace(".sql", ".rollback.sql"))
