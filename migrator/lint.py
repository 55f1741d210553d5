"""SQL lint for DBA review: squawk over the migrations, with the project's `.squawk.toml`.

Each file is linted the way the runner will run it: transactional files as inside a transaction
(so an index on a table created in the same file is fine), `-- transactional: false` files as
outside one (so CREATE INDEX CONCURRENTLY is fine).
"""

from __future__ import annotations

import bisect
import functools
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from migrator import source_files
from migrator.errors import MigratorError
from migrator.output import visible

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
        # squawk quotes the file's identifiers as written: a line break in one would start a line of the PR
        # author's (`error: ...`, a CI runner's `::error::` command), a \r overwrite the line. One line, escaped.
        return visible(f"{self.path}:{self.line}:{self.column}: {self.rule}: {self.message}"
                       + (f" ({self.help})" if self.help else ""))


def squawk_path() -> str | None:
    """squawk from the squawk-cli wheel: beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "squawk"
    return str(beside) if beside.exists() else shutil.which("squawk")


def lint(migrations) -> list[Finding]:
    """Findings for the given yoyo migrations' files; raises MigratorError if squawk is missing or fails."""
    squawk = squawk_path()
    if squawk is None:
        raise MigratorError("squawk not found: run `make install` (requirements-dev.txt brings squawk-cli)")
    findings = (runner_findings(migrations) + definer_findings(migrations) + trigger_grant_findings(migrations)
                + path_findings(migrations) + create_grant_findings(migrations))
    for transactional in (True, False):
        files = [str(m.path) for m in migrations if m.use_transactions == transactional]
        if files:
            mode = "--assume-in-transaction" if transactional else "--no-assume-in-transaction"
            findings += _run(squawk, [mode, *files])
    return sorted(findings, key=lambda f: (f.path, f.line, f.column))


def runner_findings(migrations) -> list[Finding]:
    """What the runner itself would refuse (psql meta-commands, COPY FROM stdin, transaction control or
    CONCURRENTLY in a transactional file...), found without a database."""
    from migrator.postgres import backfill, files

    return [Finding(str(m.path), line, 1, "runner", message, "")
            for m in migrations for check in (files.problems, backfill.problems)
            for line, message in check(Path(m.path), in_transaction=m.use_transactions)]


DYNAMIC_PATH = "dynamic-search-path"


def path_findings(migrations) -> list[Finding]:
    """A search_path set by a route the runner cannot read before the run, or inside a DO block's or a function's body
    (postgres/file_paths.dynamic: attack23u 3, attack23w 2)."""
    from migrator.postgres import file_paths, files
    from migrator.postgres.server_statements import judged

    return [Finding(str(m.path), statement.line, 1, DYNAMIC_PATH, why, "write it as a literal SET search_path TO ... "
                    "before the statement (checked before anything runs), or schema-qualify what it uses")
            for m in migrations for statement in judged(files._split_and_check(Path(m.path), m.use_transactions)[0])
            if (why := file_paths.dynamic(statement.text))]  # (a file that cannot run: runner_findings say it)


DEFINER = "security-definer-search-path"


