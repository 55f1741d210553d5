"""Issue 24, fifth hostile pass (low): SIGTERM in the steps before any migration runs (connecting, the migration
lock, the history) says so in one line, never a silent exit 143."""

from conftest import SEED, add_migration, applied
from test_live_traffic import connect, seeded  # noqa: F401 (a fixture)


def test_a_sigterm_right_after_the_header_says_what_was_not_done(db, sql_dir, cli, seeded):
    """Before: SIGTERM while connecting / taking the migration lock / reading the history (no guard yet) exited 143
    with no line at all."""
    import signal

    from test_progress import read_until, runner

    from migrator.bookkeeping_lock import LOCK_KEY

    add_migration(sql_dir, "0002_t", "CREATE TABLE t_never (id int);\n")
    holder = connect(db, application_name="another runner")  # another runner's migration lock: the run waits after its header until the signal
    holder.autocommit = True
    holder.cursor().execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    proc = runner("migrate", "--sql-dir", sql_dir, "--database-url", db.url)
    try:
        read_until(proc, lambda line: line.startswith("PostgreSQL:"), 60)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        holder.close()
    assert proc.returncode == 128 + signal.SIGTERM, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "interrupted by SIGTERM" in errors[0], err
    assert "t_never" not in db.tables() and applied(db) == [SEED]
