"""Issue 24, attack24t findings 1-3: where the splitter's reading of an identifier character parts from PostgreSQL's
(ASCII letters, digits, _, $ and every non-ASCII character: `·$a$` is one identifier to the server), and a bare
CLUSTER. The splitter is compared with PostgreSQL's own lexer and grammar (pglast: libpg_query, the server's scan.l
and gram.y) over generated identifier spellings; the runner's refusals are checked on the real server."""

from __future__ import annotations

import random
import unicodedata

import pglast
import psycopg2
import pytest
from conftest import SEED, add_migration, applied, migrate, ok
from test_rewrites import SMALL, TABLE, seeded

from migrator.postgres import files, splitter

ASCII_IDENT = "aZ_"  # (digits continue an identifier too: only inside one, below)
ASCII_OTHER = " !#%&+,.<=>?@^|~"  # not identifier characters, lexically plain (no quote, comment, $, ; or psql's :)
NAMED = "\u00b7\u2192\u00a0\u20ac\u00e9\u0436\u4e2d\u00ad\u200b\u3000\u2028\ufeff\U0001f600"


def spellings():
    """Characters to put in or before an identifier: ASCII ones of both kinds, the ones the attacker named, the first
    three non-ASCII code points of every Unicode general category (letters, marks, punctuation, symbols, spaces,
    controls, format characters, private use, unassigned), and a seeded sample of all the others."""
    yield from ASCII_IDENT + ASCII_OTHER + NAMED
    firsts: dict[str, int] = {}
    for code in range(0x80, 0x110000):
        if 0xD800 <= code <= 0xDFFF:
            continue  # (surrogates: no UTF-8 text holds one)
        category = unicodedata.category(chr(code))
        if firsts.get(category, 0) < 3:
            firsts[category] = firsts.get(category, 0) + 1
            yield chr(code)
    rng = random.Random(24)
    for _ in range(400):
        code = rng.randrange(0x80, 0x110000)
        if not 0xD800 <= code <= 0xDFFF:
            yield chr(code)


# Each case lexes to complete statements whichever reading is right: where {c} is an identifier character the
# `$t$` / `E` belongs to an identifier (three statements), where not it opens a dollar quote / an E'' string (one).
SCANNED = {
    "dollar_inside": "SELECT 1 AS a{c}$t$; SELECT 2; SELECT 3 AS b{c}$t$;",
    "dollar_first": "SELECT 1 AS {c}$t$; SELECT 2; SELECT 3 AS {c}$t$;",
    "e_string": "SELECT 1 AS x, {c}E'\\'; SELECT 2; SELECT 3 -- ';\n",
}
# psql and the server count BEGIN ... END in a BEGIN ATOMIC body by whole identifiers (x·end is none of them):
# PostgreSQL's grammar is the judge here (its lexer alone splits at every `;`).
PARSED = {"atomic_end": "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1 AS x{c}end; "
                        "SELECT 2 AS end{c}x; END; SELECT 3;"}


def _ours(text: str) -> list[str] | None:
    """The splitter's statements; None where it refuses the file (a reading psql could take otherwise: safe)."""
    try:
        return [(s.text[:-1] if s.terminated else s.text).strip() for s in splitter.split(text)]
    except splitter.SplitError:
        return None


def _postgres(text: str, parser: bool) -> list[str]:
    return [s.strip() for s in pglast.split(text, with_parser=parser)]


def test_the_splitter_splits_where_postgresql_does_over_generated_identifier_spellings():
    wrong, compared = [], 0
    for char in dict.fromkeys(spellings()):
        for name, case in SCANNED.items():
            text = case.replace("{c}", char)
            compared += 1
            if _ours(text) not in (None, _postgres(text, parser=False)):
                wrong.append((name, f"U+{ord(char):04X}", _ours(text), _postgres(text, parser=False)))
        digit = SCANNED["dollar_inside"].replace("{c}", "1")
        assert _ours(digit) == _postgres(digit, parser=False)
        for name, case in PARSED.items():
            text = case.replace("{c}", char)
            try:
                expected = _postgres(text, parser=True)
            except pglast.parser.ParseError:
                continue  # (not SQL with this character: nothing to compare)
            compared += 1
            if _ours(text) not in (None, expected):
                wrong.append((name, f"U+{ord(char):04X}", _ours(text), expected))
    assert compared > 400 and not wrong, f"{len(wrong)} of {compared} differ, e.g. {wrong[:5]}"


