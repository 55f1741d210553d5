"""`plan | psql` runs nothing but SQL, whatever the files do to psql's session (issue 23, finding 1 and the
paths into plan's text): every case goes through the real `plan` and the real psql, against the suite's server.

The cases are generated: ways a file can change how psql reads what follows (standard_conforming_strings by
any route, client_encoding, the reviewer's own environment) x shapes of a payload that hides `\\! touch pwned`
from one reading and shows it to another. For each, `plan` refuses in one line naming file:line (and
`sql lint` says the same), or psql runs the plan and no shell command ran.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import _admin_execute, _bin, add_migration, migrate, ok, one_error_line

PWN = "\\! touch pwned #"

# How a file may change how psql reads what follows it, before the payload.
ROUTES = {
    "none": "",
    "set": "SET standard_conforming_strings = off;\n",
    "set quoted": 'SET "standard_conforming_strings" TO \'off\';\n',
    "set unicode escape": 'SET U&"standard\\005fconforming_strings" TO off;\n',
    "set_config": "SELECT pg_catalog.set_config('standard_conforming_strings', 'off', false);\n",
    "set_config concatenated": "SELECT set_config('standard_' || 'conforming_strings', 'off', false);\n",
    "DO EXECUTE": "DO $$BEGIN EXECUTE 'SET standard_conforming_strings = off'; END$$;\n",
    "BEGIN SET ROLLBACK": "-- transactional: false\nBEGIN;\nSET LOCAL standard_conforming_strings = off;\nROLLBACK;\n",
    "set then reset": "SET standard_conforming_strings = off;\nRESET standard_conforming_strings;\n",
    "ALTER DATABASE": "DO $$BEGIN EXECUTE format('ALTER DATABASE %I SET standard_conforming_strings = off', "
                      "current_database()); END$$;\n",
    "SJIS": "SET client_encoding TO 'SJIS';\n",  # (a file that names client_encoding is refused: the rest reach psql)
    "BIG5 by a computed name": "SELECT set_config('client_' || 'encoding', 'BIG5', false);\n",
    "SJIS by a computed name": "DO $$BEGIN EXECUTE 'SET client_' || 'encoding TO SJIS'; END$$;\n",
    "GB18030 by a computed name": "SELECT set_config('client_' || 'encoding', 'GB18030', false);\n",
    # BIG5 reads the UTF-8 of ’ as one character and a half: the quote after it is taken, the string stays open
    "string left open in BIG5 by the file before": "SELECT set_config('client_' || 'encoding', 'BIG5', false);\n"
                                                   "SELECT '’';\n",
}
CARRIED = ("ALTER DATABASE", "string left open in BIG5 by the file before")  # routes that act on the next file
# A payload that one reading shows as a literal and another as `\\!` outside one.
PAYLOADS = {
    "backslash quote, off": f"SELECT '\\' , ' {PWN}';\n",
    "backslash quote, on": f"SELECT '\\' {PWN}';\n",
    "E continued after a CR": f"SELECT E'x'\r'\\' , ' {PWN}';\n",
    "E after a dollar quote": f"SELECT $$x$$e'\\' , ' {PWN}';\n",
    "dollar after a non-ASCII letter": f"SELECT €$$ {PWN} $$;\n",
    "E after a non-ASCII letter": f"SELECT €e'\\' {PWN}';\n",
    "dollar after a number": f"SELECT 1$$ ' $$ {PWN}\n;' $$;\n",
    "dollar after an Arabic-Indic digit": f"SELECT ٣$$ {PWN} $$;\n",
    "E after a number (psql 15)": f"SELECT 1E'\\' , ' {PWN}';\n",
    "hex string": f"SELECT X'\\' {PWN}';\n",
    "number that eats a minus (psql 16)": f"SELECT 1E-- {PWN}\n;\n",
    # psql reads the lines after COPY FROM STDIN as data up to `\.`, then lexes afresh
    "COPY FROM STDIN that only one reading shows": "CREATE TEMP TABLE ct (a text);\n"
                                                   f"SELECT '\\' , ' ; COPY ct FROM STDIN; -- ';\n'\n\\.\n{PWN}'\n;\n",
    "COPY FROM STDIN behind a comment": f"CREATE TEMP TABLE ct (a text);\nCOPY ct FROM /* x */ STDIN;\n'\n\\.\n{PWN}'\n;\n",
    "SJIS swallows a quote": f"SELECT 'ß' , ' {PWN}';\n",
    "BIG5 swallows a quote": f"SELECT '’' , ' {PWN}';\n",
    "last error message": f"DO $$BEGIN RAISE EXCEPTION '{PWN}'; END$$;\nSELECT :LAST_ERROR_MESSAGE;\n",
    "comment continued string": f"SELECT 'a' -- c\r'\\' , ' {PWN}';\n",
    "nested comment": f"SELECT 1 /* a /*/ b */ {PWN} */;\n",
    "restrict line": f"\\restrict abc {PWN}\nSELECT 1;\n",
    # click.echo strips ANSI escapes on a pipe: `$a ESC[0m$` is no tag to the guard, `$a$` to psql (attack23v 10)
    "dollar tag cut by an ANSI escape": f"SELECT $a$ x $a\x1b[0m$ {PWN}\n$a$ AS note;\n",
    "comment cut by an ANSI escape": f"SELECT 1 -\x1b[m- x\n, ' {PWN}';\n",
    # the same characters where every reading agrees: accepted, and psql must run them harmlessly
    "inside a literal in every reading": f"SELECT 'x' , ' {PWN}';\n",
    "after an E string ending in a backslash": f"SELECT E'\\\\' , ' {PWN}';\n",
    "after a dollar quote holding a quote": f"SELECT $$\\' $$ , ' {PWN}';\n",
    "in comments": f"/* {PWN} */ SELECT 1; -- {PWN}\nSELECT 'é', U&'\\0041';\n",
    "after text in Chinese": f"SELECT '’日本' , ' {PWN}';\n",
}
# Dollar-quote tag pairs psql may read as one tag in a multibyte client encoding (attack23x 1), drawn at random: the
# characters of both tags from one block whose UTF-8 shares its leading bytes (U+00E0.., U+3040.., U+4E00..), the two
# tags of one length, an even number of bytes (no ASCII character taken: what reads alike except for the tags).
_TAG_RNG = random.Random(2312)
for _number in range(8):
    _base, _size, _length = _TAG_RNG.choice(((0xE0, 32, _TAG_RNG.randint(1, 2)), (0x3040, 64, 2), (0x4E00, 64, 2)))
    _a, _b = ("$" + "".join(chr(_base + _TAG_RNG.randrange(_size)) for _ in range(_length)) + "$" for _ in "ab")
    PAYLOADS[f"dollar tags {_a} {_b}"] = f"SELECT {_a} x {_b}; {PWN} ; {_a};\n"
# The reviewer's own environment: psql reads a plan under these too.
ENVIRONMENTS = [{}, {"PGOPTIONS": "-c standard_conforming_strings=off"}, {"PGCLIENTENCODING": "SJIS"},
                {"PGCLIENTENCODING": "BIG5"}, {"PGCLIENTENCODING": "GBK"}]


def _psql(database, plan: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The plan fed to psql as a reviewer would (no ON_ERROR_STOP: the worst case), in cwd."""
    return subprocess.run([_bin("psql"), "-X", "-d", database.url], input=plan.encode("utf-8"), cwd=cwd,
                          capture_output=True, env={**os.environ, **env}, timeout=60)


