"""`-- backfill: batch` (issue 24): a statement repeated in committed batches until it touches no row."""

from __future__ import annotations

import re
import signal
import time

import pytest

from conftest import SEED, add_migration, applied, migrate, ok, one_error_line
from test_rewrites import FILL, TABLE

BACKFILL = (f"-- transactional: false\n"
            f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS ref uuid;\n"
            f"-- backfill: batch every 3\n"
            f"UPDATE {TABLE} SET ref = gen_random_uuid()\n"
            f"WHERE id IN (SELECT id FROM {TABLE} WHERE ref IS NULL ORDER BY id LIMIT 7);\n"
            f"ALTER TABLE {TABLE} ALTER COLUMN ref SET DEFAULT gen_random_uuid();\n")


def filled(cli, db, sql_dir, rows: int = 50) -> None:
    ok(migrate(cli, db, sql_dir, "--quiet"))
    db.query(FILL.format(table=TABLE, rows=rows) + f"; ANALYZE {TABLE}")
    # Each UPDATE statement's transaction, as the table sees it (a statement trigger fires for 0 rows too).
    db.query("CREATE TABLE batches (xid xid8, at timestamptz DEFAULT clock_timestamp());"
             "CREATE FUNCTION note_batch() RETURNS trigger LANGUAGE plpgsql AS "
             "$$ BEGIN INSERT INTO batches (xid) VALUES (pg_current_xact_id()); RETURN NULL; END $$;"
             f"CREATE TRIGGER note_batch AFTER UPDATE ON {TABLE} FOR EACH STATEMENT EXECUTE FUNCTION note_batch()")


def test_the_directive_repeats_the_update_in_committed_batches_with_progress_lines(cli, db, sql_dir):
    filled(cli, db, sql_dir)
    add_migration(sql_dir, "0002_ref", BACKFILL)
    result = ok(migrate(cli, db, sql_dir, "--rewrite-threshold-rows", "10"))  # a big table, and no refusal
    assert applied(db)[-1] == "0002_ref"
    assert db.query(f"SELECT count(*) FROM {TABLE} WHERE ref IS NULL") == [(0,)]
    # 50 rows by 7: 8 batches that touched rows and the one that touched none, each its own committed transaction
    assert db.query("SELECT count(DISTINCT xid), count(*) FROM batches") == [(9, 9)]
    progress = re.findall(r"0002_ref.sql:4: backfill( done)?: (\d+) row\(s\) in (\d+) committed", result.stderr)
    assert progress == [("", "21", "3"), ("", "42", "6"), (" done", "50", "9")], result.stderr
    assert db.query(f"SELECT column_default FROM information_schema.columns WHERE table_name = '{TABLE}' "
                    "AND column_name = 'ref'") == [("gen_random_uuid()",)]


def test_a_failing_batch_keeps_the_batches_committed_before_it_and_a_rerun_finishes(cli, db, sql_dir):
    filled(cli, db, sql_dir)
    db.query("CREATE FUNCTION stop_at_30() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
             "IF NEW.id = 30 AND current_setting('test.stop', true) IS DISTINCT FROM 'off' THEN "
             "RAISE EXCEPTION 'row 30 refused'; END IF; RETURN NEW; END $$;"
             f"CREATE TRIGGER stop_at_30 BEFORE UPDATE ON {TABLE} FOR EACH ROW EXECUTE FUNCTION stop_at_30()")
    add_migration(sql_dir, "0002_ref", BACKFILL)
    result = migrate(cli, db, sql_dir)
    assert result.exit_code == 1 and "row 30 refused" in one_error_line(result)
    assert db.query(f"SELECT count(*) FROM {TABLE} WHERE ref IS NOT NULL") == [(28,)]  # 4 batches of 7 committed
    db.query(f"ALTER DATABASE {db.name} SET test.stop = 'off'")
    ok(migrate(cli, db, sql_dir))
    assert db.query(f"SELECT count(*) FROM {TABLE} WHERE ref IS NULL") == [(0,)]


