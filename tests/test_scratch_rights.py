"""A pull request's pending file run on a scratch database (plan --impact, sql verify, sql adopt) never runs with a
superuser's or a server-wide right (attack23v 7, HIGH): on the local development server the runner is the superuser,
so `COPY ... TO PROGRAM` ran a shell command on the reviewer's machine; with the live server as scratch, a file's
DROP DATABASE dropped another database during review."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import psycopg2
import pytest

from conftest import add_migration, ok, one_error_line
from test_schema_proof import scratch_databases

COMMANDS = (["plan", "--impact"], ["sql", "verify"], ["sql", "adopt"])


@pytest.fixture
def mark_dir():
    """A folder any OS user may write to (the local server runs as its own system user under root)."""
    folder = Path(tempfile.mkdtemp(prefix="fix23al-mark-"))
    folder.chmod(0o1777)
    yield folder
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()


def shell_file(sql_dir: Path, mark: Path) -> None:
    add_migration(sql_dir, "0002_note", "ALTER TABLE hcm_report_metadata ADD COLUMN note text;\n"
                  f"COPY (SELECT 1) TO PROGRAM 'touch {mark}';\n", "ALTER TABLE hcm_report_metadata DROP COLUMN note;\n")


def test_the_local_servers_scratch_runs_are_no_superusers(cli, db, sql_dir, mark_dir):
    """No --scratch-url: the local development server, where the runner is the superuser; the files run there as a
    role without rights, whose attributes a file cannot keep (ALTER ROLE CURRENT_USER SET ...)."""
    ok(cli("migrate", "--sql-dir", sql_dir, "--quiet", env=db.db_env()))
    for command in COMMANDS:
        mark = mark_dir / command[-1]
        shell_file(sql_dir, mark)
        result = cli(*command, "--sql-dir", sql_dir, env=db.db_env())
        assert result.exit_code != 0, (command, result.output)
        assert "permission denied to COPY to or from an external program" in result.output, (command, result.output)
        assert not mark.exists(), f"{command}: the file ran a shell command on the reviewer's machine"
    add_migration(sql_dir, "0002_note", "ALTER ROLE CURRENT_USER SET work_mem = '64kB';\n"
                  "ALTER ROLE CURRENT_USER PASSWORD 'taken';\n", "SELECT 1;\n")
    ok(cli("sql", "verify", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_note", "SELECT 1;\n", "SELECT 1;\n")
    ok(cli("sql", "verify", "--sql-dir", sql_dir, env=db.db_env()))  # (the next use puts the role back)
    from migrator import devdb
    from migrator.env import Env

    local = devdb.ensure_running(Env({"HCM_DEVDB_DIR": os.environ["HCM_DEVDB_DIR"]}))
    with psycopg2.connect(local.url) as conn, conn.cursor() as cur:
        cur.execute("SELECT r.rolsuper, r.rolcreatedb, r.rolconfig, a.rolpassword IS NULL FROM pg_roles r "
                    "JOIN pg_authid a USING (oid) WHERE r.rolname = %s", (devdb.SCRATCH_ROLE,))
        assert cur.fetchone() == (False, False, None, True)
        # a right granted to it by hand: refused in one line, nothing runs
        cur.execute(f"GRANT pg_execute_server_program TO {devdb.SCRATCH_ROLE}")
    conn.close()
    shell_file(sql_dir, mark_dir / "granted")
    line = one_error_line(cli("sql", "verify", "--sql-dir", sql_dir, env=db.db_env()))
    assert f"refusing scratch role {devdb.SCRATCH_ROLE} on the local development server" in line, line
    assert "is a member of pg_execute_server_program" in line and "revoke" in line, line
    assert not (mark_dir / "granted").exists()


def test_a_superuser_scratch_url_is_refused(cli, db, pg, sql_dir, mark_dir):
    ok(cli("migrate", "--sql-dir", sql_dir, "--quiet", env=db.db_env()))
    shell_file(sql_dir, mark_dir / "url")
    for command in COMMANDS:
        line = one_error_line(cli(*command, "--sql-dir", sql_dir, "--scratch-url", pg.url("postgres"),
                                  env=db.db_env()))
        assert f"refusing scratch server {pg.host}" in line or "refusing scratch server" in line, line
        assert f"as user {pg.user}: it is a superuser;" in line, line
        assert "--scratch-url (or SCRATCH_DATABASE_URL)" in line and "CREATEDB" in line, line
        assert not (mark_dir / "url").exists(), command
    assert scratch_databases(pg) == []


@pytest.fixture
def owner(pg):
    """A migration role with CREATEDB (as a scratch server needs) owning the live database and another one."""
    name = "mig_" + uuid.uuid4().hex[:8]
    with pg.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE ROLE {name} LOGIN CREATEDB")
        cur.execute(f"CREATE DATABASE {name}_live OWNER {name}")
        cur.execute(f"CREATE DATABASE {name}_victim OWNER {name}")
    yield name
    with pg.connect() as conn, conn.cursor() as cur:
        for db in ("live", "victim"):
            cur.execute(f"DROP DATABASE IF EXISTS {name}_{db} WITH (FORCE)")
        cur.execute(f"DROP ROLE {name}")


def test_the_live_server_as_scratch_cannot_drop_its_databases(cli, pg, sql_dir, owner):
    """attack23v 37: SCRATCH_DATABASE_URL names the live server as the migration role; a non-transactional pending
    file's DROP DATABASE ran in autocommit there during review."""
    live = {"DATABASE_URL": pg.url(f"{owner}_live", user=owner)}
    ok(cli("migrate", "--sql-dir", sql_dir, "--quiet", env=live))
    add_migration(sql_dir, "0002_x", f"-- transactional: false\nDROP DATABASE {owner}_victim;\n")
    for command in COMMANDS:
        line = one_error_line(cli(*command, "--sql-dir", sql_dir, "--scratch-url", pg.url("postgres", user=owner),
                                  env=live))
        assert f"as user {owner}: it owns database(s) {owner}_live, {owner}_victim;" in line, line
        with pg.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (f"{owner}_victim",))
            assert cur.fetchone(), f"{command}: the file dropped a database during review"