def _cases():
    for (route, setup), (shape, payload) in itertools.product(ROUTES.items(), PAYLOADS.items()):
        # the route in the payload's file, and (for what outlives a file) in the file before it
        yield f"{route} / {shape}", [setup + payload] if route not in CARRIED else [setup, payload]


def test_no_generated_file_makes_plan_piped_to_psql_run_a_shell_command(cli, make_db, tmp_path):
    twin = make_db()
    refused = ran = 0
    for number, (name, files) in enumerate(_cases()):
        folder = tmp_path / f"sql{number}"
        folder.mkdir()
        for index, text in enumerate(files, 1):
            add_migration(folder, f"{index:04d}_case", text)
        plan = cli("plan", "--offline", "--sql-dir", folder)
        lint = cli("sql", "lint", "--sql-dir", folder)
        if plan.exit_code:
            line = one_error_line(plan)
            assert ".sql:" in line, (name, line)
            where = line.split(": ", 2)[1].split(":")[0:2]  # `error: <path>:<line>: ...`
            assert f"{where[0]}:{where[1]}:" in lint.output and lint.exit_code != 0, (name, line, lint.output)
            refused += 1
            continue
        for env in ENVIRONMENTS:
            cwd = tmp_path / f"run{number}"
            cwd.mkdir(exist_ok=True)
            _psql(twin, plan.stdout, cwd, env)
            _admin_execute(twin.server, f"ALTER DATABASE {twin.name} RESET ALL")  # (the kept session: ~490 a run)
            assert not (cwd / "pwned").exists(), (name, env, plan.stdout)
            ran += 1
        shutil.rmtree(folder)
    assert refused >= len(PAYLOADS) * len(ROUTES) // 2  # the generator does reach the guard
    assert ran >= len(ROUTES) * len(ENVIRONMENTS)  # and cases that pass it do reach psql


