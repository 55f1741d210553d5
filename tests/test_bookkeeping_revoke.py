"""What a run that takes others' write rights on its bookkeeping may trust afterwards (issue 23, attack23p 1-4).

The revoke (trust.disown) cannot see a trigger another role creates in a transaction still open at the catalog
read, nor one it commits between that read and the REVOKE: with pg_class.relhastriggers already true (a dropped
foreign key leaves it so) the REVOKE does not even conflict with it. The run locks the tables it revoked on against
CREATE TRIGGER and looks again before their first use. Rights on a superuser's tables, which the run cannot take,
refuse it; and history rows written while others could write them are not adopted by the checksum backfill.
"""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest

from conftest import SPECIAL_PASSWORD, add_migration, ok, one_error_line
from test_planted_objects import low  # noqa: F401 (a fixture)


@pytest.fixture
def app(low):
    return low


def standing_grant_all(db, app: str) -> None:
    """A standing GRANT ALL to the app, a table recording who runs its trigger function, and yoyo_lock's
    relhastriggers left true by a foreign key the app (REFERENCES) made and dropped."""
    db.query(f"GRANT USAGE, CREATE ON SCHEMA public TO {app}; GRANT ALL ON ALL TABLES IN SCHEMA public TO {app}; "
             "CREATE TABLE public.ran (who text); GRANT INSERT ON public.ran TO PUBLIC; "
             "CREATE FUNCTION public.log_it() RETURNS trigger LANGUAGE plpgsql AS "
             "$$BEGIN INSERT INTO public.ran VALUES (current_user); RETURN NEW; END$$")
    evil = psycopg2.connect(dbname=db.name, user=app, host=db.server.host, port=db.server.port)
    evil.autocommit = True
    evil.cursor().execute("CREATE TABLE public.fk (l int REFERENCES public.yoyo_lock (locked)); DROP TABLE public.fk")
    evil.close()
    assert db.query("SELECT relhastriggers FROM pg_class WHERE oid = 'public.yoyo_lock'::regclass") == [(True,)]


TRIGGER = "CREATE TRIGGER z BEFORE INSERT OR DELETE ON public.yoyo_lock FOR EACH ROW EXECUTE FUNCTION public.log_it()"


