"""Which history a run takes, whatever happened to the tenant mark (attack16b 1, 8; attack16a 12).

A tenant's history was told from the plain run's only by a COMMENT on its yoyo_lock: pg_restore
--no-comments, a DBA documenting the table or a history made before the mark existed removed it, and a
plain run then took the tenant's history. A plain run now takes a history only in public or its current
schema; a role with DML grants only cannot write the mark and must not fail for it; SCHEMA_NAME=public is
the plain run in every respect (history, lock, schema description).
"""

from __future__ import annotations

import json
import subprocess

import pytest

import test_doctor
from conftest import _bin, add_migration, applied, one_error_line
from test_doctor import as_role
from test_tenants import history, relations

role = test_doctor.role  # the fixture: plain login roles, dropped after the test

SEED = "0001_create_hcm_report_metadata"
MARK = "hcm-db-migrations: the history of a tenant schema (runs with --schema / SCHEMA_NAME)"


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def public_history(db) -> list[str]:
    """The plain run's history in public ([] while there is none)."""
    if db.query("SELECT to_regclass('public._yoyo_migration')") == [(None,)]:
        return []
    return history(db, "public")


def mark_of(db, schema: str) -> str | None:
    return db.query(f"SELECT obj_description('{schema}.yoyo_lock'::regclass, 'pg_class')")[0][0]


def restored_without_comments(db, make_db):
    """The database as `pg_dump -Fc | pg_restore --no-comments` leaves it (a copy to staging, an upgrade)."""
    copy = make_db()
    dump = subprocess.run([_bin("pg_dump"), "-Fc", "-d", db.url], capture_output=True, check=True).stdout
    subprocess.run([_bin("pg_restore"), "--no-comments", "--no-owner", "-d", copy.url], input=dump,
                   capture_output=True, check=True)
    return copy


# --- b1: a tenant's history never becomes the plain run's ------------------------------------------


def test_a_tenant_restored_without_comments_is_refused_by_a_plain_run_not_taken(cli, db, make_db, sql_dir):
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "f", "--create-schemas", env=db.db_env()))
    assert mark_of(db, "f") == MARK
    copy = restored_without_comments(db, make_db)
    assert mark_of(copy, "f") is None, "pg_restore --no-comments drops the mark"
    add_migration(sql_dir, "0002_t4", "CREATE TABLE t4 (id int);\n")
    for command in ("migrate", "status", "plan"):
        result = cli(command, "--sql-dir", sql_dir, env=copy.db_env())
        line = one_error_line(result)
        assert result.exit_code == 2, result.output
        assert "no migration history in schema public on " in line and "but schema f holds one" in line, line
        assert "run with --schema f" in line and "set search_path to f" in line and copy.name in line, line
    public = cli("migrate", "--sql-dir", sql_dir, env={**copy.db_env(), "SCHEMA_NAME": "public"})
    assert public.exit_code == 2 and "[public] FAILED: no migration history in schema public" in public.stderr
    doctor = cli("doctor", "--no-dev-tools", "--sql-dir", sql_dir, env=copy.db_env())
    [failed] = [line for line in doctor.stdout.splitlines() if line.startswith("FAIL")]
    assert doctor.exit_code == 1 and failed.startswith("FAIL  postgres history") and "-> if it is a tenant's, run " \
        "with --schema f (SCHEMA_NAME=f); else set search_path to f" in failed, doctor.stdout
    assert public_history(copy) == [] and "t4" not in relations(copy, "public") | relations(copy, "f")
    assert history(copy, "f") == [SEED], "the tenant's history is untouched"
    # the tenant's own run applies it there, and marks the history again
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "f", env=copy.db_env()))
    assert history(copy, "f") == [SEED, "0002_t4"] and "t4" in relations(copy, "f")
    assert mark_of(copy, "f") == MARK
    # ... after which a plain run is the plain history of a central instance: its own, in public
    ok(cli("migrate", "--sql-dir", sql_dir, env=copy.db_env()))
    assert applied(copy) == [SEED, "0002_t4"] and history(copy, "f") == [SEED, "0002_t4"]