# Token soup: random files from the pieces psql's lexer turns on, for what the named shapes above miss.
SOUP = ["'abc'", "E'\\n'", "$$\\ $$", "'\\d'", "'ab", "c'", "'", "'", "E'", "e'", "X'", "b'", "U&'", "U&\"", "N'", '"',
        "$$", "$a$", "x$", "$x", "$1", "\\", "'\\'", "\r'", "\r", "\n", "--", "/*", "*/", "-", "€", "’", "ß", "1", "1e",
        ".5e", "0x", ":a", "::a", ":'a'", " ", "x", ";", "(", ")", f" {PWN}\n", "SELECT ", ROUTES["BIG5 by a computed name"], ROUTES["set_config"],
        "\x1b[0m", "\x1b[2K"]


def test_random_token_soup_never_reaches_a_shell_through_plan_and_psql(cli, make_db, tmp_path):
    import random

    rng, twin, ran = random.Random(23), make_db(), 0
    for number in range(400):
        text = "".join(rng.choice(SOUP) for _ in range(rng.randint(3, 18))) + f" {PWN}\n"
        folder = tmp_path / f"sql{number}"
        folder.mkdir()
        add_migration(folder, "0001_soup", text)
        plan = cli("plan", "--offline", "--sql-dir", folder)
        if plan.exit_code:
            assert "0001_soup.sql" in one_error_line(plan)
            continue
        for env in ENVIRONMENTS:
            _psql(twin, plan.stdout, folder, env)
            assert not (folder / "pwned").exists(), (text, env)
            ran += 1
    assert ran >= 20


@pytest.mark.parametrize("name, text, line", [
    ("set_config", f"SELECT pg_catalog.set_config('standard_conforming_strings', 'off', false);\n"
                   f"SELECT '\\' , ' {PWN}';\n", 2),
    ("DO EXECUTE", f"DO $$BEGIN EXECUTE 'SET standard_conforming_strings = off'; END$$;\nSELECT '\\' , ' {PWN}';\n", 2),
    ("client_encoding", f"SELECT set_config('client_' || 'encoding', 'SJIS', false);\n\nSELECT 'ß' , ' {PWN}';\n", 3),
    ("client_encoding named", f"SET client_encoding TO 'SJIS';\n\nSELECT 'ß' , ' {PWN}';\n", 1),
    ("dollar tags one in BIG5", f"SELECT 1;\nSELECT $é$ x $ë$; {PWN} ; $é$;\n", 2),
    ("dollar tags one in SJIS", f"SELECT 1;\nSELECT $あい$ x $あう$; {PWN} ; $あい$;\n", 2),
    ("psql variable", f"DO $$BEGIN RAISE EXCEPTION '{PWN}'; END$$;\nSELECT :LAST_ERROR_MESSAGE;\n", 2),
    ("dollar after a non-ASCII letter", f"SELECT 1;\nSELECT €$$ {PWN} $$;\n", 2),
])
def test_the_issue_routes_are_refused_in_one_line_by_plan_lint_and_migrate(cli, db, sql_dir, name, text, line):
    add_migration(sql_dir, "0002_hostile", text)
    for result in (cli("plan", "--offline", "--sql-dir", sql_dir), migrate(cli, db, sql_dir)):
        assert f"0002_hostile.sql:{line}:" in one_error_line(result)
    lint = cli("sql", "lint", "--sql-dir", sql_dir)
    assert lint.exit_code != 0 and f"0002_hostile.sql:{line}:" in lint.output
    assert "hcm_report_metadata" not in db.tables()  # migrate ran nothing


