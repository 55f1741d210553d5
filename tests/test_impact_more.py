"""`plan --impact`, the hostile report's rest: non-transactional files measured in transactions of their own,
unseen sessions, wording, Markdown; against the real server."""

from __future__ import annotations

import json

from test_impact import TABLE
from test_progress import add
from test_schema_proof import scratch_databases


def plan_impact(cli, db, pg, sql_dir, *more, env=None):
    return cli("plan", "--impact", *more, "--sql-dir", sql_dir, "--scratch-url", pg.url("postgres"),
               env={**db.db_env(), **(env or {})})


def test_non_transactional_file_measures_each_statement_in_its_own_transaction(cli, db, pg, sql_dir):
    assert cli("migrate", "--sql-dir", sql_dir, "--quiet", env=db.db_env()).exit_code == 0
    add(sql_dir, "0002_outside", "-- transactional: false\n"
        f"ALTER TABLE {TABLE} ADD COLUMN score double precision DEFAULT random();\n"
        f"ALTER TABLE {TABLE} ALTER COLUMN report_name TYPE text;\n"
        f"VACUUM {TABLE};\n"
        f"CREATE INDEX CONCURRENTLY idx_score ON {TABLE} (score);\n"
        f"ALTER TABLE {TABLE} ADD CONSTRAINT positive_score CHECK (score >= 0) NOT VALID;\n")
    result = plan_impact(cli, db, pg, sql_dir, "--json")
    assert result.exit_code == 0, result.output
    assert scratch_databases(pg) == []
    (migration,) = json.loads(result.stdout)["migrations"]
    volatile, retype, vacuum, index, check = migration["statements"]
    assert migration["transactional"] is False
    # Each committed alone: every statement's own locks, not "already held" by an earlier one.
    for statement in (volatile, retype, check):
        assert {lock["relation"]: lock["mode"] for lock in statement["locks"]}[TABLE] == "ACCESS EXCLUSIVE", statement
        assert statement["measured"] == "in a transaction"
    assert TABLE in volatile["rewrites"] and retype["rewrites"] == []  # varchar -> text: binary coercible
    assert (vacuum["measured"], index["measured"]) == ("observed while it waited",) * 2
    assert index["waits_for"][0].startswith("every transaction older than it")
    text = plan_impact(cli, db, pg, sql_dir).stdout
    assert "rewrites " + TABLE in text
    vacuum_line = next(line for line in text.splitlines() if line.startswith("  line 4: VACUUM"))
    assert "cannot run in a transaction: observed while it waited" in vacuum_line