def test_the_directive_in_a_transactional_file_is_one_line_and_nothing_runs(cli, db, sql_dir):
    filled(cli, db, sql_dir)
    add_migration(sql_dir, "0002_first", "CREATE TABLE first_one (id int);\n")
    path = add_migration(sql_dir, "0003_ref", BACKFILL.replace("-- transactional: false\n", ""))
    error = one_error_line(migrate(cli, db, sql_dir))
    assert error.startswith(f"error: {path}:2: `-- backfill: batch every 3` repeats its statement in committed "
                            "batches, which a transactional file cannot do"), error
    assert "`-- transactional: false`" in error and "nothing was run" in error
    assert applied(db) == [SEED] and "first_one" not in db.tables()


def test_an_unbounded_or_misplaced_or_misspelled_directive_is_refused(cli, db, sql_dir):
    filled(cli, db, sql_dir)
    unbounded = BACKFILL.replace(f"WHERE id IN (SELECT id FROM {TABLE} WHERE ref IS NULL ORDER BY id LIMIT 7)",
                                 "WHERE ref IS NULL")
    add_migration(sql_dir, "0002_ref", unbounded)
    assert "must be an UPDATE or DELETE that touches a bounded batch" in one_error_line(migrate(cli, db, sql_dir))
    add_migration(sql_dir, "0002_ref", BACKFILL.replace("batch every 3", "batches"))
    assert "write `-- backfill: batch`" in one_error_line(migrate(cli, db, sql_dir))
    add_migration(sql_dir, "0002_ref", BACKFILL.replace("-- backfill: batch every 3\n", "") + "-- backfill: batch\n")
    assert "must come right before the UPDATE or DELETE" in one_error_line(migrate(cli, db, sql_dir))
    assert applied(db) == [SEED]


def test_a_directive_like_line_inside_a_function_body_is_not_a_directive(cli, db, sql_dir):
    filled(cli, db, sql_dir)
    add_migration(sql_dir, "0002_function", "CREATE FUNCTION touch() RETURNS void LANGUAGE sql AS $$\n"
                                            "-- backfill: batch\n"
                                            f"UPDATE {TABLE} SET dag_name = dag_name WHERE id = 1;\n$$;\n"
                                            "SELECT touch();\n")
    ok(migrate(cli, db, sql_dir))
    assert db.query("SELECT count(*) FROM batches") == [(1,)]  # the body ran once, from SELECT touch()


def test_sql_lint_reports_a_misused_directive_as_migrate_refuses_it(cli, db, sql_dir):
    path = add_migration(sql_dir, "0002_ref", BACKFILL.replace("-- transactional: false\n", ""))
    result = cli("sql", "lint", "--sql-dir", sql_dir)
    assert f"{path}:2:1: runner: `-- backfill: batch every 3` repeats its statement in committed batches" \
        in result.stdout, result.output
    assert result.exit_code != 0


def test_only_an_update_or_delete_bounded_by_the_parser_is_batched(cli, db, sql_dir):
    filled(cli, db, sql_dir)
    for name, statement in {
        "select_in_with": f"WITH x AS (SELECT id FROM {TABLE} LIMIT 10) SELECT count(*) FROM x;\n",
        "update_in_with": f"WITH u AS (UPDATE {TABLE} SET ref = gen_random_uuid() WHERE id IN (SELECT id FROM {TABLE} "
                          "WHERE ref IS NULL LIMIT 7) RETURNING 1) SELECT count(*) FROM u;\n",
        "limit_in_string": f"UPDATE {TABLE} SET ref = gen_random_uuid(), tenant_id = 'no limit' WHERE ref IS NULL;\n",
        "limit_in_comment": f"UPDATE {TABLE} SET ref = gen_random_uuid() /* LIMIT */ WHERE ref IS NULL;\n",
    }.items():
        add_migration(sql_dir, "0002_ref", f"-- transactional: false\nALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS "
                                           f"ref uuid;\n-- backfill: batch\n{statement}")
        line = one_error_line(migrate(cli, db, sql_dir))
        assert "must be an UPDATE or DELETE that touches a bounded batch" in line, (name, line)
    assert applied(db) == [SEED]


