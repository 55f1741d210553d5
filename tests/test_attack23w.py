"""attack23w 8: a search_path string names a schema as the server reads it: unquoted names folded in ASCII only
(downcase_identifier in a UTF-8 database), every name truncated to 63 bytes (truncate_identifier). The runner folded
with Python's str.lower() and never truncated, so it checked a schema that does not exist while the server put
low's on the path: low's `=` ran as the migration user, lint clean, exit 0."""

from __future__ import annotations

import pytest

from conftest import add_migration, ok
from test_schema_creators import low, plant  # noqa: F401 (low: a fixture)

LONG = "app" * 21  # 63 characters: the longest name a schema can have


@pytest.mark.parametrize("name, spelled", [("Àpp", "Àpp"), (LONG, LONG + "x"), ("éapp" + "a" * 58, "éapp" + "a" * 58 + "é")])
@pytest.mark.parametrize("route", ["literal", "DO"])
def test_a_path_string_names_the_schema_the_server_puts_on_the_path(cli, db, sql_dir, low, name, spelled, route):
    db.query(f'CREATE SCHEMA "{name}" AUTHORIZATION {low}; GRANT USAGE ON SCHEMA "{name}" TO PUBLIC')
    plant(db, f'"{name}"', low)
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int, name varchar(20)); INSERT INTO a VALUES (1, 'y');\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    path = f"SELECT pg_catalog.set_config('search_path', '{spelled}, public', false);"
    if route == "DO":
        path = f"DO $$BEGIN EXECUTE $x${path}$x$; END$$;"
    add_migration(sql_dir, "0003_data", f"{path}\nUPDATE public.a SET name = 'x' WHERE name = 'y';\n")
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == 2 and f"roles {low} may CREATE in schema" in result.stderr, result.output
    assert db.query(f'SELECT who FROM "{name}".hits') == [] and db.query("SELECT name FROM a") == [("y",)]



def test_a_role_default_path_with_a_name_cut_by_the_server_is_checked_as_the_server_reads_it(cli, db, sql_dir, low):
    """8c: the connect check split the session's starting path in SQL, folded as the server but uncut."""
    db.query(f'CREATE SCHEMA "{LONG}" AUTHORIZATION {low}; GRANT USAGE ON SCHEMA "{LONG}" TO PUBLIC')
    plant(db, f'"{LONG}"', low)
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int, name varchar(20)); INSERT INTO a VALUES (1, 'y');\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    user = db.query("SELECT current_user")[0][0]
    db.query(f"SELECT pg_catalog.set_config('search_path', '{LONG}x, public', false); "
             f"ALTER ROLE {user} IN DATABASE {db.name} SET search_path FROM CURRENT")
    add_migration(sql_dir, "0003_data", "UPDATE public.a SET name = 'x' WHERE name = 'y';\n")
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == 2 and f"roles {low} may CREATE in schema" in result.stderr, result.output
    assert db.query(f'SELECT who FROM "{LONG}".hits') == [] and db.query("SELECT name FROM a") == [("y",)]