def definer_findings(migrations) -> list[Finding]:
    """A function or procedure made SECURITY DEFINER (CREATE, or a later ALTER) without its own `SET search_path`
    ending in pg_temp runs as its owner (the migration role) under a path its caller shapes: an operator or function
    the caller made on that path (its `=` on varchar), or a temp table (pg_temp is searched first unless listed
    last), runs or is read as the owner (attack23s 15, attack23u 13; PostgreSQL's CREATE FUNCTION manual). squawk
    has no such rule. (Made by a DO block's EXECUTE: not read.)"""
    from migrator.postgres import files

    found = []
    for migration in migrations:
        path = Path(migration.path)
        text = source_files.read_bytes(path).decode("utf-8-sig")
        if "definer" not in text.lower():  # (cheap: only such files are tokenised)
            continue
        for statement in _statements([t for t in files._tokens(text) if t[3] == 0]):
            words = [value if kind == "code" else f'"{value}"' if kind == "ident" else "" for _, kind, value, _ in statement]
            pairs = list(zip(words, words[1:]))
            lead = [w for w in words[:4] if w not in ("or", "replace")][:2]
            if lead[:1] not in (["create"], ["alter"]) or lead[1:] not in (["function"], ["procedure"], ["routine"]):
                continue
            if ("security", "definer") not in pairs:
                continue
            setting = next((i for i, pair in enumerate(pairs) if pair in (("set", "search_path"),
                                                                          ("set", '"search_path"'))), None)
            listed = _path_values(statement[setting + 2:]) if setting is not None else []
            if setting is not None and (listed is None or listed[-1:] == ["pg_temp"]):
                continue
            at = statement[pairs.index(("security", "definer"))][0]
            line = text.count("\n", 0, at) + 1
            why = "without SET search_path" if setting is None else "with a SET search_path not ending in pg_temp"
            found.append(Finding(str(path), line, at - text.rfind("\n", 0, at), DEFINER,
                                 f"{lead[1]} made SECURITY DEFINER {why}: it runs as its owner (the migration user) "
                                 "under a path its caller shapes, so an operator, function or temp table the caller "
                                 "made there runs or is read as the owner",
                                 "add SET search_path = pg_catalog, pg_temp (or its own schema, one no other role "
                                 "may create in, then pg_temp last) to the function"))
    return found


def _path_values(tokens) -> list[str] | None:
    """The schemas a `SET search_path` lists (after `=` / TO), in order; None for FROM CURRENT (not known here)."""
    names: list[str] = []
    expect_value = True
    for _, kind, value, _ in tokens:
        if kind == "code" and value in ("=", "to") and not names and expect_value:
            continue
        if kind == "code" and value == "from" and not names:
            return None
        if expect_value and kind in ("code", "ident", "string"):
            names += [n.strip().strip('"') for n in value.split(",")] if kind == "string" else [value]
            expect_value = False
        elif not expect_value and kind == "code" and value == ",":
            expect_value = True
        else:
            break
    return names

TRIGGER_GRANT = "grant-trigger"
# What a GRANT ... ON names when it is not a table (ON TABLE t, ON t, ON ALL TABLES IN SCHEMA s are)
_NOT_TABLES = {"schema", "sequence", "sequences", "function", "functions", "procedure", "procedures", "routine",
               "routines", "database", "language", "large", "foreign", "tablespace", "type", "types", "domain",
               "parameter"}


def trigger_grant_findings(migrations) -> list[Finding]:
    """A migration granting TRIGGER on tables (GRANT ALL carries it; ALTER DEFAULT PRIVILEGES too): the grantee may
    add a trigger before the run's next file writes the table, which then runs it as the migration user; the next
    run refuses the schema (planted.py)."""
    from migrator.postgres import files

    found = []
    for migration in migrations:
        path = Path(migration.path)
        text = source_files.read_bytes(path).decode("utf-8-sig")
        if "grant" not in text.lower():
            continue
        for statement in _statements([t for t in files._tokens(text) if t[3] == 0]):
            words = [value if kind == "code" else "" for _, kind, value, _ in statement]
            action = next((k for k, w in enumerate(words) if w in ("grant", "revoke")), None)
            if action is None or words[action] != "grant" or action and words[:2] != ["alter", "default"] \
                    or "on" not in words[action:]:
                continue
            grant, on = action, words.index("on", action)
            rights = set(words[grant + 1:on])
            if {"all", "trigger"} & rights and not (words[on + 1:on + 2] and words[on + 1] in _NOT_TABLES):
                at = statement[grant][0]
                line = text.count("\n", 0, at) + 1
                found.append(Finding(str(path), line, at - text.rfind("\n", 0, at), TRIGGER_GRANT,
                                     f"GRANT {'ALL' if 'all' in rights else 'TRIGGER'} on tables gives TRIGGER: the "
                                     "grantee may add a trigger that runs as the migration user when a later "
                                     "migration writes the table, and the next migrate refuses the schema",
                                     "grant only the rights it needs (SELECT, INSERT, UPDATE, DELETE)"))
    return found


