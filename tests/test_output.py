"""No command prints a password: not in results, notes, errors, -v output or tracebacks."""

from urllib.parse import quote, quote_plus

import pytest

from conftest import PASSWORD_USER, SPECIAL_PASSWORD
from migrator import output

FORMS = [SPECIAL_PASSWORD, quote(SPECIAL_PASSWORD, safe=""), quote_plus(SPECIAL_PASSWORD)]


def test_mask_hides_url_and_dsn_passwords_of_any_scheme():
    assert output.mask("postgresql://u:pw1@h:5432/d") == "postgresql://u:***@h:5432/d"
    assert output.mask("see mongodb+srv://admin:s3cr%40t@cluster/x?tls=true") == "see mongodb+srv://admin:***@cluster/x?tls=true"
    assert output.mask("host=h password=abc dbname=d") == "host=h password=*** dbname=d"
    assert output.mask("postgresql://u@h/d") == "postgresql://u@h/d"  # nothing to hide


def test_scrub_hides_registered_secrets_in_free_text_from_outside():
    output.register_secret("Free-Text-Pw")
    assert output.scrub("oops: Free-Text-Pw leaked") == "oops: *** leaked"


SCRUB_LONG_LINES = """
import sys
from migrator import output

run = "a1" * 500_000  # 1 MB of scheme characters with no "://": each start used to scan to the end (n squared)
line = run + " then 9jdbc:postgresql://u:pw1@h/d and " + "x." * 500_000 + "://u:pw2@h " + run
masked = output.scrub(line)
assert masked == line.replace(":pw1@", ":***@").replace(":pw2@", ":***@"), "wrong masking"
print("masked", len(masked))
"""


def test_scrub_masks_right_on_megabyte_lines_of_letters_and_digits():
    import subprocess
    import sys

    from conftest import PROJECT_ROOT

    # a process of its own, so that a quadratic scrub (hours on such a line) fails here rather than hangs the suite
    done = subprocess.run([sys.executable, "-c", SCRUB_LONG_LINES], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("masked 30"), done.stderr[-500:]


@pytest.fixture
def password_db(make_db, password_role, pg):
    if not pg.enforces_passwords:
        pytest.skip("this server does not check passwords (trust authentication)")
    return make_db(owner=PASSWORD_USER)


@pytest.mark.parametrize("verbose", [[], ["-v"]])
def test_no_command_prints_the_password(cli, password_db, pg, verbose):
    url = pg.url(password_db.name, PASSWORD_USER, SPECIAL_PASSWORD)
    fields = {**password_db.db_env(), "DB_USER": PASSWORD_USER, "DB_PASSWORD": SPECIAL_PASSWORD}
    runs = [
        cli(*verbose, "config", env={"DATABASE_URL": url}),
        cli(*verbose, "config", env=fields),
        cli(*verbose, "plan", env={"DATABASE_URL": url}),
        cli(*verbose, "migrate", env=fields),
        cli(*verbose, "status", env={"DATABASE_URL": url}),
        cli(*verbose, "status", "--json", env=fields),
        cli(*verbose, "sql", "rollback", env={"DATABASE_URL": url}),
        cli(*verbose, "sql", "mark", "0001_create_hcm_report_metadata", env=fields),
        cli(*verbose, "sql", "break-lock", env=fields),
        cli(*verbose, "migrate", "--database-url", url.replace(password_db.name, "no_such_db")),  # error path
        cli(*verbose, "migrate", env={**fields, "DB_PASSWORD": SPECIAL_PASSWORD + "x"}),  # auth failure
    ]
    assert [r.exit_code for r in runs] == [0] * 9 + [1, 1], [r.output for r in runs]
    for run in runs:
        for form in FORMS:
            assert form not in run.output
    assert ":***@" in runs[0].stdout


def test_no_mongo_command_prints_the_password(cli, mongo, tmp_path, db):
    from conftest import MOCK_MONGO_URL

    if mongo.url != MOCK_MONGO_URL:
        pytest.skip("TEST_MONGO_URL: its credentials are its own")
    password = "Mongo-" + SPECIAL_PASSWORD
    url = MOCK_MONGO_URL.replace("://", f"://app:{quote(password, safe='')}@")
    env = {"MONGO_URL": url, "MONGO_DB": mongo.name}
    mongo_dir = tmp_path / "patches"
    mongo_dir.mkdir()
    (mongo_dir / "0001_leaky.py").write_text(f"def run(db, dry_run):\n    print({url!r})\n    return {password!r}\n")
    runs = [
        cli("-v", "config", env=env),
        cli("-v", "mongo", "status", "--mongo-dir", mongo_dir, env=env),
        cli("-v", "mongo", "apply", "--mongo-dir", mongo_dir, env=env),
        cli("-v", "mongo", "apply", "--run", "--mongo-dir", mongo_dir, env=env),
        cli("-v", "mongo", "history", "--json", "--mongo-dir", mongo_dir, env=env),
        cli("-v", "status", "--mongo-dir", mongo_dir, env={**env, **db.db_env()}),
        cli("-v", "mongo", "status", "--mongo-timeout", "0.5", env={**env, "MONGO_URL": url.replace("mongo.test:27017", "other.test")}),
    ]
    assert [r.exit_code for r in runs][:6] == [0] * 6, [r.output for r in runs]
    assert runs[6].exit_code != 0 and "Traceback" in runs[6].stderr  # a failure, with -v
    assert "mongodb://app:***@mongo.test:27017" in runs[0].stdout
    for run in runs:
        for form in [password, quote(password, safe=""), quote_plus(password)]:
            assert form not in run.output
