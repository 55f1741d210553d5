"""Issue 24, attack24q: what the blind probe's judge (clock_bound.Judge) takes for harmless, asked on a live
connection as running.py asks it (judged just before a statement runs, told after it ran): each case below was
taken for harmless before, though it runs user code or hands the application a table it uses. Then a backfill's
batches (blind) and a CONCURRENTLY build running user code (seeing): neither was bounded."""

import threading
import time

import pytest

from conftest import add_migration, applied, one_error_line
from migrator.postgres.clock_bound import Judge
from test_live_traffic import connect, seeded  # noqa: F401 (a fixture)
from test_live_traffic_held import HOLDING, App, app_table
from test_live_traffic_blind_whitelist import inserts
from test_live_traffic_parse import blind_run
from test_progress_attack import LIMITED_PASSWORD, limited_role  # noqa: F401 (a fixture)

USER_CHECK = ("CREATE FUNCTION ok(text) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN RETURN true; END $$;\n"
              "CREATE DOMAIN code AS text CHECK (ok(VALUE));\n")


def judged(conn, *statements) -> bool:
    """Runs every statement but the last through the judge (autocommit, each its own try); returns whether the last
    starts the clock."""
    judge = Judge(conn, {})
    for text in statements[:-1]:
        judge.bounded(text)
        with conn.cursor() as cursor:
            cursor.execute(text)
        judge.ran(text)
    return judge.bounded(statements[-1])


@pytest.fixture
def conn(pg, db):
    with pg.connect(db.name) as connection:
        yield connection


@pytest.mark.parametrize("setup,statement", [
    # 1: a DEFAULT coerced to a domain runs the domain's CHECK
    (USER_CHECK + "CREATE TABLE seed (c text DEFAULT ('x'::code)::text);", "INSERT INTO seed DEFAULT VALUES;"),
    (USER_CHECK + "CREATE TABLE seed (c code);", "INSERT INTO seed VALUES ('x');"),
    (USER_CHECK + "CREATE TABLE seed (c text);", "INSERT INTO seed VALUES ('x'::code);"),  # a cast to it
    # 5: REFRESH ... CONCURRENTLY runs the view's query
    ("CREATE FUNCTION n() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$;\n"
     "CREATE MATERIALIZED VIEW mv AS SELECT n() AS n;\nCREATE UNIQUE INDEX ON mv (n);",
     "REFRESH MATERIALIZED VIEW CONCURRENTLY mv;"),
    # 2: VALIDATE of a CHECK calling a function of the database's own
    (USER_CHECK + "CREATE TABLE t (c text);\nALTER TABLE t ADD CONSTRAINT k CHECK (ok(c)) NOT VALID;",
     "ALTER TABLE t VALIDATE CONSTRAINT k;"),
    # 9: a table made in the run renamed (or moved) to a name the application uses: the application's now
    ("CREATE TABLE kind_new (code text PRIMARY KEY);\nALTER TABLE kind_new RENAME TO kind;",
     "INSERT INTO kind VALUES ('a');"),
    ("CREATE SCHEMA s2;\nCREATE TABLE lk (code text);\nALTER TABLE lk SET SCHEMA s2;",
     "INSERT INTO s2.lk VALUES ('a');"),
    # attack24r 4: a view (the application's name) over a table made in the run: the application writes to it
    ("CREATE TABLE kind_v2 (code text PRIMARY KEY);\nCREATE VIEW kind AS SELECT code FROM kind_v2;",
     "INSERT INTO kind_v2 VALUES ('a');"),
    # attack24r 3: a DEFAULT through an array of a domain (COERCEVIAIO: domain_in per element); an enum column fed
    # by the database's own assignment cast; the same COERCEVIAIO in a CHECK validated
    (USER_CHECK + "CREATE TABLE seed (c text DEFAULT (('{x}'::text)::code[])::text);", "INSERT INTO seed DEFAULT VALUES;"),
    ("CREATE TYPE st AS ENUM ('a');\nCREATE FUNCTION st_of(int) RETURNS st LANGUAGE plpgsql AS "
     "$$ BEGIN RETURN 'a'; END $$;\nCREATE CAST (int AS st) WITH FUNCTION st_of(int) AS ASSIGNMENT;\n"
     "CREATE TABLE seed (s st);", "INSERT INTO seed VALUES (1);"),
    (USER_CHECK + "CREATE TABLE t (c text);\nALTER TABLE t ADD CONSTRAINT k CHECK ((c::code[]) IS NOT NULL) NOT VALID;",
     "ALTER TABLE t VALIDATE CONSTRAINT k;"),
    # attack24r 1: a foreign key PostgreSQL checks row by row (row security on the referenced table), each
    # referenced row locked FOR KEY SHARE to the try's end
    ("CREATE TABLE p (id int PRIMARY KEY);\nALTER TABLE p ENABLE ROW LEVEL SECURITY;\nCREATE TABLE t (p int);\n"
     "ALTER TABLE t ADD CONSTRAINT k FOREIGN KEY (p) REFERENCES p NOT VALID;", "ALTER TABLE t VALIDATE CONSTRAINT k;"),
    # attack24r 5: a SQL function's body is parse-analysed at CREATE: it locks the tables it names to the COMMIT
    ("CREATE TABLE t (v int);", "CREATE FUNCTION f(i int) RETURNS void LANGUAGE sql BEGIN ATOMIC "
     "UPDATE t SET v = i; END;"),
    ("CREATE TABLE t (v int);", "CREATE FUNCTION f() RETURNS SETOF int LANGUAGE sql AS 'SELECT v FROM t FOR UPDATE';"),
    ("CREATE TABLE t (v int);", "CREATE TABLE t_comp (r t, rs t[]);"),  # (a table's row type: ACCESS SHARE on it)
], ids=["domain-default", "domain-column", "domain-cast", "refresh-concurrently", "validate-user-check", "renamed",
        "set-schema", "view-over-it", "domain-array-default", "own-cast-into-enum", "validate-domain-array", "fk-row-security",
        "sql-function-atomic", "sql-function", "row-type-column"])