def test_a_limit_over_another_table_or_column_is_not_a_bounded_batch(cli, db, sql_dir):
    """A LIMIT on the tenants list bounds tenants, not rows: one "batch" would touch every row of theirs."""
    filled(cli, db, sql_dir)
    for name, where in {
        "other_table": "tenant_id IN (SELECT tenant_id FROM tenants ORDER BY 1 LIMIT 50)",
        "other_column": f"id IN (SELECT other_id FROM {TABLE} LIMIT 50)",
        "under_or": f"ref IS NULL OR id IN (SELECT id FROM {TABLE} WHERE ref IS NULL LIMIT 7)",
    }.items():
        add_migration(sql_dir, "0002_ref", f"-- transactional: false\nALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS "
                                           f"ref uuid;\n-- backfill: batch\nUPDATE {TABLE} SET ref = gen_random_uuid() "
                                           f"WHERE ref IS NULL AND {where};\n")
        line = one_error_line(migrate(cli, db, sql_dir))
        assert "must be an UPDATE or DELETE that touches a bounded batch of its own table's rows" in line, (name, line)
        assert "a LIMIT over another table bounds that table's rows" in line
    assert applied(db) == [SEED] and db.query("SELECT count(*) FROM batches") == [(0,)]


def test_the_ctid_batch_pattern_is_accepted_and_batches(cli, db, sql_dir):
    filled(cli, db, sql_dir)
    add_migration(sql_dir, "0002_ref", BACKFILL.replace(
        f"WHERE id IN (SELECT id FROM {TABLE} WHERE ref IS NULL ORDER BY id LIMIT 7)",
        f"WHERE ctid = ANY(ARRAY(SELECT ctid FROM public.{TABLE} WHERE ref IS NULL LIMIT 7))"))
    ok(migrate(cli, db, sql_dir))
    assert db.query(f"SELECT count(*) FROM {TABLE} WHERE ref IS NULL") == [(0,)]
    assert db.query("SELECT count(DISTINCT xid) FROM batches") == [(9,)]  # 50 rows by 7, and the empty last one


# Each batch sets one row of 60: 60 batches that touch a row, so without a limit it ends, late; with one it stops
# at the limit. (A batch picking a row it did again is no progress: see the tests at the end.)
SLOW_LOOP = ("-- transactional: false\n"
             "{directive}\n"
             "UPDATE loop_t SET n = 1 WHERE id IN (SELECT id FROM loop_t WHERE n = 0 ORDER BY id LIMIT 1);\n")


def looping(cli, db, sql_dir, directive: str) -> None:
    ok(migrate(cli, db, sql_dir, "--quiet"))
    db.query("CREATE TABLE loop_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);"
             "INSERT INTO loop_t (id) SELECT generate_series(1, 60)")
    add_migration(sql_dir, "0002_loop", SLOW_LOOP.format(directive=directive))


def test_a_backfill_still_touching_rows_after_its_most_batches_stops_in_one_line(cli, db, sql_dir):
    looping(cli, db, sql_dir, "-- backfill: batch")
    result = cli("migrate", "--sql-dir", sql_dir, env={**db.db_env(), "BACKFILL_MAX_BATCHES": "5"})
    line = one_error_line(result)
    assert result.exit_code == 1
    assert "0002_loop.sql:3: failed to apply" in line, line
    assert "`-- backfill: batch` at line 3 ran 5 committed batches (5 rows)" in line
    assert "`-- backfill: batch max N` or BACKFILL_MAX_BATCHES (now 5)" in line and "its WHERE" in line
    assert db.query("SELECT sum(n) FROM loop_t") == [(5,)]  # the 5 batches stay committed
    assert applied(db) == [SEED]


