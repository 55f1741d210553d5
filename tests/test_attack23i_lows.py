"""Attack 23i's lows: lines forged through lint findings and plan --impact's relation names, a password file that is
a FIFO or a device, sslpassword= quoted back, a URL's options that swallow the runner's own -c settings."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

from conftest import PROJECT_ROOT, SEED, add_migration, applied, ok, one_error_line
from migrator import lint

# A PR author's quoted identifier, long enough for squawk's identifier-too-long to quote it back: its line breaks
# would start lines of the author's (an `error:`, GitHub Actions' workflow commands), its \r overwrite a line.
FORGED = ("x_long_enough_to_be_truncated_by_postgresql_at_sixty_three_bytes\nerror: forged\r0003_c  applied\n"
          "::error file=sql/0001_a.sql,line=1::forged annotation\n::stop-commands::zzz\u202e\x1b[8m")


def _forged_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("error: forged", "::", "0003_c"))]


def test_a_lint_finding_quoting_the_files_identifier_is_one_escaped_line(cli, sql_dir):
    if lint.squawk_path() is None:
        pytest.skip("squawk is not installed here (requirements-dev.txt brings squawk-cli)")
    path = add_migration(sql_dir, "0002_b", f'CREATE TABLE "{FORGED}" (id int);\n', "SELECT 1;\n")
    result = cli("sql", "lint", "--sql-dir", sql_dir)
    assert result.exit_code == 1, result.output
    assert "\r" not in result.stdout and "\x1b" not in result.stdout and "\u202e" not in result.stdout
    assert _forged_lines(result.stdout) == [], result.stdout
    finding = [line for line in result.stdout.splitlines() if "identifier-too-long" in line]
    assert len(finding) == 1 and finding[0].startswith(f"{path}:1:"), result.stdout
    assert "\\nerror: forged\\r0003_c" in finding[0] and "\\u202e\\x1b[8m" in finding[0], finding[0]


def test_plan_impact_prints_a_relation_name_escaped_in_text_and_markdown(cli, db, pg, sql_dir):
    """The catalog's relation name is the migration author's: in the impact report it reached the reviewer raw."""
    name = "a\r    (no lock)\x1b[0m\n0002_b (not transactional)\u2028x"  # (under 63 bytes)
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    # (written with U& escapes: a control character itself in a migration file is refused, attack23w 9)
    quoted = 'U&"' + "".join(c if c.isprintable() else f"\\{ord(c):04x}" for c in name) + '"'
    add_migration(sql_dir, "0002_a", f'CREATE TABLE {quoted} (id int);\n', "SELECT 1;\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0003_b", f'ALTER TABLE {quoted} ALTER COLUMN id TYPE bigint;\n', "SELECT 1;\n")
    for extra in ([], ["--markdown"]):
        result = cli("plan", "--impact", *extra, "--sql-dir", sql_dir, "--scratch-url", pg.scratch_url(),
                     env=db.db_env())
        assert result.exit_code == 0, result.output
        out = result.stdout
        assert not any(c in out for c in "\r\x1b\u2028"), out
        assert not [line for line in out.splitlines() if line.startswith("0002_b")], out
        escaped = "a\\r    (no lock)\\x1b[0m\\n0002_b (not transactional)\\u2028x"
        assert f'ACCESS EXCLUSIVE on table "{escaped}"' in out, out
        assert "rewrites table" in out, out


def _runner(args: list[str], env: dict[str, str], cwd) -> subprocess.CompletedProcess:
    """runner.py as its own process, its address space capped: /dev/zero read whole grew to 22 GB."""
    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    return subprocess.run([sys.executable, str(PROJECT_ROOT / "runner.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, preexec_fn=cap_memory)


@pytest.mark.parametrize("where", ["PGPASSFILE=fifo", "~/.pgpass fifo", "PGPASSFILE=/dev/zero", "PGPASSFILE=dir"])
def test_a_password_file_that_is_no_plain_file_is_skipped_never_read(tmp_path, where):
    """libpq's password file was read whole before any setting: a FIFO hung every command, /dev/zero filled memory."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "DB_HOST": "db.example", "DB_PASSWORD": "Pw-23i-77"}
    if where == "PGPASSFILE=fifo":
        os.mkfifo(tmp_path / "fifo")
        env["PGPASSFILE"] = str(tmp_path / "fifo")
    elif where == "~/.pgpass fifo":
        os.mkfifo(home / ".pgpass")
    else:
        env["PGPASSFILE"] = "/dev/zero" if where.endswith("zero") else str(tmp_path)
    done = _runner(["config"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    note = [line for line in (done.stdout + done.stderr).splitlines()
            if "password file" in line or "PGPASSFILE (environment)" in line]  # (config says its notes on stdout)
    assert len(note) == 1 and note[0].startswith("note: "), done.stdout + done.stderr
    assert "not a regular file" in note[0] or "a folder" in note[0], note
    assert "PostgreSQL: postgresql://postgres:***@db.example" in done.stdout, done.stdout


def test_a_fifo_password_file_is_skipped_by_libpq_too_without_its_raw_warning(db, tmp_path):
    """libpq skips it too, but says so on stderr itself ('WARNING: password file ... is not a plain file'): a line
    outside the JSON log. The runner's note says it; libpq is pointed at no file."""
    os.mkfifo(tmp_path / "fifo")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PGPASSFILE": str(tmp_path / "fifo"),
           "DATABASE_URL": db.server.url(db.name, password="")}
    done = _runner(["--log-format", "json", "status", "--sql-dir", str(PROJECT_ROOT / "sql")], env, tmp_path)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in (done.stdout + done.stderr).splitlines()]  # every line is an event
    notes = [e["message"] for e in events if e["event"] == "note" and "PGPASSFILE (environment)" in e["message"]]
    assert len(notes) == 1 and "not a regular file" in notes[0], events
    assert SEED in done.stdout, done.stdout