def trigger_opener(cli, db, sql_dir, app):
    """A history with 0002_more pending, the app granted ALL on public's tables: the app's session, to open a
    CREATE TRIGGER on yoyo_lock in."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_more", "CREATE TABLE more_rows (id int);\n")
    standing_grant_all(db, app)
    return psycopg2.connect(dbname=db.name, user=app, host=db.server.host, port=db.server.port)


def committed_once_waited_on(db, evil, run):
    """run() while `evil`'s open transaction is committed the moment a session waits on it (any role sees that in
    pg_locks); run()'s result, `evil` closed."""
    pid = evil.get_backend_pid()

    def commit_once_waited_on():
        for _ in range(600):
            if db.query("SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (pid,))[0][0]:
                break
            time.sleep(0.05)
        evil.commit()

    committer = threading.Thread(target=commit_once_waited_on)
    committer.start()
    try:
        return run()
    finally:
        committer.join()
        evil.close()


def refused_with_trigger_open(cli, db, sql_dir, app, revoked_before: bool) -> None:
    """The app's CREATE TRIGGER on yoyo_lock, its transaction open, committed once the run is seen waiting on it: the
    run refuses it before yoyo_lock's first use, its code never run as the migration role, nothing applied."""
    evil = trigger_opener(cli, db, sql_dir, app)
    evil.cursor().execute(TRIGGER)  # (its transaction left open)
    if revoked_before:
        db.query(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {app}")  # (what doctor advises, done by a DBA)
    result = committed_once_waited_on(db, evil, lambda: cli("migrate", "--sql-dir", sql_dir, "--ddl-lock-timeout",
                                                            "30s", env=db.db_env()))
    line = one_error_line(result)
    assert result.exit_code == 2 and "yoyo_lock has trigger z" in line, result.output
    assert db.query("SELECT count(*) FROM public.ran") == [(0,)]  # its code never ran as the migration role
    assert "more_rows" not in db.tables()


def test_an_open_create_trigger_is_waited_out_after_the_revoke_and_refused(cli, db, sql_dir, app):
    """attack23p trig_toctou2: the trigger is open during the whole revoke this run makes."""
    refused_with_trigger_open(cli, db, sql_dir, app, revoked_before=False)


def test_an_open_create_trigger_outliving_an_earlier_revoke_is_refused_at_the_first_write(cli, db, sql_dir, app):
    """attack23q 1 (trig_toctou3): the rights were taken before this run (a DBA's REVOKE, or an earlier run that
    refused): the run has nothing to take, its catalog read cannot see the trigger; its first write waits the trigger
    out, looks again, and refuses before writing."""
    refused_with_trigger_open(cli, db, sql_dir, app, revoked_before=True)


def test_an_open_create_trigger_past_the_lock_timeout_is_one_line(cli, db, sql_dir, app):
    evil = trigger_opener(cli, db, sql_dir, app)
    try:
        evil.cursor().execute(TRIGGER)
        result = cli("migrate", "--sql-dir", sql_dir, "--ddl-lock-timeout", "1s", env=db.db_env())
        evil.commit()
    finally:
        evil.close()
    line = one_error_line(result)
    assert result.exit_code == 2 and "could not lock" in line and "yoyo_lock" in line, result.output
    assert db.query("SELECT count(*) FROM public.ran") == [(0,)]
    assert "more_rows" not in db.tables()


def test_an_open_create_trigger_outliving_an_earlier_revoke_past_the_lock_timeout_names_its_holder(cli, db, sql_dir,
                                                                                                     app):
    evil = trigger_opener(cli, db, sql_dir, app)
    try:
        evil.cursor().execute(TRIGGER)
        db.query(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {app}")
        result = cli("migrate", "--sql-dir", sql_dir, "--ddl-lock-timeout", "1s", env=db.db_env())
        evil.commit()
    finally:
        evil.close()
    line = one_error_line(result)
    assert result.exit_code == 4 and '"public"."yoyo_lock"' in line and app in line, result.output
    assert "nothing was run" in line and "is held" not in line
    assert db.query("SELECT count(*) FROM public.ran") == [(0,)]
    assert "more_rows" not in db.tables()


def test_a_trigger_committed_between_the_catalog_read_and_the_revoke_is_refused(cli, db, sql_dir, app, monkeypatch):
    """attack23p race_planted: the app commits its trigger just after the run's catalog read (pg_locks shows when);
    made deterministic by committing it as the REVOKE is built."""
    from migrator import trust

    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_more", "CREATE TABLE more_rows (id int);\n")
    standing_grant_all(db, app)
    revoke_sql = trust.revoke_sql

    def plant_then_revoke(schema, grants):
        evil = psycopg2.connect(dbname=db.name, user=app, host=db.server.host, port=db.server.port)
        with evil:
            evil.cursor().execute(TRIGGER)
        evil.close()
        return revoke_sql(schema, grants)

    monkeypatch.setattr(trust, "revoke_sql", plant_then_revoke)
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    line = one_error_line(result)
    assert result.exit_code == 2 and "yoyo_lock has trigger z" in line, result.output
    assert db.query("SELECT count(*) FROM public.ran") == [(0,)]
    assert "more_rows" not in db.tables()


def test_others_rights_on_a_superusers_bookkeeping_refuse_the_run(cli, make_db, password_role, sql_dir, app):
    """attack23p su_owned: the first migrate ran as a superuser; the user and the app then got GRANT ALL. The run
    cannot take the app's rights (the tables are not the user's): it refuses, naming them and the REVOKE."""
    db = make_db(owner=password_role)
    # (as the superuser: its tables; the database's owner, a login role, may CREATE in public: accepted)
    ok(cli("migrate", "--sql-dir", sql_dir, env={**db.db_env(), "SCHEMA_CREATORS_TRUSTED": password_role}))
    add_migration(sql_dir, "0002_more", "CREATE TABLE more_rows (id int);\n")
    db.query(f"GRANT USAGE ON SCHEMA public TO {app}; GRANT ALL ON ALL TABLES IN SCHEMA public TO {password_role}; "
             f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {app}")
    env = {**db.db_env(), "DB_USER": password_role, "DB_PASSWORD": SPECIAL_PASSWORD}
    try:
        result = cli("migrate", "--sql-dir", sql_dir, env=env)
    finally:  # (the app role is dropped after the test: nothing of it left in this database)
        db.query(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {app}; REVOKE USAGE ON SCHEMA public FROM {app}")
    line = one_error_line(result)
    assert result.exit_code == 2 and f"public.yoyo_lock to {app} (" in line and "TRIGGER" in line, result.output
    assert "REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER" in line and app in line.split("REVOKE")[1]
    assert "more_rows" not in db.tables()


def test_a_history_row_written_while_others_could_is_not_adopted_by_the_revoking_run(cli, db, sql_dir, app):
    """attack23p standing_forge: under the usual app grant, the app marks a pending migration applied; the run that
    takes the grant back refuses to backfill its checksum (it would launder the row), and so does every run until a
    person confirms the history (attack23q: the distrust outlives the run), which refuses the forged mark (attack23u 7)."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_more", "CREATE TABLE more_rows (id int);\n")
    db.query(f"GRANT USAGE ON SCHEMA public TO {app}; "
             f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {app}; SET ROLE {app}; "
             "INSERT INTO public._yoyo_migration VALUES (encode(sha256('0002_more'), 'hex'), '0002_more', now())")
    doctor = cli("doctor", "--sql-dir", sql_dir, env=db.db_env())
    (warn,) = [line for line in doctor.output.splitlines() if "may write the runner's bookkeeping" in line]
    assert warn.startswith("warn") and "add rows that skip a migration" in warn, doctor.output
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    line = one_error_line(result)
    assert result.exit_code == 2 and "may be forged" in line and "sql trust-history --yes" in line, result.output
    assert db.query("SELECT count(*) FROM public._hcm_migration_checksum WHERE migration_id = '0002_more'") == [(0,)]
    assert db.query(f"SELECT has_table_privilege('{app}', 'public._yoyo_migration', 'INSERT')") == [(False,)]
    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 2
    # attack23u 7: a mark with neither a log entry nor a checksum row is not confirmed (this test confirmed it
    # before); the fix the refusal names, then the migration runs.
    from test_history_distrust import refused_until_mark_deleted

    refused_until_mark_deleted(cli, db, sql_dir, "0002_more is marked applied", "0002_more", "more_rows")


@pytest.mark.parametrize("command", [["migrate"], ["sql", "break-lock"]])
def test_a_dead_runners_row_is_deleted_only_behind_the_first_write_guard(cli, db, sql_dir, app, command):
    """attack23r 1: a dead runner's lock row is deleted (migrate's clearing, `sql break-lock`) before the lock row's
    INSERT: that DELETE is the run's first write, and an open CREATE TRIGGER ... BEFORE DELETE committed while it
    waited ran as the migration role, then the run said it "would run". Failed before: exit 2 (migrate) or 0
    (break-lock) with public.ran holding the migration role. Now the DELETE carries the guard: refused, nothing ran."""
    evil = trigger_opener(cli, db, sql_dir, app)
    db.query("INSERT INTO public.yoyo_lock (locked, ctime, pid) VALUES (1, now() - interval '1 hour', 999999)")
    evil.cursor().execute(TRIGGER)  # (its transaction left open)
    db.query(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {app}")
    wait = ["--ddl-lock-timeout", "30s"] if command == ["migrate"] else []  # (break-lock's: the default)
    result = committed_once_waited_on(db, evil, lambda: cli(*command, "--sql-dir", sql_dir, *wait, env=db.db_env()))
    line = one_error_line(result)
    assert result.exit_code == 2 and "yoyo_lock has trigger z" in line, result.output
    assert db.query("SELECT count(*) FROM public.ran") == [(0,)]  # its code never ran as the migration role
    assert db.query("SELECT pid FROM public.yoyo_lock") == [(999999,)]  # the dead row kept: nothing was written
    assert "more_rows" not in db.tables()


def test_a_prepared_create_trigger_holding_the_first_write_is_named_with_its_table_and_way_out(cli, db, sql_dir, app):
    """attack23r 5: a CREATE TRIGGER on yoyo_lock PREPAREd while the app held TRIGGER (max_prepared_transactions is
    a DBA's choice) keeps its lock with no session: the guard's LOCK times out, and the line named the first table of
    its list (_hcm_migration_checksum) and "none holds it now" (failed before). Now: yoyo_lock, the prepared
    transaction and its ROLLBACK PREPARED; nothing ran."""
    if db.query("SELECT current_setting('max_prepared_transactions')::int")[0][0] == 0:
        pytest.skip("the server runs with max_prepared_transactions = 0")
    evil = trigger_opener(cli, db, sql_dir, app)
    with evil.cursor() as cursor:
        cursor.execute(TRIGGER)
        cursor.execute("PREPARE TRANSACTION 'app_trigger'")
    evil.close()
    try:
        db.query(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {app}")
        doctor = cli("doctor", "--no-dev-tools", "--sql-dir", sql_dir, env=db.db_env())  # (said "ready")
        result = cli("migrate", "--sql-dir", sql_dir, "--ddl-lock-timeout", "1s", env=db.db_env())
    finally:
        db.query("ROLLBACK PREPARED 'app_trigger'")
    [locked] = [line for line in doctor.stdout.splitlines() if "postgres bookkeeping locks" in line]
    assert locked.startswith("FAIL") and '"public"."yoyo_lock"' in locked and "app_trigger" in locked, doctor.stdout
    line = one_error_line(result)
    assert result.exit_code == 4 and '"public"."yoyo_lock"' in line, result.output
    assert "app_trigger" in line and "ROLLBACK PREPARED" in line and "none holds it now" not in line, line
    assert db.query("SELECT count(*) FROM public.ran") == [(0,)]
    assert "more_rows" not in db.tables()
