"""The hostile pass's low findings on issue 24 (reproM, reproI and the rest): every line true to what happens
next, a file's stricter lock_timeout kept, and `plan | head` / `status | head` ending quietly as Unix tools do."""

import os
import subprocess
import sys

import psycopg2
import pytest

from conftest import PROJECT_ROOT, SEED, add_migration, applied, one_error_line
from test_live_traffic import blocking, connect, seeded  # noqa: F401 (a fixture)


def test_if_not_exists_over_someone_elses_invalid_index_says_what_the_rerun_will_do(cli, db, sql_dir, seeded):
    """A DBA's failed unique build left idx_k INVALID (another definition than the file's). Before: "run migrate
    again: it drops the INVALID index ... and builds it again", and the rerun refused to."""
    db.query("CREATE TABLE t_k (id int, k int); INSERT INTO t_k VALUES (1, 1), (2, 1)")
    dba = connect(db, application_name="dba")
    dba.autocommit = True
    with pytest.raises(psycopg2.errors.UniqueViolation):
        dba.cursor().execute("CREATE UNIQUE INDEX CONCURRENTLY idx_k ON t_k (k)")
    dba.close()
    add_migration(sql_dir, "0002_idx", "-- transactional: false\nCREATE INDEX CONCURRENTLY IF NOT EXISTS idx_k ON t_k (k);\n")
    line = one_error_line(cli("migrate", "--sql-dir", sql_dir, env=seeded))
    assert "index public.idx_k is INVALID" in line, line
    assert "its only statement (line 2) COMMITTED" in line and "1-1 of 1" not in line, line
    assert "migrate will not drop it" in line and "DROP INDEX CONCURRENTLY public.idx_k" in line, line
    assert "it drops the INVALID index" not in line, line
    rerun = one_error_line(cli("migrate", "--sql-dir", sql_dir, env=seeded))
    assert "is not what it builds (another definition): not this migration's leftover, so it is not dropped" in rerun
    assert applied(db) == [SEED]


def test_the_override_note_does_not_promise_a_retry_with_budget_0(cli, db, sql_dir, seeded):
    add_migration(sql_dir, "0002_dump", "SET lock_timeout = 0;\nCREATE TABLE t_dump (id int);\n")
    result = cli("migrate", "--lock-retry-budget", "0", "--sql-dir", sql_dir, env=seeded)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if "the file's SET lock_timeout is overridden" in line]
    assert len(notes) == 1, result.stderr
    assert "then fails (the lock retry budget is 0: no retry)" in notes[0] and "retried" not in notes[0], notes[0]


def test_a_files_stricter_lock_timeout_is_kept(cli, db, sql_dir, seeded):
    """SET lock_timeout = '100ms' is stricter than the runner's 300 ms. Before: reset to 300 ms, with a note."""
    add_migration(sql_dir, "0002_strict", "SET lock_timeout = '100ms';\n"
                  "ALTER TABLE hcm_report_metadata ADD COLUMN note text;\n")
    with blocking(db) as pid:
        result = cli("migrate", "--lock-retry-budget", "1s", "--sql-dir", sql_dir, env=seeded)
    line = one_error_line(result)
    assert "0002_strict.sql:2: failed to apply" in line and f"blocked by pid {pid}" in line, line
    retries = [line for line in result.stderr.splitlines() if "0002_strict.sql:2: lock not granted" in line]
    assert retries and all("lock not granted within 100 ms (lock_timeout)" in r for r in retries), result.stderr
    assert "overridden" not in result.stderr, result.stderr


@pytest.mark.parametrize("command", ["plan", "status"])
def test_a_reader_that_left_ends_the_command_quietly(db, sql_dir, seeded, command):
    """stdout a pipe whose reader is gone (`runner.py plan | head -1` after head exits). Before: a
    BrokenPipeError traceback ("unexpected BrokenPipeError" or "Exception ignored ... BrokenPipeError")."""
    for number in range(2, 40):
        add_migration(sql_dir, f"{number:04d}_t{number}", f"CREATE TABLE t{number} (id int);\n")
    read, write = os.pipe()
    os.close(read)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_URL", "MONGO_"))}
    proc = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "runner.py"), command, "--sql-dir", str(sql_dir)],
                            env={**clean, **seeded}, stdout=write, stderr=subprocess.PIPE, text=True)
    os.close(write)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err
    assert "BrokenPipe" not in err and "Traceback" not in err and "error" not in err, err


@pytest.mark.parametrize("header", ["SET statement_timeout = 0;\nSET lock_timeout = 0;\n",
                                    "set local statement_timeout to '1h';\n",
                                    "-- transactional: false\n/* dump */ SET SESSION \"statement_timeout\" TO 0;\n",
                                    "SELECT pg_catalog.set_config('statement_timeout', '0', false);\n",
                                    "select set_config( 'statement_timeout', '1h', true);\n",
                                    # attack24g finding 8: spellings a rule on the statement's start missed
                                    "SET /* pg */ statement_timeout = 0;\n",
                                    "VALUES (set_config('statement_timeout', '0', false));\n",
                                    "SELECT * FROM set_config('statement_timeout', '0', false);\n",
                                    "SELECT 1, set_config('statement_timeout', '0', false);\n",
                                    "SELECT \"set_config\"('statement_timeout', '0', false);\n",
                                    "(SELECT set_config('statement_timeout', '0', false));\n",
                                    "WITH x AS (SELECT 1) SELECT set_config('statement_timeout', '0', false);\n",
                                    "SELECT set_config(E'statement_timeout', '0', false);\n",
                                    "SELECT set_config($$statement_timeout$$, '0', false);\n",
                                    "SELECT U&\"\\0073et_config\"(U&'\\0073tatement_timeout', '0', false);\n",
                                    "DO $$ BEGIN EXECUTE 'SE' || 'T statement' || '_timeout = 0'; END $$;\n",
                                    "UPDATE pg_settings SET setting = '0' WHERE name = 'statement_timeout';\n"])