def test_the_directive_s_own_max_wins_over_the_setting(cli, db, sql_dir):
    looping(cli, db, sql_dir, "-- backfill: batch every 2 max 3")
    result = cli("migrate", "--sql-dir", sql_dir, env={**db.db_env(), "BACKFILL_MAX_BATCHES": "1000"})
    assert "ran 3 committed batches" in one_error_line(result) and "(now 3)" in result.stderr
    assert db.query("SELECT sum(n) FROM loop_t") == [(3,)]
    # a limit the backfill fits in: it runs to the end
    add_migration(sql_dir, "0002_loop", SLOW_LOOP.format(directive="-- backfill: batch max 100"))
    ok(migrate(cli, db, sql_dir))
    assert db.query("SELECT sum(n) FROM loop_t") == [(60,)]
    assert applied(db)[-1] == "0002_loop"


def test_a_bad_backfill_max_batches_setting_is_one_line(cli, db, sql_dir):
    result = cli("config", env={**db.db_env(), "BACKFILL_MAX_BATCHES": "0"})
    assert result.exit_code == 2 and "BACKFILL_MAX_BATCHES (environment): '0' is not a number of batches" in (
        one_error_line(result))


@pytest.mark.parametrize("bound,named", [
    (f"id IN (SELECT id FROM {TABLE} TABLESAMPLE SYSTEM (50) WHERE ref IS NULL)", "TABLESAMPLE"),
    (f"id IN (SELECT id FROM {TABLE} WHERE ref IS NULL LIMIT 7 FOR UPDATE SKIP LOCKED)", "SKIP LOCKED"),
    (f"id IN (SELECT id FROM {TABLE} WHERE ref IS NULL ORDER BY id LIMIT 7 OFFSET 45)", "OFFSET"),
    (f"id IN (SELECT id FROM {TABLE} WHERE ref IS NULL AND random() < 0.5 LIMIT 7)", "random()")],
    ids=["tablesample", "skip-locked", "offset", "random"])
def test_a_bound_that_can_pick_no_row_while_rows_remain_is_refused(cli, db, sql_dir, bound, named):
    """An empty batch proves the backfill done only when the bound picks every remaining row in turn: a sample of
    pages, rows the application holds (SKIP LOCKED), an OFFSET past the rows left or a coin toss can pick none
    while rows remain (attack24c item 1: "backfill done", applied, 22,137 rows still NULL)."""
    filled(cli, db, sql_dir)
    path = add_migration(sql_dir, "0002_ref", BACKFILL.replace(
        f"WHERE id IN (SELECT id FROM {TABLE} WHERE ref IS NULL ORDER BY id LIMIT 7)", f"WHERE {bound}"))
    line = one_error_line(migrate(cli, db, sql_dir))
    assert line.startswith(f"error: {path}:3: `-- backfill: batch every 3`: the statement at line 4 bounds its "
                           f"batch with {named}, which can pick no row while rows remain"), line
    assert "use WHERE id IN (SELECT id FROM <its table> WHERE <not done> LIMIT 5000)" in line
    assert "nothing was run" in line and applied(db) == [SEED]
    assert db.query("SELECT count(*) FROM batches") == [(0,)]


def test_an_empty_batch_while_its_subquery_still_picks_rows_is_not_done(cli, db, sql_dir):
    """A condition outside the subquery: the first batch's 7 rows include some of tenant t1, the next picks the
    same 7 (the others are still NULL) and touches none, though t1's rows beyond them remain."""
    filled(cli, db, sql_dir)
    add_migration(sql_dir, "0002_ref", BACKFILL.replace("ORDER BY id LIMIT 7)", "ORDER BY id LIMIT 7) AND tenant_id = 't1'"))
    result = migrate(cli, db, sql_dir)
    line = one_error_line(result)
    assert result.exit_code == 1 and "0002_ref.sql:4: failed to apply" in line, line
    assert "its last batch touched no row, yet its subquery still picks rows, so rows remain to do" in line
    assert "put the whole not-done condition inside it" in line
    assert "backfill done" not in result.stderr and applied(db) == [SEED]
    assert db.query(f"SELECT count(*) FROM {TABLE} WHERE tenant_id = 't1' AND ref IS NULL")[0][0] > 0


