"""The local development database: used only when nothing is configured, started once, left running."""

import json
import os
import subprocess
import sys

import pytest

from conftest import add_migration, fresh_clone, ok, one_error_line
from migrator import devdb, ferretdb
from migrator.env import Env


@pytest.fixture
def local_db(tmp_path):
    env = Env({"HCM_DEVDB_DIR": str(tmp_path / "devdb")})
    yield env
    devdb.stop(env)


def test_nothing_configured_uses_the_local_database_and_says_so(cli, local_db, tmp_path):
    result = cli("migrate")
    assert result.exit_code == 0, result.output
    assert "no database configured: using the local development database at postgresql://postgres@" in result.stderr
    assert f"host={tmp_path / 'devdb'}" in result.stderr
    assert "applied 0001_create_hcm_report_metadata" in result.stdout

    # Left running: the next command finds it, with the migration applied.
    pid = (tmp_path / "devdb" / "postmaster.pid").read_text().split()[0]
    status = cli("status")
    assert "1 applied, 0 pending" in status.stdout
    assert (tmp_path / "devdb" / "postmaster.pid").read_text().split()[0] == pid

    stopped = cli("devdb", "stop")
    assert "stopped the local development database" in stopped.stdout
    assert not (tmp_path / "devdb" / "postmaster.pid").exists()
    assert "is not running" in cli("devdb", "stop").stdout
    # Data survives a stop.
    assert "1 applied, 0 pending" in cli("status").stdout


def test_any_setting_keeps_the_local_database_off(cli, db, tmp_path):
    result = cli("status", env=db.db_env())
    assert "no database configured" not in result.output
    assert not (tmp_path / "devdb").exists()


# The README's first command on a fresh clone (make migrate, make status, make db-stop with nothing configured):
# test_first_run.py's fresh clone asserts it, one clone and one install for both.


# --- the local Mongo: FerretDB on the local PostgreSQL ------------------------------------------------

needs_ferretdb = pytest.mark.skipif(not (ferretdb.built() or ferretdb.go()), reason="needs Go (FerretDB)")


@needs_ferretdb
def test_a_newcomer_writes_dry_runs_and_applies_a_patch_with_nothing_configured(cli, local_db, tmp_path):
    folder = tmp_path / "mongo"
    folder.mkdir()
    created = cli("mongo", "new", "mark_reviewed", "--mongo-dir", folder)
    assert created.exit_code == 0 and "0001_mark_reviewed.py" in created.stdout
    (folder / "0001_mark_reviewed.py").write_text(
        "def run(db, dry_run):\n"
        "    n = db.reports.count_documents({})\n"
        "    if dry_run:\n        return f'would add 1 to {n}'\n"
        "    db.reports.insert_one({'reviewed': True})\n    return 'added 1'\n")
    dry = cli("mongo", "apply", "--mongo-dir", folder)
    assert dry.exit_code == 0, dry.output
    assert "no MongoDB configured: using the local development Mongo (FerretDB) at mongodb://127.0.0.1:" in dry.stderr
    assert "dry run 0001_mark_reviewed" in dry.stdout and "would add 1 to 0" in dry.stdout
    run = cli("mongo", "apply", "--run", "--mongo-dir", folder)
    assert run.exit_code == 0 and "applied 0001_mark_reviewed" in run.stdout, run.output
    pid, port = map(int, (devdb.mongo_dir(local_db) / "ferretdb.pid").read_text().split())
    # FerretDB's own record of its telemetry decision, in its state folder under the dev folder: off
    assert json.loads((devdb.mongo_dir(local_db) / "state.json").read_text())["telemetry"] is False
    import pymongo

    with pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/") as client:  # the data is in the local PostgreSQL
        assert client[devdb.MONGO_DATABASE].reports.count_documents({"reviewed": True}) == 1
        assert client[devdb.MONGO_DATABASE].applied_patches.count_documents({"status": "applied"}) == 1
    started = cli("devdb", "start")
    assert started.stdout.splitlines() == [started.stdout.splitlines()[0], f"mongodb://127.0.0.1:{port}/unifieddevdb"]
    assert started.stdout.startswith("postgresql://postgres@")
    stopped = cli("devdb", "stop")
    assert "(PostgreSQL and FerretDB)" in stopped.stdout and not ferretdb.alive(pid)
    again = cli("mongo", "status", "--mongo-dir", folder)  # started again, the data kept
    assert again.exit_code == 0 and "applied 1x" in again.stdout, again.output