CREATE_GRANT = "grant-create-schema"


def create_grant_findings(migrations) -> list[Finding]:
    """A migration granting CREATE on a schema (GRANT ALL carries it; a default privilege on schemas too): the
    grantee may plant an operator there that a later statement runs as the migration user (attack23v 5); migrate
    refuses it unless the role is trusted (postgres/file_grants.py)."""
    from migrator.postgres import file_grants

    return [Finding(path, line, 1, CREATE_GRANT, f"GRANT {what} to {', '.join(who)}: the grantee may plant an operator "
                    "or function there that a later statement runs as the migration user; migrate refuses it on a "
                    "schema it resolves names in unless the role is trusted", "grant it outside migrations and name "
                    "the role in SCHEMA_CREATORS_TRUSTED, or drop it")
            for m in migrations
            for path, line, what, _, who in file_grants.in_text(str(m.path), source_files.read_bytes(
                Path(m.path)).decode("utf-8-sig")) if what.startswith("CREATE")]


# The tenant rule reads the file with the runner's own tokenizer (postgres.files: E'' and U&'' strings, dollar
# quotes, quoted identifiers), so a string never passes for code or code for a string. A dollar-quoted text is code
# only as a DO or routine body; elsewhere (COMMENT ... IS $c$...$c$) it is a literal.
#
# A two-part name a.b is schema.relation only where a relation is named; in an expression (a select list, WHERE,
# ON of a JOIN) it is table_or_alias.column, and a.b(...) there is a function call. A three-part name is
# schema.table.column anywhere. Without a database, what belongs to an extension is judged by position: a type
# (after a column, TYPE, ::, AS), an opclass (after an index column), COLLATE, a function in FROM and a trigger's
# EXECUTE FUNCTION are not a tenant's relation, so they are not flagged (nor is a tenant's object written there).
_RELATION_WORDS = {"from", "join", "into", "update", "table", "references", "view", "exists", "only", "index",
                   "sequence", "truncate", "lock", "of", "to", "type", "function", "procedure", "routine", "domain",
                   "aggregate", "collation", "statistics", "copy", "on", "using"}
_WHOLE_STATEMENT = {"vacuum", "analyze"}  # VACUUM / ANALYZE [(options)] public.t1 (col): every name a relation
_FROM_IN_CALLS = {"extract", "substring", "substr", "trim", "overlay", "position"}  # extract(year FROM pb.at)
# A string naming a relation: 'public.t1_id_seq'::regclass, nextval('public.t1_id_seq'), to_regclass('public.t')
_RELATION_ARGUMENT = {"nextval", "currval", "setval", "to_regclass", "pg_get_serial_sequence", "pg_relation_size",
                      "pg_total_relation_size", "pg_table_size", "pg_indexes_size"}
_COPY_DATA = re.compile(r"^(copy\b[^;]*?\bfrom\s+stdin\b[^;]*;)(.*?^\\\.)$", re.IGNORECASE | re.MULTILINE | re.DOTALL)
_ITEM_SHAPE = re.compile(r"N(?:\.N)*(?:A?N)?")  # a relation in a list: name[.name] [AS] [alias]


def tenant_findings(migrations, schemas: list[str]) -> list[Finding]:
    """Over tenant schemas, a name qualified with public or a tenant's schema bypasses the tenant's
    search_path: every tenant would share (or miss) that object. pg_catalog and other schemas (an
    extension's) are fine, and so is a function call such as public.uuid_generate_v4() (extensions
    live in public, which stays on every tenant's search_path), and so is alias.column; a string naming a
    relation (pg_dump's nextval('public.t1_id_seq'::regclass)) is flagged. What the runner refuses in
    tenant mode (search_path, SET SCHEMA, an extension without SCHEMA) is a finding too."""
    from migrator.postgres import files

    found = []
    for migration in migrations:
        for path in (Path(migration.path), _rollback_of(Path(migration.path))):
            if not path.is_file():
                continue
            found += [Finding(str(path), line, 1, "tenant-outside", problem, "")
                      for line, problem in files.tenant_problems(path)]
            text = source_files.read_bytes(path).decode("utf-8-sig")
            line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
            for at, name, schema in qualified_names(text, schemas):
                line = bisect.bisect_right(line_starts, at)
                found.append(Finding(str(path), line, at - line_starts[line - 1] + 1, "tenant-schema",
                                     f"{name} names schema {schema}, bypassing each tenant's schema",
                                     "write the name unqualified: each tenant's search_path finds it"))
    return found


