"""What `sql trust-history` shows and what its `--yes` confirms (issue 23, attack23s 3, 4, 6, 7), on the real
PostgreSQL: every row a run would act on is shown, escaped; rows migrate would act on wrongly, and rights taken again
by the confirming run itself, keep `--yes` from confirming.
"""

from __future__ import annotations

import hashlib

from conftest import add_migration, ok
from test_history_distrust import forge_mark, grant_history_to
from test_planted_objects import low  # noqa: F401 (a fixture)

FIRST = "0001_create_hcm_report_metadata"


def distrusted(cli, db, sql_dir, low, forge: str) -> None:
    """The standing grant, `forge` run as low, and the revoking migrate that refuses."""
    grant_history_to(db, low)
    db.query(f"SET ROLE {low}; {forge}; RESET ROLE")
    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 2


def trust(cli, db, sql_dir, *args):
    return cli("sql", "trust-history", *args, "--sql-dir", sql_dir, env=db.db_env())


def forge_flyway_row(db, low: str, row: str) -> None:
    """A standing INSERT on Flyway's table for low, and its row (installed_rank, version, description, type, script)."""
    db.query(f"GRANT USAGE ON SCHEMA public TO {low}; GRANT INSERT ON public.flyway_schema_history TO {low}; "
             f"SET ROLE {low}; INSERT INTO public.flyway_schema_history (installed_rank, version, description, type, "
             f"script, checksum, installed_by, execution_time, success) VALUES ({row}, NULL, 'x', 1, true); RESET ROLE")


def shown_and_refused(cli, db, sql_dir, shown: str, refused_with: str) -> str:
    """The review shows `shown`; --yes refuses (exit 2) saying `refused_with`. The review's text."""
    review = ok(trust(cli, db, sql_dir))
    assert shown in review.output, review.output
    refused = trust(cli, db, sql_dir, "--yes")
    assert refused.exit_code == 2 and refused_with in refused.output, refused.output
    return review.output


def test_a_forged_checksum_row_without_its_mark_is_shown_and_not_confirmed(cli, db, sql_dir, low):
    """attack23s 3. Failed before: the review showed 0001 only, --yes confirmed, and migrate marked 0002 applied
    without running it (exit 0)."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    path = add_migration(sql_dir, "0002_important", "CREATE TABLE important (id int);\n")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    distrusted(cli, db, sql_dir, low, "INSERT INTO _hcm_migration_checksum (migration_id, sha256) VALUES "
                                      f"('0002_important', '{sha}')")
    review = ok(trust(cli, db, sql_dir))
    assert "checksum without a mark: 0002_important" in review.output, review.output
    refused = trust(cli, db, sql_dir, "--yes")
    assert refused.exit_code == 2 and "checksum row of 0002_important (no mark)" in refused.output, refused.output
    db.query("DELETE FROM _hcm_migration_checksum WHERE migration_id = '0002_important'")
    ok(trust(cli, db, sql_dir, "--yes"))
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert "important" in db.tables()


def test_a_mark_with_another_migrations_hash_is_shown_and_refused(cli, db, sql_dir, low):
    """attack23s 4: (0002's hash, 0001's id). Failed before: nothing new in the review, and migrate said "up to date"
    (exit 0) without running 0002."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_important", "CREATE TABLE important (id int);\n")
    distrusted(cli, db, sql_dir, low, "INSERT INTO _yoyo_migration VALUES (encode(sha256('0002_important'), 'hex'), "
                                      f"'{FIRST}', now())")
    review = ok(trust(cli, db, sql_dir))
    assert f"mark for {FIRST} carries migration_hash" in review.output, review.output
    refused = trust(cli, db, sql_dir, "--yes")
    assert refused.exit_code == 2 and "another migration's hash" in refused.output, refused.output


def test_migrate_refuses_a_mark_whose_hash_is_not_its_ids(cli, db, sql_dir):
    """attack23s 4, outside forgery (a hand-edited row): failed before with "up to date", exit 0."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_important", "CREATE TABLE important (id int);\n")
    db.query(f"INSERT INTO _yoyo_migration VALUES (encode(sha256('0002_important'), 'hex'), '{FIRST}', now())")
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == 2, result.output
    assert f"migration_id {FIRST} with migration_hash" in result.output
    assert "the hash of 0002_important" in result.output and "important" not in db.tables()


def test_a_forged_id_cannot_forge_the_reviews_lines(cli, db, sql_dir, low):
    """attack23s 6. Failed before: a line break in the id printed a line reading as the confirmation."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    distrusted(cli, db, sql_dir, low, "INSERT INTO _yoyo_migration VALUES ('x', E'0009_x\\nconfirmed the history', now())")
    review = ok(trust(cli, db, sql_dir))
    assert not any(line.startswith("confirmed") for line in review.output.splitlines()), review.output
    assert "0009_x\\nconfirmed" in review.output