def test_the_blind_judge_bounds_what_runs_user_code_or_is_the_applications(conn, setup, statement):
    assert judged(conn, *[s for s in setup.split(";\n") if s.strip()], statement)


@pytest.mark.parametrize("setup,statement", [
    ("CREATE TABLE t (c text);\nALTER TABLE t ADD CONSTRAINT k CHECK (length(c) > 0 AND c IS NOT NULL) NOT VALID;",
     "ALTER TABLE t VALIDATE CONSTRAINT k;"),
    ("CREATE TABLE p (id int PRIMARY KEY);\nCREATE TABLE t (p int);\n"
     "ALTER TABLE t ADD CONSTRAINT k FOREIGN KEY (p) REFERENCES p NOT VALID;", "ALTER TABLE t VALIDATE CONSTRAINT k;"),
    ("BEGIN;\nCREATE TABLE seed (c text);", "INSERT INTO seed VALUES ('x');"),  # (its creating transaction open)
    # 10: the common seeds that were ended for nothing
    ("BEGIN;\nCREATE TABLE kind (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), at timestamptz DEFAULT clock_timestamp(), "
     "since date, doc jsonb, note text)", "INSERT INTO kind (since, doc, note) VALUES ('2024-01-01'::date, "
     "'{\"a\": 1}'::jsonb, CAST('a' AS text)), (DATE '2024-01-02', '{}', 'b'::text);"),
], ids=["validate-builtin-check", "validate-foreign-key", "constants", "builtin-defaults-and-casts"])
def test_the_blind_judge_still_leaves_harmless_statements_off_the_clock(conn, setup, statement):
    assert not judged(conn, *[s for s in setup.split(";\n") if s.strip()], statement)


def test_the_blind_judge_bounds_constants_when_the_session_reads_backslashes_as_escapes(conn):
    """3: with standard_conforming_strings off (the database's or role's setting, or a SET), the server may split a
    text pglast reads as one INSERT of constants into several statements: nothing is harmless then."""
    with conn.cursor() as cursor:
        cursor.execute("SET standard_conforming_strings = off")
    assert judged(conn, "CREATE TABLE seed (a text, b text)", "INSERT INTO seed VALUES ('a', 'b');")


def backfill(per_row: float) -> str:
    """A backfill of t_bf's 8 rows, 2 a batch, each row `per_row` seconds."""
    return ("-- transactional: false\n-- backfill: batch\n"
            "UPDATE t_bf SET v = 1 WHERE id IN (SELECT id FROM t_bf WHERE v IS NULL "
            f"AND pg_catalog.pg_sleep({per_row}) IS NOT NULL LIMIT 2);\n")


