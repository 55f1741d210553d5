"""Tables the runner did not create are never read when reading them would run another role's code as the
migration role (attack23e 2), on the real PostgreSQL: a Flyway-shaped table another role planted, with a
row-level policy, in the schema of a Flyway folder's history; a never-analyzed table with another role's policy
counted by the rewrite judge."""

from __future__ import annotations

import pytest

from conftest import add_migration, ok, migrate
from test_planted_objects import hits, hits_table, low, migrator_role, writable_by  # noqa: F401 (fixtures)


def plant_policy_table(db, schema: str, role: str, table: str, columns: str) -> None:
    """`table`, made by `role`, with one row and a row-level policy recording who reads it."""
    db.query(hits_table(schema, role) + f"""; SET ROLE {role};
        CREATE FUNCTION {schema}.planted_policy() RETURNS boolean LANGUAGE sql AS
            $$ INSERT INTO {schema}.planted_hits VALUES (current_user, 'policy') RETURNING true $$;
        CREATE TABLE {schema}.{table} ({columns});
        ALTER TABLE {schema}.{table} ENABLE ROW LEVEL SECURITY;
        CREATE POLICY p ON {schema}.{table} USING ({schema}.planted_policy());
        GRANT ALL ON {schema}.{table} TO PUBLIC; RESET ROLE""")


FLYWAY_COLUMNS = ("installed_rank int, version varchar(50), description varchar(200), type varchar(20), "
                  "script varchar(1000), checksum int, installed_by varchar(100), installed_on timestamp, "
                  "execution_time int, success boolean")


def test_a_planted_flyway_shaped_table_is_named_not_read(cli, db, tmp_path, low, migrator_role):
    folder = tmp_path / "flyway"
    folder.mkdir()
    (folder / "V1__create_fw.sql").write_text("CREATE TABLE fw (id int);\n")
    writable_by(db, "public", low)
    plant_policy_table(db, "public", low, "old_service_history", FLYWAY_COLUMNS)
    db.query("INSERT INTO public.old_service_history VALUES (1, '1', 'a', 'SQL', 'V1__a.sql', 0, 'x', now(), 1, true)")
    db.query("DELETE FROM public.planted_hits")  # (the superuser's insert ran no policy; to be sure)
    env = {**db.db_env(), "DB_USER": migrator_role}
    doctor = cli("doctor", "--sql-dir", folder, env=env)
    assert hits(db, "public") == []
    [warn] = [line for line in doctor.stdout.splitlines() if "public.old_service_history" in line
              and "schema creators" not in line]  # (that one says low owns it: accepted, test_planted_objects.low)
    assert warn.startswith("warn  flyway history") and "not reading" in warn, doctor.stdout
    result = cli("migrate", "--sql-dir", folder, env=env)
    assert result.exit_code == 0, result.output
    assert "note: not reading Flyway-shaped table(s) public.old_service_history" in result.output, result.output
    assert hits(db, "public") == []
    assert db.query("SELECT version FROM public.flyway_schema_history WHERE success") == [("1",)]


def test_the_rewrite_judge_counts_no_table_with_another_roles_policy(cli, db, sql_dir, low, migrator_role):
    """A never-analyzed table is counted (capped) by the judge: with another role's row-level policy it is not
    counted but taken as big, so the policy never runs as the migration role."""
    writable_by(db, "public", low)
    plant_policy_table(db, "public", low, "lowt", "id int")
    db.query("INSERT INTO public.lowt SELECT generate_series(1, 5)")  # (never analyzed: reltuples -1)
    db.query("DELETE FROM public.planted_hits")
    env = {**db.db_env(), "DB_USER": migrator_role}
    add_migration(sql_dir, "0002_lowt", "ALTER TABLE public.lowt ADD COLUMN r float8 DEFAULT random();\n")
    result = cli("migrate", "--sql-dir", sql_dir, "--rewrite-threshold-rows", "10", env=env)
    assert hits(db, "public") == []
    assert result.exit_code != 0 and "public.lowt" in result.output, result.output