def test_without_go_the_message_says_how_to_get_a_local_mongo(cli, local_db, tmp_path, monkeypatch):
    monkeypatch.setattr(ferretdb, "built", lambda: None)
    monkeypatch.setattr(ferretdb, "go", lambda: None)
    folder = tmp_path / "mongo"
    folder.mkdir()
    result = cli("mongo", "status", "--mongo-dir", folder)
    line = one_error_line(result)
    assert result.exit_code == 2 and "MongoDB is not configured" in line
    assert "install Go" in line and "docker run -d -p 27017:27017 mongo:7" in line and "MONGO_URL=" in line
    started = cli("devdb", "start")
    assert started.exit_code == 0 and "MongoDB: none (Go not found" in started.stdout


@needs_ferretdb
def test_a_stale_ferretdb_pid_file_is_not_trusted_or_killed(cli, local_db, ferret, tmp_path):
    """The pid file names an unrelated process (its pid reused) and a port where another FerretDB answers."""
    devdb.ensure_running(local_db)  # PostgreSQL first: its folder must be empty for initdb
    folder = devdb.mongo_dir(local_db)
    folder.mkdir(parents=True, exist_ok=True)
    (tmp_path / "mongo").mkdir()
    unrelated = subprocess.Popen(["sleep", "120"])
    try:
        (folder / "ferretdb.pid").write_text(f"{unrelated.pid}\n{ferret.port}\n")
        status = cli("mongo", "status", "--mongo-dir", tmp_path / "mongo")
        assert status.exit_code == 0, status.output
        assert f"127.0.0.1:{ferret.port}/" not in status.stderr  # not someone else's server: its own, started
        pid = int((folder / "ferretdb.pid").read_text().split()[0])
        assert pid != unrelated.pid and ferretdb.alive(pid)
        devdb.stop_mongo(local_db)
        (folder / "ferretdb.pid").write_text(f"{unrelated.pid}\n{ferret.port}\n")
        assert "FerretDB" not in cli("devdb", "stop").stdout
        assert unrelated.poll() is None  # still running: not ours to kill
    finally:
        unrelated.kill()
        unrelated.wait()


