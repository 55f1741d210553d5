"""schema.sql kept current: `make schema` rewrites it, `--check` fails in one line on a stale one, and that line
says only true things about what differs (attack on issue 22)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SCRATCH_USER, fresh_clone
from schema_helpers import server_target

from migrator.schema.generate import schema_text, stale_summary

BASE = """\
CREATE TABLE nocons (a int, b text);
CREATE TABLE withcons (id int PRIMARY KEY, x int, CONSTRAINT ck_x CHECK (x > 0));
CREATE FUNCTION f(a integer) RETURNS int LANGUAGE sql AS $$ SELECT a $$;
CREATE FUNCTION f(a text) RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;
CREATE SCHEMA s2;
CREATE TABLE s2.t (id int);
CREATE TABLE "Quoted Tbl" ("my col" int, "a""b" int);
CREATE MATERIALIZED VIEW mv AS SELECT 1 AS one;
"""
# change -> the differences the line names (all of them, sorted)
CASES = {
    "ALTER TABLE nocons ADD COLUMN c int;": "table public.nocons: column c added",  # not "column b changed"
    "ALTER TABLE withcons ADD CONSTRAINT zz_ck CHECK (x < 100);": "table public.withcons: constraint zz_ck added",
    "DROP FUNCTION f(text);": "function public.f(a text) removed",  # not the overloads cut to public.f
    "CREATE OR REPLACE FUNCTION f(a integer) RETURNS int LANGUAGE sql AS $$ SELECT a + 1 $$;":
        "function public.f(a integer) changed",
    "CREATE SCHEMA s3;": "schema s3 added",
    "ALTER DEFAULT PRIVILEGES IN SCHEMA s2 GRANT SELECT ON TABLES TO PUBLIC;":
        "default privileges of {user} in schema s2 on tables added",  # not the last block (mv) as changed too
    'ALTER TABLE "Quoted Tbl" DROP COLUMN "a""b";': 'table public."Quoted Tbl": column "a""b" removed',
    "ALTER TABLE nocons ALTER COLUMN b TYPE varchar(5); ALTER TABLE nocons ENABLE ROW LEVEL SECURITY;":
        "table public.nocons changed",  # more than a column line differs: the table, not a column
}


def build(pg, tmp_path: Path, sql: str) -> str:
    folder = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    (folder / "0001_base.sql").write_text(sql)
    return schema_text(server_target(pg), folder)


def test_the_stale_line_names_exactly_what_differs(pg, tmp_path):
    old = build(pg, tmp_path, BASE)
    for change, said in CASES.items():
        new = build(pg, tmp_path, BASE + change + "\n")
        assert stale_summary(old, new) == (f"schema.sql is out of date: {said.format(user=SCRATCH_USER)}; "
                                           "run `make schema` and commit it"), change
    # A CRLF checkout of a current file is current; a missing file is said to be missing, not an object.
    assert stale_summary(old.replace("\n", "\r\n"), old) is None
    assert stale_summary(None, old) == "schema.sql is missing: run `make schema` and commit it"


def test_make_schema_rewrites_a_stale_file_and_check_fails_in_one_line(tmp_path):
    clone = fresh_clone(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_URL", "MONGO"))}
    env["HCM_DEVDB_DIR"] = str(tmp_path / "devdb")
    (clone / "sql" / "0900_probe.sql").write_text("CREATE TABLE zz_probe (id int);\n")
    make = ["make", "-s", "-C", str(clone), f"PYTHON={sys.executable}"]
    check = [sys.executable, "-m", "migrator.schema.generate", "--check"]
    try:
        stale = subprocess.run(check, cwd=clone, capture_output=True, text=True, env=env)
        assert stale.returncode != 0
        assert stale.stderr.strip() == ("error: schema.sql is out of date: table public.zz_probe added; "
                                        "run `make schema` and commit it"), stale.stderr
        made = subprocess.run([*make, "schema"], capture_output=True, text=True, env=env)
        assert made.returncode == 0, made.stderr
        written = (clone / "schema.sql").read_text()
        assert "CREATE TABLE public.zz_probe (\n    id integer\n);" in written
        assert "(up to 0900_probe)" in written
        current = subprocess.run(check, cwd=clone, capture_output=True, text=True, env=env)
        assert current.returncode == 0, current.stderr
        assert "is up to date" in current.stdout
        (clone / "schema.sql").unlink()
        missing = subprocess.run(check, cwd=clone, capture_output=True, text=True, env=env)
        assert missing.returncode != 0
        assert missing.stderr.strip() == "error: schema.sql is missing: run `make schema` and commit it"
    finally:
        subprocess.run([*make, "db-stop"], capture_output=True, env=env)


@pytest.mark.parametrize("name", ["add", "drop"])
def test_a_stale_line_on_hand_made_blocks_keeps_quoted_names_whole(name):
    header = "-- schema.sql: GENERATED\n\n"
    table = 'CREATE TABLE public."My Table" (\n    "my col" integer,\n    id integer\n);'
    grown = table.replace("    id integer\n", "    id integer,\n    \"new col\" text\n")
    old, new = (header + table + "\n", header + grown + "\n")[:: 1 if name == "add" else -1]
    how = "added" if name == "add" else "removed"
    assert stale_summary(old, new) == (f'schema.sql is out of date: table public."My Table": column "new col" {how}; '
                                       "run `make schema` and commit it")