@pytest.fixture
def mig_role(pg):
    """A migration role with CREATEDB owning no database (as on RDS, where the master user owns it), and a role
    that is a member of it."""
    name = "mig_" + uuid.uuid4().hex[:8]
    with pg.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE ROLE {name} LOGIN CREATEDB PASSWORD 'live'")
        cur.execute(f"CREATE ROLE {name}_m LOGIN CREATEDB PASSWORD 'm' IN ROLE {name}")
        cur.execute(f"CREATE DATABASE {name}_live")
        cur.execute(f"GRANT ALL ON DATABASE {name}_live TO {name}")
    yield name
    with pg.connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}_live WITH (FORCE)")
        cur.execute(f"DROP ROLE {name}_m")
        cur.execute(f"DROP ROLE {name}")


@pytest.mark.parametrize("scratch_user", ["live", "member"])
def test_the_live_targets_user_or_its_member_as_scratch_user_is_refused(cli, pg, sql_dir, mig_role, scratch_user):
    """attack23w 1: --scratch-url named the live server as the migration role (owning no database): a pending file
    under review changed that role server-wide (ALTER ROLE CURRENT_USER PASSWORD / SET ...), exit 0. Now refused in
    one line before anything runs. Failed before: exit 0, the role's defaults changed on the live server."""
    live = {"DATABASE_URL": pg.url(f"{mig_role}_live", user=mig_role, password="live")}
    user = mig_role if scratch_user == "live" else f"{mig_role}_m"
    scratch_url = pg.url("postgres", user=user, password="live" if scratch_user == "live" else "m")
    add_migration(sql_dir, "0002_x", "-- transactional: false\nALTER ROLE CURRENT_USER SET work_mem = '64kB';\n")
    for command in [*COMMANDS, ["sql", "adopt", "--schema", "public"], ["plan", "--impact", "--schema", "public"]]:
        result = cli(*command, "--sql-dir", sql_dir, "--scratch-url", scratch_url, env=live)
        line = one_error_line(result)
        if "--schema" in command and command[1] == "adopt":  # (a tenants' run: the schema's line, then the summary)
            [line] = [said for said in result.output.splitlines() if "refusing scratch server" in said]
        assert "refusing scratch server" in line and f"as user {user}: it " in line, line
        assert f"the live target's user {mig_role}" in line and "CREATE ROLE hcm_scratch" in line, line
        with pg.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT rolconfig FROM pg_roles WHERE rolname IN (%s, %s)", (mig_role, f"{mig_role}_m"))
            assert cur.fetchall() == [(None,), (None,)], f"{command}: the review changed a live role"
