"""The local development database: used only when nothing is configured, started once, left running."""

import os
import subprocess
import sys

import pytest

from conftest import fresh_clone
from migrator import devdb
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


def test_make_migrate_and_status_on_a_fresh_clone(tmp_path):
    """The README's first command on a fresh clone, with nothing configured (PYTHON: no new venv)."""
    clone = fresh_clone(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_URL", "HCM_DEVDB"))}
    make = ["make", "-s", "-C", str(clone), f"PYTHON={sys.executable}"]
    try:
        migrate = subprocess.run([*make, "migrate"], capture_output=True, text=True, env=env)
        assert migrate.returncode == 0, migrate.stderr
        assert "no database configured: using the local development database" in migrate.stderr
        assert str(clone / ".devdb") in migrate.stderr
        status = subprocess.run([*make, "status"], capture_output=True, text=True, env=env)
        assert status.returncode == 0, status.stderr
        assert "0001_create_hcm_report_metadata  applied" in status.stdout
        ignored = subprocess.run(["git", "-C", str(clone), "status", "--porcelain", "--ignored"], capture_output=True, text=True)
        assert "!! .devdb/" in ignored.stdout
    finally:
        subprocess.run([*make, "db-stop"], capture_output=True, env=env)
    assert not (clone / ".devdb" / "postmaster.pid").exists()