@pytest.mark.parametrize("before", ["1", "1.5", ".5", "$1"])  # (1e5$t$, 0x1F$t$: trailing junk to the server)
def test_after_a_number_the_splitter_never_sees_fewer_statements_than_postgresql(db, before):
    """After a number or a parameter PostgreSQL (15+) opens a dollar quote (`1$t$`), the splitter, which only looks
    at the character before the `$`, does not: it then splits more, never less, and each piece it sends alone is
    one the server refuses (an unterminated dollar quote), so nothing hides inside a statement it judged."""
    text = f"SELECT 1 AS x, {before}$t$; SELECT 2; SELECT 3 AS y, {before}$t$;"
    assert len(_postgres(text, parser=False)) == 1
    pieces = splitter.split(text)
    assert len(pieces) == 3
    for piece in (pieces[0], pieces[2]):  # (the middle one, SELECT 2, is what it is either way)
        with pytest.raises(psycopg2.Error, match="unterminated dollar-quoted string"):
            db.query(piece.text)


def test_a_plain_literal_after_a_non_ascii_identifier_ending_in_e_is_read_as_the_server_reads_it():
    """backslash_literal (the standard_conforming_strings check) reads `·E'\\'` as PostgreSQL does: `·E` is a name,
    '\\' a plain literal holding a backslash."""
    for char in "\u00b7\u2192\u00a0\u20ac\u00e9a_":
        assert splitter.backslash_literal(f"SELECT {char}E'\\' ;") is not None, char
    for char in " (,=":
        assert splitter.backslash_literal(f"SELECT {char}E'\\'' ;") is None, char


def test_a_rollback_behind_a_non_ascii_identifier_is_refused_before_anything_runs(cli, db, sql_dir):
    """Finding 1: `SELECT 1 AS ·$a$; ROLLBACK; SELECT 1 AS ·$a$;` is three statements to the server; the ROLLBACK
    would end the runner's transaction and the file's table with it while the file is recorded as applied."""
    ok(migrate(cli, db, sql_dir, "--quiet"))
    path = add_migration(sql_dir, "0002_new_table", "CREATE TABLE report_archive (id bigint PRIMARY KEY, note text);\n"
                                                    "SELECT 1 AS \u00b7$a$; ROLLBACK; SELECT 1 AS \u00b7$a$;\n")
    result = migrate(cli, db, sql_dir)
    assert result.exit_code != 0, result.output
    assert f"{path}:2: ROLLBACK controls the transaction" in result.stderr, result.stderr
    assert applied(db) == [SEED] and "report_archive" not in db.tables()