def test_yes_refuses_when_its_own_run_had_to_revoke_rights_again(cli, db, sql_dir, low):
    """attack23s 7: rights granted again after the review; low forges a mark; the operator's --yes confirmed it.
    Failed before: exit 0 and migrate then said "up to date" without running 0002."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_important", "CREATE TABLE important (id int);\n")
    distrusted(cli, db, sql_dir, low, "SELECT 1")
    review = ok(trust(cli, db, sql_dir))
    assert "recorded as applied: 0002_important" not in review.output  # (named as pending only)
    grant_history_to(db, low)
    forge_mark(db, low, "0002_important")
    refused = trust(cli, db, sql_dir, "--yes")
    assert refused.exit_code == 2 and "rows may have been written after your review" in refused.output, refused.output
    assert "recorded as applied: 0002_important" in ok(trust(cli, db, sql_dir)).output
    db.query("DELETE FROM _yoyo_migration WHERE migration_id = '0002_important'")
    ok(trust(cli, db, sql_dir, "--yes"))
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert "important" in db.tables()


def test_another_folders_unconfirmed_flyway_history_is_noted_by_this_folder_and_refused_by_its_own(cli, db, sql_dir,
                                                                                                   tmp_path, low):
    """attack23s (2nd report) 6: a yoyo service's review confirmed the Flyway service's table in the same schema
    without showing its forged V2 row (fixed in session 9: the rows were listed); left: the yoyo service's migrate
    refused over the other service's table. Failed before: exit 2 for the yoyo service. Now each run refuses on its
    own histories only: the yoyo service notes the other's, cannot confirm it; the Flyway service refuses and its
    own review lists the forged row."""
    from test_flyway_locks import write

    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    folder = tmp_path / "flyway"
    write(folder, "V1__fw.sql", "CREATE TABLE fw (id int);\n")
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    forge_flyway_row(db, low, "2, '2', 'fw important', 'SQL', 'V2__fw_important.sql'")
    add_migration(sql_dir, "0002_b", "CREATE TABLE b (id int);\n")
    yoyo = ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert "note: history public.flyway_schema_history (another folder's: this run does not read it) is " \
           f"unconfirmed: {low} could write it" in yoyo.output and "b" in db.tables(), yoyo.output
    review = ok(trust(cli, db, sql_dir, "--yes"))
    assert "nothing to confirm" in review.output and "not this folder's: public.flyway_schema_history" \
        in review.output, review.output
    doctor = cli("doctor", "--no-dev-tools", "--sql-dir", sql_dir, env=db.db_env()).output
    assert [line for line in doctor.splitlines() if line.startswith("warn") and "another folder's" in line], doctor
    write(folder, "V2__fw_important.sql", "CREATE TABLE fw_important (id int);\n")
    flyway = cli("migrate", "--sql-dir", folder, env=db.db_env())
    assert flyway.exit_code == 2 and "history public.flyway_schema_history could be written by" in flyway.output
    assert "V2__fw_important" in ok(trust(cli, db, folder)).output and "fw_important" not in db.tables()


def test_a_forged_mark_with_a_flyway_looking_id_is_shown_and_refused(cli, db, sql_dir, low):
    """attack23t 2: a mark (id V1__init, 0002's hash) in a yoyo folder. Failed before: Flyway-shaped ids were exempt
    from the hash check: the review showed "recorded as applied: V1__init", --yes confirmed, migrate said "up to date"
    and 0002 never ran."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_important", "CREATE TABLE important (id int);\n")
    distrusted(cli, db, sql_dir, low, "INSERT INTO _yoyo_migration VALUES (encode(sha256('0002_important'), 'hex'), "
                                      "'V1__init', now())")
    shown_and_refused(cli, db, sql_dir, "mark for V1__init carries migration_hash "
                      f"{hashlib.sha256(b'0002_important').hexdigest()}, not its own: yoyo would count 0002_important "
                      "applied", "mark for V1__init (another migration's hash)")
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == 2 and "important" not in db.tables(), result.output
    db.query("DELETE FROM _yoyo_migration WHERE migration_id = 'V1__init'")
    ok(trust(cli, db, sql_dir, "--yes"))
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert "important" in db.tables()


