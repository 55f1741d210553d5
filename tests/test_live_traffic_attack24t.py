"""attack24t's findings on CONCURRENTLY builds, against the real PostgreSQL: an unnamed build on an expression
(`lower(report_name)`) interrupted by SIGTERM (its INVALID index) or SIGKILL (finished by the server), with and
without the TEMPORARY privilege (5); status's word on an INVALID index under a pending build's name agrees with
what migrate then does (8). The server's own name for every unnamed build is what the runner reads off the text.
"""

import pytest
from pglast import parse_sql

from conftest import PASSWORD_USER, SEED, add_migration, applied, one_error_line
from test_live_traffic import (connect, kill_mid_build_and_let_the_server_finish_it, seeded,  # noqa: F401
                               sigterm_while_waiting_for_old_snapshots)
from test_live_traffic_attack24r import no_temp  # noqa: F401 (a fixture)
from test_live_traffic_blind_attack24q import SLOW_DL, migrate_deadlocking_a_build

EXPR = "-- transactional: false\nCREATE INDEX CONCURRENTLY ON hcm_report_metadata (lower(report_name));\n"
LOWER = "hcm_report_metadata_lower_idx"
LOWER_INDEXES = ("SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE "
                 "i.indrelid = 'hcm_report_metadata'::regclass AND pg_get_indexdef(i.indexrelid) LIKE '%lower(%' "
                 "ORDER BY 1")


@pytest.fixture(params=["temp", "no-temp"])
def where(request, db, seeded):
    """(db, the runner's env): the migration role may create temporary tables, or may not (attack24r 7)."""
    if request.param == "temp":
        return db, seeded
    return request.getfixturevalue("no_temp")


@pytest.mark.parametrize("interrupt, left, said", [
    (sigterm_while_waiting_for_old_snapshots, False, f"dropped INVALID index public.{LOWER}, left by an earlier try"),
    (kill_mid_build_and_let_the_server_finish_it, True, f"index public.{LOWER} is already built and valid")],
    ids=["SIGTERM", "SIGKILL"])
def test_an_interrupted_unnamed_expression_build_is_finished_by_the_rerun(cli, where, sql_dir, interrupt, left, said):
    """attack24t 5: the server's name for an expression column (`lower`) was not guessed: SIGTERM's INVALID
    leftover stayed beside a new `_lower_idx1` (status --exit-code 1 for good); after SIGKILL the rerun built a
    duplicate and called the server's finished build drift made outside migrations (--strict: exit 5)."""
    db, env = where
    add_migration(sql_dir, "0002_expr", EXPR)
    interrupt(db, sql_dir, env)
    assert db.query(LOWER_INDEXES) == [(LOWER, left)] and applied(db) == [SEED]
    status = cli("status", "--sql-dir", sql_dir, env=env)
    if left:
        assert "DRIFT" not in status.output and "made outside migrations" not in status.output, status.output
    else:
        assert (f"INVALID index public.{LOWER} on hcm_report_metadata (left by an earlier try of pending 0002_expr's "
                "CONCURRENTLY build): `runner.py migrate` drops it and builds it again") in status.stdout, status.stdout
    rerun = cli("migrate", "--strict", "--sql-dir", sql_dir, env=env)
    assert rerun.exit_code == 0, rerun.output
    assert said in rerun.stderr and "DRIFT" not in rerun.stderr, rerun.stderr
    assert db.query(LOWER_INDEXES) == [(LOWER, True)]  # no `_lower_idx1` beside it
    assert applied(db) == [SEED, "0002_expr"]
    assert cli("status", "--exit-code", "--sql-dir", sql_dir, env=env).exit_code == 0


DAG_RUN = "idx_hcm_report_dag_run"
IFNE = (f"-- transactional: false\nCREATE INDEX CONCURRENTLY IF NOT EXISTS {DAG_RUN} ON hcm_report_metadata "
        "(dag_run_id);\n")


@pytest.mark.parametrize("definition, dropped", [("(dag_run_id)", True), ("(dag_name, campaign_number)", False),
                                                 ("(lower(dag_run_id))", False)],
                         ids=["same", "other-columns", "other-expression"])
def test_status_says_what_migrate_does_with_an_invalid_index_under_a_pending_builds_name(cli, where, sql_dir,
                                                                                         definition, dropped):
    """attack24t 8: a DBA's cancelled build (INVALID) holds the name a pending IF NOT EXISTS build gives its
    index. status said the rerun "drops it and builds it again" whatever its definition; migrate then refused
    one of another definition. Both compare the definition now, and say the same."""
    db, env = where
    db.query(f"CREATE INDEX {DAG_RUN} ON hcm_report_metadata {definition}; "
             f"UPDATE pg_index SET indisvalid = false WHERE indexrelid = '{DAG_RUN}'::regclass")
    add_migration(sql_dir, "0002_idx", IFNE)
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code != 0  # IF NOT EXISTS skipped it: not recorded
    status = cli("status", "--exit-code", "--sql-dir", sql_dir, env=env)
    assert status.exit_code != 0
    (line,) = [line for line in status.stdout.splitlines() if f"INVALID index public.{DAG_RUN}" in line]
    rerun = cli("migrate", "--sql-dir", sql_dir, env=env)
    if dropped:
        assert "`runner.py migrate` drops it and builds it again" in line, line
        assert rerun.exit_code == 0, rerun.output
        assert f"dropped INVALID index public.{DAG_RUN}" in rerun.stderr
        assert applied(db) == [SEED, "0002_idx"]
    else:
        assert "drops it" not in line and "not what pending 0002_idx's CONCURRENTLY build makes" in line, line
        assert "migrate will not drop it" in line and f"DROP INDEX CONCURRENTLY public.{DAG_RUN}" in line, line
        assert f"an INVALID index public.{DAG_RUN} is in the way" in one_error_line(rerun)
        assert applied(db) == [SEED]