def test_a_batch_bound_on_a_column_that_is_no_key_is_refused_before_anything_runs(cli, db, sql_dir):
    """`tenant_id IN (SELECT tenant_id ... LIMIT 7)`: each "batch" is every row of the tenants picked, again and
    again as rows come in (attack24d: rows changed 3+ times, app max 5.8 s). Only a key (or ctid) bounds a batch."""
    filled(cli, db, sql_dir)
    path = add_migration(sql_dir, "0002_ref", BACKFILL.replace(
        f"WHERE id IN (SELECT id FROM {TABLE} WHERE ref IS NULL ORDER BY id LIMIT 7)",
        f"WHERE tenant_id IN (SELECT tenant_id FROM {TABLE} WHERE ref IS NULL LIMIT 7)"))
    line = one_error_line(migrate(cli, db, sql_dir))
    assert line.startswith(f"error: {path}:4: `-- backfill: batch` at line 4 bounds its batch by tenant_id, which is "
                           f"no key of public.{TABLE}"), line
    assert "WHERE id IN (SELECT id FROM <its table> WHERE <not done> LIMIT 5000) with id its primary key" in line
    assert "nothing was run" in line and applied(db) == [SEED]
    assert db.query("SELECT count(*) FROM batches") == [(0,)]
    assert "ref" not in [c for (c,) in db.query(f"SELECT column_name FROM information_schema.columns "
                                                f"WHERE table_name = '{TABLE}'")]


def test_a_non_key_bound_on_a_table_the_run_creates_stops_before_its_first_batch(cli, db, sql_dir):
    filled(cli, db, sql_dir)
    add_migration(sql_dir, "0002_new", "CREATE TABLE fresh (id int, grp int, done bool DEFAULT false);\n"
                                       "INSERT INTO fresh SELECT g, g % 3 FROM generate_series(1, 20) g;\n")
    add_migration(sql_dir, "0003_fill", "-- transactional: false\n-- backfill: batch\nUPDATE fresh SET done = true "
                                        "WHERE grp IN (SELECT grp FROM fresh WHERE NOT done LIMIT 5);\n")
    result = migrate(cli, db, sql_dir)
    line = one_error_line(result)
    assert result.exit_code == 1 and "0003_fill.sql:3: failed to apply" in line, line
    assert "bounds its batch by grp, which is no key of \"fresh\"" in line and "the statement did not run" in line
    assert applied(db) == [SEED, "0002_new"] and db.query("SELECT count(*) FROM fresh WHERE done") == [(0,)]


@pytest.mark.parametrize("limit,named", [("ALL", "LIMIT ALL"), ("1000000", "LIMIT 1000000 (more than 100000 rows"),
                                         ("(SELECT 7)", "a LIMIT that is no number")])
def test_a_limit_that_bounds_nothing_is_refused(cli, db, sql_dir, limit, named):
    filled(cli, db, sql_dir)
    path = add_migration(sql_dir, "0002_ref", BACKFILL.replace("ORDER BY id LIMIT 7", f"ORDER BY id LIMIT {limit}"))
    line = one_error_line(migrate(cli, db, sql_dir))
    assert line.startswith(f"error: {path}:3: `-- backfill: batch every 3`: the statement at line 4 bounds its batch "
                           f"with {named}"), line
    assert "use at most LIMIT 100000" in line and "nothing was run" in line and applied(db) == [SEED]


def test_a_failing_backfill_says_how_many_batches_committed_and_status_shows_it_partly_applied(cli, db, sql_dir):
    """attack24d BF2: batch 5 fails after 4 committed batches; the line said "no statement of it committed" and
    status "pending" though 28 rows were committed."""
    filled(cli, db, sql_dir)
    db.query(f"ALTER TABLE {TABLE} ADD COLUMN ref uuid;"
             "CREATE FUNCTION stop_at_30() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
             "IF NEW.id = 30 THEN RAISE EXCEPTION 'row 30 refused'; END IF; RETURN NEW; END $$;"
             f"CREATE TRIGGER stop_at_30 BEFORE UPDATE ON {TABLE} FOR EACH ROW EXECUTE FUNCTION stop_at_30()")
    add_migration(sql_dir, "0002_ref", "-- transactional: false\n" + BACKFILL.split(";\n", 1)[1])
    line = one_error_line(migrate(cli, db, sql_dir))
    assert "the backfill at line 3 COMMITTED 28 row(s) in 4 batch(es)" in line, line
    assert "no statement of it committed" not in line
    assert db.query(f"SELECT count(*) FROM {TABLE} WHERE ref IS NOT NULL") == [(28,)]
    status = cli("status", "--sql-dir", sql_dir, env=db.db_env()).output
    assert "0002_ref" in status and "pending, PARTLY applied" in status, status