def backfill_run(cli, make_db, limited_role, sql_dir, pg):
    db, migrate = blind_run(cli, make_db, limited_role, sql_dir, pg)
    db.query(f"SET ROLE {limited_role}; CREATE TABLE t_bf (id int PRIMARY KEY, v int); "
             "INSERT INTO t_bf SELECT g FROM generate_series(1, 8) g")
    return db, migrate


def test_a_blind_probe_bounds_each_backfill_batch_by_the_clock(cli, make_db, limited_role, sql_dir, pg):
    """4: blind, a `-- backfill: batch` batch ran on no clock at all (a 100,000-row batch stalled the app 2.8 s):
    each batch is a try of its own, ended past the bound; the batches before it stay committed."""
    db, migrate = backfill_run(cli, make_db, limited_role, sql_dir, pg)
    add_migration(sql_dir, "0002_bf", backfill(0.5))
    line = one_error_line(migrate("--lock-retry-budget", "1s"))
    assert "0002_bf.sql:3:" in line and "the lock probe was blind" in line, line
    assert applied(db)[-1] != "0002_bf"
    assert db.query("SELECT count(*) FROM t_bf WHERE v IS NULL") == [(8,)]


def test_a_blind_probe_keeps_the_clock_of_a_session_lock_across_backfill_batches(cli, make_db, limited_role, sql_dir,
                                                                                 pg):
    """attack24r 9 (MEDIUM): a session advisory lock taken before a backfill outlives each batch's COMMIT, but each
    batch restarted the blind clock (app 8.4 s, exit 0): the batches' clock runs from when the lock was taken."""
    db, migrate = backfill_run(cli, make_db, limited_role, sql_dir, pg)
    add_migration(sql_dir, "0002_bf", backfill(0.05).replace("-- backfill: batch", "SELECT pg_catalog.pg_advisory_lock("
                                                                                   "4242);\n-- backfill: batch"))
    line = one_error_line(migrate("--lock-retry-budget", "1s"))
    assert "0002_bf.sql:4:" in line and "the lock probe was blind" in line, line
    assert applied(db)[-1] != "0002_bf"


RECORD_WAITS = ("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE 'INSERT INTO%_hcm_migration_failure%'")


def hold_the_record_once_locked(db, held: list) -> None:
    """Once the backfill's first batch runs (the file's advisory lock taken before it), the runner's failure record
    of 0002_bf is held (a row lock) until its record of that batch has waited 1.6 s (its lock_timeout is 2 s): the
    migration session idle meanwhile."""
    deadline = time.monotonic() + 30
    while not db.poll("SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'UPDATE t_bf%'"):
        if time.monotonic() > deadline:
            return
        time.sleep(0.002)
    conn = connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM _hcm_migration_failure WHERE migration_id = '0002_bf' FOR UPDATE")
            held.append(cur.rowcount)
            while not db.poll(RECORD_WAITS) and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(1.6)
        conn.rollback()
    finally:
        conn.close()


def test_a_blind_backfill_holding_a_session_lock_is_ended_when_the_clock_runs_out_between_batches(
        cli, make_db, limited_role, sql_dir, pg):
    """attack24s 2 (HIGH, 2 of 8 blind runs; the test above failed 6 of 40 times under load): the clock's cancel
    reached the session between two of a backfill's round trips, idle (the server drops such a cancel), and was
    never sent again: the batches ran on unbounded while the session held the advisory lock (app 13-16 s, exit 0).
    Here the runner's record of the first batch waits past the try's bound, so the clock always runs out between
    batches: the next batch is not started."""
    db, migrate = backfill_run(cli, make_db, limited_role, sql_dir, pg)
    add_migration(sql_dir, "0002_bf", backfill(0.4).replace("-- backfill: batch", "SELECT pg_catalog.pg_advisory_lock("
                                                                                  "4242);\n-- backfill: batch"))
    held: list = []
    holder = threading.Thread(target=hold_the_record_once_locked, args=(db, held), daemon=True)
    holder.start()
    result = cli("migrate", "--ddl-lock-timeout", "2s", "--lock-retry-budget", "5s", "--sql-dir", sql_dir,
                 "--database-url", pg.url(db.name, user=limited_role, password=LIMITED_PASSWORD))
    holder.join(timeout=30)
    assert held == [1], held
    line = one_error_line(result)
    assert "0002_bf.sql:4:" in line and "the lock probe was blind" in line, line
    assert "not retried: the session still holds the advisory lock the file took at line 2" in line, line
    assert applied(db)[-1] != "0002_bf"
    assert db.query("SELECT count(*) FROM t_bf WHERE v IS NULL") == [(6,)]  # (the first batch's 2 rows: committed)


