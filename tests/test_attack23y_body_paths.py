"""attack23y 4, 3, 6: the body reader (body_paths) made robust.

4: `#option dump` in a plpgsql body made pglast's plpgsql parser (libpg_query, in the runner's process) print the
compiled function on the runner's stdout with C printf: a variable named `\\! touch ... #` reached `plan | psql`, and
JSON logs broke. Now such a body is never given to the parser, and a file holding one is refused in one line.
3: a body pglast cannot parse (a VARIADIC parameter, `%TYPE[]`) counted as unread only when its text spelled
search_path / set_config / execute: `SET SCHEMA 'app'` or `SET U&"search\\005fpath"` in it ran low's `=` as the
migration user, exit 0. Now every body that does not parse is unread (VARIADIC ones are parsed).
6: an assignment `target := value` was read without its target: a set_config in the target's subscript set the
path unseen, exit 0. Now the target's subscripts are read too."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

from conftest import add_migration
from test_attack23u_reach import _planted_app
from test_schema_creators import low, plant  # noqa: F401 (low: a fixture)

_UPDATE = "UPDATE public.a SET name = 'x' WHERE name = 'y';"
_DUMP = 'DO $$#option dump\nDECLARE "\'" int; "\\! touch /tmp/fix23as-pwned #" int; BEGIN NULL; END$$;\n'


@pytest.mark.parametrize("command", [("plan",), ("sql", "lint"), ("migrate",)])
@pytest.mark.parametrize("head", ["DO $$", "CREATE FUNCTION public.f() RETURNS void LANGUAGE plpgsql AS $$"])
def test_option_dump_never_reaches_stdout_and_the_file_is_refused(cli, db, sql_dir, capfd, command, head):
    """Failed before: plan exit 0 with the compiled tree ('Execution tree of successfully compiled PL/pgSQL
    function', the variable `\\! touch ...` on a line of its own) on the process's stdout, ahead of plan's text."""
    add_migration(sql_dir, "0002_dump", _DUMP.replace("DO $$", head))
    result = cli(*command, "--sql-dir", sql_dir, env=db.db_env())
    printed = capfd.readouterr().out
    assert "Execution tree" not in printed + result.output and "touch" not in result.stdout, printed + result.output
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    assert "0002_dump.sql:1" in result.output and "#option dump" in result.output, result.output
    assert db.query("SELECT count(*) FROM pg_proc WHERE proname = 'f'") == [(0,)]


def _spellings():
    """`#option dump` as the plpgsql lexer accepts it (case, spacing, comments, other options first) and near misses."""
    gaps = ["", " ", "\n", " /* c /* nested */ */ ", "-- c\n", "\t"]
    for gap1, gap2, word, lead in itertools.product(gaps[:4], gaps, ["option dump", "OPTION Dump", '"option" dump',
                                                                    "option \"dump\"", "optiondump"],
                                                   ["", "#variable_conflict use_column\n", "-- x\n"]):
        first, second = word.rsplit(" ", 1) if " " in word else (word, "")
        yield f"{lead}#{gap1}{first}{gap2 if second else ''}{second}\nDECLARE v int; BEGIN NULL; END"
    yield "BEGIN PERFORM 1 #option; END"  # (an operator, not an option)
    yield "DECLARE x text := '#option dump'; BEGIN NULL; END"


_PROBE = """
import json, os, sys, tempfile
from pglast import parse_plpgsql
from migrator import plpgsql_text
said = []
for body in json.load(sys.stdin):
    with tempfile.TemporaryFile() as out:
        saved = os.dup(1)
        os.dup2(out.fileno(), 1)
        try:
            parse_plpgsql("DO $body$" + body + "$body$")
        except Exception:
            pass
        finally:
            os.dup2(saved, 1)
        out.seek(0)
        said.append([b"Execution tree" in out.read(), plpgsql_text.dumps(body)])
print(json.dumps(said))
"""


def test_the_dump_check_agrees_with_the_parser_on_every_spelling():
    """dumps() says a body holds `#option dump` exactly when libpg_query's plpgsql parser prints its tree (in a
    child process, its fd 1 read per body): no spelling the lexer takes slips past the check."""
    import json

    bodies = list(dict.fromkeys(_spellings()))
    run = subprocess.run([sys.executable, "-c", _PROBE], input=json.dumps(bodies), capture_output=True, text=True,
                         check=True)
    said = json.loads(run.stdout)
    assert [b for b, (printed, dumps) in zip(bodies, said) if printed != dumps] == []
    assert 20 < sum(printed for printed, _ in said) < len(bodies), said


def test_the_body_reader_never_parses_a_dump_body(capfd):
    from migrator import body_paths

    for text in (_DUMP, "DO $o$BEGIN EXECUTE $x$DO $$ # Option\n/**/DUMP\nBEGIN NULL; END$$$x$; END$o$"):
        found = body_paths.read(text)
        assert found.unread and "#option dump" in found.unread[0], found
    assert capfd.readouterr().out == ""


_BODIES = {
    "schema": "CREATE FUNCTION public.fix(VARIADIC k int[]) RETURNS void LANGUAGE plpgsql AS $$BEGIN SET SCHEMA "
              f"'app'; {_UPDATE} SET SCHEMA 'public'; END$$;\nSELECT public.fix(1);",
    "uesc": "CREATE FUNCTION public.fix(VARIADIC k int[]) RETURNS void LANGUAGE plpgsql AS $$BEGIN SET "
            f"U&\"search\\005fpath\" TO app, public; {_UPDATE} SET U&\"search\\005fpath\" TO public; END$$;\n"
            "SELECT public.fix(1);",
    "typearr": f"DO $$ DECLARE z public.a.name%TYPE[]; BEGIN SET SCHEMA 'app'; {_UPDATE} SET SCHEMA 'public'; END$$;",
    "comment": f"DO $$BEGIN SET /* */ SCHEMA 'app'; {_UPDATE} SET /* */ SCHEMA 'public'; END$$;",
    "subscript": "DO $$DECLARE a int[]; BEGIN a[length(pg_catalog.set_config('search_path', 'app, public', true))] "
                 f":= 1; {_UPDATE} a[length(pg_catalog.set_config('search_path', 'public', true))] := 2; END$$;",
    "slice": "DO $$DECLARE a int[]; BEGIN a[2:length(pg_catalog.set_config('search_path', 'app, public', "
             f"true))] = array_fill(1, ARRAY[10]); {_UPDATE} a[length(pg_catalog.set_config('search_path', 'public', "
             "true))] := 2; END$$;",
}


@pytest.mark.parametrize("variant", list(_BODIES))
def test_a_path_set_in_a_body_by_any_spelling_is_refused_before_it_runs(cli, db, sql_dir, low, variant):
    """Failed before (schema, uesc, typearr, subscript, slice: exit 0, low's `=` ran as the migration user)."""
    _planted_app(cli, db, sql_dir, low)
    add_migration(sql_dir, "0003_data", _BODIES[variant] + "\n")
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    [line] = [x for x in result.output.splitlines() if "refusing to" in x]
    assert "0003_data" in line and "app" in line, line
    assert db.query("SELECT who FROM app.hits") == [] and db.query("SELECT name FROM a") == [("y",)]


@pytest.mark.parametrize("text, schemas, unread", [
    ("CREATE FUNCTION g(VARIADIC k int[]) RETURNS void LANGUAGE plpgsql AS $$BEGIN SET search_path TO k1; END$$",
     ["k1"], False),
    ("CREATE FUNCTION g(VARIADIC k int[]) RETURNS void LANGUAGE plpgsql AS $$BEGIN PERFORM k[1]; END$$", [], False),
    ("DO $$DECLARE z int%TYPE[]; BEGIN NULL; END$$", [], True),
    ("DO $$DECLARE a int[]; BEGIN a[length(set_config('search_path', 'k2', true))] := 1; END$$", ["k2"], False),
    ("DO $$DECLARE a int[]; BEGIN a[1] = length(set_config('search_path', 'k3', true)); END$$", ["k3"], False),
    ("DO $$DECLARE a int[]; BEGIN a[(SELECT 1 WHERE 1 = 1)] := 1; END$$", [], False),
    ("DO $$BEGIN SET /* c /* d */ */ SCHEMA 'k4'; END$$", ["k4"], False),
    ("DO $o$BEGIN EXECUTE $x$/* a /* b */ c */ DO $$BEGIN EXECUTE E'\\123ET \\163earch_path TO k5'; END$$$x$; "
     "END$o$", ["k5"], False),
])
def test_the_body_reader_reads_targets_and_unparsable_bodies(text, schemas, unread):
    from migrator import body_paths

    found = body_paths.read(text)
    assert found.schemas == schemas and bool(found.unread) == unread, found


@pytest.mark.parametrize("variant", ["schema", "subscript"])
def test_a_rollback_files_body_path_by_any_spelling_is_refused(cli, db, sql_dir, low, variant):
    """3c: `sql rollback` ran a rollback file's VARIADIC function setting the path as SET SCHEMA: exit 0, low's `=`
    ran as the migration user (the subscript form alike)."""
    _planted_app(cli, db, sql_dir, low)
    add_migration(sql_dir, "0003_data", "SELECT 1;\n", rollback=_BODIES[variant] + "\n")
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == 0, result.output
    result = cli("sql", "rollback", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "0003_data" in result.output and "app" in result.output, result.output
    assert db.query("SELECT who FROM app.hits") == [] and db.query("SELECT name FROM a") == [("y",)]