def qualified_names(text: str, schemas: list[str]) -> list[tuple[int, str, str]]:
    """(offset, name as written, schema) of each name in the SQL text qualified with public or one of the schemas
    (lower-case identifiers) where it bypasses a tenant's schema."""
    from migrator.postgres.splitter import SplitError, Statement, split

    names = {"public", *schemas}
    try:
        statements = split(text)  # cheap, and only statements that spell a schema's name are tokenised
    except SplitError:  # e.g. COPY FROM stdin, which the file's own check reports: read it whole, without its data
        statements = [Statement(_COPY_DATA.sub(lambda m: m[1] + re.sub(r"[^\n]", " ", m[2]), text), 1, 0)]
    hint = re.compile("|".join(map(re.escape, names)), re.IGNORECASE)
    return [found for statement in statements if hint.search(statement.text)
            for found in _scan(_without_nested_comments(statement.text), statement.offset, names)]


def _scan(code: str, base: int, names: set[str]) -> list[tuple[int, str, str]]:
    """qualified_names of SQL text that starts at offset `base` (a statement, or a DO or routine body)."""
    from migrator.postgres import files

    found = []
    for statement in _statements([t for t in files._tokens(code, base) if t[3] == 0]):
        words = [{"code": value, "ident": f'"{value}"'}.get(kind, "''") for _, kind, value, _ in statement]
        routine = words[:1] == ["do"] or [w for w in words[:4] if w not in ("or", "replace")][:2] in (
            ["create", "function"], ["create", "procedure"])
        for k, (at, kind, value, _) in enumerate(statement):
            if kind == "dollar" and routine:  # a DO or routine body is code
                found += _scan(_without_nested_comments(value), code.index("$", at + 1 - base) + 1 + base, names)
            elif kind == "string" and _names_relation(words, k):
                inner = [t for t in files._tokens(value) if t[3] == 0]
                if len(inner) == 3 and _is_schema(inner[0], names) and inner[1][2] == "." and _is_name(inner[2]):
                    found.append((at, "'" + value.replace("'", "''") + "'", inner[0][2]))
            elif _is_schema(statement[k], names) and _qualified_here(statement, words, k):
                parts = 3 if k + 4 < len(words) and words[k + 3] == "." else 2
                found.append((at, "".join(words[k:k + 2 * parts - 1]), value))
    return found


def _without_nested_comments(text: str) -> str:
    """Nested comments (/* a /* b */ c */) blanked, line ends kept: the tokenizer ends a comment at its first */,
    PostgreSQL (and the splitter) at the one that matches."""
    from migrator.postgres.files import _TOKEN
    from migrator.postgres.splitter import SplitError, _skip_block_comment

    parts, pos = [], 0
    while text.find("/*", pos) >= 0:
        nested = next((m for m in _TOKEN.finditer(text, pos) if m.group()[:2] == "/*" and "/*" in m.group()[2:]), None)
        if nested is None:
            break
        try:
            end = _skip_block_comment(text, nested.start() + 2, int)
        except SplitError:  # unterminated: the file's own check says so
            end = len(text)
        parts += [text[pos:nested.start()], re.sub(r"[^\n]", " ", text[nested.start():end])]
        pos = end
    return "".join(parts) + text[pos:]