def test_a_blind_probe_leaves_short_backfill_batches_alone_however_many(cli, make_db, limited_role, sql_dir, pg):
    """Each batch's clock starts with it: 5 batches of 0.1 s (longer than the bound together) apply."""
    db, migrate = backfill_run(cli, make_db, limited_role, sql_dir, pg)
    add_migration(sql_dir, "0002_bf", backfill(0.05))
    result = migrate("--lock-retry-budget", "1s")
    assert result.exit_code == 0 and "ended by the runner" not in result.stderr, result.output
    assert db.query("SELECT count(*) FROM t_bf WHERE v IS NULL") == [(0,)]


@pytest.mark.parametrize("build", ["CREATE INDEX CONCURRENTLY i_norm ON t_idx (norm(v));",
                                   "REINDEX INDEX CONCURRENTLY i_norm;"], ids=["create", "reindex"])
def test_a_concurrent_build_whose_expression_locks_what_the_app_waits_on_is_ended(cli, db, sql_dir, seeded, build):
    """6 (seeing): CREATE INDEX CONCURRENTLY on an expression runs its functions per row; one (labelled IMMUTABLE)
    calling code that locks t_app held the app's INSERT for the build's whole life, exit 0: its holds are watched.
    attack24r 2 (HIGH): so does REINDEX ... CONCURRENTLY of such an index (was unwatched: app 5.7 s, exit 0)."""
    app_table(db)
    db.query("CREATE TABLE t_idx (v int); INSERT INTO t_idx VALUES (1);"
             "CREATE FUNCTION touch() RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
             "IF pg_catalog.current_setting('app.slow', true) = 'on' THEN "
             "LOCK TABLE public.t_app IN SHARE MODE; PERFORM pg_catalog.pg_sleep(15); END IF; RETURN 1; END $$;"
             "CREATE FUNCTION norm(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN "
             "PERFORM public.touch(); RETURN $1; END $$")
    if build.startswith("REINDEX"):
        db.query("CREATE INDEX i_norm ON t_idx (norm(v))")  # (quietly: app.slow is off)
    add_migration(sql_dir, "0002_idx", "-- transactional: false\nSET app.slow = 'on';\n" + build + "\n")
    app = App(db, ready=HOLDING.replace("AccessExclusiveLock", "ShareLock"), query="INSERT INTO t_app VALUES (3)")
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    app.join()
    assert app.error is None and app.rows == 1  # its wait ended long before the build's sleep could have
    line = one_error_line(result)
    assert result.exit_code == 1 and "0002_idx.sql:3: failed to apply" in line and "held" in line, line
    assert applied(db)[-1] != "0002_idx"


def test_a_blind_probe_keeps_the_clock_running_while_the_session_holds_an_advisory_lock(cli, make_db, limited_role,
                                                                                       sql_dir, pg):
    """7: a session-level advisory lock taken by a short statement is held across the file's later tries (the app's
    jobs wait on it); blind, the clock reset as each try committed, so a long try of harmless INSERTs ran on, exit 0.
    It runs on until the lock is released."""
    db, migrate = blind_run(cli, make_db, limited_role, sql_dir, pg)
    add_migration(sql_dir, "0002_lock", "-- transactional: false\nSELECT pg_catalog.pg_advisory_lock(4242);\n"
                                        "CREATE TABLE t_made (id int);\nBEGIN;\n" + inserts("t_made", note=False)
                  + "COMMIT;\nSELECT pg_catalog.pg_advisory_unlock(4242);\n")
    line = one_error_line(migrate("--lock-retry-budget", "1s"))
    assert "0002_lock.sql:" in line and "the lock probe was blind" in line, line
    assert applied(db)[-1] != "0002_lock"


def test_a_blind_try_ended_while_the_file_holds_a_session_advisory_lock_is_not_retried(cli, make_db, limited_role,
                                                                                      sql_dir, pg):
    """attack24s 5 (= attack24r 11): the session advisory lock outlives each try, so every retry was ended at once
    while the app waited on it for the whole retry budget: the first try ended is final, naming the lock's line."""
    db, migrate = blind_run(cli, make_db, limited_role, sql_dir, pg)
    add_migration(sql_dir, "0002_lock", "-- transactional: false\nSELECT pg_catalog.pg_advisory_lock(4242);\n"
                                        "CREATE TABLE t_made (id int);\nBEGIN;\n" + inserts("t_made", note=False)
                  + "COMMIT;\nSELECT pg_catalog.pg_advisory_unlock(4242);\n")
    result = migrate("--lock-retry-budget", "4s")
    line = one_error_line(result)
    assert "not retried: the session still holds the advisory lock the file took at line 2" in line, line
    assert "try 2" not in result.stderr and result.stderr.count("ended by the runner") == 1, result.stderr
    assert applied(db)[-1] != "0002_lock"


