"""The drift check's fast path (migrator/schema/fingerprint.py): an unchanged catalog is answered without describing,
and no change of any kind made by hand after the fingerprint was stored goes unseen."""

from __future__ import annotations

import psycopg2
import pytest
from schema_helpers import db_target
from test_schema_describe import CHANGES, kinds_db  # noqa: F401 (the fixture: the repository's schema + every kind)

from migrator import postgres
import migrator.schema.describe as describing
from migrator.schema import fingerprint, snapshot

T = "hcm_report_metadata"


def _no_describing(*args, **kwargs):
    raise AssertionError("described although the catalog's fingerprint was the recorded one")


def _with_index(conn, name: str, read):
    """read() while an index `name` on T, made and committed by `conn` (autocommit), exists; dropped after."""
    with conn.cursor() as cursor:
        cursor.execute(f"CREATE INDEX {name} ON {T} (tenant_id)")
    try:
        return read()
    finally:
        with conn.cursor() as cursor:
            cursor.execute(f"DROP INDEX {name}")


def test_an_unchanged_catalog_is_answered_from_the_fingerprint(kinds_db, monkeypatch):
    conn = psycopg2.connect(kinds_db.url)
    conn.autocommit = True
    other = psycopg2.connect(kinds_db.url)
    other.autocommit = True
    try:
        snapshot.record(conn, "public", "test")
        stored = snapshot.record(conn, "public", "test")  # (the first one may have made the table: a catalog change)
        assert stored.fingerprint == fingerprint.take(conn, "public")
        with monkeypatch.context() as patched:
            patched.setattr(describing, "describe", _no_describing)
            report = snapshot.live_drift(conn, "public")
        assert not report.drifted and report.recorded.sha256 == stored.sha256 and report.live is None

        # another session's committed change
        report = _with_index(other, "fp_probe", lambda: snapshot.live_drift(conn, "public"))
        assert report.changes == [f"index fp_probe ON {T} added"]
    finally:
        conn.close()
        other.close()


@pytest.mark.parametrize("change, expected", CHANGES, ids=[c[1].split(":")[0][:40] for c in CHANGES])
def test_every_kind_changed_by_hand_after_the_fingerprint_is_seen(kinds_db, change, expected):
    conn = psycopg2.connect(kinds_db.url)
    try:
        snapshot.record(conn, "public", "test")
        conn.commit()
        recorded = snapshot.recorded(conn, "public")
        assert recorded.fingerprint == fingerprint.take(conn, "public")  # the fast path would answer now
        with conn.cursor() as cursor:
            cursor.execute(change)  # seen by this session: its own rows, as a committed change is by any
        report = snapshot.live_drift(conn, "public")
    finally:
        conn.rollback()  # every change is undone: the next case starts from the same schema
        conn.close()
    assert expected in report.changes, report.changes


def test_a_record_that_keeps_drift_stores_no_fingerprint(kinds_db):
    """advance() keeps drift found before as drift: the fingerprint of the live catalog does not vouch for it."""
    conn = psycopg2.connect(kinds_db.url)
    conn.autocommit = True
    try:
        snapshot.record(conn, "public", "test")
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE INDEX fp_drift ON {T} (tenant_id)")  # by hand: drift
        before = snapshot.live_drift(conn, "public")
        assert before.changes == [f"index fp_drift ON {T} added"]
        with conn.cursor() as cursor:
            cursor.execute("CREATE TABLE fp_runner_made (id int)")  # the runner's own change
        advanced = snapshot.advance(conn, "public", before.live, "migrate")
        assert advanced.fingerprint is None
        assert snapshot.live_drift(conn, "public", refresh=True).changes == [f"index fp_drift ON {T} added"]
        assert snapshot.recorded(conn, "public").fingerprint is None  # refresh stores only a clean match
    finally:
        with conn.cursor() as cursor:
            cursor.execute("DROP INDEX IF EXISTS fp_drift; DROP TABLE IF EXISTS fp_runner_made")
        snapshot.record(conn, "public", "test")
        conn.close()