@pytest.mark.parametrize("comment", ["NULL", "'audit: owned by the platform team'"])
def test_a_lost_mark_with_the_plain_history_in_public_leaves_the_tenant_alone(cli, db, sql_dir, comment):
    """The plain history exists: it is taken, the tenant's is not, and the tenant is not the plain run's drift."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "f", "--create-schemas", env=db.db_env()))
    db.query(f"COMMENT ON TABLE f.yoyo_lock IS {comment}")  # a DBA documenting the table
    add_migration(sql_dir, "0002_t4", "CREATE TABLE t4 (id int);\n")
    ok(cli("migrate", "--strict", "--sql-dir", sql_dir, env=db.db_env()))
    assert applied(db) == [SEED, "0002_t4"] and "t4" in relations(db, "public")
    assert history(db, "f") == [SEED] and "t4" not in relations(db, "f")
    status = cli("status", "--exit-code", "--sql-dir", sql_dir, env=db.db_env())
    assert status.exit_code == 0 and "schema: as recorded" in status.stdout, status.output


@pytest.fixture
def home_path(db):
    """Set the role's search_path in this database (as ALTER ROLE ... IN DATABASE does), reset after the test."""
    def home(path: str) -> None:
        db.query(f"ALTER ROLE {db.server.user} IN DATABASE {db.name} SET search_path = {path}")
    yield home
    db.query(f"ALTER ROLE {db.server.user} IN DATABASE {db.name} RESET search_path")


