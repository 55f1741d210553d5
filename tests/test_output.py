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


def test_mask_hides_registered_secrets_in_free_text():
    output.register_secret("Free-Text-Pw")
    assert output.mask("oops: Free-Text-Pw leaked") == "oops: *** leaked"


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
