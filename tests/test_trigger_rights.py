"""Another role's TRIGGER right on a migrated schema's tables (issue 23, attack23s second report 3).

`GRANT ALL ON a TO app` (or the usual `ALTER DEFAULT PRIVILEGES ... GRANT ALL ON TABLES TO app`) carries TRIGGER: the
app's role may add a trigger at any moment, after the run's check too, and its function then runs as the migration
role when a later migration writes the table. A trigger already there was refused; the right itself was not. Now
writing commands refuse it (exit 2, the REVOKE to run) and doctor FAILs, unless SCHEMA_CREATORS_TRUSTED names the
role. REFERENCES is kept: a foreign key's actions run as the referencing table's owner (proved below).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from conftest import PROJECT_ROOT, add_migration, ok
from test_schema_creators import doctor_line, low, refusal  # noqa: F401 (low: a fixture)


def recorder(db, role: str) -> str:
    """As `role`: its own schema with a trigger function recording who runs it. Returns the function's name."""
    db.query(f"CREATE SCHEMA fn_{role} AUTHORIZATION {role}; SET ROLE {role}; "
             f"CREATE TABLE fn_{role}.hits (who text); GRANT INSERT ON fn_{role}.hits TO PUBLIC; "
             f"CREATE FUNCTION fn_{role}.t() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN INSERT INTO fn_{role}.hits "
             f"VALUES (current_user); IF TG_OP = 'DELETE' THEN RETURN OLD; END IF; RETURN NEW; END$$; RESET ROLE")
    return f"fn_{role}.t()"


def test_a_trigger_added_during_the_run_by_a_default_privileges_grantee_never_fires_as_the_migration_user(
        db, sql_dir, low):
    """The runner as a process; the default privilege gives low ALL (TRIGGER too) on the table 0002 makes; low adds
    its trigger as soon as the table is there, while 0003 is under way. Failed before: exit 0, low's function ran as
    the migration user on 0003's INSERT."""
    function = recorder(db, low)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_URL", "MONGO_", "PG"))},
           **db.db_env()}
    run = [sys.executable, str(PROJECT_ROOT / "runner.py"), "migrate", "--sql-dir", str(sql_dir)]
    subprocess.run(run, env=env, check=True, capture_output=True, timeout=120)
    db.query(f"GRANT USAGE ON SCHEMA public TO {low}; "
             f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO {low}")
    add_migration(sql_dir, "0002_b", "CREATE TABLE b (id int);\n")
    add_migration(sql_dir, "0003_fill", "SELECT pg_sleep(3);\nINSERT INTO b VALUES (1);\n")
    done = threading.Event()

    def plant() -> None:  # (low's session: the table appears once 0002 commits)
        while not done.wait(0.05):
            if db.poll("SELECT to_regclass('public.b') IS NOT NULL") == [(True,)]:
                db.query(f"SET ROLE {low}; CREATE TRIGGER audit BEFORE INSERT ON public.b FOR EACH ROW "
                         f"EXECUTE FUNCTION {function}; RESET ROLE")
                return

    planter = threading.Thread(target=plant)
    planter.start()
    try:
        result = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
    finally:
        done.set()
        planter.join()
    assert db.query(f"SELECT who FROM fn_{low}.hits") == [], result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert (f'ALTER DEFAULT PRIVILEGES FOR ROLE "{db.server.user}" IN SCHEMA "public" REVOKE TRIGGER ON TABLES '
            f'FROM "{low}"') in result.stderr, result.stderr
    assert "b" not in db.tables()


def test_a_trigger_right_on_a_migrated_table_is_refused_naming_the_revoke_and_doctor_fails(cli, db, sql_dir, low):
    """GRANT ALL on a tenant's table, no trigger yet. Failed before: doctor "ok", migrate exit 0."""
    db.query("CREATE SCHEMA pb")
    add_migration(sql_dir, "0002_a", "CREATE TABLE a (id int PRIMARY KEY, name varchar(20)); "
                                     "INSERT INTO a VALUES (1, 'y');\n")
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "pb", env=db.db_env()))
    db.query(f"GRANT USAGE ON SCHEMA pb TO {low}; GRANT ALL ON pb.a TO {low}; GRANT TRIGGER ON pb.a TO PUBLIC")
    add_migration(sql_dir, "0003_data", "DELETE FROM a;\n")
    line = doctor_line(cli, db, sql_dir, "--schema", "pb")
    assert line.startswith("FAIL") and f"roles PUBLIC, {low} may add triggers (a TRIGGER right) on table pb.a" in line
    error = refusal(cli, db, sql_dir, "--schema", "pb")
    assert f'run REVOKE TRIGGER ON ALL TABLES IN SCHEMA "pb" FROM PUBLIC, "{low}" CASCADE' in error, error
    assert f"SCHEMA_CREATORS_TRUSTED=PUBLIC,{low}" in error and "a trigger they add" in error
    assert db.query("SELECT count(*) FROM pb.a") == [(1,)]
    trusted = {**db.db_env(), "SCHEMA_CREATORS_TRUSTED": f"{low},PUBLIC"}
    assert doctor_line(cli, db, sql_dir, "--schema", "pb", env=trusted).startswith("warn")
    db.query(f'REVOKE TRIGGER ON ALL TABLES IN SCHEMA "pb" FROM "{low}", PUBLIC CASCADE')
    assert doctor_line(cli, db, sql_dir, "--schema", "pb").startswith("ok")
    # REFERENCES, kept: low's foreign key cascades, and low's own triggers on its table, run as low
    function = recorder(db, low)
    db.query(f"SET ROLE {low}; CREATE TABLE fn_{low}.child (a_id int REFERENCES pb.a ON DELETE CASCADE); "
             f"INSERT INTO fn_{low}.child VALUES (1); CREATE TRIGGER gone AFTER DELETE ON fn_{low}.child FOR EACH ROW "
             f"EXECUTE FUNCTION {function}; CREATE TRIGGER going BEFORE DELETE ON fn_{low}.child FOR EACH ROW "
             f"EXECUTE FUNCTION {function}; RESET ROLE")
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "pb", env=db.db_env()))
    assert db.query(f"SELECT who FROM fn_{low}.hits") == [(low,), (low,)]
    assert db.query("SELECT count(*) FROM pb.a") == [(0,)]


def test_a_trigger_right_a_superuser_granted_on_public_names_its_grantor(cli, db, sql_dir, low):
    """The REVOKE takes only its runner's grants: a right another role granted is named with that role."""
    db.query(f"CREATE TABLE public.t (id int); GRANT SELECT ON public.t TO {low} WITH GRANT OPTION; "
             f"GRANT TRIGGER ON public.t TO {low} WITH GRANT OPTION; SET ROLE {low}; "
             f"GRANT TRIGGER ON public.t TO PUBLIC; RESET ROLE")
    error = refusal(cli, db, sql_dir)
    assert f'as role {low}, which granted it, run REVOKE TRIGGER ON ALL TABLES IN SCHEMA "public" FROM PUBLIC CASCADE' in error
    assert f'run REVOKE TRIGGER ON ALL TABLES IN SCHEMA "public" FROM "{low}" CASCADE' in error, error
