"""A view over the runner's history that other roles may write (issue 23, attack23s second report 14).

A write through an auto-updatable view is checked against the view owner's rights on the table below: a role granted
INSERT on `public.migration_log AS SELECT * FROM _yoyo_migration` (a reporting view the migration user made) marks a
pending migration applied with no right on the history itself, so nothing was revoked or recorded and migrate skipped
the migration (exit 0). Now writing commands refuse such a view in one line and doctor FAILs.
"""

from __future__ import annotations

from conftest import add_migration, ok, one_error_line
from test_schema_creators import low  # noqa: F401 (a fixture)


def test_a_view_over_the_history_others_may_write_is_refused_and_doctor_fails(cli, db, sql_dir, low):
    """Failed before: doctor "ready", migrate "up to date", exit 0, 0002 never ran."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_important", "CREATE TABLE important (id int);\n")
    db.query(f"CREATE VIEW public.migration_log AS SELECT * FROM public._yoyo_migration; GRANT USAGE ON SCHEMA public "
             f"TO {low}; GRANT SELECT, INSERT, UPDATE, DELETE ON public.migration_log TO {low}; SET ROLE {low}; "
             "INSERT INTO public.migration_log VALUES (encode(sha256('0002_important'), 'hex'), '0002_important', now()); "
             "RESET ROLE")
    doctor = cli("doctor", "--no-dev-tools", "--sql-dir", sql_dir, env=db.db_env()).output
    [line] = [x for x in doctor.splitlines() if "through a view" in x] or [doctor]
    assert line.startswith("FAIL") and f"view public.migration_log over public._yoyo_migration to {low} " \
        "(DELETE, INSERT, UPDATE)" in line, line
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    error = one_error_line(result)
    assert result.exit_code == 2 and "the bookkeeping relation they write is a view, not the table" in error, error
    assert f'run REVOKE INSERT, UPDATE, DELETE ON public.migration_log FROM "{low}", or drop the view' in error
    db.query(f"REVOKE INSERT, UPDATE, DELETE ON public.migration_log FROM {low}")  # (a reader's SELECT is fine)
    assert "important" not in db.tables()


def test_a_view_over_a_view_over_the_history_others_may_write_is_refused(cli, db, sql_dir, low):
    """attack23u 9: the grant is on a view over a reporting view over the history. Failed before: doctor "ready",
    migrate "up to date", exit 0, 0002 never ran (one level was refused)."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_important", "CREATE TABLE important (id int);\n")
    db.query(f"CREATE VIEW public.hist1 AS SELECT * FROM public._yoyo_migration; CREATE VIEW public.hist AS SELECT * "
             f"FROM public.hist1; GRANT USAGE ON SCHEMA public TO {low}; GRANT SELECT, INSERT ON public.hist TO {low}; "
             f"SET ROLE {low}; INSERT INTO public.hist VALUES (encode(sha256('0002_important'), 'hex'), "
             "'0002_important', now()); RESET ROLE")
    doctor = cli("doctor", "--no-dev-tools", "--sql-dir", sql_dir, env=db.db_env()).output
    [line] = [x for x in doctor.splitlines() if "through a view" in x] or [doctor]
    assert line.startswith("FAIL") and f"view public.hist over public._yoyo_migration to {low} (INSERT)" in line, line
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    error = one_error_line(result)
    assert result.exit_code == 2 and "the bookkeeping relation they write is a view, not the table" in error, error
    assert "view public.hist1" not in error and "important" not in db.tables()