def test_a_blind_probe_lets_the_clock_reset_once_the_advisory_lock_is_released(cli, make_db, limited_role, sql_dir,
                                                                               pg):
    db, migrate = blind_run(cli, make_db, limited_role, sql_dir, pg)
    add_migration(sql_dir, "0002_lock", "-- transactional: false\nSELECT pg_catalog.pg_advisory_lock(4242);\n"
                                        "SELECT pg_catalog.pg_advisory_unlock(4242);\nBEGIN;\n"
                                        "CREATE TABLE t_made (id int);\n" + inserts("t_made", note=False) + "COMMIT;\n")
    result = migrate("--lock-retry-budget", "1s")
    assert result.exit_code == 0 and "ended by the runner" not in result.stderr, result.output
    assert applied(db)[-1] == "0002_lock"


CIC_WAITS = ("SELECT 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted "
             "AND l.locktype = 'virtualxid' AND a.query LIKE 'CREATE INDEX CONCURRENTLY%'")


# The file's own gate between its advisory lock and its build: until the app waits for that lock (at most 30 s).
APP_WAITS_FOR_THE_LOCK = ("DO $$ BEGIN FOR i IN 1..3000 LOOP EXIT WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_locks "
                          "WHERE locktype = 'advisory' AND objid = 4242 AND NOT granted); "
                          "PERFORM pg_catalog.pg_sleep(0.01); END LOOP; END $$;\n")
HELD = "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND granted"


def cancel_once_the_build_failed(db, pid: int) -> None:
    deadline = time.monotonic() + 30
    while not db.poll(CIC_WAITS) and time.monotonic() < deadline:
        time.sleep(0.005)
    while db.poll("SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'CREATE INDEX CONCURRENTLY%'"):
        if time.monotonic() > deadline:
            return
        time.sleep(0.005)
    db.poll("SELECT pg_catalog.pg_cancel_backend(%s)", (pid,))


def app_deadlocking_a_build(db, outcome: list, ready: threading.Event) -> None:
    """An application transaction the build waits out, which asks for the file's advisory lock once the file holds
    it: a deadlock once the build waits for its snapshot, which the build's own check finds. The file waits (its gate)
    until the app's request waits, so the cycle is whole before the build's wait begins: PostgreSQL checks a wait once,
    deadlock_timeout after it began (the runner's 100 ms), and an app asking later (a loaded machine: 1 run in 5) met
    the build's check already done: the app's own, 20 s on, then ended the app instead. Once the build failed, the
    app's wait is cancelled."""
    _app_in_a_snapshot(db, outcome, ready, HELD, "SELECT pg_catalog.pg_advisory_lock(4242)", cancel=True)


# The build's own slow step, in its build phase (1 s on t_dl's one row): the app asks for its table then.
SLOW_DL = ("CREATE FUNCTION slow_dl(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN "
           "PERFORM pg_catalog.pg_sleep(1); RETURN $1; END $$")
BUILDING = "SELECT 1 FROM pg_stat_progress_create_index WHERE phase LIKE 'building index%'"


def app_deadlocking_a_build_on_its_table(db, outcome: list, ready: threading.Event) -> None:
    """An application transaction (REPEATABLE READ: a snapshot the build waits out) that asks to ANALYZE the table
    while the build builds, so waits on the build's own SHARE UPDATE EXCLUSIVE (kept to its end): a deadlock once the
    build waits for that snapshot, which the build's check finds (the app's deadlock_timeout is 20 s). No session lock
    of the file's is in it (a retry then frees no one: attack24u 5, not retried), so the build is retried; once it
    failed its lock is gone, and the app's ANALYZE runs and it ends."""
    _app_in_a_snapshot(db, outcome, ready, BUILDING, "ANALYZE t_dl")