def test_an_unmarked_tenant_history_in_the_home_schema_beside_public_is_refused_not_switched_to(
        cli, db, sql_dir, tmp_path, home_path):
    """attack23l home_switch: the plain history in public, a tenant's in app whose mark a restore without comments
    lost, then the role's search_path made app first: the plain run switched to app's history, re-applied the plain
    folder there and exited 0; doctor said "ready". Both are complete histories: refused, naming both and the way."""
    tenant = tmp_path / "tenant"
    tenant.mkdir()
    add_migration(tenant, "0001_t", "CREATE TABLE t (id int);\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    ok(cli("migrate", "--sql-dir", tenant, "--schema", "app", "--create-schemas", env=db.db_env()))
    db.query("COMMENT ON TABLE app.yoyo_lock IS NULL")
    home_path("app, public")
    for command in ("migrate", "status", "plan"):
        result = cli(command, "--sql-dir", sql_dir, env=db.db_env())
        line = one_error_line(result)
        assert result.exit_code == 2, (command, result.output)
        assert "schemas app and public both hold a migration history without the tenant mark" in line, line
        assert db.name in line and "run with --schema app" in line and f"COMMENT ON TABLE app.yoyo_lock IS '{MARK}'" \
            in line and "set search_path without app first" in line, line
    assert history(db, "app") == ["0001_t"] and applied(db) == [SEED], "nothing applied twice"
    assert "hcm_report_metadata" not in relations(db, "app")
    doctor = cli("doctor", "--no-dev-tools", "--sql-dir", sql_dir, env=db.db_env())
    [failed] = [line for line in doctor.stdout.splitlines() if line.startswith("FAIL")]
    assert doctor.exit_code == 1 and failed.startswith("FAIL  postgres history") and "run with --schema app" in failed
    assert "ready" not in doctor.stdout.splitlines()[-1], doctor.stdout
    # the tenant's own run writes its mark back; the plain run then keeps to public's history
    ok(cli("migrate", "--sql-dir", tenant, "--schema", "app", env=db.db_env()))
    assert mark_of(db, "app") == MARK
    add_migration(sql_dir, "0002_t4", "CREATE TABLE public.t4 (id int);\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert applied(db) == [SEED, "0002_t4"] and history(db, "app") == ["0001_t"]


def test_doctor_over_a_tenant_then_public_checks_publics_own_history(cli, db, sql_dir):
    """doctor pins each schema in turn on one connection: public's check, after a tenant's whose mark was lost, took
    that tenant's schema for the plain run's home (its last pin) instead of public, as SCHEMA_NAME=public's run does."""
    listed = {**db.db_env(), "SCHEMA_NAME": "pb,public"}
    ok(cli("migrate", "--sql-dir", sql_dir, "--create-schemas", env=listed))
    db.query("COMMENT ON TABLE pb.yoyo_lock IS NULL")
    ok(cli("migrate", "--sql-dir", sql_dir, env={**db.db_env(), "SCHEMA_NAME": "public"}))
    report = json.loads(cli("doctor", "--json", "--no-dev-tools", "--sql-dir", sql_dir, env=listed).stdout)
    assert report["ok"] is True, [c for c in report["checks"] if c["status"] != "ok"]
    [public] = [c for c in report["checks"] if c["name"] == "postgres schema" and c.get("schema") == "public"]
    assert "schema public" in public["detail"], public


def test_the_plain_history_in_another_schema_is_named_not_silently_replaced(cli, db, sql_dir):
    """A plain history made under another search_path (`app`): a run under the default one says where it is."""
    db.query(f"CREATE SCHEMA app; ALTER DATABASE {db.name} SET search_path = app")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert history(db, "app") == [SEED]
    db.query(f"ALTER DATABASE {db.name} RESET search_path")
    line = one_error_line(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert "but schema app holds one" in line and "set search_path to app" in line, line
    assert public_history(db) == [], "no second history started in public"


def test_a_stray_yoyo_table_elsewhere_is_not_a_history(cli, db, sql_dir):
    """Another tool's `_yoyo_migration` (no lock, no checksums) neither takes over nor refuses a first run."""
    db.query("CREATE SCHEMA other; CREATE TABLE other._yoyo_migration (x int)")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert applied(db) == [SEED]


# --- b8: the mark is never worth a failed run ----------------------------------------------------------


def test_a_role_with_dml_grants_only_migrates_a_tenant_whose_mark_is_lost(cli, db, role, sql_dir):
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "f", "--create-schemas", env=db.db_env()))
    db.query("COMMENT ON TABLE f.yoyo_lock IS NULL")
    app = role()
    db.query(f"GRANT USAGE, CREATE ON SCHEMA f TO {app}; "
             f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA f TO {app}")
    env = {**as_role(db, app), "SCHEMA_NAME": "f"}
    noop = cli("migrate", "--sql-dir", sql_dir, env=env)
    assert noop.exit_code == 0, noop.output
    assert "must be owner" not in noop.output
    statement = f"COMMENT ON TABLE f.yoyo_lock IS '{MARK}'"
    assert statement in noop.stderr and "as its owner (postgres)" in noop.stderr, noop.stderr
    add_migration(sql_dir, "0002_t4", "CREATE TABLE t4 (id int);\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=env))
    assert history(db, "f") == [SEED, "0002_t4"] and mark_of(db, "f") is None
    # doctor tells the truth: a warning with the owner's statement, not "ready" in silence, not a FAIL
    report = json.loads(cli("doctor", "--json", "--no-dev-tools", "--sql-dir", sql_dir, env=env).stdout)
    [mark] = [c for c in report["checks"] if c["name"] == "tenant mark"]
    assert mark["status"] == "warn" and statement in mark["remedy"] and "postgres" in mark["remedy"], mark
    assert report["ok"] is True
    # the owner's run writes it, and doctor is quiet about it again (once the owner confirmed the history the app
    # could write: the run that takes the app's rights refuses until then)
    owner = {**db.db_env(), "SCHEMA_NAME": "f", "SCHEMA_CREATORS_TRUSTED": app}  # (app may CREATE in f: accepted)
    refused = cli("migrate", "--sql-dir", sql_dir, env=owner)
    assert refused.exit_code == 2 and "sql trust-history --yes --schema f" in refused.output, refused.output
    ok(cli("sql", "trust-history", "--yes", "--sql-dir", sql_dir, env=owner))
    ok(cli("migrate", "--sql-dir", sql_dir, env=owner))
    assert mark_of(db, "f") == MARK
    report = json.loads(cli("doctor", "--json", "--no-dev-tools", "--sql-dir", sql_dir, env=env).stdout)
    assert [c["status"] for c in report["checks"] if c["name"] == "tenant mark"] in ([], ["ok"])


def test_doctor_says_the_owners_next_migrate_writes_a_missing_mark(cli, db, sql_dir):
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "f", "--create-schemas", env=db.db_env()))
    db.query("COMMENT ON TABLE f.yoyo_lock IS NULL")
    report = json.loads(cli("doctor", "--json", "--no-dev-tools", "--sql-dir", sql_dir,
                            env={**db.db_env(), "SCHEMA_NAME": "f"}).stdout)
    [mark] = [c for c in report["checks"] if c["name"] == "tenant mark"]
    assert mark["status"] == "ok" and "the next migrate writes it" in mark["detail"], mark
    assert mark_of(db, "f") is None, "doctor writes nothing"


# --- a12: SCHEMA_NAME=public is the plain run -------------------------------------------------------------

SHARED = ("CREATE SCHEMA IF NOT EXISTS shared;\nCREATE TABLE IF NOT EXISTS shared.lookup (id int);\n"
          "CREATE TABLE IF NOT EXISTS t1 (id int);\n")


@pytest.mark.parametrize("names", ["public", "public,pb,mz"])
def test_schema_name_public_describes_what_the_plain_run_describes(cli, db, sql_dir, names):
    add_migration(sql_dir, "0002_shared", SHARED)
    plain = db.db_env()
    listed = {**plain, "SCHEMA_NAME": names}
    ok(cli("migrate", "--sql-dir", sql_dir, env=plain))
    ok(cli("migrate", "--sql-dir", sql_dir, "--create-schemas", env=listed))
    report = json.loads(cli("status", "--json", "--sql-dir", sql_dir, env=listed).stdout)
    assert report["schemas"]["public"]["schema"]["drifted"] is False, report["schemas"]["public"]
    ok(cli("migrate", "--strict", "--sql-dir", sql_dir, env=listed))
    ok(cli("status", "--exit-code", "--sql-dir", sql_dir, env=plain))
    # the other way round: what SCHEMA_NAME=public records, the plain run reads as its own
    add_migration(sql_dir, "0003_more", "CREATE TABLE IF NOT EXISTS shared.more (id int);\n")
    ok(cli("migrate", "--strict", "--sql-dir", sql_dir, env=listed))
    ok(cli("status", "--exit-code", "--sql-dir", sql_dir, env=plain))
    ok(cli("migrate", "--strict", "--sql-dir", sql_dir, env=plain))
    assert applied(db) == [SEED, "0002_shared", "0003_more"]
    # a hand change in the shared schema is drift for both views of the one history
    db.query("CREATE TABLE shared.by_hand (id int)")
    for env in (plain, listed):
        result = cli("migrate", "--strict", "--sql-dir", sql_dir, env=env)
        assert result.exit_code == 5 and "table shared.by_hand added" in result.output, result.output
    doctor = json.loads(cli("doctor", "--json", "--no-dev-tools", "--sql-dir", sql_dir, env=listed).stdout)
    [drift] = [c for c in doctor["checks"] if c["name"] == "schema drift" and c.get("schema", "public") == "public"]
    assert drift["status"] == "warn" and drift["detail"] == ("2 changes: column shared.by_hand.id added; "
                                                 "table shared.by_hand added"), drift


def test_schema_name_public_runs_what_a_plain_run_runs_and_lists_what_it_lists(cli, db, sql_dir):
    """A pg_dump baseline sets search_path (set_config(... '', false)): a plain run takes it, so SCHEMA_NAME=public
    (the plain history) does too; and its status lists every non-tenant schema's INVALID index, as a plain one."""
    add_migration(sql_dir, "0002_dumped", "SELECT pg_catalog.set_config('search_path', '', false);\n"
                  "CREATE SCHEMA reporting;\nCREATE TABLE reporting.runs (id int);\nCREATE TABLE public.dumped (id int);\n")
    public = {**db.db_env(), "SCHEMA_NAME": "public"}
    result = cli("migrate", "--sql-dir", sql_dir, env=public)
    assert result.exit_code == 0, result.output
    assert "dumped" in relations(db, "public") and "runs" in relations(db, "reporting")
    db.query("INSERT INTO reporting.runs VALUES (1), (1)")
    with pytest.raises(Exception):  # a failed CREATE INDEX CONCURRENTLY leaves an INVALID index behind
        with db.server.connect(db.name) as conn:
            conn.autocommit = True
            conn.cursor().execute("CREATE UNIQUE INDEX CONCURRENTLY runs_once ON reporting.runs (id)")
    plain = json.loads(cli("status", "--sql-dir", sql_dir, "--json", env=db.db_env()).stdout)
    as_public = json.loads(cli("status", "--sql-dir", sql_dir, "--json", env=public).stdout)["schemas"]["public"]
    assert plain["invalid_indexes"] == as_public["invalid_indexes"] == ["reporting.runs_once"]


def test_a_plain_run_on_a_central_instance_says_which_tenants_it_leaves(cli, db, sql_dir):
    """The Job without SCHEMA_NAME (egov-config's key missing) must not look like it migrated the tenants."""
    assert cli("migrate", "--sql-dir", sql_dir, "--create-schemas", env={**db.db_env(), "SCHEMA_NAME": "pb,mz"}).exit_code == 0
    plain = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    assert plain.exit_code == 0, plain.output
    note = [line for line in plain.stderr.splitlines() if "hold their own histories" in line]
    assert len(note) == 1 and "mz, pb" in note[0] and "public's history only" in note[0], plain.stderr
    alone = cli("migrate", "--sql-dir", sql_dir, env={**db.db_env(), "SCHEMA_NAME": "pb"})
    assert "hold their own histories" not in alone.stderr


def test_schema_name_public_lands_migrations_where_a_plain_run_does(cli, db, sql_dir):
    """attack16c 7: with the user's own "$user" schema present, a plain run's migrations land there (psql's
    search_path); SCHEMA_NAME=public shares that history, so its migrations must land there too."""
    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 0
    db.query(f'CREATE SCHEMA "{db.server.user}"')  # "$user" now resolves: the plain run's current schema
    add_migration(sql_dir, "0002_t2", "CREATE TABLE t2 (id int);\n")
    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 0
    add_migration(sql_dir, "0003_x", "ALTER TABLE t2 ADD COLUMN x int;\n")
    result = cli("migrate", "--sql-dir", sql_dir, env={**db.db_env(), "SCHEMA_NAME": "public"})
    assert result.exit_code == 0, result.output
    assert db.query("SELECT table_schema FROM information_schema.columns WHERE table_name = 't2' AND column_name = 'x'") \
        == [(db.server.user,)]
    assert history(db, "public")[-1] == "0003_x"