def sigtermed_after(db, sql_dir, batches: int) -> str:
    """A migrate SIGTERMed once `batches` batches committed (the `batches` table counts them): its stderr."""
    from test_progress import runner

    proc = runner("migrate", "--sql-dir", sql_dir, "--database-url", db.url)
    try:
        for _ in range(300):
            if db.poll("SELECT count(*) FROM batches")[0][0] >= batches:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    return err


def test_a_sigtermed_backfill_says_how_many_batches_committed(db, sql_dir, cli):
    filled(cli, db, sql_dir)
    db.query(f"ALTER TABLE {TABLE} ADD COLUMN ref uuid;"
             "CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.05); "
             f"RETURN NEW; END $$; CREATE TRIGGER slow_row BEFORE UPDATE ON {TABLE} FOR EACH ROW EXECUTE FUNCTION "
             "slow_row()")
    add_migration(sql_dir, "0002_ref", "-- transactional: false\n" + BACKFILL.split(";\n", 1)[1])
    err = sigtermed_after(db, sql_dir, 3)
    found = re.search(r"the backfill at line 3 COMMITTED (\d+) row\(s\) in (\d+) batch\(es\)", err)
    assert found and "no statement of it committed" not in err, err
    done = db.query(f"SELECT count(*) FROM {TABLE} WHERE ref IS NOT NULL")[0][0]
    assert int(found[1]) <= done <= int(found[1]) + 7 and int(found[2]) >= 3, (done, err)
    status = cli("status", "--sql-dir", sql_dir, env=db.db_env()).output
    assert "pending, PARTLY applied" in status, status


def test_a_bound_naming_the_outer_statement_s_table_is_refused_before_anything_runs(cli, db, sql_dir):
    """attack24d bf2/corr: `... AND x.tenant_id = m.tenant_id LIMIT ...`: the done check runs the subquery alone."""
    filled(cli, db, sql_dir)
    path = add_migration(sql_dir, "0002_ref", BACKFILL.replace(
        f"UPDATE {TABLE} SET", f"UPDATE {TABLE} m SET").replace(
        f"WHERE id IN (SELECT id FROM {TABLE} WHERE ref IS NULL ORDER BY id LIMIT 7)",
        f"WHERE id IN (SELECT id FROM {TABLE} x WHERE x.ref IS NULL AND x.tenant_id = m.tenant_id LIMIT 7)"))
    line = one_error_line(migrate(cli, db, sql_dir))
    assert line.startswith(f"error: {path}:3: `-- backfill: batch every 3`: the subquery bounding the statement at "
                           "line 4 names m, a table outside it, so it cannot run alone"), line
    assert "nothing was run" in line and applied(db) == [SEED]


