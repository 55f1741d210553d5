"""The runtime stall bound's waiter query (attack24m findings 1, 2, 6): it sees the application's sessions when the
migration role is an ordinary role without pg_read_all_stats and the application logs in as another (production's
set-up: pg_stat_activity hides other roles' wait events then, pg_locks does not); it does not count sessions that
only wait for the migration's transaction to end (CREATE INDEX CONCURRENTLY elsewhere); and an accepted table's
indexes are accepted with it. The application's side is asserted by its own statement_timeout (5 s), as in
test_live_traffic_held.py.
"""

import threading
import time
import uuid

import pytest

from conftest import SEED, SPECIAL_PASSWORD, Server, add_migration, applied, embedded_server, one_error_line
from test_live_traffic import connect, seeded  # noqa: F401 (a fixture)
from test_live_traffic_blockers import _migrated
from test_live_traffic_held import DO_HOLDING, HOLDING, App, app_table
from test_live_traffic_held_try import ROW_LOCKED, UPDATE_ROW_1


@pytest.fixture
def roles(cli, make_db, password_role, sql_dir, pg):
    """A database owned by a plain migration role (not superuser, not in pg_read_all_stats) with t_app, which the
    runner migrates as that role, and an application role of its own: yields (db, the runner's env, the app role)."""
    db = make_db(owner=password_role)
    app_role = "app_" + uuid.uuid4().hex[:8]
    app_table(db)
    db.query(f"ALTER TABLE t_app OWNER TO {password_role}; CREATE ROLE {app_role} LOGIN; "
             f"GRANT USAGE ON SCHEMA public TO {app_role}; "
             f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON t_app TO {app_role}")  # (ALL has TRIGGER: refused)
    assert db.query(f"SELECT pg_catalog.pg_has_role('{password_role}', 'pg_read_all_stats', 'USAGE')") == [(False,)]
    env = {"DATABASE_URL": pg.url(db.name, user=password_role, password=SPECIAL_PASSWORD)}
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0
    yield db, env, app_role
    db.query(f"DROP OWNED BY {app_role}; DROP ROLE {app_role}")


@pytest.mark.parametrize("what, sql, ready, query", [
    ("held its lock on public.t_app", DO_HOLDING.format(sleep=20), None, None),
    ("row locks on public.t_app", UPDATE_ROW_1 + ";\nSELECT pg_catalog.pg_sleep(20);\n", ROW_LOCKED, UPDATE_ROW_1),
])
def test_the_net_sees_the_apps_role_without_pg_read_all_stats(cli, roles, sql_dir, what, sql, ready, query):
    """attack24m 1: the waiter query filtered pg_stat_activity on wait_event_type = 'Lock', NULL for another role's
    sessions without pg_read_all_stats: every stall went unbounded, exit 0, no note."""
    db, env, app_role = roles
    add_migration(sql_dir, "0002_hold", sql)
    app = App(db, user=app_role, **({"ready": ready, "query": query} if ready else {}))
    result = cli("migrate", "--sql-dir", sql_dir, env=env)
    app.join()
    assert app.error is None, app.error  # its wait ended long before the file's 20 s
    line = one_error_line(result)
    assert result.exit_code == 1 and "0002_hold.sql:" in line and "failed to apply" in line, result.output
    assert what in line and "application sessions waited" in line, line
    assert f"(pid {app.pid}, application_name 'hcm-app', user {app_role}" in line, line
    assert "not retried" in line and SPECIAL_PASSWORD not in result.output
    assert applied(db) == [SEED]


MIGRATION_RUNS = """SELECT 1 FROM pg_catalog.pg_stat_activity
WHERE application_name LIKE 'hcm-db-migrations%%' AND state = 'active' AND query LIKE %s"""


class Elsewhere:
    """Another session (`name`) that runs `statement` once the migration runs `marker`: it waits for the migration's
    transaction to end, blocking no query."""

    def __init__(self, db, marker, statement, name):
        self.db, self.marker, self.statement, self.name = db, marker, statement, name
        self.done, self.error = False, None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        conn = connect(self.db, application_name=self.name)
        conn.autocommit = True
        try:
            deadline = time.monotonic() + 30
            while not self.db.poll(MIGRATION_RUNS, (f"%{self.marker}%",)):
                if time.monotonic() > deadline:
                    self.error = "the migration never ran"
                    return
                time.sleep(0.01)
            conn.cursor().execute(self.statement)
            self.done = True
        except Exception as exc:  # noqa: BLE001 (the test asserts it)
            self.error = str(exc)
        finally:
            conn.close()

    def join(self):
        self.thread.join(timeout=40)
        assert not self.thread.is_alive()


SLOW_CHECK = ("CREATE FUNCTION slow_ok(i int) RETURNS boolean IMMUTABLE LANGUAGE plpgsql AS "
              "$$ BEGIN PERFORM pg_catalog.pg_sleep(1); RETURN true; END $$")


@pytest.mark.parametrize("name, sql, marker", [
    ("0002_validate", "ALTER TABLE t_app VALIDATE CONSTRAINT t_app_ok;\n", "VALIDATE"),
    ("0002_region", "CREATE TABLE region (id int);\nINSERT INTO region SELECT g FROM generate_series(1, 2) g "
                    "WHERE slow_ok(g);\n", "INSERT INTO region"),
])
def test_an_index_built_concurrently_elsewhere_does_not_end_a_legitimate_file(cli, db, sql_dir, seeded, name, sql,
                                                                               marker):
    """attack24m 2: CREATE INDEX CONCURRENTLY on an unrelated table waits for the migration's transaction (its
    virtualxid, pg_blocking_pids names the migration): a VALIDATE CONSTRAINT or a new table's load was ended, not
    retried, 'it works under a lock queries need'. No query waited."""
    app_table(db)
    db.query(SLOW_CHECK + "; ALTER TABLE t_app ADD CONSTRAINT t_app_ok CHECK (slow_ok(id)) NOT VALID")
    add_migration(sql_dir, name, sql)
    db.query("CREATE TABLE t_other (id int); INSERT INTO t_other VALUES (1)")
    dba = Elsewhere(db, marker, "CREATE INDEX CONCURRENTLY t_other_id ON t_other (id)", "dba")
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    dba.join()
    assert result.exit_code == 0, result.output
    assert applied(db) == [SEED, name]
    assert dba.error is None and dba.done  # it waited for the file's transaction, then built its index


@pytest.fixture(scope="module")
def logical_pg(tmp_path_factory) -> Server:
    """A server of this module's own with wal_level = logical (a replication slot's creation)."""
    server = embedded_server(tmp_path_factory.mktemp("logical") / "pgdata", {"wal_level": "logical", "fsync": "off"})
    info = server.get_postmaster_info()
    yield Server(host=str(info.socket_dir), port=info.port, user="postgres", password=None, enforces_passwords=False)
    server.cleanup()


@pytest.fixture
def logical_db(logical_pg, cli, sql_dir):
    """The seed migrated into a fresh database of that server; a slot left behind dropped (it keeps the database)."""
    for db in _migrated(logical_pg, cli, sql_dir):
        yield db
        db.query("SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots")


def test_a_replication_slot_created_meanwhile_does_not_end_a_legitimate_file(cli, logical_db, sql_dir):
    """attack24m 2 (FC3): pg_create_logical_replication_slot (a CDC tool's) waits on the migration's transactionid,
    holding no tuple lock and no lock on a table the migration holds: a new table's load was ended, 'held row locks
    ... on rows it changed', pointed to `-- backfill: batch`."""
    db = logical_db
    db.query(SLOW_CHECK)
    add_migration(sql_dir, "0002_region", "CREATE TABLE region (id int);\nINSERT INTO region SELECT g FROM "
                  "generate_series(1, 2) g WHERE slow_ok(g);\n")
    cdc = Elsewhere(db, "INSERT INTO region", "SELECT pg_catalog.pg_create_logical_replication_slot('cdc_slot', "
                    "'test_decoding')", "debezium")
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    cdc.join()
    assert result.exit_code == 0, result.output
    assert applied(db) == [SEED, "0002_region"]
    assert cdc.error is None and cdc.done  # it waited for the file's transaction, then made its slot


TOAST_INDEX = ("(SELECT indexrelid FROM pg_catalog.pg_index WHERE indrelid = (SELECT reltoastrelid FROM "
               "pg_catalog.pg_class WHERE oid = 'public.t_app'::regclass))")


@pytest.mark.parametrize("columns, index, query", [
    ("id int PRIMARY KEY", "'public.t_app_pkey'::regclass", "SELECT count(*) FROM t_app"),
    ("id int, big text STORAGE EXTERNAL", TOAST_INDEX, "SELECT count(length(big)) FROM t_app"),
])
def test_an_accepted_tables_indexes_are_accepted_with_it(cli, db, sql_dir, seeded, columns, index, query):
    """attack24m 6: REINDEX TABLE accepted by `-- accept-rewrite: public.t_app` was ended all the same: the app's
    query waits on t_app_pkey's lock (its planner opens the index), or on its TOAST table's index (reading a big
    value), and the exemption went by relation name."""
    db.query(f"CREATE TABLE t_app ({columns}); INSERT INTO t_app (id) VALUES (1), (2)")
    db.query("UPDATE t_app SET big = (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 200) g)"
             if "big" in columns else "SELECT 1")
    add_migration(sql_dir, "0002_reindex", "-- accept-rewrite: public.t_app\nREINDEX TABLE t_app;\n"
                  "SELECT pg_catalog.pg_sleep(2);\n")
    app = App(db, ready=HOLDING.replace("= 'public.t_app'::regclass", "= " + index), query=query)
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    app.join()
    assert result.exit_code == 0, result.output  # was: ended, asking to accept public.t_app_pkey as well
    assert "accept-rewrite: public.t_app_pkey" not in result.output and "pg_toast" not in result.output, result.output
    assert app.error is None and app.rows == [(2,)]  # it waited the accepted 2 s, then read
    assert applied(db) == [SEED, "0002_reindex"]