def test_a_flyway_folders_own_marks_still_pass_the_hash_check(cli, db, tmp_path):
    """The other side of attack23t 2: a Flyway folder's marks (keyed per history table) are not refused."""
    from test_flyway_locks import write

    folder = tmp_path / "flyway"
    write(folder, "V1__a.sql", "CREATE TABLE a (id int);\n")
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    write(folder, "V2__b.sql", "CREATE TABLE b (id int);\n")
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    assert {"a", "b"} <= db.tables()
    assert len(db.query("SELECT * FROM _yoyo_migration")) == 2


def _flyway_folder(cli, db, tmp_path, low, *files):
    """A Flyway folder with `files` applied, then low's standing INSERT on its table (the revoking run comes later)."""
    from test_flyway_locks import write

    folder = tmp_path / "flyway"
    for name, text in files:
        write(folder, name, text)
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    db.query(f"GRANT USAGE ON SCHEMA public TO {low}; GRANT SELECT, INSERT ON public.flyway_schema_history TO {low}")
    return folder


FLYWAY_ROW = ("SET ROLE {low}; INSERT INTO public.flyway_schema_history (installed_rank, version, description, type, "
              "script, checksum, installed_by, execution_time, success) VALUES ({rank}, '2', '{what}', '{kind}', "
              "'{script}', NULL, 'x', 0, true); RESET ROLE")


def test_a_flyway_delete_row_is_shown_and_refused(cli, db, tmp_path, low):
    """attack23t 3: low adds Flyway's own DELETE row for an applied data migration. Failed before: the review did not
    show it (V2 simply was not listed), --yes confirmed, and migrate ran V2 again (amount 400)."""
    folder = _flyway_folder(cli, db, tmp_path, low, ("V1__pay.sql", "CREATE TABLE pay (amount int); "
                                                     "INSERT INTO pay VALUES (100);\n"),
                            ("V2__double.sql", "UPDATE pay SET amount = amount * 2;\n"))
    db.query(FLYWAY_ROW.format(low=low, rank=3, what="double", kind="DELETE", script="V2__double.sql"))
    assert cli("migrate", "--sql-dir", folder, env=db.db_env()).exit_code == 2
    review = shown_and_refused(cli, db, folder, "flyway_schema_history row 3: DELETE of version 2: takes back "
                               "V2__double: migrate would run it again",
                               "flyway_schema_history row 3 (DELETE of version 2)")
    assert "migrate would run next: V2__double" in review
    db.query("DELETE FROM public.flyway_schema_history WHERE installed_rank = 3")
    ok(trust(cli, db, folder, "--yes"))
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    assert db.query("SELECT amount FROM pay") == [(200,)]


def test_a_forged_flyway_baseline_row_is_shown_as_one_and_refused(cli, db, tmp_path, low):
    """attack23t 3 (related): a BASELINE row at version 2 after V1's row. Failed before: the review said "recorded as
    applied: V2__important" like a real row, --yes confirmed, and V2 never ran."""
    folder = _flyway_folder(cli, db, tmp_path, low, ("V1__a.sql", "CREATE TABLE a (id int);\n"))
    from test_flyway_locks import write

    write(folder, "V2__important.sql", "CREATE TABLE important (id int);\n")
    db.query(FLYWAY_ROW.format(low=low, rank=2, what="<< Flyway Baseline >>", kind="BASELINE",
                               script="<< Flyway Baseline >>"))
    assert cli("migrate", "--sql-dir", folder, env=db.db_env()).exit_code == 2
    shown_and_refused(cli, db, folder, "flyway_schema_history row 2: BASELINE at version 2: counts V1__a, "
                      "V2__important applied without running it", "row 2 (BASELINE of version 2)")
    assert "important" not in db.tables()