def _app_in_a_snapshot(db, outcome: list, ready: threading.Event, until: str, then: str, cancel: bool = False):
    """An application transaction in REPEATABLE READ (its snapshot: what a build waits out, deadlock_timeout 20 s)
    that runs `then` once `until` returns a row; `cancel`: that wait cancelled once the build failed."""
    conn = connect(db, application_name="hcm-app")
    try:
        conn.set_session(isolation_level="REPEATABLE READ")
        cur = conn.cursor()
        cur.execute("SET deadlock_timeout = '20s'; SELECT count(*) FROM t_dl")
        ready.set()
        deadline = time.monotonic() + 30
        while not db.poll(until):
            assert time.monotonic() < deadline, f"never came: {until}"
            time.sleep(0.005)
        if cancel:
            threading.Thread(target=cancel_once_the_build_failed, args=(db, conn.info.backend_pid), daemon=True).start()
        outcome.append(conn.info.backend_pid)
        cur.execute(then)
        outcome.append("done")
    except Exception as exc:  # (cancelled once the build lost: the app gives up, rolls back)
        outcome.append(type(exc).__name__)
    finally:
        conn.close()


def migrate_deadlocking_a_build(cli, db, sql_dir, env, app=app_deadlocking_a_build_on_its_table, said="deadlock"):
    """One migrate whose CONCURRENTLY build an application's transaction deadlocks (`app`: on the build's table, or
    on the file's session lock, app_deadlocking_a_build; `said`: in its lines, if given)."""
    outcome, ready = [], threading.Event()
    app = threading.Thread(target=app, args=(db, outcome, ready), daemon=True)
    app.start()
    assert ready.wait(10)
    result = cli("migrate", "--sql-dir", sql_dir, env=env)
    app.join(timeout=30)
    assert said is None or said in result.stderr, (outcome, result.output)
    return result


