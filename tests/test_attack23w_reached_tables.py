"""attack23w 7: a checked or written table's partitions and children (pg_inherits) and the tables its foreign keys'
cascading actions write, wherever they live, are held to the same rule as the table (fix23an)."""

from __future__ import annotations

import pytest

from conftest import add_migration, ok
from test_attack23u_reach import _low_code
from test_schema_creators import doctor_line, low, refusal  # noqa: F401 (low: a fixture)

_TRIGGER = ("CREATE FUNCTION app.trg() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN INSERT INTO app.hits "
            "VALUES (current_user); RETURN COALESCE(NEW, OLD); END$$")
_PARTITION = ("CREATE TABLE {p} (id int, v text) PARTITION BY RANGE (id); "
              "CREATE TABLE archive.p_all PARTITION OF {p} FOR VALUES FROM (0) TO (1000); ")
_CASCADE = ("CREATE TABLE {p} (id int PRIMARY KEY, v text); CREATE TABLE archive.c (id int REFERENCES {p} "
            "ON DELETE CASCADE); INSERT INTO {p} VALUES (1, 'a'); INSERT INTO archive.c VALUES (1); ")
_CASES = [  # (the user's tables, the pending statement, what is named)
    (_PARTITION + "CREATE TRIGGER t BEFORE INSERT ON archive.p_all FOR EACH ROW EXECUTE FUNCTION app.trg()",
     "INSERT INTO {p} VALUES (1, 'A');", "trigger t on table archive.p_all (function app.trg())"),
    (_PARTITION + "CREATE INDEX p_all_norm ON archive.p_all ((app.imm(v)))",
     "INSERT INTO {p} VALUES (1, 'A');", "function app.imm(text)"),
    (_CASCADE + "CREATE TRIGGER t BEFORE DELETE ON archive.c FOR EACH ROW EXECUTE FUNCTION app.trg()",
     "DELETE FROM {p} WHERE id = 1;", "trigger t on table archive.c (function app.trg())"),
]


def _setup(db, low, made: str, p: str) -> None:
    _low_code(db, low)
    db.query(f"SET ROLE {low}; {_TRIGGER}; RESET ROLE; CREATE SCHEMA archive; {made.format(p=p)}")


@pytest.mark.parametrize("made, pending, named", _CASES)
def test_a_partition_or_cascade_target_in_another_schema_is_checked(cli, db, sql_dir, low, made, pending, named):
    """attack23w 7: mig's partitioned public.p routed a pending INSERT to archive.p_all (or a DELETE cascaded to
    archive.c), whose trigger or index ran low's function as the user: doctor ready, exit 0. Failed before: so."""
    _setup(db, low, made, "p")
    add_migration(sql_dir, "0002_seed", pending.format(p="p") + "\n")
    line = doctor_line(cli, db, sql_dir)
    assert line.startswith("FAIL") and named in line and f"owner {low}" in line, line
    line = refusal(cli, db, sql_dir)
    assert named.split(" (")[0] in line and f"{low}" in line, line
    assert db.query("SELECT who FROM app.hits") == []


@pytest.mark.parametrize("made, pending, named", _CASES)
def test_a_written_tables_partition_or_cascade_target_is_checked(cli, db, sql_dir, low, made, pending, named):
    """attack23w 7, a table a pending file writes by its qualified name (off the path): the same. Failed before: so."""
    db.query("CREATE SCHEMA data")
    _setup(db, low, made, "data.p")
    add_migration(sql_dir, "0002_seed", pending.format(p="data.p") + "\n")
    line = refusal(cli, db, sql_dir)
    assert "0002_seed.sql:1 writes table" in line and named.split(" (")[0].split(" on table ")[0] in line, line
    assert f"{low}" in line, line
    assert db.query("SELECT who FROM app.hits") == []


def test_a_partition_in_another_schema_with_the_users_own_code_runs(cli, db, sql_dir, low):
    """The control: the same layout without another role's code migrates."""
    db.query("CREATE SCHEMA archive; " + _PARTITION.format(p="p"))
    add_migration(sql_dir, "0002_seed", "INSERT INTO p VALUES (1, 'A');\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert db.query("SELECT id FROM archive.p_all") == [(1,)]