def test_a_no_op_migrate_re_records_a_stale_fingerprint_and_status_writes_none(cli, db, sql_dir):
    env = db.db_env()
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0
    db.query("ALTER TABLE public._hcm_schema_snapshot DROP COLUMN fingerprint")  # a table made by an older runner
    assert cli("status", "--sql-dir", sql_dir, env=env).exit_code == 0
    assert "fingerprint" not in {r[0] for r in db.query(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'public._hcm_schema_snapshot'::regclass")}
    # Nothing pending, the schema as recorded: the first no-op adds the column (a catalog change of its own), the
    # next records the fingerprint it found
    for _ in range(2):
        assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0
    with postgres.connect(db_target(db), read_only=True) as backend:
        stored = snapshot.recorded(backend.connection, backend.bookkeeping_schema).fingerprint
        assert stored is not None and stored == fingerprint.take(backend.connection, backend.bookkeeping_schema)


def test_the_settings_a_description_depends_on_are_part_of_it(db):
    """The runner's scope pins (a tenant's schema apart from the tenants left out) and what the server prints with."""
    conn = psycopg2.connect(db.url)
    conn.autocommit = True
    taken = []
    try:
        with conn.cursor() as cursor:
            for statement in ("SELECT 1", "SELECT pg_catalog.set_config('hcm.tenant_schemas', 'a', false)",
                              "SELECT pg_catalog.set_config('hcm.tenant_schemas', '', false), "
                              "pg_catalog.set_config('hcm.tenant_schema', 'a', false)",
                              "SET TimeZone = 'Asia/Tokyo'", "SET quote_all_identifiers = on"):
                cursor.execute(statement)
                taken.append(fingerprint.take(conn, "public"))
        assert fingerprint.take(conn, "other") != taken[-1]  # the bookkeeping schema
    finally:
        conn.close()
    assert len(set(taken)) == len(taken)


@pytest.mark.parametrize("version", [170000, 180000], ids=["text-xid-before-18", "hashxid-18-on"])
def test_both_forms_of_the_catalog_hash_see_a_change_and_its_undoing(db, version):
    """Servers before 18 hash each row's xmin through its text (no hashxidextended); both forms must tell a
    committed change from none, and a change undone (its rows deleted) from the change."""
    conn = psycopg2.connect(db.url)
    conn.autocommit = True

    def taken():
        with conn.cursor() as cursor:
            cursor.execute(fingerprint.query(version))
            return cursor.fetchall()

    try:
        db.query("CREATE TABLE fp_form_t (id int)")
        before = taken()
        assert taken() == before
        db.query("CREATE INDEX fp_form ON fp_form_t (id)")
        changed = taken()
        db.query("DROP INDEX fp_form")
        assert changed != before and taken() == before
    finally:
        conn.close()


def test_the_live_description_is_the_record_while_the_fingerprint_vouches_for_it(kinds_db, monkeypatch):
    """A change's "before" (snapshot.live_description): the record, read back equal to what describing gives on
    every kind of object, while the catalog's fingerprint is the recorded one; described after any change."""
    conn = psycopg2.connect(kinds_db.url)
    conn.autocommit = True
    try:
        snapshot.record(conn, "public", "test")
        snapshot.record(conn, "public", "test")  # (the first may have made the table: a catalog change)
        described = describing.describe(conn, "public")
        with monkeypatch.context() as patched:
            patched.setattr(describing, "describe", _no_describing)
            kept = snapshot.live_description(conn, "public")
        assert kept == described and kept.items == described.items
        now = _with_index(conn, "fp_live", lambda: snapshot.live_description(conn, "public"))
        assert now != kept and ("index", "public.fp_live") in {(k[0], k[1]) for k in now.items}
    finally:
        conn.close()


def test_a_hand_change_after_the_drift_check_stays_drift_after_the_run(cli, db, sql_dir, monkeypatch):
    """The drift check answers from the fingerprint; a DBA's index made after it, before the run's first change, is
    in the run's "before" (the fingerprint taken again), so the run records only its own file and the index stays
    drift, never absorbed as the run's work."""
    from conftest import add_migration, migrate, ok
    from migrator.postgres import rewrites

    ok(migrate(cli, db, sql_dir))
    ok(migrate(cli, db, sql_dir))  # (the fingerprint recorded: the next drift check answers from it)
    add_migration(sql_dir, "0002_more", "CREATE TABLE fp_more (id INT);\n")
    judge = rewrites.judge

    def judged_then_a_hand_change(*args, **kwargs):
        verdicts = judge(*args, **kwargs)
        db.query(f"CREATE INDEX fp_hand ON {T} (tenant_id)")
        return verdicts

    monkeypatch.setattr(rewrites, "judge", judged_then_a_hand_change)
    ok(migrate(cli, db, sql_dir))
    monkeypatch.undo()
    status = cli("status", "--sql-dir", sql_dir, env=db.db_env())
    assert f"index fp_hand ON {T} added" in status.output and "fp_more" not in status.output, status.output