@pytest.mark.parametrize("name", ["idx_dl", "t_dl_v_idx"], ids=["named", "unnamed"])
def test_a_concurrent_build_retried_in_the_run_drops_the_invalid_index_its_try_left(cli, db, sql_dir, seeded, name):
    """9: a named CREATE INDEX CONCURRENTLY ended by a deadlock left its INVALID index; the in-run retry failed on
    "already exists" (exit 1, advice "IF NOT EXISTS": the trap of issue 24). It drops it and builds again. An
    unnamed one's retry built t_dl_v_idx1 beside the INVALID t_dl_v_idx (exit 1: an INVALID index left)."""
    db.query("CREATE TABLE t_dl (v int); INSERT INTO t_dl VALUES (1); " + SLOW_DL)
    add_migration(sql_dir, "0002_idx", "-- transactional: false\n"
                                       f"CREATE INDEX CONCURRENTLY {'' if name == 't_dl_v_idx' else name} ON t_dl (v) "
                                       "WHERE slow_dl(v) > 0;\n")
    result = migrate_deadlocking_a_build(cli, db, sql_dir, seeded)
    assert result.exit_code == 0, result.output
    assert "dropped INVALID index" in result.stderr and "already exists" not in result.stderr, result.stderr
    assert db.query("SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    "WHERE i.indrelid = 't_dl'::regclass") == [(name, True)]
    assert applied(db)[-1] == "0002_idx"


def _judge_after(conn, statements: list[str]) -> Judge:
    judge = Judge(conn, {})
    for text in statements:
        judge.bounded(text)
        with conn.cursor() as cursor:
            cursor.execute(text)
        judge.ran(text)
    return judge


def test_a_table_the_run_dropped_and_created_again_is_the_applications_once_committed(conn):
    """7 (second half): `DROP TABLE lk; CREATE TABLE lk` committed hands the application (which names lk) the new
    table: an INSERT into it was left off the blind clock, by its oid; the app's inserts of the same key waited on
    its rows. Only while the transaction that made it is open does nobody else know it; a new name stays the run's."""
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("CREATE TABLE lk (code text PRIMARY KEY)")  # the application's, before the run
    judge = _judge_after(conn, ["DROP TABLE lk", "CREATE TABLE lk (code text PRIMARY KEY)",
                                "CREATE TABLE fresh (code text PRIMARY KEY)"])
    assert judge.bounded("INSERT INTO lk VALUES ('b')")
    assert judge.bounded("INSERT INTO fresh VALUES ('b')")  # (attack24s 1: committed, a new name is the app's too)
    judge.new_try()
    judge = _judge_after(conn, ["BEGIN", "DROP TABLE lk", "CREATE TABLE lk (code text PRIMARY KEY)"])
    assert not judge.bounded("INSERT INTO lk VALUES ('b')")  # (its creating transaction is still open)
    for text in ("INSERT INTO lk VALUES ('b')", "COMMIT"):
        judge.bounded(text)
        with conn.cursor() as cursor:
            cursor.execute(text)
        judge.ran(text)
    assert judge.bounded("INSERT INTO lk VALUES ('c')")


SLOW = ("CREATE FUNCTION slow(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN "
        "PERFORM pg_catalog.pg_sleep(0.2); RETURN $1; END $$")


@pytest.mark.parametrize("setup,build,bounded", [
    ("", "CREATE INDEX CONCURRENTLY ON t (abs(v)) WHERE v > 0 AND lower(w) LIKE 'a%'", False),
    ("", "CREATE INDEX CONCURRENTLY ON t (w text_pattern_ops)", False),
    ("", "CREATE INDEX CONCURRENTLY ON t (v)", False),
    (SLOW, "CREATE INDEX CONCURRENTLY ON t (slow(v))", True),
    (SLOW, "CREATE INDEX CONCURRENTLY ON t (v) WHERE slow(v) > 0", True),
    ("CREATE FUNCTION abs(text) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 1'",  # a homonym of a built-in
     "CREATE INDEX CONCURRENTLY ON t (abs(v))", True),
    ("CREATE DOMAIN pos AS int CHECK (VALUE > 0)", "CREATE INDEX CONCURRENTLY ON t ((v::pos))", True),
], ids=["builtin-expression", "builtin-opclass", "plain", "user-function", "user-predicate", "homonym", "domain-cast"])
def test_the_blind_judge_bounds_a_concurrent_build_running_code_not_built_in(conn, setup, build, bounded):
    """4 (issue 24's open item after attack24q 6): blind, a CONCURRENTLY build was never on the clock, though one on
    an expression runs its functions per row (one may lock what the application waits on)."""
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("CREATE TABLE t (v int, w text)")
        if setup:
            cursor.execute(setup)
    assert Judge(conn, {}).bounded(build) is bounded


def test_a_blind_probe_ends_a_concurrent_build_running_user_code_and_drops_its_index(cli, make_db, limited_role,
                                                                                    sql_dir, pg):
    db, migrate = blind_run(cli, make_db, limited_role, sql_dir, pg)
    db.query(SLOW + "; INSERT INTO t_probe SELECT g FROM generate_series(2, 20) g")
    add_migration(sql_dir, "0002_idx", "-- transactional: false\nCREATE INDEX CONCURRENTLY i_slow ON t_probe "
                                       "(slow(id));\n")
    line = one_error_line(migrate("--lock-retry-budget", "1s"))
    assert "0002_idx.sql:2: failed to apply" in line and "the lock probe was blind" in line, line
    assert "the INVALID index its last try left was dropped" in line and "status` shows" not in line, line
    assert applied(db)[-1] != "0002_idx"
    assert db.query("SELECT count(*) FROM pg_index WHERE indrelid = 't_probe'::regclass") == [(0,)]


def test_the_blind_note_is_said_once_a_run(cli, make_db, limited_role, sql_dir, pg):
    """11 (LOW): the note that the probe is blind came again at each loss (4-9 times a run under a terminate loop)
    and for each file: once a run; each retry's and the final line still say it was blind."""
    db, migrate = blind_run(cli, make_db, limited_role, sql_dir, pg)
    for name in ("0002_a", "0003_b"):
        add_migration(sql_dir, name, "SELECT pg_catalog.pg_sleep(0.1);\n")
    result = migrate()
    assert result.exit_code == 0, result.output
    notes = [n for n in result.stderr.splitlines() if "the lock probe cannot see the migration session" in n]
    assert len(notes) == 1 and "too many connections" in notes[0], result.stderr


def test_a_validate_whose_check_locks_rows_the_app_writes_is_told_so_not_backfill(cli, db, sql_dir, seeded):
    """12 (LOW, seeing): a VALIDATE whose CHECK's function takes FOR SHARE row locks was ended "on rows it changed"
    with backfill advice; it changed none: its CHECK's function locked them. The app updates the row once the
    VALIDATE holds its lock (xmax set), not merely once it is active: in the first milliseconds, before its first
    row's check, the UPDATE went through unhindered, and the VALIDATE then ran its 15 s with no one waiting (applied,
    exit 0: flake24b 2)."""
    db.query("CREATE TABLE tenants (code text PRIMARY KEY, name text); INSERT INTO tenants VALUES ('a', 'A');"
             "CREATE FUNCTION tenant_ok(text) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN "
             "PERFORM 1 FROM public.tenants WHERE code = $1 FOR SHARE; PERFORM pg_catalog.pg_sleep(0.01); "
             "RETURN true; END $$;"
             "CREATE TABLE t_v (tenant text); INSERT INTO t_v SELECT 'a' FROM generate_series(1, 1500);"
             "ALTER TABLE t_v ADD CONSTRAINT k_tenant CHECK (tenant_ok(tenant)) NOT VALID")
    add_migration(sql_dir, "0002_validate", "ALTER TABLE t_v VALIDATE CONSTRAINT k_tenant;\n")
    locked = ("SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'hcm-db-migrations%' "
              "AND query LIKE 'ALTER TABLE t_v VALIDATE%' AND state = 'active' "
              "AND EXISTS (SELECT 1 FROM tenants WHERE code = 'a' AND xmax::text <> '0')")
    app = App(db, ready=locked, query="UPDATE tenants SET name = 'B' WHERE code = 'a'")
    result = cli("migrate", "--sql-dir", sql_dir, env=seeded)
    app.join()
    assert app.error is None and app.rows == 1, app.error  # (its wait ended long before its statement_timeout)
    line = one_error_line(result)
    assert "held row locks on public.tenants" in line and "on rows it locked" in line, line
    assert "it locks rows of public.tenants as it validates" in line, line
    assert "take the row locks out of its function" in line and "backfill" not in line, line
    assert "pg_cancel_backend" not in line, line  # (attack24r 6, MEDIUM: it sent the operator to cancel the app)
    assert applied(db)[-1] != "0002_validate"


def test_the_blind_judge_bounds_a_foreign_key_checked_row_by_row_for_want_of_select(conn):
    """attack24r 1 (HIGH): a migration role with only REFERENCES on the referenced table (least privilege): PostgreSQL
    validates row by row, locking every referenced row FOR KEY SHARE to the try's end (app 2.1 s, exit 0). With
    SELECT on both it is one query: still off the clock."""
    import uuid

    role = f"r_fk_{uuid.uuid4().hex[:8]}"
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(f"CREATE ROLE {role}; CREATE TABLE p (id int PRIMARY KEY); CREATE TABLE t (p int);"
                       f"ALTER TABLE t OWNER TO {role}; GRANT REFERENCES ON p TO {role};"
                       "ALTER TABLE t ADD CONSTRAINT k FOREIGN KEY (p) REFERENCES p NOT VALID;"
                       f"SET ROLE {role}")
    try:
        assert Judge(conn, {}).bounded("ALTER TABLE t VALIDATE CONSTRAINT k;")
        with conn.cursor() as cursor:
            cursor.execute(f"RESET ROLE; GRANT SELECT ON p TO {role}; SET ROLE {role}")
        assert not Judge(conn, {}).bounded("ALTER TABLE t VALIDATE CONSTRAINT k;")
    finally:
        with conn.cursor() as cursor:
            cursor.execute(f"RESET ROLE; DROP TABLE t, p; DROP ROLE {role}")


def test_a_table_the_run_created_is_the_applications_once_committed_a_trigger_may_write_it(conn):
    """attack24s 1: 0002 created report_stats and put a trigger on the application's table that upserts into it
    (committed); 0003's constant INSERTs into it were left off the blind clock: the app's UPDATEs waited on the
    seed's uncommitted keys (28 s, exit 0). Once the creating transaction commits, the table is the application's;
    a seed in the same transaction stays off the clock."""
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("CREATE TABLE app (id int PRIMARY KEY, name text)")
    created: dict = {}  # (kept for the run, across files: running.py)
    judge = Judge(conn, created)
    for text in ["BEGIN", "CREATE TABLE report_stats (report_id int PRIMARY KEY, hits int NOT NULL)",
                 "CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO report_stats VALUES "
                 "(NEW.id, 1) ON CONFLICT (report_id) DO UPDATE SET hits = report_stats.hits + 1; RETURN NEW; END $$",
                 "INSERT INTO report_stats VALUES (1, 0)",
                 "CREATE TRIGGER bump AFTER UPDATE ON app FOR EACH ROW EXECUTE FUNCTION bump()", "COMMIT"]:
        if text.startswith("INSERT"):
            assert not judge.bounded(text)  # (its creating transaction is open: the run's)
        judge.bounded(text)
        with conn.cursor() as cursor:
            cursor.execute(text)
        judge.ran(text)
    judge = Judge(conn, created)  # (the next file)
    assert judge.bounded("INSERT INTO report_stats VALUES (2, 0)")
