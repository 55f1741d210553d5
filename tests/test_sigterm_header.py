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


def test_a_sigterm_whose_interrupt_was_swallowed_still_stops_the_lock_wait(db, sql_dir, cli, seeded, monkeypatch):
    """Seen: the SIGTERM landed while connecting imported psycopg2, its Interrupted was lost inside the import's C
    code, and the run then waited out the whole --lock-timeout (exit 4). The signal is remembered for the run:
    the lock wait's first poll stops it. (The swallow is reproduced where it happened: around the connect.)"""
    import os
    import signal

    from migrator import interrupt, postgres
    from migrator.bookkeeping_lock import LOCK_KEY

    real_connect = postgres.connect

    def connect_swallowing_the_signal(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # (the handler runs between bytecodes: raised in here)
                pass
        except interrupt.Interrupted:
            pass  # what the import's C code did
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(postgres, "connect", connect_swallowing_the_signal)
    add_migration(sql_dir, "0002_t", "CREATE TABLE t_never (id int);\n")
    holder = connect(db, application_name="another runner")
    holder.autocommit = True
    holder.cursor().execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    try:
        result = cli("migrate", "--sql-dir", sql_dir, "--lock-timeout", "30", env=seeded)
    finally:
        holder.close()
    assert result.exit_code == 128 + signal.SIGTERM, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "interrupted by SIGTERM while waiting for the migration lock" in errors[0], errors
    assert "t_never" not in db.tables() and applied(db) == [SEED]


def test_a_sigterm_while_the_command_line_is_read_is_one_line():
    """runner.py's late handler raises the run's stop (as a container's PID 1 the default action was ignored): one
    that lands while click reads the command line, before any command's own handling, is one line, exit 143."""
    import signal
    import subprocess
    import sys

    from conftest import PROJECT_ROOT

    code = (f"import os, runpy, signal, sys, click.core\nsys.path.insert(0, {str(PROJECT_ROOT)!r})\n"
            "real = click.core.Command.make_context\n"
            "def make_context(*args, **kwargs):\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    return real(*args, **kwargs)\n"
            "click.core.Command.make_context = make_context\n"
            f"sys.argv = ['runner.py', 'status']\nrunpy.run_path({str(PROJECT_ROOT / 'runner.py')!r}, "
            "run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert done.stderr.strip().splitlines() == ["error: interrupted by SIGTERM before the command started: nothing "
                                                "was run"], done.stderr