def test_the_transaction_ended_by_a_statement_the_runner_did_not_see_is_never_recorded(cli, db, sql_dir, monkeypatch):
    """Finding 1's second line of defence: were a COMMIT or ROLLBACK to reach the server unseen (the text check
    switched off here), the runner sees its transaction gone after that statement and stops, recording nothing, and
    says that what ran before may have committed."""
    ok(migrate(cli, db, sql_dir, "--quiet"))
    monkeypatch.setattr(files, "in_transaction_problem", lambda statement: None)
    path = add_migration(sql_dir, "0002_new_table", "CREATE TABLE report_archive (id bigint PRIMARY KEY, note text);\n"
                                                    "ROLLBACK;\nSELECT 1;\n")
    result = migrate(cli, db, sql_dir)
    assert result.exit_code == 1, result.output
    assert f"{path}:2: " in result.stderr and "ended the transaction the runner runs the file in" in result.stderr
    assert "the runner recorded none of it" in result.stderr and "may have committed" in result.stderr, result.stderr
    assert applied(db) == [SEED] and "report_archive" not in db.tables()
    add_migration(sql_dir, "0002_new_table", f"ALTER TABLE {TABLE} ADD COLUMN hidden_col int;\nCOMMIT;\nSELECT 1/0;\n")
    result = migrate(cli, db, sql_dir)
    assert result.exit_code == 1 and f"{path}:2: " in result.stderr, result.output
    assert "nothing of it was applied" not in result.stderr, result.stderr
    assert applied(db) == [SEED]
    status = cli("status", "--sql-dir", sql_dir, env=db.db_env())
    assert "may have committed" in status.output, status.output
    assert db.query("SELECT count(*) FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'hidden_col'",
                    (TABLE,)) == [(1,)]  # (committed: as the message says it may have)
    add_migration(sql_dir, "0002_new_table", "SELECT 1;\n", rollback="SELECT 1;\nROLLBACK;\nSELECT 2;\n")
    ok(migrate(cli, db, sql_dir))  # fixed: the rerun applies and records it
    assert applied(db) == [SEED, "0002_new_table"]
    assert "may have committed" not in cli("status", "--sql-dir", sql_dir, env=db.db_env()).output
    result = cli("sql", "rollback", "--sql-dir", sql_dir, env=db.db_env())  # its rollback file: the same stop
    assert result.exit_code == 1 and "0002_new_table.rollback.sql:2: " in result.stderr, result.output
    assert "the runner recorded none of it" in result.stderr, result.stderr
    assert applied(db) == [SEED, "0002_new_table"]


@pytest.mark.parametrize("text", [
    "SELECT 1 AS \u00b7$a$; ALTER TABLE {t} ALTER COLUMN id TYPE bigint; SELECT 1 AS \u00b7$a$;\n",
    "SELECT 1 AS \u00b7$a$; ALTER TABLE {t} ALTER COLUMN id TYPE bigint; SELECT 1 AS \u00b7$a$;",
    "SELECT 1 AS x, \u00b7E'\\'; ALTER TABLE {t} ALTER COLUMN id TYPE bigint; SELECT 1 -- '\n;\n",
])
def test_a_rewrite_behind_a_non_ascii_identifier_is_refused(cli, db, sql_dir, text):
    """Finding 2: the rewrite refusal sees the ALTER the server would run (the dollar and the E'' spelling)."""
    seeded(cli, db, sql_dir)
    add_migration(sql_dir, "0002_domain", "CREATE DOMAIN \u00b7e AS text;\n")
    ok(migrate(cli, db, sql_dir, "--quiet"))
    path = add_migration(sql_dir, "0003_hidden", text.replace("{t}", TABLE))
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2, result.output
    assert f"{path}:1: ALTER COLUMN id TYPE bigint rewrites public.{TABLE}" in result.stderr, result.stderr
    assert db.query(f"SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = '{TABLE}'::regclass "
                    "AND attname = 'id'") == [("integer",)]


@pytest.mark.parametrize("statement", ["CLUSTER;", "CLUSTER (VERBOSE);", "CLUSTER VERBOSE;"])
def test_a_bare_cluster_is_judged_as_cluster_of_each_clustered_table(cli, db, sql_dir, statement):
    """Finding 3: a bare CLUSTER re-clusters every table with a clustered index the role may cluster: each is
    refused as `CLUSTER t` is; without a clustered table it does nothing and runs."""
    seeded(cli, db, sql_dir)
    path = add_migration(sql_dir, "0002_recluster", f"-- transactional: false\n{statement}\n")
    db.query(f"ALTER TABLE {TABLE} CLUSTER ON idx_hcm_report_name")
    before = db.query(f"SELECT relfilenode FROM pg_class WHERE relname = '{TABLE}'")
    plan = cli("plan", "--sql-dir", sql_dir, *SMALL, env=db.db_env())
    assert f"REFUSED by migrate: {path}:2: CLUSTER rewrites public.{TABLE}" in plan.output, plan.output
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2, result.output
    assert f"{path}:2: CLUSTER rewrites public.{TABLE} (~50 rows" in result.stderr, result.stderr
    assert db.query(f"SELECT relfilenode FROM pg_class WHERE relname = '{TABLE}'") == before
    db.query(f"ALTER TABLE {TABLE} SET WITHOUT CLUSTER")
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert applied(db) == [SEED, "0002_recluster"]