def test_sql_that_reads_one_way_in_every_setting_still_runs_through_plan_and_psql(cli, db, make_db, sql_dir, tmp_path):
    add_migration(sql_dir, "0002_backslashes", "CREATE TABLE r (pattern text, note text);\n"
                  "INSERT INTO r VALUES ('^\\d+$', E'tab\\there'), ($$C:\\new$$, 'it''s'), (E'\\\\', 'a::text');\n"
                  "SELECT v::text, arr[1:2] FROM (SELECT 1 AS v, ARRAY[1,2] AS arr) s;  -- comment \\ here\n"
                  "/* a comment with \\! in it */ SELECT 'ünïcode';\n")
    ok(migrate(cli, db, sql_dir))
    plan = ok(cli("plan", "--offline", "--sql-dir", sql_dir)).stdout
    twin = make_db()
    done = _psql(twin, plan, tmp_path, {})
    assert done.returncode == 0 and b"ERROR" not in done.stderr, done.stderr
    assert twin.query("SELECT * FROM r ORDER BY 1") == db.query("SELECT * FROM r ORDER BY 1")


def test_a_newline_in_the_sql_folder_or_a_restrict_line_cannot_inject_into_plan(cli, make_db, sql_dir, tmp_path):
    folder = tmp_path / f"sql\n{PWN}\nSELECT 'injected';\n"
    shutil.copytree(sql_dir, folder)
    add_migration(folder, "0002_dump", "\\restrict abcDEF123\nCREATE TABLE d (id int);\n\\unrestrict abcDEF123\n")
    plan = ok(cli("plan", "--offline", "--sql-dir", folder)).stdout
    assert "\\nSELECT 'injected';\\n" in plan  # the folder's name shown on its comment line, escaped
    assert "restrict" not in plan
    done = _psql(make_db(), plan, tmp_path, {})
    assert not (tmp_path / "pwned").exists()
    assert b"injected" not in done.stdout and b"ERROR" not in done.stderr, done.stderr
    assert [line for line in plan.splitlines() if line.startswith("\\")] == ["\\connect -reuse-previous=on"] * 2


def test_a_raised_message_with_a_line_break_cannot_forge_an_error_line(cli, db, sql_dir):
    add_migration(sql_dir, "0002_raise", "DO $$BEGIN RAISE EXCEPTION E'boom\\nerror: forged line\\x1b[2K'; END$$;\n")
    line = one_error_line(migrate(cli, db, sql_dir))  # exactly one line starts with `error:`
    assert "0002_raise.sql:1:" in line and "boom error: forged line\\x1b[2K" in line


def test_outside_text_in_error_and_note_lines_cannot_start_a_line_of_its_own(capsys):
    from migrator import output

    output.error("a patch failed: boom\nerror: forged\r\x1b[2Knote: forged too")
    output.note("note: from a server\nerror: forged")
    lines = capsys.readouterr().err.splitlines()
    assert [line for line in lines if not line.startswith("  ")] == ["error: a patch failed: boom", "note: from a server"]
    assert "\\x1b[2Knote: forged too" in lines[2]


@pytest.mark.parametrize("first", ["SELECT 1$$;\n", "SELECT 1 /* a /*/ b */;\n"])
def test_a_file_psql_would_end_inside_a_literal_cannot_shift_the_next_file(cli, make_db, tmp_path, first):
    """No backslash in the first file: psql alone opens a dollar quote (1$$) or a nested comment (/*/) there,
    and would read the second file, and its \\! inside $$...$$, shifted by it."""
    folder = tmp_path / "sql"
    folder.mkdir()
    add_migration(folder, "0001_opens", first)
    add_migration(folder, "0002_next", f"SELECT ' */ {PWN} ';\n" if "/*" in first else f"SELECT $$ {PWN} $$;\n")
    plan = cli("plan", "--offline", "--sql-dir", folder)
    if plan.exit_code == 0:  # before the fix: what psql makes of it
        _psql(make_db(), plan.stdout, tmp_path, {})
        assert not (tmp_path / "pwned").exists()
    assert "0001_opens.sql:1:" in one_error_line(plan)


