"""Round trips per command, counted deterministically (issue 22: load-independent, unlike wall or CPU time).

`counting()` wraps psycopg2.connect while it is active: every connection the runner opens in this process (the
run's own, each migration session, the side connections: yoyo connects through the same module attribute) counts
each execute/executemany/callproc/copy_expert, commit and rollback it sends, with the statement's first words.
`python bench/statements.py` runs a no-op migrate, a migrate of one file and of three, status and plan in-process
against a scratch database on the suite's embedded PostgreSQL (tests/conftest.py's server) and prints the counts.
"""

from __future__ import annotations

import collections
import contextlib
import re
import sys
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent


class Counts:
    def __init__(self) -> None:
        self.total = 0
        self.by_text: collections.Counter[str] = collections.Counter()

    def add(self, text) -> None:
        self.total += 1
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        self.by_text[re.sub(r"\s+", " ", str(text)).strip()[:90]] += 1


@contextlib.contextmanager
def counting() -> Iterator[Counts]:
    import psycopg2
    import psycopg2.extensions as ext

    counts = Counts()

    class Cursor(ext.cursor):
        def execute(self, query, vars=None):
            counts.add(query)
            return super().execute(query, vars)

        def executemany(self, query, vars_list):
            counts.add(query)
            return super().executemany(query, vars_list)

        def callproc(self, procname, parameters=None):
            counts.add(f"CALL {procname}")
            return super().callproc(procname, parameters)

        def copy_expert(self, sql, file, size=8192):
            counts.add(sql)
            return super().copy_expert(sql, file, size)

    class Connection(ext.connection):
        def cursor(self, *args, **kwargs):
            kwargs.setdefault("cursor_factory", Cursor)
            return super().cursor(*args, **kwargs)

        def commit(self):
            counts.add("COMMIT")
            return super().commit()

        def rollback(self):
            counts.add("ROLLBACK")
            return super().rollback()

    original = psycopg2.connect

    def connect(*args, **kwargs):
        kwargs.setdefault("connection_factory", Connection)
        return original(*args, **kwargs)

    psycopg2.connect = connect
    try:
        yield counts
    finally:
        psycopg2.connect = original


def main() -> None:
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import tempfile

    from click.testing import CliRunner

    import conftest
    from runner import cli

    show = "-v" in sys.argv
    with tempfile.TemporaryDirectory(prefix="hcm-statements-") as tmp:
        root = Path(tmp)
        postmaster, server = conftest._embedded_server(root)
        with postmaster:
            database = conftest._new_database(server)
            sql = root / "sql"
            sql.mkdir()
            env = database.db_env()

            def run(*args) -> Counts:
                with counting() as counts:
                    result = CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)
                assert result.exit_code == 0, result.output
                return counts

            results = {}
            conftest.add_migration(sql, "0001_first", "CREATE TABLE first (id int PRIMARY KEY, name text);",
                                   "DROP TABLE first;")
            run("migrate", "--sql-dir", sql, "--quiet")  # the bookkeeping made: what follows is a steady state
            results["no-op migrate"] = run("migrate", "--sql-dir", sql, "--quiet")
            results["status"] = run("status", "--sql-dir", sql)
            conftest.add_migration(sql, "0002_second", "ALTER TABLE first ADD COLUMN note text;",
                                   "ALTER TABLE first DROP COLUMN note;")
            results["plan (1 pending)"] = run("plan", "--sql-dir", sql)
            results["migrate of 1 file"] = run("migrate", "--sql-dir", sql, "--quiet")
            for n in (3, 4, 5):  # (each applied file's record: a description per file, attack24x 2)
                conftest.add_migration(sql, f"000{n}_more", f"CREATE TABLE more{n} (id int PRIMARY KEY);",
                                       f"DROP TABLE more{n};")
            results["migrate of 3 files"] = run("migrate", "--sql-dir", sql, "--quiet")
            for name, counts in results.items():
                print(f"| {name} | {counts.total} |")
                if show:
                    for text, n in counts.by_text.most_common():
                        print(f"    {n:3} {text}")


if __name__ == "__main__":
    main()