def test_a_done_check_that_cannot_run_is_one_line_saying_the_batches_committed(cli, db, sql_dir):
    """An unqualified column of the statement's FROM table in the subquery: the batches run, the check cannot."""
    filled(cli, db, sql_dir)
    db.query(f"ALTER TABLE {TABLE} ADD COLUMN ref uuid; CREATE TABLE pick (tname text); INSERT INTO pick VALUES ('t1')")
    add_migration(sql_dir, "0002_ref", f"-- transactional: false\n-- backfill: batch\nUPDATE {TABLE} SET ref = "
                                       f"gen_random_uuid() FROM pick WHERE id IN (SELECT id FROM {TABLE} x WHERE "
                                       "x.ref IS NULL AND x.tenant_id = tname LIMIT 7);\n")
    result = migrate(cli, db, sql_dir)
    line = one_error_line(result)
    t1 = db.query(f"SELECT count(*) FROM {TABLE} WHERE tenant_id = 't1'")[0][0]
    assert result.exit_code == 1 and "the check that no row is left (its subquery run alone) could not run: " \
        'column "tname" does not exist' in line, line
    assert f"the backfill at line 3 COMMITTED {t1} row(s) in" in line and applied(db) == [SEED]
    assert db.query(f"SELECT count(*) FROM {TABLE} WHERE ref IS NOT NULL") == [(t1,)]


REGION = (f"-- transactional: false\n-- backfill: batch{{every}}\nUPDATE {TABLE} SET region = upper(tenant_id)\n"
          f"WHERE id IN (SELECT id FROM {TABLE} WHERE region IS NULL{{order}} LIMIT {{limit}});\n")


def test_a_backfill_whose_update_leaves_rows_picked_stops_at_a_checked_batch_in_one_line(cli, db, sql_dir):
    """attack24p 2: rows whose source is NULL stay picked (region stays NULL): before, every batch rewrote them
    again, up to BACKFILL_MAX_BATCHES (here 200: "ran 200 committed batches"; 100,000 by default, hours)."""
    filled(cli, db, sql_dir)
    db.query(f"ALTER TABLE {TABLE} ADD COLUMN region text; UPDATE {TABLE} SET tenant_id = NULL WHERE id IN (10, 11);"
             "DELETE FROM batches")
    add_migration(sql_dir, "0002_region", REGION.format(every="", order=" ORDER BY id", limit=7))
    result = cli("migrate", "--sql-dir", sql_dir, env={**db.db_env(), "BACKFILL_MAX_BATCHES": "200"})
    line = one_error_line(result)
    assert result.exit_code == 1 and "0002_region.sql:3: failed to apply" in line, line
    # batch 1: ids 1-7; batch 2: ids 8-14, of which 10 and 11 stay NULL and are picked again
    assert "`-- backfill: batch` at line 3 makes no progress: its WHERE picks again 2 row(s) its batch 2 updated " \
           "(id 10 among them)" in line, line
    assert "make the subquery's WHERE leave out the rows the UPDATE cannot finish (e.g. AND <its source> IS NOT " \
           "NULL)" in line
    assert "the backfill at line 3 COMMITTED 14 row(s) in 2 batch(es)" in line
    assert db.query("SELECT count(*) FROM batches") == [(2,)] and applied(db) == [SEED]
    # the source fixed in the file: the rerun goes on and finishes
    add_migration(sql_dir, "0002_region", REGION.format(every="", order=" AND tenant_id IS NOT NULL ORDER BY id",
                                                        limit=7))
    ok(migrate(cli, db, sql_dir))
    assert db.query(f"SELECT count(*) FROM {TABLE} WHERE region IS NULL") == [(2,)]


def test_no_progress_line_counts_past_the_table_s_rows(cli, db, sql_dir):
    """The repro's shape: no ORDER BY, 3 NULL sources among 300 rows, each picked again only once the scan has
    passed the rest. Before: progress lines went on counting (301000 rows on a 300,000-row table) to the limit."""
    filled(cli, db, sql_dir, rows=300)
    db.query(f"ALTER TABLE {TABLE} ADD COLUMN region text; UPDATE {TABLE} SET tenant_id = NULL WHERE id % 100 = 0;"
             f"ANALYZE {TABLE}")
    add_migration(sql_dir, "0002_region", REGION.format(every=" every 1", order="", limit=20))
    result = cli("migrate", "--sql-dir", sql_dir, env={**db.db_env(), "BACKFILL_MAX_BATCHES": "100"})
    line = one_error_line(result)
    assert result.exit_code == 1 and "makes no progress: its WHERE picks again" in line, line
    counted = [int(rows) for rows in re.findall(r"backfill: (\d+) row\(s\)", result.stderr)]
    assert counted and max(counted) <= 300, counted
    assert db.query(f"SELECT count(*) FROM {TABLE} WHERE region IS NULL") == [(3,)]