def _statements(tokens: list) -> list[list]:
    """The tokens split at each `;`, with `::` one token."""
    statements, statement = [], []
    for token in tokens:
        at, kind, value, depth = token
        if kind == "code" and value == ";":
            statements.append(statement)
            statement = []
        elif kind == "code" and value == ":" and statement and statement[-1][2] == ":" and statement[-1][0] == at - 1:
            statement[-1] = (at - 1, kind, "::", depth)
        else:
            statement.append(token)
    return statements + [statement]


def _is_name(token) -> bool:
    return token[1] == "ident" or token[1] == "code" and bool(re.match(r"[^\W\d]", token[2]))


def _is_schema(token, names: set[str]) -> bool:
    return token[1] in ("code", "ident") and token[2] in names


def _names_relation(words: list[str], k: int) -> bool:
    """Whether the string at k names a relation: '...'::regclass, regclass '...', CAST('...' AS regclass),
    nextval('...') and the other functions whose first argument is a relation."""
    after, before = words[k + 1:k + 5], words[max(0, k - 2):k]
    return (after[:2] in (["::", "regclass"], ["as", "regclass"]) or after == ["::", "pg_catalog", ".", "regclass"]
            or before[-1:] == ["regclass"] or len(before) == 2 and before[1] == "(" and before[0] in _RELATION_ARGUMENT)


def _qualified_here(statement: list, words: list[str], k: int) -> bool:
    """Whether the schema name at k starts a name that bypasses the tenant's schema (see _RELATION_WORDS)."""
    if k and words[k - 1] == "." or not (k + 2 < len(words) and words[k + 1] == "." and _is_name(statement[k + 2])):
        return False
    if k + 4 < len(words) and words[k + 3] == "." and (_is_name(statement[k + 4]) or words[k + 4] == "*"):
        return True  # schema.table.column
    word = _relation_word(words, k)
    if word in ("from", "join", "using") and words[k + 3:k + 4] == ["("]:
        return False  # FROM public.crosstab(...) AS ct(...): a function (an extension's), not a relation
    return word is not None


def _relation_word(words: list[str], k: int) -> str | None:
    """The word that makes the name at k a relation's (FROM, TABLE, ...), or None where it is not one."""
    if words[0] in _WHOLE_STATEMENT:
        return words[0]
    i = k - 1
    while i >= 0:
        word = words[i]
        if word == "(" and i and words[i - 1] == "inherits" or word == "like" and i and words[i - 1] in ("(", ","):
            return "inherits"  # INHERITS (pb.t1), CREATE TABLE t (LIKE pb.t1)
        if word in _RELATION_WORDS:
            return word if _names_a_relation(words, i) else None
        if word == "(":  # FROM (public.t2 JOIN ...): pg_dump's every join; nested ((...)) too
            while i >= 0 and words[i] == "(":
                i -= 1
            if i >= 0 and words[i] in ("from", "join", ","):
                continue
            return None
        if word != ",":
            return None
        # a list: a relation position when its items are relations (FROM a x, pb.t2; DROP TABLE a, pb.b)
        start = i
        while start and _item().fullmatch(words[start - 1]) and words[start - 1] not in _RELATION_WORDS:
            start -= 1
        shape = "".join("." if w == "." else "A" if w == "as" else "N" for w in words[start:i])
        if not _ITEM_SHAPE.fullmatch(shape):
            return None  # e.g. GROUP BY a, pb.b: not a relation's item
        i = start - 1
    return None


@functools.cache
def _item() -> re.Pattern:
    """A list's item: a quoted name, a name as PostgreSQL reads one (psql_tokens.IDENTIFIER: `é_t`, `a€`), a dot."""
    from migrator.postgres.psql_tokens import IDENTIFIER

    return re.compile(r'"(?:[^"]|"")*"|' + IDENTIFIER + r"|\.")


def _names_a_relation(words: list[str], i: int) -> bool:
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
    if word == "type":  # CREATE / ALTER / DROP / COMMENT ON TYPE names one; a column's TYPE is a type (an extension's)
        return previous in ("create", "alter", "drop", "on")
    if word in ("function", "procedure"):  # EXECUTE FUNCTION public.moddatetime(...) in a trigger: a call
        return previous != "execute"
    return True


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