def test_a_password_file_over_the_cap_is_not_read(cli, tmp_path):
    big = tmp_path / "pgpass"
    big.write_text("*:*:*:*:Pw9xQ7zz\n" + "#" * (2 << 20) + "\n")
    result = cli("config", env={"DB_HOST": "db.example", "DB_PASSWORD": "x", "PGPASSFILE": str(big)})
    assert result.exit_code == 0, result.output
    assert f"note: PGPASSFILE (environment): {big} is larger than 1024 KiB" in result.output, result.output


SECRET = "Zq7xK9wPv"


@pytest.mark.parametrize("mode", [[], ["-v"], ["--log-format", "json"]])
@pytest.mark.parametrize("url", [f"postgresql://mig:migpw@db.example/app?sslpassword={SECRET}",
                                 f"jdbc:postgresql://db.example/app?user=mig&password=pw&sslpassword={SECRET}"])
def test_an_sslpassword_put_in_another_setting_is_never_quoted_back(cli, url, mode):
    name = "DB_URL" if url.startswith("jdbc:") else "DATABASE_URL"
    result = cli(*mode, "config", env={name: url, "DB_LOCK_TIMEOUT": SECRET})
    assert result.exit_code == 2 and "DB_LOCK_TIMEOUT (environment)" in result.output, result.output
    assert SECRET not in result.output, result.output


@pytest.mark.parametrize("options, what", [
    ("-c%20application_name%3Dx%5C", "ends in a backslash"),
    ("-c", "ends in -c without its value"),
    ("-c%20application_name%3Dx%20--", "holds --"),
])
def test_url_options_that_would_swallow_the_runners_settings_are_named_in_one_line(cli, db, sql_dir, options, what):
    """The runner appends its own -c settings to the URL's options: these broke the login with only the server's
    'HINT: Try "postgres --help"'."""
    result = cli("migrate", "--sql-dir", sql_dir, "--database-url", _with_options(db.url, options))
    line = one_error_line(result)
    assert result.exit_code == 2 and line.startswith(f"error: --database-url: its options parameter {what}"), line
    assert "postgres --help" not in result.output


def _with_options(url: str, options: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}options={options}"


def test_url_options_with_an_escaped_backslash_still_connect(cli, db, sql_dir):
    options = "-c%20application_name%3Dx%5C%5C"  # x\\: a backslash in the value, written as the server reads it
    result = cli("migrate", "--sql-dir", sql_dir, "--database-url", _with_options(db.url, options))
    ok(result)
    assert applied(db) == [SEED]


@pytest.mark.parametrize("options, fatal, hint", [
    ("-c%20statement_timeout%3D5x", 'invalid value for parameter "statement_timeout": "5x"', "Valid units"),
    ("-c%20log_min_messages%3Dfoo", 'invalid value for parameter "log_min_messages": "foo"', "Available values"),
])
def test_a_refused_login_says_the_servers_error_with_its_hint_never_the_hint_alone(cli, db, sql_dir, options, fatal,
                                                                                  hint):
    """The runner kept only the last line of libpq's error: a FATAL with a HINT printed the HINT alone."""
    result = cli("migrate", "--sql-dir", sql_dir, "--database-url", _with_options(db.url, options))
    line = one_error_line(result)
    assert result.exit_code != 0 and line.startswith("error: cannot connect to PostgreSQL at "), line
    assert f"FATAL:  {fatal}; HINT:  {hint}" in line, line
