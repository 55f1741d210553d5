"""attack23q's lows on the bookkeeping (issue 23), on the real PostgreSQL: each refusal says what is wrong and what
to do in one line."""

from __future__ import annotations

import psycopg2
import pytest

from conftest import SPECIAL_PASSWORD, add_migration, ok, one_error_line
from test_planted_objects import low  # noqa: F401 (a fixture)


@pytest.mark.parametrize("damage", ["DROP TABLE public._yoyo_version",
                                    "DELETE FROM public._yoyo_version",
                                    "UPDATE public._yoyo_version SET version = 0"])
def test_a_history_without_its_layout_version_is_one_clear_line(cli, db, sql_dir, damage):
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_more", "CREATE TABLE more_rows (id int);\n")
    db.query(damage)
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    line = one_error_line(result)
    assert result.exit_code == 2 and "unexpected" not in line, result.output
    assert "public._yoyo_version" in line, line


def test_a_yoyo_5_history_is_one_clear_line(cli, db, sql_dir):
    db.query("CREATE TABLE public._yoyo_migration (id VARCHAR(255) NOT NULL PRIMARY KEY, ctime TIMESTAMP); "
             "INSERT INTO public._yoyo_migration VALUES ('0001_create_hcm_report_metadata', now())")
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    assert "yoyo < 6's layout" in one_error_line(cli("status", "--sql-dir", sql_dir, env=db.db_env()))
    line = one_error_line(result)
    assert result.exit_code == 2 and "yoyo < 6's layout" in line and "public._yoyo_migration" in line, line
    assert "sql adopt --yes" in line and "hcm_report_metadata" not in db.tables()


def test_a_foreign_key_left_on_yoyo_lock_is_named_as_one_with_its_drop_constraint(cli, db, sql_dir, low):
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    db.query(f"GRANT USAGE, CREATE ON SCHEMA public TO {low}; GRANT REFERENCES ON public.yoyo_lock TO {low}")
    evil = psycopg2.connect(dbname=db.name, user=low, host=db.server.host, port=db.server.port)
    evil.autocommit = True
    evil.cursor().execute("CREATE TABLE public.fk (l int CONSTRAINT held REFERENCES public.yoyo_lock (locked))")
    evil.close()
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    line = one_error_line(result)
    assert result.exit_code == 2 and "foreign key held of table public.fk" in line, line
    assert "RI_ConstraintTrigger" not in line and "ALTER TABLE public.fk DROP CONSTRAINT held" in line, line
    doctor = cli("doctor", "--sql-dir", sql_dir, env=db.db_env())
    assert "ALTER TABLE public.fk DROP CONSTRAINT held" in doctor.output and "RI_Constraint" not in doctor.output


def test_a_right_on_a_superusers_bookkeeping_granted_by_another_role_is_named_with_its_grantor(cli, make_db,
                                                                                             password_role, sql_dir,
                                                                                             low):
    """The superuser's (the owner's) REVOKE takes only what the owner granted: the migration user, holding GRANT
    OPTION, granted the app INSERT; the advice names that grantor, and its REVOKE works."""
    db = make_db(owner=password_role)
    # (as the superuser: its tables; the database's owner, a login role, may CREATE in public: accepted)
    ok(cli("migrate", "--sql-dir", sql_dir, env={**db.db_env(), "SCHEMA_CREATORS_TRUSTED": password_role}))
    db.query(f"GRANT USAGE ON SCHEMA public TO {low}; "
             f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {password_role} WITH GRANT OPTION; "
             f"SET ROLE {password_role}; GRANT INSERT ON public._yoyo_migration TO {low}; RESET ROLE")
    env = {**db.db_env(), "DB_USER": password_role, "DB_PASSWORD": SPECIAL_PASSWORD}
    try:
        result = cli("migrate", "--sql-dir", sql_dir, env=env)
        line = one_error_line(result)
        assert result.exit_code == 2 and f"public._yoyo_migration to {low} (INSERT)" in line, line
        assert f"as role {password_role}, which granted them" in line and "as the tables' owner" not in line, line
        revoke = line.split(" run ")[-1]
        db.query(f"SET ROLE {password_role}; {revoke}; RESET ROLE")
        assert db.query(f"SELECT has_table_privilege('{low}', 'public._yoyo_migration', 'INSERT')") == [(False,)]
    finally:
        db.query(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {low} CASCADE; "
                 f"REVOKE USAGE ON SCHEMA public FROM {low}; "
                 f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {password_role} CASCADE")