def test_a_files_own_statement_timeout_cannot_lift_the_runs_bound(cli, db, sql_dir, seeded, header):
    """pg_dump's header SET statement_timeout = 0 (attack24e finding 5), and every other spelling (a set_config
    anywhere, quoted, escaped, a DO block's dynamic SET: attack24g finding 8). Before: the sleep ran to its end,
    unbounded, without a word; now the run's --statement-timeout ends it, and one note says so and how to lift it."""
    path = add_migration(sql_dir, "0002_dump", header + "SELECT pg_sleep(3);\n")
    result = cli("migrate", "--statement-timeout", "1s", "--sql-dir", sql_dir, env=seeded)
    assert result.exit_code == 1 and "canceling statement due to statement timeout" in result.stderr, result.output
    line = 2 if header.startswith("--") else 1
    notes = [n for n in result.stderr.splitlines() if "the file's SET statement_timeout is overridden" in n]
    assert notes == [f"{path}:{line}: the file's SET statement_timeout is overridden: each statement still ends after "
                     "1 s (the run's --statement-timeout / DB_STATEMENT_TIMEOUT: raise it, or 0 for none, to let this "
                     "run longer; remove the line from the file to drop this note)"], result.stderr
    assert applied(db) == [SEED]


def test_a_files_idle_in_transaction_bound_set_in_any_spelling_is_put_back(cli, db, sql_dir, seeded):
    """attack24g finding 8, the server-side idle bound: a set_config inside a select list lifted it (0: a runner cut
    off mid-transaction would leave its locks held for ever)."""
    path = add_migration(sql_dir, "0002_idle",
                         "SELECT 1, set_config('idle_in_transaction_session_timeout', '0', false);\n"
                         "CREATE TABLE idle_seen AS SELECT current_setting('idle_in_transaction_session_timeout') v;\n")
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    assert result.exit_code == 0, result.output
    assert f"{path}:1: the file's SET idle_in_transaction_session_timeout is overridden" in result.stderr, result.stderr
    assert db.query("SELECT v FROM idle_seen") != [("0",)]


def test_a_files_stricter_statement_timeout_is_kept_and_the_run_may_lift_it(cli, db, sql_dir, seeded):
    add_migration(sql_dir, "0002_strict", "SET statement_timeout = '200ms';\nSELECT pg_sleep(1);\n")
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)  # the run's 10 min: the file's 200 ms is stricter
    assert result.exit_code == 1 and "statement timeout" in result.stderr and "overridden" not in result.stderr
    add_migration(sql_dir, "0002_strict", "SET statement_timeout = 0;\nSELECT pg_sleep(1);\n")
    result = cli("migrate", "--statement-timeout", "0", "--sql-dir", sql_dir, env=seeded)  # lifted deliberately
    assert result.exit_code == 0 and "overridden" not in result.stderr, result.output
    assert applied(db) == [SEED, "0002_strict"]


def test_a_concurrent_builds_wait_names_the_holders_role_on_one_line(cli, db, sql_dir, seeded):
    """The 'waiting for old snapshots' line names the role as output.role does: a line break in it never splits
    the line, nor does a name full of commas read as further fields (attack 23g, low)."""
    import threading

    from test_live_traffic import BUILD

    name = "dump\nerror: forged line"
    db.query('CREATE ROLE "dump\nerror: forged line" LOGIN')
    holder = psycopg2.connect(dbname=db.name, user=name, host=db.server.host, port=db.server.port)
    try:
        holder.set_session(isolation_level="REPEATABLE READ")
        holder.cursor().execute("SELECT count(*) FROM pg_class")
        threading.Timer(7, holder.commit).start()
        add_migration(sql_dir, "0002_tenant_index", BUILD)
        result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    finally:
        holder.close()
        db.query('DROP ROLE "dump\nerror: forged line"')
    assert result.exit_code == 0, result.output
    assert "user 'dump\\nerror: forged line', idle in transaction" in result.stderr, result.stderr
    assert not any(line.startswith("error: forged") for line in result.output.splitlines()), result.output


def test_a_prepared_transactions_database_name_never_splits_the_line():
    """A database name is chosen by whoever may CREATEDB: shown as output.role shows a role (one line)."""
    from migrator.postgres import sessions

    text = sessions.describe({"prepared": "gid", "user": "app", "database": "db\nerror: forged",
                              "transaction_for_s": 5, "holds": ["ACCESS EXCLUSIVE"]})
    assert "\n" not in text and "database 'db\\nerror: forged'" in text, text