@pytest.mark.parametrize("as_json", [False, True])
def test_password_masking_never_rewrites_the_sql_plan_prints(cli, db, make_db, sql_dir, tmp_path, as_json):
    """The guard reads the file as it is; masking `password=postgres` (the seed's password) in the printed SQL
    turned `postgres$$` into `***$$` and opened a dollar quote psql read differently: SQL is printed unmasked."""
    import json

    text = ("CREATE TABLE t (password text, postgres$$ text);\n"
            f"SELECT password=postgres$$, $$ {PWN}$$ FROM t;\n")
    add_migration(sql_dir, "0002_mask", text)
    env = {**db.db_env(), "DB_PASSWORD": "postgres"}
    plan = cli("plan", *(["--json"] if as_json else []), "--sql-dir", sql_dir, env=env)
    assert plan.exit_code == 0, plan.output
    if as_json:
        data = json.loads(plan.stdout)
        pending = (data.get("postgres") or data)["pending"]
        [sql] = [p["sql"] for p in pending if p["id"] == "0002_mask"]
        assert text.rstrip("\n") in sql, sql
        return
    assert text.rstrip("\n") in plan.stdout, plan.stdout
    assert "***" not in plan.stdout.split("\n", 1)[1]
    _psql(make_db(), plan.stdout, tmp_path, {})
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("encoding, letter", [("cp932", "表"), ("cp950", "許"), ("gbk", "乗")])
def test_plan_writes_the_files_utf8_whatever_the_locales_encoding(make_db, tmp_path, encoding, letter):
    """In cp932, cp950 and GBK these letters end in the byte of a backslash: written in the locale's encoding, psql
    (reading UTF-8) saw `\\o | touch ...` outside any literal (attack23v 6). A real process, as a locale sets it."""
    import sys

    from conftest import PROJECT_ROOT

    folder = tmp_path / "sql"
    folder.mkdir()
    add_migration(folder, "0001_letters", f"SELECT {letter}o | touch -- ; touch pwned\nFROM (SELECT 1, 2) AS s({letter}o, touch);\n")
    env = {**os.environ, "PYTHONIOENCODING": encoding}
    plan = subprocess.run([sys.executable, "runner.py", "plan", "--offline", "--sql-dir", str(folder)], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, timeout=60)
    assert plan.returncode == 0, plan.stderr
    assert f"AS s({letter}o, touch)".encode() in plan.stdout  # the file's own bytes
    subprocess.run([_bin("psql"), "-X", "-d", make_db().url], input=plan.stdout, cwd=tmp_path, capture_output=True,
                   timeout=60)
    assert not (tmp_path / "pwned").exists()


def test_plan_on_a_terminal_shows_a_files_control_characters_as_escapes(cli, sql_dir, monkeypatch):
    """On a terminal a lone carriage return or a bidirectional override in a file would redraw or reorder what the
    reviewer reads; on a pipe the bytes go as they are (what psql reads is what was checked). (A control character
    such as ESC is refused in any file: test_attack23w_control_chars.py.)"""
    add_migration(sql_dir, "0002_hidden", "SELECT 1; \u202e DROP TABLE important; \u202c\rSELECT 2;\r\n")
    piped = ok(cli("plan", "--offline", "--sql-dir", sql_dir)).stdout
    assert "SELECT 1; \u202e DROP TABLE important; \u202c\rSELECT 2;" in piped
    import click.testing

    monkeypatch.setattr(click.testing._NamedTextIOWrapper, "isatty", lambda self: True, raising=False)
    shown = ok(cli("plan", "--offline", "--sql-dir", sql_dir)).stdout
    assert "SELECT 1; \\u202e DROP TABLE important; \\u202c\\rSELECT 2;" in shown
    assert "\u202e" not in shown and "\rSELECT" not in shown