def test_a_deleted_yoyo_mark_is_noticed_from_the_log_and_refused(cli, db, sql_dir, low):
    """attack23t 3 (yoyo): low deletes an applied data migration's mark and checksum. Failed before: the review listed
    0001 only, --yes confirmed, and migrate ran 0002 again (amount 400). yoyo's log still says 0002 was applied."""
    from yoyo.migrations import get_migration_hash

    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_pay", "CREATE TABLE pay (amount int); INSERT INTO pay VALUES (100);\n")
    add_migration(sql_dir, "0003_double", "UPDATE pay SET amount = amount * 2;\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    distrusted(cli, db, sql_dir, low, "DELETE FROM _yoyo_migration WHERE migration_id = '0003_double'; "
                                      "DELETE FROM _hcm_migration_checksum WHERE migration_id = '0003_double'")
    review = shown_and_refused(cli, db, sql_dir, "record removed? 0003_double was applied, yet nothing records it now "
                               "(public._yoyo_log: apply ", "0003_double was applied, yet nothing records it now")
    assert "migrate would run next: 0003_double" in review
    db.query("INSERT INTO _yoyo_migration (migration_hash, migration_id, applied_at_utc) VALUES "
             f"('{get_migration_hash('0003_double')}', '0003_double', now())")  # (the fix the refusal names)
    ok(trust(cli, db, sql_dir, "--yes"))
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert db.query("SELECT amount FROM pay") == [(200,)]


def test_a_rolled_back_migration_is_no_sign_of_a_removed_mark(cli, db, sql_dir, low):
    """The other side: the log's rollback after its apply: pending again, nothing refused."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_t", "CREATE TABLE t (id int);\n", rollback="DROP TABLE t;\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    ok(cli("sql", "rollback", "--sql-dir", sql_dir, env=db.db_env()))
    distrusted(cli, db, sql_dir, low, "SELECT 1")
    review = ok(trust(cli, db, sql_dir))
    assert "record removed?" not in review.output and "migrate would run next: 0002_t" in review.output, review.output
    ok(trust(cli, db, sql_dir, "--yes"))


def test_a_deleted_mark_is_noticed_from_a_rollbacks_failure_record(cli, db, sql_dir, low):
    """attack23t 3: low deletes the mark, the checksum and the log rows of a migration whose rollback stopped part-way
    (it stays applied); the failure record still says so. Failed before: nothing shown, --yes confirmed."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_t", "CREATE TABLE t (id int);\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    db.query("CREATE TABLE IF NOT EXISTS _hcm_migration_failure (migration_id VARCHAR(255) PRIMARY KEY, failed_at "
             "TIMESTAMP NOT NULL DEFAULT now(), what TEXT NOT NULL); INSERT INTO _hcm_migration_failure (migration_id, "
             "what) VALUES ('0002_t', 'rollback: statement 1 of 2 committed')")
    distrusted(cli, db, sql_dir, low, "DELETE FROM _yoyo_migration WHERE migration_id = '0002_t'; DELETE FROM "
                                      "_hcm_migration_checksum WHERE migration_id = '0002_t'; DELETE FROM _yoyo_log")
    shown_and_refused(cli, db, sql_dir, "record removed? 0002_t was applied, yet nothing records it now "
                      "(public._hcm_migration_failure: its rollback stopped part-way)",
                      "DELETE FROM public._hcm_migration_failure WHERE migration_id = '0002_t'")


def test_a_deleted_flyway_row_is_noticed_from_the_log_and_refused(cli, db, tmp_path, low):
    """attack23t 3 (a Flyway row deleted outright, not taken back by a DELETE row): yoyo's log, keyed by the history's
    own hash, still says V2 was applied. Failed before: nothing shown, --yes confirmed, V2 would run again."""
    folder = _flyway_folder(cli, db, tmp_path, low, ("V1__pay.sql", "CREATE TABLE pay (amount int); "
                                                     "INSERT INTO pay VALUES (100);\n"),
                            ("V2__double.sql", "UPDATE pay SET amount = amount * 2;\n"))
    db.query(f"GRANT DELETE ON public.flyway_schema_history TO {low}; SET ROLE {low}; "
             "DELETE FROM public.flyway_schema_history WHERE version = '2'; RESET ROLE")
    assert cli("migrate", "--sql-dir", folder, env=db.db_env()).exit_code == 2
    shown_and_refused(cli, db, folder, "record removed? V2__double was applied, yet nothing records it now "
                      "(public._yoyo_log: apply ", "if it ran, restore its row in public.flyway_schema_history")
    assert db.query("SELECT amount FROM pay") == [(200,)]


