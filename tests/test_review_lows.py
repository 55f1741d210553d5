"""attack23v's lows on the review path: a stdout that is not UTF-8 (8) and a migrations folder linked out (9)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import PROJECT_ROOT, RUNNER_VARIABLES, add_migration, ok, one_error_line
from migrator import lint


def run(*args, cwd, encoding: str) -> subprocess.CompletedProcess:
    """runner.py in its own process, its stdout and stderr in `encoding` (Windows' code page on a pipe, an SJIS
    locale), nothing configured but what `args` say."""
    env = {k: v for k, v in os.environ.items() if k not in RUNNER_VARIABLES}
    env["PYTHONIOENCODING"] = encoding
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "runner.py"), *args], cwd=cwd, env=env,
                          capture_output=True, timeout=120)


@pytest.mark.parametrize("encoding", ["cp932", "ascii"])
def test_the_runners_own_lines_on_a_stdout_that_lacks_a_character_are_escaped(tmp_path, encoding):
    """Before: `error: unexpected UnicodeEncodeError: 'cp932' codec can't encode character '\\u20ac'`, exit 1, the
    output cut off there (attack23v 8)."""
    folder = tmp_path / "sql€"
    folder.mkdir()
    add_migration(folder, "0001_a", "SELECT 'café €' AS x;\n")
    created = run("sql", "new", "add_x", "--sql-dir", folder, cwd=tmp_path, encoding=encoding)
    assert created.returncode == 0, created.stderr
    assert b"created " in created.stdout and b"sql\\u20ac/0002_add_x.sql" in created.stdout, created.stdout
    if lint.squawk_path() is None:
        return
    add_migration(folder, "0002_add_x", "CREATE INDEX i ON t (a);\n", "DROP INDEX i;\n")
    plan = run("plan", "--offline", "--sql-dir", folder, cwd=tmp_path, encoding=encoding)
    assert plan.returncode == 0 and b"unexpected" not in plan.stderr, plan.stderr
    assert b"-- lint: " in plan.stdout and b"sql\\u20ac/0002_add_x.sql:1" in plan.stdout, plan.stdout
    assert "SELECT 'café €' AS x;\n".encode() in plan.stdout  # (the SQL itself: the file's UTF-8 bytes)
    assert plan.stdout.rstrip().endswith(b"-- MongoDB: not configured, skipped"), plan.stdout  # not cut off


def test_a_migrations_folder_linked_out_of_its_own_folder_is_refused(cli, tmp_path, sql_dir):
    """Before: plan printed the numbered files of wherever `sql -> ../outside` pointed (attack23v 9)."""
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    repo.mkdir()
    outside.mkdir()
    add_migration(outside, "0002_x", "SELECT 'OUTSIDE-SECRET';\n")
    (repo / "sql").symlink_to("../outside")
    for env in ({}, {"SQL_DIR": str(repo / "sql")}):
        result = cli("plan", "--offline", *(() if env else ("--sql-dir", repo / "sql")), env=env)
        line = one_error_line(result)
        assert result.exit_code == 2 and "OUTSIDE-SECRET" not in result.output, result.output
        assert f"migrations folder {repo / 'sql'} is a symlink to {outside}, outside {repo};" in line, line
    (repo / "sql.real").symlink_to(sql_dir)  # (a link inside the repository to a folder elsewhere: refused too)
    assert "is a symlink to" in one_error_line(cli("plan", "--offline", "--sql-dir", repo / "sql.real"))
    (repo / "sql").unlink()
    (repo / "sql.real").unlink()
    (repo / "sql.v2").mkdir()
    add_migration(repo / "sql.v2", "0001_a", "SELECT 'INSIDE';\n")
    (repo / "sql").symlink_to("sql.v2")  # beside its target, in the same repository: taken
    assert "SELECT 'INSIDE';" in ok(cli("plan", "--offline", "--sql-dir", repo / "sql")).stdout