def test_a_backfill_rerun_says_what_this_run_committed_and_the_record_adds_up_all_runs(cli, db, sql_dir):
    """attack24p 3: the second run committed 2 more batches, then said "this run committed none of its
    statements" and recorded its own 2 batches only, forgetting the first run's (status: 14 rows, 28 done)."""
    filled(cli, db, sql_dir)
    db.query(f"ALTER TABLE {TABLE} ADD COLUMN ref uuid")
    add_migration(sql_dir, "0002_ref", "-- transactional: false\n" + BACKFILL.split(";\n", 1)[1].replace(
        "batch every 3", "batch max 2"))
    first = one_error_line(migrate(cli, db, sql_dir))
    assert "the backfill at line 3 COMMITTED 14 row(s) in 2 batch(es) (no statement before it)" in first, first
    second = one_error_line(migrate(cli, db, sql_dir))
    assert "this run committed none" not in second, second
    assert "the backfill at line 3 COMMITTED 14 row(s) in 2 batch(es) in this run, 28 row(s) in 4 batch(es) in all " \
           "runs" in second, second
    assert db.query(f"SELECT count(*) FROM {TABLE} WHERE ref IS NOT NULL") == [(28,)]
    status = cli("status", "--sql-dir", sql_dir, env=db.db_env()).output
    assert "pending, PARTLY applied" in status and "the backfill at line 3 COMMITTED 28 row(s) in 4 batch(es) in all " \
           "runs" in status, status
    third = one_error_line(migrate(cli, db, sql_dir))  # and a third run adds to the total again
    assert "14 row(s) in 2 batch(es) in this run, 42 row(s) in 6 batch(es) in all runs" in third, third
    add_migration(sql_dir, "0002_ref", "-- transactional: false\n" + BACKFILL.split(";\n", 1)[1])
    ok(migrate(cli, db, sql_dir))
    assert db.query(f"SELECT count(*) FROM {TABLE} WHERE ref IS NULL") == [(0,)] and applied(db)[-1] == "0002_ref"


def test_a_sigtermed_rerun_s_record_adds_its_batches_to_the_earlier_runs(db, sql_dir, cli):
    """The record written as each batch commits (what a SIGTERM or SIGKILL leaves) counts the earlier runs' too."""
    filled(cli, db, sql_dir)
    db.query(f"ALTER TABLE {TABLE} ADD COLUMN ref uuid")
    add_migration(sql_dir, "0002_ref", "-- transactional: false\n" + BACKFILL.split(";\n", 1)[1].replace(
        "batch every 3", "batch max 2"))
    assert "COMMITTED 14 row(s) in 2 batch(es)" in one_error_line(migrate(cli, db, sql_dir))
    db.query("CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.05); "
             f"RETURN NEW; END $$; CREATE TRIGGER slow_row BEFORE UPDATE ON {TABLE} FOR EACH ROW EXECUTE FUNCTION "
             "slow_row(); DELETE FROM batches")
    add_migration(sql_dir, "0002_ref", "-- transactional: false\n" + BACKFILL.split(";\n", 1)[1])
    err = sigtermed_after(db, sql_dir, 2)
    done = db.query(f"SELECT count(*) FROM {TABLE} WHERE ref IS NOT NULL")[0][0]
    batches = db.query("SELECT count(*) FROM batches")[0][0]
    status = cli("status", "--sql-dir", sql_dir, env=db.db_env()).output
    found = re.search(r"the backfill at line 3 COMMITTED (\d+) row\(s\) in (\d+) batch\(es\) in all runs", status)
    assert found and "pending, PARTLY applied" in status, status
    # this run's batches (the one SIGTERM cut may or may not have committed) on top of the first run's 2
    assert int(found[2]) >= 4 and done - 7 <= int(found[1]) <= done and int(found[2]) <= 2 + batches, (found, done)
    assert "this run committed none" not in err, err