def test_a_flyway_row_without_a_version_naming_a_versioned_script_is_shown_as_forged_and_refused(cli, db, tmp_path,
                                                                                                  low):
    """attack23u 10: a success row with no version (a repeatable's shape) whose script is V2__important.sql. Failed
    before: the review showed it as an ordinary row, --yes confirmed, and V2 never ran."""
    folder = _flyway_folder(cli, db, tmp_path, low, ("V1__a.sql", "CREATE TABLE a (id int);\n"))
    from test_flyway_locks import write

    write(folder, "V2__important.sql", "CREATE TABLE important (id int);\n")
    db.query(f"SET ROLE {low}; INSERT INTO public.flyway_schema_history (installed_rank, version, description, type, "
             "script, checksum, installed_by, execution_time, success) VALUES (2, NULL, 'important', 'SQL', "
             "'V2__important.sql', NULL, 'x', 0, true); RESET ROLE")
    assert cli("migrate", "--sql-dir", folder, env=db.db_env()).exit_code == 2
    shown_and_refused(cli, db, folder, "flyway_schema_history row 2: SQL V2__important.sql without its version: forged?",
                      "row 2 (V2__important.sql without its version)")
    db.query("DELETE FROM public.flyway_schema_history WHERE installed_rank = 2")
    ok(trust(cli, db, folder, "--yes"))
    ok(cli("migrate", "--sql-dir", folder, env=db.db_env()))
    assert "important" in db.tables()


def test_a_forged_mark_with_its_own_hash_but_no_log_entry_or_checksum_is_shown_and_refused(cli, db, sql_dir, low):
    """attack23u 7: a mark with 0002's correct hash, no apply in _yoyo_log and no checksum row (the runner writes
    both). Failed before: the review showed it like a real row, --yes confirmed, and 0002 never ran."""
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_important", "CREATE TABLE important (id int);\n")
    distrusted(cli, db, sql_dir, low, "INSERT INTO _yoyo_migration VALUES (encode(sha256('0002_important'), 'hex'), "
                                      "'0002_important', now())")
    review = shown_and_refused(cli, db, sql_dir, "record forged? 0002_important is marked applied, yet public._yoyo_log "
                               "has no apply of it and no checksum row exists", "0002_important is marked applied")
    assert f"recorded as applied: {FIRST}" in review and f"record forged? {FIRST}" not in review, review
    db.query("DELETE FROM _yoyo_migration WHERE migration_id = '0002_important'")  # (the fix the refusal names)
    ok(trust(cli, db, sql_dir, "--yes"))
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert "important" in db.tables()


def test_a_migration_older_than_the_newest_applied_with_all_its_records_deleted_is_shown_and_refused(cli, db, sql_dir,
                                                                                                     low):
    """attack23u 8: low deletes 0003_double's mark, checksum row and _yoyo_log rows; 0004 (applied after it) stays.
    Failed before: the review only said "would run next", --yes confirmed, and migrate ran 0003 again (amount 400)."""
    from yoyo.migrations import get_migration_hash

    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    add_migration(sql_dir, "0002_pay", "CREATE TABLE pay (amount int); INSERT INTO pay VALUES (100);\n")
    add_migration(sql_dir, "0003_double", "UPDATE pay SET amount = amount * 2;\n")
    add_migration(sql_dir, "0004_c", "CREATE TABLE c (id int);\n")
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    key = get_migration_hash("0003_double")
    distrusted(cli, db, sql_dir, low, "DELETE FROM _yoyo_migration WHERE migration_id = '0003_double'; DELETE FROM "
                                      "_hcm_migration_checksum WHERE migration_id = '0003_double'; DELETE FROM "
                                      f"_yoyo_log WHERE migration_hash = '{key}'")
    review = shown_and_refused(cli, db, sql_dir, "record removed? 0003_double is not recorded applied, yet 0004_c after "
                               "it is: if it ran, restore its mark and log entry: INSERT INTO public._yoyo_migration",
                               "0003_double is not recorded applied, yet 0004_c after it is")
    restore = review.split("restore its mark and log entry: ", 1)[1].split("; if it never ran", 1)[0]
    db.query(restore)  # (the fix the review names)
    ok(trust(cli, db, sql_dir, "--yes"))
    ok(cli("migrate", "--sql-dir", sql_dir, env=db.db_env()))
    assert db.query("SELECT amount FROM pay") == [(200,)]