@needs_ferretdb
def test_commands_at_once_start_one_local_ferretdb(local_db, tmp_path):
    from conftest import PROJECT_ROOT

    devdb.ensure_running(local_db)
    (tmp_path / "mongo").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONGO", "DB_", "DATABASE_URL", "PG"))}
    env["HCM_DEVDB_DIR"] = local_db.value("HCM_DEVDB_DIR")
    procs = [subprocess.Popen([sys.executable, str(PROJECT_ROOT / "runner.py"), "mongo", "status", "--mongo-dir",
                               str(tmp_path / "mongo")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    state_dir = f"--state-dir={devdb.mongo_dir(local_db)}"
    servers = [pid for pid in os.listdir("/proc") if pid.isdigit() and ferretdb.alive(int(pid))
               and state_dir in _cmdline(pid)]
    assert len(servers) == 1, servers
    assert len({err.splitlines()[0] for _, err in results}) == 1  # all four name the same server


def _cmdline(pid: str) -> list[str]:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace").split("\0")
    except OSError:
        return []


def test_a_changed_migration_on_the_local_database_is_told_how_to_redo_it(cli, local_db, db, sql_dir, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("MONGO_DIR", str(tmp_path))  # no patches: the SQL side is what this is about
    ok(cli("migrate", "--sql-dir", sql_dir))
    add_migration(sql_dir, "0002_add_note", "ALTER TABLE hcm_report_metadata ADD COLUMN note text;\n",
                  "ALTER TABLE hcm_report_metadata DROP COLUMN note;\n")
    add_migration(sql_dir, "0003_b", "CREATE TABLE b (id int);\n", "DROP TABLE b;\n")
    ok(cli("migrate", "--sql-dir", sql_dir))
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))  # the same files on a database that is not local
    # The migration being written changes after it was applied: the message says how to redo it, here.
    add_migration(sql_dir, "0002_add_note", "ALTER TABLE hcm_report_metadata ADD COLUMN note varchar(200);\n",
                  "ALTER TABLE hcm_report_metadata DROP COLUMN note;\n")
    result = cli("migrate", "--sql-dir", sql_dir)
    line = one_error_line(result)
    assert result.exit_code == 3 and "0002_add_note.sql changed since applied" in line
    assert line.endswith(f"not merged yet? redo it on this local database: `make rollback ARGS='--count 2 --sql-dir "
                         f"{sql_dir}' && make migrate ARGS='--sql-dir {sql_dir}'` (its rollback file must undo what "
                         "was applied)")
    # Elsewhere it is not offered: a rollback there is no local fix.
    elsewhere = one_error_line(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert "changed since applied" in elsewhere and "make rollback" not in elsewhere
    # Doing what it says works: the redone migration is the file as it is now.
    ok(cli("sql", "rollback", "--count", "2", "--sql-dir", sql_dir))
    ok(cli("migrate", "--sql-dir", sql_dir))
    status = ok(cli("status", "--sql-dir", sql_dir, "--exit-code"))
    assert "3 applied, 0 pending" in status.stdout


def test_the_redo_suggestion_targets_the_runs_schema_and_folder(cli, local_db, sql_dir, tmp_path, monkeypatch):
    """Following the suggestion of a --schema run rolls back that schema's migration, not public's (attack 22)."""
    monkeypatch.setenv("MONGO_DIR", str(tmp_path))
    add_migration(sql_dir, "0002_b", "CREATE TABLE b (id int);\n", "DROP TABLE b;\n")
    add_migration(sql_dir, "0003_c", "CREATE TABLE c (id int);\n", "DROP TABLE c;\n")
    ok(cli("migrate", "--sql-dir", sql_dir, "--schema", "t1", "--schema", "t2", "--create-schemas"))
    ok(cli("migrate", "--sql-dir", sql_dir))
    ok(cli("sql", "rollback", "--count", "1", "--sql-dir", sql_dir, "--schema", "t2"))  # t2: 0003 pending
    add_migration(sql_dir, "0002_b", "CREATE TABLE b (id bigint);\n", "DROP TABLE b;\n")
    result = cli("migrate", "--sql-dir", sql_dir, "--schema", "t1", "--schema", "t2")
    assert result.exit_code != 0
    # Each schema its own count, with its --schema and the run's --sql-dir in ARGS.
    for schema, count in (("t1", 2), ("t2", 1)):
        assert (f"make rollback ARGS='--count {count} --schema {schema} --sql-dir {sql_dir}' && make migrate "
                f"ARGS='--schema {schema} --sql-dir {sql_dir}'") in result.stderr, result.stderr
    # Doing what t1's says: t1 redone, public untouched.
    ok(cli("sql", "rollback", "--count", "2", "--schema", "t1", "--sql-dir", sql_dir))
    ok(cli("migrate", "--schema", "t1", "--sql-dir", sql_dir))
    assert "3 applied, 0 pending" in ok(cli("status", "--sql-dir", sql_dir)).stdout
    assert "3 applied, 0 pending" in ok(cli("status", "--sql-dir", sql_dir, "--schema", "t1")).stdout


def test_a_dotenv_may_not_move_the_local_servers_data_folder(cli, workdir, tmp_path, monkeypatch):
    """attack23w 4: a checkout's .env (HCM_DEVDB_DIR=review-db) chose the folder the local server starts from: a data
    folder committed beside it, its postgresql.conf holding restore_command, ran a shell command when the reviewer ran
    plan --impact or status. The folder is the real environment's choice only; the server is never started."""
    monkeypatch.delenv("HCM_DEVDB_DIR")
    (workdir / ".env").write_text("HCM_DEVDB_DIR=review-db\n")
    (workdir / "review-db").mkdir()
    (workdir / "review-db" / "postgresql.conf").write_text(f"restore_command = 'touch {tmp_path}/pwned; false'\n")
    (workdir / "review-db" / "recovery.signal").write_text("")
    for command in (("status",), ("plan", "--impact")):
        result = cli(*command)
        line = one_error_line(result)
        assert result.exit_code == 2 and "HCM_DEVDB_DIR (.env)" in line and "real environment" in line, result.output
    assert not (tmp_path / "pwned").exists() and not (workdir / "review-db" / "postmaster.pid").exists()


def _plant_devdb(folder, trap_port, pwned):
    """What a pull request can commit as `.devdb/`: PG_VERSION, a postmaster.pid whose pid is alive (1) and whose
    "socket folder" is a host of the author's, and server settings that run a command (attack23x 9, 6)."""
    folder.mkdir(mode=0o700)
    (folder / "PG_VERSION").write_text("18\n")
    (folder / "postmaster.pid").write_text(f"1\n{folder}\n1765000000\n{trap_port}\n127.0.0.1\n\n  5432001  0\nready   \n")
    (folder / "postgresql.conf").write_text(f"restore_command = 'touch {pwned}; false'\n")
    (folder / "recovery.signal").write_text("")


def test_a_committed_devdb_is_neither_started_nor_believed(tmp_path, trap):
    """attack23x 9 and 6: a `.devdb/` committed to the checkout was the local server's data folder: its postmaster.pid
    (pid 1, socket folder = the author's host) made `status` connect there over TCP and send the reviewer's
    PGPASSWORD; its restore_command ran at start. The data folder now lives outside the checkout (per user, per
    checkout): the committed one is named in one line, never started or read; nothing reaches the author's host."""
    clone = fresh_clone(tmp_path)
    _plant_devdb(clone / ".devdb", trap.port, tmp_path / "pwned")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_URL", "HCM_DEVDB", "MONGO", "XDG_"))}
    env.update(XDG_STATE_HOME=str(tmp_path / "state"), PGPASSWORD="REVIEWERS-OWN-SECRET", PATH="/usr/bin:/bin")  # no Go
    runner = [sys.executable, str(clone / "runner.py")]
    try:
        status = subprocess.run([*runner, "status"], capture_output=True, text=True, env=env, cwd=clone)
        assert status.returncode == 0, status.stderr
        assert f"{clone / '.devdb'} is no longer used" in status.stderr
        state = tmp_path / "state" / "hcm-db-migrations"
        assert "0001_create_hcm_report_metadata" in status.stdout, status.stderr
        assert (next(state.glob("devdb-*")) / "PG_VERSION").exists()
        assert oct(state.stat().st_mode & 0o077) in ("0o0", "0o55")  # 0700 (as root the wheel opens it to traverse)
    finally:
        stopped = subprocess.run([*runner, "devdb", "stop"], capture_output=True, text=True, env=env, cwd=clone)
    assert "stopped the local development database in" in stopped.stdout, stopped.stderr
    assert trap.startups == [] and trap.passwords == []
    assert not (tmp_path / "pwned").exists()


def test_a_pid_file_naming_a_stranger_is_refused(cli, tmp_path, trap, monkeypatch):
    """The pid file of the data folder itself (HCM_DEVDB_DIR, the real environment's) is believed only for a postgres
    of that folder: pid 1 with a host as socket folder is refused in one line, and nothing connects there."""
    monkeypatch.setenv("PGPASSWORD", "REVIEWERS-OWN-SECRET")
    _plant_devdb(tmp_path / "devdb", trap.port, tmp_path / "pwned")
    for command in (("status",), ("devdb", "start")):
        line = one_error_line(cli(*command))
        assert f"{tmp_path / 'devdb' / 'postmaster.pid'} names pid 1, which is not the local development database's" \
            in line, line
    assert "is not running" in cli("devdb", "stop").stdout  # never pg_ctl's signal to pid 1
    assert trap.startups == [] and trap.passwords == [] and not (tmp_path / "pwned").exists()


def test_the_state_folder_must_be_the_users_own(cli, tmp_path, monkeypatch):
    """No HCM_DEVDB_DIR: the folder is made under XDG_STATE_HOME (else ~/.local/state, else the temporary folder);
    one that others may write (another user made it first in a shared place) is refused, never used."""
    monkeypatch.delenv("HCM_DEVDB_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    (tmp_path / "state" / "hcm-db-migrations").mkdir(parents=True)
    (tmp_path / "state" / "hcm-db-migrations").chmod(0o777)
    line = one_error_line(cli("status"))
    assert f"folder {tmp_path / 'state' / 'hcm-db-migrations'} is not a folder of yours that only you may write" \
        in line, line
    assert os.listdir(tmp_path / "state" / "hcm-db-migrations") == []