NAMED_AS = ["lower(a)", "(a::text)", "(b + 1)", "nullif(b, 2)", "(CASE WHEN b > 0 THEN c END)",
            "(CASE WHEN b > 0 THEN c ELSE upper(c) END)", "greatest(b, 2)", "(ARRAY[b])", "coalesce(a, 'x')",
            "('x'::text)", "(b::text::int)", "(c COLLATE \"C\")", "lower(a), lower(c)", "lower(a), (b + 1), (b + 2)",
            "pg_catalog.lower(a)", "((a))", "(x[1])", "(j ->> 'k')", "((j -> 'k')::text)", "(d AT TIME ZONE 'UTC')",
            "substring(c FROM 1 FOR 2)", "(b IS NULL)", "(trim(c))", "(b::numeric(10, 2))", "a, a", "(a::text), a",
            "(upper(a)) INCLUDE (c)"]


@pytest.mark.parametrize("unique", ["", "UNIQUE "], ids=["plain", "unique"])
def test_the_server_names_each_unnamed_build_as_the_runner_reads_it(db, unique):
    """ChooseIndexName's choice, read off the statement alone (no temporary copy: status, a role without TEMP).
    Before, only plain columns were named, and a UNIQUE build was guessed `_key` (the server says `_idx`)."""
    from migrator.postgres import index_names

    db.query("CREATE TABLE tt (a varchar(10), b int, c text, d timestamptz, j jsonb, x int[])")
    for columns in NAMED_AS:
        statement = f"CREATE {unique}INDEX ON tt ({columns})" if "INCLUDE" not in columns else \
            f"CREATE {unique}INDEX ON tt {columns}"
        db.query(statement)
        (name,), = db.query("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                            "WHERE i.indrelid = 'tt'::regclass")
        assert index_names.chosen(parse_sql(statement)[0].stmt, "tt") == name, statement
        db.query(f"DROP INDEX {name}")


def test_status_does_not_promise_a_drop_it_cannot_compare_without_building(cli, where, sql_dir):
    """Another expression of the same shape (one key, an expression: only building it tells): status's read-only
    session builds nothing, so it says the rerun compares (migrate does: on a temporary copy, or without TEMP it
    refuses what it cannot compare), never "drops it"."""
    db, env = where
    db.query(f"CREATE INDEX {DAG_RUN} ON hcm_report_metadata (upper(dag_run_id)); "
             f"UPDATE pg_index SET indisvalid = false WHERE indexrelid = '{DAG_RUN}'::regclass")
    add_migration(sql_dir, "0002_idx", IFNE.replace("(dag_run_id)", "(lower(dag_run_id))"))
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code != 0
    status = cli("status", "--sql-dir", sql_dir, env=env)
    (line,) = [line for line in status.stdout.splitlines() if f"INVALID index public.{DAG_RUN}" in line]
    assert "its definition is compared as migrate runs" in line and "else stops and says so" in line, line
    assert f"an INVALID index public.{DAG_RUN} is in the way" in one_error_line(cli("migrate", "--sql-dir", sql_dir,
                                                                                    env=env))
    assert applied(db) == [SEED]


@pytest.mark.parametrize("name", ["idx_dl", "t_dl_lower_idx"], ids=["named", "unnamed"])
def test_an_expression_build_retried_in_the_run_without_temp_drops_its_invalid_index(cli, no_temp, sql_dir, name):
    """The in-run retry of an expression build a deadlock ended (attack24q 9's test, on `lower(w)`, without TEMP): its
    INVALID index could not be compared, so the named retry refused it ("could not be compared") and the unnamed one
    built t_dl_lower_idx1 beside it (exit 1: an INVALID index left). Made since the file ran, under the build's name:
    the try's own."""
    db, env = no_temp
    db.query(f"CREATE TABLE t_dl (v int, w varchar(10)); INSERT INTO t_dl VALUES (1, 'a'); ALTER TABLE t_dl OWNER TO {PASSWORD_USER}; "
             + SLOW_DL)
    add_migration(sql_dir, "0002_idx", "-- transactional: false\n"
                  f"CREATE INDEX CONCURRENTLY {'' if name == 't_dl_lower_idx' else name} ON t_dl (lower(w)) "
                  "WHERE slow_dl(v) > 0;\n")
    result = migrate_deadlocking_a_build(cli, db, sql_dir, env)
    assert result.exit_code == 0, result.output
    assert f"dropped INVALID index public.{name}" in result.stderr, result.stderr
    assert db.query("SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    "WHERE i.indrelid = 't_dl'::regclass") == [(name, True)]
    assert applied(db)[-1] == "0002_idx"
